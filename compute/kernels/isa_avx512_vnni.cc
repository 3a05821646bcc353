// The integer block dot products (IsaOps::block_dot_q8) of the super-block formats Q4_K, Q5_K, Q6_K and IQ4_XS
// in 512-bit registers with AVX-512 VNNI: each 64 weight quants are unpacked once into one zmm, maddubs with each
// activation row's quants gives int16 pairs, and one vpdpwssd multiplies them by the sub-block scales and adds
// them to the row's int32 sums (AVX2 needs a maddubs, a madd and an add per 32 values). The integers are those of
// the scalar reference (q8_dot.cc); each super-block's sum converts to fp32 once. Other formats go to the AVX2
// kernels. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx2 -mfma -mf16c and reached only from the
// AVX-512 table after its run-time check for VNNI (cpu_kernels.cc).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "compute/kernels/ggml_blocks.h"
#include "compute/kernels/isa_ops.h"

namespace es::kernels::internal {
namespace {

using ggml::kIq4XsBytes;
using ggml::kQ4KBytes;
using ggml::kQ5KBytes;
using ggml::kQ6KBytes;
using ggml::kQKBlock;
using ggml::PrefetchAhead;

float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

__m256i Load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
__m512i Load64(const void* p) { return _mm512_loadu_si512(p); }
__m512i Join(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

float ReduceAdd(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
float ReduceAdd(__m512 v) {
  const __m256 upper = _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE));  // lanes 8..15 moved down
  return ReduceAdd(_mm256_add_ps(_mm512_castps512_ps256(v), upper));
}

// 32 word indices: words 0-15 of the result take word `lo` of the source, words 16-31 word `hi`.
__m512i WordIndex(int lo, int hi) {
  return Join(_mm256_set1_epi16(static_cast<int16_t>(lo)), _mm256_set1_epi16(static_cast<int16_t>(hi)));
}
// Words j of the result take word base + j / 8 of the source (four 8-word groups).
__m512i WordIndexBy8(int base) {
  alignas(64) int16_t idx[32];
  for (int j = 0; j < 32; ++j) idx[j] = static_cast<int16_t>(base + j / 8);
  return _mm512_load_si512(idx);
}


// Q4_K / Q5_K: chunk c of 32 bytes holds sub-block 2c in its low nibbles and 2c + 1 in its high ones: one zmm
// of 64 quants, against activation values 64c .. 64c + 63, with the two sub-blocks' scales in its two halves.
template <int R>
void DotQ4K(const uint8_t* p, const std::byte* qx, size_t stride, size_t supers, bool five, float* out) {
  const Q8KRows<R> x(qx, stride);
  const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  const __m512i pick[4] = {WordIndex(0, 1), WordIndex(2, 3), WordIndex(4, 5), WordIndex(6, 7)};
  __m512 acc[R];
  __m256 minimums[R];
  for (int k = 0; k < R; ++k) {
    acc[k] = _mm512_setzero_ps();
    minimums[k] = _mm256_setzero_ps();
  }
  for (size_t b = 0; b < supers; ++b) {
    PrefetchAhead(p, five ? kQ5KBytes : kQ4KBytes);
    uint32_t sc[2], mn[2];
    ggml::ScalesMinsK4(p + 4, sc, mn);
    const __m512i scales = _mm512_castsi128_si512(
        _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, static_cast<int>(sc[1]), static_cast<int>(sc[0]))));
    const __m256 mins = _mm256_mul_ps(
        _mm256_set1_ps(HalfAt(p + 2)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, static_cast<int>(mn[1]), static_cast<int>(mn[0])))));
    const __m256i qh = five ? Load32(p + 16) : _mm256_setzero_si256();
    const uint8_t* q = p + (five ? 48 : 16);
    __m512i isum[R];
    for (int k = 0; k < R; ++k) isum[k] = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c, q += 32) {
      const __m256i bytes = Load32(q);
      __m256i lo = _mm256_and_si256(bytes, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      if (five) {  // bit 2c of qh[l] is the low value's fifth bit, bit 2c + 1 the high one's
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
      }
      const __m512i w = Join(lo, hi);
      const __m512i scale = _mm512_permutexvar_epi16(pick[c], scales);
      for (int k = 0; k < R; ++k) {
        isum[k] = _mm512_dpwssd_epi32(isum[k], _mm512_maddubs_epi16(w, Load64(x.q(k, b, 64 * c))), scale);
      }
    }
    const float d = HalfAt(p);
    for (int k = 0; k < R; ++k) {
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), _mm512_set1_ps(d * x.x[k][b].d), acc[k]);
      minimums[k] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(x.x[k][b].sums), minimums[k]);
    }
    p += five ? kQ5KBytes : kQ4KBytes;
  }
  for (int k = 0; k < R; ++k) out[k] = ReduceAdd(acc[k]) - ReduceAdd(minimums[k]);
}

// Q6_K: the 64 bytes of ql of a 128-value half are one zmm; its low nibbles are groups 0 and 1 (values 0-63 of
// the half), its high nibbles groups 2 and 3 (64-127); qh's 32 bytes give each its two high bits. Each 16
// values have their own int8 scale; the offset of 32 comes off through the activation quants' 16-value sums.
template <int R>
void DotQ6K(const uint8_t* p, const std::byte* qx, size_t stride, size_t supers, float* out) {
  const Q8KRows<R> x(qx, stride);
  const __m512i low4 = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
  // Scale indices: half h's values 0-63 take scales 8h + 0..3, values 64-127 scales 8h + 4..7, one per 16 words.
  const __m512i pick[2][2] = {{WordIndexBy8(0), WordIndexBy8(4)}, {WordIndexBy8(8), WordIndexBy8(12)}};
  __m512 acc[R];
  for (int k = 0; k < R; ++k) acc[k] = _mm512_setzero_ps();
  for (size_t b = 0; b < supers; ++b, p += kQ6KBytes) {
    PrefetchAhead(p, kQ6KBytes);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192)));
    const __m512i scales = _mm512_castsi256_si512(sc16);
    __m512i isum[R];
    for (int k = 0; k < R; ++k) {
      // -32 * sum_i16 scale[i16] * (sum of the activation quants i16 covers).
      const __m256i offsets = _mm256_madd_epi16(sc16, Load32(x.x[k][b].isum));
      isum[k] = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offsets, 5)));
    }
    for (int half = 0; half < 2; ++half) {
      const __m512i ql = Load64(p + 64 * half);
      const __m256i h = Load32(p + 128 + 32 * half);
      // Bits 0-1 of h for group 0 and bits 2-3 for group 1, moved to bits 4-5; bits 4-5 and 6-7 for groups 2, 3.
      const __m512i high01 = _mm512_and_si512(Join(_mm256_slli_epi16(h, 4), _mm256_slli_epi16(h, 2)), bits45);
      const __m512i high23 = _mm512_and_si512(Join(h, _mm256_srli_epi16(h, 2)), bits45);
      const __m512i v01 = _mm512_or_si512(_mm512_and_si512(ql, low4), high01);
      const __m512i v23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4), high23);
      const __m512i s01 = _mm512_permutexvar_epi16(pick[half][0], scales);
      const __m512i s23 = _mm512_permutexvar_epi16(pick[half][1], scales);
      for (int k = 0; k < R; ++k) {
        isum[k] = _mm512_dpwssd_epi32(isum[k], _mm512_maddubs_epi16(v01, Load64(x.q(k, b, 128 * half))), s01);
        isum[k] = _mm512_dpwssd_epi32(isum[k], _mm512_maddubs_epi16(v23, Load64(x.q(k, b, 128 * half + 64))), s23);
      }
    }
    const float d = HalfAt(p + 208);
    for (int k = 0; k < R; ++k) {
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), _mm512_set1_ps(d * x.x[k][b].d), acc[k]);
    }
  }
  for (int k = 0; k < R; ++k) out[k] = ReduceAdd(acc[k]);
}

// IQ4_XS: the 32 bytes of two sub-blocks looked up in the value table (signed) into one zmm of 64 values; maddubs
// takes an unsigned first operand, so it gets |w| and the activations take w's sign (negated where w < 0); the
// sub-blocks' scales (-32..31) in the two halves.
template <int R>
void DotIq4Xs(const uint8_t* p, const std::byte* qx, size_t stride, size_t supers, float* out) {
  const Q8KRows<R> x(qx, stride);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ggml::kIq4Values)));
  __m512 acc[R];
  for (int k = 0; k < R; ++k) acc[k] = _mm512_setzero_ps();
  for (size_t b = 0; b < supers; ++b, p += kIq4XsBytes) {
    PrefetchAhead(p, kIq4XsBytes);
    __m512i isum[R];
    for (int k = 0; k < R; ++k) isum[k] = _mm512_setzero_si512();
    for (int ib = 0; ib < 8; ib += 2) {
      const __m256i bytes = Load32(p + 8 + 16 * ib);
      const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, low4));
      const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4));
      // Sub-block ib: values 0-15 are the low nibbles of its 16 bytes, 16-31 the high ones; then ib + 1.
      const __m512i w = Join(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
      const __mmask64 negative = _mm512_movepi8_mask(w);
      const __m512i magnitude = _mm512_abs_epi8(w);
      const __m512i scale = Join(_mm256_set1_epi16(static_cast<int16_t>(ggml::Iq4XsScale(p, ib))),
                                 _mm256_set1_epi16(static_cast<int16_t>(ggml::Iq4XsScale(p, ib + 1))));
      for (int k = 0; k < R; ++k) {
        const __m512i xq = Load64(x.q(k, b, 32 * ib));
        const __m512i signed_x = _mm512_mask_sub_epi8(xq, negative, _mm512_setzero_si512(), xq);
        isum[k] = _mm512_dpwssd_epi32(isum[k], _mm512_maddubs_epi16(magnitude, signed_x), scale);
      }
    }
    const float d = HalfAt(p);
    for (int k = 0; k < R; ++k) {
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), _mm512_set1_ps(d * x.x[k][b].d), acc[k]);
    }
  }
  for (int k = 0; k < R; ++k) out[k] = ReduceAdd(acc[k]);
}

template <int R>
bool Dispatch(GgmlType type, const uint8_t* p, const std::byte* qx, size_t stride, size_t supers, float* out) {
  switch (type) {
    case GgmlType::kQ4_K: DotQ4K<R>(p, qx, stride, supers, false, out); return true;
    case GgmlType::kQ5_K: DotQ4K<R>(p, qx, stride, supers, true, out); return true;
    case GgmlType::kQ6_K: DotQ6K<R>(p, qx, stride, supers, out); return true;
    case GgmlType::kIQ4_XS: DotIq4Xs<R>(p, qx, stride, supers, out); return true;
    default: return false;
  }
}

}  // namespace

bool BlockDotQ8Avx512Vnni(GgmlType type, const void* row, const std::byte* x, size_t x_stride, size_t count,
                          size_t n, float* out) {
  const auto* p = static_cast<const uint8_t*>(row);
  const size_t supers = n / kQKBlock;
  bool done = false;
  switch (count) {
    case 1: done = Dispatch<1>(type, p, x, x_stride, supers, out); break;
    case 2: done = Dispatch<2>(type, p, x, x_stride, supers, out); break;
    case 3: done = Dispatch<3>(type, p, x, x_stride, supers, out); break;
    case 4: done = Dispatch<4>(type, p, x, x_stride, supers, out); break;
    case 5: done = Dispatch<5>(type, p, x, x_stride, supers, out); break;
    case 6: done = Dispatch<6>(type, p, x, x_stride, supers, out); break;
    case 7: done = Dispatch<7>(type, p, x, x_stride, supers, out); break;
    default: done = Dispatch<8>(type, p, x, x_stride, supers, out); break;
  }
  return done || BlockDotQ8Avx2(type, row, x, x_stride, count, n, out);
}

}  // namespace es::kernels::internal
