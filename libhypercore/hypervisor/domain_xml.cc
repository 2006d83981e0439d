// Domain XML generation for LibvirtHypervisor: pure, no libvirt calls, so it is tested
// on its own (domain_xml_test.cc) and through libvirt's test driver.
#include <string>

#include "absl/strings/str_cat.h"
#include "hypercore/libvirt_hypervisor.h"

namespace hypercore {
namespace {

// The length of the valid UTF-8 sequence of an XML character starting at text[i], or 0.
size_t ValidUtf8Length(const std::string& text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  size_t length = 0;
  uint32_t min = 0, code = 0;
  if (lead < 0x80) return 1;
  if ((lead & 0xe0) == 0xc0) {
    length = 2, min = 0x80, code = lead & 0x1f;
  } else if ((lead & 0xf0) == 0xe0) {
    length = 3, min = 0x800, code = lead & 0x0f;
  } else if ((lead & 0xf8) == 0xf0) {
    length = 4, min = 0x10000, code = lead & 0x07;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3f);
  }
  if (code < min || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return 0;
  // U+FFFE and U+FFFF are not XML characters either.
  if (code == 0xfffe || code == 0xffff) return 0;
  return length;
}

// Text safe inside an XML element or a quoted attribute: the five markup characters
// escaped; bytes XML 1.0 cannot carry at all (most control characters, invalid UTF-8)
// replaced by U+FFFD, since the description is free text and must not make the whole
// domain unparseable.
std::string Escape(const std::string& text) {
  static constexpr char kReplacement[] = "\xef\xbf\xbd";
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    switch (c) {
      case '&':
        out += "&amp;";
        ++i;
        continue;
      case '<':
        out += "&lt;";
        ++i;
        continue;
      case '>':
        out += "&gt;";
        ++i;
        continue;
      case '"':
        out += "&quot;";
        ++i;
        continue;
      case '\'':
        out += "&apos;";
        ++i;
        continue;
      default:
        break;
    }
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 && c != '\t' && c != '\n' && c != '\r') {
      out += kReplacement;
      ++i;
      continue;
    }
    const size_t length = ValidUtf8Length(text, i);
    if (length == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    out.append(text, i, length);
    i += length;
  }
  return out;
}

std::string NbdSourceXml(const NbdSource& nbd, const char* indent) {
  return absl::StrCat(indent, "<source protocol='nbd' name='", Escape(nbd.export_name), "'>\n",
                      indent, "  <host transport='unix' socket='", Escape(nbd.socket_path),
                      "'/>\n", indent, "</source>\n");
}

}  // namespace

std::string VirtioDiskName(size_t index) {
  // Bijective base 26, as libvirt's virDiskNameToIndex reads it: a..z, aa..az, ba...
  std::string suffix;
  size_t n = index + 1;
  while (n > 0) {
    --n;
    suffix.insert(suffix.begin(), static_cast<char>('a' + n % 26));
    n /= 26;
  }
  return "vd" + suffix;
}

absl::StatusOr<std::string> DomainXml(const VmLaunch& launch,
                                      const LibvirtHypervisorOptions& options) {
  absl::Status valid = ValidateLaunch(launch);
  if (!valid.ok()) return valid;
  const VmSpec& spec = launch.spec;
  std::string xml;
  absl::StrAppend(&xml, "<domain type='", Escape(options.domain_type), "'>\n");
  absl::StrAppend(&xml, "  <name>", Escape(spec.name), "</name>\n");
  absl::StrAppend(&xml, "  <uuid>", Escape(launch.uuid), "</uuid>\n");
  if (!spec.description.empty()) {
    absl::StrAppend(&xml, "  <description>", Escape(spec.description), "</description>\n");
  }
  absl::StrAppend(&xml, "  <metadata>\n    <hc:vm xmlns:hc='", kHypercoreXmlNamespace,
                  "'>\n      <hc:epoch>", launch.epoch,
                  "</hc:epoch>\n    </hc:vm>\n  </metadata>\n");
  absl::StrAppend(&xml, "  <memory unit='KiB'>", spec.ram_bytes / 1024, "</memory>\n");
  absl::StrAppend(&xml, "  <vcpu>", spec.vcpus, "</vcpu>\n");
  absl::StrAppend(&xml, "  <os>\n    <type arch='", Escape(options.arch), "'");
  if (!options.machine.empty()) absl::StrAppend(&xml, " machine='", Escape(options.machine), "'");
  absl::StrAppend(&xml, ">hvm</type>\n");
  if (spec.boot) {
    // Direct kernel boot: the firmware's boot order does not apply.
    absl::StrAppend(&xml, "    <kernel>", Escape(spec.boot->kernel_path), "</kernel>\n");
    if (!spec.boot->initrd_path.empty()) {
      absl::StrAppend(&xml, "    <initrd>", Escape(spec.boot->initrd_path), "</initrd>\n");
    }
    if (!spec.boot->cmdline.empty()) {
      absl::StrAppend(&xml, "    <cmdline>", Escape(spec.boot->cmdline), "</cmdline>\n");
    }
  } else {
    absl::StrAppend(&xml, "    <boot dev='hd'/>\n");
    if (launch.cdrom) absl::StrAppend(&xml, "    <boot dev='cdrom'/>\n");
  }
  absl::StrAppend(&xml, "  </os>\n");
  // ACPI is what Hypervisor::Shutdown presses.
  absl::StrAppend(&xml, "  <features>\n    <acpi/>\n    <apic/>\n  </features>\n");
  absl::StrAppend(&xml, "  <clock offset='utc'/>\n");
  // A guest that powers off or crashes stays off: restarting it is the HA manager's
  // decision (with the right epoch), never the hypervisor's.
  absl::StrAppend(&xml,
                  "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n"
                  "  <on_crash>destroy</on_crash>\n");
  absl::StrAppend(&xml, "  <devices>\n");
  for (size_t i = 0; i < launch.disks.size(); ++i) {
    absl::StrAppend(&xml, "    <disk type='network' device='disk'>\n",
                    "      <driver name='qemu' type='raw' cache='none' discard='unmap'/>\n",
                    NbdSourceXml(launch.disks[i].nbd, "      "), "      <target dev='",
                    VirtioDiskName(i), "' bus='virtio'/>\n", "    </disk>\n");
  }
  if (launch.cdrom) {
    const CdromAttachment& cdrom = *launch.cdrom;
    if (cdrom.nbd) {
      absl::StrAppend(&xml, "    <disk type='network' device='cdrom'>\n",
                      "      <driver name='qemu' type='raw'/>\n",
                      NbdSourceXml(*cdrom.nbd, "      "));
    } else {
      absl::StrAppend(&xml, "    <disk type='file' device='cdrom'>\n",
                      "      <driver name='qemu' type='raw'/>\n", "      <source file='",
                      Escape(cdrom.file_path), "'/>\n");
    }
    absl::StrAppend(&xml, "      <target dev='sda' bus='sata'/>\n      <readonly/>\n",
                    "    </disk>\n");
  }
  for (const VmNic& nic : spec.nics) {
    const bool bridge = options.nic_mode == LibvirtHypervisorOptions::NicMode::kBridge;
    absl::StrAppend(&xml, "    <interface type='", bridge ? "bridge" : "network", "'>\n");
    if (nic.mac) absl::StrAppend(&xml, "      <mac address='", Escape(*nic.mac), "'/>\n");
    absl::StrAppend(&xml, "      <source ", bridge ? "bridge" : "network", "='",
                    Escape(options.nic_source), "'/>\n");
    if (bridge && options.nic_openvswitch) {
      absl::StrAppend(&xml, "      <virtualport type='openvswitch'/>\n");
    }
    if (nic.vlan) absl::StrAppend(&xml, "      <vlan>\n        <tag id='", *nic.vlan, "'/>\n      </vlan>\n");
    absl::StrAppend(&xml, "      <model type='", Escape(nic.model), "'/>\n    </interface>\n");
  }
  if (options.console_log_dir.empty()) {
    absl::StrAppend(&xml, "    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n",
                    "    <console type='pty'>\n      <target type='serial' port='0'/>\n",
                    "    </console>\n");
  } else {
    const std::string path = Escape(absl::StrCat(options.console_log_dir, "/", spec.name, ".log"));
    absl::StrAppend(&xml, "    <serial type='file'>\n      <source path='", path,
                    "' append='on'/>\n      <target port='0'/>\n    </serial>\n",
                    "    <console type='file'>\n      <source path='", path,
                    "' append='on'/>\n      <target type='serial' port='0'/>\n",
                    "    </console>\n");
  }
  absl::StrAppend(&xml, "  </devices>\n</domain>\n");
  return xml;
}

}  // namespace hypercore
