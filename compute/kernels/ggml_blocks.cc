// Scalar decoding of the GGML block formats. Layouts, per block (all little-endian, f16 scales):
//   Q4_0   d, qs[16]                    value = (nibble - 8) * d
//   Q4_1   d, m, qs[16]                 value = nibble * d + m
//   Q5_0   d, qh[4], qs[16]             value = ((nibble | fifth bit << 4) - 16) * d
//   Q5_1   d, m, qh[4], qs[16]          value = (nibble | fifth bit << 4) * d + m
//   Q8_0   d, qs[32] (int8)             value = q * d
//   IQ4_NL d, qs[16]                    value = d * kIq4Values[nibble]
// In the 32-value formats byte j holds value j in its low nibble and value j + 16 in its high one, and bit j of
// qh is value j's fifth bit. The 256-value super-blocks:
//   Q4_K   d, dmin, scales[12], qs[128]            8 sub-blocks of 32 with 6-bit scale and minimum
//   Q5_K   d, dmin, scales[12], qh[32], qs[128]    as Q4_K, plus a fifth bit per value
//   Q6_K   ql[128], qh[64], scales[16] (int8), d   16 sub-blocks of 16, 4 + 2 bits per value, minus 32
//   IQ4_XS d, scales_h (u16), scales_l[4], qs[128] 8 sub-blocks of 32 with a 6-bit scale, non-linear values
#include "compute/kernels/ggml_blocks.h"

#include <cstdint>
#include <cstring>
#include <string>

#include "store/base/float16.h"

namespace es {
namespace {

using ggml::kIq4Values;
using ggml::PairScales;
using ggml::ScaledPair;

constexpr int kQK = 32;     // values per block of the 32-value formats
constexpr int kQKK = 256;   // values per super-block
constexpr int kNibble = 0xF;
constexpr int kQ4Offset = 8;
constexpr int kQ5Offset = 16;
constexpr int kQ5High = 16;  // the fifth bit's value
constexpr int kQ6Offset = 32;

const uint8_t* U8(const std::byte* p) { return reinterpret_cast<const uint8_t*>(p); }

void Q4_0(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & kNibble) - kQ4Offset) * d;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - kQ4Offset) * d;
  }
}

void Q4_1(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b), m = ggml::HalfAt(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & kNibble) * d + m;
    y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

uint32_t FifthBits(const uint8_t* p) {
  uint32_t qh;
  std::memcpy(&qh, p, sizeof(qh));
  return qh;
}

void Q5_0(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b);
  const uint32_t qh = FifthBits(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & kNibble) | static_cast<int>(((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + kQK / 2)) & 1) << 4);
    y[j] = static_cast<float>(lo - kQ5Offset) * d;
    y[j + kQK / 2] = static_cast<float>(hi - kQ5Offset) * d;
  }
}

void Q5_1(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b), m = ggml::HalfAt(b + 2);
  const uint32_t qh = FifthBits(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & kNibble) | static_cast<int>(((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + kQK / 2)) & 1) << 4);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + kQK / 2] = static_cast<float>(hi) * d + m;
  }
}

void Q8_0(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

void Iq4Nl(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * static_cast<float>(kIq4Values[qs[j] & kNibble]);
    y[j + kQK / 2] = d * static_cast<float>(kIq4Values[qs[j] >> 4]);
  }
}

void Q4_K(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b), dmin = ggml::HalfAt(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int is = 0; is < 8; is += 2) {
    const ScaledPair s = PairScales(d, dmin, scales, is);
    for (int l = 0; l < kQK; ++l) *y++ = s.d1 * static_cast<float>(q[l] & kNibble) - s.m1;
    for (int l = 0; l < kQK; ++l) *y++ = s.d2 * static_cast<float>(q[l] >> 4) - s.m2;
    q += kQK;
  }
}

void Q5_K(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b), dmin = ggml::HalfAt(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int is = 0; is < 8; is += 2) {
    const ScaledPair s = PairScales(d, dmin, scales, is);
    for (int l = 0; l < kQK; ++l) {
      *y++ = s.d1 * static_cast<float>((ql[l] & kNibble) + ((qh[l] & u1) ? kQ5High : 0)) - s.m1;
    }
    for (int l = 0; l < kQK; ++l) {
      *y++ = s.d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? kQ5High : 0)) - s.m2;
    }
    ql += kQK;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

void Q6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = ggml::HalfAt(b + 208);
  for (int half = 0; half < 2; ++half) {
    for (int l = 0; l < kQK; ++l) {
      const int is = l / 16;
      const int q1 = ggml::Q6KQuant(ql, qh, 0, l) - kQ6Offset;
      const int q2 = ggml::Q6KQuant(ql, qh, 1, l) - kQ6Offset;
      const int q3 = ggml::Q6KQuant(ql, qh, 2, l) - kQ6Offset;
      const int q4 = ggml::Q6KQuant(ql, qh, 3, l) - kQ6Offset;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void Iq4Xs(const uint8_t* b, float* y) {
  const float d = ggml::HalfAt(b);
  const uint8_t* qs = b + 8;
  for (int ib = 0; ib < kQKK / kQK; ++ib) {
    const float dl = d * static_cast<float>(ggml::Iq4XsScale(b, ib));
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = dl * static_cast<float>(kIq4Values[qs[j] & kNibble]);
      y[j + kQK / 2] = dl * static_cast<float>(kIq4Values[qs[j] >> 4]);
    }
    y += kQK;
    qs += kQK / 2;
  }
}

}  // namespace

Status DequantizeGgmlRow(GgmlType type, std::span<const std::byte> row, std::span<float> out) {
  const GgmlTypeInfo info = GgmlTypeInfoOf(type);
  const std::optional<uint64_t> bytes = GgmlRowBytes(type, out.size());
  if (!bytes || *bytes != row.size()) {
    return Status::InvalidArgument("a row of " + std::to_string(out.size()) + " " + std::string(info.name) +
                                   " values cannot be " + std::to_string(row.size()) + " bytes");
  }
  const uint8_t* p = U8(row.data());
  float* y = out.data();
  const size_t blocks = out.size() / info.block_elements;
  void (*block)(const uint8_t*, float*) = nullptr;
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(y, p, out.size() * sizeof(float));
      return Status::Ok();
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, sizeof(h));
        y[i] = type == GgmlType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
      }
      return Status::Ok();
    case GgmlType::kQ4_0: block = Q4_0; break;
    case GgmlType::kQ4_1: block = Q4_1; break;
    case GgmlType::kQ5_0: block = Q5_0; break;
    case GgmlType::kQ5_1: block = Q5_1; break;
    case GgmlType::kQ8_0: block = Q8_0; break;
    case GgmlType::kIQ4_NL: block = Iq4Nl; break;
    case GgmlType::kQ4_K: block = Q4_K; break;
    case GgmlType::kQ5_K: block = Q5_K; break;
    case GgmlType::kQ6_K: block = Q6_K; break;
    case GgmlType::kIQ4_XS: block = Iq4Xs; break;
    default:
      return Status::NotSupported("ggml type " + std::string(info.name) + " is not supported");
  }
  for (size_t i = 0; i < blocks; ++i) block(p + i * info.block_bytes, y + i * info.block_elements);
  return Status::Ok();
}

}  // namespace es
