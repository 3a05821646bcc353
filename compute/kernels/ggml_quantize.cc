// GGML block quantizers. The layouts are those ggml_blocks.cc decodes (its header comment lists them).
//
// 32-value formats, bit-exact with ggml's reference quantizers:
//   Q8_0  d = amax / 127, q = round(x / d) (half away from zero)
//   Q4_0  d = m / -8 with m the value of largest magnitude (its sign kept), q = min(15, trunc(x / d + 8.5))
//   Q5_0  as Q4_0 with -16, 16.5 and 31
//   Q4_1  d = (max - min) / 15, stored minimum min, q = min(15, trunc((x - min) / d + 0.5))
//   Q5_1  as Q4_1 with 31 (no clamp: the rounding cannot pass 31)
// where each division by d is a multiplication by 1 / d (0 when d is 0), as in ggml, and d is stored as f16 but
// used unrounded for the quants.
//
// Super-block formats, this project's own fit: FitAffine / FitSymmetric choose a sub-block's scale (and minimum)
// by trying candidate scales around the range's and refining each by least squares on its rounding; the
// super-block scale then quantizes the sub-block scales to 6 (Q4_K, Q5_K, IQ4_XS) or 8 (Q6_K) bits, and the values
// are rounded again against the scales as stored.
#include "compute/kernels/ggml_quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "compute/kernels/ggml_blocks.h"
#include "store/base/float16.h"

namespace es {
namespace {

constexpr int kQK = 32;    // values per block of the 32-value formats
constexpr int kQKK = 256;  // values per super-block

uint8_t* U8(std::byte* p) { return reinterpret_cast<uint8_t*>(p); }

void PutHalf(uint8_t* p, float v) {
  const uint16_t h = F32ToF16(v);
  std::memcpy(p, &h, sizeof(h));
}

// ---- 32-value formats (ggml's reference rounding) ------------------------------------------------------------

void Q8_0(const float* x, uint8_t* b) {
  float amax = 0;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d != 0 ? 1.0f / d : 0.0f;
  PutHalf(b, d);
  auto* qs = reinterpret_cast<int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) qs[j] = static_cast<int8_t>(std::round(x[j] * id));
}

// The value of largest magnitude, sign kept (the first of equals).
float SignedExtreme(const float* x, int n) {
  float amax = 0, extreme = 0;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      extreme = x[j];
    }
  }
  return extreme;
}

// Q4_0 (levels 16) and Q5_0 (levels 32): symmetric, the extreme value at the lowest level.
void SymmetricNibbles(const float* x, int levels, uint8_t* qs, uint32_t* qh, float* d_out) {
  const float d = SignedExtreme(x, kQK) / static_cast<float>(-levels / 2);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  *d_out = d;
  const float bias = static_cast<float>(levels / 2) + 0.5f;
  uint32_t high = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = std::min(levels - 1, static_cast<int>(static_cast<int8_t>(x[j] * id + bias)));
    const int hi = std::min(levels - 1, static_cast<int>(static_cast<int8_t>(x[j + kQK / 2] * id + bias)));
    qs[j] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
    high |= static_cast<uint32_t>((lo >> 4) & 1) << j;
    high |= static_cast<uint32_t>((hi >> 4) & 1) << (j + kQK / 2);
  }
  if (qh != nullptr) *qh = high;
}

void Q4_0(const float* x, uint8_t* b) {
  float d;
  SymmetricNibbles(x, 16, b + 2, nullptr, &d);
  PutHalf(b, d);
}

void Q5_0(const float* x, uint8_t* b) {
  float d;
  uint32_t qh;
  SymmetricNibbles(x, 32, b + 6, &qh, &d);
  PutHalf(b, d);
  std::memcpy(b + 2, &qh, sizeof(qh));
}

// Q4_1 (levels 16, clamped) and Q5_1 (levels 32): the range from the minimum.
void AffineNibbles(const float* x, int levels, uint8_t* qs, uint32_t* qh, float* d_out, float* min_out) {
  float lo = std::numeric_limits<float>::max(), hi = -std::numeric_limits<float>::max();
  for (int j = 0; j < kQK; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  const float d = (hi - lo) / static_cast<float>(levels - 1);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  *d_out = d;
  *min_out = lo;
  uint32_t high = 0;
  // Q4_1 clamps through a signed byte, Q5_1 (whose rounding cannot pass 31) converts to an unsigned one.
  auto quant = [&](float v) {
    const float t = (v - lo) * id + 0.5f;
    return levels == 16 ? std::min(15, static_cast<int>(static_cast<int8_t>(t)))
                        : static_cast<int>(static_cast<uint8_t>(t));
  };
  for (int j = 0; j < kQK / 2; ++j) {
    const int a = quant(x[j]), c = quant(x[j + kQK / 2]);
    qs[j] = static_cast<uint8_t>((a & 0xF) | ((c & 0xF) << 4));
    high |= static_cast<uint32_t>((a >> 4) & 1) << j;
    high |= static_cast<uint32_t>((c >> 4) & 1) << (j + kQK / 2);
  }
  if (qh != nullptr) *qh = high;
}

void Q4_1(const float* x, uint8_t* b) {
  float d, m;
  AffineNibbles(x, 16, b + 4, nullptr, &d, &m);
  PutHalf(b, d);
  PutHalf(b + 2, m);
}

void Q5_1(const float* x, uint8_t* b) {
  float d, m;
  uint32_t qh;
  AffineNibbles(x, 32, b + 8, &qh, &d, &m);
  PutHalf(b, d);
  PutHalf(b + 2, m);
  std::memcpy(b + 4, &qh, sizeof(qh));
}

// ---- the fits of the super-block formats ---------------------------------------------------------------------

int RoundClamp(float v, int lo, int hi) { return std::clamp(static_cast<int>(std::lround(v)), lo, hi); }

// value ~= scale * q - min with q in [0, nmax] and min >= 0 (the formats store a non-negative minimum that is
// subtracted). Writes the quants and returns the fit.
struct Affine {
  float scale = 0;
  float min = 0;
};
Affine FitAffine(const float* x, int n, int nmax, uint8_t* q) {
  float lo = 0, hi = 0;  // the range, widened to hold 0 (the minimum cannot be negative)
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (hi == lo) {
    std::fill(q, q + n, uint8_t{0});
    return {0, -lo};
  }
  Affine best;
  double best_err = std::numeric_limits<double>::infinity();
  uint8_t trial[kQKK];
  constexpr int kSteps = 20;  // levels of nmax - 1 ... nmax + 1 over the range
  for (int step = 0; step <= kSteps; ++step) {
    const float levels = static_cast<float>(nmax) - 1.0f + 2.0f * static_cast<float>(step) / kSteps;
    const float inv = levels / (hi - lo);
    double sq = 0, sx = 0, sqq = 0, sxq = 0;
    for (int i = 0; i < n; ++i) {
      trial[i] = static_cast<uint8_t>(RoundClamp((x[i] - lo) * inv, 0, nmax));
      const double qi = trial[i];
      sq += qi;
      sqq += qi * qi;
      sx += x[i];
      sxq += x[i] * qi;
    }
    // Least squares for x ~= s q + o, with o <= 0.
    const double det = n * sqq - sq * sq;
    double s = det > 0 ? (n * sxq - sq * sx) / det : 0;
    double o = (sx - s * sq) / n;
    if (o > 0) {
      o = 0;
      s = sqq > 0 ? sxq / sqq : 0;
    }
    if (s <= 0) continue;
    double err = 0;
    for (int i = 0; i < n; ++i) {
      const double e = s * trial[i] + o - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best = {static_cast<float>(s), static_cast<float>(-o)};
      std::copy(trial, trial + n, q);
    }
  }
  if (best_err == std::numeric_limits<double>::infinity()) std::fill(q, q + n, uint8_t{0});
  return best;
}

// The IQ4 grid index nearest to t (the grid ascends).
int NearestIq4(float t) {
  const int8_t* g = ggml::kIq4Values;
  int k = static_cast<int>(std::lower_bound(g, g + 16, t, [](int8_t v, float u) { return v < u; }) - g);
  if (k == 16) return 15;
  if (k > 0 && t - static_cast<float>(g[k - 1]) <= static_cast<float>(g[k]) - t) --k;
  return k;
}

// The levels a symmetric sub-block rounds to: the integers -32..31 (Q6_K) or the IQ4 grid.
enum class Levels { kSixBit, kIq4 };
float LevelOf(Levels levels, float t) {
  if (levels == Levels::kSixBit) return static_cast<float>(RoundClamp(t, -32, 31));
  return static_cast<float>(ggml::kIq4Values[NearestIq4(t)]);
}

// value ~= scale * level. The value of largest magnitude goes to the most negative level (the wider end; the
// scale takes its sign) give or take 10%, each candidate refined by least squares on its rounding. Returns the
// scale of least squared error.
float FitSymmetric(const float* x, int n, Levels levels) {
  const float extreme = SignedExtreme(x, n);
  if (extreme == 0) return 0;
  const float lowest = levels == Levels::kSixBit ? -32.0f : static_cast<float>(ggml::kIq4Values[0]);
  float best_scale = 0;
  double best_err = std::numeric_limits<double>::infinity();
  constexpr int kSteps = 10;
  for (int step = -kSteps; step <= kSteps; ++step) {
    const float scale0 = extreme / (lowest * (1.0f + 0.01f * static_cast<float>(step)));
    double sxv = 0, svv = 0;
    for (int i = 0; i < n; ++i) {
      const double v = LevelOf(levels, x[i] / scale0);
      sxv += x[i] * v;
      svv += v * v;
    }
    if (svv == 0) continue;
    const float scale = static_cast<float>(sxv / svv);
    // The least-squares error of this rounding at its best scale: sum x^2 - (sum x v)^2 / sum v^2 (the sum of x^2
    // is the same for every candidate, so it is left out).
    const double err = -sxv * sxv / svv;
    if (err < best_err) {
      best_err = err;
      best_scale = scale;
    }
  }
  return best_scale;
}

// A super-block scale for sub-block scales in [0, max] stored in `bits` bits: the f16 as stored, and each
// sub-block's integer scale.
float SuperScale(const float* sub, int count, int top, int* out) {
  float m = 0;
  for (int j = 0; j < count; ++j) m = std::max(m, sub[j]);
  const float d = F16ToF32(F32ToF16(m / static_cast<float>(top)));
  for (int j = 0; j < count; ++j) out[j] = d > 0 ? RoundClamp(sub[j] / d, 0, top) : 0;
  return d;
}

// Q4_K (nmax 15) and Q5_K (nmax 31): eight sub-blocks of 32, 6-bit scales and minimums.
void AffineSuperBlock(const float* x, int nmax, uint8_t* b, uint8_t* quants) {
  float scales[8], mins[8];
  for (int j = 0; j < 8; ++j) {
    const Affine a = FitAffine(x + j * kQK, kQK, nmax, quants + j * kQK);
    scales[j] = a.scale;
    mins[j] = a.min;
  }
  int sc[8], mn[8];
  const float d = SuperScale(scales, 8, 63, sc);
  const float dmin = SuperScale(mins, 8, 63, mn);
  PutHalf(b, d);
  PutHalf(b + 2, dmin);
  uint8_t* packed = b + 4;
  std::memset(packed, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      packed[j] = static_cast<uint8_t>(sc[j]);
      packed[j + 4] = static_cast<uint8_t>(mn[j]);
    } else {
      packed[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
      packed[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      packed[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
    }
  }
  // The values again against the scales as stored (what the decoder multiplies).
  for (int j = 0; j < 8; ++j) {
    const float step = d * static_cast<float>(sc[j]);
    const float offset = dmin * static_cast<float>(mn[j]);
    for (int i = 0; i < kQK; ++i) {
      quants[j * kQK + i] =
          step > 0 ? static_cast<uint8_t>(RoundClamp((x[j * kQK + i] + offset) / step, 0, nmax)) : uint8_t{0};
    }
  }
}

void Q4_K(const float* x, uint8_t* b) {
  uint8_t q[kQKK];
  AffineSuperBlock(x, 15, b, q);
  uint8_t* qs = b + 16;
  for (int pair = 0; pair < 4; ++pair) {
    for (int l = 0; l < kQK; ++l) {
      qs[pair * kQK + l] = static_cast<uint8_t>(q[2 * pair * kQK + l] | (q[(2 * pair + 1) * kQK + l] << 4));
    }
  }
}

void Q5_K(const float* x, uint8_t* b) {
  uint8_t q[kQKK];
  AffineSuperBlock(x, 31, b, q);
  uint8_t* qh = b + 16;
  uint8_t* ql = b + 48;
  std::memset(qh, 0, 32);
  for (int pair = 0; pair < 4; ++pair) {
    for (int l = 0; l < kQK; ++l) {
      const int a = q[2 * pair * kQK + l], c = q[(2 * pair + 1) * kQK + l];
      ql[pair * kQK + l] = static_cast<uint8_t>((a & 0xF) | ((c & 0xF) << 4));
      qh[l] |= static_cast<uint8_t>(((a >> 4) << (2 * pair)) | ((c >> 4) << (2 * pair + 1)));
    }
  }
}

// Q6_K: sixteen sub-blocks of 16, int8 scales, 6-bit quants stored plus 32.
void Q6_K(const float* x, uint8_t* b) {
  constexpr int kSub = 16;
  float scales[kSub];
  float amax = 0, signed_max = 0;
  for (int j = 0; j < kSub; ++j) {
    scales[j] = FitSymmetric(x + j * kSub, kSub, Levels::kSixBit);
    if (std::fabs(scales[j]) > amax) {
      amax = std::fabs(scales[j]);
      signed_max = scales[j];
    }
  }
  // The largest scale at -128, the wider end of int8, as the values' extreme sits at -32.
  const float d = F16ToF32(F32ToF16(signed_max / -128.0f));
  int8_t sc[kSub];
  uint8_t q[kQKK];
  for (int j = 0; j < kSub; ++j) {
    sc[j] = d != 0 ? static_cast<int8_t>(RoundClamp(scales[j] / d, -128, 127)) : int8_t{0};
    const float step = d * static_cast<float>(sc[j]);
    for (int i = 0; i < kSub; ++i) {
      q[j * kSub + i] = static_cast<uint8_t>((step != 0 ? RoundClamp(x[j * kSub + i] / step, -32, 31) : 0) + 32);
    }
  }
  uint8_t* ql = b;
  uint8_t* qh = b + 128;
  std::memcpy(b + 192, sc, sizeof(sc));
  PutHalf(b + 208, d);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* h = q + half * 128;
    for (int l = 0; l < kQK; ++l) {
      ql[half * 64 + l] = static_cast<uint8_t>((h[l] & 0xF) | ((h[l + 64] & 0xF) << 4));
      ql[half * 64 + l + 32] = static_cast<uint8_t>((h[l + 32] & 0xF) | ((h[l + 96] & 0xF) << 4));
      qh[half * 32 + l] = static_cast<uint8_t>((h[l] >> 4) | ((h[l + 32] >> 4) << 2) | ((h[l + 64] >> 4) << 4) |
                                               ((h[l + 96] >> 4) << 6));
    }
  }
}

void PackIq4(const float* x, float scale, uint8_t* qs) {
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = scale != 0 ? NearestIq4(x[j] / scale) : NearestIq4(0);
    const int hi = scale != 0 ? NearestIq4(x[j + kQK / 2] / scale) : NearestIq4(0);
    qs[j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

void Iq4Nl(const float* x, uint8_t* b) {
  const float d = F16ToF32(F32ToF16(FitSymmetric(x, kQK, Levels::kIq4)));
  PutHalf(b, d);
  PackIq4(x, d, b + 2);
}

// IQ4_XS: eight sub-blocks of 32 with 6-bit signed scales (-32..31) of one f16.
void Iq4Xs(const float* x, uint8_t* b) {
  float scales[8];
  float amax = 0, signed_max = 0;
  for (int j = 0; j < 8; ++j) {
    scales[j] = FitSymmetric(x + j * kQK, kQK, Levels::kIq4);
    if (std::fabs(scales[j]) > amax) {
      amax = std::fabs(scales[j]);
      signed_max = scales[j];
    }
  }
  const float d = F16ToF32(F32ToF16(signed_max / -32.0f));
  PutHalf(b, d);
  uint16_t scales_h = 0;
  uint8_t* scales_l = b + 4;
  std::memset(scales_l, 0, 4);
  for (int j = 0; j < 8; ++j) {
    const int s = d != 0 ? RoundClamp(scales[j] / d, -32, 31) : 0;
    const int stored = s + 32;
    scales_l[j / 2] |= static_cast<uint8_t>((stored & 0xF) << (4 * (j % 2)));
    scales_h |= static_cast<uint16_t>(((stored >> 4) & 3) << (2 * j));
    PackIq4(x + j * kQK, d * static_cast<float>(s), b + 8 + j * (kQK / 2));
  }
  std::memcpy(b + 2, &scales_h, sizeof(scales_h));
}

}  // namespace

bool CanQuantizeGgml(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
    case GgmlType::kIQ4_NL:
    case GgmlType::kIQ4_XS:
      return true;
    default:
      return false;
  }
}

std::optional<GgmlType> ParseQuantizeFormat(std::string_view name) {
  const std::optional<GgmlType> type = ParseGgmlTypeName(name);
  if (!type || !CanQuantizeGgml(*type)) return std::nullopt;
  return type;
}

std::string QuantizeFormatNames() {
  std::string names;
  for (const GgmlTypeInfo& t : ggml_types::kTypes) {
    if (CanQuantizeGgml(t.type)) names += (names.empty() ? "" : ", ") + std::string(t.name);
  }
  return names;
}

Status QuantizeGgmlRow(GgmlType type, std::span<const float> values, std::span<std::byte> row) {
  const GgmlTypeInfo info = GgmlTypeInfoOf(type);
  if (!CanQuantizeGgml(type)) {
    return Status::NotSupported("quantizing to " + std::string(info.name) + " is not supported");
  }
  const std::optional<uint64_t> bytes = GgmlRowBytes(type, values.size());
  if (!bytes || *bytes != row.size()) {
    return Status::InvalidArgument("a row of " + std::to_string(values.size()) + " values is not " +
                                   std::to_string(row.size()) + " bytes of " + std::string(info.name));
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return Status::InvalidArgument("value " + std::to_string(i) + " of the row is not finite");
    }
  }
  const float* x = values.data();
  uint8_t* p = U8(row.data());
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(p, x, values.size() * sizeof(float));
      return Status::Ok();
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = type == GgmlType::kF16 ? F32ToF16(x[i]) : F32ToBf16(x[i]);
        std::memcpy(p + 2 * i, &h, sizeof(h));
      }
      return Status::Ok();
    default:
      break;
  }
  void (*block)(const float*, uint8_t*) = nullptr;
  switch (type) {
    case GgmlType::kQ8_0: block = Q8_0; break;
    case GgmlType::kQ4_0: block = Q4_0; break;
    case GgmlType::kQ4_1: block = Q4_1; break;
    case GgmlType::kQ5_0: block = Q5_0; break;
    case GgmlType::kQ5_1: block = Q5_1; break;
    case GgmlType::kQ4_K: block = Q4_K; break;
    case GgmlType::kQ5_K: block = Q5_K; break;
    case GgmlType::kQ6_K: block = Q6_K; break;
    case GgmlType::kIQ4_NL: block = Iq4Nl; break;
    case GgmlType::kIQ4_XS: block = Iq4Xs; break;
    default: return Status::NotSupported("quantizing to " + std::string(info.name) + " is not supported");
  }
  const size_t blocks = values.size() / info.block_elements;
  for (size_t i = 0; i < blocks; ++i) block(x + i * info.block_elements, p + i * info.block_bytes);
  return Status::Ok();
}

}  // namespace es
