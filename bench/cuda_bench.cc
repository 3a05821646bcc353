// cuda_bench: the two numbers the CUDA expert path lives by, each beside its honest baseline in the same run.
//
// 1. Host-to-device expert uploads: DeviceExpertCache::Upload of 9 MiB Qwen3-30B-A3B experts from pinned memory
//    (a layer's top-8 per iteration, every one a miss) against plain synchronous cudaMemcpy of the same bytes from
//    the same pinned buffers. Roofline: PCIe 4.0 x16 moves about 25 GB/s, PCIe 5.0 x16 about 50 GB/s.
// 2. The decode expert GEMV (ExpertSwiGLU, batch 1, bf16) over 64 device-resident experts (576 MiB, past any L2,
//    so weights come from HBM) against a device-to-device copy and the datasheet peak. Roofline: 9 MiB read per
//    expert, 1 FLOP per byte, so memory bound: ~3 us per expert at 3.35 TB/s (H100 SXM).
//
//   build-cuda/bench/cuda_bench --benchmark_min_time=0.5 --benchmark_repetitions=5
//                               --benchmark_report_aggregates_only=true
// Exits 0 with a message when there is no CUDA device.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "compute/cuda/cuda_kernels.h"
#include "compute/cuda/device_cache.h"
#include "compute/kernels/cpu_kernels.h"
#include "store/base/float16.h"

namespace es::cuda {
namespace {

// Qwen3-30B-A3B: hidden 2048, expert FFN 768, bf16: gate + up + down = 9 MiB.
constexpr size_t kHidden = 2048;
constexpr size_t kInter = 768;
constexpr size_t kBf16Bytes = 2;
constexpr size_t kMatrixBytes = kHidden * kInter * kBf16Bytes;
constexpr size_t kExpertBytes = 3 * kMatrixBytes;
// Distinct experts each benchmark rotates over: 576 MiB, far past any GPU's L2 (50 MiB on an H100).
constexpr size_t kExperts = 64;
// Experts uploaded per iteration: one layer's top-8.
constexpr size_t kUploadsPerIteration = 8;
// GPU slots for the upload benchmark: fewer than kExperts, so a cyclic walk misses every time under LRU.
constexpr size_t kUploadSlots = 16;
constexpr double kGiga = 1e9;

using Clock = std::chrono::steady_clock;

void Fail(benchmark::State& state, const Status& s) { state.SkipWithError(s.ToString().c_str()); }

// One expert's worth of small random bf16 weights, replicated into kExperts pinned host experts.
struct HostExperts {
  PinnedHostBuffer pinned;
  const void* expert(size_t i) const { return static_cast<const uint8_t*>(pinned.data()) + i * kExpertBytes; }
};

HostExperts* Host() {
  static HostExperts* host = [] {
    Result<PinnedHostBuffer> pinned = PinnedHostBuffer::Allocate(kExperts * kExpertBytes);
    if (!pinned.ok()) return static_cast<HostExperts*>(nullptr);
    auto* h = new HostExperts();  // lives for the whole run, as the benchmarks' shared input
    h->pinned = std::move(pinned).value();
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 0.03f);
    auto* first = static_cast<uint16_t*>(h->pinned.data());
    for (size_t i = 0; i < kExpertBytes / kBf16Bytes; ++i) first[i] = F32ToBf16(dist(rng));
    for (size_t e = 1; e < kExperts; ++e) {
      std::memcpy(static_cast<uint8_t*>(h->pinned.data()) + e * kExpertBytes, first, kExpertBytes);
    }
    return h;
  }();
  return host;
}

void SetGbps(benchmark::State& state, double bytes_per_iteration) {
  state.counters["GB/s"] =
      benchmark::Counter(bytes_per_iteration / kGiga, benchmark::Counter::kIsIterationInvariantRate);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes_per_iteration));
}

// ---- Uploads ----------------------------------------------------------------------------------------------------

// The baseline: synchronous cudaMemcpy (DeviceBuffer::CopyFromHost) of each expert into its own device region.
void BM_PlainCudaMemcpy(benchmark::State& state) {
  HostExperts* host = Host();
  if (host == nullptr) return state.SkipWithError("pinned allocation failed");
  Result<DeviceBuffer> device = DeviceBuffer::Allocate(kUploadSlots * kExpertBytes);
  if (!device.ok()) return Fail(state, device.status());
  size_t next = 0;
  for (auto _ : state) {
    const auto start = Clock::now();
    for (size_t i = 0; i < kUploadsPerIteration; ++i, ++next) {
      const Status s = device->CopyFromHost(host->expert(next % kExperts), kExpertBytes,
                                            (next % kUploadSlots) * kExpertBytes);
      if (!s.ok()) return Fail(state, s);
    }
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - start).count());
  }
  SetGbps(state, static_cast<double>(kUploadsPerIteration * kExpertBytes));
}
BENCHMARK(BM_PlainCudaMemcpy)->UseManualTime()->Unit(benchmark::kMillisecond);

// DeviceExpertCache: 8 misses enqueued on the copy stream, then waited for.
void BM_DeviceCacheUpload(benchmark::State& state) {
  HostExperts* host = Host();
  if (host == nullptr) return state.SkipWithError("pinned allocation failed");
  Result<std::unique_ptr<DeviceExpertCache>> cache =
      DeviceExpertCache::Create({.slots = kUploadSlots, .slot_bytes = kExpertBytes});
  if (!cache.ok()) return Fail(state, cache.status());
  uint64_t next = 0;
  for (auto _ : state) {
    const auto start = Clock::now();
    for (size_t i = 0; i < kUploadsPerIteration; ++i, ++next) {
      const Status s = (*cache)->Upload(next, host->expert(next % kExperts), kExpertBytes);
      if (!s.ok()) return Fail(state, s);
    }
    const Status s = (*cache)->Synchronize();
    if (!s.ok()) return Fail(state, s);
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - start).count());
  }
  SetGbps(state, static_cast<double>(kUploadsPerIteration * kExpertBytes));
  const DeviceCacheStats stats = (*cache)->stats();
  state.counters["hits"] = static_cast<double>(stats.hits);
  state.counters["uploads"] = static_cast<double>(stats.uploads);
}
BENCHMARK(BM_DeviceCacheUpload)->UseManualTime()->Unit(benchmark::kMillisecond);

// ---- Expert GEMV vs device memory bandwidth ---------------------------------------------------------------------

struct DeviceExperts {
  DeviceBuffer weights;  // kExperts experts, gate | up | down each
  kernels::ExpertWeights view(size_t e) const {
    const uint8_t* base = weights.As<uint8_t>() + e * kExpertBytes;
    return {{base, DType::kBF16, kInter, kHidden},
            {base + kMatrixBytes, DType::kBF16, kInter, kHidden},
            {base + 2 * kMatrixBytes, DType::kBF16, kHidden, kInter}};
  }
};

DeviceExperts* Resident() {
  static DeviceExperts* resident = []() -> DeviceExperts* {
    HostExperts* host = Host();
    if (host == nullptr) return nullptr;
    Result<DeviceBuffer> weights = DeviceBuffer::Allocate(kExperts * kExpertBytes);
    if (!weights.ok()) return nullptr;
    if (!weights->CopyFromHost(host->pinned.data(), kExperts * kExpertBytes).ok()) return nullptr;
    auto* d = new DeviceExperts();  // lives for the whole run
    d->weights = std::move(weights).value();
    return d;
  }();
  return resident;
}

// `range(0)` tokens through one expert per call, 64 calls (64 different experts) per iteration.
void BM_ExpertSwiGLU(benchmark::State& state) {
  DeviceExperts* experts = Resident();
  if (experts == nullptr) return state.SkipWithError("device experts could not be set up");
  const size_t batch = static_cast<size_t>(state.range(0));
  Result<CudaStream> stream = CudaStream::Create();
  if (!stream.ok()) return Fail(state, stream.status());
  Result<DeviceBuffer> x = DeviceBuffer::Allocate(batch * kHidden * sizeof(float));
  Result<DeviceBuffer> scratch = DeviceBuffer::Allocate(ExpertScratchFloats(batch, kInter) * sizeof(float));
  Result<DeviceBuffer> out = DeviceBuffer::Allocate(batch * kHidden * sizeof(float));
  if (!x.ok() || !scratch.ok() || !out.ok()) return state.SkipWithError("activation allocation failed");
  std::vector<float> host_x(batch * kHidden, 0.01f);
  if (!x->CopyFromHost(host_x.data(), host_x.size() * sizeof(float)).ok()) return state.SkipWithError("copy failed");
  for (auto _ : state) {
    const auto start = Clock::now();
    for (size_t e = 0; e < kExperts; ++e) {
      const Status s = ExpertSwiGLU(*stream, experts->view(e), x->As<float>(), batch, scratch->As<float>(),
                                    out->As<float>());
      if (!s.ok()) return Fail(state, s);
    }
    const Status s = stream->Synchronize();
    if (!s.ok()) return Fail(state, s);
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - start).count());
  }
  SetGbps(state, static_cast<double>(kExperts * kExpertBytes));
  constexpr double kFlopsPerWeight = 2.0;  // one multiply-add per weight element per token
  state.counters["GFLOP/s"] = benchmark::Counter(
      kFlopsPerWeight * static_cast<double>(batch) * 3.0 * kHidden * kInter / kGiga * kExperts,
      benchmark::Counter::kIsIterationInvariantRate);
  Result<DeviceInfo> info = GetDeviceInfo();
  if (info.ok()) state.counters["peak_GB/s"] = info->peak_memory_gbps;
}
BENCHMARK(BM_ExpertSwiGLU)->Arg(1)->Arg(8)->Arg(64)->UseManualTime()->Unit(benchmark::kMicrosecond);

// The bandwidth baseline: a device-to-device copy of the 576 MiB of experts; GB/s counts bytes read plus written.
void BM_DeviceCopy(benchmark::State& state) {
  DeviceExperts* experts = Resident();
  if (experts == nullptr) return state.SkipWithError("device experts could not be set up");
  Result<CudaStream> stream = CudaStream::Create();
  Result<DeviceBuffer> target = DeviceBuffer::Allocate(kExperts * kExpertBytes);
  if (!stream.ok() || !target.ok()) return state.SkipWithError("allocation failed");
  for (auto _ : state) {
    const auto start = Clock::now();
    Status s = CopyDeviceToDevice(target->data(), experts->weights.data(), kExperts * kExpertBytes, *stream);
    if (s.ok()) s = stream->Synchronize();
    if (!s.ok()) return Fail(state, s);
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - start).count());
  }
  SetGbps(state, 2.0 * static_cast<double>(kExperts * kExpertBytes));
}
BENCHMARK(BM_DeviceCopy)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace es::cuda

int main(int argc, char** argv) {
  if (!es::cuda::DeviceAvailable()) {
    std::printf("cuda_bench: no CUDA device found; nothing to measure\n");
    return 0;
  }
  if (es::Result<es::cuda::DeviceInfo> info = es::cuda::GetDeviceInfo(); info.ok()) {
    std::printf("device: %s (sm_%d%d), %d SMs, %.1f GiB, L2 %.0f MiB, datasheet memory bandwidth %.0f GB/s\n",
                info->name.c_str(), info->compute_major, info->compute_minor, info->multiprocessors,
                static_cast<double>(info->total_memory_bytes) / (1 << 30),
                static_cast<double>(info->l2_cache_bytes) / (1 << 20), info->peak_memory_gbps);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
