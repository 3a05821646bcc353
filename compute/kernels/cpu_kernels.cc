// cpu_kernels.h: argument checks, the run-time choice of instruction set, the split of work over the pool, and
// the kernels whose cost is not in their inner loops (norms, RoPE, softmax, routing), written once here on top
// of the per-ISA inner loops of isa_ops.h.
#include "compute/kernels/cpu_kernels.h"

#if defined(ES_KERNELS_X86)
#include <cpuid.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "store/base/float16.h"
#include "compute/kernels/ggml_blocks.h"
#include "compute/kernels/isa_ops.h"

namespace es::kernels {
namespace {

using internal::IsaOps;
using internal::MatMulArgs;
using internal::HasQ8Dot;
using internal::kQ8BlockValues;
using internal::kQ8KBlockValues;
using internal::kQ8Rows;
using internal::Q8Block;
using internal::Q8KBlock;
using internal::Q8RowBytes;
using internal::QuantizeQ8Row;
using internal::UsesQ8K;

// Output rows per pool task: a multiple of every ISA's row tile, and 32 rows of a 2048-wide bf16 matrix
// (128 KiB) stay in L2 while a prefill batch streams past them.
constexpr size_t kRowsPerTask = 32;
// Below this many elements per task, handing work to another thread costs more than it saves.
constexpr size_t kMinElementsPerTask = 16384;
// Keys per block of attention's online softmax: the scores of a block stay on the stack, and the running
// maximum is updated once per block.
constexpr size_t kKeyBlock = 64;
// Query heads one attention task handles (they share a KV head); bounds the task's stack (16 KiB of acc).
constexpr size_t kMaxHeadsPerTask = internal::kMaxGroupHeads;
// Attention aims for at least this many tasks per pool thread, for balance.
constexpr size_t kTasksPerThread = 2;
// Environment variable that caps the Isa chosen by default (scalar, avx2, avx512), to run a suite per path.
constexpr const char* kIsaEnv = "EXPERTSTORE_CPU_ISA";

#if defined(ES_KERNELS_X86)
// F16C from CPUID leaf 1 directly: clang 14's __builtin_cpu_supports does not know the "f16c" feature name.
bool CpuHasF16c() {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}
#endif

bool CpuSupports(Isa isa) {
#if defined(ES_KERNELS_X86)
  // Normally done by a libgcc constructor; repeated in case this runs from another static initialiser first.
  __builtin_cpu_init();
#endif
  switch (isa) {
    case Isa::kScalar: return true;
#if defined(ES_KERNELS_X86)
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && CpuHasF16c();
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && CpuHasF16c();
#endif
    default: return false;
  }
}

Result<const IsaOps*> GetOps(const CpuContext& ctx, std::string_view kernel) {
  const IsaOps* ops = internal::OpsFor(ctx.isa);
  if (ops == nullptr) {
    return Status::NotSupported(std::string(kernel) + ": instruction set " + std::string(IsaName(ctx.isa)) +
                                " is not available on this CPU or build");
  }
  return ops;
}

bool IsWeightDType(DType dtype) { return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16; }

// `kernel` and `role` name the argument in the message, e.g. "ExpertForward" and "down".
Status CheckMatrix(const WeightMatrix& w, std::string_view kernel, std::string_view role) {
  auto fail = [&](std::string_view why) {
    return Status::InvalidArgument(std::string(kernel) + ": " + std::string(role) + " " + std::string(why));
  };
  if (w.blocks) {
    const GgmlTypeInfo info = GgmlTypeInfoOf(*w.blocks);
    if (!info.supported) return fail("block format " + std::string(info.name) + " is not supported");
    if (w.cols % info.block_elements != 0) return fail("rows are not whole " + std::string(info.name) + " blocks");
    if (w.cols > kMaxBlockRow) return fail("rows of block formats hold at most " + std::to_string(kMaxBlockRow) + " values");
  } else if (!IsWeightDType(w.dtype)) {
    return fail("dtype " + std::string(DTypeName(w.dtype)) + " is not F32, F16 or BF16");
  }
  if (w.rows == 0 || w.cols == 0) return fail("is empty");
  if (w.data == nullptr) return fail("data is null");
  return Status::Ok();
}

// Rows [row_begin, row_end) of a block-format matmul: each weight row decoded once into fp32 (as
// DequantizeGgmlRow does), then `dot` with every activation row, so each output is the decoded matrix's.
// With quantized activations (a.qx), each output is instead block_dot_q8 of the weight row with them.
void BlockMatMulRows(const IsaOps& ops, const MatMulArgs& a, size_t row_begin, size_t row_end) {
  float row[kMaxBlockRow];
  const size_t row_bytes = *GgmlRowBytes(*a.blocks, a.cols);
  const auto* w = static_cast<const std::byte*>(a.w);
  if (a.amx != nullptr) {
    // 16 weight rows at a time against up to kAmxMaxGroups groups of 16 activation rows, on AMX tiles.
    const size_t group_bytes = (a.cols / kQ8KBlockValues) * internal::kAmxSuperBytes;
    constexpr size_t kTile = internal::kAmxTileRows, kSpan = internal::kAmxMaxGroups * kTile;
    alignas(64) float tiles[kSpan * kTile];
    for (size_t g0 = 0; g0 < a.batch; g0 += kSpan) {
      const size_t count = std::min(kSpan, a.batch - g0);
      const size_t groups = (count + kTile - 1) / kTile;
      const std::byte* first = a.amx + g0 / kTile * group_bytes;
      for (size_t r0 = row_begin; r0 < row_end; r0 += kTile) {
        const size_t nrows = std::min(kTile, row_end - r0);
        internal::AmxBlockGemmQ8(*a.blocks, w + r0 * row_bytes, row_bytes, nrows, first, groups, a.cols, tiles);
        for (size_t i = 0; i < count; ++i) {
          const size_t b = g0 + i;
          float* y = a.y + (a.y_rows == nullptr ? b : static_cast<size_t>(a.y_rows[b])) * a.rows + r0;
          const float* sums = tiles + i * kTile;
          for (size_t m = 0; m < nrows; ++m) {
            y[m] = a.accumulate_scale == nullptr ? sums[m] : y[m] + a.accumulate_scale[b] * sums[m];
          }
        }
      }
    }
    return;
  }
  if (a.qx != nullptr) {
    // Each group of kQ8Rows activation rows (in L1) meets every weight row of the range (a range of
    // kRowsPerTask rows stays in L2) before the next group: the activations are not streamed again per weight row.
    const size_t qx_bytes = Q8RowBytes(*a.blocks, a.cols);
    for (size_t b0 = 0; b0 < a.batch; b0 += kQ8Rows) {
      for (size_t r = row_begin; r < row_end; ++r) {
        const size_t count = std::min(kQ8Rows, a.batch - b0);
        float sums[kQ8Rows];
        ops.block_dot_q8(*a.blocks, w + r * row_bytes, a.qx + b0 * qx_bytes, qx_bytes, count, a.cols, sums);
        for (size_t i = 0; i < count; ++i) {
          const size_t b = b0 + i;
          float* y = a.y + (a.y_rows == nullptr ? b : static_cast<size_t>(a.y_rows[b])) * a.rows + r;
          *y = a.accumulate_scale == nullptr ? sums[i] : *y + a.accumulate_scale[b] * sums[i];
        }
      }
    }
    return;
  }
  // One activation row (decode): the ISA's fused decode-and-multiply, where it takes the format.
  if (a.batch == 1 && ops.block_dot != nullptr) {
    const float* x = a.x + (a.x_rows == nullptr ? 0 : static_cast<size_t>(a.x_rows[0])) * a.cols;
    float* y = a.y + (a.y_rows == nullptr ? 0 : static_cast<size_t>(a.y_rows[0])) * a.rows;
    float sum = 0;
    if (ops.block_dot(*a.blocks, w + row_begin * row_bytes, x, a.cols, &sum)) {
      for (size_t r = row_begin; r < row_end; ++r) {
        if (r > row_begin) ops.block_dot(*a.blocks, w + r * row_bytes, x, a.cols, &sum);
        y[r] = a.accumulate_scale == nullptr ? sum : y[r] + a.accumulate_scale[0] * sum;
      }
      return;
    }
  }
  for (size_t r = row_begin; r < row_end; ++r) {
    // Sizes were checked by CheckMatrix, so decoding cannot fail.
    DequantizeGgmlRow(*a.blocks, {w + r * row_bytes, row_bytes}, {row, a.cols}).IgnoreError();
    for (size_t b = 0; b < a.batch; ++b) {
      const float* x = a.x + (a.x_rows == nullptr ? b : static_cast<size_t>(a.x_rows[b])) * a.cols;
      float* y = a.y + (a.y_rows == nullptr ? b : static_cast<size_t>(a.y_rows[b])) * a.rows + r;
      const float sum = ops.dot(x, row, a.cols);
      *y = a.accumulate_scale == nullptr ? sum : *y + a.accumulate_scale[b] * sum;
    }
  }
}

// Rows [begin, end) of any matmul: the ISA's kernel, or the block path.
void MatMulRowRange(const IsaOps& ops, const MatMulArgs& args, size_t begin, size_t end) {
  if (args.blocks) {
    BlockMatMulRows(ops, args, begin, end);
  } else {
    ops.matmul_rows(args, begin, end);
  }
}

// The integer block path quantizes activation rows a slice at a time into a buffer on the calling thread's stack
// (192 KiB, so that no kernel allocates): as many rows as fit, at most 64. Every weight row then meets the whole
// slice while it is in L1, kQ8Rows activation rows per block_dot_q8 call.
constexpr size_t kQ8SliceBytes = 192 * 1024;
constexpr size_t kMaxQ8Slice = 64;
static_assert(kMaxBlockRow / kQ8BlockValues * sizeof(Q8Block) <= kQ8SliceBytes &&
              kMaxBlockRow / 256 * sizeof(Q8KBlock) <= kQ8SliceBytes);
struct alignas(64) Q8Slice {
  std::array<std::byte, kQ8SliceBytes> bytes;
  std::byte* data() { return bytes.data(); }
};
// Activation rows per slice for a matmul of `a`'s shape and format; with `amx`, also whole groups of tile rows
// whose packed form fits a second buffer of the same size.
size_t Q8SliceRows(const MatMulArgs& a, bool amx) {
  const size_t rows = std::clamp<size_t>(kQ8SliceBytes / Q8RowBytes(*a.blocks, a.cols), 1, kMaxQ8Slice);
  if (!amx) return rows;
  const size_t groups = kQ8SliceBytes / internal::AmxPackedBytes(internal::kAmxTileRows, a.cols);
  return std::min(rows, groups * internal::kAmxTileRows);
}

// Whether a matmul on `w` takes the integer path under ctx.
bool UsesQ8(const CpuContext& ctx, const IsaOps& ops, const MatMulArgs& a) {
  return ctx.q8_activations && a.blocks && ops.block_dot_q8 != nullptr && HasQ8Dot(*a.blocks) &&
         a.cols % kQ8BlockValues == 0;
}

// Whether an integer-path matmul of `a`'s format and width, with at least AmxMinRows activation rows, runs on
// AMX tiles: a machine that has them, the AVX-512 table, and slices whose packed rows fit a slice buffer.
bool UsesAmx(const CpuContext& ctx, const MatMulArgs& a) {
#if defined(ES_KERNELS_X86)
  return ctx.amx && ctx.isa == Isa::kAvx512 && internal::AmxTakes(*a.blocks) && a.batch >= internal::AmxMinRows(*a.blocks) &&
         internal::AmxPackedBytes(internal::kAmxTileRows, a.cols) <= kQ8SliceBytes && internal::AmxAvailable();
#else
  (void)ctx;
  (void)a;
  return false;
#endif
}

// Packs the slice's quantized rows (s.qx) for AMX into `buffer` and points s.amx at them.
void PackForAmx(MatMulArgs& s, std::byte* buffer) {
  internal::PackQ8KForAmx(s.qx, Q8RowBytes(*s.blocks, s.cols), s.batch, s.cols, buffer);
  s.amx = buffer;
}

// Activation rows [b0, b0 + nb) of `a` as a matmul of their own, with qx (unless null) holding them quantized.
MatMulArgs SliceRows(const MatMulArgs& a, size_t b0, size_t nb, std::byte* qx) {
  MatMulArgs s = a;
  s.batch = nb;
  if (a.x_rows != nullptr) {
    s.x_rows = a.x_rows + b0;
  } else {
    s.x = a.x + b0 * a.cols;
  }
  if (a.y_rows != nullptr) {
    s.y_rows = a.y_rows + b0;
  } else {
    s.y = a.y + b0 * a.rows;
  }
  if (a.accumulate_scale != nullptr) s.accumulate_scale = a.accumulate_scale + b0;
  if (qx == nullptr) return s;
  const size_t qx_bytes = Q8RowBytes(*a.blocks, a.cols);
  for (size_t b = 0; b < nb; ++b) {
    const float* x = s.x + (s.x_rows == nullptr ? b : static_cast<size_t>(s.x_rows[b])) * a.cols;
    QuantizeQ8Row(*a.blocks, x, a.cols, qx + b * qx_bytes);
  }
  s.qx = qx;
  return s;
}

void RunMatMul(const CpuContext& ctx, const IsaOps& ops, const MatMulArgs& args) {
  if (UsesQ8(ctx, ops, args)) {
    Q8Slice qx, packed;
    const bool amx = UsesAmx(ctx, args);
    const size_t rows = Q8SliceRows(args, amx);
    for (size_t b0 = 0; b0 < args.batch; b0 += rows) {
      MatMulArgs slice = SliceRows(args, b0, std::min(rows, args.batch - b0), qx.data());
      if (amx) PackForAmx(slice, packed.data());
      ParallelFor(ctx.pool, args.rows, kRowsPerTask,
                  [&](size_t begin, size_t end) { BlockMatMulRows(ops, slice, begin, end); });
    }
    return;
  }
  ParallelFor(ctx.pool, args.rows, kRowsPerTask,
              [&](size_t begin, size_t end) { MatMulRowRange(ops, args, begin, end); });
}

// One weight element as fp32; the switch sits outside the callers' loops.
template <DType kW>
float WeightAt(const void* data, size_t i) {
  if constexpr (kW == DType::kF32) {
    return static_cast<const float*>(data)[i];
  } else if constexpr (kW == DType::kBF16) {
    return Bf16ToF32(static_cast<const uint16_t*>(data)[i]);
  } else {
    return F16ToF32(static_cast<const uint16_t*>(data)[i]);
  }
}

template <DType kW>
void RmsNormRows(const IsaOps& ops, const float* x, size_t row_begin, size_t row_end, const void* weight, size_t dim,
                 float eps, float* y) {
  for (size_t r = row_begin; r < row_end; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    const float mean_square = ops.dot(xr, xr, dim) / static_cast<float>(dim);
    const float inv_rms = 1.0f / std::sqrt(mean_square + eps);
    for (size_t i = 0; i < dim; ++i) yr[i] = WeightAt<kW>(weight, i) * (xr[i] * inv_rms);
  }
}

float Silu(float v) { return v / (1.0f + std::exp(-v)); }

// x_rows / y_rows: null, or which rows of x / out each of the `batch` rows is (see MatMulArgs).
Status ExpertImpl(const CpuContext& ctx, const ExpertWeights& e, const float* x, size_t batch, const int32_t* x_rows,
                  const float* scale, const int32_t* y_rows, std::span<float> scratch, float* out,
                  std::string_view kernel) {
  ES_ASSIGN_OR_RETURN(const IsaOps* ops, GetOps(ctx, kernel));
  ES_RETURN_IF_ERROR(CheckMatrix(e.gate, kernel, "gate"));
  ES_RETURN_IF_ERROR(CheckMatrix(e.up, kernel, "up"));
  ES_RETURN_IF_ERROR(CheckMatrix(e.down, kernel, "down"));
  const size_t inter = e.gate.rows;
  const size_t hidden = e.gate.cols;
  if (e.up.rows != inter || e.up.cols != hidden || e.down.rows != hidden || e.down.cols != inter) {
    return Status::InvalidArgument(std::string(kernel) + ": gate/up must be [I, H] and down [H, I]");
  }
  if (batch == 0) return Status::Ok();
  if (x == nullptr || out == nullptr) return Status::InvalidArgument(std::string(kernel) + ": null x or out");
  if (scratch.size() < ExpertScratchFloats(batch, inter)) {
    return Status::InvalidArgument(std::string(kernel) + ": scratch holds " + std::to_string(scratch.size()) +
                                   " floats, needs " + std::to_string(ExpertScratchFloats(batch, inter)));
  }
  float* gate_out = scratch.data();
  float* up_out = gate_out + batch * inter;
  const MatMulArgs gate_args{x,       batch,  e.gate.data, e.gate.dtype, inter,       hidden,
                              gate_out, nullptr, x_rows,      nullptr,      e.gate.blocks};
  const MatMulArgs up_args{x, batch, e.up.data, e.up.dtype, inter, hidden, up_out, nullptr, x_rows, nullptr, e.up.blocks};
  // Gate, up and the activation in one pass over each range of intermediate rows, while they are in cache.
  auto gate_up = [&](const MatMulArgs& g_args, const MatMulArgs& u_args) {
    ParallelFor(ctx.pool, inter, kRowsPerTask, [&](size_t begin, size_t end) {
      MatMulRowRange(*ops, g_args, begin, end);
      MatMulRowRange(*ops, u_args, begin, end);
      for (size_t b = 0; b < g_args.batch; ++b) {
        float* g = g_args.y + b * inter;
        const float* u = u_args.y + b * inter;
        for (size_t i = begin; i < end; ++i) g[i] = Silu(g[i]) * u[i];
      }
    });
  };
  const bool gate_q8 = UsesQ8(ctx, *ops, gate_args), up_q8 = UsesQ8(ctx, *ops, up_args);
  if (gate_q8 || up_q8) {
    // Gate and up share their input: each slice of activation rows is quantized once for both, unless their
    // formats take different layouts.
    const bool shared = gate_q8 && up_q8 && UsesQ8K(*gate_args.blocks) == UsesQ8K(*up_args.blocks);
    const bool gate_amx = gate_q8 && UsesAmx(ctx, gate_args), up_amx = up_q8 && UsesAmx(ctx, up_args);
    Q8Slice gate_qx, up_qx, gate_packed, up_packed;
    const size_t rows = std::min(gate_q8 ? Q8SliceRows(gate_args, gate_amx) : kMaxQ8Slice,
                                 up_q8 ? Q8SliceRows(up_args, up_amx) : kMaxQ8Slice);
    for (size_t b0 = 0; b0 < batch; b0 += rows) {
      const size_t nb = std::min(rows, batch - b0);
      MatMulArgs g = SliceRows(gate_args, b0, nb, gate_q8 ? gate_qx.data() : nullptr);
      MatMulArgs u = SliceRows(up_args, b0, nb, up_q8 && !shared ? up_qx.data() : nullptr);
      if (shared) u.qx = g.qx;
      // Packed once too where both take the tiles (the same quantized rows, so the same packing).
      if (gate_amx) PackForAmx(g, gate_packed.data());
      if (up_amx && shared && gate_amx) {
        u.amx = g.amx;
      } else if (up_amx) {
        PackForAmx(u, up_packed.data());
      }
      gate_up(g, u);
    }
  } else {
    gate_up(gate_args, up_args);
  }
  const MatMulArgs down_args{gate_out, batch,  e.down.data, e.down.dtype, hidden,       inter,
                              out,      scale, nullptr,     y_rows,       e.down.blocks};
  RunMatMul(ctx, *ops, down_args);
  return Status::Ok();
}

// Attention for `heads` query heads that share one KV head, at one query position: online softmax over blocks
// of keys, each K and V row read once for all the heads. Per head, the arithmetic does not depend on which
// other heads share the call, so the split into tasks is free to follow the pool's size.
// q and out hold the heads `head_dim` apart; `visible` keys, each `kv_stride` floats after the previous.
void AttendHeads(const IsaOps& ops, const float* q, size_t heads, const float* k, const float* v, size_t kv_stride,
                 size_t visible, size_t head_dim, float scale, float* out) {
  float acc[kMaxHeadsPerTask * kMaxHeadDim];  // [heads, head_dim]
  float probs[kMaxHeadsPerTask][kKeyBlock];
  float running_max[kMaxHeadsPerTask];
  float denominator[kMaxHeadsPerTask];
  float correction[kMaxHeadsPerTask];
  std::fill(acc, acc + heads * head_dim, 0.0f);
  std::fill(running_max, running_max + heads, -std::numeric_limits<float>::infinity());
  std::fill(denominator, denominator + heads, 0.0f);
  for (size_t j0 = 0; j0 < visible; j0 += kKeyBlock) {
    const size_t count = std::min(kKeyBlock, visible - j0);
    ops.scores(q, heads, k + j0 * kv_stride, kv_stride, count, head_dim, scale, probs[0], kKeyBlock);
    for (size_t h = 0; h < heads; ++h) {
      float* p = probs[h];
      const float new_max = std::max(running_max[h], ops.max(p, count));
      // Rescales what was summed under the old maximum; exp(-inf) = 0 before the first block.
      correction[h] = std::exp(running_max[h] - new_max);
      running_max[h] = new_max;
      denominator[h] = denominator[h] * correction[h] + ops.exp_shifted(p, new_max, count, p);
    }
    ops.weighted_sum(probs[0], kKeyBlock, heads, v + j0 * kv_stride, kv_stride, count, head_dim, correction, acc);
  }
  for (size_t h = 0; h < heads; ++h) {
    for (size_t i = 0; i < head_dim; ++i) out[h * head_dim + i] = acc[h * head_dim + i] / denominator[h];
  }
}

}  // namespace

namespace internal {

const IsaOps* OpsFor(Isa isa) {
  if (!IsaAvailable(isa)) return nullptr;
  switch (isa) {
    case Isa::kScalar: return &kScalarOps;
#if defined(ES_KERNELS_X86)
    case Isa::kAvx2: return &kAvx2Ops;
    case Isa::kAvx512: return &kAvx512Ops;
#endif
    default: return nullptr;
  }
}

}  // namespace internal

std::string_view IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "unknown";
}

std::vector<std::string> CpuFeatures() {
  std::vector<std::string> out;
#if defined(ES_KERNELS_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) out.push_back("avx2");
  if (__builtin_cpu_supports("fma")) out.push_back("fma");
  if (CpuHasF16c()) out.push_back("f16c");
  if (__builtin_cpu_supports("avx512f")) out.push_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) out.push_back("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) out.push_back("avx512vl");
  if (__builtin_cpu_supports("avx512vnni")) out.push_back("avx512vnni");
  if (internal::AmxAvailable()) out.push_back("amx-int8");  // the CPU has it and Linux granted the tile state
#endif
  return out;
}

bool IsaAvailable(Isa isa) {
  static const bool available[] = {CpuSupports(Isa::kScalar), CpuSupports(Isa::kAvx2), CpuSupports(Isa::kAvx512)};
  const auto index = static_cast<size_t>(isa);
  return index < std::size(available) && available[index];
}

Isa BestIsa() {
  static const Isa best = [] {
    Isa cap = Isa::kAvx512;
    if (const char* env = std::getenv(kIsaEnv); env != nullptr) {
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
        if (IsaName(isa) == env) cap = isa;
      }
    }
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
      if (isa <= cap && IsaAvailable(isa)) return isa;
    }
    return Isa::kScalar;
  }();
  return best;
}

Status MatMul(const CpuContext& ctx, const float* x, size_t batch, const WeightMatrix& w, float* y) {
  ES_ASSIGN_OR_RETURN(const IsaOps* ops, GetOps(ctx, "MatMul"));
  ES_RETURN_IF_ERROR(CheckMatrix(w, "MatMul", "weight"));
  if (batch == 0) return Status::Ok();
  if (x == nullptr || y == nullptr) return Status::InvalidArgument("MatMul: null x or y");
  RunMatMul(ctx, *ops, MatMulArgs{x, batch, w.data, w.dtype, w.rows, w.cols, y, nullptr, nullptr, nullptr, w.blocks});
  return Status::Ok();
}

size_t ExpertScratchFloats(size_t batch, size_t intermediate) {
  // gate(x) (then silu(gate) * up in place) and up(x).
  return 2 * batch * intermediate;
}

Status ExpertForward(const CpuContext& ctx, const ExpertWeights& expert, const float* x, size_t batch,
                     std::span<float> scratch, float* out) {
  return ExpertImpl(ctx, expert, x, batch, nullptr, nullptr, nullptr, scratch, out, "ExpertForward");
}

Status ExpertAccumulate(const CpuContext& ctx, const ExpertWeights& expert, const float* x, size_t batch,
                        const float* scale, std::span<float> scratch, float* out) {
  if (batch != 0 && scale == nullptr) return Status::InvalidArgument("ExpertAccumulate: null scale");
  return ExpertImpl(ctx, expert, x, batch, nullptr, scale, nullptr, scratch, out, "ExpertAccumulate");
}

Status ExpertAccumulateRows(const CpuContext& ctx, const ExpertWeights& expert, const float* x, size_t tokens,
                            std::span<const int32_t> rows, const float* scale, std::span<float> scratch, float* out) {
  if (rows.empty()) return Status::Ok();
  if (scale == nullptr) return Status::InvalidArgument("ExpertAccumulateRows: null scale");
  for (int32_t row : rows) {
    if (row < 0 || static_cast<size_t>(row) >= tokens) {
      return Status::InvalidArgument("ExpertAccumulateRows: row " + std::to_string(row) + " outside [0, " +
                                     std::to_string(tokens) + ")");
    }
  }
  return ExpertImpl(ctx, expert, x, rows.size(), rows.data(), scale, rows.data(), scratch, out,
                    "ExpertAccumulateRows");
}

Status RmsNorm(const CpuContext& ctx, const float* x, size_t rows, const WeightVector& weight, float eps, float* y) {
  ES_ASSIGN_OR_RETURN(const IsaOps* ops, GetOps(ctx, "RmsNorm"));
  if (!IsWeightDType(weight.dtype) || weight.size == 0 || weight.data == nullptr) {
    return Status::InvalidArgument("RmsNorm: weight must be a non-empty F32, F16 or BF16 vector");
  }
  if (!(eps >= 0.0f)) return Status::InvalidArgument("RmsNorm: eps must be >= 0");
  if (rows == 0) return Status::Ok();
  if (x == nullptr || y == nullptr) return Status::InvalidArgument("RmsNorm: null x or y");
  const size_t dim = weight.size;
  const size_t grain = std::max<size_t>(1, kMinElementsPerTask / dim);
  ParallelFor(ctx.pool, rows, grain, [&](size_t begin, size_t end) {
    switch (weight.dtype) {
      case DType::kF32: return RmsNormRows<DType::kF32>(*ops, x, begin, end, weight.data, dim, eps, y);
      case DType::kBF16: return RmsNormRows<DType::kBF16>(*ops, x, begin, end, weight.data, dim, eps, y);
      default: return RmsNormRows<DType::kF16>(*ops, x, begin, end, weight.data, dim, eps, y);
    }
  });
  return Status::Ok();
}

Status RopeInverseFrequencies(size_t head_dim, float theta, std::span<float> inv_freq) {
  if (head_dim == 0 || head_dim % 2 != 0) return Status::InvalidArgument("RoPE: head_dim must be even and > 0");
  if (!(theta > 0.0f)) return Status::InvalidArgument("RoPE: theta must be > 0");
  if (inv_freq.size() < head_dim / 2) return Status::InvalidArgument("RoPE: inv_freq holds fewer than head_dim/2");
  for (size_t i = 0; i < head_dim / 2; ++i) {
    // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in fp32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }
  return Status::Ok();
}

Status ApplyRope(float* x, size_t tokens, size_t heads, size_t head_dim, const int32_t* positions, float theta) {
  if (head_dim > kMaxHeadDim) return Status::InvalidArgument("RoPE: head_dim above kMaxHeadDim");
  const size_t half = head_dim / 2;
  float inv_freq[kMaxHeadDim / 2];
  ES_RETURN_IF_ERROR(RopeInverseFrequencies(head_dim, theta, std::span<float>(inv_freq, half)));
  if (tokens == 0 || heads == 0) return Status::Ok();
  if (x == nullptr || positions == nullptr) return Status::InvalidArgument("RoPE: null x or positions");
  float cos_t[kMaxHeadDim / 2];
  float sin_t[kMaxHeadDim / 2];
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];
      cos_t[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_t[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
    for (size_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * head_dim;
      for (size_t i = 0; i < half; ++i) {
        const float x1 = v[i];
        const float x2 = v[i + half];
        v[i] = x1 * cos_t[i] - x2 * sin_t[i];
        v[i + half] = x2 * cos_t[i] + x1 * sin_t[i];
      }
    }
  }
  return Status::Ok();
}

Status Attention(const CpuContext& ctx, const AttentionShape& shape, const float* q, size_t num_queries,
                 const float* k, const float* v, size_t num_keys, float* out) {
  ES_ASSIGN_OR_RETURN(const IsaOps* ops, GetOps(ctx, "Attention"));
  if (shape.num_heads == 0 || shape.num_kv_heads == 0 || shape.num_heads % shape.num_kv_heads != 0) {
    return Status::InvalidArgument("Attention: num_kv_heads must be > 0 and divide num_heads");
  }
  if (shape.head_dim == 0 || shape.head_dim > kMaxHeadDim) {
    return Status::InvalidArgument("Attention: head_dim must be in [1, kMaxHeadDim]");
  }
  if (num_queries > num_keys) return Status::InvalidArgument("Attention: more queries than keys");
  if (num_queries == 0) return Status::Ok();
  if (q == nullptr || k == nullptr || v == nullptr || out == nullptr) {
    return Status::InvalidArgument("Attention: null q, k, v or out");
  }
  const size_t group = shape.num_heads / shape.num_kv_heads;
  const size_t head_dim = shape.head_dim;
  const size_t kv_stride = shape.num_kv_heads * head_dim;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  // A task is some query heads of one KV group at one position. Smaller slices of a group when there would
  // otherwise be too few tasks to keep the pool busy (decode has one per KV head); the results are the same.
  const size_t threads = ctx.pool == nullptr ? 1 : ctx.pool->threads();
  size_t heads_per_task = std::min(group, kMaxHeadsPerTask);
  const size_t groups = num_queries * shape.num_kv_heads;
  while (heads_per_task > 1 && groups * (group / heads_per_task) < kTasksPerThread * threads) {
    heads_per_task /= 2;
  }
  const size_t slices = (group + heads_per_task - 1) / heads_per_task;
  ParallelFor(ctx.pool, num_queries * shape.num_kv_heads * slices, 1, [&](size_t begin, size_t end) {
    for (size_t task = begin; task < end; ++task) {
      const size_t qi = task / (shape.num_kv_heads * slices);
      const size_t kv_head = task / slices % shape.num_kv_heads;
      const size_t first = kv_head * group + task % slices * heads_per_task;
      const size_t heads = std::min(heads_per_task, (kv_head + 1) * group - first);
      const size_t visible = num_keys - num_queries + qi + 1;
      const size_t offset = (qi * shape.num_heads + first) * head_dim;
      AttendHeads(*ops, q + offset, heads, k + kv_head * head_dim, v + kv_head * head_dim, kv_stride, visible,
                  head_dim, scale, out + offset);
    }
  });
  return Status::Ok();
}

Status RouterTopK(const float* logits, size_t batch, size_t num_experts, size_t top_k, bool normalize,
                  int32_t* experts, float* weights) {
  if (num_experts == 0 || num_experts > kMaxRouterExperts) {
    return Status::InvalidArgument("RouterTopK: num_experts must be in [1, " + std::to_string(kMaxRouterExperts) +
                                   "]");
  }
  if (top_k == 0 || top_k > num_experts) return Status::InvalidArgument("RouterTopK: top_k must be in [1, experts]");
  if (batch == 0) return Status::Ok();
  if (logits == nullptr || experts == nullptr || weights == nullptr) {
    return Status::InvalidArgument("RouterTopK: null logits, experts or weights");
  }
  float probs[kMaxRouterExperts];
  bool taken[kMaxRouterExperts];
  for (size_t b = 0; b < batch; ++b) {
    const float* row = logits + b * num_experts;
    float max_logit = row[0];
    for (size_t e = 1; e < num_experts; ++e) max_logit = std::max(max_logit, row[e]);
    float sum = 0.0f;
    for (size_t e = 0; e < num_experts; ++e) {
      probs[e] = std::exp(row[e] - max_logit);
      sum += probs[e];
    }
    for (size_t e = 0; e < num_experts; ++e) probs[e] /= sum;

    std::fill(taken, taken + num_experts, false);
    int32_t* row_experts = experts + b * top_k;
    float* row_weights = weights + b * top_k;
    float top_sum = 0.0f;
    for (size_t slot = 0; slot < top_k; ++slot) {
      // Strictly greater keeps the lower index among equal probabilities; a NaN is never preferred.
      size_t best = num_experts;
      for (size_t e = 0; e < num_experts; ++e) {
        if (taken[e]) continue;
        if (best == num_experts || probs[e] > probs[best] || (std::isnan(probs[best]) && !std::isnan(probs[e]))) {
          best = e;
        }
      }
      taken[best] = true;
      row_experts[slot] = static_cast<int32_t>(best);
      row_weights[slot] = probs[best];
      top_sum += probs[best];
    }
    if (normalize) {
      for (size_t slot = 0; slot < top_k; ++slot) row_weights[slot] /= top_sum;
    }
  }
  return Status::Ok();
}

Status ConvertToF32(const CpuContext& ctx, const void* src, DType dtype, size_t n, float* dst) {
  ES_ASSIGN_OR_RETURN(const IsaOps* ops, GetOps(ctx, "ConvertToF32"));
  if (!IsWeightDType(dtype)) return Status::InvalidArgument("ConvertToF32: dtype is not F32, F16 or BF16");
  if (n == 0) return Status::Ok();
  if (src == nullptr || dst == nullptr) return Status::InvalidArgument("ConvertToF32: null src or dst");
  ops->to_f32(src, dtype, n, dst);
  return Status::Ok();
}

Status ConvertFromF32(const CpuContext& ctx, const float* src, size_t n, DType dtype, void* dst) {
  ES_ASSIGN_OR_RETURN(const IsaOps* ops, GetOps(ctx, "ConvertFromF32"));
  if (!IsWeightDType(dtype)) return Status::InvalidArgument("ConvertFromF32: dtype is not F32, F16 or BF16");
  if (n == 0) return Status::Ok();
  if (src == nullptr || dst == nullptr) return Status::InvalidArgument("ConvertFromF32: null src or dst");
  ops->from_f32(src, n, dtype, dst);
  return Status::Ok();
}

#if !defined(ES_KERNELS_X86)
// No AMX off x86: UsesAmx is always false, so these are never reached.
namespace internal {
bool AmxAvailable() { return false; }
bool AmxTakes(GgmlType) { return false; }
size_t AmxMinRows(GgmlType) { return 0; }
size_t AmxPackedBytes(size_t, size_t) { return 0; }
void PackQ8KForAmx(const std::byte*, size_t, size_t, size_t, std::byte*) {}
bool AmxBlockGemmQ8(GgmlType, const void*, size_t, size_t, const std::byte*, size_t, size_t, float*) { return false; }
}  // namespace internal
#endif

}  // namespace es::kernels
