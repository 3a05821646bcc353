// Eviction policies behind one interface, used both by ExpertCache and by the offline simulator
// (cache/simulator.h), so that a simulated hit rate is the real cache's decision procedure on the same accesses.
// Policies see dense keys and a logical clock; they know nothing of slots, pins or I/O.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "store/base/status.h"

namespace es {

// A dense expert id in [0, num_keys): layer * experts_per_layer + expert (cache/model_experts.h).
using PolicyKey = uint32_t;

// The callers' protocol: time is a logical clock that advances by one per demand access (never goes back).
// A demand miss calls Insert(key, now) then Touch(key, now); a demand hit calls Touch; a prefetch calls Insert
// alone; a key leaving the cache calls Erase. Victim picks among resident keys the caller says it may evict
// (pinned and in-flight entries are not). Not thread-safe: the caller serialises every call.
class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string_view name() const = 0;
  virtual void Insert(PolicyKey key, uint64_t now) = 0;
  virtual void Touch(PolicyKey key, uint64_t now) = 0;
  virtual void Erase(PolicyKey key) = 0;
  // The resident key to evict at `now` among those for which evictable(key) is true; nullopt if none is.
  virtual std::optional<PolicyKey> Victim(uint64_t now, const std::function<bool(PolicyKey)>& evictable) = 0;
  // Whether reading `incoming` ahead (a prediction that it is used soon) is worth evicting `victim`, the key
  // Victim chose: false when the policy expects the victim to be needed before the incoming key's layer comes.
  // Default: true (the policy has no such estimate).
  virtual bool WorthPrefetching(PolicyKey incoming, PolicyKey victim) const { return true; }
};

// reuse: the layer-cyclic reuse-distance policy. A forward pass visits the layers in order, so an expert of layer
// j is next needed (j - current layer) mod L layers from now if the next token routes to it, and L layers later
// for each token that does not; with p its recent rate of use per pass (an exponential moving average over
// passes, half-life PolicyConfig::reuse_half_life), its expected next use is ((j - c - 1) mod L) + 1 +
// L (1 - p) / p layer steps away, and the resident key whose expected next use is furthest goes first (Belady's
// rule on the expectation; ties: least recently touched).
// arc: adaptive replacement (Megiddo and Modha, FAST 2003): a recency list and a frequency list whose split adapts
// to which one's evicted keys (remembered as ghosts) come back.
enum class PolicyKind : uint8_t { kLru, kLfu, kTrust, kBelady, kReuse, kArc };
// "lru", "lfu", "trust", "belady", "reuse", "arc"; InvalidArgument otherwise.
Result<PolicyKind> ParsePolicyKind(std::string_view name);
std::string_view PolicyKindName(PolicyKind kind);
// Belady last: the ceiling the others are read against.
inline constexpr PolicyKind kAllPolicyKinds[] = {PolicyKind::kLru,   PolicyKind::kLfu, PolicyKind::kTrust,
                                                 PolicyKind::kReuse, PolicyKind::kArc, PolicyKind::kBelady};

// The trust policy's eviction score = recency*w_r + (1-convergence)*w_c + (1-stability)*w_s + size*w_z;
// the resident key with the highest score goes first.
struct TrustWeights {
  double recency = 0.4;
  double convergence = 0.3;
  double stability = 0.2;
  double size = 0.1;
};
// Four comma-separated non-negative numbers "recency,convergence,stability,size"; InvalidArgument otherwise.
Result<TrustWeights> ParseTrustWeights(std::string_view text);

// What the trust policy knows of each key, every field in [0, 1].
struct KeyTraits {
  double convergence = 0.5;  // TrustInfo::convergence_rate
  double stability = 0.5;    // TrustInfo::stability
  double size = 1.0;         // payload bytes / the model's largest expert payload
};
// Values for an expert without a trust record (never calibrated, no recorded usage): the midpoint of each
// range, so that an unknown expert ranks between well and badly converged ones rather than at either end.
inline constexpr double kNeutralConvergence = 0.5;
inline constexpr double kNeutralStability = 0.5;

struct PolicyConfig {
  PolicyKind kind = PolicyKind::kLru;
  uint32_t num_keys = 0;  // keys are < num_keys
  uint32_t capacity = 0;  // cache slots; sets the trust policy's default recency horizon
  // The model's layers (keys are layer * (num_keys / layers) + expert); reuse needs it, 0 counts as 1.
  uint32_t layers = 0;
  // Experts one token uses per layer (k). When set, a recency policy (lru, arc, trust) whose capacity is below
  // layers x k caches only CachedLayers() layers; the others' experts are evicted first (no cyclic thrash).
  uint32_t experts_per_token = 0;
  // reuse: passes after which a use counts half in a key's rate. 16 was the best of 8, 16, 32 and 64 on a trace of
  // the tiny model (63,577 tokens; docs/cache.md has the held-out figures).
  double reuse_half_life = 16;

  // trust: per-key traits (empty: neutral traits for every key), weights, and the horizon, in demand accesses,
  // after which an untouched key's recency term saturates at 1. 0 means kDefaultHorizonPerSlot x capacity.
  std::vector<KeyTraits> traits = {};
  TrustWeights trust_weights = {};
  uint64_t trust_horizon = 0;

  // belady: the whole demand access sequence; the key accessed at logical time t is future[t]. Only an offline
  // replay has it, so the real cache refuses this policy.
  std::vector<PolicyKey> future = {};
};

// The trust policy's recency horizon per cache slot: a key untouched for twice as many accesses as the cache has
// slots counts as fully stale (at a 50% hit rate that is how long an LRU cache takes to turn over once).
inline constexpr uint64_t kDefaultHorizonPerSlot = 2;

// InvalidArgument for inconsistent configs (no keys, traits of the wrong length, belady without a future,
// a future key out of range, negative trust weights).
Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const PolicyConfig& config);

// The layers a policy of `config` caches, the first ones; all of them unless a recency policy (lru, arc, trust)
// would cycle: a cache of fewer than layers x experts_per_token slots evicts, on every layer, the experts the
// next pass needs first (LRU's hit rate falls to 0). Then it caches capacity / k layers, as many as one token's
// experts fit for; the other layers' experts are read, used and evicted first.
uint32_t CachedLayers(const PolicyConfig& config);

}  // namespace es
