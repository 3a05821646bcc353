// Eviction policies on hand-made sequences with known answers, the trust score against a brute-force scorer,
// belady against an exhaustive search on small traces, and belady as the ceiling on synthetic traces.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "cache/policy.h"
#include "cache/simulator.h"
#include "cache/trace.h"

namespace es {
namespace {

auto kAll = [](PolicyKey) { return true; };

// A trace of single-key groups (no batch pinning) over `num_keys` keys.
AccessTrace Singles(const std::vector<PolicyKey>& keys, uint32_t num_keys) {
  AccessTrace t;
  t.num_keys = num_keys;
  for (size_t i = 0; i < keys.size(); ++i) {
    t.group_begin.push_back(i);
    t.keys.push_back(keys[i]);
  }
  t.group_begin.push_back(keys.size());
  return t;
}

SimResult Replay(const AccessTrace& t, uint32_t capacity, PolicyKind kind, PolicyConfig config = {}) {
  config.kind = kind;
  auto r = SimulatePolicy(t, capacity, config);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : SimResult{};
}

std::unique_ptr<EvictionPolicy> Make(PolicyConfig config) {
  auto p = MakePolicy(config);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return std::move(p).value();
}

// The textbook reference string (Silberschatz): 3 frames give 12 faults under LRU and 9 under OPT.
const std::vector<PolicyKey> kTextbook = {7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1};

TEST(LruTest, TextbookFaults) {
  SimResult r = Replay(Singles(kTextbook, 8), 3, PolicyKind::kLru);
  EXPECT_EQ(r.misses, 12u);
  EXPECT_EQ(r.hits, 8u);
}

TEST(LruTest, EvictsLeastRecentlyTouched) {
  auto p = Make({.kind = PolicyKind::kLru, .num_keys = 4});
  p->Insert(0, 0), p->Touch(0, 0);
  p->Insert(1, 1), p->Touch(1, 1);
  p->Insert(2, 2), p->Touch(2, 2);
  p->Touch(0, 3);
  EXPECT_EQ(p->Victim(4, kAll), 1u);
  // The caller's veto is respected: with 1 pinned the next oldest goes.
  EXPECT_EQ(p->Victim(4, [](PolicyKey k) { return k != 1; }), 2u);
  EXPECT_EQ(p->Victim(4, [](PolicyKey) { return false; }), std::nullopt);
  p->Erase(1);
  EXPECT_EQ(p->Victim(4, kAll), 2u);
}

TEST(LfuTest, EvictsLeastFrequentThenOldest) {
  auto p = Make({.kind = PolicyKind::kLfu, .num_keys = 4});
  p->Insert(0, 0), p->Touch(0, 0);
  p->Touch(0, 1);
  p->Insert(1, 2), p->Touch(1, 2);
  p->Insert(2, 3), p->Touch(2, 3);
  EXPECT_EQ(p->Victim(4, kAll), 1u);  // counts 2, 1, 1: key 1 is the older of the two singles
  p->Touch(1, 4);
  EXPECT_EQ(p->Victim(5, kAll), 2u);
}

TEST(LfuTest, CountsSurviveEvictionAndPrefetchDoesNotCount) {
  auto p = Make({.kind = PolicyKind::kLfu, .num_keys = 4});
  for (uint64_t t = 0; t < 3; ++t) p->Touch(0, t);  // three accesses
  p->Erase(0);
  p->Insert(1, 3), p->Touch(1, 3);
  p->Insert(0, 4), p->Touch(0, 4);  // back with four accesses of history
  EXPECT_EQ(p->Victim(5, kAll), 1u);
  p->Insert(2, 5);  // a prefetch: no access yet, so it is the first to go
  EXPECT_EQ(p->Victim(6, kAll), 2u);
}

TEST(TrustTest, ScoreFollowsTheFormula) {
  // Horizon 10; key 0 well converged and stable, key 1 not converged, key 2 average. Same size.
  PolicyConfig c{.kind = PolicyKind::kTrust, .num_keys = 3, .capacity = 3};
  c.traits = {{.convergence = 0.9, .stability = 0.9, .size = 1}, {.convergence = 0.1, .stability = 0.9, .size = 1},
              {.convergence = 0.5, .stability = 0.5, .size = 1}};
  c.trust_horizon = 10;
  auto p = Make(c);
  p->Insert(1, 0), p->Touch(1, 0);
  p->Insert(0, 1), p->Touch(0, 1);
  p->Insert(2, 2), p->Touch(2, 2);
  // At t=3: scores 0.4*(3-t)/10 + 0.3*(1-c) + 0.2*(1-s) + 0.1:
  //   key 0: 0.08 + 0.03 + 0.02 + 0.1 = 0.23; key 1: 0.12 + 0.27 + 0.02 + 0.1 = 0.51; key 2: 0.04 + 0.15 + 0.1 + 0.1 = 0.39
  EXPECT_EQ(p->Victim(3, kAll), 1u);
  EXPECT_EQ(p->Victim(3, [](PolicyKey k) { return k != 1; }), 2u);
  // Much later every recency saturates at 1 and the static terms decide: 1 (0.79) > 2 (0.75) > 0 (0.55).
  p->Touch(1, 100);  // key 1 fresh again: 0.4*(101-100)/10 + 0.39 = 0.43 < key 2's 0.75
  EXPECT_EQ(p->Victim(101, kAll), 2u);
}

TEST(TrustTest, NeutralTraitsBehaveAsLru) {
  SyntheticTraceOptions o{.layers = 3, .experts_per_layer = 32, .top_k = 4, .tokens = 400, .seed = 7};
  auto steps = MakeSyntheticTrace(o);
  ASSERT_TRUE(steps.ok());
  auto trace = FlattenTrace(*steps, KeySpace{3, 32});
  ASSERT_TRUE(trace.ok());
  for (uint32_t cap : {8u, 24u, 48u}) {
    SimResult lru = Replay(*trace, cap, PolicyKind::kLru);
    SimResult trust = Replay(*trace, cap, PolicyKind::kTrust);
    EXPECT_EQ(lru.hits, trust.hits) << cap;
  }
}

TEST(TrustTest, RecencyOnlyWeightsAreLru) {
  SyntheticTraceOptions o{.layers = 2, .experts_per_layer = 32, .top_k = 4, .tokens = 300, .seed = 3};
  auto steps = MakeSyntheticTrace(o);
  ASSERT_TRUE(steps.ok());
  auto trace = FlattenTrace(*steps, KeySpace{2, 32});
  ASSERT_TRUE(trace.ok());
  PolicyConfig c;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(0, 1);
  for (uint32_t k = 0; k < 64; ++k) c.traits.push_back({u(rng), u(rng), u(rng)});
  c.trust_weights = {1, 0, 0, 0};
  c.trust_horizon = 1u << 30;  // never saturates: pure recency
  EXPECT_EQ(Replay(*trace, 12, PolicyKind::kTrust, c).hits, Replay(*trace, 12, PolicyKind::kLru).hits);
}

// The incremental structure against the formula evaluated for every resident key.
TEST(TrustTest, MatchesBruteForceScore) {
  constexpr uint32_t kKeys = 40;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(0, 1);
  PolicyConfig c{.kind = PolicyKind::kTrust, .num_keys = kKeys, .capacity = 10};
  for (uint32_t k = 0; k < kKeys; ++k) c.traits.push_back({u(rng), u(rng), u(rng)});
  c.trust_horizon = 25;
  c.trust_weights = {0.4, 0.3, 0.2, 0.1};
  auto p = Make(c);
  std::map<PolicyKey, uint64_t> last;  // resident -> last touch
  for (uint64_t now = 0; now < 3000; ++now) {
    PolicyKey k = static_cast<PolicyKey>(rng() % kKeys);
    if (last.count(k) == 0 && last.size() == 10) {
      std::vector<PolicyKey> pinned = {static_cast<PolicyKey>(rng() % kKeys)};
      auto evictable = [&](PolicyKey x) { return x != pinned[0]; };
      double best = -1;
      PolicyKey expected = 0;
      uint64_t best_last = 0;
      for (auto [key, l] : last) {
        if (!evictable(key)) continue;
        const KeyTraits& t = c.traits[key];
        double recency = std::min(1.0, static_cast<double>(now - l) / static_cast<double>(c.trust_horizon));
        double s = 0.4 * recency + 0.3 * (1 - t.convergence) + 0.2 * (1 - t.stability) + 0.1 * t.size;
        if (s > best + 1e-12 || (std::abs(s - best) <= 1e-12 && l < best_last)) {
          best = s;
          expected = key;
          best_last = l;
        }
      }
      auto victim = p->Victim(now, evictable);
      ASSERT_TRUE(victim.has_value());
      ASSERT_EQ(*victim, expected) << "at " << now;
      p->Erase(*victim);
      last.erase(*victim);
    }
    if (last.count(k) == 0) p->Insert(k, now);
    p->Touch(k, now);
    last[k] = now;
  }
}

TEST(BeladyTest, TextbookFaults) {
  PolicyConfig c;
  SimResult r = Replay(Singles(kTextbook, 8), 3, PolicyKind::kBelady, c);
  EXPECT_EQ(r.misses, 9u);
}

// Fewest misses any eviction sequence can achieve (every miss is cached), by search over resident sets.
uint64_t OptimalMisses(const std::vector<PolicyKey>& keys, uint32_t capacity) {
  std::map<uint32_t, uint64_t> states = {{0u, 0}};  // resident bitmask -> fewest misses so far
  for (PolicyKey k : keys) {
    std::map<uint32_t, uint64_t> next;
    auto relax = [&](uint32_t s, uint64_t m) {
      auto it = next.find(s);
      if (it == next.end() || m < it->second) next[s] = m;
    };
    for (auto [s, m] : states) {
      if (s & (1u << k)) {
        relax(s, m);
      } else if (static_cast<uint32_t>(__builtin_popcount(s)) < capacity) {
        relax(s | (1u << k), m + 1);
      } else {
        for (uint32_t v = 0; v < 32; ++v) {
          if (s & (1u << v)) relax((s & ~(1u << v)) | (1u << k), m + 1);
        }
      }
    }
    states = std::move(next);
  }
  uint64_t best = UINT64_MAX;
  for (auto [s, m] : states) best = std::min(best, m);
  return best;
}

TEST(BeladyTest, OptimalOnSmallTraces) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    const uint32_t keys = 3 + static_cast<uint32_t>(rng() % 4);
    const uint32_t capacity = 1 + static_cast<uint32_t>(rng() % 3);
    std::vector<PolicyKey> seq(6 + rng() % 10);
    for (auto& k : seq) k = static_cast<PolicyKey>(rng() % keys);
    SimResult r = Replay(Singles(seq, keys), capacity, PolicyKind::kBelady);
    ASSERT_EQ(r.misses, OptimalMisses(seq, capacity)) << "trial " << trial;
  }
}

TEST(BeladyTest, CeilingForEveryPolicyOnTracesWithLocality) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    SyntheticTraceOptions o{.layers = 4, .experts_per_layer = 64, .top_k = 6, .tokens = 500, .seed = seed};
    o.repeat = 0.1 * static_cast<double>(seed % 4);
    o.zipf_s = 0.6 + 0.2 * static_cast<double>(seed % 3);
    auto steps = MakeSyntheticTrace(o);
    ASSERT_TRUE(steps.ok());
    auto trace = FlattenTrace(*steps, KeySpace{4, 64});
    ASSERT_TRUE(trace.ok());
    PolicyConfig c;
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0, 1);
    for (uint32_t k = 0; k < 256; ++k) c.traits.push_back({u(rng), u(rng), 1.0});
    for (double fraction : {0.1, 0.25, 0.5}) {
      uint32_t cap = static_cast<uint32_t>(fraction * 256);
      SimResult best = Replay(*trace, cap, PolicyKind::kBelady, c);
      for (PolicyKind k : {PolicyKind::kLru, PolicyKind::kLfu, PolicyKind::kTrust}) {
        SimResult r = Replay(*trace, cap, k, c);
        EXPECT_GE(best.hits, r.hits) << PolicyKindName(k) << " seed " << seed << " capacity " << cap;
      }
    }
  }
}

// Fifty passes over four layers of two experts, each pass routing to expert 0 of every layer.
AccessTrace LayerCycle() {
  std::vector<PolicyKey> seq;
  for (int pass = 0; pass < 50; ++pass) {
    for (PolicyKey layer = 0; layer < 4; ++layer) seq.push_back(layer * 2);
  }
  AccessTrace t = Singles(seq, 8);
  t.layers = 4;
  return t;
}

// The layer cycle: four layers of two experts, every pass routes to expert 0 of each layer, and 3 slots hold
// three of the four. LRU evicts the key needed next every time (no hit at all); reuse evicts the key just used,
// whose next use is a whole pass away, which is Belady's choice: the same hits as the optimum.
TEST(PolicyTest, ReuseFollowsTheLayerCycle) {
  AccessTrace t = LayerCycle();
  const SimResult lru = Replay(t, 3, PolicyKind::kLru);
  const SimResult best = Replay(t, 3, PolicyKind::kBelady);
  const SimResult reuse = Replay(t, 3, PolicyKind::kReuse);
  EXPECT_EQ(lru.hits, 0u);
  EXPECT_GT(best.hits, 100u);
  EXPECT_EQ(reuse.hits, best.hits);
  // Without the layers it cannot see the cycle: every key is "layer 0", next needed a pass away, and the rates
  // (all equal) decide nothing; it falls back to least recently touched, LRU's thrash.
  t.layers = 0;
  EXPECT_EQ(Replay(t, 3, PolicyKind::kReuse).hits, 0u);
}

// The same cycle with the experts per token known: lru cannot hold one token's four experts in 3 slots, so it
// caches the first three layers and reads the last through: two hits a pass (Belady makes 2.6), where plain lru
// hit nothing.
TEST(PolicyTest, RecencyPoliciesTooSmallForOneTokenBypassLayers) {
  AccessTrace t = LayerCycle();
  PolicyConfig c{.num_keys = 8, .capacity = 3, .layers = 4, .experts_per_token = 1};
  for (PolicyKind kind : {PolicyKind::kLru, PolicyKind::kArc, PolicyKind::kTrust}) {
    c.kind = kind;
    EXPECT_EQ(CachedLayers(c), 3u) << PolicyKindName(kind);
    EXPECT_GE(Replay(t, 3, kind, c).hits, 96u) << PolicyKindName(kind);
    EXPECT_EQ(Replay(t, 3, kind).hits, 0u) << PolicyKindName(kind);  // without k: the thrash
  }
  // The others cache every layer: lfu and reuse do not cycle, belady is the optimum.
  for (PolicyKind kind : {PolicyKind::kLfu, PolicyKind::kReuse, PolicyKind::kBelady}) {
    c.kind = kind;
    EXPECT_EQ(CachedLayers(c), 4u) << PolicyKindName(kind);
  }
  EXPECT_GE(Replay(t, 3, PolicyKind::kBelady, c).hits, Replay(t, 3, PolicyKind::kLru, c).hits);
  // Room for one token's experts: no bypass; less: as many layers as one token's experts fit for.
  EXPECT_EQ(CachedLayers({.kind = PolicyKind::kLru, .capacity = 4, .layers = 4, .experts_per_token = 1}), 4u);
  EXPECT_EQ(CachedLayers({.kind = PolicyKind::kLru, .capacity = 24, .layers = 6, .experts_per_token = 4}), 6u);
  EXPECT_EQ(CachedLayers({.kind = PolicyKind::kLru, .capacity = 23, .layers = 6, .experts_per_token = 4}), 5u);
  EXPECT_EQ(CachedLayers({.kind = PolicyKind::kLru, .capacity = 19, .layers = 6, .experts_per_token = 4}), 4u);
  // A prefetch of a bypassed layer never displaces a cached key; one of a cached layer may displace a bypassed one.
  c.kind = PolicyKind::kLru;
  auto p = Make(c);
  EXPECT_FALSE(p->WorthPrefetching(/*incoming=*/6, /*victim=*/0));  // layer 3 is read through
  EXPECT_TRUE(p->WorthPrefetching(/*incoming=*/0, /*victim=*/6));
}

// A key used on most passes outranks one used once long ago, at the same distance in the cycle.
TEST(PolicyTest, ReusePrefersTheFrequentlyUsedKey) {
  PolicyConfig c{.kind = PolicyKind::kReuse, .num_keys = 8, .capacity = 4, .layers = 4};
  auto p = Make(c);
  uint64_t now = 0;
  // Key 2 (layer 1) used on one early pass, key 3 (layer 1) on every pass; each pass also touches layers 0 and 3.
  for (int pass = 0; pass < 20; ++pass) {
    p->Insert(0, now), p->Touch(0, now++);
    if (pass == 0) p->Insert(2, now), p->Touch(2, now++);
    p->Insert(3, now), p->Touch(3, now++);
    p->Insert(6, now), p->Touch(6, now++);
  }
  EXPECT_EQ(p->Victim(now, [](PolicyKey k) { return k == 2 || k == 3; }), 2u);
  EXPECT_TRUE(MakePolicy({.kind = PolicyKind::kReuse, .num_keys = 8, .reuse_half_life = 0}).status().IsInvalidArgument());
}

// A prefetch may evict a key only when the key is not expected back before the prediction's layer comes: the
// key of the layer right after the current one, used on every pass, is worth more than a prediction two layers on;
// a key used once long ago is not. lru has no estimate and always says yes.
TEST(PolicyTest, ReuseWeighsAPrefetchAgainstItsVictim) {
  PolicyConfig c{.kind = PolicyKind::kReuse, .num_keys = 8, .capacity = 4, .layers = 4};
  auto p = Make(c);
  uint64_t now = 0;
  // Keys (layer = key / 2): 0 (layer 0) on one early pass; 2 (layer 1) on every pass; passes end at layer 0.
  for (int pass = 0; pass < 20; ++pass) {
    if (pass == 0) p->Insert(0, now), p->Touch(0, now++);
    p->Insert(2, now), p->Touch(2, now++);
    p->Insert(6, now), p->Touch(6, now++);
  }
  p->Insert(1, now), p->Touch(1, now++);  // a new pass, now at layer 0
  EXPECT_FALSE(p->WorthPrefetching(/*incoming=*/4, /*victim=*/2));  // layer 2 comes after layer 1
  EXPECT_TRUE(p->WorthPrefetching(/*incoming=*/4, /*victim=*/0));   // used once, a pass or more away
  auto lru = Make({.kind = PolicyKind::kLru, .num_keys = 8, .capacity = 4});
  EXPECT_TRUE(lru->WorthPrefetching(4, 2));
}

// ARC keeps a twice-used set through a one-time scan longer than the cache, which flushes it out of LRU.
TEST(PolicyTest, ArcResistsAScan) {
  std::vector<PolicyKey> seq;
  for (int i = 0; i < 10; ++i) seq.push_back(i % 2);   // hot: 0 and 1
  for (PolicyKey k = 2; k < 10; ++k) seq.push_back(k);  // the scan
  seq.push_back(0);
  seq.push_back(1);
  const AccessTrace t = Singles(seq, 10);
  const SimResult lru = Replay(t, 4, PolicyKind::kLru);
  const SimResult arc = Replay(t, 4, PolicyKind::kArc);
  EXPECT_EQ(lru.hits, 8u);   // the hot pair's repeats only
  EXPECT_EQ(arc.hits, 10u);  // and both again after the scan
}

TEST(PolicyTest, EveryPolicyRespectsTheVeto) {
  for (PolicyKind kind : kAllPolicyKinds) {
    PolicyConfig c{.kind = kind, .num_keys = 8, .capacity = 4};
    c.future = {0, 1, 2, 3, 4, 5, 6, 7};
    auto p = Make(c);
    for (PolicyKey k = 0; k < 4; ++k) p->Insert(k, k), p->Touch(k, k);
    for (PolicyKey allowed = 0; allowed < 4; ++allowed) {
      EXPECT_EQ(p->Victim(4, [&](PolicyKey k) { return k == allowed; }), allowed) << PolicyKindName(kind);
    }
    EXPECT_EQ(p->Victim(4, [](PolicyKey) { return false; }), std::nullopt);
    EXPECT_EQ(p->name(), PolicyKindName(kind));
  }
}

TEST(PolicyTest, BadConfigs) {
  EXPECT_TRUE(MakePolicy({.kind = PolicyKind::kLru, .num_keys = 0}).status().IsInvalidArgument());
  EXPECT_TRUE(MakePolicy({.kind = PolicyKind::kBelady, .num_keys = 4}).status().IsInvalidArgument());
  PolicyConfig out_of_range{.kind = PolicyKind::kBelady, .num_keys = 4};
  out_of_range.future = {1, 4};
  EXPECT_TRUE(MakePolicy(out_of_range).status().IsInvalidArgument());
  PolicyConfig short_traits{.kind = PolicyKind::kTrust, .num_keys = 4};
  short_traits.traits.resize(3);
  EXPECT_TRUE(MakePolicy(short_traits).status().IsInvalidArgument());
  PolicyConfig negative{.kind = PolicyKind::kTrust, .num_keys = 4};
  negative.trust_weights.size = -1;
  EXPECT_TRUE(MakePolicy(negative).status().IsInvalidArgument());
}

TEST(PolicyTest, ParseNamesAndWeights) {
  for (PolicyKind k : kAllPolicyKinds) EXPECT_EQ(*ParsePolicyKind(PolicyKindName(k)), k);
  EXPECT_TRUE(ParsePolicyKind("LRU").status().IsInvalidArgument());
  auto w = ParseTrustWeights("0.5,0.25,0.125,0");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->recency, 0.5);
  EXPECT_EQ(w->convergence, 0.25);
  EXPECT_EQ(w->stability, 0.125);
  EXPECT_EQ(w->size, 0.0);
  for (const char* bad : {"", "1,2,3", "1,2,3,4,5", "1,,3,4", "a,1,1,1", "-1,1,1,1", "1,1,1,1x", "nan,1,1,1"}) {
    EXPECT_TRUE(ParseTrustWeights(bad).status().IsInvalidArgument()) << bad;
  }
}

}  // namespace
}  // namespace es
