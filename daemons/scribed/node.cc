#include "daemons/scribed/node.h"

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "libscribe/env/real_loop_internal.h"
#include "scribe/meta_store.h"
#include "scribe/nbd_relay.h"
#include "scribe/nbd_server.h"
#include "scribe/remote.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe::daemon {
namespace {

constexpr char kNodesPrefix[] = "/scribe/nodes/";
constexpr char kMembersPrefix[] = "/scribe/members/";
constexpr char kOwnerKey[] = "/scribe/owner";
constexpr char kEpochKey[] = "/scribe/epoch";
constexpr char kPoolKey[] = "/scribe/pool";
constexpr char kWritersPrefix[] = "/scribe/writers/";  // <vsd> -> its writer epoch

void Log(const std::string& line) {
  std::fprintf(stderr, "scribed: %s\n", line.c_str());
  std::fflush(stderr);
}

// Values in etcd are "key=value" lines; disks are "disk=<index>,<bytes>,<tier>,<path>".
using Fields = std::multimap<std::string, std::string>;
Fields ParseFields(const std::string& text) {
  Fields out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) continue;
    out.emplace(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
  }
  return out;
}
std::string Field(const Fields& f, const std::string& key) {
  auto it = f.find(key);
  return it == f.end() ? "" : it->second;
}
uint64_t FieldU64(const Fields& f, const std::string& key) {
  uint64_t v = 0;
  return absl::SimpleAtoi(Field(f, key), &v) ? v : 0;
}

struct PeerDisk {
  uint64_t index = 0;
  uint64_t size_bytes = 0;
  Tier tier = Tier::kHdd;
  std::string path;
};

struct Peer {
  uint64_t id = 0;
  std::string backplane, admin, nbd_socket;
  std::vector<PeerDisk> disks;
};

std::string EncodePeer(const Peer& p) {
  std::string out = absl::StrFormat("id=%d\nbackplane=%s\nadmin=%s\nnbd=%s\n", p.id, p.backplane,
                                    p.admin, p.nbd_socket);
  for (const PeerDisk& d : p.disks) {
    absl::StrAppendFormat(&out, "disk=%d,%d,%s,%s\n", d.index, d.size_bytes,
                          d.tier == Tier::kSsd ? "ssd" : "hdd", d.path);
  }
  return out;
}

Peer DecodePeer(const std::string& text) {
  Fields f = ParseFields(text);
  Peer p;
  p.id = FieldU64(f, "id");
  p.backplane = Field(f, "backplane");
  p.admin = Field(f, "admin");
  p.nbd_socket = Field(f, "nbd");
  auto [b, e] = f.equal_range("disk");
  for (auto it = b; it != e; ++it) {
    std::vector<std::string> parts = absl::StrSplit(it->second, absl::MaxSplits(',', 3));
    if (parts.size() != 4) continue;
    PeerDisk d;
    if (!absl::SimpleAtoi(parts[0], &d.index) || !absl::SimpleAtoi(parts[1], &d.size_bytes)) continue;
    d.tier = parts[2] == "ssd" ? Tier::kSsd : Tier::kHdd;
    d.path = parts[3];
    p.disks.push_back(d);
  }
  return p;
}

// What /scribe/ says, read in one List.
struct View {
  std::map<uint64_t, Peer> alive;  // nodes holding their lease
  std::set<uint64_t> members;      // nodes that ever joined
  uint64_t owner = 0;              // 0: none
  uint64_t owner_epoch = 0;
  std::string owner_admin, owner_nbd;
  bool owner_ready = false;
  int64_t owner_mod_revision = 0;  // 0: the key does not exist
  uint64_t epoch = 0;
  int64_t epoch_mod_revision = 0;
  bool formatted = false;
  std::map<std::string, uint64_t> writers;  // VSD writer epochs (fenceVsd)
};

View ParseView(const ListResult& list) {
  View v;
  for (const KeyValue& kv : list.kvs) {
    if (kv.key.rfind(kNodesPrefix, 0) == 0) {
      Peer p = DecodePeer(kv.value);
      if (p.id != 0) v.alive[p.id] = std::move(p);
    } else if (kv.key.rfind(kMembersPrefix, 0) == 0) {
      uint64_t id = 0;
      if (absl::SimpleAtoi(kv.key.substr(sizeof(kMembersPrefix) - 1), &id)) v.members.insert(id);
    } else if (kv.key == kOwnerKey) {
      v.owner_mod_revision = kv.mod_revision;
      Fields f = ParseFields(kv.value);
      v.owner = FieldU64(f, "node");
      v.owner_epoch = FieldU64(f, "epoch");
      v.owner_admin = Field(f, "admin");
      v.owner_nbd = Field(f, "nbd_tcp");
      v.owner_ready = Field(f, "ready") == "1";
    } else if (kv.key == kEpochKey) {
      v.epoch_mod_revision = kv.mod_revision;
      absl::SimpleAtoi(kv.value, &v.epoch);
    } else if (kv.key == kPoolKey) {
      v.formatted = true;
    } else if (kv.key.rfind(kWritersPrefix, 0) == 0) {
      uint64_t e = 0;
      if (absl::SimpleAtoi(kv.value, &e)) v.writers[kv.key.substr(sizeof(kWritersPrefix) - 1)] = e;
    }
  }
  return v;
}

// A disk of another node (or of this one, through its own disk server, so the fence
// covers it too) as the owner's pool sees it. An UNAVAILABLE result means the link to
// that node broke: the node is told first, so the pool takes the node offline before it
// sees the error (and does not count it against the disk).
class LinkDevice : public BlockDevice {
 public:
  LinkDevice(std::unique_ptr<BlockDevice> inner, std::function<void()> link_down)
      : inner_(std::move(inner)), link_down_(std::move(link_down)) {}
  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  void Read(uint64_t offset, size_t length, void* buf, Callback done) override {
    inner_->Read(offset, length, buf, Wrap(std::move(done)));
  }
  void Write(uint64_t offset, size_t length, const void* buf, Callback done) override {
    inner_->Write(offset, length, buf, Wrap(std::move(done)));
  }
  void WriteDurable(uint64_t offset, size_t length, const void* buf, Callback done) override {
    inner_->WriteDurable(offset, length, buf, Wrap(std::move(done)));
  }
  void Flush(Callback done) override { inner_->Flush(Wrap(std::move(done))); }
  void Discard(uint64_t offset, size_t length, Callback done) override {
    inner_->Discard(offset, length, Wrap(std::move(done)));
  }

 private:
  Callback Wrap(Callback done) {
    return [this, done = std::move(done)](absl::Status st) {
      // A lost link, not a disk error the peer reports (EIO is UNAVAILABLE too): that
      // one counts against the disk (PoolOptions::io_errors_to_fail_disk).
      if (IsRemoteTransportError(st)) link_down_();
      done(st);
    };
  }
  std::unique_ptr<BlockDevice> inner_;
  std::function<void()> link_down_;
};

class NodeImpl;

// The admin bootstrap: every call goes to the pool owner's ScribeAdmin (this node's own
// service when it owns the pool or when there is no owner yet, which then answers with
// a clear error).
class AdminGateway final : public capnp::Capability::Server {
 public:
  explicit AdminGateway(std::function<capnp::Capability::Client()> target)
      : target_(std::move(target)) {}
  DispatchCallResult dispatchCall(uint64_t interface_id, uint16_t method_id,
                                  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    auto params = context.getParams();
    auto request = target_().typelessRequest(interface_id, method_id, params.targetSize());
    request.set(params);
    context.releaseParams();
    return {context.tailCall(kj::mv(request)), false};
  }

 private:
  std::function<capnp::Capability::Client()> target_;
};

class NodeImpl final : public Node, public kj::TaskSet::ErrorHandler {
 public:
  NodeImpl(RealLoop* loop, NodeConfig config)
      : loop_(loop), config_(std::move(config)), alive_(std::make_shared<bool>(true)),
        tasks_(kj::heap<kj::TaskSet>(*this)) {}

  ~NodeImpl() noexcept override {
    *alive_ = false;
    tasks_ = nullptr;  // the admin accept loop, before its listener
    relay_ = nullptr;
    if (tick_timer_) loop_->Cancel(tick_timer_);
    if (keepalive_timer_) loop_->Cancel(keepalive_timer_);
    DropPool();
    admin_server_ = nullptr;
    admin_listener_ = nullptr;
    disk_server_ = nullptr;
  }

  absl::Status Init() {
    if (config_.node_id == 0) return absl::InvalidArgumentError("node id must be >= 1");
    if (config_.nbd_socket.empty()) return absl::InvalidArgumentError("no NBD socket path given");
    for (size_t i = 0; i < config_.disks.size(); ++i) {
      const DiskConfig& d = config_.disks[i];
      AioDeviceOptions o;
      o.create_size_bytes = d.size_bytes;
      auto dev = OpenAioDevice(loop_, d.path, o);
      if (!dev.ok()) {
        return absl::Status(dev.status().code(), absl::StrFormat("disk %s: %s", d.path, dev.status().message()));
      }
      local_disks_.push_back(std::move(*dev));
      self_.disks.push_back(PeerDisk{i, local_disks_.back()->size_bytes(), d.tier, d.path});
    }
    EtcdMetaStoreOptions eo;
    eo.endpoint = config_.etcd;
    eo.request_timeout_ms = std::max<int64_t>(1000, config_.lease_ttl_ms / 3);
    auto etcd = EtcdMetaStore::Create(loop_, eo);
    if (!etcd.ok()) return etcd.status();
    etcd_ = std::move(*etcd);

    // The fence a restarted disk server must keep: the current cluster epoch.
    std::optional<absl::StatusOr<std::optional<KeyValue>>> epoch;
    const int64_t give_up = loop_->NowNanos() + 30'000'000'000;
    while (loop_->NowNanos() < give_up) {
      epoch.reset();
      etcd_->Get(kEpochKey, [&](absl::StatusOr<std::optional<KeyValue>> r) { epoch = std::move(r); });
      loop_->RunUntil([&] { return epoch.has_value(); }, 60'000'000'000);
      if (epoch->ok()) break;
      loop_->RunUntil([] { return false; }, 500'000'000);
    }
    if (!epoch->ok()) {
      return absl::UnavailableError(absl::StrFormat("etcd at %s: %s", config_.etcd, epoch->status().message()));
    }
    uint64_t epoch_min = 0;
    if (epoch->value().has_value()) absl::SimpleAtoi(epoch->value()->value, &epoch_min);
    RETURN_IF_ERROR(StartDiskServer(epoch_min));

    // The admin API.
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                   auto& network = loop_->impl()->io.provider->getNetwork();
                   auto addr = network.parseAddress(config_.admin).wait(loop_->impl()->io.waitScope);
                   admin_listener_ = addr->listen();
                 })) {
      return absl::UnavailableError(
          absl::StrFormat("cannot listen on %s: %s", config_.admin, e->getDescription().cStr()));
    }
    local_admin_ = capnp::Capability::Client(NewAdminService(loop_, this));
    admin_server_ = kj::heap<capnp::TwoPartyServer>(capnp::Capability::Client(
        kj::heap<AdminGateway>([this] { return AdminTarget(); })));
    tasks_->add(admin_server_->listen(*admin_listener_));

    self_.id = config_.node_id;
    self_.backplane = absl::StrFormat("%s:%d", Host(config_.backplane), disk_server_->port());
    admin_port_ = static_cast<uint16_t>(admin_listener_->getPort());
    self_.admin = absl::StrFormat("%s:%d", Host(config_.admin), admin_port_);
    self_.nbd_socket = config_.nbd_socket;
    NbdRelayOptions relay_options;
    relay_options.upstream = [this]() -> std::string {
      return !isolated_ && view_.owner_ready ? view_.owner_nbd : std::string();
    };
    relay_options.log = [](const std::string& line) { Log(line); };
    relay_ = NbdRelay::Create(loop_, std::move(relay_options));
    RETURN_IF_ERROR(StartRelay());

    // Join: lease, registration, membership. Waits for etcd like above.
    std::optional<absl::Status> joined;
    Register([&](absl::Status st) { joined = st; });
    loop_->RunUntil([&] { return joined.has_value(); }, 60'000'000'000);
    if (!joined || !joined->ok()) {
      return absl::UnavailableError(absl::StrFormat(
          "cannot register in etcd at %s: %s", config_.etcd, joined ? joined->message() : "timed out"));
    }
    std::optional<absl::StatusOr<int64_t>> member;
    etcd_->Put(absl::StrCat(kMembersPrefix, config_.node_id), self_.admin,
               [&](absl::StatusOr<int64_t> r) { member = r; });
    loop_->RunUntil([&] { return member.has_value(); }, 60'000'000'000);
    if (!member || !member->ok()) return absl::UnavailableError("cannot record membership in etcd");

    ScheduleKeepAlive();
    tick_timer_ = loop_->RunAfter(0, [this] { Tick(); });
    Log(absl::StrFormat("node %d up: backplane %s, admin %s, nbd %s, %d disks, etcd %s", config_.node_id,
                        self_.backplane, self_.admin, self_.nbd_socket, local_disks_.size(), config_.etcd));
    return absl::OkStatus();
  }

  // ------------------------------------------------------------------ AdminBackend
  Pool* pool() override { return role_ == Role::kOwner ? pool_.get() : nullptr; }

  ClusterStatus Cluster() override {
    ClusterStatus s;
    s.owner_node = view_.owner;
    s.epoch = view_.owner_epoch;
    s.state = StateText();
    std::set<uint64_t> ids = view_.members;
    for (const auto& [id, p] : view_.alive) ids.insert(id);
    for (uint64_t id : ids) {
      NodeStatus n;
      n.id = id;
      auto it = view_.alive.find(id);
      if (it != view_.alive.end()) {
        n.backplane_address = it->second.backplane;
        n.admin_address = it->second.admin;
        n.nbd_socket = it->second.nbd_socket;
        n.alive = true;
      }
      n.owner = id == view_.owner;
      auto link = links_.find(id);
      n.reachable = role_ == Role::kOwner ? (link != links_.end() && link->second.online) : n.alive;
      s.nodes.push_back(n);
    }
    return s;
  }

  void AddDisk(uint64_t node, std::string path, uint64_t size_bytes, Tier tier,
               std::function<void(absl::StatusOr<uint64_t>)> done) override {
    if (node != config_.node_id) {
      // The disk belongs to another node: only that node can open it.
      auto it = view_.alive.find(node);
      return loop_->Post([done, node, addr = it == view_.alive.end() ? "" : it->second.admin] {
        done(absl::FailedPreconditionError(
            addr.empty() ? absl::StrFormat("node %d is not up", node)
                         : absl::StrFormat("disks are added by their own node: run the command "
                                           "with --addr %s (node %d)", addr, node)));
      });
    }
    AioDeviceOptions o;
    o.create_size_bytes = size_bytes;
    auto dev = OpenAioDevice(loop_, path, o);
    if (!dev.ok()) {
      return loop_->Post([done, st = dev.status(), path] {
        done(absl::Status(st.code(), absl::StrFormat("disk %s: %s", path, st.message())));
      });
    }
    const uint64_t index = local_disks_.size();
    absl::Status st = disk_server_->AddDisk(index, dev->get());
    if (!st.ok()) return loop_->Post([done, st] { done(st); });
    self_.disks.push_back(PeerDisk{index, (*dev)->size_bytes(), tier, path});
    local_disks_.push_back(std::move(*dev));
    auto alive = alive_;
    etcd_->Put(absl::StrCat(kNodesPrefix, config_.node_id), EncodePeer(self_), lease_,
               [this, alive, done, index](absl::StatusOr<int64_t> r) {
                 if (!*alive) return;
                 if (!r.ok()) return done(r.status());
                 // The owner adds it to the pool on its next look at the cluster.
                 WaitForPoolDisk(config_.node_id, index, loop_->NowNanos() + 30'000'000'000, done);
               });
  }

  void FenceVsd(std::string vsd, uint64_t epoch, std::function<void(absl::Status)> done) override {
    const uint64_t current = WriterEpoch(vsd);
    if (epoch < current) {
      return loop_->Post([done, vsd, epoch, current] {
        done(absl::FailedPreconditionError(absl::StrFormat(
            "VSD \"%s\" already has writer epoch %d (asked for %d)", vsd, current, epoch)));
      });
    }
    if (epoch == current) return loop_->Post([done] { done(absl::OkStatus()); });
    RaiseWriter(std::move(vsd), epoch, 5, std::move(done));
  }

  uint16_t admin_port() const override { return admin_port_; }
  uint16_t backplane_port() const override { return disk_server_->port(); }

  std::string Describe() override {
    return absl::StrFormat("node %d: %s", config_.node_id, StateText());
  }

 private:
  enum class Role { kFollower, kOpening, kOwner };

  // The owner's view of one node's link.
  struct Link {
    bool online = false;
    int64_t offline_since_ns = 0;
    bool evicted = false;
    bool probing = false;
  };

  struct OwnedDisk {
    std::unique_ptr<BlockDevice> device;
    DiskId id;  // invalid until the pool has it
    bool busy = false;  // opening or being added
  };

  void taskFailed(kj::Exception&& e) override {
    Log(absl::StrFormat("background task failed: %s", e.getDescription().cStr()));
  }

  static std::string Host(const std::string& address) {
    const size_t colon = address.rfind(':');
    return colon == std::string::npos ? address : address.substr(0, colon);
  }

  std::string StateText() const {
    if (isolated_) return "isolated (fault injection)";
    if (role_ == Role::kOpening) return absl::StrFormat("opening the pool at epoch %d", epoch_);
    if (role_ == Role::kOwner || (view_.owner != 0 && view_.owner_ready)) return "running";
    if (view_.owner != 0) return absl::StrFormat("node %d is opening the pool", view_.owner);
    return absl::StrFormat("forming (%d of %d nodes up)", view_.alive.size(), NodesNeeded());
  }

  int NodesNeeded() const {
    if (!view_.formatted) return config_.cluster_min_nodes;
    return static_cast<int>(view_.members.size()) / 2 + 1;
  }

  absl::Status StartDiskServer(uint64_t epoch_min) {
    std::map<uint64_t, BlockDevice*> disks;
    for (size_t i = 0; i < local_disks_.size(); ++i) disks[i] = local_disks_[i].get();
    DiskServerOptions o;
    o.epoch_min = epoch_min;
    std::string address = config_.backplane;
    if (disk_server_port_ != 0) address = absl::StrFormat("%s:%d", Host(config_.backplane), disk_server_port_);
    auto server = DiskServer::Create(loop_, address, std::move(disks), o);
    if (!server.ok()) return server.status();
    disk_server_ = std::move(*server);
    disk_server_port_ = disk_server_->port();
    return absl::OkStatus();
  }

  // ------------------------------------------------------------------ lease
  void Register(std::function<void(absl::Status)> done) {
    auto alive = alive_;
    etcd_->GrantLease(config_.lease_ttl_ms, [this, alive, done](absl::StatusOr<Lease> lease) {
      if (!*alive) return;
      if (!lease.ok()) return done(lease.status());
      const int64_t started = loop_->NowNanos();
      etcd_->Put(absl::StrCat(kNodesPrefix, config_.node_id), EncodePeer(self_), lease->id,
                 [this, alive, done, id = lease->id, started](absl::StatusOr<int64_t> r) {
                   if (!*alive) return;
                   if (!r.ok()) return done(r.status());
                   lease_ = id;
                   renewed_at_ns_ = started;
                   done(absl::OkStatus());
                 });
    });
  }

  // Every third of the TTL; soon again after a failure (the etcd member asked may have
  // died: the next call goes to another one, and the lease must be renewed before the
  // self-fencing deadline).
  void ScheduleKeepAlive(bool retry = false) {
    const int64_t after_ms = retry ? std::min<int64_t>(200, config_.lease_ttl_ms / 3) : config_.lease_ttl_ms / 3;
    keepalive_timer_ = loop_->RunAfter(after_ms * 1'000'000, [this] { KeepAlive(); });
  }

  void KeepAlive() {
    keepalive_timer_ = 0;
    if (isolated_) return ScheduleKeepAlive();
    auto alive = alive_;
    const int64_t started = loop_->NowNanos();
    if (!lease_.valid()) {
      Register([this, alive](absl::Status st) {
        if (!*alive) return;
        if (!st.ok()) Log(absl::StrFormat("re-registering: %s", st.message()));
        ScheduleKeepAlive();
      });
      return;
    }
    etcd_->KeepAlive(lease_, [this, alive, started](absl::StatusOr<int64_t> r) {
      if (!*alive) return;
      if (r.ok()) {
        renewed_at_ns_ = started;
      } else if (r.status().code() == absl::StatusCode::kNotFound) {
        Log("lease expired: re-registering");
        lease_ = LeaseId{};
        if (role_ != Role::kFollower) loop_->Post([this, alive] { if (*alive) StepDown("lease expired"); });
      }
      ScheduleKeepAlive(/*retry=*/!r.ok());
    });
  }

  // ------------------------------------------------------------------ tick
  void Tick() {
    tick_timer_ = loop_->RunAfter(config_.tick_ms * 1'000'000, [this] { Tick(); });
    CheckIsolation();
    if (role_ != Role::kFollower) {
      // Self-fencing: stop before the lease can have expired at etcd.
      const int64_t deadline = renewed_at_ns_ + config_.lease_ttl_ms * 1'000'000 * 3 / 4;
      if (config_.self_fence && loop_->NowNanos() > deadline) {
        return StepDown("cannot renew the lease in time (self-fencing)");
      }
      if (pool_ && pool_->Stats().fenced) return StepDown("fenced by a newer owner");
    }
    if (isolated_ || listing_) return;
    listing_ = true;
    auto alive = alive_;
    const int64_t started = loop_->NowNanos();
    etcd_->List("/scribe/", [this, alive, started](absl::StatusOr<ListResult> r) {
      if (!*alive) return;
      listing_ = false;
      if (!r.ok()) return;
      if (isolated_) return;
      // A list read before we changed the owner key would contradict what we did.
      if (started < owner_changed_ns_) return;
      view_ = ParseView(*r);
      Reconcile();
    });
  }

  void CheckIsolation() {
    if (config_.isolate_file.empty()) return;
    struct stat st;
    const bool isolated = stat(config_.isolate_file.c_str(), &st) == 0;
    if (isolated == isolated_) return;
    isolated_ = isolated;
    if (isolated) {
      Log("isolated: closing the backplane and the NBD relay, no more etcd calls");
      disk_server_ = nullptr;
      relay_->CloseSessions();
    } else {
      Log("isolation over");
      if (role_ != Role::kFollower) {
        // Our own disks' devices died with the disk server: open the pool afresh.
        StepDown("isolation over");
      }
      absl::Status st = StartDiskServer(std::max(epoch_, view_.epoch));
      if (!st.ok()) Log(absl::StrFormat("restarting the disk server: %s", st.message()));
      if (role_ == Role::kFollower) {
        st = StartRelay();
        if (!st.ok()) Log(absl::StrFormat("NBD relay: %s", st.message()));
      }
    }
  }

  void Reconcile() {
    if (role_ == Role::kOwner) {
      if (view_.owner != config_.node_id || view_.owner_epoch != epoch_) {
        return StepDown(absl::StrFormat("the owner key now names node %d epoch %d", view_.owner, view_.owner_epoch));
      }
      return ReconcilePeers();
    }
    if (role_ == Role::kOpening) return;
    if (view_.owner == config_.node_id && lease_.valid()) {
      // Our own key from before a step-down whose release did not get through.
      owner_changed_ns_ = loop_->NowNanos();
      etcd_->CompareAndSwap(kOwnerKey, view_.owner_mod_revision, "", LeaseId{}, [](absl::StatusOr<CasResult>) {});
      return;
    }
    if (view_.owner != 0 || !lease_.valid()) return;
    if (static_cast<int>(view_.alive.size()) < NodesNeeded()) return;
    TakeOwnership();
  }

  // ------------------------------------------------------------------ ownership
  std::string OwnerValue(bool ready) const {
    return absl::StrFormat("node=%d\nepoch=%d\nadmin=%s\nnbd_tcp=%s\nready=%d\n", config_.node_id, epoch_,
                           self_.admin, nbd_tcp_ ? nbd_tcp_->socket_path() : "", ready ? 1 : 0);
  }

  void TakeOwnership() {
    role_ = Role::kOpening;
    owner_changed_ns_ = loop_->NowNanos();
    epoch_ = 0;
    auto alive = alive_;
    const View view = view_;
    etcd_->CompareAndSwap(kOwnerKey, view.owner_mod_revision, OwnerValue(false), lease_,
                          [this, alive, view](absl::StatusOr<CasResult> r) {
                            if (!*alive) return;
                            if (!r.ok() || !r->succeeded) {
                              role_ = Role::kFollower;
                              return;
                            }
                            owner_mod_revision_ = r->revision;
                            BumpEpoch(view.epoch, view.epoch_mod_revision, 5);
                          });
  }

  void BumpEpoch(uint64_t epoch, int64_t mod_revision, int attempts) {
    auto alive = alive_;
    etcd_->CompareAndSwap(
        kEpochKey, mod_revision, absl::StrCat(epoch + 1), LeaseId{},
        [this, alive, epoch, attempts](absl::StatusOr<CasResult> r) {
          if (!*alive) return;
          if (r.ok() && r->succeeded) {
            epoch_ = epoch + 1;
            Log(absl::StrFormat("won the pool at epoch %d", epoch_));
            return OpenPool();
          }
          if (attempts <= 1) return StepDown("cannot raise the cluster epoch");
          etcd_->Get(kEpochKey, [this, alive, attempts](absl::StatusOr<std::optional<KeyValue>> kv) {
            if (!*alive) return;
            if (!kv.ok()) return StepDown("cannot read the cluster epoch");
            uint64_t e = 0;
            int64_t rev = 0;
            if (kv->has_value()) {
              absl::SimpleAtoi((*kv)->value, &e);
              rev = (*kv)->mod_revision;
            }
            BumpEpoch(e, rev, attempts - 1);
          });
        });
  }

  // Opens every registered disk of every live node at our epoch, then the pool.
  void OpenPool() {
    const View view = view_;
    struct Opened {
      uint64_t node, index;
      Tier tier;
      std::unique_ptr<BlockDevice> device;
    };
    auto opened = std::make_shared<std::vector<Opened>>();
    auto pending = std::make_shared<int>(1);
    auto alive = alive_;
    const uint64_t epoch = epoch_;
    auto finish = [this, alive, opened, pending, view, epoch] {
      if (!*alive || --*pending != 0 || role_ != Role::kOpening || epoch_ != epoch) return;
      std::set<uint64_t> nodes;
      for (auto& o : *opened) nodes.insert(o.node);
      if (static_cast<int>(nodes.size()) < NodesNeeded()) {
        return StepDown(absl::StrFormat("only %d nodes' disks answered, %d needed", nodes.size(), NodesNeeded()));
      }
      std::vector<DiskSpec> specs;
      for (auto& o : *opened) {
        const uint64_t node = o.node;
        auto link_down = [this, alive, node] {
          if (*alive) LinkDown(node);
        };
        OwnedDisk& d = owned_[{o.node, o.index}];
        d.device = std::make_unique<LinkDevice>(std::move(o.device), link_down);
        specs.push_back(DiskSpec{NodeId{o.node}, o.tier, d.device.get()});
        links_[o.node].online = true;
      }
      for (const auto& [id, p] : view.alive) links_.try_emplace(id);
      for (uint64_t id : view.members) links_.try_emplace(id);
      auto opened_pool = [this, alive, epoch](absl::StatusOr<std::unique_ptr<Pool>> p) {
        if (!*alive || role_ != Role::kOpening || epoch_ != epoch) return;
        if (!p.ok()) return StepDown(absl::StrFormat("opening the pool: %s", p.status().message()));
        pool_ = std::move(*p);
        // A node is online if the pool found one of its disks (it may not have read a
        // device that opened); the others are probed until they answer.
        std::set<uint64_t> found;
        for (const DiskInfo& info : pool_->ListDisks()) {
          if (info.online) found.insert(info.node.value);
        }
        for (auto& [id, link] : links_) {
          if (link.online && !found.count(id)) {
            Log(absl::StrFormat("node %d: the pool found none of its disks; probing it", id));
            link.online = false;
          }
          if (!link.online) {
            pool_->SetNodeOnline(NodeId{id}, false);
            link.offline_since_ns = loop_->NowNanos();
          }
        }
        AttachAll([this, alive, epoch] {
          // From a loop callback of our own: a failure there steps down, destroying the
          // pool, which must not be on the stack.
          loop_->Post([this, alive, epoch] {
            if (!*alive || role_ != Role::kOpening || epoch_ != epoch) return;
            ServePool();
          });
        });
      };
      PoolOptions options = config_.pool_options;
      options.preferred_read_node = NodeId{config_.node_id};
      if (!view.formatted) {
        Log(absl::StrFormat("formatting a new pool on %d disks of %d nodes", specs.size(), nodes.size()));
        Pool::Create(loop_, &random_, options, specs,
                     [this, alive, opened_pool](absl::StatusOr<std::unique_ptr<Pool>> p) {
                       if (!*alive) return;
                       if (!p.ok()) return opened_pool(std::move(p));
                       auto holder = std::make_shared<std::unique_ptr<Pool>>(std::move(*p));
                       etcd_->Put(kPoolKey, "formatted=1\n", [alive, opened_pool, holder](absl::StatusOr<int64_t> r) {
                         if (!*alive) return;
                         if (!r.ok()) return opened_pool(r.status());
                         opened_pool(std::move(*holder));
                       });
                     });
      } else {
        Log(absl::StrFormat("opening the pool on %d disks of %d nodes", specs.size(), nodes.size()));
        Pool::Open(loop_, &random_, options, specs, opened_pool);
      }
    };
    RemoteDeviceOptions ro;
    ro.call_timeout_ns = std::max<int64_t>(2'000'000'000, config_.lease_ttl_ms * 1'000'000);
    ro.reconnect_backoff_max_ns = 1'000'000'000;
    for (const auto& [id, peer] : view.alive) {
      for (const PeerDisk& d : peer.disks) {
        ++*pending;
        if (id == config_.node_id) {
          // Our own disks: in-process, behind the same fence as the remote ones.
          auto dev = disk_server_ ? disk_server_->OpenLocal(d.index, epoch)
                                  : absl::StatusOr<std::unique_ptr<BlockDevice>>(
                                        absl::UnavailableError("isolated"));
          if (dev.ok()) opened->push_back(Opened{id, d.index, d.tier, std::move(*dev)});
          loop_->Post(finish);
          continue;
        }
        OpenRemoteDevice(
            loop_, peer.backplane, d.index, epoch,
            [opened, finish, node = id, d](absl::StatusOr<std::unique_ptr<BlockDevice>> dev) {
              if (dev.ok()) {
                opened->push_back(Opened{node, d.index, d.tier, std::move(*dev)});
              } else {
                Log(absl::StrFormat("node %d disk %d: %s", node, d.index, dev.status().message()));
              }
              finish();
            },
            ro);
      }
    }
    finish();
  }

  // Learns the pool's id for every owned disk (AttachDevice), adding blank ones.
  void AttachAll(std::function<void()> done) {
    auto pending = std::make_shared<int>(1);
    auto alive = alive_;
    auto step = [alive, pending, done] {
      if (*alive && --*pending == 0) done();
    };
    for (auto& [key, d] : owned_) {
      if (d.id.valid() || d.busy) continue;
      ++*pending;
      AttachOrAdd(key.first, key.second, step);
    }
    step();
  }

  void AttachOrAdd(uint64_t node, uint64_t index, std::function<void()> done) {
    OwnedDisk& d = owned_[{node, index}];
    d.busy = true;
    Tier tier = Tier::kHdd;
    auto peer = view_.alive.find(node);
    if (peer != view_.alive.end()) {
      for (const PeerDisk& pd : peer->second.disks) {
        if (pd.index == index) tier = pd.tier;
      }
    }
    const DiskSpec spec{NodeId{node}, tier, d.device.get()};
    auto alive = alive_;
    Pool* pool = pool_.get();
    pool_->AttachDevice(spec, [this, alive, pool, spec, node, index, done](absl::StatusOr<DiskId> id) {
      if (!*alive || pool_.get() != pool) return;
      auto record = [this, node, index, done](absl::StatusOr<DiskId> id, const char* what) {
        OwnedDisk& d = owned_[{node, index}];
        d.busy = false;
        if (id.ok()) {
          d.id = *id;
          // A disk new to the pool is online with its node; a known one waits for a probe.
          if (std::string(what) == "added") links_[node].online = true;
          Log(absl::StrFormat("node %d disk %d is pool disk %d (%s)", node, index, id->value, what));
        } else {
          Log(absl::StrFormat("node %d disk %d: %s", node, index, id.status().message()));
        }
        done();
      };
      if (id.ok() || id.status().code() != absl::StatusCode::kNotFound ||
          id.status().message().find("no pool superblock") == absl::string_view::npos) {
        return record(id, "attached");
      }
      pool_->AddDisk(spec, [this, alive, pool, record](absl::StatusOr<DiskId> id) {
        if (!*alive || pool_.get() != pool) return;
        record(id, "added");
      });
    });
  }

  void ServePool() {
    NbdServerOptions nbd_options;
    nbd_options.writer_epoch = [this](const std::string& vsd) { return WriterEpoch(vsd); };
    auto tcp = NbdServer::CreateTcp(loop_, pool_.get(), config_.nbd_tcp, nbd_options);
    if (!tcp.ok()) return StepDown(absl::StrFormat("NBD over TCP: %s", tcp.status().message()));
    nbd_tcp_ = std::move(*tcp);
    // Sessions relayed before carry on: they reconnect to our own NBD over TCP.
    relay_->StopListening();
    auto nbd = NbdServer::Create(loop_, pool_.get(), config_.nbd_socket, nbd_options);
    if (!nbd.ok()) return StepDown(absl::StrFormat("NBD on %s: %s", config_.nbd_socket, nbd.status().message()));
    nbd_unix_ = std::move(*nbd);
    auto alive = alive_;
    const uint64_t epoch = epoch_;
    etcd_->CompareAndSwap(kOwnerKey, owner_mod_revision_, OwnerValue(true), lease_,
                          [this, alive, epoch](absl::StatusOr<CasResult> r) {
                            if (!*alive || role_ != Role::kOpening || epoch_ != epoch) return;
                            if (!r.ok() || !r->succeeded) return StepDown("lost the owner key while opening");
                            owner_mod_revision_ = r->revision;
                            owner_changed_ns_ = loop_->NowNanos();
                            role_ = Role::kOwner;
                            Log(absl::StrFormat("serving the pool at epoch %d (NBD %s and %s)", epoch_,
                                                nbd_unix_->socket_path(), nbd_tcp_->socket_path()));
                          });
  }

  void DropPool() {
    nbd_unix_ = nullptr;
    nbd_tcp_ = nullptr;
    pool_ = nullptr;
    owned_.clear();
    links_.clear();
  }

  void StepDown(const std::string& why) {
    if (role_ == Role::kFollower) return;
    Log(absl::StrFormat("giving up the pool (epoch %d): %s", epoch_, why));
    role_ = Role::kFollower;
    // From a loop callback of our own: the NBD servers and the pool are not on the stack.
    DropPool();
    absl::Status st = StartRelay();
    if (!st.ok()) Log(absl::StrFormat("NBD relay: %s", st.message()));
    if (owner_mod_revision_ != 0 && !isolated_) {
      etcd_->CompareAndSwap(kOwnerKey, owner_mod_revision_, "", LeaseId{}, [](absl::StatusOr<CasResult>) {});
    }
    owner_mod_revision_ = 0;
    owner_changed_ns_ = loop_->NowNanos();
  }

  // ------------------------------------------------------------------ membership -> pool
  void LinkDown(uint64_t node) {
    auto it = links_.find(node);
    if (!pool_ || it == links_.end() || !it->second.online) return;
    Log(absl::StrFormat("node %d unreachable: offline in the pool", node));
    it->second.online = false;
    it->second.offline_since_ns = loop_->NowNanos();
    pool_->SetNodeOnline(NodeId{node}, false);
  }

  void ReconcilePeers() {
    const int64_t now = loop_->NowNanos();
    // Disks not yet in our hands: new nodes, new disks, nodes that were down at open.
    for (const auto& [id, peer] : view_.alive) {
      auto [link, inserted] = links_.try_emplace(id);
      if (inserted) link->second.offline_since_ns = now;  // a node new to us: nothing to evict yet
      for (const PeerDisk& d : peer.disks) {
        auto it = owned_.find({id, d.index});
        if (it == owned_.end()) OpenPeerDisk(peer, d);
      }
    }
    for (auto& [id, link] : links_) {
      const bool registered = view_.alive.count(id) > 0;
      if (link.online && !registered) {
        LinkDown(id);
        continue;
      }
      if (!link.online && !link.evicted && HasPoolDisks(id) &&
          now - link.offline_since_ns > config_.evict_grace_ms * 1'000'000) {
        link.evicted = true;
        Log(absl::StrFormat("node %d away for %d ms: evicting it (re-mirroring its copies)", id,
                            (now - link.offline_since_ns) / 1'000'000));
        auto alive = alive_;
        pool_->EvictNode(NodeId{id}, [alive, id](absl::Status st) {
          if (*alive && !st.ok()) Log(absl::StrFormat("evicting node %d: %s", id, st.message()));
        });
      }
      if (!link.online && registered && !link.probing) Probe(id);
    }
  }

  void OpenPeerDisk(const Peer& peer, const PeerDisk& d) {
    OwnedDisk& owned = owned_[{peer.id, d.index}];
    owned.busy = true;
    RemoteDeviceOptions ro;
    ro.call_timeout_ns = std::max<int64_t>(2'000'000'000, config_.lease_ttl_ms * 1'000'000);
    ro.reconnect_backoff_max_ns = 1'000'000'000;
    auto alive = alive_;
    Pool* pool = pool_.get();
    const uint64_t node = peer.id, index = d.index;
    auto link_down = [this, alive, node] {
      if (*alive) LinkDown(node);
    };
    if (node == config_.node_id) {
      auto dev = disk_server_ ? disk_server_->OpenLocal(index, epoch_)
                              : absl::StatusOr<std::unique_ptr<BlockDevice>>(absl::UnavailableError("isolated"));
      if (!dev.ok()) {
        owned_.erase({node, index});
        return;
      }
      owned.device = std::make_unique<LinkDevice>(std::move(*dev), link_down);
      return AttachOrAdd(node, index, [] {});
    }
    OpenRemoteDevice(
        loop_, peer.backplane, d.index, epoch_,
        [this, alive, pool, node, index, link_down](absl::StatusOr<std::unique_ptr<BlockDevice>> dev) {
          if (!*alive || pool_.get() != pool) return;
          if (!dev.ok()) {
            owned_.erase({node, index});  // tried again on a later tick
            return;
          }
          owned_[{node, index}].device = std::make_unique<LinkDevice>(std::move(*dev), link_down);
          AttachOrAdd(node, index, [] {});
        },
        ro);
  }

  bool HasPoolDisks(uint64_t node) const {
    for (const auto& [key, d] : owned_) {
      if (key.first == node && d.id.valid()) return true;
    }
    // Disks the pool knows from before we opened it (their node was down) count too.
    return view_.members.count(node) > 0 && pool_ != nullptr && [&] {
      for (const DiskInfo& info : pool_->ListDisks()) {
        if (info.node == NodeId{node}) return true;
      }
      return false;
    }();
  }

  // A node that is registered again and whose disks answer comes back online.
  void Probe(uint64_t node) {
    std::vector<BlockDevice*> devices;
    for (auto& [key, d] : owned_) {
      if (key.first == node && d.device && !d.busy) devices.push_back(d.device.get());
    }
    if (devices.empty()) return;
    Link& link = links_[node];
    link.probing = true;
    auto buf = std::make_shared<AlignedBuffer>(4096);
    auto pending = std::make_shared<int>(static_cast<int>(devices.size()));
    auto ok = std::make_shared<bool>(true);
    auto alive = alive_;
    Pool* pool = pool_.get();
    for (BlockDevice* dev : devices) {
      dev->Read(0, 4096, buf->data(), [this, alive, pool, node, buf, pending, ok](absl::Status st) {
        if (!*alive || pool_.get() != pool) return;
        if (!st.ok()) *ok = false;
        if (--*pending != 0) return;
        Link& link = links_[node];
        link.probing = false;
        if (!*ok || link.online || !view_.alive.count(node)) return;
        // Disks the pool had no device for (node down at open) get theirs first.
        for (auto& [key, d] : owned_) {
          if (key.first == node && !d.id.valid() && !d.busy) AttachOrAdd(key.first, key.second, [] {});
        }
        Log(absl::StrFormat("node %d is back: online in the pool%s", node,
                            link.evicted ? " (evicted copies are freed)" : " (stale copies are caught up)"));
        link.online = true;
        link.evicted = false;
        pool_->SetNodeOnline(NodeId{node}, true);
      });
    }
  }

  void WaitForPoolDisk(uint64_t node, uint64_t index, int64_t give_up_ns,
                       std::function<void(absl::StatusOr<uint64_t>)> done) {
    if (role_ == Role::kOwner) {
      auto it = owned_.find({node, index});
      if (it != owned_.end() && it->second.id.valid()) return done(it->second.id.value);
    } else if (role_ == Role::kFollower && view_.owner != 0) {
      // Another node owns the pool; it adds the disk on its next look at etcd.
      return done(uint64_t{0});
    }
    if (loop_->NowNanos() > give_up_ns) {
      return done(absl::DeadlineExceededError("the disk is registered but the pool has not taken it yet"));
    }
    auto alive = alive_;
    loop_->RunAfter(config_.tick_ms * 1'000'000, [this, alive, node, index, give_up_ns, done] {
      if (*alive) WaitForPoolDisk(node, index, give_up_ns, done);
    });
  }

  // ------------------------------------------------------------------ writer fencing
  uint64_t WriterEpoch(const std::string& vsd) const {
    uint64_t e = 0;
    if (auto it = view_.writers.find(vsd); it != view_.writers.end()) e = it->second;
    if (auto it = writers_.find(vsd); it != writers_.end()) e = std::max(e, it->second);
    return e;
  }

  // Compare-and-swap the VSD's key in etcd up to `epoch` (never down).
  void RaiseWriter(std::string vsd, uint64_t epoch, int attempts, std::function<void(absl::Status)> done) {
    auto alive = alive_;
    const std::string key = kWritersPrefix + vsd;
    etcd_->Get(key, [this, alive, vsd, epoch, attempts, done, key](absl::StatusOr<std::optional<KeyValue>> kv) {
      if (!*alive) return;
      if (!kv.ok()) return done(kv.status());
      uint64_t stored = 0;
      int64_t rev = 0;
      if (kv->has_value()) {
        absl::SimpleAtoi((*kv)->value, &stored);
        rev = (*kv)->mod_revision;
      }
      if (stored >= epoch) {
        writers_[vsd] = std::max(writers_[vsd], stored);
        if (stored > epoch) {
          return done(absl::FailedPreconditionError(absl::StrFormat(
              "VSD \"%s\" already has writer epoch %d (asked for %d)", vsd, stored, epoch)));
        }
        return done(absl::OkStatus());
      }
      etcd_->CompareAndSwap(key, rev, absl::StrCat(epoch), LeaseId{},
                            [this, alive, vsd, epoch, attempts, done](absl::StatusOr<CasResult> r) {
                              if (!*alive) return;
                              if (!r.ok()) return done(r.status());
                              if (r->succeeded) {
                                writers_[vsd] = std::max(writers_[vsd], epoch);
                                Log(absl::StrFormat("VSD %s: writer epoch %d", vsd, epoch));
                                return done(absl::OkStatus());
                              }
                              if (attempts <= 1) return done(absl::AbortedError("writer epoch contended"));
                              RaiseWriter(vsd, epoch, attempts - 1, done);
                            });
    });
  }

  // ------------------------------------------------------------------ admin routing
  capnp::Capability::Client AdminTarget() {
    if (role_ == Role::kOwner || view_.owner == 0 || view_.owner == config_.node_id ||
        view_.owner_admin.empty() || isolated_) {
      return local_admin_;
    }
    if (!owner_admin_ || owner_admin_->address != view_.owner_admin) {
      auto link = std::make_shared<OwnerAdmin>();
      link->address = view_.owner_admin;
      auto& network = loop_->impl()->io.provider->getNetwork();
      auto promise = network.parseAddress(link->address)
                         .then([](kj::Own<kj::NetworkAddress> a) { return a->connect(); })
                         .then([link](kj::Own<kj::AsyncIoStream> s) -> capnp::Capability::Client {
                           link->stream = kj::mv(s);
                           link->client = kj::heap<capnp::TwoPartyClient>(*link->stream);
                           return link->client->bootstrap();
                         });
      auto weak = std::weak_ptr<OwnerAdmin>(link);
      link->cap = capnp::Capability::Client(promise.catch_([this, weak](kj::Exception&& e) -> capnp::Capability::Client {
        if (owner_admin_ == weak.lock()) owner_admin_ = nullptr;
        kj::throwFatalException(kj::mv(e));
      }));
      owner_admin_ = link;
    }
    return owner_admin_->cap;
  }

  struct OwnerAdmin {
    std::string address;
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<capnp::TwoPartyClient> client;
    capnp::Capability::Client cap = nullptr;
  };

  // ------------------------------------------------------------------ NBD relay
  // While another node owns the pool, local NBD clients are relayed to its NBD over TCP;
  // a relayed session follows the pool to its next owner (scribe/nbd_relay.h).
  absl::Status StartRelay() {
    nbd_unix_ = nullptr;
    return relay_->Listen(config_.nbd_socket);
  }

  RealLoop* loop_;
  NodeConfig config_;
  std::shared_ptr<bool> alive_;
  SeededRandom random_{static_cast<uint64_t>(getpid()) * 2654435761u ^
                       static_cast<uint64_t>(time(nullptr))};
  kj::Own<kj::TaskSet> tasks_;

  std::vector<std::unique_ptr<BlockDevice>> local_disks_;
  std::unique_ptr<DiskServer> disk_server_;
  uint16_t disk_server_port_ = 0;
  std::unique_ptr<EtcdMetaStore> etcd_;
  Peer self_;
  LeaseId lease_;
  int64_t renewed_at_ns_ = 0;
  Loop::TimerId tick_timer_ = 0, keepalive_timer_ = 0;
  bool listing_ = false;
  bool isolated_ = false;
  View view_;

  // Admin.
  kj::Own<kj::ConnectionReceiver> admin_listener_;
  uint16_t admin_port_ = 0;
  kj::Own<capnp::TwoPartyServer> admin_server_;
  capnp::Capability::Client local_admin_ = nullptr;
  std::shared_ptr<OwnerAdmin> owner_admin_;

  // NBD: served directly while we own the pool, relayed otherwise.
  std::unique_ptr<NbdRelay> relay_;
  std::unique_ptr<NbdServer> nbd_unix_;
  std::unique_ptr<NbdServer> nbd_tcp_;

  // Ownership.
  Role role_ = Role::kFollower;
  uint64_t epoch_ = 0;
  int64_t owner_mod_revision_ = 0;
  int64_t owner_changed_ns_ = 0;  // when we last wrote the owner key
  std::unique_ptr<Pool> pool_;
  std::map<std::pair<uint64_t, uint64_t>, OwnedDisk> owned_;
  std::map<uint64_t, Link> links_;
  std::map<std::string, uint64_t> writers_;  // raised here, maybe not yet in view_
};

}  // namespace

absl::StatusOr<std::unique_ptr<Node>> Node::Start(RealLoop* loop, NodeConfig config) {
  auto node = std::make_unique<NodeImpl>(loop, std::move(config));
  RETURN_IF_ERROR(node->Init());
  return std::unique_ptr<Node>(std::move(node));
}

}  // namespace scribe::daemon
