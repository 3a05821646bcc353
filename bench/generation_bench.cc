// Generation benchmark: decode and prefill tokens/s of a stored model with the expert cache at a fraction of
// the model's experts (100%, 50%, 25%), with and without prefetch, against the naive baseline in the same run
// (every selected expert read from disk for every token, no cache: what a first prototype does), and the RAM
// bandwidth of this machine measured in the same run, giving the memory-bandwidth bound for the all-cached
// case: bytes touched per token / bandwidth.
//
// BM_Gpu runs the same on the CUDA backend (device 0) and the hybrid one (device 1) with the GPU expert cache at
// 100%, 50% and 25% of the experts and the host cache holding all of them: tokens/s against the CPU rows above,
// same run. It skips without a CUDA device, or in a build without CUDA.
//
// EXPERTSTORE_BENCH_STORE and EXPERTSTORE_BENCH_MODEL name the store and model (default: models/tiny-qwen3-moe
// ingested into a temporary store). Run: build/bench/generation_bench --benchmark_repetitions=3
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <cstdlib>
#include <filesystem>
#include <numeric>

#include "cache/model_experts.h"
#include "compute/runtime/backend_choice.h"
#include "compute/cache_provider.h"
#include "compute/generator.h"
#include "compute/model.h"
#include "ingest/ingest.h"

namespace es {
namespace {

constexpr size_t kPromptTokens = 32;
constexpr size_t kDecodeTokens = 16;
constexpr size_t kBandwidthBytes = 1ull << 30;

std::unique_ptr<Store> g_store;
std::string g_model;
std::unique_ptr<kernels::ComputePool> g_pool;
std::unique_ptr<Model> g_net;
std::string g_tmp;

std::vector<int32_t> Prompt() {
  std::vector<int32_t> ids(kPromptTokens);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % g_net->config().vocab);
  return ids;
}

// Runs one prefill of the prompt and kDecodeTokens greedy decode steps; returns (prefill s, decode s).
std::pair<double, double> RunOnce(ExpertProvider& experts, const ForwardOptions& fo, Model* net = nullptr) {
  if (net == nullptr) net = g_net.get();
  auto prompt = Prompt();
  KvCache kv(net->config(), prompt.size() + kDecodeTokens);
  std::vector<float> hidden, logits(net->config().vocab);
  auto t0 = std::chrono::steady_clock::now();
  if (!net->Forward(prompt, kv, experts, fo, hidden).ok()) return {-1, -1};
  (void)net->ComputeLogits(&hidden[(prompt.size() - 1) * net->config().hidden], 1, logits.data());
  auto t1 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < kDecodeTokens; ++i) {
    int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (!net->Forward({&next, 1}, kv, experts, fo, hidden).ok()) return {-1, -1};
    (void)net->ComputeLogits(hidden.data(), 1, logits.data());
  }
  auto t2 = std::chrono::steady_clock::now();
  return {std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count()};
}

// `before`: the provider's counters when timing started (after any warm-up).
void Report(benchmark::State& state, std::vector<double> prefill, std::vector<double> decode, ExpertProvider& p,
            const ProviderCounters& before) {
  std::sort(prefill.begin(), prefill.end());
  std::sort(decode.begin(), decode.end());
  double pm = prefill[prefill.size() / 2], dm = decode[decode.size() / 2];
  state.counters["prefill_tok_s"] = static_cast<double>(kPromptTokens) / pm;
  state.counters["decode_tok_s"] = static_cast<double>(kDecodeTokens) / dm;
  ProviderCounters c = p.counters();
  c.hits -= before.hits;
  c.misses -= before.misses;
  c.bytes_read -= before.bytes_read;
  state.counters["hit_rate"] = c.hits + c.misses ? static_cast<double>(c.hits) / static_cast<double>(c.hits + c.misses) : 0;
  state.counters["MiB_read_per_token"] =
      static_cast<double>(c.bytes_read) / (1 << 20) / static_cast<double>(state.iterations() * (kPromptTokens + kDecodeTokens));
}

// args: cache percent of the experts, prefetch depth.
void BM_Cached(benchmark::State& state) {
  auto experts = ModelExperts::Load(g_store->catalog(), g_model);
  if (!experts.ok()) {
    state.SkipWithError(experts.status().ToString().c_str());
    return;
  }
  uint64_t slots = std::max<uint64_t>(g_net->config().top_k,
                                      experts->experts().size() * static_cast<uint64_t>(state.range(0)) / 100);
  ExpertCacheOptions o;
  o.capacity_bytes = slots * experts->max_record_bytes();
  o.prefetch_bytes_in_flight = static_cast<uint64_t>(state.range(1)) * g_net->config().top_k * experts->max_record_bytes();
  auto provider = CacheExpertProvider::Create(*g_store, g_model, o);
  if (!provider.ok()) {
    state.SkipWithError(provider.status().ToString().c_str());
    return;
  }
  ForwardOptions fo;
  fo.prefetch_depth = static_cast<uint32_t>(state.range(1));
  PrefetchAccuracy acc;
  fo.prefetch_accuracy = &acc;
  RunOnce(**provider, fo);  // warm-up: the cache fills as it would over a conversation
  ProviderCounters before = (*provider)->counters();
  std::vector<double> prefill, decode;
  for (auto _ : state) {
    auto [p, d] = RunOnce(**provider, fo);
    if (p < 0) state.SkipWithError("forward failed");
    prefill.push_back(p);
    decode.push_back(d);
  }
  Report(state, prefill, decode, **provider, before);
  state.counters["prefetch_precision"] = acc.precision();
}

// args: GPU cache percent of the experts, 0 = cuda / 1 = hybrid. The host cache holds every expert.
void BM_Gpu(benchmark::State& state) {
  if (CudaDevices().empty()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  auto experts = ModelExperts::Load(g_store->catalog(), g_model);
  if (!experts.ok()) {
    state.SkipWithError(experts.status().ToString().c_str());
    return;
  }
  ExpertCacheOptions o;
  o.capacity_bytes = experts->experts().size() * experts->max_record_bytes();
  auto provider = CacheExpertProvider::Create(*g_store, g_model, o);
  kernels::CpuContext ctx;
  ctx.pool = g_pool.get();
  auto net = Model::Load(*g_store, g_model, ctx);
  if (!provider.ok() || !net.ok()) {
    state.SkipWithError((!provider.ok() ? provider.status() : net.status()).ToString().c_str());
    return;
  }
  BackendOptions bo;
  bo.device = state.range(1) == 0 ? "cuda" : "hybrid";
  bo.gpu_cache_pct = static_cast<double>(state.range(0));
  auto backend = CreateBackend(*g_store, **net, bo);
  if (!backend.ok()) {
    state.SkipWithError(backend.status().ToString().c_str());
    return;
  }
  (*net)->SetBackend(std::move(backend).value());
  RunOnce(**provider, {}, net->get());  // warm-up: both caches fill
  ProviderCounters before = (*provider)->counters();
  BackendCounters device_before = (*net)->backend().counters();
  std::vector<double> prefill, decode;
  for (auto _ : state) {
    auto [p, d] = RunOnce(**provider, {}, net->get());
    if (p < 0) state.SkipWithError("forward failed");
    prefill.push_back(p);
    decode.push_back(d);
  }
  Report(state, prefill, decode, **provider, before);
  BackendCounters n = (*net)->backend().counters();
  const double tokens = static_cast<double>(state.iterations() * (kPromptTokens + kDecodeTokens));
  state.counters["gpu_uploads_per_token"] = static_cast<double>(n.device_uploads - device_before.device_uploads) / tokens;
  state.counters["cpu_experts_per_token"] = static_cast<double>(n.cpu_experts - device_before.cpu_experts) / tokens;
}

void BM_Naive(benchmark::State& state) {
  auto provider = DirectExpertProvider::Create(*g_store, g_model);
  if (!provider.ok()) {
    state.SkipWithError(provider.status().ToString().c_str());
    return;
  }
  std::vector<double> prefill, decode;
  for (auto _ : state) {
    auto [p, d] = RunOnce(**provider, {});
    if (p < 0) state.SkipWithError("forward failed");
    prefill.push_back(p);
    decode.push_back(d);
  }
  Report(state, prefill, decode, **provider, ProviderCounters{});
}

// Sums `n` words as fast as loads allow (AVX2 with independent accumulators where the CPU has it): the RAM read
// rate. A plain scalar loop is bound by its add chain (about 14 GB/s here, below what the decode's vectorised
// GEMV kernels stream, which would understate the bound).
__attribute__((target("avx2"))) uint64_t SumWordsAvx2(const uint64_t* p, size_t n) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
  uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; ++i) s += p[i];
  return s;
}

uint64_t SumWords(const uint64_t* p, size_t n) {
  if (__builtin_cpu_supports("avx2")) return SumWordsAvx2(p, n);
  uint64_t s = 0;
  for (size_t i = 0; i < n; ++i) s += p[i];
  return s;
}

// RAM read bandwidth with all compute threads (the decode's weight streaming uses the same pool), and the
// bound it implies for decode: bytes touched per token (dense weights of every layer + top-k experts of every
// MoE layer + lm_head; the embedding row is negligible) over that bandwidth.
void BM_MemoryBandwidthBound(benchmark::State& state) {
  std::vector<uint64_t> buf(kBandwidthBytes / sizeof(uint64_t));
  std::iota(buf.begin(), buf.end(), 1);
  size_t threads = g_pool->threads();
  uint64_t sink = 0;
  for (auto _ : state) {
    std::vector<uint64_t> part(threads, 0);
    g_pool->ParallelFor(threads, 1, [&](size_t b, size_t e) {
      for (size_t t = b; t < e; ++t) {
        size_t n = buf.size() / threads;
        part[t] = SumWords(buf.data() + t * n, n);
      }
    });
    for (uint64_t p : part) sink += p;
  }
  benchmark::DoNotOptimize(sink);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBandwidthBytes));
  auto experts = ModelExperts::Load(g_store->catalog(), g_model);
  const ModelConfig& c = g_net->config();
  uint64_t expert_bytes = experts.ok() ? experts->max_record_bytes() - 4096 : 0;
  auto embed = g_net->weights().Matrix("model.embed_tokens.weight");
  // The embedding table is not streamed (one row per token), unless it doubles as the lm_head.
  uint64_t embed_bytes = embed.ok() ? embed->rows * embed->cols * DTypeSize(embed->dtype) : 0;
  uint64_t dense_touched = g_net->weights().bytes() - (c.tie_word_embeddings ? 0 : embed_bytes);
  uint64_t moe_layers = 0;
  for (uint32_t l = 0; l < c.num_layers; ++l) moe_layers += c.IsMoeLayer(l);
  uint64_t per_token = dense_touched + moe_layers * c.top_k * expert_bytes;
  state.counters["bytes_per_token_MiB"] = static_cast<double>(per_token) / (1 << 20);
  state.counters["threads"] = static_cast<double>(threads);
  state.counters["dense_MiB"] = static_cast<double>(dense_touched) / (1 << 20);
}

void CacheArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"cache_pct", "prefetch"});
  for (int pct : {100, 50, 25}) {
    for (int prefetch : {0, 1}) b->Args({pct, prefetch});
  }
}

BENCHMARK(BM_MemoryBandwidthBound)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Naive)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_Cached)->Apply(CacheArgs)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_Gpu)
    ->ArgNames({"gpu_cache_pct", "hybrid"})
    ->ArgsProduct({{100, 50, 25}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

}  // namespace
}  // namespace es

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const char* store = std::getenv("EXPERTSTORE_BENCH_STORE");
  const char* model = std::getenv("EXPERTSTORE_BENCH_MODEL");
  std::string path;
  if (store != nullptr && *store != '\0') {
    path = store;
    es::g_model = model != nullptr && *model != '\0' ? model : "";
  } else {
    es::g_tmp = std::filesystem::temp_directory_path() / "expertstore-generation-bench";
    std::filesystem::remove_all(es::g_tmp);
    path = es::g_tmp;
    es::g_model = "tiny-qwen3-moe";
  }
  es::StoreOptions so;
  so.read_only = !es::g_tmp.empty() ? false : true;
  auto s = es::Store::Open(path, so);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.status().ToString().c_str());
    return 1;
  }
  es::g_store = std::move(s).value();
  if (!es::g_tmp.empty()) {
    es::IngestOptions o;
    o.name = es::g_model;
    auto r = es::IngestCheckpoint(*es::g_store, "models/tiny-qwen3-moe", o);
    if (!r.ok()) {
      std::fprintf(stderr, "error: %s (run from the repository root)\n", r.status().ToString().c_str());
      return 1;
    }
  }
  if (es::g_model.empty()) {
    std::fprintf(stderr, "error: set EXPERTSTORE_BENCH_MODEL with EXPERTSTORE_BENCH_STORE\n");
    return 1;
  }
  es::g_pool = std::move(es::kernels::ComputePool::Create(0)).value();
  es::kernels::CpuContext ctx;
  ctx.pool = es::g_pool.get();
  auto net = es::Model::Load(*es::g_store, es::g_model, ctx);
  if (!net.ok()) {
    std::fprintf(stderr, "error: %s\n", net.status().ToString().c_str());
    return 1;
  }
  es::g_net = std::move(net).value();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  es::g_net.reset();
  es::g_store.reset();
  if (!es::g_tmp.empty()) std::filesystem::remove_all(es::g_tmp);
  return 0;
}
