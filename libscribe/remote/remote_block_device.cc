// RemoteBlockDevice: a BlockDevice whose operations are DiskService calls.
//
// Connection. Made on the first call after there is none (OpenRemoteDevice's `open` is
// the first): the service capability is at once a promise of the bootstrap capability,
// so calls made while connecting queue inside Cap'n Proto and fail with it. A connection
// is dropped when a call fails with an exception (the peer went away or broke the
// protocol), when the server closes it, or when a call goes unanswered for
// call_timeout_ns; every call in flight on it then fails UNAVAILABLE. After a failed
// attempt (or a connection that never answered anything) calls fail fast during a
// growing backoff, so a dead server costs no more than a connect() per backoff period.
//
// Batching. Reads, writes, flushes and discards are queued and go out together at the
// end of the loop turn (a Post) as one `batch` call with one timeout: at queue depth 32
// the owner sends a few messages per turn instead of one per op. Writes to adjacent
// ranges in one batch (the pool allocates fresh blocks in order) travel as one op, whose
// result answers each of them.
//
// Bookkeeping. Every op is an Op in `ops_` until it completes once: by its reply, by
// the loss of its connection, or by its timeout; whichever comes later finds no Op and
// does nothing, so a late reply never writes into a buffer its caller got back. User
// callbacks are posted as loop callbacks of their own, never run inside a KJ
// continuation: a callback may then destroy the device, and with it every KJ object.
#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_format.h"
#include "libscribe/env/real_loop_internal.h"
#include "libscribe/remote/disk_service.capnp.h"
#include "libscribe/remote/wire.h"
#include "scribe/remote.h"
#include "scribe/status.h"

namespace scribe {

namespace {
constexpr const char* kTransportPayload = "scribe.remote/transport";
}  // namespace

absl::Status RemoteTransportError(const std::string& message) {
  absl::Status st = absl::UnavailableError(message);
  st.SetPayload(kTransportPayload, absl::Cord("1"));
  return st;
}

bool IsRemoteTransportError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable && status.GetPayload(kTransportPayload).has_value();
}

namespace {

using remote::wire::DiskService;
using OpKind = remote::wire::Op::Kind;

// Most ops in one batch call (the server's limit).
constexpr size_t kBatchOpsMax = 4096;

class RemoteBlockDevice final : public BlockDevice, private kj::TaskSet::ErrorHandler {
 public:
  RemoteBlockDevice(RealLoop* loop, std::string address, uint64_t disk_id, uint64_t epoch,
                    RemoteDeviceOptions options)
      : loop_(loop),
        address_(std::move(address)),
        disk_id_(disk_id),
        epoch_(epoch),
        options_(options),
        alive_(std::make_shared<bool>(true)),
        backoff_ns_(options.reconnect_backoff_min_ns) {}

  // KJ objects may throw from destructors; a device going away must not.
  ~RemoteBlockDevice() noexcept override {
    *alive_ = false;
    for (auto& [id, op] : ops_) loop_->Cancel(op.timer);
    ops_.clear();
    // Members then go bottom-up: calls in flight are cancelled, then the capability,
    // then the connection.
  }

  // Raises the disk's fence to our epoch and learns its size.
  void Open(Callback done) {
    DiskService::Client* service = Service(done);
    if (service == nullptr) return;
    auto req = service->openRequest();
    req.setDiskId(disk_id_);
    req.setEpoch(epoch_);
    const uint64_t id = Register(std::move(done), nullptr, 0, /*timed=*/true);
    Track(id, req.send(), [this](capnp::Response<DiskService::OpenResults>& reply, Op&) {
      absl::Status st = remote::DecodeError(reply.getError());
      if (!st.ok()) return st;
      const uint64_t size = reply.getSizeBytes();
      if (size == 0 || size % kSectorBytes != 0) {
        return absl::InternalError(absl::StrFormat(
            "disk %d at %s reports an unusable size of %d bytes", disk_id_, address_, size));
      }
      size_bytes_ = size;
      return absl::OkStatus();
    });
  }

  uint64_t size_bytes() const override { return size_bytes_; }

  void Read(uint64_t offset_bytes, size_t length_bytes, void* buf, Callback done) override {
    absl::Status st = CheckRange(offset_bytes, length_bytes, buf);
    if (!st.ok()) return Complete(std::move(done), std::move(st));
    auto* base = static_cast<uint8_t*>(buf);
    InPieces(offset_bytes, length_bytes, std::move(done),
             [this, base, offset_bytes](uint64_t off, size_t len, Callback piece_done) {
               Queue(OpKind::READ, off, len, base + (off - offset_bytes), std::move(piece_done));
             });
  }

  void Write(uint64_t offset_bytes, size_t length_bytes, const void* buf, Callback done) override {
    absl::Status st = CheckRange(offset_bytes, length_bytes, buf);
    if (!st.ok()) return Complete(std::move(done), std::move(st));
    auto* base = static_cast<uint8_t*>(const_cast<void*>(buf));
    InPieces(offset_bytes, length_bytes, std::move(done),
             [this, base, offset_bytes](uint64_t off, size_t len, Callback piece_done) {
               Queue(OpKind::WRITE, off, len, base + (off - offset_bytes), std::move(piece_done));
             });
  }

  void Flush(Callback done) override { Queue(OpKind::FLUSH, 0, 0, nullptr, std::move(done)); }

  void Discard(uint64_t offset_bytes, size_t length_bytes, Callback done) override {
    absl::Status st = CheckRange(offset_bytes, length_bytes, nullptr);
    if (!st.ok()) return Complete(std::move(done), std::move(st));
    Queue(OpKind::DISCARD, offset_bytes, length_bytes, nullptr, std::move(done));
  }

 private:
  struct Op {
    Callback done;
    uint8_t* read_buf = nullptr;  // where a read's reply goes
    size_t read_bytes = 0;
    uint64_t generation = 0;  // of the connection the call went out on
    Loop::TimerId timer = 0;
  };

  struct Connection {
    uint64_t generation = 0;
    bool answered = false;  // a reply came back: the server behind it works
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<capnp::TwoPartyClient> client;
    kj::Promise<void> watch = nullptr;  // declared last: dropped before what it watches
  };

  void taskFailed(kj::Exception&& exception) override {
    // Every call's task handles its own failure; nothing else runs in the set.
    (void)exception;
  }

  // The callback runs later, as a loop callback of its own, unless the device goes first.
  void Complete(Callback done, absl::Status st) {
    loop_->Post([alive = alive_, done = std::move(done), st = std::move(st)] {
      if (*alive) done(st);
    });
  }

  // Splits I/O larger than a request may carry; `done` gets the first error once all
  // pieces have finished.
  template <typename IssuePiece>
  void InPieces(uint64_t offset_bytes, size_t length_bytes, Callback done, IssuePiece issue) {
    const size_t piece_max = options_.request_bytes_max;
    if (length_bytes <= piece_max) return issue(offset_bytes, length_bytes, std::move(done));
    struct Join {
      size_t remaining = 0;
      absl::Status status;
      Callback done;
    };
    auto join = std::make_shared<Join>();
    join->remaining = (length_bytes + piece_max - 1) / piece_max;
    join->done = std::move(done);
    for (size_t at = 0; at < length_bytes; at += piece_max) {
      issue(offset_bytes + at, std::min(piece_max, length_bytes - at), [join](absl::Status st) {
        if (!st.ok() && join->status.ok()) join->status = std::move(st);
        if (--join->remaining == 0) join->done(join->status);
      });
    }
  }

  // An op waiting for the end of this loop turn, when everything queued goes out as one
  // batch call (a batch is also sent early when the next op would take it over the
  // request size limit).
  struct Queued {
    uint64_t id;
    OpKind kind;
    uint64_t offset_bytes;
    uint64_t length_bytes;
    uint8_t* buf;  // a write's data (copied into the message when the batch is sent)
  };

  void Queue(OpKind kind, uint64_t offset_bytes, uint64_t length_bytes, uint8_t* buf,
             Callback done) {
    if (Service(done) == nullptr) return;
    const bool data = kind == OpKind::READ || kind == OpKind::WRITE;
    const uint64_t bytes = data ? length_bytes : 0;
    if (!queued_.empty() && (queued_bytes_ + bytes > options_.request_bytes_max ||
                             queued_.size() >= kBatchOpsMax)) {
      SendQueued();
    }
    const uint64_t id = Register(std::move(done), kind == OpKind::READ ? buf : nullptr,
                                 kind == OpKind::READ ? length_bytes : 0, /*timed=*/false);
    queued_.push_back(Queued{id, kind, offset_bytes, length_bytes, buf});
    queued_bytes_ += bytes;
    send_.Request();
  }

  // Sends the queued ops that are still outstanding (a lost connection may have failed
  // some) as one batch call, with one timeout for the batch.
  void SendQueued() {
    std::vector<Queued> batch = std::move(queued_);
    queued_.clear();
    queued_bytes_ = 0;
    std::erase_if(batch, [this](const Queued& q) { return ops_.find(q.id) == ops_.end(); });
    if (batch.empty()) return;
    const uint64_t gen = ops_.at(batch.front().id).generation;
    DiskService::Client* service = nullptr;
    KJ_IF_MAYBE (s, service_) {
      service = s;
    }
    // Ops still outstanding belong to the current connection: a lost one failed its ops.
    SCRIBE_CHECK(service != nullptr && connection_.get() != nullptr &&
                 connection_->generation == gen);
    // Writes to adjacent ranges (a run of freshly allocated blocks from several
    // requests, the common case) travel as one op: op `i` covers batch[first[i],
    // first[i + 1]), and its one result answers each of them.
    std::vector<size_t> first;
    first.reserve(batch.size() + 1);
    size_t words = 16;
    for (size_t i = 0; i < batch.size(); ++i) {
      const Queued& q = batch[i];
      const bool joins = i > 0 && q.kind == OpKind::WRITE && batch[i - 1].kind == OpKind::WRITE &&
                         batch[i - 1].offset_bytes + batch[i - 1].length_bytes == q.offset_bytes;
      if (!joins) {
        first.push_back(i);
        words += 8;
      }
      if (q.kind == OpKind::WRITE) words += q.length_bytes / sizeof(capnp::word) + 1;
    }
    const size_t op_count = first.size();
    first.push_back(batch.size());
    auto req = service->batchRequest(capnp::MessageSize{words, 0});
    req.setDiskId(disk_id_);
    req.setEpoch(epoch_);
    auto ops = req.initOps(static_cast<unsigned>(op_count));
    auto ids = std::make_shared<std::vector<uint64_t>>();
    ids->reserve(batch.size());
    for (const Queued& q : batch) ids->push_back(q.id);
    for (size_t i = 0; i < op_count; ++i) {
      const Queued& q = batch[first[i]];
      auto op = ops[static_cast<unsigned>(i)];
      op.setKind(q.kind);
      op.setOffsetBytes(q.offset_bytes);
      if (q.kind == OpKind::WRITE) {
        uint64_t bytes = 0;
        for (size_t k = first[i]; k < first[i + 1]; ++k) bytes += batch[k].length_bytes;
        uint8_t* out = op.initData(static_cast<unsigned>(bytes)).begin();
        for (size_t k = first[i]; k < first[i + 1]; ++k) {
          std::memcpy(out, batch[k].buf, batch[k].length_bytes);
          out += batch[k].length_bytes;
        }
      } else {
        op.setLengthBytes(q.length_bytes);
      }
    }
    auto groups = std::make_shared<std::vector<size_t>>(std::move(first));
    const Loop::TimerId timer =
        loop_->RunAfter(options_.call_timeout_ns, [this, alive = alive_, ids, gen] {
          if (!*alive) return;
          for (uint64_t id : *ids) {
            if (ops_.count(id)) {
              return Drop(gen, absl::StrFormat("no reply within %d ms",
                                               options_.call_timeout_ns / 1'000'000));
            }
          }
        });
    tasks_.add(req.send().then(
        [this, alive = alive_, ids, groups, gen, timer](
            capnp::Response<DiskService::BatchResults>&& reply) {
          if (!*alive) return;
          loop_->Dispatch([&] {
            loop_->Cancel(timer);
            if (connection_.get() != nullptr && connection_->generation == gen) Answered();
            auto results = reply.getResults();
            const size_t op_count = groups->size() - 1;
            size_t group = 0;
            for (size_t i = 0; i < ids->size(); ++i) {
              while ((*groups)[group + 1] <= i) ++group;
              auto it = ops_.find((*ids)[i]);
              if (it == ops_.end()) continue;  // already failed: timeout or connection loss
              if (results.size() != op_count) {
                Finish(it, absl::InternalError(absl::StrFormat(
                               "disk %d at %s answered %d results for %d ops", disk_id_,
                               address_, results.size(), op_count)));
                continue;
              }
              auto result = results[static_cast<unsigned>(group)];
              absl::Status st = remote::DecodeError(result.getError());
              Op& op = it->second;
              if (st.ok() && op.read_buf != nullptr) {
                auto data = result.getData();
                if (data.size() != op.read_bytes) {
                  st = absl::InternalError(
                      absl::StrFormat("disk %d at %s returned %d bytes for a %d-byte read",
                                      disk_id_, address_, data.size(), op.read_bytes));
                } else if (data.size() > 0) {
                  std::memcpy(op.read_buf, data.begin(), data.size());
                }
              }
              Finish(it, std::move(st));
            }
          });
        },
        [this, alive = alive_, ids, gen, timer](kj::Exception&& e) {
          if (!*alive) return;
          loop_->Dispatch([&] {
            loop_->Cancel(timer);
            const std::string why = e.getDescription().cStr();
            Drop(gen, why);
            // Still there only if their connection was already gone.
            for (uint64_t id : *ids) {
              auto it = ops_.find(id);
              if (it != ops_.end()) Finish(it, RemoteTransportError(why));
            }
          });
        }));
  }

  // The capability to call, connecting first if there is no connection. Null while
  // backing off after failures; `done` has then been given UNAVAILABLE.
  DiskService::Client* Service(Callback& done) {
    if (service_ == nullptr) {
      const int64_t now = loop_->NowNanos();
      if (now < retry_after_ns_) {
        Complete(std::move(done),
                 RemoteTransportError(absl::StrFormat(
                     "disk %d at %s is unreachable (next attempt in %d ms): %s", disk_id_, address_,
                     (retry_after_ns_ - now) / 1'000'000, last_error_)));
        return nullptr;
      }
      Connect();
    }
    KJ_IF_MAYBE (service, service_) {
      return service;
    }
    SCRIBE_CHECK(false);  // Connect() always sets a capability
    return nullptr;
  }

  void Connect() {
    SCRIBE_CHECK(connection_.get() == nullptr);
    connection_ = kj::heap<Connection>();
    const uint64_t gen = connection_->generation = next_generation_++;
    auto& network = loop_->impl()->io.provider->getNetwork();
    kj::Promise<DiskService::Client> ready =
        network.parseAddress(address_)
            .then([](kj::Own<kj::NetworkAddress> addr) { return addr->connect(); })
            .then([this, gen](kj::Own<kj::AsyncIoStream> stream) -> DiskService::Client {
              Connection* c = connection_.get();
              if (c == nullptr || c->generation != gen) {
                kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "connection abandoned"));
              }
              loop_->Dispatch([&] {
                c->stream = kj::mv(stream);
                c->client = kj::heap<capnp::TwoPartyClient>(*c->stream);
                c->watch =
                    c->client->onDisconnect()
                        .then([this, gen] {
                          loop_->Dispatch([&] { Drop(gen, "the server closed the connection"); });
                        })
                        .eagerlyEvaluate([this, gen](kj::Exception&& e) {
                          loop_->Dispatch([&] { Drop(gen, e.getDescription().cStr()); });
                        });
              });
              return c->client->bootstrap().castAs<DiskService>();
            });
    service_ = DiskService::Client(kj::mv(ready));
  }

  // The current connection answered a call: it works. The first time, calls stop going
  // through the promise the capability was made from (a queue and a fork per call) and
  // go to the resolved capability.
  void Answered() {
    backoff_ns_ = options_.reconnect_backoff_min_ns;
    if (connection_->answered) return;
    connection_->answered = true;
    KJ_IF_MAYBE (service, service_) {
      kj::Own<capnp::ClientHook> hook = capnp::ClientHook::from(kj::cp(*service));
      for (;;) {
        KJ_IF_MAYBE (next, hook->getResolved()) {
          hook = next->addRef();
        } else {
          break;
        }
      }
      service_ = DiskService::Client(kj::mv(hook));
    }
  }

  // Forgets connection `gen` if it is the current one; its calls fail UNAVAILABLE.
  void Drop(uint64_t gen, const std::string& why) {
    if (connection_.get() == nullptr || connection_->generation != gen) return;
    const int64_t now = loop_->NowNanos();
    if (connection_->answered) {
      backoff_ns_ = options_.reconnect_backoff_min_ns;
      retry_after_ns_ = now;  // it worked until now: try again at once
    } else {
      retry_after_ns_ = now + backoff_ns_;
      backoff_ns_ = std::min(2 * backoff_ns_, options_.reconnect_backoff_max_ns);
    }
    last_error_ = why;
    // A KJ continuation of this connection may be running: free it on a later turn.
    kj::Maybe<DiskService::Client> service = kj::mv(service_);
    service_ = nullptr;
    tasks_.add(kj::evalLater([old = kj::mv(connection_), service = kj::mv(service)]() mutable {
      service = nullptr;
      old = nullptr;
    }));
    const absl::Status lost = RemoteTransportError(
        absl::StrFormat("disk %d at %s: connection lost: %s", disk_id_, address_, why));
    for (auto it = ops_.begin(); it != ops_.end();) {
      if (it->second.generation != gen) {
        ++it;
        continue;
      }
      loop_->Cancel(it->second.timer);
      Complete(std::move(it->second.done), lost);
      it = ops_.erase(it);
    }
  }

  // An outstanding call on the current connection; `timed` gives it a timeout of its own
  // (batched ops share their batch's).
  uint64_t Register(Callback done, uint8_t* read_buf, size_t read_bytes, bool timed) {
    const uint64_t id = next_op_id_++;
    Op& op = ops_[id];
    op.done = std::move(done);
    op.read_buf = read_buf;
    op.read_bytes = read_bytes;
    op.generation = connection_->generation;
    if (!timed) return id;
    op.timer = loop_->RunAfter(options_.call_timeout_ns, [this, alive = alive_, id] {
      if (!*alive) return;
      auto it = ops_.find(id);
      if (it == ops_.end()) return;
      Drop(it->second.generation,
           absl::StrFormat("no reply within %d ms", options_.call_timeout_ns / 1'000'000));
    });
    return id;
  }

  // Runs `on_reply(reply, op)` for the reply of call `id` if the call is still
  // outstanding, and completes it with the status that returns.
  template <typename Response, typename OnReply>
  void Track(uint64_t id, kj::Promise<capnp::Response<Response>> reply, OnReply on_reply) {
    tasks_.add(reply.then(
        [this, alive = alive_, id,
         on_reply = std::move(on_reply)](capnp::Response<Response>&& response) mutable {
          // Destroying the device cancels this task; the flag is a second guard, so that
          // a reply never lands in the buffer of a device (or caller) that is gone.
          if (!*alive) return;
          loop_->Dispatch([&] {
            auto it = ops_.find(id);
            if (it == ops_.end()) return;  // already failed: timeout or connection loss
            if (connection_.get() != nullptr && connection_->generation == it->second.generation) {
              Answered();
            }
            absl::Status st = on_reply(response, it->second);
            Finish(it, std::move(st));
          });
        },
        [this, alive = alive_, id](kj::Exception&& e) {
          if (!*alive) return;
          loop_->Dispatch([&] {
            auto it = ops_.find(id);
            if (it == ops_.end()) return;
            const std::string why = e.getDescription().cStr();
            Drop(it->second.generation, why);
            it = ops_.find(id);  // still there only if its connection was already gone
            if (it != ops_.end()) Finish(it, RemoteTransportError(why));
          });
        }));
  }

  void Finish(std::map<uint64_t, Op>::iterator it, absl::Status st) {
    Op op = std::move(it->second);
    ops_.erase(it);
    loop_->Cancel(op.timer);
    Complete(std::move(op.done), std::move(st));
  }

  RealLoop* loop_;
  const std::string address_;
  const uint64_t disk_id_;
  const uint64_t epoch_;
  const RemoteDeviceOptions options_;
  uint64_t size_bytes_ = 0;  // learnt by Open(); until then every range is out of range
  std::shared_ptr<bool> alive_;
  std::map<uint64_t, Op> ops_;  // calls not yet completed, by id (issue order)
  std::vector<Queued> queued_;  // ops for the batch sent at the end of this loop turn
  uint64_t queued_bytes_ = 0;
  OncePerTurn send_{loop_, [this] { SendQueued(); }};
  uint64_t next_op_id_ = 1;
  uint64_t next_generation_ = 1;
  int64_t retry_after_ns_ = 0;
  int64_t backoff_ns_;
  std::string last_error_;
  // Destroyed bottom-up: calls in flight, then the capability, then the connection.
  kj::Own<Connection> connection_;
  kj::Maybe<DiskService::Client> service_;
  kj::TaskSet tasks_{*this};
};

}  // namespace

void OpenRemoteDevice(RealLoop* loop, std::string address, uint64_t disk_id, uint64_t epoch,
                      std::function<void(absl::StatusOr<std::unique_ptr<BlockDevice>>)> done,
                      RemoteDeviceOptions options) {
  SCRIBE_CHECK(loop != nullptr);
  const bool options_ok = options.call_timeout_ns > 0 && options.reconnect_backoff_min_ns > 0 &&
                          options.reconnect_backoff_max_ns >= options.reconnect_backoff_min_ns &&
                          options.request_bytes_max >= BlockDevice::kSectorBytes &&
                          options.request_bytes_max % BlockDevice::kSectorBytes == 0;
  if (!options_ok) {
    loop->Post([done = std::move(done)] {
      done(absl::InvalidArgumentError(
          "RemoteDeviceOptions: timeouts and backoff must be positive (max >= min) and "
          "request_bytes_max a positive multiple of 512"));
    });
    return;
  }
  // The device holds the callback that owns it until `open` completes either way.
  auto device = std::make_shared<std::unique_ptr<RemoteBlockDevice>>(
      std::make_unique<RemoteBlockDevice>(loop, std::move(address), disk_id, epoch, options));
  RemoteBlockDevice* raw = device->get();
  raw->Open([device, done = std::move(done)](absl::Status st) {
    std::unique_ptr<BlockDevice> owned = std::move(*device);
    if (!st.ok()) {
      owned.reset();
      return done(std::move(st));
    }
    done(std::move(owned));
  });
}

}  // namespace scribe
