#include "store/base/utf8.h"

#include <cstdint>

namespace es {

size_t Utf8Lead(unsigned char lead, unsigned char& lo, unsigned char& hi) {
  lo = 0x80;
  hi = 0xBF;
  if (lead < 0x80) return 1;
  if (lead < 0xC2) return 0;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) {
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
    return 3;
  }
  if (lead < 0xF5) {
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
    return 4;
  }
  return 0;
}

bool IsValidUtf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    i = SkipAsciiWords(p, i, n);
    if (i >= n) break;
    unsigned char lo, hi;
    const size_t len = Utf8Lead(p[i], lo, hi);
    if (len == 0 || i + len > n) return false;
    if (len > 1) {
      if (p[i + 1] < lo || p[i + 1] > hi) return false;
      for (size_t k = 2; k < len; ++k) {
        if (p[i + k] < 0x80 || p[i + k] > 0xBF) return false;
      }
    }
    i += len;
  }
  return true;
}

}  // namespace es
