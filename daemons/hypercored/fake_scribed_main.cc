// fake_scribed: the FakeScribed of fake_scribed.h on a TCP port, for the hc3 CLI's
// end-to-end test (a hypercored talks to it as to its local scribed).
//
// Usage: fake_scribed --dir DIR --nbd-socket PATH [--listen HOST:PORT]
//                     [--vsd-bytes-max N] [--calls FILE]
//
// Prints "listening on HOST:PORT" once it serves; appends every ScribeAdmin call it
// receives to FILE as one line "<method> <args...>" (flushed at once); runs until
// SIGTERM or SIGINT.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "daemons/hypercored/fake_scribed.h"
#include "daemons/scribed/admin_test_support.h"

namespace {

std::atomic<bool> stop_requested{false};
void RequestStop(int) { stop_requested.store(true); }

int Usage() {
  std::fprintf(stderr,
               "usage: fake_scribed --dir DIR --nbd-socket PATH [--listen HOST:PORT] [--vsd-bytes-max N] "
               "[--calls FILE]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  hypercore::daemon::testing::FakeScribedOptions options;
  std::string listen = "127.0.0.1:0";
  std::string calls_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return Usage();
    const std::string value = argv[++i];
    if (arg == "--dir") {
      options.dir = value;
    } else if (arg == "--nbd-socket") {
      options.nbd_socket = value;
    } else if (arg == "--listen") {
      listen = value;
    } else if (arg == "--vsd-bytes-max") {
      options.vsd_bytes_max = std::strtoull(value.c_str(), nullptr, 10);
    } else if (arg == "--calls") {
      calls_path = value;
    } else {
      return Usage();
    }
  }
  if (options.dir.empty() || options.nbd_socket.empty()) return Usage();
  struct sigaction action = {};
  action.sa_handler = RequestStop;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto loop = scribe::RealLoop::Create();
  auto fake = hypercore::daemon::testing::FakeScribed::Create(loop.get(), options);
  if (!fake.ok()) {
    std::fprintf(stderr, "fake_scribed: %s\n", fake.status().ToString().c_str());
    return 1;
  }
  FILE* calls = nullptr;
  if (!calls_path.empty()) {
    calls = std::fopen(calls_path.c_str(), "a");
    if (calls == nullptr) {
      std::fprintf(stderr, "fake_scribed: cannot open %s\n", calls_path.c_str());
      return 1;
    }
    (*fake)->SetCallObserver([calls](const std::string& line) {
      std::fprintf(calls, "%s\n", line.c_str());
      std::fflush(calls);
    });
  }
  auto listener = scribe::daemon::testing::CapabilityListener::Create(loop.get(), listen, (*fake)->client());
  if (!listener.ok()) {
    std::fprintf(stderr, "fake_scribed: %s\n", listener.status().ToString().c_str());
    return 1;
  }
  std::printf("listening on %s:%d\n", listen.substr(0, listen.rfind(':')).c_str(), (*listener)->port());
  std::fflush(stdout);
  while (!stop_requested.load()) loop->RunUntil([] { return stop_requested.load(); }, 100'000'000);
  listener->reset();
  fake->reset();
  if (calls != nullptr) std::fclose(calls);
  return 0;
}
