// scribe.Pool: a synchronous Python face of scribe::Pool. Each call runs the pool's
// event loop until the operation completes, so Python code reads top to bottom.
// Disks are either simulated (deterministic, in memory) or real files through libaio.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bindings/status_py.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"

namespace py = pybind11;

namespace scribe::python {
namespace {

class PyPool {
 public:
  // A pool on simulated disks: `nodes` x `disks_per_node` disks of `disk_bytes`.
  static std::unique_ptr<PyPool> Simulated(int nodes, int disks_per_node, uint64_t disk_bytes,
                                           uint64_t seed, uint64_t metadata_bytes) {
    auto p = std::unique_ptr<PyPool>(new PyPool());
    auto loop = std::make_unique<SimLoop>();
    p->random_ = std::make_unique<SeededRandom>(seed);
    std::vector<DiskSpec> specs;
    for (int n = 0; n < nodes; ++n) {
      for (int d = 0; d < disks_per_node; ++d) {
        SimDiskOptions o;
        o.size_bytes = disk_bytes;
        p->devices_.push_back(std::make_unique<SimDisk>(loop.get(), p->random_.get(), o));
        specs.push_back(DiskSpec{NodeId{static_cast<uint64_t>(n + 1)}, Tier::kHdd, p->devices_.back().get()});
      }
    }
    p->loop_ = std::move(loop);
    p->Start(specs, metadata_bytes, /*create=*/true);
    return p;
  }

  // A pool on files (created sparse at `disk_bytes` if missing); `files[i]` are node
  // i+1's disks. `create` formats them; otherwise the existing pool is opened.
  static std::unique_ptr<PyPool> Files(const std::vector<std::vector<std::string>>& files,
                                       uint64_t disk_bytes, bool create, uint64_t metadata_bytes) {
    auto p = std::unique_ptr<PyPool>(new PyPool());
    auto loop = RealLoop::Create();
    p->random_ = NewSystemRandom();
    std::vector<DiskSpec> specs;
    for (size_t n = 0; n < files.size(); ++n) {
      for (const std::string& path : files[n]) {
        AioDeviceOptions o;
        o.create_size_bytes = create ? disk_bytes : 0;
        p->devices_.push_back(ValueOrThrow(OpenAioDevice(loop.get(), path, o)));
        specs.push_back(DiskSpec{NodeId{n + 1}, Tier::kHdd, p->devices_.back().get()});
      }
    }
    p->loop_ = std::move(loop);
    p->Start(specs, metadata_bytes, create);
    return p;
  }

  ~PyPool() {
    pool_.reset();
    devices_.clear();
  }

  uint64_t CreateVsd(const std::string& name, uint64_t size_bytes, int replication, int flash_priority) {
    return Call<VsdId>([&](auto done) {
             pool_->CreateVsd(VsdOptions{name, size_bytes, replication, flash_priority}, done);
           }).value;
  }
  void DeleteVsd(uint64_t vsd) { CallStatus([&](auto d) { pool_->DeleteVsd(VsdId{vsd}, d); }); }
  void ResizeVsd(uint64_t vsd, uint64_t size) {
    CallStatus([&](auto d) { pool_->ResizeVsd(VsdId{vsd}, size, d); });
  }
  uint64_t FindVsd(const std::string& name) { return ValueOrThrow(pool_->FindVsd(name)).value; }

  void Write(uint64_t vsd, uint64_t offset, const py::bytes& data, bool fua) {
    std::string s = data;
    CallStatus([&](auto d) { pool_->Write(VsdId{vsd}, offset, s.size(), s.data(), fua, d); });
  }
  py::bytes Read(uint64_t vsd, uint64_t offset, size_t length) {
    std::string out(length, '\0');
    CallStatus([&](auto d) { pool_->Read(VsdId{vsd}, offset, length, out.data(), d); });
    return py::bytes(out);
  }
  void Discard(uint64_t vsd, uint64_t offset, uint64_t length) {
    CallStatus([&](auto d) { pool_->Discard(VsdId{vsd}, offset, length, d); });
  }
  void Flush() { CallStatus([&](auto d) { pool_->Flush(d); }); }

  uint64_t Snapshot(uint64_t vsd, const std::string& name) {
    return Call<SnapshotId>([&](auto done) { pool_->CreateSnapshot(VsdId{vsd}, name, done); }).value;
  }
  std::vector<uint64_t> GroupSnapshot(const std::vector<uint64_t>& vsds, const std::string& name) {
    std::vector<VsdId> ids;
    for (uint64_t v : vsds) ids.push_back(VsdId{v});
    auto snaps = Call<std::vector<SnapshotId>>([&](auto done) { pool_->CreateGroupSnapshot(ids, name, done); });
    std::vector<uint64_t> out;
    for (SnapshotId s : snaps) out.push_back(s.value);
    return out;
  }
  void DeleteSnapshot(uint64_t s) { CallStatus([&](auto d) { pool_->DeleteSnapshot(SnapshotId{s}, d); }); }
  py::bytes ReadSnapshot(uint64_t s, uint64_t offset, size_t length) {
    std::string out(length, '\0');
    CallStatus([&](auto d) { pool_->ReadSnapshot(SnapshotId{s}, offset, length, out.data(), d); });
    return py::bytes(out);
  }
  uint64_t CloneSnapshot(uint64_t s, const std::string& name) {
    return Call<VsdId>([&](auto done) { pool_->CloneFromSnapshot(SnapshotId{s}, name, done); }).value;
  }
  uint64_t CloneVsd(uint64_t v, const std::string& name) {
    return Call<VsdId>([&](auto done) { pool_->CloneVsd(VsdId{v}, name, done); }).value;
  }
  void Revert(uint64_t v, uint64_t s) {
    CallStatus([&](auto d) { pool_->RevertToSnapshot(VsdId{v}, SnapshotId{s}, d); });
  }
  std::vector<std::pair<uint64_t, uint64_t>> Diff(std::optional<uint64_t> from, uint64_t to) {
    auto extents = Call<std::vector<Extent>>([&](auto done) {
      pool_->Diff(SnapshotId{from.value_or(0)}, SnapshotId{to}, done);
    });
    std::vector<std::pair<uint64_t, uint64_t>> out;
    for (const Extent& e : extents) out.push_back({e.offset_bytes, e.length_bytes});
    return out;
  }

  py::dict VsdInfoDict(uint64_t vsd) {
    VsdInfo i = ValueOrThrow(pool_->GetVsdInfo(VsdId{vsd}));
    py::dict d;
    d["id"] = i.id.value;
    d["name"] = i.name;
    d["size_bytes"] = i.size_bytes;
    d["replication"] = i.replication;
    d["flash_priority"] = i.flash_priority;
    d["allocated_bytes"] = i.allocated_bytes;
    d["unique_bytes"] = i.unique_bytes;
    d["shared_bytes"] = i.shared_bytes;
    d["snapshots"] = i.snapshots;
    return d;
  }
  py::list Vsds() {
    py::list out;
    for (const VsdInfo& i : pool_->ListVsds()) out.append(VsdInfoDict(i.id.value));
    return out;
  }
  py::list Snapshots(uint64_t vsd) {
    py::list out;
    for (const SnapshotInfo& s : pool_->ListSnapshots(VsdId{vsd})) {
      py::dict d;
      d["id"] = s.id.value;
      d["name"] = s.name;
      d["generation"] = s.generation;
      d["unique_bytes"] = s.unique_bytes;
      out.append(d);
    }
    return out;
  }
  py::list Disks() {
    py::list out;
    for (const DiskInfo& i : pool_->ListDisks()) {
      py::dict d;
      d["id"] = i.id.value;
      d["node"] = i.node.value;
      d["tier"] = i.tier == Tier::kSsd ? "ssd" : "hdd";
      d["capacity_bytes"] = i.capacity_bytes;
      d["used_bytes"] = i.used_bytes;
      d["chunks"] = i.chunks;
      d["failed"] = i.failed;
      d["online"] = i.online;
      out.append(d);
    }
    return out;
  }
  py::dict Stats() {
    PoolStats s = pool_->Stats();
    py::dict d;
    d["capacity_bytes"] = s.capacity_bytes[0] + s.capacity_bytes[1];
    d["used_bytes"] = s.used_bytes[0] + s.used_bytes[1];
    d["ssd_capacity_bytes"] = s.capacity_bytes[0];
    d["hdd_capacity_bytes"] = s.capacity_bytes[1];
    d["chunks"] = s.chunks;
    d["degraded_chunks"] = s.degraded_chunks;
    d["chunks_rebuilt"] = s.chunks_rebuilt;
    d["fully_redundant"] = pool_->FullyRedundant();
    return d;
  }
  std::vector<std::string> Fsck() {
    return Call<FsckReport>([&](auto done) { pool_->Fsck(done); }).errors;
  }
  py::dict Scrub() {
    ScrubReport r = Call<ScrubReport>([&](auto done) { pool_->Scrub(done); });
    py::dict d;
    d["chunks_checked"] = r.chunks_checked;
    d["blocks_checked"] = r.blocks_checked;
    d["bad_copies"] = r.bad_copies;
    d["repaired"] = r.repaired;
    d["unrecoverable"] = r.unrecoverable;
    return d;
  }
  void FailDisk(uint64_t disk) { CallStatus([&](auto d) { pool_->FailDisk(DiskId{disk}, d); }); }
  void SetNodeOnline(uint64_t node, bool online) { pool_->SetNodeOnline(NodeId{node}, online); }
  bool WaitRedundant(double timeout_s) {
    return loop_->RunUntil([&] { return pool_->FullyRedundant(); }, static_cast<int64_t>(timeout_s * 1e9));
  }

 private:
  PyPool() = default;

  void Start(const std::vector<DiskSpec>& specs, uint64_t metadata_bytes, bool create) {
    PoolOptions o;
    o.metadata_bytes = metadata_bytes;
    auto cb = [&](Pool::Done<std::unique_ptr<Pool>> done) {
      if (create) {
        Pool::Create(loop_.get(), random_.get(), o, specs, done);
      } else {
        Pool::Open(loop_.get(), random_.get(), o, specs, done);
      }
    };
    pool_ = Call<std::unique_ptr<Pool>>(cb);
  }

  template <typename T>
  T Call(const std::function<void(Pool::Done<T>)>& op) {
    std::optional<absl::StatusOr<T>> r;
    op([&](absl::StatusOr<T> v) { r = std::move(v); });
    loop_->RunUntil([&] { return r.has_value(); }, 3600'000'000'000);
    if (!r) ThrowIfError(absl::DeadlineExceededError("operation did not complete"));
    return ValueOrThrow(std::move(*r));
  }
  void CallStatus(const std::function<void(Pool::StatusDone)>& op) {
    std::optional<absl::Status> r;
    op([&](absl::Status st) { r = st; });
    loop_->RunUntil([&] { return r.has_value(); }, 3600'000'000'000);
    ThrowIfError(r ? *r : absl::DeadlineExceededError("operation did not complete"));
  }

  std::unique_ptr<Loop> loop_;
  std::unique_ptr<Random> random_;
  std::vector<std::unique_ptr<BlockDevice>> devices_;
  std::unique_ptr<Pool> pool_;
};

}  // namespace

void RegisterPool(py::module_& m) {
  py::class_<PyPool>(m, "Pool", "A SCRIBE storage pool (see scribe/pool.h).")
      .def_static("simulated", &PyPool::Simulated, py::arg("nodes") = 3, py::arg("disks_per_node") = 1,
                  py::arg("disk_bytes") = 64ull << 20, py::arg("seed") = 1,
                  py::arg("metadata_bytes") = 4ull << 20)
      .def_static("files", &PyPool::Files, py::arg("files"), py::arg("disk_bytes") = 1ull << 30,
                  py::arg("create") = true, py::arg("metadata_bytes") = 64ull << 20)
      .def("create_vsd", &PyPool::CreateVsd, py::arg("name"), py::arg("size_bytes"),
           py::arg("replication") = 2, py::arg("flash_priority") = 4)
      .def("delete_vsd", &PyPool::DeleteVsd)
      .def("resize_vsd", &PyPool::ResizeVsd)
      .def("find_vsd", &PyPool::FindVsd)
      .def("write", &PyPool::Write, py::arg("vsd"), py::arg("offset"), py::arg("data"), py::arg("fua") = false)
      .def("read", &PyPool::Read)
      .def("discard", &PyPool::Discard)
      .def("flush", &PyPool::Flush)
      .def("snapshot", &PyPool::Snapshot)
      .def("group_snapshot", &PyPool::GroupSnapshot)
      .def("delete_snapshot", &PyPool::DeleteSnapshot)
      .def("read_snapshot", &PyPool::ReadSnapshot)
      .def("clone_snapshot", &PyPool::CloneSnapshot)
      .def("clone_vsd", &PyPool::CloneVsd)
      .def("revert", &PyPool::Revert)
      .def("diff", &PyPool::Diff, py::arg("from_snapshot"), py::arg("to_snapshot"))
      .def("vsd_info", &PyPool::VsdInfoDict)
      .def("vsds", &PyPool::Vsds)
      .def("snapshots", &PyPool::Snapshots)
      .def("disks", &PyPool::Disks)
      .def("stats", &PyPool::Stats)
      .def("fsck", &PyPool::Fsck)
      .def("scrub", &PyPool::Scrub)
      .def("fail_disk", &PyPool::FailDisk)
      .def("set_node_online", &PyPool::SetNodeOnline)
      .def("wait_redundant", &PyPool::WaitRedundant, py::arg("timeout_s") = 600.0);
}

}  // namespace scribe::python
