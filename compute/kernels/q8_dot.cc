// Integer dot products of GGML block rows with int8-quantized activations (CpuContext::q8_activations), in plain
// scalar code: the reference every SIMD version is tested against. Within each group that shares one weight
// scale (32 values; 16 for Q6_K) the products of the integer quants are summed exactly as integers, then scaled
// once: (weight scale * activation scale) * sum. A minimum (Q4_1, Q5_1, Q4_K, Q5_K) multiplies the activations'
// exact fp32 sum; a fixed offset (Q4_0, Q5_0, Q6_K) the integer sum of their quants.
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

float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return F16ToF32(h);
}

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
        sum += (Half(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK) - 8 * QuantSum(xb));
        p += 18;
        break;
      case GgmlType::kQ4_1:
        Nibbles(p + 4, v);
        sum += (Half(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK)) + Half(p + 2) * xb.sum;
        p += 20;
        break;
      case GgmlType::kQ5_0:
        FiveBits(p + 6, Bits32(p + 2), v);
        sum += (Half(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK) - 16 * QuantSum(xb));
        p += 22;
        break;
      case GgmlType::kQ5_1:
        FiveBits(p + 8, Bits32(p + 4), v);
        sum += (Half(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK)) + Half(p + 2) * xb.sum;
        p += 24;
        break;
      case GgmlType::kQ8_0:
        for (int j = 0; j < kQK; ++j) v[j] = static_cast<int8_t>(p[2 + j]);
        sum += (Half(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK));
        p += 34;
        break;
      case GgmlType::kIQ4_NL:
        Nibbles(p + 2, v);
        for (int& e : v) e = ggml::kIq4Values[e];
        sum += (Half(p) * xb.d) * static_cast<float>(DotQ(v, xb.q, kQK));
        p += 18;
        break;
      default: return 0;
    }
  }
  return sum;
}

float DotQ4K(const uint8_t* p, const Q8Block* x, size_t supers, bool five) {
  float sum = 0;
  int lo[kQK], hi[kQK];
  for (size_t b = 0; b < supers; ++b, x += kSubBlocks) {
    const float d = Half(p), dmin = Half(p + 2);
    const uint8_t* scales = p + 4;
    const uint8_t* qh = p + 16;
    const uint8_t* q = five ? p + 48 : p + 16;
    for (int is = 0; is < kSubBlocks; is += 2, q += kQK) {
      const ggml::ScaledPair s = ggml::PairScales(d, dmin, scales, is);
      for (int l = 0; l < kQK; ++l) {
        lo[l] = q[l] & kNibble;
        hi[l] = q[l] >> 4;
        if (five) {
          lo[l] |= ((qh[l] >> is) & 1) << 4;
          hi[l] |= ((qh[l] >> (is + 1)) & 1) << 4;
        }
      }
      sum += (s.d1 * x[is].d) * static_cast<float>(DotQ(lo, x[is].q, kQK)) - s.m1 * x[is].sum;
      sum += (s.d2 * x[is + 1].d) * static_cast<float>(DotQ(hi, x[is + 1].q, kQK)) - s.m2 * x[is + 1].sum;
    }
    p += five ? 176 : 144;
  }
  return sum;
}

float DotQ6K(const uint8_t* p, const Q8Block* x, size_t supers) {
  float sum = 0;
  int v[kQK];
  for (size_t b = 0; b < supers; ++b, p += 210) {
    const uint8_t* ql = p;
    const uint8_t* qh = p + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
    const float d = Half(p + 208);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, x += 4) {
      for (int g = 0; g < 4; ++g) {
        for (int l = 0; l < kQK; ++l) v[l] = ggml::Q6KQuant(ql, qh, g, l);
        // Values 0-15 and 16-31 of the group have their own scales; the quants are offset by 32.
        int total = 0;
        for (int k = 0; k < 2; ++k) {
          total += sc[2 * g + k] * (DotQ(v + kHalf * k, x[g].q + kHalf * k, kHalf) - 32 * x[g].isum[k]);
        }
        sum += (d * x[g].d) * static_cast<float>(total);
      }
    }
  }
  return sum;
}

float DotIq4Xs(const uint8_t* p, const Q8Block* x, size_t supers) {
  float sum = 0;
  int v[kQK];
  for (size_t b = 0; b < supers; ++b, p += 136) {
    const float d = Half(p);
    const uint8_t* qs = p + 8;
    for (int ib = 0; ib < kSubBlocks; ++ib, qs += kHalf, ++x) {
      Nibbles(qs, v);
      for (int& e : v) e = ggml::kIq4Values[e];
      sum += (d * static_cast<float>(ggml::Iq4XsScale(p, ib)) * x->d) * static_cast<float>(DotQ(v, x->q, kQK));
    }
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

bool BlockDotQ8Scalar(GgmlType type, const void* row, const Q8Block* x, size_t n, float* out) {
  const auto* p = static_cast<const uint8_t*>(row);
  switch (type) {
    case GgmlType::kQ4_K: *out = DotQ4K(p, x, n / 256, false); return true;
    case GgmlType::kQ5_K: *out = DotQ4K(p, x, n / 256, true); return true;
    case GgmlType::kQ6_K: *out = DotQ6K(p, x, n / 256); return true;
    case GgmlType::kIQ4_XS: *out = DotIq4Xs(p, x, n / 256); return true;
    default:
      if (!HasQ8Dot(type)) return false;
      *out = DotSmall(type, p, x, n / kQK);
      return true;
  }
}

void QuantizeQ8(const float* x, size_t n, Q8Block* out) {
  for (size_t k = 0; k < n / kQ8BlockValues; ++k, x += kQ8BlockValues) {
    Q8Block& b = out[k];
    float amax = 0, sum = 0;
    for (size_t j = 0; j < kQ8BlockValues; ++j) {
      amax = std::fmax(amax, std::fabs(x[j]));
      sum += x[j];
    }
    b.sum = sum;
    b.isum[0] = b.isum[1] = 0;
    if (!std::isfinite(amax) || !std::isfinite(sum)) {
      // A NaN or infinite activation makes every product with it NaN, as the exact path's would be.
      b.d = std::numeric_limits<float>::quiet_NaN();
      std::memset(b.q, 0, sizeof(b.q));
      continue;
    }
    b.d = amax / 127.0f;
    const float inv = amax == 0 ? 0.0f : 127.0f / amax;
    for (size_t j = 0; j < kQ8BlockValues; ++j) {
      const long q = std::lrint(x[j] * inv);
      b.q[j] = static_cast<int8_t>(q > 127 ? 127 : (q < -127 ? -127 : q));
      b.isum[j / 16] = static_cast<int16_t>(b.isum[j / 16] + b.q[j]);
    }
  }
}

}  // namespace es::kernels::internal
