// thrift_cc_library output for an IDL without constants: every declared header exists
// (the constants one as a placeholder) and the service client compiles and links.
#include <gtest/gtest.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/transport/TBufferTransports.h>

#include <memory>

#include "tools/tests/Pinger.h"
#include "tools/tests/ping_constants.h"
#include "tools/tests/ping_types.h"

namespace {

using apache::thrift::protocol::TBinaryProtocol;
using apache::thrift::transport::TMemoryBuffer;

TEST(ThriftMacroTest, ClientWritesACallTheArgsStructReads) {
  auto buffer = std::make_shared<TMemoryBuffer>();
  auto protocol = std::make_shared<TBinaryProtocol>(buffer);
  tools_test::PingerClient client(protocol);
  tools_test::Ping ping;
  ping.sequence = 42;
  client.send_ping(ping);

  std::string name;
  apache::thrift::protocol::TMessageType type;
  int32_t seqid = 0;
  protocol->readMessageBegin(name, type, seqid);
  EXPECT_EQ(name, "ping");
  EXPECT_EQ(type, apache::thrift::protocol::T_CALL);
  tools_test::Pinger_ping_args args;
  args.read(protocol.get());
  protocol->readMessageEnd();
  EXPECT_EQ(args.request.sequence, 42);
}

}  // namespace
