// Request target parsing: path segments and query parameters, percent-decoded.
#include "api/http_types.h"

#include "store/base/utf8.h"

namespace es::api {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `in`; `plus_is_space` for query components (application/x-www-form-urlencoded).
Result<std::string> Decode(std::string_view in, bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return Status::InvalidArgument("truncated percent escape in the request target");
      int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return Status::InvalidArgument("malformed percent escape in the request target");
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// The length of the valid UTF-8 sequence starting at text[i], or 0 (overlong forms, surrogates and code points
// above U+10FFFF are invalid).
size_t Utf8SequenceLength(std::string_view text, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint32_t min = 0, cp = 0;
  if ((c & 0xE0) == 0xC0) {
    n = 2, min = 0x80, cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, min = 0x800, cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4, min = 0x10000, cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > text.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

Result<std::string> DecodeUtf8(std::string_view in, bool plus_is_space) {
  ES_ASSIGN_OR_RETURN(std::string out, Decode(in, plus_is_space));
  if (!IsValidUtf8(out)) return Status::InvalidArgument("the request target decodes to invalid UTF-8");
  return out;
}

}  // namespace

std::string ToValidUtf8(std::string_view text) {
  constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t n = Utf8SequenceLength(text, i);
    if (n == 0) {
      out += kReplacement;
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

Result<Target> ParseTarget(std::string_view target) {
  if (target.empty() || target.front() != '/') {
    return Status::InvalidArgument("the request target must be an absolute path");
  }
  Target t;
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  if (size_t hash = path.find('#'); hash != std::string_view::npos) path = path.substr(0, hash);
  size_t pos = 1;
  while (pos <= path.size()) {
    size_t slash = path.find('/', pos);
    std::string_view seg = path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
    // Empty segments ("//", a trailing "/") carry nothing: "/v1/models/" routes as "/v1/models".
    if (!seg.empty()) {
      ES_ASSIGN_OR_RETURN(std::string decoded, DecodeUtf8(seg, /*plus_is_space=*/false));
      t.segments.push_back(std::move(decoded));
    }
    if (slash == std::string_view::npos) break;
    pos = slash + 1;
  }
  if (q == std::string_view::npos) return t;
  std::string_view query = target.substr(q + 1);
  if (size_t hash = query.find('#'); hash != std::string_view::npos) query = query.substr(0, hash);
  pos = 0;
  while (pos < query.size()) {
    size_t amp = query.find('&', pos);
    std::string_view item = query.substr(pos, amp == std::string_view::npos ? std::string_view::npos : amp - pos);
    if (!item.empty()) {
      size_t eq = item.find('=');
      ES_ASSIGN_OR_RETURN(std::string key, DecodeUtf8(item.substr(0, eq), /*plus_is_space=*/true));
      std::string value;
      if (eq != std::string_view::npos) {
        ES_ASSIGN_OR_RETURN(value, DecodeUtf8(item.substr(eq + 1), /*plus_is_space=*/true));
      }
      t.query[std::move(key)] = std::move(value);
    }
    if (amp == std::string_view::npos) break;
    pos = amp + 1;
  }
  return t;
}

}  // namespace es::api
