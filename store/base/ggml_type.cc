// Look-ups in the GGML type table (ggml_type.h).
#include "store/base/ggml_type.h"

#include <algorithm>
#include <cctype>

namespace es {

std::optional<GgmlTypeInfo> GgmlTypeById(uint32_t id) {
  for (const auto& t : ggml_types::kTypes) {
    if (static_cast<uint32_t>(t.type) == id) return t;
  }
  return std::nullopt;
}

std::string_view GgmlTypeName(GgmlType type) { return GgmlTypeInfoOf(type).name; }

std::optional<GgmlType> ParseGgmlTypeName(std::string_view name) {
  auto lower = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  for (const auto& t : ggml_types::kTypes) {
    if (std::equal(t.name.begin(), t.name.end(), name.begin(), name.end(),
                   [&](char a, char b) { return lower(a) == lower(b); })) {
      return t.type;
    }
  }
  return std::nullopt;
}

std::optional<uint64_t> GgmlRowBytes(GgmlType type, uint64_t elements) {
  const GgmlTypeInfo info = GgmlTypeInfoOf(type);
  if (info.block_bytes == 0 || elements % info.block_elements != 0) return std::nullopt;
  const uint64_t blocks = elements / info.block_elements;
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(blocks, uint64_t{info.block_bytes}, &bytes)) return std::nullopt;
  return bytes;
}

}  // namespace es
