// CPU kernels for the Qwen3-MoE / Mixtral forward pass (docs/generation.md): matmul against bf16/f16/f32
// weights, the fused SwiGLU expert, RMSNorm, RoPE, causal GQA attention, the router's softmax + top-k, and
// 16-bit float conversions. Activations and accumulation are fp32. Each call picks an instruction set at run
// time (AVX-512, AVX2, portable scalar) and may spread work over a ComputePool.
//
// Guarantees, for every kernel: for a given Isa, each output element is one fixed sequence of fp32 operations,
// so results are bit-identical whatever the pool's thread count (different Isas agree to rounding, not bits).
// No kernel allocates (but for an error's message), throws, or keeps a pointer after it returns; inputs and
// outputs are caller-owned, must not overlap unless a kernel says so, and need no particular alignment.
// Kernels are thread-safe: concurrent calls share nothing but the pool, which serialises them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "compute/kernels/parallel.h"
#include "store/base/dtype.h"
#include "store/base/ggml_type.h"
#include "store/base/status.h"

namespace es::kernels {

enum class Isa : uint8_t {
  kScalar,  // portable C++, always available
  kAvx2,    // AVX2 + FMA + F16C
  kAvx512,  // AVX-512 F/BW/VL + FMA + F16C
};

std::string_view IsaName(Isa isa);
// True when the Isa was compiled in and this CPU (and OS) supports it.
bool IsaAvailable(Isa isa);
// The instruction-set features the kernels use that this CPU has (avx2, fma, f16c, avx512f, avx512bw, avx512vl,
// avx512vnni, and amx-int8 where Linux also lets this process use the tiles), as `info` lists them; empty off x86.
std::vector<std::string> CpuFeatures();
// The fastest available Isa, capped by the environment variable EXPERTSTORE_CPU_ISA (scalar, avx2 or avx512)
// when it is set, so that a whole program or test suite can be run on a slower path. Read once.
Isa BestIsa();

// Where and how a kernel runs. Copyable and cheap; the pool is not owned and must outlive the calls.
struct CpuContext {
  Isa isa = BestIsa();
  ComputePool* pool = nullptr;  // null: everything runs on the calling thread
  // Matmuls on GGML block formats quantize their activations to int8 (per 32 values, one fp32 scale) and take
  // integer dot products, as llama.cpp does: several times faster, and NOT exact (the result is the decoded
  // matrix's times activations rounded to 8 bits). False: every block row is decoded and multiplied in fp32.
  // Formats without an integer path keep the exact one. Dense (F32/F16/BF16) weights are never affected.
  bool q8_activations = false;
  // With q8_activations, on a CPU with AMX (and the AVX-512 table): products of Q4_K, Q5_K, Q6_K and IQ4_XS rows
  // with 4 or more activation rows run on AMX tiles, each result the scalar integer reference's bit for bit (the
  // AVX-512 VNNI kernels round their lanes' partial sums in another order). False: never.
  bool amx = true;
};

// A row-major [rows, cols] weight, as stored by Hugging Face Linear layers ([out_features, in_features]).
// Not owned. dtype is kF32, kF16 or kBF16; data aligned to the element size (no further alignment needed).
// When `blocks` is set, each row is instead GgmlRowBytes(*blocks, cols) bytes of that GGML block format
// (compute/kernels/ggml_blocks.h lists the supported ones), dtype is ignored, and cols is at most
// kMaxBlockRow. MatMul and the expert kernels take such a matrix: each row is decoded exactly as
// DequantizeGgmlRow does, then used as an fp32 row, so the result is the one the decoded matrix gives.
inline constexpr size_t kMaxBlockRow = 16384;
struct WeightMatrix {
  WeightMatrix() = default;
  WeightMatrix(const void* data_in, DType dtype_in, size_t rows_in, size_t cols_in,
               std::optional<GgmlType> blocks_in = std::nullopt)
      : data(data_in), dtype(dtype_in), rows(rows_in), cols(cols_in), blocks(blocks_in) {}

  const void* data = nullptr;
  DType dtype = DType::kUnknown;
  size_t rows = 0;
  size_t cols = 0;
  std::optional<GgmlType> blocks;
};

// A 1-D weight (a norm's scale). Not owned. dtype is kF32, kF16 or kBF16.
struct WeightVector {
  const void* data = nullptr;
  DType dtype = DType::kUnknown;
  size_t size = 0;
};

// ---- Matmul -----------------------------------------------------------------------------------------------

// y[b, r] = sum_k x[b, k] * W[r, k]: x is [batch, w.cols], y is [batch, w.rows]. batch 1 is the decode GEMV;
// larger batches (prefill) reuse each weight row loaded across a tile of activation rows.
Status MatMul(const CpuContext& ctx, const float* x, size_t batch, const WeightMatrix& w, float* y);

// ---- Expert (SwiGLU MLP) ----------------------------------------------------------------------------------

// One expert (or a dense MLP): gate and up are [intermediate, hidden], down is [hidden, intermediate].
struct ExpertWeights {
  WeightMatrix gate;
  WeightMatrix up;
  WeightMatrix down;
};

// Floats of scratch ExpertForward / ExpertAccumulate need for `batch` rows.
size_t ExpertScratchFloats(size_t batch, size_t intermediate);

// out = down(silu(gate(x)) * up(x)); x and out are [batch, hidden]. scratch must hold
// ExpertScratchFloats(batch, intermediate) floats; its contents afterwards are unspecified.
Status ExpertForward(const CpuContext& ctx, const ExpertWeights& expert, const float* x, size_t batch,
                     std::span<float> scratch, float* out);

// The MoE combine: out[b, :] += scale[b] * expert(x[b, :]), scale being the routing weight of this expert for
// each row. Summing several experts in a fixed order gives a fixed result.
Status ExpertAccumulate(const CpuContext& ctx, const ExpertWeights& expert, const float* x, size_t batch,
                        const float* scale, std::span<float> scratch, float* out);

// The same for the tokens a router sent to this expert, without gathering them first: for each i,
// out[rows[i], :] += scale[i] * expert(x[rows[i], :]), where x and out are [tokens, hidden] and scale has
// rows.size() entries. A row may repeat (its contributions add up in order of i). scratch must hold
// ExpertScratchFloats(rows.size(), intermediate) floats.
Status ExpertAccumulateRows(const CpuContext& ctx, const ExpertWeights& expert, const float* x, size_t tokens,
                            std::span<const int32_t> rows, const float* scale, std::span<float> scratch, float* out);

// ---- Normalisation and position encoding ------------------------------------------------------------------

// Qwen3 / Llama RMSNorm per row of length weight.size: y = weight * (x * rsqrt(mean(x^2) + eps)), in fp32
// (the cast back to the activation dtype is the identity for fp32 activations); no 1 + weight. x and y are
// [rows, weight.size] and may be the same buffer. Per-head q/k norm is this with rows = tokens * heads.
Status RmsNorm(const CpuContext& ctx, const float* x, size_t rows, const WeightVector& weight, float eps, float* y);

// inv_freq[i] = theta^(-2i / head_dim) for i < head_dim / 2, computed in fp32 as transformers does.
Status RopeInverseFrequencies(size_t head_dim, float theta, std::span<float> inv_freq);

// Rotary embedding, half-split (transformers' rotate_half: element i pairs with i + head_dim / 2), in place on
// x [tokens, heads, head_dim], token t at position positions[t]. The angle is float(position) * inv_freq in
// fp32 as in transformers; its cosine and sine are evaluated in double and rounded once. head_dim is even and
// at most kMaxHeadDim.
Status ApplyRope(float* x, size_t tokens, size_t heads, size_t head_dim, const int32_t* positions, float theta);

// ---- Attention --------------------------------------------------------------------------------------------

inline constexpr size_t kMaxHeadDim = 512;

struct AttentionShape {
  size_t num_heads = 0;     // query heads
  size_t num_kv_heads = 0;  // key/value heads; divides num_heads (GQA: query head h reads KV head h / group)
  size_t head_dim = 0;      // at most kMaxHeadDim
};

// Causal scaled-dot-product attention, scale 1/sqrt(head_dim), softmax in fp32 (max-subtracted, computed one
// block of keys at a time with the running maximum, as flash attention does). q and out are
// [num_queries, num_heads, head_dim]; k and v are [num_keys, num_kv_heads, head_dim] (a KV cache, positions
// 0..num_keys-1). Query i sits at position num_keys - num_queries + i and attends keys 0..that position, so
// decode is num_queries = 1 and a prefill chunk appends its own keys to the cache before the call.
Status Attention(const CpuContext& ctx, const AttentionShape& shape, const float* q, size_t num_queries,
                 const float* k, const float* v, size_t num_keys, float* out);

// ---- Router -----------------------------------------------------------------------------------------------

inline constexpr size_t kMaxRouterExperts = 4096;

// Per row of logits [batch, num_experts] (num_experts at most kMaxRouterExperts): softmax in fp32 over all
// experts, the top_k largest probabilities
// in descending order (equal values: the lower expert index first), and, when `normalize` (Qwen3's
// norm_topk_prob, always on for Mixtral), each divided by the sum of the top_k. experts and weights are
// [batch, top_k].
Status RouterTopK(const float* logits, size_t batch, size_t num_experts, size_t top_k, bool normalize,
                  int32_t* experts, float* weights);

// ---- Conversions ------------------------------------------------------------------------------------------

// n elements of dtype (kF32, kF16, kBF16) to fp32; exact.
Status ConvertToF32(const CpuContext& ctx, const void* src, DType dtype, size_t n, float* dst);
// n fp32 values to dtype, rounding to nearest even; NaN stays a (quiet) NaN, overflow becomes infinity.
Status ConvertFromF32(const CpuContext& ctx, const float* src, size_t n, DType dtype, void* dst);

}  // namespace es::kernels
