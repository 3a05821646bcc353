// Token sampling on the device, one block per row of logits: greedy argmax, and temperature + top-k + top-p with
// a seeded draw. Nothing is sorted: top-k and top-p become thresholds on the logits' order, found by bisection
// over the 32 bits of an order-preserving integer key (each step one pass over the row and a block reduction),
// and the draw walks the kept tokens in id order, which leaves the distribution unchanged.
#include <limits>
#include <string>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {
namespace {

constexpr int kGreedyThreads = 256;
constexpr int kSampleThreads = 1024;
constexpr int kKeyBits = 32;

// The float's order as an unsigned integer order (negative values flipped), for bisection on thresholds.
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  constexpr uint32_t kSignBit = 0x80000000u;
  const uint32_t u = __float_as_uint(f);
  return (u & kSignBit) != 0 ? ~u : (u | kSignBit);
}

// SplitMix64 (Steele, Lea, Flood 2014): a counter-based generator good enough for one draw per (seed, row).
__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
  constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ull;
  constexpr uint64_t kMix2 = 0x94D049BB133111EBull;
  x += kGolden;
  x = (x ^ (x >> 30)) * kMix1;
  x = (x ^ (x >> 27)) * kMix2;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) from the top 53 bits.
__device__ __forceinline__ double UniformDouble(uint64_t seed, uint64_t row) {
  constexpr int kDropBits = 64 - 53;
  constexpr double kUnit = 1.0 / 9007199254740992.0;  // 2^-53
  return static_cast<double>(SplitMix64(seed ^ SplitMix64(row)) >> kDropBits) * kUnit;
}

template <typename T>
__device__ __forceinline__ T BlockTotal(T v, T* shared) {
  const int lane = threadIdx.x % internal::kWarpSize;
  const int warp = threadIdx.x / internal::kWarpSize;
  const int warps = blockDim.x / internal::kWarpSize;
  for (int offset = internal::kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(internal::kFullMask, v, offset);
  }
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

// The sum of v over the threads before this one (thread order), returned to each thread.
template <typename T>
__device__ __forceinline__ T BlockExclusiveScan(T v, T* shared) {
  const int lane = threadIdx.x % internal::kWarpSize;
  const int warp = threadIdx.x / internal::kWarpSize;
  T inclusive = v;
  for (int offset = 1; offset < internal::kWarpSize; offset <<= 1) {
    const T before = __shfl_up_sync(internal::kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += before;
  }
  T exclusive = __shfl_up_sync(internal::kFullMask, inclusive, 1);
  if (lane == 0) exclusive = 0;
  __syncthreads();
  if (lane == internal::kWarpSize - 1) shared[warp] = inclusive;
  __syncthreads();
  T warp_prefix = 0;
  for (int w = 0; w < warp; ++w) warp_prefix += shared[w];
  return warp_prefix + exclusive;
}

__global__ void GreedyKernel(const float* logits, size_t vocab, int32_t* tokens) {
  __shared__ float reduce[internal::kMaxWarpsPerBlock];
  __shared__ int reduce_index[internal::kMaxWarpsPerBlock];
  const float* row = logits + blockIdx.x * vocab;
  float best = 0.0f;
  int best_index = -1;
  for (size_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (internal::Better(row[i], static_cast<int>(i), best, best_index)) {
      best = row[i];
      best_index = static_cast<int>(i);
    }
  }
  internal::BlockBest(best, best_index, reduce, reduce_index);
  if (threadIdx.x == 0) tokens[blockIdx.x] = best_index;
}

// Each thread owns one contiguous chunk of the row, so thread order is id order (ties in top-k and the draw
// rely on it).
// Launch bounds: 1024 threads must fit the register file (at most 64 registers each).
__global__ void __launch_bounds__(kSampleThreads) SampleKernel(const float* logits, size_t vocab, float temperature, uint32_t top_k, float top_p,
                             uint64_t seed, int32_t* tokens) {
  __shared__ float reduce_float[internal::kMaxWarpsPerBlock];
  __shared__ uint32_t reduce_count[internal::kMaxWarpsPerBlock];
  __shared__ double reduce_mass[internal::kMaxWarpsPerBlock];
  __shared__ int reduce_index[internal::kMaxWarpsPerBlock];
  __shared__ int chosen;
  const float* row = logits + blockIdx.x * vocab;
  const size_t chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const size_t begin = min(vocab, threadIdx.x * chunk);
  const size_t end = min(vocab, begin + chunk);
  auto scaled = [&](size_t i) { return row[i] / temperature; };

  float local_max = -std::numeric_limits<float>::infinity();
  uint32_t local_valid = 0;
  for (size_t i = begin; i < end; ++i) {
    const float v = scaled(i);
    if (!isnan(v)) {
      local_max = fmaxf(local_max, v);
      ++local_valid;
    }
  }
  const float max_value = internal::BlockMax(local_max, reduce_float);
  const uint32_t valid = BlockTotal(local_valid, reduce_count);
  if (valid == 0) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = -1;
    return;
  }

  // Top-k: the largest key T with at least top_k keys >= T; of the keys equal to T, the lowest ids fill up.
  const bool limit_k = top_k > 0 && top_k < valid;
  uint32_t k_threshold = 0;
  uint32_t ties_needed = 0;
  uint32_t tie_base = 0;
  if (limit_k) {
    for (int bit = kKeyBits - 1; bit >= 0; --bit) {
      const uint32_t candidate = k_threshold | (1u << bit);
      uint32_t local = 0;
      for (size_t i = begin; i < end; ++i) {
        const float v = scaled(i);
        local += !isnan(v) && OrderedKey(v) >= candidate;
      }
      if (BlockTotal(local, reduce_count) >= top_k) k_threshold = candidate;
    }
    uint32_t local_greater = 0;
    uint32_t local_equal = 0;
    for (size_t i = begin; i < end; ++i) {
      const float v = scaled(i);
      if (isnan(v)) continue;
      const uint32_t key = OrderedKey(v);
      local_greater += key > k_threshold;
      local_equal += key == k_threshold;
    }
    ties_needed = top_k - BlockTotal(local_greater, reduce_count);
    tie_base = BlockExclusiveScan(local_equal, reduce_count);
  }
  // Calls in id order within the chunk, with `ties_seen` starting at tie_base each pass.
  auto kept = [&](float v, uint32_t& ties_seen) {
    if (isnan(v)) return false;
    if (!limit_k) return true;
    const uint32_t key = OrderedKey(v);
    if (key != k_threshold) return key > k_threshold;
    return ties_seen++ < ties_needed;
  };

  // Top-p: the largest key U whose kept keys >= U still hold top_p of the kept mass.
  uint32_t p_threshold = 0;
  if (top_p < 1.0f) {
    double local_total = 0.0;
    uint32_t ties_seen = tie_base;
    for (size_t i = begin; i < end; ++i) {
      const float v = scaled(i);
      if (kept(v, ties_seen)) local_total += expf(v - max_value);
    }
    const double target = static_cast<double>(top_p) * BlockTotal(local_total, reduce_mass);
    for (int bit = kKeyBits - 1; bit >= 0; --bit) {
      const uint32_t candidate = p_threshold | (1u << bit);
      double local = 0.0;
      ties_seen = tie_base;
      for (size_t i = begin; i < end; ++i) {
        const float v = scaled(i);
        if (kept(v, ties_seen) && OrderedKey(v) >= candidate) local += expf(v - max_value);
      }
      if (BlockTotal(local, reduce_mass) >= target) p_threshold = candidate;
    }
  }

  // The draw: cumulative mass in id order.
  double own = 0.0;
  int last = -1;
  {
    uint32_t ties_seen = tie_base;
    for (size_t i = begin; i < end; ++i) {
      const float v = scaled(i);
      if (kept(v, ties_seen) && OrderedKey(v) >= p_threshold) {
        own += expf(v - max_value);
        last = static_cast<int>(i);
      }
    }
  }
  const double total = BlockTotal(own, reduce_mass);
  const double before = BlockExclusiveScan(own, reduce_mass);
  if (threadIdx.x == 0) chosen = -1;
  __syncthreads();
  const double r = UniformDouble(seed, blockIdx.x) * total;
  if (own > 0.0 && r >= before && r < before + own) {
    double acc = before;
    int pick = last;  // rounding can leave acc short of r at the chunk's end
    uint32_t ties_seen = tie_base;
    for (size_t i = begin; i < end; ++i) {
      const float v = scaled(i);
      if (kept(v, ties_seen) && OrderedKey(v) >= p_threshold) {
        acc += expf(v - max_value);
        if (acc > r) {
          pick = static_cast<int>(i);
          break;
        }
      }
    }
    chosen = pick;
  }
  __syncthreads();
  if (chosen < 0) {
    // r fell past the last interval through rounding: the last kept token.
    int last_kept = last;
    for (int offset = internal::kWarpSize / 2; offset > 0; offset >>= 1) {
      last_kept = max(last_kept, __shfl_xor_sync(internal::kFullMask, last_kept, offset));
    }
    if (threadIdx.x % internal::kWarpSize == 0) reduce_index[threadIdx.x / internal::kWarpSize] = last_kept;
    __syncthreads();
    if (threadIdx.x == 0) {
      const int warps = static_cast<int>(blockDim.x) / internal::kWarpSize;
      for (int w = 0; w < warps; ++w) last_kept = max(last_kept, reduce_index[w]);
      tokens[blockIdx.x] = last_kept;
    }
    return;
  }
  if (threadIdx.x == 0) tokens[blockIdx.x] = chosen;
}

Status CheckRows(const CudaStream& stream, const float* logits, size_t batch, size_t vocab, int32_t* tokens,
                 const char* kernel) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, kernel));
  if (vocab == 0 || vocab > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return Status::InvalidArgument(std::string(kernel) + ": vocab must be in [1, 2^31)");
  }
  if (batch != 0 && (logits == nullptr || tokens == nullptr)) {
    return Status::InvalidArgument(std::string(kernel) + ": null logits or tokens");
  }
  return Status::Ok();
}

}  // namespace

Status SampleGreedy(const CudaStream& stream, const float* logits, size_t batch, size_t vocab, int32_t* tokens) {
  ES_RETURN_IF_ERROR(CheckRows(stream, logits, batch, vocab, tokens, "SampleGreedy"));
  if (batch == 0) return Status::Ok();
  GreedyKernel<<<static_cast<unsigned>(batch), kGreedyThreads, 0, internal::Native(stream)>>>(logits, vocab, tokens);
  return internal::LaunchStatus("SampleGreedy");
}

Status Sample(const CudaStream& stream, const float* logits, size_t batch, size_t vocab,
              const SamplingParams& params, int32_t* tokens) {
  ES_RETURN_IF_ERROR(CheckRows(stream, logits, batch, vocab, tokens, "Sample"));
  if (!(params.temperature >= 0.0f)) return Status::InvalidArgument("Sample: temperature must be >= 0");
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) return Status::InvalidArgument("Sample: top_p must be in (0, 1]");
  if (params.temperature == 0.0f) return SampleGreedy(stream, logits, batch, vocab, tokens);
  if (batch == 0) return Status::Ok();
  SampleKernel<<<static_cast<unsigned>(batch), kSampleThreads, 0, internal::Native(stream)>>>(
      logits, vocab, params.temperature, params.top_k, params.top_p, params.seed, tokens);
  return internal::LaunchStatus("Sample");
}

}  // namespace es::cuda
