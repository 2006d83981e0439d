// What the two command-line tools (`scribe` and `hc3`) share: their error types and exit
// statuses, the global options (--addr, --json, --help), a command's own flags and
// positional words, the command table lookup, and one connection to the daemon with
// timeouts. Each tool keeps its commands, its usage text and its output.
//
// Not thread-safe; a tool runs everything on its main thread.
#ifndef DAEMONS_CLI_CLI_COMMON_H_
#define DAEMONS_CLI_CLI_COMMON_H_

#include <capnp/ez-rpc.h>
#include <kj/async-io.h>
#include <kj/async.h>
#include <kj/exception.h>
#include <kj/timer.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "daemons/cli/format.h"

namespace scribe::cli {

// A bad command line: exit 2 with the usage text.
struct UsageError {
  std::string message;
};

// A failed command: exit 1.
struct CommandError {
  std::string message;
};

// What tells the tools apart in the shared parts.
struct Tool {
  const char* name;             // "scribe": the first word of every message
  const char* daemon;           // "scribed": named when it cannot be reached
  const char* usage;            // printed by help and --help, and after usage errors
  const char* default_address;  // when neither --addr nor the environment gives one
  unsigned default_port;        // when the address has no port
  // The first words of two-word commands ("vsd" of "vsd create"), for messages.
  std::span<const char* const> groups;
  // The tool's own global switches besides --json and --help (scribe's --progress).
  std::span<const char* const> switches;
};

// ------------------------------------------------------------------ arguments

// The command line with the global options taken out (they may stand anywhere before
// "--").
struct CommandLine {
  std::string address;
  bool json = false;
  bool help = false;                   // --help or -h
  std::set<std::string> switches;      // the Tool::switches given
  std::vector<std::string> words;      // the command and its own arguments ("--" kept)
  std::optional<std::string> error;    // a usage error, reported once the command is known
};

// `args`: argv without the program name. `env_address`: the tool's address variable
// (nullptr or "" when unset), used unless --addr is given.
CommandLine ParseCommandLine(const Tool& tool, const std::vector<std::string>& args,
                             const char* env_address);

// The command's name for messages: "vsd create", "status", "" for no words.
std::string CommandName(const Tool& tool, const std::vector<std::string>& words);

// Which words are flags: hc3 takes "--x" only (so "-1" is a positional word), scribe any
// word of two or more characters starting with '-'.
enum class FlagPrefix { kDoubleDash, kDash };

// What a command accepts besides its positional words.
struct FlagSpec {
  std::set<std::string> values;    // --x VALUE, the last one wins
  std::set<std::string> repeated;  // --x VALUE, every one kept
  std::set<std::string> switches;  // --x
  std::set<std::string> optional;  // --x [key=value] (repeatable): a value only when the
                                   // next word has a '='; "" otherwise
};

// The words of a command after its name, with its own flags taken out. "--x=VALUE" and
// "--x VALUE" are the same; after "--" every word is positional. Throws UsageError for an
// unknown flag, a missing value or a value given to a switch.
class Args {
 public:
  Args(const std::vector<std::string>& words, const FlagSpec& spec, FlagPrefix prefix);

  const std::vector<std::string>& positional() const { return positional_; }
  const std::string& at(size_t i) const { return positional_.at(i); }
  // Throws UsageError "expected <shape>" unless min <= positional words <= max.
  void ExpectCount(size_t min, size_t max, const char* shape) const;
  // A FlagSpec::values flag's value.
  std::optional<std::string> Flag(const std::string& name) const;
  // A FlagSpec::repeated or ::optional flag's values, in order.
  std::vector<std::string> All(const std::string& name) const;
  // Whether a FlagSpec::switches flag was given.
  bool Has(const std::string& name) const { return switches_.count(name) > 0; }

  // A values flag as a whole number up to `max`; `fallback` when absent.
  template <typename T>
  T UintFlag(const std::string& name, T fallback, uint64_t max) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> flags_;
  std::map<std::string, std::vector<std::string>> multi_;
  std::set<std::string> switches_;
};

// `text` as a size ("10M"); UsageError naming `what` otherwise.
uint64_t SizeArg(const std::string& what, const std::string& text);

// `text` as a whole number up to `max`; UsageError naming `what` otherwise.
uint64_t UintArg(const std::string& what, const std::string& text, uint64_t max);

template <typename T>
T Args::UintFlag(const std::string& name, T fallback, uint64_t max) const {
  std::optional<std::string> text = Flag(name);
  if (!text) return fallback;
  return static_cast<T>(UintArg(name, *text, max));
}

// ------------------------------------------------------------------ commands

// One row of a tool's command table; `Cli` is the tool's class holding the handlers.
template <typename Cli>
struct Command {
  const char* name;  // "status", or "group sub"
  FlagSpec flags;
  void (Cli::*handler)(const Args&);
};

// Where `words` names one of `names` ("status", or "group sub"): its index, and how many
// words the name took. Throws UsageError for no words, an unknown command, or a group
// without (or with an unknown) subcommand.
struct CommandMatch {
  size_t index;
  size_t name_words;
};
CommandMatch MatchCommand(const std::vector<std::string>& names,
                          const std::vector<std::string>& words);

// Runs the command `words` names on `cli` ("help" prints the usage); returns the exit
// status. Throws UsageError, CommandError.
template <typename Cli>
int RunCommand(const Tool& tool, Cli& cli, const std::vector<Command<Cli>>& commands,
               const std::vector<std::string>& words, FlagPrefix prefix) {
  if (words.empty()) throw UsageError{"no command given"};
  if (words[0] == "help") {
    std::fputs(tool.usage, stdout);
    return 0;
  }
  std::vector<std::string> names;
  for (const Command<Cli>& c : commands) names.push_back(c.name);
  const CommandMatch match = MatchCommand(names, words);
  const Command<Cli>& c = commands[match.index];
  (cli.*c.handler)(
      Args(std::vector<std::string>(words.begin() + match.name_words, words.end()), c.flags, prefix));
  return 0;
}

// Prints the usage for --help, else calls `run` (only when the command line is good) and
// turns its errors into messages on stderr and the exit status: "<tool>: <command>:
// <message>", then for a UsageError a blank line and the usage (exit 2), else exit 1.
// `run` returns the exit status.
int RunReportingErrors(const Tool& tool, const CommandLine& line, const std::function<int()>& run);

// ------------------------------------------------------------------ output

inline void Print(const std::string& text) { std::fputs(text.c_str(), stdout); }
inline void PrintJson(const JsonWriter& j) { std::printf("%s\n", j.str().c_str()); }
inline std::string Num(uint64_t v) { return std::to_string(v); }
inline const char* YesNo(bool b) { return b ? "yes" : "no"; }

// ----------------------------------------------------------------- connection

inline capnp::Text::Reader Text(const std::string& s) {
  return capnp::Text::Reader(s.c_str(), s.size());
}
inline std::string Str(capnp::Text::Reader t) { return std::string(t.begin(), t.size()); }

// Throws CommandError with the message of an API error (code != 0).
template <typename ErrorReader>
void Check(ErrorReader error) {
  if (error.getCode() != 0) throw CommandError{Str(error.getMessage())};
}

// Every call must answer within this unless it says otherwise.
constexpr int64_t kCallTimeoutSeconds = 120;

// One connection to the tool's daemon. Connecting is lazy: a refused or unreachable
// address shows as the first call's failure, reported with the address.
class Connection {
 public:
  Connection(const Tool& tool, std::string address);

  template <typename Interface>
  typename Interface::Client Main() {
    return client_.getMain<Interface>();
  }
  kj::WaitScope& wait_scope() { return client_.getWaitScope(); }
  kj::Timer& timer() { return client_.getIoProvider().getTimer(); }

  // Waits for a reply (for at most `timeout_s` seconds; 0: no limit). Transport failures
  // throw CommandError naming the address.
  template <typename Results>
  capnp::Response<Results> Wait(capnp::RemotePromise<Results>&& call,
                                int64_t timeout_s = kCallTimeoutSeconds) {
    kj::Promise<capnp::Response<Results>> promise = kj::mv(call);
    if (timeout_s > 0) promise = timer().timeoutAfter(timeout_s * kj::SECONDS, kj::mv(promise));
    try {
      return promise.wait(wait_scope());
    } catch (const kj::Exception& e) {
      ThrowTransportError(e, timeout_s);
    }
  }

  void Sleep(int64_t ms) { timer().afterDelay(ms * kj::MILLISECONDS).wait(wait_scope()); }

 private:
  [[noreturn]] void ThrowTransportError(const kj::Exception& e, int64_t timeout_s) const;

  std::string daemon_;
  std::string address_;
  capnp::EzRpcClient client_;
};

}  // namespace scribe::cli

#endif  // DAEMONS_CLI_CLI_COMMON_H_
