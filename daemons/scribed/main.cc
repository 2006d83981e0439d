// scribed: one storage node of the cluster (see node.h). Flags:
//   --node-id=N                 this node's id (>= 1, unique)
//   --etcd=URL[,URL...]         client URL of each etcd member (default http://127.0.0.1:2379)
//   --backplane=HOST:PORT       DiskService address (default 127.0.0.1:0)
//   --admin=HOST:PORT           ScribeAdmin address for the CLI (default 127.0.0.1:7001)
//   --nbd-socket=PATH           local NBD exports (default /run/scribe/nbd-<id>.sock)
//   --nbd-tcp=HOST:PORT         the owner's NBD for other nodes (default 127.0.0.1:0)
//   --disk=PATH[:SIZE[:ssd|hdd]] a disk (repeatable); SIZE like 10G creates a sparse file
//   --cluster-min-nodes=N       nodes needed to format a new pool (default 3)
//   --lease-ttl-ms=MS           etcd lease of the node (default 3000)
//   --evict-grace-ms=MS         a node away this long is evicted (default 30000)
//   --metadata-mib=N            metadata region per disk (default 64)
//   --io-timeout-ms=MS          a disk operation not answered in this time fails (30000)
//   --isolate-file=PATH         fault injection: while PATH exists the node is cut off
//   --no-self-fence             tests only: a deposed owner keeps its pool open
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "daemons/scribed/node.h"
#include "scribe/real_env.h"

namespace {

volatile sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

bool ParseSize(const std::string& text, uint64_t* out) {
  if (text.empty()) return false;
  uint64_t mult = 1;
  std::string digits = text;
  switch (text.back()) {
    case 'K': case 'k': mult = 1ull << 10; break;
    case 'M': case 'm': mult = 1ull << 20; break;
    case 'G': case 'g': mult = 1ull << 30; break;
    case 'T': case 't': mult = 1ull << 40; break;
    default: break;
  }
  if (mult != 1) digits.pop_back();
  uint64_t v = 0;
  if (!absl::SimpleAtoi(digits, &v)) return false;
  *out = v * mult;
  return true;
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "scribed: %s\nusage: scribed --node-id=N --disk=PATH[:SIZE[:ssd|hdd]]... "
                       "[--etcd=URL[,URL...]] [--backplane=H:P] [--admin=H:P] [--nbd-socket=PATH] "
                       "[--nbd-tcp=H:P] [--cluster-min-nodes=N] [--lease-ttl-ms=MS] "
                       "[--evict-grace-ms=MS] [--metadata-mib=N] [--io-timeout-ms=MS] "
                       "[--isolate-file=PATH] [--no-self-fence]\n",
               why.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using scribe::daemon::DiskConfig;
  scribe::daemon::NodeConfig config;
  config.admin = "127.0.0.1:7001";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string key = arg, value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      key = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    int64_t n = 0;
    auto number = [&](int64_t min) {
      return absl::SimpleAtoi(value, &n) && n >= min;
    };
    if (key == "--node-id" && number(1)) {
      config.node_id = static_cast<uint64_t>(n);
    } else if (key == "--etcd" && !value.empty()) {
      config.etcd = value;
    } else if (key == "--backplane" && !value.empty()) {
      config.backplane = value;
    } else if (key == "--admin" && !value.empty()) {
      config.admin = value;
    } else if (key == "--nbd-socket" && !value.empty()) {
      config.nbd_socket = value;
    } else if (key == "--nbd-tcp" && !value.empty()) {
      config.nbd_tcp = value;
    } else if (key == "--disk" && !value.empty()) {
      std::vector<std::string> parts = absl::StrSplit(value, ':');
      DiskConfig d;
      d.path = parts[0];
      if (parts.size() > 1 && !ParseSize(parts[1], &d.size_bytes)) return Usage("bad disk size in " + arg);
      if (parts.size() > 2) {
        if (parts[2] == "ssd") {
          d.tier = scribe::Tier::kSsd;
        } else if (parts[2] != "hdd") {
          return Usage("disk tier must be ssd or hdd in " + arg);
        }
      }
      if (parts.size() > 3) return Usage("too many fields in " + arg);
      config.disks.push_back(d);
    } else if (key == "--cluster-min-nodes" && number(1)) {
      config.cluster_min_nodes = static_cast<int>(n);
    } else if (key == "--lease-ttl-ms" && number(500)) {
      config.lease_ttl_ms = n;
    } else if (key == "--evict-grace-ms" && number(0)) {
      config.evict_grace_ms = n;
    } else if (key == "--metadata-mib" && number(1)) {
      config.pool_options.metadata_bytes = static_cast<uint64_t>(n) << 20;
    } else if (key == "--io-timeout-ms" && number(1)) {
      config.pool_options.io_timeout_ns = n * 1'000'000;
    } else if (key == "--isolate-file" && !value.empty()) {
      config.isolate_file = value;
    } else if (key == "--no-self-fence" && eq == std::string::npos) {
      config.self_fence = false;
    } else {
      return Usage("bad argument " + arg);
    }
  }
  if (config.node_id == 0) return Usage("--node-id is required");
  if (config.nbd_socket.empty()) config.nbd_socket = absl::StrFormat("/run/scribe/nbd-%d.sock", config.node_id);

  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  auto loop = scribe::RealLoop::Create();
  auto node = scribe::daemon::Node::Start(loop.get(), config);
  if (!node.ok()) {
    std::fprintf(stderr, "scribed: %s\n", std::string(node.status().message()).c_str());
    return 1;
  }
  // Signals interrupt nothing in KJ: poll the flag.
  while (!g_stop) loop->RunUntil([] { return g_stop != 0; }, 200'000'000);
  std::fprintf(stderr, "scribed: stopping (%s)\n", (*node)->Describe().c_str());
  node->reset();
  return 0;
}
