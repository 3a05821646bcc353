// Strict JSON: parsing untrusted text (checkpoint headers, config.json, tokenizer.json, HTTP bodies) into an
// owned tree, and writing compact JSON. Parsing rejects invalid UTF-8, duplicate object keys and nesting
// deeper than a limit, and never allocates from a declared size. The parser is simdjson; this header exposes
// none of it. JsonValue trees are immutable after parsing and safe to read from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store/base/status.h"

namespace es {

struct JsonLimits {
  size_t max_depth = 64;
  size_t max_bytes = 256u << 20;
  // Values (of any type) in the document. Each costs about a hundred bytes in the tree, so this bounds memory
  // whatever the text holds (a text of "[0,0,0,...]" would otherwise cost 50x its size).
  size_t max_values = 8u << 20;
};

class JsonValue {
 public:
  enum class Type : uint8_t { kNull, kBool, kInt, kUint, kDouble, kString, kArray, kObject };
  using Member = std::pair<std::string, JsonValue>;

  JsonValue() = default;

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }
  bool is_number() const { return type_ == Type::kInt || type_ == Type::kUint || type_ == Type::kDouble; }
  // An integer literal (no fraction or exponent) that fits in int64 or uint64.
  bool is_integer() const { return type_ == Type::kInt || type_ == Type::kUint; }

  bool bool_value() const { return bool_; }
  const std::string& string_value() const { return string_; }
  // Integers: nullopt-like failure reported through Result when out of range.
  Result<int64_t> AsInt64() const;
  Result<uint64_t> AsUint64() const;
  Result<double> AsDouble() const;  // any number
  const std::vector<JsonValue>& array() const { return array_; }
  const std::vector<Member>& object() const { return object_; }

  // Object lookup (linear; objects keep document order). Null when absent or not an object.
  const JsonValue* Find(std::string_view key) const;

  // Builders (used by the parser and by tests).
  static JsonValue Null() { return JsonValue(); }
  static JsonValue Bool(bool b);
  static JsonValue Int(int64_t v);
  static JsonValue Uint(uint64_t v);
  static JsonValue Double(double v);
  static JsonValue String(std::string s);
  static JsonValue Array(std::vector<JsonValue> items);
  static JsonValue Object(std::vector<Member> members);

 private:
  Type type_ = Type::kNull;
  bool bool_ = false;
  int64_t int_ = 0;
  uint64_t uint_ = 0;
  double double_ = 0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::vector<Member> object_;
};

// Parses one JSON document. InvalidArgument (with the reason) on malformed text, invalid UTF-8, duplicate keys,
// excessive depth or size.
Result<JsonValue> ParseJson(std::string_view text, const JsonLimits& limits = {});

// Compact JSON text. Numbers print in the shortest form that reads back identically; NaN and infinities,
// which JSON cannot hold, print as null.
class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view s);
  JsonWriter& Int(int64_t v);
  JsonWriter& Uint(uint64_t v);
  JsonWriter& Double(double v);
  JsonWriter& Bool(bool b);
  JsonWriter& Null();
  // Inserts already-serialised JSON as one value.
  JsonWriter& Raw(std::string_view json);
  // Writes a parsed value.
  JsonWriter& Value(const JsonValue& v);

  const std::string& str() const { return out_; }
  std::string Take() { return std::move(out_); }

 private:
  void BeforeValue();
  std::string out_;
  std::vector<bool> first_;  // per open container: no element written yet
  bool after_key_ = false;
};

// Appends `s` to `out` as a quoted JSON string (control characters and quotes escaped; UTF-8 passes through).
void AppendJsonString(std::string& out, std::string_view s);

}  // namespace es
