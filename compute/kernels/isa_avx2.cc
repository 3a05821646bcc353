// The AVX2 path (with FMA and F16C): 8 fp32 lanes; the tail of a row goes through a zero-padded copy because
// AVX2 has no masked 16-bit load. Compiled with -mavx2 -mfma -mf16c and reached only after the CPU check in
// cpu_kernels.cc. Everything here has internal linkage and uses no inline library code (see isa_ops.h).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "compute/kernels/ggml_blocks.h"
#include "compute/kernels/isa_ops.h"

namespace es::kernels::internal {
namespace {

// Marks a loop over a template constant. GCC keeps an array of vector accumulators in registers only when
// such loops are unrolled before its scalar replacement pass; otherwise it shadows them on the stack and
// stores them on every iteration of the hot loop.
#define ES_UNROLL _Pragma("GCC unroll 16")

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
  ES_UNROLL
  for (int r = 0; r < kR; ++r) w[r] = static_cast<const uint8_t*>(a.w) + (r0 + r) * a.cols * kElemBytes<kW>;
  const float* x[kB];
  ES_UNROLL
  for (int b = 0; b < kB; ++b) x[b] = XRow(a, b0 + b);

  __m256 acc[kR][kB];
  ES_UNROLL
  for (int r = 0; r < kR; ++r) {
    ES_UNROLL
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
    ES_UNROLL
    for (int r = 0; r < kR; ++r) wv[r] = LoadW<kW>(w[r], k);
    ES_UNROLL
    for (int b = 0; b < kB; ++b) {
      const __m256 xv = _mm256_loadu_ps(x[b] + k);
      ES_UNROLL
      for (int r = 0; r < kR; ++r) acc[r][b] = _mm256_fmadd_ps(wv[r], xv, acc[r][b]);
    }
  }
  if (k < a.cols) {
    const size_t count = a.cols - k;
    __m256 wv[kR];
    ES_UNROLL
    for (int r = 0; r < kR; ++r) wv[r] = LoadWTail<kW>(w[r], k, count);
    ES_UNROLL
    for (int b = 0; b < kB; ++b) {
      const __m256 xv = LoadTail(x[b] + k, count);
      ES_UNROLL
      for (int r = 0; r < kR; ++r) acc[r][b] = _mm256_fmadd_ps(wv[r], xv, acc[r][b]);
    }
  }
  ES_UNROLL
  for (int b = 0; b < kB; ++b) {
    float* y = YRow(a, b0 + b) + r0;
    ES_UNROLL
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
      // Only the first pass over the rows reads RAM; later batch tiles find them in L2. Past row_end is the next
      // task's first tile: the one this thread probably runs next when it runs alone.
      const bool prefetch = b0 == 0 && r0 + kRowTile < a.rows;
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

// ---- Attention pieces -----------------------------------------------------------------------------------------

// Independent FMA chains a kernel keeps in flight: FMA latency (4) times the two FMA ports.
constexpr int kChains = 8;

// Scores of kG heads against kKeys keys at a time (kG * kKeys chains). Per (head, key) the operation sequence
// is Dot's: one FMA per 8-wide group of dim in order, the zero-padded tail last, then ReduceAdd.
template <int kG, int kKeys>
__attribute__((always_inline)) inline void ScoresStep(const float* q, const float* k, size_t k_stride, size_t dim,
                                                      float scale, float* out, size_t out_stride) {
  __m256 acc[kKeys][kG];
  ES_UNROLL
  for (int j = 0; j < kKeys; ++j) {
    ES_UNROLL
    for (int h = 0; h < kG; ++h) acc[j][h] = _mm256_setzero_ps();
  }
  size_t d = 0;
  for (; d + kWidth <= dim; d += kWidth) {
    ES_UNROLL
    for (int j = 0; j < kKeys; ++j) {
      const __m256 kv = _mm256_loadu_ps(k + j * k_stride + d);
      ES_UNROLL
      for (int h = 0; h < kG; ++h) acc[j][h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * dim + d), kv, acc[j][h]);
    }
  }
  if (d < dim) {
    ES_UNROLL
    for (int j = 0; j < kKeys; ++j) {
      const __m256 kv = LoadTail(k + j * k_stride + d, dim - d);
      ES_UNROLL
      for (int h = 0; h < kG; ++h) acc[j][h] = _mm256_fmadd_ps(LoadTail(q + h * dim + d, dim - d), kv, acc[j][h]);
    }
  }
  ES_UNROLL
  for (int j = 0; j < kKeys; ++j) {
    ES_UNROLL
    for (int h = 0; h < kG; ++h) out[h * out_stride + j] = ReduceAdd(acc[j][h]) * scale;
  }
}

template <int kG>
void ScoresGroup(const float* q, const float* k, size_t k_stride, size_t count, size_t dim, float scale, float* out,
                 size_t out_stride) {
  constexpr int kKeys = kChains / kG > 0 ? kChains / kG : 1;
  size_t j = 0;
  for (; j + kKeys <= count; j += kKeys) {
    ScoresStep<kG, kKeys>(q, k + j * k_stride, k_stride, dim, scale, out + j, out_stride);
  }
  for (; j < count; ++j) ScoresStep<kG, 1>(q, k + j * k_stride, k_stride, dim, scale, out + j, out_stride);
}

using ScoresFn = void (*)(const float*, const float*, size_t, size_t, size_t, float, float*, size_t);
constexpr ScoresFn kScoresGroups[kMaxGroupHeads] = {
    &ScoresGroup<1>, &ScoresGroup<2>, &ScoresGroup<3>, &ScoresGroup<4>,
    &ScoresGroup<5>, &ScoresGroup<6>, &ScoresGroup<7>, &ScoresGroup<8>,
};

void Scores(const float* q, size_t heads, const float* k, size_t k_stride, size_t count, size_t dim, float scale,
            float* out, size_t out_stride) {
  kScoresGroups[heads - 1](q, k, k_stride, count, dim, scale, out, out_stride);
}

// exp in the manner of Cephes' expf: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for exp(r), times
// 2^n built in the exponent field. The argument is clamped so that 2^n stays a normal float; results below
// that range are flushed to 0 (NaN passes max/min as the second operand and stays NaN).
__m256 Exp(__m256 x) {
  constexpr float kMinArg = -87.3365448f;  // exp(kMinArg) is the smallest normal float
  constexpr float kMaxArg = 88.3f;         // keeps n <= 127
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;   // ln 2 split so that n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr int kExponentBias = 127;
  constexpr int kMantissaBits = 23;
  constexpr float kPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                             4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(kMinArg), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_set1_ps(kMinArg), x);
  x = _mm256_min_ps(_mm256_set1_ps(kMaxArg), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 poly = _mm256_set1_ps(kPoly[0]);
  for (size_t i = 1; i < sizeof(kPoly) / sizeof(kPoly[0]); ++i) {
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(kPoly[i]));
  }
  const __m256 y = _mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(kExponentBias));
  const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(biased, kMantissaBits));
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2n));
}

float Max(const float* x, size_t n) {
  // Lanes start at -inf so that padding never wins; max_ps(v, m) keeps m where v is NaN.
  const __m256 lowest = _mm256_set1_ps(-__builtin_inff());
  __m256 m = lowest;
  size_t i = 0;
  for (; i + kWidth <= n; i += kWidth) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m);
  if (i < n) {
    alignas(32) float padded[kWidth];
    _mm256_store_ps(padded, lowest);
    std::memcpy(padded, x + i, (n - i) * sizeof(float));
    m = _mm256_max_ps(_mm256_load_ps(padded), m);
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  const float result = _mm_cvtss_f32(h);
  return result == -__builtin_inff() && x[0] != x[0] ? x[0] : result;
}

float ExpShifted(const float* s, float shift, size_t n, float* p) {
  const __m256 sv = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(s + i), sv));
    _mm256_storeu_ps(p + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (i < n) {
    alignas(32) float out[kWidth];
    _mm256_store_ps(out, Exp(_mm256_sub_ps(LoadTail(s + i, n - i), sv)));
    for (size_t lane = n - i; lane < kWidth; ++lane) out[lane] = 0.0f;  // padding lanes must not count
    std::memcpy(p + i, out, (n - i) * sizeof(float));
    sum = _mm256_add_ps(sum, _mm256_load_ps(out));
  }
  return ReduceAdd(sum);
}

// An AVX2 maskload/maskstore mask for the first `valid` (<= 8) lanes.
__m256i LaneMask(size_t valid) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), lanes);
}

// WeightedSum for kG heads over kChunks consecutive 8-wide groups of dim from d0 (kG * kChunks chains, held in
// registers across all keys). kMasked: some groups reach past dim (masked off lane by lane).
template <int kG, int kChunks, bool kMasked>
void WeightedSumStep(const float* p, size_t p_stride, const float* v, size_t v_stride, size_t count, size_t dim,
                     size_t d0, const float* acc_scale, float* acc) {
  __m256i mask[kChunks];
  ES_UNROLL
  for (int c = 0; c < kChunks; ++c) {
    const size_t begin = d0 + c * kWidth;
    mask[c] = LaneMask(begin >= dim ? 0 : dim - begin);
  }
  auto load = [&](const float* ptr, int c) {
    if constexpr (kMasked) {
      return _mm256_maskload_ps(ptr, mask[c]);
    } else {
      return _mm256_loadu_ps(ptr);
    }
  };
  __m256 a[kChunks][kG];
  ES_UNROLL
  for (int h = 0; h < kG; ++h) {
    const __m256 scale = _mm256_set1_ps(acc_scale[h]);
    ES_UNROLL
    for (int c = 0; c < kChunks; ++c) a[c][h] = _mm256_mul_ps(load(acc + h * dim + d0 + c * kWidth, c), scale);
  }
  for (size_t j = 0; j < count; ++j) {
    const float* vj = v + j * v_stride + d0;
    ES_UNROLL
    for (int c = 0; c < kChunks; ++c) {
      const __m256 vv = load(vj + c * kWidth, c);
      ES_UNROLL
      for (int h = 0; h < kG; ++h) a[c][h] = _mm256_fmadd_ps(_mm256_set1_ps(p[h * p_stride + j]), vv, a[c][h]);
    }
  }
  ES_UNROLL
  for (int h = 0; h < kG; ++h) {
    ES_UNROLL
    for (int c = 0; c < kChunks; ++c) {
      if constexpr (kMasked) {
        _mm256_maskstore_ps(acc + h * dim + d0 + c * kWidth, mask[c], a[c][h]);
      } else {
        _mm256_storeu_ps(acc + h * dim + d0 + c * kWidth, a[c][h]);
      }
    }
  }
}

template <int kG>
void WeightedSumGroup(const float* p, size_t p_stride, const float* v, size_t v_stride, size_t count, size_t dim,
                      const float* acc_scale, float* acc) {
  constexpr int kChunks = kChains / kG > 0 ? kChains / kG : 1;
  constexpr size_t kStep = kChunks * kWidth;
  for (size_t d0 = 0; d0 < dim; d0 += kStep) {
    if (d0 + kStep <= dim) {
      WeightedSumStep<kG, kChunks, false>(p, p_stride, v, v_stride, count, dim, d0, acc_scale, acc);
    } else {
      WeightedSumStep<kG, kChunks, true>(p, p_stride, v, v_stride, count, dim, d0, acc_scale, acc);
    }
  }
}

using WeightedSumFn = void (*)(const float*, size_t, const float*, size_t, size_t, size_t, const float*, float*);
constexpr WeightedSumFn kWeightedSumGroups[kMaxGroupHeads] = {
    &WeightedSumGroup<1>, &WeightedSumGroup<2>, &WeightedSumGroup<3>, &WeightedSumGroup<4>,
    &WeightedSumGroup<5>, &WeightedSumGroup<6>, &WeightedSumGroup<7>, &WeightedSumGroup<8>,
};

void WeightedSum(const float* p, size_t p_stride, size_t heads, const float* v, size_t v_stride, size_t count,
                 size_t dim, const float* acc_scale, float* acc) {
  kWeightedSumGroups[heads - 1](p, p_stride, v, v_stride, count, dim, acc_scale, acc);
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

#undef ES_UNROLL

}  // namespace

// ---- GGML blocks: decode and multiply in registers ----------------------------------------------------------

namespace {

using ggml::kIq4XsBytes;
using ggml::kQ4KBytes;
using ggml::kQ5KBytes;
using ggml::kQ6KBytes;
using ggml::kQ8Block;
using ggml::kQ8Bytes;
using ggml::kQKBlock;

using ggml::PrefetchAhead;

float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

// Eight quants widened to fp32: int8 (Q8_0) or uint8 nibbles (Q4_K), from 8 bytes at p.
__m256 Int8x8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
__m256 Uint8x8(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }

// ggml::PairScales broadcast: the same float operations as the scalar decoder.
struct ScaledPairV {
  __m256 d1, m1, d2, m2;
};
ScaledPairV PairScalesV(float d, float dmin, const uint8_t* scales, int is) {
  const ggml::ScaledPair p = ggml::PairScales(d, dmin, scales, is);
  return {_mm256_set1_ps(p.d1), _mm256_set1_ps(p.m1), _mm256_set1_ps(p.d2), _mm256_set1_ps(p.m2)};
}

}  // namespace

// Each value is decoded as the scalar reference does (q * d for Q8_0; d1 * q - m1 for Q4_K: a multiply, then a
// subtract, never fused), then multiplied with x and added into four accumulators; their fixed-order sum is the
// result.
bool BlockDotAvx2(GgmlType type, const void* row, const float* x, size_t n, float* out) {
  const auto* p = static_cast<const uint8_t*>(row);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  if (type == GgmlType::kQ8_0) {
    for (size_t b = 0; b < n / kQ8Block; ++b, p += kQ8Bytes, x += kQ8Block) {
      PrefetchAhead(p, kQ8Bytes);
      const __m256 d = _mm256_set1_ps(HalfAt(p));
      for (int k = 0; k < 4; ++k) {
        const __m256 w = _mm256_mul_ps(Int8x8(p + 2 + 8 * k), d);
        acc[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8 * k), acc[k]);
      }
    }
  } else if (type == GgmlType::kQ4_K) {
    const __m128i low_nibbles = _mm_set1_epi8(0x0F);
    for (size_t b = 0; b < n / kQKBlock; ++b, p += kQ4KBytes) {
      PrefetchAhead(p, kQ4KBytes);
      const float d = HalfAt(p), dmin = HalfAt(p + 2);
      const uint8_t* scales = p + 4;
      const uint8_t* q = p + 16;
      for (int is = 0; is < 8; is += 2, q += 32, x += 64) {
        const auto [d1, m1, d2, m2] = PairScalesV(d, dmin, scales, is);
        for (int k = 0; k < 4; ++k) {  // 8 bytes of quants: 8 low nibbles (values 8k..) and 8 high (32 + 8k..)
          const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * k));
          const __m256 lo = _mm256_sub_ps(_mm256_mul_ps(d1, Uint8x8(_mm_and_si128(bytes, low_nibbles))), m1);
          const __m256 hi =
              _mm256_sub_ps(_mm256_mul_ps(d2, Uint8x8(_mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles))), m2);
          acc[k] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + 8 * k), acc[k]);
          acc[k] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + 32 + 8 * k), acc[k]);
        }
      }
    }
  } else if (type == GgmlType::kQ5_K) {
    const __m128i low_nibbles = _mm_set1_epi8(0x0F);
    const __m256i one = _mm256_set1_epi32(1);
    for (size_t b = 0; b < n / kQKBlock; ++b, p += kQ5KBytes) {
      PrefetchAhead(p, kQ5KBytes);
      const float d = HalfAt(p), dmin = HalfAt(p + 2);
      const uint8_t* scales = p + 4;
      const uint8_t* qh = p + 16;
      const uint8_t* q = p + 48;
      for (int is = 0; is < 8; is += 2, q += 32, x += 64) {
        const auto [d1, m1, d2, m2] = PairScalesV(d, dmin, scales, is);
        for (int k = 0; k < 4; ++k) {
          const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * k));
          // Bit `is` of qh[l] is the fifth bit of the low nibble's value, bit `is + 1` of the high one's.
          const __m256i h = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qh + 8 * k)));
          const __m256i h_lo = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, is), one), 4);
          const __m256i h_hi = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, is + 1), one), 4);
          const __m256i lo_q = _mm256_add_epi32(_mm256_cvtepu8_epi32(_mm_and_si128(bytes, low_nibbles)), h_lo);
          const __m256i hi_q =
              _mm256_add_epi32(_mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles)), h_hi);
          const __m256 lo = _mm256_sub_ps(_mm256_mul_ps(d1, _mm256_cvtepi32_ps(lo_q)), m1);
          const __m256 hi = _mm256_sub_ps(_mm256_mul_ps(d2, _mm256_cvtepi32_ps(hi_q)), m2);
          acc[k] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + 8 * k), acc[k]);
          acc[k] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + 32 + 8 * k), acc[k]);
        }
      }
    }
  } else if (type == GgmlType::kIQ4_XS) {
    const __m128i low_nibbles = _mm_set1_epi8(0x0F);
    const __m128i values = _mm_load_si128(reinterpret_cast<const __m128i*>(ggml::kIq4Values));
    for (size_t b = 0; b < n / kQKBlock; ++b, p += kIq4XsBytes) {
      PrefetchAhead(p, kIq4XsBytes);
      const float d = HalfAt(p);
      const uint8_t* qs = p + 8;
      for (int ib = 0; ib < 8; ++ib, qs += 16, x += 32) {
        const __m256 dl = _mm256_set1_ps(d * static_cast<float>(ggml::Iq4XsScale(p, ib)));
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
        // The nibbles looked up in the value table: lo holds values 0-15 of the block, hi values 16-31.
        const __m128i lo = _mm_shuffle_epi8(values, _mm_and_si128(bytes, low_nibbles));
        const __m128i hi = _mm_shuffle_epi8(values, _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles));
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int k = 0; k < 4; ++k) {
          const __m256 w = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k])));
          acc[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8 * k), acc[k]);
        }
      }
    }
  } else if (type == GgmlType::kQ6_K) {
    const __m256i low4 = _mm256_set1_epi32(0xF), low2 = _mm256_set1_epi32(3), offset = _mm256_set1_epi32(32);
    auto load8 = [](const uint8_t* q) {
      return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
    };
    // (nibble | two high bits << 4) - 32, as fp32.
    auto value = [&](__m256i nibble, __m256i high) {
      return _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_or_si256(nibble, _mm256_slli_epi32(high, 4)), offset));
    };
    for (size_t b = 0; b < n / kQKBlock; ++b, p += kQ6KBytes) {
      PrefetchAhead(p, kQ6KBytes);
      const float d = HalfAt(p + 208);
      const uint8_t* ql = p;
      const uint8_t* qh = p + 128;
      const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
      for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, x += 128) {
        for (int l = 0; l < 32; l += 8) {
          const int is = l / 16;
          const __m256i a = load8(ql + l), c = load8(ql + l + 32), h = load8(qh + l);
          const __m256 q1 = value(_mm256_and_si256(a, low4), _mm256_and_si256(h, low2));
          const __m256 q2 = value(_mm256_and_si256(c, low4), _mm256_and_si256(_mm256_srli_epi32(h, 2), low2));
          const __m256 q3 = value(_mm256_srli_epi32(a, 4), _mm256_and_si256(_mm256_srli_epi32(h, 4), low2));
          const __m256 q4 = value(_mm256_srli_epi32(c, 4), _mm256_srli_epi32(h, 6));
          // d * scale first, then times the quant: the reference's order.
          const __m256 w1 = _mm256_mul_ps(_mm256_set1_ps(d * static_cast<float>(sc[is])), q1);
          const __m256 w2 = _mm256_mul_ps(_mm256_set1_ps(d * static_cast<float>(sc[is + 2])), q2);
          const __m256 w3 = _mm256_mul_ps(_mm256_set1_ps(d * static_cast<float>(sc[is + 4])), q3);
          const __m256 w4 = _mm256_mul_ps(_mm256_set1_ps(d * static_cast<float>(sc[is + 6])), q4);
          acc[0] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + l), acc[0]);
          acc[1] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x + l + 32), acc[1]);
          acc[2] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x + l + 64), acc[2]);
          acc[3] = _mm256_fmadd_ps(w4, _mm256_loadu_ps(x + l + 96), acc[3]);
        }
      }
    }
  } else {
    return false;
  }
  *out = ReduceAdd(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  return true;
}

// ---- GGML blocks times int8 activations: integer products ---------------------------------------------------

namespace {

// sum of u[i] * q[i] over each group of four bytes, as eight int32: u unsigned (at most 127 x 2 per pair, which
// stays below int16's saturation with |q| <= 127), q signed.
__m256i MulSumU(__m256i u, __m256i q) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1)); }
// The same for signed w: |w| times q with w's sign.
__m256i MulSumS(__m256i w, __m256i q) { return MulSumU(_mm256_abs_epi8(w), _mm256_sign_epi8(q, w)); }

__m256i LoadQ(const Q8Block& x) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q)); }

// The 32 nibbles of a 32-value block's 16 bytes: values 0-15 from the low nibbles, 16-31 from the high ones.
__m256i Nibbles32(const uint8_t* qs) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i low = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low), _mm_and_si128(bytes, low));
}

// Byte j is 0x10 where bit j of qh is set, else 0.
__m256i FifthBits32(const uint8_t* p) {
  uint32_t qh;
  std::memcpy(&qh, p, sizeof(qh));
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh)),
                                             _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL,
                                                                0x0303030303030303LL));
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

// The 16 IQ4 nibbles' table values, in the order of Nibbles32.
__m256i Iq4Values32(const uint8_t* qs) {
  const __m128i table = _mm_load_si128(reinterpret_cast<const __m128i*>(ggml::kIq4Values));
  const __m256i v = Nibbles32(qs);
  return _mm256_set_m128i(_mm_shuffle_epi8(table, _mm256_extracti128_si256(v, 1)),
                          _mm_shuffle_epi8(table, _mm256_castsi256_si128(v)));
}

// acc += isum (eight int32) * scale.
__m256 Fma(__m256i isum, float scale, __m256 acc) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(scale), acc);
}

// isum minus `offset` in one lane.
__m256i MinusInLane0(__m256i isum, int offset) {
  return _mm256_sub_epi32(isum, _mm256_zextsi128_si256(_mm_cvtsi32_si128(offset)));
}

}  // namespace

// ---- The super-block formats times Q8KBlocks: one integer sum per super-block ------------------------------

namespace {


// Words (16-bit lanes) of a 128-bit vector broadcast across a 256-bit one: word `lo` in the low 128 bits, word
// `hi` in the high ones, by shuffle_epi8 on a vector holding the same 128 bits twice.
__m256i WordPairMask(int lo, int hi) {
  const auto pair = [](int w) { return static_cast<short>((2 * w) | ((2 * w + 1) << 8)); };
  return _mm256_set_m128i(_mm_set1_epi16(pair(hi)), _mm_set1_epi16(pair(lo)));
}

__m256i Load32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// The kernels below take R activation rows (1..4, x_stride bytes apart; Q8KRows) per pass over a weight row: the
// weights are loaded and unpacked once for all of them, and each row's sums are its own, in the same order
// whatever R is.
// Q4_K / Q5_K: for each 64 values (the low and high nibbles of 32 bytes), maddubs with the activation quants gives
// int16 pairs, madd with the sub-block's 6-bit scale int32; the super-block's sum converts once. The minimums
// (eight per super-block) multiply the activations' exact 32-value sums in the lanes of a second accumulator.
template <int R>
void DotQ4KQ8K(const uint8_t* p, const std::byte* qx, size_t stride, size_t supers, bool five, float* out) {
  const Q8KRows<R> x(qx, stride);
  const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  __m256 acc[R], minimums[R];
  for (int k = 0; k < R; ++k) acc[k] = minimums[k] = _mm256_setzero_ps();
  for (size_t b = 0; b < supers; ++b) {
    PrefetchAhead(p, five ? kQ5KBytes : kQ4KBytes);
    uint32_t sc[2], mn[2];
    ggml::ScalesMinsK4(p + 4, sc, mn);
    const __m128i scales8 = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, static_cast<int>(sc[1]), static_cast<int>(sc[0])));
    const __m256i scales = _mm256_set_m128i(scales8, scales8);
    const __m256 mins = _mm256_mul_ps(
        _mm256_set1_ps(HalfAt(p + 2)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, static_cast<int>(mn[1]), static_cast<int>(mn[0])))));
    const __m256i qh = five ? Load32(p + 16) : _mm256_setzero_si256();
    const uint8_t* q = p + (five ? 48 : 16);
    __m256i isum[R];
    for (int k = 0; k < R; ++k) isum[k] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c, q += 32) {
      const __m256i bytes = Load32(q);
      __m256i lo = _mm256_and_si256(bytes, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      if (five) {  // bit 2c of qh[l] is the low value's fifth bit, bit 2c + 1 the high one's
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
      }
      const __m256i scale_lo = _mm256_shuffle_epi8(scales, WordPairMask(2 * c, 2 * c));
      const __m256i scale_hi = _mm256_shuffle_epi8(scales, WordPairMask(2 * c + 1, 2 * c + 1));
      for (int k = 0; k < R; ++k) {
        const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, Load32(x.q(k, b, 64 * c))), scale_lo);
        const __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, Load32(x.q(k, b, 64 * c + 32))), scale_hi);
        isum[k] = _mm256_add_epi32(isum[k], _mm256_add_epi32(plo, phi));
      }
    }
    const float d = HalfAt(p);
    for (int k = 0; k < R; ++k) {
      acc[k] = Fma(isum[k], d * x.x[k][b].d, acc[k]);
      minimums[k] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(x.x[k][b].sums), minimums[k]);
    }
    p += five ? kQ5KBytes : kQ4KBytes;
  }
  for (int k = 0; k < R; ++k) out[k] = ReduceAdd(acc[k]) - ReduceAdd(minimums[k]);
}

// Q6_K: the four 32-value groups of each 128-value half as unsigned 6-bit quants; each group's 16-value halves
// have their own int8 scale (low 128 bits, high 128 bits). The offset of 32 comes off through the activation
// quants' 16-value sums, times the scales, once per super-block.
template <int R>
void DotQ6KQ8K(const uint8_t* p, const std::byte* qx, size_t stride, size_t supers, float* out) {
  const Q8KRows<R> x(qx, stride);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i bits01 = _mm256_set1_epi8(0x03), bits23 = _mm256_set1_epi8(0x0C);
  const __m256i bits45 = _mm256_set1_epi8(0x30), bits67 = _mm256_set1_epi8(static_cast<char>(0xC0));
  __m256 acc[R];
  for (int k = 0; k < R; ++k) acc[k] = _mm256_setzero_ps();
  for (size_t b = 0; b < supers; ++b, p += kQ6KBytes) {
    PrefetchAhead(p, kQ6KBytes);
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192));
    const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    __m256i isum[R];
    for (int k = 0; k < R; ++k) {
      // -32 * sum_i16 scale[i16] * (sum of the activation quants i16 covers).
      const __m256i offsets = _mm256_madd_epi16(sc16, Load32(x.x[k][b].isum));
      isum[k] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offsets, 5));
    }
    const uint8_t* ql = p;
    const uint8_t* qh = p + 128;
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32) {
      const __m128i half_scales = _mm_cvtepi8_epi16(half == 0 ? sc8 : _mm_srli_si128(sc8, 8));
      const __m256i scales = _mm256_set_m128i(half_scales, half_scales);
      const __m256i a = Load32(ql), c = Load32(ql + 32), h = Load32(qh);
      const __m256i v[4] = {
          _mm256_or_si256(_mm256_and_si256(a, low4), _mm256_slli_epi16(_mm256_and_si256(h, bits01), 4)),
          _mm256_or_si256(_mm256_and_si256(c, low4), _mm256_slli_epi16(_mm256_and_si256(h, bits23), 2)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), low4), _mm256_and_si256(h, bits45)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(c, 4), low4),
                          _mm256_srli_epi16(_mm256_and_si256(h, bits67), 2)),
      };
      for (int g = 0; g < 4; ++g) {
        const __m256i scale = _mm256_shuffle_epi8(scales, WordPairMask(2 * g, 2 * g + 1));
        for (int k = 0; k < R; ++k) {
          const __m256i prod = _mm256_maddubs_epi16(v[g], Load32(x.q(k, b, 128 * half + 32 * g)));
          isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(prod, scale));
        }
      }
    }
    const float d = HalfAt(p + 208);
    for (int k = 0; k < R; ++k) acc[k] = Fma(isum[k], d * x.x[k][b].d, acc[k]);
  }
  for (int k = 0; k < R; ++k) out[k] = ReduceAdd(acc[k]);
}

// IQ4_XS: two 32-value sub-blocks per 32 bytes of nibbles, looked up in the value table (signed), multiplied by
// sign transfer (maddubs takes an unsigned first operand), times the sub-blocks' scales (-32..31).
template <int R>
void DotIq4XsQ8K(const uint8_t* p, const std::byte* qx, size_t stride, size_t supers, float* out) {
  const Q8KRows<R> x(qx, stride);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(ggml::kIq4Values)));
  __m256 acc[R];
  for (int k = 0; k < R; ++k) acc[k] = _mm256_setzero_ps();
  for (size_t b = 0; b < supers; ++b, p += kIq4XsBytes) {
    PrefetchAhead(p, kIq4XsBytes);
    const uint8_t* qs = p + 8;
    __m256i isum[R];
    for (int k = 0; k < R; ++k) isum[k] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ib += 2, qs += 32) {
      const __m256i bytes = Load32(qs);
      const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, low4));
      const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4));
      // Sub-block ib: values 0-15 are the low nibbles of its 16 bytes, 16-31 the high ones.
      const __m256i w[2] = {_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31)};
      for (int j = 0; j < 2; ++j) {
        const __m256i magnitude = _mm256_abs_epi8(w[j]);
        const __m256i scale = _mm256_set1_epi16(static_cast<int16_t>(ggml::Iq4XsScale(p, ib + j)));
        for (int k = 0; k < R; ++k) {
          const __m256i prod = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(Load32(x.q(k, b, 32 * (ib + j))), w[j]));
          isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(prod, scale));
        }
      }
    }
    const float d = HalfAt(p);
    for (int k = 0; k < R; ++k) acc[k] = Fma(isum[k], d * x.x[k][b].d, acc[k]);
  }
  for (int k = 0; k < R; ++k) out[k] = ReduceAdd(acc[k]);
}

// One of the kernels above for `count` (1..4) activation rows.
template <template <int> class K, typename... A>
void ForRows(size_t count, A... args) {
  switch (count) {
    case 1: return K<1>::Run(args...);
    case 2: return K<2>::Run(args...);
    case 3: return K<3>::Run(args...);
    default: return K<4>::Run(args...);
  }
}
template <int R>
struct Q4KRows {
  static void Run(const uint8_t* p, const std::byte* x, size_t s, size_t n, bool five, float* out) {
    DotQ4KQ8K<R>(p, x, s, n, five, out);
  }
};
template <int R>
struct Q6KRows {
  static void Run(const uint8_t* p, const std::byte* x, size_t s, size_t n, float* out) { DotQ6KQ8K<R>(p, x, s, n, out); }
};
template <int R>
struct Iq4XsRows {
  static void Run(const uint8_t* p, const std::byte* x, size_t s, size_t n, float* out) {
    DotIq4XsQ8K<R>(p, x, s, n, out);
  }
};

// The 32-value formats, one activation row.
float DotQ8Small(GgmlType type, const uint8_t* p, const Q8Block* x, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  float minimums = 0;  // the minimum terms, subtracted at the end
  switch (type) {
    case GgmlType::kQ8_0:
      for (size_t k = 0; k < n / 32; ++k, p += 34) {
        PrefetchAhead(p, 34);
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
        acc = Fma(MulSumS(w, LoadQ(x[k])), HalfAt(p) * x[k].d, acc);
      }
      break;
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1: {
      // d[, m][, qh], qs: Q4_0 and Q5_0 subtract a fixed offset from each quant, Q4_1 and Q5_1 add a minimum.
      const bool five = type == GgmlType::kQ5_0 || type == GgmlType::kQ5_1;
      const bool with_min = type == GgmlType::kQ4_1 || type == GgmlType::kQ5_1;
      const size_t qh_at = with_min ? 4 : 2, qs_at = qh_at + (five ? 4 : 0), block_bytes = qs_at + 16;
      const int offset = five ? 16 : 8;
      for (size_t k = 0; k < n / 32; ++k, p += block_bytes) {
        PrefetchAhead(p, block_bytes);
        __m256i v = Nibbles32(p + qs_at);
        if (five) v = _mm256_or_si256(v, FifthBits32(p + qh_at));
        __m256i isum = MulSumU(v, LoadQ(x[k]));
        if (!with_min) isum = MinusInLane0(isum, offset * (x[k].isum[0] + x[k].isum[1]));
        acc = Fma(isum, HalfAt(p) * x[k].d, acc);
        if (with_min) minimums -= HalfAt(p + 2) * x[k].sum;  // value = d * q + m
      }
      break;
    }
    case GgmlType::kIQ4_NL:
      for (size_t k = 0; k < n / 32; ++k, p += 18) {
        PrefetchAhead(p, 18);
        acc = Fma(MulSumS(Iq4Values32(p + 2), LoadQ(x[k])), HalfAt(p) * x[k].d, acc);
      }
      break;
    default: return 0;
  }
  return ReduceAdd(acc) - minimums;
}

}  // namespace

bool BlockDotQ8Avx2(GgmlType type, const void* row, const std::byte* qx, size_t x_stride, size_t count, size_t n,
                    float* out) {
  // Four rows share each weight unpacking here (sixteen ymm accumulators); more go four at a time.
  if (count > 4) {
    return BlockDotQ8Avx2(type, row, qx, x_stride, 4, n, out) &&
           BlockDotQ8Avx2(type, row, qx + 4 * x_stride, x_stride, count - 4, n, out + 4);
  }
  const auto* p = static_cast<const uint8_t*>(row);
  const size_t supers = n / kQKBlock;
  switch (type) {
    case GgmlType::kQ4_K: ForRows<Q4KRows>(count, p, qx, x_stride, supers, false, out); return true;
    case GgmlType::kQ5_K: ForRows<Q4KRows>(count, p, qx, x_stride, supers, true, out); return true;
    case GgmlType::kQ6_K: ForRows<Q6KRows>(count, p, qx, x_stride, supers, out); return true;
    case GgmlType::kIQ4_XS: ForRows<Iq4XsRows>(count, p, qx, x_stride, supers, out); return true;
    default: break;
  }
  if (!HasQ8Dot(type)) return false;
  for (size_t k = 0; k < count; ++k) out[k] = DotQ8Small(type, p, reinterpret_cast<const Q8Block*>(qx + k * x_stride), n);
  return true;
}

const IsaOps kAvx2Ops = {&MatMulRows,  &Dot,    &Scores,  &Max,         &ExpShifted,
                         &WeightedSum, &ToF32, &FromF32, &BlockDotAvx2, &BlockDotQ8Avx2};

}  // namespace es::kernels::internal
