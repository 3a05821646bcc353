// The GGML block formats on the device: 32 values at a time (a "unit": one block of the 32-value formats, one
// sub-block of the 256-value super-block formats), decoded with the float operations of the scalar decoder
// (compute/kernels/ggml_blocks.cc) in its order, each product and difference rounded on its own (__fmul_rn,
// __fsub_rn, __fadd_rn: nvcc would otherwise contract them into fused multiply-adds), so that every value equals
// DequantizeGgmlRow's bit for bit. Internal to es_cuda.
#pragma once

#include <cstddef>
#include <cstdint>

#include "compute/kernels/ggml_blocks.h"
#include "store/base/ggml_type.h"

namespace es::cuda::internal {

// ggml::kIq4Values for device code, which cannot read a host constexpr array; equal by the static_assert below.
static __constant__ int8_t kIq4ValuesDevice[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                     1,    13,   25,  38,  53,  69,  89,  113};
constexpr bool SameIq4Values() {
  constexpr int8_t kCopy[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  for (int i = 0; i < 16; ++i) {
    if (kCopy[i] != ggml::kIq4Values[i]) return false;
  }
  return true;
}
static_assert(SameIq4Values(), "kIq4ValuesDevice must be ggml::kIq4Values");

__device__ __forceinline__ float HalfAt(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(p[0] | (p[1] << 8))));
}
__device__ __forceinline__ uint32_t Bits32At(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// Unit u (values 32u .. 32u + 31) of a row of format kType starting at `row`, decoded into w.
template <GgmlType kType>
__device__ __forceinline__ void DecodeUnit(const uint8_t* row, size_t u, float (&w)[32]) {
  // The block holding unit u, its size from the type table (evaluated at compile time).
  constexpr size_t kBlockBytes = GgmlTypeInfoOf(kType).block_bytes;
  constexpr size_t kUnitsPerBlock = GgmlTypeInfoOf(kType).block_elements / 32;
  const uint8_t* b = row + kBlockBytes * (u / kUnitsPerBlock);
  if constexpr (kType == GgmlType::kQ8_0) {
    const float d = HalfAt(b);
    for (int j = 0; j < 32; ++j) w[j] = __fmul_rn(static_cast<float>(static_cast<int8_t>(b[2 + j])), d);
  } else if constexpr (kType == GgmlType::kQ4_0 || kType == GgmlType::kQ5_0) {
    constexpr bool kFive = kType == GgmlType::kQ5_0;
    const float d = HalfAt(b);
    const uint32_t qh = kFive ? Bits32At(b + 2) : 0;
    const uint8_t* qs = b + (kFive ? 6 : 2);
    for (int j = 0; j < 16; ++j) {
      int lo = qs[j] & 0xF, hi = qs[j] >> 4;
      if constexpr (kFive) {
        lo |= static_cast<int>(((qh >> j) & 1) << 4);
        hi |= static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      }
      const int offset = kFive ? 16 : 8;
      w[j] = __fmul_rn(static_cast<float>(lo - offset), d);
      w[j + 16] = __fmul_rn(static_cast<float>(hi - offset), d);
    }
  } else if constexpr (kType == GgmlType::kQ4_1 || kType == GgmlType::kQ5_1) {
    constexpr bool kFive = kType == GgmlType::kQ5_1;
    const float d = HalfAt(b), m = HalfAt(b + 2);
    const uint32_t qh = kFive ? Bits32At(b + 4) : 0;
    const uint8_t* qs = b + (kFive ? 8 : 4);
    for (int j = 0; j < 16; ++j) {
      int lo = qs[j] & 0xF, hi = qs[j] >> 4;
      if constexpr (kFive) {
        lo |= static_cast<int>(((qh >> j) & 1) << 4);
        hi |= static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      }
      w[j] = __fadd_rn(__fmul_rn(static_cast<float>(lo), d), m);
      w[j + 16] = __fadd_rn(__fmul_rn(static_cast<float>(hi), d), m);
    }
  } else if constexpr (kType == GgmlType::kIQ4_NL) {
    const float d = HalfAt(b);
    for (int j = 0; j < 16; ++j) {
      w[j] = __fmul_rn(d, static_cast<float>(kIq4ValuesDevice[b[2 + j] & 0xF]));
      w[j + 16] = __fmul_rn(d, static_cast<float>(kIq4ValuesDevice[b[2 + j] >> 4]));
    }
  } else if constexpr (kType == GgmlType::kQ4_K || kType == GgmlType::kQ5_K) {
    constexpr bool kFive = kType == GgmlType::kQ5_K;
    const int j8 = static_cast<int>(u % 8);
    int sc, m;
    ggml::ScaleMinK4(j8, b + 4, sc, m);
    const float d1 = __fmul_rn(HalfAt(b), static_cast<float>(sc));
    const float m1 = __fmul_rn(HalfAt(b + 2), static_cast<float>(m));
    const uint8_t* q = b + (kFive ? 48 : 16) + 32 * (j8 / 2);
    const uint8_t* qh = b + 16;
    for (int l = 0; l < 32; ++l) {
      int v = (q[l] >> (4 * (j8 & 1))) & 0xF;
      if constexpr (kFive) v += ((qh[l] >> j8) & 1) ? 16 : 0;
      w[l] = __fsub_rn(__fmul_rn(d1, static_cast<float>(v)), m1);
    }
  } else if constexpr (kType == GgmlType::kQ6_K) {
    const int g32 = static_cast<int>(u % 8), half = g32 / 4, g = g32 % 4;
    const uint8_t* ql = b + 64 * half;
    const uint8_t* qh = b + 128 + 32 * half;
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * half + 2 * g;
    const float d = HalfAt(b + 208);
    for (int l = 0; l < 32; ++l) {
      const int q = ggml::Q6KQuant(ql, qh, g, l) - 32;
      w[l] = __fmul_rn(__fmul_rn(d, static_cast<float>(sc[l / 16])), static_cast<float>(q));
    }
  } else {
    static_assert(kType == GgmlType::kIQ4_XS, "not a device block format");
    const int ib = static_cast<int>(u % 8);
    const float dl = __fmul_rn(HalfAt(b), static_cast<float>(ggml::Iq4XsScale(b, ib)));
    const uint8_t* qs = b + 8 + 16 * ib;
    for (int j = 0; j < 16; ++j) {
      w[j] = __fmul_rn(dl, static_cast<float>(kIq4ValuesDevice[qs[j] & 0xF]));
      w[j + 16] = __fmul_rn(dl, static_cast<float>(kIq4ValuesDevice[qs[j] >> 4]));
    }
  }
}

}  // namespace es::cuda::internal
