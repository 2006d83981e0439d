#include <cstdlib>
#include <cstring>
#include <utility>

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

AlignedBuffer::AlignedBuffer(size_t size_bytes) : size_(size_bytes) {
  const size_t rounded = (size_bytes + BlockDevice::kBufferAlignment - 1) /
                         BlockDevice::kBufferAlignment * BlockDevice::kBufferAlignment;
  data_ = static_cast<uint8_t*>(
      std::aligned_alloc(BlockDevice::kBufferAlignment, rounded == 0 ? BlockDevice::kBufferAlignment : rounded));
  SCRIBE_CHECK(data_ != nullptr);
  std::memset(data_, 0, size_bytes);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

}  // namespace scribe
