#include "libscribe/env/conformance.h"

#include <cstring>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_format.h"

namespace scribe::conformance {

absl::Status Await(Loop* loop, const std::function<void(BlockDevice::Callback)>& op,
                   int64_t timeout_ns) {
  bool done = false;
  absl::Status result;
  op([&](absl::Status st) {
    result = std::move(st);
    done = true;
  });
  if (!loop->RunUntil([&] { return done; }, timeout_ns)) {
    return absl::DeadlineExceededError("operation did not complete");
  }
  return result;
}

namespace {

void Fill(Random* random, uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = random->Next64();
    std::memcpy(p + i, &v, std::min<size_t>(8, n - i));
  }
}

testing::AssertionResult ReadCompare(Loop* loop, BlockDevice* dev, uint64_t offset,
                                     const uint8_t* expected, size_t len, const char* what) {
  AlignedBuffer got(len);
  absl::Status st = Await(loop, [&](auto cb) { dev->Read(offset, len, got.data(), cb); });
  if (!st.ok()) {
    return testing::AssertionFailure() << what << ": read at " << offset << " failed: " << st;
  }
  for (size_t i = 0; i < len; ++i) {
    if (got.data()[i] != expected[i]) {
      return testing::AssertionFailure()
             << what << ": byte " << (offset + i) << " is " << int(got.data()[i])
             << ", expected " << int(expected[i]);
    }
  }
  return testing::AssertionSuccess();
}

constexpr uint64_t kRegionBytes = 8ull << 20;

}  // namespace

testing::AssertionResult CheckTimersFireInDeadlineOrder(Loop* loop) {
  std::vector<int> order;
  loop->RunAfter(3'000'000, [&] { order.push_back(3); });
  loop->RunAfter(1'000'000, [&] { order.push_back(1); });
  loop->RunAfter(2'000'000, [&] { order.push_back(2); });
  loop->Post([&] { order.push_back(0); });
  loop->Post([&] { order.push_back(10); });  // same deadline: FIFO
  const int64_t start = loop->NowNanos();
  if (!loop->RunUntil([&] { return order.size() == 5; }, 5'000'000'000)) {
    return testing::AssertionFailure() << "timers did not all fire; fired " << order.size();
  }
  const std::vector<int> want = {0, 10, 1, 2, 3};
  if (order != want) {
    std::string s;
    for (int v : order) s += std::to_string(v) + " ";
    return testing::AssertionFailure() << "timers fired out of order: " << s;
  }
  if (loop->NowNanos() - start < 3'000'000) {
    return testing::AssertionFailure() << "a 3 ms timer fired before 3 ms passed";
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult CheckCancelledTimerNeverRuns(Loop* loop) {
  bool cancelled_ran = false, other_ran = false;
  Loop::TimerId id = loop->RunAfter(1'000'000, [&] { cancelled_ran = true; });
  loop->RunAfter(2'000'000, [&] { other_ran = true; });
  if (!loop->Cancel(id)) return testing::AssertionFailure() << "Cancel of a pending timer failed";
  if (loop->Cancel(id)) return testing::AssertionFailure() << "second Cancel succeeded";
  loop->RunUntil([&] { return other_ran; }, 5'000'000'000);
  if (!other_ran) return testing::AssertionFailure() << "uncancelled timer did not run";
  if (cancelled_ran) return testing::AssertionFailure() << "cancelled timer ran";
  return testing::AssertionSuccess();
}

testing::AssertionResult CheckRunUntilTimesOut(Loop* loop) {
  const int64_t start = loop->NowNanos();
  if (loop->RunUntil([] { return false; }, 20'000'000)) {
    return testing::AssertionFailure() << "RunUntil reported success for a false predicate";
  }
  const int64_t elapsed = loop->NowNanos() - start;
  if (elapsed < 20'000'000) {
    return testing::AssertionFailure() << "RunUntil returned after " << elapsed << " ns of 20 ms";
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult CheckClockIsMonotonic(Loop* loop) {
  int64_t last = loop->NowNanos();
  for (int i = 0; i < 1000; ++i) {
    int64_t now = loop->NowNanos();
    if (now < last) return testing::AssertionFailure() << "clock went backwards";
    last = now;
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult CheckReadBackExact(Loop* loop, BlockDevice* dev, Random* random) {
  if (dev->size_bytes() < kRegionBytes) return testing::AssertionFailure() << "device too small";
  std::vector<uint8_t> model(kRegionBytes, 0);
  // Establish a known baseline, then overwrite random spans of many lengths.
  AlignedBuffer base(kRegionBytes);
  Fill(random, base.data(), kRegionBytes);
  absl::Status st = Await(loop, [&](auto cb) { dev->Write(0, kRegionBytes, base.data(), cb); });
  if (!st.ok()) return testing::AssertionFailure() << "baseline write failed: " << st;
  std::memcpy(model.data(), base.data(), kRegionBytes);
  const size_t lengths_sectors[] = {1, 2, 7, 8, 9, 64, 255, 256, 2048};
  for (int i = 0; i < 60; ++i) {
    const size_t len = lengths_sectors[random->Uniform(std::size(lengths_sectors))] *
                       BlockDevice::kSectorBytes;
    const uint64_t offset =
        random->Uniform((kRegionBytes - len) / BlockDevice::kSectorBytes + 1) *
        BlockDevice::kSectorBytes;
    AlignedBuffer data(len);
    Fill(random, data.data(), len);
    st = Await(loop, [&](auto cb) { dev->Write(offset, len, data.data(), cb); });
    if (!st.ok()) return testing::AssertionFailure() << "write failed: " << st;
    std::memcpy(model.data() + offset, data.data(), len);
    auto r = ReadCompare(loop, dev, offset, model.data() + offset, len, "read-after-write");
    if (!r) return r;
  }
  return ReadCompare(loop, dev, 0, model.data(), kRegionBytes, "whole-region read");
}

testing::AssertionResult CheckRejectsBadRequests(Loop* loop, BlockDevice* dev) {
  AlignedBuffer sentinel(4096);
  std::memset(sentinel.data(), 0xab, 4096);
  absl::Status st = Await(loop, [&](auto cb) { dev->Write(0, 4096, sentinel.data(), cb); });
  if (!st.ok()) return testing::AssertionFailure() << "sentinel write failed: " << st;

  AlignedBuffer junk(8192);
  std::memset(junk.data(), 0xcd, 8192);
  struct Case {
    const char* what;
    uint64_t offset;
    size_t len;
    uint8_t* buf;
    absl::StatusCode want;
  };
  const uint64_t size = dev->size_bytes();
  const Case cases[] = {
      {"unaligned offset", 100, 512, junk.data(), absl::StatusCode::kInvalidArgument},
      {"unaligned length", 0, 100, junk.data(), absl::StatusCode::kInvalidArgument},
      {"misaligned buffer", 0, 512, junk.data() + 1, absl::StatusCode::kInvalidArgument},
      {"beyond end", size, 512, junk.data(), absl::StatusCode::kOutOfRange},
      {"straddling end", size - 512, 1024, junk.data(), absl::StatusCode::kOutOfRange},
      {"huge offset", UINT64_MAX - 511, 512, junk.data(), absl::StatusCode::kOutOfRange},
  };
  for (const Case& c : cases) {
    st = Await(loop, [&](auto cb) { dev->Write(c.offset, c.len, c.buf, cb); });
    if (st.code() != c.want) {
      return testing::AssertionFailure() << "write with " << c.what << " returned " << st;
    }
    st = Await(loop, [&](auto cb) { dev->Read(c.offset, c.len, c.buf, cb); });
    if (st.code() != c.want) {
      return testing::AssertionFailure() << "read with " << c.what << " returned " << st;
    }
  }
  st = Await(loop, [&](auto cb) { dev->Discard(size, 512, cb); });
  if (st.code() != absl::StatusCode::kOutOfRange) {
    return testing::AssertionFailure() << "discard beyond end returned " << st;
  }
  std::vector<uint8_t> expect(4096, 0xab);
  return ReadCompare(loop, dev, 0, expect.data(), 4096, "data after rejected requests");
}

testing::AssertionResult CheckConcurrentWrites(Loop* loop, BlockDevice* dev, Random* random) {
  constexpr int kOps = 64;
  constexpr size_t kLen = 64 * 1024;
  std::vector<AlignedBuffer> bufs;
  for (int i = 0; i < kOps; ++i) {
    bufs.emplace_back(kLen);
    Fill(random, bufs.back().data(), kLen);
  }
  int completed = 0;
  absl::Status first_error;
  for (int i = 0; i < kOps; ++i) {
    dev->Write(static_cast<uint64_t>(i) * kLen, kLen, bufs[i].data(), [&](absl::Status st) {
      if (!st.ok() && first_error.ok()) first_error = st;
      ++completed;
    });
  }
  if (!loop->RunUntil([&] { return completed == kOps; }, 30'000'000'000)) {
    return testing::AssertionFailure() << "only " << completed << " of " << kOps << " completed";
  }
  if (!first_error.ok()) return testing::AssertionFailure() << "a write failed: " << first_error;
  for (int i = 0; i < kOps; ++i) {
    auto r = ReadCompare(loop, dev, static_cast<uint64_t>(i) * kLen, bufs[i].data(), kLen,
                         "concurrent write");
    if (!r) return r;
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult CheckAdjacentWrites(Loop* loop, BlockDevice* dev, Random* random) {
  constexpr size_t kBlock = 4096;
  constexpr uint64_t kBase = 2ull << 20;
  // A region written in an earlier turn, read back while the adjacent writes go out.
  AlignedBuffer old(64 * kBlock);
  Fill(random, old.data(), old.size());
  absl::Status st = Await(loop, [&](auto cb) { dev->Write(0, old.size(), old.data(), cb); });
  if (!st.ok()) return testing::AssertionFailure() << "setup write failed: " << st;
  // In one turn: runs of 1..8-block writes, each starting where the last ended or after
  // a gap, with reads in between: whatever a device merges, every op lands in its place
  // and completes once.
  struct Piece {
    uint64_t offset;
    AlignedBuffer data;
  };
  std::vector<Piece> writes;
  std::vector<AlignedBuffer> reads;
  std::vector<uint64_t> read_offsets;
  uint64_t at = kBase;
  for (int i = 0; i < 300; ++i) {
    if (random->Uniform(4) == 0) at += kBlock * (1 + random->Uniform(3));
    const size_t len = kBlock * (1 + random->Uniform(8));
    writes.push_back(Piece{at, AlignedBuffer(len)});
    Fill(random, writes.back().data.data(), len);
    at += len;
    if (random->Uniform(8) == 0) {
      read_offsets.push_back(kBlock * random->Uniform(60));
      reads.emplace_back(4 * kBlock);
    }
  }
  int completed = 0, expected = 0;
  absl::Status first_error;
  auto count = [&](absl::Status s) {
    if (!s.ok() && first_error.ok()) first_error = s;
    ++completed;
  };
  size_t next_read = 0;
  for (size_t i = 0; i < writes.size(); ++i) {
    dev->Write(writes[i].offset, writes[i].data.size(), writes[i].data.data(), count);
    ++expected;
    if (next_read < reads.size() && i % 8 == 7) {
      dev->Read(read_offsets[next_read], reads[next_read].size(), reads[next_read].data(), count);
      ++next_read;
      ++expected;
    }
  }
  if (!loop->RunUntil([&] { return completed >= expected; }, 30'000'000'000)) {
    return testing::AssertionFailure() << "only " << completed << " of " << expected << " completed";
  }
  loop->RunUntil([] { return false; }, 1'000'000);  // an op answered twice shows now
  if (completed != expected) {
    return testing::AssertionFailure() << completed << " completions for " << expected << " ops";
  }
  if (!first_error.ok()) return testing::AssertionFailure() << "an op failed: " << first_error;
  for (size_t r = 0; r < next_read; ++r) {
    if (std::memcmp(reads[r].data(), old.data() + read_offsets[r], reads[r].size()) != 0) {
      return testing::AssertionFailure() << "read at " << read_offsets[r] << " got wrong data";
    }
  }
  for (const Piece& w : writes) {
    auto r = ReadCompare(loop, dev, w.offset, w.data.data(), w.data.size(), "adjacent write");
    if (!r) return r;
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult CheckWriteDurable(Loop* loop, BlockDevice* dev, Random* random) {
  constexpr size_t kLen = 64 * 1024;
  AlignedBuffer data(kLen);
  Fill(random, data.data(), kLen);
  absl::Status st = Await(loop, [&](auto cb) { dev->WriteDurable(1 << 20, kLen, data.data(), cb); });
  if (!st.ok()) return testing::AssertionFailure() << "durable write failed: " << st;
  st = Await(loop, [&](auto cb) { dev->WriteDurable(3, kLen, data.data(), cb); });
  if (st.code() != absl::StatusCode::kInvalidArgument) {
    return testing::AssertionFailure() << "unaligned durable write returned " << st;
  }
  return ReadCompare(loop, dev, 1 << 20, data.data(), kLen, "after durable write");
}

testing::AssertionResult CheckFlushAndDiscard(Loop* loop, BlockDevice* dev, Random* random) {
  constexpr size_t kLen = 256 * 1024;
  AlignedBuffer data(kLen);
  Fill(random, data.data(), kLen);
  absl::Status st = Await(loop, [&](auto cb) { dev->Write(0, kLen, data.data(), cb); });
  if (!st.ok()) return testing::AssertionFailure() << "write failed: " << st;
  st = Await(loop, [&](auto cb) { dev->Flush(cb); });
  if (!st.ok()) return testing::AssertionFailure() << "flush failed: " << st;
  auto r = ReadCompare(loop, dev, 0, data.data(), kLen, "after flush");
  if (!r) return r;
  // Discard the middle 128 KiB: each sector must read as zeros or as before.
  st = Await(loop, [&](auto cb) { dev->Discard(64 * 1024, 128 * 1024, cb); });
  if (!st.ok()) return testing::AssertionFailure() << "discard failed: " << st;
  AlignedBuffer got(kLen);
  st = Await(loop, [&](auto cb) { dev->Read(0, kLen, got.data(), cb); });
  if (!st.ok()) return testing::AssertionFailure() << "read failed: " << st;
  static const uint8_t zeros[BlockDevice::kSectorBytes] = {};
  for (size_t off = 0; off < kLen; off += BlockDevice::kSectorBytes) {
    const bool same = std::memcmp(got.data() + off, data.data() + off, BlockDevice::kSectorBytes) == 0;
    const bool zero = std::memcmp(got.data() + off, zeros, BlockDevice::kSectorBytes) == 0;
    const bool discarded = off >= 64 * 1024 && off < 192 * 1024;
    if (discarded ? !(same || zero) : !same) {
      return testing::AssertionFailure() << "sector at " << off << " has wrong contents after discard";
    }
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult CheckAllPairsDelivery(Loop* loop, const std::vector<Transport*>& eps) {
  // (receiver, sender) -> payloads received, in arrival order.
  std::map<std::pair<Transport::NodeId, Transport::NodeId>, std::vector<std::string>> got;
  for (Transport* ep : eps) {
    ep->SetHandler([&got, ep](Transport::NodeId from, std::string payload) {
      got[{ep->self(), from}].push_back(std::move(payload));
    });
  }
  std::vector<std::string> payloads = {"", std::string("\0\1\2\0", 4), "hello"};
  payloads.push_back(std::string(1 << 20, 'x'));
  for (size_t i = 0; i < payloads.back().size(); i += 4096) payloads.back()[i] = char(i >> 12);
  size_t expected = 0;
  for (Transport* from : eps) {
    for (Transport* to : eps) {
      if (from == to) continue;
      for (const auto& p : payloads) {
        from->Send(to->self(), p + std::to_string(from->self()));
        ++expected;
      }
    }
  }
  auto total = [&] {
    size_t n = 0;
    for (auto& [k, v] : got) n += v.size();
    return n;
  };
  loop->RunUntil([&] { return total() >= expected; }, 30'000'000'000);
  // Give duplicates a chance to show up.
  loop->RunUntil([] { return false; }, 50'000'000);
  if (total() != expected) {
    return testing::AssertionFailure() << "received " << total() << " messages, sent " << expected;
  }
  for (Transport* from : eps) {
    for (Transport* to : eps) {
      if (from == to) continue;
      auto received = got[{to->self(), from->self()}];
      std::vector<std::string> want;
      for (const auto& p : payloads) want.push_back(p + std::to_string(from->self()));
      std::sort(received.begin(), received.end());
      std::sort(want.begin(), want.end());
      if (received != want) {
        return testing::AssertionFailure() << "node " << to->self() << " got wrong payloads from "
                                           << from->self();
      }
    }
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult CheckUnknownPeerIsDropped(Loop* loop, const std::vector<Transport*>& eps) {
  int received = 0;
  std::string last;
  eps[1]->SetHandler([&](Transport::NodeId from, std::string payload) {
    ++received;
    last = std::move(payload);
  });
  eps[0]->Send(999'999, "to nobody");
  eps[0]->Send(eps[1]->self(), "still works");
  loop->RunUntil([&] { return received > 0; }, 10'000'000'000);
  if (received != 1 || last != "still works") {
    return testing::AssertionFailure() << "after a send to an unknown peer, got " << received
                                       << " messages: '" << last << "'";
  }
  return testing::AssertionSuccess();
}

}  // namespace scribe::conformance
