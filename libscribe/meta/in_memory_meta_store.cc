// InMemoryMetaStore: etcd's data model held in memory on a Loop. The shared State is the
// "server" (keys, leases, revision counter, change history); each InMemoryMetaStore is a
// client of it with its own availability and watches.
#include <deque>
#include <map>
#include <set>
#include <utility>

#include "absl/container/btree_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "scribe/meta_store.h"
#include "scribe/status.h"

namespace scribe {

struct InMemoryMetaStore::State {
  struct LeaseState {
    int64_t ttl_ms = 0;
    int64_t deadline_ns = 0;
    std::set<std::string> keys;
    Loop::TimerId timer = 0;
  };

  State(Loop* loop, InMemoryMetaStoreOptions options) : loop(loop), options(options) {
    SCRIBE_CHECK(options.history_events_max > 0);
  }
  ~State() {
    for (auto& [id, lease] : leases) {
      if (lease.timer != 0) loop->Cancel(lease.timer);
    }
  }

  // Sets a key at a new revision; returns it.
  int64_t PutKey(const std::string& key, const std::string& value, LeaseId lease) {
    const int64_t rev = ++revision;
    KeyValue& kv = kvs[key];
    if (kv.key.empty()) {
      kv.key = key;
      kv.create_revision = rev;
    }
    DetachFromLease(kv);
    kv.value = value;
    kv.mod_revision = rev;
    kv.lease = lease;
    if (lease.valid()) {
      auto it = leases.find(lease.value);
      SCRIBE_CHECK(it != leases.end());
      it->second.keys.insert(key);
    }
    Append(WatchEvent{WatchEvent::Type::kPut, key, value, rev});
    Notify();
    return rev;
  }

  bool DeleteKey(const std::string& key) {
    auto it = kvs.find(key);
    if (it == kvs.end()) return false;
    DetachFromLease(it->second);
    kvs.erase(it);
    Append(WatchEvent{WatchEvent::Type::kDelete, key, "", ++revision});
    Notify();
    return true;
  }

  // Ends a lease (expiry or revocation): its keys go, all in one revision.
  void EndLease(int64_t id) {
    auto it = leases.find(id);
    SCRIBE_CHECK(it != leases.end());
    if (it->second.timer != 0) loop->Cancel(it->second.timer);
    const std::set<std::string> keys = std::move(it->second.keys);
    leases.erase(it);
    if (keys.empty()) return;
    const int64_t rev = ++revision;
    for (const std::string& key : keys) {
      SCRIBE_CHECK(kvs.erase(key) == 1);
      Append(WatchEvent{WatchEvent::Type::kDelete, key, "", rev});
    }
    Notify();
  }

  void ArmLeaseTimer(int64_t id) {
    LeaseState& lease = leases.at(id);
    if (lease.timer != 0) loop->Cancel(lease.timer);
    const int64_t delay_ns = std::max<int64_t>(0, lease.deadline_ns - loop->NowNanos());
    lease.timer = loop->RunAfter(delay_ns, [this, id] {
      auto it = leases.find(id);
      if (it == leases.end()) return;
      it->second.timer = 0;
      EndLease(id);
    });
  }

  void DetachFromLease(const KeyValue& kv) {
    if (!kv.lease.valid()) return;
    auto it = leases.find(kv.lease.value);
    if (it != leases.end()) it->second.keys.erase(kv.key);
  }

  void Append(WatchEvent event) {
    SCRIBE_CHECK(log.empty() || log.back().revision <= event.revision);
    log.push_back(std::move(event));
    ++next_seq;
    while (log.size() > options.history_events_max) {
      compact_revision = log.front().revision + 1;
      log.pop_front();
      ++first_seq;
    }
  }

  // The sequence number of the first kept event at or after `revision`.
  uint64_t SeqAtRevision(int64_t revision) const {
    auto it = std::lower_bound(log.begin(), log.end(), revision,
                               [](const WatchEvent& e, int64_t r) { return e.revision < r; });
    return first_seq + (it - log.begin());
  }

  void Notify();

  Loop* loop;
  InMemoryMetaStoreOptions options;
  int64_t revision = 1;
  absl::btree_map<std::string, KeyValue> kvs;
  std::map<int64_t, LeaseState> leases;
  int64_t next_lease_id = 1;
  // Change history: event number `first_seq + i` is log[i]; the next one is `next_seq`.
  std::deque<WatchEvent> log;
  uint64_t first_seq = 0;
  uint64_t next_seq = 0;
  // Watches may start at this revision or later; older history was dropped.
  int64_t compact_revision = 1;
  std::set<Client*> clients;
};

class InMemoryMetaStore::Client {
 public:
  struct Watcher {
    std::string prefix;
    int64_t min_revision = 0;
    uint64_t cursor = 0;  // the next event (sequence number) to look at
    bool compacted = false;
    bool ended = false;
    WatchCallback on_event;
  };

  class Handle : public WatchHandle {
   public:
    Handle(Client* client, uint64_t id) : client_(client), alive_(client->alive), id_(id) {}
    ~Handle() override {
      if (*alive_) client_->watchers.erase(id_);
    }

   private:
    Client* client_;
    std::shared_ptr<bool> alive_;
    uint64_t id_;
  };

  Client(Loop* loop, std::shared_ptr<State> state) : loop(loop), state(std::move(state)) {
    this->state->clients.insert(this);
  }
  ~Client() {
    *alive = false;
    state->clients.erase(this);
  }

  // Runs `fn` after the configured latency, unless the client is gone by then.
  void Submit(std::function<void()> fn) {
    loop->RunAfter(state->options.latency_ns, [alive = alive, fn = std::move(fn)] {
      if (*alive) fn();
    });
  }

  absl::Status Unavailable() const {
    return absl::UnavailableError("in-memory meta store: this client is cut off");
  }

  void SchedulePump() {
    if (pump_scheduled) return;
    pump_scheduled = true;
    Submit([this] {
      pump_scheduled = false;
      Pump();
    });
  }

  // Delivers every pending event to every watcher. A callback may cancel watches,
  // destroy this client, change availability or write: everything is looked up afresh
  // after each one.
  void Pump() {
    std::shared_ptr<bool> alive_token = alive;
    std::vector<uint64_t> ids;
    for (const auto& [id, w] : watchers) ids.push_back(id);
    for (uint64_t id : ids) {
      for (;;) {
        if (!*alive_token || !available) return;
        auto it = watchers.find(id);
        if (it == watchers.end() || it->second.ended) break;
        Watcher& w = it->second;
        WatchEvent event;
        if (w.compacted || w.cursor < state->first_seq) {
          w.ended = true;
          event.type = WatchEvent::Type::kCompacted;
          event.revision = state->compact_revision;
        } else if (w.cursor < state->next_seq) {
          event = state->log[w.cursor - state->first_seq];
          ++w.cursor;
          if (event.revision < w.min_revision || !absl::StartsWith(event.key, w.prefix)) continue;
        } else {
          break;
        }
        WatchCallback on_event = w.on_event;  // the callback may destroy the watcher
        on_event(event);
      }
    }
  }

  Loop* loop;
  std::shared_ptr<State> state;
  bool available = true;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  std::map<uint64_t, Watcher> watchers;
  uint64_t next_watch_id = 1;
  bool pump_scheduled = false;
};

void InMemoryMetaStore::State::Notify() {
  for (Client* c : clients) c->SchedulePump();
}

namespace {
absl::Status LeaseNotFound(LeaseId lease) {
  return absl::NotFoundError(absl::StrFormat("lease %d not found", lease.value));
}
}  // namespace

std::unique_ptr<InMemoryMetaStore> InMemoryMetaStore::Create(Loop* loop,
                                                             InMemoryMetaStoreOptions options) {
  return std::unique_ptr<InMemoryMetaStore>(
      new InMemoryMetaStore(loop, std::make_shared<State>(loop, options)));
}

InMemoryMetaStore::InMemoryMetaStore(Loop* loop, std::shared_ptr<State> state)
    : MetaStore(loop), client_(std::make_unique<Client>(loop, std::move(state))) {}

InMemoryMetaStore::~InMemoryMetaStore() = default;

std::unique_ptr<InMemoryMetaStore> InMemoryMetaStore::NewClient() {
  return std::unique_ptr<InMemoryMetaStore>(new InMemoryMetaStore(loop(), client_->state));
}

void InMemoryMetaStore::SetAvailable(bool available) {
  client_->available = available;
  if (available) client_->SchedulePump();
}

bool InMemoryMetaStore::available() const { return client_->available; }

int64_t InMemoryMetaStore::revision() const { return client_->state->revision; }

void InMemoryMetaStore::DoGet(const std::string& key, Done<std::optional<KeyValue>> done) {
  Client* c = client_.get();
  c->Submit([c, key, done = std::move(done)] {
    if (!c->available) return done(c->Unavailable());
    auto it = c->state->kvs.find(key);
    if (it == c->state->kvs.end()) return done(std::optional<KeyValue>());
    done(std::optional<KeyValue>(it->second));
  });
}

void InMemoryMetaStore::DoList(const std::string& prefix, Done<ListResult> done) {
  Client* c = client_.get();
  c->Submit([c, prefix, done = std::move(done)] {
    if (!c->available) return done(c->Unavailable());
    ListResult result;
    result.revision = c->state->revision;
    for (auto it = c->state->kvs.lower_bound(prefix);
         it != c->state->kvs.end() && absl::StartsWith(it->first, prefix); ++it) {
      result.kvs.push_back(it->second);
    }
    done(std::move(result));
  });
}

void InMemoryMetaStore::DoPut(const std::string& key, const std::string& value, LeaseId lease,
                              Done<int64_t> done) {
  Client* c = client_.get();
  c->Submit([c, key, value, lease, done = std::move(done)] {
    if (!c->available) return done(c->Unavailable());
    if (lease.valid() && !c->state->leases.contains(lease.value)) {
      return done(LeaseNotFound(lease));
    }
    done(c->state->PutKey(key, value, lease));
  });
}

void InMemoryMetaStore::DoDelete(const std::string& key, Done<bool> done) {
  Client* c = client_.get();
  c->Submit([c, key, done = std::move(done)] {
    if (!c->available) return done(c->Unavailable());
    done(c->state->DeleteKey(key));
  });
}

void InMemoryMetaStore::DoCompareAndSwap(const std::string& key, int64_t expected_mod_revision,
                                         const std::string& value, LeaseId lease,
                                         Done<CasResult> done) {
  Client* c = client_.get();
  c->Submit([c, key, expected_mod_revision, value, lease, done = std::move(done)] {
    if (!c->available) return done(c->Unavailable());
    State& s = *c->state;
    auto it = s.kvs.find(key);
    const int64_t current = it == s.kvs.end() ? 0 : it->second.mod_revision;
    if (current != expected_mod_revision) return done(CasResult{false, s.revision});
    // As in etcd, the lease is checked only on the branch the transaction takes.
    if (lease.valid() && !s.leases.contains(lease.value)) return done(LeaseNotFound(lease));
    done(CasResult{true, s.PutKey(key, value, lease)});
  });
}

void InMemoryMetaStore::DoGrantLease(int64_t ttl_ms, Done<Lease> done) {
  Client* c = client_.get();
  c->Submit([c, ttl_ms, done = std::move(done)] {
    if (!c->available) return done(c->Unavailable());
    State& s = *c->state;
    const int64_t id = s.next_lease_id++;
    State::LeaseState& lease = s.leases[id];
    lease.ttl_ms = ttl_ms;
    lease.deadline_ns = s.loop->NowNanos() + ttl_ms * 1'000'000;
    s.ArmLeaseTimer(id);
    done(Lease{LeaseId{id}, ttl_ms});
  });
}

void InMemoryMetaStore::DoKeepAlive(LeaseId lease, Done<int64_t> done) {
  Client* c = client_.get();
  c->Submit([c, lease, done = std::move(done)] {
    if (!c->available) return done(c->Unavailable());
    State& s = *c->state;
    auto it = s.leases.find(lease.value);
    if (it == s.leases.end()) return done(LeaseNotFound(lease));
    it->second.deadline_ns = s.loop->NowNanos() + it->second.ttl_ms * 1'000'000;
    s.ArmLeaseTimer(lease.value);
    done(it->second.ttl_ms);
  });
}

void InMemoryMetaStore::DoRevokeLease(LeaseId lease, StatusDone done) {
  Client* c = client_.get();
  c->Submit([c, lease, done = std::move(done)] {
    if (!c->available) return done(c->Unavailable());
    if (!c->state->leases.contains(lease.value)) return done(LeaseNotFound(lease));
    c->state->EndLease(lease.value);
    done(absl::OkStatus());
  });
}

std::unique_ptr<WatchHandle> InMemoryMetaStore::DoWatch(const std::string& prefix,
                                                        int64_t start_revision,
                                                        WatchCallback on_event) {
  Client* c = client_.get();
  const State& s = *c->state;
  const uint64_t id = c->next_watch_id++;
  Client::Watcher& w = c->watchers[id];
  w.prefix = prefix;
  w.on_event = std::move(on_event);
  if (start_revision == 0) {
    w.cursor = s.next_seq;
  } else if (start_revision < s.compact_revision) {
    w.compacted = true;
  } else {
    w.min_revision = start_revision;
    w.cursor = s.SeqAtRevision(start_revision);
  }
  c->SchedulePump();
  return std::make_unique<Client::Handle>(c, id);
}

}  // namespace scribe
