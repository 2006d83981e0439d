// Replays every scripted scenario under libhypercore/sim/scenarios/ and compares its
// log with log.expect line for line (a diff on mismatch), in the spirit of Proxmox
// pve-ha-manager's cmdlist / log.expect tests. The checker runs on each as well.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "hypercore/hypervisor.h"
#include "libhypercore/sim/ha_sim.h"

namespace hypercore {
namespace {

constexpr char kScenarioDir[] = "libhypercore/sim/scenarios";

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// A line diff (longest common subsequence): " " both, "-" expected only, "+" actual only.
std::string Diff(const std::vector<std::string>& expected, const std::vector<std::string>& actual) {
  const size_t n = expected.size(), m = actual.size();
  std::vector<std::vector<int>> lcs(n + 1, std::vector<int>(m + 1, 0));
  for (size_t i = n; i-- > 0;) {
    for (size_t j = m; j-- > 0;) {
      lcs[i][j] = expected[i] == actual[j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  std::string out;
  size_t i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && expected[i] == actual[j]) {
      out += "  " + expected[i++] + "\n";
      ++j;
    } else if (j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j])) {
      out += "+ " + actual[j++] + "\n";
    } else {
      out += "- " + expected[i++] + "\n";
    }
  }
  return out;
}

std::vector<std::string> ScenarioNames() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(kScenarioDir)) {
    if (entry.is_directory()) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

TEST(HaScenarios, EveryScenarioMatchesItsExpectedLog) {
  const std::vector<std::string> names = ScenarioNames();
  ASSERT_GE(names.size(), 5u) << "scenarios missing from the runfiles";
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const std::filesystem::path dir = std::filesystem::path(kScenarioDir) / name;
    const std::string cmdlist = ReadFile(dir / "cmdlist");
    const std::vector<std::string> expected = Lines(ReadFile(dir / "log.expect"));
    ASSERT_FALSE(cmdlist.empty());
    ASSERT_FALSE(expected.empty()) << "no log.expect";
    auto result = RunHaScenario(cmdlist, HaSimConfig{});
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->violations, 0u) << absl::StrJoin(result->violation_messages, "\n");
    EXPECT_TRUE(result->log == expected)
        << "log of " << name << " differs from log.expect (- expected, + actual):\n"
        << Diff(expected, result->log) << "regenerate after a deliberate change: bazel run "
        << "//libhypercore:ha_simulator -- --scenario=$PWD/" << (dir / "cmdlist").string() << " > "
        << (dir / "log.expect").string();
  }
}

TEST(HaScenarios, DiffShowsWhatChanged) {
  EXPECT_EQ(Diff({"a", "b", "c"}, {"a", "x", "c", "d"}), "  a\n+ x\n- b\n  c\n+ d\n");
}

// A fence that does nothing: the partition scenario must catch the double run.
class NoFence : public Hypervisor {
 public:
  explicit NoFence(Hypervisor* inner) : inner_(inner) {}
  void Start(const VmLaunch& launch, StatusDone done) override { inner_->Start(launch, done); }
  void Shutdown(const std::string& name, StatusDone done) override { inner_->Shutdown(name, done); }
  void ForceOff(const std::string& name, StatusDone done) override {
    inner_->GetStatus(name, [done](absl::StatusOr<VmStatus>) { done(absl::OkStatus()); });
  }
  void Undefine(const std::string& name, StatusDone done) override { inner_->Undefine(name, done); }
  void GetStatus(const std::string& name, Done<VmStatus> done) override { inner_->GetStatus(name, done); }
  void List(Done<std::vector<VmStatus>> done) override { inner_->List(done); }

 private:
  Hypervisor* inner_;
};

TEST(HaScenarios, CheckerCatchesAManagerThatDoesNotFence) {
  const std::string cmdlist =
      ReadFile(std::filesystem::path(kScenarioDir) / "partitioned_node_self_fences" / "cmdlist");
  HaSimConfig config;
  config.wrap_hypervisor = [](Hypervisor* fake) { return std::make_unique<NoFence>(fake); };
  auto result = RunHaScenario(cmdlist, config);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->double_runs, 1u);
  ASSERT_EQ(result->violation_messages.size(), 1u);
  EXPECT_NE(result->violation_messages[0].find("vm web2 started on node3 (epoch 2) while running on node2 (epoch 1)"),
            std::string::npos)
      << result->violation_messages[0];
}

TEST(HaScenarios, MalformedCmdlistNamesTheLine) {
  auto result = RunHaScenario("nodes node1:4096:4\nwait soon\n", HaSimConfig{});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("line 2"), std::string::npos) << result.status();
  EXPECT_EQ(RunHaScenario("crash node1\n", HaSimConfig{}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunHaScenario("nodes node1:4096:4\ncrash node9\n", HaSimConfig{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hypercore
