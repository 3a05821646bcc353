// GGML tensor types as GGUF files number them (ggml.h's enum ggml_type), with each type's block geometry: a
// row of a type holds whole blocks of block_elements values in block_bytes bytes. One definition for the project:
// the GGUF parser, the store's byte accounting and the block kernels all read it.
#pragma once

#include <array>
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

// The table. Block geometry from ggml's block structs: a scale (f16) or two, packed quants, and for the K-quants
// and IQ4_XS 256-value super-blocks with 6-bit or 8-bit sub-block scales. In the header, constexpr, so that the
// block kernels (CPU and CUDA) take their block sizes from it at compile time.
namespace ggml_types {
inline constexpr uint32_t kQK = 32;    // values per block of the 32-wide formats
inline constexpr uint32_t kQKK = 256;  // values per K-quant super-block
inline constexpr uint32_t kHalf = 2;   // bytes of an f16 scale

inline constexpr std::array<GgmlTypeInfo, 32> kTypes = {{
    {GgmlType::kF32, "F32", 1, 4, true},
    {GgmlType::kF16, "F16", 1, 2, true},
    {GgmlType::kQ4_0, "Q4_0", kQK, kHalf + kQK / 2, true},
    {GgmlType::kQ4_1, "Q4_1", kQK, 2 * kHalf + kQK / 2, true},
    {GgmlType::kQ5_0, "Q5_0", kQK, kHalf + 4 + kQK / 2, true},
    {GgmlType::kQ5_1, "Q5_1", kQK, 2 * kHalf + 4 + kQK / 2, true},
    {GgmlType::kQ8_0, "Q8_0", kQK, kHalf + kQK, true},
    {GgmlType::kQ8_1, "Q8_1", kQK, 4 + 4 + kQK, false},
    {GgmlType::kQ2_K, "Q2_K", kQKK, 2 * kHalf + kQKK / 16 + kQKK / 4, false},
    {GgmlType::kQ3_K, "Q3_K", kQKK, kHalf + kQKK / 4 + kQKK / 8 + 12, false},
    {GgmlType::kQ4_K, "Q4_K", kQKK, 2 * kHalf + 12 + kQKK / 2, true},
    {GgmlType::kQ5_K, "Q5_K", kQKK, 2 * kHalf + 12 + kQKK / 8 + kQKK / 2, true},
    {GgmlType::kQ6_K, "Q6_K", kQKK, kQKK / 2 + kQKK / 4 + kQKK / 16 + kHalf, true},
    {GgmlType::kQ8_K, "Q8_K", kQKK, 4 + kQKK + kQKK / 8, false},
    {GgmlType::kIQ2_XXS, "IQ2_XXS", kQKK, kHalf + kQKK / 4, false},
    {GgmlType::kIQ2_XS, "IQ2_XS", kQKK, kHalf + kQKK / 4 + kQKK / 32, false},
    {GgmlType::kIQ3_XXS, "IQ3_XXS", kQKK, kHalf + kQKK / 4 + kQKK / 8, false},
    {GgmlType::kIQ1_S, "IQ1_S", kQKK, kHalf + kQKK / 8 + kQKK / 16, false},
    {GgmlType::kIQ4_NL, "IQ4_NL", kQK, kHalf + kQK / 2, true},
    {GgmlType::kIQ3_S, "IQ3_S", kQKK, kHalf + kQKK / 4 + kQKK / 8 + kQKK / 32 + 4, false},
    {GgmlType::kIQ2_S, "IQ2_S", kQKK, kHalf + kQKK / 4 + kQKK / 16, false},
    {GgmlType::kIQ4_XS, "IQ4_XS", kQKK, kHalf + 2 + kQKK / 64 + kQKK / 2, true},
    {GgmlType::kI8, "I8", 1, 1, false},
    {GgmlType::kI16, "I16", 1, 2, false},
    {GgmlType::kI32, "I32", 1, 4, false},
    {GgmlType::kI64, "I64", 1, 8, false},
    {GgmlType::kF64, "F64", 1, 8, false},
    {GgmlType::kIQ1_M, "IQ1_M", kQKK, kQKK / 8 + kQKK / 16 + kQKK / 32, false},
    {GgmlType::kBF16, "BF16", 1, 2, true},
    {GgmlType::kTQ1_0, "TQ1_0", kQKK, kHalf + 4 * 13, false},
    {GgmlType::kTQ2_0, "TQ2_0", kQKK, kHalf + 64, false},
    {GgmlType::kMXFP4, "MXFP4", kQK, 1 + kQK / 2, false},
}};
}  // namespace ggml_types

// The type numbered `id` in a GGUF file, or nullopt for a number ggml does not define (or no longer does).
std::optional<GgmlTypeInfo> GgmlTypeById(uint32_t id);
constexpr GgmlTypeInfo GgmlTypeInfoOf(GgmlType type) {
  for (const auto& t : ggml_types::kTypes) {
    if (t.type == type) return t;
  }
  return {type, "UNKNOWN", 1, 0, false};
}
std::string_view GgmlTypeName(GgmlType type);
// A type by ggml's name ("Q4_K", "IQ4_XS", "BF16") in any case ("q4_k").
std::optional<GgmlType> ParseGgmlTypeName(std::string_view name);

// Bytes of a row of `elements` values of `type`; nullopt when `elements` is not a whole number of blocks or the
// size overflows.
std::optional<uint64_t> GgmlRowBytes(GgmlType type, uint64_t elements);

}  // namespace es
