// ScribeAdmin on the Pool: each method decodes its parameters into plain values,
// validates them (naming the field and the value in every refusal), resolves names to
// ids, starts the pool operation and encodes the result.
//
// Asynchrony and lifetimes. A pool operation completes through a callback on the loop;
// the method's promise comes from kj::newPromiseAndFulfiller, and the callback holds the
// fulfiller (in a shared_ptr, since std::function must be copyable) and nothing else of
// the call. If the client disconnects or drops the call first, Cap'n Proto cancels the
// promise (every method allows it): the fulfiller then becomes inert, the callback's
// fulfil() does nothing, and the continuation that would have written the reply never
// runs. Only that continuation touches the call context. It reads `backend->pool()` again
// rather than keeping the pointer from the start of the call, since the daemon may have
// given up the pool in between. A callback that is destroyed without being called (a
// pool closed with operations in flight) answers UNAVAILABLE.
#include "daemons/scribed/admin_service.h"

#include <kj/async.h>
#include <kj/debug.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "scribe/status.h"

namespace scribe::daemon {

namespace {

// The pool's rules, checked here first so that a refusal names the RPC field.
constexpr uint64_t kBlockBytes = 4096;
constexpr uint64_t kVsdBytesMax = 1ull << 50;  // 1 PiB
constexpr size_t kNameBytesMax = 255;
constexpr int kFlashPriorityMax = 11;
// Limits on what one call may ask for or return (a reply must stay well inside Cap'n
// Proto's default 64 MiB traversal limit on the client).
constexpr size_t kGroupVsdsMax = 256;
constexpr size_t kDiffExtentsMax = 1u << 20;  // 16 bytes each on the wire
constexpr size_t kPathBytesMax = 4095;
// Longest piece of a caller's string quoted back in an error message.
constexpr size_t kQuotedBytesMax = 128;

// In a method body, where `context` is the call's context: reply with the error of
// `expr` (an absl::Status) and return.
#define RETURN_FAIL_IF_ERROR(expr)                                \
  do {                                                            \
    ::absl::Status admin_status_ = (expr);                        \
    if (!admin_status_.ok()) return Fail(context, admin_status_); \
  } while (0)

// Binds the value of an absl::StatusOr or replies with its error and returns.
#define ASSIGN_OR_FAIL(lhs, expr)                                                    \
  auto SCRIBE_STATUS_CONCAT_(admin_statusor_, __LINE__) = (expr);                    \
  if (!SCRIBE_STATUS_CONCAT_(admin_statusor_, __LINE__).ok())                        \
    return Fail(context, SCRIBE_STATUS_CONCAT_(admin_statusor_, __LINE__).status()); \
  lhs = std::move(SCRIBE_STATUS_CONCAT_(admin_statusor_, __LINE__)).value()

template <typename T>
struct IsSharedPtr : std::false_type {};
template <typename T>
struct IsSharedPtr<std::shared_ptr<T>> : std::true_type {};

std::string Str(capnp::Text::Reader text) { return std::string(text.begin(), text.size()); }

// `s` must outlive the returned reader (Cap'n Proto copies it into the message).
capnp::Text::Reader Text(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }

// A caller's string made safe to print inside quotes in a message.
std::string Quote(absl::string_view s) {
  if (s.size() <= kQuotedBytesMax) return absl::CEscape(s);
  return absl::CEscape(s.substr(0, kQuotedBytesMax)) + "...";
}

void EncodeError(const absl::Status& status, api::Error::Builder out) {
  out.setCode(static_cast<uint16_t>(status.code()));
  const std::string message(status.message());
  out.setMessage(Text(message));
}

template <typename Context>
kj::Promise<void> Fail(Context& context, const absl::Status& status) {
  EncodeError(status, context.getResults().initError());
  return kj::READY_NOW;
}

void EncodeVsd(const VsdInfo& v, api::VsdInfo::Builder out) {
  out.setId(v.id.value);
  out.setName(Text(v.name));
  out.setSizeBytes(v.size_bytes);
  out.setReplication(static_cast<uint8_t>(v.replication));
  out.setFlashPriority(static_cast<uint8_t>(v.flash_priority));
  out.setAllocatedBytes(v.allocated_bytes);
  out.setUniqueBytes(v.unique_bytes);
  out.setSharedBytes(v.shared_bytes);
  out.setSnapshots(static_cast<uint32_t>(v.snapshots));
}

void EncodeSnapshot(const SnapshotInfo& s, api::SnapshotInfo::Builder out) {
  out.setId(s.id.value);
  out.setVsd(s.vsd.value);
  out.setName(Text(s.name));
  out.setGeneration(s.generation);
  out.setUniqueBytes(s.unique_bytes);
}

api::Tier EncodeTier(Tier tier) { return tier == Tier::kSsd ? api::Tier::SSD : api::Tier::HDD; }

void EncodeDisk(const DiskInfo& d, api::DiskInfo::Builder out) {
  out.setId(d.id.value);
  out.setNode(d.node.value);
  out.setTier(EncodeTier(d.tier));
  out.setCapacityBytes(d.capacity_bytes);
  out.setUsedBytes(d.used_bytes);
  out.setChunks(d.chunks);
  out.setFailed(d.failed);
  out.setOnline(d.online);
}

void EncodeStats(const PoolStats& s, bool fully_redundant, api::PoolStats::Builder out) {
  const int ssd = static_cast<int>(Tier::kSsd);
  const int hdd = static_cast<int>(Tier::kHdd);
  out.setSsdCapacityBytes(s.capacity_bytes[ssd]);
  out.setSsdUsedBytes(s.used_bytes[ssd]);
  out.setHddCapacityBytes(s.capacity_bytes[hdd]);
  out.setHddUsedBytes(s.used_bytes[hdd]);
  out.setChunks(s.chunks);
  out.setDegradedChunks(s.degraded_chunks);
  out.setRebuildsInFlight(s.rebuilds_in_flight);
  out.setChunksRebuilt(s.chunks_rebuilt);
  out.setMetadataSequence(s.metadata_sequence);
  out.setFullyRedundant(fully_redundant);
  out.setFenced(s.fenced);
  out.setMetadataChunks(s.metadata_chunks);
  out.setCheckpoints(s.checkpoints);
  out.setLastCheckpointPages(s.last_checkpoint_pages);
  out.setLastCheckpointRootBytes(s.last_checkpoint_root_bytes);
  out.setDeleteSubtreesPending(s.delete_subtrees_pending);
  out.setDeleteBytesFreed(s.delete_bytes_freed);
}

void EncodeScrub(const ScrubReport& r, api::ScrubReport::Builder out) {
  out.setChunksChecked(r.chunks_checked);
  out.setBlocksChecked(r.blocks_checked);
  out.setBadCopies(r.bad_copies);
  out.setRepaired(r.repaired);
  out.setUnrecoverable(r.unrecoverable);
}

void EncodeCluster(const ClusterStatus& c, api::ClusterStatus::Builder out) {
  out.setOwnerNode(c.owner_node);
  out.setEpoch(c.epoch);
  out.setState(Text(c.state));
  auto nodes = out.initNodes(static_cast<unsigned>(c.nodes.size()));
  for (size_t i = 0; i < c.nodes.size(); ++i) {
    const NodeStatus& n = c.nodes[i];
    auto o = nodes[i];
    o.setId(n.id);
    o.setBackplaneAddress(Text(n.backplane_address));
    o.setAdminAddress(Text(n.admin_address));
    o.setNbdSocket(Text(n.nbd_socket));
    o.setAlive(n.alive);
    o.setReachable(n.reachable);
    o.setOwner(n.owner);
  }
}

// RFC 3986 percent-encoding; `keep` lists reserved characters left as they are.
std::string PercentEncode(absl::string_view s, absl::string_view keep) {
  std::string out;
  for (unsigned char c : s) {
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved || keep.find(static_cast<char>(c)) != absl::string_view::npos) {
      out.push_back(static_cast<char>(c));
    } else {
      out += absl::StrFormat("%%%02X", c);
    }
  }
  return out;
}

// A name the caller wants to create (VSD, clone or snapshot).
absl::Status CheckNewName(absl::string_view field, const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s is empty", field));
  if (name.size() > kNameBytesMax) {
    return absl::InvalidArgumentError(absl::StrFormat("%s has %d bytes, more than the limit of %d",
                                                      field, name.size(), kNameBytesMax));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s \"%s\" contains the control character 0x%02x at byte %d", field, Quote(name), c, i));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckVsdSize(absl::string_view field, uint64_t size_bytes) {
  if (size_bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s must be a positive multiple of %d (got 0)", field, kBlockBytes));
  }
  if (size_bytes % kBlockBytes != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %d is not a multiple of %d bytes", field, size_bytes, kBlockBytes));
  }
  if (size_bytes > kVsdBytesMax) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s %d is above the limit of %d bytes (1 PiB)", field, size_bytes, kVsdBytesMax));
  }
  return absl::OkStatus();
}

class AdminService final : public api::ScribeAdmin::Server {
 public:
  AdminService(RealLoop* loop, AdminBackend* backend) : loop_(loop), backend_(backend) {}

  // ------------------------------------------------------------------ VSDs
  kj::Promise<void> createVsd(CreateVsdContext context) override {
    auto p = context.getParams();
    VsdOptions o;
    o.name = Str(p.getName());
    o.size_bytes = p.getSizeBytes();
    o.replication = p.getReplication();
    o.flash_priority = p.getFlashPriority();
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      RETURN_FAIL_IF_ERROR(CheckNewName("name", o.name));
      RETURN_FAIL_IF_ERROR(CheckVsdSize("sizeBytes", o.size_bytes));
      if (o.replication != 2 && o.replication != 3) {
        return Fail(context, absl::InvalidArgumentError(absl::StrFormat(
                                 "replication must be 2 or 3 (got %d)", o.replication)));
      }
      if (o.flash_priority > kFlashPriorityMax) {
        return Fail(context, absl::InvalidArgumentError(
                                 absl::StrFormat("flashPriority must be 0..%d (got %d)",
                                                 kFlashPriorityMax, o.flash_priority)));
      }
      RETURN_FAIL_IF_ERROR(CheckNameFree(pool, "name", o.name));
      auto pending = NewPending<absl::StatusOr<VsdId>>();
      pool->CreateVsd(o, pending.done);
      return pending.promise.then(
          [this, context](absl::StatusOr<VsdId> id) mutable { ReplyVsd(id, context); });
    });
  }

  kj::Promise<void> listVsds(ListVsdsContext context) override {
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      const std::vector<VsdInfo> vsds = pool->ListVsds();
      auto results = context.getResults();
      auto out = results.initVsds(static_cast<unsigned>(vsds.size()));
      for (size_t i = 0; i < vsds.size(); ++i) EncodeVsd(vsds[i], out[i]);
      EncodeError(absl::OkStatus(), results.initError());
      return kj::READY_NOW;
    });
  }

  kj::Promise<void> getVsd(GetVsdContext context) override {
    const std::string name = Str(context.getParams().getName());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "name", name));
      ReplyVsd(vsd, context);
      return kj::READY_NOW;
    });
  }

  kj::Promise<void> deleteVsd(DeleteVsdContext context) override {
    const std::string name = Str(context.getParams().getName());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "name", name));
      auto pending = NewPending<absl::Status>();
      pool->DeleteVsd(vsd, pending.done);
      return ReplyStatus(kj::mv(pending.promise), context);
    });
  }

  kj::Promise<void> resizeVsd(ResizeVsdContext context) override {
    auto p = context.getParams();
    const std::string name = Str(p.getName());
    const uint64_t size_bytes = p.getSizeBytes();
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "name", name));
      RETURN_FAIL_IF_ERROR(CheckVsdSize("sizeBytes", size_bytes));
      ASSIGN_OR_FAIL(VsdInfo info, pool->GetVsdInfo(vsd));
      if (size_bytes < info.size_bytes) {
        return Fail(context, absl::InvalidArgumentError(absl::StrFormat(
                                 "sizeBytes %d is smaller than VSD \"%s\"'s %d bytes: shrinking "
                                 "is not supported (it would destroy data)",
                                 size_bytes, Quote(name), info.size_bytes)));
      }
      auto pending = NewPending<absl::Status>();
      pool->ResizeVsd(vsd, size_bytes, pending.done);
      return pending.promise.then([this, vsd, context](absl::Status st) mutable {
        if (!st.ok()) return (void)Fail(context, st);
        ReplyVsd(vsd, context);
      });
    });
  }

  // -------------------------------------------------------- snapshots, clones
  kj::Promise<void> createSnapshot(CreateSnapshotContext context) override {
    auto p = context.getParams();
    const std::string vsd_name = Str(p.getVsd());
    const std::string name = Str(p.getName());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", vsd_name));
      RETURN_FAIL_IF_ERROR(CheckNewName("name", name));
      RETURN_FAIL_IF_ERROR(CheckSnapshotNameFree(pool, vsd, vsd_name, name));
      auto pending = NewPending<absl::StatusOr<SnapshotId>>();
      pool->CreateSnapshot(vsd, name, pending.done);
      return pending.promise.then([this, vsd, context](absl::StatusOr<SnapshotId> id) mutable {
        if (!id.ok()) return (void)Fail(context, id.status());
        absl::StatusOr<SnapshotInfo> info = SnapshotById(vsd, *id);
        if (!info.ok()) return (void)Fail(context, info.status());
        auto results = context.getResults();
        EncodeSnapshot(*info, results.initSnapshot());
        EncodeError(absl::OkStatus(), results.initError());
      });
    });
  }

  kj::Promise<void> createGroupSnapshot(CreateGroupSnapshotContext context) override {
    auto p = context.getParams();
    const std::string name = Str(p.getName());
    std::vector<std::string> vsd_names;
    for (capnp::Text::Reader t : p.getVsds()) {
      if (vsd_names.size() == kGroupVsdsMax) break;  // refused below; stop copying
      vsd_names.push_back(Str(t));
    }
    const size_t vsds_given = p.getVsds().size();
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      if (vsds_given == 0) {
        return Fail(context, absl::InvalidArgumentError("vsds is empty: name at least one VSD"));
      }
      if (vsds_given > kGroupVsdsMax) {
        return Fail(context, absl::InvalidArgumentError(
                                 absl::StrFormat("vsds has %d names, more than the limit of %d",
                                                 vsds_given, kGroupVsdsMax)));
      }
      RETURN_FAIL_IF_ERROR(CheckNewName("name", name));
      std::vector<VsdId> ids;
      std::set<std::string> seen;
      for (size_t i = 0; i < vsd_names.size(); ++i) {
        const std::string field = absl::StrFormat("vsds[%d]", i);
        if (!seen.insert(vsd_names[i]).second) {
          return Fail(context, absl::InvalidArgumentError(absl::StrFormat(
                                   "%s: VSD \"%s\" is listed twice", field, Quote(vsd_names[i]))));
        }
        ASSIGN_OR_FAIL(VsdId id, ResolveVsd(pool, field, vsd_names[i]));
        RETURN_FAIL_IF_ERROR(CheckSnapshotNameFree(pool, id, vsd_names[i], name));
        ids.push_back(id);
      }
      // Carried by pointer: GCC 12 reports a false -Wmaybe-uninitialized for a StatusOr of
      // a vector inside a KJ promise.
      using Made = std::shared_ptr<absl::StatusOr<std::vector<SnapshotId>>>;
      auto pending = NewPending<Made>();
      pool->CreateGroupSnapshot(ids, name, [done = pending.done](auto made) {
        done(std::make_shared<absl::StatusOr<std::vector<SnapshotId>>>(std::move(made)));
      });
      return pending.promise.then([this, ids, context](Made made_ptr) mutable {
        absl::StatusOr<std::vector<SnapshotId>>& made = *made_ptr;
        if (!made.ok()) return (void)Fail(context, made.status());
        if (made->size() != ids.size()) {
          return (void)Fail(
              context, absl::InternalError(absl::StrFormat("the pool made %d snapshots for %d VSDs",
                                                           made->size(), ids.size())));
        }
        std::vector<SnapshotInfo> infos;
        for (size_t i = 0; i < ids.size(); ++i) {
          absl::StatusOr<SnapshotInfo> info = SnapshotById(ids[i], (*made)[i]);
          if (!info.ok()) return (void)Fail(context, info.status());
          infos.push_back(*info);
        }
        auto results = context.getResults();
        auto out = results.initSnapshots(static_cast<unsigned>(infos.size()));
        for (size_t i = 0; i < infos.size(); ++i) EncodeSnapshot(infos[i], out[i]);
        EncodeError(absl::OkStatus(), results.initError());
      });
    });
  }

  kj::Promise<void> listSnapshots(ListSnapshotsContext context) override {
    const std::string vsd_name = Str(context.getParams().getVsd());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", vsd_name));
      const std::vector<SnapshotInfo> snapshots = pool->ListSnapshots(vsd);
      auto results = context.getResults();
      auto out = results.initSnapshots(static_cast<unsigned>(snapshots.size()));
      for (size_t i = 0; i < snapshots.size(); ++i) EncodeSnapshot(snapshots[i], out[i]);
      EncodeError(absl::OkStatus(), results.initError());
      return kj::READY_NOW;
    });
  }

  kj::Promise<void> deleteSnapshot(DeleteSnapshotContext context) override {
    auto p = context.getParams();
    const std::string vsd_name = Str(p.getVsd());
    const std::string name = Str(p.getName());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", vsd_name));
      ASSIGN_OR_FAIL(SnapshotId snapshot, ResolveSnapshot(pool, vsd, vsd_name, "name", name));
      auto pending = NewPending<absl::Status>();
      pool->DeleteSnapshot(snapshot, pending.done);
      return ReplyStatus(kj::mv(pending.promise), context);
    });
  }

  kj::Promise<void> cloneFromSnapshot(CloneFromSnapshotContext context) override {
    auto p = context.getParams();
    const std::string vsd_name = Str(p.getVsd());
    const std::string snapshot_name = Str(p.getSnapshot());
    const std::string clone_name = Str(p.getCloneName());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", vsd_name));
      ASSIGN_OR_FAIL(SnapshotId snapshot,
                     ResolveSnapshot(pool, vsd, vsd_name, "snapshot", snapshot_name));
      RETURN_FAIL_IF_ERROR(CheckNewName("cloneName", clone_name));
      RETURN_FAIL_IF_ERROR(CheckNameFree(pool, "cloneName", clone_name));
      auto pending = NewPending<absl::StatusOr<VsdId>>();
      pool->CloneFromSnapshot(snapshot, clone_name, pending.done);
      return pending.promise.then(
          [this, context](absl::StatusOr<VsdId> id) mutable { ReplyVsd(id, context); });
    });
  }

  kj::Promise<void> cloneVsd(CloneVsdContext context) override {
    auto p = context.getParams();
    const std::string vsd_name = Str(p.getVsd());
    const std::string clone_name = Str(p.getCloneName());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", vsd_name));
      RETURN_FAIL_IF_ERROR(CheckNewName("cloneName", clone_name));
      RETURN_FAIL_IF_ERROR(CheckNameFree(pool, "cloneName", clone_name));
      auto pending = NewPending<absl::StatusOr<VsdId>>();
      pool->CloneVsd(vsd, clone_name, pending.done);
      return pending.promise.then(
          [this, context](absl::StatusOr<VsdId> id) mutable { ReplyVsd(id, context); });
    });
  }

  kj::Promise<void> revertToSnapshot(RevertToSnapshotContext context) override {
    auto p = context.getParams();
    const std::string vsd_name = Str(p.getVsd());
    const std::string snapshot_name = Str(p.getSnapshot());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", vsd_name));
      ASSIGN_OR_FAIL(SnapshotId snapshot,
                     ResolveSnapshot(pool, vsd, vsd_name, "snapshot", snapshot_name));
      auto pending = NewPending<absl::Status>();
      pool->RevertToSnapshot(vsd, snapshot, pending.done);
      return ReplyStatus(kj::mv(pending.promise), context);
    });
  }

  kj::Promise<void> diff(DiffContext context) override {
    auto p = context.getParams();
    const std::string vsd_name = Str(p.getVsd());
    const std::string from_name = Str(p.getFrom());
    const std::string to_name = Str(p.getTo());
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", vsd_name));
      SnapshotId from;  // invalid: everything mapped in `to`
      if (!from_name.empty()) {
        ASSIGN_OR_FAIL(from, ResolveSnapshot(pool, vsd, vsd_name, "from", from_name));
      }
      ASSIGN_OR_FAIL(SnapshotId to, ResolveSnapshot(pool, vsd, vsd_name, "to", to_name));
      // Carried by pointer, as in createGroupSnapshot (GCC 12 and a StatusOr of a vector
      // inside a KJ promise).
      using Extents = std::shared_ptr<absl::StatusOr<std::vector<Extent>>>;
      auto pending = NewPending<Extents>();
      pool->Diff(from, to, [done = pending.done](auto extents) {
        done(std::make_shared<absl::StatusOr<std::vector<Extent>>>(std::move(extents)));
      });
      return pending.promise.then([context](Extents extents_ptr) mutable {
        absl::StatusOr<std::vector<Extent>>& extents = *extents_ptr;
        if (!extents.ok()) return (void)Fail(context, extents.status());
        if (extents->size() > kDiffExtentsMax) {
          return (void)Fail(context, absl::ResourceExhaustedError(absl::StrFormat(
                                         "the diff has %d extents, more than the %d one reply "
                                         "may carry",
                                         extents->size(), kDiffExtentsMax)));
        }
        auto results = context.getResults();
        auto out = results.initExtents(static_cast<unsigned>(extents->size()));
        for (size_t i = 0; i < extents->size(); ++i) {
          out[i].setOffsetBytes((*extents)[i].offset_bytes);
          out[i].setLengthBytes((*extents)[i].length_bytes);
        }
        EncodeError(absl::OkStatus(), results.initError());
      });
    });
  }

  // ------------------------------------------------------------ disks, health
  kj::Promise<void> listDisks(ListDisksContext context) override {
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      const std::vector<DiskInfo> disks = pool->ListDisks();
      auto results = context.getResults();
      auto out = results.initDisks(static_cast<unsigned>(disks.size()));
      for (size_t i = 0; i < disks.size(); ++i) EncodeDisk(disks[i], out[i]);
      EncodeError(absl::OkStatus(), results.initError());
      return kj::READY_NOW;
    });
  }

  kj::Promise<void> fenceVsd(FenceVsdContext context) override {
    auto p = context.getParams();
    const std::string name = Str(p.getVsd());
    const uint64_t epoch = p.getEpoch();
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", name));
      (void)vsd;
      if (epoch == 0) return Fail(context, absl::InvalidArgumentError("epoch must be >= 1"));
      auto pending = NewPending<absl::Status>();
      backend_->FenceVsd(name, epoch, pending.done);
      return ReplyStatus(kj::mv(pending.promise), context);
    });
  }

  kj::Promise<void> failDisk(FailDiskContext context) override {
    const uint64_t disk = context.getParams().getDisk();
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      if (disk == 0) {
        return Fail(context, absl::InvalidArgumentError("disk must be a disk id (got 0)"));
      }
      auto pending = NewPending<absl::Status>();
      pool->FailDisk(DiskId{disk}, pending.done);
      return ReplyStatus(kj::mv(pending.promise), context);
    });
  }

  kj::Promise<void> addDisk(AddDiskContext context) override {
    auto p = context.getParams();
    const uint64_t node = p.getNode();
    const std::string path = Str(p.getPath());
    const uint64_t size_bytes = p.getSizeBytes();
    const api::Tier tier = p.getTier();
    return OnLoop(context, [&]() -> kj::Promise<void> {
      RETURN_FAIL_IF_ERROR(CurrentPool().status());
      if (node == 0) {
        return Fail(context, absl::InvalidArgumentError("node must be a node id (got 0)"));
      }
      const ClusterStatus cluster = backend_->Cluster();
      bool member = false;
      for (const NodeStatus& n : cluster.nodes) member = member || n.id == node;
      if (!member) {
        return Fail(context, absl::NotFoundError(
                                 absl::StrFormat("node %d is not a member of the cluster", node)));
      }
      if (path.empty()) return Fail(context, absl::InvalidArgumentError("path is empty"));
      if (path.size() > kPathBytesMax || path.find('\0') != std::string::npos) {
        return Fail(context, absl::InvalidArgumentError(absl::StrFormat(
                                 "path \"%s\" is not a valid file name", Quote(path))));
      }
      if (size_bytes % kBlockBytes != 0) {
        return Fail(context,
                    absl::InvalidArgumentError(absl::StrFormat(
                        "sizeBytes %d is not a multiple of %d bytes", size_bytes, kBlockBytes)));
      }
      Tier pool_tier;
      switch (tier) {
        case api::Tier::SSD:
          pool_tier = Tier::kSsd;
          break;
        case api::Tier::HDD:
          pool_tier = Tier::kHdd;
          break;
        default:
          return Fail(context,
                      absl::InvalidArgumentError(absl::StrFormat(
                          "tier %d is neither ssd (0) nor hdd (1)", static_cast<int>(tier))));
      }
      auto pending = NewPending<absl::StatusOr<uint64_t>>();
      backend_->AddDisk(node, path, size_bytes, pool_tier, pending.done);
      return pending.promise.then([context](absl::StatusOr<uint64_t> disk) mutable {
        if (!disk.ok()) return (void)Fail(context, disk.status());
        auto results = context.getResults();
        results.setDisk(*disk);
        EncodeError(absl::OkStatus(), results.initError());
      });
    });
  }

  kj::Promise<void> stats(StatsContext context) override {
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      auto results = context.getResults();
      EncodeStats(pool->Stats(), pool->FullyRedundant(), results.initStats());
      EncodeError(absl::OkStatus(), results.initError());
      return kj::READY_NOW;
    });
  }

  kj::Promise<void> scrub(ScrubContext context) override {
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      auto pending = NewPending<absl::StatusOr<ScrubReport>>();
      pool->Scrub(pending.done);
      return pending.promise.then([context](absl::StatusOr<ScrubReport> report) mutable {
        if (!report.ok()) return (void)Fail(context, report.status());
        auto results = context.getResults();
        EncodeScrub(*report, results.initReport());
        EncodeError(absl::OkStatus(), results.initError());
      });
    });
  }

  // --------------------------------------------------------- cluster, export
  kj::Promise<void> cluster(ClusterContext context) override {
    return OnLoop(context, [&]() -> kj::Promise<void> {
      auto results = context.getResults();
      EncodeCluster(backend_->Cluster(), results.initStatus());
      EncodeError(absl::OkStatus(), results.initError());
      return kj::READY_NOW;
    });
  }

  kj::Promise<void> exportInfo(ExportInfoContext context) override {
    auto p = context.getParams();
    const std::string vsd_name = Str(p.getVsd());
    const uint64_t node = p.getNode();
    return OnLoop(context, [&]() -> kj::Promise<void> {
      ASSIGN_OR_FAIL(Pool * pool, CurrentPool());
      ASSIGN_OR_FAIL(VsdId vsd, ResolveVsd(pool, "vsd", vsd_name));
      (void)vsd;
      const ClusterStatus cluster = backend_->Cluster();
      const uint64_t wanted = node != 0 ? node : cluster.owner_node;
      if (wanted == 0) return Fail(context, absl::UnavailableError("no pool owner yet"));
      const NodeStatus* found = nullptr;
      for (const NodeStatus& n : cluster.nodes) {
        if (n.id == wanted) found = &n;
      }
      if (found == nullptr) {
        return Fail(context, absl::NotFoundError(absl::StrFormat(
                                 "node %d is not a member of the cluster", wanted)));
      }
      if (found->nbd_socket.empty()) {
        return Fail(context, absl::FailedPreconditionError(
                                 absl::StrFormat("node %d does not export over NBD", wanted)));
      }
      const std::string uri = "nbd+unix:///" + PercentEncode(vsd_name, "") +
                              "?socket=" + PercentEncode(found->nbd_socket, "/");
      auto results = context.getResults();
      results.setNode(wanted);
      results.setNbdSocket(Text(found->nbd_socket));
      results.setExportName(Text(vsd_name));
      results.setUri(Text(uri));
      EncodeError(absl::OkStatus(), results.initError());
      return kj::READY_NOW;
    });
  }

 private:
  // A promise for what a pool callback delivers, and the callback (copyable, holding
  // only the fulfiller: see the file comment).
  template <typename T>
  struct Pending {
    kj::Promise<T> promise;
    std::function<void(T)> done;
  };

  // The fulfiller shared by the copies of a callback. If every copy is destroyed without
  // having been called (the pool or the backend dropped the operation, e.g. because the
  // pool was closed), the caller gets UNAVAILABLE rather than an RPC exception.
  template <typename T>
  struct Completion {
    explicit Completion(kj::Own<kj::PromiseFulfiller<T>> f) : fulfiller(kj::mv(f)) {}
    ~Completion() {
      if (!fulfiller->isWaiting()) return;
      const absl::Status abandoned = absl::UnavailableError(
          "the pool dropped the operation before it completed (it may or may not have taken "
          "effect)");
      if constexpr (IsSharedPtr<T>::value) {
        fulfiller->fulfill(std::make_shared<typename T::element_type>(abandoned));
      } else {
        fulfiller->fulfill(T(abandoned));
      }
    }
    kj::Own<kj::PromiseFulfiller<T>> fulfiller;
  };

  template <typename T>
  static Pending<T> NewPending() {
    auto paf = kj::newPromiseAndFulfiller<T>();
    auto completion = std::make_shared<Completion<T>>(kj::mv(paf.fulfiller));
    return Pending<T>{kj::mv(paf.promise),
                      [completion](T value) { completion->fulfiller->fulfill(kj::mv(value)); }};
  }

  // Runs a method body as a loop callback (so that a RunUntil in progress re-checks its
  // predicate afterwards, as for every other real component). The call may be cancelled
  // (its client went away or dropped it; Cap'n Proto 0.9 only does that when allowed):
  // the reply is then dropped, the pool operation completes all the same.
  template <typename Context, typename F>
  kj::Promise<void> OnLoop(Context& context, F&& body) {
    context.allowCancellation();
    kj::Promise<void> out = nullptr;
    loop_->Dispatch([&] { out = body(); });
    return out;
  }

  absl::StatusOr<Pool*> CurrentPool() {
    Pool* pool = backend_->pool();
    if (pool != nullptr) return pool;
    const ClusterStatus cluster = backend_->Cluster();
    if (cluster.owner_node == 0) {
      return absl::UnavailableError(
          cluster.state.empty() ? std::string("no pool owner yet")
                                : absl::StrFormat("no pool owner yet (cluster %s)", cluster.state));
    }
    return absl::UnavailableError(
        absl::StrFormat("this node does not run the pool (owner: node %d)", cluster.owner_node));
  }

  static absl::StatusOr<VsdId> ResolveVsd(Pool* pool, absl::string_view field,
                                          const std::string& name) {
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s (a VSD name) is empty", field));
    }
    absl::StatusOr<VsdId> id = pool->FindVsd(name);
    if (!id.ok()) {
      return absl::NotFoundError(absl::StrFormat("no VSD named \"%s\"", Quote(name)));
    }
    return *id;
  }

  static absl::StatusOr<SnapshotId> ResolveSnapshot(Pool* pool, VsdId vsd,
                                                    const std::string& vsd_name,
                                                    absl::string_view field,
                                                    const std::string& name) {
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s (a snapshot name) is empty", field));
    }
    for (const SnapshotInfo& s : pool->ListSnapshots(vsd)) {
      if (s.name == name) return s.id;
    }
    return absl::NotFoundError(
        absl::StrFormat("VSD \"%s\" has no snapshot named \"%s\"", Quote(vsd_name), Quote(name)));
  }

  static absl::Status CheckNameFree(Pool* pool, absl::string_view field, const std::string& name) {
    if (pool->FindVsd(name).ok()) {
      return absl::AlreadyExistsError(
          absl::StrFormat("%s: a VSD named \"%s\" already exists", field, Quote(name)));
    }
    return absl::OkStatus();
  }

  // Snapshots are addressed by (VSD, name), so a name is unique within its VSD. The check
  // and the pool call happen in one loop turn, and the pool records a snapshot in memory
  // before returning, so two concurrent calls cannot both pass it.
  static absl::Status CheckSnapshotNameFree(Pool* pool, VsdId vsd, const std::string& vsd_name,
                                            const std::string& name) {
    for (const SnapshotInfo& s : pool->ListSnapshots(vsd)) {
      if (s.name == name) {
        return absl::AlreadyExistsError(absl::StrFormat(
            "VSD \"%s\" already has a snapshot named \"%s\"", Quote(vsd_name), Quote(name)));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<SnapshotInfo> SnapshotById(VsdId vsd, SnapshotId id) {
    ASSIGN_OR_RETURN(Pool * pool, CurrentPool());
    for (const SnapshotInfo& s : pool->ListSnapshots(vsd)) {
      if (s.id == id) return s;
    }
    return absl::NotFoundError(absl::StrFormat("snapshot %d is gone", id.value));
  }

  // Replies with a VSD's info (any context whose results have `vsd`/`clone` and `error`).
  template <typename Context>
  void ReplyVsd(const absl::StatusOr<VsdId>& id, Context& context) {
    if (!id.ok()) return (void)Fail(context, id.status());
    absl::StatusOr<Pool*> pool = CurrentPool();
    if (!pool.ok()) return (void)Fail(context, pool.status());
    absl::StatusOr<VsdInfo> info = (*pool)->GetVsdInfo(*id);
    if (!info.ok()) return (void)Fail(context, info.status());
    auto results = context.getResults();
    if constexpr (requires { results.initClone(); }) {
      EncodeVsd(*info, results.initClone());
    } else {
      EncodeVsd(*info, results.initVsd());
    }
    EncodeError(absl::OkStatus(), results.initError());
  }

  template <typename Context>
  kj::Promise<void> ReplyStatus(kj::Promise<absl::Status> promise, Context& context) {
    return promise.then(
        [context](absl::Status st) mutable { EncodeError(st, context.getResults().initError()); });
  }

  RealLoop* loop_;
  AdminBackend* backend_;
};

#undef RETURN_FAIL_IF_ERROR
#undef ASSIGN_OR_FAIL

}  // namespace

kj::Own<api::ScribeAdmin::Server> NewAdminService(RealLoop* loop, AdminBackend* backend) {
  KJ_REQUIRE(loop != nullptr && backend != nullptr, "NewAdminService needs a loop and a backend");
  return kj::heap<AdminService>(loop, backend);
}

}  // namespace scribe::daemon
