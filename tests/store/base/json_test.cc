// Strict JSON: duplicates, depth, UTF-8, numbers; the writer's escaping and number formatting.
#include "store/base/json.h"

#include <gtest/gtest.h>

#include <cmath>

namespace es {
namespace {

TEST(Json, ParsesValues) {
  auto v = ParseJson(R"({"a":1,"b":-2,"c":1.5,"d":"x\u00e9","e":[true,false,null],"f":18446744073709551615})");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(*v->Find("a")->AsUint64(), 1u);
  EXPECT_EQ(*v->Find("b")->AsInt64(), -2);
  EXPECT_TRUE(v->Find("b")->AsUint64().status().IsInvalidArgument());
  EXPECT_FALSE(v->Find("c")->is_integer());
  EXPECT_DOUBLE_EQ(*v->Find("c")->AsDouble(), 1.5);
  EXPECT_EQ(v->Find("d")->string_value(), "x\xc3\xa9");
  EXPECT_EQ(v->Find("e")->array().size(), 3u);
  EXPECT_EQ(*v->Find("f")->AsUint64(), UINT64_MAX);
  EXPECT_TRUE(v->Find("f")->AsInt64().status().IsInvalidArgument());
  EXPECT_EQ(v->Find("zz"), nullptr);
}

TEST(Json, RejectsDuplicateKeys) {
  EXPECT_TRUE(ParseJson(R"({"a":1,"a":2})").status().IsInvalidArgument());
  // Nested, and in a large object (the hash-set path).
  EXPECT_TRUE(ParseJson(R"({"x":{"k":1,"k":1}})").status().IsInvalidArgument());
  std::string big = "{";
  for (int i = 0; i < 100; ++i) big += "\"k" + std::to_string(i) + "\":0,";
  big += "\"k50\":1}";
  auto s = ParseJson(big).status();
  EXPECT_TRUE(s.IsInvalidArgument());
  EXPECT_NE(s.message().find("k50"), std::string::npos);
}

TEST(Json, RejectsDeepNesting) {
  std::string deep(100, '[');
  deep += std::string(100, ']');
  EXPECT_TRUE(ParseJson(deep, JsonLimits{.max_depth = 64}).status().IsInvalidArgument());
  EXPECT_TRUE(ParseJson(deep, JsonLimits{.max_depth = 128}).ok());
}

TEST(Json, RejectsInvalidUtf8AndGarbage) {
  EXPECT_FALSE(ParseJson("{\"a\":\"\xff\xfe\"}").ok());
  EXPECT_FALSE(ParseJson("{\"a\":").ok());
  EXPECT_FALSE(ParseJson("").ok());
  EXPECT_FALSE(ParseJson("{} {}").ok());
  EXPECT_FALSE(ParseJson("{'a':1}").ok());
}

TEST(Json, RejectsTooManyValues) {
  EXPECT_TRUE(ParseJson("[1,2,3,4]", JsonLimits{.max_values = 4}).status().IsInvalidArgument());
  EXPECT_TRUE(ParseJson("[1,2,3,4]", JsonLimits{.max_values = 5}).ok());
}

TEST(Json, RejectsOversizedText) {
  EXPECT_TRUE(ParseJson("[1,2,3]", JsonLimits{.max_bytes = 4}).status().IsInvalidArgument());
}

TEST(JsonWriter, EscapesAndFormats) {
  JsonWriter w;
  w.BeginObject()
      .Key("s").String("a\"b\\c\n\x01")
      .Key("n").Double(0.1)
      .Key("i").Double(3)
      .Key("nan").Double(std::nan(""))
      .Key("arr").BeginArray().Int(-1).Uint(2).Bool(true).Null().EndArray()
      .EndObject();
  EXPECT_EQ(w.str(), R"({"s":"a\"b\\c\n\u0001","n":0.1,"i":3.0,"nan":null,"arr":[-1,2,true,null]})");
  auto back = ParseJson(w.str());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->Find("s")->string_value(), "a\"b\\c\n\x01");
}

TEST(JsonWriter, ValueRoundTrip) {
  const char* text = R"({"a":[1,-2,3.5,"x",{"b":null}],"c":false})";
  auto v = ParseJson(text);
  ASSERT_TRUE(v.ok());
  JsonWriter w;
  w.Value(*v);
  EXPECT_EQ(w.str(), text);
}

}  // namespace
}  // namespace es
