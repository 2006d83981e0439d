#include "daemons/cli/format.h"

#include <gtest/gtest.h>

#include <string>

namespace scribe::cli {
namespace {

TEST(ParseSize, SuffixesArePowersOf1024) {
  EXPECT_EQ(ParseSize("512"), 512u);
  EXPECT_EQ(ParseSize("0"), 0u);
  EXPECT_EQ(ParseSize("4K"), 4096u);
  EXPECT_EQ(ParseSize("4k"), 4096u);
  EXPECT_EQ(ParseSize("4KiB"), 4096u);
  EXPECT_EQ(ParseSize("4KB"), 4096u);
  EXPECT_EQ(ParseSize("10M"), 10ull << 20);
  EXPECT_EQ(ParseSize("1G"), 1ull << 30);
  EXPECT_EQ(ParseSize("2T"), 2ull << 40);
  EXPECT_EQ(ParseSize("3P"), 3ull << 50);
  EXPECT_EQ(ParseSize("100B"), 100u);
  EXPECT_EQ(ParseSize("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(ParseSize("16383P"), 16383ull << 50);
}

TEST(ParseSize, RejectsMalformedAndOverflow) {
  for (const char* bad : {"", "K", "1.5G", "-1", "+1", "1X", "1 G", "1GiBB", "1Gi", "0x10",
                          "18446744073709551616", "16384P", "99999999999999999999T"}) {
    EXPECT_EQ(ParseSize(bad), std::nullopt) << bad;
  }
}

TEST(ParseUint, DigitsOnly) {
  EXPECT_EQ(ParseUint("42"), 42u);
  EXPECT_EQ(ParseUint("4K"), std::nullopt);
  EXPECT_EQ(ParseUint(""), std::nullopt);
  EXPECT_EQ(ParseUint("-3"), std::nullopt);
}

TEST(HumanBytes, ExactAndFractional) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(64ull << 20), "64 MiB");
  EXPECT_EQ(HumanBytes(3ull << 29), "1.5 GiB");
  EXPECT_EQ(HumanBytes((1ull << 20) - 1), "1.0 MiB");
  EXPECT_EQ(HumanBytes(2ull << 40), "2 TiB");
  EXPECT_EQ(HumanBytes(UINT64_MAX), "16.0 EiB");
}

TEST(Table, ColumnsAlignToTheWidestCell) {
  Table t({"NAME", "SIZE"});
  t.AddRow({"vm-long-name", "64 MiB"});
  t.AddRow({"a"});
  EXPECT_EQ(t.Render(),
            "NAME          SIZE\n"
            "vm-long-name  64 MiB\n"
            "a\n");
}

TEST(Json, NestedDocument) {
  JsonWriter w;
  w.BeginObject()
      .Field("name", "vm1")
      .Field("size_bytes", uint64_t{4096})
      .Field("ok", true)
      .Key("list")
      .BeginArray()
      .Uint(1)
      .BeginObject()
      .EndObject()
      .Null()
      .EndArray()
      .Key("empty")
      .BeginArray()
      .EndArray()
      .EndObject();
  EXPECT_TRUE(w.complete());
  EXPECT_EQ(w.str(), R"({"name":"vm1","size_bytes":4096,"ok":true,"list":[1,{},null],"empty":[]})");
}

TEST(Json, StringsAreEscaped) {
  EXPECT_EQ(JsonQuote("a\"b\\c"), R"("a\"b\\c")");
  EXPECT_EQ(JsonQuote("l1\nl2\tx\r\b\f"), R"("l1\nl2\tx\r\b\f")");
  EXPECT_EQ(JsonQuote(std::string("a\0b\x01\x7f", 5)), R"("a\u0000b\u0001\u007f")");
  EXPECT_EQ(JsonQuote("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  // Invalid UTF-8: a lone continuation byte, a truncated sequence, an overlong '/', a
  // surrogate.
  EXPECT_EQ(JsonQuote("\x80"), R"("\ufffd")");
  EXPECT_EQ(JsonQuote("a\xc3"), R"("a\ufffd")");
  EXPECT_EQ(JsonQuote("\xc0\xaf"), R"("\ufffd\ufffd")");
  EXPECT_EQ(JsonQuote("\xed\xa0\x80"), R"("\ufffd\ufffd\ufffd")");
  EXPECT_EQ(JsonQuote("/"), R"("/")");
}

}  // namespace
}  // namespace scribe::cli
