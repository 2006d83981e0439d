// The admin service end to end in one process and one loop: a Pool on three sparse files
// (libaio, O_DIRECT) behind a fake AdminBackend, NewAdminService served on a loopback TCP
// port, and a Cap'n Proto client on the same loop calling every method. Results are
// checked against what the test did to the pool directly (writes through pool->Write,
// reads through pool->Read), errors by code and message.
#include "daemons/scribed/admin_service.h"

#include <capnp/rpc-twoparty.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "daemons/scribed/admin_test_support.h"
#include "libscribe/env/real_loop_internal.h"
#include "scribe/status.h"
#include "libscribe/sim/pool_testing.h"

namespace scribe::daemon {
namespace {

using testing::CapabilityListener;
using testing::FilePoolBackend;
using testing::FilePoolOptions;

constexpr int64_t kSecondNs = 1'000'000'000;
constexpr uint64_t kMiB = 1ull << 20;

absl::Status StatusOf(api::Error::Reader e) {
  if (e.getCode() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(e.getCode()),
                      std::string(e.getMessage().begin(), e.getMessage().size()));
}

capnp::Text::Reader T(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }

std::string Pattern(char seed, size_t length_bytes) {
  std::string s(length_bytes, '\0');
  for (size_t i = 0; i < length_bytes; ++i) s[i] = static_cast<char>(seed + i * 7 + (i >> 12));
  return s;
}

class AdminServiceTest : public ::testing::Test {
 protected:
  // KJ members may throw from their destructors; TearDown has released them already.
  ~AdminServiceTest() noexcept override {}

  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    dir_ = std::string(tmp ? tmp : "/tmp") + "/admin_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name() + "." +
           std::to_string(getpid());
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0) << dir_;
    loop_ = RealLoop::Create();
    FilePoolOptions options;
    options.dir = dir_;
    options.disk_bytes = 96 * kMiB;
    options.metadata_bytes = 8 * kMiB;
    auto backend = FilePoolBackend::Create(loop_.get(), options);
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(backend).value();
    auto listener = CapabilityListener::Create(loop_.get(), "127.0.0.1:0",
                                               NewAdminService(loop_.get(), backend_.get()));
    ASSERT_TRUE(listener.ok()) << listener.status();
    listener_ = std::move(listener).value();
    Connect();
  }

  void TearDown() override {
    admin_ = nullptr;
    client_.reset();
    stream_ = nullptr;
    listener_.reset();
    backend_.reset();
    loop_.reset();
    if (!dir_.empty()) {
      (void)std::system(("rm -rf '" + dir_ + "'").c_str());
    }
  }

  void Connect() {
    auto& io = loop_->impl()->io;
    stream_ = io.provider->getNetwork()
                  .parseAddress("127.0.0.1:" + std::to_string(listener_->port()))
                  .then([](kj::Own<kj::NetworkAddress> a) { return a->connect(); })
                  .wait(io.waitScope);
    client_ = std::make_unique<capnp::TwoPartyClient>(*stream_);
    admin_ = client_->bootstrap().castAs<api::ScribeAdmin>();
  }

  void Disconnect() {
    admin_ = nullptr;
    client_.reset();
    stream_ = nullptr;
  }

  Pool* pool() { return backend_->real_pool(); }

  // Sends a call and runs the loop until its reply; a transport failure or no reply in
  // time throws (gtest reports it as this test's failure).
  template <typename Results>
  capnp::Response<Results> Call(capnp::RemotePromise<Results> call) {
    std::optional<capnp::Response<Results>> reply;
    std::optional<std::string> failure;
    auto task = call.then(
                        [&](capnp::Response<Results>&& r) {
                          loop_->Dispatch([&] { reply.emplace(kj::mv(r)); });
                        },
                        [&](kj::Exception&& e) {
                          loop_->Dispatch([&] { failure = e.getDescription().cStr(); });
                        })
                    .eagerlyEvaluate(nullptr);
    loop_->RunUntil([&] { return reply.has_value() || failure.has_value(); }, 60 * kSecondNs);
    if (failure) throw std::runtime_error("RPC failed: " + *failure);
    if (!reply) throw std::runtime_error("no reply within 60 s");
    return kj::mv(*reply);
  }

  capnp::Response<api::ScribeAdmin::CreateVsdResults> CreateVsd(const std::string& name,
                                                                uint64_t size_bytes,
                                                                uint8_t replication = 2,
                                                                uint8_t flash_priority = 4) {
    auto req = admin_.createVsdRequest();
    req.setName(T(name));
    req.setSizeBytes(size_bytes);
    req.setReplication(replication);
    req.setFlashPriority(flash_priority);
    return Call(req.send());
  }

  absl::Status CreateVsdStatus(const std::string& name, uint64_t size_bytes,
                               uint8_t replication = 2, uint8_t flash_priority = 4) {
    return StatusOf(CreateVsd(name, size_bytes, replication, flash_priority).getError());
  }

  // One helper per call: a capnp Request may be sent only once.
  capnp::Response<api::ScribeAdmin::GetVsdResults> GetVsd(const std::string& name) {
    auto req = admin_.getVsdRequest();
    req.setName(T(name));
    return Call(req.send());
  }

  capnp::Response<api::ScribeAdmin::ResizeVsdResults> Resize(const std::string& name,
                                                             uint64_t size_bytes) {
    auto req = admin_.resizeVsdRequest();
    req.setName(T(name));
    req.setSizeBytes(size_bytes);
    return Call(req.send());
  }

  absl::Status DeleteVsd(const std::string& name) {
    auto req = admin_.deleteVsdRequest();
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }

  absl::Status DeleteSnapshot(const std::string& vsd, const std::string& name) {
    auto req = admin_.deleteSnapshotRequest();
    req.setVsd(T(vsd));
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }

  capnp::Response<api::ScribeAdmin::CloneVsdResults> CloneVsd(const std::string& vsd,
                                                              const std::string& clone) {
    auto req = admin_.cloneVsdRequest();
    req.setVsd(T(vsd));
    req.setCloneName(T(clone));
    return Call(req.send());
  }

  capnp::Response<api::ScribeAdmin::CloneFromSnapshotResults> CloneFromSnapshot(
      const std::string& vsd, const std::string& snapshot, const std::string& clone) {
    auto req = admin_.cloneFromSnapshotRequest();
    req.setVsd(T(vsd));
    req.setSnapshot(T(snapshot));
    req.setCloneName(T(clone));
    return Call(req.send());
  }

  absl::Status Revert(const std::string& vsd, const std::string& snapshot) {
    auto req = admin_.revertToSnapshotRequest();
    req.setVsd(T(vsd));
    req.setSnapshot(T(snapshot));
    return StatusOf(Call(req.send()).getError());
  }

  absl::Status DiffStatus(const std::string& vsd, const std::string& from, const std::string& to) {
    auto req = admin_.diffRequest();
    req.setVsd(T(vsd));
    req.setFrom(T(from));
    req.setTo(T(to));
    return StatusOf(Call(req.send()).getError());
  }

  absl::Status FailDisk(uint64_t disk) {
    auto req = admin_.failDiskRequest();
    req.setDisk(disk);
    return StatusOf(Call(req.send()).getError());
  }

  capnp::Response<api::ScribeAdmin::AddDiskResults> AddDisk(uint64_t node, const std::string& path,
                                                            uint64_t size_bytes, api::Tier tier) {
    auto req = admin_.addDiskRequest();
    req.setNode(node);
    req.setPath(T(path));
    req.setSizeBytes(size_bytes);
    req.setTier(tier);
    return Call(req.send());
  }

  absl::Status Snapshot(const std::string& vsd, const std::string& name) {
    auto req = admin_.createSnapshotRequest();
    req.setVsd(T(vsd));
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }

  VsdId IdOf(const std::string& name) {
    auto id = pool()->FindVsd(name);
    SCRIBE_CHECK(id.ok());
    return *id;
  }

  absl::Status WriteVsd(const std::string& name, uint64_t offset, const std::string& data) {
    std::optional<absl::Status> st;
    pool()->Write(IdOf(name), offset, data.size(), data.data(), false,
                  [&](absl::Status s) { st = s; });
    loop_->RunUntil([&] { return st.has_value(); }, 60 * kSecondNs);
    return st.value_or(absl::DeadlineExceededError("write did not complete"));
  }

  std::string ReadVsd(const std::string& name, uint64_t offset, size_t length) {
    std::string got(length, '\0');
    std::optional<absl::Status> st;
    pool()->Read(IdOf(name), offset, length, got.data(), [&](absl::Status s) { st = s; });
    loop_->RunUntil([&] { return st.has_value(); }, 60 * kSecondNs);
    EXPECT_TRUE(st.has_value() && st->ok());
    return got;
  }

  FsckReport PoolFsck() { return FsckOrFailure(loop_.get(), pool(), 60 * kSecondNs); }

  std::vector<std::pair<uint64_t, uint64_t>> Diff(const std::string& vsd, const std::string& from,
                                                  const std::string& to) {
    auto req = admin_.diffRequest();
    req.setVsd(T(vsd));
    req.setFrom(T(from));
    req.setTo(T(to));
    auto reply = Call(req.send());
    EXPECT_TRUE(StatusOf(reply.getError()).ok()) << StatusOf(reply.getError());
    std::vector<std::pair<uint64_t, uint64_t>> out;
    for (auto e : reply.getExtents()) out.emplace_back(e.getOffsetBytes(), e.getLengthBytes());
    return out;
  }

  api::PoolStats::Reader StatsOf(capnp::Response<api::ScribeAdmin::StatsResults>& reply) {
    EXPECT_TRUE(StatusOf(reply.getError()).ok());
    return reply.getStats();
  }

  std::string dir_;
  std::unique_ptr<RealLoop> loop_;
  std::unique_ptr<FilePoolBackend> backend_;
  std::unique_ptr<CapabilityListener> listener_;
  kj::Own<kj::AsyncIoStream> stream_;
  std::unique_ptr<capnp::TwoPartyClient> client_;
  api::ScribeAdmin::Client admin_ = nullptr;
};

TEST_F(AdminServiceTest, VsdLifecycle) {
  auto created = CreateVsd("vm1", 64 * kMiB, 3, 7);
  ASSERT_TRUE(StatusOf(created.getError()).ok()) << StatusOf(created.getError());
  EXPECT_EQ(created.getVsd().getName(), "vm1");
  EXPECT_EQ(created.getVsd().getSizeBytes(), 64 * kMiB);
  EXPECT_EQ(created.getVsd().getReplication(), 3);
  EXPECT_EQ(created.getVsd().getFlashPriority(), 7);
  EXPECT_EQ(created.getVsd().getId(), IdOf("vm1").value);
  ASSERT_TRUE(CreateVsdStatus("vm2", 4096).ok());

  // Data written directly shows up in the accounting the service reports.
  ASSERT_TRUE(WriteVsd("vm1", 0, Pattern('a', 3 * 4096)).ok());
  auto info = GetVsd("vm1");
  ASSERT_TRUE(StatusOf(info.getError()).ok());
  EXPECT_EQ(info.getVsd().getAllocatedBytes(), 3 * 4096u);
  EXPECT_EQ(info.getVsd().getUniqueBytes(), 3 * 4096u);
  EXPECT_EQ(info.getVsd().getSnapshots(), 0u);

  auto list = Call(admin_.listVsdsRequest().send());
  ASSERT_TRUE(StatusOf(list.getError()).ok());
  std::set<std::string> names;
  for (auto v : list.getVsds()) names.insert(v.getName());
  EXPECT_EQ(names, (std::set<std::string>{"vm1", "vm2"}));

  auto resized = Resize("vm1", 128 * kMiB);
  ASSERT_TRUE(StatusOf(resized.getError()).ok()) << StatusOf(resized.getError());
  EXPECT_EQ(resized.getVsd().getSizeBytes(), 128 * kMiB);
  EXPECT_EQ(pool()->GetVsdInfo(IdOf("vm1"))->size_bytes, 128 * kMiB);

  absl::Status shrink = StatusOf(Resize("vm1", 64 * kMiB).getError());
  EXPECT_EQ(shrink.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(shrink.message(),
            "sizeBytes 67108864 is smaller than VSD \"vm1\"'s 134217728 bytes: shrinking is "
            "not supported (it would destroy data)");
  absl::Status odd = StatusOf(Resize("vm1", 128 * kMiB + 512).getError());
  EXPECT_EQ(odd.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(odd.message(), "sizeBytes 134218240 is not a multiple of 4096 bytes");

  ASSERT_TRUE(DeleteVsd("vm2").ok());
  EXPECT_FALSE(pool()->FindVsd("vm2").ok());
  absl::Status again = DeleteVsd("vm2");
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(again.message(), "no VSD named \"vm2\"");
  EXPECT_EQ(StatusOf(GetVsd("vm2").getError()).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(PoolFsck().ok());
}

TEST_F(AdminServiceTest, CreateVsdRefusesBadArguments) {
  ASSERT_TRUE(CreateVsdStatus("vm1", 64 * kMiB).ok());
  struct Case {
    std::string name;
    uint64_t size_bytes;
    uint8_t replication;
    uint8_t flash_priority;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"vm1", 4096, 2, 4, absl::StatusCode::kAlreadyExists,
       "name: a VSD named \"vm1\" already exists"},
      {"", 4096, 2, 4, absl::StatusCode::kInvalidArgument, "name is empty"},
      {std::string(256, 'x'), 4096, 2, 4, absl::StatusCode::kInvalidArgument,
       "name has 256 bytes, more than the limit of 255"},
      {"a\nb", 4096, 2, 4, absl::StatusCode::kInvalidArgument,
       "name \"a\\nb\" contains the control character 0x0a at byte 1"},
      {std::string("a\0b", 3), 4096, 2, 4, absl::StatusCode::kInvalidArgument,
       "name \"a\\000b\" contains the control character 0x00 at byte 1"},
      {"x", 0, 2, 4, absl::StatusCode::kInvalidArgument,
       "sizeBytes must be a positive multiple of 4096 (got 0)"},
      {"x", 4097, 2, 4, absl::StatusCode::kInvalidArgument,
       "sizeBytes 4097 is not a multiple of 4096 bytes"},
      {"x", (1ull << 50) + 4096, 2, 4, absl::StatusCode::kInvalidArgument,
       "sizeBytes 1125899906846720 is above the limit of 1125899906842624 bytes (1 PiB)"},
      {"x", 4096, 7, 4, absl::StatusCode::kInvalidArgument, "replication must be 2 or 3 (got 7)"},
      {"x", 4096, 0, 4, absl::StatusCode::kInvalidArgument, "replication must be 2 or 3 (got 0)"},
      {"x", 4096, 2, 99, absl::StatusCode::kInvalidArgument,
       "flashPriority must be 0..11 (got 99)"},
  };
  for (const Case& c : cases) {
    absl::Status st = CreateVsdStatus(c.name, c.size_bytes, c.replication, c.flash_priority);
    EXPECT_EQ(st.code(), c.code) << st;
    EXPECT_EQ(st.message(), c.message);
  }
  EXPECT_EQ(pool()->ListVsds().size(), 1u);
  // The limits themselves are accepted.
  EXPECT_TRUE(CreateVsdStatus(std::string(255, 'y'), 1ull << 50, 3, 11).ok());
  EXPECT_TRUE(CreateVsdStatus("z", 4096, 2, 0).ok());
}

TEST_F(AdminServiceTest, Snapshots) {
  ASSERT_TRUE(CreateVsdStatus("vm1", 64 * kMiB).ok());
  ASSERT_TRUE(WriteVsd("vm1", 0, Pattern('a', 8192)).ok());
  auto req = admin_.createSnapshotRequest();
  req.setVsd("vm1");
  req.setName("s1");
  auto made = Call(req.send());
  ASSERT_TRUE(StatusOf(made.getError()).ok()) << StatusOf(made.getError());
  EXPECT_EQ(made.getSnapshot().getName(), "s1");
  EXPECT_EQ(made.getSnapshot().getVsd(), IdOf("vm1").value);
  EXPECT_NE(made.getSnapshot().getId(), 0u);

  absl::Status dup = Snapshot("vm1", "s1");
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(dup.message(), "VSD \"vm1\" already has a snapshot named \"s1\"");
  EXPECT_EQ(Snapshot("vm1", "").code(), absl::StatusCode::kInvalidArgument);
  absl::Status unknown = Snapshot("nope", "s1");
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.message(), "no VSD named \"nope\"");

  ASSERT_TRUE(WriteVsd("vm1", 0, Pattern('b', 4096)).ok());
  ASSERT_TRUE(Snapshot("vm1", "s2").ok());

  auto list = admin_.listSnapshotsRequest();
  list.setVsd("vm1");
  auto listed = Call(list.send());
  ASSERT_TRUE(StatusOf(listed.getError()).ok());
  ASSERT_EQ(listed.getSnapshots().size(), 2u);
  EXPECT_EQ(listed.getSnapshots()[0].getName(), "s1");
  EXPECT_EQ(listed.getSnapshots()[1].getName(), "s2");
  EXPECT_LT(listed.getSnapshots()[0].getGeneration(), listed.getSnapshots()[1].getGeneration());
  // s1 alone holds the first version of block 0.
  EXPECT_EQ(listed.getSnapshots()[0].getUniqueBytes(), 4096u);

  ASSERT_TRUE(DeleteSnapshot("vm1", "s1").ok());
  absl::Status gone = DeleteSnapshot("vm1", "s1");
  EXPECT_EQ(gone.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(gone.message(), "VSD \"vm1\" has no snapshot named \"s1\"");
  ASSERT_EQ(pool()->ListSnapshots(IdOf("vm1")).size(), 1u);
  EXPECT_EQ(pool()->ListSnapshots(IdOf("vm1"))[0].name, "s2");
  EXPECT_TRUE(PoolFsck().ok());
}

TEST_F(AdminServiceTest, GroupSnapshot) {
  ASSERT_TRUE(CreateVsdStatus("a", 16 * kMiB).ok());
  ASSERT_TRUE(CreateVsdStatus("b", 16 * kMiB).ok());
  ASSERT_TRUE(WriteVsd("a", 0, Pattern('a', 4096)).ok());
  ASSERT_TRUE(WriteVsd("b", 4096, Pattern('b', 4096)).ok());

  auto group = [&](std::vector<std::string> vsds, const std::string& name) {
    auto req = admin_.createGroupSnapshotRequest();
    auto list = req.initVsds(static_cast<unsigned>(vsds.size()));
    for (size_t i = 0; i < vsds.size(); ++i) list.set(i, T(vsds[i]));
    req.setName(T(name));
    return Call(req.send());
  };
  auto made = group({"b", "a"}, "vm-backup");
  ASSERT_TRUE(StatusOf(made.getError()).ok()) << StatusOf(made.getError());
  ASSERT_EQ(made.getSnapshots().size(), 2u);
  EXPECT_EQ(made.getSnapshots()[0].getVsd(), IdOf("b").value);
  EXPECT_EQ(made.getSnapshots()[1].getVsd(), IdOf("a").value);
  EXPECT_EQ(made.getSnapshots()[0].getName(), "vm-backup");
  // One instant: the same pool generation.
  EXPECT_EQ(made.getSnapshots()[0].getGeneration(), made.getSnapshots()[1].getGeneration());
  EXPECT_EQ(Diff("b", "", "vm-backup"), (std::vector<std::pair<uint64_t, uint64_t>>{{4096, 4096}}));

  absl::Status empty = StatusOf(group({}, "x").getError());
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.message(), "vsds is empty: name at least one VSD");
  absl::Status twice = StatusOf(group({"a", "b", "a"}, "x").getError());
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(twice.message(), "vsds[2]: VSD \"a\" is listed twice");
  absl::Status missing = StatusOf(group({"a", "zz"}, "x").getError());
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  absl::Status exists = StatusOf(group({"a"}, "vm-backup").getError());
  EXPECT_EQ(exists.code(), absl::StatusCode::kAlreadyExists);
  // Nothing was made by the refused calls.
  EXPECT_EQ(pool()->ListSnapshots(IdOf("a")).size(), 1u);
  EXPECT_EQ(pool()->ListSnapshots(IdOf("b")).size(), 1u);
}

TEST_F(AdminServiceTest, ClonesLiveAndFromSnapshot) {
  ASSERT_TRUE(CreateVsdStatus("base", 32 * kMiB, 3, 9).ok());
  const std::string old_data = Pattern('o', 8192);
  const std::string new_data = Pattern('n', 8192);
  ASSERT_TRUE(WriteVsd("base", 0, old_data).ok());
  ASSERT_TRUE(Snapshot("base", "gold").ok());
  ASSERT_TRUE(WriteVsd("base", 0, new_data).ok());

  auto c1 = CloneFromSnapshot("base", "gold", "from-gold");
  ASSERT_TRUE(StatusOf(c1.getError()).ok()) << StatusOf(c1.getError());
  EXPECT_EQ(c1.getClone().getName(), "from-gold");
  EXPECT_EQ(c1.getClone().getReplication(), 3);
  EXPECT_EQ(c1.getClone().getFlashPriority(), 9);
  EXPECT_EQ(c1.getClone().getSizeBytes(), 32 * kMiB);

  auto c2 = CloneVsd("base", "live-copy");
  ASSERT_TRUE(StatusOf(c2.getError()).ok()) << StatusOf(c2.getError());
  EXPECT_EQ(c2.getClone().getName(), "live-copy");
  // Thin: the clone's blocks are all shared with its source.
  EXPECT_EQ(c2.getClone().getAllocatedBytes(), 8192u);
  EXPECT_EQ(c2.getClone().getSharedBytes(), 8192u);

  EXPECT_EQ(ReadVsd("from-gold", 0, 8192), old_data);
  EXPECT_EQ(ReadVsd("live-copy", 0, 8192), new_data);

  absl::Status taken = StatusOf(CloneVsd("base", "live-copy").getError());
  EXPECT_EQ(taken.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(taken.message(), "cloneName: a VSD named \"live-copy\" already exists");
  absl::Status no_snapshot = StatusOf(CloneFromSnapshot("base", "silver", "x").getError());
  EXPECT_EQ(no_snapshot.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(no_snapshot.message(), "VSD \"base\" has no snapshot named \"silver\"");
  EXPECT_EQ(StatusOf(CloneVsd("base", "").getError()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StatusOf(CloneVsd("nope", "y").getError()).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(PoolFsck().ok());
}

TEST_F(AdminServiceTest, RevertToSnapshot) {
  ASSERT_TRUE(CreateVsdStatus("vm1", 16 * kMiB).ok());
  const std::string before = Pattern('b', 4096);
  ASSERT_TRUE(WriteVsd("vm1", 4096, before).ok());
  ASSERT_TRUE(Snapshot("vm1", "s1").ok());
  ASSERT_TRUE(WriteVsd("vm1", 4096, Pattern('x', 4096)).ok());
  ASSERT_TRUE(WriteVsd("vm1", 1 * kMiB, Pattern('y', 4096)).ok());
  ASSERT_TRUE(StatusOf(Resize("vm1", 32 * kMiB).getError()).ok());

  ASSERT_TRUE(Revert("vm1", "s1").ok());
  EXPECT_EQ(ReadVsd("vm1", 4096, 4096), before);
  EXPECT_EQ(ReadVsd("vm1", 1 * kMiB, 4096), std::string(4096, '\0'));
  EXPECT_EQ(pool()->GetVsdInfo(IdOf("vm1"))->size_bytes, 16 * kMiB);

  EXPECT_EQ(Revert("vm1", "s9").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Revert("vm9", "s1").code(), absl::StatusCode::kNotFound);
}

TEST_F(AdminServiceTest, DiffMatchesWrites) {
  ASSERT_TRUE(CreateVsdStatus("vm1", 64 * kMiB).ok());
  ASSERT_TRUE(WriteVsd("vm1", 0, Pattern('a', 4096)).ok());
  ASSERT_TRUE(WriteVsd("vm1", 1 * kMiB, Pattern('b', 8192)).ok());
  ASSERT_TRUE(Snapshot("vm1", "s1").ok());
  ASSERT_TRUE(WriteVsd("vm1", 64 * 1024, Pattern('c', 4096)).ok());
  ASSERT_TRUE(WriteVsd("vm1", 1 * kMiB + 4096, Pattern('d', 4096)).ok());
  ASSERT_TRUE(Snapshot("vm1", "s2").ok());
  ASSERT_TRUE(Snapshot("vm1", "s3").ok());

  using Extents = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(Diff("vm1", "", "s1"), (Extents{{0, 4096}, {kMiB, 8192}}));
  EXPECT_EQ(Diff("vm1", "s1", "s2"), (Extents{{65536, 4096}, {kMiB + 4096, 4096}}));
  EXPECT_EQ(Diff("vm1", "s2", "s3"), Extents{});

  absl::Status no_to = DiffStatus("vm1", "s1", "");
  EXPECT_EQ(no_to.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(no_to.message(), "to (a snapshot name) is empty");
  absl::Status no_from = DiffStatus("vm1", "s0", "s1");
  EXPECT_EQ(no_from.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(no_from.message(), "VSD \"vm1\" has no snapshot named \"s0\"");
}

TEST_F(AdminServiceTest, StatsScrubFailDiskAddDisk) {
  ASSERT_TRUE(CreateVsdStatus("vm1", 64 * kMiB).ok());
  const std::string data = Pattern('q', 4 * kMiB);
  ASSERT_TRUE(WriteVsd("vm1", 0, data).ok());

  auto stats = Call(admin_.statsRequest().send());
  {
    auto s = StatsOf(stats);
    const PoolStats direct = pool()->Stats();
    EXPECT_EQ(s.getHddCapacityBytes(), direct.capacity_bytes[1]);
    EXPECT_GT(s.getHddCapacityBytes(), 0u);
    EXPECT_EQ(s.getSsdCapacityBytes(), 0u);
    EXPECT_EQ(s.getHddUsedBytes(), direct.used_bytes[1]);
    EXPECT_EQ(s.getChunks(), direct.chunks);
    EXPECT_GE(s.getChunks(), 4u);  // 4 MiB in 1 MiB chunks
    EXPECT_EQ(s.getDegradedChunks(), 0u);
    EXPECT_TRUE(s.getFullyRedundant());
    EXPECT_FALSE(s.getFenced());
  }

  auto scrub = Call(admin_.scrubRequest().send());
  ASSERT_TRUE(StatusOf(scrub.getError()).ok()) << StatusOf(scrub.getError());
  EXPECT_EQ(scrub.getReport().getChunksChecked(), stats.getStats().getChunks());
  EXPECT_GE(scrub.getReport().getBlocksChecked(), 1024u);
  EXPECT_EQ(scrub.getReport().getBadCopies(), 0u);
  EXPECT_EQ(scrub.getReport().getUnrecoverable(), 0u);

  auto disks = Call(admin_.listDisksRequest().send());
  ASSERT_TRUE(StatusOf(disks.getError()).ok());
  ASSERT_EQ(disks.getDisks().size(), 3u);
  uint64_t node1_disk = 0;
  for (auto d : disks.getDisks()) {
    EXPECT_EQ(d.getTier(), api::Tier::HDD);
    EXPECT_FALSE(d.getFailed());
    EXPECT_TRUE(d.getOnline());
    if (d.getNode() == 1) node1_disk = d.getId();
  }
  ASSERT_NE(node1_disk, 0u);

  ASSERT_TRUE(FailDisk(node1_disk).ok());
  // Re-mirroring onto nodes 2 and 3 runs in the background; poll like `scribe wait-redundant`.
  const int64_t deadline = loop_->NowNanos() + 60 * kSecondNs;
  bool redundant = false;
  while (!redundant && loop_->NowNanos() < deadline) {
    auto s = Call(admin_.statsRequest().send());
    redundant = s.getStats().getFullyRedundant();
    if (!redundant) loop_->RunUntil([] { return false; }, 50'000'000);
  }
  ASSERT_TRUE(redundant);
  auto after = Call(admin_.statsRequest().send());
  EXPECT_GT(after.getStats().getChunksRebuilt(), 0u);
  EXPECT_EQ(after.getStats().getDegradedChunks(), 0u);
  disks = Call(admin_.listDisksRequest().send());
  for (auto d : disks.getDisks()) EXPECT_EQ(d.getFailed(), d.getId() == node1_disk);
  EXPECT_EQ(ReadVsd("vm1", 0, data.size()), data);

  EXPECT_EQ(FailDisk(999).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FailDisk(0).code(), absl::StatusCode::kInvalidArgument);

  const std::string path = dir_ + "/node1-ssd.disk";
  auto added = AddDisk(1, path, 64 * kMiB, api::Tier::SSD);
  ASSERT_TRUE(StatusOf(added.getError()).ok()) << StatusOf(added.getError());
  EXPECT_NE(added.getDisk(), 0u);
  EXPECT_EQ(backend_->add_disk_calls(), 1);
  disks = Call(admin_.listDisksRequest().send());
  ASSERT_EQ(disks.getDisks().size(), 4u);
  bool found = false;
  for (auto d : disks.getDisks()) {
    if (d.getId() != added.getDisk()) continue;
    found = true;
    EXPECT_EQ(d.getNode(), 1u);
    EXPECT_EQ(d.getTier(), api::Tier::SSD);
    EXPECT_GT(d.getCapacityBytes(), 0u);
  }
  EXPECT_TRUE(found);
  stats = Call(admin_.statsRequest().send());
  EXPECT_GT(stats.getStats().getSsdCapacityBytes(), 0u);

  // Refused before reaching the backend.
  struct Case {
    uint64_t node;
    std::string path;
    uint64_t size_bytes;
    uint16_t tier;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {0, path + "2", 64 * kMiB, 1, absl::StatusCode::kInvalidArgument,
       "node must be a node id (got 0)"},
      {9, path + "2", 64 * kMiB, 1, absl::StatusCode::kNotFound,
       "node 9 is not a member of the cluster"},
      {2, "", 64 * kMiB, 1, absl::StatusCode::kInvalidArgument, "path is empty"},
      {2, path + "2", 4097, 1, absl::StatusCode::kInvalidArgument,
       "sizeBytes 4097 is not a multiple of 4096 bytes"},
      {2, path + "2", 64 * kMiB, 7, absl::StatusCode::kInvalidArgument,
       "tier 7 is neither ssd (0) nor hdd (1)"},
  };
  for (const Case& c : cases) {
    absl::Status st =
        StatusOf(AddDisk(c.node, c.path, c.size_bytes, static_cast<api::Tier>(c.tier)).getError());
    EXPECT_EQ(st.code(), c.code) << st;
    EXPECT_EQ(st.message(), c.message);
  }
  EXPECT_EQ(backend_->add_disk_calls(), 1);
  EXPECT_TRUE(PoolFsck().ok());
}

// An operation whose callback is dropped uncalled (a pool closed under it) answers
// UNAVAILABLE, not an RPC exception, and the service keeps serving.
TEST_F(AdminServiceTest, DroppedOperationIsUnavailable) {
  backend_->set_drop_add_disk(true);
  auto added = AddDisk(2, dir_ + "/never.disk", 64 * kMiB, api::Tier::HDD);
  absl::Status st = StatusOf(added.getError());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(st.message(),
            "the pool dropped the operation before it completed (it may or may not have taken "
            "effect)");
  EXPECT_EQ(backend_->add_disk_calls(), 1);
  backend_->set_drop_add_disk(false);
  EXPECT_TRUE(CreateVsdStatus("vm1", 4096).ok());
}

TEST_F(AdminServiceTest, ClusterAndExportInfo) {
  backend_->cluster().epoch = 7;
  backend_->cluster().nodes[2].alive = false;
  auto cluster = Call(admin_.clusterRequest().send());
  ASSERT_TRUE(StatusOf(cluster.getError()).ok());
  auto c = cluster.getStatus();
  EXPECT_EQ(c.getOwnerNode(), 1u);
  EXPECT_EQ(c.getEpoch(), 7u);
  EXPECT_EQ(c.getState(), "running");
  ASSERT_EQ(c.getNodes().size(), 3u);
  EXPECT_EQ(c.getNodes()[1].getId(), 2u);
  EXPECT_EQ(c.getNodes()[1].getAdminAddress(), "127.0.0.1:7002");
  EXPECT_EQ(c.getNodes()[1].getBackplaneAddress(), "127.0.0.1:7102");
  EXPECT_EQ(c.getNodes()[1].getNbdSocket(), dir_ + "/node2.nbd");
  EXPECT_TRUE(c.getNodes()[0].getOwner());
  EXPECT_FALSE(c.getNodes()[1].getOwner());
  EXPECT_FALSE(c.getNodes()[2].getAlive());
  EXPECT_TRUE(c.getNodes()[2].getReachable());

  ASSERT_TRUE(CreateVsdStatus("vm1", 4096).ok());
  ASSERT_TRUE(CreateVsdStatus("my disk/2", 4096).ok());
  backend_->cluster().nodes[2].nbd_socket = "/run/scribe dir/nbd.sock";
  auto info = [&](const std::string& vsd, uint64_t node) {
    auto req = admin_.exportInfoRequest();
    req.setVsd(T(vsd));
    req.setNode(node);
    return Call(req.send());
  };
  auto owner = info("vm1", 0);
  ASSERT_TRUE(StatusOf(owner.getError()).ok()) << StatusOf(owner.getError());
  EXPECT_EQ(owner.getNode(), 1u);
  EXPECT_EQ(owner.getNbdSocket(), dir_ + "/node1.nbd");
  EXPECT_EQ(owner.getExportName(), "vm1");
  EXPECT_EQ(owner.getUri(), "nbd+unix:///vm1?socket=" + dir_ + "/node1.nbd");
  auto third = info("my disk/2", 3);
  ASSERT_TRUE(StatusOf(third.getError()).ok());
  EXPECT_EQ(third.getNode(), 3u);
  EXPECT_EQ(third.getExportName(), "my disk/2");
  EXPECT_EQ(third.getUri(), "nbd+unix:///my%20disk%2F2?socket=/run/scribe%20dir/nbd.sock");

  absl::Status no_node = StatusOf(info("vm1", 5).getError());
  EXPECT_EQ(no_node.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(no_node.message(), "node 5 is not a member of the cluster");
  EXPECT_EQ(StatusOf(info("vm9", 0).getError()).code(), absl::StatusCode::kNotFound);
  backend_->cluster().nodes[1].nbd_socket = "";
  absl::Status no_socket = StatusOf(info("vm1", 2).getError());
  EXPECT_EQ(no_socket.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(no_socket.message(), "node 2 does not export over NBD");
}

TEST_F(AdminServiceTest, WithoutThePoolEveryPoolCallIsUnavailable) {
  backend_->set_serving_pool(false);
  backend_->cluster().owner_node = 2;
  const std::string message = "this node does not run the pool (owner: node 2)";
  std::vector<absl::Status> statuses;
  statuses.push_back(CreateVsdStatus("vm1", 4096));
  statuses.push_back(StatusOf(Call(admin_.listVsdsRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.getVsdRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.deleteVsdRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.resizeVsdRequest().send()).getError()));
  statuses.push_back(Snapshot("vm1", "s"));
  statuses.push_back(StatusOf(Call(admin_.createGroupSnapshotRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.listSnapshotsRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.deleteSnapshotRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.cloneFromSnapshotRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.cloneVsdRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.revertToSnapshotRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.diffRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.listDisksRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.failDiskRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.addDiskRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.statsRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.scrubRequest().send()).getError()));
  statuses.push_back(StatusOf(Call(admin_.exportInfoRequest().send()).getError()));
  for (size_t i = 0; i < statuses.size(); ++i) {
    EXPECT_EQ(statuses[i].code(), absl::StatusCode::kUnavailable) << i << ": " << statuses[i];
    EXPECT_EQ(statuses[i].message(), message) << i;
  }
  EXPECT_EQ(backend_->add_disk_calls(), 0);
  EXPECT_TRUE(pool()->ListVsds().empty());

  // The cluster view does not need the pool.
  auto cluster = Call(admin_.clusterRequest().send());
  EXPECT_TRUE(StatusOf(cluster.getError()).ok());
  EXPECT_EQ(cluster.getStatus().getOwnerNode(), 2u);

  backend_->cluster().owner_node = 0;
  backend_->cluster().state = "forming (2 of 3 nodes)";
  absl::Status no_owner = StatusOf(Call(admin_.listVsdsRequest().send()).getError());
  EXPECT_EQ(no_owner.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(no_owner.message(), "no pool owner yet (cluster forming (2 of 3 nodes))");

  backend_->set_serving_pool(true);
  EXPECT_TRUE(CreateVsdStatus("vm1", 4096).ok());
}

// A client that goes away while its call is in the pool: the pool's callback fires into
// an abandoned call and must not touch it; the service keeps serving.
TEST_F(AdminServiceTest, ClientGoneWhileCallInPool) {
  // Disk I/O is held, so the pool applies the change in memory and then waits to commit.
  backend_->HoldIo();
  {
    auto req = admin_.createVsdRequest();
    req.setName("orphan");
    req.setSizeBytes(4096);
    req.setReplication(2);
    req.setFlashPriority(4);
    auto promise = req.send();
    ASSERT_TRUE(loop_->RunUntil([&] { return pool()->FindVsd("orphan").ok(); }, 10 * kSecondNs));
  }
  Disconnect();
  ASSERT_TRUE(
      loop_->RunUntil([&] { return listener_->connections_active() == 0; }, 10 * kSecondNs));
  EXPECT_GT(backend_->held_io(), 0u);
  // Now the commit completes, and the pool calls back with nobody left to answer.
  backend_->ReleaseIo();
  std::optional<absl::Status> flushed;
  pool()->Flush([&](absl::Status st) { flushed = st; });
  ASSERT_TRUE(loop_->RunUntil([&] { return flushed.has_value(); }, 10 * kSecondNs));
  EXPECT_TRUE(flushed->ok());
  loop_->RunUntil([] { return false; }, 50'000'000);

  Connect();
  auto info = GetVsd("orphan");
  ASSERT_TRUE(StatusOf(info.getError()).ok());
  EXPECT_EQ(info.getVsd().getSizeBytes(), 4096u);
  EXPECT_TRUE(CreateVsdStatus("after", 4096).ok());
}

// Random malformed arguments to every method: each call gets a business error or
// succeeds; none throws, and the pool stays consistent.
TEST_F(AdminServiceTest, MalformedArgumentsNeverCrash) {
  ASSERT_TRUE(CreateVsdStatus("vm1", 16 * kMiB).ok());
  ASSERT_TRUE(Snapshot("vm1", "s1").ok());
  std::mt19937_64 random(20240601);
  const std::vector<std::string> names = {
      "",     "vm1",      "s1",  "x", std::string(300, 'n'), std::string("a\0b", 3),
      "\x7f", "\xff\xfe", "a b", "/", std::string(255, 'm'), "vm1 "};
  const std::vector<uint64_t> sizes = {
      0, 1, 511, 4095, 4096, 4097, 8 * kMiB, 1ull << 50, (1ull << 50) + 4096, UINT64_MAX};
  const std::vector<uint8_t> bytes = {0, 1, 2, 3, 4, 7, 11, 12, 99, 255};
  auto name = [&] { return names[random() % names.size()]; };
  auto size = [&] { return sizes[random() % sizes.size()]; };
  auto byte = [&] { return bytes[random() % bytes.size()]; };
  const std::set<absl::StatusCode> allowed = {absl::StatusCode::kOk,
                                              absl::StatusCode::kInvalidArgument,
                                              absl::StatusCode::kNotFound,
                                              absl::StatusCode::kAlreadyExists,
                                              absl::StatusCode::kResourceExhausted,
                                              absl::StatusCode::kFailedPrecondition};
  std::map<absl::StatusCode, int> seen;
  for (int i = 0; i < 300; ++i) {
    absl::Status st;
    switch (random() % 12) {
      case 0:
        st = CreateVsdStatus(name(), size(), byte(), byte());
        break;
      case 1: {
        auto req = admin_.resizeVsdRequest();
        req.setName(T(name()));
        req.setSizeBytes(size());
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      case 2:
        st = Snapshot(name(), name());
        break;
      case 3: {
        auto req = admin_.cloneFromSnapshotRequest();
        req.setVsd(T(name()));
        req.setSnapshot(T(name()));
        req.setCloneName(T(name()));
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      case 4: {
        auto req = admin_.cloneVsdRequest();
        req.setVsd(T(name()));
        req.setCloneName(T(name()));
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      case 5: {
        auto req = admin_.diffRequest();
        req.setVsd(T(name()));
        req.setFrom(T(name()));
        req.setTo(T(name()));
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      case 6: {
        auto req = admin_.createGroupSnapshotRequest();
        const unsigned n = random() % 4;
        auto list = req.initVsds(n);
        for (unsigned k = 0; k < n; ++k) list.set(k, T(name()));
        req.setName(T(name()));
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      case 7: {
        auto req = admin_.revertToSnapshotRequest();
        req.setVsd(T(name()));
        req.setSnapshot(T(name()));
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      case 8: {
        auto req = admin_.addDiskRequest();  // never a valid path with a valid node here
        req.setNode(random() % 2 == 0 ? 0 : 42);
        req.setPath(T(name()));
        req.setSizeBytes(size());
        req.setTier(static_cast<api::Tier>(byte()));
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      case 9: {
        auto req = admin_.exportInfoRequest();
        req.setVsd(T(name()));
        req.setNode(byte());
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      case 10: {
        auto req = admin_.failDiskRequest();
        req.setDisk(random() % 2 == 0 ? 0 : 1000 + byte());
        st = StatusOf(Call(req.send()).getError());
        break;
      }
      default: {
        auto req = admin_.getVsdRequest();
        req.setName(T(name()));
        st = StatusOf(Call(req.send()).getError());
        break;
      }
    }
    EXPECT_TRUE(allowed.count(st.code())) << st;
    EXPECT_FALSE(st.message().empty() && !st.ok());
    ++seen[st.code()];
  }
  // The mix reached both the validation and the success paths.
  EXPECT_GT(seen[absl::StatusCode::kOk], 0);
  EXPECT_GT(seen[absl::StatusCode::kInvalidArgument], 0);
  EXPECT_GT(seen[absl::StatusCode::kNotFound], 0);
  EXPECT_EQ(backend_->add_disk_calls(), 0);
  FsckReport fsck = PoolFsck();
  EXPECT_TRUE(fsck.ok()) << (fsck.errors.empty() ? "" : fsck.errors[0]);
}

}  // namespace
}  // namespace scribe::daemon
