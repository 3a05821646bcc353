// A host emulation of the part of es_cuda's API the CUDA backend uses (compute/cuda/cuda_kernels.h and
// device_cache.h), so that the backend's host logic (compute/runtime/cuda_backend.cc: buffers, offsets, the KV
// cache, routing, parts, leases, prefetch, the hybrid split) runs in tests on machines without a GPU. Linked instead of
// es_cuda into cuda_backend_emulated_test only; it proves nothing about the real kernels (cuda_kernels_test does
// that on a GPU).
//
// - "Device" memory is host memory, poisoned with NaN bytes when allocated, so a read of an unwritten element
//   shows up as NaN in the results.
// - Kernels are the CPU kernels (compute/kernels), which the real kernels are tested against.
// - Every stream is a queue of deferred operations that runs only when something waits on it: Synchronize, an
//   event wait from another stream, or freeing device or pinned memory (cudaFree and cudaFreeHost synchronise
//   the device). A host that reads results before synchronising, or lets go of host memory a queued copy still
//   reads, therefore sees stale bytes, or ASan reports the use after free. Events record a position in a stream.
// - One thread: the backend drives one forward pass at a time.
// The parts of the API that make no CUDA call are inline in those headers, shared with es_cuda.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "compute/cuda/cuda_kernels.h"
#include "compute/cuda/device_cache.h"

namespace es::cuda {
namespace {

constexpr size_t kAlign = 256;
constexpr uint8_t kPoison = 0xFF;  // every float made of these bytes is a NaN
constexpr size_t kEmulatedMemory = size_t{80} << 30;

struct Queue {
  std::deque<std::function<Status()>> ops;
  uint64_t enqueued = 0;
  uint64_t executed = 0;
  Status fault;  // the first failed operation's status, reported at every later synchronisation
};

// A recorded event: a position in a stream.
struct Event {
  Queue* queue = nullptr;
  uint64_t mark = 0;
};

std::set<Queue*>& LiveQueues() {
  static std::set<Queue*> queues;
  return queues;
}

Status RunUntil(Queue& q, uint64_t mark) {
  while (q.executed < mark && !q.ops.empty()) {
    std::function<Status()> op = std::move(q.ops.front());
    q.ops.pop_front();
    Status s = op();
    ++q.executed;
    if (!s.ok() && q.fault.ok()) q.fault = s;
  }
  return q.fault;
}

// What cudaFree and cudaFreeHost do first: wait for all work on the device.
void SynchronizeDevice() {
  for (Queue* q : LiveQueues()) (void)RunUntil(*q, q->enqueued);
}

Queue* QueueOf(const CudaStream& stream) { return static_cast<Queue*>(stream.handle()); }

Status Enqueue(const CudaStream& stream, const char* what, std::function<Status()> op) {
  if (!stream.valid()) return Status::InvalidArgument(std::string(what) + ": the stream is not valid");
  Queue* q = QueueOf(stream);
  q->ops.push_back(std::move(op));
  ++q->enqueued;
  return Status::Ok();
}

void Record(void* event, const CudaStream& stream) {
  auto* e = static_cast<Event*>(event);
  e->queue = QueueOf(stream);
  e->mark = e->queue->enqueued;
}

bool Completed(void* event) {
  auto* e = static_cast<Event*>(event);
  return e->queue == nullptr || e->queue->executed >= e->mark;
}

// `stream` waits for `event` as recorded now (cudaStreamWaitEvent).
Status WaitFor(const CudaStream& stream, void* event) {
  const Event e = *static_cast<Event*>(event);
  return Enqueue(stream, "cudaStreamWaitEvent", [e]() {
    return e.queue == nullptr ? Status::Ok() : RunUntil(*e.queue, e.mark);
  });
}

void* AllocateHost(size_t bytes) {
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (p != nullptr) std::memset(p, kPoison, rounded);
  return p;
}

kernels::CpuContext Context() { return {}; }

}  // namespace

// ---- Devices, streams, memory ----------------------------------------------------------------------------------

bool DeviceAvailable() { return true; }

Result<DeviceInfo> GetDeviceInfo(int device) {
  if (device != 0) return Status::InvalidArgument("GetDeviceInfo: no such device");
  DeviceInfo info;
  info.name = "emulated device (host memory)";
  info.compute_major = 9;
  info.multiprocessors = 1;
  info.total_memory_bytes = kEmulatedMemory;
  info.peak_memory_gbps = 3350;
  return info;
}

Result<size_t> FreeDeviceMemory() { return kEmulatedMemory; }

Result<CudaStream> CudaStream::Create() {
  auto* q = new Queue();
  LiveQueues().insert(q);
  return CudaStream(q);
}

CudaStream::CudaStream(CudaStream&& other) noexcept : handle_(other.handle_) { other.handle_ = nullptr; }

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  std::swap(handle_, other.handle_);
  return *this;
}

CudaStream::~CudaStream() {
  if (handle_ == nullptr) return;
  auto* q = static_cast<Queue*>(handle_);
  (void)RunUntil(*q, q->enqueued);  // the runtime finishes a destroyed stream's work
  LiveQueues().erase(q);
  delete q;
}

Status CudaStream::Synchronize() const {
  if (handle_ == nullptr) return Status::InvalidArgument("Synchronize: the stream is not valid");
  auto* q = static_cast<Queue*>(handle_);
  return RunUntil(*q, q->enqueued);
}

Result<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return Status::InvalidArgument("DeviceBuffer: zero bytes");
  void* p = AllocateHost(bytes);
  if (p == nullptr) return Status::ResourceExhausted("emulated device memory exhausted");
  return DeviceBuffer(p, bytes);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(size_, other.size_);
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ == nullptr) return;
  SynchronizeDevice();
  std::free(data_);
}

Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, size_t offset) {
  ES_RETURN_IF_ERROR(CheckRange(bytes, offset, "DeviceBuffer::CopyFromHost"));
  if (bytes > 0) std::memcpy(static_cast<std::byte*>(data_) + offset, src, bytes);
  return Status::Ok();
}

Status DeviceBuffer::CopyFromHostAsync(const void* src, size_t bytes, const CudaStream& stream, size_t offset) {
  ES_RETURN_IF_ERROR(CheckRange(bytes, offset, "DeviceBuffer::CopyFromHostAsync"));
  void* dst = static_cast<std::byte*>(data_) + offset;
  return Enqueue(stream, "CopyFromHostAsync", [dst, src, bytes]() {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  });
}

Result<PinnedHostBuffer> PinnedHostBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return Status::InvalidArgument("PinnedHostBuffer: zero bytes");
  void* p = AllocateHost(bytes);
  if (p == nullptr) return Status::ResourceExhausted("pinned memory exhausted");
  return PinnedHostBuffer(p, bytes);
}

PinnedHostBuffer::PinnedHostBuffer(PinnedHostBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

PinnedHostBuffer& PinnedHostBuffer::operator=(PinnedHostBuffer&& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(size_, other.size_);
  return *this;
}

PinnedHostBuffer::~PinnedHostBuffer() {
  if (data_ == nullptr) return;
  SynchronizeDevice();
  std::free(data_);
}

Status CopyDeviceToHost(void* dst, const void* device_src, size_t bytes) {
  if (bytes > 0) std::memcpy(dst, device_src, bytes);
  return Status::Ok();
}

Status CopyHostToDeviceAsync(void* device_dst, const void* src, size_t bytes, const CudaStream& stream) {
  if (bytes > 0 && (device_dst == nullptr || src == nullptr)) {
    return Status::InvalidArgument("CopyHostToDeviceAsync: null pointer");
  }
  return Enqueue(stream, "CopyHostToDeviceAsync", [=]() {
    if (bytes > 0) std::memcpy(device_dst, src, bytes);
    return Status::Ok();
  });
}

Status CopyDeviceToHostAsync(void* dst, const void* device_src, size_t bytes, const CudaStream& stream) {
  return CopyHostToDeviceAsync(dst, device_src, bytes, stream);  // host memory both ways
}

Status ZeroAsync(void* device, size_t bytes, const CudaStream& stream) {
  return Enqueue(stream, "ZeroAsync", [=]() {
    if (bytes > 0) std::memset(device, 0, bytes);
    return Status::Ok();
  });
}

// ---- KV cache ---------------------------------------------------------------------------------------------------

Result<DeviceKvCache> DeviceKvCache::Create(size_t layers, size_t capacity, size_t num_kv_heads, size_t head_dim) {
  if (layers == 0 || capacity == 0 || num_kv_heads == 0 || head_dim == 0) {
    return Status::InvalidArgument("DeviceKvCache: layers, capacity, heads and head_dim must be > 0");
  }
  DeviceKvCache c;
  c.layers_ = layers;
  c.capacity_ = capacity;
  c.row_floats_ = num_kv_heads * head_dim;
  ES_ASSIGN_OR_RETURN(c.keys_, DeviceBuffer::Allocate(layers * capacity * c.row_floats_ * sizeof(float)));
  ES_ASSIGN_OR_RETURN(c.values_, DeviceBuffer::Allocate(layers * capacity * c.row_floats_ * sizeof(float)));
  return c;
}

Status DeviceKvCache::Write(const CudaStream& stream, size_t layer, const float* k, const float* v, size_t tokens) {
  if (layer >= layers_) return Status::InvalidArgument("DeviceKvCache::Write: no such layer");
  if (tokens > capacity_ - length_) return Status::ResourceExhausted("DeviceKvCache::Write: past the capacity");
  float* kd = keys_.As<float>() + (layer * capacity_ + length_) * row_floats_;
  float* vd = values_.As<float>() + (layer * capacity_ + length_) * row_floats_;
  const size_t bytes = tokens * row_floats_ * sizeof(float);
  return Enqueue(stream, "DeviceKvCache::Write", [=]() {
    std::memcpy(kd, k, bytes);
    std::memcpy(vd, v, bytes);
    return Status::Ok();
  });
}

// ---- Kernels: the CPU kernels, deferred -------------------------------------------------------------------------

Status RmsNorm(const CudaStream& stream, const float* x, size_t rows, const kernels::WeightVector& weight, float eps,
               float* y) {
  return Enqueue(stream, "RmsNorm", [=]() { return kernels::RmsNorm(Context(), x, rows, weight, eps, y); });
}

Status QkNormRope(const CudaStream& stream, const kernels::AttentionShape& shape, float* q, float* k, size_t tokens,
                  const kernels::WeightVector& q_norm, const kernels::WeightVector& k_norm, float eps,
                  const int32_t* positions, float theta) {
  return Enqueue(stream, "QkNormRope", [=]() -> Status {
    if (q_norm.data != nullptr) {
      ES_RETURN_IF_ERROR(kernels::RmsNorm(Context(), q, tokens * shape.num_heads, q_norm, eps, q));
    }
    if (k_norm.data != nullptr) {
      ES_RETURN_IF_ERROR(kernels::RmsNorm(Context(), k, tokens * shape.num_kv_heads, k_norm, eps, k));
    }
    ES_RETURN_IF_ERROR(kernels::ApplyRope(q, tokens, shape.num_heads, shape.head_dim, positions, theta));
    return kernels::ApplyRope(k, tokens, shape.num_kv_heads, shape.head_dim, positions, theta);
  });
}

Status Attention(const CudaStream& stream, const kernels::AttentionShape& shape, const float* q, size_t num_queries,
                 const float* k, const float* v, size_t num_keys, float* out) {
  return Enqueue(stream, "Attention", [=]() {
    return kernels::Attention(Context(), shape, q, num_queries, k, v, num_keys, out);
  });
}

Status RouterTopK(const CudaStream& stream, const float* logits, size_t batch, size_t num_experts, size_t top_k,
                  bool normalize, int32_t* experts, float* weights) {
  return Enqueue(stream, "RouterTopK", [=]() {
    return kernels::RouterTopK(logits, batch, num_experts, top_k, normalize, experts, weights);
  });
}

Status MatMul(const CudaStream& stream, const float* x, size_t batch, const kernels::WeightMatrix& w, float* y) {
  return Enqueue(stream, "MatMul", [=]() { return kernels::MatMul(Context(), x, batch, w, y); });
}

size_t ExpertScratchFloats(size_t batch, size_t intermediate) {
  return kernels::ExpertScratchFloats(batch, intermediate);
}

Status ExpertSwiGLU(const CudaStream& stream, const kernels::ExpertWeights& expert, const float* x, size_t batch,
                    float* scratch, float* out) {
  return Enqueue(stream, "ExpertSwiGLU", [=]() {
    std::span<float> s(scratch, ExpertScratchFloats(batch, expert.gate.rows));
    return kernels::ExpertForward(Context(), expert, x, batch, s, out);
  });
}

Status ExpertSwiGLURows(const CudaStream& stream, const kernels::ExpertWeights& expert, const float* x,
                        size_t tokens, const int32_t* rows, const float* scale, size_t count, float* scratch,
                        float* out) {
  return Enqueue(stream, "ExpertSwiGLURows", [=]() {
    std::span<float> s(scratch, ExpertScratchFloats(count, expert.gate.rows));
    return kernels::ExpertAccumulateRows(Context(), expert, x, tokens, {rows, count}, scale, s, out);
  });
}

Status AddInPlace(const CudaStream& stream, float* x, const float* y, size_t n) {
  return Enqueue(stream, "AddInPlace", [=]() {
    for (size_t i = 0; i < n; ++i) x[i] += y[i];
    return Status::Ok();
  });
}

Status AddBias(const CudaStream& stream, float* y, size_t rows, const kernels::WeightVector& bias) {
  return Enqueue(stream, "AddBias", [=]() -> Status {
    std::vector<float> b(bias.size);
    ES_RETURN_IF_ERROR(kernels::ConvertToF32(Context(), bias.data, bias.dtype, bias.size, b.data()));
    for (size_t r = 0; r < rows; ++r) {
      for (size_t i = 0; i < bias.size; ++i) y[r * bias.size + i] += b[i];
    }
    return Status::Ok();
  });
}

Status AddSigmoidGated(const CudaStream& stream, float* x, const float* gate, size_t gate_stride, const float* src,
                       size_t rows, size_t cols) {
  return Enqueue(stream, "AddSigmoidGated", [=]() {
    for (size_t r = 0; r < rows; ++r) {
      const float g = 1.0f / (1.0f + std::exp(-gate[r * gate_stride]));
      for (size_t c = 0; c < cols; ++c) x[r * cols + c] += g * src[r * cols + c];
    }
    return Status::Ok();
  });
}

// ---- DeviceExpertCache: device_cache.cu's protocol (the same SlotTable) over emulated streams and events ------

Result<std::unique_ptr<DeviceExpertCache>> DeviceExpertCache::Create(const DeviceExpertCacheOptions& options) {
  ES_ASSIGN_OR_RETURN(std::unique_ptr<DeviceExpertCache> cache, Allocate(options));
  for (internal::SlotTable::Slot& slot : cache->table_.slots()) {
    slot.ready_event = new Event();
    slot.use_event = new Event();
  }
  return cache;
}

DeviceExpertCache::~DeviceExpertCache() {
  (void)copy_stream_.Synchronize();
  for (internal::SlotTable::Slot& slot : table_.slots()) {
    delete static_cast<Event*>(slot.ready_event);
    delete static_cast<Event*>(slot.use_event);
  }
}

Result<size_t> DeviceExpertCache::EnsureResident(uint64_t key, const void* host, size_t bytes) {
  if (std::optional<size_t> hit = table_.Hit(key)) return *hit;
  if (host == nullptr || bytes == 0) return Status::InvalidArgument("DeviceExpertCache: null or empty expert");
  if (bytes > slot_bytes_) return Status::InvalidArgument("DeviceExpertCache: an expert exceeds the slot size");
  bool use_pending = false;
  ES_ASSIGN_OR_RETURN(size_t victim,
                      table_.PickVictim([](void* event) -> Result<bool> { return Completed(event); }, &use_pending));
  table_.Vacate(victim, use_pending);
  internal::SlotTable::Slot& slot = table_[victim];
  if (use_pending) ES_RETURN_IF_ERROR(WaitFor(copy_stream_, slot.use_event));
  void* dst = SlotData(victim);
  ES_RETURN_IF_ERROR(Enqueue(copy_stream_, "upload", [dst, host, bytes]() {
    std::memcpy(dst, host, bytes);
    return Status::Ok();
  }));
  Record(slot.ready_event, copy_stream_);
  table_.Fill(victim, key, bytes);
  return victim;
}

Result<DeviceSlot> DeviceExpertCache::Acquire(uint64_t key, const void* host, size_t bytes,
                                              const CudaStream& compute) {
  std::lock_guard<std::mutex> lock(mu_);
  ES_ASSIGN_OR_RETURN(size_t index, EnsureResident(key, host, bytes));
  internal::SlotTable::Slot& slot = table_[index];
  ES_RETURN_IF_ERROR(WaitFor(compute, slot.ready_event));
  ++slot.holders;
  return DeviceSlot{key, index, SlotData(index), slot.bytes};
}

Status DeviceExpertCache::Release(const DeviceSlot& held, const CudaStream& compute) {
  std::lock_guard<std::mutex> lock(mu_);
  ES_RETURN_IF_ERROR(table_.CheckHeld(held.index, held.key));
  Record(table_[held.index].use_event, compute);
  table_.Released(held.index);
  return Status::Ok();
}

}  // namespace es::cuda
