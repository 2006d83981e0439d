#include "libhypercore/hypervisor/conformance.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace hypercore::hypervisor_conformance {
namespace {

using testing::AssertionFailure;
using testing::AssertionResult;
using testing::AssertionSuccess;

constexpr uint64_t kMiB = 1ull << 20;

absl::StatusOr<VmStatus> Status(scribe::Loop* loop, Hypervisor* hv, const std::string& name) {
  return Await<VmStatus>(loop, [&](auto done) { hv->GetStatus(name, done); });
}

absl::StatusOr<std::vector<VmStatus>> List(scribe::Loop* loop, Hypervisor* hv) {
  return Await<std::vector<VmStatus>>(loop, [&](auto done) { hv->List(done); });
}

absl::Status Start(scribe::Loop* loop, Hypervisor* hv, const VmLaunch& launch) {
  return AwaitStatus(loop, [&](auto done) { hv->Start(launch, done); });
}
absl::Status ForceOff(scribe::Loop* loop, Hypervisor* hv, const std::string& name) {
  return AwaitStatus(loop, [&](auto done) { hv->ForceOff(name, done); });
}
absl::Status Undefine(scribe::Loop* loop, Hypervisor* hv, const std::string& name) {
  return AwaitStatus(loop, [&](auto done) { hv->Undefine(name, done); });
}
absl::Status Shutdown(scribe::Loop* loop, Hypervisor* hv, const std::string& name) {
  return AwaitStatus(loop, [&](auto done) { hv->Shutdown(name, done); });
}

// Expects `name` in `state` (and `epoch`, when not absent).
AssertionResult Expect(scribe::Loop* loop, Hypervisor* hv, const std::string& name,
                       VmPowerState state, uint64_t epoch) {
  absl::StatusOr<VmStatus> status = Status(loop, hv, name);
  if (!status.ok()) return AssertionFailure() << "GetStatus(" << name << "): " << status.status();
  if (status->name != name) {
    return AssertionFailure() << "GetStatus(" << name << ") named " << status->name;
  }
  if (status->state != state) {
    return AssertionFailure() << name << " is " << VmPowerStateName(status->state) << ", expected "
                              << VmPowerStateName(state);
  }
  if (state != VmPowerState::kAbsent && status->epoch != epoch) {
    return AssertionFailure() << name << " has epoch " << status->epoch << ", expected " << epoch;
  }
  return AssertionSuccess();
}

AssertionResult ExpectListed(scribe::Loop* loop, Hypervisor* hv, const std::string& name,
                             bool listed) {
  absl::StatusOr<std::vector<VmStatus>> list = List(loop, hv);
  if (!list.ok()) return AssertionFailure() << "List: " << list.status();
  if (!std::is_sorted(list->begin(), list->end(),
                      [](const VmStatus& a, const VmStatus& b) { return a.name < b.name; })) {
    return AssertionFailure() << "List is not sorted by name";
  }
  const bool found = std::any_of(list->begin(), list->end(),
                                 [&](const VmStatus& s) { return s.name == name; });
  if (found != listed) {
    return AssertionFailure() << name << (listed ? " missing from" : " still in") << " List";
  }
  return AssertionSuccess();
}

AssertionResult ExpectCode(const absl::Status& status, absl::StatusCode code, const std::string& what) {
  if (status.code() != code) {
    return AssertionFailure() << what << ": expected " << absl::StatusCodeToString(code) << ", got "
                              << status;
  }
  return AssertionSuccess();
}

// Removes a VM a failed check may have left behind.
void Cleanup(scribe::Loop* loop, Hypervisor* hv, const std::string& name) {
  (void)ForceOff(loop, hv, name);
  (void)Undefine(loop, hv, name);
}

#define CONFORMANCE_EXPECT(expr)                       \
  do {                                                 \
    AssertionResult conformance_result_ = (expr);      \
    if (!conformance_result_) {                        \
      Cleanup(loop, hv, name);                         \
      return conformance_result_;                      \
    }                                                  \
  } while (0)

}  // namespace

absl::Status AwaitStatus(scribe::Loop* loop, const std::function<void(Hypervisor::StatusDone)>& op,
                         int64_t timeout_ms) {
  bool done = false;
  absl::Status result = absl::UnknownError("no result");
  op([&](absl::Status s) {
    result = std::move(s);
    done = true;
  });
  if (!loop->RunUntil([&] { return done; }, timeout_ms * 1'000'000)) {
    return absl::DeadlineExceededError("hypervisor call did not complete");
  }
  return result;
}

VmLaunch TestLaunch(const std::string& name, uint64_t epoch) {
  VmSpec spec;
  spec.name = name;
  spec.description = "conformance <&\"'> check";
  spec.vcpus = 2;
  spec.ram_bytes = 256 * kMiB;
  spec.disks = {VmDisk{"root", 8ull << 30}, VmDisk{"data", 1ull << 30}};
  spec.cdrom_iso = "installer.iso";
  VmNic tagged;
  tagged.vlan = 42;
  tagged.mac = "52:54:00:12:34:56";
  spec.nics = {VmNic{}, tagged};
  NbdLaunchOptions nbd;
  nbd.socket_path = "/run/scribed/nbd.sock";
  return MakeNbdLaunch(spec, "5f0c8e9a-1b2c-4d3e-8f40-123456789abc", epoch, nbd);
}

AssertionResult CheckLifecycle(scribe::Loop* loop, Hypervisor* hv) {
  const std::string name = "conf-lifecycle";
  const VmLaunch launch = TestLaunch(name, 3);
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kAbsent, 0));
  CONFORMANCE_EXPECT(ExpectCode(Start(loop, hv, launch), absl::StatusCode::kOk, "Start"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kRunning, 3));
  CONFORMANCE_EXPECT(ExpectListed(loop, hv, name, true));
  CONFORMANCE_EXPECT(ExpectCode(Start(loop, hv, TestLaunch(name, 4)),
                                absl::StatusCode::kFailedPrecondition, "Start of a running VM"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kRunning, 3));
  CONFORMANCE_EXPECT(ExpectCode(ForceOff(loop, hv, name), absl::StatusCode::kOk, "ForceOff"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kShutOff, 3));
  CONFORMANCE_EXPECT(
      ExpectCode(ForceOff(loop, hv, name), absl::StatusCode::kOk, "ForceOff of a shut-off VM"));
  CONFORMANCE_EXPECT(ExpectListed(loop, hv, name, true));
  CONFORMANCE_EXPECT(ExpectCode(Undefine(loop, hv, name), absl::StatusCode::kOk, "Undefine"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kAbsent, 0));
  CONFORMANCE_EXPECT(ExpectListed(loop, hv, name, false));
  return AssertionSuccess();
}

AssertionResult CheckShutdown(scribe::Loop* loop, Hypervisor* hv, int64_t acpi_timeout_ms) {
  const std::string name = "conf-shutdown";
  CONFORMANCE_EXPECT(ExpectCode(Start(loop, hv, TestLaunch(name, 1)), absl::StatusCode::kOk, "Start"));
  CONFORMANCE_EXPECT(ExpectCode(Shutdown(loop, hv, name), absl::StatusCode::kOk, "Shutdown"));
  const int64_t deadline = loop->NowNanos() + acpi_timeout_ms * 1'000'000;
  for (;;) {
    absl::StatusOr<VmStatus> status = Status(loop, hv, name);
    if (!status.ok()) {
      Cleanup(loop, hv, name);
      return AssertionFailure() << "GetStatus: " << status.status();
    }
    if (status->state == VmPowerState::kShutOff) break;
    if (loop->NowNanos() >= deadline) {
      Cleanup(loop, hv, name);
      return AssertionFailure() << name << " still " << VmPowerStateName(status->state) << " "
                                << acpi_timeout_ms << " ms after Shutdown";
    }
    loop->RunUntil([] { return false; }, 50'000'000);
  }
  CONFORMANCE_EXPECT(ExpectCode(Shutdown(loop, hv, name), absl::StatusCode::kFailedPrecondition,
                                "Shutdown of a shut-off VM"));
  CONFORMANCE_EXPECT(ExpectCode(Undefine(loop, hv, name), absl::StatusCode::kOk, "Undefine"));
  return AssertionSuccess();
}

AssertionResult CheckUnknownVm(scribe::Loop* loop, Hypervisor* hv) {
  const std::string name = "conf-unknown";
  CONFORMANCE_EXPECT(ExpectCode(Shutdown(loop, hv, name), absl::StatusCode::kNotFound, "Shutdown"));
  CONFORMANCE_EXPECT(ExpectCode(ForceOff(loop, hv, name), absl::StatusCode::kNotFound, "ForceOff"));
  CONFORMANCE_EXPECT(ExpectCode(Undefine(loop, hv, name), absl::StatusCode::kNotFound, "Undefine"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kAbsent, 0));
  return AssertionSuccess();
}

AssertionResult CheckRejectsInvalidLaunch(scribe::Loop* loop, Hypervisor* hv) {
  const std::string name = "conf-invalid";
  VmLaunch launch = TestLaunch(name, 1);
  launch.disks.pop_back();  // one attachment short
  CONFORMANCE_EXPECT(
      ExpectCode(Start(loop, hv, launch), absl::StatusCode::kInvalidArgument, "Start (2 disks, 1 attachment)"));
  launch = TestLaunch(name, 0);
  CONFORMANCE_EXPECT(ExpectCode(Start(loop, hv, launch), absl::StatusCode::kInvalidArgument, "Start (epoch 0)"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kAbsent, 0));
  return AssertionSuccess();
}

AssertionResult CheckRestartWithNewEpoch(scribe::Loop* loop, Hypervisor* hv) {
  const std::string name = "conf-restart";
  CONFORMANCE_EXPECT(ExpectCode(Start(loop, hv, TestLaunch(name, 5)), absl::StatusCode::kOk, "Start"));
  CONFORMANCE_EXPECT(ExpectCode(ForceOff(loop, hv, name), absl::StatusCode::kOk, "ForceOff"));
  CONFORMANCE_EXPECT(ExpectCode(Start(loop, hv, TestLaunch(name, 6)), absl::StatusCode::kOk, "restart"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kRunning, 6));
  CONFORMANCE_EXPECT(ExpectCode(ForceOff(loop, hv, name), absl::StatusCode::kOk, "ForceOff"));
  CONFORMANCE_EXPECT(ExpectCode(Undefine(loop, hv, name), absl::StatusCode::kOk, "Undefine"));
  return AssertionSuccess();
}

AssertionResult CheckUndefineRunningRefused(scribe::Loop* loop, Hypervisor* hv) {
  const std::string name = "conf-undefine-running";
  CONFORMANCE_EXPECT(ExpectCode(Start(loop, hv, TestLaunch(name, 1)), absl::StatusCode::kOk, "Start"));
  CONFORMANCE_EXPECT(ExpectCode(Undefine(loop, hv, name), absl::StatusCode::kFailedPrecondition,
                                "Undefine of a running VM"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kRunning, 1));
  CONFORMANCE_EXPECT(ExpectCode(ForceOff(loop, hv, name), absl::StatusCode::kOk, "ForceOff"));
  CONFORMANCE_EXPECT(ExpectCode(Undefine(loop, hv, name), absl::StatusCode::kOk, "Undefine"));
  return AssertionSuccess();
}

AssertionResult CheckOrderedOperations(scribe::Loop* loop, Hypervisor* hv) {
  const std::string name = "conf-ordered";
  int completed = 0;
  bool reentrant = false;
  absl::Status start_status = absl::UnknownError("no result"), off_status = start_status;
  bool in_call = true;
  hv->Start(TestLaunch(name, 2), [&](absl::Status s) {
    reentrant |= in_call;
    start_status = s;
    ++completed;
  });
  hv->ForceOff(name, [&](absl::Status s) {
    reentrant |= in_call;
    off_status = s;
    ++completed;
  });
  in_call = false;
  if (!loop->RunUntil([&] { return completed == 2; }, 10'000'000'000)) {
    Cleanup(loop, hv, name);
    return AssertionFailure() << "Start + ForceOff did not both complete";
  }
  if (reentrant) {
    Cleanup(loop, hv, name);
    return AssertionFailure() << "a callback ran inside the call that started the operation";
  }
  CONFORMANCE_EXPECT(ExpectCode(start_status, absl::StatusCode::kOk, "Start"));
  CONFORMANCE_EXPECT(ExpectCode(off_status, absl::StatusCode::kOk, "ForceOff right after Start"));
  CONFORMANCE_EXPECT(Expect(loop, hv, name, VmPowerState::kShutOff, 2));
  CONFORMANCE_EXPECT(ExpectCode(Undefine(loop, hv, name), absl::StatusCode::kOk, "Undefine"));
  return AssertionSuccess();
}

}  // namespace hypercore::hypervisor_conformance
