#include "daemons/cli/cli_common.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace scribe::cli {
namespace {

using Words = std::vector<std::string>;

constexpr const char* kGroups[] = {"vsd", "node"};
constexpr const char* kSwitches[] = {"--progress"};
constexpr Tool kTool = {
    .name = "tool",
    .daemon = "toold",
    .usage = "usage: tool\n",
    .default_address = "127.0.0.1:1",
    .default_port = 1,
    .groups = kGroups,
    .switches = kSwitches,
};

// The message of the UsageError `f` throws; "" when it throws none.
template <typename F>
std::string UsageMessage(F f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.message;
  }
  return "";
}

TEST(ParseCommandLine, GlobalOptionsAnywhereBeforeDashes) {
  const CommandLine line = ParseCommandLine(
      kTool, {"vsd", "--json", "create", "--addr", "h:2", "x", "--progress", "--", "--json"},
      nullptr);
  EXPECT_TRUE(line.json);
  EXPECT_FALSE(line.help);
  EXPECT_EQ(line.address, "h:2");
  EXPECT_EQ(line.switches, std::set<std::string>{"--progress"});
  EXPECT_EQ(line.words, (Words{"vsd", "create", "x", "--", "--json"}));
  EXPECT_EQ(line.error, std::nullopt);
}

TEST(ParseCommandLine, AddressFromFlagThenEnvironmentThenDefault) {
  EXPECT_EQ(ParseCommandLine(kTool, {"--addr=a:3"}, "e:4").address, "a:3");
  EXPECT_EQ(ParseCommandLine(kTool, {}, "e:4").address, "e:4");
  EXPECT_EQ(ParseCommandLine(kTool, {}, "").address, "127.0.0.1:1");
  EXPECT_EQ(ParseCommandLine(kTool, {}, nullptr).address, "127.0.0.1:1");
  EXPECT_EQ(ParseCommandLine(kTool, {"--addr="}, nullptr).address, "");
}

TEST(ParseCommandLine, MalformedAndHelp) {
  const CommandLine line = ParseCommandLine(kTool, {"status", "--addr"}, nullptr);
  EXPECT_EQ(line.error, "--addr needs HOST:PORT");
  EXPECT_EQ(line.words, Words{"status"});
  EXPECT_TRUE(ParseCommandLine(kTool, {"-h"}, nullptr).help);
  EXPECT_TRUE(ParseCommandLine(kTool, {"x", "--help"}, nullptr).help);
  // Another tool's switch is the command's word, for its own parser to refuse.
  const Tool other = {.name = "other", .usage = "", .default_address = "", .groups = kGroups};
  EXPECT_EQ(ParseCommandLine(other, {"--progress"}, nullptr).words, Words{"--progress"});
}

TEST(CommandName, GroupsTakeTwoWords) {
  EXPECT_EQ(CommandName(kTool, {}), "");
  EXPECT_EQ(CommandName(kTool, {"status", "x"}), "status");
  EXPECT_EQ(CommandName(kTool, {"vsd"}), "vsd");
  EXPECT_EQ(CommandName(kTool, {"vsd", "create", "x"}), "vsd create");
}

TEST(Args, ValuesRepeatedSwitchesOptional) {
  const FlagSpec spec{.values = {"--ram"},
                      .repeated = {"--tag"},
                      .switches = {"--start"},
                      .optional = {"--nic"}};
  const Args a({"vm1", "--ram", "1G", "--tag=a", "--tag", "b", "--start", "--nic", "--nic",
                "vlan=5", "--ram=2G", "--", "--start", "-1"},
               spec, FlagPrefix::kDoubleDash);
  EXPECT_EQ(a.positional(), (Words{"vm1", "--start", "-1"}));
  EXPECT_EQ(a.Flag("--ram"), "2G");  // the last one wins
  EXPECT_EQ(a.Flag("--cdrom"), std::nullopt);
  EXPECT_EQ(a.All("--tag"), (Words{"a", "b"}));
  EXPECT_EQ(a.All("--nic"), (Words{"", "vlan=5"}));
  EXPECT_TRUE(a.Has("--start"));
  EXPECT_FALSE(a.Has("--eject"));
}

TEST(Args, FlagPrefixDecidesWhatASingleDashIs) {
  EXPECT_EQ(Args({"-1", "-"}, {}, FlagPrefix::kDoubleDash).positional(), (Words{"-1", "-"}));
  EXPECT_EQ(Args({"-"}, {}, FlagPrefix::kDash).positional(), Words{"-"});
  EXPECT_EQ(UsageMessage([] { Args({"-1"}, {}, FlagPrefix::kDash); }), "unknown option -1");
  EXPECT_EQ(Args({"-n", "3"}, {.values = {"-n"}}, FlagPrefix::kDash).Flag("-n"), "3");
}

TEST(Args, MalformedFlags) {
  const FlagSpec spec{.values = {"--node"}, .repeated = {"--tag"}, .switches = {"--wait"}};
  for (FlagPrefix prefix : {FlagPrefix::kDoubleDash, FlagPrefix::kDash}) {
    EXPECT_EQ(UsageMessage([&] { Args({"x", "--node"}, spec, prefix); }), "--node needs a value");
    EXPECT_EQ(UsageMessage([&] { Args({"--tag"}, spec, prefix); }), "--tag needs a value");
    EXPECT_EQ(UsageMessage([&] { Args({"--bogus", "1"}, spec, prefix); }), "unknown option --bogus");
    EXPECT_EQ(UsageMessage([&] { Args({"--bogus=1"}, spec, prefix); }), "unknown option --bogus");
    EXPECT_EQ(UsageMessage([&] { Args({"--wait=yes"}, spec, prefix); }), "--wait takes no value");
    // A value flag takes the next word even when it looks like a flag.
    EXPECT_EQ(Args({"--node", "--wait"}, spec, prefix).Flag("--node"), "--wait");
  }
}

TEST(Args, ExpectCountAndNumbers) {
  const Args a({"a", "b", "--n", "300"}, {.values = {"--n"}}, FlagPrefix::kDash);
  a.ExpectCount(2, 3, "A B [C]");
  EXPECT_EQ(UsageMessage([&] { a.ExpectCount(1, 1, "NAME"); }), "expected NAME");
  EXPECT_EQ(UsageMessage([&] { a.ExpectCount(3, 3, "A B C"); }), "expected A B C");
  EXPECT_EQ(a.UintFlag<uint64_t>("--n", 7, 1000), 300u);
  EXPECT_EQ(a.UintFlag<uint8_t>("--absent", 7, 255), 7u);
  EXPECT_EQ(UsageMessage([&] { a.UintFlag<uint8_t>("--n", 7, 255); }),
            "--n wants a whole number up to 255, not '300'");
  EXPECT_EQ(UintArg("N", "12", 12), 12u);
  EXPECT_EQ(UsageMessage([] { UintArg("N", "-1", 12); }), "N wants a whole number up to 12, not '-1'");
  EXPECT_EQ(SizeArg("SIZE", "2K"), 2048u);
  EXPECT_EQ(UsageMessage([] { SizeArg("SIZE", "2Q"); }),
            "SIZE '2Q' is not a size (a whole number with an optional K, M, G, T or P suffix)");
}

TEST(MatchCommand, OneAndTwoWordNames) {
  const Words names = {"status", "vsd create", "vsd list", "clone"};
  EXPECT_EQ(MatchCommand(names, {"status", "x"}).index, 0u);
  EXPECT_EQ(MatchCommand(names, {"status", "x"}).name_words, 1u);
  EXPECT_EQ(MatchCommand(names, {"vsd", "list"}).index, 2u);
  EXPECT_EQ(MatchCommand(names, {"vsd", "list"}).name_words, 2u);
  EXPECT_EQ(MatchCommand(names, {"clone", "a", "b"}).index, 3u);
}

TEST(MatchCommand, UnknownAndIncomplete) {
  const Words names = {"status", "vsd create", "vsd list"};
  EXPECT_EQ(UsageMessage([&] { MatchCommand(names, {}); }), "no command given");
  EXPECT_EQ(UsageMessage([&] { MatchCommand(names, {"bogus"}); }), "unknown command 'bogus'");
  EXPECT_EQ(UsageMessage([&] { MatchCommand(names, {"vsd"}); }), "'vsd' needs a subcommand");
  EXPECT_EQ(UsageMessage([&] { MatchCommand(names, {"vsd", "grow"}); }),
            "unknown command 'vsd grow'");
  EXPECT_EQ(UsageMessage([&] { MatchCommand(names, {"vsdx", "create"}); }),
            "unknown command 'vsdx'");
}

}  // namespace
}  // namespace scribe::cli
