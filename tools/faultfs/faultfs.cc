// faultfs: a FUSE filesystem that serves the files of a backing directory and injects
// disk faults below whatever opens them (scribed's disks, opened O_DIRECT and driven by
// libaio). This kernel has no device-mapper (no dm-flakey, dm-delay) and no nbd module;
// a FUSE file opened with direct_io takes O_DIRECT libaio I/O and hands the faults it
// returns to io_submit's caller.
//
//   faultfs BACKING_DIR MOUNTPOINT [-f] [other FUSE options]
//
// The mount holds the backing directory's regular files (flat) and a control file,
// `.faults`. Writing one line to it sets the fault mode for data reads and writes
// (fsync, open, stat are never faulted):
//
//   ok                    no faults
//   eio [N] [reads|writes]  fail with EIO (the next N only; all of them without N)
//   delay MS              answer every read and write MS milliseconds late
//   hang                  answer no read or write until the mode changes
//   corrupt               reads return data with one byte of every 4 KiB flipped
//
// Reading `.faults` gives the mode and counters: `mode=... reads=N writes=N faults=N`.
#define FUSE_USE_VERSION 31

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse3/fuse.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

namespace {

constexpr const char* kControl = "/.faults";

enum class Mode { kOk, kEio, kDelay, kHang, kCorrupt };

struct State {
  std::string backing;
  std::mutex mu;
  std::condition_variable changed;
  Mode mode = Mode::kOk;
  long eio_left = -1;  // kEio: faults left (-1: every one)
  bool eio_reads = true, eio_writes = true;
  long delay_ms = 0;
  unsigned long reads = 0, writes = 0, faults = 0;
  uint64_t generation = 0;  // bumped at every mode change (wakes hung operations)
};

State* state() { return static_cast<State*>(fuse_get_context()->private_data); }

std::string Backing(const char* path) { return state()->backing + path; }

std::string Describe(const State& s) {
  std::ostringstream o;
  o << "mode=";
  switch (s.mode) {
    case Mode::kOk: o << "ok"; break;
    case Mode::kEio:
      o << "eio";
      if (s.eio_left >= 0) o << "(" << s.eio_left << " left)";
      if (!s.eio_reads) o << "(writes)";
      if (!s.eio_writes) o << "(reads)";
      break;
    case Mode::kDelay: o << "delay(" << s.delay_ms << "ms)"; break;
    case Mode::kHang: o << "hang"; break;
    case Mode::kCorrupt: o << "corrupt"; break;
  }
  o << " reads=" << s.reads << " writes=" << s.writes << " faults=" << s.faults << "\n";
  return o.str();
}

// Applies the mode before a data operation: returns 0 to go on, or -EIO; *corrupt
// is set when a read must be corrupted.
int BeforeIo(bool is_write, bool* corrupt) {
  State* s = state();
  std::unique_lock<std::mutex> lock(s->mu);
  (is_write ? s->writes : s->reads)++;
  *corrupt = false;
  for (;;) {
    switch (s->mode) {
      case Mode::kOk:
        return 0;
      case Mode::kEio:
        if ((is_write && !s->eio_writes) || (!is_write && !s->eio_reads)) return 0;
        if (s->eio_left == 0) return 0;
        if (s->eio_left > 0 && --s->eio_left == 0) s->mode = Mode::kOk;
        s->faults++;
        return -EIO;
      case Mode::kDelay: {
        const long ms = s->delay_ms;
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        return 0;
      }
      case Mode::kHang: {
        s->faults++;
        const uint64_t gen = s->generation;
        s->changed.wait(lock, [&] { return s->generation != gen; });
        continue;  // the new mode applies
      }
      case Mode::kCorrupt:
        if (!is_write) {
          s->faults++;
          *corrupt = true;
        }
        return 0;
    }
  }
}

int Control(const char* buf, size_t size) {
  std::string line(buf, size);
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  std::istringstream in(line);
  std::string cmd;
  in >> cmd;
  State* s = state();
  std::lock_guard<std::mutex> lock(s->mu);
  if (cmd == "ok") {
    s->mode = Mode::kOk;
  } else if (cmd == "eio") {
    s->mode = Mode::kEio;
    s->eio_left = -1;
    s->eio_reads = s->eio_writes = true;
    std::string arg;
    while (in >> arg) {
      if (arg == "reads") {
        s->eio_writes = false;
      } else if (arg == "writes") {
        s->eio_reads = false;
      } else {
        char* end = nullptr;
        const long n = std::strtol(arg.c_str(), &end, 10);
        if (*end != '\0' || n <= 0) return -EINVAL;
        s->eio_left = n;
      }
    }
  } else if (cmd == "delay") {
    long ms = -1;
    if (!(in >> ms) || ms < 0) return -EINVAL;
    s->mode = Mode::kDelay;
    s->delay_ms = ms;
  } else if (cmd == "hang") {
    s->mode = Mode::kHang;
  } else if (cmd == "corrupt") {
    s->mode = Mode::kCorrupt;
  } else {
    return -EINVAL;
  }
  s->generation++;
  s->changed.notify_all();
  return static_cast<int>(size);
}

int GetAttr(const char* path, struct stat* st, struct fuse_file_info*) {
  if (strcmp(path, kControl) == 0) {
    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFREG | 0644;
    st->st_nlink = 1;
    st->st_size = 4096;
    return 0;
  }
  return lstat(Backing(path).c_str(), st) == 0 ? 0 : -errno;
}

int ReadDir(const char* path, void* buf, fuse_fill_dir_t fill, off_t, struct fuse_file_info*,
            enum fuse_readdir_flags) {
  if (strcmp(path, "/") != 0) return -ENOENT;
  DIR* d = opendir(state()->backing.c_str());
  if (d == nullptr) return -errno;
  fill(buf, ".", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  fill(buf, "..", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  fill(buf, kControl + 1, nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    fill(buf, e->d_name, nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  }
  closedir(d);
  return 0;
}

int OpenFlags(int flags) { return flags & ~(O_DIRECT | O_CREAT | O_EXCL | O_TRUNC); }

int Open(const char* path, struct fuse_file_info* fi) {
  fi->direct_io = 1;  // no page cache: every read and write reaches us (and O_DIRECT works)
  if (strcmp(path, kControl) == 0) {
    fi->fh = static_cast<uint64_t>(-1);
    return 0;
  }
  const int fd = open(Backing(path).c_str(), OpenFlags(fi->flags));
  if (fd < 0) return -errno;
  fi->fh = static_cast<uint64_t>(fd);
  return 0;
}

int Create(const char* path, mode_t mode, struct fuse_file_info* fi) {
  if (strcmp(path, kControl) == 0) return -EEXIST;
  fi->direct_io = 1;
  const int fd = open(Backing(path).c_str(), OpenFlags(fi->flags) | O_CREAT, mode);
  if (fd < 0) return -errno;
  fi->fh = static_cast<uint64_t>(fd);
  return 0;
}

int Read(const char* path, char* buf, size_t size, off_t off, struct fuse_file_info* fi) {
  if (fi->fh == static_cast<uint64_t>(-1)) {
    State* s = state();
    std::string text;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      text = Describe(*s);
    }
    if (static_cast<size_t>(off) >= text.size()) return 0;
    const size_t n = std::min(size, text.size() - static_cast<size_t>(off));
    memcpy(buf, text.data() + off, n);
    return static_cast<int>(n);
  }
  bool corrupt = false;
  if (const int rc = BeforeIo(false, &corrupt); rc != 0) return rc;
  const ssize_t n = pread(static_cast<int>(fi->fh), buf, size, off);
  if (n < 0) return -errno;
  if (corrupt) {
    for (ssize_t i = 0; i < n; i += 4096) buf[i] ^= 0x5a;
  }
  return static_cast<int>(n);
}

int Write(const char* path, const char* buf, size_t size, off_t off, struct fuse_file_info* fi) {
  if (fi->fh == static_cast<uint64_t>(-1)) return Control(buf, size);
  bool corrupt = false;
  if (const int rc = BeforeIo(true, &corrupt); rc != 0) return rc;
  const ssize_t n = pwrite(static_cast<int>(fi->fh), buf, size, off);
  return n < 0 ? -errno : static_cast<int>(n);
}

int Truncate(const char* path, off_t size, struct fuse_file_info* fi) {
  if (strcmp(path, kControl) == 0) return 0;
  const int rc = fi != nullptr && fi->fh != static_cast<uint64_t>(-1)
                     ? ftruncate(static_cast<int>(fi->fh), size)
                     : truncate(Backing(path).c_str(), size);
  return rc == 0 ? 0 : -errno;
}

int Fsync(const char*, int datasync, struct fuse_file_info* fi) {
  if (fi->fh == static_cast<uint64_t>(-1)) return 0;
  const int fd = static_cast<int>(fi->fh);
  return (datasync ? fdatasync(fd) : fsync(fd)) == 0 ? 0 : -errno;
}

int Fallocate(const char*, int mode, off_t off, off_t len, struct fuse_file_info* fi) {
  if (fi->fh == static_cast<uint64_t>(-1)) return -EOPNOTSUPP;
  return fallocate(static_cast<int>(fi->fh), mode, off, len) == 0 ? 0 : -errno;
}

int Release(const char*, struct fuse_file_info* fi) {
  if (fi->fh != static_cast<uint64_t>(-1)) close(static_cast<int>(fi->fh));
  return 0;
}

int Unlink(const char* path) {
  if (strcmp(path, kControl) == 0) return -EPERM;
  return unlink(Backing(path).c_str()) == 0 ? 0 : -errno;
}

int StatFs(const char*, struct statvfs* st) {
  return statvfs(state()->backing.c_str(), st) == 0 ? 0 : -errno;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT [FUSE options]\n", argv[0]);
    return 2;
  }
  char* real = realpath(argv[1], nullptr);
  if (real == nullptr) {
    std::perror(argv[1]);
    return 2;
  }
  auto* s = new State;
  s->backing = real;
  free(real);
  struct fuse_operations ops = {};
  ops.getattr = GetAttr;
  ops.readdir = ReadDir;
  ops.open = Open;
  ops.create = Create;
  ops.read = Read;
  ops.write = Write;
  ops.truncate = Truncate;
  ops.fsync = Fsync;
  ops.fallocate = Fallocate;
  ops.release = Release;
  ops.unlink = Unlink;
  ops.statfs = StatFs;
  // argv without the backing directory: fuse_main takes the mount point and options.
  for (int i = 1; i + 1 < argc; ++i) argv[i] = argv[i + 1];
  return fuse_main(argc - 1, argv, &ops, s);
}
