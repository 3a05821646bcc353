// The integer products of Q4_K and Q5_K weight rows with many activation rows on AMX tiles (Intel Advanced Matrix
// Extensions: TDPBUSD, u8 x s8 -> s32, 16 x 16 results per instruction). Sixteen weight rows are unpacked into one
// A tile per 32-value sub-block (their quants as bytes, row-major); the activations come packed once per slice into
// B tiles (PackQ8KForAmx); each tile product is one sub-block's integer dot products, which the sub-block scales
// multiply and add into each pair's super-block integer sum. The float epilogue is BlockDotQ8Scalar's, operation
// for operation (separate multiplies and adds, the minimum terms in sub-block order), so each result equals the
// scalar reference's bit for bit. Compiled with -mamx-tile -mamx-int8 and AVX-512 flags; entered only where
// AmxAvailable() says the CPU has the tiles and the kernel let this process use them.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cpuid.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "compute/kernels/ggml_blocks.h"
#include "compute/kernels/isa_ops.h"
#include "store/base/float16.h"

namespace es::kernels::internal {
namespace {

using ggml::kQ4KBytes;
using ggml::kQ5KBytes;

constexpr int kSubBlocks = 8;  // 32-value sub-blocks per super-block
constexpr size_t kTileBytes = kAmxTileRows * 32;  // an A tile: 16 rows of one sub-block's 32 quants

// Linux: the tile data state must be requested per process before the first tile instruction.
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0 and 1: A (16 weight rows x 32 quants), tiles 6 and 7: B (8 x 64 bytes: 4 quants of each of 16
// activation rows per row), each pair used in turn; tiles 2-5: C (16 x 16 int32), one per sub-block of four in
// flight, so that consecutive products need not wait for each other.
const TileConfig& Config() {
  static const TileConfig config = [] {
    TileConfig c;
    for (int t : {0, 1}) {
      c.rows[t] = kAmxTileRows;
      c.colsb[t] = 32;
    }
    for (int t : {6, 7}) {
      c.rows[t] = 8;
      c.colsb[t] = 64;
    }
    for (int t = 2; t < 6; ++t) {
      c.rows[t] = kAmxTileRows;
      c.colsb[t] = 64;
    }
    return c;
  }();
  return config;
}

bool Detect() {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  constexpr unsigned int kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;
  if ((edx & kAmxTile) == 0 || (edx & kAmxInt8) == 0) return false;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// One sub-block's tile product into C tile TC, through A tile TA and B tile TB. A macro: GCC's tile intrinsics
// spell the tile register's number into their assembly.
#define ES_AMX_PRODUCT(TC, TA, TB, a, b) \
  do {                                   \
    _tile_zero(TC);                      \
    _tile_loadd(TA, (a), 32);            \
    _tile_loadd(TB, (b), 64);            \
    _tile_dpbusd(TC, TA, TB);            \
  } while (0)

}  // namespace

bool AmxAvailable() {
  static const bool available = Detect();
  return available;
}

bool AmxTakes(GgmlType type) { return type == GgmlType::kQ4_K || type == GgmlType::kQ5_K; }

size_t AmxPackedBytes(size_t rows, size_t n) {
  return (rows + kAmxTileRows - 1) / kAmxTileRows * (n / kQ8KBlockValues) * kAmxSuperBytes;
}

void PackQ8KForAmx(const std::byte* qx, size_t stride, size_t rows, size_t n, std::byte* packed) {
  const size_t supers = n / kQ8KBlockValues;
  for (size_t g0 = 0; g0 < rows; g0 += kAmxTileRows) {
    const size_t count = rows - g0 < kAmxTileRows ? rows - g0 : kAmxTileRows;
    for (size_t b = 0; b < supers; ++b, packed += kAmxSuperBytes) {
      std::memset(packed, 0, kAmxSuperBytes);
      auto* tiles = reinterpret_cast<uint32_t*>(packed);  // [sub-block][8][16] groups of 4 quants
      auto* sums = reinterpret_cast<float*>(packed + kSubBlocks * 512);  // [8][16]
      auto* d = sums + kSubBlocks * kAmxTileRows;                        // [16]
      for (size_t k = 0; k < count; ++k) {
        const auto* x = reinterpret_cast<const Q8KBlock*>(qx + (g0 + k) * stride) + b;
        uint32_t groups[64];
        std::memcpy(groups, x->q, sizeof(groups));
        for (int s = 0; s < kSubBlocks; ++s) {
          for (int kk = 0; kk < 8; ++kk) tiles[(s * 8 + kk) * kAmxTileRows + k] = groups[s * 8 + kk];
          sums[s * kAmxTileRows + k] = x->sums[s];
        }
        d[k] = x->d;
      }
    }
  }
}

bool AmxBlockGemmQ8(GgmlType type, const void* w, size_t row_bytes, size_t nrows, const std::byte* packed,
                    size_t groups, size_t n, float* out) {
  if (!AmxTakes(type) || nrows == 0 || nrows > kAmxTileRows || groups == 0 || groups > kAmxMaxGroups) return false;
  const bool five = type == GgmlType::kQ5_K;
  const size_t supers = n / kQ8KBlockValues, block_bytes = five ? kQ5KBytes : kQ4KBytes;
  const size_t group_bytes = supers * kAmxSuperBytes;
  alignas(64) uint8_t a[kSubBlocks][kTileBytes];
  alignas(64) int32_t c[4][kAmxTileRows * kAmxTileRows];
  alignas(64) float acc[kAmxMaxGroups][kAmxTileRows][kAmxTileRows];
  int32_t scales[kAmxTileRows][kSubBlocks] = {};
  float minimum[kAmxTileRows][kSubBlocks] = {}, dw[kAmxTileRows] = {};
  std::memset(a, 0, sizeof(a));  // rows past nrows stay zero
  std::memset(acc, 0, sizeof(acc));
  _tile_loadconfig(&Config());
  const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  for (size_t b = 0; b < supers; ++b) {
    // The weight rows' quants as A tiles, once for every group of activation rows.
    for (size_t m = 0; m < nrows; ++m) {
      const uint8_t* p = static_cast<const uint8_t*>(w) + m * row_bytes + b * block_bytes;
      uint16_t h;
      std::memcpy(&h, p, 2);
      dw[m] = F16ToF32(h);
      std::memcpy(&h, p + 2, 2);
      const float dmin = F16ToF32(h);
      for (int j = 0; j < kSubBlocks; ++j) {
        int mj = 0;
        ggml::ScaleMinK4(j, p + 4, scales[m][j], mj);
        minimum[m][j] = dmin * static_cast<float>(mj);
      }
      const __m256i qh = five ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)) : _mm256_setzero_si256();
      const uint8_t* q = p + (five ? 48 : 16);
      for (int chunk = 0; chunk < 4; ++chunk) {
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * chunk));
        __m256i lo = _mm256_and_si256(bytes, low4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
        if (five) {  // bit 2 chunk of qh[l] is the low value's fifth bit, bit 2 chunk + 1 the high one's
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * chunk), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * chunk + 1), one), 4));
        }
        _mm256_store_si256(reinterpret_cast<__m256i*>(a[2 * chunk] + 32 * m), lo);
        _mm256_store_si256(reinterpret_cast<__m256i*>(a[2 * chunk + 1] + 32 * m), hi);
      }
    }
    for (size_t g = 0; g < groups; ++g) {
      const std::byte* tiles = packed + g * group_bytes + b * kAmxSuperBytes;
      // Each sub-block's products, scaled by the weight row's integer sub-block scale, into exact int32 sums.
      __m512i isum[kAmxTileRows];
      for (size_t m = 0; m < kAmxTileRows; ++m) isum[m] = _mm512_setzero_si512();
      auto scale_in = [&](int s, const int32_t* tile) {
        for (size_t m = 0; m < nrows; ++m) {
          const __m512i products = _mm512_load_si512(tile + m * kAmxTileRows);
          isum[m] = _mm512_add_epi32(isum[m], _mm512_mullo_epi32(products, _mm512_set1_epi32(scales[m][s])));
        }
      };
      for (int half = 0; half < 2; ++half) {
        const int s0 = 4 * half;
        ES_AMX_PRODUCT(2, 0, 6, a[s0], tiles + (s0 + 0) * 512);
        ES_AMX_PRODUCT(3, 1, 7, a[s0 + 1], tiles + (s0 + 1) * 512);
        ES_AMX_PRODUCT(4, 0, 6, a[s0 + 2], tiles + (s0 + 2) * 512);
        ES_AMX_PRODUCT(5, 1, 7, a[s0 + 3], tiles + (s0 + 3) * 512);
        _tile_stored(2, c[0], 64);
        _tile_stored(3, c[1], 64);
        _tile_stored(4, c[2], 64);
        _tile_stored(5, c[3], 64);
        for (int i = 0; i < 4; ++i) scale_in(s0 + i, c[i]);
      }
      // sum += (dw * dx) * isum - sum_j (dmin * m_j) * sums_j, as the scalar reference rounds it.
      const auto* sums = reinterpret_cast<const float*>(tiles + kSubBlocks * 512);
      const __m512 dx = _mm512_loadu_ps(sums + kSubBlocks * kAmxTileRows);
      for (size_t m = 0; m < nrows; ++m) {
        const __m512 d = _mm512_mul_ps(_mm512_set1_ps(dw[m]), dx);
        const __m512 scaled = _mm512_mul_ps(d, _mm512_cvtepi32_ps(isum[m]));
        __m512 minimums = _mm512_setzero_ps();
        for (int j = 0; j < kSubBlocks; ++j) {
          minimums = _mm512_add_ps(minimums,
                                   _mm512_mul_ps(_mm512_set1_ps(minimum[m][j]), _mm512_loadu_ps(sums + j * kAmxTileRows)));
        }
        _mm512_store_ps(acc[g][m], _mm512_add_ps(_mm512_load_ps(acc[g][m]), _mm512_sub_ps(scaled, minimums)));
      }
    }
  }
  _tile_release();
  for (size_t g = 0; g < groups; ++g) {
    for (size_t m = 0; m < nrows; ++m) {
      for (size_t k = 0; k < kAmxTileRows; ++k) out[(g * kAmxTileRows + k) * kAmxTileRows + m] = acc[g][m][k];
    }
  }
  return true;
}

}  // namespace es::kernels::internal
