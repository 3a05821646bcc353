// Scalar conversions between fp32 and the two 16-bit float formats weights arrive in (bfloat16, IEEE binary16).
// Float-to-16-bit rounds to nearest, ties to even; NaN stays NaN (quiet), infinities and signed zeros survive.
//
// The one definition of these conversions: the kernels' scalar paths, their tests and make-checkpoint use them.
// They are inline, so this header must not be included by the kernels' ISA translation units
// (compute/kernels/isa_avx2.cc, isa_avx512.cc): an out-of-line copy compiled with -mavx512f could be the one the
// linker keeps.
#pragma once

#include <cstdint>
#include <cstring>

namespace es {

namespace float16_internal {
inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
}  // namespace float16_internal

// bfloat16 is the top half of an fp32: widening is exact.
inline float Bf16ToF32(uint16_t h) { return float16_internal::FromBits(static_cast<uint32_t>(h) << 16); }

inline uint16_t F32ToBf16(float f) {
  constexpr uint32_t kAbsMask = 0x7FFFFFFFu;
  constexpr uint32_t kInfBits = 0x7F800000u;
  constexpr uint32_t kQuietBit = 0x0040u;  // top mantissa bit of a bf16: keeps a NaN a NaN after truncation
  const uint32_t u = float16_internal::Bits(f);
  if ((u & kAbsMask) > kInfBits) return static_cast<uint16_t>((u >> 16) | kQuietBit);
  // Adding 0x7FFF plus the lowest kept bit rounds the dropped half to nearest, ties to even.
  const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float F16ToF32(uint16_t h) {
  constexpr uint32_t kSignShift = 16;
  constexpr uint32_t kExpMask = 0x1Fu;
  constexpr uint32_t kMantMask = 0x3FFu;
  constexpr uint32_t kMantShift = 13;              // 23 - 10 mantissa bits
  constexpr uint32_t kRebias = 127 - 15;            // fp32 bias minus binary16 bias
  constexpr float kSubnormalUnit = 5.9604644775390625e-8f;  // 2^-24, the binary16 subnormal step
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << kSignShift;
  const uint32_t exp = (h >> 10) & kExpMask;
  const uint32_t mant = h & kMantMask;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in fp32.
    const float magnitude = static_cast<float>(mant) * kSubnormalUnit;
    return float16_internal::FromBits(sign | float16_internal::Bits(magnitude));
  }
  if (exp == kExpMask) {
    // Infinity, or NaN made quiet as F16C's vcvtph2ps does.
    constexpr uint32_t kF32QuietBit = 0x00400000u;
    const uint32_t nan_quiet = mant != 0 ? kF32QuietBit : 0;
    return float16_internal::FromBits(sign | 0x7F800000u | (mant << kMantShift) | nan_quiet);
  }
  return float16_internal::FromBits(sign | ((exp + kRebias) << 23) | (mant << kMantShift));
}

inline uint16_t F32ToF16(float f) {
  constexpr uint32_t kAbsMask = 0x7FFFFFFFu;
  constexpr uint32_t kInfBits = 0x7F800000u;
  constexpr uint32_t kF16Inf = 0x7C00u;
  constexpr uint32_t kF16QuietNan = 0x7E00u;
  // 65520 = largest finite binary16 (65504) plus half a step: it and everything above round to infinity.
  constexpr uint32_t kOverflowBits = 0x477FF000u;
  constexpr uint32_t kMinNormalBits = 0x38800000u;  // 2^-14, the smallest normal binary16
  constexpr uint32_t kRebias = (127u - 15u) << 23;
  constexpr uint32_t kDroppedBits = 13;             // 23 - 10 mantissa bits
  const uint32_t u = float16_internal::Bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & kAbsMask;
  if (abs > kInfBits) return static_cast<uint16_t>(sign | kF16QuietNan | ((abs >> kDroppedBits) & 0x3FFu));
  if (abs >= kOverflowBits) return static_cast<uint16_t>(sign | kF16Inf);
  if (abs >= kMinNormalBits) {
    const uint32_t rebased = abs - kRebias;
    const uint32_t rounding = ((1u << kDroppedBits) / 2 - 1) + ((rebased >> kDroppedBits) & 1u);
    return static_cast<uint16_t>(sign | ((rebased + rounding) >> kDroppedBits));
  }
  // Subnormal result: the 24-bit significand shifted so that one unit is 2^-24. A carry into bit 10 yields the
  // smallest normal's encoding, which is the right answer.
  const uint32_t exp = abs >> 23;
  const uint32_t shift = 126u - exp;  // >= 14 here
  constexpr uint32_t kMaxUsefulShift = 24;  // beyond this even the rounding bit is gone: the result is zero
  if (shift > kMaxUsefulShift) return static_cast<uint16_t>(sign);
  const uint32_t significand = (abs & 0x7FFFFFu) | 0x800000u;
  uint32_t mant = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (mant & 1u))) ++mant;
  return static_cast<uint16_t>(sign | mant);
}

}  // namespace es
