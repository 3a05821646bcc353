// Generation benchmark: decode and prefill tokens/s of a stored model with the expert cache at a fraction of
// the model's experts (100%, 50%, 25%, 10%), by eviction policy and prefetch setting, against two baselines in
// the same run: the naive one (every selected expert read from disk for every token into a fresh heap buffer, as
// a first prototype does) and a fair one (the same reader and pooled, registered buffers: a cache of k slots,
// which never hits across tokens), and the RAM bandwidth of this machine, giving the memory-bandwidth bound for
// the all-cached case: bytes touched per token / bandwidth.
//
// The partial-cache rows are disk-bound: every repetition runs a prompt of its own (the warm-up another), the
// decode is long enough to cycle the cache, and expert reads are O_DIRECT, so the page cache never serves them.
// MiB_read_per_decoded_token divides the decode's own reads by its tokens; ttft_ms is the prompt's prefill and
// first logits. Rows 6 and 7 of the prefetch argument predict with the model's fitted lookahead (fit-lookahead)
// and skip without one.
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
#include <map>
#include <numeric>
#include <optional>
#include <random>

#include "cache/model_experts.h"
#include "cache/states.h"
#include "compute/runtime/backend_choice.h"
#include "compute/runtime/model_runtime.h"
#include "compute/cache_provider.h"
#include "compute/generator.h"
#include "compute/lookahead.h"
#include "compute/model.h"
#include "compute/prefetch_governor.h"
#include "ingest/ingest.h"

namespace es {
namespace {

constexpr size_t kPromptTokens = 32;
size_t g_decode_tokens = 64;  // EXPERTSTORE_BENCH_DECODE_TOKENS
uint64_t g_prompt_seed = 0;   // each run of a row has a prompt of its own
constexpr size_t kBandwidthBytes = 1ull << 30;

std::unique_ptr<Store> g_store;
std::string g_model;
std::unique_ptr<kernels::ComputePool> g_pool;
std::unique_ptr<Model> g_net;
std::string g_tmp;

std::vector<int32_t> Prompt() {
  std::vector<int32_t> ids(kPromptTokens);
  std::mt19937_64 rng(++g_prompt_seed);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % g_net->config().vocab);
  return ids;
}

struct RunTimes {
  double prefill = -1;  // seconds, prompt and first logits (time to first token)
  double decode = -1;   // seconds, `decode_tokens` steps
  size_t decode_tokens = 0;  // g_decode_tokens, fewer where the model's context ends first
  uint64_t decode_bytes_read = 0;
};

// Runs one prefill of a fresh prompt and g_decode_tokens decode steps. Each step computes the logits, as decode
// does, but feeds the next token of the run's pseudo-random sequence rather than their argmax: a random-weight
// model's greedy continuation repeats one token, and with it one routing, which would keep the working set far
// smaller than text's.
RunTimes RunOnce(ExpertProvider& experts, const ForwardOptions& fo, Model* net = nullptr) {
  if (net == nullptr) net = g_net.get();
  auto prompt = Prompt();
  std::mt19937_64 rng(g_prompt_seed);
  const size_t decode_tokens = std::min(g_decode_tokens, net->config().max_positions - prompt.size());
  KvCache kv(net->config(), prompt.size() + decode_tokens);
  std::vector<float> hidden, logits(net->config().vocab);
  auto t0 = std::chrono::steady_clock::now();
  if (!net->Forward(prompt, kv, experts, fo, hidden).ok()) return {};
  (void)net->ComputeLogits(&hidden[(prompt.size() - 1) * net->config().hidden], 1, logits.data());
  auto t1 = std::chrono::steady_clock::now();
  const uint64_t bytes_before = experts.counters().bytes_read;
  for (size_t i = 0; i < decode_tokens; ++i) {
    int32_t next = static_cast<int32_t>(rng() % net->config().vocab);
    if (!net->Forward({&next, 1}, kv, experts, fo, hidden).ok()) return {};
    (void)net->ComputeLogits(hidden.data(), 1, logits.data());
  }
  auto t2 = std::chrono::steady_clock::now();
  return {std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count(),
          decode_tokens, experts.counters().bytes_read - bytes_before};
}

// Runs the timed repetitions and reports them. `row` names the benchmark row (its repetitions run different
// prompts).
void Measure(benchmark::State& state, const std::string& row, ExpertProvider& experts, const ForwardOptions& fo,
             Model* net = nullptr) {
  // Every row times the same prompts (the warm-ups ran others), and each repetition of a row new ones.
  static std::map<std::string, uint64_t> repetitions;
  g_prompt_seed = 1000 + 1000 * repetitions[row]++;
  const ProviderCounters before = experts.counters();
  std::vector<double> prefill, decode;  // seconds: per prompt (with its first logits), per decoded token
  uint64_t decode_bytes = 0, decode_tokens = 0;
  for (auto _ : state) {
    RunTimes r = RunOnce(experts, fo, net);
    if (r.prefill < 0) {
      state.SkipWithError("forward failed");
      return;
    }
    prefill.push_back(r.prefill);
    decode.push_back(r.decode / static_cast<double>(std::max<size_t>(1, r.decode_tokens)));
    decode_bytes += r.decode_bytes_read;
    decode_tokens += r.decode_tokens;
  }
  std::sort(prefill.begin(), prefill.end());
  std::sort(decode.begin(), decode.end());
  const double pm = prefill[prefill.size() / 2], dm = decode[decode.size() / 2];
  state.counters["prefill_tok_s"] = static_cast<double>(kPromptTokens) / pm;
  state.counters["ttft_ms"] = pm * 1e3;
  state.counters["decode_tok_s"] = 1.0 / dm;
  ProviderCounters c = experts.counters();
  c.hits -= before.hits;
  c.misses -= before.misses;
  state.counters["hit_rate"] = c.hits + c.misses ? static_cast<double>(c.hits) / static_cast<double>(c.hits + c.misses) : 0;
  state.counters["MiB_read_per_decoded_token"] =
      static_cast<double>(decode_bytes) / (1 << 20) / static_cast<double>(std::max<uint64_t>(1, decode_tokens));
}

// How the rows' prefetcher runs.
enum PrefetchArg : int64_t {
  kPrefetchOff = 0,
  kPrefetchEveryGuess = 1,  // depth 1, every top-k guess (prefetch_min_prob 0)
  kPrefetchConfident = 2,   // depth 1, guesses at least twice chance (the runtime's default threshold)
  kPrefetchGoverned = 3,    // as confident, decode steps prefetching or not as a PrefetchGovernor measures (the
                            // runtime's default)
  kMissTierQ4KHalf = 4,     // governed, and experts not in the cache served from the model's Q4_K copy
                            // (MODEL.tier-Q4_K, quantize --add-tier; the row skips without it), the copies
                            // given half the budget (--miss-tier-share 0.5): NOT EXACT
  kMissTierQ4KMost = 5,     // as 4, the copies given 90% of the budget (--miss-tier-share 0.9)
  kPrefetchFitted = 6,      // depth 1, the model's fitted lookahead (fit-lookahead; the row skips without one) at
                            // its own threshold
  kPrefetchFittedGoverned = 7,  // as 6, governed (the runtime's default for a model with a fit)
};

bool IsFitted(PrefetchArg a) { return a == kPrefetchFitted || a == kPrefetchFittedGoverned; }

bool IsMissTier(PrefetchArg a) { return a == kMissTierQ4KHalf || a == kMissTierQ4KMost; }

// args: cache percent of the experts, policy (0 lru, 1 reuse), PrefetchArg.
void BM_Cached(benchmark::State& state) {
  auto experts = ModelExperts::Load(g_store->catalog(), g_model);
  if (!experts.ok()) {
    state.SkipWithError(experts.status().ToString().c_str());
    return;
  }
  const ModelConfig& c = g_net->config();
  const auto prefetch = static_cast<PrefetchArg>(state.range(2));
  const uint64_t slots = std::max<uint64_t>(CacheFloorSlots(/*prefetch_depth=*/1, c.top_k),
                                            experts->experts().size() * static_cast<uint64_t>(state.range(0)) / 100);
  ExpertCacheOptions o;
  o.capacity_bytes = slots * experts->max_record_bytes();
  o.policy = state.range(1) == 0 ? PolicyKind::kLru : PolicyKind::kReuse;
  o.experts_per_token = c.top_k;  // as the runtime sets it: lru bypasses layers when a token's experts do not fit
  o.prefetch_bytes_in_flight = prefetch == kPrefetchOff ? 0 : c.top_k * experts->max_record_bytes();
  MissTierPlan plan;
  if (IsMissTier(prefetch)) {  // as the runtime shares the budget
    plan = PlanMissTier(o.capacity_bytes, prefetch == kMissTierQ4KHalf ? 0.5 : 0.9, experts->max_record_bytes(),
                        experts->experts().size(), c.top_k, /*prefetch_depth=*/1, o.policy);
    o.capacity_bytes = plan.full_bytes;
  }
  auto provider = CacheExpertProvider::Create(*g_store, g_model, o);
  if (!provider.ok()) {
    state.SkipWithError(provider.status().ToString().c_str());
    return;
  }
  if (IsMissTier(prefetch)) {
    auto tier = AttachMissTier(*g_store, g_model, GgmlType::kQ4_K, plan.tier, **provider);
    if (!tier.ok()) {
      state.SkipWithError(tier.status().ToString().c_str());
      return;
    }
  }
  ForwardOptions fo;
  fo.prefetch_depth = prefetch == kPrefetchOff ? 0 : 1;
  fo.prefetch_min_prob =
      prefetch >= kPrefetchConfident ? static_cast<float>(DefaultPrefetchMinProb(c.num_experts)) : 0.0f;
  std::optional<LookaheadPredictor> fitted;
  if (IsFitted(prefetch)) {
    auto f = LoadLookahead(*g_store, *g_net);
    if (!f.ok()) {
      state.SkipWithError(f.status().ToString().c_str());
      return;
    }
    fitted = std::move(f).value();
    fo.lookahead = &*fitted;
    fo.prefetch_min_prob = fitted->min_prob();
  }
  PrefetchAccuracy acc;
  fo.prefetch_accuracy = &acc;
  PrefetchGovernor governor;
  if (prefetch == kPrefetchGoverned || IsMissTier(prefetch) || prefetch == kPrefetchFittedGoverned) {
    fo.prefetch_governor = &governor;
  }
  // Warm-up (a prompt of its own): the cache fills as it would over a conversation, the governor measures.
  RunOnce(**provider, fo);
  acc = {};
  const CacheStats before = (*provider)->cache().stats();
  const uint64_t tier_before = (*provider)->counters().tier_uses;
  const uint64_t promotions_before = (*provider)->counters().tier_promotions;
  Measure(state, "cached/" + std::to_string(state.range(0)) + "/" + std::to_string(state.range(1)) + "/" +
                     std::to_string(state.range(2)),
          **provider, fo);
  const CacheStats after = (*provider)->cache().stats();
  state.counters["prefetch_precision"] = acc.precision();
  state.counters["prefetch_recall"] = acc.recall();
  state.counters["wasted_prefetches"] = static_cast<double>(after.wasted_prefetches - before.wasted_prefetches);
  if (IsMissTier(prefetch)) {
    state.counters["tier_promotions"] = static_cast<double>((*provider)->counters().tier_promotions - promotions_before);
    state.counters["miss_tier_uses_per_token"] =
        static_cast<double>((*provider)->counters().tier_uses - tier_before) /
        static_cast<double>(std::max<uint64_t>(1, state.iterations() * (kPromptTokens + g_decode_tokens)));
  }
  if (fo.prefetch_governor != nullptr) {
    state.counters["governor_prefetches"] = governor.PrefersPrefetch() ? 1 : 0;
    state.counters["step_ms_prefetch"] = governor.mode(true).seconds * 1e3;
    state.counters["step_ms_no_prefetch"] = governor.mode(false).seconds * 1e3;
  }
  state.counters["prefetch_reads"] = static_cast<double>(after.prefetch_issued - before.prefetch_issued);
  state.counters["prefetch_throttled"] = static_cast<double>(after.prefetch_throttled - before.prefetch_throttled);
  const uint64_t guesses = after.prefetch_guesses - before.prefetch_guesses;
  state.counters["guess_accuracy"] =
      guesses ? static_cast<double>(after.prefetch_guesses_right - before.prefetch_guesses_right) / static_cast<double>(guesses) : 0;
}

// The fair baseline: the cache's reader and registered slots, but only enough of them for one layer's experts
// (k), so nothing survives from one token to the next.
void BM_ReaderNoCache(benchmark::State& state) {
  auto experts = ModelExperts::Load(g_store->catalog(), g_model);
  if (!experts.ok()) {
    state.SkipWithError(experts.status().ToString().c_str());
    return;
  }
  ExpertCacheOptions o;
  o.capacity_bytes = g_net->config().top_k * experts->max_record_bytes();
  auto provider = CacheExpertProvider::Create(*g_store, g_model, o);
  if (!provider.ok()) {
    state.SkipWithError(provider.status().ToString().c_str());
    return;
  }
  Measure(state, "reader", **provider, {});
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
  BackendCounters device_before = (*net)->backend().counters();
  Measure(state, "gpu/" + std::to_string(state.range(0)) + "/" + std::to_string(state.range(1)), **provider, {},
          net->get());
  BackendCounters n = (*net)->backend().counters();
  const double tokens = static_cast<double>(state.iterations() * (kPromptTokens + g_decode_tokens));
  state.counters["gpu_uploads_per_token"] = static_cast<double>(n.device_uploads - device_before.device_uploads) / tokens;
  state.counters["cpu_experts_per_token"] = static_cast<double>(n.cpu_experts - device_before.cpu_experts) / tokens;
}

void BM_Naive(benchmark::State& state) {
  auto provider = DirectExpertProvider::Create(*g_store, g_model);
  if (!provider.ok()) {
    state.SkipWithError(provider.status().ToString().c_str());
    return;
  }
  Measure(state, "naive", **provider, {});
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

// Every cache size: lru without prefetch; the old default (lru, every guess prefetched); the default (lru,
// confident guesses, governed); reuse without prefetch, with confident guesses, and governed; the default with
// misses served from the Q4_K copy at half and at 90% of the budget. All cached: lru alone (nothing to evict or
// prefetch).
void CacheArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"cache_pct", "reuse", "prefetch"});
  b->Args({100, 0, kPrefetchOff});
  for (int pct : {50, 25, 10}) {
    b->Args({pct, 0, kPrefetchOff});
    b->Args({pct, 0, kPrefetchEveryGuess});
    b->Args({pct, 0, kPrefetchGoverned});
    b->Args({pct, 1, kPrefetchOff});
    b->Args({pct, 1, kPrefetchConfident});
    b->Args({pct, 1, kPrefetchGoverned});
    b->Args({pct, 0, kMissTierQ4KHalf});
    b->Args({pct, 0, kMissTierQ4KMost});
    b->Args({pct, 0, kPrefetchFitted});
    b->Args({pct, 0, kPrefetchFittedGoverned});
  }
}

BENCHMARK(BM_MemoryBandwidthBound)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Naive)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_ReaderNoCache)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
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
  if (const char* n = std::getenv("EXPERTSTORE_BENCH_DECODE_TOKENS"); n != nullptr && std::atoi(n) > 0) {
    es::g_decode_tokens = static_cast<size_t>(std::atoi(n));
  }
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
