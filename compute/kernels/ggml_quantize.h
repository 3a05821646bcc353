// Quantization of fp32 rows into the GGML block formats: the inverse of DequantizeGgmlRow (ggml_blocks.h).
// The 32-value formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and F16, BF16 give exactly the bytes of ggml's reference
// quantizers (its quantize_row_*_ref, which llama.cpp's quantizer uses without an importance matrix): each block's
// scale is its absolute maximum (or range) over the levels, and each value rounds as ggml rounds it. The
// super-block formats (Q4_K, Q5_K, Q6_K) and IQ4_NL / IQ4_XS are this project's own: per sub-block a search over
// candidate scales around the range's, each refined by least squares on its rounding, then the sub-block scales
// themselves quantized against the super-block's; the tests hold their error to ggml's on the same rows.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "store/base/ggml_type.h"
#include "store/base/status.h"

namespace es {

// Encodes `values` (one row) as `type` into `row`, which must be exactly the row's bytes (GgmlRowBytes).
// InvalidArgument for a length that is not whole blocks, or a row of the wrong size; NotSupported for a type this
// file does not quantize. Non-finite values are InvalidArgument (no block format holds them faithfully).
// Thread-safe; reads `values` and writes `row` only during the call.
Status QuantizeGgmlRow(GgmlType type, std::span<const float> values, std::span<std::byte> row);

// Whether QuantizeGgmlRow takes `type`.
bool CanQuantizeGgml(GgmlType type);
// A format QuantizeGgmlRow writes, by name in any case ("q4_k"); nullopt for any other name.
std::optional<GgmlType> ParseQuantizeFormat(std::string_view name);
// The formats QuantizeGgmlRow writes, for messages: "F32, F16, BF16, Q4_0, ...".
std::string QuantizeFormatNames();

}  // namespace es
