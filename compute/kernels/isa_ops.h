// Internal: the per-ISA inner loops behind cpu_kernels.h, one table per instruction set. Arguments are validated
// by the caller (cpu_kernels.cc); these functions never fail and never allocate.
//
// This header is included by translation units compiled with -mavx2 / -mavx512f, so it declares only plain data
// and functions: an inline function or template here could be emitted with AVX-512 instructions and then be
// picked by the linker for the portable path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "store/base/dtype.h"
#include "store/base/ggml_type.h"

namespace es::kernels {
enum class Isa : uint8_t;  // cpu_kernels.h
}  // namespace es::kernels

namespace es::kernels::internal {

// 32 activations quantized to int8 for the integer block dot products (CpuContext::q8_activations):
// x[i] ~ d * q[i] with d = max |x| / 127 and q[i] = round(x[i] / d). `sum` is the fp32 sum of the 32
// activations themselves, not of their quants (the formats with a minimum multiply it, so that term loses nothing
// to the quantization; summed in one fixed order, q8_dot.cc's AbsMaxAndSum), `isum` the sums
// of q over values 0-15 and 16-31. The layout of the 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL).
struct Q8Block {
  float d;
  float sum;
  int16_t isum[2];
  int8_t q[32];
};
inline constexpr size_t kQ8BlockValues = 32;

// 256 activations quantized to int8 with one scale, the layout of the 256-value super-block formats (Q4_K, Q5_K,
// Q6_K, IQ4_XS): one scale per super-block lets their kernels apply the weights' integer sub-block scales to
// integer sums and convert to float once per 256 values, as llama.cpp's Q8_K does. d and q as in Q8Block; `sums`
// the fp32 sums of each 32 activations themselves (the K-quants' minimums multiply them), `isum` the sums of q over
// each 16.
struct Q8KBlock {
  float d;
  float sums[8];
  int16_t isum[16];
  int8_t q[256];
};
inline constexpr size_t kQ8KBlockValues = 256;

// R activation rows quantized as Q8KBlocks, `stride` bytes apart (a block_dot_q8 call's x): x[k][b] is row k's
// super-block b, q(k, b, at) its quant `at`.
template <int R>
struct Q8KRows {
  const Q8KBlock* x[R];
  Q8KRows(const std::byte* base, size_t stride) {
    for (int k = 0; k < R; ++k) x[k] = reinterpret_cast<const Q8KBlock*>(base + k * stride);
  }
  const int8_t* q(int k, size_t b, size_t at) const { return x[k][b].q + at; }
};

// Whether activations multiplying rows of `type` take the 256-value layout (Q8KBlock) rather than Q8Block.
bool UsesQ8K(GgmlType type);
// Bytes of one activation row of n values quantized for rows of `type` (n a multiple of its block).
size_t Q8RowBytes(GgmlType type, size_t n);

// y[b, r] = sum_k x[b, k] * W[r, k] for rows [row_begin, row_end) of W and every b < batch.
struct MatMulArgs {
  const float* x = nullptr;  // [batch, cols]
  size_t batch = 0;
  const void* w = nullptr;  // [rows, cols], row-major, dtype kF32, kF16 or kBF16 (or blocks, below)
  DType dtype = DType::kUnknown;
  size_t rows = 0;
  size_t cols = 0;
  float* y = nullptr;  // [batch, rows]
  // Null: y is overwritten. Otherwise y[b, r] += accumulate_scale[b] * (x W^T)[b, r] (the MoE combine).
  const float* accumulate_scale = nullptr;
  // Null: activation row b is row b of x. Otherwise it is row x_rows[b] (a gather of the tokens an expert got).
  const int32_t* x_rows = nullptr;
  // Null: output row b is row b of y. Otherwise it is row y_rows[b] (the scatter of the MoE combine); rows of
  // y that repeat receive their contributions in order of b.
  const int32_t* y_rows = nullptr;
  // Set: w's rows are blocks of this GGML format (WeightMatrix::blocks). cpu_kernels.cc runs such a matmul
  // itself, decoding each row once and taking `dot` of it with each activation row; the ISA tables never see one.
  std::optional<GgmlType> blocks;
  // Set (block formats only): the activation rows quantized for `blocks` (QuantizeQ8Row), Q8RowBytes apart, row b
  // for output row b (x_rows already applied); each output is then `block_dot_q8` of the weight row with it.
  const std::byte* qx = nullptr;
  // Set (with qx): the same rows packed for AMX (PackQ8KForAmx); the products are then AmxBlockGemmQ8's.
  const std::byte* amx = nullptr;
};

// The most query heads one call of IsaOps::scores / weighted_sum handles.
constexpr size_t kMaxGroupHeads = 8;

struct IsaOps {
  // Each output element is one fixed sequence of operations, whatever the row range or batch tiling.
  void (*matmul_rows)(const MatMulArgs& args, size_t row_begin, size_t row_end);
  // sum_i a[i] * b[i], in an order that depends only on n.
  float (*dot)(const float* a, const float* b, size_t n);
  // Attention scores of `heads` (<= kMaxGroupHeads) query heads that share a KV head, against `count` keys:
  // out[h * out_stride + j] = dot(q + h * dim, k + j * k_stride, dim) * scale, each dot exactly as `dot`
  // computes it. Each key row is read once for all the heads.
  void (*scores)(const float* q, size_t heads, const float* k, size_t k_stride, size_t count, size_t dim, float scale,
                 float* out, size_t out_stride);
  // The largest of x[0, n) (n >= 1); NaNs are skipped unless all are NaN.
  float (*max)(const float* x, size_t n);
  // p[i] = exp(s[i] - shift) (p may be s), returning the sum of the p[i] in an order that depends only on n.
  // Within a few ulp of expf for arguments in [-87, 88], where softmax's max-subtracted arguments (<= 0) live;
  // tiny (0 or subnormal) below; NaN stays NaN.
  float (*exp_shifted)(const float* s, float shift, size_t n, float* p);
  // The value half of attention with the online softmax's rescaling folded in, for `heads` (<= kMaxGroupHeads)
  // heads: acc[h * dim + i] = acc[h * dim + i] * acc_scale[h] + sum_j p[h * p_stride + j] * v[j * v_stride + i],
  // the sum taken in order of j. Each value row is read once for all the heads.
  void (*weighted_sum)(const float* p, size_t p_stride, size_t heads, const float* v, size_t v_stride, size_t count,
                       size_t dim, const float* acc_scale, float* acc);
  // 16-bit or fp32 elements to fp32 (exact).
  void (*to_f32)(const void* src, DType dtype, size_t n, float* dst);
  // fp32 to bf16 / f16 (round to nearest even) or fp32 (copy).
  void (*from_f32)(const float* src, size_t n, DType dtype, void* dst);
  // Null, or: sum_i decode(row)[i] * x[i] for a row of n values of a GGML block format, each value decoded with
  // the same float operations as DequantizeGgmlRow, summed in an order that depends only on n. Returns false for
  // a format it does not take (the caller decodes the row and uses `dot`).
  bool (*block_dot)(GgmlType type, const void* row, const float* x, size_t n, float* out);
  // out[k] = sum_i decode(row)[i] * x_k[i] for k < count (1..kQ8Rows), x_k the activation row quantized by
  // QuantizeQ8Row for `type` at x + k * x_stride: integer products of the quants, scaled once per weight scale
  // group (32 values) for the 32-value formats, and, for the super-block formats, summed over the whole 256 values
  // with the weights' integer sub-block scales and scaled once; the minimum or offset terms of Q4_1, Q5_1, Q4_K and
  // Q5_K use the activations' exact sums. Each out[k] is computed the same way whatever count is (the rows share
  // the weight row's loads). Not the decoded matrix's result: within the activations' rounding of it. Returns
  // false for a format it does not take.
  bool (*block_dot_q8)(GgmlType type, const void* row, const std::byte* x, size_t x_stride, size_t count, size_t n,
                       float* out);
};

// The most activation rows one block_dot_q8 call takes, and the rows RunMatMul quantizes at a time.
inline constexpr size_t kQ8Rows = 8;

// The integer dot product of every format that has one (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K,
// IQ4_XS), in plain scalar code: the reference for the SIMD versions and their fallback. Defined in q8_dot.cc.
bool BlockDotQ8Scalar(GgmlType type, const void* row, const std::byte* x, size_t x_stride, size_t count, size_t n,
                      float* out);
// The formats BlockDotQ8Scalar takes.
bool HasQ8Dot(GgmlType type);
// Quantizes n activations (a multiple of 32) into n / 32 blocks. Plain scalar code, so every ISA sees the same
// quants.
void QuantizeQ8(const float* x, size_t n, Q8Block* out);
// The same into n / 256 super-blocks (n a multiple of 256).
void QuantizeQ8K(const float* x, size_t n, Q8KBlock* out);
// One row of n activations in the layout rows of `type` take (Q8RowBytes(type, n) bytes at out).
void QuantizeQ8Row(GgmlType type, const float* x, size_t n, std::byte* out);

// AMX tiles (isa_amx.cc) for the integer products of Q4_K, Q5_K, Q6_K and IQ4_XS rows with many activation rows
// at once.
// Activation rows go in groups of kAmxTileRows, weight rows likewise.
inline constexpr size_t kAmxTileRows = 16;
// Per group of activation rows and super-block: eight 512-byte B tiles (one per 32-value sub-block: row kk holds
// quants 4kk .. 4kk + 3 of each of the 16 rows), the rows' exact sums per sub-block ([8][16] fp32) and their scales
// d ([16] fp32). Q6_K's 16-value groups take half of a sub-block's tile: its rows 0-3 or 4-7.
inline constexpr size_t kAmxSuperBytes = 8 * 512 + 8 * kAmxTileRows * 4 + kAmxTileRows * 4;
// Whether this machine runs the AMX kernels: the CPU has AMX-TILE and AMX-INT8 (and AVX-512), and Linux granted
// this process the tile state (asked once, at the first call).
bool AmxAvailable();
// Whether AmxBlockGemmQ8 takes rows of `type`.
bool AmxTakes(GgmlType type);
// The fewest activation rows for which MatMul takes the AMX kernel for `type`: 4, and 32 for Q6_K (sixteen tile
// products per super-block, one per 16 values: below 32 rows the VNNI kernel is faster).
size_t AmxMinRows(GgmlType type);
// Bytes PackQ8KForAmx writes for `rows` activation rows of n values (groups of kAmxTileRows, the last padded).
size_t AmxPackedBytes(size_t rows, size_t n);
// `rows` activation rows quantized as Q8KBlocks (QuantizeQ8Row), `stride` bytes apart, into the AMX layout above.
void PackQ8KForAmx(const std::byte* qx, size_t stride, size_t rows, size_t n, std::byte* packed);
// The most groups of activation rows one AmxBlockGemmQ8 call takes.
inline constexpr size_t kAmxMaxGroups = 4;
// For `nrows` (<= kAmxTileRows) weight rows of `type`, `row_bytes` apart, and `groups` (<= kAmxMaxGroups)
// consecutive packed groups of activation rows: out[(g * kAmxTileRows + k) * kAmxTileRows + m] = BlockDotQ8Scalar's
// result for weight row m and row k of group g, bit for bit (rows past the last group's end give values to
// ignore). Each weight row is unpacked once for all the groups. False for a type it does not take. Only where
// AmxAvailable().
bool AmxBlockGemmQ8(GgmlType type, const void* w, size_t row_bytes, size_t nrows, const std::byte* packed,
                    size_t groups, size_t n, float* out);

// The AVX2 block_dot (Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS), which the AVX-512 table shares. Defined in isa_avx2.cc.
bool BlockDotAvx2(GgmlType type, const void* row, const float* x, size_t n, float* out);
// The AVX2 block_dot_q8 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K, Q6_K, IQ4_XS), which the AVX-512
// table shares. Defined in isa_avx2.cc.
bool BlockDotQ8Avx2(GgmlType type, const void* row, const std::byte* x, size_t x_stride, size_t count, size_t n,
                    float* out);
// The AVX-512 VNNI block_dot_q8 (Q4_K, Q5_K, Q6_K, IQ4_XS; the other formats through BlockDotQ8Avx2), which the
// AVX-512 table uses where the CPU has VNNI. Defined in isa_avx512_vnni.cc.
bool BlockDotQ8Avx512Vnni(GgmlType type, const void* row, const std::byte* x, size_t x_stride, size_t count,
                          size_t n, float* out);

// The table for `isa`, or null where the build or the CPU lacks it. Defined in cpu_kernels.cc; for it and tests.
const IsaOps* OpsFor(Isa isa);

extern const IsaOps kScalarOps;
#if defined(ES_KERNELS_X86)
extern const IsaOps kAvx2Ops;    // AVX2 + FMA + F16C
extern const IsaOps kAvx512Ops;  // AVX-512 F/BW/VL + FMA + F16C
#endif

}  // namespace es::kernels::internal
