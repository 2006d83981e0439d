// Conformance checks for Hypervisor (hypercore/hypervisor.h). Each check drives an
// implementation through the public contract only and returns a failure naming the
// first deviation, so the same checks run against FakeHypervisor, LibvirtHypervisor on
// libvirt's test driver, and deliberately broken hypervisors (to prove they can fail).
//
// Every check uses VMs named "conf-<check>-..." and leaves none behind, so checks may
// share one hypervisor (libvirt's test:///default is shared by a whole process).
#ifndef LIBHYPERCORE_HYPERVISOR_CONFORMANCE_H_
#define LIBHYPERCORE_HYPERVISOR_CONFORMANCE_H_

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "hypercore/hypervisor.h"
#include "scribe/env.h"

namespace hypercore::hypervisor_conformance {

// Runs `op` and the loop until its callback reports, or `timeout_ms` of loop time
// passes (then DEADLINE_EXCEEDED, which no hypervisor returns by itself).
template <typename T>
absl::StatusOr<T> Await(scribe::Loop* loop, const std::function<void(Hypervisor::Done<T>)>& op,
                        int64_t timeout_ms = 10'000) {
  bool done = false;
  absl::StatusOr<T> result = absl::UnknownError("no result");
  op([&](absl::StatusOr<T> r) {
    result = std::move(r);
    done = true;
  });
  if (!loop->RunUntil([&] { return done; }, timeout_ms * 1'000'000)) {
    return absl::DeadlineExceededError("hypervisor call did not complete");
  }
  return result;
}
absl::Status AwaitStatus(scribe::Loop* loop,
                         const std::function<void(Hypervisor::StatusDone)>& op,
                         int64_t timeout_ms = 10'000);

// A valid launch of a small VM with two disks, a CD-ROM and two NICs (one tagged).
VmLaunch TestLaunch(const std::string& name, uint64_t epoch);

// Start -> running with its epoch and listed; a second Start -> FAILED_PRECONDITION;
// ForceOff -> shut off (and again: still OK); Undefine -> absent and unlisted.
testing::AssertionResult CheckLifecycle(scribe::Loop* loop, Hypervisor* hv);
// Shutdown (ACPI) of a running VM -> shut off within `acpi_timeout_ms`; Shutdown of a
// shut-off VM -> FAILED_PRECONDITION.
testing::AssertionResult CheckShutdown(scribe::Loop* loop, Hypervisor* hv, int64_t acpi_timeout_ms);
// Unknown names: Shutdown, ForceOff, Undefine -> NOT_FOUND; GetStatus -> kAbsent.
testing::AssertionResult CheckUnknownVm(scribe::Loop* loop, Hypervisor* hv);
// A launch failing ValidateLaunch -> INVALID_ARGUMENT and nothing defined.
testing::AssertionResult CheckRejectsInvalidLaunch(scribe::Loop* loop, Hypervisor* hv);
// A restart with a higher epoch replaces the definition: the status shows the new one.
testing::AssertionResult CheckRestartWithNewEpoch(scribe::Loop* loop, Hypervisor* hv);
// Undefine of a running VM -> FAILED_PRECONDITION, and it keeps running.
testing::AssertionResult CheckUndefineRunningRefused(scribe::Loop* loop, Hypervisor* hv);
// Start and ForceOff called back to back (no wait in between): the VM ends up off, and
// no callback ran inside the call that started it.
testing::AssertionResult CheckOrderedOperations(scribe::Loop* loop, Hypervisor* hv);

}  // namespace hypercore::hypervisor_conformance

#endif  // LIBHYPERCORE_HYPERVISOR_CONFORMANCE_H_
