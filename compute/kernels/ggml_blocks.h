// The GGML block formats (the quantized rows of GGUF files), decoded to fp32 by plain scalar code: the reference
// every block kernel is tested against. Bit-exact with ggml's dequantization: each value is computed with the
// same float operations in the same order (scale times sub-block scale, times the quant, minus the minimum), and
// the library is built without contracting a multiply and an add into one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "store/base/float16.h"
#include "store/base/ggml_type.h"
#include "store/base/status.h"

namespace es {

// Decodes one row of `type` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) into
// `out`, whose size is the row's length in values. InvalidArgument when `row` is not exactly that many values'
// blocks; NotSupported for the other types. Thread-safe; reads `row` and writes `out` only during the call.
Status DequantizeGgmlRow(GgmlType type, std::span<const std::byte> row, std::span<float> out);

// Block-format facts the SIMD kernels (and the CUDA decoder) share with the scalar decoder. The functions are
// static, each unit its own copy: an ISA's unit is compiled with its -m flags, and one shared inline copy could end
// up in the scalar path. Plain integer code, so nvcc compiles them for the device too.
#ifdef __CUDACC__
#define ES_GGML_HD __host__ __device__
#else
#define ES_GGML_HD
#endif
namespace ggml {

// The IEEE half (a block's scale) stored at p, unaligned, as fp32: exact. Host code; the SIMD units convert with
// F16C instead.
static inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return F16ToF32(h);
}

// Block sizes of the formats the kernels unpack by hand, from the type table (store/base/ggml_type.h).
inline constexpr size_t kQ8Block = GgmlTypeInfoOf(GgmlType::kQ8_0).block_elements;     // 32
inline constexpr size_t kQ8Bytes = GgmlTypeInfoOf(GgmlType::kQ8_0).block_bytes;        // f16 scale, 32 int8
inline constexpr size_t kQKBlock = GgmlTypeInfoOf(GgmlType::kQ4_K).block_elements;     // 256
inline constexpr size_t kQ4KBytes = GgmlTypeInfoOf(GgmlType::kQ4_K).block_bytes;       // d, dmin, 12 scale bytes, qs[128]
inline constexpr size_t kQ5KBytes = GgmlTypeInfoOf(GgmlType::kQ5_K).block_bytes;       // ... and qh[32]
inline constexpr size_t kQ6KBytes = GgmlTypeInfoOf(GgmlType::kQ6_K).block_bytes;       // ql[128], qh[64], 16 scales, d
inline constexpr size_t kIq4XsBytes = GgmlTypeInfoOf(GgmlType::kIQ4_XS).block_bytes;   // d, scales_h, scales_l[4], qs[128]

// IQ4_NL and IQ4_XS map each nibble to one of these values (a non-uniform grid fitted to weight distributions).
alignas(16) inline constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                      1,    13,   25,  38,  53,  69,  89,  113};

// Sub-block j's 6-bit scale and minimum from the 12 packed bytes of Q4_K and Q5_K: the first four of each sit in
// the low six bits of bytes 0-3 and 4-7; the last four take their low four bits from bytes 8-11 and their top two
// from the spare high bits of bytes 0-7.
ES_GGML_HD static inline void ScaleMinK4(int j, const uint8_t* q, int& scale, int& min) {
  if (j < 4) {
    scale = q[j] & 63;
    min = q[j + 4] & 63;
  } else {
    scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Sub-blocks is and is + 1 of a Q4_K or Q5_K super-block: their scales and minimums times the super-block's.
struct ScaledPair {
  float d1, m1, d2, m2;
};
static inline ScaledPair PairScales(float d, float dmin, const uint8_t* scales, int is) {
  int sc, m;
  ScaledPair p;
  ScaleMinK4(is, scales, sc, m);
  p.d1 = d * static_cast<float>(sc);
  p.m1 = dmin * static_cast<float>(m);
  ScaleMinK4(is + 1, scales, sc, m);
  p.d2 = d * static_cast<float>(sc);
  p.m2 = dmin * static_cast<float>(m);
  return p;
}

// Value l + 32 g (l < 32, g < 4) of a 128-value half of a Q6_K super-block, as the unsigned 6-bit quant (the
// stored value is it less 32): four bits from ql (g odd: ql[l + 32]; g >= 2: the high nibble), two from qh[l].
ES_GGML_HD static inline int Q6KQuant(const uint8_t* ql, const uint8_t* qh, int g, int l) {
  return ((ql[l + 32 * (g & 1)] >> (4 * (g >> 1))) & 0xF) | (((qh[l] >> (2 * g)) & 3) << 4);
}

// Sub-block ib's scale (-32..31) of an IQ4_XS super-block: the low four bits from scales_l (two per byte, at
// offset 4), the top two from the 16-bit scales_h (at offset 2), less 32.
ES_GGML_HD static inline int Iq4XsScale(const uint8_t* block, int ib) {
  const uint16_t scales_h = static_cast<uint16_t>(block[2] | (block[3] << 8));
  const uint8_t* scales_l = block + 4;
  return (((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4)) - 32;
}

// The 12 packed scale bytes of a Q4_K / Q5_K super-block as the eight 6-bit scales (sc) and eight 6-bit minimums
// (mn), one per byte in sub-block order, four per uint32 (ScaleMinK4 for all eight at once).
static inline void ScalesMinsK4(const uint8_t* packed, uint32_t (&sc)[2], uint32_t (&mn)[2]) {
  uint32_t u[3];
  for (int i = 0; i < 3; ++i) {
    u[i] = packed[4 * i] | (packed[4 * i + 1] << 8) | (packed[4 * i + 2] << 16) | (static_cast<uint32_t>(packed[4 * i + 3]) << 24);
  }
  sc[0] = u[0] & 0x3F3F3F3F;
  sc[1] = (u[2] & 0x0F0F0F0F) | (((u[0] >> 6) & 0x03030303) << 4);
  mn[0] = u[1] & 0x3F3F3F3F;
  mn[1] = ((u[2] >> 4) & 0x0F0F0F0F) | (((u[1] >> 6) & 0x03030303) << 4);
}

// Asks for the weight bytes [p, p + bytes) shifted kPrefetchDistance ahead to be brought into the cache: a matmul
// reads its rows once, front to back, and without it one core's dot products wait on memory (measured: the cold
// Q6_K GEMV of BM_MatMulBlocks 1.6x faster on one thread).
constexpr size_t kPrefetchDistance = 4096;
static inline void PrefetchAhead(const uint8_t* p, size_t bytes) {
  const uint8_t* ahead = p + kPrefetchDistance;
  for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(ahead + o);
  __builtin_prefetch(ahead + bytes - 1);
}

}  // namespace ggml

}  // namespace es
