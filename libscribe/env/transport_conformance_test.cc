#include <memory>
#include <vector>

#include "libscribe/env/conformance.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {
namespace {

struct Net {
  std::unique_ptr<Loop> loop;
  std::unique_ptr<Random> random;
  std::unique_ptr<SimNetwork> sim;
  std::vector<std::unique_ptr<Transport>> owned;
  std::vector<Transport*> eps;
};

struct NetFactory {
  const char* name;
  std::function<std::unique_ptr<Net>()> make;
};

std::unique_ptr<Net> MakeSim() {
  auto net = std::make_unique<Net>();
  auto loop = std::make_unique<SimLoop>();
  net->random = std::make_unique<SeededRandom>(1);
  net->sim = std::make_unique<SimNetwork>(loop.get(), net->random.get(), SimNetworkOptions{});
  for (Transport::NodeId id : {1, 2, 3}) net->owned.push_back(net->sim->AddNode(id));
  for (auto& t : net->owned) net->eps.push_back(t.get());
  net->loop = std::move(loop);
  return net;
}

std::unique_ptr<Net> MakeCapnp() {
  auto net = std::make_unique<Net>();
  auto loop = RealLoop::Create();
  std::vector<CapnpTransport*> ts;
  for (Transport::NodeId id : {1, 2, 3}) {
    auto t = CapnpTransport::Create(loop.get(), id, "127.0.0.1:0");
    SCRIBE_CHECK(t.ok());
    ts.push_back(t->get());
    net->owned.push_back(std::move(t).value());
  }
  for (auto* a : ts) {
    for (auto* b : ts) a->AddPeer(b->self(), "127.0.0.1:" + std::to_string(b->port()));
  }
  for (auto& t : net->owned) net->eps.push_back(t.get());
  net->loop = std::move(loop);
  return net;
}

class TransportConformance : public testing::TestWithParam<NetFactory> {
 protected:
  void TearDown() override {
    net_->owned.clear();
    net_->sim.reset();
  }
  std::unique_ptr<Net> net_ = GetParam().make();
};

TEST_P(TransportConformance, AllPairsDelivery) {
  EXPECT_TRUE(conformance::CheckAllPairsDelivery(net_->loop.get(), net_->eps));
}
TEST_P(TransportConformance, UnknownPeerIsDropped) {
  EXPECT_TRUE(conformance::CheckUnknownPeerIsDropped(net_->loop.get(), net_->eps));
}

INSTANTIATE_TEST_SUITE_P(All, TransportConformance,
                         testing::Values(NetFactory{"capnp_tcp", MakeCapnp},
                                         NetFactory{"sim", MakeSim}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(TransportConformanceCanFail, DetectsLossyNetwork) {
  auto net = MakeSim();
  net->sim->set_drop_probability(0.3);
  EXPECT_FALSE(conformance::CheckAllPairsDelivery(net->loop.get(), net->eps));
  net->owned.clear();
}

TEST(SimNetwork, PartitionCutsMessagesInFlightAndHeals) {
  auto net = MakeSim();
  int got = 0;
  net->eps[1]->SetHandler([&](Transport::NodeId, std::string) { ++got; });
  net->eps[0]->Send(2, "in flight");
  net->sim->Partition({1}, {2, 3});  // cut before arrival
  net->eps[0]->Send(2, "after cut");
  net->loop->RunUntil([] { return false; }, 1'000'000'000);
  EXPECT_EQ(got, 0);
  EXPECT_EQ(net->sim->dropped(), 2u);
  net->sim->HealAll();
  net->eps[0]->Send(2, "healed");
  net->loop->RunUntil([&] { return got == 1; }, 1'000'000'000);
  EXPECT_EQ(got, 1);
  net->owned.clear();
}

TEST(CapnpTransport, DeadPeerDropsAndReconnectsWhenItReturns) {
  auto loop = RealLoop::Create();
  auto a = CapnpTransport::Create(loop.get(), 1, "127.0.0.1:0");
  ASSERT_TRUE(a.ok()) << a.status();
  (*a)->AddPeer(2, "127.0.0.1:1");  // nothing listens on port 1
  (*a)->Send(2, "lost");
  loop->RunUntil([] { return false; }, 200'000'000);
  auto b = CapnpTransport::Create(loop.get(), 2, "127.0.0.1:0");
  ASSERT_TRUE(b.ok());
  std::vector<std::string> got;
  (*b)->SetHandler([&](Transport::NodeId from, std::string p) {
    EXPECT_EQ(from, 1u);
    got.push_back(p);
  });
  (*a)->AddPeer(2, "127.0.0.1:" + std::to_string((*b)->port()));
  (*a)->Send(2, "arrives");
  loop->RunUntil([&] { return !got.empty(); }, 5'000'000'000);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], "arrives");
}

TEST(CapnpTransport, ListenOnBadAddressIsAClearError) {
  auto loop = RealLoop::Create();
  auto t = CapnpTransport::Create(loop.get(), 1, "256.1.1.1:0");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("256.1.1.1"), std::string::npos);
}

}  // namespace
}  // namespace scribe
