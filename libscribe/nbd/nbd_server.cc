// NbdServer: KJ sockets on the RealLoop, NBD framing from nbd_protocol.h, I/O through
// the Pool. One Connection per client runs as one KJ promise chain: the handshake, then
// a read loop that keeps taking requests while earlier ones run in the pool, while pool
// completions queue replies that a single writer drains to the socket in batches.
//
// Every KJ continuation that touches the pool or the connection's bookkeeping runs
// through RealLoop::Dispatch so a RunUntil in progress re-checks its predicate. Pool
// completions arrive on the loop already (from RunUntil) and call into KJ directly.
#include "scribe/nbd_server.h"

#include <arpa/inet.h>
#include <kj/debug.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "libscribe/env/real_loop_internal.h"
#include "libscribe/nbd/nbd_protocol.h"
#include "libscribe/nbd/unix_listen.h"
#include "scribe/status.h"

namespace scribe {

namespace {

// Bytes one socket read may take while serving requests.
constexpr size_t kReceiveBufferBytes = 256 << 10;
// Replies gathered into one socket write at most.
constexpr size_t kRepliesPerWriteMax = 64;
// Longest export name quoted back in an error message (messages must stay <= 4096 bytes).
constexpr size_t kQuotedNameBytesMax = 256;
// Preferred block size advertised in NBD_INFO_BLOCK_SIZE: the pool's 4 KiB block (smaller
// writes are read-modify-write).
constexpr uint32_t kPreferredBlockBytes = 4096;
constexpr uint32_t kMinimumBlockBytes = BlockDevice::kSectorBytes;
// After a failed accept (descriptor or memory exhaustion), wait this long before the next.
constexpr int64_t kAcceptRetryDelayNs = 100'000'000;

std::string Quote(const std::string& name) {
  return name.size() <= kQuotedNameBytesMax ? name : name.substr(0, kQuotedNameBytesMax) + "...";
}

class Connection;

}  // namespace

struct NbdServer::Impl : public kj::TaskSet::ErrorHandler {
  Impl(RealLoop* loop, Pool* pool, std::string path, NbdServerOptions options)
      : loop(loop), pool(pool), path(std::move(path)), options(options) {}

  // Connection tasks catch their own failures and the accept loop retries its own.
  void taskFailed(kj::Exception&& exception) override { (void)exception; }

  kj::Promise<void> AcceptLoop();

  RealLoop* loop;
  Pool* pool;
  std::string path;
  bool tcp = false;  // path is host:port
  NbdServerOptions options;
  NbdServerStats stats;
  // Destroyed bottom-up: connections (and the accept loop) before the listening socket.
  kj::Own<kj::ConnectionReceiver> listener;
  kj::TaskSet tasks{*this};
};

namespace {

struct ExportLookup {
  bool found = false;
  bool fenced = false;  // named with an epoch older than the VSD's writer epoch
  VsdId vsd;
  std::string vsd_name;
  uint64_t epoch = 0;  // the client's writer epoch ("NAME@EPOCH"); 0 = none declared
  uint64_t size_bytes = 0;
};

// "NAME@EPOCH" names VSD NAME for a writer holding EPOCH; a plain name declares none.
void SplitExportName(const std::string& name, std::string* vsd, uint64_t* epoch) {
  *vsd = name;
  *epoch = 0;
  const size_t at = name.rfind('@');
  uint64_t e = 0;
  if (at != std::string::npos && absl::SimpleAtoi(name.substr(at + 1), &e) && e > 0) {
    *vsd = name.substr(0, at);
    *epoch = e;
  }
}

// One client connection. Owned by its Run() promise in the server's TaskSet; destroyed
// when that promise completes (after every request it accepted has finished) or when the
// server goes away.
class Connection final : public kj::TaskSet::ErrorHandler {
 public:
  Connection(NbdServer::Impl* server, kj::Own<kj::AsyncIoStream> stream)
      : server_(server),
        loop_(server->loop),
        stream_(kj::mv(stream)),
        alive_(std::make_shared<bool>(true)) {
    limits_.payload_bytes_max = server_->options.max_request_bytes;
    limits_.block_bytes_min = kMinimumBlockBytes;
    ++server_->stats.connections_active;
  }

  // KJ promises may throw from destructors; a connection going away must not.
  ~Connection() noexcept {
    *alive_ = false;
    --server_->stats.connections_active;
  }

  void taskFailed(kj::Exception&& exception) override { (void)exception; }

  kj::Promise<void> Run() {
    auto timeout = server_->loop->impl()
                       ->io.provider->getTimer()
                       .afterDelay(server_->options.handshake_timeout_ns * kj::NANOSECONDS)
                       .then([this]() -> kj::Promise<bool> {
                         return ProtocolError<bool>("handshake timed out");
                       });
    return Handshake()
        .exclusiveJoin(kj::mv(timeout))
        .then([this](bool go) -> kj::Promise<void> {
          if (!go) return kj::READY_NOW;
          return ReadRequests();
        })
        .catch_([this](kj::Exception&& e) {
          (void)e;
          loop_->Dispatch([this] { HardClose(); });
        })
        .then([this] { return WhenIdle(); })
        .then([this] {
          if (!closed_) ShutdownWrite();
        });
  }

 private:
  struct Reply {
    uint8_t header[nbd::kSimpleReplyHeaderBytes];
    std::shared_ptr<AlignedBuffer> data;  // READ payload, or null
    size_t data_bytes = 0;
    uint64_t held_bytes = 0;  // payload bytes this request counted against the limit
  };

  template <typename T>
  kj::Promise<T> ProtocolError(const std::string& what) {
    ++server_->stats.protocol_errors;
    return KJ_EXCEPTION(FAILED, "NBD protocol error", what.c_str());
  }

  // Writes handshake bytes; the handshake has one message outstanding at a time.
  kj::Promise<void> Send(std::string bytes) {
    auto owned = kj::heap<std::string>(std::move(bytes));
    auto promise = kj::evalNow([&] { return stream_->write(owned->data(), owned->size()); });
    return promise.attach(kj::mv(owned));
  }

  // --------------------------------------------------------------- handshake
  // Resolves true to enter transmission, false to close (ABORT, unknown EXPORT_NAME).
  kj::Promise<bool> Handshake() {
    return Send(nbd::EncodeGreeting())
        .then([this] { return stream_->read(small_, nbd::kClientFlagsBytes); })
        .then([this]() -> kj::Promise<bool> {
          auto flags = nbd::ParseClientFlags(small_);
          if (!flags.ok()) return ProtocolError<bool>(std::string(flags.status().message()));
          no_zeroes_ = flags->no_zeroes;
          return NextOption();
        });
  }

  kj::Promise<bool> NextOption() {
    return stream_->read(small_, nbd::kOptionHeaderBytes).then([this]() -> kj::Promise<bool> {
      auto header = nbd::ParseOptionHeader(small_);
      if (!header.ok()) return ProtocolError<bool>(std::string(header.status().message()));
      if (++options_seen_ > server_->options.max_options_per_connection) {
        return ProtocolError<bool>("too many options");
      }
      auto data = kj::heap<std::string>(header->length_bytes, '\0');
      if (data->empty()) return HandleOption(*header, std::string());
      auto read = stream_->read(data->data(), data->size());
      return read.then([this, h = *header, data = kj::mv(data)]() mutable {
        return HandleOption(h, std::move(*data));
      });
    });
  }

  ExportLookup Lookup(const std::string& name) {
    ExportLookup out;
    std::string vsd;
    uint64_t epoch = 0;
    SplitExportName(name, &vsd, &epoch);
    loop_->Dispatch([&] {
      auto id = server_->pool->FindVsd(vsd);
      if (!id.ok()) return;
      auto info = server_->pool->GetVsdInfo(*id);
      if (!info.ok()) return;
      out.found = true;
      out.vsd = *id;
      out.vsd_name = vsd;
      out.epoch = epoch;
      out.size_bytes = info->size_bytes;
      out.fenced = epoch != 0 && epoch < WriterEpoch(vsd);
    });
    return out;
  }

  uint64_t WriterEpoch(const std::string& vsd) const {
    return server_->options.writer_epoch ? server_->options.writer_epoch(vsd) : 0;
  }

  // A client that declared an epoch may change data only while no newer writer exists.
  bool WriteFenced() const { return epoch_ != 0 && epoch_ < WriterEpoch(vsd_name_); }

  kj::Promise<bool> ReplyAndContinue(std::string bytes) {
    return Send(std::move(bytes)).then([this] { return NextOption(); });
  }

  kj::Promise<bool> HandleOption(nbd::OptionHeader h, std::string data) {
    using namespace nbd;
    switch (h.option) {
      case kOptExportName: {
        auto name = ParseExportName(data);
        if (!name.ok()) return ProtocolError<bool>(std::string(name.status().message()));
        ExportLookup e = Lookup(*name);
        // EXPORT_NAME cannot return an error: the session must end.
        if (!e.found || e.fenced) return false;
        Enter(e);
        return Send(EncodeExportNameReply(e.size_bytes, kTransmissionFlags, no_zeroes_)).then([] {
          return true;
        });
      }
      case kOptAbort:
        // The client may already have gone; either way the session ends.
        return Send(EncodeOptionReply(h.option, kRepAck))
            .then([] { return false; }, [](kj::Exception&&) { return false; });
      case kOptList: {
        if (!data.empty()) {
          return ReplyAndContinue(
              EncodeOptionReply(h.option, kRepErrInvalid, "NBD_OPT_LIST takes no data"));
        }
        std::string out;
        loop_->Dispatch([&] {
          for (const VsdInfo& v : server_->pool->ListVsds()) {
            out += EncodeOptionReply(h.option, kRepServer, EncodeServerReplyData(v.name));
          }
        });
        out += EncodeOptionReply(h.option, kRepAck);
        return ReplyAndContinue(std::move(out));
      }
      case kOptInfo:
      case kOptGo: {
        auto req = ParseInfoRequest(data);
        if (!req.ok()) {
          return ReplyAndContinue(
              EncodeOptionReply(h.option, kRepErrInvalid, std::string(req.status().message())));
        }
        ExportLookup e = Lookup(req->export_name);
        if (!e.found) {
          return ReplyAndContinue(EncodeOptionReply(
              h.option, kRepErrUnknown,
              absl::StrFormat("no VSD named '%s' on this server", Quote(req->export_name))));
        }
        if (e.fenced) {
          return ReplyAndContinue(EncodeOptionReply(
              h.option, kRepErrPolicy,
              absl::StrFormat("'%s': epoch %d is older than the VSD's writer epoch %d",
                              Quote(req->export_name), e.epoch, WriterEpoch(e.vsd_name))));
        }
        std::string out = EncodeOptionReply(h.option, kRepInfo,
                                            EncodeInfoExportData(e.size_bytes, kTransmissionFlags));
        // Sent whether asked or not: the pool's 512-byte granularity is not the default
        // of 1, and the spec says such a server SHOULD advertise it.
        out += EncodeOptionReply(h.option, kRepInfo,
                                 EncodeInfoBlockSizeData(kMinimumBlockBytes, kPreferredBlockBytes,
                                                         server_->options.max_request_bytes));
        out += EncodeOptionReply(h.option, kRepAck);
        if (h.option == kOptInfo) return ReplyAndContinue(std::move(out));
        Enter(e);
        return Send(std::move(out)).then([] { return true; });
      }
      case kOptStructuredReply:
        return ReplyAndContinue(
            EncodeOptionReply(h.option, kRepErrUnsup, "this server sends simple replies only"));
      default:
        return ReplyAndContinue(EncodeOptionReply(
            h.option, kRepErrUnsup, absl::StrFormat("option %d is not supported", h.option)));
    }
  }

  void Enter(const ExportLookup& e) {
    vsd_ = e.vsd;
    vsd_name_ = e.vsd_name;
    epoch_ = e.epoch;
    export_size_bytes_ = e.size_bytes;
  }

  // ------------------------------------------------------------ transmission
  // Requests come off the socket in bulk: one read takes whatever the client has sent
  // (at queue depth 32, many requests), and every whole request in the buffer starts
  // before the next read. A write payload larger than what is buffered is read straight
  // into its own buffer. Reading stops while the connection has no room (in-flight
  // count or bytes), which holds the client back through the socket.
  kj::Promise<void> ReadRequests() {
    for (;;) {
      const size_t have = rx_end_ - rx_begin_;
      if (have < nbd::kRequestHeaderBytes) break;
      const uint8_t* at = rx_.get() + rx_begin_;
      auto parsed = nbd::ParseRequestHeader(at);
      if (!parsed.ok()) return ProtocolError<void>(std::string(parsed.status().message()));
      const nbd::Request req = *parsed;
      if (req.type == nbd::kCmdDisc) {
        ++server_->stats.requests;
        return kj::READY_NOW;  // replies drain, then close
      }
      const nbd::RequestCheck check = nbd::ValidateRequest(req, export_size_bytes_, limits_);
      if (check.disconnect) return ProtocolError<void>("request payload over the limit");
      // Bytes held until the reply is sent: a write's payload or a read's data.
      const uint64_t held =
          req.type == nbd::kCmdWrite || (req.type == nbd::kCmdRead && check.ok())
              ? req.length_bytes
              : 0;
      if (!HasRoom(held)) {
        // The header stays buffered and is parsed again once there is room.
        return WhenRoom(held).then([this] { return ReadRequests(); });
      }
      ++server_->stats.requests;
      Reserve(held);
      rx_begin_ += nbd::kRequestHeaderBytes;
      const uint32_t payload_bytes = nbd::RequestPayloadBytes(req);
      if (payload_bytes == 0) {
        loop_->Dispatch([&] { Start(req, check, held, nullptr); });
        continue;
      }
      auto payload =
          std::make_shared<AlignedBuffer>(payload_bytes, AlignedBuffer::Uninitialized{});
      const size_t buffered = std::min<size_t>(payload_bytes, rx_end_ - rx_begin_);
      std::memcpy(payload->data(), rx_.get() + rx_begin_, buffered);
      rx_begin_ += buffered;
      if (buffered == payload_bytes) {
        loop_->Dispatch([&] { Start(req, check, held, payload); });
        continue;
      }
      return stream_->read(payload->data() + buffered, payload_bytes - buffered)
          .then(
              [this, req, check, held, payload]() {
                loop_->Dispatch([&] { Start(req, check, held, payload); });
                return ReadRequests();
              },
              [this, held](kj::Exception&& e) -> kj::Promise<void> {
                // The client went away inside the payload: the request never starts, so
                // its reservation goes now (the connection waits for none before closing).
                Release(held);
                return kj::mv(e);
              });
    }
    // Less than a header buffered: keep the partial bytes at the front, read more.
    const size_t have = rx_end_ - rx_begin_;
    if (rx_begin_ > 0) {
      std::memmove(rx_.get(), rx_.get() + rx_begin_, have);
      rx_begin_ = 0;
      rx_end_ = have;
    }
    return stream_->tryRead(rx_.get() + rx_end_, 1, kReceiveBufferBytes - rx_end_)
        .then([this](size_t n) -> kj::Promise<void> {
          if (n == 0) {
            if (rx_end_ == 0) return kj::READY_NOW;  // the client hung up between requests
            return KJ_EXCEPTION(DISCONNECTED, "connection closed inside a request header");
          }
          rx_end_ += n;
          return ReadRequests();
        });
  }

  // Runs one request in the pool. `held` was reserved; Complete() releases it.
  void Start(const nbd::Request& req, nbd::RequestCheck check, uint64_t held,
             std::shared_ptr<AlignedBuffer> payload) {
    const uint64_t handle = req.handle;
    if (!check.ok()) return Complete(handle, check.error, nullptr, held);
    Pool* pool = server_->pool;
    auto alive = alive_;
    auto finish = [this, alive, handle, held](absl::Status st) {
      if (*alive) Complete(handle, nbd::ErrorFromStatus(st), nullptr, held);
    };
    const bool fua = (req.flags & nbd::kCmdFlagFua) != 0;
    if (req.type != nbd::kCmdRead && WriteFenced()) {
      // A newer writer of this VSD exists (the VM was restarted elsewhere): refuse.
      ++server_->stats.fenced_requests;
      return Complete(handle, nbd::kEperm, nullptr, held);
    }
    if (req.length_bytes == 0 && req.type != nbd::kCmdFlush) {
      // Nothing to read, write or discard: done (a zero-length WRITE carries no payload).
      return Complete(handle, 0, nullptr, held);
    }
    switch (req.type) {
      case nbd::kCmdRead: {
        auto data = std::make_shared<AlignedBuffer>(req.length_bytes, AlignedBuffer::Uninitialized{});
        pool->Read(vsd_, req.offset_bytes, req.length_bytes, data->data(),
                   [this, alive, handle, held, data](absl::Status st) {
                     if (!*alive) return;
                     Complete(handle, nbd::ErrorFromStatus(st), st.ok() ? data : nullptr, held);
                   });
        return;
      }
      case nbd::kCmdWrite:
        // `payload` rides in the callback: the pool may use it until then.
        pool->Write(vsd_, req.offset_bytes, req.length_bytes, payload->data(), fua,
                    [finish, payload](absl::Status st) { finish(st); });
        return;
      case nbd::kCmdFlush:
        pool->Flush(finish);
        return;
      case nbd::kCmdTrim:
      case nbd::kCmdWriteZeroes:
        // Discarded space reads as zeros, which is what WRITE_ZEROES needs. NO_HOLE
        // ("keep it provisioned") has no meaning for a redirect-on-write pool: a later
        // write allocates fresh blocks however the range was zeroed.
        pool->Discard(vsd_, req.offset_bytes, req.length_bytes,
                      [pool, alive, fua, finish](absl::Status st) {
                        if (!*alive) return;
                        if (st.ok() && fua) return pool->Flush(finish);
                        finish(st);
                      });
        return;
      default:
        SCRIBE_CHECK(false);  // ValidateRequest admits only the commands above
    }
  }

  // A request finished in the pool (or was refused): queue its reply.
  void Complete(uint64_t handle, uint32_t error, std::shared_ptr<AlignedBuffer> data,
                uint64_t held) {
    if (error != 0) ++server_->stats.request_errors;
    if (closed_) return Release(held);
    Reply r;
    nbd::EncodeSimpleReplyHeader(error, handle, r.header);
    r.data_bytes = data ? data->size() : 0;
    r.data = std::move(data);
    r.held_bytes = held;
    replies_.push_back(std::move(r));
    // Written at the end of this loop turn, with every other reply the turn produced.
    pump_.Request();
  }

  // Starts one gathered write of the queued replies unless one is under way.
  void Pump() {
    if (writing_ || closed_ || replies_.empty()) return;
    writing_ = true;
    const size_t n = std::min(replies_.size(), kRepliesPerWriteMax);
    batch_.clear();
    for (size_t i = 0; i < n; ++i) {
      batch_.push_back(std::move(replies_.front()));
      replies_.pop_front();
    }
    size_t pieces = 0;
    for (const Reply& r : batch_) pieces += r.data_bytes ? 2 : 1;
    pieces_ = kj::heapArray<kj::ArrayPtr<const kj::byte>>(pieces);
    size_t i = 0;
    for (const Reply& r : batch_) {
      pieces_[i++] = kj::arrayPtr(r.header, sizeof(r.header));
      if (r.data_bytes) pieces_[i++] = kj::arrayPtr(r.data->data(), r.data_bytes);
    }
    // KJ reports some write errors (EPIPE) by throwing at once; evalNow turns that into a
    // failed promise, since this runs from pool callbacks, outside any KJ continuation.
    tasks_.add(kj::evalNow([this] { return stream_->write(pieces_); })
                   .then([this] { loop_->Dispatch([this] { Written(true); }); },
                         [this](kj::Exception&&) { loop_->Dispatch([this] { Written(false); }); }));
  }

  void Written(bool ok) {
    writing_ = false;
    std::vector<Reply> done = std::move(batch_);
    batch_.clear();
    if (!ok) HardClose();
    if (closed_) ShutdownWrite();
    for (const Reply& r : done) Release(r.held_bytes);
    Pump();
  }

  void Reserve(uint64_t held) {
    ++in_flight_;
    held_bytes_ += held;
    if (static_cast<uint64_t>(in_flight_) > server_->stats.in_flight_max) {
      server_->stats.in_flight_max = in_flight_;
    }
  }

  void Release(uint64_t held) {
    SCRIBE_CHECK(in_flight_ > 0 && held_bytes_ >= held);
    --in_flight_;
    held_bytes_ -= held;
    if (room_waiter_ && HasRoom(room_bytes_)) {
      auto f = kj::mv(room_waiter_);
      f->fulfill();
    }
    if (idle_waiter_ && in_flight_ == 0) {
      auto f = kj::mv(idle_waiter_);
      f->fulfill();
    }
  }

  bool HasRoom(uint64_t bytes) const {
    if (in_flight_ >= server_->options.max_in_flight_per_connection) return false;
    return in_flight_ == 0 ||
           held_bytes_ + bytes <= server_->options.max_in_flight_bytes_per_connection;
  }

  kj::Promise<void> WhenRoom(uint64_t bytes) {
    if (HasRoom(bytes)) return kj::READY_NOW;
    auto paf = kj::newPromiseAndFulfiller<void>();
    room_waiter_ = kj::mv(paf.fulfiller);
    room_bytes_ = bytes;
    return kj::mv(paf.promise);
  }

  kj::Promise<void> WhenIdle() {
    if (in_flight_ == 0) return kj::READY_NOW;
    auto paf = kj::newPromiseAndFulfiller<void>();
    idle_waiter_ = kj::mv(paf.fulfiller);
    return kj::mv(paf.promise);
  }

  // Stops answering: queued replies are dropped, requests still in the pool finish into
  // buffers they own, the read loop sees end-of-stream, and the peer sees end-of-stream
  // now (or once the write under way ends).
  void HardClose() {
    if (closed_) return;
    closed_ = true;
    std::deque<Reply> dropped = std::move(replies_);
    replies_.clear();
    for (const Reply& r : dropped) Release(r.held_bytes);
    (void)kj::runCatchingExceptions([this] { stream_->abortRead(); });
    if (!writing_) ShutdownWrite();
  }

  void ShutdownWrite() {
    if (shut_down_) return;
    shut_down_ = true;
    // The socket may already be broken; that is the same outcome.
    (void)kj::runCatchingExceptions([this] { stream_->shutdownWrite(); });
  }

  NbdServer::Impl* server_;
  RealLoop* loop_;
  kj::Own<kj::AsyncIoStream> stream_;
  std::shared_ptr<bool> alive_;
  nbd::RequestLimits limits_;

  // Handshake state.
  uint8_t small_[nbd::kOptionHeaderBytes];
  int options_seen_ = 0;
  bool no_zeroes_ = false;

  // Transmission state.
  std::string vsd_name_;
  uint64_t epoch_ = 0;  // declared by the client's export name
  VsdId vsd_;
  uint64_t export_size_bytes_ = 0;
  // Received bytes not yet taken as requests: rx_[rx_begin_, rx_end_).
  std::unique_ptr<uint8_t[]> rx_ = std::make_unique<uint8_t[]>(kReceiveBufferBytes);
  size_t rx_begin_ = 0;
  size_t rx_end_ = 0;
  int in_flight_ = 0;  // requests reserved and not yet answered or dropped
  uint64_t held_bytes_ = 0;
  kj::Own<kj::PromiseFulfiller<void>> room_waiter_;
  uint64_t room_bytes_ = 0;
  kj::Own<kj::PromiseFulfiller<void>> idle_waiter_;
  std::deque<Reply> replies_;  // waiting for the writer
  std::vector<Reply> batch_;   // being written
  kj::Array<kj::ArrayPtr<const kj::byte>> pieces_;
  bool writing_ = false;
  bool closed_ = false;
  bool shut_down_ = false;
  OncePerTurn pump_{loop_, [this] { Pump(); }};  // replies go out once per loop turn
  // Declared last: pending writes are cancelled before the buffers they point into go.
  kj::TaskSet tasks_{*this};
};

}  // namespace

kj::Promise<void> NbdServer::Impl::AcceptLoop() {
  // accept() reports some errors (EMFILE, ENFILE, ENOMEM) by throwing at once.
  return kj::evalNow([this] { return listener->accept(); })
      .then(
          [this](kj::Own<kj::AsyncIoStream> stream) {
            loop->Dispatch([&] {
              if (stats.connections_active >= static_cast<uint64_t>(options.max_connections)) {
                ++stats.connections_refused;
                return;  // `stream` goes out of scope: the client sees the socket close
              }
              ++stats.connections_accepted;
              auto connection = kj::heap<Connection>(this, kj::mv(stream));
              Connection& c = *connection;
              tasks.add(c.Run().attach(kj::mv(connection)));
            });
            return AcceptLoop();
          },
          [this](kj::Exception&& e) {
            // Out of descriptors or memory: keep the listener and try again shortly rather than
            // stop serving for good.
            (void)e;
            ++stats.accept_errors;
            return loop->impl()
                ->io.provider->getTimer()
                .afterDelay(kAcceptRetryDelayNs * kj::NANOSECONDS)
                .then([this] { return AcceptLoop(); });
          });
}

namespace {

absl::Status CheckOptions(const NbdServerOptions& options) {
  if (options.max_request_bytes < kPreferredBlockBytes ||
      options.max_request_bytes % kMinimumBlockBytes != 0 ||
      options.max_in_flight_per_connection < 1 || options.max_connections < 1 ||
      options.max_options_per_connection < 1 || options.handshake_timeout_ns <= 0) {
    return absl::InvalidArgumentError(
        "NbdServerOptions: max_request_bytes must be a multiple of 512 and >= 4096; the "
        "other limits must be positive");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<NbdServer>> NbdServer::CreateTcp(RealLoop* loop, Pool* pool,
                                                                std::string address,
                                                                NbdServerOptions options) {
  if (loop == nullptr || pool == nullptr) {
    return absl::InvalidArgumentError("NbdServer needs a loop and a pool");
  }
  if (absl::Status st = CheckOptions(options); !st.ok()) return st;
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat("address '%s' is not host:port", address));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrFormat("'%s' is not an IPv4 address", address));
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrFormat("socket: %s", std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 128) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrFormat("cannot listen on '%s': %s", address, std::strerror(err)));
  }
  std::string bound = absl::StrFormat("%s:%d", address.substr(0, colon), ntohs(addr.sin_port));
  auto impl = std::make_unique<Impl>(loop, pool, std::move(bound), options);
  impl->tcp = true;
  impl->listener = loop->impl()->io.lowLevelProvider->wrapListenSocketFd(
      fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
              kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC |
              kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK);
  impl->tasks.add(impl->AcceptLoop());
  return std::unique_ptr<NbdServer>(new NbdServer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<NbdServer>> NbdServer::Create(RealLoop* loop, Pool* pool,
                                                             std::string unix_socket_path,
                                                             NbdServerOptions options) {
  if (loop == nullptr || pool == nullptr) {
    return absl::InvalidArgumentError("NbdServer needs a loop and a pool");
  }
  if (absl::Status st = CheckOptions(options); !st.ok()) return st;
  auto fd_or = nbd::ListenOnUnixSocket(unix_socket_path);
  if (!fd_or.ok()) return fd_or.status();
  const int fd = *fd_or;

  auto impl = std::make_unique<Impl>(loop, pool, std::move(unix_socket_path), options);
  impl->listener = loop->impl()->io.lowLevelProvider->wrapListenSocketFd(
      fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
              kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC |
              kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK);
  impl->tasks.add(impl->AcceptLoop());
  return std::unique_ptr<NbdServer>(new NbdServer(std::move(impl)));
}

NbdServer::NbdServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NbdServer::~NbdServer() {
  const std::string path = impl_->path;
  const bool tcp = impl_->tcp;
  impl_.reset();
  if (!tcp) unlink(path.c_str());
}

const std::string& NbdServer::socket_path() const { return impl_->path; }

NbdServerStats NbdServer::Stats() const { return impl_->stats; }

}  // namespace scribe
