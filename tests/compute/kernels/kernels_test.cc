// Tests es_kernels: every kernel on every instruction set this CPU has (each forced explicitly) against a plain
// double-precision reference on fresh random inputs, by relative L2 error with a tolerance stated per dtype.
// Outputs are poisoned with NaN first, so an element a kernel forgets to write fails; NaN anywhere fails; the
// bits must not depend on the pool's thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "compute/kernels/cpu_kernels.h"
#include "store/base/float16.h"
#include "compute/kernels/isa_ops.h"
#include "compute/kernels/parallel.h"
#include "tests/util/tensors.h"

namespace es::kernels {

// So that gtest names the parameter in failure messages (found by ADL, hence outside the anonymous namespace).
void PrintTo(Isa isa, std::ostream* os) { *os << IsaName(isa); }

namespace {

using ::es::testing::RandomFloats;
using ::es::testing::RelativeL2;

constexpr Isa kAllIsas[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512};
constexpr DType kWeightDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
// A quiet NaN with a recognisable payload: what every output holds before a kernel runs.
constexpr uint32_t kPoisonBits = 0x7FC0DEADu;
// Extra elements after each output, which must still hold the poison afterwards.
constexpr size_t kGuard = 19;
// Thread counts compared bit for bit; 3 and 5 make uneven splits.
constexpr size_t kThreadCounts[] = {1, 2, 3, 5};

// Relative L2 error allowed against the double reference. The reference uses the very same (already rounded)
// weights, so the dtype does not widen the budget: what is left is fp32 accumulation over up to a few thousand
// terms (~sqrt(n) * 2^-24 relative) and, for the nonlinear kernels, fp32 exp/sqrt. Observed errors are 5 to 20
// times below these (at most 3e-7 for matmul, 5e-7 for attention).
double MatMulTolerance(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 3e-6;
    case DType::kF16: return 3e-6;
    case DType::kBF16: return 3e-6;
    default: return 0;
  }
}
constexpr double kExpertTolerance = 5e-6;     // two matmuls plus an fp32 exp per intermediate element
constexpr double kRmsNormTolerance = 1e-6;    // one fp32 sum of squares and a few roundings per element
constexpr double kRopeTolerance = 1e-6;       // cos/sin rounded to fp32 once, two products and a sum
constexpr double kAttentionTolerance = 5e-6;  // dot products, fp32 exp and the online rescaling
constexpr double kRouterTolerance = 1e-6;     // fp32 exp and one division per probability

float Poison() { return std::bit_cast<float>(kPoisonBits); }

std::vector<float> PoisonedOutput(size_t n) { return std::vector<float>(n + kGuard, Poison()); }

// Every element of out[0, n) is a number; the guard after it is untouched.
void ExpectWrittenAndFinite(const std::vector<float>& out, size_t n, const std::string& what) {
  ASSERT_EQ(out.size(), n + kGuard);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_FALSE(std::isnan(out[i])) << what << ": element " << i << " is NaN (unwritten or computed)";
    ASSERT_TRUE(std::isfinite(out[i])) << what << ": element " << i << " is not finite";
  }
  for (size_t i = n; i < out.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), kPoisonBits) << what << ": wrote past the end at " << i;
  }
}

void ExpectClose(const std::vector<float>& actual, const std::vector<double>& expected, double tolerance,
                 const std::string& what) {
  ExpectWrittenAndFinite(actual, expected.size(), what);
  if (::testing::Test::HasFatalFailure()) return;
  const double err = RelativeL2(actual, expected);
  EXPECT_LE(err, tolerance) << what << ": relative L2 error " << err;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// A weight tensor in its storage dtype, plus the exact values it holds (for the reference).
struct TestWeights {
  std::vector<uint8_t> bytes;
  std::vector<double> values;
  DType dtype;
};

// Normal(offset, scale) values rounded to dtype.
TestWeights MakeWeights(std::mt19937& rng, size_t n, DType dtype, float scale, float offset = 0.0f) {
  std::vector<float> f = RandomFloats(rng, n, scale);
  for (float& v : f) v += offset;
  TestWeights w{std::vector<uint8_t>(n * DTypeSize(dtype)), std::vector<double>(n), dtype};
  for (size_t i = 0; i < n; ++i) {
    float stored = f[i];
    if (dtype == DType::kF32) {
      std::memcpy(w.bytes.data() + 4 * i, &stored, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(f[i]) : F32ToF16(f[i]);
      std::memcpy(w.bytes.data() + 2 * i, &h, 2);
      stored = dtype == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
    }
    w.values[i] = stored;
  }
  return w;
}

WeightMatrix Matrix(const TestWeights& w, size_t rows, size_t cols) {
  return WeightMatrix{w.bytes.data(), w.dtype, rows, cols};
}

// y[b, r] = sum_k x[b, k] W[r, k] in double.
std::vector<double> RefMatMul(const std::vector<double>& x, size_t batch, const std::vector<double>& w, size_t rows,
                              size_t cols) {
  std::vector<double> y(batch * rows, 0.0);
  for (size_t b = 0; b < batch; ++b) {
    for (size_t r = 0; r < rows; ++r) {
      double s = 0;
      for (size_t k = 0; k < cols; ++k) s += x[b * cols + k] * w[r * cols + k];
      y[b * rows + r] = s;
    }
  }
  return y;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

std::unique_ptr<ComputePool> MakePool(size_t threads) {
  auto pool = ComputePool::Create(threads);
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return std::move(pool).value();
}

std::string Name(Isa isa, DType dtype) { return std::string(IsaName(isa)) + "/" + std::string(DTypeName(dtype)); }

#define SKIP_IF_UNAVAILABLE(isa) \
  if (!IsaAvailable(isa)) GTEST_SKIP() << IsaName(isa) << " is not available on this CPU or build"

// ---- float16.h: the scalar conversions everything else is checked with -------------------------------------

// The value a binary16 encodes, from its definition.
double F16Value(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  if (exp == 31) return mant == 0 ? sign * std::numeric_limits<double>::infinity() : std::nan("");
  return sign * std::ldexp(1024 + mant, exp - 25);
}

TEST(Float16Test, F16ToF32MatchesDefinitionForEveryEncoding) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const double expected = F16Value(static_cast<uint16_t>(h));
    const float got = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      EXPECT_EQ(static_cast<double>(got), expected) << std::hex << h;
      EXPECT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;
    }
  }
}

TEST(Float16Test, Bf16ToF32IsTheTopHalf) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    EXPECT_EQ(std::bit_cast<uint32_t>(Bf16ToF32(static_cast<uint16_t>(h))), h << 16);
  }
}

// Nearest-even rounding of f to a grid, computed in double: the quantum is a power of two, so q is exact.
double RoundToQuantum(double f, double quantum) { return std::nearbyint(f / quantum) * quantum; }

// Floats that exercise rounding: random bit patterns, values on and next to halfway points, and specials.
std::vector<float> TrickyFloats(std::mt19937& rng, size_t random_count) {
  std::vector<float> v;
  std::uniform_int_distribution<uint32_t> bits;
  for (size_t i = 0; i < random_count; ++i) v.push_back(std::bit_cast<float>(bits(rng)));
  for (uint32_t h = 0; h <= 0xFFFF; h += 7) {
    for (uint32_t low : {0x0000u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) {
      v.push_back(std::bit_cast<float>((h << 16) | low));
    }
  }
  for (uint32_t h = 0; h < 0x7C00; h += 3) {
    const double a = F16Value(static_cast<uint16_t>(h));
    const double b = F16Value(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((a + b) / 2);
    v.push_back(mid);
    v.push_back(std::nextafter(mid, 0.0f));
    v.push_back(std::nextafter(mid, 1e30f));
    v.push_back(-mid);
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float f : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(), 65504.0f, 65519.99f, 65520.0f,
                  -65520.0f, 1e-8f, 2.9802322e-8f, 5.9604645e-8f, std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min()}) {
    v.push_back(f);
  }
  return v;
}

TEST(Float16Test, F32ToBf16RoundsToNearestEven) {
  std::mt19937 rng(1);
  for (float f : TrickyFloats(rng, 200000)) {
    const uint16_t h = F32ToBf16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToF32(h)));
      continue;
    }
    const uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7FFFFFFFu) >= 0x7F7F8000u) {  // at or past halfway to the next binade after bf16's largest
      EXPECT_TRUE(std::isinf(Bf16ToF32(h)) || (u & 0x7FFFFFFFu) == 0x7F800000u) << f;
      continue;
    }
    // The grid step at f's binade is 2^(e-7): bf16 keeps 8 significant bits.
    const int e = std::ilogb(f == 0 ? 1.0f : f);
    const double quantum = std::ldexp(1.0, std::max(e, -126) - 7);
    const double expected = RoundToQuantum(f, quantum);
    EXPECT_EQ(static_cast<double>(Bf16ToF32(h)), expected) << std::hexfloat << f;
    EXPECT_EQ(std::signbit(Bf16ToF32(h)), std::signbit(f));
  }
}

TEST(Float16Test, F32ToF16RoundsToNearestEven) {
  std::mt19937 rng(2);
  for (float f : TrickyFloats(rng, 200000)) {
    const uint16_t h = F32ToF16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(h)));
      continue;
    }
    double expected;
    if (std::fabs(f) >= 65520.0) {
      expected = std::copysign(std::numeric_limits<double>::infinity(), f);
    } else {
      const int e = f == 0 ? -14 : std::max(std::ilogb(f), -14);  // below 2^-14 the grid is the subnormal step
      expected = RoundToQuantum(f, std::ldexp(1.0, e - 10));
    }
    EXPECT_EQ(F16Value(h), expected) << std::hexfloat << f;
    EXPECT_EQ(std::signbit(F16ToF32(h)), std::signbit(f)) << std::hexfloat << f;
  }
}

// ---- Isa-parameterised kernels ------------------------------------------------------------------------------

class IsaTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override { SKIP_IF_UNAVAILABLE(GetParam()); }
  CpuContext Context(ComputePool* pool = nullptr) const { return CpuContext{GetParam(), pool}; }
};

std::string IsaParamName(const ::testing::TestParamInfo<Isa>& info) { return std::string(IsaName(info.param)); }

// Conversions: every 16-bit pattern widens exactly as the scalar definition; narrowing matches the scalar
// rounding bit for bit (NaN: stays NaN) at many lengths, so that every tail path runs.
TEST_P(IsaTest, ConversionsMatchScalarDefinition) {
  const CpuContext ctx = Context();
  std::vector<uint16_t> all(0x10000);
  std::iota(all.begin(), all.end(), 0);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    std::vector<float> out = PoisonedOutput(all.size());
    ASSERT_TRUE(ConvertToF32(ctx, all.data(), dtype, all.size(), out.data()).ok());
    for (size_t i = 0; i < all.size(); ++i) {
      const float expected = dtype == DType::kBF16 ? Bf16ToF32(all[i]) : F16ToF32(all[i]);
      if (std::isnan(expected)) {
        ASSERT_TRUE(std::isnan(out[i])) << i;
      } else {
        ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(expected)) << Name(GetParam(), dtype) << i;
      }
    }
    ASSERT_EQ(std::bit_cast<uint32_t>(out[all.size()]), kPoisonBits);
  }

  std::mt19937 rng(3);
  const std::vector<float> src = TrickyFloats(rng, 100000);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{15}, size_t{16}, size_t{17}, size_t{33}, src.size()}) {
      constexpr uint16_t kGuardBits = 0xABCD;
      std::vector<uint16_t> out(n + kGuard, kGuardBits);
      ASSERT_TRUE(ConvertFromF32(ctx, src.data(), n, dtype, out.data()).ok());
      for (size_t i = 0; i < n; ++i) {
        const uint16_t expected = dtype == DType::kBF16 ? F32ToBf16(src[i]) : F32ToF16(src[i]);
        if (std::isnan(src[i])) {
          const float back = dtype == DType::kBF16 ? Bf16ToF32(out[i]) : F16ToF32(out[i]);
          ASSERT_TRUE(std::isnan(back)) << Name(GetParam(), dtype) << " " << i;
        } else {
          ASSERT_EQ(out[i], expected) << Name(GetParam(), dtype) << " " << std::hexfloat << src[i];
        }
      }
      for (size_t i = n; i < out.size(); ++i) ASSERT_EQ(out[i], kGuardBits) << "wrote past the end";
    }
  }
}

struct MatMulShape {
  size_t batch, in, out;
};
// Odd sizes on purpose: none of 100, 37, 33, 17, 129 is a multiple of a vector width or tile.
constexpr MatMulShape kMatMulShapes[] = {
    {1, 100, 37}, {1, 1, 1}, {1, 2048, 77}, {2, 15, 3}, {3, 33, 5}, {4, 64, 64},
    {5, 17, 64},  {7, 256, 129}, {9, 160, 9}, {64, 100, 37}, {33, 768, 40},
};

TEST_P(IsaTest, MatMulMatchesDoubleReference) {
  std::mt19937 rng(10);
  for (DType dtype : kWeightDTypes) {
    for (const MatMulShape& s : kMatMulShapes) {
      const std::vector<float> x = RandomFloats(rng, s.batch * s.in);
      const TestWeights w = MakeWeights(rng, s.out * s.in, dtype, 0.05f);
      std::vector<float> y = PoisonedOutput(s.batch * s.out);
      ASSERT_TRUE(MatMul(Context(), x.data(), s.batch, Matrix(w, s.out, s.in), y.data()).ok());
      ExpectClose(y, RefMatMul(ToDouble(x), s.batch, w.values, s.out, s.in), MatMulTolerance(dtype),
                  Name(GetParam(), dtype) + " b=" + std::to_string(s.batch) + " in=" + std::to_string(s.in) +
                      " out=" + std::to_string(s.out));
    }
  }
}

TEST_P(IsaTest, MatMulBitsIndependentOfThreadCount) {
  std::mt19937 rng(11);
  for (DType dtype : kWeightDTypes) {
    for (size_t batch : {size_t{1}, size_t{6}, size_t{37}}) {
      constexpr size_t kIn = 1000, kOut = 333;
      const std::vector<float> x = RandomFloats(rng, batch * kIn);
      const TestWeights w = MakeWeights(rng, kOut * kIn, dtype, 0.05f);
      std::vector<float> first;
      for (size_t threads : kThreadCounts) {
        auto pool = MakePool(threads);
        std::vector<float> y = PoisonedOutput(batch * kOut);
        ASSERT_TRUE(MatMul(Context(pool.get()), x.data(), batch, Matrix(w, kOut, kIn), y.data()).ok());
        ExpectWrittenAndFinite(y, batch * kOut, Name(GetParam(), dtype));
        if (first.empty()) {
          first = y;
        } else {
          EXPECT_TRUE(SameBits(first, y)) << Name(GetParam(), dtype) << " batch " << batch << ": " << threads
                                          << " threads differ from 1";
        }
      }
    }
  }
}

// A row of a batch gives the same bits whether it is computed alone or with others (batch tiling is invisible).
TEST_P(IsaTest, MatMulBatchRowEqualsSingleRow) {
  std::mt19937 rng(12);
  constexpr size_t kBatch = 11, kIn = 333, kOut = 21;
  for (DType dtype : kWeightDTypes) {
    const std::vector<float> x = RandomFloats(rng, kBatch * kIn);
    const TestWeights w = MakeWeights(rng, kOut * kIn, dtype, 0.05f);
    std::vector<float> all = PoisonedOutput(kBatch * kOut);
    ASSERT_TRUE(MatMul(Context(), x.data(), kBatch, Matrix(w, kOut, kIn), all.data()).ok());
    for (size_t b = 0; b < kBatch; ++b) {
      std::vector<float> one = PoisonedOutput(kOut);
      ASSERT_TRUE(MatMul(Context(), x.data() + b * kIn, 1, Matrix(w, kOut, kIn), one.data()).ok());
      EXPECT_EQ(std::memcmp(one.data(), all.data() + b * kOut, kOut * sizeof(float)), 0) << Name(GetParam(), dtype);
    }
  }
}

struct ExpertShape {
  size_t batch, hidden, inter;
};
constexpr ExpertShape kExpertShapes[] = {{1, 64, 48}, {3, 100, 37}, {17, 130, 70}, {2, 256, 96}};

struct TestExpert {
  TestWeights gate, up, down;
  ExpertWeights View(const ExpertShape& s) const {
    return ExpertWeights{Matrix(gate, s.inter, s.hidden), Matrix(up, s.inter, s.hidden),
                         Matrix(down, s.hidden, s.inter)};
  }
};

TestExpert MakeExpert(std::mt19937& rng, const ExpertShape& s, DType dtype) {
  // Scales keep gate(x) around 1, where silu is curved, and the output of order 1.
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(s.hidden));
  const float out_scale = 1.0f / std::sqrt(static_cast<float>(s.inter));
  return TestExpert{MakeWeights(rng, s.inter * s.hidden, dtype, in_scale),
                    MakeWeights(rng, s.inter * s.hidden, dtype, in_scale),
                    MakeWeights(rng, s.hidden * s.inter, dtype, out_scale)};
}

std::vector<double> RefExpert(const TestExpert& e, const ExpertShape& s, const std::vector<double>& x) {
  const std::vector<double> g = RefMatMul(x, s.batch, e.gate.values, s.inter, s.hidden);
  const std::vector<double> u = RefMatMul(x, s.batch, e.up.values, s.inter, s.hidden);
  std::vector<double> h(g.size());
  for (size_t i = 0; i < h.size(); ++i) h[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  return RefMatMul(h, s.batch, e.down.values, s.hidden, s.inter);
}

TEST_P(IsaTest, ExpertForwardAndAccumulateMatchDoubleReference) {
  std::mt19937 rng(20);
  for (DType dtype : kWeightDTypes) {
    for (const ExpertShape& s : kExpertShapes) {
      const TestExpert e = MakeExpert(rng, s, dtype);
      const std::vector<float> x = RandomFloats(rng, s.batch * s.hidden);
      const std::vector<double> expected = RefExpert(e, s, ToDouble(x));
      std::vector<float> scratch(ExpertScratchFloats(s.batch, s.inter), Poison());
      const std::string what = Name(GetParam(), dtype) + " b=" + std::to_string(s.batch) +
                               " H=" + std::to_string(s.hidden) + " I=" + std::to_string(s.inter);

      std::vector<float> out = PoisonedOutput(s.batch * s.hidden);
      ASSERT_TRUE(ExpertForward(Context(), e.View(s), x.data(), s.batch, scratch, out.data()).ok());
      ExpectClose(out, expected, kExpertTolerance, what + " forward");

      // out = base + scale[b] * expert(x[b]).
      const std::vector<float> base = RandomFloats(rng, s.batch * s.hidden);
      const std::vector<float> scale = RandomFloats(rng, s.batch);
      std::vector<float> acc = PoisonedOutput(s.batch * s.hidden);
      std::copy(base.begin(), base.end(), acc.begin());
      std::fill(scratch.begin(), scratch.end(), Poison());
      ASSERT_TRUE(ExpertAccumulate(Context(), e.View(s), x.data(), s.batch, scale.data(), scratch, acc.data()).ok());
      std::vector<double> expected_acc(expected.size());
      for (size_t i = 0; i < expected.size(); ++i) {
        expected_acc[i] = base[i] + static_cast<double>(scale[i / s.hidden]) * expected[i];
      }
      ExpectClose(acc, expected_acc, kExpertTolerance, what + " accumulate");
    }
  }
}

// The prefill combine: tokens picked by rows (one repeated), scattered back with their own scales; equal to the
// double reference, and bit-equal to gathering the rows and calling ExpertAccumulate where no row repeats.
TEST_P(IsaTest, ExpertAccumulateRowsMatchesGatherAndReference) {
  std::mt19937 rng(22);
  constexpr size_t kTokens = 9;
  const ExpertShape s{0, 100, 37};
  for (DType dtype : kWeightDTypes) {
    const TestExpert e = MakeExpert(rng, s, dtype);
    const std::vector<float> x = RandomFloats(rng, kTokens * s.hidden);
    const std::vector<float> base = RandomFloats(rng, kTokens * s.hidden);
    const std::vector<int32_t> rows = {3, 0, 7, 3, 8};
    const std::vector<float> scale = RandomFloats(rng, rows.size());
    std::vector<float> scratch(ExpertScratchFloats(rows.size(), s.inter), Poison());
    std::vector<float> out = PoisonedOutput(kTokens * s.hidden);
    std::copy(base.begin(), base.end(), out.begin());
    ASSERT_TRUE(ExpertAccumulateRows(Context(), e.View(s), x.data(), kTokens, rows, scale.data(), scratch,
                                     out.data()).ok());

    std::vector<double> expected(base.begin(), base.end());
    for (size_t i = 0; i < rows.size(); ++i) {
      const ExpertShape one{1, s.hidden, s.inter};
      const auto* xr = x.data() + rows[i] * s.hidden;
      const std::vector<double> y = RefExpert(e, one, std::vector<double>(xr, xr + s.hidden));
      for (size_t h = 0; h < s.hidden; ++h) expected[rows[i] * s.hidden + h] += scale[i] * y[h];
    }
    ExpectClose(out, expected, kExpertTolerance, Name(GetParam(), dtype) + " rows");

    // Without the repeated row, the same as gather + ExpertAccumulate + scatter, bit for bit.
    const std::vector<int32_t> unique_rows = {3, 0, 7, 8};
    std::vector<float> scattered = base;
    ASSERT_TRUE(ExpertAccumulateRows(Context(), e.View(s), x.data(), kTokens, unique_rows, scale.data(), scratch,
                                     scattered.data()).ok());
    std::vector<float> gathered_x, gathered_out;
    for (int32_t r : unique_rows) {
      gathered_x.insert(gathered_x.end(), x.begin() + r * s.hidden, x.begin() + (r + 1) * s.hidden);
      gathered_out.insert(gathered_out.end(), base.begin() + r * s.hidden, base.begin() + (r + 1) * s.hidden);
    }
    ASSERT_TRUE(ExpertAccumulate(Context(), e.View(s), gathered_x.data(), unique_rows.size(), scale.data(), scratch,
                                 gathered_out.data()).ok());
    for (size_t i = 0; i < unique_rows.size(); ++i) {
      EXPECT_EQ(std::memcmp(scattered.data() + unique_rows[i] * s.hidden, gathered_out.data() + i * s.hidden,
                            s.hidden * sizeof(float)), 0) << Name(GetParam(), dtype) << " row " << unique_rows[i];
    }
  }
}

TEST_P(IsaTest, ExpertBitsIndependentOfThreadCount) {
  std::mt19937 rng(21);
  const ExpertShape s{5, 300, 200};
  const TestExpert e = MakeExpert(rng, s, DType::kBF16);
  const std::vector<float> x = RandomFloats(rng, s.batch * s.hidden);
  const std::vector<float> scale = RandomFloats(rng, s.batch);
  std::vector<float> first;
  for (size_t threads : kThreadCounts) {
    auto pool = MakePool(threads);
    std::vector<float> scratch(ExpertScratchFloats(s.batch, s.inter));
    std::vector<float> out = PoisonedOutput(s.batch * s.hidden);
    std::fill(out.begin(), out.begin() + s.batch * s.hidden, 0.5f);
    ASSERT_TRUE(ExpertAccumulate(Context(pool.get()), e.View(s), x.data(), s.batch, scale.data(), scratch,
                                 out.data()).ok());
    if (first.empty()) {
      first = out;
    } else {
      EXPECT_TRUE(SameBits(first, out)) << threads << " threads differ from 1";
    }
  }
}

std::vector<double> RefRmsNorm(const std::vector<float>& x, size_t rows, const std::vector<double>& w, double eps) {
  const size_t dim = w.size();
  std::vector<double> y(x.size());
  for (size_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (size_t i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (size_t i = 0; i < dim; ++i) y[r * dim + i] = w[i] * (x[r * dim + i] * inv);
  }
  return y;
}

TEST_P(IsaTest, RmsNormMatchesDoubleReference) {
  std::mt19937 rng(30);
  constexpr float kEps = 1e-6f;
  for (DType dtype : kWeightDTypes) {
    for (auto [rows, dim] : {std::pair<size_t, size_t>{1, 2048}, {3, 100}, {64, 128}, {2, 37}, {5, 1}}) {
      // Weights around 1 (as trained norms are) and inputs of varied scale, including tiny rows where eps matters.
      const TestWeights w = MakeWeights(rng, dim, dtype, 0.2f, 1.0f);
      std::vector<float> x = RandomFloats(rng, rows * dim, 3.0f);
      for (size_t i = 0; i < dim; ++i) x[i] *= 1e-4f;  // the first row is tiny
      const WeightVector wv{w.bytes.data(), dtype, dim};
      const std::string what = Name(GetParam(), dtype) + " " + std::to_string(rows) + "x" + std::to_string(dim);
      std::vector<float> y = PoisonedOutput(rows * dim);
      ASSERT_TRUE(RmsNorm(Context(), x.data(), rows, wv, kEps, y.data()).ok());
      ExpectClose(y, RefRmsNorm(x, rows, w.values, kEps), kRmsNormTolerance, what);

      // In place gives the same bits.
      std::vector<float> in_place = x;
      in_place.resize(x.size() + kGuard, Poison());
      ASSERT_TRUE(RmsNorm(Context(), in_place.data(), rows, wv, kEps, in_place.data()).ok());
      EXPECT_TRUE(SameBits(in_place, y)) << what << " in place";
    }
  }
}

TEST_P(IsaTest, RmsNormBitsIndependentOfThreadCount) {
  std::mt19937 rng(31);
  constexpr size_t kRows = 300, kDim = 128;  // per-head q norm of a prefill: many short rows
  const TestWeights w = MakeWeights(rng, kDim, DType::kBF16, 1.0f);
  const std::vector<float> x = RandomFloats(rng, kRows * kDim);
  std::vector<float> first;
  for (size_t threads : kThreadCounts) {
    auto pool = MakePool(threads);
    std::vector<float> y = PoisonedOutput(kRows * kDim);
    ASSERT_TRUE(RmsNorm(Context(pool.get()), x.data(), kRows, WeightVector{w.bytes.data(), DType::kBF16, kDim}, 1e-6f,
                        y.data()).ok());
    if (first.empty()) {
      first = y;
    } else {
      EXPECT_TRUE(SameBits(first, y)) << threads << " threads";
    }
  }
}

struct AttentionCase {
  size_t heads, kv_heads, head_dim, queries, keys;
};
constexpr AttentionCase kAttentionCases[] = {
    {4, 2, 8, 1, 1},    {4, 2, 8, 1, 7},      {4, 1, 5, 1, 200},  // decode, GQA and MQA, odd head_dim
    {32, 4, 128, 1, 300},                                       // Qwen3-30B decode shape
    {3, 3, 16, 1, 65},  {2, 2, 33, 9, 9},     {8, 2, 64, 5, 70},  // MHA; prefill; prefill chunk after a cache
    {6, 2, 17, 40, 130},
    {16, 1, 16, 3, 50},   {12, 2, 24, 1, 45},  // groups wider than one task's heads, and of 6
    {2, 1, 130, 2, 33},                         // head_dim past one block of accumulator registers
};

std::vector<double> RefAttention(const AttentionCase& c, const std::vector<float>& q, const std::vector<float>& k,
                                 const std::vector<float>& v) {
  std::vector<double> out(c.queries * c.heads * c.head_dim);
  const size_t group = c.heads / c.kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  for (size_t i = 0; i < c.queries; ++i) {
    const size_t visible = c.keys - c.queries + i + 1;
    for (size_t h = 0; h < c.heads; ++h) {
      const size_t kvh = h / group;
      std::vector<double> s(visible);
      for (size_t j = 0; j < visible; ++j) {
        double d = 0;
        for (size_t t = 0; t < c.head_dim; ++t) {
          d += static_cast<double>(q[(i * c.heads + h) * c.head_dim + t]) * k[(j * c.kv_heads + kvh) * c.head_dim + t];
        }
        s[j] = d * scale;
      }
      const double m = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - m));
      for (size_t t = 0; t < c.head_dim; ++t) {
        double o = 0;
        for (size_t j = 0; j < visible; ++j) o += s[j] / sum * v[(j * c.kv_heads + kvh) * c.head_dim + t];
        out[(i * c.heads + h) * c.head_dim + t] = o;
      }
    }
  }
  return out;
}

TEST_P(IsaTest, AttentionMatchesDoubleReference) {
  std::mt19937 rng(40);
  for (const AttentionCase& c : kAttentionCases) {
    // Scores of a few units, so the softmax is neither flat nor one-hot.
    const std::vector<float> q = RandomFloats(rng, c.queries * c.heads * c.head_dim, 1.5f);
    const std::vector<float> k = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim, 1.5f);
    const std::vector<float> v = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim);
    std::vector<float> out = PoisonedOutput(q.size());
    const AttentionShape shape{c.heads, c.kv_heads, c.head_dim};
    ASSERT_TRUE(Attention(Context(), shape, q.data(), c.queries, k.data(), v.data(), c.keys, out.data()).ok());
    ExpectClose(out, RefAttention(c, q, k, v), kAttentionTolerance,
                std::string(IsaName(GetParam())) + " heads=" + std::to_string(c.heads) + "/" +
                    std::to_string(c.kv_heads) + " d=" + std::to_string(c.head_dim) + " q=" +
                    std::to_string(c.queries) + " k=" + std::to_string(c.keys));
  }
}

// Large score gaps: a naive exp without the max subtraction would overflow to inf/NaN.
TEST_P(IsaTest, AttentionIsNumericallyStable) {
  const AttentionCase c{2, 1, 4, 1, 150};
  std::mt19937 rng(41);
  std::vector<float> q = RandomFloats(rng, c.heads * c.head_dim, 30.0f);
  std::vector<float> k = RandomFloats(rng, c.keys * c.head_dim, 30.0f);
  const std::vector<float> v = RandomFloats(rng, c.keys * c.head_dim);
  std::vector<float> out = PoisonedOutput(q.size());
  ASSERT_TRUE(Attention(Context(), AttentionShape{c.heads, c.kv_heads, c.head_dim}, q.data(), 1, k.data(), v.data(),
                        c.keys, out.data()).ok());
  ExpectClose(out, RefAttention(c, q, k, v), kAttentionTolerance, "large scores");
}

TEST_P(IsaTest, AttentionBitsIndependentOfThreadCount) {
  std::mt19937 rng(42);
  // Prefill, and decode, where the pool's size changes how a KV group's heads are split into tasks.
  for (const AttentionCase& c : {AttentionCase{8, 2, 64, 20, 90}, AttentionCase{32, 4, 128, 1, 300}}) {
    const std::vector<float> q = RandomFloats(rng, c.queries * c.heads * c.head_dim);
    const std::vector<float> k = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim);
    const std::vector<float> v = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim);
    std::vector<float> first;
    for (size_t threads : kThreadCounts) {
      auto pool = MakePool(threads);
      std::vector<float> out = PoisonedOutput(q.size());
      ASSERT_TRUE(Attention(Context(pool.get()), AttentionShape{c.heads, c.kv_heads, c.head_dim}, q.data(),
                            c.queries, k.data(), v.data(), c.keys, out.data()).ok());
      if (first.empty()) {
        first = out;
      } else {
        EXPECT_TRUE(SameBits(first, out)) << threads << " threads, " << c.queries << " queries";
      }
    }
  }
}

// A decode step over a cache equals the last row of the prefill over the same keys: causality is by position.
TEST_P(IsaTest, AttentionDecodeEqualsLastPrefillRow) {
  std::mt19937 rng(43);
  const AttentionCase c{4, 2, 32, 12, 12};
  const std::vector<float> q = RandomFloats(rng, c.queries * c.heads * c.head_dim);
  const std::vector<float> k = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim);
  const std::vector<float> v = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim);
  const AttentionShape shape{c.heads, c.kv_heads, c.head_dim};
  std::vector<float> prefill = PoisonedOutput(q.size());
  ASSERT_TRUE(Attention(Context(), shape, q.data(), c.queries, k.data(), v.data(), c.keys, prefill.data()).ok());
  for (size_t i = 0; i < c.queries; ++i) {
    std::vector<float> step = PoisonedOutput(c.heads * c.head_dim);
    const float* qi = q.data() + i * c.heads * c.head_dim;
    ASSERT_TRUE(Attention(Context(), shape, qi, 1, k.data(), v.data(), i + 1, step.data()).ok());
    EXPECT_EQ(std::memcmp(step.data(), prefill.data() + i * c.heads * c.head_dim, c.heads * c.head_dim * 4), 0) << i;
  }
}

// The vectorised exp behind the softmax: within a few ulp of the double-precision value over the range that
// matters (softmax arguments are <= 0), 0 or tiny far below, NaN kept; and the returned sum adds what was stored.
TEST_P(IsaTest, ExpShiftedIsAccurate) {
  const internal::IsaOps* ops = internal::OpsFor(GetParam());
  ASSERT_NE(ops, nullptr);
  constexpr double kMaxRelError = 5e-7;  // about 4 ulp
  std::vector<float> s;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) s.push_back(x);
  s.push_back(0.0f);
  s.push_back(-0.0f);
  std::vector<float> p = PoisonedOutput(s.size());
  ops->exp_shifted(s.data(), 0.0f, s.size(), p.data());
  for (size_t i = 0; i < s.size(); ++i) {
    const double expected = std::exp(static_cast<double>(s[i]));
    ASSERT_NEAR(p[i] / expected, 1.0, kMaxRelError) << IsaName(GetParam()) << " exp(" << s[i] << ")";
  }
  EXPECT_EQ(std::bit_cast<uint32_t>(p[s.size()]), kPoisonBits) << "wrote past the end";

  // As softmax calls it: shifted by the maximum, so every argument is <= 0 and the sum stays finite.
  constexpr float kLargest = 88.0f;  // at least every element of s
  const float sum = ops->exp_shifted(s.data(), kLargest, s.size(), p.data());
  double expected_sum = 0;
  for (size_t i = 0; i < s.size(); ++i) expected_sum += p[i];
  EXPECT_NEAR(sum / expected_sum, 1.0, 1e-5) << IsaName(GetParam());

  const std::vector<float> special = {-1000.0f, -std::numeric_limits<float>::infinity(),
                                      std::numeric_limits<float>::quiet_NaN(), -104.0f};
  std::vector<float> q(special.size());
  ops->exp_shifted(special.data(), 0.0f, special.size(), q.data());
  EXPECT_EQ(q[0], 0.0f);
  EXPECT_EQ(q[1], 0.0f);
  EXPECT_TRUE(std::isnan(q[2]));
  EXPECT_LT(q[3], 1e-38f);
  EXPECT_GE(q[3], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(AllIsas, IsaTest, ::testing::ValuesIn(kAllIsas), IsaParamName);

// ---- Kernels without per-Isa code ---------------------------------------------------------------------------

TEST(RopeTest, InverseFrequenciesMatchDefinition) {
  for (auto [head_dim, theta] : {std::pair<size_t, float>{128, 1e6f}, {64, 1e4f}, {6, 5e5f}}) {
    std::vector<float> inv(head_dim / 2);
    ASSERT_TRUE(RopeInverseFrequencies(head_dim, theta, inv).ok());
    for (size_t i = 0; i < inv.size(); ++i) {
      const double expected = std::pow(static_cast<double>(theta), -2.0 * i / static_cast<double>(head_dim));
      EXPECT_NEAR(inv[i] / expected, 1.0, 1e-6) << head_dim << " " << i;
    }
  }
}

// The reference takes transformers' fp32 angle (float(position) * inv_freq, both fp32) as the specification and
// does the rest in double; a double angle would differ by design at large positions.
TEST(RopeTest, MatchesHalfSplitReference) {
  std::mt19937 rng(50);
  for (auto [head_dim, theta] : {std::pair<size_t, float>{128, 1e6f}, {6, 1e4f}, {64, 1e4f}}) {
    const std::vector<int32_t> positions = {0, 1, 2, 17, 4095, 32767, 100000};
    constexpr size_t kHeads = 3;
    const size_t tokens = positions.size();
    const std::vector<float> x = RandomFloats(rng, tokens * kHeads * head_dim);
    std::vector<float> inv(head_dim / 2);
    ASSERT_TRUE(RopeInverseFrequencies(head_dim, theta, inv).ok());
    std::vector<double> expected(x.size());
    const size_t half = head_dim / 2;
    for (size_t t = 0; t < tokens; ++t) {
      for (size_t h = 0; h < kHeads; ++h) {
        const size_t base = (t * kHeads + h) * head_dim;
        for (size_t i = 0; i < half; ++i) {
          const double angle = static_cast<float>(positions[t]) * inv[i];  // fp32 product, as transformers
          const double x1 = x[base + i], x2 = x[base + i + half];
          expected[base + i] = x1 * std::cos(angle) - x2 * std::sin(angle);
          expected[base + i + half] = x2 * std::cos(angle) + x1 * std::sin(angle);
        }
      }
    }
    std::vector<float> y = x;
    y.resize(x.size() + kGuard, Poison());
    ASSERT_TRUE(ApplyRope(y.data(), tokens, kHeads, head_dim, positions.data(), theta).ok());
    ExpectClose(y, expected, kRopeTolerance, "rope d=" + std::to_string(head_dim));
    // Position 0 is the identity.
    EXPECT_EQ(std::memcmp(y.data(), x.data(), kHeads * head_dim * sizeof(float)), 0);
  }
}

std::vector<double> RefSoftmax(const float* logits, size_t n) {
  const double m = *std::max_element(logits, logits + n);
  std::vector<double> p(n);
  double sum = 0;
  for (size_t e = 0; e < n; ++e) sum += (p[e] = std::exp(logits[e] - m));
  for (double& x : p) x /= sum;
  return p;
}

TEST(RouterTest, TopKMatchesReference) {
  std::mt19937 rng(60);
  for (auto [experts, top_k] : {std::pair<size_t, size_t>{128, 8}, {32, 4}, {8, 2}, {60, 60}, {5, 1}}) {
    for (bool normalize : {false, true}) {
      constexpr size_t kBatch = 13;
      const std::vector<float> logits = RandomFloats(rng, kBatch * experts, 2.0f);
      std::vector<int32_t> ids(kBatch * top_k + kGuard, -1);
      std::vector<float> weights = PoisonedOutput(kBatch * top_k);
      ASSERT_TRUE(RouterTopK(logits.data(), kBatch, experts, top_k, normalize, ids.data(), weights.data()).ok());
      std::vector<double> expected_weights;
      for (size_t b = 0; b < kBatch; ++b) {
        const std::vector<double> p = RefSoftmax(logits.data() + b * experts, experts);
        std::vector<size_t> order(experts);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) { return p[a] > p[c]; });
        double top_sum = 0;
        for (size_t s = 0; s < top_k; ++s) top_sum += p[order[s]];
        for (size_t s = 0; s < top_k; ++s) {
          EXPECT_EQ(ids[b * top_k + s], static_cast<int32_t>(order[s])) << "row " << b << " slot " << s;
          expected_weights.push_back(normalize ? p[order[s]] / top_sum : p[order[s]]);
        }
      }
      ExpectClose(weights, expected_weights, kRouterTolerance, "router");
      for (size_t i = kBatch * top_k; i < ids.size(); ++i) EXPECT_EQ(ids[i], -1) << "wrote past the end";
    }
  }
}

TEST(RouterTest, TiesGoToTheLowerIndex) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, 3.0f, 0.0f};
  std::vector<int32_t> ids(3);
  std::vector<float> weights(3);
  ASSERT_TRUE(RouterTopK(logits.data(), 1, logits.size(), 3, true, ids.data(), weights.data()).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 3, 4}));
  for (float w : weights) EXPECT_FLOAT_EQ(w, 1.0f / 3.0f);
}

// ---- Argument checks ------------------------------------------------------------------------------------------

TEST(KernelArgsTest, RejectsBadArguments) {
  const CpuContext ctx{Isa::kScalar, nullptr};
  float x[8] = {}, y[8] = {};
  uint8_t bytes[64] = {};
  EXPECT_TRUE(MatMul(ctx, x, 1, WeightMatrix{bytes, DType::kI8, 2, 2}, y).IsInvalidArgument());
  EXPECT_TRUE(MatMul(ctx, x, 1, WeightMatrix{nullptr, DType::kF32, 2, 2}, y).IsInvalidArgument());
  EXPECT_TRUE(MatMul(ctx, x, 1, WeightMatrix{bytes, DType::kF32, 0, 2}, y).IsInvalidArgument());
  EXPECT_TRUE(MatMul(ctx, nullptr, 1, WeightMatrix{bytes, DType::kF32, 2, 2}, y).IsInvalidArgument());

  const WeightMatrix gate{bytes, DType::kBF16, 2, 4};
  const WeightMatrix down{bytes, DType::kBF16, 4, 2};
  std::vector<float> scratch(ExpertScratchFloats(1, 2));
  EXPECT_TRUE(ExpertForward(ctx, ExpertWeights{gate, gate, down}, x, 1, scratch, y).ok());
  EXPECT_TRUE(ExpertForward(ctx, ExpertWeights{gate, down, down}, x, 1, scratch, y).IsInvalidArgument());
  EXPECT_TRUE(ExpertForward(ctx, ExpertWeights{gate, gate, down}, x, 1, std::span(scratch).first(3), y)
                  .IsInvalidArgument());
  EXPECT_TRUE(ExpertAccumulate(ctx, ExpertWeights{gate, gate, down}, x, 1, nullptr, scratch, y).IsInvalidArgument());
  std::vector<float> scratch2(ExpertScratchFloats(2, 2));
  const int32_t good_rows[] = {0, 1};
  const int32_t bad_rows[] = {0, 2};  // 2 is outside 2 tokens
  EXPECT_TRUE(ExpertAccumulateRows(ctx, ExpertWeights{gate, gate, down}, x, 2, good_rows, x, scratch2, y).ok());
  EXPECT_TRUE(ExpertAccumulateRows(ctx, ExpertWeights{gate, gate, down}, x, 2, bad_rows, x, scratch2, y)
                  .IsInvalidArgument());

  EXPECT_TRUE(RmsNorm(ctx, x, 1, WeightVector{bytes, DType::kU8, 4}, 1e-6f, y).IsInvalidArgument());
  EXPECT_TRUE(ApplyRope(x, 1, 1, 3, nullptr, 1e4f).IsInvalidArgument());
  EXPECT_TRUE(ApplyRope(x, 1, 1, 2 * kMaxHeadDim, nullptr, 1e4f).IsInvalidArgument());

  EXPECT_TRUE(Attention(ctx, AttentionShape{3, 2, 4}, x, 1, x, x, 1, y).IsInvalidArgument());
  EXPECT_TRUE(Attention(ctx, AttentionShape{2, 2, 4}, x, 2, x, x, 1, y).IsInvalidArgument());
  EXPECT_TRUE(Attention(ctx, AttentionShape{2, 2, 0}, x, 1, x, x, 1, y).IsInvalidArgument());

  int32_t ids[2];
  EXPECT_TRUE(RouterTopK(x, 1, 4, 5, true, ids, y).IsInvalidArgument());
  EXPECT_TRUE(RouterTopK(x, 1, 4, 0, true, ids, y).IsInvalidArgument());

  EXPECT_TRUE(ConvertToF32(ctx, bytes, DType::kI32, 4, y).IsInvalidArgument());
  EXPECT_TRUE(ConvertFromF32(ctx, x, 4, DType::kF8E4M3, bytes).IsInvalidArgument());
}

TEST(KernelArgsTest, UnavailableIsaIsNotSupported) {
  for (Isa isa : kAllIsas) {
    if (IsaAvailable(isa)) continue;
    float x[4] = {}, y[4] = {};
    const Status s = MatMul(CpuContext{isa, nullptr}, x, 1, WeightMatrix{x, DType::kF32, 1, 4}, y);
    EXPECT_TRUE(s.IsNotSupported()) << IsaName(isa) << ": " << s.ToString();
  }
  EXPECT_TRUE(IsaAvailable(Isa::kScalar));
  EXPECT_TRUE(IsaAvailable(BestIsa()));
}

// Run by ctest a second time with EXPERTSTORE_CPU_ISA=scalar (see CMakeLists.txt).
TEST(KernelArgsTest, EnvironmentCapsBestIsa) {
  const char* env = std::getenv("EXPERTSTORE_CPU_ISA");
  if (env == nullptr) GTEST_SKIP() << "EXPERTSTORE_CPU_ISA is not set";
  for (Isa isa : kAllIsas) {
    if (IsaName(isa) == env && IsaAvailable(isa)) {
      EXPECT_EQ(BestIsa(), isa);
    }
  }
  EXPECT_EQ(CpuContext{}.isa, BestIsa());
}

// ---- ComputePool ----------------------------------------------------------------------------------------------

TEST(ComputePoolTest, EveryIndexExactlyOnce) {
  for (size_t threads : {size_t{1}, size_t{2}, size_t{4}}) {
    auto pool = MakePool(threads);
    ASSERT_EQ(pool->threads(), threads);
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{4099}}) {
      for (size_t grain : {size_t{0}, size_t{1}, size_t{3}, size_t{64}, size_t{5000}}) {
        std::vector<std::atomic<int>> hits(n);
        pool->ParallelFor(n, grain, [&](size_t begin, size_t end) {
          EXPECT_LT(begin, end);
          EXPECT_LE(end - begin, std::max<size_t>(grain, 1));
          for (size_t i = begin; i < end; ++i) hits[i].fetch_add(1);
        });
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " grain=" << grain << " i=" << i;
      }
    }
  }
}

TEST(ComputePoolTest, NestedAndConcurrentCallsComplete) {
  auto pool = MakePool(3);
  std::atomic<size_t> total{0};
  auto work = [&] {
    for (int round = 0; round < 200; ++round) {
      pool->ParallelFor(8, 1, [&](size_t, size_t) {
        pool->ParallelFor(4, 1, [&](size_t b, size_t e) { total.fetch_add(e - b); });
      });
    }
  };
  std::thread other(work);
  work();
  other.join();
  EXPECT_EQ(total.load(), size_t{2 * 200 * 8 * 4});
}

}  // namespace
}  // namespace es::kernels
