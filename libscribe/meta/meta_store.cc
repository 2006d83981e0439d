// The MetaStore front end shared by every implementation: argument checks, so that every
// store rejects the same requests with the same codes.
#include "scribe/meta_store.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "scribe/status.h"

namespace scribe {

namespace {

absl::Status CheckKey(const std::string& key) {
  if (key.empty()) return absl::InvalidArgumentError("empty key");
  if (key.size() > MetaStore::kKeyBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrFormat("key of %d bytes (max %d)", key.size(), MetaStore::kKeyBytesMax));
  }
  return absl::OkStatus();
}

absl::Status CheckValue(const std::string& value) {
  if (value.size() > MetaStore::kValueBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrFormat("value of %d bytes (max %d)", value.size(), MetaStore::kValueBytesMax));
  }
  return absl::OkStatus();
}

absl::Status CheckLeaseArg(LeaseId lease) {
  if (lease.value < 0) return absl::InvalidArgumentError("negative lease id");
  return absl::OkStatus();
}

absl::Status CheckLeaseToUse(LeaseId lease) {
  if (!lease.valid()) return absl::InvalidArgumentError("no lease given");
  return CheckLeaseArg(lease);
}

template <typename T>
MetaStore::StatusDone AsStatusDone(MetaStore::Done<T> done) {
  return [done = std::move(done)](absl::Status st) { done(std::move(st)); };
}

}  // namespace

void MetaStore::Fail(absl::Status status, StatusDone done) {
  loop_->Post([status = std::move(status), done = std::move(done)] { done(status); });
}

void MetaStore::Get(const std::string& key, Done<std::optional<KeyValue>> done) {
  SCRIBE_CHECK(done != nullptr);
  if (absl::Status st = CheckKey(key); !st.ok()) return Fail(st, AsStatusDone(std::move(done)));
  DoGet(key, std::move(done));
}

void MetaStore::List(const std::string& prefix, Done<ListResult> done) {
  SCRIBE_CHECK(done != nullptr);
  if (prefix.size() > kKeyBytesMax) {
    return Fail(absl::InvalidArgumentError("prefix too long"), AsStatusDone(std::move(done)));
  }
  DoList(prefix, std::move(done));
}

void MetaStore::Put(const std::string& key, const std::string& value, LeaseId lease,
                    Done<int64_t> done) {
  SCRIBE_CHECK(done != nullptr);
  absl::Status st = CheckKey(key);
  if (st.ok()) st = CheckValue(value);
  if (st.ok()) st = CheckLeaseArg(lease);
  if (!st.ok()) return Fail(st, AsStatusDone(std::move(done)));
  DoPut(key, value, lease, std::move(done));
}

void MetaStore::Delete(const std::string& key, Done<bool> done) {
  SCRIBE_CHECK(done != nullptr);
  if (absl::Status st = CheckKey(key); !st.ok()) return Fail(st, AsStatusDone(std::move(done)));
  DoDelete(key, std::move(done));
}

void MetaStore::CompareAndSwap(const std::string& key, int64_t expected_mod_revision,
                               const std::string& value, LeaseId lease, Done<CasResult> done) {
  SCRIBE_CHECK(done != nullptr);
  absl::Status st = CheckKey(key);
  if (st.ok()) st = CheckValue(value);
  if (st.ok()) st = CheckLeaseArg(lease);
  if (st.ok() && expected_mod_revision < 0) {
    st = absl::InvalidArgumentError("negative expected revision");
  }
  if (!st.ok()) return Fail(st, AsStatusDone(std::move(done)));
  DoCompareAndSwap(key, expected_mod_revision, value, lease, std::move(done));
}

void MetaStore::GrantLease(int64_t ttl_ms, Done<Lease> done) {
  SCRIBE_CHECK(done != nullptr);
  if (ttl_ms <= 0 || ttl_ms > kLeaseTtlMsMax) {
    return Fail(absl::InvalidArgumentError(absl::StrFormat("lease TTL of %d ms", ttl_ms)),
                AsStatusDone(std::move(done)));
  }
  DoGrantLease(ttl_ms, std::move(done));
}

void MetaStore::KeepAlive(LeaseId lease, Done<int64_t> done) {
  SCRIBE_CHECK(done != nullptr);
  if (absl::Status st = CheckLeaseToUse(lease); !st.ok()) {
    return Fail(st, AsStatusDone(std::move(done)));
  }
  DoKeepAlive(lease, std::move(done));
}

void MetaStore::RevokeLease(LeaseId lease, StatusDone done) {
  SCRIBE_CHECK(done != nullptr);
  if (absl::Status st = CheckLeaseToUse(lease); !st.ok()) return Fail(st, std::move(done));
  DoRevokeLease(lease, std::move(done));
}

std::unique_ptr<WatchHandle> MetaStore::Watch(const std::string& prefix, int64_t start_revision,
                                              WatchCallback on_event) {
  // A watch cannot report a bad argument through its callback without ending oddly,
  // so these are the caller's invariants.
  SCRIBE_CHECK(on_event != nullptr);
  SCRIBE_CHECK(prefix.size() <= kKeyBytesMax);
  SCRIBE_CHECK(start_revision >= 0);
  return DoWatch(prefix, start_revision, std::move(on_event));
}

}  // namespace scribe
