// Text helpers of the `scribe` CLI: sizes in and out, aligned tables, and a minimal JSON
// writer (the CLI's `--json` output), kept apart from main so they are unit-tested.
#ifndef DAEMONS_CLI_FORMAT_H_
#define DAEMONS_CLI_FORMAT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace scribe::cli {

// "512", "4K", "10M", "1G", "2T", "1P" (powers of 1024; case-insensitive; "KiB"/"KB"/"B"
// spellings accepted), bytes without a suffix. Whole numbers only; nullopt when malformed
// or above 2^64 - 1.
std::optional<uint64_t> ParseSize(absl::string_view text);

// A decimal unsigned integer (no sign, no suffix); nullopt when malformed or too large.
std::optional<uint64_t> ParseUint(absl::string_view text);

// "512 B", "4 KiB", "1.5 GiB": exact multiples without a decimal, others with one.
std::string HumanBytes(uint64_t bytes);

// Rows printed under a header with every column padded to its widest cell.
class Table {
 public:
  explicit Table(std::vector<std::string> header);
  void AddRow(std::vector<std::string> row);  // shorter rows are padded with ""
  // Columns separated by two spaces; trailing spaces trimmed; one line per row.
  std::string Render() const;

 private:
  std::vector<std::vector<std::string>> rows_;  // rows_[0] is the header
};

// Writes one JSON value. Keys and values alternate inside objects; commas are placed
// automatically. Strings are escaped per RFC 8259; invalid UTF-8 bytes become U+FFFD, so
// the output is always valid JSON.
class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(absl::string_view key);
  JsonWriter& String(absl::string_view value);
  JsonWriter& Uint(uint64_t value);
  JsonWriter& Double(double value);
  JsonWriter& Bool(bool value);
  JsonWriter& Null();

  // Shorthands for a key and its value.
  JsonWriter& Field(absl::string_view key, absl::string_view value) {
    return Key(key).String(value);
  }
  JsonWriter& Field(absl::string_view key, const char* value) { return Key(key).String(value); }
  JsonWriter& Field(absl::string_view key, const std::string& value) {
    return Key(key).String(value);
  }
  JsonWriter& Field(absl::string_view key, uint64_t value) { return Key(key).Uint(value); }
  JsonWriter& Field(absl::string_view key, bool value) { return Key(key).Bool(value); }

  // The document so far (complete once every Begin has its End).
  const std::string& str() const { return out_; }
  bool complete() const { return depth_.empty() && !out_.empty(); }

 private:
  void BeforeValue();

  std::string out_;
  // Per open container: whether it has had an element yet.
  std::vector<bool> depth_;
  bool after_key_ = false;
};

// `value` as a JSON string literal, quotes included.
std::string JsonQuote(absl::string_view value);

}  // namespace scribe::cli

#endif  // DAEMONS_CLI_FORMAT_H_
