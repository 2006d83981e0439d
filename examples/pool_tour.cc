// A tour of the SCRIBE storage pool (scribe/pool.h) on real files: three "nodes", each
// with one sparse 256 MiB file served through libaio, formed into one pool. It creates a
// mirrored virtual disk, writes, snapshots, diffs, clones, checks and reopens the pool.
//
// Usage: pool_tour DIRECTORY
//
// The Pool is asynchronous and single-threaded: every call takes a completion callback
// that runs on the pool's loop. A program that wants a synchronous flow (a tool, a test,
// this tour) starts an operation and then runs the loop until its callback has fired;
// Wait() and WaitStatus() below do exactly that.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"
#include "scribe/status.h"

namespace {

using scribe::DiskSpec;
using scribe::Extent;
using scribe::Loop;
using scribe::NodeId;
using scribe::Pool;
using scribe::SnapshotId;
using scribe::VsdId;

constexpr int kNodes = 3;
constexpr uint64_t kDiskBytes = 256ull << 20;
constexpr uint64_t kMetadataBytes = 16ull << 20;
constexpr uint64_t kVsdBytes = 64ull << 20;
constexpr size_t kPatternBytes = 1 << 20;
constexpr size_t kOverwriteBytes = 4096;
// Generous bound on any single operation; a real disk answers in milliseconds.
constexpr int64_t kOperationTimeoutNs = 60'000'000'000;

// Runs `op`, which must call its callback exactly once, and returns the result.
template <typename T>
absl::StatusOr<T> Wait(Loop* loop, const std::function<void(Pool::Done<T>)>& op) {
  std::optional<absl::StatusOr<T>> result;
  op([&](absl::StatusOr<T> r) { result = std::move(r); });
  loop->RunUntil([&] { return result.has_value(); }, kOperationTimeoutNs);
  if (!result) return absl::DeadlineExceededError("operation did not complete");
  return std::move(*result);
}

absl::Status WaitStatus(Loop* loop, const std::function<void(Pool::StatusDone)>& op) {
  std::optional<absl::Status> result;
  op([&](absl::Status st) { result = std::move(st); });
  loop->RunUntil([&] { return result.has_value(); }, kOperationTimeoutNs);
  if (!result) return absl::DeadlineExceededError("operation did not complete");
  return *result;
}

// Recognisable, position-dependent bytes so that a misplaced block cannot pass a check.
std::string Pattern(char seed, size_t length_bytes) {
  std::string s(length_bytes, '\0');
  for (size_t i = 0; i < length_bytes; ++i) s[i] = static_cast<char>(seed + i * 7 + (i >> 12));
  return s;
}

absl::Status ExpectVsdContents(Loop* loop, Pool* pool, VsdId vsd, uint64_t offset_bytes,
                               const std::string& expected, const std::string& what) {
  std::string got(expected.size(), '\0');
  RETURN_IF_ERROR(WaitStatus(loop, [&](Pool::StatusDone done) {
    pool->Read(vsd, offset_bytes, got.size(), got.data(), std::move(done));
  }));
  if (got != expected) return absl::DataLossError(what + ": data read back differs");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Pool>> OpenPool(Loop* loop, scribe::Random* random,
                                               const scribe::PoolOptions& options,
                                               const std::vector<DiskSpec>& disks,
                                               bool create) {
  return Wait<std::unique_ptr<Pool>>(loop, [&](Pool::Done<std::unique_ptr<Pool>> done) {
    if (create) {
      Pool::Create(loop, random, options, disks, std::move(done));
    } else {
      Pool::Open(loop, random, options, disks, std::move(done));
    }
  });
}

void PrintVsdInfo(const scribe::VsdInfo& info) {
  std::printf("vsd %s: size=%llu replication=%d allocated=%llu unique=%llu shared=%llu "
              "snapshots=%zu\n",
              info.name.c_str(), static_cast<unsigned long long>(info.size_bytes),
              info.replication, static_cast<unsigned long long>(info.allocated_bytes),
              static_cast<unsigned long long>(info.unique_bytes),
              static_cast<unsigned long long>(info.shared_bytes), info.snapshots);
}

void PrintStats(const scribe::PoolStats& stats) {
  std::printf("pool: capacity=%llu used=%llu chunks=%llu degraded=%llu metadata_sequence=%llu\n",
              static_cast<unsigned long long>(stats.capacity_bytes[0] + stats.capacity_bytes[1]),
              static_cast<unsigned long long>(stats.used_bytes[0] + stats.used_bytes[1]),
              static_cast<unsigned long long>(stats.chunks),
              static_cast<unsigned long long>(stats.degraded_chunks),
              static_cast<unsigned long long>(stats.metadata_sequence));
}

absl::Status Tour(const std::string& directory) {
  // main() wires the real environment: an event loop, entropy and one file per node.
  std::unique_ptr<scribe::RealLoop> loop = scribe::RealLoop::Create();
  std::unique_ptr<scribe::Random> random = scribe::NewSystemRandom();

  std::vector<std::string> paths;
  std::vector<std::unique_ptr<scribe::BlockDevice>> devices;
  std::vector<DiskSpec> disks;
  for (int n = 0; n < kNodes; ++n) {
    paths.push_back(directory + "/node" + std::to_string(n + 1) + ".disk");
    unlink(paths.back().c_str());
    scribe::AioDeviceOptions device_options;
    device_options.create_size_bytes = kDiskBytes;  // sparse: costs no space until written
    ASSIGN_OR_RETURN(auto device, scribe::OpenAioDevice(loop.get(), paths.back(), device_options));
    devices.push_back(std::move(device));
    disks.push_back(DiskSpec{NodeId{static_cast<uint64_t>(n + 1)}, scribe::Tier::kHdd,
                             devices.back().get()});
  }
  // Remove the files however the tour ends; the open devices keep working until closed.
  struct RemoveFiles {
    std::vector<std::string>* paths;
    ~RemoveFiles() {
      for (const std::string& p : *paths) unlink(p.c_str());
    }
  } remove_files{&paths};

  scribe::PoolOptions options;
  options.metadata_bytes = kMetadataBytes;
  ASSIGN_OR_RETURN(std::unique_ptr<Pool> pool,
                   OpenPool(loop.get(), random.get(), options, disks, /*create=*/true));
  std::printf("created pool on %d disks of %llu MiB\n", kNodes,
              static_cast<unsigned long long>(kDiskBytes >> 20));

  // A 64 MiB thin virtual disk, every block on two nodes.
  ASSIGN_OR_RETURN(VsdId vsd, Wait<VsdId>(loop.get(), [&](Pool::Done<VsdId> done) {
                     pool->CreateVsd(scribe::VsdOptions{"demo", kVsdBytes, 2, 4}, std::move(done));
                   }));

  // fua: the write is durable (on both copies) when it completes.
  const std::string original = Pattern('A', kPatternBytes);
  RETURN_IF_ERROR(WaitStatus(loop.get(), [&](Pool::StatusDone done) {
    pool->Write(vsd, 0, original.size(), original.data(), /*fua=*/true, std::move(done));
  }));
  RETURN_IF_ERROR(ExpectVsdContents(loop.get(), pool.get(), vsd, 0, original, "demo"));
  std::printf("wrote %zu bytes at offset 0\n", original.size());

  auto snapshot = [&](const std::string& name) {
    return Wait<SnapshotId>(loop.get(), [&](Pool::Done<SnapshotId> done) {
      pool->CreateSnapshot(vsd, name, std::move(done));
    });
  };
  ASSIGN_OR_RETURN(SnapshotId s1, snapshot("s1"));
  const std::string overwrite = Pattern('Z', kOverwriteBytes);
  RETURN_IF_ERROR(WaitStatus(loop.get(), [&](Pool::StatusDone done) {
    pool->Write(vsd, 0, overwrite.size(), overwrite.data(), /*fua=*/true, std::move(done));
  }));
  ASSIGN_OR_RETURN(SnapshotId s2, snapshot("s2"));

  // Only the overwritten 4 KiB differs between the snapshots.
  ASSIGN_OR_RETURN(std::vector<Extent> extents,
                   Wait<std::vector<Extent>>(loop.get(), [&](Pool::Done<std::vector<Extent>> done) {
                     pool->Diff(s1, s2, std::move(done));
                   }));
  std::printf("diff s1..s2: %zu extent(s)\n", extents.size());
  for (const Extent& e : extents) {
    std::printf("  extent offset=%llu length=%llu\n",
                static_cast<unsigned long long>(e.offset_bytes),
                static_cast<unsigned long long>(e.length_bytes));
  }

  // A clone is an independent VSD that starts with the snapshot's contents.
  ASSIGN_OR_RETURN(VsdId clone, Wait<VsdId>(loop.get(), [&](Pool::Done<VsdId> done) {
                     pool->CloneFromSnapshot(s1, "demo-clone", std::move(done));
                   }));
  RETURN_IF_ERROR(ExpectVsdContents(loop.get(), pool.get(), clone, 0, original, "demo-clone"));
  std::printf("demo-clone reads the original pattern\n");

  std::string expected_demo = original;
  expected_demo.replace(0, overwrite.size(), overwrite);
  RETURN_IF_ERROR(ExpectVsdContents(loop.get(), pool.get(), vsd, 0, expected_demo, "demo"));

  for (VsdId id : {vsd, clone}) {
    ASSIGN_OR_RETURN(scribe::VsdInfo info, pool->GetVsdInfo(id));
    PrintVsdInfo(info);
  }
  PrintStats(pool->Stats());

  ASSIGN_OR_RETURN(scribe::FsckReport fsck,
                   Wait<scribe::FsckReport>(loop.get(), [&](Pool::Done<scribe::FsckReport> done) {
                     pool->Fsck(std::move(done));
                   }));
  if (!fsck.ok()) return absl::InternalError("fsck: " + fsck.errors.front());
  std::printf("fsck: ok (%llu blocks referenced, %llu chunks)\n",
              static_cast<unsigned long long>(fsck.blocks_referenced),
              static_cast<unsigned long long>(fsck.chunks));
  ASSIGN_OR_RETURN(scribe::ScrubReport scrub,
                   Wait<scribe::ScrubReport>(loop.get(), [&](Pool::Done<scribe::ScrubReport> done) {
                     pool->Scrub(std::move(done));
                   }));
  std::printf("scrub: %llu chunks, %llu blocks checked, %llu bad copies\n",
              static_cast<unsigned long long>(scrub.chunks_checked),
              static_cast<unsigned long long>(scrub.blocks_checked),
              static_cast<unsigned long long>(scrub.bad_copies));
  if (scrub.bad_copies != 0 || scrub.unrecoverable != 0) {
    return absl::DataLossError("scrub found bad copies on fresh disks");
  }

  // Close and reopen: everything written with fua and every snapshot is still there.
  pool.reset();
  ASSIGN_OR_RETURN(pool, OpenPool(loop.get(), random.get(), options, disks, /*create=*/false));
  ASSIGN_OR_RETURN(VsdId reopened_vsd, pool->FindVsd("demo"));
  ASSIGN_OR_RETURN(VsdId reopened_clone, pool->FindVsd("demo-clone"));
  RETURN_IF_ERROR(
      ExpectVsdContents(loop.get(), pool.get(), reopened_vsd, 0, expected_demo, "demo (reopened)"));
  RETURN_IF_ERROR(ExpectVsdContents(loop.get(), pool.get(), reopened_clone, 0, original,
                                    "demo-clone (reopened)"));
  std::printf("reopened pool: data verified\n");

  // The pool must go before the devices it uses, and the devices before the loop.
  pool.reset();
  devices.clear();
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIRECTORY\n", argv[0]);
    return 2;
  }
  absl::Status status = Tour(argv[1]);
  if (!status.ok()) {
    std::fprintf(stderr, "pool tour: FAILED: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("pool tour: OK\n");
  return 0;
}
