#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "scribe/env.h"
#include "scribe/status.h"

namespace scribe {

uint64_t Random::Uniform(uint64_t n) {
  SCRIBE_CHECK(n > 0);
  // Rejection sampling keeps the distribution exactly uniform.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  for (;;) {
    uint64_t v = Next64();
    if (v < limit) return v % n;
  }
}

bool Random::Bernoulli(double p) {
  if (p <= 0) return false;
  if (p >= 1) return true;
  return static_cast<double>(Next64() >> 11) * 0x1.0p-53 < p;
}

absl::Status BlockDevice::CheckRange(uint64_t offset_bytes, size_t length_bytes,
                                     const void* buf) const {
  if (offset_bytes % kSectorBytes != 0 || length_bytes % kSectorBytes != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "I/O at offset %d length %d is not aligned to %d-byte sectors", offset_bytes,
        length_bytes, kSectorBytes));
  }
  if (buf != nullptr && reinterpret_cast<uintptr_t>(buf) % kBufferAlignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("I/O buffer is not aligned to %d bytes", kBufferAlignment));
  }
  if (offset_bytes > size_bytes() || length_bytes > size_bytes() - offset_bytes) {
    return absl::OutOfRangeError(absl::StrFormat(
        "I/O [%d, +%d) is beyond the device's %d bytes", offset_bytes, length_bytes,
        size_bytes()));
  }
  return absl::OkStatus();
}

void BlockDevice::WriteDurable(uint64_t offset_bytes, size_t length_bytes, const void* buf,
                               Callback done) {
  Write(offset_bytes, length_bytes, buf, [this, done = std::move(done)](absl::Status st) {
    if (!st.ok()) return done(st);
    Flush(done);
  });
}

namespace {

// Recycled aligned buffers of 1..kCachedPagesMax pages, per thread and size, up to
// kCachedBytesMax in all: aligned_alloc of a page splits a heap chunk, and freeing it
// merges them again, on every request otherwise.
constexpr size_t kPageBytes = BlockDevice::kBufferAlignment;
constexpr size_t kCachedPagesMax = 256;  // 1 MiB
constexpr size_t kCachedBytesMax = 16u << 20;

struct BufferCache {
  std::vector<uint8_t*> free[kCachedPagesMax + 1];
  size_t bytes = 0;
  ~BufferCache() {
    for (auto& list : free) {
      for (uint8_t* p : list) std::free(p);
    }
  }
};
thread_local BufferCache buffer_cache;

size_t Pages(size_t size_bytes) { return size_bytes == 0 ? 1 : (size_bytes + kPageBytes - 1) / kPageBytes; }

uint8_t* AllocateAligned(size_t size_bytes) {
  const size_t pages = Pages(size_bytes);
  if (pages <= kCachedPagesMax && !buffer_cache.free[pages].empty()) {
    uint8_t* p = buffer_cache.free[pages].back();
    buffer_cache.free[pages].pop_back();
    buffer_cache.bytes -= pages * kPageBytes;
    return p;
  }
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kPageBytes, pages * kPageBytes));
  SCRIBE_CHECK(p != nullptr);
  return p;
}

void FreeAligned(uint8_t* p, size_t size_bytes) {
  if (p == nullptr) return;
  const size_t pages = Pages(size_bytes);
  if (pages <= kCachedPagesMax && buffer_cache.bytes + pages * kPageBytes <= kCachedBytesMax) {
    buffer_cache.free[pages].push_back(p);
    buffer_cache.bytes += pages * kPageBytes;
    return;
  }
  std::free(p);
}

}  // namespace

AlignedBuffer::AlignedBuffer(size_t size_bytes) : size_(size_bytes) {
  data_ = AllocateAligned(size_bytes);
  std::memset(data_, 0, size_bytes);
}

AlignedBuffer::AlignedBuffer(size_t size_bytes, Uninitialized) : size_(size_bytes) {
  data_ = AllocateAligned(size_bytes);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    FreeAligned(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { FreeAligned(data_, size_); }

}  // namespace scribe
