// The Jinja subset of chat templates: a lexer that applies Hugging Face's whitespace rules, a recursive-descent
// parser into a small tree, and a tree-walking interpreter with Python's value semantics (str(), repr(), json.dumps).
// Every recursion (blocks, expressions, macro calls) is bounded, so a hostile template fails with a Status.
#include "compute/tokenizer/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <functional>
#include <utility>
#include <vector>

namespace es::jinja {
namespace {

// Total depth of interpreter recursion (nested blocks, expressions and macro calls together); at a few hundred
// bytes of stack per level this keeps a render well inside a thread's stack.
constexpr int kMaxRecursion = 400;
constexpr int kDefaultIndentWidth = 4;

// ---------------------------------------------------------------------------------------------------------------
// Values

struct Value;
struct Callable;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;

struct Value {
  enum class Kind : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace, kCallable };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                        // kString; for kUndefined, why it is undefined (for error messages)
  std::shared_ptr<const List> list;     // kList: immutable once built (the sandbox has no list.append)
  std::shared_ptr<Dict> dict;           // kDict (immutable once built) and kNamespace (mutable, shared)
  std::shared_ptr<const Callable> fn;   // kCallable

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  bool is_mapping() const { return kind == Kind::kDict || kind == Kind::kNamespace; }
};

Value Undefined(std::string why) {
  Value v;
  v.s = std::move(why);
  return v;
}
Value NoneValue() {
  Value v;
  v.kind = Value::Kind::kNone;
  return v;
}
Value Bool(bool b) {
  Value v;
  v.kind = Value::Kind::kBool;
  v.b = b;
  return v;
}
Value Int(int64_t i) {
  Value v;
  v.kind = Value::Kind::kInt;
  v.i = i;
  return v;
}
Value Float(double f) {
  Value v;
  v.kind = Value::Kind::kFloat;
  v.f = f;
  return v;
}
Value Str(std::string s) {
  Value v;
  v.kind = Value::Kind::kString;
  v.s = std::move(s);
  return v;
}
Value MakeList(List items) {
  Value v;
  v.kind = Value::Kind::kList;
  v.list = std::make_shared<const List>(std::move(items));
  return v;
}
Value MakeDict(Dict items, Value::Kind kind = Value::Kind::kDict) {
  Value v;
  v.kind = kind;
  v.dict = std::make_shared<Dict>(std::move(items));
  return v;
}

const Value* DictFind(const Dict& d, std::string_view key) {
  for (const auto& [k, v] : d) {
    if (k == key) return &v;
  }
  return nullptr;
}

void DictSet(Dict& d, std::string key, Value v) {
  for (auto& [k, old] : d) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  d.emplace_back(std::move(key), std::move(v));
}

const char* TypeName(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined: return "undefined";
    case Value::Kind::kNone: return "none";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "str";
    case Value::Kind::kList: return "list";
    case Value::Kind::kDict: return "dict";
    case Value::Kind::kNamespace: return "namespace";
    case Value::Kind::kCallable: return "function";
  }
  return "value";
}

Value FromJson(const JsonValue& j) {
  switch (j.type()) {
    case JsonValue::Type::kNull: return NoneValue();
    case JsonValue::Type::kBool: return Bool(j.bool_value());
    case JsonValue::Type::kInt: return Int(*j.AsInt64());
    case JsonValue::Type::kUint: {
      auto i = j.AsInt64();
      return i.ok() ? Int(*i) : Float(*j.AsDouble());
    }
    case JsonValue::Type::kDouble: return Float(*j.AsDouble());
    case JsonValue::Type::kString: return Str(j.string_value());
    case JsonValue::Type::kArray: {
      List items;
      items.reserve(j.array().size());
      for (const JsonValue& e : j.array()) items.push_back(FromJson(e));
      return MakeList(std::move(items));
    }
    case JsonValue::Type::kObject: {
      Dict d;
      d.reserve(j.object().size());
      for (const auto& [k, e] : j.object()) d.emplace_back(k, FromJson(e));
      return MakeDict(std::move(d));
    }
  }
  return NoneValue();
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return false;
    case Value::Kind::kBool: return v.b;
    case Value::Kind::kInt: return v.i != 0;
    case Value::Kind::kFloat: return v.f != 0;
    case Value::Kind::kString: return !v.s.empty();
    case Value::Kind::kList: return !v.list->empty();
    case Value::Kind::kDict: return !v.dict->empty();
    case Value::Kind::kNamespace:
    case Value::Kind::kCallable: return true;
  }
  return false;
}

double AsDouble(const Value& v) {
  if (v.kind == Value::Kind::kFloat) return v.f;
  if (v.kind == Value::Kind::kBool) return v.b ? 1 : 0;
  return static_cast<double>(v.i);
}
int64_t AsInt(const Value& v) { return v.kind == Value::Kind::kBool ? (v.b ? 1 : 0) : v.i; }

// ---------------------------------------------------------------------------------------------------------------
// UTF-8 and text helpers. Strings index by code point, as Python's do.

bool IsContinuation(char c) { return (static_cast<unsigned char>(c) & 0xc0) == 0x80; }

// Byte offsets of each code point's start, plus the end.
std::vector<size_t> CodePointOffsets(std::string_view s) {
  std::vector<size_t> offsets;
  for (size_t i = 0; i < s.size(); ++i) {
    if (!IsContinuation(s[i])) offsets.push_back(i);
  }
  offsets.push_back(s.size());
  return offsets;
}

size_t CodePointCount(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += IsContinuation(c) ? 0 : 1;
  return n;
}

uint32_t DecodeAt(std::string_view s, size_t& i) {
  unsigned char c = static_cast<unsigned char>(s[i++]);
  int extra = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
  uint32_t cp = extra == 3 ? (c & 0x07) : extra == 2 ? (c & 0x0f) : extra == 1 ? (c & 0x1f) : c;
  for (int k = 0; k < extra && i < s.size() && IsContinuation(s[i]); ++k) {
    cp = (cp << 6) | (static_cast<unsigned char>(s[i++]) & 0x3f);
  }
  return cp;
}

// Python's str.isspace for the characters that occur in practice: ASCII whitespace, the separators \x1c-\x1f
// and the Unicode space characters.
bool IsSpaceCodePoint(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
         cp == 0x3000;
}

// Strips code points that are whitespace (chars empty) or in `chars` from the chosen ends.
std::string Strip(std::string_view s, std::string_view chars, bool chars_given, bool left, bool right) {
  auto strip_cp = [&](uint32_t cp) {
    if (!chars_given) return IsSpaceCodePoint(cp);
    size_t k = 0;
    while (k < chars.size()) {
      if (DecodeAt(chars, k) == cp) return true;
    }
    return false;
  };
  size_t begin = 0, end = s.size();
  if (left) {
    while (begin < end) {
      size_t k = begin;
      if (!strip_cp(DecodeAt(s, k))) break;
      begin = k;
    }
  }
  if (right) {
    while (end > begin) {
      size_t start = end - 1;
      while (start > begin && IsContinuation(s[start])) --start;
      size_t k = start;
      if (!strip_cp(DecodeAt(s, k))) break;
      end = start;
    }
  }
  return std::string(s.substr(begin, end - begin));
}

char AsciiUpper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }
char AsciiLower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
bool IsAsciiAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string Upper(std::string s) {
  for (char& c : s) c = AsciiUpper(c);
  return s;
}
std::string Lower(std::string s) {
  for (char& c : s) c = AsciiLower(c);
  return s;
}
// Python's str.title: a letter after a non-letter starts a word.
std::string PyTitle(std::string s) {
  bool prev_letter = false;
  for (char& c : s) {
    bool letter = IsAsciiAlpha(c) || (static_cast<unsigned char>(c) >= 0x80);
    if (IsAsciiAlpha(c)) c = prev_letter ? AsciiLower(c) : AsciiUpper(c);
    prev_letter = letter;
  }
  return s;
}
// Jinja's title filter: words begin after '-', whitespace, '(', '{', '[' or '<'.
std::string JinjaTitle(std::string s) {
  bool word_start = true;
  for (char& c : s) {
    bool boundary = c == '-' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' ||
                    c == '(' || c == '{' || c == '[' || c == '<';
    if (boundary) {
      word_start = true;
      continue;
    }
    c = word_start ? AsciiUpper(c) : AsciiLower(c);
    word_start = false;
  }
  return s;
}
std::string Capitalize(std::string s) {
  for (size_t k = 0; k < s.size(); ++k) s[k] = k == 0 ? AsciiUpper(s[k]) : AsciiLower(s[k]);
  return s;
}

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to, int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` before every code point and at the end.
    std::vector<size_t> offsets = CodePointOffsets(s);
    int64_t done = 0;
    for (size_t k = 0; k + 1 < offsets.size(); ++k) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      out += s.substr(offsets[k], offsets[k + 1] - offsets[k]);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out += s.substr(pos, hit - pos);
    out += to;
    pos = hit + from.size();
    ++done;
  }
  out += s.substr(pos);
  return out;
}

// Python's repr of a float: the shortest digits that read back, fixed notation for exponents in [-4, 16).
std::string PyFloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string digits;
  for (size_t k = 0; k < e; ++k) {
    if (sci[k] != '.') digits.push_back(sci[k]);
  }
  int exp = std::stoi(sci.substr(e + 1));
  std::string out = negative ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<size_t>(exp) + 1 >= digits.size()) {
      out += digits + std::string(static_cast<size_t>(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, static_cast<size_t>(exp) + 1) + "." + digits.substr(static_cast<size_t>(exp) + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char exp_buf[16];
  std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  return out + exp_buf;
}

void AppendPyStrRepr(std::string& out, std::string_view s) {
  char quote = (s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos) ? '"' : '\'';
  out.push_back(quote);
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == quote || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", u);
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  out.push_back(quote);
}

void AppendRepr(std::string& out, const Value& v);

// Python's str(): strings as they are, containers as their repr.
void AppendStr(std::string& out, const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined: return;
    case Value::Kind::kNone: out += "None"; return;
    case Value::Kind::kBool: out += v.b ? "True" : "False"; return;
    case Value::Kind::kInt: out += std::to_string(v.i); return;
    case Value::Kind::kFloat: out += PyFloatRepr(v.f); return;
    case Value::Kind::kString: out += v.s; return;
    case Value::Kind::kList: {
      out.push_back('[');
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        AppendRepr(out, (*v.list)[k]);
      }
      out.push_back(']');
      return;
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      out += v.kind == Value::Kind::kNamespace ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, e] : *v.dict) {
        if (!first) out += ", ";
        first = false;
        AppendPyStrRepr(out, k);
        out += ": ";
        AppendRepr(out, e);
      }
      out += v.kind == Value::Kind::kNamespace ? "}>" : "}";
      return;
    }
    case Value::Kind::kCallable: out += "<function>"; return;
  }
}

void AppendRepr(std::string& out, const Value& v) {
  if (v.kind == Value::Kind::kString) {
    AppendPyStrRepr(out, v.s);
  } else if (v.kind == Value::Kind::kUndefined) {
    out += "Undefined";
  } else {
    AppendStr(out, v);
  }
}

std::string ToStr(const Value& v) {
  if (v.kind == Value::Kind::kString) return v.s;
  std::string out;
  AppendStr(out, v);
  return out;
}

// json.dumps's string escaping (ensure_ascii selects \uXXXX for every non-ASCII code point).
void AppendJsonText(std::string& out, std::string_view s, bool ensure_ascii) {
  static constexpr char kHex[] = "0123456789abcdef";
  auto hex4 = [&](uint32_t u) {
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out.push_back(kHex[(u >> shift) & 0xf]);
  };
  out.push_back('"');
  size_t k = 0;
  while (k < s.size()) {
    char c = s[k];
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x80) {
      size_t start = k;
      uint32_t cp = DecodeAt(s, k);
      if (!ensure_ascii) {
        out.append(s.substr(start, k - start));
      } else if (cp >= 0x10000) {
        cp -= 0x10000;
        hex4(0xd800 + (cp >> 10));
        hex4(0xdc00 + (cp & 0x3ff));
      } else {
        hex4(cp);
      }
      continue;
    }
    ++k;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (u < 0x20) {
          hex4(u);
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

struct JsonStyle {
  int indent = -1;  // -1: single line
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

// json.dumps as transformers' tojson calls it. Undefined serialises as null, as @huggingface/jinja does (Python
// would raise); callables cannot be serialised.
bool AppendJson(std::string& out, const Value& v, const JsonStyle& style, int depth) {
  auto newline = [&](int d) {
    out.push_back('\n');
    out.append(static_cast<size_t>(style.indent) * static_cast<size_t>(d), ' ');
  };
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: out += "null"; return true;
    case Value::Kind::kBool: out += v.b ? "true" : "false"; return true;
    case Value::Kind::kInt: out += std::to_string(v.i); return true;
    case Value::Kind::kFloat:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f < 0 ? "-Infinity" : "Infinity") : PyFloatRepr(v.f);
      return true;
    case Value::Kind::kString: AppendJsonText(out, v.s, style.ensure_ascii); return true;
    case Value::Kind::kList: {
      out.push_back('[');
      if (v.list->empty()) {
        out.push_back(']');
        return true;
      }
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += style.item_sep;
        if (style.indent >= 0) newline(depth + 1);
        if (!AppendJson(out, (*v.list)[k], style, depth + 1)) return false;
      }
      if (style.indent >= 0) newline(depth);
      out.push_back(']');
      return true;
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      out.push_back('{');
      if (v.dict->empty()) {
        out.push_back('}');
        return true;
      }
      std::vector<const std::pair<std::string, Value>*> members;
      for (const auto& m : *v.dict) members.push_back(&m);
      if (style.sort_keys) {
        std::stable_sort(members.begin(), members.end(), [](auto* a, auto* b) { return a->first < b->first; });
      }
      for (size_t k = 0; k < members.size(); ++k) {
        if (k) out += style.item_sep;
        if (style.indent >= 0) newline(depth + 1);
        AppendJsonText(out, members[k]->first, style.ensure_ascii);
        out += style.key_sep;
        if (!AppendJson(out, members[k]->second, style, depth + 1)) return false;
      }
      if (style.indent >= 0) newline(depth);
      out.push_back('}');
      return true;
    }
    case Value::Kind::kCallable: return false;
  }
  return false;
}

bool Equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Value::Kind::kFloat || b.kind == Value::Kind::kFloat) return AsDouble(a) == AsDouble(b);
    return AsInt(a) == AsInt(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return true;
    case Value::Kind::kString: return a.s == b.s;
    case Value::Kind::kList: {
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k) {
        if (!Equal((*a.list)[k], (*b.list)[k])) return false;
      }
      return true;
    }
    case Value::Kind::kDict: {
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* other = DictFind(*b.dict, k);
        if (other == nullptr || !Equal(v, *other)) return false;
      }
      return true;
    }
    case Value::Kind::kNamespace: return a.dict == b.dict;
    case Value::Kind::kCallable: return a.fn == b.fn;
    default: return false;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Lexer

enum class Tok : uint8_t { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok type;
  std::string text;  // text, name, string literal's value, operator
  int64_t i = 0;
  double f = 0;
  size_t pos = 0;    // byte offset in the source, for line and column
};

class Lexer {
 public:
  Lexer(std::string_view src) : src_(src) {}

  Status Run(std::vector<Token>& out) {
    out_ = &out;
    size_t pos = 0;
    while (pos < src_.size()) {
      size_t tag = FindTag(pos);
      std::string text(src_.substr(pos, tag - pos));
      if (tag == src_.size()) {
        EmitText(std::move(text), pos);
        break;
      }
      char kind = src_[tag + 1];  // '{', '%' or '#'
      char modifier = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (modifier == '-') {
        text = Strip(text, {}, false, false, true);
      } else if (kind != '{' && modifier != '+') {
        LstripBlock(text, pos);
      }
      EmitText(std::move(text), pos);
      size_t inner = tag + 2 + ((modifier == '-' || (modifier == '+' && kind != '{')) ? 1 : 0);
      bool strip_after = false;
      if (kind == '#') {
        size_t close = src_.find("#}", inner);
        if (close == std::string_view::npos) return Error(tag, "unclosed comment");
        strip_after = close > inner && src_[close - 1] == '-';
        pos = close + 2;
      } else {
        size_t end = 0;
        ES_RETURN_IF_ERROR(LexTag(kind == '{', tag, inner, end, strip_after));
        pos = end;
        if (kind == '%' && IsRawStart()) {
          ES_RETURN_IF_ERROR(LexRaw(tag, strip_after, pos));
          continue;
        }
      }
      pos = AfterTag(pos, strip_after, kind != '{');
    }
    out.push_back(Token{Tok::kEof, {}, 0, 0, src_.size()});
    return Status::Ok();
  }

  static std::pair<int, int> LineColumn(std::string_view src, size_t pos) {
    int line = 1, col = 1;
    for (size_t k = 0; k < pos && k < src.size(); ++k) {
      if (src[k] == '\n') {
        ++line;
        col = 1;
      } else if (!IsContinuation(src[k])) {
        ++col;
      }
    }
    return {line, col};
  }

 private:
  Status Error(size_t pos, std::string_view msg) const {
    auto [line, col] = LineColumn(src_, pos);
    return Status::InvalidArgument("template line " + std::to_string(line) + ", column " + std::to_string(col) +
                                   ": " + std::string(msg));
  }

  size_t FindTag(size_t pos) const {
    while (true) {
      size_t k = src_.find('{', pos);
      if (k == std::string_view::npos || k + 1 >= src_.size()) return src_.size();
      char c = src_[k + 1];
      if (c == '{' || c == '%' || c == '#') return k;
      pos = k + 1;
    }
  }

  // lstrip_blocks: spaces and tabs between the start of a line and a block or comment tag go.
  void LstripBlock(std::string& text, size_t text_pos) const {
    size_t nl = text.rfind('\n');
    size_t from = nl == std::string::npos ? 0 : nl + 1;
    if (nl == std::string::npos && text_pos != 0 && src_[text_pos - 1] != '\n') return;
    for (size_t k = from; k < text.size(); ++k) {
      if (text[k] != ' ' && text[k] != '\t') return;
    }
    text.resize(from);
  }

  // After a tag: '-' strips all following whitespace; trim_blocks drops one newline after a block or comment.
  size_t AfterTag(size_t pos, bool strip_after, bool is_block) const {
    if (strip_after) {
      while (pos < src_.size() && (src_[pos] == ' ' || src_[pos] == '\t' || src_[pos] == '\n' ||
                                   src_[pos] == '\r' || src_[pos] == '\f' || src_[pos] == '\v')) {
        ++pos;
      }
    } else if (is_block && pos < src_.size() && src_[pos] == '\n') {
      ++pos;
    }
    return pos;
  }

  void EmitText(std::string text, size_t pos) {
    if (!text.empty()) out_->push_back(Token{Tok::kText, std::move(text), 0, 0, pos});
  }

  bool IsRawStart() const {
    const auto& o = *out_;
    size_t n = o.size();
    return n >= 3 && o[n - 3].type == Tok::kBlockBegin && o[n - 2].type == Tok::kName && o[n - 2].text == "raw" &&
           o[n - 1].type == Tok::kBlockEnd;
  }

  // `{% raw %}` ... `{% endraw %}`: the text between, verbatim.
  Status LexRaw(size_t tag, bool strip_after, size_t& pos) {
    out_->resize(out_->size() - 3);
    size_t body = AfterTag(pos, strip_after, true);
    size_t search = body;
    while (true) {
      size_t k = src_.find("{%", search);
      if (k == std::string_view::npos) return Error(tag, "unclosed raw block (no endraw)");
      size_t p = k + 2;
      bool strip_before = p < src_.size() && src_[p] == '-';
      if (strip_before || (p < src_.size() && src_[p] == '+')) ++p;
      while (p < src_.size() && (src_[p] == ' ' || src_[p] == '\t' || src_[p] == '\n')) ++p;
      if (src_.substr(p, 6) != "endraw") {
        search = k + 2;
        continue;
      }
      p += 6;
      while (p < src_.size() && (src_[p] == ' ' || src_[p] == '\t' || src_[p] == '\n')) ++p;
      bool strip_end = p < src_.size() && src_[p] == '-';
      if (strip_end) ++p;
      if (src_.substr(p, 2) != "%}") {
        search = k + 2;
        continue;
      }
      std::string text(src_.substr(body, k - body));
      if (strip_before) {
        text = Strip(text, {}, false, false, true);
      } else if (src_[k + 2] != '+') {
        LstripBlock(text, body);
      }
      EmitText(std::move(text), body);
      pos = AfterTag(p + 2, strip_end, true);
      return Status::Ok();
    }
  }

  Status LexTag(bool is_var, size_t tag, size_t pos, size_t& end, bool& strip_after) {
    out_->push_back(Token{is_var ? Tok::kVarBegin : Tok::kBlockBegin, {}, 0, 0, tag});
    int depth = 0;  // open '{' of dict literals: their '}}' does not close the tag
    size_t closer = 0;
    const char close = is_var ? '}' : '%';
    while (true) {
      while (pos < src_.size() && (src_[pos] == ' ' || src_[pos] == '\t' || src_[pos] == '\n' || src_[pos] == '\r')) {
        ++pos;
      }
      if (pos >= src_.size()) return Error(tag, is_var ? "unclosed '{{' (no '}}')" : "unclosed '{%' (no '%}')");
      char c = src_[pos];
      if (depth == 0) {
        if (c == '-' && pos + 2 < src_.size() && src_[pos + 1] == close && src_[pos + 2] == '}') {
          strip_after = true;
          closer = pos;
          end = pos + 3;
          break;
        }
        if (c == close && pos + 1 < src_.size() && src_[pos + 1] == '}') {
          closer = pos;
          end = pos + 2;
          break;
        }
      }
      size_t start = pos;
      if (IsAsciiAlpha(c) || c == '_') {
        while (pos < src_.size() && (IsAsciiAlpha(src_[pos]) || src_[pos] == '_' ||
                                     (src_[pos] >= '0' && src_[pos] <= '9'))) {
          ++pos;
        }
        out_->push_back(Token{Tok::kName, std::string(src_.substr(start, pos - start)), 0, 0, start});
      } else if (c >= '0' && c <= '9') {
        ES_RETURN_IF_ERROR(LexNumber(pos));
      } else if (c == '\'' || c == '"') {
        ES_RETURN_IF_ERROR(LexString(pos));
      } else {
        static constexpr std::string_view kTwo[] = {"**", "//", "==", "!=", "<=", ">="};
        std::string op;
        for (std::string_view two : kTwo) {
          if (src_.substr(pos, 2) == two) op = two;
        }
        if (op.empty()) {
          if (std::string_view("+-*/%~()[]{},.:|=<>").find(c) == std::string_view::npos) {
            return Error(pos, std::string("unexpected character '") + c + "'");
          }
          op = std::string(1, c);
          if (c == '{') ++depth;
          if (c == '}' && depth > 0) --depth;
        }
        pos += op.size();
        out_->push_back(Token{Tok::kOp, std::move(op), 0, 0, start});
      }
    }
    out_->push_back(Token{is_var ? Tok::kVarEnd : Tok::kBlockEnd, {}, 0, 0, closer});
    return Status::Ok();
  }

  Status LexNumber(size_t& pos) {
    size_t start = pos;
    std::string digits;
    bool is_float = false;
    auto take_digits = [&] {
      while (pos < src_.size() && ((src_[pos] >= '0' && src_[pos] <= '9') || src_[pos] == '_')) {
        if (src_[pos] != '_') digits.push_back(src_[pos]);
        ++pos;
      }
    };
    take_digits();
    if (pos + 1 < src_.size() && src_[pos] == '.' && src_[pos + 1] >= '0' && src_[pos + 1] <= '9') {
      is_float = true;
      digits.push_back('.');
      ++pos;
      take_digits();
    }
    if (pos < src_.size() && (src_[pos] == 'e' || src_[pos] == 'E')) {
      size_t p = pos + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && src_[p] >= '0' && src_[p] <= '9') {
        is_float = true;
        digits += src_.substr(pos, p - pos);
        pos = p;
        take_digits();
      }
    }
    Token t{is_float ? Tok::kFloat : Tok::kInt, digits, 0, 0, start};
    if (is_float) {
      auto r = std::from_chars(digits.data(), digits.data() + digits.size(), t.f);
      if (r.ec != std::errc()) return Error(start, "bad number '" + digits + "'");
    } else {
      auto r = std::from_chars(digits.data(), digits.data() + digits.size(), t.i);
      if (r.ec != std::errc()) return Error(start, "integer literal out of range '" + digits + "'");
    }
    out_->push_back(std::move(t));
    return Status::Ok();
  }

  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
      out.push_back(static_cast<char>(0xf0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }

  // A string literal with Python's escapes (\n \t \r \\ \' \" \xHH \uXXXX \UXXXXXXXX ...).
  Status LexString(size_t& pos) {
    size_t start = pos;
    char quote = src_[pos++];
    std::string value;
    while (true) {
      if (pos >= src_.size()) return Error(start, "unterminated string literal");
      char c = src_[pos++];
      if (c == quote) break;
      if (c != '\\') {
        value.push_back(c);
        continue;
      }
      if (pos >= src_.size()) return Error(start, "unterminated string literal");
      char e = src_[pos++];
      switch (e) {
        case 'n': value.push_back('\n'); break;
        case 't': value.push_back('\t'); break;
        case 'r': value.push_back('\r'); break;
        case 'b': value.push_back('\b'); break;
        case 'f': value.push_back('\f'); break;
        case 'v': value.push_back('\v'); break;
        case 'a': value.push_back('\a'); break;
        case '0': value.push_back('\0'); break;
        case '\\': value.push_back('\\'); break;
        case '\'': value.push_back('\''); break;
        case '"': value.push_back('"'); break;
        case '\n': break;
        case 'x':
        case 'u':
        case 'U': {
          size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (size_t k = 0; k < n; ++k) {
            char h = pos < src_.size() ? src_[pos] : '\0';
            int digit = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                        : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
            if (digit < 0) return Error(pos, "bad escape in string literal");
            cp = cp * 16 + static_cast<uint32_t>(digit);
            ++pos;
          }
          if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return Error(pos, "bad code point in string literal");
          AppendUtf8(value, cp);
          break;
        }
        default:
          // Python keeps an unknown escape as written.
          value.push_back('\\');
          value.push_back(e);
      }
    }
    out_->push_back(Token{Tok::kString, std::move(value), 0, 0, start});
    return Status::Ok();
  }

  std::string_view src_;
  std::vector<Token>* out_ = nullptr;
};

// ---------------------------------------------------------------------------------------------------------------
// Syntax tree

struct Node {
  enum class Kind : uint8_t {
    kLiteral, kName, kList, kTuple, kDict, kAttr, kItem, kSlice, kCall, kFilter, kTest,
    kNot, kNeg, kPos, kBinary, kAnd, kOr, kCond
  };
  Kind kind = Kind::kLiteral;
  std::string name;  // variable, attribute, filter, test or operator
  Value literal;
  bool negated = false;  // `is not`
  size_t pos = 0;
  int depth = 1;
  // kAttr: object. kItem: object, index. kSlice: object, start, stop, step (any may be null but the object).
  // kCall: callee, positional arguments. kFilter/kTest: operand (null in a filter block), arguments.
  // kBinary/kAnd/kOr: left, right. kCond: value, condition, else (may be null). kDict: key, value, key, value...
  std::vector<std::unique_ptr<Node>> args;
  std::vector<std::pair<std::string, std::unique_ptr<Node>>> kwargs;
};
using NodePtr = std::unique_ptr<Node>;

struct Stmt {
  enum class Kind : uint8_t {
    kText, kOutput, kIf, kFor, kSet, kSetAttr, kSetBlock, kMacro, kBreak, kContinue, kFilterBlock, kBlock
  };
  Kind kind = Kind::kText;
  size_t pos = 0;
  std::string text;                   // kText; kMacro's name; kSetAttr's attribute
  NodePtr expr;                       // kOutput, kFor's iterable, kSet/kSetAttr's value, kFilterBlock's filter
  NodePtr cond;                       // kFor's `if` filter
  std::vector<NodePtr> conds;         // kIf: one per branch that has a condition
  std::vector<std::vector<Stmt>> bodies;  // kIf: per branch, then else; kFor: body, else; others: body
  std::vector<std::string> targets;   // kFor/kSet/kSetBlock names; kSetAttr: the namespace
  std::vector<std::pair<std::string, NodePtr>> params;  // kMacro: name and default (may be null)
};

}  // namespace

struct Program {
  std::string source;  // for line and column in runtime errors
  std::vector<Stmt> body;
  Limits limits;
};

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Parser

class Parser {
 public:
  Parser(const std::vector<Token>& tokens, std::string_view src, const Limits& limits)
      : t_(tokens), src_(src), limits_(limits) {}

  Status ParseTemplate(std::vector<Stmt>& body) {
    std::string end;
    ES_RETURN_IF_ERROR(ParseBody({}, body, end));
    return Status::Ok();
  }

 private:
  const Token& Peek(size_t ahead = 0) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  const Token& Next() {
    const Token& t = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return t;
  }
  bool IsOp(std::string_view op, size_t ahead = 0) const {
    return Peek(ahead).type == Tok::kOp && Peek(ahead).text == op;
  }
  bool IsName(std::string_view name, size_t ahead = 0) const {
    return Peek(ahead).type == Tok::kName && Peek(ahead).text == name;
  }

  Status Error(size_t pos, std::string_view msg, bool unsupported = false) const {
    auto [line, col] = Lexer::LineColumn(src_, pos);
    std::string m = "template line " + std::to_string(line) + ", column " + std::to_string(col) + ": " +
                    std::string(msg);
    return unsupported ? Status::NotSupported(m) : Status::InvalidArgument(m);
  }
  static std::string Describe(const Token& t) {
    switch (t.type) {
      case Tok::kEof: return "end of template";
      case Tok::kVarEnd: return "'}}'";
      case Tok::kBlockEnd: return "'%}'";
      case Tok::kText: return "text";
      case Tok::kString: return "string literal";
      default: return "'" + t.text + "'";
    }
  }
  Status Expect(std::string_view op) {
    if (!IsOp(op)) return Error(Peek().pos, "expected '" + std::string(op) + "', got " + Describe(Peek()));
    Next();
    return Status::Ok();
  }
  Status ExpectBlockEnd() {
    if (Peek().type != Tok::kBlockEnd) return Error(Peek().pos, "expected '%}', got " + Describe(Peek()));
    Next();
    return Status::Ok();
  }
  Result<std::string> ExpectName() {
    if (Peek().type != Tok::kName) return Error(Peek().pos, "expected a name, got " + Describe(Peek()));
    return Next().text;
  }

  Result<NodePtr> Make(Node::Kind kind, size_t pos, std::vector<NodePtr> args = {}, std::string name = {}) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->pos = pos;
    n->name = std::move(name);
    for (const NodePtr& a : args) {
      if (a) n->depth = std::max(n->depth, a->depth + 1);
    }
    n->args = std::move(args);
    if (n->depth > limits_.max_nesting) {
      return Status::ResourceExhausted(Error(pos, "expression nested too deeply").message());
    }
    return n;
  }
  void Deepen(Node& n) {
    for (const auto& [k, v] : n.kwargs) {
      if (v) n.depth = std::max(n.depth, v->depth + 1);
    }
  }

  // Statements up to one of `ends` (whose tag name is consumed and returned in `end`), or the end of the
  // template when `ends` is empty.
  Status ParseBody(std::initializer_list<std::string_view> ends, std::vector<Stmt>& body, std::string& end) {
    if (++block_depth_ > limits_.max_nesting) {
      return Status::ResourceExhausted(Error(Peek().pos, "blocks nested too deeply").message());
    }
    size_t start = Peek().pos;
    while (true) {
      const Token& t = Peek();
      if (t.type == Tok::kEof) {
        if (ends.size() != 0) {
          return Error(start, "unclosed block: expected '" + std::string(*(ends.end() - 1)) + "' before the end");
        }
        break;
      }
      if (t.type == Tok::kText) {
        Stmt s;
        s.kind = Stmt::Kind::kText;
        s.pos = t.pos;
        s.text = Next().text;
        body.push_back(std::move(s));
      } else if (t.type == Tok::kVarBegin) {
        Stmt s;
        s.kind = Stmt::Kind::kOutput;
        s.pos = Next().pos;
        ES_ASSIGN_OR_RETURN(s.expr, ParseExpr());
        if (Peek().type != Tok::kVarEnd) return Error(Peek().pos, "expected '}}', got " + Describe(Peek()));
        Next();
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        Next();
        const Token& name = Peek();
        if (name.type != Tok::kName) return Error(name.pos, "expected a statement name, got " + Describe(name));
        for (std::string_view e : ends) {
          if (name.text == e) {
            end = Next().text;
            --block_depth_;
            return Status::Ok();
          }
        }
        ES_RETURN_IF_ERROR(ParseStatement(body));
      } else {
        return Error(t.pos, "unexpected " + Describe(t));
      }
    }
    --block_depth_;
    return Status::Ok();
  }

  Status ParseStatement(std::vector<Stmt>& body) {
    const Token& name_tok = Next();
    const std::string& name = name_tok.text;
    Stmt s;
    s.pos = name_tok.pos;
    std::string end;
    if (name == "if") {
      s.kind = Stmt::Kind::kIf;
      while (true) {
        ES_ASSIGN_OR_RETURN(NodePtr cond, ParseExpr());
        ES_RETURN_IF_ERROR(ExpectBlockEnd());
        s.conds.push_back(std::move(cond));
        s.bodies.emplace_back();
        ES_RETURN_IF_ERROR(ParseBody({"elif", "else", "endif"}, s.bodies.back(), end));
        if (end != "elif") break;
      }
      if (end == "else") {
        ES_RETURN_IF_ERROR(ExpectBlockEnd());
        s.bodies.emplace_back();
        ES_RETURN_IF_ERROR(ParseBody({"endif"}, s.bodies.back(), end));
      }
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
    } else if (name == "for") {
      s.kind = Stmt::Kind::kFor;
      ES_RETURN_IF_ERROR(ParseTargets(s.targets));
      if (!IsName("in")) return Error(Peek().pos, "expected 'in' in for loop, got " + Describe(Peek()));
      Next();
      ES_ASSIGN_OR_RETURN(s.expr, ParseOr());  // no inline if: `for x in xs if cond` filters
      if (IsOp(",")) {
        return Error(Peek().pos, "a for loop over a bare tuple is not supported; use a list", true);
      }
      if (IsName("if")) {
        Next();
        ES_ASSIGN_OR_RETURN(s.cond, ParseExpr());
      }
      if (IsName("recursive")) return Error(Peek().pos, "recursive for loops are not supported", true);
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
      s.bodies.resize(1);
      ++loop_depth_;
      ES_RETURN_IF_ERROR(ParseBody({"else", "endfor"}, s.bodies[0], end));
      --loop_depth_;
      if (end == "else") {
        ES_RETURN_IF_ERROR(ExpectBlockEnd());
        s.bodies.emplace_back();
        ES_RETURN_IF_ERROR(ParseBody({"endfor"}, s.bodies.back(), end));
      }
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
    } else if (name == "set") {
      ES_ASSIGN_OR_RETURN(std::string first, ExpectName());
      if (IsOp(".")) {
        Next();
        s.kind = Stmt::Kind::kSetAttr;
        s.targets.push_back(first);
        ES_ASSIGN_OR_RETURN(s.text, ExpectName());
      } else {
        s.kind = Stmt::Kind::kSet;
        s.targets.push_back(first);
        while (IsOp(",")) {
          Next();
          ES_ASSIGN_OR_RETURN(std::string more, ExpectName());
          s.targets.push_back(std::move(more));
        }
      }
      if (IsOp("=")) {
        Next();
        ES_ASSIGN_OR_RETURN(s.expr, ParseTupleExpr());
        ES_RETURN_IF_ERROR(ExpectBlockEnd());
      } else {
        if (s.kind != Stmt::Kind::kSet || s.targets.size() != 1) {
          return Error(Peek().pos, "expected '=' in set, got " + Describe(Peek()));
        }
        if (Peek().type != Tok::kBlockEnd) {
          return Error(Peek().pos, "expected '=' or '%}' in set, got " + Describe(Peek()));
        }
        Next();
        s.kind = Stmt::Kind::kSetBlock;
        s.bodies.resize(1);
        ES_RETURN_IF_ERROR(ParseBody({"endset"}, s.bodies[0], end));
        ES_RETURN_IF_ERROR(ExpectBlockEnd());
      }
    } else if (name == "macro") {
      s.kind = Stmt::Kind::kMacro;
      ES_ASSIGN_OR_RETURN(s.text, ExpectName());
      ES_RETURN_IF_ERROR(Expect("("));
      while (!IsOp(")")) {
        ES_ASSIGN_OR_RETURN(std::string param, ExpectName());
        NodePtr def;
        if (IsOp("=")) {
          Next();
          ES_ASSIGN_OR_RETURN(def, ParseExpr());
        }
        s.params.emplace_back(std::move(param), std::move(def));
        if (!IsOp(",")) break;
        Next();
      }
      ES_RETURN_IF_ERROR(Expect(")"));
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
      s.bodies.resize(1);
      int saved_loops = loop_depth_;
      loop_depth_ = 0;
      ES_RETURN_IF_ERROR(ParseBody({"endmacro"}, s.bodies[0], end));
      loop_depth_ = saved_loops;
      if (Peek().type == Tok::kName) Next();  // `{% endmacro name %}`
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) return Error(s.pos, "'" + name + "' outside a for loop");
      s.kind = name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
    } else if (name == "filter") {
      s.kind = Stmt::Kind::kFilterBlock;
      NodePtr chain;
      while (true) {
        ES_ASSIGN_OR_RETURN(chain, ParseFilter(std::move(chain)));
        if (!IsOp("|")) break;
        Next();
      }
      s.expr = std::move(chain);
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
      s.bodies.resize(1);
      ES_RETURN_IF_ERROR(ParseBody({"endfilter"}, s.bodies[0], end));
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
    } else if (name == "generation") {
      // transformers' marker for the assistant's tokens; renders its body.
      s.kind = Stmt::Kind::kBlock;
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
      s.bodies.resize(1);
      ES_RETURN_IF_ERROR(ParseBody({"endgeneration"}, s.bodies[0], end));
      ES_RETURN_IF_ERROR(ExpectBlockEnd());
    } else if (name == "call" || name == "include" || name == "import" || name == "from" || name == "extends" ||
               name == "block" || name == "with" || name == "do" || name == "autoescape") {
      return Error(s.pos, "the '" + name + "' statement is not supported", true);
    } else if (name.starts_with("end") || name == "elif" || name == "else") {
      return Error(s.pos, "unexpected '" + name + "'");
    } else {
      return Error(s.pos, "unknown statement '" + name + "'");
    }
    body.push_back(std::move(s));
    return Status::Ok();
  }

  Status ParseTargets(std::vector<std::string>& targets) {
    bool paren = IsOp("(");
    if (paren) Next();
    while (true) {
      ES_ASSIGN_OR_RETURN(std::string n, ExpectName());
      targets.push_back(std::move(n));
      if (!IsOp(",")) break;
      Next();
    }
    if (paren) {
      ES_RETURN_IF_ERROR(Expect(")"));
    }
    return Status::Ok();
  }

  // `a, b` in a set is a tuple.
  Result<NodePtr> ParseTupleExpr() {
    size_t pos = Peek().pos;
    ES_ASSIGN_OR_RETURN(NodePtr first, ParseExpr());
    if (!IsOp(",")) return first;
    std::vector<NodePtr> items;
    items.push_back(std::move(first));
    while (IsOp(",")) {
      Next();
      ES_ASSIGN_OR_RETURN(NodePtr more, ParseExpr());
      items.push_back(std::move(more));
    }
    return Make(Node::Kind::kTuple, pos, std::move(items));
  }

  Result<NodePtr> ParseExpr() {
    ES_ASSIGN_OR_RETURN(NodePtr value, ParseOr());
    while (IsName("if")) {
      size_t pos = Next().pos;
      ES_ASSIGN_OR_RETURN(NodePtr cond, ParseOr());
      NodePtr otherwise;
      if (IsName("else")) {
        Next();
        ES_ASSIGN_OR_RETURN(otherwise, ParseExpr());
      }
      std::vector<NodePtr> args;
      args.push_back(std::move(value));
      args.push_back(std::move(cond));
      args.push_back(std::move(otherwise));
      ES_ASSIGN_OR_RETURN(value, Make(Node::Kind::kCond, pos, std::move(args)));
    }
    return value;
  }

  Result<NodePtr> Binary(Node::Kind kind, size_t pos, NodePtr l, NodePtr r, std::string op = {}) {
    std::vector<NodePtr> args;
    args.push_back(std::move(l));
    args.push_back(std::move(r));
    return Make(kind, pos, std::move(args), std::move(op));
  }

  Result<NodePtr> ParseOr() {
    ES_ASSIGN_OR_RETURN(NodePtr left, ParseAnd());
    while (IsName("or")) {
      size_t pos = Next().pos;
      ES_ASSIGN_OR_RETURN(NodePtr right, ParseAnd());
      ES_ASSIGN_OR_RETURN(left, Binary(Node::Kind::kOr, pos, std::move(left), std::move(right)));
    }
    return left;
  }
  Result<NodePtr> ParseAnd() {
    ES_ASSIGN_OR_RETURN(NodePtr left, ParseNot());
    while (IsName("and")) {
      size_t pos = Next().pos;
      ES_ASSIGN_OR_RETURN(NodePtr right, ParseNot());
      ES_ASSIGN_OR_RETURN(left, Binary(Node::Kind::kAnd, pos, std::move(left), std::move(right)));
    }
    return left;
  }
  Result<NodePtr> ParseNot() {
    if (IsName("not")) {
      size_t pos = Next().pos;
      if (++expr_depth_ > limits_.max_nesting) {
        return Status::ResourceExhausted(Error(pos, "expression nested too deeply").message());
      }
      ES_ASSIGN_OR_RETURN(NodePtr operand, ParseNot());
      --expr_depth_;
      std::vector<NodePtr> args;
      args.push_back(std::move(operand));
      return Make(Node::Kind::kNot, pos, std::move(args));
    }
    return ParseCompare();
  }
  Result<NodePtr> ParseCompare() {
    ES_ASSIGN_OR_RETURN(NodePtr left, ParseConcat());
    while (true) {
      std::string op;
      size_t pos = Peek().pos;
      if (Peek().type == Tok::kOp && (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" ||
                                      Peek().text == ">" || Peek().text == "<=" || Peek().text == ">=")) {
        op = Next().text;
      } else if (IsName("in")) {
        Next();
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        Next();
        Next();
        op = "not in";
      } else {
        break;
      }
      ES_ASSIGN_OR_RETURN(NodePtr right, ParseConcat());
      ES_ASSIGN_OR_RETURN(left, Binary(Node::Kind::kBinary, pos, std::move(left), std::move(right), op));
    }
    return left;
  }
  Result<NodePtr> ParseConcat() {
    ES_ASSIGN_OR_RETURN(NodePtr left, ParseMath1());
    while (IsOp("~")) {
      size_t pos = Next().pos;
      ES_ASSIGN_OR_RETURN(NodePtr right, ParseMath1());
      ES_ASSIGN_OR_RETURN(left, Binary(Node::Kind::kBinary, pos, std::move(left), std::move(right), "~"));
    }
    return left;
  }
  Result<NodePtr> ParseMath1() {
    ES_ASSIGN_OR_RETURN(NodePtr left, ParseMath2());
    while (IsOp("+") || IsOp("-")) {
      const Token& op = Next();
      ES_ASSIGN_OR_RETURN(NodePtr right, ParseMath2());
      ES_ASSIGN_OR_RETURN(left, Binary(Node::Kind::kBinary, op.pos, std::move(left), std::move(right), op.text));
    }
    return left;
  }
  Result<NodePtr> ParseMath2() {
    ES_ASSIGN_OR_RETURN(NodePtr left, ParsePow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token& op = Next();
      ES_ASSIGN_OR_RETURN(NodePtr right, ParsePow());
      ES_ASSIGN_OR_RETURN(left, Binary(Node::Kind::kBinary, op.pos, std::move(left), std::move(right), op.text));
    }
    return left;
  }
  Result<NodePtr> ParsePow() {
    ES_ASSIGN_OR_RETURN(NodePtr left, ParseUnary(true));
    while (IsOp("**")) {
      const Token& op = Next();
      ES_ASSIGN_OR_RETURN(NodePtr right, ParseUnary(true));
      ES_ASSIGN_OR_RETURN(left, Binary(Node::Kind::kBinary, op.pos, std::move(left), std::move(right), "**"));
    }
    return left;
  }

  Result<NodePtr> ParseUnary(bool with_filter) {
    if (++expr_depth_ > limits_.max_nesting) {
      return Status::ResourceExhausted(Error(Peek().pos, "expression nested too deeply").message());
    }
    NodePtr node;
    if (IsOp("-") || IsOp("+")) {
      const Token& op = Next();
      ES_ASSIGN_OR_RETURN(NodePtr operand, ParseUnary(false));
      std::vector<NodePtr> args;
      args.push_back(std::move(operand));
      ES_ASSIGN_OR_RETURN(node, Make(op.text == "-" ? Node::Kind::kNeg : Node::Kind::kPos, op.pos, std::move(args)));
    } else {
      ES_ASSIGN_OR_RETURN(node, ParsePrimary());
    }
    ES_ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
    if (with_filter) {
      while (true) {
        if (IsOp("|")) {
          Next();
          ES_ASSIGN_OR_RETURN(node, ParseFilter(std::move(node)));
        } else if (IsName("is")) {
          ES_ASSIGN_OR_RETURN(node, ParseTest(std::move(node)));
        } else {
          break;
        }
      }
    }
    --expr_depth_;
    return node;
  }

  Result<NodePtr> ParsePrimary() {
    const Token& t = Peek();
    size_t pos = t.pos;
    switch (t.type) {
      case Tok::kName: {
        Next();
        auto n = std::make_unique<Node>();
        n->pos = pos;
        if (t.text == "true" || t.text == "True") {
          n->literal = Bool(true);
        } else if (t.text == "false" || t.text == "False") {
          n->literal = Bool(false);
        } else if (t.text == "none" || t.text == "None") {
          n->literal = NoneValue();
        } else {
          n->kind = Node::Kind::kName;
          n->name = t.text;
        }
        return n;
      }
      case Tok::kString: {
        std::string s = Next().text;
        while (Peek().type == Tok::kString) s += Next().text;  // adjacent literals concatenate
        auto n = std::make_unique<Node>();
        n->pos = pos;
        n->literal = Str(std::move(s));
        return n;
      }
      case Tok::kInt:
      case Tok::kFloat: {
        auto n = std::make_unique<Node>();
        n->pos = pos;
        n->literal = t.type == Tok::kInt ? Int(t.i) : Float(t.f);
        Next();
        return n;
      }
      case Tok::kOp: break;
      default: return Error(pos, "expected an expression, got " + Describe(t));
    }
    if (t.text == "(") {
      Next();
      if (IsOp(")")) {
        Next();
        return Make(Node::Kind::kTuple, pos);
      }
      ES_ASSIGN_OR_RETURN(NodePtr first, ParseExpr());
      if (IsOp(")")) {
        Next();
        return first;
      }
      std::vector<NodePtr> items;
      items.push_back(std::move(first));
      while (IsOp(",")) {
        Next();
        if (IsOp(")")) break;
        ES_ASSIGN_OR_RETURN(NodePtr more, ParseExpr());
        items.push_back(std::move(more));
      }
      ES_RETURN_IF_ERROR(Expect(")"));
      return Make(Node::Kind::kTuple, pos, std::move(items));
    }
    if (t.text == "[") {
      Next();
      std::vector<NodePtr> items;
      while (!IsOp("]")) {
        ES_ASSIGN_OR_RETURN(NodePtr item, ParseExpr());
        items.push_back(std::move(item));
        if (!IsOp(",")) break;
        Next();
      }
      ES_RETURN_IF_ERROR(Expect("]"));
      return Make(Node::Kind::kList, pos, std::move(items));
    }
    if (t.text == "{") {
      Next();
      std::vector<NodePtr> items;
      while (!IsOp("}")) {
        ES_ASSIGN_OR_RETURN(NodePtr key, ParseExpr());
        ES_RETURN_IF_ERROR(Expect(":"));
        ES_ASSIGN_OR_RETURN(NodePtr value, ParseExpr());
        items.push_back(std::move(key));
        items.push_back(std::move(value));
        if (!IsOp(",")) break;
        Next();
      }
      ES_RETURN_IF_ERROR(Expect("}"));
      return Make(Node::Kind::kDict, pos, std::move(items));
    }
    return Error(pos, "expected an expression, got " + Describe(t));
  }

  Status ParseCallArgs(Node& call) {
    ES_RETURN_IF_ERROR(Expect("("));
    while (!IsOp(")")) {
      if (Peek().type == Tok::kName && IsOp("=", 1)) {
        std::string key = Next().text;
        Next();
        ES_ASSIGN_OR_RETURN(NodePtr value, ParseExpr());
        call.kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        if (!call.kwargs.empty()) return Error(Peek().pos, "positional argument after keyword argument");
        if (IsOp("*") || IsOp("**")) return Error(Peek().pos, "argument unpacking is not supported", true);
        ES_ASSIGN_OR_RETURN(NodePtr value, ParseExpr());
        call.args.push_back(std::move(value));
      }
      if (!IsOp(",")) break;
      Next();
    }
    ES_RETURN_IF_ERROR(Expect(")"));
    for (const NodePtr& a : call.args) {
      if (a) call.depth = std::max(call.depth, a->depth + 1);
    }
    Deepen(call);
    if (call.depth > limits_.max_nesting) {
      return Status::ResourceExhausted(Error(call.pos, "expression nested too deeply").message());
    }
    return Status::Ok();
  }

  Result<NodePtr> ParsePostfix(NodePtr node) {
    while (true) {
      if (IsOp(".")) {
        size_t pos = Next().pos;
        std::vector<NodePtr> args;
        args.push_back(std::move(node));
        if (Peek().type == Tok::kInt) {
          auto index = std::make_unique<Node>();
          index->pos = Peek().pos;
          index->literal = Int(Next().i);
          args.push_back(std::move(index));
          ES_ASSIGN_OR_RETURN(node, Make(Node::Kind::kItem, pos, std::move(args)));
        } else {
          ES_ASSIGN_OR_RETURN(std::string attr, ExpectName());
          ES_ASSIGN_OR_RETURN(node, Make(Node::Kind::kAttr, pos, std::move(args), attr));
        }
      } else if (IsOp("[")) {
        size_t pos = Next().pos;
        std::vector<NodePtr> parts(1);
        parts[0] = std::move(node);
        bool slice = false;
        NodePtr first;
        if (!IsOp(":")) {
          ES_ASSIGN_OR_RETURN(first, ParseExpr());
        }
        parts.push_back(std::move(first));
        for (int k = 0; k < 2 && IsOp(":"); ++k) {
          Next();
          slice = true;
          NodePtr part;
          if (!IsOp(":") && !IsOp("]")) {
            ES_ASSIGN_OR_RETURN(part, ParseExpr());
          }
          parts.push_back(std::move(part));
        }
        ES_RETURN_IF_ERROR(Expect("]"));
        if (!slice && parts[1] == nullptr) return Error(pos, "empty subscript");
        parts.resize(slice ? 4 : 2);
        ES_ASSIGN_OR_RETURN(node, Make(slice ? Node::Kind::kSlice : Node::Kind::kItem, pos, std::move(parts)));
      } else if (IsOp("(")) {
        size_t pos = node->pos;
        std::vector<NodePtr> args;
        args.push_back(std::move(node));
        ES_ASSIGN_OR_RETURN(node, Make(Node::Kind::kCall, pos, std::move(args)));
        ES_RETURN_IF_ERROR(ParseCallArgs(*node));
      } else {
        return node;
      }
    }
  }

  // `| name` or `| name(args)`; `operand` is null in a filter block.
  Result<NodePtr> ParseFilter(NodePtr operand) {
    size_t pos = Peek().pos;
    ES_ASSIGN_OR_RETURN(std::string name, ExpectName());
    std::vector<NodePtr> args;
    args.push_back(std::move(operand));
    ES_ASSIGN_OR_RETURN(NodePtr node, Make(Node::Kind::kFilter, pos, std::move(args), name));
    if (IsOp("(")) {
      ES_RETURN_IF_ERROR(ParseCallArgs(*node));
    }
    return node;
  }

  Result<NodePtr> ParseTest(NodePtr operand) {
    size_t pos = Next().pos;  // `is`
    bool negated = false;
    if (IsName("not")) {
      Next();
      negated = true;
    }
    if (Peek().type != Tok::kName && !IsOp("==") && !IsOp("!=") && !IsOp("<") && !IsOp(">") && !IsOp("<=") &&
        !IsOp(">=")) {
      return Error(Peek().pos, "expected a test name after 'is', got " + Describe(Peek()));
    }
    std::string name = Next().text;
    std::vector<NodePtr> args;
    args.push_back(std::move(operand));
    ES_ASSIGN_OR_RETURN(NodePtr node, Make(Node::Kind::kTest, pos, std::move(args), name));
    node->negated = negated;
    const Token& t = Peek();
    if (IsOp("(")) {
      ES_RETURN_IF_ERROR(ParseCallArgs(*node));
    } else if ((t.type == Tok::kName && t.text != "else" && t.text != "or" && t.text != "and" && t.text != "if" &&
                t.text != "is" && t.text != "in" && t.text != "not") ||
               t.type == Tok::kString || t.type == Tok::kInt || t.type == Tok::kFloat || IsOp("[") || IsOp("{")) {
      ES_ASSIGN_OR_RETURN(NodePtr arg, ParsePrimary());
      ES_ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
      node->depth = std::max(node->depth, arg->depth + 1);
      node->args.push_back(std::move(arg));
    }
    return node;
  }

  const std::vector<Token>& t_;
  std::string_view src_;
  const Limits& limits_;
  size_t i_ = 0;
  int block_depth_ = 0;
  int expr_depth_ = 0;
  int loop_depth_ = 0;
};

// ---------------------------------------------------------------------------------------------------------------
// Interpreter

struct Callable {
  std::string name;
  const Stmt* macro = nullptr;  // null: a global function, dispatched by name
};

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;

  // The argument at `index` or named `name`; null when absent.
  const Value* Get(size_t index, std::string_view name) const {
    if (index < pos.size()) return &pos[index];
    for (const auto& [k, v] : kw) {
      if (k == name) return &v;
    }
    return nullptr;
  }
};

enum class Flow : uint8_t { kNormal, kBreak, kContinue };

class Renderer {
 public:
  Renderer(const Program& program) : p_(program), limits_(program.limits) {}

  Result<std::string> Run(const JsonValue& variables) {
    frames_.emplace_back();
    if (variables.is_object()) {
      for (const auto& [k, v] : variables.object()) DictSet(frames_[0], k, FromJson(v));
    } else if (!variables.is_null()) {
      return Status::InvalidArgument("template variables must be a JSON object");
    }
    std::string out;
    out_ = &out;
    Flow flow = Flow::kNormal;
    ES_RETURN_IF_ERROR(ExecBody(p_.body, flow));
    return out;
  }

 private:
  std::string Where(size_t pos) const {
    auto [line, col] = Lexer::LineColumn(p_.source, pos);
    return "template line " + std::to_string(line) + ", column " + std::to_string(col) + ": ";
  }
  Status Error(size_t pos, std::string_view msg) const {
    return Status::InvalidArgument(Where(pos) + std::string(msg));
  }
  Status Exhausted(size_t pos, std::string_view what) const {
    return Status::ResourceExhausted(Where(pos) + "the template exceeds the limit on " + std::string(what));
  }
  Status Step(size_t pos, uint64_t n = 1) {
    steps_ += n;
    if (steps_ > limits_.max_steps) return Exhausted(pos, "work (statements, loop iterations, list items)");
    return Status::Ok();
  }
  Status CheckSize(size_t pos, size_t bytes) const {
    if (bytes > limits_.max_output_bytes) return Exhausted(pos, "output size");
    return Status::Ok();
  }
  Status Emit(size_t pos, std::string_view text) {
    ES_RETURN_IF_ERROR(CheckSize(pos, out_->size() + text.size()));
    out_->append(text);
    return Status::Ok();
  }

  // Guards one level of recursion.
  struct DepthGuard {
    explicit DepthGuard(int& d) : d_(d) { ++d_; }
    ~DepthGuard() { --d_; }
    int& d_;
  };

  // ---- variables

  const Value* Lookup(std::string_view name) const {
    for (size_t k = frames_.size(); k-- > floor_;) {
      if (const Value* v = DictFind(frames_[k], name)) return v;
    }
    return DictFind(frames_[0], name);
  }
  void Assign(std::string name, Value v) { DictSet(frames_.back(), std::move(name), std::move(v)); }

  static bool IsGlobalFunction(std::string_view name) {
    return name == "range" || name == "namespace" || name == "raise_exception" || name == "strftime_now" ||
           name == "dict";
  }

  // ---- statements

  Status ExecBody(const std::vector<Stmt>& body, Flow& flow) {
    DepthGuard guard(depth_);
    if (depth_ > kMaxRecursion) return Exhausted(body.empty() ? 0 : body[0].pos, "nesting depth");
    for (const Stmt& s : body) {
      ES_RETURN_IF_ERROR(Exec(s, flow));
      if (flow != Flow::kNormal) return Status::Ok();
    }
    return Status::Ok();
  }

  Status Capture(const std::vector<Stmt>& body, std::string& captured) {
    std::string* saved = out_;
    out_ = &captured;
    Flow flow = Flow::kNormal;
    Status st = ExecBody(body, flow);
    out_ = saved;
    return st;
  }

  Status Exec(const Stmt& s, Flow& flow) {
    ES_RETURN_IF_ERROR(Step(s.pos));
    switch (s.kind) {
      case Stmt::Kind::kText: return Emit(s.pos, s.text);
      case Stmt::Kind::kOutput: {
        ES_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        if (v.kind == Value::Kind::kString) return Emit(s.pos, v.s);
        return Emit(s.pos, ToStr(v));
      }
      case Stmt::Kind::kIf: {
        for (size_t k = 0; k < s.conds.size(); ++k) {
          ES_ASSIGN_OR_RETURN(Value c, Eval(*s.conds[k]));
          if (Truthy(c)) return ExecBody(s.bodies[k], flow);
        }
        if (s.bodies.size() > s.conds.size()) return ExecBody(s.bodies.back(), flow);
        return Status::Ok();
      }
      case Stmt::Kind::kFor: return ExecFor(s, flow);
      case Stmt::Kind::kSet: {
        ES_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        return Bind(s.pos, s.targets, std::move(v));
      }
      case Stmt::Kind::kSetAttr: {
        ES_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        const Value* ns = Lookup(s.targets[0]);
        if (ns == nullptr || ns->kind != Value::Kind::kNamespace) {
          return Error(s.pos, "cannot set an attribute of '" + s.targets[0] + "': it is not a namespace()");
        }
        DictSet(*ns->dict, s.text, std::move(v));
        return Status::Ok();
      }
      case Stmt::Kind::kSetBlock: {
        std::string captured;
        ES_RETURN_IF_ERROR(Capture(s.bodies[0], captured));
        Assign(s.targets[0], Str(std::move(captured)));
        return Status::Ok();
      }
      case Stmt::Kind::kMacro: {
        auto fn = std::make_shared<Callable>();
        fn->name = s.text;
        fn->macro = &s;
        Value v;
        v.kind = Value::Kind::kCallable;
        v.fn = std::move(fn);
        Assign(s.text, std::move(v));
        return Status::Ok();
      }
      case Stmt::Kind::kBreak: flow = Flow::kBreak; return Status::Ok();
      case Stmt::Kind::kContinue: flow = Flow::kContinue; return Status::Ok();
      case Stmt::Kind::kFilterBlock: {
        std::string captured;
        ES_RETURN_IF_ERROR(Capture(s.bodies[0], captured));
        ES_ASSIGN_OR_RETURN(Value v, EvalFilterChain(*s.expr, Str(std::move(captured))));
        return Emit(s.pos, ToStr(v));
      }
      case Stmt::Kind::kBlock: return ExecBody(s.bodies[0], flow);
    }
    return Status::Ok();
  }

  Status Bind(size_t pos, const std::vector<std::string>& targets, Value v) {
    if (targets.size() == 1) {
      Assign(targets[0], std::move(v));
      return Status::Ok();
    }
    if (v.kind != Value::Kind::kList) return Error(pos, std::string("cannot unpack a ") + TypeName(v));
    if (v.list->size() != targets.size()) {
      return Error(pos, "cannot unpack " + std::to_string(v.list->size()) + " values into " +
                            std::to_string(targets.size()) + " names");
    }
    for (size_t k = 0; k < targets.size(); ++k) Assign(targets[k], (*v.list)[k]);
    return Status::Ok();
  }

  Result<List> Iterate(size_t pos, const Value& v) {
    switch (v.kind) {
      case Value::Kind::kUndefined: return List{};
      case Value::Kind::kList: return *v.list;
      case Value::Kind::kDict: {
        List keys;
        for (const auto& [k, e] : *v.dict) keys.push_back(Str(k));
        return keys;
      }
      case Value::Kind::kString: {
        List chars;
        std::vector<size_t> offsets = CodePointOffsets(v.s);
        for (size_t k = 0; k + 1 < offsets.size(); ++k) {
          chars.push_back(Str(v.s.substr(offsets[k], offsets[k + 1] - offsets[k])));
        }
        return chars;
      }
      default: return Error(pos, std::string("cannot iterate over a ") + TypeName(v));
    }
  }

  Status ExecFor(const Stmt& s, Flow& outer_flow) {
    ES_ASSIGN_OR_RETURN(Value seq, Eval(*s.expr));
    ES_ASSIGN_OR_RETURN(List all, Iterate(s.expr->pos, seq));
    List items;
    if (s.cond) {
      for (Value& item : all) {
        ES_RETURN_IF_ERROR(Step(s.pos));
        frames_.emplace_back();
        Status st = Bind(s.pos, s.targets, item);
        Result<Value> keep = st.ok() ? Eval(*s.cond) : Result<Value>(st);
        frames_.pop_back();
        if (!keep.ok()) return keep.status();
        if (Truthy(*keep)) items.push_back(std::move(item));
      }
    } else {
      items = std::move(all);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      ES_RETURN_IF_ERROR(Step(s.pos));
      Dict loop;
      loop.reserve(9);
      loop.emplace_back("index", Int(k + 1));
      loop.emplace_back("index0", Int(k));
      loop.emplace_back("revindex", Int(n - k));
      loop.emplace_back("revindex0", Int(n - k - 1));
      loop.emplace_back("first", Bool(k == 0));
      loop.emplace_back("last", Bool(k == n - 1));
      loop.emplace_back("length", Int(n));
      loop.emplace_back("previtem", k > 0 ? items[k - 1] : Undefined("there is no previous item"));
      loop.emplace_back("nextitem", k + 1 < n ? items[k + 1] : Undefined("there is no next item"));
      frames_.emplace_back();
      frames_.back().emplace_back("loop", MakeDict(std::move(loop)));
      Status st = Bind(s.pos, s.targets, items[k]);
      Flow flow = Flow::kNormal;
      if (st.ok()) st = ExecBody(s.bodies[0], flow);
      frames_.pop_back();
      ES_RETURN_IF_ERROR(st);
      if (flow == Flow::kBreak) break;
    }
    if (n == 0 && s.bodies.size() > 1) return ExecBody(s.bodies[1], outer_flow);
    return Status::Ok();
  }

  // ---- expressions

  Result<Value> Eval(const Node& n) {
    DepthGuard guard(depth_);
    if (depth_ > kMaxRecursion) return Exhausted(n.pos, "nesting depth");
    switch (n.kind) {
      case Node::Kind::kLiteral: return n.literal;
      case Node::Kind::kName: {
        if (const Value* v = Lookup(n.name)) return *v;
        if (IsGlobalFunction(n.name)) {
          auto fn = std::make_shared<Callable>();
          fn->name = n.name;
          Value v;
          v.kind = Value::Kind::kCallable;
          v.fn = std::move(fn);
          return v;
        }
        return Undefined("'" + n.name + "' is undefined");
      }
      case Node::Kind::kList:
      case Node::Kind::kTuple: {
        ES_RETURN_IF_ERROR(Step(n.pos, n.args.size()));
        List items;
        for (const NodePtr& a : n.args) {
          ES_ASSIGN_OR_RETURN(Value v, Eval(*a));
          items.push_back(std::move(v));
        }
        return MakeList(std::move(items));
      }
      case Node::Kind::kDict: {
        ES_RETURN_IF_ERROR(Step(n.pos, n.args.size()));
        Dict d;
        for (size_t k = 0; k + 1 < n.args.size(); k += 2) {
          ES_ASSIGN_OR_RETURN(Value key, Eval(*n.args[k]));
          if (key.kind != Value::Kind::kString) return Error(n.args[k]->pos, "dict keys must be strings");
          ES_ASSIGN_OR_RETURN(Value v, Eval(*n.args[k + 1]));
          DictSet(d, std::move(key.s), std::move(v));
        }
        return MakeDict(std::move(d));
      }
      case Node::Kind::kAttr: {
        ES_ASSIGN_OR_RETURN(Value obj, Eval(*n.args[0]));
        return GetAttr(n.pos, obj, n.name);
      }
      case Node::Kind::kItem: {
        ES_ASSIGN_OR_RETURN(Value obj, Eval(*n.args[0]));
        ES_ASSIGN_OR_RETURN(Value key, Eval(*n.args[1]));
        return GetItem(n.pos, obj, key);
      }
      case Node::Kind::kSlice: return EvalSlice(n);
      case Node::Kind::kCall: return EvalCall(n);
      case Node::Kind::kFilter: return EvalFilterChain(n, Value());
      case Node::Kind::kTest: {
        ES_ASSIGN_OR_RETURN(Value operand, Eval(*n.args[0]));
        ES_ASSIGN_OR_RETURN(Args args, EvalArgs(n, 1));
        ES_ASSIGN_OR_RETURN(bool r, Test(n.pos, n.name, operand, args));
        return Bool(r != n.negated);
      }
      case Node::Kind::kNot: {
        ES_ASSIGN_OR_RETURN(Value v, Eval(*n.args[0]));
        return Bool(!Truthy(v));
      }
      case Node::Kind::kNeg:
      case Node::Kind::kPos: {
        ES_ASSIGN_OR_RETURN(Value v, Eval(*n.args[0]));
        if (!v.is_number()) return Error(n.pos, std::string("bad operand type for unary minus: ") + TypeName(v));
        if (n.kind == Node::Kind::kPos) return v.kind == Value::Kind::kBool ? Int(AsInt(v)) : v;
        if (v.kind == Value::Kind::kFloat) return Float(-v.f);
        if (AsInt(v) == INT64_MIN) return Error(n.pos, "integer overflow");
        return Int(-AsInt(v));
      }
      case Node::Kind::kAnd: {
        ES_ASSIGN_OR_RETURN(Value l, Eval(*n.args[0]));
        if (!Truthy(l)) return l;
        return Eval(*n.args[1]);
      }
      case Node::Kind::kOr: {
        ES_ASSIGN_OR_RETURN(Value l, Eval(*n.args[0]));
        if (Truthy(l)) return l;
        return Eval(*n.args[1]);
      }
      case Node::Kind::kCond: {
        ES_ASSIGN_OR_RETURN(Value c, Eval(*n.args[1]));
        if (Truthy(c)) return Eval(*n.args[0]);
        if (n.args[2]) return Eval(*n.args[2]);
        return Undefined("the inline if has no else");
      }
      case Node::Kind::kBinary: {
        ES_ASSIGN_OR_RETURN(Value l, Eval(*n.args[0]));
        ES_ASSIGN_OR_RETURN(Value r, Eval(*n.args[1]));
        return BinaryOp(n.pos, n.name, l, r);
      }
    }
    return Error(n.pos, "bad expression");
  }

  Result<Args> EvalArgs(const Node& n, size_t first) {
    Args args;
    for (size_t k = first; k < n.args.size(); ++k) {
      ES_ASSIGN_OR_RETURN(Value v, Eval(*n.args[k]));
      args.pos.push_back(std::move(v));
    }
    for (const auto& [name, node] : n.kwargs) {
      ES_ASSIGN_OR_RETURN(Value v, Eval(*node));
      args.kw.emplace_back(name, std::move(v));
    }
    return args;
  }

  Result<Value> GetAttr(size_t pos, const Value& obj, const std::string& name) {
    // Lenient like @huggingface/jinja (Python's default Undefined would raise): a template that looks into a
    // message field that is absent reads undefined, and using that value is what fails.
    if (obj.is_undefined()) return obj;
    if (obj.is_mapping()) {
      if (const Value* v = DictFind(*obj.dict, name)) return *v;
      return Undefined(std::string(TypeName(obj)) + " has no attribute '" + name + "'");
    }
    return Undefined(std::string(TypeName(obj)) + " has no attribute '" + name + "'");
  }

  static int64_t NormalizeIndex(int64_t i, size_t size) { return i < 0 ? i + static_cast<int64_t>(size) : i; }

  Result<Value> GetItem(size_t pos, const Value& obj, const Value& key) {
    if (obj.is_undefined()) return obj;
    if (obj.is_mapping()) {
      if (key.kind == Value::Kind::kString) {
        if (const Value* v = DictFind(*obj.dict, key.s)) return *v;
      }
      return Undefined("no key " + ToStr(key) + " in the dict");
    }
    if ((obj.kind == Value::Kind::kList || obj.kind == Value::Kind::kString) &&
        (key.kind == Value::Kind::kInt || key.kind == Value::Kind::kBool)) {
      if (obj.kind == Value::Kind::kList) {
        int64_t i = NormalizeIndex(AsInt(key), obj.list->size());
        if (i < 0 || i >= static_cast<int64_t>(obj.list->size())) return Undefined("list index out of range");
        return (*obj.list)[static_cast<size_t>(i)];
      }
      std::vector<size_t> offsets = CodePointOffsets(obj.s);
      size_t count = offsets.size() - 1;
      int64_t i = NormalizeIndex(AsInt(key), count);
      if (i < 0 || i >= static_cast<int64_t>(count)) return Undefined("string index out of range");
      return Str(obj.s.substr(offsets[i], offsets[i + 1] - offsets[i]));
    }
    if (key.kind == Value::Kind::kString) return GetAttr(pos, obj, key.s);
    return Undefined(std::string(TypeName(obj)) + " has no item " + ToStr(key));
  }

  Result<Value> EvalSlice(const Node& n) {
    ES_ASSIGN_OR_RETURN(Value obj, Eval(*n.args[0]));
    std::optional<int64_t> bound[3];
    for (int k = 0; k < 3; ++k) {
      if (!n.args[k + 1]) continue;
      ES_ASSIGN_OR_RETURN(Value v, Eval(*n.args[k + 1]));
      if (v.kind == Value::Kind::kNone) continue;
      if (v.kind != Value::Kind::kInt && v.kind != Value::Kind::kBool) {
        return Error(n.args[k + 1]->pos, "slice indices must be integers");
      }
      bound[k] = AsInt(v);
    }
    int64_t step = bound[2].value_or(1);
    if (step == 0) return Error(n.pos, "slice step cannot be zero");
    std::vector<size_t> offsets;
    int64_t size = 0;
    if (obj.kind == Value::Kind::kList) {
      size = static_cast<int64_t>(obj.list->size());
    } else if (obj.kind == Value::Kind::kString) {
      offsets = CodePointOffsets(obj.s);
      size = static_cast<int64_t>(offsets.size()) - 1;
    } else {
      return Error(n.pos, std::string("cannot slice a ") + TypeName(obj));
    }
    // Python's slice.indices.
    auto clamp = [&](std::optional<int64_t> b, int64_t def) {
      if (!b) return def;
      int64_t v = *b < 0 ? *b + size : *b;
      if (step > 0) return std::clamp<int64_t>(v, 0, size);
      return std::clamp<int64_t>(v, -1, size - 1);
    };
    int64_t start = clamp(bound[0], step > 0 ? 0 : size - 1);
    int64_t stop = clamp(bound[1], step > 0 ? size : -1);
    std::vector<int64_t> picks;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) picks.push_back(k);
    ES_RETURN_IF_ERROR(Step(n.pos, picks.size()));
    if (obj.kind == Value::Kind::kList) {
      List out;
      out.reserve(picks.size());
      for (int64_t k : picks) out.push_back((*obj.list)[static_cast<size_t>(k)]);
      return MakeList(std::move(out));
    }
    std::string out;
    for (int64_t k : picks) out += obj.s.substr(offsets[k], offsets[k + 1] - offsets[k]);
    return Str(std::move(out));
  }

  Result<Value> Arith(size_t pos, const std::string& op, const Value& l, const Value& r) {
    bool is_float = l.kind == Value::Kind::kFloat || r.kind == Value::Kind::kFloat;
    if (op == "/") {
      if (AsDouble(r) == 0) return Error(pos, "division by zero");
      return Float(AsDouble(l) / AsDouble(r));
    }
    if (op == "**") {
      double result = std::pow(AsDouble(l), AsDouble(r));
      if (!is_float && AsInt(r) >= 0) {
        const int64_t base = AsInt(l), exponent = AsInt(r);
        // 0, 1 and -1 never overflow, whatever the exponent; any other base overflows within 63 steps.
        if (base == 0) return Int(exponent == 0 ? 1 : 0);
        if (base == 1) return Int(1);
        if (base == -1) return Int(exponent % 2 == 0 ? 1 : -1);
        int64_t acc = 1;
        for (int64_t k = 0; k < exponent; ++k) {
          if (__builtin_mul_overflow(acc, base, &acc)) return Error(pos, "integer overflow");
        }
        return Int(acc);
      }
      if (AsDouble(l) == 0 && AsDouble(r) < 0) return Error(pos, "zero cannot be raised to a negative power");
      return Float(result);
    }
    if (is_float) {
      double a = AsDouble(l), b = AsDouble(r);
      if (op == "+") return Float(a + b);
      if (op == "-") return Float(a - b);
      if (op == "*") return Float(a * b);
      if (b == 0) return Error(pos, "division by zero");
      if (op == "//") return Float(std::floor(a / b));
      double m = std::fmod(a, b);
      if (m != 0 && ((m < 0) != (b < 0))) m += b;
      return Float(m);
    }
    int64_t a = AsInt(l), b = AsInt(r), out = 0;
    bool overflow = false;
    if (op == "+") {
      overflow = __builtin_add_overflow(a, b, &out);
    } else if (op == "-") {
      overflow = __builtin_sub_overflow(a, b, &out);
    } else if (op == "*") {
      overflow = __builtin_mul_overflow(a, b, &out);
    } else {
      if (b == 0) return Error(pos, "division by zero");
      if (a == INT64_MIN && b == -1) return Error(pos, "integer overflow");
      int64_t q = a / b, m = a % b;
      if (m != 0 && ((m < 0) != (b < 0))) {
        --q;
        m += b;
      }
      out = op == "//" ? q : m;
    }
    if (overflow) return Error(pos, "integer overflow");
    return Int(out);
  }

  Result<Value> Repeat(size_t pos, const Value& seq, int64_t times) {
    times = std::max<int64_t>(times, 0);
    if (seq.kind == Value::Kind::kString) {
      if (!seq.s.empty() && static_cast<uint64_t>(times) > limits_.max_output_bytes / seq.s.size()) {
        return Exhausted(pos, "output size");
      }
      std::string out;
      for (int64_t k = 0; k < times; ++k) out += seq.s;
      return Str(std::move(out));
    }
    if (!seq.list->empty() && static_cast<uint64_t>(times) > limits_.max_steps / seq.list->size()) {
      return Exhausted(pos, "work (statements, loop iterations, list items)");
    }
    ES_RETURN_IF_ERROR(Step(pos, static_cast<uint64_t>(times) * seq.list->size()));
    List out;
    for (int64_t k = 0; k < times; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
    return MakeList(std::move(out));
  }

  Result<bool> Contains(size_t pos, const Value& needle, const Value& hay) {
    switch (hay.kind) {
      case Value::Kind::kUndefined: return false;
      case Value::Kind::kString:
        if (needle.kind != Value::Kind::kString) {
          return Error(pos, std::string("'in <string>' requires a string as left operand, not ") + TypeName(needle));
        }
        return hay.s.find(needle.s) != std::string::npos;
      case Value::Kind::kList:
        for (const Value& v : *hay.list) {
          if (Equal(v, needle)) return true;
        }
        return false;
      case Value::Kind::kDict:
      case Value::Kind::kNamespace:
        return needle.kind == Value::Kind::kString && DictFind(*hay.dict, needle.s) != nullptr;
      default: return Error(pos, std::string("argument of type ") + TypeName(hay) + " is not iterable");
    }
  }

  Result<bool> Less(size_t pos, const Value& a, const Value& b) {
    if (a.is_number() && b.is_number()) {
      if (a.kind == Value::Kind::kFloat || b.kind == Value::Kind::kFloat) return AsDouble(a) < AsDouble(b);
      return AsInt(a) < AsInt(b);
    }
    if (a.kind == Value::Kind::kString && b.kind == Value::Kind::kString) return a.s < b.s;
    if (a.kind == Value::Kind::kList && b.kind == Value::Kind::kList) {
      for (size_t k = 0; k < a.list->size() && k < b.list->size(); ++k) {
        if (Equal((*a.list)[k], (*b.list)[k])) continue;
        return Less(pos, (*a.list)[k], (*b.list)[k]);
      }
      return a.list->size() < b.list->size();
    }
    return Error(pos, std::string("cannot compare ") + TypeName(a) + " with " + TypeName(b));
  }

  Result<Value> BinaryOp(size_t pos, const std::string& op, const Value& l, const Value& r) {
    if (op == "==") return Bool(Equal(l, r));
    if (op == "!=") return Bool(!Equal(l, r));
    if (op == "in" || op == "not in") {
      ES_ASSIGN_OR_RETURN(bool c, Contains(pos, l, r));
      return Bool(c == (op == "in"));
    }
    if (op == "~") {
      std::string s = ToStr(l) + ToStr(r);
      ES_RETURN_IF_ERROR(CheckSize(pos, s.size()));
      return Str(std::move(s));
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      bool flip = op == ">" || op == "<=";
      ES_ASSIGN_OR_RETURN(bool lt, Less(pos, flip ? r : l, flip ? l : r));
      return Bool(op == "<" || op == ">" ? lt : !lt);
    }
    if (l.is_undefined() || r.is_undefined()) {
      const Value& u = l.is_undefined() ? l : r;
      return Error(pos, "cannot apply '" + op + "' to an undefined value (" + u.s + ")");
    }
    if (op == "+") {
      if (l.kind == Value::Kind::kString && r.kind == Value::Kind::kString) {
        ES_RETURN_IF_ERROR(CheckSize(pos, l.s.size() + r.s.size()));
        return Str(l.s + r.s);
      }
      if (l.kind == Value::Kind::kList && r.kind == Value::Kind::kList) {
        ES_RETURN_IF_ERROR(Step(pos, l.list->size() + r.list->size()));
        List out = *l.list;
        out.insert(out.end(), r.list->begin(), r.list->end());
        return MakeList(std::move(out));
      }
    }
    if (op == "*") {
      if ((l.kind == Value::Kind::kString || l.kind == Value::Kind::kList) &&
          (r.kind == Value::Kind::kInt || r.kind == Value::Kind::kBool)) {
        return Repeat(pos, l, AsInt(r));
      }
      if ((r.kind == Value::Kind::kString || r.kind == Value::Kind::kList) &&
          (l.kind == Value::Kind::kInt || l.kind == Value::Kind::kBool)) {
        return Repeat(pos, r, AsInt(l));
      }
    }
    if (l.is_number() && r.is_number()) return Arith(pos, op, l, r);
    return Error(pos, "unsupported operand types for " + op + ": " + TypeName(l) + " and " + TypeName(r));
  }

  // ---- calls

  Result<Value> EvalCall(const Node& n) {
    const Node& callee = *n.args[0];
    if (callee.kind == Node::Kind::kAttr) {
      ES_ASSIGN_OR_RETURN(Value obj, Eval(*callee.args[0]));
      // A dict's methods win over its keys when called (Python's getattr comes first); uncalled, `d.items`
      // reads the key, as @huggingface/jinja does.
      bool dict_method = obj.kind == Value::Kind::kDict && (callee.name == "items" || callee.name == "keys" ||
                                                            callee.name == "values" || callee.name == "get");
      bool is_member = obj.is_mapping() && DictFind(*obj.dict, callee.name) != nullptr;
      if (dict_method || !is_member) {
        ES_ASSIGN_OR_RETURN(Args args, EvalArgs(n, 1));
        return CallMethod(n.pos, obj, callee.name, args);
      }
    }
    ES_ASSIGN_OR_RETURN(Value fn, Eval(callee));
    if (fn.kind != Value::Kind::kCallable) {
      if (fn.is_undefined()) return Error(n.pos, "cannot call an undefined value (" + fn.s + ")");
      return Error(n.pos, std::string("a ") + TypeName(fn) + " is not callable");
    }
    ES_ASSIGN_OR_RETURN(Args args, EvalArgs(n, 1));
    if (fn.fn->macro != nullptr) return CallMacro(n.pos, *fn.fn->macro, args);
    return CallGlobal(n.pos, fn.fn->name, args);
  }

  Result<Value> CallMacro(size_t pos, const Stmt& macro, const Args& args) {
    if (++call_depth_ > limits_.max_call_depth) {
      --call_depth_;
      return Exhausted(pos, "macro call depth");
    }
    if (args.pos.size() > macro.params.size()) {
      --call_depth_;
      return Error(pos, "macro '" + macro.text + "' takes at most " + std::to_string(macro.params.size()) +
                            " arguments");
    }
    size_t saved_floor = floor_;
    frames_.emplace_back();
    floor_ = frames_.size() - 1;
    Status st;
    for (const auto& [k, v] : args.kw) {
      bool known = false;
      for (const auto& p : macro.params) known |= p.first == k;
      if (!known) st = Error(pos, "macro '" + macro.text + "' has no argument '" + k + "'");
    }
    for (size_t k = 0; k < macro.params.size() && st.ok(); ++k) {
      const auto& [name, def] = macro.params[k];
      if (const Value* v = args.Get(k, name)) {
        Assign(name, *v);
      } else if (def) {
        Result<Value> d = Eval(*def);
        if (!d.ok()) {
          st = d.status();
        } else {
          Assign(name, std::move(d).value());
        }
      } else {
        Assign(name, Undefined("macro argument '" + name + "' was not passed"));
      }
    }
    std::string captured;
    if (st.ok()) st = Capture(macro.bodies[0], captured);
    frames_.pop_back();
    floor_ = saved_floor;
    --call_depth_;
    ES_RETURN_IF_ERROR(st);
    return Str(std::move(captured));
  }

  Result<Value> CallGlobal(size_t pos, const std::string& name, const Args& args) {
    if (name == "raise_exception") {
      const Value* msg = args.Get(0, "message");
      return Error(pos, "the template raised an error: " + (msg ? ToStr(*msg) : std::string()));
    }
    if (name == "namespace" || name == "dict") {
      Dict d;
      if (!args.pos.empty()) {
        if (args.pos.size() > 1 || !args.pos[0].is_mapping()) {
          return Error(pos, name + "() takes at most one mapping and keyword arguments");
        }
        d = *args.pos[0].dict;
      }
      for (const auto& [k, v] : args.kw) DictSet(d, k, v);
      return MakeDict(std::move(d), name == "namespace" ? Value::Kind::kNamespace : Value::Kind::kDict);
    }
    if (name == "range") {
      std::vector<int64_t> b;
      for (const Value& v : args.pos) {
        if (v.kind != Value::Kind::kInt && v.kind != Value::Kind::kBool) {
          return Error(pos, "range() arguments must be integers");
        }
        b.push_back(AsInt(v));
      }
      if (b.empty() || b.size() > 3) return Error(pos, "range() takes 1 to 3 arguments");
      int64_t start = b.size() == 1 ? 0 : b[0], stop = b.size() == 1 ? b[0] : b[1], step = b.size() == 3 ? b[2] : 1;
      if (step == 0) return Error(pos, "range() step cannot be zero");
      double count = std::max(0.0, std::ceil((static_cast<double>(stop) - static_cast<double>(start)) /
                                             static_cast<double>(step)));
      if (count > static_cast<double>(limits_.max_steps)) return Exhausted(pos, "work (range() length)");
      ES_RETURN_IF_ERROR(Step(pos, static_cast<uint64_t>(count)));
      List out;
      for (int64_t k = 0; k < static_cast<int64_t>(count); ++k) out.push_back(Int(start + k * step));
      return MakeList(std::move(out));
    }
    if (name == "strftime_now") {
      const Value* fmt = args.Get(0, "format");
      if (fmt == nullptr || fmt->kind != Value::Kind::kString) return Error(pos, "strftime_now() needs a format");
      std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      size_t len = std::strftime(buf, sizeof(buf), fmt->s.c_str(), &tm);
      return Str(std::string(buf, len));
    }
    return Error(pos, "unknown function '" + name + "'");
  }

  static Status ArgType(bool ok, const std::string& what) {
    return ok ? Status::Ok() : Status::InvalidArgument(what);
  }

  // Python's str.split / rsplit.
  static List Split(const std::string& s, const Value* sep_arg, int64_t maxsplit, bool from_right) {
    std::vector<std::string> parts;
    if (sep_arg == nullptr || sep_arg->kind == Value::Kind::kNone) {
      // Runs of whitespace separate; leading and trailing whitespace gives no empty parts.
      std::vector<std::pair<size_t, size_t>> words;  // [begin, end) byte ranges
      size_t k = 0, start = std::string::npos;
      while (k < s.size()) {
        size_t at = k;
        bool space = IsSpaceCodePoint(DecodeAt(s, k));
        if (!space && start == std::string::npos) start = at;
        if (space && start != std::string::npos) {
          words.emplace_back(start, at);
          start = std::string::npos;
        }
      }
      if (start != std::string::npos) words.emplace_back(start, s.size());
      int64_t n = static_cast<int64_t>(words.size());
      if (maxsplit >= 0 && n > maxsplit + 1) {
        if (!from_right) {
          for (int64_t w = 0; w < maxsplit; ++w) {
            parts.push_back(s.substr(words[w].first, words[w].second - words[w].first));
          }
          std::string rest = Strip(s.substr(words[maxsplit].first), {}, false, false, true);
          parts.push_back(rest);
        } else {
          size_t keep = static_cast<size_t>(n - maxsplit);
          parts.push_back(Strip(s.substr(0, words[keep - 1].second), {}, false, true, false));
          for (size_t w = keep; w < words.size(); ++w) {
            parts.push_back(s.substr(words[w].first, words[w].second - words[w].first));
          }
        }
      } else {
        for (const auto& [b, e] : words) parts.push_back(s.substr(b, e - b));
      }
    } else {
      const std::string& sep = sep_arg->s;
      if (!from_right) {
        size_t pos = 0;
        int64_t done = 0;
        while (maxsplit < 0 || done < maxsplit) {
          size_t hit = s.find(sep, pos);
          if (hit == std::string::npos) break;
          parts.push_back(s.substr(pos, hit - pos));
          pos = hit + sep.size();
          ++done;
        }
        parts.push_back(s.substr(pos));
      } else {
        size_t end = s.size();
        int64_t done = 0;
        std::vector<std::string> rev;
        while (maxsplit < 0 || done < maxsplit) {
          if (end < sep.size()) break;
          size_t hit = s.rfind(sep, end - sep.size());
          if (hit == std::string::npos) break;
          rev.push_back(s.substr(hit + sep.size(), end - hit - sep.size()));
          end = hit;
          ++done;
        }
        rev.push_back(s.substr(0, end));
        parts.assign(rev.rbegin(), rev.rend());
      }
    }
    List out;
    for (std::string& p : parts) out.push_back(Str(std::move(p)));
    return out;
  }

  Result<Value> CallMethod(size_t pos, const Value& obj, const std::string& name, const Args& args) {
    auto str_arg = [&](size_t i, std::string_view key) -> const Value* {
      const Value* v = args.Get(i, key);
      return v != nullptr && v->kind == Value::Kind::kString ? v : nullptr;
    };
    if (obj.kind == Value::Kind::kString) {
      const std::string& s = obj.s;
      if (name == "startswith" || name == "endswith") {
        const Value* p = args.Get(0, "prefix");
        if (p == nullptr) return Error(pos, name + "() needs an argument");
        List options;
        if (p->kind == Value::Kind::kString) {
          options.push_back(*p);
        } else if (p->kind == Value::Kind::kList) {
          options = *p->list;
        } else {
          return Error(pos, name + "() takes a string or a tuple of strings");
        }
        for (const Value& o : options) {
          if (o.kind != Value::Kind::kString) return Error(pos, name + "() takes a string or a tuple of strings");
          if (name == "startswith" ? s.starts_with(o.s) : s.ends_with(o.s)) return Bool(true);
        }
        return Bool(false);
      }
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        const Value* chars = args.Get(0, "chars");
        bool given = chars != nullptr && chars->kind != Value::Kind::kNone;
        if (given && chars->kind != Value::Kind::kString) return Error(pos, name + "() argument must be a string");
        return Str(Strip(s, given ? chars->s : std::string_view(), given, name != "rstrip", name != "lstrip"));
      }
      if (name == "split" || name == "rsplit") {
        const Value* sep = args.Get(0, "sep");
        if (sep != nullptr && sep->kind != Value::Kind::kNone) {
          if (sep->kind != Value::Kind::kString) return Error(pos, name + "() separator must be a string");
          if (sep->s.empty()) return Error(pos, "empty separator");
        }
        const Value* maxsplit = args.Get(1, "maxsplit");
        int64_t m = maxsplit != nullptr && maxsplit->kind == Value::Kind::kInt ? maxsplit->i : -1;
        List parts = Split(s, sep, m, name == "rsplit");
        ES_RETURN_IF_ERROR(Step(pos, parts.size()));
        return MakeList(std::move(parts));
      }
      if (name == "upper") return Str(Upper(s));
      if (name == "lower") return Str(Lower(s));
      if (name == "title") return Str(PyTitle(s));
      if (name == "capitalize") return Str(Capitalize(s));
      if (name == "replace") {
        const Value* from = str_arg(0, "old");
        const Value* to = str_arg(1, "new");
        if (from == nullptr || to == nullptr) return Error(pos, "replace() takes two strings");
        const Value* count = args.Get(2, "count");
        std::string out = ReplaceAll(s, from->s, to->s, count && count->kind == Value::Kind::kInt ? count->i : -1);
        ES_RETURN_IF_ERROR(CheckSize(pos, out.size()));
        return Str(std::move(out));
      }
      if (name == "join") {
        const Value* items = args.Get(0, "iterable");
        if (items == nullptr) return Error(pos, "join() needs an iterable");
        ES_ASSIGN_OR_RETURN(List list, Iterate(pos, *items));
        std::string out;
        for (size_t k = 0; k < list.size(); ++k) {
          if (list[k].kind != Value::Kind::kString) return Error(pos, "join() items must be strings");
          if (k) out += s;
          out += list[k].s;
          ES_RETURN_IF_ERROR(CheckSize(pos, out.size()));
        }
        return Str(std::move(out));
      }
      if (name == "find" || name == "count") {
        const Value* sub = str_arg(0, "sub");
        if (sub == nullptr) return Error(pos, name + "() takes a string");
        if (name == "find") {
          size_t hit = s.find(sub->s);
          return Int(hit == std::string::npos ? -1 : static_cast<int64_t>(CodePointCount(s.substr(0, hit))));
        }
        if (sub->s.empty()) return Int(static_cast<int64_t>(CodePointCount(s)) + 1);
        int64_t n = 0;
        for (size_t p = s.find(sub->s); p != std::string::npos; p = s.find(sub->s, p + sub->s.size())) ++n;
        return Int(n);
      }
      if (name == "format") {
        std::string out;
        size_t next = 0;
        for (size_t k = 0; k < s.size(); ++k) {
          if (s[k] == '{' && k + 1 < s.size() && s[k + 1] == '{') {
            out.push_back('{');
            ++k;
          } else if (s[k] == '}' && k + 1 < s.size() && s[k + 1] == '}') {
            out.push_back('}');
            ++k;
          } else if (s[k] == '{' && k + 1 < s.size() && s[k + 1] == '}') {
            if (next >= args.pos.size()) return Error(pos, "format() has too few arguments");
            out += ToStr(args.pos[next++]);
            ++k;
          } else if (s[k] == '{') {
            return Error(pos, "format() supports only '{}' fields");
          } else {
            out.push_back(s[k]);
          }
        }
        ES_RETURN_IF_ERROR(CheckSize(pos, out.size()));
        return Str(std::move(out));
      }
      if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "islower" || name == "isupper") {
        if (s.empty()) return Bool(false);
        bool all = true, cased = false;
        for (char c : s) {
          if (name == "isdigit") all &= c >= '0' && c <= '9';
          if (name == "isalpha") all &= IsAsciiAlpha(c);
          if (name == "isspace") all &= c == ' ' || (c >= '\t' && c <= '\r');
          if (name == "islower") all &= !(c >= 'A' && c <= 'Z'), cased |= c >= 'a' && c <= 'z';
          if (name == "isupper") all &= !(c >= 'a' && c <= 'z'), cased |= c >= 'A' && c <= 'Z';
        }
        return Bool(all && (cased || (name != "islower" && name != "isupper")));
      }
    } else if (obj.kind == Value::Kind::kDict) {
      if (name == "items" || name == "keys" || name == "values") {
        ES_RETURN_IF_ERROR(Step(pos, obj.dict->size()));
        List out;
        for (const auto& [k, v] : *obj.dict) {
          if (name == "items") {
            out.push_back(MakeList({Str(k), v}));
          } else {
            out.push_back(name == "keys" ? Str(k) : v);
          }
        }
        return MakeList(std::move(out));
      }
      if (name == "get") {
        const Value* key = args.Get(0, "key");
        if (key == nullptr) return Error(pos, "get() needs a key");
        if (key->kind == Value::Kind::kString) {
          if (const Value* v = DictFind(*obj.dict, key->s)) return *v;
        }
        const Value* def = args.Get(1, "default");
        return def ? *def : NoneValue();
      }
    } else if (obj.is_undefined()) {
      return Error(pos, "cannot call '" + name + "' on an undefined value (" + obj.s + ")");
    }
    return Error(pos, std::string("a ") + TypeName(obj) + " has no method '" + name + "'");
  }

  // ---- tests

  Result<bool> Test(size_t pos, const std::string& name, const Value& v, const Args& args) {
    using K = Value::Kind;
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.kind == K::kNone;
    if (name == "boolean") return v.kind == K::kBool;
    if (name == "true") return v.kind == K::kBool && v.b;
    if (name == "false") return v.kind == K::kBool && !v.b;
    if (name == "string") return v.kind == K::kString;
    if (name == "number") return v.kind == K::kInt || v.kind == K::kFloat;
    if (name == "integer") return v.kind == K::kInt;
    if (name == "float") return v.kind == K::kFloat;
    if (name == "mapping") return v.kind == K::kDict;
    if (name == "sequence") return v.kind == K::kString || v.kind == K::kList || v.kind == K::kDict;
    if (name == "iterable") return v.kind == K::kString || v.kind == K::kList || v.kind == K::kDict || v.is_undefined();
    if (name == "callable") return v.kind == K::kCallable;
    if (name == "even" || name == "odd") {
      if (v.kind != K::kInt && v.kind != K::kBool) return Error(pos, "'" + name + "' needs an integer");
      return (AsInt(v) % 2 == 0) == (name == "even");
    }
    if (name == "lower" || name == "upper") {
      if (v.kind != K::kString) return false;
      return v.s == (name == "lower" ? Lower(v.s) : Upper(v.s));
    }
    const Value* other = args.Get(0, "other");
    if (name == "divisibleby") {
      if (other == nullptr || !other->is_number() || !v.is_number() || AsInt(*other) == 0) {
        return Error(pos, "'divisibleby' needs a non-zero integer");
      }
      return AsInt(v) % AsInt(*other) == 0;
    }
    static constexpr std::pair<std::string_view, std::string_view> kCompare[] = {
        {"equalto", "=="}, {"eq", "=="}, {"==", "=="}, {"sameas", "=="}, {"ne", "!="}, {"!=", "!="},
        {"lt", "<"}, {"lessthan", "<"}, {"<", "<"}, {"le", "<="}, {"<=", "<="},
        {"gt", ">"}, {"greaterthan", ">"}, {">", ">"}, {"ge", ">="}, {">=", ">="}, {"in", "in"}};
    for (const auto& [test, op] : kCompare) {
      if (name != test) continue;
      if (other == nullptr) return Error(pos, "the test '" + name + "' needs an argument");
      if (name == "sameas") {
        bool same = v.kind == other->kind && (v.kind == K::kNone || v.kind == K::kUndefined ||
                                              (v.kind == K::kBool && v.b == other->b));
        if (!same && v.kind == other->kind && (v.is_mapping() || v.kind == K::kList)) {
          same = v.is_mapping() ? v.dict == other->dict : v.list == other->list;
        }
        return same;
      }
      ES_ASSIGN_OR_RETURN(Value r, BinaryOp(pos, std::string(op), v, *other));
      return r.b;
    }
    return Status::NotSupported(Where(pos) + "unknown test '" + name + "'");
  }

  // ---- filters

  Result<Value> EvalFilterChain(const Node& n, Value block_input) {
    Value operand;
    if (n.args[0]) {
      if (n.args[0]->kind == Node::Kind::kFilter) {
        ES_ASSIGN_OR_RETURN(operand, EvalFilterChain(*n.args[0], std::move(block_input)));
      } else {
        ES_ASSIGN_OR_RETURN(operand, Eval(*n.args[0]));
      }
    } else {
      operand = std::move(block_input);
    }
    ES_ASSIGN_OR_RETURN(Args args, EvalArgs(n, 1));
    return Filter(n.pos, n.name, operand, args);
  }

  Result<List> ItemsOf(size_t pos, const Value& v) { return Iterate(pos, v); }

  // Python's sort key comparison with Jinja's case folding.
  Result<bool> SortLess(size_t pos, const Value& a, const Value& b, bool case_sensitive) {
    if (!case_sensitive && a.kind == Value::Kind::kString && b.kind == Value::Kind::kString) {
      return Lower(a.s) < Lower(b.s);
    }
    return Less(pos, a, b);
  }

  Result<Value> AttributeOf(size_t pos, const Value& item, const Value& attr) {
    // Jinja's attribute paths: "a.b" and integer parts index lists.
    if (attr.kind == Value::Kind::kInt) return GetItem(pos, item, attr);
    Value cur = item;
    std::string path = attr.s;
    size_t start = 0;
    while (true) {
      size_t dot = path.find('.', start);
      std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      Value key = Str(part);
      if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        // An index too large for int64 (std::stoll would throw) stays a string key, which finds nothing.
        int64_t index = 0;
        const auto [end, error] = std::from_chars(part.data(), part.data() + part.size(), index);
        if (error == std::errc() && end == part.data() + part.size()) key = Int(index);
      }
      if (cur.is_undefined()) return cur;
      ES_ASSIGN_OR_RETURN(cur, GetItem(pos, cur, key));
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  }

  Result<Value> Filter(size_t pos, const std::string& name, const Value& v, const Args& args) {
    using K = Value::Kind;
    auto flag = [&](size_t i, std::string_view key, bool def) {
      const Value* a = args.Get(i, key);
      return a == nullptr ? def : Truthy(*a);
    };
    if (name == "safe") return v;
    if (name == "default" || name == "d") {
      const Value* def = args.Get(0, "default_value");
      bool boolean = flag(1, "boolean", false);
      if (v.is_undefined() || (boolean && !Truthy(v))) return def ? *def : Str("");
      return v;
    }
    if (name == "length" || name == "count") {
      switch (v.kind) {
        case K::kUndefined: return Int(0);
        case K::kString: return Int(static_cast<int64_t>(CodePointCount(v.s)));
        case K::kList: return Int(static_cast<int64_t>(v.list->size()));
        case K::kDict:
        case K::kNamespace: return Int(static_cast<int64_t>(v.dict->size()));
        default: return Error(pos, std::string("a ") + TypeName(v) + " has no length");
      }
    }
    if (name == "tojson") {
      JsonStyle style;
      if (const Value* indent = args.Get(0, "indent"); indent != nullptr && indent->kind != K::kNone) {
        if (indent->kind != K::kInt || indent->i < 0 || indent->i > 64) {
          return Error(pos, "tojson indent must be an integer from 0 to 64");
        }
        style.indent = static_cast<int>(indent->i);
        style.item_sep = ",";
      }
      if (const Value* seps = args.Get(99, "separators"); seps != nullptr && seps->kind != K::kNone) {
        if (seps->kind != K::kList || seps->list->size() != 2 || (*seps->list)[0].kind != K::kString ||
            (*seps->list)[1].kind != K::kString) {
          return Error(pos, "tojson separators must be two strings");
        }
        style.item_sep = (*seps->list)[0].s;
        style.key_sep = (*seps->list)[1].s;
      }
      style.sort_keys = flag(99, "sort_keys", false);
      style.ensure_ascii = flag(99, "ensure_ascii", false);
      std::string out;
      if (!AppendJson(out, v, style, 0)) return Error(pos, "tojson cannot serialise a function");
      ES_RETURN_IF_ERROR(CheckSize(pos, out.size()));
      return Str(std::move(out));
    }
    if (name == "string") return Str(ToStr(v));
    if (name == "escape" || name == "e" || name == "forceescape") {
      std::string out;
      for (char c : ToStr(v)) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out.push_back(c);
        }
      }
      ES_RETURN_IF_ERROR(CheckSize(pos, out.size()));
      return Str(std::move(out));
    }
    if (name == "trim") {
      const Value* chars = args.Get(0, "chars");
      bool given = chars != nullptr && chars->kind == K::kString;
      return Str(Strip(ToStr(v), given ? chars->s : std::string_view(), given, true, true));
    }
    if (name == "upper") return Str(Upper(ToStr(v)));
    if (name == "lower") return Str(Lower(ToStr(v)));
    if (name == "title") return Str(JinjaTitle(ToStr(v)));
    if (name == "capitalize") return Str(Capitalize(ToStr(v)));
    if (name == "replace") {
      const Value* from = args.Get(0, "old");
      const Value* to = args.Get(1, "new");
      if (from == nullptr || to == nullptr) return Error(pos, "replace needs two arguments");
      const Value* count = args.Get(2, "count");
      std::string out = ReplaceAll(ToStr(v), ToStr(*from), ToStr(*to),
                                   count && count->kind == K::kInt ? count->i : -1);
      ES_RETURN_IF_ERROR(CheckSize(pos, out.size()));
      return Str(std::move(out));
    }
    if (name == "indent") {
      const Value* width = args.Get(0, "width");
      std::string pad = width == nullptr ? std::string(kDefaultIndentWidth, ' ')
                        : width->kind == K::kString ? width->s
                        : std::string(static_cast<size_t>(std::clamp<int64_t>(AsInt(*width), 0, 256)), ' ');
      bool first = flag(1, "first", false), blank = flag(2, "blank", false);
      std::string s = ToStr(v) + "\n";
      std::vector<std::string> lines;
      size_t start = 0;
      for (size_t nl = s.find('\n'); nl != std::string::npos; nl = s.find('\n', start)) {
        lines.push_back(s.substr(start, nl - start));
        start = nl + 1;
      }
      std::string out;
      for (size_t k = 0; k < lines.size(); ++k) {
        if (k) out.push_back('\n');
        if ((k > 0 || first) && (blank || !lines[k].empty())) out += pad;
        out += lines[k];
      }
      ES_RETURN_IF_ERROR(CheckSize(pos, out.size()));
      return Str(std::move(out));
    }
    if (name == "wordcount") {
      return Int(static_cast<int64_t>(Split(ToStr(v), nullptr, -1, false).size()));
    }
    if (name == "int") {
      const Value* def = args.Get(0, "default");
      Value fallback = def ? *def : Int(0);
      if (v.kind == K::kInt) return v;
      if (v.kind == K::kBool) return Int(AsInt(v));
      if (v.kind == K::kFloat) {
        if (!std::isfinite(v.f) || std::fabs(v.f) >= 9.2e18) return fallback;
        return Int(static_cast<int64_t>(v.f));
      }
      if (v.kind == K::kString) {
        std::string t = Strip(v.s, {}, false, true, true);
        int64_t i = 0;
        auto r = std::from_chars(t.data(), t.data() + t.size(), i);
        if (r.ec == std::errc() && r.ptr == t.data() + t.size() && !t.empty()) return Int(i);
        double d = 0;
        auto rd = std::from_chars(t.data(), t.data() + t.size(), d);
        if (rd.ec == std::errc() && rd.ptr == t.data() + t.size() && !t.empty() && std::fabs(d) < 9.2e18) {
          return Int(static_cast<int64_t>(d));
        }
      }
      return fallback;
    }
    if (name == "float") {
      const Value* def = args.Get(0, "default");
      if (v.is_number()) return Float(AsDouble(v));
      if (v.kind == K::kString) {
        std::string t = Strip(v.s, {}, false, true, true);
        double d = 0;
        auto r = std::from_chars(t.data(), t.data() + t.size(), d);
        if (r.ec == std::errc() && r.ptr == t.data() + t.size() && !t.empty()) return Float(d);
      }
      return def ? *def : Float(0);
    }
    if (name == "abs") {
      if (v.kind == K::kFloat) return Float(std::fabs(v.f));
      if (v.kind == K::kInt || v.kind == K::kBool) {
        if (AsInt(v) == INT64_MIN) return Error(pos, "integer overflow");
        return Int(std::llabs(AsInt(v)));
      }
      return Error(pos, std::string("bad operand type for abs: ") + TypeName(v));
    }
    if (name == "round") {
      if (!v.is_number()) return Error(pos, std::string("cannot round a ") + TypeName(v));
      const Value* precision = args.Get(0, "precision");
      const Value* method = args.Get(1, "method");
      int64_t digits = precision && precision->kind == K::kInt ? std::clamp<int64_t>(precision->i, -20, 20) : 0;
      std::string m = method && method->kind == K::kString ? method->s : "common";
      double scale = std::pow(10.0, static_cast<double>(digits));
      double x = AsDouble(v) * scale;
      double r = m == "ceil" ? std::ceil(x) : m == "floor" ? std::floor(x) : std::round(x);
      if (m != "common" && m != "ceil" && m != "floor") return Error(pos, "round method must be common, ceil or floor");
      return Float(r / scale);
    }
    if (name == "first" || name == "last") {
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      if (items.empty()) return Undefined("the sequence is empty");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") {
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      return MakeList(std::move(items));
    }
    if (name == "reverse") {
      if (v.kind == K::kString) {
        std::vector<size_t> offsets = CodePointOffsets(v.s);
        std::string out;
        for (size_t k = offsets.size() - 1; k-- > 0;) out += v.s.substr(offsets[k], offsets[k + 1] - offsets[k]);
        return Str(std::move(out));
      }
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      std::reverse(items.begin(), items.end());
      return MakeList(std::move(items));
    }
    if (name == "items") {
      if (v.is_undefined()) return MakeList({});
      if (v.kind != K::kDict) return Error(pos, std::string("items needs a mapping, not a ") + TypeName(v));
      return CallMethod(pos, v, "items", Args{});
    }
    if (name == "dictsort") {
      if (v.kind != K::kDict) return Error(pos, std::string("dictsort needs a mapping, not a ") + TypeName(v));
      bool case_sensitive = flag(0, "case_sensitive", false);
      const Value* by = args.Get(1, "by");
      bool by_value = by != nullptr && by->kind == K::kString && by->s == "value";
      bool reverse = flag(2, "reverse", false);
      Dict d = *v.dict;
      Status st;
      std::stable_sort(d.begin(), d.end(), [&](const auto& a, const auto& b) {
        Result<bool> lt = by_value ? SortLess(pos, reverse ? b.second : a.second, reverse ? a.second : b.second,
                                              case_sensitive)
                                   : SortLess(pos, Str(reverse ? b.first : a.first), Str(reverse ? a.first : b.first),
                                              case_sensitive);
        if (!lt.ok()) {
          st = lt.status();
          return false;
        }
        return *lt;
      });
      ES_RETURN_IF_ERROR(st);
      List out;
      for (auto& [k, e] : d) out.push_back(MakeList({Str(k), e}));
      return MakeList(std::move(out));
    }
    if (name == "sort" || name == "unique") {
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      bool reverse = name == "sort" && flag(0, "reverse", false);
      bool case_sensitive = flag(name == "sort" ? 1 : 0, "case_sensitive", false);
      const Value* attr = args.Get(name == "sort" ? 2 : 1, "attribute");
      std::vector<Value> keys;
      for (const Value& item : items) {
        if (attr != nullptr && attr->kind != K::kNone) {
          ES_ASSIGN_OR_RETURN(Value key, AttributeOf(pos, item, *attr));
          keys.push_back(std::move(key));
        } else {
          keys.push_back(item);
        }
      }
      if (name == "unique") {
        List out;
        std::vector<Value> seen;
        for (size_t k = 0; k < items.size(); ++k) {
          Value key = keys[k];
          if (!case_sensitive && key.kind == K::kString) key = Str(Lower(key.s));
          bool dup = false;
          for (const Value& s : seen) dup |= Equal(s, key);
          if (!dup) {
            seen.push_back(key);
            out.push_back(items[k]);
          }
        }
        return MakeList(std::move(out));
      }
      std::vector<size_t> order(items.size());
      for (size_t k = 0; k < order.size(); ++k) order[k] = k;
      Status st;
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        Result<bool> lt = SortLess(pos, keys[reverse ? b : a], keys[reverse ? a : b], case_sensitive);
        if (!lt.ok()) {
          st = lt.status();
          return false;
        }
        return *lt;
      });
      ES_RETURN_IF_ERROR(st);
      List out;
      for (size_t k : order) out.push_back(items[k]);
      return MakeList(std::move(out));
    }
    if (name == "join") {
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      const Value* sep = args.Get(0, "d");
      const Value* attr = args.Get(1, "attribute");
      std::string out;
      for (size_t k = 0; k < items.size(); ++k) {
        if (k && sep) out += ToStr(*sep);
        if (attr != nullptr && attr->kind != K::kNone) {
          ES_ASSIGN_OR_RETURN(Value a, AttributeOf(pos, items[k], *attr));
          out += ToStr(a);
        } else {
          out += ToStr(items[k]);
        }
        ES_RETURN_IF_ERROR(CheckSize(pos, out.size()));
      }
      return Str(std::move(out));
    }
    if (name == "batch") {
      const Value* size = args.Get(0, "linecount");
      if (size == nullptr || size->kind != K::kInt || size->i <= 0) return Error(pos, "batch needs a positive size");
      const Value* fill = args.Get(1, "fill_with");
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      List out, cur;
      for (Value& item : items) {
        cur.push_back(std::move(item));
        if (static_cast<int64_t>(cur.size()) == size->i) out.push_back(MakeList(std::exchange(cur, {})));
      }
      if (!cur.empty()) {
        while (fill && fill->kind != K::kNone && static_cast<int64_t>(cur.size()) < size->i) cur.push_back(*fill);
        out.push_back(MakeList(std::move(cur)));
      }
      return MakeList(std::move(out));
    }
    if (name == "sum") {
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      const Value* attr = args.Get(0, "attribute");
      const Value* start = args.Get(1, "start");
      Value total = start ? *start : Int(0);
      for (const Value& item : items) {
        Value x = item;
        if (attr != nullptr && attr->kind != K::kNone) {
          ES_ASSIGN_OR_RETURN(x, AttributeOf(pos, item, *attr));
        }
        ES_ASSIGN_OR_RETURN(total, BinaryOp(pos, "+", total, x));
      }
      return total;
    }
    if (name == "min" || name == "max") {
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      if (items.empty()) return Undefined("the sequence is empty");
      bool case_sensitive = flag(0, "case_sensitive", false);
      size_t best = 0;
      for (size_t k = 1; k < items.size(); ++k) {
        ES_ASSIGN_OR_RETURN(bool lt, SortLess(pos, items[k], items[best], case_sensitive));
        ES_ASSIGN_OR_RETURN(bool gt, SortLess(pos, items[best], items[k], case_sensitive));
        if (name == "min" ? lt : gt) best = k;
      }
      return items[best];
    }
    if (name == "map") {
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      List out;
      const Value* attr = nullptr;
      for (const auto& [k, a] : args.kw) {
        if (k == "attribute") attr = &a;
      }
      if (attr != nullptr) {
        const Value* def = nullptr;
        for (const auto& [k, a] : args.kw) {
          if (k == "default") def = &a;
        }
        for (const Value& item : items) {
          ES_ASSIGN_OR_RETURN(Value x, AttributeOf(pos, item, *attr));
          out.push_back(x.is_undefined() && def ? *def : x);
        }
        return MakeList(std::move(out));
      }
      if (args.pos.empty() || args.pos[0].kind != K::kString) {
        return Error(pos, "map needs a filter name or attribute=");
      }
      Args rest;
      rest.pos.assign(args.pos.begin() + 1, args.pos.end());
      rest.kw = args.kw;
      for (const Value& item : items) {
        ES_ASSIGN_OR_RETURN(Value x, Filter(pos, args.pos[0].s, item, rest));
        out.push_back(std::move(x));
      }
      return MakeList(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      ES_ASSIGN_OR_RETURN(List items, ItemsOf(pos, v));
      bool by_attr = name.ends_with("attr");
      size_t first_test_arg = by_attr ? 1 : 0;
      if (by_attr && (args.pos.empty() || args.pos[0].kind != K::kString)) {
        return Error(pos, name + " needs an attribute name");
      }
      std::string test;
      Args test_args;
      if (args.pos.size() > first_test_arg) {
        if (args.pos[first_test_arg].kind != K::kString) return Error(pos, name + " needs a test name");
        test = args.pos[first_test_arg].s;
        test_args.pos.assign(args.pos.begin() + static_cast<ptrdiff_t>(first_test_arg) + 1, args.pos.end());
      }
      bool keep_if = name.starts_with("select");
      List out;
      for (const Value& item : items) {
        Value subject = item;
        if (by_attr) {
          ES_ASSIGN_OR_RETURN(subject, AttributeOf(pos, item, args.pos[0]));
        }
        bool pass = false;
        if (test.empty()) {
          pass = Truthy(subject);
        } else {
          ES_ASSIGN_OR_RETURN(pass, Test(pos, test, subject, test_args));
        }
        if (pass == keep_if) out.push_back(item);
      }
      return MakeList(std::move(out));
    }
    if (name == "center" || name == "truncate" || name == "urlencode" || name == "xmlattr" || name == "pprint" ||
        name == "random" || name == "filesizeformat" || name == "striptags" || name == "wordwrap" ||
        name == "format" || name == "groupby" || name == "slice" || name == "attr" || name == "urlize") {
      return Status::NotSupported(Where(pos) + "the filter '" + name + "' is not supported");
    }
    return Status::NotSupported(Where(pos) + "unknown filter '" + name + "'");
  }

  const Program& p_;
  const Limits& limits_;
  std::vector<Dict> frames_;  // [0]: the variables and top-level sets; one more per loop iteration and macro call
  size_t floor_ = 1;          // lookups see frames_[floor_..] and frames_[0] (a macro sees only its own frame)
  std::string* out_ = nullptr;
  int depth_ = 0;
  int call_depth_ = 0;
  uint64_t steps_ = 0;
};

}  // namespace

Template::Template(std::shared_ptr<const Program> program) : program_(std::move(program)) {}
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;
Template::~Template() = default;

Result<Template> Template::Parse(std::string_view source, const Limits& limits) {
  if (source.size() > limits.max_template_bytes) {
    return Status::ResourceExhausted("template is " + std::to_string(source.size()) + " bytes, over the limit of " +
                                     std::to_string(limits.max_template_bytes));
  }
  auto program = std::make_shared<Program>();
  program->limits = limits;
  // Jinja's default drops a single trailing newline.
  if (source.ends_with('\n')) source.remove_suffix(1);
  program->source = std::string(source);
  std::vector<Token> tokens;
  ES_RETURN_IF_ERROR(Lexer(program->source).Run(tokens));
  ES_RETURN_IF_ERROR(Parser(tokens, program->source, program->limits).ParseTemplate(program->body));
  return Template(std::move(program));
}

Result<std::string> Template::Render(const JsonValue& variables) const {
  return Renderer(*program_).Run(variables);
}

}  // namespace es::jinja
