// A real etcd run as a child process, for tests: a single member or a cluster of several,
// free loopback ports, data in a given directory, killed (SIGKILL) when this object goes
// or the test process dies.
#ifndef SCRIBE_META_ETCD_PROCESS_H_
#define SCRIBE_META_ETCD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "scribe/real_env.h"

namespace scribe {

// A loopback port nothing listens on right now (the kernel's pick for an ephemeral
// bind): connecting to it is refused.
absl::StatusOr<int> FreeLoopbackPort();

class EtcdProcess {
 public:
  // Starts etcd (found on PATH) with its data and log under `dir`, and waits until it
  // serves linearizable reads (it has elected itself leader). Heartbeat 50 ms and
  // election timeout 500 ms make its minimum lease TTL 1 s.
  static absl::StatusOr<std::unique_ptr<EtcdProcess>> Start(RealLoop* loop, const std::string& dir);
  // Starts `members` etcds forming one cluster, member i with its data under dir/m<i>,
  // and waits until each serves.
  static absl::StatusOr<std::vector<std::unique_ptr<EtcdProcess>>> StartCluster(
      RealLoop* loop, const std::string& dir, int members);
  ~EtcdProcess();

  // SIGKILL, as a crash.
  void Kill();
  // Starts it again on the same ports and data, and waits until it serves.
  absl::Status Restart();

  std::string address() const;   // "127.0.0.1:PORT"
  std::string endpoint() const;  // "http://127.0.0.1:PORT"
  const std::string& log_path() const { return log_path_; }

 private:
  EtcdProcess(RealLoop* loop, std::string dir, std::string name);
  absl::Status Spawn();
  absl::Status WaitServing();

  RealLoop* loop_;
  std::string dir_;
  std::string log_path_;
  std::string name_;
  std::string initial_cluster_;  // name=peer URL of every member
  int client_port_ = 0;
  int peer_port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace scribe

#endif  // SCRIBE_META_ETCD_PROCESS_H_
