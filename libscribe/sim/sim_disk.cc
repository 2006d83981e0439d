#include <algorithm>
#include <cstring>
#include <utility>

#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {

SimDisk::SimDisk(SimLoop* loop, Random* random, SimDiskOptions options)
    : loop_(loop), random_(random), options_(options) {
  SCRIBE_CHECK(options_.size_bytes % kSectorBytes == 0);
  SCRIBE_CHECK(options_.latency_ns_min >= 0 &&
               options_.latency_ns_max >= options_.latency_ns_min);
}

SimDisk::~SimDisk() { *alive_ = false; }

int64_t SimDisk::Latency() {
  return options_.latency_ns_min +
         static_cast<int64_t>(random_->Uniform(
             static_cast<uint64_t>(options_.latency_ns_max - options_.latency_ns_min) + 1));
}

bool SimDisk::TakeInjectedError(uint64_t offset_bytes, uint64_t length_bytes) {
  for (auto& r : error_ranges_) {
    if (r.remaining > 0 && offset_bytes < r.offset_bytes + r.length_bytes &&
        r.offset_bytes < offset_bytes + length_bytes) {
      --r.remaining;
      return true;
    }
  }
  return false;
}

// Every operation completes after a random latency; the effect (`apply`) happens at
// completion, so concurrent overlapping operations land in an unspecified order, as on
// real hardware. A power cut in between voids both the effect and the callback.
void SimDisk::Complete(std::function<absl::Status()> apply, Callback done) {
  const uint64_t epoch = power_epoch_;
  loop_->RunAfter(Latency(), [this, alive = alive_, epoch, apply = std::move(apply),
                              done = std::move(done)]() {
    if (!*alive || epoch != power_epoch_) return;
    absl::Status st = failed_ ? absl::UnavailableError("EIO: simulated disk has failed")
                              : apply();
    ++ops_completed_;
    done(st);
  });
}

void SimDisk::ReadSectors(uint64_t offset_bytes, size_t length_bytes, uint8_t* out) const {
  for (uint64_t pos = offset_bytes; pos < offset_bytes + length_bytes; pos += kSectorBytes) {
    const uint64_t page = pos / kPageBytes;
    const uint64_t in_page = pos % kPageBytes;
    const int sector = static_cast<int>(in_page / kSectorBytes);
    uint8_t* dst = out + (pos - offset_bytes);
    auto c = cache_.find(page);
    if (c != cache_.end() && (c->second->dirty_mask & (1u << sector))) {
      std::memcpy(dst, c->second->bytes.data() + in_page, kSectorBytes);
      continue;
    }
    auto d = durable_.find(page);
    if (d != durable_.end()) {
      std::memcpy(dst, d->second->bytes.data() + in_page, kSectorBytes);
    } else {
      std::memset(dst, 0, kSectorBytes);
    }
  }
}

void SimDisk::WriteSectors(uint64_t offset_bytes, size_t length_bytes, const uint8_t* in) {
  for (uint64_t pos = offset_bytes; pos < offset_bytes + length_bytes; pos += kSectorBytes) {
    const uint64_t page = pos / kPageBytes;
    const uint64_t in_page = pos % kPageBytes;
    const int sector = static_cast<int>(in_page / kSectorBytes);
    auto& slot = cache_[page];
    if (!slot) slot = std::make_unique<CachedPage>();
    std::memcpy(slot->bytes.data() + in_page, in + (pos - offset_bytes), kSectorBytes);
    slot->dirty_mask |= static_cast<uint8_t>(1u << sector);
  }
}

void SimDisk::Read(uint64_t offset_bytes, size_t length_bytes, void* buf, Callback done) {
  absl::Status st = CheckRange(offset_bytes, length_bytes, buf);
  if (!st.ok()) {
    loop_->Post([done = std::move(done), st] { done(st); });
    return;
  }
  const bool inject = TakeInjectedError(offset_bytes, length_bytes);
  Complete(
      [this, offset_bytes, length_bytes, buf, inject]() -> absl::Status {
        if (inject) return absl::UnavailableError("EIO: injected read error");
        ReadSectors(offset_bytes, length_bytes, static_cast<uint8_t*>(buf));
        return absl::OkStatus();
      },
      std::move(done));
}

void SimDisk::Write(uint64_t offset_bytes, size_t length_bytes, const void* buf,
                    Callback done) {
  absl::Status st = CheckRange(offset_bytes, length_bytes, buf);
  if (!st.ok()) {
    loop_->Post([done = std::move(done), st] { done(st); });
    return;
  }
  const bool inject = TakeInjectedError(offset_bytes, length_bytes);
  // The buffer is read when the write completes, not when it is issued: like DMA, the
  // device may read it at any time until then, so a caller that frees or reuses it
  // early writes garbage here, and the simulator's checksums notice.
  Complete(
      [this, offset_bytes, length_bytes, buf, inject]() -> absl::Status {
        if (inject) return absl::UnavailableError("EIO: injected write error");
        WriteSectors(offset_bytes, length_bytes, static_cast<const uint8_t*>(buf));
        return absl::OkStatus();
      },
      std::move(done));
}

void SimDisk::Flush(Callback done) {
  Complete(
      [this]() -> absl::Status {
        for (auto& [page, cached] : cache_) {
          auto& d = durable_[page];
          if (!d) d = std::make_unique<Page>();
          for (int s = 0; s < kSectorsPerPage; ++s) {
            if (cached->dirty_mask & (1u << s)) {
              std::memcpy(d->bytes.data() + s * kSectorBytes,
                          cached->bytes.data() + s * kSectorBytes, kSectorBytes);
            }
          }
        }
        cache_.clear();
        return absl::OkStatus();
      },
      std::move(done));
}

void SimDisk::Discard(uint64_t offset_bytes, size_t length_bytes, Callback done) {
  absl::Status st = CheckRange(offset_bytes, length_bytes, nullptr);
  if (!st.ok()) {
    loop_->Post([done = std::move(done), st] { done(st); });
    return;
  }
  // Discarded sectors read as zeros at once; like a write, the zeroing is volatile
  // until a flush.
  Complete(
      [this, offset_bytes, length_bytes]() -> absl::Status {
        static const std::vector<uint8_t> zeros(kPageBytes, 0);
        for (uint64_t pos = offset_bytes; pos < offset_bytes + length_bytes;
             pos += kSectorBytes) {
          WriteSectors(pos, kSectorBytes, zeros.data());
        }
        return absl::OkStatus();
      },
      std::move(done));
}

void SimDisk::PowerCut(PowerLossMode mode) {
  ++power_epoch_;
  for (auto& [page, cached] : cache_) {
    for (int s = 0; s < kSectorsPerPage; ++s) {
      if (!(cached->dirty_mask & (1u << s))) continue;
      bool keep = mode == PowerLossMode::kKeepAll ||
                  (mode == PowerLossMode::kTear && random_->Bernoulli(0.5));
      if (!keep) continue;
      auto& d = durable_[page];
      if (!d) d = std::make_unique<Page>();
      std::memcpy(d->bytes.data() + s * kSectorBytes, cached->bytes.data() + s * kSectorBytes,
                  kSectorBytes);
    }
  }
  cache_.clear();
}

void SimDisk::InjectIoErrors(uint64_t offset_bytes, uint64_t length_bytes, int count) {
  error_ranges_.push_back(ErrorRange{offset_bytes, length_bytes, count});
}

void SimDisk::Corrupt(uint64_t offset_bytes, uint64_t length_bytes) {
  for (uint64_t pos = offset_bytes; pos < offset_bytes + length_bytes; pos += kSectorBytes) {
    const uint64_t page = pos / kPageBytes;
    const uint64_t in_page = pos % kPageBytes;
    const uint64_t byte = in_page + random_->Uniform(kSectorBytes);
    auto& d = durable_[page];
    if (!d) d = std::make_unique<Page>();
    d->bytes[byte] ^= 0x5a;
    auto c = cache_.find(page);
    if (c != cache_.end()) c->second->bytes[byte] ^= 0x5a;
  }
}

uint64_t SimDisk::unsynced_sectors() const {
  uint64_t n = 0;
  for (const auto& [page, cached] : cache_) n += __builtin_popcount(cached->dirty_mask);
  return n;
}

}  // namespace scribe
