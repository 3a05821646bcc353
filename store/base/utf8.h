// UTF-8 validation, the one strict check every untrusted string goes through (tokenizer input, GGUF keys, names
// and token strings, HTTP request targets).
#pragma once

#include <cstddef>
#include <string_view>

namespace es {

// The length (1 to 4) of the sequence `lead` starts, or 0 for a byte that cannot lead one, and the valid range
// [lo, hi] of its second byte, which depends on the lead (Unicode Table 3-7); every later byte is 0x80..0xBF.
size_t Utf8Lead(unsigned char lead, unsigned char& lo, unsigned char& hi);

// True when `text` is well-formed UTF-8: no overlong forms, surrogates or code points above U+10FFFF.
bool IsValidUtf8(std::string_view text);

}  // namespace es
