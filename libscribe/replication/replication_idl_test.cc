// The replication IDL on the wire: what a source writes through the generated client
// is what the target reads, field for field, and input a peer cannot have produced
// (truncated, missing required fields, absurd lengths) is rejected with an exception
// rather than read as something else.
#include <gtest/gtest.h>
#include <thrift/TApplicationException.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/protocol/TProtocolException.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TTransportException.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "libscribe/replication/ReplicationTarget.h"
#include "libscribe/replication/replication_constants.h"
#include "libscribe/replication/replication_types.h"

namespace scribe::replication {
namespace {

using apache::thrift::TException;
using apache::thrift::protocol::TBinaryProtocol;
using apache::thrift::protocol::TMessageType;
using apache::thrift::protocol::TProtocolException;
using apache::thrift::protocol::TType;
using apache::thrift::transport::TMemoryBuffer;

constexpr int64_t kBlockBytes = 4096;

// Every byte value, so binary fields are checked for NULs and high bytes too.
std::string AllByteValues(size_t length_bytes) {
  std::string data(length_bytes, '\0');
  for (size_t i = 0; i < length_bytes; ++i) data[i] = static_cast<char>(i % 256);
  return data;
}

Extent DataExtent(int64_t offset_bytes, std::string data) {
  Extent extent;
  extent.__set_offset_bytes(offset_bytes);
  extent.__set_length_bytes(static_cast<int64_t>(data.size()));
  extent.__set_data(std::move(data));
  return extent;
}

Extent ZeroExtent(int64_t offset_bytes, int64_t length_bytes) {
  Extent extent;
  extent.__set_offset_bytes(offset_bytes);
  extent.__set_length_bytes(length_bytes);
  extent.__set_zero(true);
  return extent;
}

std::vector<Extent> SampleExtents() {
  return {
      DataExtent(0, AllByteValues(kBlockBytes)),
      ZeroExtent(kBlockBytes, 256 * kBlockBytes),
      // Offsets past 4 GiB must survive as 64-bit.
      DataExtent((int64_t{1} << 40) + kBlockBytes, std::string(kBlockBytes, '\xff')),
  };
}

std::string Bytes(TMemoryBuffer& buffer) { return buffer.getBufferAsString(); }

std::shared_ptr<TMemoryBuffer> BufferOf(const std::string& bytes) {
  // Thrift's COPY of zero bytes calls memcpy with a null destination (UB, caught by
  // UBSan under --config=asan); an empty buffer is the same thing without it.
  if (bytes.empty()) return std::make_shared<TMemoryBuffer>();
  auto* data = reinterpret_cast<uint8_t*>(const_cast<char*>(bytes.data()));
  return std::make_shared<TMemoryBuffer>(data, static_cast<uint32_t>(bytes.size()),
                                         TMemoryBuffer::COPY);
}

// What ReplicationTargetClient::send_putExtents puts on the wire.
std::string EncodePutExtentsCall(SessionId session, const std::vector<Extent>& extents) {
  auto buffer = std::make_shared<TMemoryBuffer>();
  ReplicationTargetClient client(std::make_shared<TBinaryProtocol>(buffer));
  client.send_putExtents(session, extents);
  return Bytes(*buffer);
}

// What the target's processor does with those bytes: the message header, then the args.
ReplicationTarget_putExtents_args DecodePutExtentsCall(const std::string& bytes) {
  TBinaryProtocol protocol(BufferOf(bytes));
  std::string name;
  TMessageType type;
  int32_t seqid = 0;
  protocol.readMessageBegin(name, type, seqid);
  if (name != "putExtents" || type != apache::thrift::protocol::T_CALL) {
    ADD_FAILURE() << "unexpected message " << name << " type " << type;
  }
  ReplicationTarget_putExtents_args args;
  args.read(&protocol);
  protocol.readMessageEnd();
  return args;
}

TEST(ReplicationIdlTest, ProtocolVersionRangeIsConsistent) {
  EXPECT_GE(g_replication_constants.PROTOCOL_VERSION, 1);
  EXPECT_LE(g_replication_constants.PROTOCOL_VERSION_MIN,
            g_replication_constants.PROTOCOL_VERSION);
  EXPECT_EQ(g_replication_constants.NO_SNAPSHOT, 0);
}

TEST(ReplicationIdlTest, PutExtentsCallRoundTripsEveryField) {
  const SessionId session = 0x0123456789abcdefLL;
  const std::vector<Extent> sent = SampleExtents();

  ReplicationTarget_putExtents_args received =
      DecodePutExtentsCall(EncodePutExtentsCall(session, sent));

  EXPECT_EQ(received.session, session);
  ASSERT_EQ(received.extents.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) {
    SCOPED_TRACE(i);
    const Extent& want = sent[i];
    const Extent& got = received.extents[i];
    EXPECT_EQ(got.offset_bytes, want.offset_bytes);
    EXPECT_EQ(got.length_bytes, want.length_bytes);
    EXPECT_EQ(got.__isset.data, want.__isset.data);
    EXPECT_EQ(got.data, want.data);
    EXPECT_EQ(got.zero, want.zero);
    EXPECT_EQ(got, want);  // The generated operator== agrees.
  }
  EXPECT_FALSE(received.extents[1].__isset.data);
  EXPECT_TRUE(received.extents[1].zero);
  EXPECT_EQ(received.extents[0].data.size(), static_cast<size_t>(kBlockBytes));
}

TEST(ReplicationIdlTest, EmptyExtentListRoundTrips) {
  ReplicationTarget_putExtents_args received = DecodePutExtentsCall(EncodePutExtentsCall(7, {}));
  EXPECT_EQ(received.session, 7);
  EXPECT_TRUE(received.extents.empty());
}

TEST(ReplicationIdlTest, BeginSnapshotCallRoundTripsDescriptors) {
  VsdDescriptor vsd;
  vsd.__set_id(42);
  vsd.__set_name("db-01/data");
  vsd.__set_size_bytes(int64_t{1} << 41);
  vsd.__set_replication_factor(3);
  SnapshotDescriptor base;
  base.__set_id(g_replication_constants.NO_SNAPSHOT);
  base.__set_name("");
  base.__set_created_generation(0);
  SnapshotDescriptor next;
  next.__set_id(9001);
  next.__set_name("hourly-2024-01-01T00");
  next.__set_created_generation(123456789012LL);

  auto buffer = std::make_shared<TMemoryBuffer>();
  ReplicationTargetClient(std::make_shared<TBinaryProtocol>(buffer))
      .send_beginSnapshot(vsd, base, next);
  TBinaryProtocol protocol(BufferOf(Bytes(*buffer)));
  std::string name;
  TMessageType type;
  int32_t seqid = 0;
  protocol.readMessageBegin(name, type, seqid);
  EXPECT_EQ(name, "beginSnapshot");
  ReplicationTarget_beginSnapshot_args args;
  args.read(&protocol);

  EXPECT_EQ(args.vsd.id, 42);
  EXPECT_EQ(args.vsd.name, "db-01/data");
  EXPECT_EQ(args.vsd.size_bytes, int64_t{1} << 41);
  EXPECT_EQ(args.vsd.replication_factor, 3);
  EXPECT_EQ(args.base_snapshot, base);
  EXPECT_EQ(args.new_snapshot.id, 9001);
  EXPECT_EQ(args.new_snapshot.name, "hourly-2024-01-01T00");
  EXPECT_EQ(args.new_snapshot.created_generation, 123456789012LL);
}

TEST(ReplicationIdlTest, ErrorResultRoundTripsCodeAndMessage) {
  ReplicationTarget_putExtents_result result;
  result.error.__set_code(ErrorCode::OUT_OF_RANGE);
  result.error.__set_message("extent [8 GiB, +4 KiB) past size_bytes 8 GiB");
  result.error.__set_retryable(false);
  result.__isset.error = true;

  auto buffer = std::make_shared<TMemoryBuffer>();
  TBinaryProtocol writer(buffer);
  result.write(&writer);
  TBinaryProtocol reader(BufferOf(Bytes(*buffer)));
  ReplicationTarget_putExtents_presult presult;
  presult.read(&reader);

  ASSERT_TRUE(presult.__isset.error);
  EXPECT_EQ(presult.error.code, ErrorCode::OUT_OF_RANGE);
  EXPECT_EQ(presult.error.message, result.error.message);
  EXPECT_FALSE(presult.error.retryable);
}

TEST(ReplicationIdlTest, EveryTruncationOfACallIsRejected) {
  const std::string bytes = EncodePutExtentsCall(5, SampleExtents());
  ASSERT_NO_THROW(DecodePutExtentsCall(bytes));
  // Without its final byte (the args' T_STOP) or any longer tail, the call is incomplete
  // and reading must fail, never yield a shorter extent list.
  for (size_t length = 0; length < bytes.size(); ++length) {
    SCOPED_TRACE(length);
    EXPECT_THROW(DecodePutExtentsCall(bytes.substr(0, length)), TException);
  }
}

TEST(ReplicationIdlTest, MissingRequiredFieldIsRejected) {
  // An Extent carrying only offset_bytes: length_bytes is required.
  auto buffer = std::make_shared<TMemoryBuffer>();
  TBinaryProtocol writer(buffer);
  writer.writeStructBegin("Extent");
  writer.writeFieldBegin("offset_bytes", apache::thrift::protocol::T_I64, 1);
  writer.writeI64(0);
  writer.writeFieldEnd();
  writer.writeFieldStop();
  writer.writeStructEnd();

  TBinaryProtocol reader(BufferOf(Bytes(*buffer)));
  Extent extent;
  try {
    extent.read(&reader);
    FAIL() << "an Extent without length_bytes was accepted";
  } catch (const TProtocolException& e) {
    EXPECT_EQ(e.getType(), TProtocolException::INVALID_DATA);
  }
}

TEST(ReplicationIdlTest, AbsurdBinaryLengthIsRejectedBeforeAllocating) {
  // An Extent whose data claims 1 GiB; the message ends right after the length. A
  // target reads with string and container limits (from the batch limits it announced
  // in HelloResponse), so the length is refused before a buffer is sized for it.
  auto buffer = std::make_shared<TMemoryBuffer>();
  TBinaryProtocol writer(buffer);
  writer.writeStructBegin("Extent");
  writer.writeFieldBegin("data", apache::thrift::protocol::T_STRING, 3);
  writer.writeI32(int32_t{1} << 30);

  constexpr int32_t kBatchBytesMax = 8 << 20;
  constexpr int32_t kBatchExtentsMax = 1024;
  TBinaryProtocol reader(BufferOf(Bytes(*buffer)), kBatchBytesMax, kBatchExtentsMax,
                         /*strict_read=*/true, /*strict_write=*/true);
  Extent extent;
  try {
    extent.read(&reader);
    FAIL() << "a 1 GiB binary length was accepted";
  } catch (const TProtocolException& e) {
    EXPECT_EQ(e.getType(), TProtocolException::SIZE_LIMIT);
  }
}

TEST(ReplicationIdlTest, FieldsFromANewerVersionAreSkipped) {
  // A newer peer's SnapshotDescriptor with an extra optional field 99 in the middle.
  auto buffer = std::make_shared<TMemoryBuffer>();
  TBinaryProtocol writer(buffer);
  writer.writeStructBegin("SnapshotDescriptor");
  writer.writeFieldBegin("id", apache::thrift::protocol::T_I64, 1);
  writer.writeI64(77);
  writer.writeFieldEnd();
  writer.writeFieldBegin("future", apache::thrift::protocol::T_LIST, 99);
  writer.writeListBegin(apache::thrift::protocol::T_STRING, 2);
  writer.writeString(std::string("a"));
  writer.writeString(std::string("b"));
  writer.writeListEnd();
  writer.writeFieldEnd();
  writer.writeFieldBegin("name", apache::thrift::protocol::T_STRING, 2);
  writer.writeString(std::string("nightly"));
  writer.writeFieldEnd();
  writer.writeFieldBegin("created_generation", apache::thrift::protocol::T_I64, 3);
  writer.writeI64(5);
  writer.writeFieldEnd();
  writer.writeFieldStop();
  writer.writeStructEnd();

  TBinaryProtocol reader(BufferOf(Bytes(*buffer)));
  SnapshotDescriptor snapshot;
  snapshot.read(&reader);
  EXPECT_EQ(snapshot.id, 77);
  EXPECT_EQ(snapshot.name, "nightly");
  EXPECT_EQ(snapshot.created_generation, 5);
}

}  // namespace
}  // namespace scribe::replication
