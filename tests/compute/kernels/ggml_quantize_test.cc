// The block quantizers against llama.cpp: on the rows llama.cpp's quantizer encoded (tests/ingest/gguf_fixtures/
// blocks, from the F32 original.f32), the 32-value formats and F16/BF16 must give its bytes exactly; the
// super-block and IQ4 formats, our own fit, must come as close to the original as ggml's encoding of the same
// rows does. And every format round-trips through the decoder within its step.
#include "compute/kernels/ggml_quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "compute/kernels/ggml_blocks.h"
#include "tests/util/block_fixtures.h"

namespace es {
namespace {

using testing::BlockFixtures;
using testing::BlockFormat;
using testing::LoadBlockFixtures;

bool ExactWithGgml(GgmlType t) {
  switch (t) {
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return true;
    default:
      return false;
  }
}

double Rmse(const std::vector<float>& a, const std::vector<float>& b) {
  double sq = 0;
  for (size_t i = 0; i < a.size(); ++i) sq += (a[i] - static_cast<double>(b[i])) * (a[i] - static_cast<double>(b[i]));
  return std::sqrt(sq / static_cast<double>(a.size()));
}

std::vector<float> Decode(GgmlType type, const std::vector<std::byte>& bytes, size_t rows, size_t cols) {
  std::vector<float> out(rows * cols);
  const size_t row_bytes = bytes.size() / rows;
  for (size_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(DequantizeGgmlRow(type, std::span(bytes).subspan(r * row_bytes, row_bytes),
                                  std::span(out).subspan(r * cols, cols))
                    .ok());
  }
  return out;
}

std::vector<std::byte> Encode(GgmlType type, const std::vector<float>& values, size_t rows, size_t cols) {
  const size_t row_bytes = *GgmlRowBytes(type, cols);
  std::vector<std::byte> out(rows * row_bytes);
  for (size_t r = 0; r < rows; ++r) {
    Status s = QuantizeGgmlRow(type, std::span(values).subspan(r * cols, cols),
                               std::span(out).subspan(r * row_bytes, row_bytes));
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return out;
}

TEST(GgmlQuantizeTest, MatchesLlamaCppOnTheRowsItQuantized) {
  BlockFixtures f;
  ASSERT_NO_FATAL_FAILURE(LoadBlockFixtures(&f));
  size_t exact = 0, fitted = 0;
  for (const BlockFormat& format : f.formats) {
    SCOPED_TRACE(format.name);
    ASSERT_TRUE(CanQuantizeGgml(format.type));
    const std::vector<std::byte> ours = Encode(format.type, f.original, f.rows, f.cols);
    const std::vector<float> decoded = Decode(format.type, ours, f.rows, f.cols);
    const double our_rmse = Rmse(decoded, f.original), ggml_rmse = Rmse(format.ggml_decoded, f.original);
    if (ExactWithGgml(format.type)) {
      ASSERT_EQ(ours.size(), format.blocks.size());
      size_t differing = 0;
      for (size_t i = 0; i < ours.size(); ++i) differing += static_cast<uint8_t>(ours[i]) != static_cast<uint8_t>(format.blocks[i]);
      EXPECT_EQ(differing, 0u);
      ++exact;
    } else {
      // Our own fit: no worse than ggml's on the same rows (within 3%), and not a trivial one either.
      EXPECT_LE(our_rmse, ggml_rmse * 1.03) << "ggml " << ggml_rmse;
      EXPECT_GT(our_rmse, 0);
      ++fitted;
    }
    std::printf("%-7s rmse ours %.6g  ggml %.6g  (%.3fx)\n", format.name.c_str(), our_rmse, ggml_rmse,
                our_rmse / ggml_rmse);
  }
  EXPECT_EQ(exact, 7u);
  EXPECT_EQ(fitted, 5u);  // Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS
}

// Random rows of several shapes and scales, zeros and constants included: each format decodes back within its
// resolution, and the exact formats stay exact on values that are already on their grid.
TEST(GgmlQuantizeTest, RoundTripsWithinEachFormatsStep) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const GgmlType types[] = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
                            GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K, GgmlType::kIQ4_NL, GgmlType::kIQ4_XS,
                            GgmlType::kF16,  GgmlType::kBF16, GgmlType::kF32};
  // Relative RMSE each may reach on Gaussian rows (a 4-bit grid over about 6 sigma, a 5-bit, 6-bit, 8-bit one).
  auto bound = [](GgmlType t) {
    switch (t) {
      case GgmlType::kQ8_0: return 0.01;
      case GgmlType::kQ6_K: return 0.03;
      case GgmlType::kQ5_0: case GgmlType::kQ5_1: case GgmlType::kQ5_K: return 0.06;
      case GgmlType::kF16: return 1e-3;
      case GgmlType::kBF16: return 5e-3;
      case GgmlType::kF32: return 0.0;
      default: return 0.12;
    }
  };
  for (GgmlType type : types) {
    SCOPED_TRACE(GgmlTypeInfoOf(type).name);
    for (float scale : {1e-3f, 0.05f, 3.0f}) {
      const size_t cols = 512, rows = 4;
      std::vector<float> x(rows * cols);
      for (float& v : x) v = scale * normal(rng);
      std::fill(x.begin() + cols, x.begin() + cols + 256, 0.0f);      // a zero super-block
      std::fill(x.begin() + 2 * cols, x.begin() + 2 * cols + 32, 0.7f * scale);  // a constant block
      const std::vector<float> y = Decode(type, Encode(type, x, rows, cols), rows, cols);
      double rms = 0;
      for (float v : x) rms += static_cast<double>(v) * v;
      rms = std::sqrt(rms / static_cast<double>(x.size()));
      EXPECT_LE(Rmse(y, x), bound(type) * rms) << "scale " << scale;
      for (size_t i = cols; i < cols + 256; ++i) ASSERT_EQ(y[i], 0.0f) << i;  // zeros stay zeros
    }
  }
}

TEST(GgmlQuantizeTest, RefusesWhatItCannotEncode) {
  std::vector<float> x(256, 1.0f);
  std::vector<std::byte> row(*GgmlRowBytes(GgmlType::kQ4_K, 256));
  EXPECT_TRUE(QuantizeGgmlRow(GgmlType::kQ4_K, std::span(x).first(128), row).IsInvalidArgument());  // half a block
  EXPECT_TRUE(QuantizeGgmlRow(GgmlType::kQ4_K, x, std::span(row).first(row.size() - 1)).IsInvalidArgument());
  x[3] = std::nanf("");
  EXPECT_TRUE(QuantizeGgmlRow(GgmlType::kQ4_K, x, row).IsInvalidArgument());
  x[3] = 1.0f;
  EXPECT_TRUE(QuantizeGgmlRow(GgmlType::kQ4_K, x, row).ok());
  EXPECT_FALSE(CanQuantizeGgml(GgmlType::kQ2_K));
  std::vector<std::byte> q2(*GgmlRowBytes(GgmlType::kQ2_K, 256));
  EXPECT_TRUE(QuantizeGgmlRow(GgmlType::kQ2_K, x, q2).IsNotSupported());
}

}  // namespace
}  // namespace es
