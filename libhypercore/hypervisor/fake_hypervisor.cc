#include "hypercore/fake_hypervisor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "scribe/status.h"

namespace hypercore {

FakeHypervisor::FakeHypervisor(scribe::Loop* loop, scribe::Random* random,
                               FakeHypervisorOptions options)
    : loop_(loop), random_(random), options_(std::move(options)) {
  SCRIBE_CHECK(options_.latency_ns_min >= 0);
  SCRIBE_CHECK(options_.latency_ns_max >= options_.latency_ns_min);
}

FakeHypervisor::~FakeHypervisor() {
  *alive_ = false;
  for (auto& [name, vm] : vms_) {
    if (vm.running) Stop(vm, "host died");
  }
}

void FakeHypervisor::SetObserver(std::function<void(const FakeRunEvent&)> observer) {
  observer_ = std::move(observer);
}

void FakeHypervisor::Notify(FakeRunEvent::Kind kind, const Vm& vm, const std::string& reason) {
  if (!observer_) return;
  FakeRunEvent event;
  event.kind = kind;
  event.host = options_.host;
  event.vm = vm.launch.spec.name;
  event.epoch = vm.launch.epoch;
  event.time_ns = loop_->NowNanos();
  event.ram_bytes = vm.launch.spec.ram_bytes;
  event.vcpus = vm.launch.spec.vcpus;
  event.reason = reason;
  observer_(event);
}

void FakeHypervisor::Stop(Vm& vm, const std::string& reason) {
  SCRIBE_CHECK(vm.running);
  vm.running = false;
  Notify(FakeRunEvent::Kind::kStop, vm, reason);
}

void FakeHypervisor::Schedule(const std::string& name, std::function<absl::Status()> apply,
                              StatusDone done) {
  const int64_t spread = options_.latency_ns_max - options_.latency_ns_min;
  const int64_t latency =
      options_.latency_ns_min +
      (spread > 0 ? static_cast<int64_t>(random_->Uniform(static_cast<uint64_t>(spread) + 1)) : 0);
  int64_t effect_ns = loop_->NowNanos() + latency;
  // Per-VM order: never before an earlier operation on the same VM. Equal deadlines run
  // in scheduling order on every Loop.
  auto last = last_effect_ns_.find(name);
  if (last != last_effect_ns_.end()) effect_ns = std::max(effect_ns, last->second);
  last_effect_ns_[name] = effect_ns;
  loop_->RunAfter(effect_ns - loop_->NowNanos(),
                  [alive = alive_, apply = std::move(apply), done = std::move(done)] {
                    if (!*alive) return;
                    absl::Status status = apply();
                    done(std::move(status));
                  });
}

void FakeHypervisor::Start(const VmLaunch& launch, StatusDone done) {
  Schedule(
      launch.spec.name,
      [this, launch] {
        absl::Status valid = ValidateLaunch(launch);
        if (!valid.ok()) return valid;
        auto it = vms_.find(launch.spec.name);
        if (it != vms_.end() && it->second.running) {
          return absl::FailedPreconditionError(
              absl::StrCat("vm ", launch.spec.name, " is already running (epoch ",
                           it->second.launch.epoch, ") on ", options_.host));
        }
        if (fail_starts_ > 0) {
          --fail_starts_;
          // A failed start leaves the new definition shut off, as libvirt does.
          Vm& vm = vms_[launch.spec.name];
          vm.launch = launch;
          return absl::InternalError(absl::StrCat("injected start failure of vm ",
                                                  launch.spec.name, " on ", options_.host));
        }
        Vm& vm = vms_[launch.spec.name];
        vm.launch = launch;
        vm.running = true;
        ++vm.run_generation;
        ++starts_;
        Notify(FakeRunEvent::Kind::kStart, vm, "");
        return absl::OkStatus();
      },
      std::move(done));
}

void FakeHypervisor::Shutdown(const std::string& name, StatusDone done) {
  Schedule(
      name,
      [this, name] {
        auto it = vms_.find(name);
        if (it == vms_.end()) return absl::NotFoundError(absl::StrCat("vm ", name, " is not defined on ", options_.host));
        Vm& vm = it->second;
        if (!vm.running) {
          return absl::FailedPreconditionError(absl::StrCat("vm ", name, " is not running"));
        }
        if (!ignores_acpi_.contains(name)) {
          const uint64_t generation = vm.run_generation;
          loop_->RunAfter(options_.acpi_shutdown_ns, [this, alive = alive_, name, generation] {
            if (!*alive) return;
            auto it = vms_.find(name);
            if (it == vms_.end() || !it->second.running || it->second.run_generation != generation) {
              return;
            }
            Stop(it->second, "acpi");
          });
        }
        return absl::OkStatus();
      },
      std::move(done));
}

void FakeHypervisor::ForceOff(const std::string& name, StatusDone done) {
  Schedule(
      name,
      [this, name] {
        auto it = vms_.find(name);
        if (it == vms_.end()) return absl::NotFoundError(absl::StrCat("vm ", name, " is not defined on ", options_.host));
        if (it->second.running) Stop(it->second, "force off");
        return absl::OkStatus();
      },
      std::move(done));
}

void FakeHypervisor::Undefine(const std::string& name, StatusDone done) {
  Schedule(
      name,
      [this, name] {
        auto it = vms_.find(name);
        if (it == vms_.end()) return absl::NotFoundError(absl::StrCat("vm ", name, " is not defined on ", options_.host));
        if (it->second.running) {
          return absl::FailedPreconditionError(
              absl::StrCat("vm ", name, " is running; force it off first"));
        }
        vms_.erase(it);
        return absl::OkStatus();
      },
      std::move(done));
}

void FakeHypervisor::GetStatus(const std::string& name, Done<VmStatus> done) {
  VmStatus status;
  status.name = name;
  auto it = vms_.find(name);
  if (it != vms_.end()) {
    status.state = it->second.running ? VmPowerState::kRunning : VmPowerState::kShutOff;
    status.epoch = it->second.launch.epoch;
  }
  loop_->Post([alive = alive_, status, done = std::move(done)] {
    if (*alive) done(status);
  });
}

void FakeHypervisor::List(Done<std::vector<VmStatus>> done) {
  std::vector<VmStatus> list;
  for (const auto& [name, vm] : vms_) {
    list.push_back(VmStatus{name, vm.running ? VmPowerState::kRunning : VmPowerState::kShutOff,
                            vm.launch.epoch});
  }
  loop_->Post([alive = alive_, list = std::move(list), done = std::move(done)] {
    if (*alive) done(list);
  });
}

bool FakeHypervisor::CrashGuest(const std::string& name) {
  auto it = vms_.find(name);
  if (it == vms_.end() || !it->second.running) return false;
  Stop(it->second, "guest crash");
  return true;
}

void FakeHypervisor::SetIgnoresAcpi(const std::string& name, bool ignores) {
  if (ignores) {
    ignores_acpi_.insert(name);
  } else {
    ignores_acpi_.erase(name);
  }
}

void FakeHypervisor::FailNextStarts(int count) { fail_starts_ = count; }

std::vector<std::string> FakeHypervisor::Running() const {
  std::vector<std::string> names;
  for (const auto& [name, vm] : vms_) {
    if (vm.running) names.push_back(name);
  }
  return names;
}

const VmLaunch* FakeHypervisor::DefinedLaunch(const std::string& name) const {
  auto it = vms_.find(name);
  return it == vms_.end() ? nullptr : &it->second.launch;
}

}  // namespace hypercore
