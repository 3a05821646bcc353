// The simulator's replay loop: the residency bookkeeping of ExpertCache without memory, I/O or threads.
#include "cache/simulator.h"

#include <limits>

namespace es {

Result<AccessTrace> FlattenTrace(std::span<const TraceStep> steps, const KeySpace& space,
                                 const std::function<bool(PolicyKey)>& present) {
  AccessTrace out;
  out.num_keys = space.num_keys();
  out.layers = space.layers;
  for (const TraceStep& s : steps) {
    out.group_begin.push_back(out.keys.size());
    for (uint32_t e : s.experts) {
      auto key = space.Key({s.layer, e});
      if (!key) {
        return Status::InvalidArgument("trace token " + std::to_string(s.token) + " routes to layer " +
                                       std::to_string(s.layer) + " expert " + std::to_string(e) +
                                       ", outside the model (" + std::to_string(space.layers) + " layers x " +
                                       std::to_string(space.experts_per_layer) + " experts)");
      }
      if (present && !present(*key)) {
        ++out.skipped;
        continue;
      }
      out.keys.push_back(*key);
    }
  }
  out.group_begin.push_back(out.keys.size());
  return out;
}

Result<SimResult> Simulate(const AccessTrace& trace, uint32_t capacity, EvictionPolicy& policy) {
  if (capacity == 0) return Status::InvalidArgument("a cache of zero slots");
  constexpr uint64_t kNoGroup = std::numeric_limits<uint64_t>::max();
  std::vector<bool> resident(trace.num_keys, false);
  std::vector<uint64_t> pinned_by(trace.num_keys, kNoGroup);  // the group that pins the key
  uint64_t group = 0;
  auto evictable = [&](PolicyKey k) { return pinned_by[k] != group; };
  uint32_t used = 0;
  SimResult r;
  for (size_t g = 0; g < trace.groups(); ++g) {
    group = g;
    const size_t begin = trace.group_begin[g];
    const size_t end = trace.group_begin[g + 1];
    uint32_t distinct = 0;
    for (size_t t = begin; t < end; ++t) {
      if (pinned_by[trace.keys[t]] != g) ++distinct;
      pinned_by[trace.keys[t]] = g;
    }
    if (distinct > capacity) {
      return Status::ResourceExhausted("a trace line needs " + std::to_string(distinct) + " experts at once; the cache "
                                       "holds " + std::to_string(capacity));
    }
    for (size_t t = begin; t < end; ++t) {
      PolicyKey key = trace.keys[t];
      ++r.accesses;
      if (resident[key]) {
        ++r.hits;
        policy.Touch(key, t);
        continue;
      }
      ++r.misses;
      if (used == capacity) {
        auto victim = policy.Victim(t, evictable);
        if (!victim) return Status::ResourceExhausted("no evictable slot");  // unreachable: distinct <= capacity
        policy.Erase(*victim);
        resident[*victim] = false;
        --used;
        ++r.evictions;
      }
      policy.Insert(key, t);
      policy.Touch(key, t);
      resident[key] = true;
      ++used;
    }
  }
  return r;
}

Result<SimResult> SimulatePolicy(const AccessTrace& trace, uint32_t capacity, PolicyConfig config) {
  config.num_keys = trace.num_keys;
  config.capacity = capacity;
  if (config.layers == 0) config.layers = trace.layers;
  if (config.kind == PolicyKind::kBelady) config.future = trace.keys;
  if (trace.keys.empty()) return SimResult{};
  ES_ASSIGN_OR_RETURN(auto policy, MakePolicy(config));
  return Simulate(trace, capacity, *policy);
}

}  // namespace es
