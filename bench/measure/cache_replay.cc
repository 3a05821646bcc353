// The cache policy replay (cache_replay.h).
#include "bench/measure/cache_replay.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "cache/cache_size.h"
#include "cache/expert_cache.h"

namespace es::bench {

namespace {
constexpr uint64_t kMiB = uint64_t{1} << 20;

// The experts a token uses per layer in the trace: its widest step.
uint32_t ExpertsPerToken(std::span<const TraceStep> steps) {
  size_t k = 0;
  for (const TraceStep& step : steps) k = std::max(k, step.experts.size());
  return static_cast<uint32_t>(k);
}
}  // namespace

Result<std::vector<TraceStep>> SyntheticTraceFor(const ModelExperts& experts, uint32_t tokens, uint64_t seed) {
  if (tokens < 1 || tokens > kMaxSyntheticTokens) {
    return Status::InvalidArgument("`tokens` must be between 1 and " + std::to_string(kMaxSyntheticTokens));
  }
  SyntheticTraceOptions o;
  o.layers = experts.keys().layers;
  o.experts_per_layer = experts.keys().experts_per_layer;
  // A model record without top-k (ingest always writes one) keeps the generator's default.
  o.top_k = experts.model().top_k == 0 ? o.top_k : std::min(experts.model().top_k, o.experts_per_layer);
  o.tokens = tokens;
  o.seed = seed;
  return MakeSyntheticTrace(o);
}

// One Acquire per step (the experts the catalog has), handles released before the next, as the simulator counts.
Result<ReaderReplay> ReplayWithReader(Store& store, const ModelExperts& experts, std::span<const TraceStep> steps,
                                      uint64_t cache_bytes, PolicyKind policy, const TrustWeights& weights) {
  ExpertCacheOptions o;
  o.capacity_bytes = cache_bytes;
  o.policy = policy;
  o.trust_weights = weights;
  o.experts_per_token = ExpertsPerToken(steps);
  ES_ASSIGN_OR_RETURN(auto cache, ExpertCache::Open(store, experts.model().name, o));
  std::vector<ExpertRef> refs;
  const auto start = std::chrono::steady_clock::now();
  for (const TraceStep& step : steps) {
    refs.clear();
    for (uint32_t e : step.experts) {
      const std::optional<PolicyKey> key = experts.keys().Key({step.layer, e});
      if (key && experts.Find(*key) != nullptr) refs.push_back({step.layer, e});
    }
    if (refs.empty()) continue;
    ES_ASSIGN_OR_RETURN(std::vector<ExpertHandle> handles, cache->Acquire(refs));
  }
  ReaderReplay r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const CacheStats s = cache->stats();
  r.hits = s.hits;
  r.misses = s.misses;
  r.bytes_read = s.bytes_read;
  return r;
}

Result<CacheReplayResult> ReplayCachePolicies(const ModelExperts& experts, std::span<const TraceStep> steps,
                                              const CacheReplayOptions& options, Store* store) {
  if (options.reader && store == nullptr) return Status::InvalidArgument("`reader` replays need the store");
  const CacheSize& size = options.cache;
  ES_RETURN_IF_ERROR(ValidateCacheSize(size, "cache", /*required=*/true));
  if (options.policies.empty()) return Status::InvalidArgument("`policies` must name at least one policy");

  CacheReplayResult out;
  // A percentage is a share of the experts, in whole slots.
  const uint64_t requested_bytes =
      size.mb ? *size.mb * kMiB : PercentOfSlots(*size.pct, experts.experts().size()) * experts.max_record_bytes();
  out.capacity_experts = ExpertCache::SlotsFor(experts, requested_bytes);
  out.cache_bytes = static_cast<uint64_t>(out.capacity_experts) * experts.max_record_bytes();

  ES_ASSIGN_OR_RETURN(AccessTrace trace, FlattenTrace(steps, experts.keys(),
                                                      [&](PolicyKey k) { return experts.Find(k) != nullptr; }));
  out.accesses = trace.keys.size();
  out.skipped_absent = trace.skipped;

  PolicyConfig config;
  config.traits = experts.Traits();
  config.trust_weights = options.trust_weights;
  config.experts_per_token = ExpertsPerToken(steps);
  config.capacity = out.capacity_experts;
  config.layers = trace.layers;
  for (PolicyKind kind : options.policies) {
    config.kind = kind;
    ES_ASSIGN_OR_RETURN(SimResult sim, SimulatePolicy(trace, out.capacity_experts, config));
    PolicyReplay replay{kind, sim, std::nullopt, std::nullopt, CachedLayers(config)};
    if (options.prefetch && kind != PolicyKind::kBelady) {
      ES_ASSIGN_OR_RETURN(replay.prefetch, SimulatePolicy(trace, out.capacity_experts, config, {.prefetch = true}));
    }
    if (options.reader && kind != PolicyKind::kBelady) {
      ES_ASSIGN_OR_RETURN(replay.reader, ReplayWithReader(*store, experts, steps, out.cache_bytes, kind,
                                                          options.trust_weights));
    }
    out.policies.push_back(std::move(replay));
  }
  return out;
}

}  // namespace es::bench
