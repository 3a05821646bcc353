// JSON parsing over simdjson's DOM, converted into an owned tree with the strictness checks simdjson leaves
// to the caller (duplicate keys), and a small writer.
#include "store/base/json.h"

#include <simdjson.h>

#include <charconv>
#include <cmath>
#include <unordered_set>

namespace es {

Result<int64_t> JsonValue::AsInt64() const {
  if (type_ == Type::kInt) return int_;
  if (type_ == Type::kUint && uint_ <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(uint_);
  return Status::InvalidArgument(type_ == Type::kUint ? "integer out of range" : "not an integer");
}

Result<uint64_t> JsonValue::AsUint64() const {
  if (type_ == Type::kUint) return uint_;
  if (type_ == Type::kInt && int_ >= 0) return static_cast<uint64_t>(int_);
  return Status::InvalidArgument(type_ == Type::kInt ? "negative integer" : "not a non-negative integer");
}

Result<double> JsonValue::AsDouble() const {
  switch (type_) {
    case Type::kInt: return static_cast<double>(int_);
    case Type::kUint: return static_cast<double>(uint_);
    case Type::kDouble: return double_;
    default: return Status::InvalidArgument("not a number");
  }
}

const JsonValue* JsonValue::Find(std::string_view key) const {
  if (type_ != Type::kObject) return nullptr;
  for (const auto& m : object_) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

JsonValue JsonValue::Bool(bool b) {
  JsonValue v;
  v.type_ = Type::kBool;
  v.bool_ = b;
  return v;
}
JsonValue JsonValue::Int(int64_t i) {
  JsonValue v;
  v.type_ = Type::kInt;
  v.int_ = i;
  return v;
}
JsonValue JsonValue::Uint(uint64_t u) {
  JsonValue v;
  v.type_ = Type::kUint;
  v.uint_ = u;
  return v;
}
JsonValue JsonValue::Double(double d) {
  JsonValue v;
  v.type_ = Type::kDouble;
  v.double_ = d;
  return v;
}
JsonValue JsonValue::String(std::string s) {
  JsonValue v;
  v.type_ = Type::kString;
  v.string_ = std::move(s);
  return v;
}
JsonValue JsonValue::Array(std::vector<JsonValue> items) {
  JsonValue v;
  v.type_ = Type::kArray;
  v.array_ = std::move(items);
  return v;
}
JsonValue JsonValue::Object(std::vector<Member> members) {
  JsonValue v;
  v.type_ = Type::kObject;
  v.object_ = std::move(members);
  return v;
}

namespace {

// Objects with more members than this use a hash set to find duplicates.
constexpr size_t kLinearDuplicateScan = 16;

Status Convert(simdjson::dom::element e, JsonValue& out, size_t& budget) {
  using simdjson::dom::element_type;
  if (budget == 0) return Status::InvalidArgument("too many values in the document");
  --budget;
  switch (e.type()) {
    case element_type::NULL_VALUE: out = JsonValue::Null(); return Status::Ok();
    case element_type::BOOL: out = JsonValue::Bool(e.get_bool().value_unsafe()); return Status::Ok();
    case element_type::INT64: out = JsonValue::Int(e.get_int64().value_unsafe()); return Status::Ok();
    case element_type::UINT64: out = JsonValue::Uint(e.get_uint64().value_unsafe()); return Status::Ok();
    case element_type::DOUBLE: out = JsonValue::Double(e.get_double().value_unsafe()); return Status::Ok();
    case element_type::STRING: out = JsonValue::String(std::string(e.get_string().value_unsafe())); return Status::Ok();
    case element_type::ARRAY: {
      std::vector<JsonValue> items;
      simdjson::dom::array a = e.get_array().value_unsafe();
      items.reserve(a.size());
      for (simdjson::dom::element child : a) {
        items.emplace_back();
        ES_RETURN_IF_ERROR(Convert(child, items.back(), budget));
      }
      out = JsonValue::Array(std::move(items));
      return Status::Ok();
    }
    case element_type::OBJECT: {
      simdjson::dom::object o = e.get_object().value_unsafe();
      std::vector<JsonValue::Member> members;
      members.reserve(o.size());
      std::unordered_set<std::string_view> seen;
      bool use_set = o.size() > kLinearDuplicateScan;
      for (auto field : o) {
        std::string_view key = field.key;
        bool dup = false;
        if (use_set) {
          dup = !seen.insert(key).second;
        } else {
          for (const auto& m : members) dup = dup || m.first == key;
        }
        if (dup) return Status::InvalidArgument("duplicate key \"" + std::string(key) + "\"");
        members.emplace_back(std::string(key), JsonValue());
        ES_RETURN_IF_ERROR(Convert(field.value, members.back().second, budget));
      }
      out = JsonValue::Object(std::move(members));
      return Status::Ok();
    }
  }
  return Status::InvalidArgument("unknown JSON element");
}

}  // namespace

Result<JsonValue> ParseJson(std::string_view text, const JsonLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return Status::InvalidArgument("JSON text of " + std::to_string(text.size()) + " bytes exceeds the limit of " +
                                   std::to_string(limits.max_bytes));
  }
  simdjson::dom::parser parser;
  if (parser.allocate(text.size(), limits.max_depth) != simdjson::SUCCESS) {
    return Status::ResourceExhausted("cannot allocate the JSON parser");
  }
  simdjson::padded_string padded(text);
  if (padded.data() == nullptr && !text.empty()) return Status::ResourceExhausted("cannot allocate the JSON text's copy");
  simdjson::dom::element root;
  auto error = parser.parse(padded).get(root);
  // Out of memory is not bad input: it keeps its own code (the CLI's exit 6), whatever the text.
  if (error == simdjson::MEMALLOC) return Status::ResourceExhausted("out of memory while parsing JSON");
  if (error) return Status::InvalidArgument(std::string("invalid JSON: ") + simdjson::error_message(error));
  JsonValue out;
  size_t budget = limits.max_values;
  ES_RETURN_IF_ERROR(Convert(root, out, budget).WithContext("invalid JSON"));
  return out;
}

void AppendJsonString(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (u < 0x20 || u == 0x7f) {
          out += "\\u00";
          out.push_back(kHex[u >> 4]);
          out.push_back(kHex[u & 0xf]);
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

void JsonWriter::BeforeValue() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (!first_.empty()) {
    if (!first_.back()) out_.push_back(',');
    first_.back() = false;
  }
}

JsonWriter& JsonWriter::BeginObject() {
  BeforeValue();
  out_.push_back('{');
  first_.push_back(true);
  return *this;
}
JsonWriter& JsonWriter::EndObject() {
  out_.push_back('}');
  first_.pop_back();
  return *this;
}
JsonWriter& JsonWriter::BeginArray() {
  BeforeValue();
  out_.push_back('[');
  first_.push_back(true);
  return *this;
}
JsonWriter& JsonWriter::EndArray() {
  out_.push_back(']');
  first_.pop_back();
  return *this;
}
JsonWriter& JsonWriter::Key(std::string_view key) {
  BeforeValue();
  AppendJsonString(out_, key);
  out_.push_back(':');
  after_key_ = true;
  return *this;
}
JsonWriter& JsonWriter::String(std::string_view s) {
  BeforeValue();
  AppendJsonString(out_, s);
  return *this;
}
JsonWriter& JsonWriter::Int(int64_t v) {
  BeforeValue();
  out_ += std::to_string(v);
  return *this;
}
JsonWriter& JsonWriter::Uint(uint64_t v) {
  BeforeValue();
  out_ += std::to_string(v);
  return *this;
}
JsonWriter& JsonWriter::Double(double v) {
  BeforeValue();
  if (!std::isfinite(v)) {
    out_ += "null";
    return *this;
  }
  char buf[32];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  std::string_view text(buf, static_cast<size_t>(ptr - buf));
  out_ += text;
  // Keep doubles recognisable as floating point ("1" -> "1.0") where no exponent is present.
  if (text.find_first_of(".eE") == std::string_view::npos) out_ += ".0";
  return *this;
}
JsonWriter& JsonWriter::Bool(bool b) {
  BeforeValue();
  out_ += b ? "true" : "false";
  return *this;
}
JsonWriter& JsonWriter::Null() {
  BeforeValue();
  out_ += "null";
  return *this;
}
JsonWriter& JsonWriter::Raw(std::string_view json) {
  BeforeValue();
  out_ += json;
  return *this;
}
JsonWriter& JsonWriter::Value(const JsonValue& v) {
  switch (v.type()) {
    case JsonValue::Type::kNull: return Null();
    case JsonValue::Type::kBool: return Bool(v.bool_value());
    case JsonValue::Type::kInt: return Int(*v.AsInt64());
    case JsonValue::Type::kUint: return Uint(*v.AsUint64());
    case JsonValue::Type::kDouble: return Double(*v.AsDouble());
    case JsonValue::Type::kString: return String(v.string_value());
    case JsonValue::Type::kArray:
      BeginArray();
      for (const auto& item : v.array()) Value(item);
      return EndArray();
    case JsonValue::Type::kObject:
      BeginObject();
      for (const auto& [k, item] : v.object()) {
        Key(k);
        Value(item);
      }
      return EndObject();
  }
  return *this;
}

}  // namespace es
