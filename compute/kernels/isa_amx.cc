// The integer products of Q4_K, Q5_K, Q6_K and IQ4_XS weight rows with many activation rows on AMX tiles (Intel
// Advanced Matrix Extensions: TDPBUSD / TDPBSSD, u8 or s8 x s8 -> s32, 16 x 16 results per instruction). Sixteen
// weight rows are unpacked into one A tile per scale group (32 values; Q6_K 16), their quants as bytes, row-major
// (Q6_K's less its offset of 32 and IQ4_XS's looked up, as signed bytes); the activations come packed once per
// slice into B tiles (PackQ8KForAmx); each tile product is one group's integer dot products, which the weights'
// integer group scales multiply and add into each pair's super-block integer sum. The float epilogue is
// BlockDotQ8Scalar's, operation for operation (separate multiplies and adds, the minimum terms in sub-block order),
// so each result equals the scalar reference's bit for bit. Compiled with -mamx-tile -mamx-int8 and AVX-512 flags; entered only where
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

constexpr size_t kABytes = 4096;  // one super-block of 16 weight rows: 256 quants each, as bytes, tile by tile
constexpr int kMaxProducts = 16;  // tile products per super-block (Q6_K: one per 16-value group)

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

// For products over K quants (32: a sub-block of Q4_K, Q5_K, IQ4_XS; 16: a group of Q6_K): tiles 0 and 1 are A
// (16 weight rows x K quants), tiles 6 and 7 B (K / 4 rows of 64 bytes: 4 quants of each of 16 activation rows per
// row), each pair used in turn; tiles 2-5 C (16 x 16 int32), four products in flight.
TileConfig MakeConfig(int k) {
  TileConfig c;
  for (int t : {0, 1}) {
    c.rows[t] = kAmxTileRows;
    c.colsb[t] = static_cast<uint16_t>(k);
  }
  for (int t : {6, 7}) {
    c.rows[t] = static_cast<uint8_t>(k / 4);
    c.colsb[t] = 64;
  }
  for (int t = 2; t < 6; ++t) {
    c.rows[t] = kAmxTileRows;
    c.colsb[t] = 64;
  }
  return c;
}

bool Detect() {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  constexpr unsigned int kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;
  if ((edx & kAmxTile) == 0 || (edx & kAmxInt8) == 0) return false;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// One product into C tile TC through A tile TA and B tile TB: unsigned weights (TDPBUSD) or signed (TDPBSSD).
// Macros: GCC's tile intrinsics spell the tile register's number into their assembly.
#define ES_AMX_PRODUCT(DP, TC, TA, TB, a, b, k) \
  do {                                          \
    _tile_zero(TC);                             \
    _tile_loadd(TA, (a), (k));                  \
    _tile_loadd(TB, (b), 64);                   \
    DP(TC, TA, TB);                             \
  } while (0)
#define ES_AMX_FOUR(DP, a, k, tiles, p0, c)                                             \
  do {                                                                                  \
    ES_AMX_PRODUCT(DP, 2, 0, 6, (a) + ((p0) + 0) * 16 * (k), (tiles) + ((p0) + 0) * 16 * (k), k); \
    ES_AMX_PRODUCT(DP, 3, 1, 7, (a) + ((p0) + 1) * 16 * (k), (tiles) + ((p0) + 1) * 16 * (k), k); \
    ES_AMX_PRODUCT(DP, 4, 0, 6, (a) + ((p0) + 2) * 16 * (k), (tiles) + ((p0) + 2) * 16 * (k), k); \
    ES_AMX_PRODUCT(DP, 5, 1, 7, (a) + ((p0) + 3) * 16 * (k), (tiles) + ((p0) + 3) * 16 * (k), k); \
    _tile_stored(2, (c)[0], 64);                                                        \
    _tile_stored(3, (c)[1], 64);                                                        \
    _tile_stored(4, (c)[2], 64);                                                        \
    _tile_stored(5, (c)[3], 64);                                                        \
  } while (0)

// One super-block of up to 16 weight rows, unpacked: product p's A tile (16 rows x K quants) at a + p * 16 * K,
// each row's integer scale per product, its scale d and (Q4_K, Q5_K) its minimum per sub-block, dmin * m_j.
struct Unpacked {
  alignas(64) uint8_t a[kABytes];
  int32_t scales[kAmxTileRows][kMaxProducts];
  float minimum[kAmxTileRows][8];
  float d[kAmxTileRows];
};

__m256i Load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
void Store16(uint8_t* p, __m128i v) { _mm_store_si128(reinterpret_cast<__m128i*>(p), v); }
void Store32(uint8_t* p, __m256i v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }

// Q4_K / Q5_K: chunk c of 32 bytes holds sub-block 2c in its low nibbles and 2c + 1 in its high ones.
void UnpackQ4K(const uint8_t* p, size_t m, bool five, Unpacked& u) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  u.d[m] = ggml::HalfAt(p);
  const float dmin = ggml::HalfAt(p + 2);
  for (int j = 0; j < 8; ++j) {
    int mj = 0;
    ggml::ScaleMinK4(j, p + 4, u.scales[m][j], mj);
    u.minimum[m][j] = dmin * static_cast<float>(mj);
  }
  const __m256i qh = five ? Load32(p + 16) : _mm256_setzero_si256();
  const uint8_t* q = p + (five ? 48 : 16);
  for (int chunk = 0; chunk < 4; ++chunk) {
    const __m256i bytes = Load32(q + 32 * chunk);
    __m256i lo = _mm256_and_si256(bytes, low4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
    if (five) {  // bit 2 chunk of qh[l] is the low value's fifth bit, bit 2 chunk + 1 the high one's
      lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * chunk), one), 4));
      hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * chunk + 1), one), 4));
    }
    Store32(u.a + (2 * chunk) * 512 + 32 * m, lo);
    Store32(u.a + (2 * chunk + 1) * 512 + 32 * m, hi);
  }
}

// Q6_K: half h's 32 values of group g (g = 0..3: values 128h + 32g + l) take the low (g < 2) or high nibbles of
// ql[l + 32 (g & 1)] and bits 2g, 2g + 1 of qh[l]; less 32, as signed bytes. Each 16 values have their own scale.
void UnpackQ6K(const uint8_t* p, size_t m, Unpacked& u) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3), offset = _mm256_set1_epi8(32);
  u.d[m] = ggml::HalfAt(p + 208);
  const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
  for (int i = 0; i < 16; ++i) u.scales[m][i] = sc[i];
  for (int h = 0; h < 2; ++h) {
    const __m256i ql0 = Load32(p + 64 * h), ql1 = Load32(p + 64 * h + 32), qh = Load32(p + 128 + 32 * h);
    for (int g = 0; g < 4; ++g) {
      const __m256i ql = (g & 1) != 0 ? ql1 : ql0;
      const __m256i low = _mm256_and_si256(g < 2 ? ql : _mm256_srli_epi16(ql, 4), low4);
      const __m256i high = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), two), 4);
      const __m256i v = _mm256_sub_epi8(_mm256_or_si256(low, high), offset);
      const int group = 8 * h + 2 * g;  // its first 16 values; the next group holds the other 16
      Store16(u.a + group * 256 + 16 * m, _mm256_castsi256_si128(v));
      Store16(u.a + (group + 1) * 256 + 16 * m, _mm256_extracti128_si256(v, 1));
    }
  }
}

// IQ4_XS: sub-block ib's 16 bytes hold its values 0-15 in the low nibbles and 16-31 in the high ones, each an
// index into kIq4Values (signed bytes); the scale is Iq4XsScale.
void UnpackIq4Xs(const uint8_t* p, size_t m, Unpacked& u) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ggml::kIq4Values)));
  u.d[m] = ggml::HalfAt(p);
  for (int ib = 0; ib < 8; ++ib) u.scales[m][ib] = ggml::Iq4XsScale(p, ib);
  const uint8_t* qs = p + 8;
  for (int pair = 0; pair < 4; ++pair) {  // sub-blocks 2 pair and 2 pair + 1
    const __m256i bytes = Load32(qs + 32 * pair);
    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, low4));
    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4));
    Store32(u.a + (2 * pair) * 512 + 32 * m, _mm256_permute2x128_si256(lo, hi, 0x20));
    Store32(u.a + (2 * pair + 1) * 512 + 32 * m, _mm256_permute2x128_si256(lo, hi, 0x31));
  }
}

}  // namespace

bool AmxAvailable() {
  static const bool available = Detect();
  return available;
}

bool AmxTakes(GgmlType type) {
  return type == GgmlType::kQ4_K || type == GgmlType::kQ5_K || type == GgmlType::kQ6_K || type == GgmlType::kIQ4_XS;
}

size_t AmxMinRows(GgmlType type) { return type == GgmlType::kQ6_K ? 32 : 4; }

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
      auto* sums = reinterpret_cast<float*>(packed + 8 * 512);  // [8][16]
      auto* d = sums + 8 * kAmxTileRows;                        // [16]
      for (size_t k = 0; k < count; ++k) {
        const auto* x = reinterpret_cast<const Q8KBlock*>(qx + (g0 + k) * stride) + b;
        uint32_t groups[64];
        std::memcpy(groups, x->q, sizeof(groups));
        for (int s = 0; s < 8; ++s) {
          for (int kk = 0; kk < 8; ++kk) tiles[(s * 8 + kk) * kAmxTileRows + k] = groups[s * 8 + kk];
          sums[s * kAmxTileRows + k] = x->sums[s];
        }
        d[k] = x->d;
      }
    }
  }
}

namespace {

enum class Kind { kQ4K, kQ6K, kIq4Xs };  // Q4_K and Q5_K; Q6_K; IQ4_XS

template <Kind kKind>
void Gemm(GgmlType type, const void* w, size_t row_bytes, size_t nrows, const std::byte* packed, size_t groups,
          size_t n, float* out) {
  constexpr bool q4k = kKind == Kind::kQ4K, q6k = kKind == Kind::kQ6K;
  constexpr int products = q6k ? 16 : 8;
  const size_t supers = n / kQ8KBlockValues, group_bytes = supers * kAmxSuperBytes;
  const size_t block_bytes = GgmlTypeInfoOf(type).block_bytes;
  static const TileConfig config = MakeConfig(q6k ? 16 : 32);
  Unpacked u;
  alignas(64) int32_t c[4][kAmxTileRows * kAmxTileRows];
  alignas(64) float acc[kAmxMaxGroups][kAmxTileRows][kAmxTileRows];
  std::memset(u.a, 0, sizeof(u.a));  // rows past nrows stay zero
  std::memset(acc, 0, sizeof(acc));
  _tile_loadconfig(&config);
  for (size_t b = 0; b < supers; ++b) {
    // The weight rows' quants as A tiles, once for every group of activation rows.
    for (size_t m = 0; m < nrows; ++m) {
      const uint8_t* p = static_cast<const uint8_t*>(w) + m * row_bytes + b * block_bytes;
      if constexpr (q4k) {
        UnpackQ4K(p, m, type == GgmlType::kQ5_K, u);
      } else if constexpr (q6k) {
        UnpackQ6K(p, m, u);
      } else {
        UnpackIq4Xs(p, m, u);
      }
    }
    for (size_t g = 0; g < groups; ++g) {
      const auto* tiles = reinterpret_cast<const uint8_t*>(packed + g * group_bytes + b * kAmxSuperBytes);
      // Each product, times the weight row's integer scale for it, into exact int32 super-block sums.
      __m512i isum[kAmxTileRows];
      for (size_t m = 0; m < kAmxTileRows; ++m) isum[m] = _mm512_setzero_si512();
      for (int p0 = 0; p0 < products; p0 += 4) {
        if constexpr (q4k) {
          ES_AMX_FOUR(_tile_dpbusd, u.a, 32, tiles, p0, c);
        } else if constexpr (q6k) {
          ES_AMX_FOUR(_tile_dpbssd, u.a, 16, tiles, p0, c);
        } else {
          ES_AMX_FOUR(_tile_dpbssd, u.a, 32, tiles, p0, c);
        }
        for (int i = 0; i < 4; ++i) {
          for (size_t m = 0; m < nrows; ++m) {
            const __m512i dots = _mm512_load_si512(c[i] + m * kAmxTileRows);
            isum[m] = _mm512_add_epi32(isum[m], _mm512_mullo_epi32(dots, _mm512_set1_epi32(u.scales[m][p0 + i])));
          }
        }
      }
      // sum += (d * dx) * isum - sum_j (dmin * m_j) * sums_j (no minimum terms but for Q4_K and Q5_K), rounded
      // as the scalar reference rounds it.
      const auto* sums = reinterpret_cast<const float*>(tiles + 8 * 512);
      const __m512 dx = _mm512_loadu_ps(sums + 8 * kAmxTileRows);
      for (size_t m = 0; m < nrows; ++m) {
        const __m512 d = _mm512_mul_ps(_mm512_set1_ps(u.d[m]), dx);
        __m512 term = _mm512_mul_ps(d, _mm512_cvtepi32_ps(isum[m]));
        if constexpr (q4k) {
          __m512 minimums = _mm512_setzero_ps();
          for (int j = 0; j < 8; ++j) {
            minimums = _mm512_add_ps(minimums,
                                     _mm512_mul_ps(_mm512_set1_ps(u.minimum[m][j]), _mm512_loadu_ps(sums + j * kAmxTileRows)));
          }
          term = _mm512_sub_ps(term, minimums);
        }
        _mm512_store_ps(acc[g][m], _mm512_add_ps(_mm512_load_ps(acc[g][m]), term));
      }
    }
  }
  _tile_release();
  for (size_t g = 0; g < groups; ++g) {
    for (size_t m = 0; m < nrows; ++m) {
      for (size_t r = 0; r < kAmxTileRows; ++r) out[(g * kAmxTileRows + r) * kAmxTileRows + m] = acc[g][m][r];
    }
  }
}

}  // namespace

bool AmxBlockGemmQ8(GgmlType type, const void* w, size_t row_bytes, size_t nrows, const std::byte* packed,
                    size_t groups, size_t n, float* out) {
  if (!AmxTakes(type) || nrows == 0 || nrows > kAmxTileRows || groups == 0 || groups > kAmxMaxGroups) return false;
  switch (type) {
    case GgmlType::kQ6_K: Gemm<Kind::kQ6K>(type, w, row_bytes, nrows, packed, groups, n, out); break;
    case GgmlType::kIQ4_XS: Gemm<Kind::kIq4Xs>(type, w, row_bytes, nrows, packed, groups, n, out); break;
    default: Gemm<Kind::kQ4K>(type, w, row_bytes, nrows, packed, groups, n, out); break;
  }
  return true;
}

}  // namespace es::kernels::internal
