// DomainXml on its own: the generated text, escaping, device naming and options.
#include <gtest/gtest.h>

#include <string>

#include "hypercore/libvirt_hypervisor.h"
#include "libhypercore/hypervisor/conformance.h"

namespace hypercore {
namespace {

using hypervisor_conformance::TestLaunch;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

LibvirtHypervisorOptions Options() {
  LibvirtHypervisorOptions o;
  o.domain_type = "qemu";
  return o;
}

TEST(DomainXml, Devices) {
  auto xml = DomainXml(TestLaunch("web1", 9), Options());
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_TRUE(Contains(*xml, "<domain type='qemu'>")) << *xml;
  EXPECT_TRUE(Contains(*xml, "<name>web1</name>"));
  EXPECT_TRUE(Contains(*xml, "<uuid>5f0c8e9a-1b2c-4d3e-8f40-123456789abc</uuid>"));
  EXPECT_TRUE(Contains(*xml, "<memory unit='KiB'>262144</memory>"));
  EXPECT_TRUE(Contains(*xml, "<vcpu>2</vcpu>"));
  EXPECT_TRUE(Contains(*xml, "<hc:epoch>9</hc:epoch>"));
  EXPECT_TRUE(Contains(*xml, "xmlns:hc='urn:hc3:hypercore:1'"));
  EXPECT_TRUE(Contains(*xml, "<on_crash>destroy</on_crash>"));
  EXPECT_TRUE(Contains(*xml, "<acpi/>"));
  EXPECT_TRUE(Contains(*xml,
                       "<source protocol='nbd' name='web1/root'>\n"
                       "        <host transport='unix' socket='/run/scribed/nbd.sock'/>\n"
                       "      </source>\n"
                       "      <target dev='vda' bus='virtio'/>"))
      << *xml;
  EXPECT_TRUE(Contains(*xml, "name='web1/data'"));
  EXPECT_TRUE(Contains(*xml, "<target dev='vdb' bus='virtio'/>"));
  EXPECT_TRUE(Contains(*xml, "<disk type='network' device='cdrom'>"));
  EXPECT_TRUE(Contains(*xml, "name='iso/installer.iso'"));
  EXPECT_TRUE(Contains(*xml, "<readonly/>"));
  EXPECT_TRUE(Contains(*xml, "<interface type='bridge'>"));
  EXPECT_TRUE(Contains(*xml, "<source bridge='br0'/>"));
  EXPECT_TRUE(Contains(*xml, "<virtualport type='openvswitch'/>"));
  EXPECT_TRUE(Contains(*xml, "<mac address='52:54:00:12:34:56'/>"));
  EXPECT_TRUE(Contains(*xml, "<vlan>\n        <tag id='42'/>\n      </vlan>"));
  EXPECT_TRUE(Contains(*xml, "<model type='virtio'/>"));
  EXPECT_TRUE(Contains(*xml, "<serial type='pty'>"));
  // Only the second NIC is tagged.
  EXPECT_EQ(xml->find("<vlan>"), xml->rfind("<vlan>"));
}

TEST(DomainXml, EscapesEveryMarkupCharacter) {
  VmLaunch launch = TestLaunch("web1", 1);
  launch.spec.description = "a <b> & \"c\" 'd'";
  auto xml = DomainXml(launch, Options());
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(Contains(*xml, "<description>a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;</description>"))
      << *xml;
  launch.cdrom->nbd.reset();
  launch.cdrom->file_path = "/iso/it's <here> & \"there\".iso";
  xml = DomainXml(launch, Options());
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(Contains(*xml, "<source file='/iso/it&apos;s &lt;here&gt; &amp; &quot;there&quot;.iso'/>"))
      << *xml;
  EXPECT_TRUE(Contains(*xml, "<disk type='file' device='cdrom'>"));
}

TEST(DomainXml, ReplacesWhatXmlCannotCarry) {
  VmLaunch launch = TestLaunch("web1", 1);
  launch.spec.description = std::string("bell\x07 tab\t bad\xff utf8 \xc3\xa9t\xc3\xa9", 27);
  auto xml = DomainXml(launch, Options());
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(Contains(*xml, "bell\xef\xbf\xbd tab\t bad\xef\xbf\xbd utf8 \xc3\xa9t\xc3\xa9")) << *xml;
}

TEST(DomainXml, NetworkModeConsoleFileAndMachine) {
  LibvirtHypervisorOptions o = Options();
  o.nic_mode = LibvirtHypervisorOptions::NicMode::kNetwork;
  o.nic_source = "ovs-net";
  o.console_log_dir = "/var/log/hc";
  o.machine = "pc-q35-7.2";
  auto xml = DomainXml(TestLaunch("web1", 1), o);
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(Contains(*xml, "<interface type='network'>"));
  EXPECT_TRUE(Contains(*xml, "<source network='ovs-net'/>"));
  EXPECT_FALSE(Contains(*xml, "virtualport"));
  EXPECT_TRUE(Contains(*xml, "<tag id='42'/>"));
  EXPECT_TRUE(Contains(*xml, "<source path='/var/log/hc/web1.log' append='on'/>"));
  EXPECT_TRUE(Contains(*xml, "machine='pc-q35-7.2'"));
}

TEST(DomainXml, DirectKernelBoot) {
  VmLaunch launch = TestLaunch("web1", 1);
  auto xml = DomainXml(launch, Options());
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(Contains(*xml, "<boot dev='hd'/>")) << *xml;
  EXPECT_FALSE(Contains(*xml, "<kernel>"));

  launch.spec.boot = VmBoot{"/srv/k & <v>", "/srv/initrd.gz", "console=ttyS0 hc3.tag='a' x=\"<&>\""};
  xml = DomainXml(launch, Options());
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_TRUE(Contains(*xml,
                       ">hvm</type>\n"
                       "    <kernel>/srv/k &amp; &lt;v&gt;</kernel>\n"
                       "    <initrd>/srv/initrd.gz</initrd>\n"
                       "    <cmdline>console=ttyS0 hc3.tag=&apos;a&apos; x=&quot;&lt;&amp;&gt;&quot;</cmdline>\n"
                       "  </os>"))
      << *xml;
  // The firmware's boot order does not apply to a direct kernel boot.
  EXPECT_FALSE(Contains(*xml, "<boot dev="));

  // Kernel only: no empty <initrd/> or <cmdline/>.
  launch.spec.boot = VmBoot{"/srv/vmlinuz", "", ""};
  xml = DomainXml(launch, Options());
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_TRUE(Contains(*xml, "<kernel>/srv/vmlinuz</kernel>\n  </os>")) << *xml;

  // An invalid boot part is refused, naming it.
  launch.spec.boot = VmBoot{"vmlinuz", "", ""};
  xml = DomainXml(launch, Options());
  EXPECT_EQ(xml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(xml.status().message()), "boot.kernel_path")) << xml.status();
}

TEST(DomainXml, InvalidLaunchIsRefused) {
  VmLaunch launch = TestLaunch("web1", 1);
  launch.uuid = "nope";
  EXPECT_EQ(DomainXml(launch, Options()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(VirtioDiskName, BijectiveBase26) {
  EXPECT_EQ(VirtioDiskName(0), "vda");
  EXPECT_EQ(VirtioDiskName(25), "vdz");
  EXPECT_EQ(VirtioDiskName(26), "vdaa");
  EXPECT_EQ(VirtioDiskName(27), "vdab");
  EXPECT_EQ(VirtioDiskName(701), "vdzz");
  EXPECT_EQ(VirtioDiskName(702), "vdaaa");
}

}  // namespace
}  // namespace hypercore
