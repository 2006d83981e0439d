#include "daemons/cli/cli_common.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"

namespace scribe::cli {

// ------------------------------------------------------------------ arguments

CommandLine ParseCommandLine(const Tool& tool, const std::vector<std::string>& args,
                             const char* env_address) {
  CommandLine line;
  line.address = env_address != nullptr && env_address[0] != '\0' ? env_address : tool.default_address;
  bool after_dashes = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (after_dashes) {
      line.words.push_back(arg);
      continue;
    }
    if (arg == "--") {
      // Everything after is the command's: keep the marker for its own parser.
      after_dashes = true;
      line.words.push_back(arg);
    } else if (arg == "--json") {
      line.json = true;
    } else if (std::find(tool.switches.begin(), tool.switches.end(), arg) != tool.switches.end()) {
      line.switches.insert(arg);
    } else if (arg == "--help" || arg == "-h") {
      line.help = true;
    } else if (arg == "--addr") {
      if (i + 1 >= args.size()) {
        line.error = "--addr needs HOST:PORT";
      } else {
        line.address = args[++i];
      }
    } else if (arg.rfind("--addr=", 0) == 0) {
      line.address = arg.substr(7);
    } else {
      line.words.push_back(arg);
    }
  }
  return line;
}

std::string CommandName(const Tool& tool, const std::vector<std::string>& words) {
  if (words.empty()) return "";
  const bool group =
      std::find(tool.groups.begin(), tool.groups.end(), words[0]) != tool.groups.end();
  if (group && words.size() > 1) return words[0] + " " + words[1];
  return words[0];
}

Args::Args(const std::vector<std::string>& words, const FlagSpec& spec, FlagPrefix prefix) {
  bool flags_done = false;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (!flags_done && w == "--") {
      flags_done = true;
      continue;
    }
    const bool is_flag = w.size() >= 2 && w[0] == '-' && (prefix == FlagPrefix::kDash || w[1] == '-');
    if (flags_done || !is_flag) {
      positional_.push_back(w);
      continue;
    }
    std::string name = w;
    std::optional<std::string> value;
    const size_t eq = w.find('=');
    if (eq != std::string::npos) {
      name = w.substr(0, eq);
      value = w.substr(eq + 1);
    }
    if (spec.switches.count(name)) {
      if (value) throw UsageError{absl::StrFormat("%s takes no value", name)};
      switches_.insert(name);
    } else if (spec.optional.count(name)) {
      if (!value && i + 1 < words.size() && words[i + 1].find('=') != std::string::npos &&
          words[i + 1].rfind("--", 0) != 0) {
        value = words[++i];
      }
      multi_[name].push_back(value.value_or(""));
    } else if (spec.values.count(name) || spec.repeated.count(name)) {
      if (!value) {
        if (i + 1 >= words.size()) throw UsageError{absl::StrFormat("%s needs a value", name)};
        value = words[++i];
      }
      if (spec.repeated.count(name)) {
        multi_[name].push_back(*value);
      } else {
        flags_[name] = *value;
      }
    } else {
      throw UsageError{absl::StrFormat("unknown option %s", name)};
    }
  }
}

void Args::ExpectCount(size_t min, size_t max, const char* shape) const {
  if (positional_.size() < min || positional_.size() > max) {
    throw UsageError{absl::StrFormat("expected %s", shape)};
  }
}

std::optional<std::string> Args::Flag(const std::string& name) const {
  auto it = flags_.find(name);
  if (it == flags_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> Args::All(const std::string& name) const {
  auto it = multi_.find(name);
  return it == multi_.end() ? std::vector<std::string>{} : it->second;
}

uint64_t SizeArg(const std::string& what, const std::string& text) {
  std::optional<uint64_t> size = ParseSize(text);
  if (!size) {
    throw UsageError{absl::StrFormat(
        "%s '%s' is not a size (a whole number with an optional K, M, G, T or P suffix)", what,
        text)};
  }
  return *size;
}

uint64_t UintArg(const std::string& what, const std::string& text, uint64_t max) {
  std::optional<uint64_t> v = ParseUint(text);
  if (!v || *v > max) {
    throw UsageError{absl::StrFormat("%s wants a whole number up to %d, not '%s'", what, max, text)};
  }
  return *v;
}

// ------------------------------------------------------------------ commands

CommandMatch MatchCommand(const std::vector<std::string>& names,
                          const std::vector<std::string>& words) {
  if (words.empty()) throw UsageError{"no command given"};
  bool is_group = false;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    const size_t space = name.find(' ');
    if (space == std::string::npos) {
      if (name == words[0]) return {i, 1};
      continue;
    }
    if (name.compare(0, space, words[0]) != 0 || space != words[0].size()) continue;
    is_group = true;
    if (words.size() >= 2 && name.substr(space + 1) == words[1]) return {i, 2};
  }
  if (!is_group) throw UsageError{absl::StrFormat("unknown command '%s'", words[0])};
  if (words.size() < 2) throw UsageError{absl::StrFormat("'%s' needs a subcommand", words[0])};
  throw UsageError{absl::StrFormat("unknown command '%s %s'", words[0], words[1])};
}

int RunReportingErrors(const Tool& tool, const CommandLine& line, const std::function<int()>& run) {
  if (line.help) {
    std::fputs(tool.usage, stdout);
    return 0;
  }
  const std::string name = CommandName(tool, line.words);
  const std::string prefix =
      name.empty() ? absl::StrFormat("%s: ", tool.name) : absl::StrFormat("%s: %s: ", tool.name, name);
  try {
    if (line.error) throw UsageError{*line.error};
    if (line.address.empty()) throw UsageError{"the address is empty"};
    const int status = run();
    std::fflush(stdout);
    return status;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s%s\n\n%s", prefix.c_str(), e.message.c_str(), tool.usage);
    return 2;
  } catch (const CommandError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s%s\n", prefix.c_str(), e.message.c_str());
    return 1;
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "%scannot talk to %s at %s: %s\n", prefix.c_str(), tool.daemon,
                 line.address.c_str(), e.getDescription().cStr());
    return 1;
  }
}

// ----------------------------------------------------------------- connection

Connection::Connection(const Tool& tool, std::string address)
    : daemon_(tool.daemon), address_(std::move(address)), client_(address_, tool.default_port) {}

void Connection::ThrowTransportError(const kj::Exception& e, int64_t timeout_s) const {
  if (e.getType() == kj::Exception::Type::OVERLOADED &&
      e.getDescription().startsWith("operation timed out")) {
    throw CommandError{
        absl::StrFormat("no answer from %s at %s within %d s", daemon_, address_, timeout_s)};
  }
  throw CommandError{absl::StrFormat("cannot talk to %s at %s: %s", daemon_, address_,
                                     e.getDescription().cStr())};
}

}  // namespace scribe::cli
