// The CUDA kernel layer: device memory and streams, and the forward-pass kernels with the semantics of
// compute/kernels/cpu_kernels.h, which is the reference they are tested against. Plain C++: no CUDA type appears
// here, so code compiled without nvcc may include it; it links only where es_cuda is built (ES_HAVE_CUDA), or
// against the tests' host emulation.
//
// Conventions for every kernel below:
// - It is enqueued on the given stream and returns once enqueued. Argument and launch errors come back as a
//   Status; a fault while the kernel runs surfaces at the next synchronising call on that stream.
// - Activation pointers (x, y, q, k, v, out, logits, positions, rows, ...) are device memory that the caller
//   owns and keeps alive until the stream has passed the call. Weight views are the CPU ones
//   (kernels::WeightMatrix / WeightVector / ExpertWeights) with `data` pointing at device memory, laid out
//   exactly as for the CPU kernels. Shapes, dtypes and null pointers are checked on the host; device contents
//   are not (an index outside its range is skipped where a kernel says so, never written through).
// - Outputs must not overlap inputs unless a kernel says so. Activations and accumulation are fp32.
// - Thread safety: calls on distinct streams are independent; calls that share a stream are ordered by it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "compute/kernels/cpu_kernels.h"
#include "store/base/status.h"

namespace es::cuda {

// ---- Devices, streams and memory ----------------------------------------------------------------------------

// True when the CUDA runtime reports at least one device. False (never an error) without a driver or device,
// which is how tests and benchmarks decide to skip.
bool DeviceAvailable();

struct DeviceInfo {
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int multiprocessors = 0;
  size_t total_memory_bytes = 0;
  size_t l2_cache_bytes = 0;
  double peak_memory_gbps = 0;  // 2 x memory clock x bus width (DDR), the datasheet figure
};
// NotSupported without a device.
Result<DeviceInfo> GetDeviceInfo(int device = 0);

// An owned, non-blocking CUDA stream of the current device. Move-only; destroying it does not wait for its
// work (the runtime finishes it), so buffers it uses must outlive a Synchronize.
class CudaStream {
 public:
  // NotSupported without a device.
  static Result<CudaStream> Create();
  CudaStream() = default;  // holds no stream; not usable for launches
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();

  bool valid() const { return handle_ != nullptr; }
  // Blocks until everything enqueued so far has run; reports any fault that happened meanwhile.
  Status Synchronize() const;
  // The cudaStream_t, opaque here; CUDA code casts it back.
  void* handle() const { return handle_; }

 private:
  explicit CudaStream(void* handle) : handle_(handle) {}
  void* handle_ = nullptr;
};

// Owned device memory (cudaMalloc: 256-byte aligned). Move-only; freed on destruction, which synchronises the
// device (cudaFree does), so no stream may still use it then.
class DeviceBuffer {
 public:
  // bytes > 0. NotSupported without a device, ResourceExhausted when the device is full.
  static Result<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <typename T>
  T* As() const {
    return static_cast<T*>(data_);
  }

  // Synchronous copies (complete on return): `bytes` at byte `offset` of this buffer. InvalidArgument when the
  // range does not fit. They do not wait for kernels on other streams: synchronise the stream that writes or
  // reads the buffer first.
  Status CopyFromHost(const void* src, size_t bytes, size_t offset = 0);
  Status CopyToHost(void* dst, size_t bytes, size_t offset = 0) const;
  // Enqueued on `stream`; the host memory must stay valid (and unchanged) until the stream passes the copy.
  // Asynchronous with respect to the host only when the host memory is pinned.
  Status CopyFromHostAsync(const void* src, size_t bytes, const CudaStream& stream, size_t offset = 0);
  Status CopyToHostAsync(void* dst, size_t bytes, const CudaStream& stream, size_t offset = 0) const;
  // Every byte set to `value`, enqueued on `stream` (tests poison outputs with it).
  Status Fill(uint8_t value, const CudaStream& stream);

 private:
  DeviceBuffer(void* data, size_t size) : data_(data), size_(size) {}
  Status CheckRange(size_t bytes, size_t offset, const char* what) const;
  void* data_ = nullptr;
  size_t size_ = 0;
};

// The parts of this API that make no CUDA call are defined here, inline, so that es_cuda and the tests' host
// emulation of it (tests/util/cuda_emulator/) share them.
inline Status DeviceBuffer::CheckRange(size_t bytes, size_t offset, const char* what) const {
  if (data_ == nullptr) return Status::InvalidArgument(std::string(what) + ": empty buffer");
  if (offset > size_ || bytes > size_ - offset) {
    return Status::InvalidArgument(std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " +
                                   std::to_string(offset) + " do not fit in " + std::to_string(size_));
  }
  return Status::Ok();
}

// Owned page-locked host memory (cudaHostAlloc, portable), for copies that overlap with compute. Move-only.
class PinnedHostBuffer {
 public:
  static Result<PinnedHostBuffer> Allocate(size_t bytes);
  PinnedHostBuffer() = default;
  PinnedHostBuffer(PinnedHostBuffer&& other) noexcept;
  PinnedHostBuffer& operator=(PinnedHostBuffer&& other) noexcept;
  PinnedHostBuffer(const PinnedHostBuffer&) = delete;
  PinnedHostBuffer& operator=(const PinnedHostBuffer&) = delete;
  ~PinnedHostBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  PinnedHostBuffer(void* data, size_t size) : data_(data), size_(size) {}
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Raw device copies for memory not held in a DeviceBuffer (a DeviceExpertCache slot, say). Synchronous, with
// DeviceBuffer::CopyToHost's caveat about other streams.
Status CopyDeviceToHost(void* dst, const void* device_src, size_t bytes);
Status CopyHostToDevice(void* device_dst, const void* src, size_t bytes);
// Enqueued on `stream`.
Status CopyDeviceToDevice(void* device_dst, const void* device_src, size_t bytes, const CudaStream& stream);
// Enqueued on `stream`; the host memory must stay valid and unchanged (H2D) or unread (D2H) until the stream has
// passed the copy. Asynchronous with respect to the host only when the host memory is pinned.
Status CopyHostToDeviceAsync(void* device_dst, const void* src, size_t bytes, const CudaStream& stream);
Status CopyDeviceToHostAsync(void* dst, const void* device_src, size_t bytes, const CudaStream& stream);
// Sets `bytes` of device memory to zero, enqueued on `stream`.
Status ZeroAsync(void* device, size_t bytes, const CudaStream& stream);
// Bytes of device memory free now (cudaMemGetInfo). NotSupported without a device.
Result<size_t> FreeDeviceMemory();

// ---- KV cache -------------------------------------------------------------------------------------------------

// Keys and values of every layer on the device, [capacity, num_kv_heads, head_dim] fp32 per layer, the layout
// kernels::Attention and Attention below read. Mirrors the CPU KvCache: Write puts a step's new rows at
// positions length().., for each layer in turn; Advance then moves length() past them.
// Not thread-safe; the stream passed to Write orders the copies.
class DeviceKvCache {
 public:
  static Result<DeviceKvCache> Create(size_t layers, size_t capacity, size_t num_kv_heads, size_t head_dim);

  // Copies `tokens` rows of k and v (device, [tokens, num_kv_heads, head_dim]) to positions
  // length() .. length() + tokens - 1 of `layer`. ResourceExhausted past the capacity.
  Status Write(const CudaStream& stream, size_t layer, const float* k, const float* v, size_t tokens);
  Status Advance(size_t tokens);
  void Reset() { length_ = 0; }
  // Forgets the positions from `length` on (a host KvCache that was reset or rewound); length <= length().
  Status Truncate(size_t length);

  const float* keys(size_t layer) const { return keys_.As<float>() + layer * capacity_ * row_floats_; }
  const float* values(size_t layer) const { return values_.As<float>() + layer * capacity_ * row_floats_; }
  size_t length() const { return length_; }
  size_t capacity() const { return capacity_; }
  size_t layers() const { return layers_; }
  size_t row_floats() const { return row_floats_; }

 private:
  DeviceKvCache() = default;
  DeviceBuffer keys_;
  DeviceBuffer values_;
  size_t layers_ = 0;
  size_t capacity_ = 0;
  size_t row_floats_ = 0;  // num_kv_heads * head_dim
  size_t length_ = 0;
};

inline Status DeviceKvCache::Advance(size_t tokens) {
  if (tokens > capacity_ - length_) return Status::ResourceExhausted("DeviceKvCache::Advance: past the capacity");
  length_ += tokens;
  return Status::Ok();
}

inline Status DeviceKvCache::Truncate(size_t length) {
  if (length > length_) return Status::InvalidArgument("DeviceKvCache::Truncate: past the current length");
  length_ = length;
  return Status::Ok();
}

// ---- Kernels ---------------------------------------------------------------------------------------------------

// y = weight * (x * rsqrt(mean(x^2) + eps)) per row of weight.size floats; x and y are [rows, weight.size] and
// may be the same buffer. As kernels::RmsNorm.
Status RmsNorm(const CudaStream& stream, const float* x, size_t rows, const kernels::WeightVector& weight, float eps,
               float* y);

// Qwen3's attention prologue, in place: per-head RMSNorm of q ([tokens, num_heads, head_dim]) with q_norm and
// of k ([tokens, num_kv_heads, head_dim]) with k_norm (each a [head_dim] vector), then rotary embedding of both
// at positions[t] (device, [tokens]) with base theta: the CPU order RmsNorm(rows = tokens * heads) then
// ApplyRope. A norm whose data is null is skipped (architectures without q/k norm). The angle is
// float(position) * inv_freq in fp32, its cosine and sine computed in double, as kernels::ApplyRope does.
Status QkNormRope(const CudaStream& stream, const kernels::AttentionShape& shape, float* q, float* k, size_t tokens,
                  const kernels::WeightVector& q_norm, const kernels::WeightVector& k_norm, float eps,
                  const int32_t* positions, float theta);

// Causal GQA attention over a device KV cache, with kernels::Attention's contract: q and out are
// [num_queries, num_heads, head_dim], k and v are [num_keys, num_kv_heads, head_dim] (DeviceKvCache::keys /
// values of a layer, or any such buffer); query i sits at position num_keys - num_queries + i. Decode is
// num_queries = 1; a prefill chunk writes its keys into the cache before the call. Online softmax in fp32.
Status Attention(const CudaStream& stream, const kernels::AttentionShape& shape, const float* q, size_t num_queries,
                 const float* k, const float* v, size_t num_keys, float* out);

// As kernels::RouterTopK: per row of logits [batch, num_experts] (num_experts <= kernels::kMaxRouterExperts),
// softmax in fp32, the top_k largest probabilities in descending order (ties: the lower index; NaN never
// preferred), divided by their sum when `normalize`. experts and weights are [batch, top_k].
Status RouterTopK(const CudaStream& stream, const float* logits, size_t batch, size_t num_experts, size_t top_k,
                  bool normalize, int32_t* experts, float* weights);

// y[b, r] = sum_k x[b, k] * W[r, k] (x [batch, w.cols], y [batch, w.rows]); W is F32, F16 or BF16. batch 1 is
// a GEMV (one warp per weight row); larger batches reuse each weight row loaded across a tile of rows. This is
// also the lm_head.
Status MatMul(const CudaStream& stream, const float* x, size_t batch, const kernels::WeightMatrix& w, float* y);

// Floats of device scratch ExpertSwiGLU / ExpertSwiGLURows need for `batch` rows: silu(gate x) * up x.
size_t ExpertScratchFloats(size_t batch, size_t intermediate);

// out = down(silu(gate(x)) * up(x)) for each of `batch` rows of x [batch, hidden] (out [batch, hidden]); the
// GEMV path when batch is 1. gate/up are [intermediate, hidden] and down [hidden, intermediate], F32, F16 or
// BF16, as kernels::ExpertWeights (rebase a host view with RebaseExpertWeights). scratch holds
// ExpertScratchFloats(batch, intermediate) floats.
Status ExpertSwiGLU(const CudaStream& stream, const kernels::ExpertWeights& expert, const float* x, size_t batch,
                    float* scratch, float* out);

// The prefill path for the tokens a router sent to one expert: for i < count,
// out[rows[i], :] += scale[i] * expert(x[rows[i], :]), where x and out are [tokens, hidden] and rows and scale
// (device) have `count` entries. A row may repeat: its contributions add in order of i, as on the CPU. A row
// outside [0, tokens) is skipped. Experts summed one call after another on one stream give a fixed result.
// scratch holds ExpertScratchFloats(count, intermediate) floats.
Status ExpertSwiGLURows(const CudaStream& stream, const kernels::ExpertWeights& expert, const float* x,
                        size_t tokens, const int32_t* rows, const float* scale, size_t count, float* scratch,
                        float* out);

// The view of an expert whose bytes were copied from host_base to device_base unchanged (one extent, as a
// DeviceExpertCache slot holds it): each matrix's data moved by the same offset.
kernels::ExpertWeights RebaseExpertWeights(const kernels::ExpertWeights& host, const void* host_base,
                                           const void* device_base);

// The prefill grouping, on the host: the router's choices for `tokens` rows (experts and weights, each
// [tokens, top_k], as RouterTopK writes them, copied back) turned into one group per selected expert, in
// ascending expert order, each listing its rows in ascending order with their routing weights: the `rows` and
// `scale` of ExpertSwiGLURows. Negative expert ids are skipped.
struct ExpertGroup {
  int32_t expert = 0;
  std::vector<int32_t> rows;
  std::vector<float> scales;
};
std::vector<ExpertGroup> GroupTokensByExpert(std::span<const int32_t> experts, std::span<const float> weights,
                                             size_t top_k);

// ---- Element-wise ----------------------------------------------------------------------------------------------

// x[i] += y[i] for i < n (fp32, device). The residual adds.
Status AddInPlace(const CudaStream& stream, float* x, const float* y, size_t n);
// y[r, i] += bias[i] for r < rows, i < bias.size (y [rows, bias.size]; bias F32, F16 or BF16, widened to fp32
// first, as the CPU adds a converted bias).
Status AddBias(const CudaStream& stream, float* y, size_t rows, const kernels::WeightVector& bias);
// x[r, c] += sigmoid(gate[r * gate_stride]) * src[r, c] for r < rows, c < cols: Qwen2-MoE's gated shared expert.
Status AddSigmoidGated(const CudaStream& stream, float* x, const float* gate, size_t gate_stride, const float* src,
                       size_t rows, size_t cols);

// ---- Sampling --------------------------------------------------------------------------------------------------

// Greedy: tokens[b] = argmax of logits row b ([batch, vocab]); ties go to the lower id (torch.argmax, and the
// CPU Sampler), a NaN is never chosen over a number.
Status SampleGreedy(const CudaStream& stream, const float* logits, size_t batch, size_t vocab, int32_t* tokens);

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  uint32_t top_k = 0;        // 0: no limit
  float top_p = 1.0f;        // 1: no limit; in (0, 1]
  uint64_t seed = 0;         // the same seed, logits and parameters give the same token
};

// As the CPU Sampler's distribution: logits / temperature, keep the top_k largest (ties: the lower id), then the
// smallest set of the largest whose probability reaches top_p (elements tied with its last one are all kept),
// then one draw in proportion to exp(logit / temperature). The draw comes from a counter-based generator
// seeded by (seed, row), not the CPU Sampler's mt19937, so the same seed does not pick the same token on both;
// callers vary the seed per step. NaN logits are never drawn. One block per row; a few full passes over the
// row per bisection step (64 at most), fine for a vocab of 152k, not tuned.
Status Sample(const CudaStream& stream, const float* logits, size_t batch, size_t vocab,
              const SamplingParams& params, int32_t* tokens);

}  // namespace es::cuda
