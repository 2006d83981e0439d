// hypercored: the compute daemon of one node (see daemon.h). Flags:
//   --node-id=NAME             this node's name (required; [A-Za-z0-9._-], at most 63)
//   --etcd=URL[,URL...]        client URL of each etcd member (default http://127.0.0.1:2379)
//   --admin=HOST:PORT          the HypercoreAdmin API for hc3 (default 127.0.0.1:7101)
//   --scribe-admin=HOST:PORT   the local scribed's ScribeAdmin (default 127.0.0.1:7001)
//   --scribe-node-id=N         the local scribed's node id (default: found by its admin
//                              address in scribed's cluster view)
//   --nbd-socket=PATH          the local scribed's NBD socket (default: from scribed)
//   --libvirt-uri=URI          default qemu:///system; test:///default in tests
//   --domain-type=kvm|qemu     <domain type> (default kvm; qemu is TCG, no acceleration)
//   --nic-bridge=NAME          NICs join this bridge (default br0, Open vSwitch)
//   --nic-network=NAME         NICs join this libvirt network instead
//   --console-log-dir=DIR      serial consoles to DIR/<vm>.log (default: a pty)
//   --ram-mib=N                RAM offered to VMs (default: host RAM minus 1 GiB)
//   --cpus=N                   CPU threads offered (default: the host's)
//   --lease-ttl-ms=MS          liveness lease TTL (default 3000)
//   --shutdown-timeout-ms=MS   ACPI grace before a stopping VM is forced off (60000)
//   --qemu-img=PATH            copies ISOs into VSDs (default /usr/bin/qemu-img)
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "daemons/hypercored/daemon.h"
#include "scribe/real_env.h"

namespace {

volatile sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

constexpr char kUsage[] =
    "usage: hypercored --node-id=NAME [--etcd=URL[,URL...]] [--admin=H:P] [--scribe-admin=H:P] "
    "[--scribe-node-id=N] [--nbd-socket=PATH] [--libvirt-uri=URI] [--domain-type=kvm|qemu] "
    "[--nic-bridge=NAME | --nic-network=NAME] [--console-log-dir=DIR] [--ram-mib=N] [--cpus=N] "
    "[--lease-ttl-ms=MS] [--shutdown-timeout-ms=MS] [--qemu-img=PATH]\n";

int Usage(const std::string& why) {
  std::fprintf(stderr, "hypercored: %s\n%s", why.c_str(), kUsage);
  return 2;
}

uint64_t HostRamBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  const uint64_t total = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
  // Leave the host 1 GiB (or half of a small host); whole MiB.
  const uint64_t reserve = std::min<uint64_t>(1ull << 30, total / 2);
  return (total - reserve) >> 20 << 20;
}

}  // namespace

int main(int argc, char** argv) {
  hypercore::daemon::DaemonConfig config;
  config.ram_bytes = HostRamBytes();
  config.cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) return Usage("bad argument " + arg + " (flags are --name=value)");
    const std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
    int64_t n = 0;
    auto number = [&](int64_t min) { return absl::SimpleAtoi(value, &n) && n >= min; };
    if (key == "--node-id" && !value.empty()) {
      config.node = value;
    } else if (key == "--etcd" && !value.empty()) {
      config.etcd = value;
    } else if (key == "--admin" && !value.empty()) {
      config.admin = value;
    } else if (key == "--scribe-admin" && !value.empty()) {
      config.scribe_admin = value;
    } else if (key == "--scribe-node-id" && number(1)) {
      config.scribe_node = static_cast<uint64_t>(n);
    } else if (key == "--nbd-socket" && !value.empty() && value[0] == '/') {
      config.nbd_socket = value;
    } else if (key == "--libvirt-uri" && !value.empty()) {
      config.libvirt.uri = value;
    } else if (key == "--domain-type" && (value == "kvm" || value == "qemu")) {
      config.libvirt.domain_type = value;
    } else if (key == "--nic-bridge" && !value.empty()) {
      config.libvirt.nic_mode = hypercore::LibvirtHypervisorOptions::NicMode::kBridge;
      config.libvirt.nic_source = value;
    } else if (key == "--nic-network" && !value.empty()) {
      config.libvirt.nic_mode = hypercore::LibvirtHypervisorOptions::NicMode::kNetwork;
      config.libvirt.nic_source = value;
    } else if (key == "--console-log-dir" && !value.empty()) {
      config.libvirt.console_log_dir = value;
    } else if (key == "--ram-mib" && number(64)) {
      config.ram_bytes = static_cast<uint64_t>(n) << 20;
    } else if (key == "--cpus" && number(1)) {
      config.cpus = static_cast<int>(n);
    } else if (key == "--lease-ttl-ms" && number(1000)) {
      config.lease_ttl_ms = n;
    } else if (key == "--shutdown-timeout-ms" && number(0)) {
      config.shutdown_timeout_ms = n;
    } else if (key == "--qemu-img" && !value.empty()) {
      config.qemu_img = value;
    } else {
      return Usage("bad argument " + arg);
    }
  }
  if (config.node.empty()) return Usage("--node-id is required");

  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  auto loop = scribe::RealLoop::Create();
  auto daemon = hypercore::daemon::Daemon::Start(loop.get(), config);
  if (!daemon.ok()) {
    std::fprintf(stderr, "hypercored: %s\n", daemon.status().ToString().c_str());
    return 1;
  }
  std::printf("listening on port %d\n", (*daemon)->admin_port());
  std::fflush(stdout);
  // Signals interrupt nothing in KJ: poll the flag.
  while (!g_stop) loop->RunUntil([] { return g_stop != 0; }, 200'000'000);
  std::fprintf(stderr, "hypercored: stopping (%s); VMs keep running until the lease expires elsewhere\n",
               (*daemon)->Describe().c_str());
  daemon->reset();
  return 0;
}
