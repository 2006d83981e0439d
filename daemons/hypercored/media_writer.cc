#include "daemons/hypercored/media_writer.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace hypercore::daemon {
namespace {

class QemuImgWriter final : public MediaWriter {
 public:
  QemuImgWriter(scribe::RealLoop* loop, QemuImgWriterOptions options)
      : loop_(loop), options_(std::move(options)) {}

  ~QemuImgWriter() override {
    *alive_ = false;
    for (auto& [id, child] : children_) {
      child->watch.reset();
      kill(child->pid, SIGKILL);
      waitpid(child->pid, nullptr, 0);
      close(child->stderr_fd);
    }
  }

  void Write(const std::string& path, const std::string& nbd_uri,
             std::function<void(absl::Status)> done) override {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      return Reply(std::move(done), absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno))));
    }
    std::vector<std::string> args = {options_.qemu_img, "convert", "-n", "-q", "-f", "raw",
                                     "-O",              "raw",     path, nbd_uri};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // Only async-signal-safe calls between fork and exec: the message is made here.
    const std::string exec_failed = absl::StrCat("cannot run ", args[0], "\n");
    const pid_t pid = fork();
    if (pid < 0) {
      close(fds[0]);
      close(fds[1]);
      return Reply(std::move(done), absl::InternalError(absl::StrCat("fork: ", std::strerror(errno))));
    }
    if (pid == 0) {
      // The child: stdout and stderr into the pipe, stdin from /dev/null.
      const int devnull = open("/dev/null", O_RDONLY);
      if (devnull >= 0) dup2(devnull, STDIN_FILENO);
      dup2(fds[1], STDOUT_FILENO);
      dup2(fds[1], STDERR_FILENO);
      execv(argv[0], argv.data());
      (void)!write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
      _exit(127);
    }
    close(fds[1]);
    fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
    const uint64_t id = next_id_++;
    auto child = std::make_unique<Child>();
    child->pid = pid;
    child->stderr_fd = fds[0];
    child->done = std::move(done);
    child->watch = loop_->WatchReadable(fds[0], [this, id] { OnReadable(id); });
    children_[id] = std::move(child);
  }

 private:
  struct Child {
    pid_t pid = -1;
    int stderr_fd = -1;
    std::string output;
    std::function<void(absl::Status)> done;
    std::unique_ptr<scribe::RealLoop::FdWatch> watch;
  };

  void Reply(std::function<void(absl::Status)> done, absl::Status status) {
    loop_->Post([alive = alive_, done = std::move(done), status] {
      if (*alive) done(status);
    });
  }

  void OnReadable(uint64_t id) {
    auto it = children_.find(id);
    if (it == children_.end()) return;
    Child& c = *it->second;
    char buf[4096];
    for (;;) {
      const ssize_t n = read(c.stderr_fd, buf, sizeof(buf));
      if (n > 0) {
        if (c.output.size() < options_.stderr_bytes_max) {
          c.output.append(buf, std::min<size_t>(n, options_.stderr_bytes_max - c.output.size()));
        }
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // more later
      break;  // EOF (the child exited or closed its output) or a read error
    }
    // The child closed its output: it has exited or is about to.
    std::unique_ptr<Child> child = std::move(it->second);
    children_.erase(it);
    // A watch may not be destroyed from inside its own callback: drop it (and then the
    // fd it watches) on the next loop turn.
    struct Closer {
      std::unique_ptr<scribe::RealLoop::FdWatch> watch;
      int fd = -1;
      ~Closer() {
        watch.reset();
        close(fd);
      }
    };
    auto closer = std::make_shared<Closer>();
    closer->watch = std::move(child->watch);
    closer->fd = child->stderr_fd;
    loop_->Post([closer] {});
    int wstatus = 0;
    while (waitpid(child->pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    absl::Status result;
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
      const std::string how = WIFEXITED(wstatus) ? absl::StrCat("exit status ", WEXITSTATUS(wstatus))
                                                 : absl::StrCat("signal ", WTERMSIG(wstatus));
      std::string out(absl::StripAsciiWhitespace(child->output));
      result = absl::InternalError(absl::StrCat("qemu-img convert failed (", how, ")",
                                                out.empty() ? "" : ": ", out));
    }
    Reply(std::move(child->done), result);
  }

  scribe::RealLoop* loop_;
  QemuImgWriterOptions options_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Child>> children_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<MediaWriter> NewQemuImgWriter(scribe::RealLoop* loop, QemuImgWriterOptions options) {
  return std::make_unique<QemuImgWriter>(loop, std::move(options));
}

}  // namespace hypercore::daemon
