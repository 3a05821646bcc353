// Integer dot products of GGML block rows with int8-quantized activations (CpuContext::q8_activations), in plain
// scalar code: the reference every SIMD version is tested against. The 32-value formats take activations in
// 32-value blocks (Q8Block): within each block the products of the integer quants are summed exactly as integers,
// then scaled once, (weight scale * activation scale) * sum. The 256-value super-block formats take 256-value
// blocks (Q8KBlock) and sum a whole super-block as one integer (below). A minimum (Q4_1, Q5_1, Q4_K, Q5_K)
// multiplies the activations' exact fp32 sum; a fixed offset (Q4_0, Q5_0, Q6_K) the integer sum of their quants.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "compute/kernels/ggml_blocks.h"
#include "compute/kernels/isa_ops.h"
#include "store/base/float16.h"

namespace es::kernels::internal {
namespace {

constexpr int kQK = 32;
constexpr int kHalf = kQK / 2;
constexpr int kSubBlocks = 8;  // 32-value groups per 256-value super-block
constexpr int kNibble = 0xF;

uint32_t Bits32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

int QuantSum(const Q8Block& x) { return x.isum[0] + x.isum[1]; }

// The 32 values of a 32-value block as integers (before scale and offset), into v.
void Nibbles(const uint8_t* qs, int* v) {
  for (int j = 0; j < kHalf; ++j) {
    v[j] = qs[j] & kNibble;
    v[j + kHalf] = qs[j] >> 4;
  }
}
void FiveBits(const uint8_t* qs, uint32_t qh, int* v) {
  for (int j = 0; j < kHalf; ++j) {
    v[j] = (qs[j] & kNibble) | static_cast<int>(((qh >> j) & 1) << 4);
    v[j + kHalf] = (qs[j] >> 4) | static_cast<int>(((qh >> (j + kHalf)) & 1) << 4);
  }
}

int DotQ(const int* v, const int8_t* q, int n) {
  int s = 0;
  for (int j = 0; j < n; ++j) s += v[j] * q[j];
  return s;
}

float DotSmall(GgmlType type, const uint8_t* p, const Q8Block* x, size_t blocks) {
  float sum = 0;
  int v[kQK];
  for (size_t k = 0; k < blocks; ++k) {
    const Q8Block& xb = x[k];
    switch (type) {
      case GgmlType::kQ4_0:
        Nibbles(p + 2, v);
        sum += (ggml::HalfAt(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK) - 8 * QuantSum(xb));
        p += 18;
        break;
      case GgmlType::kQ4_1:
        Nibbles(p + 4, v);
        sum += (ggml::HalfAt(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK)) + ggml::HalfAt(p + 2) * xb.sum;
        p += 20;
        break;
      case GgmlType::kQ5_0:
        FiveBits(p + 6, Bits32(p + 2), v);
        sum += (ggml::HalfAt(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK) - 16 * QuantSum(xb));
        p += 22;
        break;
      case GgmlType::kQ5_1:
        FiveBits(p + 8, Bits32(p + 4), v);
        sum += (ggml::HalfAt(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK)) + ggml::HalfAt(p + 2) * xb.sum;
        p += 24;
        break;
      case GgmlType::kQ8_0:
        for (int j = 0; j < kQK; ++j) v[j] = static_cast<int8_t>(p[2 + j]);
        sum += (ggml::HalfAt(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK));
        p += 34;
        break;
      case GgmlType::kIQ4_NL:
        Nibbles(p + 2, v);
        for (int& e : v) e = ggml::kIq4Values[e];
        sum += (ggml::HalfAt(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK));
        p += 18;
        break;
      default: return 0;
    }
  }
  return sum;
}

// The super-block formats take Q8KBlocks: each super-block's integer products are summed with the weights'
// integer sub-block scales into one int32 (at most 256 * 63 * 63 * 127 in magnitude, Q4_K; 256 * 128 * 63 * 127,
// Q6_K), converted once, times (super-block scale * activation scale).

// Q4_K and Q5_K: sub-block j's values are the low (j even) or high nibbles of bytes 32 (j / 2) .. + 31, with
// bit j of qh[l] as the fifth bit (Q5_K). Minimum j times the exact sum of its 32 activations.
float DotQ4K(const uint8_t* p, const Q8KBlock* x, size_t supers, bool five) {
  float sum = 0;
  for (size_t b = 0; b < supers; ++b, ++x) {
    const float d = ggml::HalfAt(p) * x->d, dmin = ggml::HalfAt(p + 2);
    const uint8_t* scales = p + 4;
    const uint8_t* qh = p + 16;
    const uint8_t* q = five ? p + 48 : p + 16;
    int isum = 0;
    float minimums = 0;
    for (int j = 0; j < kSubBlocks; ++j) {
      int sc, m;
      ggml::ScaleMinK4(j, scales, sc, m);
      const uint8_t* bytes = q + kQK * (j / 2);
      int dot = 0;
      for (int l = 0; l < kQK; ++l) {
        int v = (bytes[l] >> (4 * (j & 1))) & kNibble;
        if (five) v |= ((qh[l] >> j) & 1) << 4;
        dot += v * x->q[kQK * j + l];
      }
      isum += sc * dot;
      minimums += (dmin * static_cast<float>(m)) * x->sums[j];
    }
    sum += d * static_cast<float>(isum) - minimums;
    p += five ? 176 : 144;
  }
  return sum;
}

// Q6_K: value i of a super-block has scale sc[i / 16]; the stored quants are offset by 32, which the integer sums
// of the activation quants take off exactly.
float DotQ6K(const uint8_t* p, const Q8KBlock* x, size_t supers) {
  float sum = 0;
  for (size_t b = 0; b < supers; ++b, p += 210, ++x) {
    const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
    int isum = 0;
    for (int i16 = 0; i16 < 16; ++i16) {
      const int half = i16 / 8, g = (i16 % 8) / 2;
      int dot = 0;
      for (int l = 16 * (i16 % 2); l < 16 * (i16 % 2) + 16; ++l) {
        dot += ggml::Q6KQuant(p + 64 * half, p + 128 + 32 * half, g, l) * x->q[16 * i16 + l % 16];
      }
      isum += sc[i16] * (dot - 32 * x->isum[i16]);
    }
    sum += (ggml::HalfAt(p + 208) * x->d) * static_cast<float>(isum);
  }
  return sum;
}

float DotIq4Xs(const uint8_t* p, const Q8KBlock* x, size_t supers) {
  float sum = 0;
  int v[kQK];
  for (size_t b = 0; b < supers; ++b, p += 136, ++x) {
    const uint8_t* qs = p + 8;
    int isum = 0;
    for (int ib = 0; ib < kSubBlocks; ++ib, qs += kHalf) {
      Nibbles(qs, v);
      for (int& e : v) e = ggml::kIq4Values[e];
      isum += ggml::Iq4XsScale(p, ib) * DotQ(v, x->q + kQK * ib, kQK);
    }
    sum += (ggml::HalfAt(p) * x->d) * static_cast<float>(isum);
  }
  return sum;
}

}  // namespace

bool HasQ8Dot(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kIQ4_NL:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
    case GgmlType::kIQ4_XS: return true;
    default: return false;
  }
}

bool UsesQ8K(GgmlType type) {
  return type == GgmlType::kQ4_K || type == GgmlType::kQ5_K || type == GgmlType::kQ6_K || type == GgmlType::kIQ4_XS;
}

size_t Q8RowBytes(GgmlType type, size_t n) {
  return UsesQ8K(type) ? n / kQ8KBlockValues * sizeof(Q8KBlock) : n / kQ8BlockValues * sizeof(Q8Block);
}

namespace {

float DotOne(GgmlType type, const uint8_t* p, const std::byte* x, size_t n) {
  const auto* xk = reinterpret_cast<const Q8KBlock*>(x);
  switch (type) {
    case GgmlType::kQ4_K: return DotQ4K(p, xk, n / 256, false);
    case GgmlType::kQ5_K: return DotQ4K(p, xk, n / 256, true);
    case GgmlType::kQ6_K: return DotQ6K(p, xk, n / 256);
    case GgmlType::kIQ4_XS: return DotIq4Xs(p, xk, n / 256);
    default: return DotSmall(type, p, reinterpret_cast<const Q8Block*>(x), n / kQK);
  }
}

}  // namespace

bool BlockDotQ8Scalar(GgmlType type, const void* row, const std::byte* x, size_t x_stride, size_t count, size_t n,
                      float* out) {
  if (!HasQ8Dot(type)) return false;
  for (size_t k = 0; k < count; ++k) out[k] = DotOne(type, static_cast<const uint8_t*>(row), x + k * x_stride, n);
  return true;
}

namespace {

// round(v) to nearest, ties to even (lrint's default), for |v| < 2^22: adding 1.5 * 2^23 leaves the integer in
// the mantissa's low bits. Plain arithmetic, so that the quantizers' loops vectorize.
int32_t RoundToInt(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return bits - 0x4B400000;
}

// max |x[i]| over n values (a multiple of 8; a NaN is skipped here, the callers' sums catch it) into amax, and
// their fp32 sum: eight interleaved partial sums (x[i] into partial i % 8, in order), added pairwise. A fixed
// order, so every kernel sees the same sums; independent partials, so the loop vectorizes instead of waiting on
// one chain of additions.
void AbsMaxAndSum(const float* x, size_t n, float& amax, float& sum) {
  float partial[8] = {}, largest[8] = {};
  for (size_t i = 0; i < n; i += 8) {
    for (size_t l = 0; l < 8; ++l) {
      partial[l] += x[i + l];
      const float a = std::fabs(x[i + l]);
      largest[l] = a > largest[l] ? a : largest[l];
    }
  }
  for (float a : largest) amax = a > amax ? a : amax;
  sum = ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

// q[i] = round(x[i] * inv) within [-127, 127], for n values; isum[i / 16] += q[i].
void QuantizeValues(const float* x, size_t n, float inv, int8_t* q, int16_t* isum) {
  for (size_t j = 0; j < n; ++j) {
    const int32_t v = RoundToInt(x[j] * inv);
    q[j] = static_cast<int8_t>(v > 127 ? 127 : (v < -127 ? -127 : v));
  }
  // In locals: q (int8_t) may alias anything, so sums kept in isum itself would be reloaded after every store.
  for (size_t g = 0; g < n / 16; ++g) {
    int total = 0;
    for (size_t j = 0; j < 16; ++j) total += q[16 * g + j];
    isum[g] = static_cast<int16_t>(isum[g] + total);
  }
}

}  // namespace

void QuantizeQ8(const float* x, size_t n, Q8Block* out) {
  for (size_t k = 0; k < n / kQ8BlockValues; ++k, x += kQ8BlockValues) {
    Q8Block& b = out[k];
    float amax = 0, sum = 0;
    AbsMaxAndSum(x, kQ8BlockValues, amax, sum);
    b.sum = sum;
    b.isum[0] = b.isum[1] = 0;
    if (!std::isfinite(amax) || !std::isfinite(sum)) {
      // A NaN or infinite activation makes every product with it NaN, as the exact path's would be.
      b.d = std::numeric_limits<float>::quiet_NaN();
      std::memset(b.q, 0, sizeof(b.q));
      continue;
    }
    b.d = amax / 127.0f;
    QuantizeValues(x, kQ8BlockValues, amax == 0 ? 0.0f : 127.0f / amax, b.q, b.isum);
  }
}

void QuantizeQ8K(const float* x, size_t n, Q8KBlock* out) {
  for (size_t k = 0; k < n / kQ8KBlockValues; ++k, x += kQ8KBlockValues) {
    Q8KBlock& b = out[k];
    float amax = 0;
    bool finite = true;
    for (size_t j = 0; j < kQ8KBlockValues / kQ8BlockValues; ++j) {
      float sum = 0;
      AbsMaxAndSum(x + kQ8BlockValues * j, kQ8BlockValues, amax, sum);
      b.sums[j] = sum;
      finite = finite && std::isfinite(sum);
    }
    std::memset(b.isum, 0, sizeof(b.isum));
    if (!std::isfinite(amax) || !finite) {
      b.d = std::numeric_limits<float>::quiet_NaN();
      std::memset(b.q, 0, sizeof(b.q));
      continue;
    }
    b.d = amax / 127.0f;
    QuantizeValues(x, kQ8KBlockValues, amax == 0 ? 0.0f : 127.0f / amax, b.q, b.isum);
  }
}

void QuantizeQ8Row(GgmlType type, const float* x, size_t n, std::byte* out) {
  if (UsesQ8K(type)) {
    QuantizeQ8K(x, n, reinterpret_cast<Q8KBlock*>(out));
  } else {
    QuantizeQ8(x, n, reinterpret_cast<Q8Block*>(out));
  }
}

}  // namespace es::kernels::internal
