// NbdServer end to end: a Pool on three real files (libaio, O_DIRECT) and the server on
// a Unix socket in this process, driven by RealLoop::RunUntil while real NBD clients
// (qemu-img, qemu-io, nbdinfo, fio's nbd engine) run as child processes, and while a
// raw blocking client on a helper thread checks protocol details byte by byte. The
// helper thread never touches the loop, the pool or the server.
#include "scribe/nbd_server.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "libscribe/nbd/nbd_protocol.h"
#include "scribe/nbd_relay.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"
#include "libscribe/sim/pool_testing.h"

extern char** environ;

namespace scribe {
namespace {

constexpr uint64_t kDiskBytes = 256ull << 20;
constexpr uint64_t kVsdBytes = 64ull << 20;
constexpr int64_t kSecond = 1'000'000'000;
const char kExport[] = "vm1";

bool HaveProgram(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (access((dir + "/" + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------- raw client
// A blocking NBD client for byte-level checks; every socket call has a 10 s timeout so
// a server bug fails the test instead of hanging it.
class RawClient {
 public:
  explicit RawClient(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() { close(fd_); }

  bool connected() const { return connected_; }

  bool SendAll(const std::string& s) {
    size_t done = 0;
    while (done < s.size()) {
      ssize_t n = send(fd_, s.data() + done, s.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return false;
      done += n;
    }
    return true;
  }

  std::optional<std::string> RecvExactly(size_t len) {
    std::string s(len, '\0');
    size_t done = 0;
    while (done < len) {
      ssize_t n = recv(fd_, s.data() + done, len - done, 0);
      if (n <= 0) return std::nullopt;
      done += n;
    }
    return s;
  }

  // True when the server closed the connection (EOF or reset) within the timeout.
  bool SeesClose() {
    char c;
    ssize_t n = recv(fd_, &c, 1, 0);
    return n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE));
  }

  bool Handshake() {
    auto greeting = RecvExactly(nbd::kGreetingBytes);
    if (!greeting) return false;
    auto flags = nbd::ParseGreeting(reinterpret_cast<const uint8_t*>(greeting->data()));
    if (!flags.ok() || *flags != nbd::kHandshakeFlags) return false;
    return SendAll(
        nbd::EncodeClientFlags(nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes));
  }

  struct OptionReply {
    nbd::OptionReplyHeader header;
    std::string data;
  };

  std::optional<OptionReply> ReadOptionReply() {
    auto h = RecvExactly(nbd::kOptionReplyHeaderBytes);
    if (!h) return std::nullopt;
    auto header = nbd::ParseOptionReplyHeader(reinterpret_cast<const uint8_t*>(h->data()));
    if (!header.ok() || header->length_bytes > (1u << 20)) return std::nullopt;
    auto data = RecvExactly(header->length_bytes);
    if (!data) return std::nullopt;
    return OptionReply{*header, *data};
  }

  // Sends INFO or GO and collects the replies through the final one.
  std::vector<OptionReply> InfoOrGo(uint32_t option, const std::string& name) {
    std::vector<OptionReply> out;
    if (!SendAll(
            nbd::EncodeOptionHeader(option, nbd::EncodeInfoRequest(name, {nbd::kInfoBlockSize})))) {
      return out;
    }
    for (;;) {
      auto r = ReadOptionReply();
      if (!r) return out;
      out.push_back(*r);
      if (r->header.type != nbd::kRepInfo) return out;
    }
  }

  // Handshake + GO; true when in transmission.
  bool Open(const std::string& name) {
    if (!connected_ || !Handshake()) return false;
    auto replies = InfoOrGo(nbd::kOptGo, name);
    return !replies.empty() && replies.back().header.type == nbd::kRepAck;
  }

  // The oldest way in: no NO_ZEROES flag, NBD_OPT_EXPORT_NAME; true when the server's
  // reply is exactly the export's size, our flags and the 124 zero bytes.
  bool OpenByExportNameWithZeroes(const std::string& name, uint64_t size_bytes) {
    if (!RecvExactly(nbd::kGreetingBytes) ||
        !SendAll(nbd::EncodeClientFlags(nbd::kClientFlagFixedNewstyle)) ||
        !SendAll(nbd::EncodeOptionHeader(nbd::kOptExportName, name))) {
      return false;
    }
    auto reply = RecvExactly(8 + 2 + nbd::kExportNameZeroesBytes);
    return reply && *reply == nbd::EncodeExportNameReply(size_bytes, nbd::kTransmissionFlags, false);
  }

  bool SendRequest(uint16_t type, uint64_t offset, uint32_t length, uint64_t handle,
                   const std::string& payload = {}, uint16_t flags = 0) {
    uint8_t b[nbd::kRequestHeaderBytes];
    nbd::EncodeRequestHeader(nbd::Request{flags, type, handle, offset, length}, b);
    return SendAll(std::string(reinterpret_cast<char*>(b), sizeof(b)) + payload);
  }

  std::optional<nbd::SimpleReplyHeader> ReadReply() {
    auto h = RecvExactly(nbd::kSimpleReplyHeaderBytes);
    if (!h) return std::nullopt;
    auto r = nbd::ParseSimpleReplyHeader(reinterpret_cast<const uint8_t*>(h->data()));
    if (!r.ok()) return std::nullopt;
    return *r;
  }

  // One request, one reply; `data` receives a successful READ's payload.
  std::optional<uint32_t> Call(uint16_t type, uint64_t offset, uint32_t length,
                               const std::string& payload = {}, std::string* data = nullptr,
                               uint16_t flags = 0) {
    const uint64_t handle = next_handle_++;
    if (!SendRequest(type, offset, length, handle, payload, flags)) return std::nullopt;
    auto r = ReadReply();
    if (!r || r->handle != handle) return std::nullopt;
    if (type == nbd::kCmdRead && r->error == 0) {
      auto d = RecvExactly(length);
      if (!d) return std::nullopt;
      if (data) *data = *d;
    }
    return r->error;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  uint64_t next_handle_ = 1;
};

std::string Pattern(char seed, size_t len) {
  std::string s(len, 0);
  for (size_t i = 0; i < len; ++i) s[i] = static_cast<char>(seed + i * 13 + (i >> 9));
  return s;
}

// ---------------------------------------------------------------- fixture
class NbdServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // As the daemons do: a client's hang-up must reach the server as EPIPE, not a signal.
    signal(SIGPIPE, SIG_IGN);
    loop_ = RealLoop::Create();
    const char* tmp = std::getenv("TEST_TMPDIR");
    tmp_ = tmp ? tmp : "/tmp";
    for (int n = 0; n < 3; ++n) {
      std::string path = tmp_ + "/nbd_disk" + std::to_string(n) + "." + std::to_string(getpid());
      unlink(path.c_str());
      AioDeviceOptions o;
      o.create_size_bytes = kDiskBytes;
      auto d = OpenAioDevice(loop_.get(), path, o);
      ASSERT_TRUE(d.ok()) << d.status();
      unlink(path.c_str());
      devs_.push_back(std::move(*d));
      specs_.push_back(
          DiskSpec{NodeId{static_cast<uint64_t>(n + 1)}, Tier::kHdd, devs_.back().get()});
    }
    PoolOptions options;
    options.metadata_bytes = 4ull << 20;
    std::optional<absl::StatusOr<std::unique_ptr<Pool>>> pool;
    Pool::Create(loop_.get(), &random_, options, specs_, [&](auto r) { pool = std::move(r); });
    loop_->RunUntil([&] { return pool.has_value(); }, 60 * kSecond);
    ASSERT_TRUE(pool && pool->ok()) << (pool ? pool->status() : absl::DeadlineExceededError(""));
    pool_ = std::move(**pool);
    vsd_ = CreateVsd(kExport, kVsdBytes);

    // sun_path holds 107 bytes; Bazel's TEST_TMPDIR can be longer.
    socket_dir_ = tmp_;
    if (socket_dir_.size() > 80) {
      char templ[] = "/tmp/nbdtest.XXXXXX";
      ASSERT_NE(mkdtemp(templ), nullptr);
      socket_dir_ = templ;
      made_socket_dir_ = true;
    }
    socket_path_ = socket_dir_ + "/nbd.sock";
    auto server = NbdServer::Create(loop_.get(), pool_.get(), socket_path_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  void TearDown() override {
    extra_servers_.clear();
    server_.reset();
    pool_.reset();
    devs_.clear();
    if (made_socket_dir_) rmdir(socket_dir_.c_str());
  }

  VsdId CreateVsd(const std::string& name, uint64_t size) {
    std::optional<absl::StatusOr<VsdId>> id;
    pool_->CreateVsd(VsdOptions{name, size, 2, 4}, [&](auto r) { id = r; });
    loop_->RunUntil([&] { return id.has_value(); }, 60 * kSecond);
    SCRIBE_CHECK(id && id->ok());
    return **id;
  }

  std::string PoolRead(uint64_t off, size_t len) {
    std::string out(len, '?');
    std::optional<absl::Status> st;
    pool_->Read(vsd_, off, len, out.data(), [&](absl::Status s) { st = s; });
    loop_->RunUntil([&] { return st.has_value(); }, 60 * kSecond);
    SCRIBE_CHECK(st && st->ok());
    return out;
  }

  FsckReport PoolFsck() { return FsckOrFailure(loop_.get(), pool_.get(), 60 * kSecond); }

  // Runs the loop until `done` (polled at least every 5 ms) or the timeout.
  bool Drive(const std::function<bool()>& done, int64_t timeout_ns) {
    std::function<void()> tick;
    Loop::TimerId timer = 0;
    tick = [&] { timer = loop_->RunAfter(5'000'000, tick); };
    timer = loop_->RunAfter(5'000'000, tick);
    bool ok = loop_->RunUntil(done, timeout_ns);
    loop_->Cancel(timer);
    return ok;
  }

  struct ChildResult {
    int exit_code = -1;  // -1: killed at the timeout or could not start
    std::string output;  // stdout and stderr
  };

  // Runs a program as a child process while the loop serves it.
  ChildResult RunChild(const std::vector<std::string>& argv, int64_t timeout_ns = 45 * kSecond) {
    ChildResult result;
    const std::string out_path = tmp_ + "/child" + std::to_string(children_++) + ".out";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid;
    const int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      result.output = std::string("posix_spawnp failed: ") + std::strerror(rc);
      return result;
    }
    int status = 0;
    bool exited = false;
    Drive(
        [&] {
          if (!exited && waitpid(pid, &status, WNOHANG) == pid) exited = true;
          return exited;
        },
        timeout_ns);
    if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    } else if (WIFEXITED(status)) {
      result.exit_code = WEXITSTATUS(status);
    }
    result.output = ReadFile(out_path);
    // Kept in test.log: what the real client said, pass or fail.
    std::string command;
    for (const std::string& a : argv) command += a + " ";
    std::printf("$ %s(exit %d)\n%s\n", command.c_str(), result.exit_code, result.output.c_str());
    return result;
  }

  // Runs `body` on a helper thread (blocking socket I/O) while this thread drives the loop.
  void RunClient(const std::function<void()>& body) {
    std::atomic<bool> done{false};
    std::thread t([&] {
      body();
      done = true;
    });
    const bool finished = Drive([&] { return done.load(); }, 60 * kSecond);
    t.join();
    EXPECT_TRUE(finished);
  }

  // Drops the server and the pool without a flush, as a crash would, opens the pool
  // again from its disks and serves it on `path`.
  void CrashAndReopen(const std::string& path) {
    server_.reset();
    pool_.reset();
    PoolOptions options;
    options.metadata_bytes = 4ull << 20;
    std::optional<absl::StatusOr<std::unique_ptr<Pool>>> reopened;
    Pool::Open(loop_.get(), &random_, options, specs_, [&](auto r) { reopened = std::move(r); });
    ASSERT_TRUE(Drive([&] { return reopened.has_value(); }, 60 * kSecond));
    ASSERT_TRUE(reopened->ok()) << reopened->status();
    pool_ = std::move(**reopened);
    for (const DiskInfo& d : pool_->ListDisks()) EXPECT_FALSE(d.failed) << "disk " << d.id.value;
    auto server = NbdServer::Create(loop_.get(), pool_.get(), path);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  // `sessions` clients of the socket at `path`, each a valid handshake and then garbage:
  // 4 well-framed requests of any command with random flags, offsets and lengths
  // (aligned or not, in range or not, zero), bytes flipped, the stream cut short.
  void GarbageSessions(const std::string& path, int sessions, std::mt19937_64* rng) {
    RunClient([&] {
      for (int i = 0; i < sessions; ++i) {
        RawClient c(path);
        ASSERT_TRUE(c.Open(kExport)) << "session " << i;
        std::string stream;
        for (int k = 0; k < 4; ++k) {
          nbd::Request req;
          req.type = static_cast<uint16_t>((*rng)() % 9);
          req.flags = (*rng)() % 4 == 0 ? static_cast<uint16_t>((*rng)() & 0x1f) : 0;
          req.handle = (*rng)();
          req.length_bytes = (*rng)() % 3 == 0 ? static_cast<uint32_t>((*rng)() % 65536)
                                               : 512u * ((*rng)() % 16);
          req.offset_bytes = (*rng)() % 3 == 0 ? (*rng)() : 512ull * ((*rng)() % (kVsdBytes / 512 + 8));
          uint8_t header[nbd::kRequestHeaderBytes];
          nbd::EncodeRequestHeader(req, header);
          stream.append(reinterpret_cast<char*>(header), sizeof(header));
          if (req.type == nbd::kCmdWrite) stream += std::string(req.length_bytes, 'g');
        }
        for (int flips = (*rng)() % 6; flips > 0; --flips) {
          stream[(*rng)() % stream.size()] ^= static_cast<char>(1 + (*rng)() % 255);
        }
        stream.resize(stream.size() - (*rng)() % (stream.size() / 2));
        (void)c.SendAll(stream);  // the other end may hang up first: that is allowed
      }
    });
  }

  std::string Uri(const std::string& name) const {
    return "nbd+unix:///" + name + "?socket=" + socket_path_;
  }

  std::unique_ptr<RealLoop> loop_;
  SeededRandom random_{7};
  std::string tmp_;
  std::vector<std::unique_ptr<BlockDevice>> devs_;
  std::vector<DiskSpec> specs_;
  std::unique_ptr<Pool> pool_;
  VsdId vsd_;
  std::string socket_dir_;
  bool made_socket_dir_ = false;
  std::string socket_path_;
  std::unique_ptr<NbdServer> server_;
  std::vector<std::unique_ptr<NbdServer>> extra_servers_;
  int children_ = 0;
};

// ---------------------------------------------------------------- real clients
TEST_F(NbdServerTest, QemuImgInfoSeesTheVirtualSize) {
  ChildResult r = RunChild({"qemu-img", "info", Uri(kExport)});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("virtual size: 64 MiB (67108864 bytes)"), std::string::npos) << r.output;
}

TEST_F(NbdServerTest, QemuIoWritesReadsAndFlushes) {
  ChildResult r = RunChild({"qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c",
                            "read -P 0xab 0 1M", "-c", "flush", Uri(kExport)});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("wrote 1048576/1048576 bytes"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("read 1048576/1048576 bytes"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Pattern verification failed"), std::string::npos) << r.output;
  // The bytes are in the pool, not just somewhere in the server.
  EXPECT_TRUE(PoolRead(0, 1 << 20) == std::string(1 << 20, '\xab'));
  EXPECT_TRUE(PoolRead(1 << 20, 4096) == std::string(4096, '\0'));
}

TEST_F(NbdServerTest, TcpServerServesTheSamePool) {
  auto tcp = NbdServer::CreateTcp(loop_.get(), pool_.get(), "127.0.0.1:0");
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  const std::string address = (*tcp)->socket_path();
  ASSERT_NE(address, "127.0.0.1:0");
  extra_servers_.push_back(std::move(*tcp));
  ChildResult r = RunChild({"qemu-io", "-f", "raw", "-c", "write -P 0x5c 4096 64k", "-c", "flush",
                            "nbd://" + address + "/" + kExport});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(PoolRead(4096, 64 << 10) == std::string(64 << 10, '\x5c'));
  EXPECT_EQ(NbdServer::CreateTcp(loop_.get(), pool_.get(), "localhost").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(NbdServerTest, NbdinfoListsEveryVsd) {
  ASSERT_TRUE(HaveProgram("nbdinfo")) << "nbdinfo missing: libnbd-bin is in scripts/packages.txt";
  CreateVsd("vm2-data", 8ull << 20);
  ChildResult r = RunChild({"nbdinfo", "--list", "nbd+unix:///?socket=" + socket_path_});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("export=\"vm1\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("export=\"vm2-data\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("export-size: 67108864"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("export-size: 8388608"), std::string::npos) << r.output;
}

TEST_F(NbdServerTest, FioRandomWritesVerifyAndReadBack) {
  const std::vector<std::string> job = {"fio",
                                        "--name=nbd",
                                        "--ioengine=nbd",
                                        "--uri=" + Uri(kExport),
                                        "--rw=randwrite",
                                        "--bs=4k",
                                        "--iodepth=16",
                                        "--size=32m",
                                        "--verify=crc32c",
                                        "--verify_backlog=1024",
                                        "--do_verify=1",
                                        "--verify_state_save=0"};
  // fio exits nonzero on any verify mismatch; the summary shows all 32 MiB moved.
  ChildResult write = RunChild(job);
  ASSERT_EQ(write.exit_code, 0) << write.output;
  EXPECT_NE(write.output.find("WRITE: bw="), std::string::npos) << write.output;
  EXPECT_NE(write.output.find("io=32.0MiB"), std::string::npos) << write.output;
  EXPECT_EQ(write.output.find("verify failed"), std::string::npos) << write.output;
  // A second process reads every block back and checks it (same seed, same offsets).
  std::vector<std::string> verify = job;
  verify.push_back("--verify_only");
  ChildResult read = RunChild(verify);
  ASSERT_EQ(read.exit_code, 0) << read.output;
  EXPECT_NE(read.output.find("READ: bw="), std::string::npos) << read.output;
  EXPECT_NE(read.output.find("io=32.0MiB"), std::string::npos) << read.output;
  EXPECT_EQ(read.output.find("verify failed"), std::string::npos) << read.output;
  // fio kept many requests in flight on its connection: the server pipelined them.
  EXPECT_GT(server_->Stats().in_flight_max, 1u);
  EXPECT_EQ(server_->Stats().request_errors, 0u);
  EXPECT_EQ(server_->Stats().protocol_errors, 0u);
  EXPECT_TRUE(PoolFsck().ok());
}

TEST_F(NbdServerTest, QemuIoDiscardAndWriteZeroesReadBackAsZeros) {
  // qemu-io's discard is NBD_CMD_TRIM and `write -z` is NBD_CMD_WRITE_ZEROES.
  ChildResult r = RunChild({"qemu-io",
                            "-f",
                            "raw",
                            "-c",
                            "write -P 0x5a 0 4M",
                            "-c",
                            "discard 1M 1M",
                            "-c",
                            "write -z 3M 64k",
                            "-c",
                            "read -P 0x5a 0 1M",
                            "-c",
                            "read -P 0 1M 1M",
                            "-c",
                            "read -P 0x5a 2M 1M",
                            "-c",
                            "read -P 0 3M 64k",
                            "-c",
                            "read -P 0x5a 3136k 960k",
                            "-c",
                            "flush",
                            Uri(kExport)});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("discard 1048576/1048576 bytes"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Pattern verification failed"), std::string::npos) << r.output;
  EXPECT_TRUE(PoolRead(1 << 20, 4096) == std::string(4096, '\0'));
}

TEST_F(NbdServerTest, FioMixedIoOverTwoConnectionsVerifies) {
  // Two jobs, two connections to one export (CAN_MULTI_CONN), random reads and writes of
  // mixed sizes, each job verifying its own 8 MiB.
  ChildResult r = RunChild({"fio", "--name=mixed", "--ioengine=nbd", "--uri=" + Uri(kExport),
                            "--rw=randrw", "--bsrange=4k-64k", "--iodepth=8", "--numjobs=2",
                            "--size=8m", "--offset_increment=8m", "--verify=crc32c",
                            "--do_verify=1", "--verify_state_save=0"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("verify failed"), std::string::npos) << r.output;
  EXPECT_EQ(server_->Stats().request_errors, 0u);
  EXPECT_GE(server_->Stats().connections_accepted, 2u);
  EXPECT_TRUE(PoolFsck().ok());
}

TEST_F(NbdServerTest, FioSubBlockWritesVerify) {
  // 512-byte writes, many to the same 4 KiB block at once: the pool's read-modify-write
  // path under pipelining.
  ChildResult r = RunChild({"fio", "--name=small", "--ioengine=nbd", "--uri=" + Uri(kExport),
                            "--rw=randwrite", "--bs=512", "--iodepth=32", "--size=1m",
                            "--verify=crc32c", "--do_verify=1", "--verify_state_save=0"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(server_->Stats().request_errors, 0u);
  EXPECT_TRUE(PoolFsck().ok());
}

// ---------------------------------------------------------------- raw protocol
TEST_F(NbdServerTest, BadMagicClosesOnlyThatConnection) {
  RunClient([&] {
    RawClient bad(socket_path_), good(socket_path_);
    ASSERT_TRUE(bad.Open(kExport));
    ASSERT_TRUE(good.Open(kExport));
    ASSERT_EQ(good.Call(nbd::kCmdWrite, 0, 4096, Pattern('g', 4096)), 0u);
    std::string junk(nbd::kRequestHeaderBytes, '\x5a');
    ASSERT_TRUE(bad.SendAll(junk));
    EXPECT_TRUE(bad.SeesClose());
    std::string data;
    EXPECT_EQ(good.Call(nbd::kCmdRead, 0, 4096, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('g', 4096));
    // And new connections are still welcome.
    RawClient third(socket_path_);
    ASSERT_TRUE(third.Open(kExport));
    EXPECT_EQ(third.Call(nbd::kCmdRead, 0, 4096, {}, &data), 0u);
  });
  EXPECT_EQ(server_->Stats().protocol_errors, 1u);
}

TEST_F(NbdServerTest, UnknownExportGetsAnErrorNamingIt) {
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Handshake());
    auto replies = c.InfoOrGo(nbd::kOptGo, "no-such-disk");
    ASSERT_EQ(replies.size(), 1u);  // no NBD_REP_INFO before the error
    EXPECT_EQ(replies[0].header.type, nbd::kRepErrUnknown);
    EXPECT_EQ(replies[0].header.option, nbd::kOptGo);
    EXPECT_NE(replies[0].data.find("no-such-disk"), std::string::npos) << replies[0].data;
    // The session goes on: the right name works on the same connection.
    replies = c.InfoOrGo(nbd::kOptGo, kExport);
    ASSERT_FALSE(replies.empty());
    EXPECT_EQ(replies.back().header.type, nbd::kRepAck);
    EXPECT_EQ(c.Call(nbd::kCmdFlush, 0, 0), 0u);

    // NBD_OPT_EXPORT_NAME cannot carry an error: the server hangs up.
    RawClient old(socket_path_);
    ASSERT_TRUE(old.Handshake());
    ASSERT_TRUE(old.SendAll(nbd::EncodeOptionHeader(nbd::kOptExportName, "nope")));
    EXPECT_TRUE(old.SeesClose());
  });
}

TEST_F(NbdServerTest, ExportNameEntersTransmissionWithZeroesUnlessNegotiated) {
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.OpenByExportNameWithZeroes(kExport, kVsdBytes));
    EXPECT_EQ(c.Call(nbd::kCmdWrite, 8192, 512, Pattern('e', 512)), 0u);
    std::string data;
    EXPECT_EQ(c.Call(nbd::kCmdRead, 8192, 512, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('e', 512));
  });
}

TEST_F(NbdServerTest, OptionsListInfoUnsupportedAndAbort) {
  CreateVsd("second", 1ull << 20);
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Handshake());
    ASSERT_TRUE(c.SendAll(nbd::EncodeOptionHeader(nbd::kOptList, "")));
    std::set<std::string> names;
    for (;;) {
      auto r = c.ReadOptionReply();
      ASSERT_TRUE(r);
      if (r->header.type == nbd::kRepAck) break;
      ASSERT_EQ(r->header.type, nbd::kRepServer);
      ASSERT_GE(r->data.size(), 4u);
      names.insert(r->data.substr(4));
    }
    EXPECT_EQ(names, (std::set<std::string>{"vm1", "second"}));

    ASSERT_TRUE(c.SendAll(nbd::EncodeOptionHeader(nbd::kOptList, "junk")));
    EXPECT_EQ(c.ReadOptionReply()->header.type, nbd::kRepErrInvalid);

    ASSERT_TRUE(c.SendAll(nbd::EncodeOptionHeader(nbd::kOptStructuredReply, "")));
    EXPECT_EQ(c.ReadOptionReply()->header.type, nbd::kRepErrUnsup);
    ASSERT_TRUE(c.SendAll(nbd::EncodeOptionHeader(nbd::kOptStartTls, "")));
    EXPECT_EQ(c.ReadOptionReply()->header.type, nbd::kRepErrUnsup);
    ASSERT_TRUE(c.SendAll(nbd::EncodeOptionHeader(99, "whatever")));
    auto unknown = c.ReadOptionReply();
    ASSERT_TRUE(unknown);
    EXPECT_EQ(unknown->header.type, nbd::kRepErrUnsup);
    EXPECT_EQ(unknown->header.option, 99u);

    ASSERT_TRUE(c.SendAll(nbd::EncodeOptionHeader(nbd::kOptInfo, "\x01\x02")));  // malformed
    EXPECT_EQ(c.ReadOptionReply()->header.type, nbd::kRepErrInvalid);

    auto info = c.InfoOrGo(nbd::kOptInfo, "second");
    ASSERT_EQ(info.size(), 3u);
    EXPECT_EQ(info[0].data, nbd::EncodeInfoExportData(1ull << 20, nbd::kTransmissionFlags));
    EXPECT_EQ(info[1].data, nbd::EncodeInfoBlockSizeData(512, 4096, 32u << 20));
    EXPECT_EQ(info[2].header.type, nbd::kRepAck);

    ASSERT_TRUE(c.SendAll(nbd::EncodeOptionHeader(nbd::kOptAbort, "")));
    auto ack = c.ReadOptionReply();
    ASSERT_TRUE(ack);
    EXPECT_EQ(ack->header.type, nbd::kRepAck);
    EXPECT_TRUE(c.SeesClose());
  });
  EXPECT_EQ(server_->Stats().protocol_errors, 0u);
}

TEST_F(NbdServerTest, OutOfRangeAndMalformedRequestsGetErrorsAndTheConnectionGoesOn) {
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    EXPECT_EQ(c.Call(nbd::kCmdRead, kVsdBytes, 4096), nbd::kEinval);
    EXPECT_EQ(c.Call(nbd::kCmdRead, kVsdBytes - 512, 1024), nbd::kEinval);
    EXPECT_EQ(c.Call(nbd::kCmdRead, UINT64_MAX - 511, 1024), nbd::kEinval);
    EXPECT_EQ(c.Call(nbd::kCmdWrite, kVsdBytes, 512, std::string(512, 'x')), nbd::kEnospc);
    EXPECT_EQ(c.Call(nbd::kCmdWrite, 100, 512, std::string(512, 'x')), nbd::kEinval);
    EXPECT_EQ(c.Call(nbd::kCmdTrim, kVsdBytes, 4096), nbd::kEinval);
    EXPECT_EQ(c.Call(nbd::kCmdRead, 0, 64u << 20), nbd::kEinval);  // over max_request_bytes
    EXPECT_EQ(c.Call(nbd::kCmdBlockStatus, 0, 4096), nbd::kEinval);
    EXPECT_EQ(c.Call(nbd::kCmdRead, 0, 4096, {}, nullptr, nbd::kCmdFlagDf), nbd::kEinval);
    // Zero-length requests do nothing and succeed (a zero-length WRITE, which has no
    // payload, once crashed the server: found by the relay's garbage test).
    EXPECT_EQ(c.Call(nbd::kCmdWrite, 8192, 0), 0u);
    EXPECT_EQ(c.Call(nbd::kCmdRead, 8192, 0), 0u);
    EXPECT_EQ(c.Call(nbd::kCmdTrim, 8192, 0), 0u);
    EXPECT_EQ(c.Call(nbd::kCmdWriteZeroes, 8192, 0), 0u);
    // Still in business.
    EXPECT_EQ(c.Call(nbd::kCmdWrite, 4096, 4096, Pattern('k', 4096)), 0u);
    std::string data;
    EXPECT_EQ(c.Call(nbd::kCmdRead, 4096, 4096, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('k', 4096));
    EXPECT_EQ(c.Call(nbd::kCmdRead, kVsdBytes - 4096, 4096, {}, &data), 0u);
    EXPECT_TRUE(data == std::string(4096, '\0'));
  });
  EXPECT_EQ(server_->Stats().protocol_errors, 0u);
  EXPECT_EQ(server_->Stats().request_errors, 9u);
}

TEST_F(NbdServerTest, PipelinedRequestsAllAnsweredThenDiscDrainsAndCloses) {
  constexpr int kWrites = 48;
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    // Everything goes out before any reply is read.
    std::string burst;
    for (int i = 0; i < kWrites; ++i) {
      uint8_t h[nbd::kRequestHeaderBytes];
      nbd::EncodeRequestHeader(
          nbd::Request{static_cast<uint16_t>(i % 5 == 0 ? nbd::kCmdFlagFua : 0), nbd::kCmdWrite,
                       1000u + i, uint64_t(i) * 65536, 8192},
          h);
      burst += std::string(reinterpret_cast<char*>(h), sizeof(h)) + Pattern(char('A' + i), 8192);
    }
    ASSERT_TRUE(c.SendAll(burst));
    ASSERT_TRUE(c.SendRequest(nbd::kCmdFlush, 0, 0, 5000));
    ASSERT_TRUE(c.SendRequest(nbd::kCmdDisc, 0, 0, 6000));
    std::set<uint64_t> handles;
    for (int i = 0; i < kWrites + 1; ++i) {
      auto r = c.ReadReply();
      ASSERT_TRUE(r) << "reply " << i;
      EXPECT_EQ(r->error, 0u);
      handles.insert(r->handle);
    }
    EXPECT_EQ(handles.size(), size_t(kWrites + 1));
    EXPECT_TRUE(handles.count(5000));
    EXPECT_TRUE(c.SeesClose());  // after DISC, once everything was answered

    RawClient d(socket_path_);
    ASSERT_TRUE(d.Open(kExport));
    for (int i = 0; i < kWrites; ++i) {
      std::string data;
      ASSERT_EQ(d.Call(nbd::kCmdRead, uint64_t(i) * 65536, 8192, {}, &data), 0u);
      EXPECT_TRUE(data == Pattern(char('A' + i), 8192)) << i;
    }
  });
  EXPECT_GT(server_->Stats().in_flight_max, 1u);
}

// The server reads requests in bulk: requests split anywhere (inside a header, inside a
// payload) by the client's writes, several per write, and a payload larger than the
// server's receive buffer must all come out exactly as sent.
TEST_F(NbdServerTest, RequestsSplitAnywhereAndLargePayloadsParseExactly) {
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    std::string stream;
    std::vector<std::pair<uint64_t, std::string>> written;
    const uint32_t sizes[] = {512, 4096, 1536, 1u << 20, 4096, 3u << 19};
    uint64_t offset = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
      uint8_t h[nbd::kRequestHeaderBytes];
      nbd::EncodeRequestHeader(nbd::Request{0, nbd::kCmdWrite, 100u + i, offset, sizes[i]}, h);
      std::string data = Pattern(char('a' + i), sizes[i]);
      stream += std::string(reinterpret_cast<char*>(h), sizeof(h)) + data;
      written.emplace_back(offset, data);
      offset += 2u << 20;
    }
    // Sent in pieces of 1, 7, 29, 1000, 70000 bytes, cycling: boundaries land everywhere.
    const size_t pieces[] = {1, 7, 29, 1000, 70000};
    size_t at = 0;
    for (size_t k = 0; at < stream.size(); ++k) {
      const size_t n = std::min(pieces[k % 5], stream.size() - at);
      ASSERT_TRUE(c.SendAll(stream.substr(at, n)));
      at += n;
    }
    std::set<uint64_t> handles;
    for (size_t i = 0; i < written.size(); ++i) {
      auto r = c.ReadReply();
      ASSERT_TRUE(r) << "reply " << i;
      EXPECT_EQ(r->error, 0u);
      handles.insert(r->handle);
    }
    EXPECT_EQ(handles.size(), written.size());
    for (const auto& [off, data] : written) {
      std::string got;
      ASSERT_EQ(c.Call(nbd::kCmdRead, off, data.size(), {}, &got), 0u);
      EXPECT_TRUE(got == data) << "at " << off;
    }
  });
  EXPECT_EQ(server_->Stats().protocol_errors, 0u);
}

TEST_F(NbdServerTest, TrimAndWriteZeroesReadBackAsZeros) {
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    ASSERT_EQ(c.Call(nbd::kCmdWrite, 0, 65536, Pattern('z', 65536)), 0u);
    // Whole blocks and ragged 512-byte edges.
    EXPECT_EQ(c.Call(nbd::kCmdTrim, 4096, 8192), 0u);
    EXPECT_EQ(c.Call(nbd::kCmdWriteZeroes, 20480 + 512, 4096, {}, nullptr,
                     nbd::kCmdFlagNoHole | nbd::kCmdFlagFua),
              0u);
    std::string data;
    ASSERT_EQ(c.Call(nbd::kCmdRead, 0, 65536, {}, &data), 0u);
    std::string want = Pattern('z', 65536);
    std::memset(want.data() + 4096, 0, 8192);
    std::memset(want.data() + 20480 + 512, 0, 4096);
    EXPECT_TRUE(data == want);
  });
}

// Regression: Pool::Create used to free a disk's superblock buffer while its write was
// in flight, so a restart could find that disk missing.
TEST_F(NbdServerTest, FuaWritesAndFlushedWritesSurviveAPoolRestart) {
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    ASSERT_EQ(c.Call(nbd::kCmdWrite, 1 << 20, 4096, Pattern('L', 4096)), 0u);
    ASSERT_EQ(c.Call(nbd::kCmdFlush, 0, 0), 0u);
    // Durable by itself: no flush follows.
    ASSERT_EQ(c.Call(nbd::kCmdWrite, 0, 8192, Pattern('F', 8192), nullptr, nbd::kCmdFlagFua), 0u);
    ASSERT_EQ(c.Call(nbd::kCmdWrite, 2 << 20, 4096, Pattern('U', 4096)), 0u);  // never flushed
  });
  // Stop without a flush, as a crash would, and open the pool again from its disks.
  ASSERT_NO_FATAL_FAILURE(CrashAndReopen(socket_path_));
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    std::string data;
    ASSERT_EQ(c.Call(nbd::kCmdRead, 0, 8192, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('F', 8192));
    ASSERT_EQ(c.Call(nbd::kCmdRead, 1 << 20, 4096, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('L', 4096));
    // The unflushed write may or may not be there, but it is never torn.
    ASSERT_EQ(c.Call(nbd::kCmdRead, 2 << 20, 4096, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('U', 4096) || data == std::string(4096, '\0'));
  });
}

TEST_F(NbdServerTest, AFullPoolAnswersEnospcAndKeepsServing) {
  // A thin VSD larger than the pool: 3 x 252 MiB of chunk space holds ~378 MiB at RF2.
  CreateVsd("huge", 2ull << 30);
  uint64_t written = 0;
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open("huge"));
    const std::string chunk = Pattern('h', 16 << 20);
    std::optional<uint32_t> error;
    for (uint64_t off = 0; off < (2ull << 30); off += chunk.size()) {
      error = c.Call(nbd::kCmdWrite, off, chunk.size(), chunk);
      if (!error || *error != 0) break;
      written += chunk.size();
    }
    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(*error, nbd::kEnospc);
    // What was written before the pool filled is intact, and the session goes on.
    std::string data;
    ASSERT_EQ(c.Call(nbd::kCmdRead, 0, 1 << 20, {}, &data), 0u);
    EXPECT_TRUE(data == chunk.substr(0, 1 << 20));
    EXPECT_EQ(c.Call(nbd::kCmdFlush, 0, 0), 0u);
  });
  std::printf("pool full after %llu MiB written\n", static_cast<unsigned long long>(written >> 20));
  EXPECT_GT(written, 256ull << 20);
  EXPECT_LT(written, 400ull << 20);
  EXPECT_TRUE(PoolFsck().ok());
}

TEST_F(NbdServerTest, SeveralConnectionsShareAnExportAndAFlush) {
  RunClient([&] {
    RawClient a(socket_path_), b(socket_path_);
    ASSERT_TRUE(a.Open(kExport));
    ASSERT_TRUE(b.Open(kExport));
    ASSERT_EQ(a.Call(nbd::kCmdWrite, 1 << 20, 4096, Pattern('m', 4096)), 0u);
    ASSERT_EQ(b.Call(nbd::kCmdFlush, 0, 0), 0u);
    std::string data;
    ASSERT_EQ(b.Call(nbd::kCmdRead, 1 << 20, 4096, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('m', 4096));
  });
}

TEST_F(NbdServerTest, InFlightLimitThrottlesWithoutDeadlock) {
  NbdServerOptions o;
  o.max_in_flight_per_connection = 2;
  o.max_in_flight_bytes_per_connection = 16384;
  const std::string path = socket_dir_ + "/nbd-small.sock";
  auto small = NbdServer::Create(loop_.get(), pool_.get(), path, o);
  ASSERT_TRUE(small.ok()) << small.status();
  extra_servers_.push_back(std::move(*small));
  RunClient([&] {
    RawClient c(path);
    ASSERT_TRUE(c.Open(kExport));
    std::string burst;
    for (int i = 0; i < 40; ++i) {
      uint8_t h[nbd::kRequestHeaderBytes];
      nbd::EncodeRequestHeader(
          nbd::Request{0, nbd::kCmdWrite, uint64_t(i), uint64_t(i) * 16384, 16384}, h);
      burst += std::string(reinterpret_cast<char*>(h), sizeof(h)) + Pattern(char(i), 16384);
    }
    ASSERT_TRUE(c.SendAll(burst));
    for (int i = 0; i < 40; ++i) {
      auto r = c.ReadReply();
      ASSERT_TRUE(r);
      EXPECT_EQ(r->error, 0u);
    }
    std::string data;
    ASSERT_EQ(c.Call(nbd::kCmdRead, 39 * 16384, 16384, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern(char(39), 16384));
  });
  EXPECT_LE(extra_servers_[0]->Stats().in_flight_max, 2u);
}

// A VM restarted elsewhere raises its VSD's writer epoch: the old instance's connection
// ("vm1@3") can no longer change data, and cannot reconnect with its old epoch.
TEST_F(NbdServerTest, StaleWriterEpochIsRefusedWritesReadsStillServed) {
  std::atomic<uint64_t> writer{3};
  NbdServerOptions o;
  o.writer_epoch = [&](const std::string& vsd) -> uint64_t { return vsd == kExport ? writer.load() : 0; };
  const std::string path = socket_dir_ + "/nbd-fence.sock";
  auto fenced = NbdServer::Create(loop_.get(), pool_.get(), path, o);
  ASSERT_TRUE(fenced.ok()) << fenced.status();
  extra_servers_.push_back(std::move(*fenced));
  const std::string name = std::string(kExport) + "@3";
  RunClient([&] {
    RawClient old_vm(path);
    ASSERT_TRUE(old_vm.Open(name));
    EXPECT_EQ(old_vm.Call(nbd::kCmdWrite, 0, 4096, Pattern('o', 4096)), 0u);
    writer = 4;  // the VM was started elsewhere with epoch 4
    EXPECT_EQ(old_vm.Call(nbd::kCmdWrite, 0, 4096, Pattern('x', 4096)), nbd::kEperm);
    EXPECT_EQ(old_vm.Call(nbd::kCmdTrim, 0, 4096), nbd::kEperm);
    EXPECT_EQ(old_vm.Call(nbd::kCmdFlush, 0, 0), nbd::kEperm);
    std::string data;
    EXPECT_EQ(old_vm.Call(nbd::kCmdRead, 0, 4096, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('o', 4096));
    RawClient again(path);
    EXPECT_FALSE(again.Open(name));  // NBD_REP_ERR_POLICY
    RawClient new_vm(path);
    ASSERT_TRUE(new_vm.Open(std::string(kExport) + "@4"));
    EXPECT_EQ(new_vm.Call(nbd::kCmdWrite, 0, 4096, Pattern('n', 4096)), 0u);
  });
  EXPECT_TRUE(PoolRead(0, 4096) == Pattern('n', 4096));
  EXPECT_EQ(extra_servers_[0]->Stats().fenced_requests, 3u);
}

TEST_F(NbdServerTest, WritePayloadOverTheLimitClosesTheConnection) {
  NbdServerOptions o;
  o.max_request_bytes = 64 << 10;
  const std::string path = socket_dir_ + "/nbd-limit.sock";
  auto limited = NbdServer::Create(loop_.get(), pool_.get(), path, o);
  ASSERT_TRUE(limited.ok()) << limited.status();
  extra_servers_.push_back(std::move(*limited));
  RunClient([&] {
    RawClient c(path);
    ASSERT_TRUE(c.Open(kExport));
    EXPECT_EQ(c.Call(nbd::kCmdWrite, 0, 64 << 10, std::string(64 << 10, 'w')), 0u);
    ASSERT_TRUE(c.SendRequest(nbd::kCmdWrite, 0, 128 << 10, 77));
    EXPECT_TRUE(c.SeesClose());
  });
  EXPECT_EQ(extra_servers_[0]->Stats().protocol_errors, 1u);
}

TEST_F(NbdServerTest, ClientVanishingWithRequestsInFlightLeavesTheServerServing) {
  for (int round = 0; round < 5; ++round) {
    RunClient([&] {
      RawClient c(socket_path_);
      ASSERT_TRUE(c.Open(kExport));
      std::string burst;
      for (int i = 0; i < 32; ++i) {
        uint8_t h[nbd::kRequestHeaderBytes];
        nbd::EncodeRequestHeader(
            nbd::Request{0, nbd::kCmdRead, uint64_t(i), uint64_t(i) << 20, 1 << 20}, h);
        burst += std::string(reinterpret_cast<char*>(h), sizeof(h));
      }
      ASSERT_TRUE(c.SendAll(burst));
      // `c` closes here with every reply still to come.
    });
    ASSERT_TRUE(Drive([&] { return server_->Stats().connections_active == 0; }, 30 * kSecond));
  }
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    EXPECT_EQ(c.Call(nbd::kCmdFlush, 0, 0), 0u);
  });
}

// Seeded garbage straight at the server: each connection may end, none is left behind,
// and the server (in this process: a crash fails the test) keeps serving.
TEST_F(NbdServerTest, MalformedStreamsEndOnlyTheirOwnConnections) {
  std::mt19937_64 rng(20261121);
  for (int batch = 0; batch < 20; ++batch) {
    ASSERT_NO_FATAL_FAILURE(GarbageSessions(socket_path_, 50, &rng));
    ASSERT_TRUE(Drive([&] { return server_->Stats().connections_active == 0; }, 10 * kSecond))
        << "after batch " << batch << ": " << server_->Stats().connections_active
        << " connections left";
  }
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    EXPECT_EQ(c.Call(nbd::kCmdWrite, 0, 4096, Pattern('m', 4096)), 0u);
  });
}

// A client that hangs up in the middle of a write's payload: its connection must go
// (it once stayed forever, its reservation never released, until max_connections of
// them locked every client out; found by the relay's garbage test).
TEST_F(NbdServerTest, HangingUpInsideAWritePayloadLeavesNoConnectionBehind) {
  RunClient([&] {
    for (int i = 0; i < 3; ++i) {
      RawClient c(socket_path_);
      ASSERT_TRUE(c.Open(kExport));
      uint8_t header[nbd::kRequestHeaderBytes];
      nbd::EncodeRequestHeader(nbd::Request{0, nbd::kCmdWrite, 7, 0, 64 << 10}, header);
      ASSERT_TRUE(c.SendAll(std::string(reinterpret_cast<char*>(header), sizeof(header)) +
                            std::string(1000, 'p')));
    }
  });
  EXPECT_TRUE(Drive([&] { return server_->Stats().connections_active == 0; }, 5 * kSecond))
      << server_->Stats().connections_active << " connections left";
  RunClient([&] {
    RawClient c(socket_path_);
    ASSERT_TRUE(c.Open(kExport));
    EXPECT_EQ(c.Call(nbd::kCmdWrite, 0, 4096, Pattern('h', 4096)), 0u);
  });
}

TEST_F(NbdServerTest, DestroyingTheServerWithRequestsInFlightIsSafe) {
  std::atomic<bool> done{false};
  std::thread t([&] {
    RawClient c(socket_path_);
    if (c.Open(kExport)) {
      std::string burst;
      for (int i = 0; i < 64; ++i) {
        uint8_t h[nbd::kRequestHeaderBytes];
        nbd::EncodeRequestHeader(
            nbd::Request{nbd::kCmdFlagFua, nbd::kCmdWrite, uint64_t(i), uint64_t(i) * 65536, 65536},
            h);
        burst += std::string(reinterpret_cast<char*>(h), sizeof(h)) + Pattern(char(i), 65536);
      }
      (void)c.SendAll(burst);  // may fail part way: the server goes away under it
      (void)c.SeesClose();
    }
    done = true;
  });
  ASSERT_TRUE(Drive([&] { return server_->Stats().requests >= 8; }, 30 * kSecond));
  server_.reset();
  // Pool completions for the dropped connection still arrive; nothing may touch freed state.
  Drive([&] { return done.load(); }, 30 * kSecond);
  t.join();
  std::optional<absl::Status> flushed;
  pool_->Flush([&](absl::Status st) { flushed = st; });
  ASSERT_TRUE(Drive([&] { return flushed.has_value(); }, 30 * kSecond));
  EXPECT_TRUE(flushed->ok());
  EXPECT_TRUE(PoolFsck().ok());
}

TEST_F(NbdServerTest, HandshakeTimeoutAndConnectionLimit) {
  NbdServerOptions o;
  o.handshake_timeout_ns = 200'000'000;
  o.max_connections = 1;
  const std::string path = socket_dir_ + "/nbd-strict.sock";
  auto strict = NbdServer::Create(loop_.get(), pool_.get(), path, o);
  ASSERT_TRUE(strict.ok()) << strict.status();
  extra_servers_.push_back(std::move(*strict));
  RunClient([&] {
    RawClient idle(path);
    ASSERT_TRUE(idle.RecvExactly(nbd::kGreetingBytes));
    RawClient second(path);  // over max_connections
    EXPECT_TRUE(second.SeesClose());
    EXPECT_TRUE(idle.SeesClose());  // never sent its flags
  });
  EXPECT_EQ(extra_servers_[0]->Stats().connections_refused, 1u);
  EXPECT_EQ(extra_servers_[0]->Stats().protocol_errors, 1u);
  RunClient([&] {
    RawClient c(path);
    ASSERT_TRUE(c.Open(kExport));
    EXPECT_EQ(c.Call(nbd::kCmdFlush, 0, 0), 0u);
  });
}

TEST_F(NbdServerTest, CreateRefusesALiveSocketAndReplacesAStaleOne) {
  auto again = NbdServer::Create(loop_.get(), pool_.get(), socket_path_);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  server_.reset();  // removes its socket file
  struct stat st;
  EXPECT_NE(lstat(socket_path_.c_str(), &st), 0);
  // A socket file nobody listens on (a crashed server) is replaced.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  auto fresh = NbdServer::Create(loop_.get(), pool_.get(), socket_path_);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  server_ = std::move(*fresh);
  const std::string regular = socket_dir_ + "/not-a-socket";
  { std::ofstream(regular) << "x"; }
  EXPECT_EQ(NbdServer::Create(loop_.get(), pool_.get(), regular).status().code(),
            absl::StatusCode::kAlreadyExists);
  unlink(regular.c_str());
  EXPECT_EQ(NbdServer::Create(loop_.get(), pool_.get(), "").status().code(),
            absl::StatusCode::kInvalidArgument);
}


// ---------------------------------------------------------------- the relay
// NbdRelay in front of the server: a client of the relay's socket must not notice the
// server crashing and coming back elsewhere, and must find every write it was answered.
class NbdRelayTest : public NbdServerTest {
 protected:
  // A relay on its own socket; its upstream is whatever upstream_ says at the time.
  std::unique_ptr<NbdRelay> StartRelay(NbdRelayOptions o = {}) {
    upstream_ = "unix:" + socket_path_;
    o.upstream = [this] { return upstream_; };
    o.retry_interval_ns = 20'000'000;
    o.log = [this](const std::string& line) { logs_ += line + "\n"; };
    auto relay = NbdRelay::Create(loop_.get(), o);
    SCRIBE_CHECK(relay->Listen(relay_path()).ok());
    return relay;
  }

  std::string relay_path() const { return socket_dir_ + "/relay.sock"; }

  // On a client thread: `before`, then (while the client waits) the pool crashes and is
  // served again on another socket, which the relay is told of 100 ms later, then `after`.
  void CrashUnderClient(const std::function<void(RawClient&)>& before,
                        const std::function<void(RawClient&)>& after) {
    std::atomic<int> phase{0};
    std::thread client([&] {
      RawClient c(relay_path());
      before(c);
      phase = 1;
      while (phase != 2) usleep(1000);
      after(c);
      phase = 3;
    });
    ASSERT_TRUE(Drive([&] { return phase == 1; }, 60 * kSecond));
    upstream_ = "";
    const std::string second = socket_dir_ + "/nbd2.sock";
    CrashAndReopen(second);
    phase = 2;
    Drive([&] { return false; }, 100'000'000);  // the relay retries and finds no server
    upstream_ = "unix:" + second;
    EXPECT_TRUE(Drive([&] { return phase == 3; }, 60 * kSecond));
    client.join();
  }

  std::string upstream_;
  std::string logs_;
};

TEST_F(NbdRelayTest, CarriesASessionAcrossAServerCrash) {
  NbdRelayOptions o;
  o.unflushed_bytes_max = 64 << 10;  // small: the relay flushes on its own now and then
  auto relay = StartRelay(o);

  // A real client through the relay first (qemu-io: GO, and options the server refuses).
  ChildResult r = RunChild({"qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "flush",
                            "nbd+unix:///" + std::string(kExport) + "?socket=" + relay_path()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(PoolRead(0, 64 << 10), std::string(64 << 10, 0x5a));

  // Writes answered but never flushed by the client, then the crash (what no flush
  // covered may be gone from the pool); requests sent meanwhile wait in the relay.
  CrashUnderClient(
      [&](RawClient& c) {
        ASSERT_TRUE(c.Open(kExport));
        for (int i = 0; i < 40; ++i) {
          ASSERT_EQ(c.Call(nbd::kCmdWrite, (4 << 20) + i * 8192, 4096, Pattern('a' + i % 20, 4096)), 0u);
        }
      },
      [&](RawClient& c) {
        for (int i = 0; i < 8; ++i) {
          ASSERT_EQ(c.Call(nbd::kCmdWrite, (8 << 20) + i * 4096, 4096, Pattern('A' + i, 4096)), 0u);
        }
        ASSERT_EQ(c.Call(nbd::kCmdFlush, 0, 0), 0u);
        std::string data;
        for (int i = 0; i < 40; ++i) {
          ASSERT_EQ(c.Call(nbd::kCmdRead, (4 << 20) + i * 8192, 4096, {}, &data), 0u);
          EXPECT_TRUE(data == Pattern('a' + i % 20, 4096)) << "write " << i << " lost";
        }
        for (int i = 0; i < 8; ++i) {
          ASSERT_EQ(c.Call(nbd::kCmdRead, (8 << 20) + i * 4096, 4096, {}, &data), 0u);
          EXPECT_TRUE(data == Pattern('A' + i, 4096));
        }
      });
  const NbdRelayStats st = relay->stats();
  EXPECT_EQ(st.reconnects, 1u);
  EXPECT_GE(st.relay_flushes, 1u);
  EXPECT_GE(st.replayed, 8u);  // at least the writes sent while the server was away
  EXPECT_NE(logs_.find("lost its server"), std::string::npos) << logs_;
  EXPECT_NE(logs_.find("reconnected after"), std::string::npos) << logs_;
}

TEST_F(NbdRelayTest, ReplaysAnExportNameHandshakeWithZeroes) {
  auto relay = StartRelay();
  CrashUnderClient(
      [&](RawClient& c) {
        ASSERT_TRUE(c.OpenByExportNameWithZeroes(kExport, kVsdBytes));
        ASSERT_EQ(c.Call(nbd::kCmdWrite, 8192, 4096, Pattern('x', 4096)), 0u);
      },
      [&](RawClient& c) {
        std::string data;
        ASSERT_EQ(c.Call(nbd::kCmdRead, 8192, 4096, {}, &data), 0u);
        EXPECT_TRUE(data == Pattern('x', 4096));
      });
  EXPECT_EQ(relay->stats().reconnects, 1u);
}

TEST_F(NbdRelayTest, ClosesItsClientWhenNoServerComesBack) {
  NbdRelayOptions o;
  o.reconnect_timeout_ns = 300'000'000;
  auto relay = StartRelay(o);
  upstream_ = "";
  // No server at all: the client is closed at once.
  RunClient([&] {
    RawClient c(relay_path());
    ASSERT_TRUE(c.connected());
    EXPECT_TRUE(c.SeesClose());
  });
  // A server that goes away for good: the waiting request ends with the connection.
  upstream_ = "unix:" + socket_path_;
  std::atomic<int> phase{0};
  std::thread client([&] {
    RawClient c(relay_path());
    ASSERT_TRUE(c.Open(kExport));
    ASSERT_EQ(c.Call(nbd::kCmdWrite, 0, 4096, Pattern('z', 4096)), 0u);
    phase = 1;
    while (phase != 2) usleep(1000);
    EXPECT_FALSE(c.Call(nbd::kCmdRead, 0, 4096).has_value());
    phase = 3;
  });
  ASSERT_TRUE(Drive([&] { return phase == 1; }, 60 * kSecond));
  upstream_ = "";
  server_.reset();
  phase = 2;
  EXPECT_TRUE(Drive([&] { return phase == 3; }, 20 * kSecond));
  client.join();
  EXPECT_EQ(relay->open_sessions(), 0);
}

// Seeded garbage through the relay (see GarbageSessions); the relay also keeps serving
// and leaves no session behind.
TEST_F(NbdRelayTest, MalformedStreamsEndOnlyTheirOwnSessions) {
  auto relay = StartRelay();
  std::mt19937_64 rng(20261122);
  for (int batch = 0; batch < 20; ++batch) {
    ASSERT_NO_FATAL_FAILURE(GarbageSessions(relay_path(), 50, &rng));
    ASSERT_TRUE(Drive([&] {
      return relay->open_sessions() == 0 && server_->Stats().connections_active == 0;
    }, 10 * kSecond)) << "after batch " << batch << ": " << relay->open_sessions() << " sessions, "
                      << server_->Stats().connections_active << " server connections left";
  }
  RunClient([&] {
    RawClient c(relay_path());
    ASSERT_TRUE(c.Open(kExport));
    ASSERT_EQ(c.Call(nbd::kCmdWrite, 1 << 20, 4096, Pattern('k', 4096)), 0u);
    std::string data;
    ASSERT_EQ(c.Call(nbd::kCmdRead, 1 << 20, 4096, {}, &data), 0u);
    EXPECT_TRUE(data == Pattern('k', 4096));
  });
  EXPECT_EQ(relay->stats().sessions, 20u * 50u + 1u) << logs_;
}

}  // namespace
}  // namespace scribe
