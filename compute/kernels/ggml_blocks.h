// The GGML block formats (the quantized rows of GGUF files), decoded to fp32 by plain scalar code: the reference
// every block kernel is tested against. Bit-exact with ggml's dequantization: each value is computed with the
// same float operations in the same order (scale times sub-block scale, times the quant, minus the minimum), and
// the library is built without contracting a multiply and an add into one.
#pragma once

#include <cstddef>
#include <span>

#include "store/base/ggml_type.h"
#include "store/base/status.h"

namespace es {

// Decodes one row of `type` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) into
// `out`, whose size is the row's length in values. InvalidArgument when `row` is not exactly that many values'
// blocks; NotSupported for the other types. Thread-safe; reads `row` and writes `out` only during the call.
Status DequantizeGgmlRow(GgmlType type, std::span<const std::byte> row, std::span<float> out);

}  // namespace es
