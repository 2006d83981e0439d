// A stand-in for scribed in the `scribe` CLI's tests: the admin service over a pool on
// sparse files in one process (FilePoolBackend), on a loopback TCP port.
//
// Usage: admin_test_server --dir DIR [--listen HOST:PORT] [--nodes N] [--disk-bytes N]
//                          [--prefill BYTES] [--no-pool]
//
// Prints "listening on HOST:PORT" on stdout once it serves, then runs until SIGTERM or
// SIGINT. --prefill creates a VSD named "prefilled" of BYTES (a multiple of 4096) and
// writes all of it (the CLI cannot write data, and a disk failure needs data to
// re-mirror). --no-pool makes it answer as a node that does not run the pool (owner:
// node 2).
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemons/scribed/admin_service.h"
#include "daemons/scribed/admin_test_support.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"

namespace {

std::atomic<bool> stop_requested{false};

void RequestStop(int) { stop_requested.store(true); }

int Usage() {
  std::fprintf(stderr,
               "usage: admin_test_server --dir DIR [--listen HOST:PORT] [--nodes N] "
               "[--disk-bytes N] [--prefill BYTES] [--no-pool]\n");
  return 2;
}

constexpr int64_t kOperationTimeoutNs = 60'000'000'000;

// Creates VSD "prefilled" of `size_bytes` and writes a recognisable pattern over all of it.
absl::Status Prefill(scribe::RealLoop* loop, scribe::Pool* pool, uint64_t size_bytes) {
  std::optional<absl::StatusOr<scribe::VsdId>> vsd;
  pool->CreateVsd(scribe::VsdOptions{"prefilled", size_bytes, 2, 4},
                  [&](absl::StatusOr<scribe::VsdId> r) { vsd = std::move(r); });
  loop->RunUntil([&] { return vsd.has_value(); }, kOperationTimeoutNs);
  if (!vsd) return absl::DeadlineExceededError("create did not complete");
  if (!vsd->ok()) return vsd->status();
  std::vector<char> data(size_bytes);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + (i >> 12) + 1);
  std::optional<absl::Status> written;
  pool->Write(**vsd, 0, data.size(), data.data(), /*fua=*/true,
              [&](absl::Status st) { written = std::move(st); });
  loop->RunUntil([&] { return written.has_value(); }, kOperationTimeoutNs);
  if (!written) return absl::DeadlineExceededError("write did not complete");
  return *written;
}

}  // namespace

int main(int argc, char** argv) {
  scribe::daemon::testing::FilePoolOptions options;
  std::string listen = "127.0.0.1:0";
  bool no_pool = false;
  uint64_t prefill_bytes = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--dir" && has_value) {
      options.dir = argv[++i];
    } else if (arg == "--listen" && has_value) {
      listen = argv[++i];
    } else if (arg == "--nodes" && has_value) {
      options.nodes = std::atoi(argv[++i]);
    } else if (arg == "--disk-bytes" && has_value) {
      options.disk_bytes = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--prefill" && has_value) {
      prefill_bytes = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--no-pool") {
      no_pool = true;
    } else {
      return Usage();
    }
  }
  if (options.dir.empty()) return Usage();

  struct sigaction action = {};
  action.sa_handler = RequestStop;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);

  std::unique_ptr<scribe::RealLoop> loop = scribe::RealLoop::Create();
  auto backend = scribe::daemon::testing::FilePoolBackend::Create(loop.get(), options);
  if (!backend.ok()) {
    std::fprintf(stderr, "admin_test_server: %s\n", backend.status().ToString().c_str());
    return 1;
  }
  if (prefill_bytes > 0) {
    absl::Status st = Prefill(loop.get(), (*backend)->real_pool(), prefill_bytes);
    if (!st.ok()) {
      std::fprintf(stderr, "admin_test_server: prefill: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  if (no_pool) {
    (*backend)->set_serving_pool(false);
    auto& cluster = (*backend)->cluster();
    cluster.owner_node = 2;
    for (auto& node : cluster.nodes) node.owner = node.id == 2;
  }
  auto listener = scribe::daemon::testing::CapabilityListener::Create(
      loop.get(), listen, scribe::daemon::NewAdminService(loop.get(), backend->get()));
  if (!listener.ok()) {
    std::fprintf(stderr, "admin_test_server: %s\n", listener.status().ToString().c_str());
    return 1;
  }
  const std::string host = listen.substr(0, listen.rfind(':'));
  std::printf("listening on %s:%d\n", host.c_str(), (*listener)->port());
  std::fflush(stdout);

  // Signals do not wake the loop; a short timeout bounds how late the stop is noticed.
  constexpr int64_t kStopCheckNs = 100'000'000;
  while (!stop_requested.load()) {
    loop->RunUntil([] { return stop_requested.load(); }, kStopCheckNs);
  }
  return 0;
}
