#include "scribe/nbd_relay.h"

#include <kj/async-io.h>
#include <kj/debug.h>

#include <cstring>
#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "libscribe/env/real_loop_internal.h"
#include "libscribe/nbd/nbd_protocol.h"
#include "libscribe/nbd/unix_listen.h"

namespace scribe {
namespace {

using Wire = std::shared_ptr<std::string>;

// Byte offset of the handle in a request header and in a simple reply header.
constexpr size_t kRequestHandleAt = 8;
constexpr size_t kReplyHandleAt = 8;

void PutBe64(char* at, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) at[i] = static_cast<char>(v & 0xff);
}

kj::Promise<kj::Array<kj::byte>> ReadExactly(kj::AsyncIoStream& stream, size_t n) {
  auto buf = kj::heapArray<kj::byte>(n);
  if (n == 0) return kj::mv(buf);
  auto read = stream.read(buf.begin(), n);
  return read.then([buf = kj::mv(buf)]() mutable { return kj::mv(buf); });
}

std::string AsString(const kj::Array<kj::byte>& a) {
  return std::string(reinterpret_cast<const char*>(a.begin()), a.size());
}

// Buffered reads for the transmission phase: one read() takes whatever the peer sent
// (many requests or replies at queue depth 32), and whole messages are parsed from it.
class Reader {
 public:
  explicit Reader(kj::AsyncIoStream& stream) : stream_(stream), buf_(kBufferBytes) {}

  size_t available() const { return end_ - begin_; }
  const char* data() const { return buf_.data() + begin_; }
  void Skip(size_t n) { begin_ += n; }

  // Resolves once at least `n` bytes are buffered; fails DISCONNECTED at end of stream.
  kj::Promise<void> Need(size_t n) {
    if (available() >= n) return kj::READY_NOW;
    if (begin_ > 0) {
      std::memmove(buf_.data(), buf_.data() + begin_, available());
      end_ -= begin_;
      begin_ = 0;
    }
    if (buf_.size() < n) buf_.resize(n);
    return stream_.tryRead(buf_.data() + end_, 1, buf_.size() - end_).then([this, n](size_t got) {
      if (got == 0) return kj::Promise<void>(KJ_EXCEPTION(DISCONNECTED, "connection closed"));
      end_ += got;
      return Need(n);
    });
  }

 private:
  static constexpr size_t kBufferBytes = 256 << 10;
  kj::AsyncIoStream& stream_;
  std::vector<char> buf_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

// Most messages gathered into one write.
constexpr size_t kPiecesPerWriteMax = 256;

bool Modifies(uint16_t type) {
  return type == nbd::kCmdWrite || type == nbd::kCmdTrim || type == nbd::kCmdWriteZeroes;
}

class Session;

}  // namespace

struct NbdRelay::Impl : public kj::TaskSet::ErrorHandler {
  Impl(RealLoop* l, NbdRelayOptions o) : loop(l), options(std::move(o)) {}
  void taskFailed(kj::Exception&& e) override { Log(e.getDescription().cStr()); }
  void Log(const std::string& what) {
    if (options.log) options.log("NBD relay: " + what);
  }
  kj::Promise<void> AcceptLoop(kj::ConnectionReceiver* on);
  void Remove(uint64_t id);

  RealLoop* loop;
  NbdRelayOptions options;
  NbdRelayStats stats;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  uint64_t next_session = 1;
  std::map<uint64_t, std::unique_ptr<Session>> sessions;
  kj::Own<kj::ConnectionReceiver> listener;
  kj::Own<kj::TaskSet> accepting;  // the accept loop, before the listener
};

namespace {

// One client's session. Every callback runs on the loop; the session is destroyed only
// from a posted callback (never inside one of its own KJ continuations).
class Session : public kj::TaskSet::ErrorHandler {
 public:
  Session(NbdRelay::Impl* relay, uint64_t id, kj::Own<kj::AsyncIoStream> client)
      : relay_(relay), id_(id), client_(kj::mv(client)) {
    client_tasks_ = kj::heap<kj::TaskSet>(*this);
    client_tasks_->add(kj::evalNow([this] { return Connect(); })
                           .then([this](kj::Own<kj::AsyncIoStream> server) {
                             server_ = kj::mv(server);
                             return Handshake();
                           })
                           .catch_([this](kj::Exception&& e) {
                             End(absl::StrFormat("session ended: %s", e.getDescription().cStr()));
                           }));
  }

  ~Session() { *alive_ = false; }

  void taskFailed(kj::Exception&& e) override { End(e.getDescription().cStr()); }

 private:
  struct Entry {
    uint64_t client_handle = 0;
    uint16_t type = 0;
    uint16_t flags = 0;
    uint32_t length = 0;
    bool internal = false;  // the relay's own flush: its reply goes nowhere
    uint64_t acked_before = 0;  // a flush: acknowledgements it covers (see Send)
    Wire wire;  // the request as sent to the server, with the relay's handle
  };

  // ------------------------------------------------------------------ connecting
  kj::Promise<kj::Own<kj::AsyncIoStream>> Connect() {
    const std::string address = relay_->options.upstream ? relay_->options.upstream() : "";
    if (address.empty()) return KJ_EXCEPTION(DISCONNECTED, "no node serves the pool now");
    auto& network = relay_->loop->impl()->io.provider->getNetwork();
    return network.parseAddress(address).then(
        [](kj::Own<kj::NetworkAddress> a) { return a->connect(); });
  }

  // The client's own handshake, passed through option by option.
  kj::Promise<void> Handshake() {
    return ReadExactly(*server_, nbd::kGreetingBytes)
        .then([this](kj::Array<kj::byte> greeting) {
          auto write = client_->write(greeting.begin(), greeting.size());
          return write.attach(kj::mv(greeting));
        })
        .then([this] { return ReadExactly(*client_, nbd::kClientFlagsBytes); })
        .then([this](kj::Array<kj::byte> flags) {
          client_flags_ = AsString(flags);
          auto parsed = nbd::ParseClientFlags(flags.begin());
          no_zeroes_ = parsed.ok() && parsed->no_zeroes;
          auto write = server_->write(flags.begin(), flags.size());
          return write.attach(kj::mv(flags));
        })
        .then([this] { return NextOption(); });
  }

  kj::Promise<void> NextOption() {
    return ReadExactly(*client_, nbd::kOptionHeaderBytes).then([this](kj::Array<kj::byte> h) {
      auto header = nbd::ParseOptionHeader(h.begin());
      if (!header.ok()) {
        return kj::Promise<void>(KJ_EXCEPTION(FAILED, std::string(header.status().message())));
      }
      const uint32_t option = header->option;
      return ReadExactly(*client_, header->length_bytes)
          .then([this, option, h = kj::mv(h)](kj::Array<kj::byte> data) mutable {
            auto bytes = std::make_shared<std::string>(AsString(h) + AsString(data));
            return server_->write(bytes->data(), bytes->size())
                .then([this, option, bytes] { return OptionReplies(option, bytes); });
          });
    });
  }

  // One option reply off `server`: its type and its bytes as sent (header and data).
  struct OptionReply {
    uint32_t type;
    std::string wire;
  };
  static kj::Promise<OptionReply> ReadOptionReply(kj::AsyncIoStream& server) {
    return ReadExactly(server, nbd::kOptionReplyHeaderBytes).then([&server](kj::Array<kj::byte> h) {
      auto header = nbd::ParseOptionReplyHeader(h.begin());
      if (!header.ok()) {
        return kj::Promise<OptionReply>(KJ_EXCEPTION(FAILED, std::string(header.status().message())));
      }
      const uint32_t type = header->type;
      return ReadExactly(server, header->length_bytes)
          .then([type, h = kj::mv(h)](kj::Array<kj::byte> data) {
            return OptionReply{type, AsString(h) + AsString(data)};
          });
    });
  }

  // NBD_OPT_EXPORT_NAME's reply: size, flags and, unless the client said NO_ZEROES, zeroes.
  size_t ExportNameReplyBytes() const { return 8 + 2 + (no_zeroes_ ? 0 : nbd::kExportNameZeroesBytes); }

  kj::Promise<void> OptionReplies(uint32_t option, Wire bytes) {
    if (option == nbd::kOptExportName) {
      return ReadExactly(*server_, ExportNameReplyBytes()).then([this, bytes](kj::Array<kj::byte> reply) {
        final_option_ = *bytes;
        final_is_export_name_ = true;
        auto write = client_->write(reply.begin(), reply.size());
        return write.attach(kj::mv(reply)).then([this] { return Transmission(); });
      });
    }
    return ReadOptionReply(*server_).then([this, option, bytes](OptionReply reply) {
      auto out = std::make_shared<std::string>(std::move(reply.wire));
      const uint32_t type = reply.type;
      return client_->write(out->data(), out->size())
          .attach(kj::mv(out))
          .then([this, option, type, bytes]() -> kj::Promise<void> {
            if (option == nbd::kOptAbort) return kj::READY_NOW;  // the session ends
            if (type == nbd::kRepAck && option == nbd::kOptStructuredReply) {
              return KJ_EXCEPTION(FAILED, "the server offers structured replies, which the relay cannot carry");
            }
            if (type == nbd::kRepAck && option == nbd::kOptGo) {
              final_option_ = *bytes;
              return Transmission();
            }
            if (type == nbd::kRepAck || (type & nbd::kRepFlagError) != 0) return NextOption();
            return OptionReplies(option, bytes);  // more replies to this option
          });
    });
  }

  // The handshake again, on a new server, without the client: the client flags and the
  // option that chose the export; only its final reply matters.
  kj::Promise<void> Rehandshake(kj::AsyncIoStream& server) {
    return ReadExactly(server, nbd::kGreetingBytes)
        .then([this, &server](kj::Array<kj::byte>) {
          auto bytes = std::make_shared<std::string>(client_flags_ + final_option_);
          return server.write(bytes->data(), bytes->size()).attach(kj::mv(bytes));
        })
        .then([this, &server] {
          if (final_is_export_name_) return ReadExactly(server, ExportNameReplyBytes()).ignoreResult();
          return GoReplies(server);
        });
  }

  kj::Promise<void> GoReplies(kj::AsyncIoStream& server) {
    return ReadOptionReply(server).then([this, &server](OptionReply reply) -> kj::Promise<void> {
      if (reply.type == nbd::kRepAck) return kj::READY_NOW;
      if (reply.type == nbd::kRepErrPolicy) {
        refused_ = true;
        return KJ_EXCEPTION(FAILED, "the new server refuses this writer (a newer one was fenced in)");
      }
      if ((reply.type & nbd::kRepFlagError) != 0) {
        return KJ_EXCEPTION(FAILED, absl::StrFormat("the new server refused the export (reply %#x)", reply.type));
      }
      return GoReplies(server);
    });
  }

  // ------------------------------------------------------------------ transmission
  kj::Promise<void> Transmission() {
    client_in_ = kj::heap<Reader>(*client_);
    connected_ = true;
    StartServerReader();
    return ReadRequests();
  }

  // Every whole request buffered is taken before the next read.
  kj::Promise<void> ReadRequests() {
    Reader& in = *client_in_;
    while (in.available() >= nbd::kRequestHeaderBytes) {
      auto req = nbd::ParseRequestHeader(reinterpret_cast<const uint8_t*>(in.data()));
      if (!req.ok()) return KJ_EXCEPTION(FAILED, std::string(req.status().message()));
      if (req->type == nbd::kCmdDisc) {
        closing_ = true;
        MaybeFinish();
        return kj::READY_NOW;
      }
      const size_t payload = req->type == nbd::kCmdWrite ? req->length_bytes : 0;
      if (payload > relay_->options.max_request_bytes) {
        return KJ_EXCEPTION(FAILED, "write payload over the relay's limit");
      }
      const size_t bytes = nbd::kRequestHeaderBytes + payload;
      if (in.available() < bytes) return in.Need(bytes).then([this] { return ReadRequests(); });
      Add(*req, in.data(), bytes);
      in.Skip(bytes);
    }
    return in.Need(nbd::kRequestHeaderBytes).then([this] { return ReadRequests(); });
  }

  // `wire` holds the request as the client sent it (header and any payload).
  void Add(const nbd::Request& req, const char* wire, size_t bytes) {
    const uint64_t handle = next_handle_++;
    Entry e;
    e.client_handle = req.handle;
    e.type = req.type;
    e.flags = req.flags;
    e.length = req.length_bytes;
    e.wire = std::make_shared<std::string>(wire, bytes);
    PutBe64(e.wire->data() + kRequestHandleAt, handle);
    auto& stored = pending_.emplace(handle, std::move(e)).first->second;
    if (connected_ && !replaying_) Send(stored);
  }

  void Send(Entry& e) {
    // A flush covers the writes acknowledged before it was sent.
    if (e.type == nbd::kCmdFlush) e.acked_before = ack_counter_;
    server_out_.push_back(e.wire);
    pump_server_.Request();
  }

  // Writes everything queued (up to kPiecesPerWriteMax messages) in one gathered write.
  void PumpServer() {
    if (server_writing_ || server_out_.empty() || !connected_) return;
    server_writing_ = true;
    auto batch = TakeBatch(server_out_);
    const uint64_t gen = gen_;
    auto pieces = Pieces(*batch);
    // KJ reports some write errors (EPIPE) by throwing at once: as a failed promise here.
    auto write = kj::evalNow([&] { return server_->write(pieces); });
    server_tasks_->add(write.attach(kj::mv(pieces))
                           .then([this, batch, gen] {
                             if (gen != gen_) return;
                             server_writing_ = false;
                             PumpServer();
                           })
                           .catch_([this, gen](kj::Exception&& e) { ServerLost(gen, e); }));
  }

  static std::shared_ptr<std::vector<Wire>> TakeBatch(std::deque<Wire>& queue) {
    auto batch = std::make_shared<std::vector<Wire>>();
    while (!queue.empty() && batch->size() < kPiecesPerWriteMax) {
      batch->push_back(std::move(queue.front()));
      queue.pop_front();
    }
    return batch;
  }

  static kj::Array<kj::ArrayPtr<const kj::byte>> Pieces(const std::vector<Wire>& batch) {
    auto pieces = kj::heapArray<kj::ArrayPtr<const kj::byte>>(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      pieces[i] = kj::arrayPtr(reinterpret_cast<const kj::byte*>(batch[i]->data()), batch[i]->size());
    }
    return pieces;
  }

  void StartServerReader() {
    server_tasks_ = kj::heap<kj::TaskSet>(*this);
    server_in_ = kj::heap<Reader>(*server_);
    const uint64_t gen = gen_;
    server_tasks_->add(kj::evalNow([this, gen] { return ReadReplies(gen); })
                           .catch_([this, gen](kj::Exception&& e) { ServerLost(gen, e); }));
  }

  kj::Promise<void> ReadReplies(uint64_t gen) {
    Reader& in = *server_in_;
    while (in.available() >= nbd::kSimpleReplyHeaderBytes) {
      auto reply = nbd::ParseSimpleReplyHeader(reinterpret_cast<const uint8_t*>(in.data()));
      if (!reply.ok()) return KJ_EXCEPTION(FAILED, std::string(reply.status().message()));
      // A request the client waits for, or (pending_.end()) a replayed acknowledged write.
      const auto it = pending_.find(reply->handle);
      size_t data_bytes = 0;
      if (it != pending_.end()) {
        if (it->second.type == nbd::kCmdRead && reply->error == 0) data_bytes = it->second.length;
      } else if (log_handles_.count(reply->handle) == 0) {
        return KJ_EXCEPTION(FAILED, absl::StrFormat("reply to unknown handle %d", reply->handle));
      }
      const size_t bytes = nbd::kSimpleReplyHeaderBytes + data_bytes;
      if (in.available() < bytes) {
        return in.Need(bytes).then([this, gen] { return ReadReplies(gen); });
      }
      Replied(it, reply->handle, reply->error, in.data(), bytes);
      in.Skip(bytes);
      if (gen != gen_ || ended_) return kj::READY_NOW;
    }
    return in.Need(nbd::kSimpleReplyHeaderBytes).then([this, gen] { return ReadReplies(gen); });
  }

  // `wire` is the server's reply: its header and a read's data. `it` is the request in
  // pending_, or pending_.end() for a replayed write the client already had acknowledged.
  void Replied(std::map<uint64_t, Entry>::iterator it, uint64_t handle, uint32_t error,
               const char* wire, size_t bytes) {
    if (it == pending_.end()) {
      if (error != 0) {
        return End(absl::StrFormat("a replayed acknowledged write failed (error %d): closing the client", error));
      }
      if (replaying_ && --replays_waiting_ == 0) {
        replaying_ = false;
        SendPending();
      }
      return;
    }
    Entry e = std::move(it->second);
    pending_.erase(it);
    if (!e.internal) {
      auto out = std::make_shared<std::string>(wire, bytes);
      PutBe64(out->data() + kReplyHandleAt, e.client_handle);
      client_out_.push_back(std::move(out));
      pump_client_.Request();
    } else {
      relay_flush_in_flight_ = false;
    }
    if (error == 0 && e.type == nbd::kCmdFlush) {
      TrimLog(e.acked_before);
    } else if (error == 0 && Modifies(e.type) && (e.flags & nbd::kCmdFlagFua) == 0) {
      // Acknowledged, not yet durable: kept until a flush covers it.
      const uint64_t seq = ++ack_counter_;
      unflushed_bytes_ += e.wire->size();
      log_handles_[handle] = seq;
      log_.emplace(seq, std::make_pair(handle, e.wire));
    }
    MaybeRelayFlush();
    MaybeFinish();
  }

  void TrimLog(uint64_t acked_before) {
    while (!log_.empty() && log_.begin()->first <= acked_before) {
      unflushed_bytes_ -= log_.begin()->second.second->size();
      log_handles_.erase(log_.begin()->second.first);
      log_.erase(log_.begin());
    }
  }

  void MaybeRelayFlush() {
    if (relay_flush_in_flight_ || !connected_ || replaying_ ||
        unflushed_bytes_ <= relay_->options.unflushed_bytes_max) {
      return;
    }
    relay_flush_in_flight_ = true;
    ++relay_->stats.relay_flushes;
    const uint64_t handle = next_handle_++;
    Entry e;
    e.type = nbd::kCmdFlush;
    e.internal = true;
    uint8_t header[nbd::kRequestHeaderBytes];
    nbd::Request req;
    req.type = nbd::kCmdFlush;
    req.handle = handle;
    nbd::EncodeRequestHeader(req, header);
    e.wire = std::make_shared<std::string>(reinterpret_cast<const char*>(header), sizeof(header));
    Send(pending_.emplace(handle, std::move(e)).first->second);
  }

  void PumpClient() {
    if (client_writing_ || client_out_.empty()) return;
    client_writing_ = true;
    auto batch = TakeBatch(client_out_);
    auto pieces = Pieces(*batch);
    auto write = kj::evalNow([&] { return client_->write(pieces); });
    client_tasks_->add(write.attach(kj::mv(pieces)).then([this, batch] {
      client_writing_ = false;
      PumpClient();
      MaybeFinish();
    }));
  }

  // The client said goodbye: end once every request it sent is answered.
  void MaybeFinish() {
    if (closing_ && pending_.empty() && client_out_.empty() && !client_writing_) End("");
  }

  // ------------------------------------------------------------------ losing a server
  void ServerLost(uint64_t gen, const kj::Exception& e) {
    if (gen != gen_ || ended_) return;
    ++gen_;
    connected_ = false;
    server_writing_ = false;
    server_out_.clear();
    lost_at_ns_ = relay_->loop->NowNanos();
    relay_->Log(absl::StrFormat("session %d lost its server (%s); %d requests waiting, %d acknowledged writes to replay",
                                id_, e.getDescription().cStr(), pending_.size(), log_.size()));
    // Tear the old connection down outside its own continuation, then try again.
    relay_->loop->Post([this, alive = alive_] {
      if (!*alive) return;
      server_tasks_ = nullptr;
      server_in_ = nullptr;
      server_ = nullptr;
      Reconnect();
    });
  }

  void Reconnect() {
    if (ended_) return;
    if (relay_->loop->NowNanos() - lost_at_ns_ > relay_->options.reconnect_timeout_ns) {
      return End(absl::StrFormat("no server for %d s: closing the client",
                                 relay_->options.reconnect_timeout_ns / 1'000'000'000));
    }
    reconnecting_ = kj::heap<kj::TaskSet>(*this);
    reconnecting_->add(
        kj::evalNow([this] { return Connect(); })
            .then([this](kj::Own<kj::AsyncIoStream> server) {
              auto& s = *server;
              return Rehandshake(s).then([this, server = kj::mv(server)]() mutable {
                relay_->loop->Post([this, alive = alive_, s = std::make_shared<kj::Own<kj::AsyncIoStream>>(kj::mv(server))] {
                  if (*alive) Reconnected(kj::mv(*s));
                });
              });
            })
            .catch_([this](kj::Exception&& e) {
              if (refused_) {
                End(e.getDescription().cStr());
                return;
              }
              relay_->loop->RunAfter(relay_->options.retry_interval_ns, [this, alive = alive_] {
                if (*alive) Reconnect();
              });
            }));
  }

  void Reconnected(kj::Own<kj::AsyncIoStream> server) {
    if (ended_) return;
    reconnecting_ = nullptr;
    server_ = kj::mv(server);
    connected_ = true;
    ++relay_->stats.reconnects;
    relay_->Log(absl::StrFormat("session %d reconnected after %d ms", id_,
                                (relay_->loop->NowNanos() - lost_at_ns_) / 1'000'000));
    StartServerReader();
    // Acknowledged writes first, all of them answered before anything else is sent (a
    // flush must not overtake them), then what the client waits for, in order.
    replays_waiting_ = log_.size();
    replaying_ = replays_waiting_ > 0;
    for (auto& [seq, entry] : log_) {
      ++relay_->stats.replayed;
      server_out_.push_back(entry.second);
    }
    pump_server_.Request();
    if (!replaying_) SendPending();
  }

  void SendPending() {
    for (auto& entry : pending_) {
      ++relay_->stats.replayed;
      Send(entry.second);
    }
  }

  void End(const std::string& why) {
    if (ended_) return;
    ended_ = true;
    *alive_ = false;
    if (!why.empty()) relay_->Log(absl::StrFormat("session %d: %s", id_, why));
    relay_->Remove(id_);
  }

  NbdRelay::Impl* relay_;
  const uint64_t id_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  // Streams before the tasks that use them (members die in reverse order).
  kj::Own<kj::AsyncIoStream> client_;
  kj::Own<kj::AsyncIoStream> server_;
  kj::Own<Reader> client_in_;
  kj::Own<Reader> server_in_;
  kj::Own<kj::TaskSet> client_tasks_;
  kj::Own<kj::TaskSet> server_tasks_;
  kj::Own<kj::TaskSet> reconnecting_;
  // Messages go out at the end of the loop turn that produced them, gathered.
  OncePerTurn pump_server_{relay_->loop, [this] { PumpServer(); }};
  OncePerTurn pump_client_{relay_->loop, [this] { PumpClient(); }};

  // Handshake memory, for a new server.
  std::string client_flags_;
  std::string final_option_;
  bool final_is_export_name_ = false;
  bool no_zeroes_ = false;
  bool refused_ = false;

  uint64_t next_handle_ = 1;
  std::map<uint64_t, Entry> pending_;  // by the relay's handle: answers the client waits for
  // Acknowledged writes not yet covered by a flush, by acknowledgement order.
  std::map<uint64_t, std::pair<uint64_t, Wire>> log_;
  std::map<uint64_t, uint64_t> log_handles_;  // relay handle -> acknowledgement number
  uint64_t ack_counter_ = 0;
  uint64_t unflushed_bytes_ = 0;
  bool relay_flush_in_flight_ = false;

  uint64_t gen_ = 0;  // server connection generation
  bool connected_ = false;
  bool replaying_ = false;
  size_t replays_waiting_ = 0;
  int64_t lost_at_ns_ = 0;
  std::deque<Wire> server_out_;
  bool server_writing_ = false;
  std::deque<Wire> client_out_;
  bool client_writing_ = false;
  bool closing_ = false;
  bool ended_ = false;
};

}  // namespace

kj::Promise<void> NbdRelay::Impl::AcceptLoop(kj::ConnectionReceiver* on) {
  return on->accept().then([this, on](kj::Own<kj::AsyncIoStream> client) {
    const uint64_t id = next_session++;
    ++stats.sessions;
    sessions.emplace(id, std::make_unique<Session>(this, id, kj::mv(client)));
    return AcceptLoop(on);
  });
}

void NbdRelay::Impl::Remove(uint64_t id) {
  // Never from inside the session's own continuations: the next loop turn.
  loop->Post([this, id, alive = alive] {
    if (*alive) sessions.erase(id);
  });
}

NbdRelay::NbdRelay(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NbdRelay::~NbdRelay() {
  *impl_->alive = false;
  impl_->accepting = nullptr;
  impl_->listener = nullptr;
  impl_->sessions.clear();
}

std::unique_ptr<NbdRelay> NbdRelay::Create(RealLoop* loop, NbdRelayOptions options) {
  return std::unique_ptr<NbdRelay>(new NbdRelay(std::make_unique<Impl>(loop, std::move(options))));
}

absl::Status NbdRelay::Listen(const std::string& socket_path) {
  StopListening();
  auto fd = nbd::ListenOnUnixSocket(socket_path);
  if (!fd.ok()) return fd.status();
  impl_->listener = impl_->loop->impl()->io.lowLevelProvider->wrapListenSocketFd(
      *fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
               kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC |
               kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK);
  impl_->accepting = kj::heap<kj::TaskSet>(*impl_);
  impl_->accepting->add(impl_->AcceptLoop(impl_->listener.get()));
  return absl::OkStatus();
}

void NbdRelay::StopListening() {
  impl_->accepting = nullptr;
  impl_->listener = nullptr;
}

void NbdRelay::CloseSessions() { impl_->sessions.clear(); }

int NbdRelay::open_sessions() const { return static_cast<int>(impl_->sessions.size()); }

NbdRelayStats NbdRelay::stats() const { return impl_->stats; }

}  // namespace scribe
