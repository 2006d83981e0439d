#include "daemons/scribed/admin_test_support.h"

#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <optional>
#include <utility>

#include "absl/strings/str_format.h"
#include "libscribe/env/real_loop_internal.h"
#include "scribe/status.h"

namespace scribe::daemon::testing {

// ------------------------------------------------------------------ FilePoolBackend

// Operations of every gated device, held while the gate is closed.
class FilePoolBackend::Gate {
 public:
  void Run(std::function<void()> start) {
    if (open_) return start();
    held_.push_back(std::move(start));
  }
  void Close() { open_ = false; }
  void Open() {
    open_ = true;
    std::vector<std::function<void()>> held = std::move(held_);
    held_.clear();
    for (auto& start : held) start();
  }
  size_t held() const { return held_.size(); }

 private:
  bool open_ = true;
  std::vector<std::function<void()>> held_;
};

namespace {

// A device whose operations pass through the backend's gate.
class GatedDevice : public BlockDevice {
 public:
  GatedDevice(BlockDevice* inner, FilePoolBackend::Gate* gate) : inner_(inner), gate_(gate) {}
  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  void Read(uint64_t off, size_t len, void* buf, Callback done) override {
    gate_->Run([=, this] { inner_->Read(off, len, buf, done); });
  }
  void Write(uint64_t off, size_t len, const void* buf, Callback done) override {
    gate_->Run([=, this] { inner_->Write(off, len, buf, done); });
  }
  void WriteDurable(uint64_t off, size_t len, const void* buf, Callback done) override {
    gate_->Run([=, this] { inner_->WriteDurable(off, len, buf, done); });
  }
  void Flush(Callback done) override {
    gate_->Run([=, this] { inner_->Flush(done); });
  }
  void Discard(uint64_t off, size_t len, Callback done) override {
    gate_->Run([=, this] { inner_->Discard(off, len, done); });
  }

 private:
  BlockDevice* inner_;
  FilePoolBackend::Gate* gate_;
};

}  // namespace

FilePoolBackend::FilePoolBackend(RealLoop* loop, FilePoolOptions options)
    : loop_(loop),
      options_(std::move(options)),
      random_(NewSystemRandom()),
      gate_(std::make_unique<Gate>()) {}

void FilePoolBackend::HoldIo() { gate_->Close(); }
void FilePoolBackend::ReleaseIo() { gate_->Open(); }
size_t FilePoolBackend::held_io() const { return gate_->held(); }

FilePoolBackend::~FilePoolBackend() = default;

absl::StatusOr<std::unique_ptr<FilePoolBackend>> FilePoolBackend::Create(RealLoop* loop,
                                                                         FilePoolOptions options) {
  if (options.nodes < 1) return absl::InvalidArgumentError("a pool needs at least one node");
  std::unique_ptr<FilePoolBackend> backend(new FilePoolBackend(loop, options));
  std::vector<DiskSpec> disks;
  for (int n = 1; n <= options.nodes; ++n) {
    const std::string path = absl::StrFormat("%s/node%d.disk", options.dir, n);
    AioDeviceOptions device_options;
    device_options.create_size_bytes = options.disk_bytes;
    ASSIGN_OR_RETURN(auto device, OpenAioDevice(loop, path, device_options));
    backend->devices_.push_back(std::move(device));
    backend->devices_.push_back(
        std::make_unique<GatedDevice>(backend->devices_.back().get(), backend->gate_.get()));
    disks.push_back(
        DiskSpec{NodeId{static_cast<uint64_t>(n)}, Tier::kHdd, backend->devices_.back().get()});

    NodeStatus node;
    node.id = static_cast<uint64_t>(n);
    node.backplane_address = absl::StrFormat("127.0.0.1:%d", 7100 + n);
    node.admin_address = absl::StrFormat("127.0.0.1:%d", 7000 + n);
    node.nbd_socket = absl::StrFormat("%s/node%d.nbd", options.dir, n);
    node.alive = true;
    node.reachable = true;
    node.owner = n == 1;
    backend->cluster_.nodes.push_back(node);
  }
  backend->cluster_.owner_node = 1;
  backend->cluster_.epoch = 1;
  backend->cluster_.state = "running";

  PoolOptions pool_options;
  pool_options.metadata_bytes = options.metadata_bytes;
  std::optional<absl::StatusOr<std::unique_ptr<Pool>>> made;
  Pool::Create(loop, backend->random_.get(), pool_options, disks,
               [&](absl::StatusOr<std::unique_ptr<Pool>> r) { made = std::move(r); });
  if (!loop->RunUntil([&] { return made.has_value(); }, options.create_timeout_ns)) {
    return absl::DeadlineExceededError("the pool did not form");
  }
  ASSIGN_OR_RETURN(backend->pool_, std::move(*made));
  return backend;
}

void FilePoolBackend::AddDisk(uint64_t node, std::string path, uint64_t size_bytes, Tier tier,
                              std::function<void(absl::StatusOr<uint64_t>)> done) {
  ++add_disk_calls_;
  if (drop_add_disk_) return;  // `done` is destroyed uncalled
  if (pool_ == nullptr) return done(absl::UnavailableError("no pool"));
  AioDeviceOptions device_options;
  device_options.create_size_bytes = size_bytes;
  absl::StatusOr<std::unique_ptr<BlockDevice>> device = OpenAioDevice(loop_, path, device_options);
  if (!device.ok()) return done(device.status());
  devices_.push_back(std::move(device).value());
  devices_.push_back(std::make_unique<GatedDevice>(devices_.back().get(), gate_.get()));
  pool_->AddDisk(DiskSpec{NodeId{node}, tier, devices_.back().get()},
                 [done = std::move(done)](absl::StatusOr<DiskId> disk) {
                   if (!disk.ok()) return done(disk.status());
                   done(disk->value);
                 });
}

// --------------------------------------------------------------- CapabilityListener

struct CapabilityListener::Impl : public kj::TaskSet::ErrorHandler {
  // One accepted connection: its own RPC system over the shared bootstrap capability.
  struct Connection {
    Connection(Impl* impl, kj::Own<kj::AsyncIoStream> stream_in)
        : impl(impl),
          stream(kj::mv(stream_in)),
          network(*stream, capnp::rpc::twoparty::Side::SERVER),
          rpc(capnp::makeRpcServer(network, impl->bootstrap)) {
      ++impl->connections_active;
    }
    ~Connection() { --impl->connections_active; }

    Impl* impl;
    kj::Own<kj::AsyncIoStream> stream;
    capnp::TwoPartyVatNetwork network;
    capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
  };

  Impl(RealLoop* loop, capnp::Capability::Client bootstrap)
      : loop(loop), bootstrap(kj::mv(bootstrap)) {}

  // A connection's task ends when its peer goes; the accept loop never fails (it would
  // only stop serving a test).
  void taskFailed(kj::Exception&& exception) override { (void)exception; }

  kj::Promise<void> AcceptLoop() {
    return listener->accept().then([this](kj::Own<kj::AsyncIoStream> stream) {
      loop->Dispatch([&] {
        auto connection = kj::heap<Connection>(this, kj::mv(stream));
        auto gone = connection->network.onDisconnect();
        tasks.add(gone.attach(kj::mv(connection)));
      });
      return AcceptLoop();
    });
  }

  RealLoop* loop;
  capnp::Capability::Client bootstrap;
  int connections_active = 0;
  // Destroyed bottom-up: connections and the accept loop, then the listening socket.
  kj::Own<kj::ConnectionReceiver> listener;
  kj::TaskSet tasks{*this};
};

absl::StatusOr<std::unique_ptr<CapabilityListener>> CapabilityListener::Create(
    RealLoop* loop, const std::string& address, capnp::Capability::Client bootstrap) {
  auto impl = std::make_unique<Impl>(loop, kj::mv(bootstrap));
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                 auto& network = loop->impl()->io.provider->getNetwork();
                 auto addr = network.parseAddress(address).wait(loop->impl()->io.waitScope);
                 impl->listener = addr->listen();
               })) {
    return absl::UnavailableError(
        absl::StrFormat("cannot listen on %s: %s", address, e->getDescription().cStr()));
  }
  impl->tasks.add(impl->AcceptLoop());
  return std::unique_ptr<CapabilityListener>(new CapabilityListener(std::move(impl)));
}

CapabilityListener::CapabilityListener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CapabilityListener::~CapabilityListener() = default;

uint16_t CapabilityListener::port() const {
  return static_cast<uint16_t>(impl_->listener->getPort());
}

int CapabilityListener::connections_active() const { return impl_->connections_active; }

}  // namespace scribe::daemon::testing
