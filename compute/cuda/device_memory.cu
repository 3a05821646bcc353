// Devices, streams, device and pinned host buffers, raw copies and the device KV cache: the CUDA runtime calls
// behind cuda_kernels.h's memory API, each turned into a Status by ES_CUDA_RETURN_IF_ERROR.
#include <utility>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {

using internal::Native;

namespace {

// A failed cudaGetDeviceCount leaves a sticky "last error"; clearing it keeps later calls' reports honest.
Result<int> DeviceCount() {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return CudaStatus(err, "cudaGetDeviceCount");
  }
  if (devices == 0) return Status::NotSupported("no CUDA device");
  return devices;
}

// cudaMemcpy from pageable memory may return once the bytes are staged, before the DMA lands, and only the
// legacy default stream is ordered after it, not the non-blocking streams kernels run on. Waiting for that
// stream makes a host-to-device copy complete on return, as the API promises.
Status WaitForLegacyStream() {
  ES_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(cudaStreamLegacy));
  return Status::Ok();
}

Status RequireDevice() {
  Result<int> devices = DeviceCount();
  return devices.ok() ? Status::Ok() : devices.status();
}

}  // namespace

bool DeviceAvailable() { return DeviceCount().ok(); }

Result<DeviceInfo> GetDeviceInfo(int device) {
  ES_ASSIGN_OR_RETURN(int devices, DeviceCount());
  if (device < 0 || device >= devices) return Status::InvalidArgument("GetDeviceInfo: no such device");
  cudaDeviceProp prop{};
  ES_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  int memory_clock_khz = 0;
  int bus_width_bits = 0;
  ES_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&memory_clock_khz, cudaDevAttrMemoryClockRate, device));
  ES_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&bus_width_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  DeviceInfo info;
  info.name = prop.name;
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_memory_bytes = prop.totalGlobalMem;
  info.l2_cache_bytes = static_cast<size_t>(prop.l2CacheSize);
  constexpr double kDataRate = 2.0;  // double data rate: two transfers per clock
  constexpr double kBitsPerByte = 8.0;
  constexpr double kKhzToHz = 1e3;
  constexpr double kGiga = 1e9;
  info.peak_memory_gbps = kDataRate * memory_clock_khz * kKhzToHz * (bus_width_bits / kBitsPerByte) / kGiga;
  return info;
}

// ---- CudaStream -----------------------------------------------------------------------------------------------

Result<CudaStream> CudaStream::Create() {
  ES_RETURN_IF_ERROR(RequireDevice());
  cudaStream_t stream = nullptr;
  ES_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return CudaStream(static_cast<void*>(stream));
}

CudaStream::CudaStream(CudaStream&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

CudaStream::~CudaStream() {
  if (handle_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
}

Status CudaStream::Synchronize() const {
  if (handle_ == nullptr) return Status::InvalidArgument("CudaStream::Synchronize: no stream");
  ES_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(static_cast<cudaStream_t>(handle_)));
  return Status::Ok();
}

// ---- DeviceBuffer ---------------------------------------------------------------------------------------------

Result<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return Status::InvalidArgument("DeviceBuffer::Allocate: zero bytes");
  ES_RETURN_IF_ERROR(RequireDevice());
  void* data = nullptr;
  ES_CUDA_RETURN_IF_ERROR(cudaMalloc(&data, bytes));
  return DeviceBuffer(data, bytes);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, size_t offset) {
  ES_RETURN_IF_ERROR(CheckRange(bytes, offset, "DeviceBuffer::CopyFromHost"));
  if (bytes == 0) return Status::Ok();
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpy(static_cast<char*>(data_) + offset, src, bytes, cudaMemcpyHostToDevice));
  return WaitForLegacyStream();
}

Status DeviceBuffer::CopyToHost(void* dst, size_t bytes, size_t offset) const {
  ES_RETURN_IF_ERROR(CheckRange(bytes, offset, "DeviceBuffer::CopyToHost"));
  if (bytes == 0) return Status::Ok();
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, static_cast<const char*>(data_) + offset, bytes, cudaMemcpyDeviceToHost));
  return Status::Ok();
}

Status DeviceBuffer::CopyFromHostAsync(const void* src, size_t bytes, const CudaStream& stream, size_t offset) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "DeviceBuffer::CopyFromHostAsync"));
  ES_RETURN_IF_ERROR(CheckRange(bytes, offset, "DeviceBuffer::CopyFromHostAsync"));
  if (bytes == 0) return Status::Ok();
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(static_cast<char*>(data_) + offset, src, bytes, cudaMemcpyHostToDevice,
                                          Native(stream)));
  return Status::Ok();
}

Status DeviceBuffer::CopyToHostAsync(void* dst, size_t bytes, const CudaStream& stream, size_t offset) const {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "DeviceBuffer::CopyToHostAsync"));
  ES_RETURN_IF_ERROR(CheckRange(bytes, offset, "DeviceBuffer::CopyToHostAsync"));
  if (bytes == 0) return Status::Ok();
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, static_cast<const char*>(data_) + offset, bytes,
                                          cudaMemcpyDeviceToHost, Native(stream)));
  return Status::Ok();
}

Status DeviceBuffer::Fill(uint8_t value, const CudaStream& stream) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "DeviceBuffer::Fill"));
  ES_RETURN_IF_ERROR(CheckRange(size_, 0, "DeviceBuffer::Fill"));
  ES_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(data_, value, size_, Native(stream)));
  return Status::Ok();
}

// ---- PinnedHostBuffer -----------------------------------------------------------------------------------------

Result<PinnedHostBuffer> PinnedHostBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return Status::InvalidArgument("PinnedHostBuffer::Allocate: zero bytes");
  ES_RETURN_IF_ERROR(RequireDevice());
  void* data = nullptr;
  ES_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&data, bytes, cudaHostAllocPortable));
  return PinnedHostBuffer(data, bytes);
}

PinnedHostBuffer::PinnedHostBuffer(PinnedHostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

PinnedHostBuffer& PinnedHostBuffer::operator=(PinnedHostBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

PinnedHostBuffer::~PinnedHostBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

// ---- Raw copies -----------------------------------------------------------------------------------------------

Status CopyDeviceToHost(void* dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (dst == nullptr || device_src == nullptr) return Status::InvalidArgument("CopyDeviceToHost: null pointer");
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, device_src, bytes, cudaMemcpyDeviceToHost));
  return Status::Ok();
}

Status CopyHostToDevice(void* device_dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (device_dst == nullptr || src == nullptr) return Status::InvalidArgument("CopyHostToDevice: null pointer");
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpy(device_dst, src, bytes, cudaMemcpyHostToDevice));
  return WaitForLegacyStream();
}

Status CopyDeviceToDevice(void* device_dst, const void* device_src, size_t bytes, const CudaStream& stream) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "CopyDeviceToDevice"));
  if (bytes == 0) return Status::Ok();
  if (device_dst == nullptr || device_src == nullptr) {
    return Status::InvalidArgument("CopyDeviceToDevice: null pointer");
  }
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, Native(stream)));
  return Status::Ok();
}

Status CopyHostToDeviceAsync(void* device_dst, const void* src, size_t bytes, const CudaStream& stream) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "CopyHostToDeviceAsync"));
  if (bytes == 0) return Status::Ok();
  if (device_dst == nullptr || src == nullptr) return Status::InvalidArgument("CopyHostToDeviceAsync: null pointer");
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_dst, src, bytes, cudaMemcpyHostToDevice, Native(stream)));
  return Status::Ok();
}

Status CopyDeviceToHostAsync(void* dst, const void* device_src, size_t bytes, const CudaStream& stream) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "CopyDeviceToHostAsync"));
  if (bytes == 0) return Status::Ok();
  if (dst == nullptr || device_src == nullptr) return Status::InvalidArgument("CopyDeviceToHostAsync: null pointer");
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, device_src, bytes, cudaMemcpyDeviceToHost, Native(stream)));
  return Status::Ok();
}

Status ZeroAsync(void* device, size_t bytes, const CudaStream& stream) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "ZeroAsync"));
  if (bytes == 0) return Status::Ok();
  if (device == nullptr) return Status::InvalidArgument("ZeroAsync: null pointer");
  ES_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(device, 0, bytes, Native(stream)));
  return Status::Ok();
}

Result<size_t> FreeDeviceMemory() {
  if (!DeviceAvailable()) return Status::NotSupported("no CUDA device");
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  ES_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  return free_bytes;
}

// ---- DeviceKvCache --------------------------------------------------------------------------------------------

Result<DeviceKvCache> DeviceKvCache::Create(size_t layers, size_t capacity, size_t num_kv_heads, size_t head_dim) {
  if (layers == 0 || capacity == 0 || num_kv_heads == 0 || head_dim == 0) {
    return Status::InvalidArgument("DeviceKvCache: layers, capacity, heads and head_dim must be > 0");
  }
  const size_t row = num_kv_heads * head_dim;
  const size_t bytes = layers * capacity * row * sizeof(float);
  DeviceKvCache cache;
  ES_ASSIGN_OR_RETURN(cache.keys_, DeviceBuffer::Allocate(bytes));
  ES_ASSIGN_OR_RETURN(cache.values_, DeviceBuffer::Allocate(bytes));
  cache.layers_ = layers;
  cache.capacity_ = capacity;
  cache.row_floats_ = row;
  return Result<DeviceKvCache>(std::move(cache));  // nvcc does not move implicitly into Result's constructor
}

Status DeviceKvCache::Write(const CudaStream& stream, size_t layer, const float* k, const float* v, size_t tokens) {
  if (layer >= layers_) return Status::InvalidArgument("DeviceKvCache::Write: no such layer");
  if (tokens > capacity_ - length_) {
    return Status::ResourceExhausted("DeviceKvCache::Write: " + std::to_string(length_ + tokens) +
                                     " positions exceed the capacity of " + std::to_string(capacity_));
  }
  if (tokens == 0) return Status::Ok();
  if (k == nullptr || v == nullptr) return Status::InvalidArgument("DeviceKvCache::Write: null k or v");
  const size_t offset = (layer * capacity_ + length_) * row_floats_;
  const size_t bytes = tokens * row_floats_ * sizeof(float);
  ES_RETURN_IF_ERROR(CopyDeviceToDevice(keys_.As<float>() + offset, k, bytes, stream));
  return CopyDeviceToDevice(values_.As<float>() + offset, v, bytes, stream);
}

}  // namespace es::cuda
