// The offline cache simulator: replays a routing trace through an EvictionPolicy (the same objects ExpertCache
// uses) and counts hits. It mirrors ExpertCache::Acquire exactly: one trace line is one Acquire batch, whose
// keys are pinned (never victims) while the batch is served, each key advances the logical clock by one, and a
// miss always fills a slot. So lru/lfu/trust give the hit rates the real cache would get on the same accesses
// without prefetching, and belady (which needs the whole future) gives the ceiling for any policy.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "cache/model_experts.h"
#include "cache/policy.h"
#include "cache/trace.h"
#include "store/base/status.h"

namespace es {

// A trace as dense keys, grouped by line (one Acquire batch per group).
struct AccessTrace {
  uint32_t num_keys = 0;
  uint32_t layers = 0;                // of the key space (the reuse policy needs it)
  std::vector<PolicyKey> keys;        // every access in order; position = logical time
  std::vector<size_t> group_begin;    // group g is keys[group_begin[g], group_begin[g + 1]); ends with keys.size()
  uint64_t skipped = 0;               // accesses dropped because `present` said the expert does not exist
  // The prefetcher's predictions, when the trace carries them (TraceStep::predicted): group g's are
  // predicted[predicted_begin[g], predicted_begin[g + 1]). Empty when no step of the trace has one.
  std::vector<PolicyKey> predicted;
  std::vector<size_t> predicted_begin;

  size_t groups() const { return group_begin.empty() ? 0 : group_begin.size() - 1; }
  bool has_predictions() const { return !predicted_begin.empty(); }
};

// Maps each step's (layer, expert) to its key. InvalidArgument when a step lies outside the key space (a trace
// of another model). Experts for which `present` (if given) is false are dropped and counted in `skipped`:
// a cache could never hold them.
Result<AccessTrace> FlattenTrace(std::span<const TraceStep> steps, const KeySpace& space,
                                 const std::function<bool(PolicyKey)>& present = {});

struct SimResult {
  uint64_t accesses = 0;
  uint64_t hits = 0;       // demand accesses found resident (prefetched ones included)
  uint64_t misses = 0;     // demand reads
  uint64_t evictions = 0;
  uint64_t prefetches = 0;      // prefetch reads
  uint64_t prefetch_hits = 0;   // first demand access of a prefetched expert
  uint64_t prefetch_wasted = 0; // prefetched experts evicted before any demand access
  double hit_rate() const { return accesses == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(accesses); }
  // Every read, demand and prefetch, per access: what the disk serves. Belady's misses per access bound it from
  // below for any policy with or without prefetch.
  double reads_per_access() const {
    return accesses == 0 ? 0.0 : static_cast<double>(misses + prefetches) / static_cast<double>(accesses);
  }
};

// With `prefetch`, the trace's predictions are replayed as ExpertCache's prefetcher handles them, each group's
// read between the previous group and this one (as if each read completed while the previous layer computed):
// a resident expert is not read; a read takes a free slot, else the first demoted expert, else the policy's
// victim among the experts the previous group does not pin and that are not unused prefetches, and only when the
// policy holds that victim worth less (EvictionPolicy::WorthPrefetching), else it is dropped; a prefetch is an
// Insert without a Touch; after its group, a prediction the group did not use is demoted (the first to be
// evicted). The live cache's accuracy throttle is not modelled: every prediction is acted on.
struct SimulateOptions {
  bool prefetch = false;
};

// Replays the trace through `policy` with `capacity` slots. ResourceExhausted when a group has more distinct
// keys than slots (the real cache refuses such a batch too); InvalidArgument for `prefetch` on a trace without
// predictions.
Result<SimResult> Simulate(const AccessTrace& trace, uint32_t capacity, EvictionPolicy& policy,
                           const SimulateOptions& options = {});

// Builds the policy `config` describes (num_keys, capacity and, for belady, the future taken from the trace)
// and replays the trace through it.
Result<SimResult> SimulatePolicy(const AccessTrace& trace, uint32_t capacity, PolicyConfig config,
                                 const SimulateOptions& options = {});

}  // namespace es
