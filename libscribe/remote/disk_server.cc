// DiskServer: the DiskService schema over KJ sockets on the RealLoop, I/O on local
// BlockDevices.
//
// A request runs in three steps. Arrival (inside the Cap'n Proto method, through
// RealLoop::Dispatch): look up the disk, check the size limit, check and raise the epoch
// fence; the method then returns a promise a fulfiller will complete. Admission (Pump):
// a request starts once the data bytes in flight leave room for it and no request of an
// older epoch is still running on its disk, re-checking its epoch first (a newer owner
// may have arrived while it waited). Completion (the device callback, already on the
// loop): release the accounting, fulfil the promise, admit more. Only the promise's
// continuation, which runs only if the call is still wanted, writes the reply.
#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.h>
#include <kj/debug.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <utility>

#include "absl/strings/str_format.h"
#include "libscribe/env/real_loop_internal.h"
#include "libscribe/remote/disk_service.capnp.h"
#include "libscribe/remote/wire.h"
#include "scribe/remote.h"
#include "scribe/status.h"

namespace scribe {

namespace {

using remote::wire::DiskService;
using remote::wire::Op;

// After a failed accept (descriptor or memory exhaustion), wait this long before the next.
constexpr int64_t kAcceptRetryDelayNs = 100'000'000;
// Largest request_bytes_max accepted: a reply must fit Cap'n Proto's message limits.
constexpr uint32_t kRequestBytesLimit = 64u << 20;
// Most ops one batch may carry.
constexpr size_t kBatchOpsMax = 4096;

enum class Kind { kOpen, kRead, kWrite, kFlush, kDiscard };

struct Request {
  Kind kind = Kind::kOpen;
  uint64_t disk_id = 0;
  uint64_t epoch = 0;
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  std::shared_ptr<AlignedBuffer> data;  // a write's payload (remote requests)
  // From OpenLocal's device: no message size to respect, the caller's own buffers (valid
  // until `local_done`, which runs only once the disk is done with them), and a plain
  // callback instead of a KJ promise.
  bool local = false;
  const uint8_t* src = nullptr;  // a local write's data
  uint8_t* dst = nullptr;        // where a local read goes
  std::function<void(absl::Status)> local_done;
};

struct Outcome {
  absl::Status status;
  uint64_t size_bytes = 0;              // open
  std::shared_ptr<AlignedBuffer> data;  // read
};

bool CarriesData(Kind kind) { return kind == Kind::kRead || kind == Kind::kWrite; }

}  // namespace

struct DiskServer::Impl : public kj::TaskSet::ErrorHandler {
  struct Disk {
    BlockDevice* device = nullptr;
    uint64_t epoch = 0;  // the fence: highest epoch seen
    // Requests running on the device, by the epoch they were admitted under.
    std::map<uint64_t, int> running_by_epoch;
    bool OlderEpochRunning() const {
      return !running_by_epoch.empty() && running_by_epoch.begin()->first < epoch;
    }
  };

  // A request waiting for admission; it completes through `fulfiller` (remote) or its
  // request's local_done (local).
  struct Waiting {
    Request request;
    kj::Own<kj::PromiseFulfiller<Outcome>> fulfiller;
    bool Wanted() { return request.local || fulfiller->isWaiting(); }
    // A local answer runs as a loop callback of its own (the caller may be anywhere).
    void Answer(RealLoop* loop, Outcome o) {
      if (request.local) {
        loop->Post([done = std::move(request.local_done), st = std::move(o.status)] { done(st); });
      } else {
        fulfiller->fulfill(kj::mv(o));
      }
    }
  };

  // One accepted connection: its own RPC system over the shared bootstrap capability,
  // with a flow limit so a flooding client is held back by TCP.
  struct Connection {
    Connection(Impl* impl, kj::Own<kj::AsyncIoStream> stream_in)
        : impl(impl),
          stream(kj::mv(stream_in)),
          network(*stream, capnp::rpc::twoparty::Side::SERVER, impl->ReaderOptions()),
          rpc(capnp::makeRpcServer(network, impl->bootstrap)) {
      rpc.setFlowLimit(impl->options.connection_request_bytes_max / sizeof(capnp::word));
      ++impl->stats.connections_active;
    }
    ~Connection() { --impl->stats.connections_active; }

    Impl* impl;
    kj::Own<kj::AsyncIoStream> stream;
    capnp::TwoPartyVatNetwork network;
    capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
  };

  Impl(RealLoop* loop, std::map<uint64_t, BlockDevice*> devices, DiskServerOptions options)
      : loop(loop), options(options), alive(std::make_shared<bool>(true)) {
    for (const auto& [id, device] : devices) {
      Disk& d = disks[id];
      d.device = device;
      d.epoch = options.epoch_min;
    }
  }
  ~Impl() {
    *alive = false;
    // Local requests not started yet fail now; started ones finish when their disk does.
    for (Waiting& w : waiting) {
      if (w.request.local) w.Answer(loop, Outcome{absl::UnavailableError("its disk server closed")});
    }
  }

  // Connection tasks end when their peer goes; a failing accept loop retries itself.
  void taskFailed(kj::Exception&& exception) override { (void)exception; }

  capnp::ReaderOptions ReaderOptions() const {
    capnp::ReaderOptions o;
    // Room for a write somewhat over the limit, so that it is answered INVALID_ARGUMENT
    // rather than failing the message.
    o.traversalLimitInWords = std::max<uint64_t>(
        o.traversalLimitInWords, 2 * options.request_bytes_max / sizeof(capnp::word));
    return o;
  }

  kj::Promise<Outcome> Reject(absl::Status status) {
    ++stats.request_errors;
    if (status.code() == absl::StatusCode::kFailedPrecondition) ++stats.stale_epoch_rejections;
    return Outcome{std::move(status)};
  }

  absl::Status Stale(uint64_t epoch, const Disk& d, uint64_t disk_id) const {
    return absl::FailedPreconditionError(
        absl::StrFormat("stale epoch %d < %d for disk %d", epoch, d.epoch, disk_id));
  }

  // Arrival: validation and the fence; OK if the request may wait for admission.
  absl::Status Arrive(const Request& r) {
    ++stats.requests;
    auto it = disks.find(r.disk_id);
    if (it == disks.end()) {
      return absl::NotFoundError(absl::StrFormat("disk %d is not served here", r.disk_id));
    }
    if (CarriesData(r.kind) && !r.local && r.length_bytes > options.request_bytes_max) {
      return absl::InvalidArgumentError(
          absl::StrFormat("request of %d bytes is over the server's limit of %d", r.length_bytes,
                          options.request_bytes_max));
    }
    Disk& d = it->second;
    if (r.epoch < d.epoch) return Stale(r.epoch, d, r.disk_id);
    d.epoch = r.epoch;
    return absl::OkStatus();
  }

  void Enqueue(Waiting w) {
    waiting.push_back(std::move(w));
    Pump();
    stats.requests_waiting_max = std::max<uint64_t>(stats.requests_waiting_max, waiting.size());
  }

  kj::Promise<Outcome> Submit(Request r) {
    absl::Status st = Arrive(r);
    if (!st.ok()) return Reject(std::move(st));
    auto paf = kj::newPromiseAndFulfiller<Outcome>();
    Enqueue(Waiting{std::move(r), kj::mv(paf.fulfiller)});
    return kj::mv(paf.promise);
  }

  // The same for a local request; its local_done runs as a loop callback of its own.
  void SubmitLocal(Request r) {
    absl::Status st = Arrive(r);
    if (!st.ok()) {
      (void)Reject(st);
      Waiting{std::move(r), {}}.Answer(loop, Outcome{std::move(st)});
      return;
    }
    Enqueue(Waiting{std::move(r), kj::Own<kj::PromiseFulfiller<Outcome>>()});
  }

  // Admission, in arrival order; a request blocked only by its disk's fence drain does
  // not hold up other disks, one blocked by the byte limit holds up everyone after it.
  void Pump() {
    if (pumping) {
      pump_again = true;  // a completion inside Start(): the outer loop goes round again
      return;
    }
    pumping = true;
    do {
      pump_again = false;
      for (auto it = waiting.begin(); it != waiting.end();) {
        if (!it->Wanted()) {  // the remote caller cancelled or went away
          it = waiting.erase(it);
          continue;
        }
        Disk& d = disks.at(it->request.disk_id);
        if (it->request.epoch < d.epoch) {
          Waiting w = std::move(*it);
          const absl::Status st = Stale(w.request.epoch, d, w.request.disk_id);
          it = waiting.erase(it);
          ++stats.request_errors;
          ++stats.stale_epoch_rejections;
          w.Answer(loop, Outcome{st});
          continue;
        }
        if (d.OlderEpochRunning()) {
          ++it;
          continue;
        }
        const uint64_t bytes = CarriesData(it->request.kind) ? it->request.length_bytes : 0;
        if (in_flight_bytes > 0 && in_flight_bytes + bytes > options.in_flight_bytes_max) break;
        Waiting w = std::move(*it);
        it = waiting.erase(it);
        Start(std::move(w), bytes);
      }
    } while (pump_again);
    pumping = false;
  }

  void Start(Waiting w, uint64_t bytes) {
    const Request& r = w.request;
    Disk& d = disks.at(r.disk_id);
    in_flight_bytes += bytes;
    ++d.running_by_epoch[r.epoch];

    auto outcome = std::make_shared<Outcome>();
    outcome->size_bytes = d.device->size_bytes();
    if (r.kind == Kind::kRead && r.dst == nullptr) {
      outcome->data = std::make_shared<AlignedBuffer>(r.length_bytes, AlignedBuffer::Uninitialized{});
    }
    // The answer and both buffers ride in the device callback: the device may use the
    // buffers until it calls back, whatever happened to the call or the server meanwhile.
    auto waiting = std::make_shared<Waiting>(std::move(w));
    RealLoop* loop = this->loop;
    auto finish = [this, alive = alive, loop, disk_id = r.disk_id, epoch = r.epoch, bytes, outcome,
                   waiting](absl::Status st) {
      if (*alive) {
        Disk& disk = disks.at(disk_id);
        in_flight_bytes -= bytes;
        auto running = disk.running_by_epoch.find(epoch);
        SCRIBE_CHECK(running != disk.running_by_epoch.end() && running->second > 0);
        if (--running->second == 0) disk.running_by_epoch.erase(running);
        if (!st.ok()) ++stats.request_errors;
      }
      outcome->status = std::move(st);
      waiting->Answer(loop, Outcome(*outcome));
      if (*alive) Pump();
    };

    const Request& q = waiting->request;
    BlockDevice* dev = d.device;
    switch (q.kind) {
      case Kind::kOpen:
        finish(absl::OkStatus());
        return;
      case Kind::kRead:
        dev->Read(q.offset_bytes, q.length_bytes, q.dst ? q.dst : outcome->data->data(),
                  std::move(finish));
        return;
      case Kind::kWrite:
        dev->Write(q.offset_bytes, q.length_bytes, q.src ? q.src : q.data->data(), std::move(finish));
        return;
      case Kind::kFlush:
        dev->Flush(std::move(finish));
        return;
      case Kind::kDiscard:
        dev->Discard(q.offset_bytes, q.length_bytes, std::move(finish));
        return;
    }
    SCRIBE_CHECK(false);
  }

  kj::Promise<void> AcceptLoop() {
    // accept() reports some errors (EMFILE, ENFILE, ENOMEM) by throwing at once.
    return kj::evalNow([this] { return listener->accept(); })
        .then(
            [this](kj::Own<kj::AsyncIoStream> stream) {
              loop->Dispatch([&] {
                if (stats.connections_active >= static_cast<uint64_t>(options.connections_max)) {
                  ++stats.connections_refused;
                  return;  // `stream` goes out of scope: the client sees the socket close
                }
                ++stats.connections_accepted;
                auto connection = kj::heap<Connection>(this, kj::mv(stream));
                auto gone = connection->network.onDisconnect();
                tasks.add(gone.attach(kj::mv(connection)));
              });
              return AcceptLoop();
            },
            [this](kj::Exception&& e) {
              (void)e;
              return loop->impl()
                  ->io.provider->getTimer()
                  .afterDelay(kAcceptRetryDelayNs * kj::NANOSECONDS)
                  .then([this] { return AcceptLoop(); });
            });
  }

  RealLoop* loop;
  DiskServerOptions options;
  std::map<uint64_t, Disk> disks;
  std::list<Waiting> waiting;
  uint64_t in_flight_bytes = 0;
  bool pumping = false;
  bool pump_again = false;
  DiskServerStats stats;
  std::shared_ptr<bool> alive;  // false once the server is gone; device callbacks check it
  capnp::Capability::Client bootstrap = nullptr;
  // Destroyed bottom-up: connections (cancelling their calls) and the accept loop first,
  // then the listening socket, then the service they call.
  kj::Own<kj::ConnectionReceiver> listener;
  kj::TaskSet tasks{*this};
};

namespace {

// The capability every connection calls. Decodes, hands the request to the server
// through Dispatch, and encodes the outcome if the call is still wanted.
class Service final : public DiskService::Server {
 public:
  explicit Service(DiskServer::Impl* impl) : impl_(impl) {}

  kj::Promise<void> open(OpenContext context) override {
    auto p = context.getParams();
    Request r;
    r.kind = Kind::kOpen;
    r.disk_id = p.getDiskId();
    r.epoch = p.getEpoch();
    return Run(std::move(r)).then([context](Outcome o) mutable {
      auto results = context.getResults();
      remote::EncodeError(o.status, results.initError());
      if (o.status.ok()) results.setSizeBytes(o.size_bytes);
    });
  }

  kj::Promise<void> batch(BatchContext context) override {
    auto p = context.getParams();
    auto ops = p.getOps();
    const uint64_t disk_id = p.getDiskId();
    const uint64_t epoch = p.getEpoch();
    // The batch's limits first: over them, every op fails and nothing runs.
    uint64_t data_bytes = 0;
    const uint64_t over = uint64_t{impl_->options.request_bytes_max} + 1;  // no overflow
    for (auto op : ops) {
      if (op.getKind() == Op::Kind::READ) data_bytes += std::min(op.getLengthBytes(), over);
      if (op.getKind() == Op::Kind::WRITE) data_bytes += op.getData().size();
    }
    absl::Status refused;
    if (ops.size() > kBatchOpsMax) {
      refused = absl::InvalidArgumentError(
          absl::StrFormat("batch of %d ops is over the limit of %d", ops.size(), kBatchOpsMax));
    } else if (data_bytes > impl_->options.request_bytes_max) {
      refused = absl::InvalidArgumentError(
          absl::StrFormat("batch of %d data bytes is over the server's limit of %d", data_bytes,
                          impl_->options.request_bytes_max));
    }
    auto outcomes = kj::heapArrayBuilder<kj::Promise<Outcome>>(ops.size());
    impl_->loop->Dispatch([&] {
      for (auto op : ops) {
        Request r;
        r.disk_id = disk_id;
        r.epoch = epoch;
        r.offset_bytes = op.getOffsetBytes();
        r.length_bytes = op.getLengthBytes();
        switch (op.getKind()) {
          case Op::Kind::READ:
            r.kind = Kind::kRead;
            break;
          case Op::Kind::WRITE: {
            r.kind = Kind::kWrite;
            auto data = op.getData();
            r.length_bytes = data.size();
            // O_DIRECT needs an aligned buffer; the message is freed once all are copied.
            if (refused.ok()) {
              r.data = std::make_shared<AlignedBuffer>(data.size(), AlignedBuffer::Uninitialized{});
              if (data.size() > 0) std::memcpy(r.data->data(), data.begin(), data.size());
            }
            break;
          }
          case Op::Kind::FLUSH:
            r.kind = Kind::kFlush;
            break;
          case Op::Kind::DISCARD:
            r.kind = Kind::kDiscard;
            break;
          default:
            outcomes.add(impl_->Reject(absl::InvalidArgumentError(
                absl::StrFormat("unknown op kind %d", static_cast<int>(op.getKind())))));
            continue;
        }
        outcomes.add(refused.ok() ? impl_->Submit(std::move(r)) : impl_->Reject(refused));
      }
    });
    context.releaseParams();
    return kj::joinPromises(outcomes.finish()).then([context](kj::Array<Outcome> done) mutable {
      size_t words = 16;
      for (const Outcome& o : done) {
        words += 8 + (o.status.ok() ? 0 : o.status.message().size() / sizeof(capnp::word) + 1);
        if (o.status.ok() && o.data) words += o.data->size() / sizeof(capnp::word) + 1;
      }
      auto results = context.getResults(capnp::MessageSize{words, 0}).initResults(done.size());
      for (size_t i = 0; i < done.size(); ++i) {
        remote::EncodeError(done[i].status, results[i].initError());
        if (done[i].status.ok() && done[i].data && done[i].data->size() > 0) {
          results[i].setData(kj::arrayPtr(done[i].data->data(), done[i].data->size()));
        }
      }
    });
  }

 private:
  kj::Promise<Outcome> Run(Request r) {
    kj::Promise<Outcome> out = nullptr;
    impl_->loop->Dispatch([&] { out = impl_->Submit(std::move(r)); });
    return out;
  }

  DiskServer::Impl* impl_;
};

}  // namespace

namespace {

// A disk of this server used from this process: requests go through the same fence and
// admission as remote ones, without Cap'n Proto or KJ promises, on the caller's buffers
// (the BlockDevice contract keeps them valid until the callback, which runs only once
// the disk is done with them, even if the server went away meanwhile).
class LocalDevice final : public BlockDevice {
 public:
  LocalDevice(DiskServer::Impl* impl, RealLoop* loop, std::shared_ptr<bool> server_alive,
              uint64_t disk_id, uint64_t epoch, uint64_t size_bytes)
      : impl_(impl), loop_(loop), server_alive_(std::move(server_alive)), disk_id_(disk_id),
        epoch_(epoch), size_bytes_(size_bytes), alive_(std::make_shared<bool>(true)) {}
  ~LocalDevice() override { *alive_ = false; }

  uint64_t size_bytes() const override { return size_bytes_; }
  void Read(uint64_t offset, size_t length, void* buf, Callback done) override {
    if (absl::Status st = CheckRange(offset, length, buf); !st.ok()) return Fail(st, std::move(done));
    Request r;
    r.kind = Kind::kRead;
    r.offset_bytes = offset;
    r.length_bytes = length;
    r.dst = static_cast<uint8_t*>(buf);
    Run(std::move(r), std::move(done));
  }
  void Write(uint64_t offset, size_t length, const void* buf, Callback done) override {
    if (absl::Status st = CheckRange(offset, length, buf); !st.ok()) return Fail(st, std::move(done));
    Request r;
    r.kind = Kind::kWrite;
    r.offset_bytes = offset;
    r.length_bytes = length;
    r.src = static_cast<const uint8_t*>(buf);
    Run(std::move(r), std::move(done));
  }
  void Flush(Callback done) override {
    Request r;
    r.kind = Kind::kFlush;
    Run(std::move(r), std::move(done));
  }
  void Discard(uint64_t offset, size_t length, Callback done) override {
    if (absl::Status st = CheckRange(offset, length, nullptr); !st.ok()) return Fail(st, std::move(done));
    Request r;
    r.kind = Kind::kDiscard;
    r.offset_bytes = offset;
    r.length_bytes = length;
    Run(std::move(r), std::move(done));
  }

 private:
  void Fail(absl::Status st, Callback done) {
    loop_->Post([st, done = std::move(done)] { done(st); });
  }

  void Run(Request r, Callback done) {
    if (!*server_alive_) {
      return Fail(absl::UnavailableError(absl::StrFormat("disk %d: its server is closed", disk_id_)),
                  std::move(done));
    }
    r.disk_id = disk_id_;
    r.epoch = epoch_;
    r.local = true;
    // A device destroyed first drops its callbacks, as every BlockDevice does.
    r.local_done = [alive = alive_, done = std::move(done)](absl::Status st) {
      if (*alive) done(st);
    };
    impl_->SubmitLocal(std::move(r));
  }

  DiskServer::Impl* impl_;
  RealLoop* loop_;
  std::shared_ptr<bool> server_alive_;
  uint64_t disk_id_, epoch_, size_bytes_;
  std::shared_ptr<bool> alive_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BlockDevice>> DiskServer::OpenLocal(uint64_t disk_id, uint64_t epoch) {
  auto it = impl_->disks.find(disk_id);
  if (it == impl_->disks.end()) {
    return absl::NotFoundError(absl::StrFormat("disk %d is not served here", disk_id));
  }
  if (epoch < it->second.epoch) {
    return absl::FailedPreconditionError(
        absl::StrFormat("stale epoch %d < %d for disk %d", epoch, it->second.epoch, disk_id));
  }
  it->second.epoch = epoch;  // later requests of older epochs are refused from now on
  auto dev = std::make_unique<LocalDevice>(impl_.get(), impl_->loop, impl_->alive, disk_id, epoch,
                                           it->second.device->size_bytes());
  return std::unique_ptr<BlockDevice>(std::move(dev));
}

DiskServer::DiskServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DiskServer::~DiskServer() = default;

absl::StatusOr<std::unique_ptr<DiskServer>> DiskServer::Create(
    RealLoop* loop, std::string listen_address, std::map<uint64_t, BlockDevice*> disks,
    DiskServerOptions options) {
  if (loop == nullptr) return absl::InvalidArgumentError("DiskServer needs a loop");
  for (const auto& [id, device] : disks) {
    if (device == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("disk %d has no device", id));
    }
  }
  if (options.request_bytes_max < BlockDevice::kSectorBytes ||
      options.request_bytes_max % BlockDevice::kSectorBytes != 0 ||
      options.request_bytes_max > kRequestBytesLimit ||
      options.in_flight_bytes_max < options.request_bytes_max ||
      options.connection_request_bytes_max < sizeof(capnp::word) || options.connections_max < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("DiskServerOptions: request_bytes_max must be a multiple of 512 up to %d, "
                        "in_flight_bytes_max at least request_bytes_max, the other limits positive",
                        kRequestBytesLimit));
  }
  auto impl = std::make_unique<Impl>(loop, std::move(disks), options);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                 auto& network = loop->impl()->io.provider->getNetwork();
                 auto addr = network.parseAddress(listen_address).wait(loop->impl()->io.waitScope);
                 impl->listener = addr->listen();
               })) {
    return absl::UnavailableError(
        absl::StrFormat("cannot listen on %s: %s", listen_address, e->getDescription().cStr()));
  }
  impl->bootstrap = kj::heap<Service>(impl.get());
  impl->tasks.add(impl->AcceptLoop());
  return std::unique_ptr<DiskServer>(new DiskServer(std::move(impl)));
}

uint16_t DiskServer::port() const { return static_cast<uint16_t>(impl_->listener->getPort()); }

absl::StatusOr<uint64_t> DiskServer::FenceEpoch(uint64_t disk_id) const {
  auto it = impl_->disks.find(disk_id);
  if (it == impl_->disks.end()) {
    return absl::NotFoundError(absl::StrFormat("disk %d is not served here", disk_id));
  }
  return it->second.epoch;
}

absl::Status DiskServer::AddDisk(uint64_t disk_id, BlockDevice* device) {
  if (device == nullptr) return absl::InvalidArgumentError("AddDisk needs a device");
  if (impl_->disks.count(disk_id)) {
    return absl::AlreadyExistsError(absl::StrFormat("disk %d is already served here", disk_id));
  }
  Impl::Disk& d = impl_->disks[disk_id];
  d.device = device;
  d.epoch = impl_->options.epoch_min;
  for (const auto& [id, other] : impl_->disks) d.epoch = std::max(d.epoch, other.epoch);
  return absl::OkStatus();
}

DiskServerStats DiskServer::Stats() const { return impl_->stats; }

}  // namespace scribe
