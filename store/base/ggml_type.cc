// The GGML type table. Block geometry from ggml's block structs: a scale (f16) or two, packed quants, and for the
// K-quants and IQ4_XS 256-value super-blocks with 6-bit or 8-bit sub-block scales.
#include "store/base/ggml_type.h"

#include <array>

namespace es {
namespace {

constexpr uint32_t kQK = 32;    // values per block of the 32-wide formats
constexpr uint32_t kQKK = 256;  // values per K-quant super-block
constexpr uint32_t kHalf = 2;   // bytes of an f16 scale

constexpr std::array<GgmlTypeInfo, 32> kTypes = {{
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

}  // namespace

std::optional<GgmlTypeInfo> GgmlTypeById(uint32_t id) {
  for (const auto& t : kTypes) {
    if (static_cast<uint32_t>(t.type) == id) return t;
  }
  return std::nullopt;
}

GgmlTypeInfo GgmlTypeInfoOf(GgmlType type) {
  for (const auto& t : kTypes) {
    if (t.type == type) return t;
  }
  return {type, "UNKNOWN", 1, 0, false};
}

std::string_view GgmlTypeName(GgmlType type) { return GgmlTypeInfoOf(type).name; }

std::optional<GgmlType> ParseGgmlTypeName(std::string_view name) {
  for (const auto& t : kTypes) {
    if (t.name == name) return t.type;
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
