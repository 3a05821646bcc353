// The simulator's replay loop: the residency bookkeeping of ExpertCache without memory, I/O or threads.
#include "cache/simulator.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <optional>

namespace es {

Result<AccessTrace> FlattenTrace(std::span<const TraceStep> steps, const KeySpace& space,
                                 const std::function<bool(PolicyKey)>& present) {
  AccessTrace out;
  out.num_keys = space.num_keys();
  out.layers = space.layers;
  const bool predictions = std::any_of(steps.begin(), steps.end(), [](const TraceStep& s) { return s.predicted; });
  auto key_of = [&](const TraceStep& s, uint32_t e) -> Result<PolicyKey> {
    auto key = space.Key({s.layer, e});
    if (!key) {
      return Status::InvalidArgument("trace token " + std::to_string(s.token) + " routes to layer " +
                                     std::to_string(s.layer) + " expert " + std::to_string(e) +
                                     ", outside the model (" + std::to_string(space.layers) + " layers x " +
                                     std::to_string(space.experts_per_layer) + " experts)");
    }
    return *key;
  };
  for (const TraceStep& s : steps) {
    out.group_begin.push_back(out.keys.size());
    for (uint32_t e : s.experts) {
      ES_ASSIGN_OR_RETURN(PolicyKey key, key_of(s, e));
      if (present && !present(key)) {
        ++out.skipped;
        continue;
      }
      out.keys.push_back(key);
    }
    if (!predictions) continue;
    out.predicted_begin.push_back(out.predicted.size());
    for (uint32_t e : s.predicted.value_or(std::vector<uint32_t>{})) {
      ES_ASSIGN_OR_RETURN(PolicyKey key, key_of(s, e));
      if (!present || present(key)) out.predicted.push_back(key);
    }
  }
  out.group_begin.push_back(out.keys.size());
  if (predictions) out.predicted_begin.push_back(out.predicted.size());
  return out;
}

Result<SimResult> Simulate(const AccessTrace& trace, uint32_t capacity, EvictionPolicy& policy,
                           const SimulateOptions& options) {
  if (capacity == 0) return Status::InvalidArgument("a cache of zero slots");
  if (options.prefetch && !trace.has_predictions()) {
    return Status::InvalidArgument("the trace holds no predictions to prefetch (trace writes them with prefetch on)");
  }
  constexpr uint64_t kNoGroup = std::numeric_limits<uint64_t>::max();
  std::vector<bool> resident(trace.num_keys, false);
  std::vector<uint64_t> pinned_by(trace.num_keys, kNoGroup);  // the group that pins the key
  // Prefetched and not used yet (never a prefetch's victim), and demoted (unused by their group: evicted first).
  std::vector<bool> unused(trace.num_keys, false), demoted(trace.num_keys, false);
  std::deque<PolicyKey> demoted_order;
  uint64_t group = 0;
  uint32_t used = 0;
  SimResult r;
  auto evict = [&](PolicyKey victim) {
    policy.Erase(victim);
    resident[victim] = false;
    if (unused[victim] || demoted[victim]) ++r.prefetch_wasted;
    unused[victim] = demoted[victim] = false;
    --used;
    ++r.evictions;
  };
  // The oldest demoted expert still resident that `allowed` accepts.
  auto demoted_victim = [&](const std::function<bool(PolicyKey)>& allowed) -> std::optional<PolicyKey> {
    while (!demoted_order.empty() && !demoted[demoted_order.front()]) demoted_order.pop_front();
    for (PolicyKey k : demoted_order) {
      if (demoted[k] && allowed(k)) return k;
    }
    return std::nullopt;
  };
  for (size_t g = 0; g < trace.groups(); ++g) {
    const size_t begin = trace.group_begin[g];
    const size_t end = trace.group_begin[g + 1];
    if (options.prefetch) {
      // This group's predictions land while the previous group (still pinned) computes.
      auto allowed = [&](PolicyKey k) { return g == 0 || pinned_by[k] != g - 1; };
      auto prefetch_victim = [&](PolicyKey k) { return allowed(k) && !unused[k]; };
      for (size_t i = trace.predicted_begin[g]; i < trace.predicted_begin[g + 1]; ++i) {
        const PolicyKey key = trace.predicted[i];
        if (resident[key]) continue;
        if (used == capacity) {
          std::optional<PolicyKey> victim = demoted_victim(allowed);
          if (!victim) {
            victim = policy.Victim(begin, prefetch_victim);
            if (!victim || !policy.WorthPrefetching(key, *victim)) continue;
          }
          evict(*victim);
        }
        policy.Insert(key, begin);
        resident[key] = true;
        unused[key] = true;
        ++used;
        ++r.prefetches;
      }
    }
    group = g;
    uint32_t distinct = 0;
    for (size_t t = begin; t < end; ++t) {
      if (pinned_by[trace.keys[t]] != g) ++distinct;
      pinned_by[trace.keys[t]] = g;
    }
    if (distinct > capacity) {
      return Status::ResourceExhausted("a trace line needs " + std::to_string(distinct) + " experts at once; the cache "
                                       "holds " + std::to_string(capacity));
    }
    auto evictable = [&](PolicyKey k) { return pinned_by[k] != group; };
    for (size_t t = begin; t < end; ++t) {
      PolicyKey key = trace.keys[t];
      ++r.accesses;
      if (resident[key]) {
        ++r.hits;
        if (unused[key]) ++r.prefetch_hits;
        unused[key] = demoted[key] = false;
        policy.Touch(key, t);
        continue;
      }
      ++r.misses;
      if (used == capacity) {
        std::optional<PolicyKey> victim = demoted_victim(evictable);
        if (!victim) victim = policy.Victim(t, evictable);
        if (!victim) return Status::ResourceExhausted("no evictable slot");  // unreachable: distinct <= capacity
        evict(*victim);
      }
      policy.Insert(key, t);
      policy.Touch(key, t);
      resident[key] = true;
      ++used;
    }
    if (options.prefetch) {
      for (size_t i = trace.predicted_begin[g]; i < trace.predicted_begin[g + 1]; ++i) {
        const PolicyKey key = trace.predicted[i];
        if (!unused[key]) continue;
        unused[key] = false;
        demoted[key] = true;
        demoted_order.push_back(key);
      }
    }
  }
  return r;
}

Result<SimResult> SimulatePolicy(const AccessTrace& trace, uint32_t capacity, PolicyConfig config,
                                 const SimulateOptions& options) {
  config.num_keys = trace.num_keys;
  config.capacity = capacity;
  if (config.layers == 0) config.layers = trace.layers;
  if (config.kind == PolicyKind::kBelady) config.future = trace.keys;
  if (trace.keys.empty()) return SimResult{};
  ES_ASSIGN_OR_RETURN(auto policy, MakePolicy(config));
  return Simulate(trace, capacity, *policy, options);
}

}  // namespace es
