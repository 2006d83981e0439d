// DiskServer and RemoteBlockDevice over real loopback TCP in one process and one loop,
// serving files through libaio: the BlockDevice conformance suite through the network,
// request validation, epoch fencing, server loss, call timeouts, a Pool over remote
// disks, and a printed throughput comparison with the local device.
#include "scribe/remote.h"

#include <capnp/rpc-twoparty.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "libscribe/env/conformance.h"
#include "libscribe/env/real_loop_internal.h"
#include "libscribe/remote/disk_service.capnp.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {
namespace {

using conformance::Await;

constexpr int64_t kSecondNs = 1'000'000'000;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name + "." + std::to_string(getpid());
}

std::string Address(uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

// A sparse file opened through libaio; the path is unlinked at once.
std::unique_ptr<BlockDevice> MakeFile(RealLoop* loop, const std::string& name,
                                      uint64_t size_bytes) {
  const std::string path = TempPath(name);
  unlink(path.c_str());
  AioDeviceOptions options;
  options.create_size_bytes = size_bytes;
  auto dev = OpenAioDevice(loop, path, options);
  SCRIBE_CHECK(dev.ok());
  unlink(path.c_str());
  return std::move(dev).value();
}

std::unique_ptr<DiskServer> Serve(RealLoop* loop, std::map<uint64_t, BlockDevice*> disks,
                                  const std::string& address = "127.0.0.1:0") {
  auto server = DiskServer::Create(loop, address, std::move(disks));
  SCRIBE_CHECK(server.ok());
  return std::move(server).value();
}

absl::StatusOr<std::unique_ptr<BlockDevice>> OpenRemote(RealLoop* loop, uint16_t port,
                                                        uint64_t disk_id, uint64_t epoch,
                                                        RemoteDeviceOptions options = {}) {
  std::optional<absl::StatusOr<std::unique_ptr<BlockDevice>>> result;
  OpenRemoteDevice(
      loop, Address(port), disk_id, epoch,
      [&](absl::StatusOr<std::unique_ptr<BlockDevice>> r) { result = std::move(r); }, options);
  if (!loop->RunUntil([&] { return result.has_value(); }, 30 * kSecondNs)) {
    return absl::DeadlineExceededError("open did not complete");
  }
  return std::move(*result);
}

AlignedBuffer Filled(size_t n, uint8_t byte) {
  AlignedBuffer b(n);
  std::memset(b.data(), byte, n);
  return b;
}

bool AllBytes(const AlignedBuffer& b, uint8_t byte) {
  for (size_t i = 0; i < b.size(); ++i) {
    if (b.data()[i] != byte) return false;
  }
  return true;
}

// Passes operations through to a real device, or holds them (not started) while closed,
// so tests can keep requests in flight at the server.
class GatedDevice : public BlockDevice {
 public:
  explicit GatedDevice(BlockDevice* inner) : inner_(inner) {}
  void Close() { open_ = false; }
  void Open() {
    open_ = true;
    std::deque<std::function<void()>> held = std::move(held_);
    held_.clear();
    for (auto& start : held) start();
  }
  size_t held() const { return held_.size(); }
  // Reads fail as a disk's EIO does (UNAVAILABLE), served normally otherwise.
  void FailReads(bool on) { fail_reads_ = on; }

  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  void Read(uint64_t off, size_t len, void* buf, Callback done) override {
    if (fail_reads_) return done(absl::UnavailableError("EIO: injected read error"));
    Run([=, this] { inner_->Read(off, len, buf, done); });
  }
  void Write(uint64_t off, size_t len, const void* buf, Callback done) override {
    Run([=, this] { inner_->Write(off, len, buf, done); });
  }
  void Flush(Callback done) override {
    Run([=, this] { inner_->Flush(done); });
  }
  void Discard(uint64_t off, size_t len, Callback done) override {
    Run([=, this] { inner_->Discard(off, len, done); });
  }

 private:
  void Run(std::function<void()> start) {
    if (open_) return start();
    held_.push_back(std::move(start));
  }
  BlockDevice* inner_;
  bool open_ = true;
  bool fail_reads_ = false;
  std::deque<std::function<void()>> held_;
};

// ------------------------------------------------------------------ conformance

struct ConformanceParam {
  const char* name;
  uint32_t request_bytes_max;  // the client's; small values exercise request splitting
};

void PrintTo(const ConformanceParam& p, std::ostream* os) { *os << p.name; }

class RemoteConformance : public testing::TestWithParam<ConformanceParam> {
 protected:
  RemoteConformance() {
    file_ = MakeFile(loop_.get(), "remote_conformance", 64ull << 20);
    server_ = Serve(loop_.get(), {{7, file_.get()}});
    RemoteDeviceOptions options;
    options.request_bytes_max = GetParam().request_bytes_max;
    auto dev = GetParam().request_bytes_max == 0 ? server_->OpenLocal(7, 1)
                                                 : OpenRemote(loop_.get(), server_->port(), 7, 1, options);
    SCRIBE_CHECK(dev.ok());
    dev_ = std::move(dev).value();
  }
  ~RemoteConformance() override {
    dev_.reset();
    server_.reset();
    file_.reset();
  }

  std::unique_ptr<RealLoop> loop_ = RealLoop::Create();
  SeededRandom random_{7};
  std::unique_ptr<BlockDevice> file_;
  std::unique_ptr<DiskServer> server_;
  std::unique_ptr<BlockDevice> dev_;
};

TEST_P(RemoteConformance, ReadBackExact) {
  EXPECT_TRUE(conformance::CheckReadBackExact(loop_.get(), dev_.get(), &random_));
}
TEST_P(RemoteConformance, RejectsBadRequests) {
  EXPECT_TRUE(conformance::CheckRejectsBadRequests(loop_.get(), dev_.get()));
}
TEST_P(RemoteConformance, ConcurrentWrites) {
  EXPECT_TRUE(conformance::CheckConcurrentWrites(loop_.get(), dev_.get(), &random_));
}
TEST_P(RemoteConformance, AdjacentWrites) {
  EXPECT_TRUE(conformance::CheckAdjacentWrites(loop_.get(), dev_.get(), &random_));
}
TEST_P(RemoteConformance, WriteDurable) {
  EXPECT_TRUE(conformance::CheckWriteDurable(loop_.get(), dev_.get(), &random_));
}
TEST_P(RemoteConformance, FlushAndDiscard) {
  EXPECT_TRUE(conformance::CheckFlushAndDiscard(loop_.get(), dev_.get(), &random_));
}

INSTANTIATE_TEST_SUITE_P(All, RemoteConformance,
                         testing::Values(ConformanceParam{"whole_requests", 8u << 20},
                                         ConformanceParam{"split_64k", 64u << 10},
                                         ConformanceParam{"local", 0}),
                         [](const auto& info) { return std::string(info.param.name); });

// The data written through the network is on the served file, byte for byte.
TEST(RemoteBlockDevice, WritesLandOnTheServedFile) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_lands", 64ull << 20);
  auto server = Serve(loop.get(), {{3, file.get()}});
  auto dev = OpenRemote(loop.get(), server->port(), 3, 1);
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ((*dev)->size_bytes(), 64ull << 20);
  // 20 MiB: more than one request may carry, so it goes as three.
  constexpr size_t kLen = 20 << 20;
  AlignedBuffer data(kLen);
  SeededRandom random(1);
  for (size_t i = 0; i < kLen; i += 8) {
    const uint64_t v = random.Next64();
    std::memcpy(data.data() + i, &v, 8);
  }
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*dev)->Write(4096, kLen, data.data(), cb); }).ok());
  AlignedBuffer got(kLen);
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { file->Read(4096, kLen, got.data(), cb); }).ok());
  EXPECT_EQ(std::memcmp(got.data(), data.data(), kLen), 0);
  dev->reset();
}

// ------------------------------------------------------------ raw request checks

// One op of a raw batch.
struct RawOp {
  remote::wire::Op::Kind kind;
  uint64_t offset = 0;
  uint64_t length = 0;  // read, discard
  std::vector<uint8_t> data;  // write
};

// Sends one raw batch and returns each op's decoded Error (all UNAVAILABLE for an
// exception), and the data of reads in `read_data` when given.
std::vector<absl::Status> BatchRaw(RealLoop* loop, remote::wire::DiskService::Client& disk,
                                   uint64_t disk_id, uint64_t epoch, const std::vector<RawOp>& ops,
                                   std::vector<std::string>* read_data = nullptr) {
  auto req = disk.batchRequest();
  req.setDiskId(disk_id);
  req.setEpoch(epoch);
  auto list = req.initOps(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    list[i].setKind(ops[i].kind);
    list[i].setOffsetBytes(ops[i].offset);
    list[i].setLengthBytes(ops[i].length);
    if (!ops[i].data.empty()) list[i].setData(kj::arrayPtr(ops[i].data.data(), ops[i].data.size()));
  }
  std::optional<std::vector<absl::Status>> result;
  auto task =
      req.send()
          .then(
              [&](capnp::Response<remote::wire::DiskService::BatchResults>&& r) {
                loop->Dispatch([&] {
                  result.emplace();
                  for (auto res : r.getResults()) {
                    auto e = res.getError();
                    result->push_back(e.getCode() == 0
                                          ? absl::OkStatus()
                                          : absl::Status(static_cast<absl::StatusCode>(e.getCode()),
                                                         std::string(e.getMessage().cStr())));
                    if (read_data) {
                      read_data->emplace_back(reinterpret_cast<const char*>(res.getData().begin()),
                                              res.getData().size());
                    }
                  }
                });
              },
              [&](kj::Exception&& e) {
                loop->Dispatch([&] {
                  result.emplace(ops.size(), absl::UnavailableError(e.getDescription().cStr()));
                });
              })
          .eagerlyEvaluate(nullptr);
  loop->RunUntil([&] { return result.has_value(); }, 10 * kSecondNs);
  if (!result) return std::vector<absl::Status>(ops.size(), absl::DeadlineExceededError("no reply"));
  return *result;
}

TEST(DiskServer, ValidatesEveryRequest) {
  using Kind = remote::wire::Op::Kind;
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_validate", 16ull << 20);
  auto server = Serve(loop.get(), {{5, file.get()}});
  auto& io = loop->impl()->io;
  auto stream = io.provider->getNetwork()
                    .parseAddress(Address(server->port()))
                    .then([](kj::Own<kj::NetworkAddress> a) { return a->connect(); })
                    .wait(io.waitScope);
  capnp::TwoPartyClient client(*stream);
  auto disk = client.bootstrap().castAs<remote::wire::DiskService>();

  auto read = [&](uint64_t disk_id, uint64_t epoch, uint64_t offset, uint64_t length) {
    auto st = BatchRaw(loop.get(), disk, disk_id, epoch, {RawOp{Kind::READ, offset, length}});
    return st.size() == 1 ? st[0] : absl::InternalError("wrong result count");
  };
  EXPECT_TRUE(read(5, 0, 0, 4096).ok());
  EXPECT_EQ(read(6, 0, 0, 4096).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(read(5, 0, 0, (8u << 20) + 512).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(read(5, 0, 0, ~uint64_t{0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(read(5, 0, 100, 512).code(), absl::StatusCode::kInvalidArgument);  // the device's check
  EXPECT_EQ(read(5, 0, 16ull << 20, 512).code(), absl::StatusCode::kOutOfRange);

  // A write at a higher epoch raises the fence; the lower one is then refused.
  std::vector<absl::Status> w =
      BatchRaw(loop.get(), disk, 5, 9, {RawOp{Kind::WRITE, 0, 0, std::vector<uint8_t>(4096, 0x5a)}});
  ASSERT_EQ(w.size(), 1u);
  EXPECT_TRUE(w[0].ok()) << w[0];
  EXPECT_EQ(*server->FenceEpoch(5), 9u);
  absl::Status stale = read(5, 8, 0, 4096);
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(stale.message(), "stale epoch 8 < 9 for disk 5");
  EXPECT_EQ(server->FenceEpoch(6).status().code(), absl::StatusCode::kNotFound);

  // A batch over the byte limit fails as a whole: its small write does not land either.
  w = BatchRaw(loop.get(), disk, 5, 9,
               {RawOp{Kind::WRITE, 0, 0, std::vector<uint8_t>(4096, 0x11)},
                RawOp{Kind::WRITE, 8192, 0, std::vector<uint8_t>(8u << 20, 1)}});
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w[0].message().find("over the server's limit"), std::string::npos) << w[0];

  // A mixed batch: each op answered on its own (a bad one does not spoil the others),
  // reads carry their data.
  std::vector<std::string> data;
  w = BatchRaw(loop.get(), disk, 5, 9,
               {RawOp{Kind::READ, 0, 4096}, RawOp{Kind::READ, 100, 512},
                RawOp{Kind::WRITE, 1 << 20, 0, std::vector<uint8_t>(512, 0x77)},
                RawOp{Kind::FLUSH}, RawOp{Kind::DISCARD, 16ull << 20, 512}},
               &data);
  ASSERT_EQ(w.size(), 5u);
  EXPECT_TRUE(w[0].ok()) << w[0];
  EXPECT_EQ(data[0], std::string(4096, 0x5a));
  EXPECT_EQ(w[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(data[1].empty());
  EXPECT_TRUE(w[2].ok()) << w[2];
  EXPECT_TRUE(w[3].ok()) << w[3];
  EXPECT_EQ(w[4].code(), absl::StatusCode::kOutOfRange);
  // An empty batch is an empty answer.
  EXPECT_TRUE(BatchRaw(loop.get(), disk, 5, 9, {}).empty());

  const DiskServerStats stats = server->Stats();
  EXPECT_EQ(stats.stale_epoch_rejections, 1u);
  EXPECT_EQ(stats.connections_active, 1u);
  // Nothing a refused request carried reached the disk.
  AlignedBuffer got(4096);
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { file->Read(0, 4096, got.data(), cb); }).ok());
  EXPECT_TRUE(AllBytes(got, 0x5a));
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { file->Read(1 << 20, 4096, got.data(), cb); }).ok());
  EXPECT_EQ(got.data()[0], 0x77);
  EXPECT_EQ(got.data()[511], 0x77);
  EXPECT_EQ(got.data()[512], 0);
}

TEST(DiskServer, BadArgumentsAreRefused) {
  auto loop = RealLoop::Create();
  EXPECT_EQ(DiskServer::Create(loop.get(), "127.0.0.1:0", {{1, nullptr}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  DiskServerOptions odd;
  odd.request_bytes_max = 1000;
  EXPECT_EQ(DiskServer::Create(loop.get(), "127.0.0.1:0", {}, odd).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DiskServer::Create(loop.get(), "not an address:x", {}).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(RemoteBlockDevice, OpenErrors) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_open_errors", 16ull << 20);
  auto server = Serve(loop.get(), {{1, file.get()}});
  const uint16_t port = server->port();
  EXPECT_EQ(OpenRemote(loop.get(), port, 2, 1).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(OpenRemote(loop.get(), port, 1, 4).ok());
  auto stale = OpenRemote(loop.get(), port, 1, 3);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  RemoteDeviceOptions bad;
  bad.request_bytes_max = 1000;
  EXPECT_EQ(OpenRemote(loop.get(), port, 1, 4, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  server.reset();
  // Nobody listens there any more.
  EXPECT_EQ(OpenRemote(loop.get(), port, 1, 4).status().code(), absl::StatusCode::kUnavailable);
}

// ---------------------------------------------------------------------- fencing

TEST(Fencing, NewOwnerFencesOffTheOldOne) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_fence", 16ull << 20);
  auto server = Serve(loop.get(), {{1, file.get()}});
  auto a = OpenRemote(loop.get(), server->port(), 1, 1);
  ASSERT_TRUE(a.ok()) << a.status();
  AlignedBuffer from_a = Filled(65536, 'A');
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*a)->Write(0, 65536, from_a.data(), cb); }).ok());

  auto b = OpenRemote(loop.get(), server->port(), 1, 2);
  ASSERT_TRUE(b.ok()) << b.status();
  AlignedBuffer from_b = Filled(65536, 'B');
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*b)->Write(0, 65536, from_b.data(), cb); }).ok());

  // The deposed owner can change nothing, not even make its old writes durable.
  AlignedBuffer late = Filled(65536, 'a');
  absl::Status st = Await(loop.get(), [&](auto cb) { (*a)->Write(0, 65536, late.data(), cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(st.message(), "stale epoch 1 < 2 for disk 1");
  st = Await(loop.get(), [&](auto cb) { (*a)->Flush(cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  st = Await(loop.get(), [&](auto cb) { (*a)->Discard(0, 65536, cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  AlignedBuffer got(65536);
  st = Await(loop.get(), [&](auto cb) { (*a)->Read(0, 65536, got.data(), cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;

  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*b)->Read(0, 65536, got.data(), cb); }).ok());
  EXPECT_TRUE(AllBytes(got, 'B'));
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { file->Read(0, 65536, got.data(), cb); }).ok());
  EXPECT_TRUE(AllBytes(got, 'B'));
  EXPECT_EQ(*server->FenceEpoch(1), 2u);
  EXPECT_EQ(server->Stats().stale_epoch_rejections, 4u);
  a->reset();
  b->reset();
}

// The owner's own disks, used in-process, sit behind the same fence.
TEST(Fencing, LocalDeviceIsFencedLikeARemoteOne) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "local_fence", 16ull << 20);
  auto server = Serve(loop.get(), {{1, file.get()}});
  auto local = server->OpenLocal(1, 1);
  ASSERT_TRUE(local.ok()) << local.status();
  AlignedBuffer a = Filled(65536, 'A');
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*local)->Write(0, 65536, a.data(), cb); }).ok());
  // Local I/O is not bound by the message size limit (the pool reads its whole
  // metadata region at open).
  AlignedBuffer big(12u << 20);
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*local)->Read(0, big.size(), big.data(), cb); }).ok());
  auto remote = OpenRemote(loop.get(), server->port(), 1, 2);
  ASSERT_TRUE(remote.ok()) << remote.status();
  AlignedBuffer late = Filled(65536, 'a');
  absl::Status st = Await(loop.get(), [&](auto cb) { (*local)->Write(0, 65536, late.data(), cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(server->OpenLocal(1, 1).status().code(), absl::StatusCode::kFailedPrecondition);
  AlignedBuffer got(65536);
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*remote)->Read(0, 65536, got.data(), cb); }).ok());
  EXPECT_TRUE(AllBytes(got, 'A'));
  // A closed server fails the local device's calls instead of hanging them.
  remote->reset();
  server.reset();
  st = Await(loop.get(), [&](auto cb) { (*local)->Read(0, 65536, got.data(), cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  local->reset();
}

// Requests of the old owner already running when the new one arrives finish first: the
// new owner's open completes only after them, so none of them can land after it.
TEST(Fencing, NewEpochWaitsForOlderRequestsInFlight) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_fence_drain", 16ull << 20);
  GatedDevice gate(file.get());
  auto server = Serve(loop.get(), {{1, &gate}});
  auto a = OpenRemote(loop.get(), server->port(), 1, 1);
  ASSERT_TRUE(a.ok());

  gate.Close();
  std::vector<std::string> events;
  AlignedBuffer from_a = Filled(4096, 'A');
  (*a)->Write(0, 4096, from_a.data(), [&](absl::Status st) {
    EXPECT_TRUE(st.ok()) << st;
    events.push_back("a write");
  });
  ASSERT_TRUE(loop->RunUntil([&] { return gate.held() == 1; }, 5 * kSecondNs));

  std::optional<absl::StatusOr<std::unique_ptr<BlockDevice>>> b;
  OpenRemoteDevice(loop.get(), Address(server->port()), 1, 2, [&](auto r) {
    events.push_back("b open");
    b = std::move(r);
  });
  loop->RunUntil([] { return false; }, 300'000'000);
  EXPECT_TRUE(events.empty());  // B waits for A's write; A's write waits for the disk
  // A request of the old epoch arriving now is refused at once, not queued.
  absl::Status st = Await(loop.get(), [&](auto cb) { (*a)->Flush(cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;

  gate.Open();
  ASSERT_TRUE(loop->RunUntil([&] { return b.has_value() && events.size() == 2; }, 5 * kSecondNs));
  EXPECT_EQ(events, (std::vector<std::string>{"a write", "b open"}));
  ASSERT_TRUE(b->ok()) << b->status();
  a->reset();
  b->value().reset();
}

// A restarted server forgets its fences; epoch_min puts the current epoch back.
TEST(Fencing, RestartedServerTakesTheFloorEpoch) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_fence_floor", 16ull << 20);
  DiskServerOptions options;
  options.epoch_min = 7;
  auto server = DiskServer::Create(loop.get(), "127.0.0.1:0", {{1, file.get()}}, options);
  ASSERT_TRUE(server.ok());
  EXPECT_EQ(OpenRemote(loop.get(), (*server)->port(), 1, 6).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(OpenRemote(loop.get(), (*server)->port(), 1, 7).ok());
}

// ------------------------------------------------------------------- limits

TEST(DiskServer, DataInFlightIsBounded) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_budget", 16ull << 20);
  GatedDevice gate(file.get());
  DiskServerOptions options;
  options.request_bytes_max = 1 << 20;
  options.in_flight_bytes_max = 1 << 20;
  auto server = DiskServer::Create(loop.get(), "127.0.0.1:0", {{1, &gate}}, options);
  ASSERT_TRUE(server.ok());
  RemoteDeviceOptions client;
  client.request_bytes_max = 1 << 20;
  auto dev = OpenRemote(loop.get(), (*server)->port(), 1, 1, client);
  ASSERT_TRUE(dev.ok());
  gate.Close();
  AlignedBuffer data = Filled(3 << 20, 'w');
  int done = 0;
  for (int i = 0; i < 3; ++i) {
    (*dev)->Write(static_cast<uint64_t>(i) << 20, 1 << 20, data.data() + (i << 20),
                  [&](absl::Status st) {
                    EXPECT_TRUE(st.ok()) << st;
                    ++done;
                  });
  }
  loop->RunUntil([] { return false; }, 200'000'000);
  EXPECT_EQ(gate.held(), 1u);  // one 1 MiB write at the disk, two waiting at the server
  EXPECT_EQ((*server)->Stats().requests_waiting_max, 2u);
  gate.Open();
  ASSERT_TRUE(loop->RunUntil([&] { return done == 3; }, 5 * kSecondNs));
  AlignedBuffer got(3 << 20);
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { file->Read(0, 3 << 20, got.data(), cb); }).ok());
  EXPECT_TRUE(AllBytes(got, 'w'));
  dev->reset();
}

TEST(DiskServer, ConnectionsOverTheLimitAreClosed) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_conn_limit", 16ull << 20);
  DiskServerOptions options;
  options.connections_max = 1;
  auto server = DiskServer::Create(loop.get(), "127.0.0.1:0", {{1, file.get()}}, options);
  ASSERT_TRUE(server.ok());
  auto first = OpenRemote(loop.get(), (*server)->port(), 1, 1);
  ASSERT_TRUE(first.ok());
  auto second = OpenRemote(loop.get(), (*server)->port(), 1, 1);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_EQ((*server)->Stats().connections_refused, 1u);
  first->reset();
  // The slot is free again once the first client has gone.
  ASSERT_TRUE(
      loop->RunUntil([&] { return (*server)->Stats().connections_active == 0; }, 5 * kSecondNs));
  EXPECT_TRUE(OpenRemote(loop.get(), (*server)->port(), 1, 1).ok());
}

// ------------------------------------------------------------------ server loss

TEST(ServerLoss, CallsFailUnavailableAndANewServerIsPickedUp) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_loss", 16ull << 20);
  GatedDevice gate(file.get());
  auto server = Serve(loop.get(), {{1, &gate}});
  const uint16_t port = server->port();
  RemoteDeviceOptions options;
  options.call_timeout_ns = 120 * kSecondNs;  // loss must be noticed without the timeout
  options.reconnect_backoff_min_ns = 20'000'000;
  options.reconnect_backoff_max_ns = 200'000'000;
  auto dev = OpenRemote(loop.get(), port, 1, 1, options);
  ASSERT_TRUE(dev.ok());
  AlignedBuffer x = Filled(4096, 'x');
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*dev)->Write(0, 4096, x.data(), cb); }).ok());

  // Four calls running at the server when it goes away.
  gate.Close();
  std::vector<absl::Status> results;
  auto record = [&](absl::Status st) { results.push_back(st); };
  AlignedBuffer r1(4096), r2(4096), y = Filled(4096, 'y');
  std::memset(r1.data(), 0xee, 4096);
  (*dev)->Read(0, 4096, r1.data(), record);
  (*dev)->Read(0, 4096, r2.data(), record);
  (*dev)->Write(8192, 4096, y.data(), record);
  (*dev)->Flush(record);
  ASSERT_TRUE(loop->RunUntil([&] { return gate.held() == 4; }, 5 * kSecondNs));
  const int64_t start = loop->NowNanos();
  server.reset();
  ASSERT_TRUE(loop->RunUntil([&] { return results.size() == 4; }, 10 * kSecondNs));
  EXPECT_LT(loop->NowNanos() - start, 2 * kSecondNs);
  for (const absl::Status& st : results) {
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    EXPECT_TRUE(IsRemoteTransportError(st)) << st;
  }
  EXPECT_TRUE(AllBytes(r1, 0xee));  // a failed read leaves the caller's buffer alone
  // The device finishes what it held for the gone server (into buffers the server kept).
  gate.Open();
  loop->RunUntil([] { return false; }, 50'000'000);

  // Down: later calls fail fast.
  absl::Status down = Await(loop.get(), [&](auto cb) { (*dev)->Read(0, 4096, r1.data(), cb); });
  EXPECT_EQ(down.code(), absl::StatusCode::kUnavailable) << down;
  EXPECT_TRUE(IsRemoteTransportError(down)) << down;

  // Back on the same port: a call succeeds once the backoff lets it reconnect.
  server = Serve(loop.get(), {{1, &gate}}, Address(port));
  absl::Status st;
  const int64_t back = loop->NowNanos();
  for (int attempt = 0; attempt < 100; ++attempt) {
    st = Await(loop.get(), [&](auto cb) { (*dev)->Read(0, 4096, r1.data(), cb); });
    if (st.ok()) break;
    loop->RunUntil([] { return false; }, 10'000'000);
  }
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_LT(loop->NowNanos() - back, 2 * kSecondNs);
  EXPECT_TRUE(AllBytes(r1, 'x'));
  dev->reset();
}

TEST(ServerLoss, UnansweredCallTimesOut) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_timeout", 16ull << 20);
  GatedDevice gate(file.get());
  auto server = Serve(loop.get(), {{1, &gate}});
  RemoteDeviceOptions options;
  options.call_timeout_ns = 200'000'000;
  auto dev = OpenRemote(loop.get(), server->port(), 1, 1, options);
  ASSERT_TRUE(dev.ok());
  gate.Close();
  AlignedBuffer buf(4096);
  const int64_t start = loop->NowNanos();
  absl::Status st = Await(loop.get(), [&](auto cb) { (*dev)->Read(0, 4096, buf.data(), cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find("no reply within 200 ms"), std::string::npos) << st;
  EXPECT_TRUE(IsRemoteTransportError(st)) << st;
  EXPECT_GE(loop->NowNanos() - start, 200'000'000);
  gate.Open();
  // The dropped connection had answered before, so the next call reconnects at once.
  st = Await(loop.get(), [&](auto cb) { (*dev)->Read(0, 4096, buf.data(), cb); });
  EXPECT_TRUE(st.ok()) << st;
  dev->reset();
}

// A disk error the server reports (EIO is UNAVAILABLE) is not a transport error: the
// owner counts it against the disk instead of taking the disk's node for gone.
TEST(RemoteBlockDevice, ADiskErrorIsNotATransportError) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_disk_error", 16ull << 20);
  GatedDevice gate(file.get());
  auto server = Serve(loop.get(), {{1, &gate}});
  auto dev = OpenRemote(loop.get(), server->port(), 1, 1);
  ASSERT_TRUE(dev.ok());
  AlignedBuffer buf(4096);
  gate.FailReads(true);
  absl::Status st = Await(loop.get(), [&](auto cb) { (*dev)->Read(0, 4096, buf.data(), cb); });
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find("EIO"), std::string::npos) << st;
  EXPECT_FALSE(IsRemoteTransportError(st)) << st;
  gate.FailReads(false);  // the connection is intact: the next call just works
  st = Await(loop.get(), [&](auto cb) { (*dev)->Read(0, 4096, buf.data(), cb); });
  EXPECT_TRUE(st.ok()) << st;
  dev->reset();
}

// Destroying the device with calls in flight: no callback, no write into the buffer.
TEST(RemoteBlockDevice, DestroyedDeviceDropsItsCalls) {
  auto loop = RealLoop::Create();
  auto file = MakeFile(loop.get(), "remote_destroy", 16ull << 20);
  AlignedBuffer data = Filled(4096, 'd');
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { file->Write(0, 4096, data.data(), cb); }).ok());
  GatedDevice gate(file.get());
  auto server = Serve(loop.get(), {{1, &gate}});
  auto dev = OpenRemote(loop.get(), server->port(), 1, 1);
  ASSERT_TRUE(dev.ok());
  gate.Close();
  AlignedBuffer buf = Filled(4096, 0xee);
  bool called = false;
  (*dev)->Read(0, 4096, buf.data(), [&](absl::Status) { called = true; });
  ASSERT_TRUE(loop->RunUntil([&] { return gate.held() == 1; }, 5 * kSecondNs));
  dev->reset();
  gate.Open();
  loop->RunUntil([] { return false; }, 200'000'000);
  EXPECT_FALSE(called);
  EXPECT_TRUE(AllBytes(buf, 0xee));
}

// ------------------------------------------------------------------------ pool

template <typename T>
absl::StatusOr<T> Wait(Loop* loop, std::function<void(Pool::Done<T>)> op) {
  std::optional<absl::StatusOr<T>> result;
  op([&](absl::StatusOr<T> r) { result = std::move(r); });
  loop->RunUntil([&] { return result.has_value(); }, 600 * kSecondNs);
  if (!result) return absl::DeadlineExceededError("no completion");
  return std::move(*result);
}

absl::Status WaitStatus(Loop* loop, std::function<void(Pool::StatusDone)> op) {
  std::optional<absl::Status> result;
  op([&](absl::Status st) { result = st; });
  loop->RunUntil([&] { return result.has_value(); }, 600 * kSecondNs);
  return result ? *result : absl::DeadlineExceededError("no completion");
}

std::string Pattern(char tag, size_t n) {
  std::string s(n, 0);
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(tag + (i / 512) % 7);
  return s;
}

TEST(RemotePool, PoolOverRemoteDisksSurvivesAnOwnerChange) {
  auto loop = RealLoop::Create();
  SeededRandom random(5);
  constexpr int kNodes = 3;
  std::vector<std::unique_ptr<BlockDevice>> files;
  std::vector<std::unique_ptr<DiskServer>> servers;
  for (int n = 0; n < kNodes; ++n) {
    files.push_back(MakeFile(loop.get(), "remote_pool" + std::to_string(n), 128ull << 20));
    servers.push_back(Serve(loop.get(), {{100u + n, files.back().get()}}));
  }
  auto open_all = [&](uint64_t epoch, std::vector<std::unique_ptr<BlockDevice>>* devs,
                      std::vector<DiskSpec>* specs) {
    for (int n = 0; n < kNodes; ++n) {
      auto d = OpenRemote(loop.get(), servers[n]->port(), 100u + n, epoch);
      SCRIBE_CHECK(d.ok());
      devs->push_back(std::move(d).value());
      specs->push_back(
          DiskSpec{NodeId{static_cast<uint64_t>(n + 1)}, Tier::kHdd, devs->back().get()});
    }
  };
  PoolOptions options;
  options.metadata_bytes = 16ull << 20;  // over one request: recovery's region read is split

  std::vector<std::unique_ptr<BlockDevice>> devs1;
  std::vector<DiskSpec> specs1;
  open_all(1, &devs1, &specs1);
  auto pool = Wait<std::unique_ptr<Pool>>(
      loop.get(), [&](auto done) { Pool::Create(loop.get(), &random, options, specs1, done); });
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto v = Wait<VsdId>(loop.get(), [&](auto done) {
    (*pool)->CreateVsd(VsdOptions{"vm-disk", 32 << 20, 2}, done);
  });
  ASSERT_TRUE(v.ok()) << v.status();
  const std::string first = Pattern('a', 3 << 20);
  ASSERT_TRUE(WaitStatus(loop.get(), [&](auto d) {
                (*pool)->Write(*v, 512, first.size(), first.data(), false, d);
              }).ok());
  auto snap =
      Wait<SnapshotId>(loop.get(), [&](auto done) { (*pool)->CreateSnapshot(*v, "s1", done); });
  ASSERT_TRUE(snap.ok()) << snap.status();
  const std::string second = Pattern('k', 1 << 20);
  ASSERT_TRUE(WaitStatus(loop.get(), [&](auto d) {
                (*pool)->Write(*v, 1 << 20, second.size(), second.data(), false, d);
              }).ok());
  ASSERT_TRUE(WaitStatus(loop.get(), [&](auto d) { (*pool)->Flush(d); }).ok());

  std::string live = first;
  live.replace((1 << 20) - 512, second.size(), second);
  auto check = [&](Pool* p) {
    std::string got(live.size(), 0);
    ASSERT_TRUE(
        WaitStatus(loop.get(), [&](auto d) { p->Read(*v, 512, got.size(), got.data(), d); }).ok());
    EXPECT_EQ(got, live);
    std::string old(first.size(), 0);
    ASSERT_TRUE(WaitStatus(loop.get(), [&](auto d) {
                  p->ReadSnapshot(*snap, 512, old.size(), old.data(), d);
                }).ok());
    EXPECT_EQ(old, first);
    auto fsck = Wait<FsckReport>(loop.get(), [&](auto done) { p->Fsck(done); });
    ASSERT_TRUE(fsck.ok()) << fsck.status();
    EXPECT_TRUE(fsck->ok());
  };
  check(pool->get());

  // A new owner (epoch 2) opens the pool over fresh connections while the old owner's
  // instance is still alive (a partitioned old owner).
  std::vector<std::unique_ptr<BlockDevice>> devs2;
  std::vector<DiskSpec> specs2;
  open_all(2, &devs2, &specs2);
  auto reopened = Wait<std::unique_ptr<Pool>>(
      loop.get(), [&](auto done) { Pool::Open(loop.get(), &random, options, specs2, done); });
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  check(reopened->get());
  EXPECT_EQ((*reopened)->ListSnapshots(*v).size(), 1u);

  // The old owner can no longer change anything, and stops itself once refused.
  {
    std::string junk_data(4096, 'J');
    absl::Status st = WaitStatus(loop.get(), [&](auto d) {
      (*pool)->Write(*v, 0, junk_data.size(), junk_data.data(), true, d);
    });
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE((*pool)->Stats().fenced);
    std::string buf(4096, 0);
    st = WaitStatus(loop.get(), [&](auto d) { (*pool)->Read(*v, 0, buf.size(), buf.data(), d); });
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    check(reopened->get());  // the new owner's data is untouched
  }
  pool->reset();

  // The old owner's devices are fenced off every disk.
  AlignedBuffer junk = Filled(4096, 0xff);
  for (auto& d : devs1) {
    absl::Status st = Await(loop.get(), [&](auto cb) { d->Write(0, 4096, junk.data(), cb); });
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  }
  reopened->reset();
  devs1.clear();
  devs2.clear();
}

// ------------------------------------------------------------------ throughput

// Counts reads in flight at the device over time (time-weighted mean).
class CountingDevice : public GatedDevice {
 public:
  CountingDevice(Loop* loop, BlockDevice* inner) : GatedDevice(inner), loop_(loop) {}
  void Read(uint64_t off, size_t len, void* buf, Callback done) override {
    Step(+1);
    GatedDevice::Read(off, len, buf, [this, done](absl::Status st) {
      Step(-1);
      done(st);
    });
  }
  void Reset() {
    area_ = 0;
    since_ = last_ = loop_->NowNanos();
  }
  double MeanInFlight() const {
    return last_ > since_ ? static_cast<double>(area_) / (last_ - since_) : 0;
  }

 private:
  void Step(int delta) {
    const int64_t now = loop_->NowNanos();
    area_ += static_cast<double>(in_flight_) * (now - last_);
    last_ = now;
    in_flight_ += delta;
  }
  Loop* loop_;
  int in_flight_ = 0;
  double area_ = 0;
  int64_t since_ = 0;
  int64_t last_ = 0;
};

struct Rate {
  double iops = 0;
  double latency_us = 0;  // mean, per request
  double cpu_us = 0;      // process CPU (user + system) per request, both ends together
};

int64_t CpuMicros() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1'000'000ll + ru.ru_utime.tv_usec +
         ru.ru_stime.tv_usec;
}

// Random 4 KiB reads within the first `span_bytes`, `depth` at a time, for `duration_ns`.
Rate RandomReads(RealLoop* loop, BlockDevice* dev, uint64_t span_bytes, int depth,
                 int64_t duration_ns) {
  SeededRandom random(17);
  std::vector<AlignedBuffer> bufs;
  for (int i = 0; i < depth; ++i) bufs.emplace_back(4096);
  const int64_t cpu_start = CpuMicros();
  const int64_t start = loop->NowNanos();
  const int64_t end = start + duration_ns;
  uint64_t completed = 0;
  int outstanding = 0;
  absl::Status error;
  std::function<void(int)> issue = [&](int slot) {
    ++outstanding;
    const uint64_t offset = random.Uniform(span_bytes / 4096) * 4096;
    dev->Read(offset, 4096, bufs[slot].data(), [&, slot](absl::Status st) {
      --outstanding;
      ++completed;
      if (!st.ok() && error.ok()) error = st;
      if (error.ok() && loop->NowNanos() < end) issue(slot);
    });
  };
  for (int i = 0; i < depth; ++i) issue(i);
  SCRIBE_CHECK(loop->RunUntil([&] { return outstanding == 0; }, duration_ns + 30 * kSecondNs));
  SCRIBE_CHECK(error.ok());
  const double seconds = static_cast<double>(loop->NowNanos() - start) / kSecondNs;
  Rate r;
  r.iops = completed / seconds;
  r.latency_us = depth * 1e6 / r.iops;
  r.cpu_us = static_cast<double>(CpuMicros() - cpu_start) / completed;
  return r;
}

// A DiskServer on a thread and loop of its own, as it would be on another node.
class ServerThread {
 public:
  explicit ServerThread(std::string path) : thread_([this, path] { Run(path); }) {
    while (port_.load() == 0) usleep(1000);
  }
  ~ServerThread() {
    stop_ = true;
    thread_.join();
  }
  uint16_t port() const { return port_.load(); }

 private:
  void Run(const std::string& path) {
    auto loop = RealLoop::Create();
    auto dev = OpenAioDevice(loop.get(), path, AioDeviceOptions{});
    SCRIBE_CHECK(dev.ok());
    auto server = Serve(loop.get(), {{1, dev->get()}});
    port_ = server->port();
    while (!stop_.load()) loop->RunUntil([&] { return stop_.load(); }, 20'000'000);
    server.reset();
    dev->reset();
  }
  std::atomic<bool> stop_{false};
  std::atomic<uint16_t> port_{0};
  std::thread thread_;
};

TEST(RemoteThroughput, RandomReads4KiB) {
  auto loop = RealLoop::Create();
  constexpr uint64_t kSpan = 256ull << 20;
  const std::string path = TempPath("remote_throughput");
  unlink(path.c_str());
  AioDeviceOptions create;
  create.create_size_bytes = kSpan;
  auto file = OpenAioDevice(loop.get(), path, create);
  ASSERT_TRUE(file.ok());
  // Real data everywhere, so every run reads allocated blocks, not holes.
  AlignedBuffer fill = Filled(8 << 20, 0x3c);
  for (uint64_t at = 0; at < kSpan; at += fill.size()) {
    ASSERT_TRUE(
        Await(loop.get(), [&](auto cb) { (*file)->Write(at, fill.size(), fill.data(), cb); }).ok());
  }
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*file)->Flush(cb); }).ok());
  CountingDevice counted(loop.get(), file->get());
  auto server = Serve(loop.get(), {{1, &counted}});
  auto same_loop = OpenRemote(loop.get(), server->port(), 1, 1);
  ASSERT_TRUE(same_loop.ok());
  ServerThread other(path);
  auto other_thread = OpenRemote(loop.get(), other.port(), 1, 1);
  ASSERT_TRUE(other_thread.ok());

  struct Row {
    const char* name;
    BlockDevice* dev;
    Rate qd32, qd1;
    double depth = 0;
  };
  Row rows[] = {{"local aio", &counted},
                {"remote, server on the same loop", same_loop->get()},
                {"remote, server on its own thread", other_thread->get()}};
  for (Row& row : rows) {
    counted.Reset();
    row.qd32 = RandomReads(loop.get(), row.dev, kSpan, 32, 3 * kSecondNs);
    row.depth = counted.MeanInFlight();
    row.qd1 = RandomReads(loop.get(), row.dev, kSpan, 1, kSecondNs);
  }
  std::printf("4 KiB random reads over %d MiB of one file (CPU: whole process, per request)\n",
              static_cast<int>(kSpan >> 20));
  for (const Row& r : rows) {
    std::printf("  %-34s QD32 %6.0f IOPS %5.1f MiB/s %6.0f us %5.1f us CPU", r.name, r.qd32.iops,
                r.qd32.iops * 4096 / (1 << 20), r.qd32.latency_us, r.qd32.cpu_us);
    if (r.dev != other_thread->get()) std::printf(" (disk depth %4.1f)", r.depth);
    std::printf(" | QD1 %5.0f IOPS %5.0f us\n", r.qd1.iops, r.qd1.latency_us);
  }
  RecordProperty("local_qd32_iops", static_cast<int>(rows[0].qd32.iops));
  RecordProperty("remote_qd32_iops", static_cast<int>(rows[1].qd32.iops));
  RecordProperty("remote_thread_qd32_iops", static_cast<int>(rows[2].qd32.iops));
  same_loop->reset();
  other_thread->reset();
  unlink(path.c_str());
}

}  // namespace
}  // namespace scribe
