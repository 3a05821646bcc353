// The portable path: plain C++ compiled for the baseline target, used where no SIMD extension is present and as
// the yardstick for the others. Sums keep eight partial sums (lane j takes k = j mod 8) so that the compiler may
// vectorise them without changing any result.
#include <cmath>
#include <cstring>

#include "store/base/float16.h"
#include "compute/kernels/isa_ops.h"

namespace es::kernels::internal {
namespace {

constexpr size_t kLanes = 8;      // partial sums per dot product
constexpr size_t kBatchTile = 4;  // activation rows that share one pass over a weight row

template <DType kW>
float LoadWeight(const void* row, size_t k);
template <>
float LoadWeight<DType::kF32>(const void* row, size_t k) {
  return static_cast<const float*>(row)[k];
}
template <>
float LoadWeight<DType::kBF16>(const void* row, size_t k) {
  return Bf16ToF32(static_cast<const uint16_t*>(row)[k]);
}
template <>
float LoadWeight<DType::kF16>(const void* row, size_t k) {
  return F16ToF32(static_cast<const uint16_t*>(row)[k]);
}

// The fixed pairwise order in which the eight lanes are added up.
float ReduceLanes(const float* lane) {
  const float s0 = lane[0] + lane[4];
  const float s1 = lane[1] + lane[5];
  const float s2 = lane[2] + lane[6];
  const float s3 = lane[3] + lane[7];
  return (s0 + s2) + (s1 + s3);
}

// Where activation row b and output row b live (see MatMulArgs::x_rows, y_rows).
const float* XRow(const MatMulArgs& a, size_t b) {
  return a.x + (a.x_rows == nullptr ? b : static_cast<size_t>(a.x_rows[b])) * a.cols;
}
float* YRow(const MatMulArgs& a, size_t b) {
  return a.y + (a.y_rows == nullptr ? b : static_cast<size_t>(a.y_rows[b])) * a.rows;
}

template <DType kW>
void MatMulRowsTyped(const MatMulArgs& a, size_t row_begin, size_t row_end) {
  const size_t row_bytes = a.cols * DTypeSize(kW);
  for (size_t b0 = 0; b0 < a.batch; b0 += kBatchTile) {
    const size_t nb = a.batch - b0 < kBatchTile ? a.batch - b0 : kBatchTile;
    const float* xs[kBatchTile];
    for (size_t b = 0; b < nb; ++b) xs[b] = XRow(a, b0 + b);
    for (size_t r = row_begin; r < row_end; ++r) {
      const void* row = static_cast<const uint8_t*>(a.w) + r * row_bytes;
      float acc[kBatchTile][kLanes] = {};
      size_t k0 = 0;
      for (; k0 + kLanes <= a.cols; k0 += kLanes) {
        float w[kLanes];
        for (size_t j = 0; j < kLanes; ++j) w[j] = LoadWeight<kW>(row, k0 + j);
        for (size_t b = 0; b < nb; ++b) {
          for (size_t j = 0; j < kLanes; ++j) acc[b][j] += w[j] * xs[b][k0 + j];
        }
      }
      for (size_t b = 0; b < nb; ++b) {
        for (size_t k = k0; k < a.cols; ++k) acc[b][k - k0] += LoadWeight<kW>(row, k) * xs[b][k];
        const float sum = ReduceLanes(acc[b]);
        float* y = YRow(a, b0 + b) + r;
        *y = a.accumulate_scale == nullptr ? sum : *y + a.accumulate_scale[b0 + b] * sum;
      }
    }
  }
}

void MatMulRows(const MatMulArgs& a, size_t row_begin, size_t row_end) {
  switch (a.dtype) {
    case DType::kF32: return MatMulRowsTyped<DType::kF32>(a, row_begin, row_end);
    case DType::kBF16: return MatMulRowsTyped<DType::kBF16>(a, row_begin, row_end);
    case DType::kF16: return MatMulRowsTyped<DType::kF16>(a, row_begin, row_end);
    default: return;  // rejected by the caller
  }
}

float Dot(const float* a, const float* b, size_t n) {
  float acc[kLanes] = {};
  size_t k0 = 0;
  for (; k0 + kLanes <= n; k0 += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) acc[j] += a[k0 + j] * b[k0 + j];
  }
  for (size_t k = k0; k < n; ++k) acc[k - k0] += a[k] * b[k];
  return ReduceLanes(acc);
}

void Scores(const float* q, size_t heads, const float* k, size_t k_stride, size_t count, size_t dim, float scale,
            float* out, size_t out_stride) {
  for (size_t h = 0; h < heads; ++h) {
    for (size_t j = 0; j < count; ++j) out[h * out_stride + j] = Dot(q + h * dim, k + j * k_stride, dim) * scale;
  }
}

float Max(const float* x, size_t n) {
  float m = x[0];
  for (size_t i = 1; i < n; ++i) m = x[i] > m || m != m ? x[i] : m;  // m != m: skip a leading NaN
  return m;
}

float ExpShifted(const float* s, float shift, size_t n, float* p) {
  float sum = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    p[i] = std::exp(s[i] - shift);
    sum += p[i];
  }
  return sum;
}

void WeightedSum(const float* p, size_t p_stride, size_t heads, const float* v, size_t v_stride, size_t count,
                 size_t dim, const float* acc_scale, float* acc) {
  for (size_t h = 0; h < heads; ++h) {
    float* acc_h = acc + h * dim;
    const float* p_h = p + h * p_stride;
    for (size_t i = 0; i < dim; ++i) acc_h[i] *= acc_scale[h];
    for (size_t j = 0; j < count; ++j) {
      const float* vj = v + j * v_stride;
      for (size_t i = 0; i < dim; ++i) acc_h[i] += p_h[j] * vj[i];
    }
  }
}

void ToF32(const void* src, DType dtype, size_t n, float* dst) {
  const auto* h = static_cast<const uint16_t*>(src);
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::kBF16: for (size_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(h[i]); return;
    case DType::kF16: for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(h[i]); return;
    default: return;
  }
}

void FromF32(const float* src, size_t n, DType dtype, void* dst) {
  auto* h = static_cast<uint16_t*>(dst);
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::kBF16: for (size_t i = 0; i < n; ++i) h[i] = F32ToBf16(src[i]); return;
    case DType::kF16: for (size_t i = 0; i < n; ++i) h[i] = F32ToF16(src[i]); return;
    default: return;
  }
}

}  // namespace

const IsaOps kScalarOps = {&MatMulRows, &Dot, &Scores, &Max, &ExpShifted, &WeightedSum, &ToF32, &FromF32, nullptr, &BlockDotQ8Scalar};

}  // namespace es::kernels::internal
