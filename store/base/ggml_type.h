// GGML tensor types as GGUF files number them (ggml.h's enum ggml_type), with each type's block geometry: a
// row of a type holds whole blocks of block_elements values in block_bytes bytes. One definition for the project:
// the GGUF parser, the store's byte accounting and the block kernels all read it.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace es {

enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21, kIQ2_S = 22, kIQ4_XS = 23,
  kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kIQ1_M = 29, kBF16 = 30,
  kTQ1_0 = 34, kTQ2_0 = 35, kMXFP4 = 39,
};

struct GgmlTypeInfo {
  GgmlType type;
  std::string_view name;    // ggml's spelling: "Q4_K", "IQ4_XS", "BF16"
  uint32_t block_elements;  // values per block (1 for the plain types)
  uint32_t block_bytes;     // bytes per block
  // Whether expertstore stores and computes with this type. The others are known only to be named in an error.
  bool supported;
};

// The type numbered `id` in a GGUF file, or nullopt for a number ggml does not define (or no longer does).
std::optional<GgmlTypeInfo> GgmlTypeById(uint32_t id);
GgmlTypeInfo GgmlTypeInfoOf(GgmlType type);
std::string_view GgmlTypeName(GgmlType type);
std::optional<GgmlType> ParseGgmlTypeName(std::string_view name);

// Bytes of a row of `elements` values of `type`; nullopt when `elements` is not a whole number of blocks or the
// size overflows.
std::optional<uint64_t> GgmlRowBytes(GgmlType type, uint64_t elements);

}  // namespace es
