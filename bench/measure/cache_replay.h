// `bench cache`'s measurement: the hit rate of each eviction policy, and of belady (the ceiling for any policy),
// on one routing trace at one cache size, through the offline simulator (pure computation over the model's
// catalog records: no I/O, deterministic for a given trace); and, on request, the same trace through a live
// ExpertCache with the store's reader, which ties each policy's hit rate to the time its misses take.
#pragma once

#include <cstdint>
#include <iterator>
#include <optional>
#include <span>
#include <vector>

#include "cache/cache_size.h"
#include "cache/model_experts.h"
#include "cache/policy.h"
#include "cache/simulator.h"
#include "cache/trace.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es::bench {

inline constexpr uint32_t kDefaultSyntheticTokens = 2000;
// Only keeps a typo from generating a trace for hours.
inline constexpr uint32_t kMaxSyntheticTokens = 10000000;

// The replay's settings. Validation errors name these fields.
struct CacheReplayOptions {
  // The cache's size, exactly one of the two: MiB of slots, or a percentage of the model's experts in whole slots
  // (errors name them `cache_mb` and `cache_pct`).
  CacheSize cache;
  // Replayed in this order; at least one.
  std::vector<PolicyKind> policies{std::begin(kAllPolicyKinds), std::end(kAllPolicyKinds)};
  TrustWeights trust_weights = {};
  // Also replay the trace through a live ExpertCache of the same size (no prefetch) reading the store; needs
  // ReplayCachePolicies' `store`.
  bool reader = false;
  // Also replay each policy but belady with the trace's predictions prefetched (SimulateOptions::prefetch); the
  // trace must carry them (`trace` writes them when it prefetches).
  bool prefetch = false;
};

// A replay through the live cache (ReplayWithReader).
struct ReaderReplay {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t bytes_read = 0;
  double seconds = 0;  // wall time of every Acquire (reads and verification included)
  double hit_rate() const { return hits + misses ? static_cast<double>(hits) / static_cast<double>(hits + misses) : 0; }
  double gbps() const { return seconds > 0 ? static_cast<double>(bytes_read) / seconds / 1e9 : 0; }
};

struct PolicyReplay {
  PolicyKind policy = PolicyKind::kLru;
  SimResult sim;
  std::optional<ReaderReplay> reader;  // with CacheReplayOptions::reader, for every policy but belady
  std::optional<SimResult> prefetch;   // with CacheReplayOptions::prefetch, for every policy but belady
  uint32_t cached_layers = 0;          // CachedLayers: fewer than the model's when the policy bypasses some
};

struct CacheReplayResult {
  uint64_t accesses = 0;        // expert accesses replayed (the trace's, less skipped_absent)
  uint64_t skipped_absent = 0;  // accesses to experts the catalog lacks (a partial checkpoint)
  uint32_t capacity_experts = 0;
  uint64_t cache_bytes = 0;            // capacity_experts slots of the model's largest record
  std::vector<PolicyReplay> policies;  // one per CacheReplayOptions::policies, in its order
};

// A synthetic trace (cache/trace.h) shaped like the model: its layers, experts per layer and top-k.
// InvalidArgument naming `tokens` outside [1, kMaxSyntheticTokens].
Result<std::vector<TraceStep>> SyntheticTraceFor(const ModelExperts& experts, uint32_t tokens, uint64_t seed);

// Replays `steps` (each one Acquire batch) through every policy of `options`. InvalidArgument for a bad size
// (`cache_mb`, `cache_pct`), no policies, steps outside the model, or `reader` without a store; ResourceExhausted
// when one step needs more distinct experts than the cache has slots. With `reader`, each online policy's replay
// through the live cache counts the simulator's hits and misses on steps of one expert (a test checks it); on
// longer steps the cache touches a step's hits before its misses come in, which can move a few hits.
Result<CacheReplayResult> ReplayCachePolicies(const ModelExperts& experts, std::span<const TraceStep> steps,
                                              const CacheReplayOptions& options, Store* store = nullptr);

}  // namespace es::bench
