// LibvirtHypervisor: synchronous libvirt calls on the loop thread, results delivered
// through Loop::Post (see the header for why that is acceptable and what it costs).
#include "hypercore/libvirt_hypervisor.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace hypercore {
namespace {

struct DomainFree {
  void operator()(virDomainPtr dom) const { virDomainFree(dom); }
};
using DomainPtr = std::unique_ptr<virDomain, DomainFree>;

struct CharFree {
  void operator()(char* p) const { std::free(p); }
};
using CString = std::unique_ptr<char, CharFree>;

// libvirt reports errors in a thread-local slot; this turns the last one into a Status
// with a canonical code.
absl::Status LastError(const std::string& context) {
  virErrorPtr error = virGetLastError();
  if (error == nullptr) return absl::InternalError(absl::StrCat(context, ": unknown libvirt error"));
  const std::string message =
      absl::StrCat(context, ": ", error->message != nullptr ? error->message : "(no message)");
  switch (error->code) {
    case VIR_ERR_NO_DOMAIN:
      return absl::NotFoundError(message);
    case VIR_ERR_OPERATION_INVALID:
      return absl::FailedPreconditionError(message);
    case VIR_ERR_XML_ERROR:
    case VIR_ERR_XML_DETAIL:
    case VIR_ERR_CONFIG_UNSUPPORTED:
    case VIR_ERR_INVALID_ARG:
      return absl::InvalidArgumentError(message);
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_RPC:
    case VIR_ERR_INVALID_CONN:
    case VIR_ERR_SYSTEM_ERROR:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

// Errors are returned as Status; libvirt's default handler would also print them.
void IgnoreError(void*, virErrorPtr) {}

bool IsActive(virDomainPtr dom, bool* active) {
  const int r = virDomainIsActive(dom);
  if (r < 0) return false;
  *active = r == 1;
  return true;
}

}  // namespace

struct LibvirtHypervisor::Impl {
  scribe::Loop* loop = nullptr;
  LibvirtHypervisorOptions options;
  virConnectPtr conn = nullptr;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  ~Impl() {
    *alive = false;
    if (conn != nullptr) virConnectClose(conn);
  }

  void Reply(StatusDone done, absl::Status status) {
    loop->Post([alive = alive, done = std::move(done), status = std::move(status)] {
      if (*alive) done(status);
    });
  }

  // The epoch in a domain's hypercore metadata; NOT_FOUND when the domain has none (it
  // was not defined by hypercore).
  absl::StatusOr<uint64_t> Epoch(virDomainPtr dom) {
    CString metadata(virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, kHypercoreXmlNamespace,
                                          VIR_DOMAIN_AFFECT_CURRENT));
    if (metadata == nullptr) {
      virErrorPtr error = virGetLastError();
      if (error != nullptr && error->code == VIR_ERR_NO_DOMAIN_METADATA) {
        return absl::NotFoundError("not a hypercore domain");
      }
      return LastError("reading the domain's hypercore metadata");
    }
    // libvirt hands the element back without its prefix: <vm><epoch>N</epoch></vm>.
    const std::string text(metadata.get());
    const size_t open = text.find("<epoch>");
    const size_t close = text.find("</epoch>");
    uint64_t epoch = 0;
    if (open == std::string::npos || close == std::string::npos || close < open ||
        !absl::SimpleAtoi(text.substr(open + 7, close - open - 7), &epoch)) {
      return absl::InternalError(absl::StrCat("malformed hypercore metadata: ", text));
    }
    return epoch;
  }

  // The domain `name` if hypercore defined it; NOT_FOUND if it does not exist or is
  // someone else's (which hypercore never touches).
  absl::StatusOr<DomainPtr> LookupOurs(const std::string& name) {
    DomainPtr dom(virDomainLookupByName(conn, name.c_str()));
    if (dom == nullptr) return LastError(absl::StrCat("vm ", name));
    absl::StatusOr<uint64_t> epoch = Epoch(dom.get());
    if (epoch.status().code() == absl::StatusCode::kNotFound) {
      return absl::NotFoundError(
          absl::StrCat("vm ", name, ": the domain of that name was not defined by hypercore"));
    }
    if (!epoch.ok()) return epoch.status();
    return dom;
  }

  absl::StatusOr<VmStatus> StatusOf(virDomainPtr dom, const std::string& name) {
    absl::StatusOr<uint64_t> epoch = Epoch(dom);
    if (!epoch.ok()) return epoch.status();
    int state = 0, reason = 0;
    if (virDomainGetState(dom, &state, &reason, 0) < 0) {
      return LastError(absl::StrCat("state of vm ", name));
    }
    VmStatus status;
    status.name = name;
    status.epoch = *epoch;
    // Anything but shut off still has a QEMU process holding the disks.
    status.state = state == VIR_DOMAIN_SHUTOFF ? VmPowerState::kShutOff : VmPowerState::kRunning;
    return status;
  }

  absl::Status Start(const VmLaunch& launch) {
    absl::StatusOr<std::string> xml = DomainXml(launch, options);
    if (!xml.ok()) return xml.status();
    const std::string& name = launch.spec.name;
    DomainPtr existing(virDomainLookupByName(conn, name.c_str()));
    if (existing != nullptr) {
      if (Epoch(existing.get()).status().code() == absl::StatusCode::kNotFound) {
        return absl::FailedPreconditionError(absl::StrCat(
            "vm ", name, ": a domain of that name not defined by hypercore exists on this host"));
      }
      bool active = false;
      if (!IsActive(existing.get(), &active)) return LastError(absl::StrCat("vm ", name));
      if (active) {
        return absl::FailedPreconditionError(absl::StrCat("vm ", name, " is already running"));
      }
      // Replace the old definition (its UUID or devices may differ).
      if (virDomainUndefine(existing.get()) < 0) {
        return LastError(absl::StrCat("undefining the old definition of vm ", name));
      }
    }
    DomainPtr dom(virDomainDefineXML(conn, xml->c_str()));
    if (dom == nullptr) return LastError(absl::StrCat("defining vm ", name));
    if (virDomainCreate(dom.get()) < 0) return LastError(absl::StrCat("starting vm ", name));
    return absl::OkStatus();
  }

  absl::Status Shutdown(const std::string& name) {
    absl::StatusOr<DomainPtr> dom = LookupOurs(name);
    if (!dom.ok()) return dom.status();
    bool active = false;
    if (!IsActive(dom->get(), &active)) return LastError(absl::StrCat("vm ", name));
    if (!active) return absl::FailedPreconditionError(absl::StrCat("vm ", name, " is not running"));
    if (virDomainShutdownFlags(dom->get(), VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) < 0) {
      // Drivers without the flag (libvirt's test driver) take the default method.
      if (virDomainShutdown(dom->get()) < 0) return LastError(absl::StrCat("shutting down vm ", name));
    }
    return absl::OkStatus();
  }

  absl::Status ForceOff(const std::string& name) {
    absl::StatusOr<DomainPtr> dom = LookupOurs(name);
    if (!dom.ok()) return dom.status();
    bool active = false;
    if (!IsActive(dom->get(), &active)) return LastError(absl::StrCat("vm ", name));
    if (!active) return absl::OkStatus();
    if (virDomainDestroy(dom->get()) < 0) {
      const absl::Status error = LastError(absl::StrCat("forcing off vm ", name));
      // It may have powered off by itself in between: what counts is that it is off.
      if (IsActive(dom->get(), &active) && !active) return absl::OkStatus();
      return error;
    }
    return absl::OkStatus();
  }

  absl::Status Undefine(const std::string& name) {
    absl::StatusOr<DomainPtr> dom = LookupOurs(name);
    if (!dom.ok()) return dom.status();
    bool active = false;
    if (!IsActive(dom->get(), &active)) return LastError(absl::StrCat("vm ", name));
    if (active) {
      return absl::FailedPreconditionError(absl::StrCat("vm ", name, " is running; force it off first"));
    }
    if (virDomainUndefine(dom->get()) < 0) return LastError(absl::StrCat("undefining vm ", name));
    return absl::OkStatus();
  }

  absl::StatusOr<VmStatus> GetStatus(const std::string& name) {
    absl::StatusOr<DomainPtr> dom = LookupOurs(name);
    if (dom.status().code() == absl::StatusCode::kNotFound) {
      VmStatus absent;
      absent.name = name;
      return absent;
    }
    if (!dom.ok()) return dom.status();
    return StatusOf(dom->get(), name);
  }

  absl::StatusOr<std::vector<VmStatus>> List() {
    virDomainPtr* doms = nullptr;
    const int n = virConnectListAllDomains(conn, &doms, 0);
    if (n < 0) return LastError("listing domains");
    std::vector<DomainPtr> owned;
    for (int i = 0; i < n; ++i) owned.emplace_back(doms[i]);
    std::free(doms);
    std::vector<VmStatus> list;
    for (const DomainPtr& dom : owned) {
      const char* name = virDomainGetName(dom.get());
      if (name == nullptr) continue;  // vanished meanwhile
      absl::StatusOr<VmStatus> status = StatusOf(dom.get(), name);
      if (status.status().code() == absl::StatusCode::kNotFound) continue;  // not ours
      if (!status.ok()) return status.status();
      list.push_back(*std::move(status));
    }
    std::sort(list.begin(), list.end(),
              [](const VmStatus& a, const VmStatus& b) { return a.name < b.name; });
    return list;
  }
};

absl::StatusOr<std::unique_ptr<LibvirtHypervisor>> LibvirtHypervisor::Create(
    scribe::Loop* loop, LibvirtHypervisorOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->loop = loop;
  impl->options = std::move(options);
  impl->conn = virConnectOpen(impl->options.uri.c_str());
  if (impl->conn == nullptr) {
    virErrorPtr error = virGetLastError();
    return absl::UnavailableError(absl::StrCat("cannot connect to libvirt at ", impl->options.uri,
                                               ": ", error != nullptr && error->message != nullptr
                                                         ? error->message
                                                         : "unknown error"));
  }
  virConnSetErrorFunc(impl->conn, nullptr, IgnoreError);
  return std::unique_ptr<LibvirtHypervisor>(new LibvirtHypervisor(std::move(impl)));
}

LibvirtHypervisor::LibvirtHypervisor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LibvirtHypervisor::~LibvirtHypervisor() = default;

void LibvirtHypervisor::Start(const VmLaunch& launch, StatusDone done) {
  impl_->Reply(std::move(done), impl_->Start(launch));
}

void LibvirtHypervisor::Shutdown(const std::string& name, StatusDone done) {
  impl_->Reply(std::move(done), impl_->Shutdown(name));
}

void LibvirtHypervisor::ForceOff(const std::string& name, StatusDone done) {
  impl_->Reply(std::move(done), impl_->ForceOff(name));
}

void LibvirtHypervisor::Undefine(const std::string& name, StatusDone done) {
  impl_->Reply(std::move(done), impl_->Undefine(name));
}

void LibvirtHypervisor::GetStatus(const std::string& name, Done<VmStatus> done) {
  absl::StatusOr<VmStatus> status = impl_->GetStatus(name);
  impl_->loop->Post([alive = impl_->alive, done = std::move(done), status = std::move(status)] {
    if (*alive) done(status);
  });
}

void LibvirtHypervisor::List(Done<std::vector<VmStatus>> done) {
  absl::StatusOr<std::vector<VmStatus>> list = impl_->List();
  impl_->loop->Post([alive = impl_->alive, done = std::move(done), list = std::move(list)] {
    if (*alive) done(list);
  });
}

absl::StatusOr<std::string> LibvirtHypervisor::DescribeDomain(const std::string& name) {
  absl::StatusOr<DomainPtr> dom = impl_->LookupOurs(name);
  if (!dom.ok()) return dom.status();
  CString xml(virDomainGetXMLDesc(dom->get(), 0));
  if (xml == nullptr) return LastError(absl::StrCat("describing vm ", name));
  return std::string(xml.get());
}

}  // namespace hypercore
