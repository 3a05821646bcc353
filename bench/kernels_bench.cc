// kernels_bench: the CPU kernels at Qwen3-30B-A3B expert shapes, against a naive scalar loop and against the
// machine's own memory bandwidth, in one run, so that results read as a fraction of what RAM can deliver.
//
// Roofline: a decode GEMV reads each weight byte once and does one FMA per 2 bytes (bf16), far below what the
// cores can compute, so its ceiling is memory bandwidth. "cold" runs rotate over 64 experts and flush each one's
// cache lines after use (outside the timed region), so every weight byte comes from RAM, as for an expert that
// was just read into the cache arena; "hot" runs reuse one L3-resident matrix to show the kernel's own
// ceiling. Prefill (batch > 1) reuses each weight row across the batch and is reported in GFLOP/s. GB/s always
// counts weight bytes once per call.
//
//   build/bench/kernels_bench --benchmark_min_time=0.2 --benchmark_repetitions=7
//                             --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "compute/kernels/cpu_kernels.h"
#include "compute/kernels/ggml_blocks.h"
#include "compute/kernels/ggml_quantize.h"
#include "compute/kernels/isa_ops.h"
#include "store/base/ggml_type.h"
#include "store/base/float16.h"
#include "compute/kernels/parallel.h"

namespace es::kernels {
namespace {

// Qwen3-30B-A3B: hidden 2048, expert FFN 768, bf16.
constexpr size_t kHidden = 2048;
constexpr size_t kInter = 768;
// Experts the cold runs rotate over: 64 x 9 MiB = 576 MiB, an order of magnitude past any L3 here.
constexpr size_t kColdExperts = 64;
// The buffer the bandwidth baselines stream: far larger than any cache.
constexpr size_t kBandwidthBytes = size_t{512} << 20;
constexpr double kGiga = 1e9;

struct ExpertBytes {
  std::vector<uint16_t> gate, up, down;  // bf16
};

// Random bf16 experts, built once (building 576 MiB takes a few seconds).
const std::vector<ExpertBytes>& Experts() {
  static const std::vector<ExpertBytes> experts = [] {
    std::vector<ExpertBytes> e(kColdExperts);
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 0.03f);
    auto fill = [&](std::vector<uint16_t>& v, size_t n) {
      v.resize(n);
      for (auto& h : v) h = F32ToBf16(dist(rng));
    };
    for (auto& x : e) {
      fill(x.gate, kInter * kHidden);
      fill(x.up, kInter * kHidden);
      fill(x.down, kHidden * kInter);
    }
    return e;
  }();
  return experts;
}

ComputePool* Pool(size_t threads) {
  static std::map<size_t, std::unique_ptr<ComputePool>> pools;
  auto& pool = pools[threads];
  if (pool == nullptr) pool = std::move(ComputePool::Create(threads)).value();
  return pool.get();
}

std::vector<float> RandomActivations(size_t n) {
  std::mt19937 rng(8);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

void SetRate(benchmark::State& state, double bytes_per_iteration, double flops_per_iteration) {
  state.counters["GB/s"] =
      benchmark::Counter(bytes_per_iteration / kGiga, benchmark::Counter::kIsIterationInvariantRate);
  if (flops_per_iteration > 0) {
    state.counters["GFLOP/s"] =
        benchmark::Counter(flops_per_iteration / kGiga, benchmark::Counter::kIsIterationInvariantRate);
  }
}

// Writes back and drops every cache line of [data, data + bytes), so that the next read comes from RAM.
void EvictFromCaches(const void* data, size_t bytes) {
#if defined(__x86_64__) || defined(__i386__)
  constexpr size_t kLine = 64;
  const auto* p = static_cast<const char*>(data);
  for (size_t i = 0; i < bytes; i += kLine) _mm_clflush(p + i);
  _mm_mfence();
#endif
}

// Flushes `data` without counting the time, when `cold`.
void EvictUntimed(benchmark::State& state, bool cold, const void* data, size_t bytes) {
  if (!cold) return;
  state.PauseTiming();
  EvictFromCaches(data, bytes);
  state.ResumeTiming();
}

bool SkipUnavailable(benchmark::State& state, Isa isa) {
  if (IsaAvailable(isa)) return false;
  state.SkipWithError("instruction set not available on this CPU");
  return true;
}

// ---- Bandwidth baselines ------------------------------------------------------------------------------------

const std::vector<uint64_t>& BandwidthBuffer() {
  static const std::vector<uint64_t> buffer(kBandwidthBytes / sizeof(uint64_t), 1);
  return buffer;
}

// Reads the whole buffer (split over `threads`), each task walking kStreams equal parts in lockstep as a GEMV
// walks several weight rows: the read bandwidth a streaming GEMV can hope for. (One stream per core reaches
// noticeably less on many machines, because the prefetchers keep fewer lines in flight.)
void BM_MemoryRead(benchmark::State& state) {
  const auto& buffer = BandwidthBuffer();
  ComputePool* pool = Pool(static_cast<size_t>(state.range(0)));
  constexpr size_t kChunk = size_t{1} << 20;  // words per task
  constexpr size_t kStreams = 8;
  for (auto _ : state) {
    std::atomic<uint64_t> total{0};
    pool->ParallelFor(buffer.size(), kChunk, [&](size_t begin, size_t end) {
      const uint64_t* p = buffer.data() + begin;
      const size_t stream_len = (end - begin) / kStreams;
      uint64_t sum[kStreams] = {};
      for (size_t i = 0; i < stream_len; ++i) {
        for (size_t s = 0; s < kStreams; ++s) sum[s] += p[s * stream_len + i];
      }
      uint64_t all = 0;
      for (uint64_t x : sum) all += x;
      total.fetch_add(all, std::memory_order_relaxed);
    });
    benchmark::DoNotOptimize(total.load());
  }
  SetRate(state, static_cast<double>(kBandwidthBytes), 0);
}
BENCHMARK(BM_MemoryRead)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// memcpy of half the buffer into the other half; GB/s counts the bytes read.
void BM_Memcpy(benchmark::State& state) {
  static std::vector<uint8_t> buffer(kBandwidthBytes, 1);
  const size_t half = buffer.size() / 2;
  for (auto _ : state) {
    std::memcpy(buffer.data() + half, buffer.data(), half);
    benchmark::ClobberMemory();
  }
  SetRate(state, static_cast<double>(half), 0);
}
BENCHMARK(BM_Memcpy)->UseRealTime()->Unit(benchmark::kMillisecond);

// The fixed cost of one ParallelFor round trip (publish, every thread claims a range, all finish): what each
// kernel call pays on top of its work when a pool is used.
void BM_ParallelForOverhead(benchmark::State& state) {
  ComputePool* pool = Pool(static_cast<size_t>(state.range(0)));
  std::atomic<size_t> sink{0};
  for (auto _ : state) {
    pool->ParallelFor(pool->threads(), 1, [&](size_t begin, size_t end) { sink.fetch_add(end - begin); });
  }
  benchmark::DoNotOptimize(sink.load());
}
BENCHMARK(BM_ParallelForOverhead)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime();

// ---- GEMV / matmul ------------------------------------------------------------------------------------------

enum Shape : int64_t { kGateUp = 0, kDown = 1 };

WeightMatrix ExpertMatrix(size_t expert, Shape shape) {
  const ExpertBytes& e = Experts()[expert % kColdExperts];
  return shape == kGateUp ? WeightMatrix{e.gate.data(), DType::kBF16, kInter, kHidden}
                          : WeightMatrix{e.down.data(), DType::kBF16, kHidden, kInter};
}

// Args: isa, threads, shape (0: gate/up [768, 2048], 1: down [2048, 768]), cold (rotate over experts), batch.
void BM_MatMulBf16(benchmark::State& state) {
  const auto isa = static_cast<Isa>(state.range(0));
  if (SkipUnavailable(state, isa)) return;
  const CpuContext ctx{isa, Pool(static_cast<size_t>(state.range(1)))};
  const auto shape = static_cast<Shape>(state.range(2));
  const bool cold = state.range(3) != 0;
  const auto batch = static_cast<size_t>(state.range(4));
  const WeightMatrix first = ExpertMatrix(0, shape);
  const std::vector<float> x = RandomActivations(batch * first.cols);
  std::vector<float> y(batch * first.rows);
  size_t expert = 0;
  const size_t weight_bytes = first.rows * first.cols * sizeof(uint16_t);
  for (auto _ : state) {
    const WeightMatrix w = ExpertMatrix(cold ? expert++ : 0, shape);
    if (!MatMul(ctx, x.data(), batch, w, y.data()).ok()) state.SkipWithError("MatMul failed");
    benchmark::ClobberMemory();
    EvictUntimed(state, cold, w.data, weight_bytes);
  }
  SetRate(state, static_cast<double>(weight_bytes), 2.0 * static_cast<double>(batch * first.rows * first.cols));
  state.SetLabel(std::string(IsaName(isa)));
}

void GemvArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"isa", "threads", "shape", "cold", "batch"});
  for (int64_t shape : {kGateUp, kDown}) {
    for (int64_t isa : {0, 1, 2}) {
      for (int64_t threads : {1, 2}) b->Args({isa, threads, shape, 1, 1});
    }
    b->Args({2, 1, shape, 0, 1});  // hot: one L3-resident matrix, AVX-512, one thread
  }
}
BENCHMARK(BM_MatMulBf16)->Apply(GemvArgs)->UseRealTime()->Unit(benchmark::kMicrosecond);

// GGML block formats at the gate/up shape [768, 2048]: random quants with a fixed sane f16 scale at the start of
// every block, one matrix per cold expert. The block path decodes each row to fp32 and takes the ISA's dot; compare
// with BM_MatMulBf16 of the same shape, which reads 2 bytes a weight where these read 0.56 (Q4_K) or 1.06 (Q8_0).
const std::vector<uint8_t>& BlockExperts(GgmlType type) {
  static std::map<GgmlType, std::vector<uint8_t>> all;
  auto& bytes = all[type];
  if (bytes.empty()) {
    const GgmlTypeInfo info = GgmlTypeInfoOf(type);
    const size_t matrix = *GgmlRowBytes(type, kHidden) * kInter;
    bytes.resize(matrix * kColdExperts);
    std::mt19937 rng(11);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    constexpr uint16_t kScale = 0x1c00;  // f16 0.0039, in the offset every format here keeps its first scale
    const size_t scale_offset = type == GgmlType::kQ6_K ? info.block_bytes - 2 : 0;
    for (size_t off = 0; off < bytes.size(); off += info.block_bytes) {
      std::memcpy(&bytes[off + scale_offset], &kScale, sizeof(kScale));
      if (type == GgmlType::kQ4_K || type == GgmlType::kQ5_K) std::memcpy(&bytes[off + 2], &kScale, sizeof(kScale));
    }
  }
  return bytes;
}

// Args: isa, threads, ggml type (2: Q4_0, 8: Q8_0, 12: Q4_K, 13: Q5_K, 14: Q6_K, 23: IQ4_XS), q8 (1: int8
// activations and integer dot products, CpuContext::q8_activations; 0: exact fp32); cold, batch 1.
void BM_MatMulBlocks(benchmark::State& state) {
  const auto isa = static_cast<Isa>(state.range(0));
  if (SkipUnavailable(state, isa)) return;
  CpuContext ctx{isa, Pool(static_cast<size_t>(state.range(1)))};
  ctx.q8_activations = state.range(3) != 0;
  const auto type = static_cast<GgmlType>(state.range(2));
  const std::vector<uint8_t>& experts = BlockExperts(type);
  const size_t weight_bytes = *GgmlRowBytes(type, kHidden) * kInter;
  const std::vector<float> x = RandomActivations(kHidden);
  std::vector<float> y(kInter);
  size_t expert = 0;
  for (auto _ : state) {
    const void* data = experts.data() + (expert++ % kColdExperts) * weight_bytes;
    const WeightMatrix w{data, DType::kUnknown, kInter, kHidden, type};
    if (!MatMul(ctx, x.data(), 1, w, y.data()).ok()) state.SkipWithError("MatMul failed");
    benchmark::ClobberMemory();
    EvictUntimed(state, true, data, weight_bytes);
  }
  SetRate(state, static_cast<double>(weight_bytes), 2.0 * static_cast<double>(kInter * kHidden));
  state.SetLabel(std::string(IsaName(isa)) + " " + std::string(GgmlTypeName(type)) +
                 (ctx.q8_activations ? " q8" : " exact"));
}
BENCHMARK(BM_MatMulBlocks)
    ->ArgNames({"isa", "threads", "type", "q8"})
    ->ArgsProduct({{1, 2}, {1, 2}, {2, 8, 12, 13, 14, 23}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// The prefill shape of the block path: `batch` activation rows (the tokens routed to one expert, or a prompt
// through a projection) against one [768, 2048] matrix, rotating over the 64 experts without evicting them.
// Args: isa, ggml type, q8 (as above: 2 is q8 with AMX tiles where the machine has them, 1 without), batch; one
// thread.
void BM_MatMulBlocksPrefill(benchmark::State& state) {
  const auto isa = static_cast<Isa>(state.range(0));
  if (SkipUnavailable(state, isa)) return;
  CpuContext ctx{isa, Pool(1)};
  ctx.q8_activations = state.range(2) != 0;
  ctx.amx = state.range(2) == 2;
  const auto type = static_cast<GgmlType>(state.range(1));
  const auto batch = static_cast<size_t>(state.range(3));
  const std::vector<uint8_t>& experts = BlockExperts(type);
  const size_t weight_bytes = *GgmlRowBytes(type, kHidden) * kInter;
  const std::vector<float> x = RandomActivations(kHidden * batch);
  std::vector<float> y(kInter * batch);
  size_t expert = 0;
  for (auto _ : state) {
    const void* data = experts.data() + (expert++ % kColdExperts) * weight_bytes;
    const WeightMatrix w{data, DType::kUnknown, kInter, kHidden, type};
    if (!MatMul(ctx, x.data(), batch, w, y.data()).ok()) state.SkipWithError("MatMul failed");
    benchmark::ClobberMemory();
  }
  SetRate(state, static_cast<double>(weight_bytes), 2.0 * static_cast<double>(kInter * kHidden * batch));
  state.SetLabel(std::string(IsaName(isa)) + " " + std::string(GgmlTypeName(type)) +
                 (ctx.q8_activations ? (ctx.amx && internal::AmxAvailable() ? " q8 amx" : " q8") : " exact"));
}
BENCHMARK(BM_MatMulBlocksPrefill)
    ->ArgNames({"isa", "type", "q8", "batch"})
    ->ArgsProduct({{1, 2}, {12, 13, 14}, {0, 1, 2}, {16, 64}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void PrefillArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"isa", "threads", "shape", "cold", "batch"});
  for (int64_t isa : {1, 2}) {
    for (int64_t threads : {1, 2}) b->Args({isa, threads, kGateUp, 1, 64});
  }
  for (int64_t batch : {8, 32, 256}) b->Args({2, 1, kGateUp, 1, batch});
  b->Args({2, 1, kGateUp, 0, 64});  // hot: the compute ceiling of the micro-kernel
}
BENCHMARK(BM_MatMulBf16)
    ->Name("BM_MatMulBf16Prefill")
    ->Apply(PrefillArgs)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// The baseline every SIMD path must beat: one thread, one fp32 accumulator per output, bf16 widened per element.
void BM_NaiveGemvBf16(benchmark::State& state) {
  const auto shape = static_cast<Shape>(state.range(0));
  const WeightMatrix first = ExpertMatrix(0, shape);
  const std::vector<float> x = RandomActivations(first.cols);
  std::vector<float> y(first.rows);
  const size_t weight_bytes = first.rows * first.cols * sizeof(uint16_t);
  size_t expert = 0;
  for (auto _ : state) {
    const WeightMatrix w = ExpertMatrix(expert++, shape);
    const auto* h = static_cast<const uint16_t*>(w.data);
    for (size_t r = 0; r < w.rows; ++r) {
      float acc = 0;
      for (size_t k = 0; k < w.cols; ++k) acc += Bf16ToF32(h[r * w.cols + k]) * x[k];
      y[r] = acc;
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    EvictUntimed(state, true, w.data, weight_bytes);
  }
  SetRate(state, static_cast<double>(weight_bytes), 0);
}
BENCHMARK(BM_NaiveGemvBf16)->ArgName("shape")->Arg(kGateUp)->Arg(kDown)->UseRealTime()->Unit(benchmark::kMicrosecond);

// ---- Fused expert -------------------------------------------------------------------------------------------

// Args: isa, threads, batch. Always cold: each iteration runs the next of 64 experts (9 MiB of bf16 each),
// flushed from the caches after use.
void BM_ExpertBf16(benchmark::State& state) {
  const auto isa = static_cast<Isa>(state.range(0));
  if (SkipUnavailable(state, isa)) return;
  const CpuContext ctx{isa, Pool(static_cast<size_t>(state.range(1)))};
  const auto batch = static_cast<size_t>(state.range(2));
  const std::vector<float> x = RandomActivations(batch * kHidden);
  std::vector<float> out(batch * kHidden);
  std::vector<float> scratch(ExpertScratchFloats(batch, kInter));
  size_t expert = 0;
  for (auto _ : state) {
    const ExpertBytes& e = Experts()[expert++ % kColdExperts];
    const ExpertWeights w{WeightMatrix{e.gate.data(), DType::kBF16, kInter, kHidden},
                          WeightMatrix{e.up.data(), DType::kBF16, kInter, kHidden},
                          WeightMatrix{e.down.data(), DType::kBF16, kHidden, kInter}};
    if (!ExpertForward(ctx, w, x.data(), batch, scratch, out.data()).ok()) state.SkipWithError("expert failed");
    benchmark::ClobberMemory();
    for (const auto* m : {&e.gate, &e.up, &e.down}) EvictUntimed(state, true, m->data(), m->size() * sizeof(uint16_t));
  }
  const double weights = 3.0 * kInter * kHidden;
  SetRate(state, weights * sizeof(uint16_t), 2.0 * weights * static_cast<double>(batch));
  state.SetLabel(std::string(IsaName(isa)));
}
void ExpertArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"isa", "threads", "batch"});
  for (int64_t isa : {0, 1, 2}) {
    for (int64_t threads : {1, 2}) b->Args({isa, threads, 1});
  }
  for (int64_t threads : {1, 2}) b->Args({2, threads, 32});  // a prefill chunk's share of one expert
}
BENCHMARK(BM_ExpertBf16)->Apply(ExpertArgs)->UseRealTime()->Unit(benchmark::kMicrosecond);

// ---- Attention ------------------------------------------------------------------------------------------------

// Decode attention at Qwen3-30B's shape (32 query heads, 4 KV heads of 128) over a cache of `keys` positions.
// GB/s counts the K and V bytes once per call (each is read by its 8 query heads).
void BM_AttentionDecode(benchmark::State& state) {
  const auto isa = static_cast<Isa>(state.range(0));
  if (SkipUnavailable(state, isa)) return;
  const CpuContext ctx{isa, Pool(static_cast<size_t>(state.range(1)))};
  const auto keys = static_cast<size_t>(state.range(2));
  const AttentionShape shape{32, 4, 128};
  const std::vector<float> q = RandomActivations(shape.num_heads * shape.head_dim);
  const std::vector<float> kv = RandomActivations(keys * shape.num_kv_heads * shape.head_dim);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    if (!Attention(ctx, shape, q.data(), 1, kv.data(), kv.data(), keys, out.data()).ok()) {
      state.SkipWithError("attention failed");
    }
    benchmark::ClobberMemory();
  }
  SetRate(state, 2.0 * static_cast<double>(kv.size() * sizeof(float)), 0);
  state.SetLabel(std::string(IsaName(isa)));
}
BENCHMARK(BM_AttentionDecode)
    ->ArgNames({"isa", "threads", "keys"})
    ->Args({2, 1, 4096})
    ->Args({2, 2, 4096})
    ->Args({1, 1, 4096})
    ->Args({2, 1, 512})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Quantizing a Qwen3-30B-A3B gate projection ([768, 2048], Gaussian weights) row by row, as `expertstore quantize`
// does, against decoding the same rows (arg 1: the baseline, the block decoder's pass over the same bytes). Values
// per second; the ratio of the two rows of one format is what encoding costs over reading.
void BM_QuantizeRows(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const bool decode = state.range(1) == 1;
  constexpr size_t kRows = 768, kCols = 2048;
  std::vector<float> values(kRows * kCols);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (float& v : values) v = normal(rng);
  const size_t row_bytes = *GgmlRowBytes(type, kCols);
  std::vector<std::byte> blocks(kRows * row_bytes);
  for (size_t r = 0; r < kRows; ++r) {
    (void)QuantizeGgmlRow(type, std::span(values).subspan(r * kCols, kCols),
                          std::span(blocks).subspan(r * row_bytes, row_bytes));
  }
  for (auto _ : state) {
    for (size_t r = 0; r < kRows; ++r) {
      if (decode) {
        (void)DequantizeGgmlRow(type, std::span(blocks).subspan(r * row_bytes, row_bytes),
                                std::span(values).subspan(r * kCols, kCols));
      } else {
        (void)QuantizeGgmlRow(type, std::span(values).subspan(r * kCols, kCols),
                              std::span(blocks).subspan(r * row_bytes, row_bytes));
      }
    }
    benchmark::DoNotOptimize(blocks.data());
    benchmark::DoNotOptimize(values.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kRows * kCols));
}
BENCHMARK(BM_QuantizeRows)
    ->ArgNames({"type", "decode"})
    ->ArgsProduct({{static_cast<int64_t>(GgmlType::kQ8_0), static_cast<int64_t>(GgmlType::kQ4_0),
                    static_cast<int64_t>(GgmlType::kQ4_K), static_cast<int64_t>(GgmlType::kQ6_K),
                    static_cast<int64_t>(GgmlType::kIQ4_XS)},
                   {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace es::kernels

BENCHMARK_MAIN();
