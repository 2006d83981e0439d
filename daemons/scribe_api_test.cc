// The management API schema as a wire format: a createVsd result survives a round trip
// through the flat-array encoding, and a truncated message is rejected, not misread.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <kj/array.h>
#include <kj/exception.h>

#include <cstdint>

#include "daemons/scribe_api.capnp.h"

namespace scribe::api {
namespace {

using CreateVsdResults = ScribeAdmin::CreateVsdResults;

kj::Array<capnp::word> EncodeCreateVsdResult() {
  capnp::MallocMessageBuilder message;
  auto results = message.initRoot<CreateVsdResults>();
  auto vsd = results.initVsd();
  vsd.setId(42);
  vsd.setName("vm-disk-1");
  vsd.setSizeBytes(64ull << 30);
  vsd.setReplication(3);
  vsd.setFlashPriority(11);
  vsd.setAllocatedBytes(1ull << 20);
  vsd.setUniqueBytes(3ull << 18);
  vsd.setSharedBytes(1ull << 18);
  vsd.setSnapshots(2);
  auto error = results.initError();
  error.setCode(6);  // absl::StatusCode::kAlreadyExists
  error.setMessage("vsd \"vm-disk-1\" already exists");
  return capnp::messageToFlatArray(message);
}

TEST(ScribeApi, CreateVsdResultRoundTrips) {
  kj::Array<capnp::word> words = EncodeCreateVsdResult();
  capnp::FlatArrayMessageReader reader(words);
  auto results = reader.getRoot<CreateVsdResults>();
  ASSERT_TRUE(results.hasVsd());
  ASSERT_TRUE(results.hasError());
  auto vsd = results.getVsd();
  EXPECT_EQ(vsd.getId(), 42u);
  EXPECT_EQ(vsd.getName(), "vm-disk-1");
  EXPECT_EQ(vsd.getSizeBytes(), 64ull << 30);
  EXPECT_EQ(vsd.getReplication(), 3);
  EXPECT_EQ(vsd.getFlashPriority(), 11);
  EXPECT_EQ(vsd.getAllocatedBytes(), 1ull << 20);
  EXPECT_EQ(vsd.getUniqueBytes(), 3ull << 18);
  EXPECT_EQ(vsd.getSharedBytes(), 1ull << 18);
  EXPECT_EQ(vsd.getSnapshots(), 2u);
  EXPECT_EQ(results.getError().getCode(), 6);
  EXPECT_EQ(results.getError().getMessage(), "vsd \"vm-disk-1\" already exists");
}

TEST(ScribeApi, DefaultErrorIsOk) {
  capnp::MallocMessageBuilder message;
  auto results = message.initRoot<CreateVsdResults>();
  EXPECT_EQ(results.getError().getCode(), 0);
  EXPECT_EQ(results.getError().getMessage(), "");
}

TEST(ScribeApi, TruncatedMessageIsRejected) {
  kj::Array<capnp::word> words = EncodeCreateVsdResult();
  ASSERT_GT(words.size(), 4u);
  for (size_t kept : {size_t{0}, size_t{1}, words.size() / 2, words.size() - 1}) {
    kj::ArrayPtr<const capnp::word> truncated = words.slice(0, kept);
    kj::Maybe<kj::Exception> exception = kj::runCatchingExceptions([&] {
      capnp::FlatArrayMessageReader reader(truncated);
      auto results = reader.getRoot<CreateVsdResults>();
      // Touch every pointer so that a bounds failure anywhere in the message surfaces.
      (void)results.getVsd().getName();
      (void)results.getError().getMessage();
    });
    EXPECT_TRUE(exception != nullptr) << "a message cut to " << kept << " of " << words.size()
                                      << " words was accepted";
  }
}

}  // namespace
}  // namespace scribe::api
