// Measures the Pool on real files (O_DIRECT + libaio) beside the raw device in the same
// run, and prints the figures docs/BENCHMARKS.md records:
//   bazel run -c opt //libscribe/bench:pool_benchmark -- [--dir=/var/tmp] [--gib=1]
//       [--only=throughput|striping|snapshots|delete|diff|metadata|cache]
//   --only=metadata maps --gib of data on files that keep only metadata (TiB scale);
//   --cache-mib=N sets its metadata cache (leaves and chunk states).
//   --runs=N (default 5): the snapshot series repeated, for min / median / max.
//   --only=cache: 4 KiB random I/O on a --gib VSD with the map cached whole, then with
//   a leaf cache of 1/8 of its leaves (the cost of a miss; checkpoints every 1/4 of the
//   cache in changed leaves, the defaults' ratio).
// Snapshot and clone latency include the durable metadata commit (fdatasync).
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "scribe/pool.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {
namespace {

double Seconds(Loop* loop, int64_t since) { return (loop->NowNanos() - since) / 1e9; }

template <typename T>
T Must(Loop* loop, std::function<void(Pool::Done<T>)> op) {
  std::optional<absl::StatusOr<T>> r;
  op([&](absl::StatusOr<T> v) { r = std::move(v); });
  loop->RunUntil([&] { return r.has_value(); }, 3600'000'000'000);
  if (!r || !r->ok()) {
    std::fprintf(stderr, "operation failed: %s\n", r ? r->status().ToString().c_str() : "timeout");
    std::exit(1);
  }
  return std::move(**r);
}

void MustOk(Loop* loop, std::function<void(Pool::StatusDone)> op) {
  std::optional<absl::Status> r;
  op([&](absl::Status st) { r = st; });
  loop->RunUntil([&] { return r.has_value(); }, 3600'000'000'000);
  if (!r || !r->ok()) {
    std::fprintf(stderr, "operation failed: %s\n", r ? r->ToString().c_str() : "timeout");
    std::exit(1);
  }
}

// Runs `ops` operations keeping `depth` in flight; `issue(i, done)` starts op i.
double RunQueue(Loop* loop, int ops, int depth, const std::function<void(int, std::function<void(absl::Status)>)>& issue) {
  int next = 0, completed = 0, in_flight = 0;
  std::function<void()> pump;
  pump = [&] {
    while (in_flight < depth && next < ops) {
      ++in_flight;
      issue(next++, [&](absl::Status st) {
        SCRIBE_CHECK(st.ok());
        --in_flight;
        ++completed;
        pump();
      });
    }
  };
  const int64_t start = loop->NowNanos();
  pump();
  loop->RunUntil([&] { return completed == ops; }, 3600'000'000'000);
  return Seconds(loop, start);
}

struct Files {
  std::vector<std::string> paths;
  std::vector<std::unique_ptr<BlockDevice>> devs;
  ~Files() {
    devs.clear();
    for (auto& p : paths) unlink(p.c_str());
  }
};

// Writes every byte of the device once (like a real disk, no file-system allocation
// left for later writes to pay for).
void Prewrite(RealLoop* loop, BlockDevice* dev) {
  AlignedBuffer zeros(8 << 20);
  const int ops = static_cast<int>(dev->size_bytes() / zeros.size());
  RunQueue(loop, ops, 4, [&](int i, auto done) {
    dev->Write(static_cast<uint64_t>(i) * zeros.size(), zeros.size(), zeros.data(), done);
  });
  MustOk(loop, [&](auto d) { dev->Flush(d); });
}

void OpenFiles(RealLoop* loop, Files* f, const std::string& dir, int n, uint64_t bytes, const char* tag) {
  for (int i = 0; i < n; ++i) {
    std::string path = dir + "/scribe_bench_" + tag + std::to_string(i) + "." + std::to_string(getpid());
    unlink(path.c_str());
    AioDeviceOptions o;
    o.create_size_bytes = bytes;
    auto d = OpenAioDevice(loop, path, o);
    SCRIBE_CHECK(d.ok());
    f->paths.push_back(path);
    f->devs.push_back(std::move(*d));
  }
}

std::vector<DiskSpec> Specs(Files* f, int per_node) {
  std::vector<DiskSpec> specs;
  for (size_t i = 0; i < f->devs.size(); ++i) {
    specs.push_back(DiskSpec{NodeId{1 + i / per_node}, Tier::kHdd, f->devs[i].get()});
  }
  return specs;
}

PoolOptions BenchPoolOptions() {
  PoolOptions o;
  o.metadata_bytes = 256ull << 20;
  return o;
}

std::unique_ptr<Pool> MakePool(RealLoop* loop, Random* random, Files* f, int per_node) {
  return Must<std::unique_ptr<Pool>>(loop, [&](auto done) {
    Pool::Create(loop, random, BenchPoolOptions(), Specs(f, per_node), done);
  });
}

struct Dist {
  double min = 0, median = 0, max = 0;
};
Dist DistOf(std::vector<double> v) {
  Dist d;
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  d.min = v.front();
  d.max = v.back();
  d.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  return d;
}

// Resident memory of this process (VmRSS; VmHWM: the peak), from /proc/self/status,
// after handing freed heap back to the system.
uint64_t StatusKiB(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t kib = 0;
  const std::string fmt = std::string(field) + ": %lu kB";
  while (std::fgets(line, sizeof(line), f)) {
    if (std::sscanf(line, fmt.c_str(), &kib) == 1) break;
  }
  std::fclose(f);
  return kib;
}
uint64_t RssBytes() {
  malloc_trim(0);
  return StatusKiB("VmRSS") << 10;
}
uint64_t PeakRssBytes() { return StatusKiB("VmHWM") << 10; }
// Heap bytes in use (what the structures hold, without the allocator's free memory
// that fragmentation keeps resident).
uint64_t HeapInUseBytes() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

// A file device that keeps only metadata: the superblock and journal region, and writes
// of metadata pages (they start with the page magic). VSD data writes complete without
// touching the file, so a TiB can be mapped on a machine with tens of GiB of disk.
class MetadataOnlyDevice : public BlockDevice {
 public:
  MetadataOnlyDevice(Loop* loop, std::unique_ptr<BlockDevice> file, uint64_t keep_prefix)
      : loop_(loop), file_(std::move(file)), keep_prefix_(keep_prefix) {}
  uint64_t size_bytes() const override { return file_->size_bytes(); }
  void Read(uint64_t offset, size_t length, void* buf, Callback done) override {
    file_->Read(offset, length, buf, std::move(done));
  }
  void Write(uint64_t offset, size_t length, const void* buf, Callback done) override {
    if (offset < keep_prefix_ || std::memcmp(buf, "PAGE", 4) == 0) {
      return file_->Write(offset, length, buf, std::move(done));
    }
    ++dropped_;
    // Completes through a real 4 KiB read of the superblock, so completions arrive as
    // device events like any write's (a posted callback or a timer would run before the
    // loop polls for the commits' real I/O, and starve it).
    file_->Read(0, kProbeBytes, probe_.data(), std::move(done));
  }
  void Flush(Callback done) override { file_->Flush(std::move(done)); }
  void WriteDurable(uint64_t offset, size_t length, const void* buf, Callback done) override {
    file_->WriteDurable(offset, length, buf, std::move(done));
  }
  void Discard(uint64_t offset, size_t length, Callback done) override {
    file_->Discard(offset, length, std::move(done));
  }
  uint64_t dropped() const { return dropped_; }

 private:
  Loop* loop_;
  std::unique_ptr<BlockDevice> file_;
  uint64_t keep_prefix_;
  uint64_t dropped_ = 0;
  static constexpr size_t kProbeBytes = 4096;
  AlignedBuffer probe_{kProbeBytes};  // reads land here; nobody looks at them
};

// Metadata at scale: maps `gib` GiB (1 MiB writes: full leaves) on metadata-only files,
// then reports resident memory, the pages the checkpoints wrote, open time, and the
// pages a commit writes for scattered 4 KiB overwrites against the nodes they dirtied.
void MetadataScale(RealLoop* loop, Random* random, const std::string& dir, uint64_t gib,
                   uint64_t cache_mib) {
  const uint64_t rss0 = RssBytes();
  const uint64_t heap0 = HeapInUseBytes();
  const uint64_t data = gib << 30;
  PoolOptions options = BenchPoolOptions();
  if (cache_mib != 0) options.metadata_cache_bytes = cache_mib << 20;
  const uint64_t prefix = 4096 + options.metadata_bytes;
  std::vector<std::string> paths;
  std::vector<std::unique_ptr<MetadataOnlyDevice>> devs;
  for (int i = 0; i < 3; ++i) {
    std::string path = dir + "/scribe_bench_meta" + std::to_string(i) + "." + std::to_string(getpid());
    unlink(path.c_str());
    AioDeviceOptions o;
    o.create_size_bytes = data * 2 / 3 + data / 8 + (4ull << 30);  // RF 2 over 3, + metadata
    auto d = OpenAioDevice(loop, path, o);
    SCRIBE_CHECK(d.ok());
    paths.push_back(path);
    devs.push_back(std::make_unique<MetadataOnlyDevice>(loop, std::move(*d), prefix));
  }
  std::vector<DiskSpec> specs;
  for (int i = 0; i < 3; ++i) specs.push_back(DiskSpec{NodeId{1ull + i}, Tier::kHdd, devs[i].get()});
  auto pool = Must<std::unique_ptr<Pool>>(loop, [&](auto done) { Pool::Create(loop, random, options, specs, done); });
  VsdId v = Must<VsdId>(loop, [&](auto done) { pool->CreateVsd(VsdOptions{"big", data, 2}, done); });
  AlignedBuffer big(1 << 20), small(4096);
  const int64_t t0 = loop->NowNanos();
  uint64_t largest = 0;  // pages of the largest checkpoint while mapping
  RunQueue(loop, static_cast<int>(data >> 20), 8, [&](int i, auto done) {
    if (i % 256 == 0) largest = std::max(largest, pool->Stats().last_checkpoint_pages);
    pool->Write(v, static_cast<uint64_t>(i) << 20, 1 << 20, big.data(), false, done);
  });
  MustOk(loop, [&](auto d) { pool->Flush(d); });
  largest = std::max(largest, pool->Stats().last_checkpoint_pages);
  const double map_s = Seconds(loop, t0);
  const PoolStats mapped = pool->Stats();
  loop->RunUntil([] { return false; }, 100'000'000);  // the posted eviction runs
  const uint64_t rss_mapped = RssBytes();
  const uint64_t heap_mapped = HeapInUseBytes();
  pool.reset();
  const int64_t t1 = loop->NowNanos();
  pool = Must<std::unique_ptr<Pool>>(loop, [&](auto done) { Pool::Open(loop, random, options, specs, done); });
  const double open_s = Seconds(loop, t1);
  loop->RunUntil([] { return false; }, 100'000'000);  // the posted eviction runs
  const uint64_t peak_open = PeakRssBytes();
  const uint64_t rss_open = RssBytes();
  const uint64_t heap_open = HeapInUseBytes();
  const PoolStats opened = pool->Stats();
  // Scattered 4 KiB overwrites: the pages checkpoints write for them, against the
  // distinct nodes they dirtied (leaves, their parents, the levels above).
  const int writes = 20000;
  std::set<uint64_t> leaves, parents;
  RunQueue(loop, writes, 8, [&](int, auto done) {
    const uint64_t block = random->Uniform(data / 4096);
    leaves.insert(block / 256);
    parents.insert(block / 65536);
    pool->Write(v, block * 4096, 4096, small.data(), false, done);
  });
  MustOk(loop, [&](auto d) { pool->Flush(d); });
  // The checkpoint those writes made due starts once the chunk states they changed while
  // out of memory are read back (the flush above was a journal batch meanwhile): count it.
  loop->RunUntil([&] { return pool->Stats().chunk_states_with_deltas == 0; }, 60'000'000'000);
  MustOk(loop, [&](auto d) { pool->Flush(d); });
  const PoolStats after = pool->Stats();
  const uint64_t pages = after.checkpoint_pages_written - opened.checkpoint_pages_written;
  const uint64_t ckpts = after.checkpoints - opened.checkpoints;
  const uint64_t nodes_dirtied = leaves.size() + parents.size() + 2;
  // Chunk states dirtied: the chunk of each overwritten block (the data was mapped 1 MiB
  // at a time, so a leaf's blocks are one chunk), the new chunks the writes filled, and
  // the group pages naming them (32 chunks to a group).
  const uint64_t states_dirtied = leaves.size() + (writes + 255) / 256;
  const uint64_t dirtied = nodes_dirtied + states_dirtied + (states_dirtied + 31) / 32;
  std::printf("metadata at %lu GiB mapped (1 MiB writes, full leaves; data not stored): mapped in %.1f s\n",
              static_cast<unsigned long>(gib), map_s);
  std::printf("  memory (metadata cache %lu MiB): heap in use +%.0f MiB after mapping, +%.0f MiB after reopening (%.2f MiB per GiB mapped); %lu leaves and %lu chunk states in memory after mapping, %lu and %lu after reopening\n",
              static_cast<unsigned long>(options.metadata_cache_bytes >> 20),
              (heap_mapped - heap0) / 1048576.0, (heap_open - heap0) / 1048576.0,
              (heap_open - heap0) / 1048576.0 / gib, static_cast<unsigned long>(mapped.map_leaves_in_memory),
              static_cast<unsigned long>(mapped.chunk_states_in_memory),
              static_cast<unsigned long>(opened.map_leaves_in_memory),
              static_cast<unsigned long>(opened.chunk_states_in_memory));
  std::printf("  resident (RSS, includes free heap kept by fragmentation): +%.0f MiB after mapping, +%.0f MiB after reopening; peak +%.0f MiB\n",
              (rss_mapped - rss0) / 1048576.0, (rss_open - rss0) / 1048576.0,
              (peak_open - rss0) / 1048576.0);
  std::printf("  metadata chunks %lu (MiB of pages per copy); mapping took %lu checkpoints writing %lu pages, the largest %lu; root %lu bytes\n",
              static_cast<unsigned long>(mapped.metadata_chunks), static_cast<unsigned long>(mapped.checkpoints),
              static_cast<unsigned long>(mapped.checkpoint_pages_written), static_cast<unsigned long>(largest),
              static_cast<unsigned long>(opened.last_checkpoint_root_bytes));
  std::printf("  open: %.3f s: %lu metadata pages read (the interior tree pages and every chunk group: 1/256 of the leaves and 1/32 of the chunks; %lu leaves, for the journal tail), %.1f MiB of journal read, %lu chunk states read\n",
              open_s, static_cast<unsigned long>(opened.open_pages_read),
              static_cast<unsigned long>(opened.map_leaves_read), opened.open_journal_bytes_read / 1048576.0,
              static_cast<unsigned long>(opened.chunk_states_read));
  std::printf("  %d scattered 4 KiB writes + flush: %lu checkpoints wrote %lu pages for %lu distinct pages dirtied (%lu nodes, ~%lu chunk states and their groups) (%.2fx; %.2f pages per write); %lu chunk states read back\n",
              writes, static_cast<unsigned long>(ckpts), static_cast<unsigned long>(pages),
              static_cast<unsigned long>(dirtied), static_cast<unsigned long>(nodes_dirtied),
              static_cast<unsigned long>(states_dirtied), static_cast<double>(pages) / dirtied,
              static_cast<double>(pages) / writes,
              static_cast<unsigned long>(after.chunk_states_read - opened.chunk_states_read));
  pool.reset();
  devs.clear();
  for (auto& p : paths) unlink(p.c_str());
}

// 4 KiB random reads and writes (QD 8) over a `gib` GiB VSD written sequentially, with
// every leaf of its map in memory and then with a cache of 1/8 of them: what a miss
// (reading the leaf's page back) costs.
void LeafCache(RealLoop* loop, Random* random, const std::string& dir, uint64_t gib) {
  const uint64_t data = gib << 30;
  const uint64_t leaves = data >> 20;
  std::printf("leaf cache: %lu GiB VSD (%lu leaves), 3 nodes RF 2, 4 KiB random I/O QD 8\n",
              static_cast<unsigned long>(gib), static_cast<unsigned long>(leaves));
  for (uint64_t cache_leaves : {leaves * 2, leaves / 8}) {
    Files f;
    OpenFiles(loop, &f, dir, 3, data + (512 << 20), "cache");
    PoolOptions o = BenchPoolOptions();
    o.metadata_cache_bytes = cache_leaves * 4096;
    // Changed leaves stay until a checkpoint writes them; keep them to a quarter of the
    // cache, as the defaults do (16,384 of 65,536).
    o.checkpoint_dirty_pages_max = std::min<uint64_t>(o.checkpoint_dirty_pages_max, cache_leaves / 4);
    auto pool = Must<std::unique_ptr<Pool>>(loop, [&](auto done) { Pool::Create(loop, random, o, Specs(&f, 1), done); });
    VsdId v = Must<VsdId>(loop, [&](auto done) { pool->CreateVsd(VsdOptions{"c", data, 2}, done); });
    AlignedBuffer big(1 << 20), small(4096);
    RunQueue(loop, static_cast<int>(leaves), 8, [&](int i, auto done) {
      pool->Write(v, static_cast<uint64_t>(i) << 20, 1 << 20, big.data(), false, done);
    });
    MustOk(loop, [&](auto d) { pool->Flush(d); });
    loop->RunUntil([] { return false; }, 100'000'000);
    const int ops = 40000;
    for (const bool write : {false, true}) {
      const PoolStats before = pool->Stats();
      const double t = RunQueue(loop, ops, 8, [&](int, auto done) {
        const uint64_t off = random->Uniform(data / 4096) * 4096;
        if (write) {
          pool->Write(v, off, 4096, small.data(), false, done);
        } else {
          pool->Read(v, off, 4096, small.data(), done);
        }
      });
      const PoolStats after = pool->Stats();
      const uint64_t waits = after.map_leaf_waits - before.map_leaf_waits;
      std::printf("  cache %5lu leaves (%s): random %s %7.0f IOPS; leaves read back %lu (%.0f%% of I/Os), a waiting I/O waited %.0f us on average\n",
                  static_cast<unsigned long>(cache_leaves), cache_leaves >= leaves ? "all" : "1/8",
                  write ? "write" : "read ", ops / t,
                  static_cast<unsigned long>(after.map_leaves_read - before.map_leaves_read),
                  100.0 * waits / ops,
                  waits ? (after.map_leaf_wait_ns - before.map_leaf_wait_ns) / 1e3 / waits : 0.0);
    }
  }
}

int Main(int argc, char** argv) {
  std::string dir = "/var/tmp";
  uint64_t gib = 1;
  uint64_t cache_mib = 0;
  int runs = 5;  // --only=snapshots: repetitions of the 1000-snapshot series  // --only=metadata: PoolOptions::metadata_cache_bytes (0: default)
  std::string only;  // one section, or all when empty
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--dir=", 0) == 0) dir = a.substr(6);
    if (a.rfind("--gib=", 0) == 0) gib = std::stoull(a.substr(6));
    if (a.rfind("--cache-mib=", 0) == 0) cache_mib = std::stoull(a.substr(12));
    if (a.rfind("--runs=", 0) == 0) runs = std::stoi(a.substr(7));
    if (a.rfind("--only=", 0) == 0) only = a.substr(7);
  }
  auto run = [&](const char* section) { return only.empty() || only == section; };
  auto loop = RealLoop::Create();
  SeededRandom random(1);
  const uint64_t data_bytes = gib << 30;

  // ---- Throughput: raw files vs the pool (3 nodes, RF 2) on the same device.
  if (run("throughput")) {
    Files raw;
    OpenFiles(loop.get(), &raw, dir, 3, data_bytes + (64 << 20), "raw");
    AlignedBuffer big(1 << 20), small(4096);
    std::memset(big.data(), 0x5a, big.size());
    const int seq_ops = static_cast<int>(data_bytes >> 20);
    double t = RunQueue(loop.get(), seq_ops * 3, 8, [&](int i, auto done) {
      raw.devs[i % 3]->Write(static_cast<uint64_t>(i / 3) << 20, 1 << 20, big.data(), done);
    });
    MustOk(loop.get(), [&](auto d) { raw.devs[0]->Flush(d); });
    const double raw_seq = seq_ops * 3 / t;
    const int rr_ops = 60000;
    t = RunQueue(loop.get(), rr_ops, 32, [&](int i, auto done) {
      uint64_t blk = random.Uniform(data_bytes / 4096);
      raw.devs[i % 3]->Read(blk * 4096, 4096, small.data(), done);
    });
    const double raw_rr = rr_ops / t;
    t = RunQueue(loop.get(), rr_ops, 32, [&](int i, auto done) {
      uint64_t blk = random.Uniform(data_bytes / 4096);
      raw.devs[i % 3]->Write(blk * 4096, 4096, small.data(), done);
    });
    const double raw_rw = rr_ops / t;

    Files pf;
    OpenFiles(loop.get(), &pf, dir, 3, data_bytes * 2 + (512 << 20), "pool");
    auto pool = MakePool(loop.get(), &random, &pf, 1);
    VsdId v = Must<VsdId>(loop.get(), [&](auto done) { pool->CreateVsd(VsdOptions{"bench", data_bytes * 3 / 2, 2}, done); });
    t = RunQueue(loop.get(), seq_ops, 8, [&](int i, auto done) {
      pool->Write(v, static_cast<uint64_t>(i) << 20, 1 << 20, big.data(), false, done);
    });
    MustOk(loop.get(), [&](auto d) { pool->Flush(d); });
    const double pool_seq = seq_ops / t;
    t = RunQueue(loop.get(), rr_ops, 32, [&](int, auto done) {
      uint64_t blk = random.Uniform(data_bytes / 4096);
      pool->Read(v, blk * 4096, 4096, small.data(), done);
    });
    const double pool_rr = rr_ops / t;
    t = RunQueue(loop.get(), rr_ops, 32, [&](int, auto done) {
      uint64_t blk = random.Uniform(data_bytes / 4096);
      pool->Write(v, blk * 4096, 4096, small.data(), false, done);
    });
    const double pool_rw = rr_ops / t;
    std::printf("seq 1MiB write QD8: raw %.0f MiB/s, pool RF2 %.0f MiB/s, ratio %.2f\n", raw_seq, pool_seq, pool_seq / raw_seq);
    std::printf("rand 4KiB read QD32: raw %.0f IOPS, pool %.0f IOPS, ratio %.2f\n", raw_rr, pool_rr, pool_rr / raw_rr);
    std::printf("rand 4KiB write QD32: raw %.0f IOPS, pool RF2 %.0f IOPS, ratio %.2f\n", raw_rw, pool_rw, pool_rw / raw_rw);
  }

  // ---- Wide striping: 1 GiB sequential onto 6 equal disks on 3 nodes.
  if (run("striping")) {
    Files pf;
    OpenFiles(loop.get(), &pf, dir, 6, (2ull << 30), "stripe");
    auto pool = MakePool(loop.get(), &random, &pf, 2);
    VsdId v = Must<VsdId>(loop.get(), [&](auto done) { pool->CreateVsd(VsdOptions{"s", 1ull << 30, 2}, done); });
    AlignedBuffer big(1 << 20);
    RunQueue(loop.get(), 1024, 8, [&](int i, auto done) {
      pool->Write(v, static_cast<uint64_t>(i) << 20, 1 << 20, big.data(), false, done);
    });
    uint64_t lo = UINT64_MAX, hi = 0;
    for (const DiskInfo& d : pool->ListDisks()) {
      lo = std::min(lo, d.chunks);
      hi = std::max(hi, d.chunks);
    }
    std::printf("striping 1 GiB over 6 disks: chunks per disk min %lu max %lu, ratio %.3f\n",
                static_cast<unsigned long>(lo), static_cast<unsigned long>(hi), double(hi) / double(lo));
  }

  // ---- Snapshots, clones and diffs on thin VSDs.
  if (run("snapshots")) {
    Files pf;
    OpenFiles(loop.get(), &pf, dir, 3, (3ull << 30), "snap");
    for (auto& d : pf.devs) Prewrite(loop.get(), d.get());
    auto pool = MakePool(loop.get(), &random, &pf, 1);
    VsdId v = Must<VsdId>(loop.get(), [&](auto done) { pool->CreateVsd(VsdOptions{"v64", 64ull << 30, 2}, done); });
    AlignedBuffer big(1 << 20), small(4096);
    // 256 MiB written, spread over the 64 GiB address space.
    RunQueue(loop.get(), 256, 8, [&](int i, auto done) {
      pool->Write(v, static_cast<uint64_t>(i) << 28, 1 << 20, big.data(), false, done);
    });
    MustOk(loop.get(), [&](auto d) { pool->Flush(d); });
    // For scale: one fdatasync round on these files, as the commit issues them.
    {
      const int64_t start = loop->NowNanos();
      for (int i = 0; i < 100; ++i) MustOk(loop.get(), [&](auto d) { pf.devs[0]->Flush(d); });
      std::printf("fdatasync of an idle file: %.3f ms\n", Seconds(loop.get(), start) * 1e3 / 100);
    }
    // Random 4 KiB writes into the written 256 MiB, before and after 1000 snapshots.
    auto rand_writes = [&] {
      const int ops = 20000;
      const double t = RunQueue(loop.get(), ops, 32, [&](int, auto done) {
        const uint64_t mib = random.Uniform(256);
        pool->Write(v, (mib << 28) + random.Uniform(256) * 4096, 4096, small.data(), false, done);
      });
      return ops / t;
    };
    const double iops_before = rand_writes();
    // 1000 snapshots, each after one 4 KiB write; `runs` times, each on a new VSD, so the
    // 1st and the 1000th are distributions, not single samples.
    std::vector<double> firsts, thousandths, early, late;
    VsdId snapped = v;
    for (int run = 0; run < runs; ++run) {
      if (run > 0) {
        snapped = Must<VsdId>(loop.get(), [&](auto done) {
          pool->CreateVsd(VsdOptions{"r" + std::to_string(run), 64ull << 30, 2}, done);
        });
        RunQueue(loop.get(), 256, 8, [&](int i, auto done) {
          pool->Write(snapped, static_cast<uint64_t>(i) << 28, 1 << 20, big.data(), false, done);
        });
      }
      MustOk(loop.get(), [&](auto d) { pool->Flush(d); });  // the 1st snapshot commits only its own write
      std::vector<double> lat_ms;
      for (int i = 0; i < 1000; ++i) {
        MustOk(loop.get(), [&](auto d) { pool->Write(snapped, random.Uniform(16 << 20) * 4096, 4096, small.data(), false, d); });
        const int64_t start = loop->NowNanos();
        Must<SnapshotId>(loop.get(), [&](auto done) { pool->CreateSnapshot(snapped, "s" + std::to_string(i), done); });
        lat_ms.push_back(Seconds(loop.get(), start) * 1e3);
      }
      firsts.push_back(lat_ms[0]);
      thousandths.push_back(lat_ms[999]);
      early.insert(early.end(), lat_ms.begin(), lat_ms.begin() + 10);
      late.insert(late.end(), lat_ms.end() - 10, lat_ms.end());
    }
    const Dist d1 = DistOf(firsts), d1000 = DistOf(thousandths), de = DistOf(early), dl = DistOf(late);
    std::printf("snapshot create, 64 GiB VSD on pre-written files (durable), %d runs, min / median / max: 1st %.3f / %.3f / %.3f ms, 1000th %.3f / %.3f / %.3f ms; snapshots 1-10 %.3f / %.3f / %.3f ms, 991-1000 %.3f / %.3f / %.3f ms; < 1 ms (median of the 1st and of the 1000th): %s\n",
                runs, d1.min, d1.median, d1.max, d1000.min, d1000.median, d1000.max, de.min, de.median,
                de.max, dl.min, dl.median, dl.max, d1.median < 1 && d1000.median < 1 ? "met" : "NOT met");
    const double iops_after = rand_writes();
    std::printf("4 KiB random write QD32 on that VSD: %.0f IOPS with 0 snapshots, %.0f IOPS with 1000, ratio %.2f\n",
                iops_before, iops_after, iops_after / iops_before);
    // Clone time versus VSD size.
    VsdId small_v = Must<VsdId>(loop.get(), [&](auto done) { pool->CreateVsd(VsdOptions{"v1", 1ull << 30, 2}, done); });
    RunQueue(loop.get(), 64, 8, [&](int i, auto done) {
      pool->Write(small_v, static_cast<uint64_t>(i) << 24, 1 << 20, big.data(), false, done);
    });
    int64_t start = loop->NowNanos();
    Must<VsdId>(loop.get(), [&](auto done) { pool->CloneVsd(small_v, "clone1", done); });
    const double clone_small = Seconds(loop.get(), start) * 1e3;
    start = loop->NowNanos();
    Must<VsdId>(loop.get(), [&](auto done) { pool->CloneVsd(v, "clone64", done); });
    const double clone_big = Seconds(loop.get(), start) * 1e3;
    std::printf("clone (durable): 1 GiB VSD %.3f ms, 64 GiB VSD with 1000 snapshots %.3f ms\n", clone_small, clone_big);
  }
  if (run("metadata")) MetadataScale(loop.get(), &random, dir, gib, cache_mib);
  if (run("cache")) LeafCache(loop.get(), &random, dir, gib);

  // ---- Deleting a snapshot that holds `gib` GiB of unique data under QD1 4 KiB writes:
  // the longest write before, during and after (the tree is freed in the background).
  if (run("delete")) {
    Files pf;
    OpenFiles(loop.get(), &pf, dir, 3, data_bytes * 2 + (1ull << 30), "del");
    auto pool = MakePool(loop.get(), &random, &pf, 1);
    VsdId v = Must<VsdId>(loop.get(), [&](auto done) { pool->CreateVsd(VsdOptions{"d", data_bytes, 2}, done); });
    AlignedBuffer big(1 << 20), small(4096);
    const int mib = static_cast<int>(data_bytes >> 20);
    auto fill = [&](char c) {
      std::memset(big.data(), c, big.size());
      RunQueue(loop.get(), mib, 8, [&](int i, auto done) {
        pool->Write(v, static_cast<uint64_t>(i) << 20, 1 << 20, big.data(), false, done);
      });
      MustOk(loop.get(), [&](auto d) { pool->Flush(d); });
    };
    fill('a');
    SnapshotId s = Must<SnapshotId>(loop.get(), [&](auto done) { pool->CreateSnapshot(v, "old", done); });
    fill('b');  // the snapshot alone holds every 'a' block now
    // QD1 writes; returns the latencies (ms) of `ops` writes, or of those issued while
    // `until` is false when ops == 0.
    auto qd1 = [&](int ops, const std::function<bool()>& until) {
      std::vector<double> lat;
      for (int i = 0; ops == 0 ? !until() : i < ops; ++i) {
        const int64_t start = loop->NowNanos();
        MustOk(loop.get(), [&](auto d) {
          pool->Write(v, random.Uniform(data_bytes / 4096) * 4096, 4096, small.data(), false, d);
        });
        lat.push_back(Seconds(loop.get(), start) * 1e3);
      }
      return lat;
    };
    auto summary = [](std::vector<double> lat) {
      std::sort(lat.begin(), lat.end());
      char buf[160];
      std::snprintf(buf, sizeof(buf), "%zu writes, median %.3f ms, p99 %.3f ms, max %.3f ms", lat.size(),
                    lat[lat.size() / 2], lat[lat.size() * 99 / 100], lat.back());
      return std::string(buf);
    };
    const auto before = qd1(3000, nullptr);
    const PoolStats st0 = pool->Stats();
    const int64_t start = loop->NowNanos();
    std::optional<absl::Status> deleted;
    pool->DeleteSnapshot(s, [&](absl::Status st) { deleted = st; });
    const auto during = qd1(0, [&] { return deleted.has_value() && pool->Stats().delete_subtrees_pending == 0; });
    const double took = Seconds(loop.get(), start) * 1e3;
    SCRIBE_CHECK(deleted->ok());
    const PoolStats st1 = pool->Stats();
    const auto after = qd1(3000, nullptr);
    std::printf("delete of a snapshot holding %lu GiB of unique data: freed %.0f MiB and %lu tree nodes in %.1f ms in the background\n",
                static_cast<unsigned long>(gib), (st1.delete_bytes_freed - st0.delete_bytes_freed) / 1048576.0,
                static_cast<unsigned long>(st1.delete_nodes_freed - st0.delete_nodes_freed), took);
    std::printf("  longest background step: %.3f ms\n", st1.delete_step_max_ns / 1e6);
    std::printf("  QD1 4 KiB writes before: %s\n", summary(before).c_str());
    std::printf("  QD1 4 KiB writes during: %s\n", summary(during).c_str());
    std::printf("  QD1 4 KiB writes after:  %s\n", summary(after).c_str());
  }
  if (run("diff")) {
    // Diff cost: 1% vs 100% of a fully written VSD changed.
    Files pf;
    OpenFiles(loop.get(), &pf, dir, 3, data_bytes * 3 + (512 << 20), "diff");
    auto pool = MakePool(loop.get(), &random, &pf, 1);
    VsdId v = Must<VsdId>(loop.get(), [&](auto done) { pool->CreateVsd(VsdOptions{"d", data_bytes, 2}, done); });
    AlignedBuffer big(1 << 20);
    const int mib = static_cast<int>(data_bytes >> 20);
    auto write_range = [&](int first_mib, int count) {
      RunQueue(loop.get(), count, 8, [&](int i, auto done) {
        pool->Write(v, static_cast<uint64_t>(first_mib + i) << 20, 1 << 20, big.data(), false, done);
      });
    };
    write_range(0, mib);
    SnapshotId s0 = Must<SnapshotId>(loop.get(), [&](auto done) { pool->CreateSnapshot(v, "s0", done); });
    write_range(mib / 2, std::max(1, mib / 100));
    SnapshotId s1 = Must<SnapshotId>(loop.get(), [&](auto done) { pool->CreateSnapshot(v, "s1", done); });
    write_range(0, mib);
    SnapshotId s2 = Must<SnapshotId>(loop.get(), [&](auto done) { pool->CreateSnapshot(v, "s2", done); });
    // The median of many runs (other work on the machine only ever adds time), and
    // which way the pool answered: from the change logs or by a walk.
    auto time_diff = [&](SnapshotId a, SnapshotId b, uint64_t* bytes, const char** how) {
      const int reps = 101;
      const uint64_t from_logs = pool->Stats().diffs_from_change_logs;
      std::vector<double> ms;
      for (int r = 0; r < reps; ++r) {
        const int64_t start = loop->NowNanos();
        // Until the answer has arrived: the pool posts it on the loop.
        const std::vector<Extent> d =
            Must<std::vector<Extent>>(loop.get(), [&](auto done) { pool->Diff(a, b, done); });
        ms.push_back(Seconds(loop.get(), start) * 1e3);
        *bytes = 0;
        for (auto& e : d) *bytes += e.length_bytes;
      }
      *how = pool->Stats().diffs_from_change_logs > from_logs ? "change logs" : "walk";
      std::nth_element(ms.begin(), ms.begin() + reps / 2, ms.end());
      return ms[reps / 2];
    };
    // 1% again, but as single 4 KiB blocks scattered over the whole VSD.
    AlignedBuffer small(4096);
    const int scattered = static_cast<int>(data_bytes / 4096 / 100);
    RunQueue(loop.get(), scattered, 32, [&](int, auto done) {
      pool->Write(v, random.Uniform(data_bytes / 4096) * 4096, 4096, small.data(), false, done);
    });
    SnapshotId s3 = Must<SnapshotId>(loop.get(), [&](auto done) { pool->CreateSnapshot(v, "s3", done); });
    uint64_t b1 = 0, b100 = 0, bs = 0;
    const char *how1, *how100, *hows;
    const double d1 = time_diff(s0, s1, &b1, &how1);
    const double d100 = time_diff(s1, s2, &b100, &how100);
    const double ds = time_diff(s2, s3, &bs, &hows);
    std::printf("diff with 1%% changed as scattered 4 KiB blocks (%lu KiB): %.3f ms (%s), speedup vs 100%%: %.1fx\n",
                static_cast<unsigned long>(bs >> 10), ds, hows, d100 / ds);
    std::printf("diff of a %lu GiB VSD: 1%% changed (%lu MiB) %.3f ms (%s), 100%% changed (%lu MiB) %.3f ms (%s), speedup %.1fx\n",
                static_cast<unsigned long>(gib), static_cast<unsigned long>(b1 >> 20), d1, how1,
                static_cast<unsigned long>(b100 >> 20), d100, how100, d100 / d1);
    // For reference: the same pool reopened without change logs, so every diff walks.
    MustOk(loop.get(), [&](auto d) { pool->Flush(d); });
    pool.reset();
    PoolOptions walk_only = BenchPoolOptions();
    walk_only.change_log_blocks_per_extent = 0;
    pool = Must<std::unique_ptr<Pool>>(loop.get(), [&](auto done) {
      Pool::Open(loop.get(), &random, walk_only, Specs(&pf, 1), done);
    });
    uint64_t ws = 0, w100 = 0;
    const char *how_ws, *how_w100;
    const double walk_s = time_diff(s2, s3, &ws, &how_ws);
    const double walk_100 = time_diff(s1, s2, &w100, &how_w100);
    SCRIBE_CHECK(ws == bs && w100 == b100);
    std::printf("without change logs (%s): scattered 1%% %.3f ms, 100%% %.3f ms, speedup %.1fx\n",
                how_ws, walk_s, walk_100, walk_100 / walk_s);
  }
  return 0;
}

}  // namespace
}  // namespace scribe

int main(int argc, char** argv) { return scribe::Main(argc, argv); }
