// The AVX2 path (with FMA and F16C): 8 fp32 lanes; the tail of a row goes through a zero-padded copy because
// AVX2 has no masked 16-bit load. Compiled with -mavx2 -mfma -mf16c and reached only after the CPU check in
// cpu_kernels.cc. Everything here has internal linkage and uses no inline library code (see isa_ops.h).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "compute/kernels/isa_ops.h"

namespace es::kernels::internal {
namespace {

constexpr size_t kWidth = 8;   // fp32 lanes in a ymm register
constexpr int kRowTile = 4;    // weight rows per micro-tile
constexpr int kBatchTile = 2;  // activation rows per micro-tile: 8 accumulators + 4 weights + 1 x of 16 ymm

constexpr size_t kCacheLine = 64;

template <DType kW>
constexpr size_t kElemBytes = kW == DType::kF32 ? sizeof(float) : sizeof(uint16_t);

// Eight weights starting at element k of a row, widened to fp32.
template <DType kW>
__m256 LoadW(const void* row, size_t k);
template <>
__m256 LoadW<DType::kF32>(const void* row, size_t k) {
  return _mm256_loadu_ps(static_cast<const float*>(row) + k);
}
template <>
__m256 LoadW<DType::kBF16>(const void* row, size_t k) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
template <>
__m256 LoadW<DType::kF16>(const void* row, size_t k) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k)));
}

// The last `count` (< 8) weights of a row, zero-padded to a full vector.
template <DType kW>
__m256 LoadWTail(const void* row, size_t k, size_t count) {
  alignas(32) uint8_t padded[kWidth * sizeof(float)] = {};
  std::memcpy(padded, static_cast<const uint8_t*>(row) + k * kElemBytes<kW>, count * kElemBytes<kW>);
  return LoadW<kW>(padded, 0);
}

__m256 LoadTail(const float* p, size_t count) {
  alignas(32) float padded[kWidth] = {};
  std::memcpy(padded, p, count * sizeof(float));
  return _mm256_load_ps(padded);
}

// A fixed-order horizontal sum: high half onto low half, then pairs within the 128-bit lane.
float ReduceAdd(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Where activation row b and output row b live (see MatMulArgs::x_rows, y_rows).
const float* XRow(const MatMulArgs& a, size_t b) {
  return a.x + (a.x_rows == nullptr ? b : static_cast<size_t>(a.x_rows[b])) * a.cols;
}
float* YRow(const MatMulArgs& a, size_t b) {
  return a.y + (a.y_rows == nullptr ? b : static_cast<size_t>(a.y_rows[b])) * a.rows;
}

// One micro-tile: kR weight rows from r0 against kB activation rows from b0. Every output element gets the same
// FMA sequence (one per 8-wide group of k, the tail last) and the same final reduction, whatever kR and kB are.
//
// `prefetch`, when not null, is the start of the next tile's rows (contiguous with this tile's in memory): each
// step asks for as many of its bytes as it consumes of its own, so that RAM is always being read one tile
// ahead. The hardware prefetchers alone lose track when rows are short (a [2048, 768] bf16 matrix has
// 1.5 KiB rows, several per 4 KiB page), and the decode GEMV is bound by exactly this stream.
template <DType kW, int kR, int kB>
void Tile(const MatMulArgs& a, size_t r0, size_t b0, const uint8_t* prefetch) {
  const void* w[kR];
  for (int r = 0; r < kR; ++r) w[r] = static_cast<const uint8_t*>(a.w) + (r0 + r) * a.cols * kElemBytes<kW>;
  const float* x[kB];
  for (int b = 0; b < kB; ++b) x[b] = XRow(a, b0 + b);

  __m256 acc[kR][kB];
  for (int r = 0; r < kR; ++r) {
    for (int b = 0; b < kB; ++b) acc[r][b] = _mm256_setzero_ps();
  }
  constexpr size_t kStepBytes = kR * kWidth * kElemBytes<kW>;  // weight bytes one step consumes
  size_t k = 0;
  for (; k + kWidth <= a.cols; k += kWidth) {
    if (prefetch != nullptr) {
      const uint8_t* p = prefetch + k * kR * kElemBytes<kW>;
      for (size_t off = 0; off < kStepBytes; off += kCacheLine) {
        _mm_prefetch(reinterpret_cast<const char*>(p + off), _MM_HINT_T0);
      }
    }
    __m256 wv[kR];
    for (int r = 0; r < kR; ++r) wv[r] = LoadW<kW>(w[r], k);
    for (int b = 0; b < kB; ++b) {
      const __m256 xv = _mm256_loadu_ps(x[b] + k);
      for (int r = 0; r < kR; ++r) acc[r][b] = _mm256_fmadd_ps(wv[r], xv, acc[r][b]);
    }
  }
  if (k < a.cols) {
    const size_t count = a.cols - k;
    __m256 wv[kR];
    for (int r = 0; r < kR; ++r) wv[r] = LoadWTail<kW>(w[r], k, count);
    for (int b = 0; b < kB; ++b) {
      const __m256 xv = LoadTail(x[b] + k, count);
      for (int r = 0; r < kR; ++r) acc[r][b] = _mm256_fmadd_ps(wv[r], xv, acc[r][b]);
    }
  }
  for (int b = 0; b < kB; ++b) {
    float* y = YRow(a, b0 + b) + r0;
    for (int r = 0; r < kR; ++r) {
      const float sum = ReduceAdd(acc[r][b]);
      y[r] = a.accumulate_scale == nullptr ? sum : y[r] + a.accumulate_scale[b0 + b] * sum;
    }
  }
}

using TileFn = void (*)(const MatMulArgs&, size_t, size_t, const uint8_t*);

// Indexed [rows - 1][batch - 1], so that the edges of a matrix use the same code with smaller tiles.
template <DType kW>
constexpr TileFn kTiles[kRowTile][kBatchTile] = {
    {&Tile<kW, 1, 1>, &Tile<kW, 1, 2>},
    {&Tile<kW, 2, 1>, &Tile<kW, 2, 2>},
    {&Tile<kW, 3, 1>, &Tile<kW, 3, 2>},
    {&Tile<kW, 4, 1>, &Tile<kW, 4, 2>},
};

// Batch tiles outside, row tiles inside: see isa_avx512.cc.
template <DType kW>
void MatMulRowsTyped(const MatMulArgs& a, size_t row_begin, size_t row_end) {
  for (size_t b0 = 0; b0 < a.batch; b0 += kBatchTile) {
    const size_t nb = a.batch - b0 < kBatchTile ? a.batch - b0 : kBatchTile;
    for (size_t r0 = row_begin; r0 < row_end; r0 += kRowTile) {
      const size_t nr = row_end - r0 < kRowTile ? row_end - r0 : kRowTile;
      // Only the first pass over the rows reads RAM; later batch tiles find them in L2.
      const bool prefetch = b0 == 0 && r0 + kRowTile < row_end;
      const uint8_t* next = static_cast<const uint8_t*>(a.w) + (r0 + kRowTile) * a.cols * kElemBytes<kW>;
      kTiles<kW>[nr - 1][nb - 1](a, r0, b0, prefetch ? next : nullptr);
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
  __m256 acc = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + kWidth <= n; k += kWidth) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
  if (k < n) acc = _mm256_fmadd_ps(LoadTail(a + k, n - k), LoadTail(b + k, n - k), acc);
  return ReduceAdd(acc);
}

void Axpy(float alpha, const float* x, float* y, size_t n) {
  const __m256 av = _mm256_set1_ps(alpha);
  size_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  if (i < n) {
    alignas(32) float out[kWidth];
    _mm256_store_ps(out, _mm256_fmadd_ps(av, LoadTail(x + i, n - i), LoadTail(y + i, n - i)));
    std::memcpy(y + i, out, (n - i) * sizeof(float));
  }
}

void ToF32(const void* src, DType dtype, size_t n, float* dst) {
  const auto* h = static_cast<const uint16_t*>(src);
  size_t i = 0;
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::kBF16:
      for (; i + kWidth <= n; i += kWidth) _mm256_storeu_ps(dst + i, LoadW<DType::kBF16>(h, i));
      break;
    case DType::kF16:
      for (; i + kWidth <= n; i += kWidth) _mm256_storeu_ps(dst + i, LoadW<DType::kF16>(h, i));
      break;
    default: return;
  }
  if (i < n) {
    alignas(32) float out[kWidth];
    _mm256_store_ps(out, dtype == DType::kBF16 ? LoadWTail<DType::kBF16>(h, i, n - i)
                                               : LoadWTail<DType::kF16>(h, i, n - i));
    std::memcpy(dst + i, out, (n - i) * sizeof(float));
  }
}

// Round to nearest even on the dropped 16 bits; NaNs keep their sign and top payload and are made quiet.
__m128i F32ToBf16x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x0040));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i result = _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
  // Every 32-bit lane holds a value below 2^16, so unsigned saturation packs it exactly; packus works per
  // 128-bit half, so gather the two halves' results first.
  return _mm_packus_epi32(_mm256_castsi256_si128(result), _mm256_extracti128_si256(result, 1));
}

void FromF32(const float* src, size_t n, DType dtype, void* dst) {
  auto* h = static_cast<uint16_t*>(dst);
  size_t i = 0;
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::kBF16:
      for (; i + kWidth <= n; i += kWidth) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), F32ToBf16x8(_mm256_loadu_ps(src + i)));
      }
      break;
    case DType::kF16:
      for (; i + kWidth <= n; i += kWidth) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
      }
      break;
    default: return;
  }
  if (i < n) {
    const __m256 v = LoadTail(src + i, n - i);
    alignas(16) uint16_t out[kWidth];
    _mm_store_si128(reinterpret_cast<__m128i*>(out),
                    dtype == DType::kBF16 ? F32ToBf16x8(v) : _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    std::memcpy(h + i, out, (n - i) * sizeof(uint16_t));
  }
}

}  // namespace

const IsaOps kAvx2Ops = {&MatMulRows, &Dot, &Axpy, &ToF32, &FromF32};

}  // namespace es::kernels::internal
