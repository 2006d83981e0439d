#include "daemons/hypercored/scribe_client.h"

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "libscribe/env/real_loop_internal.h"

namespace hypercore::daemon {
namespace {

namespace api = ::scribe::api;

capnp::Text::Reader Text(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }
std::string Str(capnp::Text::Reader t) { return std::string(t.begin(), t.size()); }

absl::Status StatusOf(api::Error::Reader e) {
  if (e.getCode() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(e.getCode()), Str(e.getMessage()));
}

class TcpScribeLink final : public ScribeLink {
 public:
  TcpScribeLink(scribe::RealLoop* loop, std::string address)
      : loop_(loop), address_(std::move(address)), description_("scribed at " + address_) {}
  ~TcpScribeLink() noexcept override {}

  api::ScribeAdmin::Client Get() override {
    if (!connection_) {
      auto c = std::make_shared<Connection>();
      auto& network = loop_->impl()->io.provider->getNetwork();
      auto promise = network.parseAddress(address_)
                         .then([](kj::Own<kj::NetworkAddress> a) { return a->connect(); })
                         .then([c](kj::Own<kj::AsyncIoStream> s) -> capnp::Capability::Client {
                           c->stream = kj::mv(s);
                           c->client = kj::heap<capnp::TwoPartyClient>(*c->stream);
                           return c->client->bootstrap();
                         });
      c->cap = capnp::Capability::Client(kj::mv(promise)).castAs<api::ScribeAdmin>();
      connection_ = std::move(c);
    }
    return connection_->cap;
  }

  void Broken() override { connection_.reset(); }
  const std::string& description() const override { return description_; }

 private:
  struct Connection {
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<capnp::TwoPartyClient> client;
    api::ScribeAdmin::Client cap = nullptr;
  };

  scribe::RealLoop* loop_;
  std::string address_;
  std::string description_;
  std::shared_ptr<Connection> connection_;
};

class FixedScribeLink final : public ScribeLink {
 public:
  FixedScribeLink(api::ScribeAdmin::Client client, std::string description)
      : client_(kj::mv(client)), description_(std::move(description)) {}
  // KJ members may throw from their destructors; nothing here does.
  ~FixedScribeLink() noexcept override {}
  api::ScribeAdmin::Client Get() override { return client_; }
  void Broken() override {}
  const std::string& description() const override { return description_; }

 private:
  api::ScribeAdmin::Client client_;
  std::string description_;
};

}  // namespace

std::unique_ptr<ScribeLink> NewTcpScribeLink(scribe::RealLoop* loop, std::string address) {
  return std::make_unique<TcpScribeLink>(loop, std::move(address));
}

std::unique_ptr<ScribeLink> NewFixedScribeLink(scribe::api::ScribeAdmin::Client client,
                                               std::string description) {
  return std::make_unique<FixedScribeLink>(kj::mv(client), std::move(description));
}

template <typename Results, typename Decode>
auto ScribeClient::Call(capnp::RemotePromise<Results>&& call, Decode decode)
    -> kj::Promise<decltype(decode(std::declval<typename Results::Reader>()))> {
  using Out = decltype(decode(std::declval<typename Results::Reader>()));
  kj::Promise<capnp::Response<Results>> promise = kj::mv(call);
  if (timer_ != nullptr) promise = timer_->timeoutAfter(call_timeout_ms_ * kj::MILLISECONDS, kj::mv(promise));
  return promise.then(
      [decode](capnp::Response<Results>&& r) -> Out { return decode(static_cast<typename Results::Reader>(r)); },
      [this](kj::Exception&& e) -> Out {
        if (e.getType() == kj::Exception::Type::OVERLOADED && e.getDescription().startsWith("operation timed out")) {
          link_->Broken();
          return Out(absl::DeadlineExceededError(
              absl::StrCat("no answer from ", link_->description(), " within ", call_timeout_ms_,
                           " ms (the call may or may not have taken effect)")));
        }
        if (e.getType() == kj::Exception::Type::UNIMPLEMENTED) {
          // An older scribed (e.g. without fenceVsd): the connection itself is fine.
          return Out(absl::UnimplementedError(absl::StrCat(
              link_->description(), " does not implement this call: ", e.getDescription().cStr())));
        }
        link_->Broken();
        return Out(absl::UnavailableError(
            absl::StrCat("cannot reach ", link_->description(), ": ", e.getDescription().cStr())));
      });
}

kj::Promise<absl::Status> ScribeClient::CreateVsd(const std::string& name, uint64_t size_bytes,
                                                  int replication, int flash_priority) {
  auto req = link_->Get().createVsdRequest();
  req.setName(Text(name));
  req.setSizeBytes(size_bytes);
  req.setReplication(static_cast<uint8_t>(replication));
  req.setFlashPriority(static_cast<uint8_t>(flash_priority));
  return Call(req.send(), [](auto r) { return StatusOf(r.getError()); });
}

kj::Promise<absl::Status> ScribeClient::DeleteVsd(const std::string& name) {
  auto req = link_->Get().deleteVsdRequest();
  req.setName(Text(name));
  return Call(req.send(), [](auto r) { return StatusOf(r.getError()); });
}

kj::Promise<absl::StatusOr<std::vector<uint64_t>>> ScribeClient::CreateGroupSnapshot(
    const std::vector<std::string>& vsds, const std::string& name) {
  auto req = link_->Get().createGroupSnapshotRequest();
  auto list = req.initVsds(static_cast<unsigned>(vsds.size()));
  for (size_t i = 0; i < vsds.size(); ++i) list.set(static_cast<unsigned>(i), Text(vsds[i]));
  req.setName(Text(name));
  const size_t expected = vsds.size();
  return Call(req.send(), [expected](auto r) -> absl::StatusOr<std::vector<uint64_t>> {
    absl::Status st = StatusOf(r.getError());
    if (!st.ok()) return st;
    std::vector<uint64_t> ids;
    for (auto s : r.getSnapshots()) ids.push_back(s.getId());
    if (ids.size() != expected) {
      return absl::InternalError(
          absl::StrCat("scribed made ", ids.size(), " snapshots for ", expected, " VSDs"));
    }
    return ids;
  });
}

kj::Promise<absl::Status> ScribeClient::DeleteSnapshot(const std::string& vsd,
                                                       const std::string& name) {
  auto req = link_->Get().deleteSnapshotRequest();
  req.setVsd(Text(vsd));
  req.setName(Text(name));
  return Call(req.send(), [](auto r) { return StatusOf(r.getError()); });
}

kj::Promise<absl::Status> ScribeClient::CloneVsd(const std::string& vsd, const std::string& clone) {
  auto req = link_->Get().cloneVsdRequest();
  req.setVsd(Text(vsd));
  req.setCloneName(Text(clone));
  return Call(req.send(), [](auto r) { return StatusOf(r.getError()); });
}

kj::Promise<absl::Status> ScribeClient::CloneFromSnapshot(const std::string& vsd,
                                                          const std::string& snapshot,
                                                          const std::string& clone) {
  auto req = link_->Get().cloneFromSnapshotRequest();
  req.setVsd(Text(vsd));
  req.setSnapshot(Text(snapshot));
  req.setCloneName(Text(clone));
  return Call(req.send(), [](auto r) { return StatusOf(r.getError()); });
}

kj::Promise<absl::Status> ScribeClient::RevertToSnapshot(const std::string& vsd,
                                                         const std::string& snapshot) {
  auto req = link_->Get().revertToSnapshotRequest();
  req.setVsd(Text(vsd));
  req.setSnapshot(Text(snapshot));
  return Call(req.send(), [](auto r) { return StatusOf(r.getError()); });
}

kj::Promise<absl::StatusOr<ScribeExport>> ScribeClient::ExportInfo(const std::string& vsd,
                                                                   uint64_t node) {
  auto req = link_->Get().exportInfoRequest();
  req.setVsd(Text(vsd));
  req.setNode(node);
  return Call(req.send(), [](auto r) -> absl::StatusOr<ScribeExport> {
    absl::Status st = StatusOf(r.getError());
    if (!st.ok()) return st;
    ScribeExport e;
    e.node = r.getNode();
    e.nbd_socket = Str(r.getNbdSocket());
    e.export_name = Str(r.getExportName());
    e.uri = Str(r.getUri());
    return e;
  });
}

kj::Promise<absl::Status> ScribeClient::FenceVsd(const std::string& vsd, uint64_t epoch) {
  auto req = link_->Get().fenceVsdRequest();
  req.setVsd(Text(vsd));
  req.setEpoch(epoch);
  return Call(req.send(), [](auto r) { return StatusOf(r.getError()); });
}

kj::Promise<absl::StatusOr<std::vector<ScribeNode>>> ScribeClient::Cluster() {
  auto req = link_->Get().clusterRequest();
  return Call(req.send(), [](auto r) -> absl::StatusOr<std::vector<ScribeNode>> {
    absl::Status st = StatusOf(r.getError());
    if (!st.ok()) return st;
    std::vector<ScribeNode> nodes;
    for (auto n : r.getStatus().getNodes()) {
      ScribeNode node;
      node.id = n.getId();
      node.admin_address = Str(n.getAdminAddress());
      node.nbd_socket = Str(n.getNbdSocket());
      node.alive = n.getAlive();
      nodes.push_back(std::move(node));
    }
    return nodes;
  });
}

}  // namespace hypercore::daemon
