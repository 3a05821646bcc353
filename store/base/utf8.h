// UTF-8 validation, the one strict check every untrusted string goes through (tokenizer input, GGUF keys, names
// and token strings, HTTP request targets).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace es {

// The length (1 to 4) of the sequence `lead` starts, or 0 for a byte that cannot lead one, and the valid range
// [lo, hi] of its second byte, which depends on the lead (Unicode Table 3-7); every later byte is 0x80..0xBF.
size_t Utf8Lead(unsigned char lead, unsigned char& lo, unsigned char& hi);

// The first position at or after `i` (< n) that may hold a non-ASCII byte: ASCII runs dominate real text, so they
// are skipped eight bytes at a time (the last few bytes of a run are left for the caller's byte loop).
// Inline: the tokenizer's hot loops call it at every ASCII run.
inline size_t SkipAsciiWords(const unsigned char* p, size_t i, size_t n) {
  constexpr uint64_t kHighBits = 0x8080808080808080ull;
  while (i + sizeof(uint64_t) <= n) {
    uint64_t word;
    std::memcpy(&word, p + i, sizeof(word));
    if (word & kHighBits) break;
    i += sizeof(word);
  }
  return i;
}

// True when `text` is well-formed UTF-8: no overlong forms, surrogates or code points above U+10FFFF.
bool IsValidUtf8(std::string_view text);

}  // namespace es
