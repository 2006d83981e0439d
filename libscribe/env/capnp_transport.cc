// Transport over Cap'n Proto RPC: each node serves the Backplane interface on TCP and
// calls `deliver` on its peers. Connections are made lazily and re-made after failure.
#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include <deque>
#include <map>
#include <utility>

#include "absl/strings/str_format.h"
#include "libscribe/env/backplane.capnp.h"
#include "libscribe/env/real_loop_internal.h"
#include "scribe/real_env.h"
#include "scribe/status.h"

namespace scribe {

namespace {
// Failed connections are retried no sooner than this; sends in between are dropped.
constexpr int64_t kReconnectBackoffNs = 100'000'000;
// Messages held per peer while its connection is being made; beyond that they drop.
constexpr size_t kPendingMessagesMax = 4096;
}  // namespace

struct CapnpTransport::Impl : public kj::TaskSet::ErrorHandler {
  struct Peer {
    std::string address;
    uint64_t generation = 0;  // bumped when the connection is dropped
    bool connecting = false;
    int64_t retry_after_ns = 0;
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<capnp::TwoPartyClient> client;
    kj::Maybe<backplane::Backplane::Client> cap;
    std::deque<std::string> pending;
  };

  class Server final : public backplane::Backplane::Server {
   public:
    explicit Server(Impl* impl) : impl_(impl) {}
    kj::Promise<void> deliver(DeliverContext context) override {
      auto params = context.getParams();
      auto data = params.getPayload();
      std::string payload(reinterpret_cast<const char*>(data.begin()), data.size());
      const NodeId from = params.getFrom();
      impl_->loop->Dispatch([this, from, &payload] {
        if (impl_->handler) impl_->handler(from, std::move(payload));
      });
      return kj::READY_NOW;
    }

   private:
    Impl* impl_;
  };

  Impl(RealLoop* loop, NodeId self) : loop(loop), self(self) {}

  void taskFailed(kj::Exception&& exception) override {
    // A failed listen loop or call: the message is lost, as the contract allows.
    (void)exception;
  }

  void Connect(NodeId id, Peer& peer) {
    peer.connecting = true;
    const uint64_t gen = peer.generation;
    auto& network = loop->impl()->io.provider->getNetwork();
    tasks.add(network.parseAddress(peer.address)
                  .then([](kj::Own<kj::NetworkAddress> addr) { return addr->connect(); })
                  .then(
                      [this, id, gen](kj::Own<kj::AsyncIoStream> stream) {
                        auto it = peers.find(id);
                        if (it == peers.end() || it->second.generation != gen) return;
                        Peer& p = it->second;
                        p.connecting = false;
                        p.stream = kj::mv(stream);
                        p.client = kj::heap<capnp::TwoPartyClient>(*p.stream);
                        p.cap = p.client->bootstrap().castAs<backplane::Backplane>();
                        while (!p.pending.empty()) {
                          std::string msg = std::move(p.pending.front());
                          p.pending.pop_front();
                          Call(id, p, msg);
                        }
                      },
                      [this, id, gen](kj::Exception&& e) {
                        auto it = peers.find(id);
                        if (it == peers.end() || it->second.generation != gen) return;
                        Drop(it->second);
                      }));
  }

  void Drop(Peer& peer) {
    ++peer.generation;
    peer.connecting = false;
    peer.retry_after_ns = loop->NowNanos() + kReconnectBackoffNs;
    peer.cap = nullptr;
    peer.pending.clear();
    // The client may be in use by the failing call's continuation; free it later.
    auto client = kj::mv(peer.client);
    auto stream = kj::mv(peer.stream);
    if (client.get() != nullptr || stream.get() != nullptr) {
      tasks.add(kj::evalLater([c = kj::mv(client), s = kj::mv(stream)]() mutable {
        c = nullptr;
        s = nullptr;
      }));
    }
  }

  void Call(NodeId id, Peer& peer, const std::string& payload) {
    KJ_IF_MAYBE(cap, peer.cap) {
      auto req = cap->deliverRequest();
      req.setFrom(self);
      req.setPayload(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(payload.data()),
                                  payload.size()));
      const uint64_t gen = peer.generation;
      tasks.add(req.send().ignoreResult().catch_([this, id, gen](kj::Exception&& e) {
        auto it = peers.find(id);
        if (it != peers.end() && it->second.generation == gen) Drop(it->second);
      }));
    }
  }

  void Send(NodeId to, std::string payload) {
    if (to == self) {
      loop->Post([this, payload = std::move(payload)]() mutable {
        if (handler) handler(self, std::move(payload));
      });
      return;
    }
    auto it = peers.find(to);
    if (it == peers.end()) return;  // unknown peer: dropped
    Peer& peer = it->second;
    if (peer.cap != nullptr) {
      Call(to, peer, payload);
      return;
    }
    if (loop->NowNanos() < peer.retry_after_ns) return;
    if (peer.pending.size() < kPendingMessagesMax) peer.pending.push_back(std::move(payload));
    if (!peer.connecting) Connect(to, peer);
  }

  RealLoop* loop;
  NodeId self;
  Handler handler;
  // Declared so that destruction runs bottom-up: pending calls and the accept loop
  // first, then connections, then the server and the socket they use.
  kj::Own<kj::ConnectionReceiver> listener;
  kj::Own<capnp::TwoPartyServer> server;
  std::map<NodeId, Peer> peers;
  kj::TaskSet tasks{*this};
};

CapnpTransport::CapnpTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CapnpTransport::~CapnpTransport() = default;

absl::StatusOr<std::unique_ptr<CapnpTransport>> CapnpTransport::Create(
    RealLoop* loop, NodeId self, const std::string& listen_address) {
  auto impl = std::make_unique<Impl>(loop, self);
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
                auto& network = loop->impl()->io.provider->getNetwork();
                auto addr = network.parseAddress(listen_address).wait(loop->impl()->io.waitScope);
                impl->listener = addr->listen();
              })) {
    return absl::UnavailableError(absl::StrFormat("cannot listen on %s: %s", listen_address,
                                                  e->getDescription().cStr()));
  }
  impl->server = kj::heap<capnp::TwoPartyServer>(kj::heap<Impl::Server>(impl.get()));
  impl->tasks.add(impl->server->listen(*impl->listener));
  return std::unique_ptr<CapnpTransport>(new CapnpTransport(std::move(impl)));
}

void CapnpTransport::AddPeer(NodeId id, const std::string& address) {
  auto& peer = impl_->peers[id];
  if (peer.address != address) {
    impl_->Drop(peer);
    peer.retry_after_ns = 0;
    peer.address = address;
  }
}

uint16_t CapnpTransport::port() const { return static_cast<uint16_t>(impl_->listener->getPort()); }
Transport::NodeId CapnpTransport::self() const { return impl_->self; }
void CapnpTransport::Send(NodeId to, std::string payload) { impl_->Send(to, std::move(payload)); }
void CapnpTransport::SetHandler(Handler handler) { impl_->handler = std::move(handler); }

}  // namespace scribe
