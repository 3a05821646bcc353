// Element types of stored tensors, with their safetensors names and sizes. One definition for the project.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace es {

enum class DType : uint8_t {
  kUnknown = 0, kF64, kF32, kF16, kBF16, kF8E4M3, kF8E5M2, kI64, kI32, kI16, kI8, kU64, kU32, kU16, kU8, kBool
};

// Bytes per element (0 for kUnknown).
size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "BF16", "F8_E4M3", "BOOL", ...
std::string_view DTypeName(DType dtype);
// Parses the safetensors spelling; nullopt if unknown.
std::optional<DType> ParseDType(std::string_view name);

}  // namespace es
