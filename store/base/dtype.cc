// DType names and sizes.
#include "store/base/dtype.h"

#include <array>

namespace es {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::kF64, "F64", 8},      {DType::kF32, "F32", 4},     {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},    {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
    {DType::kI64, "I64", 8},      {DType::kI32, "I32", 4},     {DType::kI16, "I16", 2},
    {DType::kI8, "I8", 1},        {DType::kU64, "U64", 8},     {DType::kU32, "U32", 4},
    {DType::kU16, "U16", 2},      {DType::kU8, "U8", 1},       {DType::kBool, "BOOL", 1},
}};

}  // namespace

size_t DTypeSize(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "UNKNOWN";
}

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return std::nullopt;
}

}  // namespace es
