#include <utility>

#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {

class SimNetwork::Endpoint : public Transport {
 public:
  Endpoint(SimNetwork* net, NodeId id) : net_(net), id_(id), net_alive_(net->alive_) {}
  ~Endpoint() override {
    if (*net_alive_) net_->endpoints_.erase(id_);
  }
  NodeId self() const override { return id_; }
  void Send(NodeId to, std::string payload) override {
    if (*net_alive_) net_->Deliver(id_, to, std::move(payload));
  }
  void SetHandler(Handler handler) override { handler_ = std::move(handler); }
  const Handler& handler() const { return handler_; }

 private:
  SimNetwork* net_;
  NodeId id_;
  std::shared_ptr<bool> net_alive_;
  Handler handler_;
};

SimNetwork::SimNetwork(SimLoop* loop, Random* random, SimNetworkOptions options)
    : loop_(loop), random_(random), options_(options) {}

SimNetwork::~SimNetwork() { *alive_ = false; }

std::unique_ptr<Transport> SimNetwork::AddNode(Transport::NodeId id) {
  SCRIBE_CHECK(endpoints_.count(id) == 0);
  auto ep = std::make_unique<Endpoint>(this, id);
  endpoints_[id] = ep.get();
  return ep;
}

void SimNetwork::SetLink(Transport::NodeId from, Transport::NodeId to, bool up) {
  if (up) {
    cut_.erase({from, to});
  } else {
    cut_.insert({from, to});
  }
}

void SimNetwork::Partition(const std::set<Transport::NodeId>& a,
                           const std::set<Transport::NodeId>& b) {
  for (auto x : a) {
    for (auto y : b) {
      SetLink(x, y, false);
      SetLink(y, x, false);
    }
  }
}

void SimNetwork::SetNodeUp(Transport::NodeId id, bool up) {
  if (up) {
    down_.erase(id);
  } else {
    down_.insert(id);
  }
}

void SimNetwork::HealAll() {
  cut_.clear();
  down_.clear();
}

bool SimNetwork::LinkUp(Transport::NodeId from, Transport::NodeId to) const {
  return !down_.count(from) && !down_.count(to) && !cut_.count({from, to});
}

void SimNetwork::Deliver(Transport::NodeId from, Transport::NodeId to, std::string payload) {
  if (!LinkUp(from, to) || random_->Bernoulli(options_.drop_probability)) {
    ++dropped_;
    return;
  }
  const int64_t delay =
      options_.delay_ns_min +
      static_cast<int64_t>(random_->Uniform(
          static_cast<uint64_t>(options_.delay_ns_max - options_.delay_ns_min) + 1));
  loop_->RunAfter(delay, [this, alive = alive_, from, to, payload = std::move(payload)]() mutable {
    if (!*alive) return;
    auto it = endpoints_.find(to);
    // The link is checked again on arrival: a partition cuts messages in flight.
    if (it == endpoints_.end() || !LinkUp(from, to) || !it->second->handler()) {
      ++dropped_;
      return;
    }
    ++delivered_;
    it->second->handler()(from, std::move(payload));
  });
}

}  // namespace scribe
