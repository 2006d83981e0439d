// The cluster-state seam: a small, strongly consistent key-value store with revisions,
// leases and watches — the subset of etcd's v3 API the cluster needs for node liveness
// (leased keys), VM ownership with epochs (compare-and-swap on a key's mod_revision),
// registries and configuration. Production uses etcd (EtcdMetaStore); unit tests and
// the deterministic simulator use InMemoryMetaStore, which has the same semantics on a
// Loop's clock. Both pass one conformance suite (libscribe/meta/conformance.h).
//
// Model (etcd's). The store has one revision counter, starting at 1, that grows by one
// with every change: a Put, a successful CompareAndSwap, a Delete that removed a key, or
// a lease ending (expiry or RevokeLease) that removed keys (all of them in one
// revision). Each key remembers the revision that created it and the one that last
// changed it (`mod_revision`). Keys and values are arbitrary bytes.
//
// Leases. GrantLease makes a lease with a TTL; keys put with it are deleted when the TTL
// passes without a KeepAlive (which restarts the full TTL) or when it is revoked. The
// store may round a TTL up (etcd grants whole seconds, and at least its minimum); the
// granted TTL is returned. Expiry is never early: a lease lives at least its TTL, by
// the store's clock, after the store granted or last renewed it; it may end somewhat
// later (etcd checks every 500 ms, and restarts every lease's TTL when it elects a
// leader, e.g. after a restart). Renew well before expiry (every third of the TTL).
//
// Errors. Operating errors are absl::Status: UNAVAILABLE when the store cannot be
// reached or did not answer within the implementation's request timeout (the message
// names the store's address; a write that failed this way may or may not have been
// applied), NOT_FOUND for an unknown or expired lease, INVALID_ARGUMENT for a key or
// value outside the limits below. No call hangs: every call completes, with a result
// or an error, within the implementation's timeout.
//
// Threading and ownership: single-threaded. Every method must be called on the store's
// Loop thread; every callback runs on that loop, from a loop callback, never from
// inside the call that started the operation. Calls in flight when a store is destroyed
// never complete (their callbacks are dropped); no callback runs after destruction.
#ifndef SCRIBE_META_STORE_H_
#define SCRIBE_META_STORE_H_

#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "scribe/env.h"
#include "scribe/real_env.h"

namespace scribe {

// A lease handed out by GrantLease. The invalid (zero) id means "no lease".
struct LeaseId {
  int64_t value = 0;
  auto operator<=>(const LeaseId&) const = default;
  bool valid() const { return value != 0; }
};

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  LeaseId lease;  // invalid if the key has none
};

struct ListResult {
  std::vector<KeyValue> kvs;  // sorted by key (bytewise)
  int64_t revision = 0;       // the store revision the list was read at
};

struct CasResult {
  bool succeeded = false;
  // Succeeded: the key's new mod_revision. Failed: the store revision the comparison
  // was made at.
  int64_t revision = 0;
};

struct Lease {
  LeaseId id;
  int64_t ttl_ms = 0;  // as granted (may be more than asked)
};

struct WatchEvent {
  enum class Type {
    kPut,
    kDelete,
    // The history the watch needed (from its start revision, or from where it was when
    // the store became reachable again) is gone. Delivered once, as the last event: the
    // watch has ended. Re-read with List and watch again from its revision + 1.
    kCompacted,
  };
  Type type = Type::kPut;
  std::string key;       // empty for kCompacted
  std::string value;     // empty for kDelete and kCompacted
  int64_t revision = 0;  // the change's revision; for kCompacted, the oldest one kept
};

// Cancels its watch when destroyed: no event is delivered after that. May be destroyed
// before or after the store, and from inside the watch's own callback.
class WatchHandle {
 public:
  virtual ~WatchHandle() = default;
};

class MetaStore {
 public:
  template <typename T>
  using Done = std::function<void(absl::StatusOr<T>)>;
  using StatusDone = std::function<void(absl::Status)>;
  using WatchCallback = std::function<void(const WatchEvent&)>;

  // Limits every implementation enforces (INVALID_ARGUMENT beyond them); both fit in
  // etcd's default 1.5 MiB request limit after base64.
  static constexpr size_t kKeyBytesMax = 4096;
  static constexpr size_t kValueBytesMax = 1u << 20;
  static constexpr int64_t kLeaseTtlMsMax = 24ll * 3600 * 1000;

  virtual ~MetaStore() = default;

  // The key's current value and revisions, or nullopt if it does not exist.
  void Get(const std::string& key, Done<std::optional<KeyValue>> done);
  // Every key starting with `prefix` ("" = all keys), sorted.
  void List(const std::string& prefix, Done<ListResult> done);
  // Sets the key; with a valid `lease`, the key goes when the lease ends (NOT_FOUND if
  // the lease does not exist). Yields the key's new mod_revision.
  void Put(const std::string& key, const std::string& value, LeaseId lease, Done<int64_t> done);
  void Put(const std::string& key, const std::string& value, Done<int64_t> done) {
    Put(key, value, LeaseId{}, std::move(done));
  }
  // Removes the key. Yields whether it existed.
  void Delete(const std::string& key, Done<bool> done);
  // Sets the key only if its mod_revision is `expected_mod_revision` (0: only if the key
  // does not exist), atomically (one etcd transaction). A failed comparison is not an
  // error: it yields succeeded = false.
  void CompareAndSwap(const std::string& key, int64_t expected_mod_revision,
                      const std::string& value, LeaseId lease, Done<CasResult> done);
  void GrantLease(int64_t ttl_ms, Done<Lease> done);
  // One renewal (the caller schedules them). Yields the TTL restarted, in ms; NOT_FOUND
  // if the lease already ended.
  void KeepAlive(LeaseId lease, Done<int64_t> done);
  // Ends the lease now, deleting its keys. NOT_FOUND if it already ended.
  void RevokeLease(LeaseId lease, StatusDone done);

  // Calls `on_event` for every change to a key starting with `prefix`, in revision order
  // (events of one revision in the order they were made), each once, from
  // `start_revision` on (0: from whatever revision is current when the store sets the
  // watch up, which may be after Watch returns — to miss nothing, List and watch from
  // its revision + 1). While the store is unreachable the watch retries by itself and
  // resumes where it stopped, so no event is lost or repeated; if the history it needs
  // is gone it delivers kCompacted and ends. Destroying the handle cancels it.
  std::unique_ptr<WatchHandle> Watch(const std::string& prefix, int64_t start_revision,
                                     WatchCallback on_event);

 protected:
  explicit MetaStore(Loop* loop) : loop_(loop) {}
  Loop* loop() const { return loop_; }

  // Implementations: arguments are already checked against the limits above.
  virtual void DoGet(const std::string& key, Done<std::optional<KeyValue>> done) = 0;
  virtual void DoList(const std::string& prefix, Done<ListResult> done) = 0;
  virtual void DoPut(const std::string& key, const std::string& value, LeaseId lease,
                     Done<int64_t> done) = 0;
  virtual void DoDelete(const std::string& key, Done<bool> done) = 0;
  virtual void DoCompareAndSwap(const std::string& key, int64_t expected_mod_revision,
                                const std::string& value, LeaseId lease, Done<CasResult> done) = 0;
  virtual void DoGrantLease(int64_t ttl_ms, Done<Lease> done) = 0;
  virtual void DoKeepAlive(LeaseId lease, Done<int64_t> done) = 0;
  virtual void DoRevokeLease(LeaseId lease, StatusDone done) = 0;
  virtual std::unique_ptr<WatchHandle> DoWatch(const std::string& prefix, int64_t start_revision,
                                               WatchCallback on_event) = 0;

 private:
  void Fail(absl::Status status, StatusDone done);
  Loop* loop_;
};

struct InMemoryMetaStoreOptions {
  // Every call, and every watch delivery, completes this long after it is made (0: on
  // the next loop turn).
  int64_t latency_ns = 0;
  // Change events kept for watches that start in the past or fall behind while their
  // client is unavailable; older ones are compacted away.
  size_t history_events_max = 100'000;
};

// The MetaStore of unit tests and the simulator: etcd's semantics held in memory, leases
// timed by the Loop's clock (so they expire in virtual time on a SimLoop), deterministic
// (lease ids count up from 1; nothing depends on hash order).
//
// Several clients can share one store (NewClient), as the nodes of a simulated cluster
// share one etcd; each client has its own watches and its own availability, so one node
// can be cut off from the store while the others carry on. While a client is
// unavailable its calls fail UNAVAILABLE and its watches pause (then catch up, as an
// etcd watch resumes); leases keep running out, as they would on a real etcd that a
// node cannot reach.
class InMemoryMetaStore : public MetaStore {
 public:
  // `loop` must outlive the store and every client.
  static std::unique_ptr<InMemoryMetaStore> Create(Loop* loop,
                                                   InMemoryMetaStoreOptions options = {});
  ~InMemoryMetaStore() override;

  // Another client of the same data. The data lives as long as any client does.
  std::unique_ptr<InMemoryMetaStore> NewClient();

  // Fault hook: while false, this client's calls fail UNAVAILABLE (calls already in
  // flight too) and its watches deliver nothing.
  void SetAvailable(bool available);
  bool available() const;

  // The store's current revision (for tests and simulator invariants).
  int64_t revision() const;

 protected:
  void DoGet(const std::string& key, Done<std::optional<KeyValue>> done) override;
  void DoList(const std::string& prefix, Done<ListResult> done) override;
  void DoPut(const std::string& key, const std::string& value, LeaseId lease,
             Done<int64_t> done) override;
  void DoDelete(const std::string& key, Done<bool> done) override;
  void DoCompareAndSwap(const std::string& key, int64_t expected_mod_revision,
                        const std::string& value, LeaseId lease, Done<CasResult> done) override;
  void DoGrantLease(int64_t ttl_ms, Done<Lease> done) override;
  void DoKeepAlive(LeaseId lease, Done<int64_t> done) override;
  void DoRevokeLease(LeaseId lease, StatusDone done) override;
  std::unique_ptr<WatchHandle> DoWatch(const std::string& prefix, int64_t start_revision,
                                       WatchCallback on_event) override;

 private:
  struct State;
  class Client;
  InMemoryMetaStore(Loop* loop, std::shared_ptr<State> state);
  std::unique_ptr<Client> client_;
};

struct EtcdMetaStoreOptions {
  // The client URL of each etcd member, comma-separated: "http://127.0.0.1:2379" or
  // "127.0.0.1:2379,127.0.0.1:2381,127.0.0.1:2383".
  std::string endpoint = "http://127.0.0.1:2379";
  // A call not answered in this time fails UNAVAILABLE (connecting included).
  int64_t request_timeout_ms = 5'000;
  // A broken watch stream is re-opened after this long.
  int64_t watch_retry_ms = 500;
  // Larger responses (a List of a huge prefix, one watch message) fail UNAVAILABLE.
  size_t response_bytes_max = 64u << 20;
};

// MetaStore over etcd's v3 JSON gateway (etcd 3.4: /v3/kv/*, /v3/lease/*, /v3/watch on
// the client URL), with kj-http on a RealLoop. Each watch is one long-lived streaming
// POST /v3/watch, re-opened from the next unseen revision when it breaks. Every other
// call uses a connection of its own (see etcd_meta_store.cc for why). Calls go to one
// member at a time and move on to the next when it cannot be reached (a call never sent
// is tried on the next member at once) or fails UNAVAILABLE. No TLS, no authentication.
//
// DO NOT CONSTRUCT THIS in a library: a daemon's main() creates it and hands the
// MetaStore down.
class EtcdMetaStore : public MetaStore {
 public:
  // Does not contact etcd (the first call does). `loop` must outlive the store.
  static absl::StatusOr<std::unique_ptr<EtcdMetaStore>> Create(RealLoop* loop,
                                                               EtcdMetaStoreOptions options);
  ~EtcdMetaStore() override;

  // "host:port" (every member's, comma-separated), as it appears in error messages.
  const std::string& address() const;

  struct Impl;

 protected:
  void DoGet(const std::string& key, Done<std::optional<KeyValue>> done) override;
  void DoList(const std::string& prefix, Done<ListResult> done) override;
  void DoPut(const std::string& key, const std::string& value, LeaseId lease,
             Done<int64_t> done) override;
  void DoDelete(const std::string& key, Done<bool> done) override;
  void DoCompareAndSwap(const std::string& key, int64_t expected_mod_revision,
                        const std::string& value, LeaseId lease, Done<CasResult> done) override;
  void DoGrantLease(int64_t ttl_ms, Done<Lease> done) override;
  void DoKeepAlive(LeaseId lease, Done<int64_t> done) override;
  void DoRevokeLease(LeaseId lease, StatusDone done) override;
  std::unique_ptr<WatchHandle> DoWatch(const std::string& prefix, int64_t start_revision,
                                       WatchCallback on_event) override;

 private:
  EtcdMetaStore(RealLoop* loop, std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace scribe

#endif  // SCRIBE_META_STORE_H_
