// MatMul (the lm_head among others) and the SwiGLU expert. Every kernel here is "one warp per weight row":
// the warp streams the row once through 16-byte loads and dots it with a tile of activation rows
// (internal::WarpRowDots). With one activation row (decode) that is a GEMV whose ceiling is device memory
// bandwidth; with a tile of kPrefillTile rows each weight byte serves that many tokens. No tensor cores yet: a
// grouped tensor-core GEMM for long prefills is future work, to be measured against this.
//
// Roofline at Qwen3-30B-A3B's expert (gate and up [768, 2048], down [2048, 768], bf16: 9 MiB): a decode step
// reads 9 MiB and does 9.4 MFLOP, 1 FLOP per byte, far below any GPU's ratio, so the GEMV is bound by memory
// bandwidth (about 3 TB/s on an H100 SXM: 3 us per expert).
#include <string>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {
namespace {

using internal::WeightKind;

constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = kWarpsPerBlock * internal::kWarpSize;
// Activation rows that share one pass over a weight row in the batched kernels.
constexpr int kPrefillTile = 8;

__device__ __forceinline__ float Silu(float v) { return v / (1.0f + expf(-v)); }

__device__ __forceinline__ size_t WarpRow() {
  return static_cast<size_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / internal::kWarpSize;
}

// y[b, row] = W[row] . x[b] for every b, tiles of kTile rows at a time.
template <WeightKind kKind, int kTile>
__global__ void MatMulKernel(const float* x, size_t batch, const void* w, size_t rows, size_t cols, bool vector_ok,
                             float* y) {
  const size_t row = WarpRow();
  if (row >= rows) return;
  const int lane = threadIdx.x % internal::kWarpSize;
  for (size_t b0 = 0; b0 < batch; b0 += kTile) {
    const int count = static_cast<int>(min(static_cast<size_t>(kTile), batch - b0));
    const float* xs[kTile];
    for (int t = 0; t < kTile; ++t) xs[t] = x + (b0 + min(t, count - 1)) * cols;
    float acc[kTile];
    internal::WarpRowDots<kKind, kTile>(w, row, cols, vector_ok, xs, count, acc);
    if (lane == 0) {
      for (int t = 0; t < count; ++t) y[(b0 + t) * rows + row] = acc[t];
    }
  }
}

// h[i, r] = silu(gate[r] . x[row_i]) * (up[r] . x[row_i]) for one intermediate row r per warp, where row_i is
// rows[i] (or i when rows is null). A row outside [0, tokens) reads row 0; ExpertDownKernel skips it.
template <WeightKind kGate, WeightKind kUp, int kTile>
__global__ void ExpertGateUpKernel(const float* x, size_t tokens, const int32_t* rows, size_t count,
                                   const void* gate, const void* up, size_t inter, size_t hidden, bool vector_ok,
                                   float* h) {
  const size_t r = WarpRow();
  if (r >= inter) return;
  const int lane = threadIdx.x % internal::kWarpSize;
  for (size_t i0 = 0; i0 < count; i0 += kTile) {
    const int n = static_cast<int>(min(static_cast<size_t>(kTile), count - i0));
    const float* xs[kTile];
    for (int t = 0; t < kTile; ++t) {
      const size_t i = i0 + min(t, n - 1);
      size_t row = i;
      if (rows != nullptr) {
        const int32_t given = rows[i];
        row = given >= 0 && static_cast<size_t>(given) < tokens ? static_cast<size_t>(given) : 0;
      }
      xs[t] = x + row * hidden;
    }
    float g[kTile];
    float u[kTile];
    internal::WarpRowDots<kGate, kTile>(gate, r, hidden, vector_ok, xs, n, g);
    internal::WarpRowDots<kUp, kTile>(up, r, hidden, vector_ok, xs, n, u);
    if (lane == 0) {
      for (int t = 0; t < n; ++t) h[(i0 + t) * inter + r] = Silu(g[t]) * u[t];
    }
  }
}

// out[row_i, r] (+)= down[r] . h[i] for one hidden row r per warp, i in order, so a repeated row accumulates in
// order of i with no other warp touching column r: no atomics, a fixed result. With scale: out += scale[i] * y.
template <WeightKind kKind, int kTile>
__global__ void ExpertDownKernel(const float* h, size_t count, const void* down, size_t hidden, size_t inter,
                                 bool vector_ok, size_t tokens, const int32_t* rows, const float* scale, float* out) {
  const size_t r = WarpRow();
  if (r >= hidden) return;
  const int lane = threadIdx.x % internal::kWarpSize;
  for (size_t i0 = 0; i0 < count; i0 += kTile) {
    const int n = static_cast<int>(min(static_cast<size_t>(kTile), count - i0));
    const float* hs[kTile];
    for (int t = 0; t < kTile; ++t) hs[t] = h + (i0 + min(t, n - 1)) * inter;
    float acc[kTile];
    internal::WarpRowDots<kKind, kTile>(down, r, inter, vector_ok, hs, n, acc);
    if (lane == 0) {
      for (int t = 0; t < n; ++t) {
        const size_t i = i0 + t;
        size_t row = i;
        if (rows != nullptr) {
          const int32_t given = rows[i];
          if (given < 0 || static_cast<size_t>(given) >= tokens) continue;
          row = static_cast<size_t>(given);
        }
        float* y = out + row * hidden + r;
        *y = scale == nullptr ? acc[t] : *y + scale[i] * acc[t];
      }
    }
  }
}

Status CheckMatrix(const kernels::WeightMatrix& w, const char* kernel, const char* role, WeightKind* kind) {
  if (!internal::ToWeightKind(w, kind)) {
    return Status::InvalidArgument(std::string(kernel) + ": " + role + (w.blocks ? " block format " : " dtype ") +
                                   "is not one the device kernels take (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
                                   "IQ4_NL, Q4_K, Q5_K, Q6_K, IQ4_XS)");
  }
  if (w.rows == 0 || w.cols == 0) return Status::InvalidArgument(std::string(kernel) + ": " + role + " is empty");
  if (w.blocks && w.cols % GgmlTypeInfoOf(*w.blocks).block_elements != 0) {
    return Status::InvalidArgument(std::string(kernel) + ": " + role + " rows of " + std::to_string(w.cols) +
                                   " values are not whole blocks");
  }
  if (w.data == nullptr) return Status::InvalidArgument(std::string(kernel) + ": " + role + " data is null");
  return Status::Ok();
}

template <int kTile>
void LaunchMatMul(WeightKind kind, cudaStream_t stream, const float* x, size_t batch, const kernels::WeightMatrix& w,
                  bool vector_ok, float* y) {
  const unsigned blocks = internal::Blocks(w.rows, kWarpsPerBlock);
  internal::WithKind(kind, [&](auto k) {
    MatMulKernel<decltype(k)::value, kTile><<<blocks, kThreadsPerBlock, 0, stream>>>(x, batch, w.data, w.rows, w.cols,
                                                                                    vector_ok, y);
  });
}

// Gate and up share one dtype (or block format) in every checkpoint this project reads; mixed ones are refused.
template <int kTile>
void LaunchGateUp(WeightKind kind, cudaStream_t stream, const float* x, size_t tokens, const int32_t* rows,
                  size_t count, const kernels::ExpertWeights& e, bool vector_ok, float* h) {
  const size_t inter = e.gate.rows;
  const size_t hidden = e.gate.cols;
  const unsigned blocks = internal::Blocks(inter, kWarpsPerBlock);
  internal::WithKind(kind, [&](auto k) {
    constexpr WeightKind kKind = decltype(k)::value;
    ExpertGateUpKernel<kKind, kKind, kTile><<<blocks, kThreadsPerBlock, 0, stream>>>(
        x, tokens, rows, count, e.gate.data, e.up.data, inter, hidden, vector_ok, h);
  });
}

template <int kTile>
void LaunchDown(WeightKind kind, cudaStream_t stream, const float* h, size_t count, const kernels::ExpertWeights& e,
                bool vector_ok, size_t tokens, const int32_t* rows, const float* scale, float* out) {
  const size_t hidden = e.down.rows;
  const size_t inter = e.down.cols;
  const unsigned blocks = internal::Blocks(hidden, kWarpsPerBlock);
  internal::WithKind(kind, [&](auto k) {
    ExpertDownKernel<decltype(k)::value, kTile><<<blocks, kThreadsPerBlock, 0, stream>>>(
        h, count, e.down.data, hidden, inter, vector_ok, tokens, rows, scale, out);
  });
}

// Checks the expert's three matrices and their shapes; sets the dtypes.
Status CheckExpert(const kernels::ExpertWeights& e, const char* kernel, WeightKind* gate_up_kind,
                   WeightKind* down_kind) {
  WeightKind up_kind;
  ES_RETURN_IF_ERROR(CheckMatrix(e.gate, kernel, "gate", gate_up_kind));
  ES_RETURN_IF_ERROR(CheckMatrix(e.up, kernel, "up", &up_kind));
  ES_RETURN_IF_ERROR(CheckMatrix(e.down, kernel, "down", down_kind));
  if (up_kind != *gate_up_kind) {
    return Status::InvalidArgument(std::string(kernel) + ": gate and up dtypes (or block formats) differ");
  }
  const size_t inter = e.gate.rows;
  const size_t hidden = e.gate.cols;
  if (e.up.rows != inter || e.up.cols != hidden || e.down.rows != hidden || e.down.cols != inter) {
    return Status::InvalidArgument(std::string(kernel) + ": gate/up must be [I, H] and down [H, I]");
  }
  return Status::Ok();
}

// The shared body of ExpertSwiGLU (rows and scale null) and ExpertSwiGLURows.
Status RunExpert(const CudaStream& stream, const kernels::ExpertWeights& e, const float* x, size_t tokens,
                 const int32_t* rows, const float* scale, size_t count, float* scratch, float* out,
                 const char* kernel) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, kernel));
  WeightKind gate_up_kind;
  WeightKind down_kind;
  ES_RETURN_IF_ERROR(CheckExpert(e, kernel, &gate_up_kind, &down_kind));
  if (count == 0) return Status::Ok();
  if (x == nullptr || out == nullptr || scratch == nullptr) {
    return Status::InvalidArgument(std::string(kernel) + ": null x, out or scratch");
  }
  const size_t inter = e.gate.rows;
  const size_t hidden = e.gate.cols;
  const bool gate_up_vector = internal::VectorOk(e.gate.data, hidden, gate_up_kind, x) &&
                              internal::VectorOk(e.up.data, hidden, gate_up_kind, x);
  const bool down_vector = internal::VectorOk(e.down.data, inter, down_kind, scratch);
  cudaStream_t s = internal::Native(stream);
  if (count == 1) {
    LaunchGateUp<1>(gate_up_kind, s, x, tokens, rows, count, e, gate_up_vector, scratch);
    LaunchDown<1>(down_kind, s, scratch, count, e, down_vector, tokens, rows, scale, out);
  } else {
    LaunchGateUp<kPrefillTile>(gate_up_kind, s, x, tokens, rows, count, e, gate_up_vector, scratch);
    LaunchDown<kPrefillTile>(down_kind, s, scratch, count, e, down_vector, tokens, rows, scale, out);
  }
  return internal::LaunchStatus(kernel);
}

}  // namespace

Status MatMul(const CudaStream& stream, const float* x, size_t batch, const kernels::WeightMatrix& w, float* y) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "MatMul"));
  WeightKind kind;
  ES_RETURN_IF_ERROR(CheckMatrix(w, "MatMul", "weight", &kind));
  if (batch == 0) return Status::Ok();
  if (x == nullptr || y == nullptr) return Status::InvalidArgument("MatMul: null x or y");
  const bool vector_ok = internal::VectorOk(w.data, w.cols, kind, x);
  if (batch == 1) {
    LaunchMatMul<1>(kind, internal::Native(stream), x, batch, w, vector_ok, y);
  } else {
    LaunchMatMul<kPrefillTile>(kind, internal::Native(stream), x, batch, w, vector_ok, y);
  }
  return internal::LaunchStatus("MatMul");
}

Status ExpertSwiGLU(const CudaStream& stream, const kernels::ExpertWeights& expert, const float* x, size_t batch,
                    float* scratch, float* out) {
  return RunExpert(stream, expert, x, batch, nullptr, nullptr, batch, scratch, out, "ExpertSwiGLU");
}

Status ExpertSwiGLURows(const CudaStream& stream, const kernels::ExpertWeights& expert, const float* x,
                        size_t tokens, const int32_t* rows, const float* scale, size_t count, float* scratch,
                        float* out) {
  if (count != 0 && (rows == nullptr || scale == nullptr)) {
    return Status::InvalidArgument("ExpertSwiGLURows: null rows or scale");
  }
  return RunExpert(stream, expert, x, tokens, rows, scale, count, scratch, out, "ExpertSwiGLURows");
}

}  // namespace es::cuda
