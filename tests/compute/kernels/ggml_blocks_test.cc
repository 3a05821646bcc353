// The scalar block decoder against llama.cpp: rows that llama.cpp quantized, decoded here, by gguf-py and by
// ggml's own to_float (tests/ingest/gguf_fixtures/blocks), must agree bit for bit; and each decoded row must be
// as close to the original weights as ggml's own decoding is.
#include "compute/kernels/ggml_blocks.h"

#include "compute/kernels/cpu_kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "compute/kernels/cpu_kernels.h"
#include "compute/kernels/isa_ops.h"
#include "store/base/json.h"
#include "tests/util/block_fixtures.h"
#include "tests/util/files.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

using testing::BlockFixtures;
using testing::BlockFormat;
using testing::LoadBlockFixtures;

TEST(GgmlBlocksTest, DecodesLlamaCppRowsBitForBit) {
  BlockFixtures f;
  ASSERT_NO_FATAL_FAILURE(LoadBlockFixtures(&f));
  const size_t row_elements = f.cols, rows = f.rows;
  const std::vector<float>& original = f.original;
  ASSERT_EQ(original.size(), rows * row_elements);
  size_t types = 0;
  for (const BlockFormat& format : f.formats) {
    SCOPED_TRACE(format.name);
    const GgmlType type = format.type;
    const std::string& blocks = format.blocks;
    const std::vector<float>& expected = format.decoded;
    const std::vector<float>& ggml_expected = format.ggml_decoded;
    ASSERT_EQ(ggml_expected.size(), rows * row_elements);
    const size_t row_bytes = format.row_bytes;
    ASSERT_EQ(*GgmlRowBytes(type, row_elements), row_bytes);
    ASSERT_EQ(blocks.size(), rows * row_bytes);
    std::vector<float> decoded(rows * row_elements, std::nanf(""));  // poisoned: an unwritten value fails
    for (size_t r = 0; r < rows; ++r) {
      const auto row = std::as_bytes(std::span(blocks)).subspan(r * row_bytes, row_bytes);
      ASSERT_TRUE(DequantizeGgmlRow(type, row, std::span(decoded).subspan(r * row_elements, row_elements)).ok());
    }
    size_t mismatches = 0, ggml_mismatches = 0;
    double squared_error = 0;
    for (size_t i = 0; i < decoded.size(); ++i) {
      uint32_t a, b, g;
      std::memcpy(&a, &decoded[i], 4);
      std::memcpy(&b, &expected[i], 4);
      std::memcpy(&g, &ggml_expected[i], 4);
      if (a != b) ++mismatches;
      if (a != g) ++ggml_mismatches;
      squared_error += (decoded[i] - original[i]) * static_cast<double>(decoded[i] - original[i]);
    }
    EXPECT_EQ(mismatches, 0u);
    EXPECT_EQ(ggml_mismatches, 0u);
    // The quantization error is the one gguf-py measured on the same rows (it sums in float32, hence the slack).
    const double rmse = std::sqrt(squared_error / static_cast<double>(decoded.size()));
    EXPECT_NEAR(rmse, format.rmse, format.rmse * 1e-3);
    ++types;
  }
  EXPECT_EQ(types, 12u);  // every supported format but F32, which the original itself is
}

// MatMul on a block-format matrix gives what MatMul on the same rows decoded by gguf-py gives (the fp32
// kernels sum in their own order, hence a tolerance), on every ISA, for every format llama.cpp wrote.
TEST(GgmlBlocksTest, MatMulOnBlocksIsMatMulOnTheDecodedRows) {
  BlockFixtures f;
  ASSERT_NO_FATAL_FAILURE(LoadBlockFixtures(&f));
  const size_t cols = f.cols, rows = f.rows;
  constexpr size_t kBatch = 3;
  std::vector<float> x(kBatch * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * 0.5f;
  for (kernels::Isa isa : {kernels::Isa::kScalar, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (!kernels::IsaAvailable(isa)) continue;
    kernels::CpuContext ctx;
    ctx.isa = isa;
    for (const BlockFormat& format : f.formats) {
      SCOPED_TRACE(format.name + " on " + std::string(kernels::IsaName(isa)));
      kernels::WeightMatrix quantized{format.blocks.data(), DType::kUnknown, rows, cols, format.type};
      kernels::WeightMatrix plain{format.decoded.data(), DType::kF32, rows, cols, std::nullopt};
      // Batch 1 (decode: the ISA's fused decode-and-multiply, where it has one) and a batch.
      for (size_t batch : {size_t{1}, kBatch}) {
        std::vector<float> got(batch * rows, std::nanf("")), want(batch * rows);
        ASSERT_TRUE(kernels::MatMul(ctx, x.data(), batch, quantized, got.data()).ok());
        ASSERT_TRUE(kernels::MatMul(ctx, x.data(), batch, plain, want.data()).ok());
        for (size_t i = 0; i < got.size(); ++i) {
          EXPECT_NEAR(got[i], want[i], 1e-5f * (1.0f + std::fabs(want[i]))) << "batch " << batch << " value " << i;
        }
      }
    }
  }
  // Rows that are not whole blocks are refused.
  std::vector<std::byte> q8(2 * 34);
  kernels::WeightMatrix ragged{q8.data(), DType::kUnknown, 1, 48, GgmlType::kQ8_0};
  std::vector<float> y(1), x48(48);
  EXPECT_TRUE(kernels::MatMul({}, x48.data(), 1, ragged, y.data()).IsInvalidArgument());
}

// The integer path (CpuContext::q8_activations) on every format llama.cpp wrote: each ISA's block_dot_q8 agrees
// with the scalar reference to fp32 rounding, and MatMul's result differs from the exact one by no more than the
// activations' rounding allows: sum_i |w_i| * (half a quantization step of x_i's block: 32 values, 256 for the
// super-block formats), which a wrong layout, scale or offset exceeds by orders of magnitude. Batches of 1, 3,
// 6 (past the 4 activation rows of one block_dot_q8 call) and 70 (past the 64 rows quantized at a time).
TEST(GgmlBlocksTest, IntegerPathIsWithinTheActivationsRounding) {
  BlockFixtures f;
  ASSERT_NO_FATAL_FAILURE(LoadBlockFixtures(&f));
  const size_t cols = f.cols, rows = f.rows;
  ASSERT_EQ(cols % 256, 0u);
  constexpr size_t kBatch = 70;
  std::vector<float> x(kBatch * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * (0.5f + (i % 7) * 0.3f);
  // A few large activations, so that a 256-value block's step differs from its 32-value blocks' steps.
  for (size_t i = 5; i < x.size(); i += 97) x[i] *= 6.0f;
  // Half a quantization step of each activation: max |x| over its block of `block` values / 127 / 2.
  const auto half_steps = [&](size_t block) {
    std::vector<float> step(x.size());
    for (size_t b = 0; b < x.size() / block; ++b) {
      float amax = 0;
      for (size_t j = 0; j < block; ++j) amax = std::max(amax, std::fabs(x[b * block + j]));
      for (size_t j = 0; j < block; ++j) step[b * block + j] = amax / 127.0f / 2.0f;
    }
    return step;
  };
  const std::vector<float> step32 = half_steps(32), step256 = half_steps(256);
  size_t types = 0;
  for (kernels::Isa isa : {kernels::Isa::kScalar, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (!kernels::IsaAvailable(isa)) continue;
    const kernels::internal::IsaOps* ops = kernels::internal::OpsFor(isa);
    kernels::CpuContext ctx;
    ctx.isa = isa;
    ctx.q8_activations = true;
    for (const BlockFormat& format : f.formats) {
      const GgmlType type = format.type;
      if (!kernels::internal::HasQ8Dot(type)) continue;
      SCOPED_TRACE(format.name + " on " + std::string(kernels::IsaName(isa)));
      ++types;
      const std::string& blocks = format.blocks;
      const std::vector<float>& decoded = format.decoded;
      const size_t row_bytes = format.row_bytes;
      const std::vector<float>& step = kernels::internal::UsesQ8K(type) ? step256 : step32;
      // Activation rows 0-3, quantized one after another.
      const size_t stride = kernels::internal::Q8RowBytes(type, cols);
      constexpr size_t kRows = kernels::internal::kQ8Rows;
      std::vector<std::byte> qx(kRows * stride);
      for (size_t k = 0; k < kRows; ++k) {
        kernels::internal::QuantizeQ8Row(type, x.data() + k * cols, cols, qx.data() + k * stride);
      }
      for (size_t r = 0; r < rows; ++r) {
        const void* row = blocks.data() + r * row_bytes;
        float simd[kRows], scalar[kRows];
        ASSERT_TRUE(ops->block_dot_q8(type, row, qx.data(), stride, kRows, cols, simd));
        ASSERT_TRUE(kernels::internal::BlockDotQ8Scalar(type, row, qx.data(), stride, kRows, cols, scalar));
        for (size_t k = 0; k < kRows; ++k) {
          double magnitude = 0;
          for (size_t i = 0; i < cols; ++i) magnitude += std::fabs(decoded[r * cols + i] * x[k * cols + i]);
          EXPECT_NEAR(simd[k], scalar[k], 1e-5 * magnitude + 1e-6) << "row " << r << ", activations " << k;
          // Each activation row's result does not depend on how many rows share the call.
          float alone = 0;
          ASSERT_TRUE(ops->block_dot_q8(type, row, qx.data() + k * stride, stride, 1, cols, &alone));
          EXPECT_EQ(alone, simd[k]) << "row " << r << ", activations " << k;
        }
      }
      kernels::WeightMatrix quantized{blocks.data(), DType::kUnknown, rows, cols, type};
      for (size_t batch : {size_t{1}, size_t{3}, size_t{6}, kBatch}) {
        std::vector<float> got(batch * rows, std::nanf(""));
        ASSERT_TRUE(kernels::MatMul(ctx, x.data(), batch, quantized, got.data()).ok());
        for (size_t b = 0; b < batch; ++b) {
          for (size_t r = 0; r < rows; ++r) {
            double exact = 0, bound = 0, magnitude = 0;
            for (size_t i = 0; i < cols; ++i) {
              const double w = decoded[r * cols + i];
              exact += w * x[b * cols + i];
              bound += std::fabs(w) * step[b * cols + i];
              magnitude += std::fabs(w * x[b * cols + i]);
            }
            EXPECT_LE(std::fabs(got[b * rows + r] - exact), bound + 1e-5 * magnitude)
                << "batch " << batch << " row " << b << "," << r << " exact " << exact;
            // And the rounding is real: not the exact path under another name.
            if (b == 0 && r == 0 && batch == 1) {
              EXPECT_NE(got[0], static_cast<float>(exact));
            }
          }
        }
      }
    }
  }
  EXPECT_GE(types, 10u);
  // Formats without an integer path (F16, BF16) keep the exact one under the flag.
  EXPECT_FALSE(kernels::internal::HasQ8Dot(GgmlType::kF16));
}

// On a machine with AMX: the tile kernel equals the scalar integer reference bit for bit, for Q4_K, Q5_K, Q6_K and
// IQ4_XS rows from llama.cpp's quantizer (three rows, the rest of the 16-row tile empty) and 16-row groups of activations
// (the last one partial), packed as MatMul packs them; and MatMul with the integer path takes it from AmxMinRows
// rows on.
TEST(GgmlBlocksTest, AmxTilesEqualTheScalarReference) {
  if (!kernels::internal::AmxAvailable()) GTEST_SKIP() << "no AMX on this machine";
  BlockFixtures f;
  ASSERT_NO_FATAL_FAILURE(LoadBlockFixtures(&f));
  const size_t cols = f.cols, rows = f.rows;
  constexpr size_t kBatch = 40;  // two whole groups of 16 and a partial one
  std::vector<float> x(kBatch * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.21f * static_cast<float>(i)) * (0.4f + (i % 5) * 0.5f);
  for (size_t i = 3; i < x.size(); i += 61) x[i] *= 9.0f;
  size_t types = 0;
  for (const BlockFormat& format : f.formats) {
    if (!kernels::internal::AmxTakes(format.type)) continue;
    SCOPED_TRACE(format.name);
    ++types;
    const size_t stride = kernels::internal::Q8RowBytes(format.type, cols);
    std::vector<std::byte> qx(kBatch * stride);
    for (size_t k = 0; k < kBatch; ++k) {
      kernels::internal::QuantizeQ8Row(format.type, x.data() + k * cols, cols, qx.data() + k * stride);
    }
    std::vector<std::byte> packed(kernels::internal::AmxPackedBytes(kBatch, cols));
    kernels::internal::PackQ8KForAmx(qx.data(), stride, kBatch, cols, packed.data());
    // All three groups in one call, and the last one alone.
    const size_t group_bytes = packed.size() / 3;
    float tiles[3 * 16 * 16], last[16 * 16];
    ASSERT_TRUE(kernels::internal::AmxBlockGemmQ8(format.type, format.blocks.data(), format.row_bytes, rows,
                                                  packed.data(), 3, cols, tiles));
    ASSERT_TRUE(kernels::internal::AmxBlockGemmQ8(format.type, format.blocks.data(), format.row_bytes, rows,
                                                  packed.data() + 2 * group_bytes, 1, cols, last));
    std::vector<float> want(kBatch * rows);
    for (size_t k = 0; k < kBatch; ++k) {
      for (size_t r = 0; r < rows; ++r) {
        ASSERT_TRUE(kernels::internal::BlockDotQ8Scalar(format.type, format.blocks.data() + r * format.row_bytes,
                                                        qx.data() + k * stride, stride, 1, cols, &want[k * rows + r]));
        EXPECT_EQ(tiles[k * 16 + r], want[k * rows + r]) << "activation row " << k << ", weight row " << r;
        if (k >= 32) {
          EXPECT_EQ(last[(k - 32) * 16 + r], want[k * rows + r]) << "activation row " << k << ", weight row " << r;
        }
      }
    }
    // Through MatMul: from AmxMinRows activation rows on, the AMX results; below, the VNNI kernels' (within rounding).
    kernels::CpuContext ctx;
    ctx.isa = kernels::Isa::kAvx512;  // AMX runs beside the AVX-512 table (whatever EXPERTSTORE_CPU_ISA caps)
    ctx.q8_activations = true;
    kernels::WeightMatrix w{format.blocks.data(), DType::kUnknown, rows, cols, format.type};
    const size_t min_rows = kernels::internal::AmxMinRows(format.type);
    for (size_t batch : {size_t{2}, min_rows - 1, min_rows, kBatch}) {
      std::vector<float> got(batch * rows);
      ASSERT_TRUE(kernels::MatMul(ctx, x.data(), batch, w, got.data()).ok());
      for (size_t b = 0; b < batch; ++b) {
        for (size_t r = 0; r < rows; ++r) {
          if (batch >= min_rows) {
            EXPECT_EQ(got[b * rows + r], want[b * rows + r]) << "batch " << batch << " row " << b << "," << r;
          } else {
            EXPECT_NEAR(got[b * rows + r], want[b * rows + r], 1e-4 * std::fabs(want[b * rows + r]) + 1e-4)
                << "batch " << batch;
          }
        }
      }
    }
  }
  EXPECT_EQ(types, 4u);
}

TEST(GgmlBlocksTest, RefusesWrongSizesAndUnsupportedTypes) {
  std::vector<std::byte> row(34);
  std::vector<float> out(32);
  EXPECT_TRUE(DequantizeGgmlRow(GgmlType::kQ8_0, row, out).ok());
  EXPECT_TRUE(DequantizeGgmlRow(GgmlType::kQ8_0, std::span(row).first(33), out).IsInvalidArgument());
  std::vector<float> ragged(40);
  EXPECT_TRUE(DequantizeGgmlRow(GgmlType::kQ8_0, row, ragged).IsInvalidArgument());
  std::vector<std::byte> q2(84);
  std::vector<float> out256(256);
  EXPECT_TRUE(DequantizeGgmlRow(GgmlType::kQ2_K, q2, out256).IsNotSupported());
}

}  // namespace
}  // namespace es
