// The Hypervisor conformance suite against every implementation: FakeHypervisor (with
// and without latency, on virtual time) and LibvirtHypervisor on libvirt's in-process
// test driver (on a real loop); and against broken hypervisors, to show the checks fail.
#include <functional>
#include <memory>
#include <string>

#include "hypercore/fake_hypervisor.h"
#include "hypercore/libvirt_hypervisor.h"
#include "libhypercore/hypervisor/conformance.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"

namespace hypercore {
namespace {

namespace hc = hypervisor_conformance;

struct Fixture {
  std::unique_ptr<scribe::Loop> loop;
  std::unique_ptr<scribe::Random> random;
  std::unique_ptr<Hypervisor> hv;
};

struct HypervisorFactory {
  const char* name;
  std::function<Fixture()> make;
  int64_t acpi_timeout_ms;
};

Fixture MakeFake(int64_t latency_ns_max) {
  Fixture f;
  f.loop = std::make_unique<scribe::SimLoop>();
  f.random = std::make_unique<scribe::SeededRandom>(7);
  FakeHypervisorOptions options;
  options.host = "node1";
  options.latency_ns_max = latency_ns_max;
  f.hv = std::make_unique<FakeHypervisor>(f.loop.get(), f.random.get(), options);
  return f;
}

Fixture MakeLibvirt() {
  Fixture f;
  f.loop = scribe::RealLoop::Create();
  LibvirtHypervisorOptions options;
  options.uri = "test:///default";
  options.domain_type = "qemu";
  auto hv = LibvirtHypervisor::Create(f.loop.get(), options);
  if (!hv.ok()) ADD_FAILURE() << hv.status();
  if (hv.ok()) f.hv = *std::move(hv);
  return f;
}

class HypervisorConformance : public testing::TestWithParam<HypervisorFactory> {
 protected:
  void SetUp() override {
    f_ = GetParam().make();
    ASSERT_NE(f_.hv, nullptr);
  }
  scribe::Loop* loop() { return f_.loop.get(); }
  Hypervisor* hv() { return f_.hv.get(); }
  Fixture f_;
};

TEST_P(HypervisorConformance, Lifecycle) { EXPECT_TRUE(hc::CheckLifecycle(loop(), hv())); }
TEST_P(HypervisorConformance, Shutdown) {
  EXPECT_TRUE(hc::CheckShutdown(loop(), hv(), GetParam().acpi_timeout_ms));
}
TEST_P(HypervisorConformance, UnknownVm) { EXPECT_TRUE(hc::CheckUnknownVm(loop(), hv())); }
TEST_P(HypervisorConformance, RejectsInvalidLaunch) {
  EXPECT_TRUE(hc::CheckRejectsInvalidLaunch(loop(), hv()));
}
TEST_P(HypervisorConformance, RestartWithNewEpoch) {
  EXPECT_TRUE(hc::CheckRestartWithNewEpoch(loop(), hv()));
}
TEST_P(HypervisorConformance, UndefineRunningRefused) {
  EXPECT_TRUE(hc::CheckUndefineRunningRefused(loop(), hv()));
}
TEST_P(HypervisorConformance, OrderedOperations) {
  EXPECT_TRUE(hc::CheckOrderedOperations(loop(), hv()));
}

INSTANTIATE_TEST_SUITE_P(
    All, HypervisorConformance,
    testing::Values(HypervisorFactory{"fake", [] { return MakeFake(0); }, 5'000},
                    HypervisorFactory{"fake_with_latency", [] { return MakeFake(50'000'000); }, 5'000},
                    HypervisorFactory{"libvirt_test_driver", MakeLibvirt, 5'000}),
    [](const auto& info) { return std::string(info.param.name); });

// --- The checks can fail -------------------------------------------------------------

// Forwards everything to a fake, except what a subclass breaks.
class Decorator : public Hypervisor {
 public:
  explicit Decorator(Hypervisor* inner) : inner_(inner) {}
  void Start(const VmLaunch& launch, StatusDone done) override { inner_->Start(launch, done); }
  void Shutdown(const std::string& name, StatusDone done) override { inner_->Shutdown(name, done); }
  void ForceOff(const std::string& name, StatusDone done) override { inner_->ForceOff(name, done); }
  void Undefine(const std::string& name, StatusDone done) override { inner_->Undefine(name, done); }
  void GetStatus(const std::string& name, Done<VmStatus> done) override { inner_->GetStatus(name, done); }
  void List(Done<std::vector<VmStatus>> done) override { inner_->List(done); }

 protected:
  Hypervisor* inner_;
};

// Says OK to ForceOff without doing it: a fence built on it would leave VMs running.
class IgnoresForceOff : public Decorator {
 public:
  IgnoresForceOff(scribe::Loop* loop, Hypervisor* inner) : Decorator(inner), loop_(loop) {}
  void ForceOff(const std::string&, StatusDone done) override {
    loop_->Post([done] { done(absl::OkStatus()); });
  }

 private:
  scribe::Loop* loop_;
};

// Applies ForceOff at once, ahead of an earlier Start still in flight.
class ReordersOperations : public Decorator {
 public:
  ReordersOperations(scribe::Loop* loop, scribe::Random* random)
      : Decorator(nullptr), loop_(loop), random_(random) {
    FakeHypervisorOptions slow;
    slow.latency_ns_min = slow.latency_ns_max = 50'000'000;
    slow_ = std::make_unique<FakeHypervisor>(loop_, random_, slow);
    inner_ = slow_.get();
  }
  void ForceOff(const std::string& name, StatusDone done) override {
    // Looks at the state now, as a hypervisor without per-VM ordering would.
    slow_->GetStatus(name, [this, name, done](absl::StatusOr<VmStatus> s) {
      if (s.ok() && s->state == VmPowerState::kAbsent) return done(absl::NotFoundError(name));
      done(absl::OkStatus());
    });
  }

 private:
  scribe::Loop* loop_;
  scribe::Random* random_;
  std::unique_ptr<FakeHypervisor> slow_;
};

// Reports every VM as absent.
class Amnesiac : public Decorator {
 public:
  Amnesiac(scribe::Loop* loop, Hypervisor* inner) : Decorator(inner), loop_(loop) {}
  void GetStatus(const std::string& name, Done<VmStatus> done) override {
    loop_->Post([name, done] {
      VmStatus s;
      s.name = name;
      done(s);
    });
  }

 private:
  scribe::Loop* loop_;
};

TEST(HypervisorConformanceCanFail, ForceOffThatDoesNothing) {
  Fixture f = MakeFake(0);
  IgnoresForceOff broken(f.loop.get(), f.hv.get());
  EXPECT_FALSE(hc::CheckLifecycle(f.loop.get(), &broken));
}

TEST(HypervisorConformanceCanFail, OperationsOutOfOrder) {
  scribe::SimLoop loop;
  scribe::SeededRandom random(3);
  ReordersOperations broken(&loop, &random);
  EXPECT_FALSE(hc::CheckOrderedOperations(&loop, &broken));
}

TEST(HypervisorConformanceCanFail, StatusThatForgets) {
  Fixture f = MakeFake(0);
  Amnesiac broken(f.loop.get(), f.hv.get());
  EXPECT_FALSE(hc::CheckLifecycle(f.loop.get(), &broken));
  EXPECT_FALSE(hc::CheckRestartWithNewEpoch(f.loop.get(), &broken));
}

}  // namespace
}  // namespace hypercore
