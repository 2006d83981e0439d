// The management API schema as a wire format: a createVsd result survives a round trip
// through the flat-array encoding, and a truncated message is rejected, not misread.
#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <kj/array.h>
#include <kj/exception.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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
    EXPECT_TRUE(exception != nullptr)
        << "a message cut to " << kept << " of " << words.size() << " words was accepted";
  }
}

// Ordinals are the wire identity of the methods: a client built against an older schema
// must keep reaching the same method. New methods only ever get new ordinals.
TEST(ScribeApi, MethodOrdinalsAreStable) {
  const std::vector<std::pair<std::string, uint16_t>> expected = {
      {"createVsd", 0},      {"listVsds", 1},          {"deleteVsd", 2},
      {"resizeVsd", 3},      {"createSnapshot", 4},    {"listSnapshots", 5},
      {"deleteSnapshot", 6}, {"cloneFromSnapshot", 7}, {"diff", 8},
      {"listDisks", 9},      {"failDisk", 10},         {"stats", 11},
      {"scrub", 12},         {"cluster", 13},          {"addDisk", 14},
      {"cloneVsd", 15},      {"revertToSnapshot", 16}, {"createGroupSnapshot", 17},
      {"getVsd", 18},        {"exportInfo", 19},       {"fenceVsd", 20},
  };
  capnp::InterfaceSchema schema = capnp::Schema::from<ScribeAdmin>();
  EXPECT_EQ(schema.getMethods().size(), expected.size());
  for (const auto& [name, ordinal] : expected) {
    KJ_IF_MAYBE (method, schema.findMethodByName(name)) {
      EXPECT_EQ(method->getOrdinal(), ordinal) << name;
    } else {
      ADD_FAILURE() << "no method " << name;
    }
  }
}

TEST(ScribeApi, ClusterStatusRoundTrips) {
  capnp::MallocMessageBuilder message;
  auto results = message.initRoot<ScribeAdmin::ClusterResults>();
  auto status = results.initStatus();
  status.setOwnerNode(2);
  status.setEpoch(17);
  status.setState("running");
  auto nodes = status.initNodes(2);
  nodes[0].setId(1);
  nodes[0].setAdminAddress("10.0.0.1:7001");
  nodes[0].setBackplaneAddress("10.0.0.1:7101");
  nodes[0].setNbdSocket("/run/scribe/nbd.sock");
  nodes[0].setAlive(true);
  nodes[1].setId(2);
  nodes[1].setOwner(true);
  nodes[1].setReachable(true);
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);

  capnp::FlatArrayMessageReader reader(words);
  auto got = reader.getRoot<ScribeAdmin::ClusterResults>().getStatus();
  EXPECT_EQ(got.getOwnerNode(), 2u);
  EXPECT_EQ(got.getEpoch(), 17u);
  EXPECT_EQ(got.getState(), "running");
  ASSERT_EQ(got.getNodes().size(), 2u);
  EXPECT_EQ(got.getNodes()[0].getAdminAddress(), "10.0.0.1:7001");
  EXPECT_EQ(got.getNodes()[0].getBackplaneAddress(), "10.0.0.1:7101");
  EXPECT_EQ(got.getNodes()[0].getNbdSocket(), "/run/scribe/nbd.sock");
  EXPECT_TRUE(got.getNodes()[0].getAlive());
  EXPECT_FALSE(got.getNodes()[0].getOwner());
  EXPECT_TRUE(got.getNodes()[1].getOwner());
  EXPECT_TRUE(got.getNodes()[1].getReachable());
  EXPECT_FALSE(got.getNodes()[1].getAlive());
}

}  // namespace
}  // namespace scribe::api
