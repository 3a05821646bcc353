// UTF-8 decoding, validation and lossy repair, plus Unicode classes and normalization from ICU (never home-made
// tables). Stateless and thread-safe; no ICU type appears here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "store/base/status.h"
#include "store/base/utf8.h"

namespace es::unicode {

inline constexpr char32_t kReplacementChar = 0xFFFD;
inline constexpr char32_t kMaxCodePoint = 0x10FFFF;
inline constexpr uint8_t kAsciiLimit = 0x80;

// True when `text` is well-formed UTF-8 (no overlong forms, surrogates or code points above U+10FFFF).
using ::es::IsValidUtf8;

// Decodes the code point starting at text[pos] and advances `pos` past it. `text` must be valid UTF-8 and
// pos < text.size(); the tokenizer validates its input once so that the hot loops need not.
inline char32_t DecodeNext(std::string_view text, size_t& pos) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data()) + pos;
  const unsigned char b0 = p[0];
  if (b0 < kAsciiLimit) {
    pos += 1;
    return b0;
  }
  if (b0 < 0xE0) {
    pos += 2;
    return (char32_t{b0 & 0x1Fu} << 6) | (p[1] & 0x3Fu);
  }
  if (b0 < 0xF0) {
    pos += 3;
    return (char32_t{b0 & 0x0Fu} << 12) | (char32_t{p[1] & 0x3Fu} << 6) | (p[2] & 0x3Fu);
  }
  pos += 4;
  return (char32_t{b0 & 0x07u} << 18) | (char32_t{p[1] & 0x3Fu} << 12) | (char32_t{p[2] & 0x3Fu} << 6) |
         (p[3] & 0x3Fu);
}

// Length in bytes of the UTF-8 sequence whose lead byte is `lead` (valid UTF-8 assumed).
inline size_t SequenceLength(unsigned char lead) {
  if (lead < kAsciiLimit) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// The start of the code point that ends at `pos` (pos > 0, valid UTF-8).
inline size_t PrevBoundary(std::string_view text, size_t pos) {
  do {
    --pos;
  } while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80);
  return pos;
}

void AppendUtf8(char32_t c, std::string& out);

// Appends `bytes` to `out` as UTF-8, replacing each maximal ill-formed subpart with U+FFFD (the Unicode
// "substitution of maximal subparts" practice, as Rust's from_utf8_lossy and the WHATWG decoder do). When
// `final` is false a trailing sequence that is incomplete but could still become valid is left unconsumed.
// Returns the number of bytes consumed.
size_t AppendUtf8Lossy(std::string_view bytes, bool final, std::string& out);

// Character classes (from ICU's property data).
uint32_t GeneralCategoryMask(char32_t c);  // U_GET_GC_MASK: one bit per general category
bool IsLetter(char32_t c);                 // \p{L}
bool IsNumber(char32_t c);                 // \p{N}: Nd, Nl, No
bool IsDecimalDigit(char32_t c);           // \p{Nd}
bool IsWhiteSpace(char32_t c);             // the White_Space property: \s of Oniguruma and Rust, char::is_whitespace
// Rust regex's Unicode \w: Alphabetic, marks, decimal digits, connector punctuation and Join_Control.
bool IsWordChar(char32_t c);
// Simple (one-to-one) case folding, as case-insensitive regex literals compare.
char32_t SimpleCaseFold(char32_t c);

// General-category masks for \p{..} names ("L", "Lu", "N", "Nd", ...). Returns 0 for an unknown name.
uint32_t GeneralCategoryMaskForName(std::string_view name);

enum class NormalForm : uint8_t { kNfc, kNfd, kNfkc, kNfkd };

// Unicode normalization of valid UTF-8 `in`, written to `out` (replaced).
Status Normalize(NormalForm form, std::string_view in, std::string& out);

// Per-character full lowercase mapping without context, as Rust's char::to_lowercase (so a final sigma
// still becomes σ). Written to `out` (replaced).
Status Lowercase(std::string_view in, std::string& out);

}  // namespace es::unicode
