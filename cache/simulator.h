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

  size_t groups() const { return group_begin.empty() ? 0 : group_begin.size() - 1; }
};

// Maps each step's (layer, expert) to its key. InvalidArgument when a step lies outside the key space (a trace
// of another model). Experts for which `present` (if given) is false are dropped and counted in `skipped`:
// a cache could never hold them.
Result<AccessTrace> FlattenTrace(std::span<const TraceStep> steps, const KeySpace& space,
                                 const std::function<bool(PolicyKey)>& present = {});

struct SimResult {
  uint64_t accesses = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  double hit_rate() const { return accesses == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(accesses); }
};

// Replays the trace through `policy` with `capacity` slots. ResourceExhausted when a group has more distinct
// keys than slots (the real cache refuses such a batch too).
Result<SimResult> Simulate(const AccessTrace& trace, uint32_t capacity, EvictionPolicy& policy);

// Builds the policy `config` describes (num_keys, capacity and, for belady, the future taken from the trace)
// and replays the trace through it.
Result<SimResult> SimulatePolicy(const AccessTrace& trace, uint32_t capacity, PolicyConfig config);

}  // namespace es
