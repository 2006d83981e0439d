// scribe: the command-line client of scribed's management API (daemons/scribe_api.capnp).
//
// Decodes the command line, makes one or a few ScribeAdmin calls over TCP, and prints
// aligned tables (or, with --json anywhere on the line, one JSON document on stdout).
// Errors go to stderr as "scribe: <command>: <message>" with exit status 1; usage errors
// exit 2 with the usage text. `scribe help` prints the usage.
#include <capnp/ez-rpc.h>
#include <kj/async.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "daemons/cli/cli_common.h"
#include "daemons/cli/format.h"
#include "daemons/scribe_api.capnp.h"

namespace scribe::cli {
namespace {

constexpr char kDefaultAddress[] = "127.0.0.1:7001";
constexpr unsigned kDefaultPort = 7001;
// How long a connection attempt may take in wait-redundant before it counts as a failed poll.
constexpr int64_t kPollCallTimeoutSeconds = 10;
constexpr int64_t kPollIntervalMs = 500;
constexpr double kWaitRedundantDefaultSeconds = 600;
constexpr int64_t kProgressIntervalMs = 1000;
// absl::StatusCode::kUnavailable: no pool here right now (an owner change), worth waiting out.
constexpr uint16_t kUnavailableCode = 14;

constexpr char kUsage[] = R"(usage: scribe [--addr HOST:PORT] [--json] [--progress] COMMAND [ARGS]

Talks to scribed's admin API at --addr, else $SCRIBE_ADDR, else 127.0.0.1:7001 (any
node answers for the whole cluster). SIZE takes an optional suffix: 512, 4K, 10M, 1G,
2T (powers of 1024; bytes without one).

Cluster and pool:
  status                                      cluster membership and pool health
  node list                                   the cluster's nodes
  scrub                                       verify every copy of every block, repair bad copies
  wait-redundant [--timeout S]                wait until no chunk is degraded and no rebuild
                                              runs (exit 1 after S seconds; default 600)
Disks:
  disk list
  disk add --node N PATH SIZE [--tier ssd|hdd]
                                              add a file (created with SIZE if missing; SIZE 0:
                                              use it as it is) or block device of node N
  disk fail ID                                take a disk out; its chunks are re-mirrored
VSDs:
  vsd create NAME SIZE [--replication 2|3] [--flash-priority 0..11]
  vsd list
  vsd info NAME
  vsd resize NAME SIZE                        grow (shrinking is refused)
  vsd fence NAME EPOCH                        raise the writer epoch: NBD clients of
                                              "NAME@<older epoch>" can no longer write
  vsd delete NAME                             with its snapshots; clones are unaffected
  vsd export NAME [--node N]                  print the NBD URI on node N (default: the owner)
Snapshots and clones:
  snapshot create VSD NAME
  snapshot list VSD
  snapshot delete VSD NAME
  snapshot group NAME VSD...                  one point in time across several VSDs
  clone VSD CLONE [--snapshot SNAP]           a thin clone of VSD as it is now, or of SNAP
  revert VSD SNAP                             bring VSD back to SNAP (later writes are lost)
  diff VSD [FROM] TO                          extents that differ between snapshots FROM and
                                              TO (without FROM: everything written by TO)
  help                                        this text

Options (anywhere on the line):
  --addr HOST:PORT   the scribed to talk to
  --json             print one JSON document on stdout instead of tables
  --progress         show progress of scrub and wait-redundant on stderr even when it is
                     not a terminal
Exit status: 0 success, 1 failure (message on stderr), 2 usage error.
)";

constexpr const char* kGroups[] = {"node", "disk", "vsd", "snapshot"};
constexpr const char* kSwitches[] = {"--progress"};
constexpr Tool kTool = {
    .name = "scribe",
    .daemon = "scribed",
    .usage = kUsage,
    .default_address = kDefaultAddress,
    .default_port = kDefaultPort,
    .groups = kGroups,
    .switches = kSwitches,
};

struct Options {
  std::string address;
  bool json = false;
  bool progress = false;  // stderr is a terminal, or --progress
  bool progress_is_tty = false;
};

// ------------------------------------------------------------------ arguments

uint64_t IdArg(const std::string& what, const std::string& text) {
  std::optional<uint64_t> id = ParseUint(text);
  if (!id) throw UsageError{absl::StrFormat("%s '%s' is not a number", what, text)};
  return *id;
}

// ------------------------------------------------------------------- encoding

const char* TierName(api::Tier tier) {
  switch (tier) {
    case api::Tier::SSD:
      return "ssd";
    case api::Tier::HDD:
      return "hdd";
  }
  return "unknown";
}

void JsonVsd(JsonWriter& j, api::VsdInfo::Reader v) {
  j.BeginObject()
      .Field("id", v.getId())
      .Field("name", Str(v.getName()))
      .Field("size_bytes", v.getSizeBytes())
      .Field("replication", uint64_t{v.getReplication()})
      .Field("flash_priority", uint64_t{v.getFlashPriority()})
      .Field("allocated_bytes", v.getAllocatedBytes())
      .Field("unique_bytes", v.getUniqueBytes())
      .Field("shared_bytes", v.getSharedBytes())
      .Field("snapshots", uint64_t{v.getSnapshots()})
      .EndObject();
}

void JsonSnapshot(JsonWriter& j, api::SnapshotInfo::Reader s, const std::string& vsd_name) {
  j.BeginObject()
      .Field("id", s.getId())
      .Field("vsd", s.getVsd())
      .Field("vsd_name", vsd_name)
      .Field("name", Str(s.getName()))
      .Field("generation", s.getGeneration())
      .Field("unique_bytes", s.getUniqueBytes())
      .EndObject();
}

void JsonDisk(JsonWriter& j, api::DiskInfo::Reader d) {
  const uint64_t free_bytes =
      d.getCapacityBytes() > d.getUsedBytes() ? d.getCapacityBytes() - d.getUsedBytes() : 0;
  j.BeginObject()
      .Field("id", d.getId())
      .Field("node", d.getNode())
      .Field("tier", TierName(d.getTier()))
      .Field("capacity_bytes", d.getCapacityBytes())
      .Field("used_bytes", d.getUsedBytes())
      .Field("free_bytes", free_bytes)
      .Field("chunks", d.getChunks())
      .Field("failed", d.getFailed())
      .Field("online", d.getOnline())
      .EndObject();
}

void JsonTierSpace(JsonWriter& j, const char* key, uint64_t capacity, uint64_t used) {
  j.Key(key)
      .BeginObject()
      .Field("capacity_bytes", capacity)
      .Field("used_bytes", used)
      .Field("free_bytes", capacity > used ? capacity - used : 0)
      .EndObject();
}

void JsonStats(JsonWriter& j, api::PoolStats::Reader s) {
  j.BeginObject();
  JsonTierSpace(j, "ssd", s.getSsdCapacityBytes(), s.getSsdUsedBytes());
  JsonTierSpace(j, "hdd", s.getHddCapacityBytes(), s.getHddUsedBytes());
  j.Field("chunks", s.getChunks())
      .Field("degraded_chunks", s.getDegradedChunks())
      .Field("rebuilds_in_flight", s.getRebuildsInFlight())
      .Field("chunks_rebuilt", s.getChunksRebuilt())
      .Field("metadata_sequence", s.getMetadataSequence())
      .Field("fully_redundant", s.getFullyRedundant())
      .Field("fenced", s.getFenced())
      .Field("metadata_chunks", s.getMetadataChunks())
      .Field("checkpoints", s.getCheckpoints())
      .Field("last_checkpoint_pages", s.getLastCheckpointPages())
      .Field("last_checkpoint_root_bytes", s.getLastCheckpointRootBytes())
      .Field("delete_subtrees_pending", s.getDeleteSubtreesPending())
      .Field("delete_bytes_freed", s.getDeleteBytesFreed())
      .EndObject();
}

void JsonNode(JsonWriter& j, api::NodeStatus::Reader n) {
  j.BeginObject()
      .Field("id", n.getId())
      .Field("admin_address", Str(n.getAdminAddress()))
      .Field("backplane_address", Str(n.getBackplaneAddress()))
      .Field("nbd_socket", Str(n.getNbdSocket()))
      .Field("alive", n.getAlive())
      .Field("reachable", n.getReachable())
      .Field("owner", n.getOwner())
      .EndObject();
}

void JsonCluster(JsonWriter& j, api::ClusterStatus::Reader c) {
  j.BeginObject()
      .Field("owner_node", c.getOwnerNode())
      .Field("epoch", c.getEpoch())
      .Field("state", Str(c.getState()))
      .Key("nodes")
      .BeginArray();
  for (auto n : c.getNodes()) JsonNode(j, n);
  j.EndArray().EndObject();
}

std::string NodesTable(api::ClusterStatus::Reader c) {
  Table t({"NODE", "OWNER", "ALIVE", "REACHABLE", "ADMIN", "BACKPLANE", "NBD SOCKET"});
  for (auto n : c.getNodes()) {
    t.AddRow({Num(n.getId()), n.getOwner() ? "*" : "", YesNo(n.getAlive()), YesNo(n.getReachable()),
              Str(n.getAdminAddress()), Str(n.getBackplaneAddress()), Str(n.getNbdSocket())});
  }
  return t.Render();
}

std::string ClusterLine(api::ClusterStatus::Reader c) {
  const std::string owner = c.getOwnerNode() == 0
                                ? std::string("no owner")
                                : absl::StrFormat("owner node %d", c.getOwnerNode());
  const std::string state = c.getState().size() > 0 ? Str(c.getState()) : std::string("unknown");
  return absl::StrFormat("cluster: %s, %s, epoch %d, %d node(s)\n", state, owner, c.getEpoch(),
                         c.getNodes().size());
}

std::string PoolText(api::PoolStats::Reader s) {
  Table t({"TIER", "CAPACITY", "USED", "FREE"});
  auto row = [&](const char* tier, uint64_t capacity, uint64_t used) {
    t.AddRow({tier, HumanBytes(capacity), HumanBytes(used),
              HumanBytes(capacity > used ? capacity - used : 0)});
  };
  row("ssd", s.getSsdCapacityBytes(), s.getSsdUsedBytes());
  row("hdd", s.getHddCapacityBytes(), s.getHddUsedBytes());
  std::string out = t.Render();
  out += absl::StrFormat("chunks %d, degraded %d, rebuilding %d, rebuilt %d\n", s.getChunks(),
                         s.getDegradedChunks(), s.getRebuildsInFlight(), s.getChunksRebuilt());
  out += absl::StrFormat("fully redundant: %s\n", YesNo(s.getFullyRedundant()));
  out += absl::StrFormat("metadata: %d chunks, %d checkpoints, the last wrote %d pages and a %s root\n",
                         s.getMetadataChunks(), s.getCheckpoints(), s.getLastCheckpointPages(),
                         HumanBytes(s.getLastCheckpointRootBytes()));
  if (s.getDeleteSubtreesPending() > 0) {
    out += absl::StrFormat("deleting in the background: %d subtrees left, %s freed so far\n",
                           s.getDeleteSubtreesPending(), HumanBytes(s.getDeleteBytesFreed()));
  }
  if (s.getFenced()) out += "FENCED: a newer pool owner took over; this pool refuses every call\n";
  return out;
}

std::string VsdLine(api::VsdInfo::Reader v) {
  return absl::StrFormat("%s (%s, %d copies, flash priority %d, id %d)", Str(v.getName()),
                         HumanBytes(v.getSizeBytes()), v.getReplication(), v.getFlashPriority(),
                         v.getId());
}

// ------------------------------------------------------------------ progress

// Shows a one-line status on stderr: rewritten in place on a terminal, one line per change
// otherwise (only with --progress).
class Progress {
 public:
  explicit Progress(const Options& options) : options_(options) {}
  ~Progress() { Done(); }

  void Show(const std::string& line) {
    if (!options_.progress || line == last_) return;
    last_ = line;
    if (options_.progress_is_tty) {
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      shown_ = true;
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

  void Done() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
    shown_ = false;
  }

 private:
  const Options& options_;
  std::string last_;
  bool shown_ = false;
};

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// -------------------------------------------------------------------- commands

class Cli {
 public:
  explicit Cli(Options options) : options_(std::move(options)) {}

  // Runs `words` (the command line without globals); returns the exit status.
  int Run(const std::vector<std::string>& words);

 private:
  Connection& conn() {
    if (!connection_) connection_ = std::make_unique<Connection>(kTool, options_.address);
    return *connection_;
  }
  api::ScribeAdmin::Client admin() { return conn().Main<api::ScribeAdmin>(); }

  void Status(const Args& a);
  void NodeList(const Args& a);
  void DiskList(const Args& a);
  void DiskAdd(const Args& a);
  void DiskFail(const Args& a);
  void VsdCreate(const Args& a);
  void VsdList(const Args& a);
  void VsdInfo(const Args& a);
  void VsdResize(const Args& a);
  void VsdFence(const Args& a);
  void VsdDelete(const Args& a);
  void VsdExport(const Args& a);
  void SnapshotCreate(const Args& a);
  void SnapshotList(const Args& a);
  void SnapshotDelete(const Args& a);
  void SnapshotGroup(const Args& a);
  void Clone(const Args& a);
  void Revert(const Args& a);
  void Diff(const Args& a);
  void Scrub(const Args& a);
  void WaitRedundant(const Args& a);

  Options options_;
  std::unique_ptr<Connection> connection_;
};

void Cli::Status(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  auto cluster = conn().Wait(admin().clusterRequest().send());
  Check(cluster.getError());
  auto stats = conn().Wait(admin().statsRequest().send());
  const bool have_pool = stats.getError().getCode() == 0;
  const std::string pool_error = Str(stats.getError().getMessage());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("cluster");
    JsonCluster(j, cluster.getStatus());
    j.Key("pool");
    if (have_pool) {
      JsonStats(j, stats.getStats());
    } else {
      j.Null().Field("pool_error", pool_error);
    }
    j.EndObject();
    return PrintJson(j);
  }
  std::string out = ClusterLine(cluster.getStatus());
  out += NodesTable(cluster.getStatus());
  out += "\n";
  if (have_pool) {
    out += "pool:\n" + PoolText(stats.getStats());
  } else {
    out += "pool: unavailable: " + pool_error + "\n";
  }
  Print(out);
}

void Cli::NodeList(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  auto cluster = conn().Wait(admin().clusterRequest().send());
  Check(cluster.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("nodes").BeginArray();
    for (auto n : cluster.getStatus().getNodes()) JsonNode(j, n);
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Print(NodesTable(cluster.getStatus()));
}

void Cli::DiskList(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  auto reply = conn().Wait(admin().listDisksRequest().send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("disks").BeginArray();
    for (auto d : reply.getDisks()) JsonDisk(j, d);
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Table t({"DISK", "NODE", "TIER", "CAPACITY", "USED", "FREE", "CHUNKS", "STATE"});
  for (auto d : reply.getDisks()) {
    const uint64_t free_bytes =
        d.getCapacityBytes() > d.getUsedBytes() ? d.getCapacityBytes() - d.getUsedBytes() : 0;
    const char* state = d.getFailed() ? "failed" : d.getOnline() ? "ok" : "offline";
    t.AddRow({Num(d.getId()), Num(d.getNode()), TierName(d.getTier()),
              HumanBytes(d.getCapacityBytes()), HumanBytes(d.getUsedBytes()),
              HumanBytes(free_bytes), Num(d.getChunks()), state});
  }
  Print(t.Render());
}

void Cli::DiskAdd(const Args& a) {
  a.ExpectCount(2, 2, "--node N PATH SIZE");
  std::optional<std::string> node_text = a.Flag("--node");
  if (!node_text) throw UsageError{"--node N is required"};
  const uint64_t node = IdArg("--node", *node_text);
  const std::string& path = a.positional()[0];
  const uint64_t size = SizeArg("SIZE", a.positional()[1]);
  const std::string tier_text = a.Flag("--tier").value_or("hdd");
  api::Tier tier;
  if (tier_text == "ssd") {
    tier = api::Tier::SSD;
  } else if (tier_text == "hdd") {
    tier = api::Tier::HDD;
  } else {
    throw UsageError{absl::StrFormat("--tier is ssd or hdd, not '%s'", tier_text)};
  }
  auto req = admin().addDiskRequest();
  req.setNode(node);
  req.setPath(Text(path));
  req.setSizeBytes(size);
  req.setTier(tier);
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject()
        .Field("disk", reply.getDisk())
        .Field("node", node)
        .Field("path", path)
        .Field("size_bytes", size)
        .Field("tier", tier_text)
        .EndObject();
    return PrintJson(j);
  }
  Print(absl::StrFormat("added disk %d on node %d: %s (%s, %s)\n", reply.getDisk(), node, path,
                        size == 0 ? std::string("existing size") : HumanBytes(size), tier_text));
}

void Cli::DiskFail(const Args& a) {
  a.ExpectCount(1, 1, "ID");
  const uint64_t disk = IdArg("ID", a.positional()[0]);
  auto req = admin().failDiskRequest();
  req.setDisk(disk);
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Field("disk", disk).Field("failed", true).EndObject();
    return PrintJson(j);
  }
  Print(absl::StrFormat(
      "disk %d is failed; its chunks are being re-mirrored (see `scribe wait-redundant`)\n", disk));
}

void Cli::VsdCreate(const Args& a) {
  a.ExpectCount(2, 2, "NAME SIZE");
  auto req = admin().createVsdRequest();
  req.setName(Text(a.positional()[0]));
  req.setSizeBytes(SizeArg("SIZE", a.positional()[1]));
  req.setReplication(a.UintFlag<uint8_t>("--replication", 2, 255));
  req.setFlashPriority(a.UintFlag<uint8_t>("--flash-priority", 4, 255));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    JsonVsd(j, reply.getVsd());
    return PrintJson(j);
  }
  Print("created vsd " + VsdLine(reply.getVsd()) + "\n");
}

void Cli::VsdList(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  auto reply = conn().Wait(admin().listVsdsRequest().send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("vsds").BeginArray();
    for (auto v : reply.getVsds()) JsonVsd(j, v);
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Table t({"NAME", "SIZE", "COPIES", "FLASH", "ALLOCATED", "UNIQUE", "SNAPSHOTS", "ID"});
  for (auto v : reply.getVsds()) {
    t.AddRow({Str(v.getName()), HumanBytes(v.getSizeBytes()), Num(v.getReplication()),
              Num(v.getFlashPriority()), HumanBytes(v.getAllocatedBytes()),
              HumanBytes(v.getUniqueBytes()), Num(v.getSnapshots()), Num(v.getId())});
  }
  Print(t.Render());
}

void Cli::VsdInfo(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().getVsdRequest();
  req.setName(Text(a.positional()[0]));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  auto v = reply.getVsd();
  if (options_.json) {
    JsonWriter j;
    JsonVsd(j, v);
    return PrintJson(j);
  }
  auto bytes = [](uint64_t b) { return absl::StrFormat("%s (%d bytes)", HumanBytes(b), b); };
  Table t({"name:", Str(v.getName())});
  t.AddRow({"id:", Num(v.getId())});
  t.AddRow({"size:", bytes(v.getSizeBytes())});
  t.AddRow({"copies:", Num(v.getReplication())});
  t.AddRow({"flash priority:", Num(v.getFlashPriority())});
  t.AddRow({"allocated:", bytes(v.getAllocatedBytes())});
  t.AddRow({"unique:", bytes(v.getUniqueBytes())});
  t.AddRow({"shared:", bytes(v.getSharedBytes())});
  t.AddRow({"snapshots:", Num(v.getSnapshots())});
  Print(t.Render());
}

void Cli::VsdResize(const Args& a) {
  a.ExpectCount(2, 2, "NAME SIZE");
  auto req = admin().resizeVsdRequest();
  req.setName(Text(a.positional()[0]));
  req.setSizeBytes(SizeArg("SIZE", a.positional()[1]));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    JsonVsd(j, reply.getVsd());
    return PrintJson(j);
  }
  Print(absl::StrFormat("resized vsd %s to %s\n", Str(reply.getVsd().getName()),
                        HumanBytes(reply.getVsd().getSizeBytes())));
}

void Cli::VsdFence(const Args& a) {
  a.ExpectCount(2, 2, "NAME EPOCH");
  uint64_t epoch = 0;
  if (!absl::SimpleAtoi(a.positional()[1], &epoch) || epoch == 0) {
    throw UsageError{absl::StrFormat("EPOCH must be a positive integer (got '%s')", a.positional()[1])};
  }
  auto req = admin().fenceVsdRequest();
  req.setVsd(Text(a.positional()[0]));
  req.setEpoch(epoch);
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Field("vsd", a.positional()[0]).Field("epoch", epoch).EndObject();
    return PrintJson(j);
  }
  Print(absl::StrFormat("vsd %s: writer epoch %d\n", a.positional()[0], epoch));
}

void Cli::VsdDelete(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().deleteVsdRequest();
  req.setName(Text(a.positional()[0]));
  Check(conn().Wait(req.send()).getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Field("deleted", a.positional()[0]).EndObject();
    return PrintJson(j);
  }
  Print("deleted vsd " + a.positional()[0] + "\n");
}

void Cli::VsdExport(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().exportInfoRequest();
  req.setVsd(Text(a.positional()[0]));
  req.setNode(a.UintFlag<uint64_t>("--node", 0, UINT64_MAX));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject()
        .Field("vsd", a.positional()[0])
        .Field("node", reply.getNode())
        .Field("nbd_socket", Str(reply.getNbdSocket()))
        .Field("export_name", Str(reply.getExportName()))
        .Field("uri", Str(reply.getUri()))
        .EndObject();
    return PrintJson(j);
  }
  Print(Str(reply.getUri()) + "\n");
}

void Cli::SnapshotCreate(const Args& a) {
  a.ExpectCount(2, 2, "VSD NAME");
  const std::string& vsd = a.positional()[0];
  auto req = admin().createSnapshotRequest();
  req.setVsd(Text(vsd));
  req.setName(Text(a.positional()[1]));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    JsonSnapshot(j, reply.getSnapshot(), vsd);
    return PrintJson(j);
  }
  Print(absl::StrFormat("created snapshot %s of vsd %s (id %d)\n",
                        Str(reply.getSnapshot().getName()), vsd, reply.getSnapshot().getId()));
}

void Cli::SnapshotList(const Args& a) {
  a.ExpectCount(1, 1, "VSD");
  const std::string& vsd = a.positional()[0];
  auto req = admin().listSnapshotsRequest();
  req.setVsd(Text(vsd));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Field("vsd", vsd).Key("snapshots").BeginArray();
    for (auto s : reply.getSnapshots()) JsonSnapshot(j, s, vsd);
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Table t({"NAME", "UNIQUE", "GENERATION", "ID"});
  for (auto s : reply.getSnapshots()) {
    t.AddRow(
        {Str(s.getName()), HumanBytes(s.getUniqueBytes()), Num(s.getGeneration()), Num(s.getId())});
  }
  Print(t.Render());
}

void Cli::SnapshotDelete(const Args& a) {
  a.ExpectCount(2, 2, "VSD NAME");
  auto req = admin().deleteSnapshotRequest();
  req.setVsd(Text(a.positional()[0]));
  req.setName(Text(a.positional()[1]));
  Check(conn().Wait(req.send()).getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Field("vsd", a.positional()[0]).Field("deleted", a.positional()[1]).EndObject();
    return PrintJson(j);
  }
  Print(absl::StrFormat("deleted snapshot %s of vsd %s\n", a.positional()[1], a.positional()[0]));
}

void Cli::SnapshotGroup(const Args& a) {
  a.ExpectCount(2, SIZE_MAX, "NAME VSD...");
  const std::string& name = a.positional()[0];
  const std::vector<std::string> vsds(a.positional().begin() + 1, a.positional().end());
  auto req = admin().createGroupSnapshotRequest();
  req.setName(Text(name));
  auto list = req.initVsds(static_cast<unsigned>(vsds.size()));
  for (size_t i = 0; i < vsds.size(); ++i) list.set(i, Text(vsds[i]));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  auto snapshots = reply.getSnapshots();
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Field("name", name).Key("snapshots").BeginArray();
    for (size_t i = 0; i < snapshots.size(); ++i) {
      JsonSnapshot(j, snapshots[i], i < vsds.size() ? vsds[i] : std::string());
    }
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Print(absl::StrFormat("created snapshot %s of %d vsd(s) at one point in time:\n", name,
                        snapshots.size()));
  Table t({"VSD", "SNAPSHOT", "ID"});
  for (size_t i = 0; i < snapshots.size(); ++i) {
    t.AddRow(
        {i < vsds.size() ? vsds[i] : "", Str(snapshots[i].getName()), Num(snapshots[i].getId())});
  }
  Print(t.Render());
}

void Cli::Clone(const Args& a) {
  a.ExpectCount(2, 2, "VSD CLONE");
  const std::string& vsd = a.positional()[0];
  const std::string& clone = a.positional()[1];
  std::optional<std::string> snapshot = a.Flag("--snapshot");
  std::optional<capnp::Response<api::ScribeAdmin::CloneVsdResults>> live;
  std::optional<capnp::Response<api::ScribeAdmin::CloneFromSnapshotResults>> frozen;
  api::VsdInfo::Reader info;
  if (snapshot) {
    auto req = admin().cloneFromSnapshotRequest();
    req.setVsd(Text(vsd));
    req.setSnapshot(Text(*snapshot));
    req.setCloneName(Text(clone));
    frozen.emplace(conn().Wait(req.send()));
    Check(frozen->getError());
    info = frozen->getClone();
  } else {
    auto req = admin().cloneVsdRequest();
    req.setVsd(Text(vsd));
    req.setCloneName(Text(clone));
    live.emplace(conn().Wait(req.send()));
    Check(live->getError());
    info = live->getClone();
  }
  if (options_.json) {
    JsonWriter j;
    JsonVsd(j, info);
    return PrintJson(j);
  }
  Print(absl::StrFormat("cloned %s%s into vsd %s\n", vsd,
                        snapshot ? " at snapshot " + *snapshot : std::string(" (live)"),
                        VsdLine(info)));
}

void Cli::Revert(const Args& a) {
  a.ExpectCount(2, 2, "VSD SNAP");
  auto req = admin().revertToSnapshotRequest();
  req.setVsd(Text(a.positional()[0]));
  req.setSnapshot(Text(a.positional()[1]));
  Check(conn().Wait(req.send()).getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject()
        .Field("vsd", a.positional()[0])
        .Field("reverted_to", a.positional()[1])
        .EndObject();
    return PrintJson(j);
  }
  Print(absl::StrFormat("reverted vsd %s to snapshot %s\n", a.positional()[0], a.positional()[1]));
}

void Cli::Diff(const Args& a) {
  a.ExpectCount(2, 3, "VSD [FROM] TO");
  const auto& p = a.positional();
  const std::string& vsd = p[0];
  const std::string from = p.size() == 3 ? p[1] : "";
  const std::string& to = p.back();
  auto req = admin().diffRequest();
  req.setVsd(Text(vsd));
  req.setFrom(Text(from));
  req.setTo(Text(to));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  uint64_t changed = 0;
  for (auto e : reply.getExtents()) changed += e.getLengthBytes();
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Field("vsd", vsd).Key("from");
    if (from.empty()) {
      j.Null();
    } else {
      j.String(from);
    }
    j.Field("to", to).Field("changed_bytes", changed).Key("extents").BeginArray();
    for (auto e : reply.getExtents()) {
      j.BeginObject()
          .Field("offset_bytes", e.getOffsetBytes())
          .Field("length_bytes", e.getLengthBytes())
          .EndObject();
    }
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Table t({"OFFSET", "LENGTH", "OFFSET BYTES", "LENGTH BYTES"});
  for (auto e : reply.getExtents()) {
    t.AddRow({HumanBytes(e.getOffsetBytes()), HumanBytes(e.getLengthBytes()),
              Num(e.getOffsetBytes()), Num(e.getLengthBytes())});
  }
  Print(t.Render());
  if (from.empty()) {
    Print(absl::StrFormat("%d extent(s), %s written as of %s\n", reply.getExtents().size(),
                          HumanBytes(changed), to));
  } else {
    Print(absl::StrFormat("%d extent(s), %s changed between %s and %s\n", reply.getExtents().size(),
                          HumanBytes(changed), from, to));
  }
}

void Cli::Scrub(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  Progress progress(options_);
  const auto start = std::chrono::steady_clock::now();
  // The call is one long RPC; while it runs, a ticker says how long it has been running.
  std::function<kj::Promise<void>()> tick = [&]() -> kj::Promise<void> {
    return conn().timer().afterDelay(kProgressIntervalMs * kj::MILLISECONDS).then([&] {
      progress.Show(absl::StrFormat("scrubbing: %.0f s", SecondsSince(start)));
      return tick();
    });
  };
  auto call = admin().scrubRequest().send();
  kj::Promise<void> ticker = tick().eagerlyEvaluate(nullptr);
  // No timeout: scrub runs as long as the pool is big.
  auto reply = conn().Wait(kj::mv(call), /*timeout_s=*/0);
  ticker = nullptr;
  progress.Done();
  Check(reply.getError());
  auto r = reply.getReport();
  if (options_.json) {
    JsonWriter j;
    j.BeginObject()
        .Field("chunks_checked", r.getChunksChecked())
        .Field("blocks_checked", r.getBlocksChecked())
        .Field("bad_copies", r.getBadCopies())
        .Field("repaired", r.getRepaired())
        .Field("unrecoverable", r.getUnrecoverable())
        .Key("seconds")
        .Double(SecondsSince(start))
        .EndObject();
    return PrintJson(j);
  }
  Print(absl::StrFormat(
      "scrub: %d chunks, %d blocks checked; %d bad copies, %d repaired, %d unrecoverable "
      "(%.1f s)\n",
      r.getChunksChecked(), r.getBlocksChecked(), r.getBadCopies(), r.getRepaired(),
      r.getUnrecoverable(), SecondsSince(start)));
  if (r.getUnrecoverable() > 0) {
    throw CommandError{absl::StrFormat("%d block(s) have no good copy left", r.getUnrecoverable())};
  }
}

// Polls stats until the pool is fully redundant. Keeps polling through a lost connection
// or a pool that is unavailable (an owner change), since that is what it waits out.
void Cli::WaitRedundant(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  double timeout_s = kWaitRedundantDefaultSeconds;
  if (std::optional<std::string> text = a.Flag("--timeout")) {
    char* end = nullptr;
    timeout_s = std::strtod(text->c_str(), &end);
    if (text->empty() || *end != '\0' || !(timeout_s >= 0) || timeout_s > 1e7) {
      throw UsageError{absl::StrFormat("--timeout wants seconds, not '%s'", *text)};
    }
  }
  Progress progress(options_);
  const auto start = std::chrono::steady_clock::now();
  std::string last_state = "no answer yet";
  for (;;) {
    const double remaining = timeout_s - SecondsSince(start);
    const int64_t call_timeout_s =
        std::max<int64_t>(1, std::min<int64_t>(kPollCallTimeoutSeconds, remaining + 1));
    std::optional<capnp::Response<api::ScribeAdmin::StatsResults>> reply;
    try {
      reply.emplace(conn().Wait(admin().statsRequest().send(), call_timeout_s));
    } catch (const CommandError& e) {
      // A lost connection (scribed restarting, an owner change): connect again next time.
      last_state = e.message;
      connection_.reset();
    }
    if (reply) {
      auto error = reply->getError();
      if (error.getCode() == 0) {
        auto s = reply->getStats();
        if (s.getFullyRedundant()) {
          progress.Done();
          if (options_.json) {
            JsonWriter j;
            j.BeginObject()
                .Field("fully_redundant", true)
                .Field("chunks", s.getChunks())
                .Field("chunks_rebuilt", s.getChunksRebuilt())
                .Key("waited_seconds")
                .Double(SecondsSince(start))
                .EndObject();
            PrintJson(j);
          } else {
            Print(absl::StrFormat("fully redundant: %d chunks, %d rebuilt (waited %.1f s)\n",
                                  s.getChunks(), s.getChunksRebuilt(), SecondsSince(start)));
          }
          return;
        }
        last_state =
            absl::StrFormat("degraded chunks %d, rebuilding %d, rebuilt %d", s.getDegradedChunks(),
                            s.getRebuildsInFlight(), s.getChunksRebuilt());
      } else if (error.getCode() == kUnavailableCode) {
        last_state = "waiting for the pool: " + Str(error.getMessage());
      } else {
        Check(error);
      }
    }
    progress.Show(last_state);
    if (SecondsSince(start) >= timeout_s) {
      progress.Done();
      throw CommandError{
          absl::StrFormat("not fully redundant after %g s (%s)", timeout_s, last_state)};
    }
    const double left_ms = (timeout_s - SecondsSince(start)) * 1000;
    const int64_t sleep_ms =
        std::max<int64_t>(1, std::min<int64_t>(kPollIntervalMs, static_cast<int64_t>(left_ms)));
    conn().Sleep(sleep_ms);
  }
}

int Cli::Run(const std::vector<std::string>& words) {
  // Every option of a scribe command takes a value.
  const std::vector<Command<Cli>> commands = {
      {"status", {}, &Cli::Status},
      {"node list", {}, &Cli::NodeList},
      {"disk list", {}, &Cli::DiskList},
      {"disk add", {.values = {"--node", "--tier"}}, &Cli::DiskAdd},
      {"disk fail", {}, &Cli::DiskFail},
      {"vsd create", {.values = {"--replication", "--flash-priority"}}, &Cli::VsdCreate},
      {"vsd list", {}, &Cli::VsdList},
      {"vsd info", {}, &Cli::VsdInfo},
      {"vsd resize", {}, &Cli::VsdResize},
      {"vsd fence", {}, &Cli::VsdFence},
      {"vsd delete", {}, &Cli::VsdDelete},
      {"vsd export", {.values = {"--node"}}, &Cli::VsdExport},
      {"snapshot create", {}, &Cli::SnapshotCreate},
      {"snapshot list", {}, &Cli::SnapshotList},
      {"snapshot delete", {}, &Cli::SnapshotDelete},
      {"snapshot group", {}, &Cli::SnapshotGroup},
      {"clone", {.values = {"--snapshot"}}, &Cli::Clone},
      {"revert", {}, &Cli::Revert},
      {"diff", {}, &Cli::Diff},
      {"scrub", {}, &Cli::Scrub},
      {"wait-redundant", {.values = {"--timeout"}}, &Cli::WaitRedundant},
  };
  return RunCommand(kTool, *this, commands, words, FlagPrefix::kDash);
}

int Main(int argc, char** argv) {
  // A peer that hangs up must surface as an error, not kill the process.
  signal(SIGPIPE, SIG_IGN);
  const CommandLine line = ParseCommandLine(kTool, std::vector<std::string>(argv + 1, argv + argc),
                                            std::getenv("SCRIBE_ADDR"));
  Options options;
  options.address = line.address;
  options.json = line.json;
  options.progress_is_tty = isatty(STDERR_FILENO) == 1;
  options.progress = line.switches.count("--progress") > 0 || options.progress_is_tty;
  return RunReportingErrors(kTool, line, [&] {
    Cli cli(options);
    return cli.Run(line.words);
  });
}

}  // namespace
}  // namespace scribe::cli

int main(int argc, char** argv) { return scribe::cli::Main(argc, argv); }
