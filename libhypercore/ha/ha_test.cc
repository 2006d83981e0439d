// HaManager on virtual time: several managers, one InMemoryMetaStore (a client per
// node) and a FakeHypervisor per node, driven through single behaviours. The random
// whole-cluster runs are in libhypercore/sim.
#include "hypercore/ha.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "hypercore/fake_hypervisor.h"
#include "scribe/meta_store.h"
#include "scribe/sim_env.h"

namespace hypercore {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;
constexpr uint64_t kMiB = 1ull << 20;

VmSpec Spec(const std::string& name, uint64_t ram_mib, int vcpus = 1) {
  VmSpec spec;
  spec.name = name;
  spec.ram_bytes = ram_mib * kMiB;
  spec.vcpus = vcpus;
  spec.disks = {VmDisk{"root", 8ull << 30}};
  spec.nics = {VmNic{}};
  return spec;
}

class Cluster {
 public:
  struct Node {
    std::string name;
    uint64_t ram_mib = 0;
    int cpus = 0;
    std::unique_ptr<scribe::InMemoryMetaStore> client;
    std::unique_ptr<FakeHypervisor> hv;
    std::unique_ptr<HaManager> ha;
  };

  explicit Cluster(int nodes, uint64_t ram_mib = 8192, int cpus = 8) : random_(1) {
    scribe::InMemoryMetaStoreOptions o;
    o.latency_ns = 1 * kMs;
    store_ = scribe::InMemoryMetaStore::Create(&loop_, o);
    for (int i = 1; i <= nodes; ++i) {
      Node& n = nodes_[absl::StrCat("node", i)];
      n.name = absl::StrCat("node", i);
      n.ram_mib = ram_mib;
      n.cpus = cpus;
    }
  }
  ~Cluster() {
    for (auto& [name, n] : nodes_) Crash(name);
  }

  HaOptions Options(const Node& n) {
    HaOptions o;
    o.node = n.name;
    o.ram_bytes = n.ram_mib * kMiB;
    o.cpus = n.cpus;
    o.lease_ttl_ms = 3'000;
    o.fence_margin_ms = 500;
    o.shutdown_timeout_ms = 5'000;
    o.start_retry_ms = 2'000;
    o.launch.socket_path = "/run/scribed/nbd.sock";
    o.restart_grace_ms = restart_grace_ms_;
    o.on_decision = [this](const HaDecision& d) { log_.push_back(d); };
    if (prepare_start_) o.prepare_start = prepare_start_;
    return o;
  }

  void Boot(const std::string& name) {
    Node& n = nodes_.at(name);
    n.client = store_->NewClient();
    FakeHypervisorOptions ho;
    ho.host = name;
    ho.latency_ns_min = 5 * kMs;
    ho.latency_ns_max = 20 * kMs;
    ho.acpi_shutdown_ns = 1 * kSec;
    n.hv = std::make_unique<FakeHypervisor>(&loop_, &random_, ho);
    n.hv->SetObserver([this](const FakeRunEvent& e) { runs_.push_back(e); });
    if (boot_hook_) boot_hook_(n);
    auto ha = HaManager::Create(&loop_, &random_, n.client.get(), n.hv.get(), Options(n));
    ASSERT_TRUE(ha.ok()) << ha.status();
    n.ha = *std::move(ha);
  }
  void BootAll() {
    for (auto& [name, n] : nodes_) Boot(name);
    ASSERT_TRUE(RunUntil([&] { return ActiveCount() == static_cast<int>(nodes_.size()) && Coordinator(); },
                         10 * kSec));
  }
  // The node dies: its manager and hypervisor (and so its VMs) are gone at once.
  void Crash(const std::string& name) {
    Node& n = nodes_.at(name);
    n.ha.reset();
    n.hv.reset();
    n.client.reset();
  }
  void Cut(const std::string& name, bool cut) { nodes_.at(name).client->SetAvailable(!cut); }

  void RunFor(int64_t ns) { loop_.RunUntil([] { return false; }, ns); }
  bool RunUntil(const std::function<bool()>& pred, int64_t timeout_ns) {
    return loop_.RunUntil(pred, timeout_ns);
  }

  int ActiveCount() const {
    int active = 0;
    for (const auto& [name, n] : nodes_) {
      if (n.ha && n.ha->state() == HaManager::State::kActive) ++active;
    }
    return active;
  }
  HaManager* Coordinator() const {
    for (const auto& [name, n] : nodes_) {
      if (n.ha && n.ha->is_coordinator()) return n.ha.get();
    }
    return nullptr;
  }
  // A node to send API calls to: an active one when there is one.
  HaManager* Any() const {
    for (const auto& [name, n] : nodes_) {
      if (n.ha && n.ha->state() == HaManager::State::kActive) return n.ha.get();
    }
    for (const auto& [name, n] : nodes_) {
      if (n.ha) return n.ha.get();
    }
    return nullptr;
  }
  HaManager* ha(const std::string& name) { return nodes_.at(name).ha.get(); }
  FakeHypervisor* hv(const std::string& name) { return nodes_.at(name).hv.get(); }

  // Nodes whose hypervisor runs `vm` now.
  std::vector<std::string> RunningOn(const std::string& vm) const {
    std::vector<std::string> where;
    for (const auto& [name, n] : nodes_) {
      if (!n.hv) continue;
      const std::vector<std::string> running = n.hv->Running();
      if (std::find(running.begin(), running.end(), vm) != running.end()) where.push_back(name);
    }
    return where;
  }

  template <typename T>
  absl::StatusOr<T> Await(const std::function<void(HaManager::Done<T>)>& op) {
    std::optional<absl::StatusOr<T>> result;
    op([&](absl::StatusOr<T> r) { result = std::move(r); });
    if (!RunUntil([&] { return result.has_value(); }, 30 * kSec)) {
      return absl::DeadlineExceededError("no answer");
    }
    return *std::move(result);
  }
  absl::Status AwaitStatus(const std::function<void(HaManager::StatusDone)>& op) {
    std::optional<absl::Status> result;
    op([&](absl::Status s) { result = std::move(s); });
    if (!RunUntil([&] { return result.has_value(); }, 30 * kSec)) {
      return absl::DeadlineExceededError("no answer");
    }
    return *result;
  }

  absl::StatusOr<VmInfo> Create(const VmSpec& spec, bool start = true) {
    return Await<VmInfo>([&](auto done) { Any()->CreateVm(spec, start, done); });
  }
  absl::StatusOr<VmInfo> Get(const std::string& vm) {
    return Await<VmInfo>([&](auto done) { Any()->GetVm(vm, done); });
  }
  absl::Status Start(const std::string& vm) {
    return AwaitStatus([&](auto done) { Any()->StartVm(vm, done); });
  }
  absl::Status Stop(const std::string& vm) {
    return AwaitStatus([&](auto done) { Any()->StopVm(vm, done); });
  }
  absl::Status Delete(const std::string& vm) {
    return AwaitStatus([&](auto done) { Any()->DeleteVm(vm, done); });
  }

  std::vector<std::string> LogLines(HaDecision::Kind kind) const {
    std::vector<std::string> lines;
    for (const HaDecision& d : log_) {
      if (d.kind == kind) lines.push_back(d.ToString());
    }
    return lines;
  }
  std::string Log() const {
    std::string out;
    for (const HaDecision& d : log_) absl::StrAppend(&out, d.ToString(), "\n");
    return out;
  }

  // No VM ran on two nodes at overlapping times (from the fakes' start/stop events).
  testing::AssertionResult NeverTwice() const {
    std::map<std::string, std::map<std::string, int64_t>> running;  // vm -> node -> since
    for (const FakeRunEvent& e : runs_) {
      auto& on = running[e.vm];
      if (e.kind == FakeRunEvent::Kind::kStart) {
        for (const auto& [node, since] : on) {
          if (node != e.host) {
            return testing::AssertionFailure() << "vm " << e.vm << " started on " << e.host << " at "
                                               << e.time_ns << " while running on " << node;
          }
        }
        on[e.host] = e.time_ns;
      } else {
        on.erase(e.host);
      }
    }
    return testing::AssertionSuccess();
  }

  scribe::SimLoop loop_;
  scribe::SeededRandom random_;
  std::unique_ptr<scribe::InMemoryMetaStore> store_;
  std::vector<HaDecision> log_;
  std::vector<FakeRunEvent> runs_;
  std::function<void(const VmLaunch&, std::function<void(absl::Status)>)> prepare_start_;
  std::function<void(Node&)> boot_hook_;
  int64_t restart_grace_ms_ = 0;
  std::map<std::string, Node> nodes_;  // last: destroyed first
};

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(HaOptions, Validation) {
  HaOptions o;
  o.node = "node1";
  o.ram_bytes = 1 << 30;
  o.cpus = 2;
  o.launch.socket_path = "/run/nbd.sock";
  EXPECT_TRUE(ValidateHaOptions(o).ok()) << ValidateHaOptions(o);
  HaOptions bad = o;
  bad.node = "node/1";
  EXPECT_TRUE(Contains(std::string(ValidateHaOptions(bad).message()), "HaOptions.node"));
  bad = o;
  bad.fence_margin_ms = 2'000;  // + 1 s renew interval >= 3 s TTL
  EXPECT_TRUE(Contains(std::string(ValidateHaOptions(bad).message()), "fence_margin_ms"));
  bad = o;
  bad.fence_margin_ms = 0;
  EXPECT_EQ(ValidateHaOptions(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = o;
  bad.launch.socket_path = "";
  EXPECT_TRUE(Contains(std::string(ValidateHaOptions(bad).message()), "launch.socket_path"));
  bad = o;
  bad.placement.vcpu_overcommit_ratio = 0.5;
  EXPECT_EQ(ValidateHaOptions(bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(Ha, NodesJoinAndOneBecomesCoordinator) {
  Cluster c(3);
  c.BootAll();
  int coordinators = 0;
  for (const auto& [name, n] : c.nodes_) {
    EXPECT_EQ(n.ha->state(), HaManager::State::kActive) << name;
    EXPECT_TRUE(n.ha->lease().valid());
    EXPECT_GT(n.ha->fence_deadline_ns(), c.loop_.NowNanos());
    coordinators += n.ha->is_coordinator();
  }
  EXPECT_EQ(coordinators, 1);
  auto nodes = c.Await<std::vector<NodeInfo>>([&](auto done) { c.Any()->ListNodes(done); });
  ASSERT_TRUE(nodes.ok());
  ASSERT_EQ(nodes->size(), 3u);
  EXPECT_EQ((*nodes)[0].name, "node1");
  EXPECT_EQ((*nodes)[2].ram_bytes, 8192 * kMiB);
  EXPECT_EQ(c.LogLines(HaDecision::Kind::kJoin).size(), 3u);
  EXPECT_EQ(c.LogLines(HaDecision::Kind::kCoordinator).size(), 1u);
}

TEST(Ha, LeaseIsRenewedAndDeadlineMovesOn) {
  Cluster c(1);
  c.BootAll();
  const int64_t first = c.ha("node1")->fence_deadline_ns();
  c.RunFor(60 * kSec);
  EXPECT_EQ(c.ha("node1")->state(), HaManager::State::kActive);
  // The deadline trails the last renewal: at most one renew interval behind now + TTL.
  const int64_t deadline = c.ha("node1")->fence_deadline_ns();
  EXPECT_GT(deadline, first + 55 * kSec);
  EXPECT_LE(deadline, c.loop_.NowNanos() + 3 * kSec - 500 * kMs);
  EXPECT_TRUE(c.LogLines(HaDecision::Kind::kSelfFence).empty()) << c.Log();
}

TEST(Ha, CreatePlacesOnMostFreeRamAndTheOwnerStartsIt) {
  Cluster c(3);
  c.nodes_.at("node2").ram_mib = 16384;
  c.BootAll();
  auto vm = c.Create(Spec("web1", 1024, 2));
  ASSERT_TRUE(vm.ok()) << vm.status();
  EXPECT_EQ(vm->owner, "node2");
  EXPECT_EQ(vm->epoch, 1u);
  EXPECT_EQ(vm->desired, DesiredState::kRunning);
  EXPECT_TRUE(IsUuid(vm->uuid)) << vm->uuid;
  ASSERT_EQ(vm->spec.nics.size(), 1u);
  ASSERT_TRUE(vm->spec.nics[0].mac.has_value());
  EXPECT_EQ(vm->spec.nics[0].mac->substr(0, 9), "52:54:00:");
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec)) << c.Log();
  EXPECT_EQ(c.RunningOn("web1"), std::vector<std::string>{"node2"});
  const VmLaunch* launch = c.hv("node2")->DefinedLaunch("web1");
  ASSERT_NE(launch, nullptr);
  EXPECT_EQ(launch->epoch, 1u);
  EXPECT_EQ(launch->uuid, vm->uuid);
  ASSERT_EQ(launch->disks.size(), 1u);
  EXPECT_EQ(launch->disks[0].nbd.export_name, "web1/root");
  EXPECT_EQ(launch->disks[0].nbd.socket_path, "/run/scribed/nbd.sock");
  const std::vector<std::string> creates = c.LogLines(HaDecision::Kind::kCreate);
  ASSERT_EQ(creates.size(), 1u);
  EXPECT_TRUE(Contains(creates[0], "create vm web1 on node2 (epoch 1): most free RAM 16384 MiB")) << creates[0];
  ASSERT_EQ(c.LogLines(HaDecision::Kind::kPowerOn).size(), 1u);
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kPowerOn)[0], "node2: power on vm web1 (epoch 1)"));
}

TEST(Ha, FailedRequestsChangeNothing) {
  Cluster c(2, 4096);
  c.BootAll();
  ASSERT_TRUE(c.Create(Spec("web1", 1024)).ok());
  c.RunFor(1 * kSec);
  const int64_t revision = c.store_->revision();
  const size_t log_size = c.log_.size();

  VmSpec invalid = Spec("bad name!", 1024);
  EXPECT_EQ(c.Create(invalid).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Create(Spec("web1", 512)).status().code(), absl::StatusCode::kAlreadyExists);
  auto big = c.Create(Spec("huge", 8192, 2));
  ASSERT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(std::string(big.status().message()), "no node can run vm huge (8192 MiB RAM, 2 vCPUs)")) << big.status();
  EXPECT_TRUE(Contains(std::string(big.status().message()), "largest free RAM is 4096 MiB (node2)"))
      << big.status();
  EXPECT_EQ(c.Start("nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c.Stop("nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c.Delete("nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c.Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c.Delete("web1").code(), absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(c.store_->revision(), revision) << "a failed request wrote to the store";
  EXPECT_EQ(c.log_.size(), log_size);
  auto vms = c.Await<std::vector<VmInfo>>([&](auto done) { c.Any()->ListVms(done); });
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].spec.name, "web1");
}

TEST(Ha, StopShutsDownReleasesAndStartPlacesAgainWithANewEpoch) {
  Cluster c(3);
  c.BootAll();
  auto vm = c.Create(Spec("web1", 1024));
  ASSERT_TRUE(vm.ok());
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  const std::string first_owner = vm->owner;
  ASSERT_TRUE(c.Stop("web1").ok());
  EXPECT_TRUE(c.Stop("web1").ok()) << "stopping a stopped VM is a no-op";
  ASSERT_TRUE(c.RunUntil(
      [&] {
        auto v = c.Get("web1");
        return v.ok() && v->owner.empty();
      },
      10 * kSec))
      << c.Log();
  EXPECT_TRUE(c.RunningOn("web1").empty());
  EXPECT_EQ(c.LogLines(HaDecision::Kind::kShutdown).size(), 1u) << c.Log();
  EXPECT_TRUE(c.LogLines(HaDecision::Kind::kForceOff).empty()) << "the guest honoured ACPI";
  ASSERT_EQ(c.LogLines(HaDecision::Kind::kRelease).size(), 1u);
  c.RunFor(2 * kSec);
  EXPECT_EQ(c.hv(first_owner)->DefinedLaunch("web1"), nullptr) << "released VMs are undefined";

  ASSERT_TRUE(c.Start("web1").ok());
  auto again = c.Get("web1");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->epoch, 2u);
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  EXPECT_EQ(c.hv(again->owner)->DefinedLaunch("web1")->epoch, 2u);

  ASSERT_TRUE(c.Stop("web1").ok());
  ASSERT_TRUE(c.RunUntil([&] { return c.Get("web1")->owner.empty(); }, 10 * kSec));
  EXPECT_TRUE(c.Delete("web1").ok());
  EXPECT_EQ(c.Get("web1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(c.NeverTwice());
}

TEST(Ha, GuestIgnoringAcpiIsForcedOffAfterTheTimeout) {
  Cluster c(2);
  c.BootAll();
  auto vm = c.Create(Spec("web1", 1024));
  ASSERT_TRUE(vm.ok());
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  c.hv(vm->owner)->SetIgnoresAcpi("web1", true);
  ASSERT_TRUE(c.Stop("web1").ok());
  const int64_t stop_at = c.loop_.NowNanos();
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn("web1").empty(); }, 20 * kSec));
  EXPECT_GE(c.loop_.NowNanos() - stop_at, 5 * kSec);
  ASSERT_EQ(c.LogLines(HaDecision::Kind::kForceOff).size(), 1u) << c.Log();
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kForceOff)[0], "ACPI shutdown not done after"));
}

TEST(Ha, ForceOffPullsThePlugAtOnceEvenDuringAnAcpiShutdown) {
  Cluster c(2);
  c.BootAll();
  auto vm = c.Create(Spec("web1", 1024));
  ASSERT_TRUE(vm.ok());
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  c.hv(vm->owner)->SetIgnoresAcpi("web1", true);
  ASSERT_TRUE(c.Stop("web1").ok());
  c.RunFor(1 * kSec);
  ASSERT_FALSE(c.RunningOn("web1").empty()) << "the guest ignores ACPI";
  const int64_t force_at = c.loop_.NowNanos();
  ASSERT_TRUE(c.AwaitStatus([&](auto done) { c.Any()->ForceOffVm("web1", done); }).ok());
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn("web1").empty(); }, 5 * kSec)) << c.Log();
  EXPECT_LT(c.loop_.NowNanos() - force_at, 2 * kSec) << "not the 5 s ACPI timeout";
  ASSERT_EQ(c.LogLines(HaDecision::Kind::kForceOff).size(), 1u) << c.Log();
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kForceOff)[0], "force off vm web1: force off requested"));
  ASSERT_TRUE(c.RunUntil([&] { return c.Get("web1")->owner.empty(); }, 5 * kSec)) << c.Log();
  EXPECT_FALSE(c.Get("web1")->force_off) << "cleared at release";
  // Forcing off a stopped VM changes nothing; an unknown one is NOT_FOUND.
  const int64_t revision = c.store_->revision();
  EXPECT_TRUE(c.AwaitStatus([&](auto done) { c.Any()->ForceOffVm("web1", done); }).ok());
  EXPECT_EQ(c.store_->revision(), revision);
  EXPECT_EQ(c.AwaitStatus([&](auto done) { c.Any()->ForceOffVm("nope", done); }).code(),
            absl::StatusCode::kNotFound);
  // A running VM is forced off without an ACPI press first.
  ASSERT_TRUE(c.Start("web1").ok());
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  EXPECT_FALSE(c.Get("web1")->force_off);
  const size_t shutdowns = c.LogLines(HaDecision::Kind::kShutdown).size();
  ASSERT_TRUE(c.AwaitStatus([&](auto done) { c.Any()->ForceOffVm("web1", done); }).ok());
  ASSERT_TRUE(c.RunUntil([&] { return c.Get("web1")->owner.empty(); }, 5 * kSec)) << c.Log();
  EXPECT_TRUE(c.RunningOn("web1").empty());
  EXPECT_EQ(c.LogLines(HaDecision::Kind::kShutdown).size(), shutdowns);
  EXPECT_TRUE(c.NeverTwice());
}

TEST(Ha, UpdateVmSpecReplacesAStoppedVmsSpecKeepingUuidAndEpoch) {
  Cluster c(2);
  c.BootAll();
  auto vm = c.Create(Spec("web1", 1024));
  ASSERT_TRUE(vm.ok());
  VmSpec next = vm->spec;
  next.ram_bytes = 2048 * kMiB;
  next.description = "restored";
  next.nics.push_back(VmNic{});
  auto update = [&](const std::string& name, const VmSpec& spec) {
    return c.AwaitStatus([&](auto done) { c.Any()->UpdateVmSpec(name, spec, done); });
  };
  EXPECT_EQ(update("web1", next).code(), absl::StatusCode::kFailedPrecondition) << "it is meant to run";
  ASSERT_TRUE(c.Stop("web1").ok());
  ASSERT_TRUE(c.RunUntil([&] { return c.Get("web1")->owner.empty(); }, 10 * kSec)) << c.Log();
  VmSpec renamed = next;
  renamed.name = "web2";
  EXPECT_EQ(update("web1", renamed).code(), absl::StatusCode::kInvalidArgument);
  VmSpec invalid = next;
  invalid.vcpus = 0;
  EXPECT_EQ(update("web1", invalid).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(update("nope", Spec("nope", 512)).code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(update("web1", next).ok());
  auto after = c.Get("web1");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->uuid, vm->uuid);
  EXPECT_EQ(after->epoch, 1u);
  EXPECT_EQ(after->spec.ram_bytes, 2048 * kMiB);
  EXPECT_EQ(after->spec.description, "restored");
  ASSERT_EQ(after->spec.nics.size(), 2u);
  EXPECT_EQ(after->spec.nics[0].mac, vm->spec.nics[0].mac);
  ASSERT_TRUE(after->spec.nics[1].mac.has_value());
  EXPECT_NE(after->spec.nics[1].mac, after->spec.nics[0].mac);
  ASSERT_EQ(c.LogLines(HaDecision::Kind::kUpdate).size(), 1u);
  ASSERT_TRUE(c.Start("web1").ok());
  EXPECT_EQ(c.Get("web1")->epoch, 2u);
}

TEST(Ha, CrashedNodesVmsRestartOnTheSurvivorWithMostFreeRam) {
  Cluster c(3);
  c.BootAll();
  auto web = c.Create(Spec("web1", 2048));
  ASSERT_TRUE(web.ok());
  ASSERT_EQ(web->owner, "node1");
  auto filler = c.Create(Spec("filler", 4096));  // goes to node2 (ties by name)
  ASSERT_TRUE(filler.ok());
  ASSERT_EQ(filler->owner, "node2");
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn("web1").size() == 1 && c.RunningOn("filler").size() == 1; },
                         5 * kSec));
  const int64_t crash_at = c.loop_.NowNanos();
  c.Crash("node1");
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 20 * kSec)) << c.Log();
  EXPECT_EQ(c.RunningOn("web1"), std::vector<std::string>{"node3"});
  // Not before the lease could expire, and soon after it did.
  EXPECT_GE(c.loop_.NowNanos() - crash_at, 3 * kSec - 1 * kSec);
  EXPECT_LE(c.loop_.NowNanos() - crash_at, 3 * kSec + 1 * kSec);
  auto vm = c.Get("web1");
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ(vm->epoch, 2u);
  EXPECT_EQ(c.hv("node3")->DefinedLaunch("web1")->epoch, 2u);
  const std::vector<std::string> restarts = c.LogLines(HaDecision::Kind::kRestart);
  ASSERT_EQ(restarts.size(), 1u) << c.Log();
  EXPECT_TRUE(Contains(restarts[0], "restart vm web1 on node3 (epoch 2): node1 lease expired; most free RAM 8192 MiB"))
      << restarts[0];
  EXPECT_TRUE(c.NeverTwice());
}

TEST(Ha, PartitionedNodeSelfFencesBeforeItsLeaseExpires) {
  Cluster c(3);
  c.BootAll();
  auto vm = c.Create(Spec("web1", 1024));
  ASSERT_TRUE(vm.ok());
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  const std::string victim = vm->owner;
  const int64_t deadline = c.ha(victim)->fence_deadline_ns();
  c.Cut(victim, true);
  // It keeps running its VM while it still may...
  c.RunFor(deadline - c.loop_.NowNanos() - 10 * kMs);
  EXPECT_EQ(c.RunningOn("web1"), std::vector<std::string>{victim});
  // ...and stops it by its deadline, well before the store drops its lease.
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn("web1").empty(); }, 1 * kSec)) << c.Log();
  const int64_t stopped_at = c.loop_.NowNanos();
  EXPECT_LE(stopped_at, deadline + 100 * kMs);
  // Fenced, then (VMs off) trying to rejoin.
  EXPECT_NE(c.ha(victim)->state(), HaManager::State::kActive);
  ASSERT_EQ(c.LogLines(HaDecision::Kind::kSelfFence).size(), 1u);
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kSelfFence)[0], "lease not renewed since"));
  // Another node restarts it after the lease expired.
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 10 * kSec)) << c.Log();
  EXPECT_NE(c.RunningOn("web1")[0], victim);
  EXPECT_GE(c.loop_.NowNanos(), deadline + 500 * kMs);
  EXPECT_EQ(c.Get("web1")->epoch, 2u);
  // Healed: the node rejoins with a new lease and does not take the VM back.
  c.Cut(victim, false);
  ASSERT_TRUE(c.RunUntil([&] { return c.ha(victim)->state() == HaManager::State::kActive; }, 10 * kSec));
  c.RunFor(5 * kSec);
  EXPECT_EQ(c.RunningOn("web1").size(), 1u);
  EXPECT_NE(c.RunningOn("web1")[0], victim);
  EXPECT_TRUE(c.NeverTwice());
}

// A lease that ends early (revoked by someone else) is outside the timing argument:
// the owner learns of it from its own key's delete event and fences at once, and the
// restart grace makes the coordinator wait until the owner must have fenced anyway.
TEST(Ha, LeaseRevokedElsewhereIsNoticedAndGraceKeepsItSafe) {
  Cluster c(2);
  c.restart_grace_ms_ = 3'000;
  c.BootAll();
  auto vm = c.Create(Spec("web1", 1024));
  ASSERT_TRUE(vm.ok());
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  HaManager* owner = c.ha(vm->owner);
  const scribe::LeaseId lease = owner->lease();
  bool revoked = false;
  c.store_->RevokeLease(lease, [&](absl::Status s) { revoked = s.ok(); });
  ASSERT_TRUE(c.RunUntil([&] { return revoked; }, 1 * kSec));
  const int64_t revoked_at = c.loop_.NowNanos();
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn("web1").empty(); }, 1 * kSec)) << c.Log();
  EXPECT_LE(c.loop_.NowNanos() - revoked_at, 100 * kMs) << "fenced on the delete event, not at the deadline";
  ASSERT_FALSE(c.LogLines(HaDecision::Kind::kLeaseLost).empty());
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kLeaseLost)[0],
                       "lease lost: this node's key was deleted from the store"));
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 10 * kSec));
  EXPECT_GE(c.loop_.NowNanos() - revoked_at, 3 * kSec) << "the coordinator waited out the grace";
  EXPECT_EQ(c.Get("web1")->epoch, 2u);
  ASSERT_TRUE(c.RunUntil([&] { return owner->state() == HaManager::State::kActive; }, 10 * kSec));
  EXPECT_NE(owner->lease(), lease);
  EXPECT_TRUE(c.NeverTwice());
}

TEST(Ha, NoCapacityLeavesTheVmDownUntilANodeReturns) {
  Cluster c(2, 4096);
  c.BootAll();
  auto a = c.Create(Spec("a", 3072));
  auto b = c.Create(Spec("b", 3072));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_NE(a->owner, b->owner);
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn("a").size() == 1 && c.RunningOn("b").size() == 1; }, 5 * kSec));
  auto conditions = c.Await<HaConditions>([&](auto done) { c.Any()->GetConditions(done); });
  ASSERT_TRUE(conditions.ok());
  ASSERT_EQ(conditions->failover.size(), 2u) << "neither node can take the other's VM";
  EXPECT_TRUE(Contains(conditions->failover[0].message, "if node1 failed"));

  c.Crash(b->owner);
  ASSERT_TRUE(c.RunUntil([&] { return !c.LogLines(HaDecision::Kind::kNoCapacity).empty(); }, 10 * kSec)) << c.Log();
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kNoCapacity)[0],
                       absl::StrCat("vm b stays down (", b->owner, " lease expired): no node can run vm b (3072 MiB RAM, 1 vCPUs)")))
      << c.Log();
  c.RunFor(10 * kSec);
  EXPECT_TRUE(c.RunningOn("b").empty());
  EXPECT_EQ(c.LogLines(HaDecision::Kind::kNoCapacity).size(), 1u) << "recorded once, not every pass";
  auto down = c.Get("b");
  ASSERT_TRUE(down.ok());
  EXPECT_TRUE(down->owner.empty());
  EXPECT_TRUE(Contains(down->condition, "no node can run vm b"));
  conditions = c.Await<HaConditions>([&](auto done) { c.Any()->GetConditions(done); });
  ASSERT_TRUE(conditions.ok());
  ASSERT_EQ(conditions->vms.size(), 1u);
  EXPECT_TRUE(Contains(conditions->vms[0], "b: no node can run"));

  c.Boot(b->owner);
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn("b").size() == 1; }, 10 * kSec)) << c.Log();
  EXPECT_EQ(c.Get("b")->epoch, 2u);
  EXPECT_TRUE(c.Get("b")->condition.empty());
  ASSERT_EQ(c.LogLines(HaDecision::Kind::kStart).size(), 1u) << c.Log();
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kStart)[0], "start vm b on "));
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kStart)[0], "waiting for capacity"));
  EXPECT_TRUE(c.NeverTwice());
}

TEST(Ha, GuestCrashIsRestartedInPlaceWithTheSameEpoch) {
  Cluster c(2);
  c.BootAll();
  auto vm = c.Create(Spec("web1", 1024));
  ASSERT_TRUE(vm.ok());
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  ASSERT_TRUE(c.hv(vm->owner)->CrashGuest("web1"));
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  EXPECT_EQ(c.RunningOn("web1"), std::vector<std::string>{vm->owner});
  EXPECT_EQ(c.hv(vm->owner)->starts(), 2u);
  EXPECT_EQ(c.Get("web1")->epoch, 1u);
}

TEST(Ha, PrepareStartSeesTheEpochFirstAndItsFailureIsRetried) {
  Cluster c(1);
  std::vector<uint64_t> prepared;
  int failures_left = 1;
  c.prepare_start_ = [&](const VmLaunch& launch, std::function<void(absl::Status)> done) {
    prepared.push_back(launch.epoch);
    EXPECT_TRUE(c.RunningOn(launch.spec.name).empty()) << "prepared before the hypervisor starts it";
    if (failures_left-- > 0) return done(absl::UnavailableError("scribed is not ready"));
    done(absl::OkStatus());
  };
  c.BootAll();
  ASSERT_TRUE(c.Create(Spec("web1", 1024)).ok());
  ASSERT_TRUE(c.RunUntil([&] { return !c.LogLines(HaDecision::Kind::kPowerOnFailed).empty(); }, 5 * kSec));
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kPowerOnFailed)[0],
                       "power on vm web1 (epoch 1) failed: prepare_start: scribed is not ready; retry in 2.000s"));
  ASSERT_TRUE(c.RunUntil([&] { return !c.Get("web1")->condition.empty(); }, 2 * kSec));
  EXPECT_TRUE(Contains(c.Get("web1")->condition, "start failed on node1"));
  ASSERT_TRUE(c.RunUntil([&] { return !c.RunningOn("web1").empty(); }, 5 * kSec));
  EXPECT_EQ(prepared, (std::vector<uint64_t>{1, 1}));
  ASSERT_TRUE(c.RunUntil([&] { return c.Get("web1")->condition.empty(); }, 3 * kSec))
      << "the condition clears once it runs";
}

TEST(Ha, ANewIncarnationForcesOffWhatAnEarlierOneLeftRunning) {
  Cluster c(1);
  c.boot_hook_ = [&](Cluster::Node& n) {
    VmLaunch launch = MakeNbdLaunch(Spec("leftover", 512), "0b1c2d3e-4f50-4617-8899-aabbccddeeff", 3,
                                    NbdLaunchOptions{"/run/scribed/nbd.sock", ""});
    bool started = false;
    n.hv->Start(launch, [&](absl::Status s) { started = s.ok(); });
    ASSERT_TRUE(c.RunUntil([&] { return started; }, 1 * kSec));
  };
  c.BootAll();
  EXPECT_TRUE(c.RunningOn("leftover").empty());
  ASSERT_EQ(c.LogLines(HaDecision::Kind::kForceOff).size(), 1u);
  EXPECT_TRUE(Contains(c.LogLines(HaDecision::Kind::kForceOff)[0], "force off vm leftover: found running"));
  // It joined only after that.
  ASSERT_EQ(c.log_.size(), 3u) << c.Log();
  EXPECT_EQ(c.log_[0].kind, HaDecision::Kind::kForceOff);
  EXPECT_EQ(c.log_[1].kind, HaDecision::Kind::kJoin);
}

TEST(Ha, MaintenanceNodeTakesNoNewVms) {
  Cluster c(2);
  c.nodes_.at("node1").ram_mib = 65536;
  c.BootAll();
  ASSERT_TRUE(c.AwaitStatus([&](auto done) { c.ha("node1")->SetMaintenance(true, done); }).ok());
  auto vm = c.Create(Spec("web1", 1024));
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ(vm->owner, "node2");
  auto nodes = c.Await<std::vector<NodeInfo>>([&](auto done) { c.Any()->ListNodes(done); });
  ASSERT_TRUE(nodes.ok());
  EXPECT_TRUE((*nodes)[0].maintenance);
  EXPECT_EQ((*nodes)[1].ram_used_bytes, 1024 * kMiB);
  EXPECT_EQ((*nodes)[1].vms, 1);
}

TEST(Ha, CoordinatorCrashHandsOverAndRecoveryStillHappens) {
  Cluster c(3);
  c.BootAll();
  HaManager* coordinator = c.Coordinator();
  ASSERT_NE(coordinator, nullptr);
  const std::string dead = coordinator->node();
  // A VM on the coordinator itself.
  std::string on_dead;
  for (int i = 0; i < 6 && on_dead.empty(); ++i) {
    auto vm = c.Create(Spec(absl::StrCat("vm", i), 1024));
    ASSERT_TRUE(vm.ok());
    if (vm->owner == dead) on_dead = vm->spec.name;
  }
  ASSERT_FALSE(on_dead.empty());
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn(on_dead).size() == 1; }, 5 * kSec));
  c.Crash(dead);
  ASSERT_TRUE(c.RunUntil([&] { return c.RunningOn(on_dead).size() == 1; }, 10 * kSec)) << c.Log();
  ASSERT_NE(c.Coordinator(), nullptr);
  EXPECT_NE(c.Coordinator()->node(), dead);
  EXPECT_TRUE(c.NeverTwice());
}

}  // namespace
}  // namespace hypercore
