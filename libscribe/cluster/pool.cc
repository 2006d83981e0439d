// Creating a pool (formatting its disks) and the Pool::Create / Open entry points.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::Format(std::vector<DiskSpec> disks, Done<std::unique_ptr<Pool>> done,
            std::unique_ptr<Pool> self) {
  pool_uuid_ = random_->Next64() | 1;
  for (const DiskSpec& spec : disks) {
    absl::Status st = CheckDiskSpec(spec);
    if (!st.ok()) return loop_->Post([done, st] { done(st); });
  }
  auto holder = std::make_shared<std::unique_ptr<Pool>>(std::move(self));
  auto g = MakeGather(static_cast<int>(disks.size()) + 1, [this, holder, done](absl::Status st) {
    if (!st.ok()) return done(st);
    ChooseMirrors();
    Commit([holder, done](absl::Status st) {
      if (!st.ok()) return done(st);
      done(std::move(*holder));
    });
  });
  for (const DiskSpec& spec : disks) {
    AddDiskInternal(spec, [g](absl::StatusOr<DiskId> r) { g->Finish(r.status()); });
  }
  g->Finish(absl::OkStatus());
}

absl::Status PoolImpl::CheckDiskSpec(const DiskSpec& spec) {
  if (spec.device == nullptr) return absl::InvalidArgumentError("disk has no device");
  if (!spec.node.valid()) return absl::InvalidArgumentError("disk has no node id");
  const uint64_t data_start = RoundUp(kSuperblockBytes + options_.metadata_bytes, kBlockBytes);
  if (spec.device->size_bytes() < data_start + kChunkBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a %d-byte disk is too small: metadata needs %d bytes plus at least one 1 MiB chunk",
        spec.device->size_bytes(), data_start));
  }
  for (const auto& [id, d] : disks_) {
    if (d.dev == spec.device) return absl::AlreadyExistsError("disk is already in the pool");
  }
  return absl::OkStatus();
}

void PoolImpl::AddDiskInternal(const DiskSpec& spec, Done<DiskId> done) {
  const DiskId id{next_disk_++};
  Superblock sb{pool_uuid_, id, spec.node, spec.tier, options_.metadata_bytes};
  auto buf = std::make_shared<AlignedBuffer>(kSuperblockBytes);
  std::string enc = EncodeSuperblock(sb);
  std::memcpy(buf->data(), enc.data(), enc.size());
  BlockDevice* dev = spec.device;
  auto alive = alive_;
  auto finish = [=, this](absl::Status st) {
    if (!*alive) return;
    if (!st.ok()) return done(st);
    Encoder e;
    e.U8(kRecAddDisk);
    e.U64(id.value);
    e.U64(spec.node.value);
    e.U8(static_cast<uint8_t>(spec.tier));
    e.U64(dev->size_bytes());
    Mutate(e.out());
    disks_[id].dev = dev;
    done(id);
  };
  // Zero the whole metadata region: an older pool's journal must not be replayed,
  // and later journal writes then overwrite allocated space, which keeps their
  // flushes cheap on files. Then the superblock, then a flush.
  ZeroRange(dev, kSuperblockBytes, 2 * half_bytes_, [=, this](absl::Status st) {
    if (!*alive) return;
    if (!st.ok()) return finish(st);
    dev->Write(0, kSuperblockBytes, buf->data(), Timed([=, this](absl::Status st) {
      (void)buf;  // the device reads it until it completes
      if (!*alive) return;
      if (!st.ok()) return finish(st);
      dev->Flush(Timed([=](absl::Status st) { finish(st); }));
    }));
  });
}

void PoolImpl::ZeroRange(BlockDevice* dev, uint64_t offset, uint64_t length, StatusDone done,
               std::shared_ptr<AlignedBuffer> zeros) {
  constexpr uint64_t kPieceBytes = 4 << 20;
  if (length == 0) return done(absl::OkStatus());
  if (!zeros) zeros = std::make_shared<AlignedBuffer>(kPieceBytes);
  const uint64_t n = std::min(length, kPieceBytes);
  auto alive = alive_;
  dev->Write(offset, n, zeros->data(), Timed([=, this](absl::Status st) {
    if (!*alive) return;
    if (!st.ok()) return done(st);
    ZeroRange(dev, offset + n, length - n, done, zeros);
  }));
}

BlockDevice::Callback PoolImpl::Timed(BlockDevice::Callback cb) {
  auto io = std::make_shared<TimedIo>();
  io->cb = std::move(cb);
  io->deadline_ns = loop_->NowNanos() + options_.io_timeout_ns;
  timed_.push_back(io);
  if (!timed_armed_) ArmTimedIo();
  auto alive = alive_;
  return [this, io, alive](absl::Status st) {
    if (io->fired) {
      io->cb = nullptr;
      return;
    }
    io->fired = true;
    BlockDevice::Callback cb = std::move(io->cb);
    if (*alive) {
      while (!timed_.empty() && timed_.front()->fired) timed_.pop_front();
    }
    cb(st);
  };
}

void PoolImpl::ArmTimedIo() {
  timed_armed_ = true;
  const int64_t wait = std::max<int64_t>(0, timed_.front()->deadline_ns - loop_->NowNanos());
  auto alive = alive_;
  loop_->RunAfter(wait, [this, alive] {
    if (!*alive) return;
    timed_armed_ = false;
    const int64_t now = loop_->NowNanos();
    while (!timed_.empty() && (timed_.front()->fired || timed_.front()->deadline_ns <= now)) {
      {
        std::shared_ptr<TimedIo> io = std::move(timed_.front());
        timed_.pop_front();
        if (!io->fired) {
          io->fired = true;
          BlockDevice::Callback copy = io->cb;  // the device still holds the original
          copy(absl::UnavailableError("I/O timed out: the disk stopped answering"));
        }
      }  // the callback may have held the last reference to this pool (an open's)
      if (!*alive) return;
    }
    if (!timed_.empty() && !timed_armed_) ArmTimedIo();
  });
}

void Refs::Ref(const MapEntry& e) {
  if (pool_) pool_->RefFromMap(e);
}
void Refs::Unref(const MapEntry& e) {
  if (pool_) pool_->UnrefFromMap(e);
}
void Refs::PageDropped(const MapEntry& page) {
  if (pool_) pool_->DropPage(page);
}
void Refs::NodeDirtied() {
  if (pool_) pool_->NoteNodeDirtied();
}
void Refs::EvictedLeafDropped(const MapEntry& page) {
  if (pool_) pool_->EvictedLeafDropped(page);
}
LeafCache* Refs::leaf_cache() { return pool_ ? &pool_->leaf_cache_ : nullptr; }


void Pool::Create(Loop* loop, Random* random, PoolOptions options, std::vector<DiskSpec> disks,
                  Done<std::unique_ptr<Pool>> done) {
  if (options.metadata_bytes < 64 * kBlockBytes || options.metadata_mirrors_max < 1) {
    return loop->Post([done] {
      done(absl::InvalidArgumentError("metadata_bytes must be at least 256 KiB, mirrors at least 1"));
    });
  }
  if (disks.empty()) {
    return loop->Post([done] { done(absl::InvalidArgumentError("a pool needs at least one disk")); });
  }
  auto pool = std::make_unique<PoolImpl>(loop, random, options);
  PoolImpl* raw = pool.get();
  raw->Format(std::move(disks), std::move(done), std::move(pool));
}

void Pool::Open(Loop* loop, Random* random, PoolOptions options, std::vector<DiskSpec> disks,
                Done<std::unique_ptr<Pool>> done) {
  if (disks.empty()) {
    return loop->Post([done] { done(absl::InvalidArgumentError("a pool needs at least one disk")); });
  }
  auto pool = std::make_unique<PoolImpl>(loop, random, options);
  PoolImpl* raw = pool.get();
  raw->Recover(std::move(disks), std::move(done), std::move(pool));
}

}  // namespace scribe
