// HypercoreAdmin in one process and one loop: the service over a real HaManager (an
// InMemoryMetaStore on the RealLoop), libvirt's in-process test driver
// ("test:///default") and the fake scribed (the real ScribeAdmin over a pool on sparse
// files, recording every call, answering fenceVsd). Assertions are on data: the calls
// scribed received, the VSDs and their bytes in the pool, the domain XML libvirt holds.
#include "daemons/hypercored/service.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemons/hypercored/fake_scribed.h"
#include "daemons/hypercored/media_writer.h"
#include "daemons/hypercored/scribe_client.h"
#include "hypercore/libvirt_hypervisor.h"
#include "libscribe/env/real_loop_internal.h"
#include "scribe/meta_store.h"
#include "scribe/sim_env.h"

namespace hypercore::daemon {
namespace {

using testing::FakeScribed;
using testing::FakeScribedOptions;

constexpr int64_t kSecondNs = 1'000'000'000;
constexpr uint64_t kMiB = 1ull << 20;

capnp::Text::Reader T(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }
std::string Str(capnp::Text::Reader t) { return std::string(t.begin(), t.size()); }

absl::Status StatusOf(api::Error::Reader e) {
  if (e.getCode() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(e.getCode()), Str(e.getMessage()));
}

struct DiskArg {
  std::string name;
  uint64_t size_bytes;
  uint8_t replication = 2;
  uint8_t flash_priority = 4;
};

struct VmArgs {
  std::string name;
  uint64_t ram_mib = 256;
  uint16_t vcpus = 1;
  std::vector<DiskArg> disks;
  std::vector<uint16_t> vlans;  // one NIC per entry (0: untagged)
  std::vector<std::string> tags;
  std::string description;
  std::string cdrom;
  std::string kernel;  // direct kernel boot when set
  std::string initrd;
};

class ServiceTest : public ::testing::Test {
 protected:
  // KJ members may throw from their destructors; TearDown has released them already.
  ~ServiceTest() noexcept override {}

  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    dir_ = std::string(tmp ? tmp : "/tmp") + "/hcd_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name() + "." + std::to_string(getpid());
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0) << dir_;
    // Unix socket paths must be short: a directory of their own under /tmp.
    char sock_dir[] = "/tmp/hcdXXXXXX";
    ASSERT_NE(mkdtemp(sock_dir), nullptr);
    sock_dir_ = sock_dir;
    loop_ = scribe::RealLoop::Create();

    FakeScribedOptions fo;
    fo.dir = dir_;
    fo.nbd_socket = sock_dir_ + "/nbd.sock";
    fo.disk_bytes = 256 * kMiB;
    fo.vsd_bytes_max = vsd_bytes_max_;
    auto scribed = FakeScribed::Create(loop_.get(), fo);
    ASSERT_TRUE(scribed.ok()) << scribed.status();
    scribed_ = *std::move(scribed);
    link_ = NewFixedScribeLink(scribed_->client(), "the fake scribed");
    scribe_ = std::make_unique<ScribeClient>(link_.get(), &loop_->impl()->io.provider->getTimer());

    store_ = scribe::InMemoryMetaStore::Create(loop_.get());
    LibvirtHypervisorOptions lo;
    lo.uri = "test:///default";
    lo.domain_type = "qemu";
    auto hv = LibvirtHypervisor::Create(loop_.get(), lo);
    ASSERT_TRUE(hv.ok()) << hv.status();
    hv_ = *std::move(hv);

    preparer_ = std::make_unique<StartPreparer>(scribe_.get(), scribed_->node_id());
    HaOptions ho;
    ho.node = "node1";
    ho.ram_bytes = 4096 * kMiB;
    ho.cpus = 4;
    ho.lease_ttl_ms = 3'000;
    ho.shutdown_timeout_ms = 2'000;
    ho.start_retry_ms = 500;
    ho.rescan_interval_ms = 200;
    ho.launch = LaunchOptions(scribed_->nbd_socket());
    ho.prepare_start = [this](const VmLaunch& launch, std::function<void(absl::Status)> done) {
      // Whether the domain existed when storage was prepared (it must not run yet).
      auto xml = hv_->DescribeDomain(launch.spec.name);
      domain_at_prepare_.push_back(xml.ok() && absl::StrContains(*xml, "state='running'"));
      preparer_->Prepare(launch, std::move(done));
    };
    ho.on_decision = [this](const HaDecision& d) { decisions_.push_back(d.ToString()); };
    auto ha = HaManager::Create(loop_.get(), &random_, store_.get(), hv_.get(), ho);
    ASSERT_TRUE(ha.ok()) << ha.status();
    ha_ = *std::move(ha);
    ASSERT_TRUE(loop_->RunUntil([&] { return ha_->state() == HaManager::State::kActive && ha_->is_coordinator(); },
                                10 * kSecondNs));

    writer_ = NewQemuImgWriter(loop_.get(), QemuImgWriterOptions{qemu_img_});
    ServiceDeps deps;
    deps.loop = loop_.get();
    deps.ha = ha_.get();
    deps.store = store_.get();
    deps.hypervisor = hv_.get();
    deps.scribe = scribe_.get();
    deps.media_writer = writer_.get();
    ServiceOptions so;
    so.node = "node1";
    so.scribe_node = scribed_->node_id();
    so.nbd_socket = scribed_->nbd_socket();
    so.now_unix_ms = [] { return uint64_t{1'700'000'000'000}; };
    admin_ = capnp::Capability::Client(NewHypercoreService(deps, so)).castAs<api::HypercoreAdmin>();
  }

  void TearDown() override {
    admin_ = nullptr;
    ha_.reset();
    preparer_.reset();
    writer_.reset();
    if (hv_) {
      // The test driver's state is per process: leave no domain behind.
      std::optional<absl::StatusOr<std::vector<VmStatus>>> list;
      hv_->List([&](auto r) { list = std::move(r); });
      loop_->RunUntil([&] { return list.has_value(); }, 5 * kSecondNs);
      if (list && list->ok()) {
        for (const VmStatus& s : **list) {
          std::optional<absl::Status> done;
          hv_->ForceOff(s.name, [&](absl::Status st) { done = st; });
          loop_->RunUntil([&] { return done.has_value(); }, 5 * kSecondNs);
          done.reset();
          hv_->Undefine(s.name, [&](absl::Status st) { done = st; });
          loop_->RunUntil([&] { return done.has_value(); }, 5 * kSecondNs);
        }
      }
    }
    hv_.reset();
    store_.reset();
    scribe_.reset();
    link_.reset();
    scribed_.reset();
    loop_.reset();
    (void)std::system(("rm -rf '" + dir_ + "' '" + sock_dir_ + "'").c_str());
  }

  // Sends a call and runs the loop until its reply.
  template <typename Results>
  capnp::Response<Results> Call(capnp::RemotePromise<Results> call) {
    std::optional<capnp::Response<Results>> reply;
    std::optional<std::string> failure;
    auto task = call.then([&](capnp::Response<Results>&& r) { loop_->Dispatch([&] { reply.emplace(kj::mv(r)); }); },
                          [&](kj::Exception&& e) {
                            loop_->Dispatch([&] { failure = e.getDescription().cStr(); });
                          })
                    .eagerlyEvaluate(nullptr);
    loop_->RunUntil([&] { return reply.has_value() || failure.has_value(); }, 120 * kSecondNs);
    if (failure) throw std::runtime_error("RPC failed: " + *failure);
    if (!reply) throw std::runtime_error("no reply within 120 s");
    return kj::mv(*reply);
  }

  capnp::Response<api::HypercoreAdmin::CreateVmResults> CreateVm(const VmArgs& a, bool start = false) {
    auto req = admin_.createVmRequest();
    auto spec = req.initSpec();
    spec.setName(T(a.name));
    spec.setDescription(T(a.description));
    spec.setVcpus(a.vcpus);
    spec.setRamBytes(a.ram_mib * kMiB);
    auto tags = spec.initTags(static_cast<unsigned>(a.tags.size()));
    for (size_t i = 0; i < a.tags.size(); ++i) tags.set(static_cast<unsigned>(i), T(a.tags[i]));
    auto disks = spec.initDisks(static_cast<unsigned>(a.disks.size()));
    for (size_t i = 0; i < a.disks.size(); ++i) {
      auto d = disks[static_cast<unsigned>(i)];
      d.setName(T(a.disks[i].name));
      d.setSizeBytes(a.disks[i].size_bytes);
      d.setReplication(a.disks[i].replication);
      d.setFlashPriority(a.disks[i].flash_priority);
    }
    auto nics = spec.initNics(static_cast<unsigned>(a.vlans.size()));
    for (size_t i = 0; i < a.vlans.size(); ++i) nics[static_cast<unsigned>(i)].setVlan(a.vlans[i]);
    spec.setCdrom(T(a.cdrom));
    if (!a.kernel.empty()) {
      auto boot = spec.initBoot();
      boot.setKernelPath(T(a.kernel));
      boot.setInitrdPath(T(a.initrd));
      boot.setCmdline(T("console=ttyS0"));
    }
    req.setStart(start);
    return Call(req.send());
  }

  absl::Status Create(const VmArgs& a, bool start = false) { return StatusOf(CreateVm(a, start).getError()); }

  capnp::Response<api::HypercoreAdmin::GetVmResults> GetVm(const std::string& name) {
    auto req = admin_.getVmRequest();
    req.setName(T(name));
    return Call(req.send());
  }

  std::string VmStatusText(const std::string& name) {
    auto r = GetVm(name);
    if (r.getError().getCode() != 0) return "error: " + Str(r.getError().getMessage());
    return Str(r.getVm().getStatus());
  }

  bool WaitForStatus(const std::string& name, const std::string& status, int64_t timeout_ns = 15 * kSecondNs) {
    const int64_t deadline = loop_->NowNanos() + timeout_ns;
    while (loop_->NowNanos() < deadline) {
      if (VmStatusText(name) == status) return true;
      loop_->RunUntil([] { return false; }, 100'000'000);
    }
    return false;
  }

  absl::Status Start(const std::string& name) {
    auto req = admin_.startVmRequest();
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }
  absl::Status Stop(const std::string& name) {
    auto req = admin_.stopVmRequest();
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }
  absl::Status ForceOff(const std::string& name) {
    auto req = admin_.forceOffVmRequest();
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }
  absl::Status Delete(const std::string& name) {
    auto req = admin_.deleteVmRequest();
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }
  absl::Status Snapshot(const std::string& vm, const std::string& name) {
    auto req = admin_.createVmSnapshotRequest();
    req.setVm(T(vm));
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }
  absl::Status Clone(const std::string& source, const std::string& snapshot, const std::string& name) {
    auto req = admin_.cloneVmRequest();
    req.setSource(T(source));
    req.setSnapshot(T(snapshot));
    req.setName(T(name));
    return StatusOf(Call(req.send()).getError());
  }
  absl::Status Revert(const std::string& vm, const std::string& snapshot) {
    auto req = admin_.revertVmRequest();
    req.setVm(T(vm));
    req.setSnapshot(T(snapshot));
    return StatusOf(Call(req.send()).getError());
  }
  absl::Status AddMedia(const std::string& name, const std::string& path) {
    auto req = admin_.addMediaRequest();
    req.setName(T(name));
    req.setPath(T(path));
    return StatusOf(Call(req.send()).getError());
  }
  // Adds a medium from a file of `size_bytes` made here.
  absl::Status AddMediaFile(const std::string& name, size_t size_bytes) {
    const std::string path = dir_ + "/" + name + ".iso";
    {
      std::ofstream f(path, std::ios::binary);
      f << Pattern('m', size_bytes);
    }
    return AddMedia(name, path);
  }
  absl::Status SetCdrom(const std::string& vm, const std::string& media) {
    auto req = admin_.setCdromRequest();
    req.setVm(T(vm));
    req.setMedia(T(media));
    return StatusOf(Call(req.send()).getError());
  }

  std::vector<std::string> VmNames() {
    auto r = Call(admin_.listVmsRequest().send());
    std::vector<std::string> names;
    for (auto vm : r.getVms()) names.push_back(Str(vm.getSpec().getName()));
    return names;
  }

  std::vector<std::string> VsdNames() {
    std::vector<std::string> names;
    for (const scribe::VsdInfo& v : scribed_->pool()->ListVsds()) names.push_back(v.name);
    std::sort(names.begin(), names.end());
    return names;
  }

  absl::Status WriteVsd(const std::string& vsd, uint64_t offset, const std::string& data) {
    auto id = scribed_->pool()->FindVsd(vsd);
    if (!id.ok()) return id.status();
    std::optional<absl::Status> st;
    scribed_->pool()->Write(*id, offset, data.size(), data.data(), true, [&](absl::Status s) { st = s; });
    loop_->RunUntil([&] { return st.has_value(); }, 30 * kSecondNs);
    return st.value_or(absl::DeadlineExceededError("write"));
  }

  std::string ReadVsd(const std::string& vsd, uint64_t offset, size_t length) {
    auto id = scribed_->pool()->FindVsd(vsd);
    if (!id.ok()) return "<" + std::string(id.status().message()) + ">";
    std::string out(length, '\0');
    std::optional<absl::Status> st;
    scribed_->pool()->Read(*id, offset, length, out.data(), [&](absl::Status s) { st = s; });
    loop_->RunUntil([&] { return st.has_value(); }, 30 * kSecondNs);
    if (!st || !st->ok()) return "<read failed>";
    return out;
  }

  static std::string Pattern(char seed, size_t length) {
    std::string s(length, '\0');
    for (size_t i = 0; i < length; ++i) s[i] = static_cast<char>(seed + i * 7 + (i >> 12));
    return s;
  }

  std::string dir_;
  std::string sock_dir_;
  uint64_t vsd_bytes_max_ = 0;
  std::string qemu_img_ = "/usr/bin/qemu-img";
  std::unique_ptr<scribe::RealLoop> loop_;
  scribe::SeededRandom random_{7};
  std::unique_ptr<FakeScribed> scribed_;
  std::unique_ptr<ScribeLink> link_;
  std::unique_ptr<ScribeClient> scribe_;
  std::unique_ptr<scribe::InMemoryMetaStore> store_;
  std::unique_ptr<LibvirtHypervisor> hv_;
  std::unique_ptr<StartPreparer> preparer_;
  std::unique_ptr<HaManager> ha_;
  std::unique_ptr<MediaWriter> writer_;
  api::HypercoreAdmin::Client admin_ = nullptr;
  std::vector<bool> domain_at_prepare_;
  std::vector<std::string> decisions_;
};

VmArgs Web() {
  VmArgs a;
  a.name = "web";
  a.ram_mib = 512;
  a.vcpus = 2;
  a.disks = {DiskArg{"root", 64 * kMiB, 2, 7}, DiskArg{"data", 32 * kMiB, 3, 0}};
  a.vlans = {0, 42};
  a.tags = {"prod", "frontend"};
  a.description = "the web <server>";
  return a;
}

TEST_F(ServiceTest, CreateMakesOneVsdPerDiskAndAStoppedVm) {
  auto r = CreateVm(Web());
  ASSERT_TRUE(StatusOf(r.getError()).ok()) << StatusOf(r.getError());
  auto vm = r.getVm();
  EXPECT_EQ(Str(vm.getStatus()), "stopped");
  EXPECT_EQ(Str(vm.getDesired()), "stopped");
  EXPECT_EQ(Str(vm.getNode()), "");
  EXPECT_EQ(Str(vm.getUuid()).size(), 36u);
  EXPECT_EQ(Str(vm.getSpec().getDescription()), "the web <server>");
  ASSERT_EQ(vm.getSpec().getDisks().size(), 2u);
  EXPECT_EQ(Str(vm.getSpec().getDisks()[0].getVsd()), "web-root");
  EXPECT_EQ(Str(vm.getSpec().getDisks()[1].getVsd()), "web-data");
  ASSERT_EQ(vm.getSpec().getNics().size(), 2u);
  EXPECT_EQ(vm.getSpec().getNics()[1].getVlan(), 42);
  EXPECT_TRUE(absl::StartsWith(Str(vm.getSpec().getNics()[0].getMac()), "52:54:00:"));
  EXPECT_EQ(scribed_->CallsOf("createVsd"),
            (std::vector<std::string>{"createVsd web-root 67108864 2 7", "createVsd web-data 33554432 3 0"}));
  EXPECT_EQ(VsdNames(), (std::vector<std::string>{"web-data", "web-root"}));
  auto info = scribed_->pool()->GetVsdInfo(*scribed_->pool()->FindVsd("web-data"));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->replication, 3);
  EXPECT_EQ(info->size_bytes, 32 * kMiB);

  // Listed, with a tag filter.
  EXPECT_EQ(VmNames(), std::vector<std::string>{"web"});
  VmArgs db;
  db.name = "db";
  db.disks = {DiskArg{"root", 16 * kMiB}};
  db.tags = {"prod"};
  ASSERT_TRUE(Create(db).ok());
  auto req = admin_.listVmsRequest();
  req.initTags(2).set(0, "prod");
  req.getTags().set(1, "frontend");
  auto filtered = Call(req.send());
  ASSERT_EQ(filtered.getVms().size(), 1u);
  EXPECT_EQ(Str(filtered.getVms()[0].getSpec().getName()), "web");
  EXPECT_EQ(VmNames(), (std::vector<std::string>{"db", "web"}));
}

TEST_F(ServiceTest, StartFencesEveryDiskAtTheEpochThenLibvirtRunsItOnEpochExports) {
  ASSERT_TRUE(Create(Web()).ok());
  scribed_->ClearCalls();
  ASSERT_TRUE(Start("web").ok());
  ASSERT_TRUE(WaitForStatus("web", "running")) << VmStatusText("web") << "\n" << absl::StrJoin(decisions_, "\n");
  auto got = GetVm("web");
  auto vm = got.getVm();
  EXPECT_EQ(Str(vm.getNode()), "node1");
  EXPECT_EQ(vm.getEpoch(), 1u);
  // Storage was prepared before the domain ran, every disk at the VM's epoch.
  EXPECT_EQ(scribed_->CallsOf("fenceVsd"), (std::vector<std::string>{"fenceVsd web-root 1", "fenceVsd web-data 1"}));
  EXPECT_EQ(scribed_->CallsOf("exportInfo"),
            (std::vector<std::string>{"exportInfo web-root 1", "exportInfo web-data 1"}));
  ASSERT_EQ(domain_at_prepare_.size(), 1u);
  EXPECT_FALSE(domain_at_prepare_[0]);
  auto xml = hv_->DescribeDomain("web");
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_TRUE(absl::StrContains(*xml, "<source protocol='nbd' name='web-root@1'>")) << *xml;
  EXPECT_TRUE(absl::StrContains(*xml, "<source protocol='nbd' name='web-data@1'>")) << *xml;
  EXPECT_TRUE(absl::StrContains(*xml, "socket='" + scribed_->nbd_socket() + "'")) << *xml;
  EXPECT_TRUE(absl::StrContains(*xml, "<tag id='42'/>")) << *xml;

  // Stop (ACPI: the test driver's guest powers off at once), start again: epoch 2.
  ASSERT_TRUE(Stop("web").ok());
  ASSERT_TRUE(WaitForStatus("web", "stopped")) << VmStatusText("web");
  ASSERT_TRUE(Start("web").ok());
  ASSERT_TRUE(WaitForStatus("web", "running"));
  EXPECT_EQ(GetVm("web").getVm().getEpoch(), 2u);
  EXPECT_EQ(scribed_->fences(), (std::map<std::string, uint64_t>{{"web-data", 2}, {"web-root", 2}}));
  xml = hv_->DescribeDomain("web");
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(absl::StrContains(*xml, "name='web-root@2'")) << *xml;

  // Force off: at once, then released; a running VM cannot be deleted.
  EXPECT_EQ(Delete("web").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(ForceOff("web").ok());
  ASSERT_TRUE(WaitForStatus("web", "stopped", 5 * kSecondNs)) << VmStatusText("web");
  EXPECT_TRUE(absl::StrContains(absl::StrJoin(decisions_, "\n"), "force off vm web: force off requested"))
      << absl::StrJoin(decisions_, "\n");

  // Delete removes the record and the VSDs.
  scribed_->ClearCalls();
  ASSERT_TRUE(Delete("web").ok());
  EXPECT_EQ(scribed_->CallsOf("deleteVsd"), (std::vector<std::string>{"deleteVsd web-root", "deleteVsd web-data"}));
  EXPECT_TRUE(VsdNames().empty());
  EXPECT_EQ(GetVm("web").getError().getCode(), static_cast<uint16_t>(absl::StatusCode::kNotFound));
}

TEST_F(ServiceTest, AFailedFenceKeepsTheVmDownWithAConditionUntilARetrySucceeds) {
  ASSERT_TRUE(Create(Web()).ok());
  scribed_->FailNext("fenceVsd", absl::FailedPreconditionError("VSD \"web-root\" is fenced at epoch 9"));
  ASSERT_TRUE(Start("web").ok());
  // The first attempt fails before QEMU runs; the manager retries after 500 ms.
  ASSERT_TRUE(WaitForStatus("web", "running")) << VmStatusText("web");
  bool saw_failure = false;
  for (const std::string& d : decisions_) {
    saw_failure = saw_failure || absl::StrContains(d, "failed: prepare_start: fenceVsd(\"web-root\", 1)");
  }
  EXPECT_TRUE(saw_failure) << absl::StrJoin(decisions_, "\n");
  EXPECT_EQ(domain_at_prepare_.size(), 2u);
}

TEST_F(ServiceTest, BadRequestsAreRefusedClearlyAndChangeNothing) {
  ASSERT_TRUE(Create(Web()).ok());
  // A VSD whose name a new VM's disk would take.
  std::optional<absl::StatusOr<scribe::VsdId>> made;
  scribed_->pool()->CreateVsd(scribe::VsdOptions{"db-root", 4096, 2, 4}, [&](auto r) { made = r; });
  ASSERT_TRUE(loop_->RunUntil([&] { return made.has_value(); }, 10 * kSecondNs));
  ASSERT_TRUE(made->ok());
  scribed_->ClearCalls();
  const std::vector<std::string> vsds = VsdNames();

  // Unknown VMs.
  for (auto st : {Start("nope"), Stop("nope"), ForceOff("nope"), Delete("nope"), Snapshot("nope", "s"),
                  Clone("nope", "", "x"), Revert("nope", "s")}) {
    EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "nope")) << st;
  }
  auto get = GetVm("nope");
  EXPECT_EQ(StatusOf(get.getError()).code(), absl::StatusCode::kNotFound);

  // More RAM than any node has: refused before any VSD is made.
  VmArgs big = Web();
  big.name = "big";
  big.ram_mib = 8192;
  absl::Status st = Create(big);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "needs 8192 MiB of RAM, more than any node offers (largest: 4096 MiB on node1)"))
      << st;
  // An ISO that is not in the media library.
  VmArgs iso = Web();
  iso.name = "installer";
  iso.cdrom = "debian-12";
  st = Create(iso);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "no medium named \"debian-12\"")) << st;
  // Malformed specs.
  VmArgs bad = Web();
  bad.name = "bad name";
  EXPECT_EQ(Create(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = Web();
  bad.name = "odd";
  bad.disks[1].size_bytes = 1001 * 512;
  st = Create(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "disks[1].size_bytes 512512 is not a multiple of 4096")) << st;
  bad = Web();
  bad.name = "nocpu";
  bad.vcpus = 0;
  st = Create(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "vcpus")) << st;
  // Direct kernel boot from files this node does not have.
  bad = Web();
  bad.name = "kernelless";
  bad.kernel = dir_ + "/no-such-vmlinuz";
  st = Create(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "boot.kernel_path: " + bad.kernel + " is not a readable file"))
      << st;
  bad.kernel = dir_;  // a directory
  EXPECT_EQ(Create(bad).code(), absl::StatusCode::kInvalidArgument);
  {
    std::FILE* f = std::fopen((dir_ + "/vmlinuz").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  bad.kernel = dir_ + "/vmlinuz";
  bad.initrd = dir_ + "/no-such-initrd";
  st = Create(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "boot.initrd_path")) << st;
  // The name is taken.
  EXPECT_EQ(Create(Web()).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(scribed_->CallsOf("createVsd").empty()) << "refused before storage was touched";

  // A disk whose VSD name is in use: the disks made before it are deleted again.
  VmArgs db;
  db.name = "db";
  db.disks = {DiskArg{"log", 8 * kMiB}, DiskArg{"root", 8 * kMiB}};
  st = Create(db);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "disk root: creating VSD \"db-root\"")) << st;
  EXPECT_EQ(scribed_->CallsOf("deleteVsd"), std::vector<std::string>{"deleteVsd db-log"});

  // scribed's pool is full at the second disk.
  scribed_->ClearCalls();
  scribed_->FailNext("createVsd", absl::OkStatus());
  scribed_->FailNext("createVsd", absl::ResourceExhaustedError("the pool is full"));
  VmArgs app;
  app.name = "app";
  app.disks = {DiskArg{"a", 8 * kMiB}, DiskArg{"b", 8 * kMiB}};
  st = Create(app);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "disk b: creating VSD \"app-b\": the pool is full")) << st;
  EXPECT_EQ(scribed_->CallsOf("deleteVsd"), std::vector<std::string>{"deleteVsd app-a"});

  // Nothing changed.
  EXPECT_EQ(VsdNames(), vsds);
  EXPECT_EQ(VmNames(), std::vector<std::string>{"web"});
}

TEST_F(ServiceTest, SnapshotsClonesAndRevertWorkOnTheDisksData) {
  VmArgs app;
  app.name = "app";
  app.disks = {DiskArg{"root", 16 * kMiB}, DiskArg{"data", 16 * kMiB}};
  app.vlans = {7};
  ASSERT_TRUE(Create(app).ok());
  const std::string a_root = Pattern('a', 64 << 10), a_data = Pattern('A', 64 << 10);
  ASSERT_TRUE(WriteVsd("app-root", 0, a_root).ok());
  ASSERT_TRUE(WriteVsd("app-data", 1 * kMiB, a_data).ok());
  scribed_->ClearCalls();

  // One snapshot of both disks, with the configuration.
  auto req = admin_.createVmSnapshotRequest();
  req.setVm("app");
  req.setName("s1");
  auto made = Call(req.send());
  ASSERT_TRUE(StatusOf(made.getError()).ok()) << StatusOf(made.getError());
  EXPECT_EQ(scribed_->calls(), std::vector<std::string>{"createGroupSnapshot app-root,app-data s1"});
  EXPECT_EQ(made.getSnapshot().getCreatedUnixMs(), 1'700'000'000'000u);
  ASSERT_EQ(made.getSnapshot().getDisks().size(), 2u);
  EXPECT_EQ(Str(made.getSnapshot().getDisks()[1].getVsd()), "app-data");
  EXPECT_EQ(Snapshot("app", "s1").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Snapshot("app", "bad/name").code(), absl::StatusCode::kInvalidArgument);

  // The VM changes after the snapshot: data and configuration.
  const std::string b_root = Pattern('b', 64 << 10);
  ASSERT_TRUE(WriteVsd("app-root", 0, b_root).ok());
  ASSERT_TRUE(Snapshot("app", "s2").ok());

  // A clone of the VM as it is now, and one of snapshot s1.
  scribed_->ClearCalls();
  ASSERT_TRUE(Clone("app", "", "app-now").ok());
  EXPECT_EQ(scribed_->CallsOf("cloneVsd"),
            (std::vector<std::string>{"cloneVsd app-root app-now-root", "cloneVsd app-data app-now-data"}));
  ASSERT_TRUE(Clone("app", "s1", "app-s1").ok());
  EXPECT_EQ(scribed_->CallsOf("cloneFromSnapshot"), (std::vector<std::string>{"cloneFromSnapshot app-root s1 app-s1-root",
                                                                             "cloneFromSnapshot app-data s1 app-s1-data"}));
  EXPECT_EQ(ReadVsd("app-now-root", 0, b_root.size()), b_root);
  EXPECT_EQ(ReadVsd("app-s1-root", 0, a_root.size()), a_root);
  EXPECT_EQ(ReadVsd("app-s1-data", 1 * kMiB, a_data.size()), a_data);
  auto clone_reply = GetVm("app-s1");
  auto clone = clone_reply.getVm();
  EXPECT_EQ(Str(clone.getStatus()), "stopped");
  ASSERT_EQ(clone.getSpec().getNics().size(), 1u);
  EXPECT_EQ(clone.getSpec().getNics()[0].getVlan(), 7);
  EXPECT_NE(Str(clone.getSpec().getNics()[0].getMac()), Str(GetVm("app").getVm().getSpec().getNics()[0].getMac()))
      << "a clone gets its own MAC";
  EXPECT_NE(Str(clone.getUuid()), Str(GetVm("app").getVm().getUuid()));
  EXPECT_EQ(Clone("app", "s1", "app-s1").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Clone("app", "nosuch", "x").code(), absl::StatusCode::kNotFound);

  // Snapshots are listed in name order.
  auto lreq = admin_.listVmSnapshotsRequest();
  lreq.setVm("app");
  auto list = Call(lreq.send());
  ASSERT_EQ(list.getSnapshots().size(), 2u);
  EXPECT_EQ(Str(list.getSnapshots()[0].getName()), "s1");

  // Revert: refused while the VM runs; then every disk and the configuration go back.
  ASSERT_TRUE(Start("app").ok());
  EXPECT_EQ(Revert("app", "s1").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(WaitForStatus("app", "running"));
  ASSERT_TRUE(ForceOff("app").ok());
  ASSERT_TRUE(WaitForStatus("app", "stopped", 5 * kSecondNs));
  ASSERT_TRUE(AddMediaFile("tiny", 8192).ok());
  ASSERT_TRUE(SetCdrom("app", "tiny").ok());
  EXPECT_EQ(Str(GetVm("app").getVm().getSpec().getCdrom()), "tiny");
  const uint64_t epoch = GetVm("app").getVm().getEpoch();
  scribed_->ClearCalls();
  ASSERT_TRUE(Revert("app", "s1").ok());
  EXPECT_EQ(scribed_->CallsOf("revertToSnapshot"),
            (std::vector<std::string>{"revertToSnapshot app-root s1", "revertToSnapshot app-data s1"}));
  EXPECT_EQ(ReadVsd("app-root", 0, a_root.size()), a_root);
  auto reverted_reply = GetVm("app");
  auto reverted = reverted_reply.getVm();
  EXPECT_EQ(Str(reverted.getSpec().getCdrom()), "") << "the configuration of s1 had no CD-ROM";
  EXPECT_EQ(reverted.getEpoch(), epoch) << "the storage epoch never goes back";
  EXPECT_EQ(Revert("app", "nosuch").code(), absl::StatusCode::kNotFound);

  // Deleting a snapshot deletes its SCRIBE snapshots; clones do not depend on anything.
  scribed_->ClearCalls();
  auto dreq = admin_.deleteVmSnapshotRequest();
  dreq.setVm("app");
  dreq.setName("s1");
  ASSERT_TRUE(StatusOf(Call(dreq.send()).getError()).ok());
  EXPECT_EQ(scribed_->CallsOf("deleteSnapshot"),
            (std::vector<std::string>{"deleteSnapshot app-root s1", "deleteSnapshot app-data s1"}));
  ASSERT_TRUE(Delete("app").ok());
  EXPECT_EQ(ReadVsd("app-s1-root", 0, a_root.size()), a_root);
  EXPECT_EQ(ReadVsd("app-now-root", 0, b_root.size()), b_root);
  for (const std::string& vsd : VsdNames()) EXPECT_FALSE(absl::StartsWith(vsd, "app-root")) << vsd;
}

TEST_F(ServiceTest, MediaAreCopiedThroughNbdAndAttachedAsCdrom) {
  const std::string path = dir_ + "/tiny.iso";
  const std::string content = Pattern('i', 1 * kMiB + 100);
  {
    std::ofstream f(path, std::ios::binary);
    f << content;
  }
  scribed_->ClearCalls();
  auto req = admin_.addMediaRequest();
  req.setName("tiny");
  req.setPath(T(path));
  auto added = Call(req.send());
  ASSERT_TRUE(StatusOf(added.getError()).ok()) << StatusOf(added.getError());
  EXPECT_EQ(Str(added.getMedia().getState()), "ready");
  EXPECT_EQ(added.getMedia().getSizeBytes(), content.size());
  EXPECT_EQ(scribed_->CallsOf("createVsd"), std::vector<std::string>{"createVsd iso-tiny 1052672 2 0"});
  // Reads are whole sectors: the VSD is the image padded with zeros to 4 KiB.
  const std::string copied = ReadVsd("iso-tiny", 0, 1052672);
  EXPECT_EQ(copied.substr(0, content.size()), content) << "the image was copied through NBD";
  EXPECT_EQ(copied.substr(content.size()), std::string(1052672 - content.size(), '\0'));

  // Bad input: a name in use, a missing file, a directory, a bad name.
  EXPECT_EQ(AddMedia("tiny", path).code(), absl::StatusCode::kAlreadyExists);
  absl::Status st = AddMedia("gone", dir_ + "/missing.iso");
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_EQ(AddMedia("dir", dir_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AddMedia("a/b", path).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AddMedia("rel", "tiny.iso").code(), absl::StatusCode::kInvalidArgument);

  // A VM with it as CD-ROM: the domain reads the ISO's VSD (not fenced: shared, read-only).
  VmArgs inst;
  inst.name = "inst";
  inst.disks = {DiskArg{"root", 16 * kMiB}};
  inst.cdrom = "tiny";
  ASSERT_TRUE(Create(inst).ok());
  ASSERT_TRUE(Start("inst").ok());
  ASSERT_TRUE(WaitForStatus("inst", "running"));
  auto xml = hv_->DescribeDomain("inst");
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(absl::StrContains(*xml, "<source protocol='nbd' name='iso-tiny'>")) << *xml;
  EXPECT_EQ(scribed_->fences().count("iso-tiny"), 0u);

  // Listed with its user; not deletable while attached.
  auto list = Call(admin_.listMediaRequest().send());
  ASSERT_EQ(list.getMedia().size(), 1u);
  ASSERT_EQ(list.getMedia()[0].getVms().size(), 1u);
  EXPECT_EQ(Str(list.getMedia()[0].getVms()[0]), "inst");
  auto del = admin_.deleteMediaRequest();
  del.setName("tiny");
  st = StatusOf(Call(del.send()).getError());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "CD-ROM of vm inst")) << st;
  EXPECT_EQ(SetCdrom("inst", "").code(), absl::StatusCode::kFailedPrecondition) << "the VM runs";
  ASSERT_TRUE(ForceOff("inst").ok());
  ASSERT_TRUE(WaitForStatus("inst", "stopped", 5 * kSecondNs));
  ASSERT_TRUE(SetCdrom("inst", "").ok());
  del = admin_.deleteMediaRequest();
  del.setName("tiny");
  ASSERT_TRUE(StatusOf(Call(del.send()).getError()).ok());
  EXPECT_FALSE(scribed_->pool()->FindVsd("iso-tiny").ok());
  EXPECT_EQ(Call(admin_.listMediaRequest().send()).getMedia().size(), 0u);
}

TEST_F(ServiceTest, AFailedCopyLeavesNoMediumAndNoVsd) {
  writer_ = NewQemuImgWriter(loop_.get(), QemuImgWriterOptions{"/nonexistent/qemu-img"});
  // The service holds the old writer's address: rebuild it over the new one.
  ServiceDeps deps;
  deps.loop = loop_.get();
  deps.ha = ha_.get();
  deps.store = store_.get();
  deps.hypervisor = hv_.get();
  deps.scribe = scribe_.get();
  deps.media_writer = writer_.get();
  ServiceOptions so;
  so.node = "node1";
  so.scribe_node = scribed_->node_id();
  so.nbd_socket = scribed_->nbd_socket();
  admin_ = capnp::Capability::Client(NewHypercoreService(deps, so)).castAs<api::HypercoreAdmin>();
  const std::string path = dir_ + "/x.iso";
  {
    std::ofstream f(path, std::ios::binary);
    f << Pattern('x', 4096);
  }
  absl::Status st = AddMedia("x", path);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "cannot run /nonexistent/qemu-img")) << st;
  EXPECT_FALSE(scribed_->pool()->FindVsd("iso-x").ok());
  EXPECT_EQ(Call(admin_.listMediaRequest().send()).getMedia().size(), 0u);
}

TEST_F(ServiceTest, NodesAndConditions) {
  auto nodes = Call(admin_.listNodesRequest().send());
  ASSERT_TRUE(StatusOf(nodes.getError()).ok());
  ASSERT_EQ(nodes.getNodes().size(), 1u);
  EXPECT_EQ(Str(nodes.getNodes()[0].getName()), "node1");
  EXPECT_TRUE(nodes.getNodes()[0].getAlive());
  EXPECT_EQ(nodes.getNodes()[0].getRamBytes(), 4096 * kMiB);
  EXPECT_EQ(nodes.getNodes()[0].getCpus(), 4u);

  // A node that registered once and is not alive now is listed as down.
  std::optional<absl::StatusOr<int64_t>> put;
  store_->Put("/hcd/nodes/node9",
              R"({"node":"node9","admin_address":"127.0.0.1:7109","ram_bytes":1073741824,"cpus":2,)"
              R"("scribe_node":9,"nbd_socket":"/run/x.sock"})",
              [&](absl::StatusOr<int64_t> r) { put = r; });
  ASSERT_TRUE(loop_->RunUntil([&] { return put.has_value(); }, 5 * kSecondNs));
  ASSERT_TRUE(put->ok());

  VmArgs vm = Web();
  ASSERT_TRUE(Create(vm, /*start=*/true).ok());
  ASSERT_TRUE(WaitForStatus("web", "running"));
  nodes = Call(admin_.listNodesRequest().send());
  ASSERT_EQ(nodes.getNodes().size(), 2u);
  EXPECT_EQ(nodes.getNodes()[0].getRamUsedBytes(), 512 * kMiB);
  EXPECT_EQ(nodes.getNodes()[0].getVcpusUsed(), 2u);
  EXPECT_EQ(nodes.getNodes()[0].getVms(), 1u);
  EXPECT_EQ(Str(nodes.getNodes()[1].getName()), "node9");
  EXPECT_FALSE(nodes.getNodes()[1].getAlive());
  EXPECT_EQ(Str(nodes.getNodes()[1].getAdminAddress()), "127.0.0.1:7109");

  // One node: losing it strands its VM (N-1).
  auto conditions = Call(admin_.conditionsRequest().send());
  ASSERT_TRUE(StatusOf(conditions.getError()).ok());
  ASSERT_EQ(conditions.getConditions().getFailover().size(), 1u);
  EXPECT_EQ(Str(conditions.getConditions().getFailover()[0].getNode()), "node1");
  ASSERT_EQ(conditions.getConditions().getFailover()[0].getVms().size(), 1u);
  EXPECT_EQ(Str(conditions.getConditions().getFailover()[0].getVms()[0]), "web");
}

// A scribed that takes calls and never answers them.
class SilentScribed final : public capnp::Capability::Server {
 public:
  DispatchCallResult dispatchCall(uint64_t, uint16_t, capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer>) override {
    return {kj::NEVER_DONE, false};
  }
};

TEST(StartPreparer, AHungScribedFailsTheStartAfterTheCallTimeout) {
  auto loop = scribe::RealLoop::Create();
  auto silent = capnp::Capability::Client(kj::heap<SilentScribed>()).castAs<scribe::api::ScribeAdmin>();
  auto link = NewFixedScribeLink(silent, "scribed at 127.0.0.1:7001");
  ScribeClient client(link.get(), &loop->impl()->io.provider->getTimer(), /*call_timeout_ms=*/200);
  StartPreparer preparer(&client, 1);
  VmSpec spec;
  spec.name = "web";
  spec.ram_bytes = 256 * kMiB;
  spec.disks = {VmDisk{"root", 16 * kMiB}};
  const VmLaunch launch = MakeNbdLaunch(spec, "0b1c2d3e-4f50-4617-8899-aabbccddeeff", 3, LaunchOptions("/run/nbd.sock"));
  std::optional<absl::Status> result;
  const int64_t start = loop->NowNanos();
  preparer.Prepare(launch, [&](absl::Status st) { result = st; });
  ASSERT_TRUE(loop->RunUntil([&] { return result.has_value(); }, 10 * kSecondNs));
  EXPECT_GE(loop->NowNanos() - start, 200'000'000);
  EXPECT_EQ(result->code(), absl::StatusCode::kDeadlineExceeded) << *result;
  EXPECT_TRUE(absl::StrContains(result->message(), "VSD \"web-root\": export: no answer from scribed at 127.0.0.1:7001 within 200 ms"))
      << *result;
}

}  // namespace
}  // namespace hypercore::daemon
