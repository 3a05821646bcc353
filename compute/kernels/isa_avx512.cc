// The AVX-512 path (F, BW, VL; with FMA and F16C): 16 fp32 lanes, masked loads for the tail of a row.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c and reached only after the CPU check in
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

constexpr size_t kWidth = 16;     // fp32 lanes in a zmm register
constexpr int kRowTile = 4;       // weight rows per micro-tile
constexpr int kBatchTile = 4;     // activation rows per micro-tile: 16 accumulators + 4 weights + 1 x of 32 zmm

constexpr size_t kCacheLine = 64;

template <DType kW>
constexpr size_t kElemBytes = kW == DType::kF32 ? sizeof(float) : sizeof(uint16_t);

__mmask16 TailMask(size_t count) { return static_cast<__mmask16>((1u << count) - 1u); }

// A fixed-order horizontal sum: upper 256 bits onto lower, then the same halving down to one lane, spelled out
// so that the order is visibly the AVX2 path's after the first step.
float ReduceAdd(__m512 v) {
  const __m256 upper = _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE));  // lanes 8..15 moved down
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), upper);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Sixteen weights starting at element k of a row, widened to fp32.
template <DType kW>
__m512 LoadW(const void* row, size_t k);
template <>
__m512 LoadW<DType::kF32>(const void* row, size_t k) {
  return _mm512_loadu_ps(static_cast<const float*>(row) + k);
}
template <>
__m512 LoadW<DType::kBF16>(const void* row, size_t k) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + k));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
__m512 LoadW<DType::kF16>(const void* row, size_t k) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + k));
  return _mm512_cvtph_ps(h);
}

// The same for the last, partial group: lanes outside `mask` read nothing and are zero.
template <DType kW>
__m512 LoadWMasked(const void* row, size_t k, __mmask16 mask);
template <>
__m512 LoadWMasked<DType::kF32>(const void* row, size_t k, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(row) + k);
}
template <>
__m512 LoadWMasked<DType::kBF16>(const void* row, size_t k, __mmask16 mask) {
  const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + k);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
__m512 LoadWMasked<DType::kF16>(const void* row, size_t k, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + k));
}

// Where activation row b and output row b live (see MatMulArgs::x_rows, y_rows).
const float* XRow(const MatMulArgs& a, size_t b) {
  return a.x + (a.x_rows == nullptr ? b : static_cast<size_t>(a.x_rows[b])) * a.cols;
}
float* YRow(const MatMulArgs& a, size_t b) {
  return a.y + (a.y_rows == nullptr ? b : static_cast<size_t>(a.y_rows[b])) * a.rows;
}

// One micro-tile: kR weight rows from r0 against kB activation rows from b0. Every output element gets the same
// FMA sequence (one per 16-wide group of k, the tail last) and the same final reduction, whatever kR and kB are.
//
// `prefetch`, when not null, is the start of the next tile's rows (contiguous with this tile's in memory): each
// step asks for as many of its bytes as it consumes of its own, so that RAM is always being read one tile
// ahead. The hardware prefetchers alone lose track when rows are short (a [2048, 768] bf16 matrix has
// 1.5 KiB rows, several per 4 KiB page), and the decode GEMV is bound by exactly this stream.
template <DType kW, int kR, int kB>
void Tile(const MatMulArgs& a, size_t r0, size_t b0, const uint8_t* prefetch) {
  const size_t row_bytes = a.cols * kElemBytes<kW>;
  const void* w[kR];
  ES_UNROLL
  for (int r = 0; r < kR; ++r) w[r] = static_cast<const uint8_t*>(a.w) + (r0 + r) * row_bytes;
  const float* x[kB];
  ES_UNROLL
  for (int b = 0; b < kB; ++b) x[b] = XRow(a, b0 + b);

  __m512 acc[kR][kB];
  ES_UNROLL
  for (int r = 0; r < kR; ++r) {
    ES_UNROLL
    for (int b = 0; b < kB; ++b) acc[r][b] = _mm512_setzero_ps();
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
    __m512 wv[kR];
    ES_UNROLL
    for (int r = 0; r < kR; ++r) wv[r] = LoadW<kW>(w[r], k);
    ES_UNROLL
    for (int b = 0; b < kB; ++b) {
      const __m512 xv = _mm512_loadu_ps(x[b] + k);
      ES_UNROLL
      for (int r = 0; r < kR; ++r) acc[r][b] = _mm512_fmadd_ps(wv[r], xv, acc[r][b]);
    }
  }
  if (k < a.cols) {
    const __mmask16 mask = TailMask(a.cols - k);
    __m512 wv[kR];
    ES_UNROLL
    for (int r = 0; r < kR; ++r) wv[r] = LoadWMasked<kW>(w[r], k, mask);
    ES_UNROLL
    for (int b = 0; b < kB; ++b) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x[b] + k);
      ES_UNROLL
      for (int r = 0; r < kR; ++r) acc[r][b] = _mm512_fmadd_ps(wv[r], xv, acc[r][b]);
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
    {&Tile<kW, 1, 1>, &Tile<kW, 1, 2>, &Tile<kW, 1, 3>, &Tile<kW, 1, 4>},
    {&Tile<kW, 2, 1>, &Tile<kW, 2, 2>, &Tile<kW, 2, 3>, &Tile<kW, 2, 4>},
    {&Tile<kW, 3, 1>, &Tile<kW, 3, 2>, &Tile<kW, 3, 3>, &Tile<kW, 3, 4>},
    {&Tile<kW, 4, 1>, &Tile<kW, 4, 2>, &Tile<kW, 4, 3>, &Tile<kW, 4, 4>},
};

// Batch tiles outside, row tiles inside: the weight rows of this range stay in L2 while each group of
// activation rows streams them once more, instead of the larger activations streaming once per row tile.
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
  __m512 acc = _mm512_setzero_ps();
  size_t k = 0;
  for (; k + kWidth <= n; k += kWidth) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc);
  if (k < n) {
    const __mmask16 mask = TailMask(n - k);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + k), _mm512_maskz_loadu_ps(mask, b + k), acc);
  }
  return ReduceAdd(acc);
}

// ---- Attention pieces -----------------------------------------------------------------------------------------

// Independent FMA chains a kernel keeps in flight: at least FMA latency (4) times the two FMA ports. Attention
// uses twice that (16 of the 32 registers), so that each load feeds several FMAs: a GQA group of 8 heads
// scores two keys at once and accumulates two chunks of each value row at once.
constexpr int kAttentionChains = 16;

// Scores of kG heads against kKeys keys at a time (kG * kKeys chains). Per (head, key) the operation sequence
// is Dot's: one FMA per 16-wide group of dim in order, the masked tail last, then ReduceAdd.
template <int kG, int kKeys>
__attribute__((always_inline)) inline void ScoresStep(const float* q, const float* k, size_t k_stride, size_t dim,
                                                      float scale, float* out, size_t out_stride) {
  __m512 acc[kKeys][kG];
  ES_UNROLL
  for (int j = 0; j < kKeys; ++j) {
    ES_UNROLL
    for (int h = 0; h < kG; ++h) acc[j][h] = _mm512_setzero_ps();
  }
  // Each loaded key chunk serves kG heads and each loaded query chunk kKeys keys.
  size_t d = 0;
  for (; d + kWidth <= dim; d += kWidth) {
    __m512 kv[kKeys];
    ES_UNROLL
    for (int j = 0; j < kKeys; ++j) kv[j] = _mm512_loadu_ps(k + j * k_stride + d);
    ES_UNROLL
    for (int h = 0; h < kG; ++h) {
      const __m512 qv = _mm512_loadu_ps(q + h * dim + d);
      ES_UNROLL
      for (int j = 0; j < kKeys; ++j) acc[j][h] = _mm512_fmadd_ps(qv, kv[j], acc[j][h]);
    }
  }
  if (d < dim) {
    const __mmask16 mask = TailMask(dim - d);
    __m512 kv[kKeys];
    ES_UNROLL
    for (int j = 0; j < kKeys; ++j) kv[j] = _mm512_maskz_loadu_ps(mask, k + j * k_stride + d);
    ES_UNROLL
    for (int h = 0; h < kG; ++h) {
      const __m512 qv = _mm512_maskz_loadu_ps(mask, q + h * dim + d);
      ES_UNROLL
      for (int j = 0; j < kKeys; ++j) acc[j][h] = _mm512_fmadd_ps(qv, kv[j], acc[j][h]);
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
  constexpr int kKeys = kAttentionChains / kG > 0 ? kAttentionChains / kG : 1;
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

// exp in the manner of Cephes' expf: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for exp(r), then
// scalef by 2^n. Arguments are clamped to where the result is representable (NaN passes max/min as the second
// operand and stays NaN).
__m512 Exp(__m512 x) {
  constexpr float kMinArg = -103.972084f;  // expf is 0 below, even as a subnormal
  constexpr float kMaxArg = 88.7228391f;   // expf is infinite above
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;   // ln 2 split so that n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                             4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
  x = _mm512_max_ps(_mm512_set1_ps(kMinArg), x);
  x = _mm512_min_ps(_mm512_set1_ps(kMaxArg), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 poly = _mm512_set1_ps(kPoly[0]);
  for (size_t i = 1; i < sizeof(kPoly) / sizeof(kPoly[0]); ++i) {
    poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(kPoly[i]));
  }
  const __m512 y = _mm512_fmadd_ps(poly, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

float Max(const float* x, size_t n) {
  // Lanes start at -inf so that masked-off lanes never win; max_ps(m, v) keeps m where v is NaN.
  __m512 m = _mm512_set1_ps(-__builtin_inff());
  size_t i = 0;
  for (; i + kWidth <= n; i += kWidth) m = _mm512_max_ps(_mm512_loadu_ps(x + i), m);
  if (i < n) m = _mm512_mask_max_ps(m, TailMask(n - i), _mm512_maskz_loadu_ps(TailMask(n - i), x + i), m);
  const float result = _mm512_reduce_max_ps(m);
  return result == -__builtin_inff() && x[0] != x[0] ? x[0] : result;
}

float ExpShifted(const float* s, float shift, size_t n, float* p) {
  const __m512 sv = _mm512_set1_ps(shift);
  __m512 sum = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const __m512 e = Exp(_mm512_sub_ps(_mm512_loadu_ps(s + i), sv));
    _mm512_storeu_ps(p + i, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (i < n) {
    const __mmask16 mask = TailMask(n - i);
    const __m512 e = _mm512_maskz_mov_ps(mask, Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + i), sv)));
    _mm512_mask_storeu_ps(p + i, mask, e);
    sum = _mm512_add_ps(sum, e);
  }
  return ReduceAdd(sum);
}

// WeightedSum for kG heads over kChunks consecutive 16-wide groups of dim from d0 (kG * kChunks chains, held
// in registers across all keys). kMasked: some groups reach past dim (masked off lane by lane).
template <int kG, int kChunks, bool kMasked>
void WeightedSumStep(const float* p, size_t p_stride, const float* v, size_t v_stride, size_t count, size_t dim,
                     size_t d0, const float* acc_scale, float* acc) {
  __mmask16 mask[kChunks];
  ES_UNROLL
  for (int c = 0; c < kChunks; ++c) {
    const size_t begin = d0 + c * kWidth;
    mask[c] = begin >= dim ? static_cast<__mmask16>(0) : dim - begin >= kWidth ? static_cast<__mmask16>(0xFFFF)
                                                                                : TailMask(dim - begin);
  }
  auto load = [&](const float* ptr, int c) {
    if constexpr (kMasked) {
      return _mm512_maskz_loadu_ps(mask[c], ptr);
    } else {
      return _mm512_loadu_ps(ptr);
    }
  };
  __m512 a[kChunks][kG];
  ES_UNROLL
  for (int h = 0; h < kG; ++h) {
    const __m512 scale = _mm512_set1_ps(acc_scale[h]);
    ES_UNROLL
    for (int c = 0; c < kChunks; ++c) a[c][h] = _mm512_mul_ps(load(acc + h * dim + d0 + c * kWidth, c), scale);
  }
  for (size_t j = 0; j < count; ++j) {
    const float* vj = v + j * v_stride + d0;
    ES_UNROLL
    for (int c = 0; c < kChunks; ++c) {
      const __m512 vv = load(vj + c * kWidth, c);
      ES_UNROLL
      for (int h = 0; h < kG; ++h) a[c][h] = _mm512_fmadd_ps(_mm512_set1_ps(p[h * p_stride + j]), vv, a[c][h]);
    }
  }
  ES_UNROLL
  for (int h = 0; h < kG; ++h) {
    ES_UNROLL
    for (int c = 0; c < kChunks; ++c) {
      if constexpr (kMasked) {
        _mm512_mask_storeu_ps(acc + h * dim + d0 + c * kWidth, mask[c], a[c][h]);
      } else {
        _mm512_storeu_ps(acc + h * dim + d0 + c * kWidth, a[c][h]);
      }
    }
  }
}

template <int kG>
void WeightedSumGroup(const float* p, size_t p_stride, const float* v, size_t v_stride, size_t count, size_t dim,
                      const float* acc_scale, float* acc) {
  // 16 chains where possible, so that each broadcast weight serves two chunks of a value row; at most 8 chunks
  // (128 floats), a whole head of the usual size.
  constexpr int kMaxChunks = 8;
  constexpr int kWanted = kAttentionChains / kG < 1 ? 1 : kAttentionChains / kG;
  constexpr int kChunks = kWanted > kMaxChunks ? kMaxChunks : kWanted;
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
  const auto* f = static_cast<const float*>(src);
  size_t i = 0;
  switch (dtype) {
    case DType::kF32:
      for (; i + kWidth <= n; i += kWidth) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(f + i));
      if (i < n) _mm512_mask_storeu_ps(dst + i, TailMask(n - i), _mm512_maskz_loadu_ps(TailMask(n - i), f + i));
      return;
    case DType::kBF16:
      for (; i + kWidth <= n; i += kWidth) _mm512_storeu_ps(dst + i, LoadW<DType::kBF16>(h, i));
      if (i < n) _mm512_mask_storeu_ps(dst + i, TailMask(n - i), LoadWMasked<DType::kBF16>(h, i, TailMask(n - i)));
      return;
    case DType::kF16:
      for (; i + kWidth <= n; i += kWidth) _mm512_storeu_ps(dst + i, LoadW<DType::kF16>(h, i));
      if (i < n) _mm512_mask_storeu_ps(dst + i, TailMask(n - i), LoadWMasked<DType::kF16>(h, i, TailMask(n - i)));
      return;
    default: return;
  }
}

// Round to nearest even on the dropped 16 bits; NaNs keep their sign and top payload and are made quiet.
__m256i F32ToBf16x16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x0040));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet_nan));
}

void FromF32(const float* src, size_t n, DType dtype, void* dst) {
  auto* h = static_cast<uint16_t*>(dst);
  size_t i = 0;
  switch (dtype) {
    case DType::kF32: ToF32(src, DType::kF32, n, static_cast<float*>(dst)); return;
    case DType::kBF16:
      for (; i + kWidth <= n; i += kWidth) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + i), F32ToBf16x16(_mm512_loadu_ps(src + i)));
      }
      if (i < n) {
        const __mmask16 mask = TailMask(n - i);
        _mm256_mask_storeu_epi16(h + i, mask, F32ToBf16x16(_mm512_maskz_loadu_ps(mask, src + i)));
      }
      return;
    case DType::kF16:
      for (; i + kWidth <= n; i += kWidth) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
      }
      if (i < n) {
        const __mmask16 mask = TailMask(n - i);
        _mm256_mask_storeu_epi16(h + i, mask,
                                 _mm512_cvtps_ph(_mm512_maskz_loadu_ps(mask, src + i), _MM_FROUND_TO_NEAREST_INT));
      }
      return;
    default: return;
  }
}

#undef ES_UNROLL

// ---- GGML blocks, exact: decode and multiply in 16 lanes ---------------------------------------------------------

float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

// 16 bytes at p widened to 16 int32.
__m512i Bytes16(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// The AVX2 block_dot's formats Q8_0, Q4_K, Q5_K, Q6_K and IQ4_XS with 16 lanes: each value decoded with the scalar
// decoder's float operations (q * d; d1 * q - m1; (d * scale) * q; dl * value: a multiply then a subtract, never
// fused), then an FMA with x into four accumulators, reduced in a fixed order; the other formats go to the AVX2
// kernel.
bool BlockDotAvx512(GgmlType type, const void* row, const float* x, size_t n, float* out) {
  const auto* p = static_cast<const uint8_t*>(row);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  const __m512i low4 = _mm512_set1_epi32(0xF);
  if (type == GgmlType::kQ8_0) {
    for (size_t b = 0; b < n / ggml::kQ8Block; ++b, p += ggml::kQ8Bytes, x += ggml::kQ8Block) {
      ggml::PrefetchAhead(p, ggml::kQ8Bytes);
      const __m512 d = _mm512_set1_ps(HalfAt(p));
      for (int k = 0; k < 2; ++k) {
        const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 + 16 * k))));
        acc[k] = _mm512_fmadd_ps(_mm512_mul_ps(q, d), _mm512_loadu_ps(x + 16 * k), acc[k]);
      }
    }
  } else if (type == GgmlType::kQ4_K) {
    for (size_t b = 0; b < n / ggml::kQKBlock; ++b, p += ggml::kQ4KBytes) {
      ggml::PrefetchAhead(p, ggml::kQ4KBytes);
      const float d = HalfAt(p), dmin = HalfAt(p + 2);
      const uint8_t* q = p + 16;
      for (int is = 0; is < 8; is += 2, q += 32, x += 64) {
        const ggml::ScaledPair s = ggml::PairScales(d, dmin, p + 4, is);
        const __m512 d1 = _mm512_set1_ps(s.d1), m1 = _mm512_set1_ps(s.m1);
        const __m512 d2 = _mm512_set1_ps(s.d2), m2 = _mm512_set1_ps(s.m2);
        for (int k = 0; k < 2; ++k) {  // bytes 16k..16k+15: low nibbles are values 16k.., high ones 32 + 16k..
          const __m512i bytes = Bytes16(q + 16 * k);
          const __m512 lo = _mm512_sub_ps(_mm512_mul_ps(d1, _mm512_cvtepi32_ps(_mm512_and_si512(bytes, low4))), m1);
          const __m512 hi = _mm512_sub_ps(_mm512_mul_ps(d2, _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4))), m2);
          acc[k] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + 16 * k), acc[k]);
          acc[2 + k] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 32 + 16 * k), acc[2 + k]);
        }
      }
    }
  } else if (type == GgmlType::kQ5_K) {
    const __m512i one = _mm512_set1_epi32(1);
    for (size_t b = 0; b < n / ggml::kQKBlock; ++b, p += ggml::kQ5KBytes) {
      ggml::PrefetchAhead(p, ggml::kQ5KBytes);
      const float d = HalfAt(p), dmin = HalfAt(p + 2);
      const uint8_t* qh = p + 16;
      const uint8_t* q = p + 48;
      for (int is = 0; is < 8; is += 2, q += 32, x += 64) {
        const ggml::ScaledPair s = ggml::PairScales(d, dmin, p + 4, is);
        const __m512 d1 = _mm512_set1_ps(s.d1), m1 = _mm512_set1_ps(s.m1);
        const __m512 d2 = _mm512_set1_ps(s.d2), m2 = _mm512_set1_ps(s.m2);
        for (int k = 0; k < 2; ++k) {
          const __m512i bytes = Bytes16(q + 16 * k);
          // Bit `is` of qh[l] is the fifth bit of the low nibble's value, bit `is + 1` of the high one's.
          const __m512i h = Bytes16(qh + 16 * k);
          const __m512i lo_q = _mm512_add_epi32(_mm512_and_si512(bytes, low4),
                                                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, is), one), 4));
          const __m512i hi_q = _mm512_add_epi32(
              _mm512_srli_epi32(bytes, 4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, is + 1), one), 4));
          const __m512 lo = _mm512_sub_ps(_mm512_mul_ps(d1, _mm512_cvtepi32_ps(lo_q)), m1);
          const __m512 hi = _mm512_sub_ps(_mm512_mul_ps(d2, _mm512_cvtepi32_ps(hi_q)), m2);
          acc[k] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + 16 * k), acc[k]);
          acc[2 + k] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 32 + 16 * k), acc[2 + k]);
        }
      }
    }
  } else if (type == GgmlType::kIQ4_XS) {
    // The 16 table values as int32 lanes, looked up by nibble with a permute.
    const __m512i table = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ggml::kIq4Values)));
    for (size_t b = 0; b < n / ggml::kQKBlock; ++b, p += ggml::kIq4XsBytes) {
      ggml::PrefetchAhead(p, ggml::kIq4XsBytes);
      const float d = HalfAt(p);
      const uint8_t* qs = p + 8;
      for (int ib = 0; ib < 8; ++ib, qs += 16, x += 32) {
        const __m512 dl = _mm512_set1_ps(d * static_cast<float>(ggml::Iq4XsScale(p, ib)));
        const __m512i bytes = Bytes16(qs);
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(_mm512_and_si512(bytes, low4), table));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(_mm512_srli_epi32(bytes, 4), table));
        acc[ib % 2] = _mm512_fmadd_ps(_mm512_mul_ps(dl, lo), _mm512_loadu_ps(x), acc[ib % 2]);
        acc[2 + ib % 2] = _mm512_fmadd_ps(_mm512_mul_ps(dl, hi), _mm512_loadu_ps(x + 16), acc[2 + ib % 2]);
      }
    }
  } else if (type == GgmlType::kQ6_K) {
    const __m512i low2 = _mm512_set1_epi32(3), offset = _mm512_set1_epi32(32);
    // (nibble | two high bits << 4) - 32, as fp32.
    auto value = [&](__m512i nibble, __m512i high) {
      return _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_or_si512(nibble, _mm512_slli_epi32(high, 4)), offset));
    };
    for (size_t b = 0; b < n / ggml::kQKBlock; ++b, p += ggml::kQ6KBytes) {
      ggml::PrefetchAhead(p, ggml::kQ6KBytes);
      const float d = HalfAt(p + 208);
      const uint8_t* ql = p;
      const uint8_t* qh = p + 128;
      const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
      for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, x += 128) {
        for (int l = 0; l < 32; l += 16) {
          const int is = l / 16;
          const __m512i a = Bytes16(ql + l), c = Bytes16(ql + l + 32), h = Bytes16(qh + l);
          const __m512 q1 = value(_mm512_and_si512(a, low4), _mm512_and_si512(h, low2));
          const __m512 q2 = value(_mm512_and_si512(c, low4), _mm512_and_si512(_mm512_srli_epi32(h, 2), low2));
          const __m512 q3 = value(_mm512_srli_epi32(a, 4), _mm512_and_si512(_mm512_srli_epi32(h, 4), low2));
          const __m512 q4 = value(_mm512_srli_epi32(c, 4), _mm512_srli_epi32(h, 6));
          // d * scale first, then times the quant: the reference's order.
          const __m512 w1 = _mm512_mul_ps(_mm512_set1_ps(d * static_cast<float>(sc[is])), q1);
          const __m512 w2 = _mm512_mul_ps(_mm512_set1_ps(d * static_cast<float>(sc[is + 2])), q2);
          const __m512 w3 = _mm512_mul_ps(_mm512_set1_ps(d * static_cast<float>(sc[is + 4])), q3);
          const __m512 w4 = _mm512_mul_ps(_mm512_set1_ps(d * static_cast<float>(sc[is + 6])), q4);
          acc[0] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + l), acc[0]);
          acc[1] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(x + l + 32), acc[1]);
          acc[2] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(x + l + 64), acc[2]);
          acc[3] = _mm512_fmadd_ps(w4, _mm512_loadu_ps(x + l + 96), acc[3]);
        }
      }
    }
  } else {
    return BlockDotAvx2(type, row, x, n, out);
  }
  *out = ReduceAdd(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  return true;
}

// The VNNI kernels where the CPU has AVX-512 VNNI (checked once), else the AVX2 ones.
bool BlockDotQ8Avx512(GgmlType type, const void* row, const std::byte* x, size_t x_stride, size_t count, size_t n,
                      float* out) {
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  return vnni ? BlockDotQ8Avx512Vnni(type, row, x, x_stride, count, n, out)
              : BlockDotQ8Avx2(type, row, x, x_stride, count, n, out);
}

}  // namespace

const IsaOps kAvx512Ops = {&MatMulRows,  &Dot,    &Scores,  &Max,         &ExpShifted,
                           &WeightedSum, &ToF32, &FromF32, &BlockDotAvx512, &BlockDotQ8Avx512};

}  // namespace es::kernels::internal
