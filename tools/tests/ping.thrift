// No constants: thrift 0.17 emits no ping_constants.*; the macro writes placeholders.
namespace cpp tools_test

struct Ping {
  1: required i64 sequence
}

service Pinger {
  Ping ping(1: Ping request)
}
