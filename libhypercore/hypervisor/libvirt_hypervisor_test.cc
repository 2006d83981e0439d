// LibvirtHypervisor against libvirt's in-process test driver ("test:///default"):
// what libvirt itself parsed from our XML, foreign domains left alone, connection
// errors. (The shared contract is in hypervisor_conformance_test.cc.)
#include "hypercore/libvirt_hypervisor.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "libhypercore/hypervisor/conformance.h"
#include "scribe/real_env.h"

namespace hypercore {
namespace {

using hypervisor_conformance::Await;
using hypervisor_conformance::AwaitStatus;
using hypervisor_conformance::TestLaunch;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The text of the first <tag>...</tag> element, XML entities decoded.
std::string ElementText(const std::string& xml, const std::string& tag) {
  const std::string open = "<" + tag + ">", close = "</" + tag + ">";
  const size_t a = xml.find(open), b = xml.find(close);
  if (a == std::string::npos || b == std::string::npos) return "<missing>";
  std::string text = xml.substr(a + open.size(), b - a - open.size());
  std::string out;
  for (size_t i = 0; i < text.size();) {
    static const std::pair<const char*, char> kEntities[] = {
        {"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&apos;", '\''}};
    bool matched = false;
    for (const auto& [entity, c] : kEntities) {
      if (text.compare(i, std::strlen(entity), entity) == 0) {
        out += c;
        i += std::strlen(entity);
        matched = true;
        break;
      }
    }
    if (!matched) out += text[i++];
  }
  return out;
}

class LibvirtHypervisorTest : public testing::Test {
 protected:
  void SetUp() override {
    LibvirtHypervisorOptions o;
    o.uri = "test:///default";
    o.domain_type = "qemu";
    auto hv = LibvirtHypervisor::Create(loop_.get(), o);
    ASSERT_TRUE(hv.ok()) << hv.status();
    hv_ = *std::move(hv);
  }
  void TearDown() override {
    for (const char* name : {"lv-xml", "lv-escape", "lv-kernel"}) {
      (void)AwaitStatus(loop_.get(), [&](auto done) { hv_->ForceOff(name, done); });
      (void)AwaitStatus(loop_.get(), [&](auto done) { hv_->Undefine(name, done); });
    }
  }

  std::unique_ptr<scribe::RealLoop> loop_ = scribe::RealLoop::Create();
  std::unique_ptr<LibvirtHypervisor> hv_;
};

TEST_F(LibvirtHypervisorTest, LibvirtParsedDisksOverNbdAndTaggedNic) {
  ASSERT_TRUE(AwaitStatus(loop_.get(), [&](auto done) { hv_->Start(TestLaunch("lv-xml", 12), done); }).ok());
  auto xml = hv_->DescribeDomain("lv-xml");
  ASSERT_TRUE(xml.ok()) << xml.status();
  // libvirt re-serializes what it understood: these appear only if it parsed them.
  EXPECT_TRUE(Contains(*xml, "<source protocol='nbd' name='lv-xml/root'>")) << *xml;
  EXPECT_TRUE(Contains(*xml, "<host transport='unix' socket='/run/scribed/nbd.sock'/>")) << *xml;
  EXPECT_TRUE(Contains(*xml, "<target dev='vda' bus='virtio'/>"));
  EXPECT_TRUE(Contains(*xml, "<target dev='vdb' bus='virtio'/>"));
  EXPECT_TRUE(Contains(*xml, "<source protocol='nbd' name='iso/installer.iso'>"));
  EXPECT_TRUE(Contains(*xml, "<tag id='42'/>")) << *xml;
  EXPECT_TRUE(Contains(*xml, "<mac address='52:54:00:12:34:56'/>"));
  EXPECT_TRUE(Contains(*xml, "<on_crash>destroy</on_crash>"));
  EXPECT_TRUE(Contains(*xml, "<uuid>5f0c8e9a-1b2c-4d3e-8f40-123456789abc</uuid>"));
  EXPECT_TRUE(Contains(*xml, "<memory unit='KiB'>262144</memory>"));
  auto status = Await<VmStatus>(loop_.get(), [&](auto done) { hv_->GetStatus("lv-xml", done); });
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->epoch, 12u);
}

TEST_F(LibvirtHypervisorTest, DirectKernelBootRoundTripsThroughLibvirt) {
  VmLaunch launch = TestLaunch("lv-kernel", 1);
  launch.spec.boot = VmBoot{"/srv/guest/vmlinuz", "/srv/guest/initrd.gz", "console=ttyS0 a=\"<b>\" c='&'"};
  ASSERT_TRUE(AwaitStatus(loop_.get(), [&](auto done) { hv_->Start(launch, done); }).ok());
  auto xml = hv_->DescribeDomain("lv-kernel");
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_EQ(ElementText(*xml, "kernel"), "/srv/guest/vmlinuz") << *xml;
  EXPECT_EQ(ElementText(*xml, "initrd"), "/srv/guest/initrd.gz") << *xml;
  EXPECT_EQ(ElementText(*xml, "cmdline"), launch.spec.boot->cmdline) << *xml;
}

TEST_F(LibvirtHypervisorTest, DescriptionRoundTripsThroughLibvirt) {
  VmLaunch launch = TestLaunch("lv-escape", 1);
  launch.spec.description = "<&\"'> </description><name>evil</name>";
  ASSERT_TRUE(AwaitStatus(loop_.get(), [&](auto done) { hv_->Start(launch, done); }).ok());
  auto xml = hv_->DescribeDomain("lv-escape");
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_EQ(ElementText(*xml, "description"), launch.spec.description) << *xml;
  EXPECT_EQ(ElementText(*xml, "name"), "lv-escape");
}

TEST_F(LibvirtHypervisorTest, ForeignDomainsAreLeftAlone) {
  // The test driver starts with a running domain named "test" that hypercore did not
  // define.
  auto list = Await<std::vector<VmStatus>>(loop_.get(), [&](auto done) { hv_->List(done); });
  ASSERT_TRUE(list.ok()) << list.status();
  for (const VmStatus& s : *list) EXPECT_NE(s.name, "test");
  EXPECT_EQ(AwaitStatus(loop_.get(), [&](auto done) { hv_->ForceOff("test", done); }).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(AwaitStatus(loop_.get(), [&](auto done) { hv_->Start(TestLaunch("test", 1), done); }).code(),
            absl::StatusCode::kFailedPrecondition);
  auto status = Await<VmStatus>(loop_.get(), [&](auto done) { hv_->GetStatus("test", done); });
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->state, VmPowerState::kAbsent);
}

TEST(LibvirtHypervisorCreate, UnreachableHypervisorIsUnavailable) {
  auto loop = scribe::RealLoop::Create();
  LibvirtHypervisorOptions o;
  o.uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
  auto hv = LibvirtHypervisor::Create(loop.get(), o);
  ASSERT_FALSE(hv.ok());
  EXPECT_EQ(hv.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(std::string(hv.status().message()), "/nonexistent/libvirt-sock"));
}

}  // namespace
}  // namespace hypercore
