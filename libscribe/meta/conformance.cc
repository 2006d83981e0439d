#include "libscribe/meta/conformance.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"

namespace scribe::meta_conformance {

namespace {

using testing::AssertionFailure;
using testing::AssertionResult;
using testing::AssertionSuccess;

#define META_RETURN_IF_FAILED(expr)          \
  do {                                       \
    ::testing::AssertionResult ar_ = (expr); \
    if (!ar_) return ar_;                    \
  } while (0)

std::string Show(const std::string& bytes) { return "\"" + absl::CHexEscape(bytes) + "\""; }

std::string Show(const WatchEvent& e) {
  const char* type = e.type == WatchEvent::Type::kPut      ? "PUT"
                     : e.type == WatchEvent::Type::kDelete ? "DELETE"
                                                           : "COMPACTED";
  return absl::StrFormat("%s %s=%s @%d", type, Show(e.key), Show(e.value), e.revision);
}

// Blocking wrappers over one store (they run the loop until the callback reports).
class Sync {
 public:
  Sync(Loop* loop, MetaStore* store, const Timing& timing)
      : loop_(loop), store_(store), timeout_ms_(timing.call_timeout_ms) {}

  absl::StatusOr<std::optional<KeyValue>> Get(const std::string& key) {
    return Await<std::optional<KeyValue>>(
        loop_, [&](auto done) { store_->Get(key, done); }, timeout_ms_);
  }
  absl::StatusOr<ListResult> List(const std::string& prefix) {
    return Await<ListResult>(
        loop_, [&](auto done) { store_->List(prefix, done); }, timeout_ms_);
  }
  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                              LeaseId lease = {}) {
    return Await<int64_t>(
        loop_, [&](auto done) { store_->Put(key, value, lease, done); }, timeout_ms_);
  }
  absl::StatusOr<bool> Delete(const std::string& key) {
    return Await<bool>(
        loop_, [&](auto done) { store_->Delete(key, done); }, timeout_ms_);
  }
  absl::StatusOr<CasResult> Cas(const std::string& key, int64_t expected, const std::string& value,
                                LeaseId lease = {}) {
    return Await<CasResult>(
        loop_, [&](auto done) { store_->CompareAndSwap(key, expected, value, lease, done); },
        timeout_ms_);
  }
  absl::StatusOr<Lease> Grant(int64_t ttl_ms) {
    return Await<Lease>(
        loop_, [&](auto done) { store_->GrantLease(ttl_ms, done); }, timeout_ms_);
  }
  absl::StatusOr<int64_t> KeepAlive(LeaseId lease) {
    return Await<int64_t>(
        loop_, [&](auto done) { store_->KeepAlive(lease, done); }, timeout_ms_);
  }
  absl::Status Revoke(LeaseId lease) {
    return Await<bool>(
               loop_,
               [&](MetaStore::Done<bool> done) {
                 store_->RevokeLease(lease, [done](absl::Status st) {
                   if (st.ok()) {
                     done(true);
                   } else {
                     done(st);
                   }
                 });
               },
               timeout_ms_)
        .status();
  }

 private:
  Loop* loop_;
  MetaStore* store_;
  int64_t timeout_ms_;
};

// Lets `ms` of loop time pass.
void Sleep(Loop* loop, int64_t ms) {
  bool fired = false;
  loop->RunAfter(ms * 1'000'000, [&] { fired = true; });
  loop->RunUntil([&] { return fired; }, (ms + 60'000) * 1'000'000);
}

int64_t NowMs(Loop* loop) { return loop->NowNanos() / 1'000'000; }

template <typename T>
AssertionResult Ok(const absl::StatusOr<T>& r, const std::string& what) {
  if (r.ok()) return AssertionSuccess();
  return AssertionFailure() << what << ": " << r.status();
}

AssertionResult Ok(const absl::Status& st, const std::string& what) {
  if (st.ok()) return AssertionSuccess();
  return AssertionFailure() << what << ": " << st;
}

template <typename T>
AssertionResult IsCode(const absl::StatusOr<T>& r, absl::StatusCode code, const std::string& what) {
  if (!r.ok() && r.status().code() == code) return AssertionSuccess();
  return AssertionFailure() << what << ": expected " << absl::StatusCodeToString(code) << ", got "
                            << (r.ok() ? std::string("OK") : r.status().ToString());
}

AssertionResult IsCode(const absl::Status& st, absl::StatusCode code, const std::string& what) {
  if (st.code() == code) return AssertionSuccess();
  return AssertionFailure() << what << ": expected " << absl::StatusCodeToString(code) << ", got "
                            << st;
}

// The key must exist with `value`.
AssertionResult HasValue(Sync& s, const std::string& key, const std::string& value,
                         KeyValue* out = nullptr) {
  auto r = s.Get(key);
  META_RETURN_IF_FAILED(Ok(r, "Get " + Show(key)));
  if (!r->has_value()) return AssertionFailure() << "Get " << Show(key) << ": missing";
  if ((*r)->key != key) {
    return AssertionFailure() << "Get " << Show(key) << ": returned key " << Show((*r)->key);
  }
  if ((*r)->value != value) {
    return AssertionFailure() << "Get " << Show(key) << ": value " << Show((*r)->value)
                              << ", expected " << Show(value);
  }
  if (out != nullptr) *out = **r;
  return AssertionSuccess();
}

AssertionResult IsMissing(Sync& s, const std::string& key) {
  auto r = s.Get(key);
  META_RETURN_IF_FAILED(Ok(r, "Get " + Show(key)));
  if (r->has_value()) {
    return AssertionFailure() << "Get " << Show(key) << ": expected missing, has value "
                              << Show((*r)->value);
  }
  return AssertionSuccess();
}

}  // namespace

AssertionResult CheckGetPutDelete(Loop* loop, MetaStore* store, const Timing& timing) {
  Sync s(loop, store, timing);
  const std::string p = "/conformance/basic/";
  META_RETURN_IF_FAILED(IsMissing(s, p + "never-written"));

  auto r1 = s.Put(p + "k", "v1");
  META_RETURN_IF_FAILED(Ok(r1, "Put k=v1"));
  if (*r1 <= 1) return AssertionFailure() << "Put revision " << *r1 << " (stores start at 1)";
  KeyValue kv;
  META_RETURN_IF_FAILED(HasValue(s, p + "k", "v1", &kv));
  if (kv.mod_revision != *r1 || kv.create_revision != *r1 || kv.lease.valid()) {
    return AssertionFailure() << "after Put at " << *r1 << ": mod_revision " << kv.mod_revision
                              << ", create_revision " << kv.create_revision << ", lease "
                              << kv.lease.value;
  }
  auto r2 = s.Put(p + "k", "v2");
  META_RETURN_IF_FAILED(Ok(r2, "Put k=v2"));
  if (*r2 <= *r1) return AssertionFailure() << "revision went from " << *r1 << " to " << *r2;
  META_RETURN_IF_FAILED(HasValue(s, p + "k", "v2", &kv));
  if (kv.mod_revision != *r2 || kv.create_revision != *r1) {
    return AssertionFailure() << "after overwrite: mod_revision " << kv.mod_revision
                              << " (expected " << *r2 << "), create_revision " << kv.create_revision
                              << " (expected " << *r1 << ")";
  }

  // Binary keys and values, and an empty value.
  std::string all_bytes;
  for (int i = 0; i < 256; ++i) all_bytes.push_back(static_cast<char>(i));
  const std::string binary_key = p + std::string("\x00\xff\x01 bin\n", 8);
  META_RETURN_IF_FAILED(Ok(s.Put(binary_key, all_bytes), "Put binary"));
  META_RETURN_IF_FAILED(HasValue(s, binary_key, all_bytes));
  META_RETURN_IF_FAILED(Ok(s.Put(p + "empty", ""), "Put empty value"));
  META_RETURN_IF_FAILED(HasValue(s, p + "empty", ""));
  // The largest value allowed goes through whole.
  std::string big(MetaStore::kValueBytesMax, 'x');
  for (size_t i = 0; i < big.size(); i += 4093) big[i] = static_cast<char>(i * 7);
  META_RETURN_IF_FAILED(Ok(s.Put(p + "big", big), "Put of kValueBytesMax bytes"));
  META_RETURN_IF_FAILED(HasValue(s, p + "big", big));

  auto d1 = s.Delete(p + "k");
  META_RETURN_IF_FAILED(Ok(d1, "Delete k"));
  if (!*d1) return AssertionFailure() << "Delete of an existing key reported it missing";
  META_RETURN_IF_FAILED(IsMissing(s, p + "k"));
  auto d2 = s.Delete(p + "k");
  META_RETURN_IF_FAILED(Ok(d2, "Delete k again"));
  if (*d2) return AssertionFailure() << "Delete of a missing key reported it existed";
  auto r3 = s.Put(p + "k", "v3");
  META_RETURN_IF_FAILED(Ok(r3, "Put k=v3"));
  META_RETURN_IF_FAILED(HasValue(s, p + "k", "v3", &kv));
  if (kv.create_revision != *r3 || *r3 <= *r2) {
    return AssertionFailure() << "re-created key: create_revision " << kv.create_revision
                              << ", put revision " << *r3 << ", earlier " << *r2;
  }

  // Requests outside the limits.
  META_RETURN_IF_FAILED(
      IsCode(s.Get(""), absl::StatusCode::kInvalidArgument, "Get of the empty key"));
  META_RETURN_IF_FAILED(IsCode(s.Put(std::string(MetaStore::kKeyBytesMax + 1, 'k'), "v"),
                               absl::StatusCode::kInvalidArgument, "Put of an oversized key"));
  META_RETURN_IF_FAILED(IsCode(s.Put(p + "huge", std::string(MetaStore::kValueBytesMax + 1, 'v')),
                               absl::StatusCode::kInvalidArgument, "Put of an oversized value"));
  META_RETURN_IF_FAILED(IsCode(s.Grant(0), absl::StatusCode::kInvalidArgument, "GrantLease(0)"));
  return AssertionSuccess();
}

AssertionResult CheckListSortedAndPrefixBounded(Loop* loop, MetaStore* store,
                                                const Timing& timing) {
  Sync s(loop, store, timing);
  const std::string p = "/conformance/list/";
  // '0' follows '/', '.' precedes it: the keys just outside the prefix on both sides.
  const std::vector<std::string> outside = {"/conformance/list", "/conformance/list0",
                                            "/conformance/list0a", "/conformance/list.",
                                            "/conformance/lisu"};
  const std::vector<std::string> inside = {
      p + "b",        p + "a/x", p,          p + "c", p + std::string(1, '\0'),
      p + "\xff\xff", p + "a",   p + "\xff", p + "B"};
  int64_t last_revision = 0;
  for (size_t i = 0; i < std::max(inside.size(), outside.size()); ++i) {
    for (const auto* keys : {&inside, &outside}) {
      if (i >= keys->size()) continue;
      const std::string& key = (*keys)[i];
      auto r = s.Put(key, "value of " + key);
      META_RETURN_IF_FAILED(Ok(r, "Put " + Show(key)));
      last_revision = *r;
    }
  }
  auto check = [&](const std::string& prefix) -> AssertionResult {
    std::vector<std::string> want;
    for (const std::string& k : inside) {
      if (absl::StartsWith(k, prefix)) want.push_back(k);
    }
    std::sort(want.begin(), want.end());  // std::string compares bytes as unsigned
    auto r = s.List(prefix);
    META_RETURN_IF_FAILED(Ok(r, "List " + Show(prefix)));
    std::vector<std::string> got;
    for (const KeyValue& kv : r->kvs) {
      got.push_back(kv.key);
      if (kv.value != "value of " + kv.key) {
        return AssertionFailure() << "List " << Show(prefix) << ": " << Show(kv.key)
                                  << " has value " << Show(kv.value);
      }
    }
    if (got != want) {
      std::string g, w;
      for (const auto& k : got) g += Show(k) + " ";
      for (const auto& k : want) w += Show(k) + " ";
      return AssertionFailure() << "List " << Show(prefix) << " returned [" << g << "], expected ["
                                << w << "]";
    }
    if (r->revision < last_revision) {
      return AssertionFailure() << "List " << Show(prefix) << " at revision " << r->revision
                                << ", older than the last write " << last_revision;
    }
    return AssertionSuccess();
  };
  META_RETURN_IF_FAILED(check(p));
  META_RETURN_IF_FAILED(check(p + "a"));
  META_RETURN_IF_FAILED(check(p + "\xff"));
  META_RETURN_IF_FAILED(check(p + "nothing-here"));
  // The empty prefix lists everything, this check's keys among them, in order.
  auto all = s.List("");
  META_RETURN_IF_FAILED(Ok(all, "List of everything"));
  size_t seen = 0;
  for (size_t i = 0; i < all->kvs.size(); ++i) {
    if (i > 0 && !(all->kvs[i - 1].key < all->kvs[i].key)) {
      return AssertionFailure() << "List of everything out of order at " << Show(all->kvs[i].key);
    }
    if (absl::StartsWith(all->kvs[i].key, "/conformance/lis")) ++seen;
  }
  if (seen != inside.size() + outside.size()) {
    return AssertionFailure() << "List of everything has " << seen << " of this check's "
                              << inside.size() + outside.size() << " keys";
  }
  return AssertionSuccess();
}

AssertionResult CheckCasConflict(Loop* loop, MetaStore* a, MetaStore* b, const Timing& timing) {
  Sync sa(loop, a, timing);
  const std::string key = "/conformance/cas/owner";
  // Both clients issue their swap before either answer is awaited.
  auto race = [&](int round, int64_t expected, CasResult* winner,
                  std::string* winner_value) -> AssertionResult {
    std::optional<absl::StatusOr<CasResult>> ra, rb;
    const std::string va = absl::StrFormat("a%d", round), vb = absl::StrFormat("b%d", round);
    MetaStore* first = round % 2 == 0 ? a : b;
    MetaStore* second = round % 2 == 0 ? b : a;
    first->CompareAndSwap(key, expected, first == a ? va : vb, LeaseId{},
                          [&, first](absl::StatusOr<CasResult> r) { (first == a ? ra : rb) = r; });
    second->CompareAndSwap(
        key, expected, second == a ? va : vb, LeaseId{},
        [&, second](absl::StatusOr<CasResult> r) { (second == a ? ra : rb) = r; });
    if (!loop->RunUntil([&] { return ra.has_value() && rb.has_value(); },
                        timing.call_timeout_ms * 1'000'000)) {
      return AssertionFailure() << "round " << round << ": swaps did not complete";
    }
    META_RETURN_IF_FAILED(Ok(*ra, absl::StrFormat("round %d: swap by a", round)));
    META_RETURN_IF_FAILED(Ok(*rb, absl::StrFormat("round %d: swap by b", round)));
    if ((*ra)->succeeded == (*rb)->succeeded) {
      return AssertionFailure() << "round " << round << " (expected revision " << expected
                                << "): " << ((*ra)->succeeded ? "both" : "neither")
                                << " of two racing swaps succeeded";
    }
    *winner = (*ra)->succeeded ? **ra : **rb;
    *winner_value = (*ra)->succeeded ? va : vb;
    const CasResult& loser = (*ra)->succeeded ? **rb : **ra;
    if (loser.revision < expected) {
      return AssertionFailure() << "round " << round << ": failed swap reports revision "
                                << loser.revision << ", before the compared " << expected;
    }
    KeyValue kv;
    META_RETURN_IF_FAILED(HasValue(sa, key, *winner_value, &kv));
    if (kv.mod_revision != winner->revision) {
      return AssertionFailure() << "round " << round << ": winner's revision " << winner->revision
                                << " but key's mod_revision " << kv.mod_revision;
    }
    return AssertionSuccess();
  };

  auto absent = sa.Get(key);
  META_RETURN_IF_FAILED(Ok(absent, "Get before"));
  if (absent->has_value()) return AssertionFailure() << "key exists before the check";
  CasResult winner;
  std::string winner_value;
  META_RETURN_IF_FAILED(race(0, 0, &winner, &winner_value));  // create-if-absent
  for (int round = 1; round <= 4; ++round) {
    const int64_t expected = winner.revision;
    META_RETURN_IF_FAILED(race(round, expected, &winner, &winner_value));
    if (winner.revision <= expected) {
      return AssertionFailure() << "round " << round << ": revision did not grow";
    }
    // Replaying the round's comparison now is stale.
    auto stale = sa.Cas(key, expected, "stale");
    META_RETURN_IF_FAILED(Ok(stale, "stale swap"));
    if (stale->succeeded) return AssertionFailure() << "a swap at a stale revision succeeded";
    META_RETURN_IF_FAILED(HasValue(sa, key, winner_value));
  }
  auto exists = sa.Cas(key, 0, "create again");
  META_RETURN_IF_FAILED(Ok(exists, "create-if-absent on an existing key"));
  if (exists->succeeded) {
    return AssertionFailure() << "create-if-absent (expected revision 0) overwrote a key";
  }
  META_RETURN_IF_FAILED(HasValue(sa, key, winner_value));
  // The winner can chain on its own revision (how an owner bumps its epoch).
  auto chained = sa.Cas(key, winner.revision, "next epoch");
  META_RETURN_IF_FAILED(Ok(chained, "chained swap"));
  if (!chained->succeeded) return AssertionFailure() << "swap at the current revision failed";
  return HasValue(sa, key, "next epoch");
}

AssertionResult CheckLeaseExpiry(Loop* loop, MetaStore* store, const Timing& timing) {
  Sync s(loop, store, timing);
  const std::string p = "/conformance/lease-expiry/";
  const int64_t start_ms = NowMs(loop);
  auto lease = s.Grant(timing.lease_ttl_ms);
  META_RETURN_IF_FAILED(Ok(lease, "GrantLease"));
  if (!lease->id.valid() || lease->ttl_ms < timing.lease_ttl_ms) {
    return AssertionFailure() << "GrantLease(" << timing.lease_ttl_ms << ") gave lease "
                              << lease->id.value << " with TTL " << lease->ttl_ms << " ms";
  }
  META_RETURN_IF_FAILED(Ok(s.Put(p + "leased-1", "1", lease->id), "Put leased-1"));
  META_RETURN_IF_FAILED(Ok(s.Put(p + "leased-2", "2", lease->id), "Put leased-2"));
  META_RETURN_IF_FAILED(Ok(s.Put(p + "plain", "3"), "Put plain"));
  KeyValue kv;
  META_RETURN_IF_FAILED(HasValue(s, p + "leased-1", "1", &kv));
  if (kv.lease != lease->id) {
    return AssertionFailure() << "leased key reports lease " << kv.lease.value << ", expected "
                              << lease->id.value;
  }

  const int64_t deadline_ms = start_ms + lease->ttl_ms + timing.expiry_slack_ms;
  int64_t gone_ms = -1;
  while (NowMs(loop) <= deadline_ms) {
    auto r = s.Get(p + "leased-1");
    META_RETURN_IF_FAILED(Ok(r, "Get leased-1 while waiting"));
    if (!r->has_value()) {
      gone_ms = NowMs(loop);
      break;
    }
    Sleep(loop, 50);
  }
  if (gone_ms < 0) {
    return AssertionFailure() << "leased key still there " << NowMs(loop) - start_ms
                              << " ms after the grant (TTL " << lease->ttl_ms << " ms)";
  }
  if (gone_ms - start_ms < lease->ttl_ms) {
    return AssertionFailure() << "leased key vanished after " << gone_ms - start_ms
                              << " ms, before its TTL of " << lease->ttl_ms << " ms";
  }
  META_RETURN_IF_FAILED(IsMissing(s, p + "leased-2"));
  META_RETURN_IF_FAILED(HasValue(s, p + "plain", "3"));
  META_RETURN_IF_FAILED(
      IsCode(s.KeepAlive(lease->id), absl::StatusCode::kNotFound, "KeepAlive of an expired lease"));
  META_RETURN_IF_FAILED(IsCode(s.Put(p + "late", "x", lease->id), absl::StatusCode::kNotFound,
                               "Put with an expired lease"));
  META_RETURN_IF_FAILED(IsMissing(s, p + "late"));
  META_RETURN_IF_FAILED(
      IsCode(s.Revoke(lease->id), absl::StatusCode::kNotFound, "RevokeLease of an expired lease"));
  return AssertionSuccess();
}

AssertionResult CheckKeepAliveKeepsKeys(Loop* loop, MetaStore* store, const Timing& timing) {
  Sync s(loop, store, timing);
  const std::string key = "/conformance/keepalive/node";
  auto lease = s.Grant(timing.lease_ttl_ms);
  META_RETURN_IF_FAILED(Ok(lease, "GrantLease"));
  META_RETURN_IF_FAILED(Ok(s.Put(key, "alive", lease->id), "Put with lease"));
  const int64_t interval_ms = std::max<int64_t>(1, lease->ttl_ms / 3);
  const int64_t start_ms = NowMs(loop);
  int renewals = 0;
  while (NowMs(loop) - start_ms < 3 * lease->ttl_ms + timing.expiry_slack_ms / 2) {
    Sleep(loop, interval_ms);
    auto ttl = s.KeepAlive(lease->id);
    META_RETURN_IF_FAILED(Ok(ttl, absl::StrFormat("KeepAlive #%d", renewals + 1)));
    if (*ttl < timing.lease_ttl_ms) {
      return AssertionFailure() << "KeepAlive restarted a TTL of " << *ttl << " ms";
    }
    ++renewals;
    META_RETURN_IF_FAILED(HasValue(s, key, "alive"));
  }
  if (renewals < 9) return AssertionFailure() << "only " << renewals << " renewals fitted";
  META_RETURN_IF_FAILED(Ok(s.Revoke(lease->id), "RevokeLease"));
  META_RETURN_IF_FAILED(IsMissing(s, key));
  return IsCode(s.KeepAlive(lease->id), absl::StatusCode::kNotFound, "KeepAlive after revoke");
}

AssertionResult CheckWatchSeesChangesInOrder(Loop* loop, MetaStore* store, const Timing& timing) {
  Sync s(loop, store, timing);
  const std::string p = "/conformance/watch/";
  auto listed = s.List(p);
  META_RETURN_IF_FAILED(Ok(listed, "List"));
  const int64_t from = listed->revision + 1;
  std::vector<WatchEvent> seen1, seen2;
  auto w1 = store->Watch(p, from, [&](const WatchEvent& e) { seen1.push_back(e); });

  // The writes, and the events they must produce (a delete's revision is only known to
  // lie between its neighbours').
  struct Want {
    WatchEvent::Type type;
    std::string key, value;
    int64_t revision;  // 0: strictly between the previous and the next event's
  };
  std::vector<Want> want;
  using T = WatchEvent::Type;
  auto put = [&](const std::string& key, const std::string& value, LeaseId lease = {}) {
    auto r = s.Put(key, value, lease);
    if (r.ok() && absl::StartsWith(key, p)) want.push_back({T::kPut, key, value, *r});
    return Ok(r, "Put " + Show(key));
  };
  META_RETURN_IF_FAILED(put(p + "a", "1"));
  META_RETURN_IF_FAILED(put(p + "b", "2"));
  META_RETURN_IF_FAILED(put("/conformance/watch", "outside"));
  META_RETURN_IF_FAILED(put("/conformance/watcher", "outside"));
  META_RETURN_IF_FAILED(Ok(s.Delete(p + "a"), "Delete a"));
  want.push_back({T::kDelete, p + "a", "", 0});
  META_RETURN_IF_FAILED(put(p + "b", "3"));
  META_RETURN_IF_FAILED(Ok(s.Delete(p + "never-existed"), "Delete of a missing key"));
  auto lease = s.Grant(60'000);
  META_RETURN_IF_FAILED(Ok(lease, "GrantLease"));
  META_RETURN_IF_FAILED(put(p + "c", "leased", lease->id));
  META_RETURN_IF_FAILED(Ok(s.Revoke(lease->id), "RevokeLease"));
  want.push_back({T::kDelete, p + "c", "", 0});
  META_RETURN_IF_FAILED(put(p + "d", std::string("\x00\xff", 2)));

  auto compare = [&](const std::vector<WatchEvent>& got, const char* which) -> AssertionResult {
    std::string trace;
    for (const auto& e : got) trace += "\n  " + Show(e);
    if (got.size() != want.size()) {
      return AssertionFailure() << which << " saw " << got.size() << " events, expected "
                                << want.size() << ":" << trace;
    }
    for (size_t i = 0; i < want.size(); ++i) {
      const Want& w = want[i];
      const WatchEvent& e = got[i];
      bool ok = e.type == w.type && e.key == w.key && e.value == w.value;
      if (w.revision != 0) {
        ok = ok && e.revision == w.revision;
      } else {
        ok = ok && i > 0 && e.revision > got[i - 1].revision && i + 1 < want.size() &&
             e.revision < want[i + 1].revision;
      }
      if (i > 0 && e.revision <= got[i - 1].revision) ok = false;
      if (!ok) {
        return AssertionFailure() << which << ": event " << i << " is " << Show(e)
                                  << "; all events:" << trace;
      }
    }
    return AssertionSuccess();
  };
  auto wait_for = [&](const std::vector<WatchEvent>& got, size_t n) {
    loop->RunUntil([&] { return got.size() >= n; }, timing.call_timeout_ms * 1'000'000);
    Sleep(loop, timing.settle_ms);  // anything extra shows up meanwhile
  };
  wait_for(seen1, want.size());
  META_RETURN_IF_FAILED(compare(seen1, "watch"));

  // A watch opened now from the same revision replays the same history.
  auto w2 = store->Watch(p, from, [&](const WatchEvent& e) { seen2.push_back(e); });
  wait_for(seen2, want.size());
  META_RETURN_IF_FAILED(compare(seen2, "watch started later"));

  // A watch may cancel itself from its own callback; it then sees nothing more.
  int self_cancelling_events = 0;
  std::unique_ptr<WatchHandle> w3;
  w3 = store->Watch(p, from, [&](const WatchEvent&) {
    ++self_cancelling_events;
    w3.reset();
  });

  // Cancelled watches see nothing more; the live one goes on.
  w1.reset();
  META_RETURN_IF_FAILED(put(p + "e", "after cancel"));
  wait_for(seen2, want.size());
  META_RETURN_IF_FAILED(compare(seen2, "watch after another was cancelled"));
  if (seen1.size() != want.size() - 1) {
    return AssertionFailure() << "a cancelled watch saw " << seen1.size() - (want.size() - 1)
                              << " more events";
  }
  if (self_cancelling_events != 1) {
    return AssertionFailure() << "a watch that cancelled itself in its first callback saw "
                              << self_cancelling_events << " events";
  }
  return AssertionSuccess();
}

AssertionResult CheckUnavailableFailsFast(Loop* loop, MetaStore* down_store, int64_t within_ms,
                                          const std::string& message_part) {
  Timing timing;
  timing.call_timeout_ms = within_ms + 10'000;
  Sync s(loop, down_store, timing);
  const std::string key = "/conformance/unavailable/k";
  auto check = [&](const char* what, const absl::Status& st, int64_t start_ms) -> AssertionResult {
    const int64_t took_ms = NowMs(loop) - start_ms;
    if (st.code() != absl::StatusCode::kUnavailable) {
      return AssertionFailure() << what << " on an unreachable store: expected UNAVAILABLE, got "
                                << st;
    }
    if (!absl::StrContains(st.message(), message_part)) {
      return AssertionFailure() << what << ": message \"" << st.message() << "\" does not name "
                                << message_part;
    }
    if (took_ms > within_ms) {
      return AssertionFailure() << what << " took " << took_ms << " ms to fail (limit " << within_ms
                                << " ms)";
    }
    return AssertionSuccess();
  };
  int64_t t = NowMs(loop);
  META_RETURN_IF_FAILED(check("Get", s.Get(key).status(), t));
  t = NowMs(loop);
  META_RETURN_IF_FAILED(check("List", s.List("/conformance/").status(), t));
  t = NowMs(loop);
  META_RETURN_IF_FAILED(check("Put", s.Put(key, "v").status(), t));
  t = NowMs(loop);
  META_RETURN_IF_FAILED(check("Delete", s.Delete(key).status(), t));
  t = NowMs(loop);
  META_RETURN_IF_FAILED(check("CompareAndSwap", s.Cas(key, 0, "v").status(), t));
  t = NowMs(loop);
  META_RETURN_IF_FAILED(check("GrantLease", s.Grant(10'000).status(), t));
  t = NowMs(loop);
  META_RETURN_IF_FAILED(check("KeepAlive", s.KeepAlive(LeaseId{1}).status(), t));
  t = NowMs(loop);
  META_RETURN_IF_FAILED(check("RevokeLease", s.Revoke(LeaseId{1}), t));
  // A watch on an unreachable store delivers nothing and can be cancelled.
  int events = 0;
  auto w = down_store->Watch("/conformance/", 0, [&](const WatchEvent&) { ++events; });
  Sleep(loop, 100);
  w.reset();
  if (events != 0) return AssertionFailure() << "a watch on an unreachable store saw events";
  return AssertionSuccess();
}

}  // namespace scribe::meta_conformance
