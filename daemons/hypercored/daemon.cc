#include "daemons/hypercored/daemon.h"

#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.h>
#include <kj/async-io.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemons/hypercored/media_writer.h"
#include "daemons/hypercored/records.h"
#include "daemons/hypercored/scribe_client.h"
#include "daemons/hypercored/service.h"
#include "hypercore/ha.h"
#include "libscribe/env/real_loop_internal.h"
#include "scribe/meta_store.h"

namespace hypercore::daemon {
namespace {

constexpr int64_t kNsPerMs = 1'000'000;
constexpr int64_t kRetryNs = 500 * kNsPerMs;

// Serves one capability to every TCP connection on an address.
class Listener : public kj::TaskSet::ErrorHandler {
 public:
  Listener(scribe::RealLoop* loop, capnp::Capability::Client bootstrap)
      : loop_(loop), bootstrap_(kj::mv(bootstrap)) {}

  absl::Status Listen(const std::string& address) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                   auto& network = loop_->impl()->io.provider->getNetwork();
                   auto addr = network.parseAddress(address).wait(loop_->impl()->io.waitScope);
                   listener_ = addr->listen();
                 })) {
      return absl::UnavailableError(absl::StrFormat("cannot listen on %s: %s", address, e->getDescription().cStr()));
    }
    port_ = static_cast<uint16_t>(listener_->getPort());
    tasks_.add(AcceptLoop());
    return absl::OkStatus();
  }
  uint16_t port() const { return port_; }
  void taskFailed(kj::Exception&&) override {}

 private:
  struct Connection {
    Connection(kj::Own<kj::AsyncIoStream> s, capnp::Capability::Client bootstrap)
        : stream(kj::mv(s)),
          network(*stream, capnp::rpc::twoparty::Side::SERVER),
          rpc(capnp::makeRpcServer(network, kj::mv(bootstrap))) {}
    kj::Own<kj::AsyncIoStream> stream;
    capnp::TwoPartyVatNetwork network;
    capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
  };

  kj::Promise<void> AcceptLoop() {
    return listener_->accept().then([this](kj::Own<kj::AsyncIoStream> stream) {
      loop_->Dispatch([&] {
        auto connection = kj::heap<Connection>(kj::mv(stream), bootstrap_);
        auto gone = connection->network.onDisconnect();
        tasks_.add(gone.attach(kj::mv(connection)));
      });
      return AcceptLoop();
    });
  }

  scribe::RealLoop* loop_;
  capnp::Capability::Client bootstrap_;
  kj::Own<kj::ConnectionReceiver> listener_;
  uint16_t port_ = 0;
  kj::TaskSet tasks_{*this};  // after the listener: destroyed first
};

uint64_t NowUnixMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

class DaemonImpl final : public Daemon {
 public:
  DaemonImpl(scribe::RealLoop* loop, DaemonConfig config) : loop_(loop), config_(std::move(config)) {
    if (!config_.log) {
      config_.log = [](const std::string& line) { std::fprintf(stderr, "hypercored: %s\n", line.c_str()); };
    }
  }

  ~DaemonImpl() override {
    // The API first (its calls use everything below), the manager before what it uses.
    listener_.reset();
    ha_.reset();
    preparer_.reset();
    writer_.reset();
  }

  absl::Status Init() {
    if (config_.ram_bytes == 0 || config_.cpus <= 0) {
      return absl::InvalidArgumentError("the node's RAM and CPUs must be > 0");
    }
    scribe::EtcdMetaStoreOptions eo;
    eo.endpoint = config_.etcd;
    eo.request_timeout_ms = std::max<int64_t>(1000, config_.lease_ttl_ms / 3);
    auto etcd = scribe::EtcdMetaStore::Create(loop_, eo);
    if (!etcd.ok()) return etcd.status();
    etcd_ = *std::move(etcd);

    link_ = NewTcpScribeLink(loop_, config_.scribe_admin);
    scribe_ = std::make_unique<ScribeClient>(link_.get(), &loop_->impl()->io.provider->getTimer(),
                                             config_.scribe_call_timeout_ms);
    absl::Status st = ResolveScribe();
    if (!st.ok()) return st;

    auto hv = LibvirtHypervisor::Create(loop_, config_.libvirt);
    if (!hv.ok()) return hv.status();
    hv_ = *std::move(hv);

    preparer_ = std::make_unique<StartPreparer>(scribe_.get(), config_.scribe_node);
    random_ = scribe::NewSystemRandom();
    HaOptions ho;
    ho.node = config_.node;
    ho.ram_bytes = config_.ram_bytes;
    ho.cpus = config_.cpus;
    ho.lease_ttl_ms = config_.lease_ttl_ms;
    ho.fence_margin_ms = config_.fence_margin_ms;
    ho.shutdown_timeout_ms = config_.shutdown_timeout_ms;
    ho.start_retry_ms = config_.start_retry_ms;
    ho.launch = LaunchOptions(config_.nbd_socket);
    ho.prepare_start = [p = preparer_.get()](const VmLaunch& launch, std::function<void(absl::Status)> done) {
      p->Prepare(launch, std::move(done));
    };
    ho.on_decision = [log = config_.log](const HaDecision& d) { log(d.ToString()); };
    auto ha = HaManager::Create(loop_, random_.get(), etcd_.get(), hv_.get(), std::move(ho));
    if (!ha.ok()) return ha.status();
    ha_ = *std::move(ha);

    writer_ = NewQemuImgWriter(loop_, QemuImgWriterOptions{config_.qemu_img});
    ServiceDeps deps;
    deps.loop = loop_;
    deps.ha = ha_.get();
    deps.store = etcd_.get();
    deps.hypervisor = hv_.get();
    deps.scribe = scribe_.get();
    deps.media_writer = writer_.get();
    ServiceOptions so;
    so.node = config_.node;
    so.scribe_node = config_.scribe_node;
    so.nbd_socket = config_.nbd_socket;
    so.now_unix_ms = NowUnixMs;
    so.log = config_.log;
    listener_ = std::make_unique<Listener>(loop_, capnp::Capability::Client(NewHypercoreService(deps, so)));
    st = listener_->Listen(config_.admin);
    if (!st.ok()) return st;
    admin_address_ = absl::StrCat(config_.admin.substr(0, config_.admin.rfind(':')), ":", listener_->port());

    st = Register();
    if (!st.ok()) return st;
    config_.log(absl::StrFormat("node %s up: admin %s, scribed %s (node %d, nbd %s), libvirt %s, %d MiB RAM, %d CPUs",
                                config_.node, admin_address_, config_.scribe_admin, config_.scribe_node,
                                config_.nbd_socket, config_.libvirt.uri, config_.ram_bytes >> 20, config_.cpus));
    return absl::OkStatus();
  }

  uint16_t admin_port() const override { return listener_->port(); }

  std::string Describe() const override {
    return absl::StrFormat("node %s: %s%s", config_.node, HaStateName(ha_->state()),
                           ha_->is_coordinator() ? ", coordinator" : "");
  }

 private:
  // Runs the loop until `promise` resolves or the startup deadline passes.
  template <typename T>
  std::optional<T> Wait(kj::Promise<T> promise, int64_t deadline_ns) {
    std::optional<T> out;
    auto task = promise.then([&](T v) { loop_->Dispatch([&] { out.emplace(kj::mv(v)); }); }).eagerlyEvaluate(nullptr);
    loop_->RunUntil([&] { return out.has_value(); }, std::max<int64_t>(0, deadline_ns - loop_->NowNanos()));
    return out;
  }

  // The local scribed's node id and NBD socket, from its cluster view.
  absl::Status ResolveScribe() {
    if (config_.scribe_node != 0 && !config_.nbd_socket.empty()) return absl::OkStatus();
    const int64_t deadline = loop_->NowNanos() + config_.startup_timeout_ms * kNsPerMs;
    absl::Status last = absl::DeadlineExceededError("no answer");
    while (loop_->NowNanos() < deadline) {
      auto nodes = Wait(scribe_->Cluster(), deadline);
      if (!nodes) break;
      if (!nodes->ok()) {
        last = nodes->status();
      } else {
        last = absl::NotFoundError(absl::StrCat(
            "scribed's cluster has no node ",
            config_.scribe_node != 0 ? absl::StrCat("with id ", config_.scribe_node)
                                     : absl::StrCat("with admin address ", config_.scribe_admin),
            " (pass --scribe-node-id)"));
        for (const ScribeNode& n : **nodes) {
          const bool match = config_.scribe_node != 0 ? n.id == config_.scribe_node
                                                      : n.admin_address == config_.scribe_admin;
          if (!match) continue;
          if (n.nbd_socket.empty()) {
            last = absl::UnavailableError(absl::StrCat("scribed node ", n.id, " has no NBD socket yet"));
            break;
          }
          config_.scribe_node = n.id;
          if (config_.nbd_socket.empty()) config_.nbd_socket = n.nbd_socket;
          return absl::OkStatus();
        }
      }
      loop_->RunUntil([] { return false; }, kRetryNs);
    }
    return absl::UnavailableError(absl::StrCat("cannot learn the local scribed's node and NBD socket from ",
                                               scribe_->description(), ": ", last.message()));
  }

  absl::Status Register() {
    NodeRegistration r;
    r.node = config_.node;
    r.admin_address = admin_address_;
    r.ram_bytes = config_.ram_bytes;
    r.cpus = config_.cpus;
    r.scribe_node = config_.scribe_node;
    r.nbd_socket = config_.nbd_socket;
    const int64_t deadline = loop_->NowNanos() + config_.startup_timeout_ms * kNsPerMs;
    absl::Status last;
    while (loop_->NowNanos() < deadline) {
      std::optional<absl::StatusOr<int64_t>> put;
      etcd_->Put(NodeRegistrationKey(config_.node), EncodeNodeRegistration(r),
                 [&](absl::StatusOr<int64_t> v) { put = std::move(v); });
      loop_->RunUntil([&] { return put.has_value(); }, std::max<int64_t>(0, deadline - loop_->NowNanos()));
      if (put && put->ok()) return absl::OkStatus();
      last = put ? put->status() : absl::DeadlineExceededError("no answer");
      loop_->RunUntil([] { return false; }, kRetryNs);
    }
    return absl::UnavailableError(absl::StrCat("cannot register in etcd at ", config_.etcd, ": ", last.message()));
  }

  scribe::RealLoop* loop_;
  DaemonConfig config_;
  std::string admin_address_;
  std::unique_ptr<scribe::EtcdMetaStore> etcd_;
  std::unique_ptr<ScribeLink> link_;
  std::unique_ptr<ScribeClient> scribe_;
  std::unique_ptr<LibvirtHypervisor> hv_;
  std::unique_ptr<scribe::Random> random_;
  std::unique_ptr<StartPreparer> preparer_;
  std::unique_ptr<HaManager> ha_;
  std::unique_ptr<MediaWriter> writer_;
  std::unique_ptr<Listener> listener_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(scribe::RealLoop* loop, DaemonConfig config) {
  auto daemon = std::make_unique<DaemonImpl>(loop, std::move(config));
  absl::Status st = daemon->Init();
  if (!st.ok()) return st;
  return std::unique_ptr<Daemon>(std::move(daemon));
}

}  // namespace hypercore::daemon
