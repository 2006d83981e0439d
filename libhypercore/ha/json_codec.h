// The JSON codec shared by the records libhypercore and hypercored keep in etcd: strict
// field accessors (a record we wrote always has every field with its type, so anything
// else is damage or a newer writer, reported as DATA_LOSS, never guessed) and the
// VmSpec encoding. Internal to the project; not a public header.
#ifndef LIBHYPERCORE_HA_JSON_CODEC_H_
#define LIBHYPERCORE_HA_JSON_CODEC_H_

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hypercore/vm_spec.h"

namespace hypercore::json_codec {

using Json = nlohmann::json;

// Field accessors that record the first problem instead of throwing.
class Reader {
 public:
  Reader(const Json& object, std::string where);

  const absl::Status& status() const { return status_; }

  const Json* Field(const char* name, bool required = true);
  std::string String(const char* name, bool required = true);
  uint64_t Unsigned(const char* name);
  int64_t Signed(const char* name);
  int Int(const char* name);
  bool Bool(const char* name);
  const Json* Array(const char* name);

  std::nullptr_t Fail(const std::string& what);
  void Fail(const char* field, const char* type);

 private:
  const Json& object_;
  std::string where_;
  absl::Status status_;
};

Json EncodeSpec(const VmSpec& spec);
absl::StatusOr<VmSpec> DecodeSpec(const Json& json);

}  // namespace hypercore::json_codec

#endif  // LIBHYPERCORE_HA_JSON_CODEC_H_
