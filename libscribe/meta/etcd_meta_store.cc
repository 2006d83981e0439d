// EtcdMetaStore: the MetaStore over etcd's v3 JSON gateway (grpc-gateway on the client
// URL, etcd 3.4). Every call is one HTTP POST of a JSON request body to /v3/...; keys and
// values travel base64-encoded and int64 fields as decimal strings (proto3 JSON).
//
// Unary calls (range, put, deleterange, txn, lease/grant, lease/revoke) answer with one
// JSON object. The streaming ones (lease/keepalive, watch) answer with a chunked body
// of newline-separated {"result": {...}} messages: a keepalive is one request message,
// one result, then the stream ends because our request body ends; a watch stays open
// (etcd keeps the watch after the client's half of the stream closes) until cancelled.
//
// Several members. The store is given every member's client URL and sends each call to
// one member at a time (any member serves any request: followers forward to the
// leader). A call whose connection cannot be made was never sent, so it goes at once to
// the next member; a call that fails after it was sent (no answer in time, the member
// answers "unavailable", e.g. it lost the leader) may or may not have taken effect, so
// it fails UNAVAILABLE as with one member, and the next call starts at the next member.
//
// All KJ work runs inside RealLoop's KJ event loop. Results reach the caller through
// Loop::Post, never from inside a KJ continuation, so a callback may freely destroy the
// store or a watch (destroying a promise from inside its own continuation is not
// allowed in KJ).
#include <kj/compat/http.h>
#include <kj/debug.h>

#include <map>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "libscribe/env/real_loop_internal.h"
#include "scribe/meta_store.h"
#include "scribe/status.h"

namespace scribe {

namespace {

using Json = nlohmann::json;

// Bytes read from a watch stream at a time.
constexpr size_t kWatchReadBytes = 64 * 1024;

std::string Base64(const std::string& bytes) { return absl::Base64Escape(bytes); }

// etcd's range end for "every key starting with `prefix`": the prefix with its last
// byte below 0xff incremented (and what follows dropped); "\0" (no upper bound) when
// there is no such byte.
std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    const unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

// The range of a prefix as request fields ("" means every key: from "\0" to no bound).
void SetPrefixRange(Json& request, const std::string& prefix) {
  request["key"] = Base64(prefix.empty() ? std::string(1, '\0') : prefix);
  request["range_end"] = Base64(PrefixEnd(prefix));
}

// Lenient accessors: proto3 JSON omits fields at their default value, and encodes int64
// as strings. A missing or mistyped field reads as its default.
const Json* Field(const Json* object, const char* name) {
  if (object == nullptr || !object->is_object()) return nullptr;
  auto it = object->find(name);
  return it == object->end() ? nullptr : &*it;
}
const Json* Field(const Json& object, const char* name) { return Field(&object, name); }

int64_t Int(const Json* object, const char* name) {
  const Json* f = Field(object, name);
  if (f == nullptr) return 0;
  if (f->is_number_integer()) return f->get<int64_t>();
  int64_t value = 0;
  if (f->is_string() && absl::SimpleAtoi(f->get_ref<const std::string&>(), &value)) return value;
  return 0;
}

bool Bool(const Json* object, const char* name) {
  const Json* f = Field(object, name);
  return f != nullptr && f->is_boolean() && f->get<bool>();
}

std::string Str(const Json* object, const char* name) {
  const Json* f = Field(object, name);
  return f != nullptr && f->is_string() ? f->get<std::string>() : std::string();
}

int64_t Int(const Json& object, const char* name) { return Int(&object, name); }
bool Bool(const Json& object, const char* name) { return Bool(&object, name); }
std::string Str(const Json& object, const char* name) { return Str(&object, name); }

bool DecodeBytes(const Json* object, const char* name, std::string* out) {
  out->clear();
  const Json* f = Field(object, name);
  if (f == nullptr) return true;
  return f->is_string() && absl::Base64Unescape(f->get_ref<const std::string&>(), out);
}

bool DecodeKeyValue(const Json* kv, KeyValue* out) {
  if (kv == nullptr || !kv->is_object()) return false;
  if (!DecodeBytes(kv, "key", &out->key) || !DecodeBytes(kv, "value", &out->value)) return false;
  out->create_revision = Int(kv, "create_revision");
  out->mod_revision = Int(kv, "mod_revision");
  out->lease = LeaseId{Int(kv, "lease")};
  return true;
}

int64_t HeaderRevision(const Json& response) { return Int(Field(response, "header"), "revision"); }

// gRPC status codes have the same numbers as absl's.
absl::StatusCode CodeFromGrpc(int64_t code) {
  if (code <= 0 || code > static_cast<int64_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::StatusCode::kUnknown;
  }
  // etcd's "request timed out" / "leader changed" are the store being unable to answer:
  // the caller sees UNAVAILABLE, as when it cannot reach etcd at all.
  if (code == static_cast<int64_t>(absl::StatusCode::kDeadlineExceeded)) {
    return absl::StatusCode::kUnavailable;
  }
  return static_cast<absl::StatusCode>(code);
}

}  // namespace

struct EtcdMetaStore::Impl : public kj::TaskSet::ErrorHandler {
  struct WatchStream {
    uint64_t id = 0;
    std::string prefix;
    int64_t next_revision = 0;  // the first revision not yet delivered; 0 = not known yet
    bool ended = false;
    WatchCallback on_event;
    std::string buffer;  // received bytes not yet forming a whole message
    kj::Array<kj::byte> chunk = kj::heapArray<kj::byte>(kWatchReadBytes);
    // Declared in this order so that the task (which reads `body`) goes first.
    kj::Own<kj::AsyncInputStream> body;
    kj::Promise<void> task = nullptr;
  };

  class Handle : public WatchHandle {
   public:
    Handle(Impl* impl, uint64_t id) : impl_(impl), alive_(impl->alive), id_(id) {}
    ~Handle() override {
      if (*alive_) impl_->watches.erase(id_);
    }

   private:
    Impl* impl_;
    std::shared_ptr<bool> alive_;
    uint64_t id_;
  };

  Impl(RealLoop* loop, EtcdMetaStoreOptions options, std::vector<std::string> members)
      : loop(loop),
        options(std::move(options)),
        address(absl::StrJoin(members, ",")),
        members(std::move(members)),
        resolved(this->members.size()) {}
  ~Impl() noexcept(false) { *alive = false; }

  void taskFailed(kj::Exception&& exception) override {
    // Every call's promise converts its errors into a Status; one escaping means a
    // callback would never run.
    KJ_LOG(FATAL, "etcd meta store task failed", exception);
    SCRIBE_CHECK(false);
  }

  kj::Timer& timer() { return loop->impl()->io.provider->getTimer(); }

  static absl::Status Unavailable(const std::string& member, const std::string& why) {
    return absl::UnavailableError(absl::StrFormat("etcd at %s: %s", member, why));
  }

  // The member calls go to after `failed` (an index into members) let one down.
  void Rotate(size_t failed) {
    if (current == failed) current = (failed + 1) % members.size();
  }

  // One connection, to the current member or, when it cannot be reached, the next ones
  // (each tried once). No connection is reused: etcd's gateway ends error answers with
  // HTTP trailers (Grpc-Trailer-Content-Type), which kj-http 0.9 leaves unread on the
  // connection, so the next answer on it would not parse. A connection per call costs
  // one loopback or LAN handshake, small next to a raft round.
  struct Connection {
    size_t member;
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<kj::HttpClient> client;
  };
  kj::Promise<kj::Own<Connection>> Connect(size_t tried = 0) {
    const size_t member = current;
    kj::Promise<void> ready = kj::READY_NOW;
    if (resolved[member].get() == nullptr) {
      ready = loop->impl()->io.provider->getNetwork().parseAddress(members[member]).then(
          [this, member](kj::Own<kj::NetworkAddress> address) {
            if (resolved[member].get() == nullptr) resolved[member] = kj::mv(address);
          });
    }
    return ready.then([this, member]() { return resolved[member]->connect(); })
        .then(
            [this, member](kj::Own<kj::AsyncIoStream> stream) -> kj::Promise<kj::Own<Connection>> {
              auto c = kj::heap<Connection>();
              c->member = member;
              c->stream = kj::mv(stream);
              c->client = kj::newHttpClient(table, *c->stream);
              return kj::mv(c);
            },
            [this, member, tried](kj::Exception&& e) -> kj::Promise<kj::Own<Connection>> {
              // Nothing was sent: the next member can take the call.
              Rotate(member);
              if (tried + 1 >= members.size()) return kj::mv(e);
              return Connect(tried + 1);
            });
  }

  // The member a call or watch went to, once it is connected.
  static constexpr size_t kNoMember = ~size_t{0};
  using MemberOut = std::shared_ptr<size_t>;

  // Starts POST `path` with `body`; resolves once the response headers arrived (its
  // body holds the connection). Sets `*member_out` when connected.
  kj::Promise<kj::HttpClient::Response> Post(const char* path, std::string body_text, MemberOut member_out) {
    return Connect().then([this, path, body_text = std::move(body_text),
                           member_out](kj::Own<Connection> c) {
      *member_out = c->member;
      kj::HttpHeaders headers(table);
      headers.set(kj::HttpHeaderId::HOST, members[c->member]);
      headers.set(kj::HttpHeaderId::CONTENT_TYPE, "application/json");
      kj::String body = kj::heapString(body_text.data(), body_text.size());
      auto request = c->client->request(kj::HttpMethod::POST, path, headers, body.size());
      auto written = request.body->write(body.begin(), body.size());
      // Dropping the body stream ends our half of the request.
      return written.attach(kj::mv(request.body), kj::mv(body))
          .then([response = kj::mv(request.response)]() mutable { return kj::mv(response); })
          .then([c = kj::mv(c)](kj::HttpClient::Response response) mutable {
            response.body = response.body.attach(kj::mv(c));
            return kj::mv(response);
          });
    });
  }

  // Turns a unary (or single-message streaming) response into its JSON object, or the
  // error etcd reported.
  static absl::StatusOr<Json> ParseResponse(const std::string& address, uint status_code,
                                            kj::StringPtr text) {
    // Streaming answers hold one message a line; only the first matters here.
    std::string_view body(text.cStr(), text.size());
    body = body.substr(0, body.find('\n'));
    Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (status_code != 200) {
      const int64_t code = Int(json, "code");
      std::string message = Str(json, "message");
      if (message.empty()) message = absl::StrFormat("HTTP %d %s", status_code, std::string(body));
      if (code == 0) {
        return absl::Status(
            status_code >= 500 ? absl::StatusCode::kUnavailable : absl::StatusCode::kInternal,
            absl::StrFormat("etcd at %s: %s", address, message));
      }
      return absl::Status(CodeFromGrpc(code), absl::StrFormat("etcd at %s: %s", address, message));
    }
    if (json.is_discarded() || !json.is_object()) {
      return absl::InternalError(
          absl::StrFormat("etcd at %s: unparseable answer: %.200s", address, std::string(body)));
    }
    if (const Json* error = Field(json, "error"); error != nullptr && error->is_object()) {
      // An error inside a stream: {"error": {"grpc_code": N, "message": "..."}}.
      return absl::Status(CodeFromGrpc(Int(*error, "grpc_code")),
                          absl::StrFormat("etcd at %s: %s", address, Str(*error, "message")));
    }
    if (const Json* result = Field(json, "result"); result != nullptr && result->is_object()) {
      return *result;
    }
    return json;
  }

  // One call: POST, read the whole answer, parse it; never throws, never outlives the
  // request timeout. A call that fails UNAVAILABLE sends the next one to the next member.
  kj::Promise<absl::StatusOr<Json>> Call(const char* path, const Json& request) {
    const size_t limit = options.response_bytes_max;
    auto member = std::make_shared<size_t>(kNoMember);
    auto answer =
        Post(path, request.dump(), member)
            .then([this, limit, member](kj::HttpClient::Response response) {
              const uint status_code = response.statusCode;
              auto text = response.body->readAllText(limit);
              return text.attach(kj::mv(response.body))
                  .then([this, status_code, member](kj::String text) {
                    return ParseResponse(members[*member], status_code, text);
                  });
            })
            .catch_([this, member](kj::Exception&& e) -> absl::StatusOr<Json> {
              return Unavailable(MemberName(*member), e.getDescription().cStr());
            });
    const int64_t timeout_ms = options.request_timeout_ms;
    auto timeout = timer()
                       .afterDelay(timeout_ms * kj::MILLISECONDS)
                       .then([this, timeout_ms, member]() -> absl::StatusOr<Json> {
                         return Unavailable(MemberName(*member),
                                            absl::StrFormat("no answer within %d ms", timeout_ms));
                       });
    return answer.exclusiveJoin(kj::mv(timeout))
        .then([this, member](absl::StatusOr<Json> result) {
          // (Members that could not be connected to were passed over already.)
          if (result.status().code() == absl::StatusCode::kUnavailable && *member != kNoMember) {
            Rotate(*member);
          }
          return result;
        });
  }

  // The member's address, or every member's when the call reached none.
  const std::string& MemberName(size_t member) const {
    return member == kNoMember ? address : members[member];
  }

  // Hands `fn` to the loop, unless the store is destroyed first.
  void Deliver(std::function<void()> fn) {
    loop->Post([alive = alive, fn = std::move(fn)] {
      if (*alive) fn();
    });
  }

  // Runs a call and reports `decode(answer)` (or the call's error) to `done`.
  template <typename T>
  void Run(const char* path, const Json& request,
           std::function<absl::StatusOr<T>(const Json&)> decode, Done<T> done) {
    tasks.add(Call(path, request)
                  .then([this, decode = std::move(decode),
                         done = std::move(done)](absl::StatusOr<Json> answer) {
                    absl::StatusOr<T> result = answer.ok() ? decode(*answer) : answer.status();
                    Deliver([done, result] { done(result); });
                  }));
  }

  // --- Watches ---

  // Opens the stream (from next_revision if known) and reads it until it breaks or the
  // watch ends; then, unless ended, opens it again after watch_retry_ms.
  kj::Promise<void> WatchLoop(WatchStream* w) {
    return OpenAndReadWatch(w)
        .then([]() { return true; }, [](kj::Exception&&) { return true; })
        .then([this, w](bool) -> kj::Promise<void> {
          w->body = nullptr;
          w->buffer.clear();
          if (w->ended) return kj::READY_NOW;
          return timer().afterDelay(options.watch_retry_ms * kj::MILLISECONDS).then([this, w]() {
            return WatchLoop(w);
          });
        });
  }

  kj::Promise<void> OpenAndReadWatch(WatchStream* w) {
    Json create;
    SetPrefixRange(create, w->prefix);
    if (w->next_revision > 0) create["start_revision"] = std::to_string(w->next_revision);
    Json request;
    request["create_request"] = create;
    auto member = std::make_shared<size_t>(kNoMember);
    auto opened = Post("/v3/watch", request.dump(), member);
    // Opening is bounded like any call; an open stream may then be silent for any time.
    auto timeout = timer()
                       .afterDelay(options.request_timeout_ms * kj::MILLISECONDS)
                       .then([this, member]() -> kj::Promise<kj::HttpClient::Response> {
                         if (*member != kNoMember) Rotate(*member);
                         return KJ_EXCEPTION(DISCONNECTED, "watch not answered in time");
                       });
    return opened.exclusiveJoin(kj::mv(timeout))
        .then([this, w, member](kj::HttpClient::Response response) -> kj::Promise<void> {
          if (response.statusCode != 200) {
            Rotate(*member);
            return KJ_EXCEPTION(FAILED, "watch refused", response.statusCode);
          }
          w->body = kj::mv(response.body);
          return ReadWatch(w);
        });
  }

  kj::Promise<void> ReadWatch(WatchStream* w) {
    return w->body->tryRead(w->chunk.begin(), 1, w->chunk.size())
        .then([this, w](size_t n) -> kj::Promise<void> {
          if (n == 0) return KJ_EXCEPTION(DISCONNECTED, "watch stream ended");
          w->buffer.append(reinterpret_cast<const char*>(w->chunk.begin()), n);
          size_t newline;
          while ((newline = w->buffer.find('\n')) != std::string::npos) {
            const std::string line = w->buffer.substr(0, newline);
            w->buffer.erase(0, newline + 1);
            if (!HandleWatchMessage(w, line)) return KJ_EXCEPTION(FAILED, "bad watch message");
            if (w->ended) return kj::READY_NOW;
          }
          if (w->buffer.size() > options.response_bytes_max) {
            return KJ_EXCEPTION(FAILED, "watch message too large");
          }
          return ReadWatch(w);
        });
  }

  // Handles one stream message; false if the stream is unusable (it is then re-opened).
  bool HandleWatchMessage(WatchStream* w, const std::string& line) {
    Json message = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    const Json* result = Field(message, "result");
    if (result == nullptr || !result->is_object()) return false;
    if (Bool(*result, "canceled")) {
      const int64_t compact_revision = Int(*result, "compact_revision");
      if (compact_revision == 0) return false;  // cancelled for another reason: retry
      w->ended = true;
      WatchEvent event;
      event.type = WatchEvent::Type::kCompacted;
      event.revision = compact_revision;
      DeliverWatchEvent(w->id, std::move(event));
      return true;
    }
    if (Bool(*result, "created") && w->next_revision == 0) {
      w->next_revision = HeaderRevision(*result) + 1;
    }
    const Json* events = Field(*result, "events");
    if (events == nullptr) return true;
    if (!events->is_array()) return false;
    int64_t last_revision = 0;
    for (const Json& e : *events) {
      KeyValue kv;
      if (!DecodeKeyValue(Field(e, "kv"), &kv)) return false;
      // A re-opened stream starts at next_revision; anything older was delivered.
      if (kv.mod_revision < w->next_revision) continue;
      WatchEvent event;
      event.type = Str(e, "type") == "DELETE" ? WatchEvent::Type::kDelete : WatchEvent::Type::kPut;
      event.key = std::move(kv.key);
      event.value = std::move(kv.value);
      event.revision = kv.mod_revision;
      last_revision = std::max(last_revision, event.revision);
      DeliverWatchEvent(w->id, std::move(event));
    }
    // etcd never splits one revision's events across messages (no fragmenting asked).
    if (last_revision >= w->next_revision) w->next_revision = last_revision + 1;
    return true;
  }

  void DeliverWatchEvent(uint64_t id, WatchEvent event) {
    Deliver([this, id, event = std::move(event)] {
      auto it = watches.find(id);
      if (it == watches.end()) return;                // cancelled meanwhile
      WatchCallback on_event = it->second->on_event;  // the callback may cancel the watch
      on_event(event);
    });
  }

  RealLoop* loop;
  EtcdMetaStoreOptions options;
  std::string address;               // every member's host:port, comma-separated
  std::vector<std::string> members;  // host:port each
  size_t current = 0;                // the member calls go to
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  kj::HttpHeaderTable table;
  // Declared so that destruction runs bottom-up: calls and watches first, then the
  // addresses they connect to.
  std::vector<kj::Own<kj::NetworkAddress>> resolved;  // per member, once parsed
  std::map<uint64_t, std::unique_ptr<WatchStream>> watches;
  uint64_t next_watch_id = 1;
  kj::TaskSet tasks{*this};
};

absl::StatusOr<std::unique_ptr<EtcdMetaStore>> EtcdMetaStore::Create(RealLoop* loop,
                                                                     EtcdMetaStoreOptions options) {
  std::vector<std::string> members;
  for (absl::string_view endpoint : absl::StrSplit(options.endpoint, ',')) {
    std::string address(absl::StripAsciiWhitespace(endpoint));
    if (absl::StartsWith(address, "https://")) {
      return absl::UnimplementedError("etcd over TLS is not supported: " + address);
    }
    if (absl::StartsWith(address, "http://")) address = address.substr(7);
    while (!address.empty() && address.back() == '/') address.pop_back();
    if (address.empty() || address.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrFormat("bad etcd endpoint \"%s\" in \"%s\"", std::string(endpoint), options.endpoint));
    }
    if (address.find(':') == std::string::npos) address += ":2379";
    members.push_back(std::move(address));
  }
  if (options.request_timeout_ms <= 0 || options.watch_retry_ms <= 0 ||
      options.response_bytes_max == 0) {
    return absl::InvalidArgumentError("etcd meta store options out of range");
  }
  auto impl = std::make_unique<Impl>(loop, std::move(options), std::move(members));
  return std::unique_ptr<EtcdMetaStore>(new EtcdMetaStore(loop, std::move(impl)));
}

EtcdMetaStore::EtcdMetaStore(RealLoop* loop, std::unique_ptr<Impl> impl)
    : MetaStore(loop), impl_(std::move(impl)) {}

EtcdMetaStore::~EtcdMetaStore() = default;

const std::string& EtcdMetaStore::address() const { return impl_->address; }

void EtcdMetaStore::DoGet(const std::string& key, Done<std::optional<KeyValue>> done) {
  Json request;
  request["key"] = Base64(key);
  impl_->Run<std::optional<KeyValue>>(
      "/v3/kv/range", request,
      [impl = impl_.get()](const Json& answer) -> absl::StatusOr<std::optional<KeyValue>> {
        const Json* kvs = Field(answer, "kvs");
        if (kvs == nullptr || !kvs->is_array() || kvs->empty()) return std::optional<KeyValue>();
        KeyValue kv;
        if (!DecodeKeyValue(&(*kvs)[0], &kv)) {
          return absl::InternalError("etcd at " + impl->address + ": bad key-value");
        }
        return std::optional<KeyValue>(std::move(kv));
      },
      std::move(done));
}

void EtcdMetaStore::DoList(const std::string& prefix, Done<ListResult> done) {
  Json request;
  SetPrefixRange(request, prefix);
  impl_->Run<ListResult>(
      "/v3/kv/range", request,
      [impl = impl_.get()](const Json& answer) -> absl::StatusOr<ListResult> {
        ListResult result;
        result.revision = HeaderRevision(answer);
        const Json* kvs = Field(answer, "kvs");
        if (kvs == nullptr || !kvs->is_array()) return result;
        for (const Json& j : *kvs) {
          KeyValue kv;
          if (!DecodeKeyValue(&j, &kv)) {
            return absl::InternalError("etcd at " + impl->address + ": bad key-value");
          }
          result.kvs.push_back(std::move(kv));
        }
        return result;
      },
      std::move(done));
}

void EtcdMetaStore::DoPut(const std::string& key, const std::string& value, LeaseId lease,
                          Done<int64_t> done) {
  Json request;
  request["key"] = Base64(key);
  request["value"] = Base64(value);
  if (lease.valid()) request["lease"] = std::to_string(lease.value);
  impl_->Run<int64_t>(
      "/v3/kv/put", request,
      [](const Json& answer) -> absl::StatusOr<int64_t> { return HeaderRevision(answer); },
      std::move(done));
}

void EtcdMetaStore::DoDelete(const std::string& key, Done<bool> done) {
  Json request;
  request["key"] = Base64(key);
  impl_->Run<bool>(
      "/v3/kv/deleterange", request,
      [](const Json& answer) -> absl::StatusOr<bool> { return Int(answer, "deleted") > 0; },
      std::move(done));
}

void EtcdMetaStore::DoCompareAndSwap(const std::string& key, int64_t expected_mod_revision,
                                     const std::string& value, LeaseId lease,
                                     Done<CasResult> done) {
  // A key that does not exist compares as mod_revision 0 in etcd.
  Json compare;
  compare["key"] = Base64(key);
  compare["target"] = "MOD";
  compare["result"] = "EQUAL";
  compare["mod_revision"] = std::to_string(expected_mod_revision);
  Json put;
  put["key"] = Base64(key);
  put["value"] = Base64(value);
  if (lease.valid()) put["lease"] = std::to_string(lease.value);
  Json request;
  request["compare"] = Json::array({compare});
  request["success"] = Json::array({Json{{"request_put", put}}});
  impl_->Run<CasResult>(
      "/v3/kv/txn", request,
      [](const Json& answer) -> absl::StatusOr<CasResult> {
        return CasResult{Bool(answer, "succeeded"), HeaderRevision(answer)};
      },
      std::move(done));
}

void EtcdMetaStore::DoGrantLease(int64_t ttl_ms, Done<Lease> done) {
  Json request;
  request["TTL"] = std::to_string((ttl_ms + 999) / 1000);  // etcd leases are whole seconds
  impl_->Run<Lease>(
      "/v3/lease/grant", request,
      [impl = impl_.get()](const Json& answer) -> absl::StatusOr<Lease> {
        const int64_t id = Int(answer, "ID");
        if (id <= 0) {
          return absl::UnavailableError("etcd at " + impl->address +
                                        ": lease not granted: " + Str(answer, "error"));
        }
        return Lease{LeaseId{id}, Int(answer, "TTL") * 1000};
      },
      std::move(done));
}

void EtcdMetaStore::DoKeepAlive(LeaseId lease, Done<int64_t> done) {
  Json request;
  request["ID"] = std::to_string(lease.value);
  impl_->Run<int64_t>(
      "/v3/lease/keepalive", request,
      [impl = impl_.get(), lease](const Json& answer) -> absl::StatusOr<int64_t> {
        // etcd answers an unknown or expired lease with TTL 0 (omitted).
        const int64_t ttl_s = Int(answer, "TTL");
        if (ttl_s <= 0) {
          return absl::NotFoundError(
              absl::StrFormat("etcd at %s: lease %d not found", impl->address, lease.value));
        }
        return ttl_s * 1000;
      },
      std::move(done));
}

void EtcdMetaStore::DoRevokeLease(LeaseId lease, StatusDone done) {
  Json request;
  request["ID"] = std::to_string(lease.value);
  impl_->Run<bool>(
      "/v3/lease/revoke", request, [](const Json&) -> absl::StatusOr<bool> { return true; },
      [done = std::move(done)](absl::StatusOr<bool> result) { done(result.status()); });
}

std::unique_ptr<WatchHandle> EtcdMetaStore::DoWatch(const std::string& prefix,
                                                    int64_t start_revision,
                                                    WatchCallback on_event) {
  const uint64_t id = impl_->next_watch_id++;
  auto stream = std::make_unique<Impl::WatchStream>();
  stream->id = id;
  stream->prefix = prefix;
  stream->next_revision = start_revision;
  stream->on_event = std::move(on_event);
  Impl::WatchStream* w = stream.get();
  impl_->watches.emplace(id, std::move(stream));
  w->task = impl_->WatchLoop(w).eagerlyEvaluate(nullptr);
  return std::make_unique<Impl::Handle>(impl_.get(), id);
}

}  // namespace scribe
