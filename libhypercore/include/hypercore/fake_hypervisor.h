// FakeHypervisor: an in-memory Hypervisor on a Loop, for unit tests and the
// deterministic HA simulator. It honours the Hypervisor contract (per-VM ordering,
// error codes, callbacks on the loop) and adds what a simulator needs: operation
// latency drawn from a seeded Random, guests that crash or ignore the ACPI button,
// injected start failures, and an observer that is told the exact (loop) time every VM
// starts and stops running, with its epoch — the raw material of the simulator's
// "never on two nodes at once" check.
//
// Destroying the fake is the host dying: every VM still running stops at that moment
// (the observer is told), operations in flight never complete.
//
// Threading: single-threaded on `loop`.
#ifndef HYPERCORE_FAKE_HYPERVISOR_H_
#define HYPERCORE_FAKE_HYPERVISOR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "hypercore/hypervisor.h"
#include "scribe/env.h"

namespace hypercore {

struct FakeHypervisorOptions {
  // Reported in FakeRunEvent::host.
  std::string host;
  // Start, Shutdown, ForceOff and Undefine take effect after a latency uniform in
  // [min, max]. GetStatus and List answer on the next loop turn.
  int64_t latency_ns_min = 0;
  int64_t latency_ns_max = 0;
  // A guest that honours the ACPI button powers off this long after it is pressed.
  int64_t acpi_shutdown_ns = 1'000'000'000;
};

// A VM started or stopped running on a fake hypervisor.
struct FakeRunEvent {
  enum class Kind { kStart, kStop };
  Kind kind = Kind::kStart;
  std::string host;
  std::string vm;
  uint64_t epoch = 0;
  int64_t time_ns = 0;
  uint64_t ram_bytes = 0;
  int vcpus = 0;
  // kStop: "force off", "acpi", "guest crash", "host died".
  std::string reason;
};

class FakeHypervisor : public Hypervisor {
 public:
  // `loop` and `random` must outlive the fake.
  FakeHypervisor(scribe::Loop* loop, scribe::Random* random, FakeHypervisorOptions options);
  ~FakeHypervisor() override;

  void Start(const VmLaunch& launch, StatusDone done) override;
  void Shutdown(const std::string& name, StatusDone done) override;
  void ForceOff(const std::string& name, StatusDone done) override;
  void Undefine(const std::string& name, StatusDone done) override;
  void GetStatus(const std::string& name, Done<VmStatus> done) override;
  void List(Done<std::vector<VmStatus>> done) override;

  // Called on every start and stop of a VM, at the moment it takes effect.
  void SetObserver(std::function<void(const FakeRunEvent&)> observer);

  // --- Faults ---
  // A running guest dies by itself now (a kernel panic under <on_crash>destroy): it is
  // shut off. False if it was not running.
  bool CrashGuest(const std::string& name);
  // While set, the guest ignores the ACPI button (Shutdown succeeds, nothing happens).
  void SetIgnoresAcpi(const std::string& name, bool ignores);
  // The next `count` Starts fail with INTERNAL (the VM stays off).
  void FailNextStarts(int count);

  // --- Inspection ---
  std::vector<std::string> Running() const;  // sorted
  // The launch that defined `name`, or null.
  const VmLaunch* DefinedLaunch(const std::string& name) const;
  uint64_t starts() const { return starts_; }

 private:
  struct Vm {
    VmLaunch launch;
    bool running = false;
    uint64_t run_generation = 0;  // bumped at every start: a late ACPI timer is ignored
  };

  // Runs `apply` after the operation latency, after every earlier operation on `name`.
  void Schedule(const std::string& name, std::function<absl::Status()> apply, StatusDone done);
  void Stop(Vm& vm, const std::string& reason);
  void Notify(FakeRunEvent::Kind kind, const Vm& vm, const std::string& reason);

  scribe::Loop* loop_;
  scribe::Random* random_;
  FakeHypervisorOptions options_;
  std::map<std::string, Vm> vms_;
  std::map<std::string, int64_t> last_effect_ns_;
  std::set<std::string> ignores_acpi_;
  int fail_starts_ = 0;
  uint64_t starts_ = 0;
  std::function<void(const FakeRunEvent&)> observer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace hypercore

#endif  // HYPERCORE_FAKE_HYPERVISOR_H_
