#include "libscribe/meta/etcd_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "scribe/meta_store.h"

namespace scribe {

namespace {

std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "";
  dirs += ":/usr/local/bin:/usr/bin:/bin";
  for (const auto& dir : absl::StrSplit(dirs, ':', absl::SkipEmpty())) {
    std::string candidate = std::string(dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::string Tail(const std::string& path, size_t bytes) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > bytes ? s.substr(s.size() - bytes) : s;
}

}  // namespace

absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError("bind failed");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

EtcdProcess::EtcdProcess(RealLoop* loop, std::string dir, std::string name)
    : loop_(loop), dir_(std::move(dir)), log_path_(dir_ + "/etcd.log"), name_(std::move(name)) {}

EtcdProcess::~EtcdProcess() { Kill(); }

absl::StatusOr<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(RealLoop* loop,
                                                                const std::string& dir) {
  auto cluster = StartCluster(loop, dir, 1);
  if (!cluster.ok()) return cluster.status();
  return std::move((*cluster)[0]);
}

absl::StatusOr<std::vector<std::unique_ptr<EtcdProcess>>> EtcdProcess::StartCluster(
    RealLoop* loop, const std::string& dir, int members) {
  std::vector<std::unique_ptr<EtcdProcess>> etcds;
  std::vector<int> ports;
  std::string initial_cluster;
  for (int i = 0; i < members; ++i) {
    // A single member keeps its files in `dir` itself.
    const std::string member_dir = members == 1 ? dir : absl::StrFormat("%s/m%d", dir, i);
    if (members > 1 && mkdir(member_dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::InternalError("cannot create " + member_dir);
    }
    etcds.emplace_back(new EtcdProcess(loop, member_dir, absl::StrFormat("m%d", i)));
    for (int* port : {&etcds.back()->client_port_, &etcds.back()->peer_port_}) {
      auto p = FreeLoopbackPort();
      if (!p.ok()) return p.status();
      if (std::find(ports.begin(), ports.end(), *p) != ports.end()) {
        return absl::InternalError("got the same port twice");
      }
      ports.push_back(*p);
      *port = *p;
    }
    absl::StrAppendFormat(&initial_cluster, "%sm%d=http://127.0.0.1:%d", i == 0 ? "" : ",", i,
                          etcds.back()->peer_port_);
  }
  for (auto& etcd : etcds) {
    etcd->initial_cluster_ = initial_cluster;
    if (absl::Status st = etcd->Spawn(); !st.ok()) return st;
  }
  // Each serves once a leader is elected, which needs a majority started.
  for (auto& etcd : etcds) {
    if (absl::Status st = etcd->WaitServing(); !st.ok()) return st;
  }
  return etcds;
}

std::string EtcdProcess::address() const { return absl::StrFormat("127.0.0.1:%d", client_port_); }
std::string EtcdProcess::endpoint() const { return "http://" + address(); }

absl::Status EtcdProcess::Spawn() {
  const std::string binary = FindOnPath("etcd");
  if (binary.empty()) return absl::NotFoundError("no etcd on PATH (install etcd-server)");
  const std::string peer_url = absl::StrFormat("http://127.0.0.1:%d", peer_port_);
  std::vector<std::string> args = {
      binary,
      "--name=" + name_,
      "--data-dir=" + dir_ + "/data",
      "--listen-client-urls=" + endpoint(),
      "--advertise-client-urls=" + endpoint(),
      "--listen-peer-urls=" + peer_url,
      "--initial-advertise-peer-urls=" + peer_url,
      "--initial-cluster=" + initial_cluster_,
      "--initial-cluster-token=etcd-process",
      "--heartbeat-interval=50",
      "--election-timeout=500",
  };
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError("cannot open " + log_path_);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    // Dies with the test, even when the test crashes.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  pid_ = pid;
  return absl::OkStatus();
}

absl::Status EtcdProcess::WaitServing() {
  EtcdMetaStoreOptions options;
  options.endpoint = endpoint();
  options.request_timeout_ms = 500;
  auto store = EtcdMetaStore::Create(loop_, options);
  if (!store.ok()) return store.status();
  const int64_t deadline_ns = loop_->NowNanos() + 30'000'000'000;
  absl::Status last;
  while (loop_->NowNanos() < deadline_ns) {
    bool done = false;
    (*store)->Get("/etcd-process/probe", [&](absl::StatusOr<std::optional<KeyValue>> r) {
      last = r.status();
      done = true;
    });
    loop_->RunUntil([&] { return done; }, 10'000'000'000);
    if (done && last.ok()) return absl::OkStatus();
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError("etcd exited at start; its log ends:\n" + Tail(log_path_, 3000));
    }
    bool slept = false;
    loop_->RunAfter(100'000'000, [&] { slept = true; });
    loop_->RunUntil([&] { return slept; }, 1'000'000'000);
  }
  return absl::DeadlineExceededError(
      absl::StrFormat("etcd at %s not serving after 30 s (%s); its log ends:\n%s", address(),
                      last.ToString(), Tail(log_path_, 3000)));
}

void EtcdProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

absl::Status EtcdProcess::Restart() {
  Kill();
  if (absl::Status st = Spawn(); !st.ok()) return st;
  return WaitServing();
}

}  // namespace scribe
