#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "libscribe/env/conformance.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {
namespace {

using conformance::Await;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name + "." + std::to_string(getpid());
}

// Everything one implementation needs, kept alive together.
struct Env {
  std::unique_ptr<Loop> loop;
  std::unique_ptr<Random> random;
  std::unique_ptr<BlockDevice> dev;
};

struct DeviceFactory {
  const char* name;
  std::function<Env()> make;
};

Env MakeAio() {
  Env env;
  auto loop = RealLoop::Create();
  const std::string path = TempPath("aio_conformance");
  unlink(path.c_str());
  AioDeviceOptions options;
  options.create_size_bytes = 64ull << 20;
  auto dev = OpenAioDevice(loop.get(), path, options);
  SCRIBE_CHECK(dev.ok());
  unlink(path.c_str());  // the open descriptor keeps it alive
  env.dev = std::move(dev).value();
  env.loop = std::move(loop);
  env.random = std::make_unique<SeededRandom>(7);
  return env;
}

Env MakeSim() {
  Env env;
  auto loop = std::make_unique<SimLoop>();
  env.random = std::make_unique<SeededRandom>(7);
  env.dev = std::make_unique<SimDisk>(loop.get(), env.random.get(), SimDiskOptions{});
  env.loop = std::move(loop);
  return env;
}

class BlockDeviceConformance : public testing::TestWithParam<DeviceFactory> {
 protected:
  void TearDown() override {
    env_.dev.reset();  // before the loop it reports to
  }
  Env env_ = GetParam().make();
};

TEST_P(BlockDeviceConformance, ReadBackExact) {
  EXPECT_TRUE(conformance::CheckReadBackExact(env_.loop.get(), env_.dev.get(), env_.random.get()));
}
TEST_P(BlockDeviceConformance, RejectsBadRequests) {
  EXPECT_TRUE(conformance::CheckRejectsBadRequests(env_.loop.get(), env_.dev.get()));
}
TEST_P(BlockDeviceConformance, ConcurrentWrites) {
  EXPECT_TRUE(
      conformance::CheckConcurrentWrites(env_.loop.get(), env_.dev.get(), env_.random.get()));
}
TEST_P(BlockDeviceConformance, AdjacentWrites) {
  EXPECT_TRUE(
      conformance::CheckAdjacentWrites(env_.loop.get(), env_.dev.get(), env_.random.get()));
}
TEST_P(BlockDeviceConformance, WriteDurable) {
  EXPECT_TRUE(conformance::CheckWriteDurable(env_.loop.get(), env_.dev.get(), env_.random.get()));
}
TEST_P(BlockDeviceConformance, FlushAndDiscard) {
  EXPECT_TRUE(
      conformance::CheckFlushAndDiscard(env_.loop.get(), env_.dev.get(), env_.random.get()));
}

INSTANTIATE_TEST_SUITE_P(All, BlockDeviceConformance,
                         testing::Values(DeviceFactory{"aio_file", MakeAio},
                                         DeviceFactory{"sim", MakeSim}),
                         [](const auto& info) { return std::string(info.param.name); });

// Broken devices: the conformance checks must reject them.
class BitFlipDevice : public BlockDevice {
 public:
  explicit BitFlipDevice(BlockDevice* inner) : inner_(inner) {}
  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  void Read(uint64_t off, size_t len, void* buf, Callback done) override {
    inner_->Read(off, len, buf, [buf, len, done](absl::Status st) {
      if (st.ok() && len > 4096) static_cast<uint8_t*>(buf)[4096] ^= 1;
      done(st);
    });
  }
  void Write(uint64_t off, size_t len, const void* buf, Callback done) override {
    inner_->Write(off, len, buf, std::move(done));
  }
  void Flush(Callback done) override { inner_->Flush(std::move(done)); }
  void Discard(uint64_t off, size_t len, Callback done) override {
    inner_->Discard(off, len, std::move(done));
  }

 private:
  BlockDevice* inner_;
};

class NoBoundsCheckDevice : public BitFlipDevice {
 public:
  using BitFlipDevice::BitFlipDevice;
  void Read(uint64_t off, size_t len, void* buf, Callback done) override {
    if (off >= size_bytes()) return done(absl::OkStatus());
    BitFlipDevice::Read(off, len, buf, std::move(done));
  }
};

TEST(BlockDeviceConformanceCanFail, DetectsCorruptReads) {
  Env env = MakeSim();
  BitFlipDevice broken(env.dev.get());
  EXPECT_FALSE(conformance::CheckReadBackExact(env.loop.get(), &broken, env.random.get()));
}

TEST(BlockDeviceConformanceCanFail, DetectsMissingBoundsChecks) {
  Env env = MakeSim();
  NoBoundsCheckDevice broken(env.dev.get());
  EXPECT_FALSE(conformance::CheckRejectsBadRequests(env.loop.get(), &broken));
}

// The sim disk's volatile cache: unsynced writes are really lost, flushed ones kept.
TEST(SimDisk, PowerCutDropsUnsyncedWritesAndKeepsFlushedOnes) {
  Env env = MakeSim();
  auto* disk = static_cast<SimDisk*>(env.dev.get());
  AlignedBuffer a(8192), b(8192), got(8192);
  std::memset(a.data(), 'a', 8192);
  std::memset(b.data(), 'b', 8192);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Write(0, 8192, a.data(), cb); }).ok());
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Flush(cb); }).ok());
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Write(0, 8192, b.data(), cb); }).ok());
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Read(0, 8192, got.data(), cb); }).ok());
  EXPECT_EQ(got.data()[0], 'b');  // visible before the cut
  EXPECT_EQ(disk->unsynced_sectors(), 16u);
  disk->PowerCut(PowerLossMode::kDropAll);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Read(0, 8192, got.data(), cb); }).ok());
  for (int i = 0; i < 8192; ++i) ASSERT_EQ(got.data()[i], 'a') << i;
}

TEST(SimDisk, DurableWriteSurvivesPowerCut) {
  Env env = MakeSim();
  auto* disk = static_cast<SimDisk*>(env.dev.get());
  AlignedBuffer a(4096), got(4096);
  std::memset(a.data(), 'd', 4096);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->WriteDurable(0, 4096, a.data(), cb); }).ok());
  disk->PowerCut(PowerLossMode::kDropAll);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Read(0, 4096, got.data(), cb); }).ok());
  EXPECT_EQ(got.data()[0], 'd');
}

TEST(SimDisk, TornPowerCutLeavesEachSectorOldOrNew) {
  Env env = MakeSim();
  auto* disk = static_cast<SimDisk*>(env.dev.get());
  constexpr size_t kLen = 256 * 512;
  AlignedBuffer a(kLen), b(kLen), got(kLen);
  std::memset(a.data(), 'a', kLen);
  std::memset(b.data(), 'b', kLen);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Write(0, kLen, a.data(), cb); }).ok());
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Flush(cb); }).ok());
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Write(0, kLen, b.data(), cb); }).ok());
  disk->PowerCut(PowerLossMode::kTear);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Read(0, kLen, got.data(), cb); }).ok());
  int old_sectors = 0, new_sectors = 0;
  for (size_t s = 0; s < kLen / 512; ++s) {
    const uint8_t c = got.data()[s * 512];
    for (int i = 0; i < 512; ++i) ASSERT_EQ(got.data()[s * 512 + i], c) << "torn sector " << s;
    (c == 'a' ? old_sectors : new_sectors)++;
  }
  EXPECT_GT(old_sectors, 0);
  EXPECT_GT(new_sectors, 0);
}

TEST(SimDisk, PowerCutVoidsOperationsInFlight) {
  Env env = MakeSim();
  auto* disk = static_cast<SimDisk*>(env.dev.get());
  AlignedBuffer b(4096), got(4096);
  std::memset(b.data(), 'b', 4096);
  bool completed = false;
  disk->Write(0, 4096, b.data(), [&](absl::Status) { completed = true; });
  disk->PowerCut(PowerLossMode::kKeepAll);
  env.loop->RunUntil([] { return false; }, 1'000'000'000);
  EXPECT_FALSE(completed);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Read(0, 4096, got.data(), cb); }).ok());
  EXPECT_EQ(got.data()[0], 0);
}

TEST(SimDisk, InjectedErrorsFailedDiskAndCorruption) {
  Env env = MakeSim();
  auto* disk = static_cast<SimDisk*>(env.dev.get());
  AlignedBuffer a(4096), got(4096);
  std::memset(a.data(), 'a', 4096);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Write(0, 4096, a.data(), cb); }).ok());
  disk->InjectIoErrors(0, 512, 1);
  EXPECT_EQ(Await(env.loop.get(), [&](auto cb) { disk->Read(0, 4096, got.data(), cb); }).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Read(0, 4096, got.data(), cb); }).ok());
  disk->Corrupt(512, 512);
  ASSERT_TRUE(Await(env.loop.get(), [&](auto cb) { disk->Read(0, 4096, got.data(), cb); }).ok());
  int diffs = 0;
  for (int i = 0; i < 4096; ++i) diffs += got.data()[i] != 'a';
  EXPECT_EQ(diffs, 1);
  disk->SetFailed(true);
  EXPECT_EQ(Await(env.loop.get(), [&](auto cb) { disk->Read(0, 4096, got.data(), cb); }).code(),
            absl::StatusCode::kUnavailable);
}

// The real device returns the exact bytes written through O_DIRECT, after the file is
// closed, reopened and read by a fresh device.
TEST(AioDevice, BytesSurviveReopen) {
  auto loop = RealLoop::Create();
  const std::string path = TempPath("aio_reopen");
  unlink(path.c_str());
  AioDeviceOptions options;
  options.create_size_bytes = 16ull << 20;
  SeededRandom random(99);
  AlignedBuffer data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data.data()[i] = static_cast<uint8_t>(random.Next64());
  {
    auto dev = OpenAioDevice(loop.get(), path, options);
    ASSERT_TRUE(dev.ok()) << dev.status();
    ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*dev)->Write(3 << 20, 1 << 20, data.data(), cb); }).ok());
    ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*dev)->Flush(cb); }).ok());
  }
  auto dev = OpenAioDevice(loop.get(), path, AioDeviceOptions{});
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ((*dev)->size_bytes(), 16ull << 20);
  AlignedBuffer got(1 << 20);
  ASSERT_TRUE(Await(loop.get(), [&](auto cb) { (*dev)->Read(3 << 20, 1 << 20, got.data(), cb); }).ok());
  EXPECT_EQ(std::memcmp(got.data(), data.data(), 1 << 20), 0);
  unlink(path.c_str());
}

TEST(AioDevice, MissingFileIsAClearError) {
  auto loop = RealLoop::Create();
  auto dev = OpenAioDevice(loop.get(), "/nonexistent/dir/disk.img", AioDeviceOptions{});
  ASSERT_FALSE(dev.ok());
  EXPECT_NE(dev.status().message().find("/nonexistent/dir/disk.img"), std::string::npos);
}

}  // namespace
}  // namespace scribe
