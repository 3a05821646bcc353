// Internal to es_cuda: the helpers every kernel file shares: the stream handle, launch checking, warp and
// block reductions, and loads of F32 / F16 / BF16 weights widened exactly to fp32. Include only from .cu files.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "store/base/cuda_status.h"
#include "compute/cuda/cuda_kernels.h"
#include "compute/cuda/ggml_blocks.cuh"
#include "store/base/dtype.h"

namespace es::cuda::internal {

inline constexpr int kWarpSize = 32;
inline constexpr unsigned kFullMask = 0xFFFFFFFFu;
// Shared-memory slots a block reduction needs: one per warp of the largest block (1024 threads).
inline constexpr int kMaxWarpsPerBlock = 32;

inline cudaStream_t Native(const CudaStream& stream) { return static_cast<cudaStream_t>(stream.handle()); }

inline Status CheckStream(const CudaStream& stream, const char* kernel) {
  if (!stream.valid()) return Status::InvalidArgument(std::string(kernel) + ": the stream is not valid");
  return Status::Ok();
}

// The launch's own error (bad configuration, no device); faults during execution show up later.
inline Status LaunchStatus(const char* kernel) { return CudaStatus(cudaGetLastError(), kernel); }

// Blocks needed for `items` with `per_block` each, as the launch's grid dimension.
inline unsigned Blocks(size_t items, size_t per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

// Bytes of one vector load (uint4 / float4).
inline constexpr size_t kVectorBytes = 16;

inline bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

// ---- Reductions ------------------------------------------------------------------------------------------------

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Block-wide sum / max, returned to every thread. Every thread of the block must call it (blockDim.x a
// multiple of the warp size); `shared` holds kMaxWarpsPerBlock values and may be reused right after.
__device__ __forceinline__ float BlockSum(float v, float* shared) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = WarpSum(v);
  __syncthreads();  // an earlier use of `shared` is finished everywhere
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

__device__ __forceinline__ float BlockMax(float v, float* shared) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float m = shared[0];
  for (int w = 1; w < warps; ++w) m = fmaxf(m, shared[w]);
  return m;
}

// Whether candidate (a, ia) beats (b, ib) for "the largest, ties to the lower index, NaN never preferred";
// an index < 0 is "no candidate". The order kernels::RouterTopK's scan induces.
__device__ __forceinline__ bool Better(float a, int ia, float b, int ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  const bool a_nan = isnan(a);
  const bool b_nan = isnan(b);
  if (a_nan != b_nan) return b_nan;
  if (a_nan) return ia < ib;
  return a > b || (a == b && ia < ib);
}

// Block-wide best (value, index) by Better, returned to every thread. Same calling rules as BlockSum.
__device__ __forceinline__ void BlockBest(float& value, int& index, float* shared_values, int* shared_indices) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const float other_value = __shfl_xor_sync(kFullMask, value, offset);
    const int other_index = __shfl_xor_sync(kFullMask, index, offset);
    if (Better(other_value, other_index, value, index)) {
      value = other_value;
      index = other_index;
    }
  }
  __syncthreads();
  if (lane == 0) {
    shared_values[warp] = value;
    shared_indices[warp] = index;
  }
  __syncthreads();
  value = shared_values[0];
  index = shared_indices[0];
  for (int w = 1; w < warps; ++w) {
    if (Better(shared_values[w], shared_indices[w], value, index)) {
      value = shared_values[w];
      index = shared_indices[w];
    }
  }
}

// ---- Weights ---------------------------------------------------------------------------------------------------

// The element types the matmul kernels take: 16- and 32-bit floats, and the GGML block formats of ggml_blocks.cuh.
enum class WeightKind : uint8_t { kF32, kF16, kBF16, kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ8_0, kIQ4_NL, kQ4_K, kQ5_K, kQ6_K, kIQ4_XS };

constexpr bool IsBlockKind(WeightKind kind) { return kind >= WeightKind::kQ4_0; }

constexpr GgmlType BlockType(WeightKind kind) {
  switch (kind) {
    case WeightKind::kQ4_0: return GgmlType::kQ4_0;
    case WeightKind::kQ4_1: return GgmlType::kQ4_1;
    case WeightKind::kQ5_0: return GgmlType::kQ5_0;
    case WeightKind::kQ5_1: return GgmlType::kQ5_1;
    case WeightKind::kQ8_0: return GgmlType::kQ8_0;
    case WeightKind::kIQ4_NL: return GgmlType::kIQ4_NL;
    case WeightKind::kQ4_K: return GgmlType::kQ4_K;
    case WeightKind::kQ5_K: return GgmlType::kQ5_K;
    case WeightKind::kQ6_K: return GgmlType::kQ6_K;
    default: return GgmlType::kIQ4_XS;
  }
}

inline bool ToWeightKind(DType dtype, WeightKind* kind) {
  switch (dtype) {
    case DType::kF32: *kind = WeightKind::kF32; return true;
    case DType::kF16: *kind = WeightKind::kF16; return true;
    case DType::kBF16: *kind = WeightKind::kBF16; return true;
    default: return false;
  }
}

// A matrix's kind: its block format when it has one (only those the device decodes), else its dtype.
inline bool ToWeightKind(const kernels::WeightMatrix& w, WeightKind* kind) {
  if (!w.blocks) return ToWeightKind(w.dtype, kind);
  for (WeightKind k : {WeightKind::kQ4_0, WeightKind::kQ4_1, WeightKind::kQ5_0, WeightKind::kQ5_1, WeightKind::kQ8_0,
                       WeightKind::kIQ4_NL, WeightKind::kQ4_K, WeightKind::kQ5_K, WeightKind::kQ6_K,
                       WeightKind::kIQ4_XS}) {
    if (BlockType(k) == *w.blocks) {
      *kind = k;
      return true;
    }
  }
  return false;
}

// Bytes per element of the float kinds (0 for block formats, whose rows are RowBytes).
inline size_t WeightKindSize(WeightKind kind) {
  if (IsBlockKind(kind)) return 0;
  return kind == WeightKind::kF32 ? sizeof(float) : sizeof(uint16_t);
}

// Calls f(std::integral_constant<WeightKind, kind>{}): one instantiation per kind, chosen at run time.
template <typename F>
void WithKind(WeightKind kind, F&& f) {
  switch (kind) {
    case WeightKind::kF32: return f(std::integral_constant<WeightKind, WeightKind::kF32>{});
    case WeightKind::kF16: return f(std::integral_constant<WeightKind, WeightKind::kF16>{});
    case WeightKind::kBF16: return f(std::integral_constant<WeightKind, WeightKind::kBF16>{});
    case WeightKind::kQ4_0: return f(std::integral_constant<WeightKind, WeightKind::kQ4_0>{});
    case WeightKind::kQ4_1: return f(std::integral_constant<WeightKind, WeightKind::kQ4_1>{});
    case WeightKind::kQ5_0: return f(std::integral_constant<WeightKind, WeightKind::kQ5_0>{});
    case WeightKind::kQ5_1: return f(std::integral_constant<WeightKind, WeightKind::kQ5_1>{});
    case WeightKind::kQ8_0: return f(std::integral_constant<WeightKind, WeightKind::kQ8_0>{});
    case WeightKind::kIQ4_NL: return f(std::integral_constant<WeightKind, WeightKind::kIQ4_NL>{});
    case WeightKind::kQ4_K: return f(std::integral_constant<WeightKind, WeightKind::kQ4_K>{});
    case WeightKind::kQ5_K: return f(std::integral_constant<WeightKind, WeightKind::kQ5_K>{});
    case WeightKind::kQ6_K: return f(std::integral_constant<WeightKind, WeightKind::kQ6_K>{});
    case WeightKind::kIQ4_XS: return f(std::integral_constant<WeightKind, WeightKind::kIQ4_XS>{});
  }
}

// bfloat16 is the top half of an fp32; binary16 widens exactly through the hardware conversion.
__device__ __forceinline__ float Bf16Bits(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }
__device__ __forceinline__ float F16Bits(uint16_t h) { return __half2float(__ushort_as_half(h)); }

template <WeightKind kKind>
__device__ __forceinline__ float LoadWeight(const void* data, size_t i) {
  if constexpr (kKind == WeightKind::kF32) {
    return static_cast<const float*>(data)[i];
  } else if constexpr (kKind == WeightKind::kBF16) {
    return Bf16Bits(static_cast<const uint16_t*>(data)[i]);
  } else {
    return F16Bits(static_cast<const uint16_t*>(data)[i]);
  }
}

// Elements one vector load covers: 8 (16 bytes of a 16-bit dtype, or two float4 of fp32).
inline constexpr int kVectorElements = 8;

// Elements c .. c+7 of a row; c a multiple of 8 and the row 16-byte aligned.
template <WeightKind kKind>
__device__ __forceinline__ void LoadWeight8(const void* row, size_t c, float (&w)[kVectorElements]) {
  if constexpr (kKind == WeightKind::kF32) {
    const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(row) + c);
    const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(row) + c + 4);
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(row) + c);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    for (int i = 0; i < 4; ++i) {
      const uint16_t lo = static_cast<uint16_t>(words[i] & 0xFFFFu);
      const uint16_t hi = static_cast<uint16_t>(words[i] >> 16);
      if constexpr (kKind == WeightKind::kBF16) {
        w[2 * i] = Bf16Bits(lo);
        w[2 * i + 1] = Bf16Bits(hi);
      } else {
        w[2 * i] = F16Bits(lo);
        w[2 * i + 1] = F16Bits(hi);
      }
    }
  }
}

// The dot products of one weight row with up to kTile activation rows, by one warp: acc[t] = W[row] . xs[t] for
// t < count (xs holds kTile row pointers), returned to every lane. `vector_ok`: the weight rows and every xs[t]
// are 16-byte aligned, so the bulk of the row goes through 16-byte loads (the rest element by element). Each
// weight element is loaded once per call, whatever the tile.
template <WeightKind kKind, int kTile>
__device__ __forceinline__ void WarpRowDots(const void* weights, size_t row, size_t cols, bool vector_ok,
                                            const float* const* xs, int count, float (&acc)[kTile]) {
  const int lane = threadIdx.x % kWarpSize;
  if constexpr (IsBlockKind(kKind)) {
    // Block formats: each lane decodes whole 32-value units (DecodeUnit, DequantizeGgmlRow's values) and dots
    // them with every activation row of the tile.
    constexpr GgmlType kType = BlockType(kKind);
    constexpr size_t kBlockBytes = GgmlTypeInfoOf(kType).block_bytes;
    constexpr size_t kBlockValues = GgmlTypeInfoOf(kType).block_elements;
    const auto* row_bytes = static_cast<const uint8_t*>(weights) + row * (cols / kBlockValues * kBlockBytes);
    for (int t = 0; t < kTile; ++t) acc[t] = 0.0f;
    for (size_t u = static_cast<size_t>(lane); u < cols / 32; u += kWarpSize) {
      float w[32];
      DecodeUnit<kType>(row_bytes, u, w);
      for (int t = 0; t < kTile; ++t) {
        if (t < count) {
          const float* x = xs[t] + 32 * u;
          float s = 0.0f;
          for (int j = 0; j < 32; ++j) s += w[j] * x[j];
          acc[t] += s;
        }
      }
    }
    for (int t = 0; t < kTile; ++t) acc[t] = WarpSum(acc[t]);
    return;
  }
  constexpr size_t kElementBytes = kKind == WeightKind::kF32 ? sizeof(float) : sizeof(uint16_t);
  const char* row_bytes = static_cast<const char*>(weights) + row * cols * kElementBytes;
  for (int t = 0; t < kTile; ++t) acc[t] = 0.0f;
  size_t scalar_begin = 0;
  if (vector_ok) {
    const size_t vector_end = cols / kVectorElements * kVectorElements;
    // Unrolled so that each lane has several 16-byte loads in flight: a GEMV lives on memory parallelism.
#pragma unroll 4
    for (size_t c = static_cast<size_t>(lane) * kVectorElements; c < vector_end; c += kWarpSize * kVectorElements) {
      float w[kVectorElements];
      LoadWeight8<kKind>(row_bytes, c, w);
      for (int t = 0; t < kTile; ++t) {
        if (t < count) {
          const float4 a = *reinterpret_cast<const float4*>(xs[t] + c);
          const float4 b = *reinterpret_cast<const float4*>(xs[t] + c + 4);
          acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z +
                    w[7] * b.w;
        }
      }
    }
    scalar_begin = vector_end;
  }
  for (size_t c = scalar_begin + lane; c < cols; c += kWarpSize) {
    const float w = LoadWeight<kKind>(row_bytes, c);
    for (int t = 0; t < kTile; ++t) {
      if (t < count) acc[t] += w * xs[t][c];
    }
  }
  for (int t = 0; t < kTile; ++t) acc[t] = WarpSum(acc[t]);
}

// Host side: whether WarpRowDots may take the vector path for this weight matrix and these activations
// (row starts 16-byte aligned for both).
inline bool VectorOk(const void* weights, size_t cols, WeightKind kind, const float* x) {
  if (IsBlockKind(kind)) return false;  // the block path does not use it
  return Aligned16(weights) && (cols * WeightKindSize(kind)) % kVectorBytes == 0 && Aligned16(x) &&
         (cols * sizeof(float)) % kVectorBytes == 0;
}

}  // namespace es::cuda::internal
