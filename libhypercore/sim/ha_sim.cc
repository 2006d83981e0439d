#include "libhypercore/sim/ha_sim.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "hypercore/fake_hypervisor.h"
#include "hypercore/ha.h"
#include "hypercore/placement.h"
#include "libhypercore/ha/records.h"
#include "scribe/meta_store.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace hypercore {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;
constexpr uint64_t kMiB = 1ull << 20;
constexpr size_t kLogTailLines = 80;
// The checker samples liveness this often.
constexpr int64_t kSampleIntervalNs = 250 * kMs;
// Managers' timing in the simulator (HaOptions): short enough for the liveness bound.
constexpr int64_t kShutdownTimeoutMs = 2'000;
constexpr int64_t kStartRetryMs = 1'000;
constexpr int64_t kAcpiShutdownNs = 1 * kSec;
constexpr char kSocketPath[] = "/run/scribed/nbd.sock";
// Watch events reach node i this many ns times i after the store delivers them (see
// OrderedWatchStore); the checker's observer gets half a step.
constexpr int64_t kWatchOrderStepNs = 1'000;

std::string T(int64_t ns) {
  return absl::StrFormat("t=%d.%03ds", ns / kSec, (ns % kSec) / kMs);
}

struct NodeSpec {
  std::string name;
  uint64_t ram_mib = 0;
  int cpus = 0;
};

struct SimOptions {
  std::vector<NodeSpec> nodes;
  int64_t store_latency_ns = 1 * kMs;
  int64_t hv_latency_min_ns = 10 * kMs;
  int64_t hv_latency_max_ns = 10 * kMs;
  uint64_t env_seed = 1;
};

VmSpec MakeSpec(const std::string& name, uint64_t ram_mib, int vcpus) {
  VmSpec spec;
  spec.name = name;
  spec.ram_bytes = ram_mib * kMiB;
  spec.vcpus = vcpus;
  spec.disks = {VmDisk{"root", 8ull << 30}};
  VmNic nic;
  spec.nics = {nic};
  return spec;
}

// A MetaStore client whose watch events arrive `delay_ns` after the wrapped client
// delivers them. Why: InMemoryMetaStore notifies its clients in pointer order (its
// State::clients is a std::set<Client*>), so which node sees a change first depends on
// the heap layout, and a seed run after other seeds in one process ran differently
// from the same seed alone. With a distinct delay per client, simultaneous deliveries
// are ordered by node instead. (The fix belongs in libscribe; until then, this.)
class OrderedWatchStore : public scribe::MetaStore {
 public:
  OrderedWatchStore(scribe::Loop* loop, scribe::MetaStore* inner, int64_t delay_ns)
      : MetaStore(loop), inner_(inner), delay_ns_(delay_ns) {}

 protected:
  void DoGet(const std::string& key, Done<std::optional<scribe::KeyValue>> done) override {
    inner_->Get(key, std::move(done));
  }
  void DoList(const std::string& prefix, Done<scribe::ListResult> done) override {
    inner_->List(prefix, std::move(done));
  }
  void DoPut(const std::string& key, const std::string& value, scribe::LeaseId lease,
             Done<int64_t> done) override {
    inner_->Put(key, value, lease, std::move(done));
  }
  void DoDelete(const std::string& key, Done<bool> done) override { inner_->Delete(key, std::move(done)); }
  void DoCompareAndSwap(const std::string& key, int64_t expected_mod_revision, const std::string& value,
                        scribe::LeaseId lease, Done<scribe::CasResult> done) override {
    inner_->CompareAndSwap(key, expected_mod_revision, value, lease, std::move(done));
  }
  void DoGrantLease(int64_t ttl_ms, Done<scribe::Lease> done) override {
    inner_->GrantLease(ttl_ms, std::move(done));
  }
  void DoKeepAlive(scribe::LeaseId lease, Done<int64_t> done) override {
    inner_->KeepAlive(lease, std::move(done));
  }
  void DoRevokeLease(scribe::LeaseId lease, StatusDone done) override {
    inner_->RevokeLease(lease, std::move(done));
  }
  std::unique_ptr<scribe::WatchHandle> DoWatch(const std::string& prefix, int64_t start_revision,
                                               WatchCallback on_event) override {
    auto live = std::make_shared<bool>(true);
    scribe::Loop* l = loop();
    const int64_t delay = delay_ns_;
    auto inner = inner_->Watch(prefix, start_revision, [l, live, delay, on_event](const scribe::WatchEvent& e) {
      l->RunAfter(delay, [live, on_event, e] {
        if (*live) on_event(e);
      });
    });
    return std::make_unique<Handle>(std::move(inner), live);
  }

 private:
  class Handle : public scribe::WatchHandle {
   public:
    Handle(std::unique_ptr<scribe::WatchHandle> inner, std::shared_ptr<bool> live)
        : inner_(std::move(inner)), live_(std::move(live)) {}
    ~Handle() override { *live_ = false; }

   private:
    std::unique_ptr<scribe::WatchHandle> inner_;
    std::shared_ptr<bool> live_;
  };

  scribe::MetaStore* inner_;
  int64_t delay_ns_;
};

// The cluster, the faults and the checker. Single-threaded on its SimLoop.
class Sim {
 private:
  struct Node {
    NodeSpec spec;
    int index = 0;  // position in the cluster: orders simultaneous watch deliveries
    bool up = false;
    bool cut = false;
    std::unique_ptr<scribe::InMemoryMetaStore> client;
    std::unique_ptr<OrderedWatchStore> store;  // what the manager uses
    std::unique_ptr<FakeHypervisor> fake;
    std::unique_ptr<Hypervisor> wrapped;
    std::unique_ptr<HaManager> ha;
  };

  // What the checker knows of one VM.
  struct VmTrack {
    bool exists = false;
    DesiredState desired = DesiredState::kStopped;
    std::string owner;
    uint64_t epoch = 0;
    uint64_t ram_bytes = 0;
    int vcpus = 1;
    std::map<std::string, uint64_t> running;  // host -> epoch
    uint64_t max_epoch = 0;
    std::string max_epoch_host;
    int64_t down_since_ns = -1;  // meant to run and running nowhere since
    bool excluded = false;       // this down interval waited for capacity or had no healthy node
    std::set<std::pair<std::string, uint64_t>> assigned;  // (node, epoch) decided
    uint64_t last_assigned_epoch = 0;
  };

 public:
  Sim(const HaSimConfig& config, SimOptions options)
      : config_(config), options_(std::move(options)), env_random_(options_.env_seed) {
    bound_ns_ = (config_.restart_bound_ms > 0
                     ? config_.restart_bound_ms
                     : config_.lease_ttl_ms + config_.restart_grace_ms + 3'000) *
                kMs;
    scribe::InMemoryMetaStoreOptions store_options;
    store_options.latency_ns = options_.store_latency_ns;
    store_ = scribe::InMemoryMetaStore::Create(&loop_, store_options);
    observer_client_ = store_->NewClient();
    observer_ = std::make_unique<OrderedWatchStore>(&loop_, observer_client_.get(), kWatchOrderStepNs / 2);
    record_watch_ = observer_->Watch(ha_internal::kVmsPrefix, 0,
                                     [this](const scribe::WatchEvent& e) { OnRecord(e); });
    for (const NodeSpec& spec : options_.nodes) {
      Node& n = nodes_[spec.name];
      n.spec = spec;
      n.index = static_cast<int>(nodes_.size());
    }
    sample_timer_ = loop_.RunAfter(kSampleIntervalNs, [this] { Sample(); });
  }

  ~Sim() {
    loop_.Cancel(sample_timer_);
    for (auto& [name, n] : nodes_) Destroy(n);
    record_watch_.reset();
  }

  scribe::SimLoop& loop() { return loop_; }
  HaSimResult& result() { return result_; }
  bool stopped() const { return stopped_; }
  int64_t bound_ns() const { return bound_ns_; }
  bool has_node(const std::string& name) const { return nodes_.contains(name); }

  // ------------------------------------------------------------------ log

  void Log(const std::string& line) {
    if (config_.trace) std::fprintf(stderr, "%s\n", line.c_str());
    if (config_.keep_log) result_.log.push_back(line);
    tail_.push_back(line);
    if (tail_.size() > kLogTailLines) tail_.pop_front();
  }
  void LogSim(const std::string& what) { Log(absl::StrCat(T(loop_.NowNanos()), " sim: ", what)); }

  void Violation(uint64_t HaSimResult::*counter, const std::string& what) {
    if (stopped_) return;
    ++(result_.*counter);
    ++result_.violations;
    Log(absl::StrCat(T(loop_.NowNanos()), " VIOLATION: ", what));
    result_.violation_messages.push_back(absl::StrCat("seed ", config_.seed, ": ", T(loop_.NowNanos()), ": ",
                                                      what, "\nrecent log:\n  ",
                                                      absl::StrJoin(tail_, "\n  ")));
    stopped_ = true;
  }

  // ------------------------------------------------------------------ nodes

  void Boot(const std::string& name) {
    Node& n = nodes_.at(name);
    SCRIBE_CHECK(!n.up);
    n.up = true;
    n.cut = false;
    n.client = store_->NewClient();
    n.store = std::make_unique<OrderedWatchStore>(&loop_, n.client.get(), n.index * kWatchOrderStepNs);
    FakeHypervisorOptions ho;
    ho.host = name;
    ho.latency_ns_min = options_.hv_latency_min_ns;
    ho.latency_ns_max = options_.hv_latency_max_ns;
    ho.acpi_shutdown_ns = kAcpiShutdownNs;
    n.fake = std::make_unique<FakeHypervisor>(&loop_, &env_random_, ho);
    n.fake->SetObserver([this](const FakeRunEvent& e) { OnRun(e); });
    for (const std::string& vm : ignores_acpi_) n.fake->SetIgnoresAcpi(vm, true);
    Hypervisor* hv = n.fake.get();
    if (config_.wrap_hypervisor) {
      n.wrapped = config_.wrap_hypervisor(n.fake.get());
      hv = n.wrapped.get();
    }
    HaOptions o;
    o.node = name;
    o.ram_bytes = n.spec.ram_mib * kMiB;
    o.cpus = n.spec.cpus;
    o.lease_ttl_ms = config_.lease_ttl_ms;
    o.fence_margin_ms = config_.fence_margin_ms;
    o.rescan_interval_ms = config_.rescan_interval_ms;
    o.restart_grace_ms = config_.restart_grace_ms;
    o.shutdown_timeout_ms = kShutdownTimeoutMs;
    o.start_retry_ms = kStartRetryMs;
    o.launch.socket_path = kSocketPath;
    o.on_decision = [this](const HaDecision& d) { OnDecision(d); };
    auto ha = HaManager::Create(&loop_, &env_random_, n.store.get(), hv, o);
    SCRIBE_CHECK(ha.ok());
    n.ha = *std::move(ha);
  }

  void BootAll() {
    for (auto& [name, n] : nodes_) Boot(name);
  }

  bool AllActiveWithCoordinator() const {
    bool coordinator = false;
    for (const auto& [name, n] : nodes_) {
      if (!n.up || !n.ha || n.ha->state() != HaManager::State::kActive) return false;
      coordinator |= n.ha->is_coordinator();
    }
    return coordinator;
  }

  void Crash(const std::string& name) {
    Node& n = nodes_.at(name);
    if (!n.up) return;
    LogSim(absl::StrCat("crash ", name));
    ++result_.node_crashes;
    Disturb();
    n.up = false;
    n.cut = false;
    Destroy(n);
    NoteHealth();
  }

  void Return(const std::string& name) {
    Node& n = nodes_.at(name);
    if (n.up) return;
    LogSim(absl::StrCat("return ", name));
    ++result_.returns;
    Disturb();
    Boot(name);
  }

  void Partition(const std::string& name) {
    Node& n = nodes_.at(name);
    if (!n.up || n.cut) return;
    LogSim(absl::StrCat("partition ", name, " from the store"));
    ++result_.partitions;
    Disturb();
    n.cut = true;
    n.client->SetAvailable(false);
    NoteHealth();
  }

  void Heal(const std::string& name) {
    Node& n = nodes_.at(name);
    if (!n.up || !n.cut) return;
    LogSim(absl::StrCat("heal ", name));
    Disturb();
    n.cut = false;
    n.client->SetAvailable(true);
  }

  void CrashAfter(const std::string& name, int decisions) {
    LogSim(absl::StrCat("crash ", name, " after its next ", decisions, " decisions"));
    crash_after_[name] = decisions;
  }

  bool GuestCrash(const std::string& vm) {
    for (auto& [name, n] : nodes_) {
      if (n.up && n.fake->CrashGuest(vm)) {
        // Logged after the stop the fake reported: the line order shows cause, effect.
        LogSim(absl::StrCat("guest of vm ", vm, " crashed on ", name));
        ++result_.guest_crashes;
        return true;
      }
    }
    return false;
  }

  void IgnoreAcpi(const std::string& vm) {
    LogSim(absl::StrCat("vm ", vm, " ignores ACPI"));
    ignores_acpi_.insert(vm);
    for (auto& [name, n] : nodes_) {
      if (n.up) n.fake->SetIgnoresAcpi(vm, true);
    }
  }

  void HealAndReturnAll() {
    for (auto& [name, n] : nodes_) {
      if (n.up && n.cut) Heal(name);
    }
    for (auto& [name, n] : nodes_) {
      if (!n.up) Return(name);
    }
  }

  // Names by state, sorted.
  std::vector<std::string> NodesWhere(const std::function<bool(const Node&)>& pred) const {
    std::vector<std::string> names;
    for (const auto& [name, n] : nodes_) {
      if (pred(n)) names.push_back(name);
    }
    return names;
  }
  std::vector<std::string> UpConnected() const {
    return NodesWhere([](const Node& n) { return n.up && !n.cut; });
  }
  std::vector<std::string> Down() const {
    return NodesWhere([](const Node& n) { return !n.up; });
  }
  std::vector<std::string> Cut() const {
    return NodesWhere([](const Node& n) { return n.up && n.cut; });
  }
  std::string CoordinatorNode() const {
    for (const auto& [name, n] : nodes_) {
      if (n.up && n.ha && n.ha->is_coordinator()) return name;
    }
    return "";
  }

  // VMs the checker knows a record of (sorted), and those running now.
  std::vector<std::string> Vms() const {
    std::vector<std::string> names;
    for (const auto& [name, t] : vms_) {
      if (t.exists) names.push_back(name);
    }
    return names;
  }
  std::vector<std::string> RunningVms() const {
    std::vector<std::string> names;
    for (const auto& [name, t] : vms_) {
      if (!t.running.empty()) names.push_back(name);
    }
    return names;
  }

  // ------------------------------------------------------------------ API

  // The node API calls go through: the first active one.
  HaManager* ApiNode() {
    for (auto& [name, n] : nodes_) {
      if (n.up && n.ha && n.ha->state() == HaManager::State::kActive) return n.ha.get();
    }
    return nullptr;
  }

  // Issues an API call; `issue` gets a callback to report the status with. Errors are
  // logged; codes outside `allowed` are violations. Returns a flag set when answered.
  std::shared_ptr<bool> Api(const std::string& what,
                            const std::function<void(HaManager*, std::function<void(absl::Status)>)>& issue,
                            std::set<absl::StatusCode> allowed) {
    auto answered = std::make_shared<bool>(false);
    ++result_.api_calls;
    Disturb();
    HaManager* node = ApiNode();
    if (node == nullptr) {
      Log(absl::StrCat(T(loop_.NowNanos()), " api: ", what, ": no active node to ask"));
      *answered = true;
      return answered;
    }
    allowed.insert(absl::StatusCode::kOk);
    // The node asked may lose the store mid-call.
    allowed.insert(absl::StatusCode::kUnavailable);
    allowed.insert(absl::StatusCode::kAborted);
    issue(node, [this, what, answered, allowed](absl::Status s) {
      *answered = true;
      if (s.ok()) return;
      Log(absl::StrCat(T(loop_.NowNanos()), " api: ", what, ": ", absl::StatusCodeToString(s.code()),
                       ": ", s.message()));
      if (!allowed.contains(s.code())) {
        Violation(&HaSimResult::api_violations, absl::StrCat(what, " answered ", s.ToString()));
      }
    });
    return answered;
  }

  // Logs the cluster's conditions (N-1 and per VM), one line each.
  std::shared_ptr<bool> LogConditions() {
    auto answered = std::make_shared<bool>(false);
    HaManager* node = ApiNode();
    if (node == nullptr) {
      Log(absl::StrCat(T(loop_.NowNanos()), " api: conditions: no active node to ask"));
      *answered = true;
      return answered;
    }
    node->GetConditions([this, answered](absl::StatusOr<HaConditions> c) {
      *answered = true;
      const std::string t = T(loop_.NowNanos());
      if (!c.ok()) return Log(absl::StrCat(t, " api: conditions: ", c.status().ToString()));
      if (c->failover.empty() && c->vms.empty()) Log(absl::StrCat(t, " api: conditions: none"));
      for (const FailoverCondition& f : c->failover) Log(absl::StrCat(t, " api: condition: ", f.message));
      for (const std::string& v : c->vms) Log(absl::StrCat(t, " api: condition: vm ", v));
    });
    return answered;
  }

  std::shared_ptr<bool> Create(const std::string& vm, uint64_t ram_mib, int vcpus, bool start) {
    const VmSpec spec = MakeSpec(vm, ram_mib, vcpus);
    return Api(absl::StrCat("create vm ", vm, " (", ram_mib, " MiB, ", vcpus, " vCPUs", start ? "" : ", stopped", ")"),
               [spec, start](HaManager* ha, std::function<void(absl::Status)> done) {
                 ha->CreateVm(spec, start, [done](absl::StatusOr<VmInfo> r) { done(r.status()); });
               },
               {absl::StatusCode::kResourceExhausted, absl::StatusCode::kAlreadyExists});
  }
  std::shared_ptr<bool> Start(const std::string& vm) {
    return Api(absl::StrCat("start vm ", vm),
               [vm](HaManager* ha, std::function<void(absl::Status)> done) { ha->StartVm(vm, done); },
               {absl::StatusCode::kResourceExhausted, absl::StatusCode::kNotFound});
  }
  std::shared_ptr<bool> Stop(const std::string& vm) {
    return Api(absl::StrCat("stop vm ", vm),
               [vm](HaManager* ha, std::function<void(absl::Status)> done) { ha->StopVm(vm, done); },
               {absl::StatusCode::kNotFound});
  }
  std::shared_ptr<bool> Delete(const std::string& vm) {
    return Api(absl::StrCat("delete vm ", vm),
               [vm](HaManager* ha, std::function<void(absl::Status)> done) { ha->DeleteVm(vm, done); },
               {absl::StatusCode::kNotFound, absl::StatusCode::kFailedPrecondition});
  }

  // ------------------------------------------------------------------ running

  // Runs the loop for `ns` of virtual time, or until the first violation.
  void RunFor(int64_t ns) {
    if (stopped_) return;
    loop_.RunUntil([&] { return stopped_; }, ns);
  }
  bool RunUntil(const std::function<bool()>& pred, int64_t timeout_ns) {
    return loop_.RunUntil([&] { return stopped_ || pred(); }, timeout_ns) && !stopped_;
  }

  // Quiet period, then every VM is as its record says, or has no room anywhere.
  void FinalCheck() {
    if (stopped_) return;
    for (const auto& [name, t] : vms_) {
      if (!t.exists || t.desired == DesiredState::kStopped) {
        if (!t.running.empty()) {
          Violation(&HaSimResult::liveness_violations,
                    absl::StrCat("vm ", name, " still runs on ", t.running.begin()->first,
                                 t.exists ? " though its desired state is stopped" : " though it was deleted"));
          return;
        }
        continue;
      }
      if (t.running.size() > 1) {
        Violation(&HaSimResult::double_runs, absl::StrCat("vm ", name, " runs on several nodes at the end"));
        return;
      }
      if (t.running.empty()) {
        const std::string room = RoomFor(name, t);
        if (!room.empty()) {
          Violation(&HaSimResult::liveness_violations,
                    absl::StrCat("vm ", name, " is meant to run but runs nowhere at the end, though ", room));
          return;
        }
        continue;
      }
      const auto& [host, epoch] = *t.running.begin();
      if (host != t.owner || epoch != t.epoch) {
        Violation(&HaSimResult::log_violations,
                  absl::StrCat("vm ", name, " runs on ", host, " with epoch ", epoch, " but its record says owner ",
                               t.owner.empty() ? "none" : t.owner, " epoch ", t.epoch));
        return;
      }
    }
  }

  void Disturb() { last_disturbance_ns_ = loop_.NowNanos(); }

 private:
  void Destroy(Node& n) {
    // Manager first (it uses the others), then the hypervisor (its VMs stop now).
    n.ha.reset();
    n.wrapped.reset();
    n.fake.reset();
    n.store.reset();
    n.client.reset();
  }

  int Healthy() const { return static_cast<int>(UpConnected().size()); }

  void NoteHealth() {
    if (Healthy() > 0) return;
    for (auto& [name, t] : vms_) {
      if (t.down_since_ns >= 0) t.excluded = true;
    }
  }

  void OpenDownInterval(VmTrack& t) {
    if (t.down_since_ns >= 0) return;
    t.down_since_ns = loop_.NowNanos();
    t.excluded = Healthy() == 0;
  }

  void OnRecord(const scribe::WatchEvent& e) {
    const std::string name = e.key.substr(sizeof(ha_internal::kVmsPrefix) - 1);
    VmTrack& t = vms_[name];
    if (e.type == scribe::WatchEvent::Type::kDelete) {
      t.exists = false;
      t.down_since_ns = -1;
      return;
    }
    if (e.type != scribe::WatchEvent::Type::kPut) return;
    absl::StatusOr<VmInfo> vm = ha_internal::DecodeVm(e.value);
    if (!vm.ok()) {
      Violation(&HaSimResult::log_violations, absl::StrCat("unreadable record ", e.key, ": ", vm.status().message()));
      return;
    }
    t.exists = true;
    t.desired = vm->desired;
    t.owner = vm->owner;
    t.epoch = vm->epoch;
    t.ram_bytes = vm->spec.ram_bytes;
    t.vcpus = vm->spec.vcpus;
    if (t.desired == DesiredState::kRunning && t.running.empty()) {
      OpenDownInterval(t);
    } else if (t.desired == DesiredState::kStopped) {
      t.down_since_ns = -1;
    }
  }

  void OnRun(const FakeRunEvent& e) {
    VmTrack& t = vms_[e.vm];
    const int64_t now = loop_.NowNanos();
    if (e.kind == FakeRunEvent::Kind::kStop) {
      t.running.erase(e.host);
      if (t.exists && t.desired == DesiredState::kRunning && t.running.empty()) OpenDownInterval(t);
      return;
    }
    ++result_.vm_starts;
    t.ram_bytes = e.ram_bytes;
    t.vcpus = e.vcpus;
    for (const auto& [host, epoch] : t.running) {
      if (host != e.host) {
        Violation(&HaSimResult::double_runs,
                  absl::StrCat("vm ", e.vm, " started on ", e.host, " (epoch ", e.epoch, ") while running on ", host,
                               " (epoch ", epoch, ")"));
        return;
      }
    }
    if (e.epoch < t.max_epoch || (e.epoch == t.max_epoch && e.host != t.max_epoch_host && t.max_epoch != 0)) {
      Violation(&HaSimResult::epoch_violations,
                absl::StrCat("vm ", e.vm, " started on ", e.host, " with epoch ", e.epoch, " after epoch ",
                             t.max_epoch, " had started on ", t.max_epoch_host));
      return;
    }
    if (!t.assigned.contains({e.host, e.epoch})) {
      Violation(&HaSimResult::log_violations,
                absl::StrCat("vm ", e.vm, " started on ", e.host, " with epoch ", e.epoch,
                             " but no decision gave it that node and epoch"));
      return;
    }
    t.max_epoch = e.epoch;
    t.max_epoch_host = e.host;
    t.running[e.host] = e.epoch;
    if (t.down_since_ns >= 0) {
      if (!t.excluded && now - t.down_since_ns > result_.max_restart_ns) {
        result_.max_restart_ns = now - t.down_since_ns;
        result_.max_restart_what =
            absl::StrCat("vm ", e.vm, " down ", T(t.down_since_ns), " .. ", T(now), " (seed ", config_.seed, ")");
      }
      t.down_since_ns = -1;
    }
  }

  void OnDecision(const HaDecision& d) {
    Log(d.ToString());
    if (d.time_ns < last_decision_ns_) {
      Violation(&HaSimResult::log_violations, "decision times went back");
      return;
    }
    last_decision_ns_ = d.time_ns;
    using K = HaDecision::Kind;
    if ((d.kind == K::kCreate || d.kind == K::kStart || d.kind == K::kRestart) && !d.target.empty()) {
      VmTrack& t = vms_[d.vm];
      if (d.epoch <= t.last_assigned_epoch) {
        Violation(&HaSimResult::log_violations,
                  absl::StrCat("vm ", d.vm, " given epoch ", d.epoch, " after epoch ", t.last_assigned_epoch));
        return;
      }
      t.last_assigned_epoch = d.epoch;
      t.assigned.insert({d.target, d.epoch});
    }
    if (d.kind == K::kPowerOn) {
      const VmTrack& t = vms_[d.vm];
      auto it = t.running.find(d.node);
      if (it == t.running.end() || it->second != d.epoch) {
        Violation(&HaSimResult::log_violations,
                  absl::StrCat(d.node, " logged power on of vm ", d.vm, " (epoch ", d.epoch,
                               ") that its hypervisor does not run"));
        return;
      }
    }
    if (d.kind == K::kNoCapacity) vms_[d.vm].excluded = true;
    if (d.kind == K::kRestart) ++result_.restarts;
    if (d.kind == K::kSelfFence) ++result_.self_fences;
    auto crash = crash_after_.find(d.node);
    if (crash != crash_after_.end() && --crash->second == 0) {
      crash_after_.erase(crash);
      // Not from inside the manager's own callback.
      loop_.Post([this, node = d.node] { Crash(node); });
    }
  }

  // "" if no healthy node has room for `t` (placement rules, over what runs now), else
  // a description of the room there is.
  std::string RoomFor(const std::string& name, const VmTrack& t) const {
    std::vector<PlacementNode> nodes;
    for (const auto& [node_name, n] : nodes_) {
      if (n.up && !n.cut) nodes.push_back(PlacementNode{node_name, n.spec.ram_mib * kMiB, n.spec.cpus, true, false});
    }
    // What each node holds: the VMs it runs, and the ones its record gives it that do
    // not run right now (a guest that crashed and is being restarted in place keeps
    // its room, as the managers count it).
    std::vector<PlacedVm> placed;
    for (const auto& [vm, other] : vms_) {
      for (const auto& [host, epoch] : other.running) placed.push_back(PlacedVm{vm, host, other.ram_bytes, other.vcpus});
      if (other.running.empty() && other.exists && !other.owner.empty()) {
        auto owner = nodes_.find(other.owner);
        if (owner != nodes_.end() && owner->second.up && !owner->second.cut) {
          placed.push_back(PlacedVm{vm, other.owner, other.ram_bytes, other.vcpus});
        }
      }
    }
    absl::StatusOr<PlacementChoice> choice = PlaceVm(VmDemand{name, t.ram_bytes, t.vcpus}, nodes, placed, {});
    if (!choice.ok()) return "";
    return absl::StrCat(choice->node, " has ", choice->ram_free_bytes / kMiB, " MiB free");
  }

  void Sample() {
    sample_timer_ = loop_.RunAfter(kSampleIntervalNs, [this] { Sample(); });
    if (stopped_) return;
    NoteHealth();
    const int64_t now = loop_.NowNanos();
    for (const auto& [name, t] : vms_) {
      if (!t.exists || t.desired != DesiredState::kRunning || t.down_since_ns < 0) continue;
      const int64_t quiet_since = std::max(t.down_since_ns, last_disturbance_ns_);
      if (now - quiet_since <= bound_ns_) continue;
      const std::string room = RoomFor(name, t);
      if (room.empty()) continue;
      Violation(&HaSimResult::liveness_violations,
                absl::StrCat("vm ", name, " is meant to run but has been down since ", T(t.down_since_ns),
                             " (quiet since ", T(quiet_since), ", bound ", bound_ns_ / kMs, " ms), though ", room));
      return;
    }
  }

  const HaSimConfig& config_;
  SimOptions options_;
  scribe::SimLoop loop_;
  scribe::SeededRandom env_random_;
  HaSimResult result_;
  std::deque<std::string> tail_;
  bool stopped_ = false;
  int64_t bound_ns_ = 0;
  int64_t last_disturbance_ns_ = 0;
  int64_t last_decision_ns_ = 0;
  std::unique_ptr<scribe::InMemoryMetaStore> store_;
  std::unique_ptr<scribe::InMemoryMetaStore> observer_client_;
  std::unique_ptr<OrderedWatchStore> observer_;
  std::unique_ptr<scribe::WatchHandle> record_watch_;
  std::map<std::string, VmTrack> vms_;
  std::set<std::string> ignores_acpi_;
  std::map<std::string, int> crash_after_;
  scribe::Loop::TimerId sample_timer_ = 0;
  std::map<std::string, Node> nodes_;  // last: destroyed first
};

template <typename T>
const T& Pick(scribe::Random& rng, const std::vector<T>& v) {
  return v[rng.Uniform(v.size())];
}

// The time to the next random event: mostly short, sometimes long enough for a failure
// to be detected and recovered from in quiet.
int64_t RandomWait(scribe::Random& rng) {
  const uint64_t kind = rng.Uniform(10);
  if (kind < 6) return static_cast<int64_t>(rng.Uniform(3 * kSec));
  if (kind < 9) return 3 * kSec + static_cast<int64_t>(rng.Uniform(7 * kSec));
  return 10 * kSec + static_cast<int64_t>(rng.Uniform(10 * kSec));
}

}  // namespace

HaSimResult RunHaSim(const HaSimConfig& config) {
  scribe::SeededRandom rng(config.seed);
  SimOptions options;
  const int node_count = config.nodes > 0 ? config.nodes : 3 + static_cast<int>(rng.Uniform(3));
  static const uint64_t kRamMib[] = {4096, 8192, 16384};
  static const int kCpus[] = {4, 8};
  for (int i = 1; i <= node_count; ++i) {
    options.nodes.push_back(NodeSpec{absl::StrCat("node", i), kRamMib[rng.Uniform(3)], kCpus[rng.Uniform(2)]});
  }
  static const int64_t kStoreLatencyNs[] = {1 * kMs, 2 * kMs, 5 * kMs, 20 * kMs};
  static const int64_t kHvLatencyMaxNs[] = {10 * kMs, 50 * kMs, 200 * kMs};
  options.store_latency_ns = kStoreLatencyNs[rng.Uniform(4)];
  options.hv_latency_min_ns = 1 * kMs;
  options.hv_latency_max_ns = kHvLatencyMaxNs[rng.Uniform(3)];
  options.env_seed = config.seed * 0x9e3779b97f4a7c15ull + 1;

  Sim sim(config, options);
  sim.BootAll();
  if (!sim.RunUntil([&] { return sim.AllActiveWithCoordinator(); }, 10 * kSec)) {
    if (!sim.stopped()) {
      sim.result().violations++;
      sim.result().violation_messages.push_back(absl::StrCat("seed ", config.seed, ": the cluster did not form"));
    }
    return sim.result();
  }

  static const uint64_t kVmRamMib[] = {512, 1024, 2048, 4096};
  int next_vm = 1;
  auto create = [&] {
    const std::string name = absl::StrCat("vm", next_vm++);
    if (rng.Bernoulli(0.1)) sim.IgnoreAcpi(name);
    sim.Create(name, kVmRamMib[rng.Uniform(4)], 1 + static_cast<int>(rng.Uniform(4)), rng.Bernoulli(0.85));
  };
  const int initial_vms = 2 + static_cast<int>(rng.Uniform(6));
  for (int i = 0; i < initial_vms; ++i) {
    create();
    sim.RunFor(100 * kMs);
  }
  sim.RunFor(2 * kSec);

  for (int e = 0; e < config.events && !sim.stopped(); ++e) {
    sim.RunFor(RandomWait(rng));
    if (sim.stopped()) break;
    ++sim.result().events;
    const std::vector<std::string> up = sim.UpConnected();
    const std::vector<std::string> down = sim.Down();
    const std::vector<std::string> cut = sim.Cut();
    const std::vector<std::string> vms = sim.Vms();
    const std::vector<std::string> running = sim.RunningVms();
    const std::string coordinator = sim.CoordinatorNode();
    // Weighted choice among what is possible now.
    std::vector<std::pair<int, std::function<void()>>> choices;
    if (!up.empty()) choices.push_back({10, [&] { sim.Crash(Pick(rng, up)); }});
    if (!coordinator.empty()) choices.push_back({4, [&] { sim.Crash(coordinator); }});
    if (!down.empty()) choices.push_back({12, [&] { sim.Return(Pick(rng, down)); }});
    if (!up.empty()) choices.push_back({8, [&] { sim.Partition(Pick(rng, up)); }});
    if (!coordinator.empty()) choices.push_back({3, [&] { sim.Partition(coordinator); }});
    if (!cut.empty()) choices.push_back({12, [&] { sim.Heal(Pick(rng, cut)); }});
    choices.push_back({10, create});
    if (!vms.empty()) {
      choices.push_back({8, [&] { sim.Start(Pick(rng, vms)); }});
      choices.push_back({8, [&] { sim.Stop(Pick(rng, vms)); }});
      choices.push_back({4, [&] { sim.Delete(Pick(rng, vms)); }});
    }
    if (!running.empty()) choices.push_back({6, [&] { sim.GuestCrash(Pick(rng, running)); }});
    int total = 0;
    for (const auto& [weight, fn] : choices) total += weight;
    int pick = static_cast<int>(rng.Uniform(total));
    for (const auto& [weight, fn] : choices) {
      if (pick < weight) {
        fn();
        break;
      }
      pick -= weight;
    }
  }
  // Everything comes back; then quiet long enough for every VM to be where it belongs.
  if (!sim.stopped()) {
    sim.HealAndReturnAll();
    sim.RunFor(sim.bound_ns() + 3 * kSec);
    sim.FinalCheck();
  }
  sim.result().virtual_ns = sim.loop().NowNanos();
  return sim.result();
}

absl::StatusOr<HaSimResult> RunHaScenario(const std::string& cmdlist, const HaSimConfig& base) {
  HaSimConfig config = base;
  config.keep_log = true;
  SimOptions options;
  options.store_latency_ns = 1 * kMs;
  options.hv_latency_min_ns = options.hv_latency_max_ns = 10 * kMs;
  options.env_seed = config.seed;
  std::unique_ptr<Sim> sim;

  auto bad = [](int line, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("cmdlist line ", line, ": ", why));
  };
  int line_number = 0;
  for (absl::string_view raw : absl::StrSplit(cmdlist, '\n')) {
    ++line_number;
    absl::string_view line = raw.substr(0, raw.find('#'));
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    const std::string& cmd = w[0];
    auto need = [&](size_t args) { return w.size() == args + 1; };
    if (cmd == "option") {
      if (sim != nullptr) return bad(line_number, "options must come before `nodes`");
      std::vector<std::string> kv = absl::StrSplit(w.size() == 2 ? w[1] : "", '=');
      int64_t value = 0;
      if (kv.size() != 2 || !absl::SimpleAtoi(kv[1], &value)) return bad(line_number, "option NAME=VALUE");
      if (kv[0] == "lease_ttl_ms") {
        config.lease_ttl_ms = value;
      } else if (kv[0] == "fence_margin_ms") {
        config.fence_margin_ms = value;
      } else if (kv[0] == "restart_grace_ms") {
        config.restart_grace_ms = value;
      } else {
        return bad(line_number, absl::StrCat("unknown option ", kv[0]));
      }
      continue;
    }
    if (cmd == "nodes") {
      if (sim != nullptr) return bad(line_number, "`nodes` given twice");
      for (size_t i = 1; i < w.size(); ++i) {
        std::vector<std::string> parts = absl::StrSplit(w[i], ':');
        NodeSpec spec;
        if (parts.size() != 3 || !absl::SimpleAtoi(parts[1], &spec.ram_mib) || !absl::SimpleAtoi(parts[2], &spec.cpus)) {
          return bad(line_number, "nodes NAME:RAM_MIB:CPUS ...");
        }
        spec.name = parts[0];
        options.nodes.push_back(spec);
      }
      if (options.nodes.empty()) return bad(line_number, "no nodes");
      sim = std::make_unique<Sim>(config, options);
      sim->BootAll();
      if (!sim->RunUntil([&] { return sim->AllActiveWithCoordinator(); }, 10 * kSec)) {
        return bad(line_number, "the cluster did not form");
      }
      continue;
    }
    if (sim == nullptr) return bad(line_number, "the first command must be `nodes`");
    if (sim->stopped()) break;
    std::shared_ptr<bool> answered;
    auto node_arg = [&]() -> absl::StatusOr<std::string> {
      if (!need(1)) return bad(line_number, absl::StrCat(cmd, " NODE"));
      if (!sim->has_node(w[1])) return bad(line_number, absl::StrCat("unknown node ", w[1]));
      return w[1];
    };
    if (cmd == "create") {
      uint64_t ram = 0;
      int vcpus = 0;
      const bool stopped = w.size() == 5 && w[4] == "stopped";
      if (!(need(3) || stopped) || !absl::SimpleAtoi(w[2], &ram) || !absl::SimpleAtoi(w[3], &vcpus)) {
        return bad(line_number, "create VM RAM_MIB VCPUS [stopped]");
      }
      answered = sim->Create(w[1], ram, vcpus, !stopped);
    } else if (cmd == "start" || cmd == "stop" || cmd == "delete") {
      if (!need(1)) return bad(line_number, absl::StrCat(cmd, " VM"));
      answered = cmd == "start" ? sim->Start(w[1]) : cmd == "stop" ? sim->Stop(w[1]) : sim->Delete(w[1]);
    } else if (cmd == "crash" || cmd == "return" || cmd == "partition" || cmd == "heal") {
      absl::StatusOr<std::string> node = node_arg();
      if (!node.ok()) return node.status();
      if (cmd == "crash") sim->Crash(*node);
      if (cmd == "return") sim->Return(*node);
      if (cmd == "partition") sim->Partition(*node);
      if (cmd == "heal") sim->Heal(*node);
    } else if (cmd == "crash-after") {
      int n = 0;
      if (!need(2) || !sim->has_node(w[1]) || !absl::SimpleAtoi(w[2], &n) || n < 1) {
        return bad(line_number, "crash-after NODE N (N >= 1)");
      }
      sim->CrashAfter(w[1], n);
    } else if (cmd == "guest-crash") {
      if (!need(1)) return bad(line_number, "guest-crash VM");
      if (!sim->GuestCrash(w[1])) sim->LogSim(absl::StrCat("vm ", w[1], " is not running anywhere"));
    } else if (cmd == "ignore-acpi") {
      if (!need(1)) return bad(line_number, "ignore-acpi VM");
      sim->IgnoreAcpi(w[1]);
    } else if (cmd == "conditions") {
      if (!need(0)) return bad(line_number, "conditions");
      answered = sim->LogConditions();
    } else if (cmd == "wait") {
      double seconds = 0;
      if (!need(1) || !absl::SimpleAtod(w[1], &seconds) || seconds < 0) return bad(line_number, "wait SECONDS");
      sim->RunFor(static_cast<int64_t>(seconds * 1e9 + 0.5));
    } else {
      return bad(line_number, absl::StrCat("unknown command ", cmd));
    }
    if (answered) sim->RunUntil([&] { return *answered; }, 30 * kSec);
  }
  if (sim == nullptr) return absl::InvalidArgumentError("cmdlist: no `nodes` line");
  if (!sim->stopped()) {
    sim->LogSim("quiet until the final check");
    sim->RunFor(sim->bound_ns() + 2 * kSec);
    sim->FinalCheck();
  }
  sim->result().virtual_ns = sim->loop().NowNanos();
  return sim->result();
}

}  // namespace hypercore
