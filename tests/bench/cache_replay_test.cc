// The cache policy replay: hit rates identical to the simulator's on the same trace and capacity, the size in
// whole slots, absent experts skipped, and errors that name the option fields.
#include <gtest/gtest.h>

#include <iterator>
#include <memory>
#include <utility>
#include <vector>

#include "bench/measure/cache_replay.h"
#include "cache/expert_cache.h"
#include "cache/simulator.h"
#include "tests/util/expert_model.h"
#include "tests/util/temp_dir.h"

namespace es::bench {
namespace {

constexpr uint32_t kLayers = 2;
constexpr uint32_t kExperts = 16;
constexpr uint32_t kTopK = 2;
constexpr uint32_t kTokens = 300;
constexpr uint64_t kSeed = 7;

class CacheReplayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.Sub("store"), StoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    es::testing::TestModelSpec spec{.name = "m", .layers = kLayers, .experts = kExperts, .top_k = kTopK};
    spec.payload_bytes = [](uint32_t, uint32_t) { return uint64_t{64} << 10; };
    spec.missing = {{1, 3}};
    // Distinct trust traits, so that the trust policy ranks experts differently from lru.
    spec.trust = [](uint32_t layer, uint32_t expert) {
      return std::pair<double, double>{(expert % 4) / 4.0, ((expert + layer) % 3) / 3.0};
    };
    ASSERT_TRUE(es::testing::WriteTestModel(*store_, spec).ok());
    auto experts = ModelExperts::Load(store_->catalog(), "m");
    ASSERT_TRUE(experts.ok()) << experts.status().ToString();
    experts_ = std::make_unique<ModelExperts>(std::move(experts).value());
  }

  es::testing::TempDir dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<ModelExperts> experts_;
};

TEST_F(CacheReplayTest, HitRatesAreTheSimulatorsOnTheSameTrace) {
  auto steps = SyntheticTraceFor(*experts_, kTokens, kSeed);
  ASSERT_TRUE(steps.ok()) << steps.status().ToString();
  EXPECT_EQ(steps->size(), kTokens * kLayers);
  for (const TraceStep& s : *steps) EXPECT_EQ(s.experts.size(), kTopK);

  CacheReplayOptions options;
  options.cache.pct = 25;
  auto r = ReplayCachePolicies(*experts_, *steps, options);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->capacity_experts, 7u);  // 25% of the 31 experts present, in whole slots
  EXPECT_EQ(r->cache_bytes, uint64_t{7} * experts_->max_record_bytes());

  auto trace = FlattenTrace(*steps, experts_->keys(), [&](PolicyKey k) { return experts_->Find(k) != nullptr; });
  ASSERT_TRUE(trace.ok());
  EXPECT_EQ(r->accesses, trace->keys.size());
  EXPECT_EQ(r->skipped_absent, trace->skipped);
  EXPECT_GT(r->skipped_absent, 0u);
  ASSERT_EQ(r->policies.size(), std::size(kAllPolicyKinds));
  for (size_t i = 0; i < r->policies.size(); ++i) {
    const PolicyReplay& p = r->policies[i];
    EXPECT_EQ(p.policy, kAllPolicyKinds[i]);
    PolicyConfig config;
    config.kind = p.policy;
    config.traits = experts_->Traits();
    auto sim = SimulatePolicy(*trace, r->capacity_experts, config);
    ASSERT_TRUE(sim.ok());
    EXPECT_EQ(p.sim.hits, sim->hits) << PolicyKindName(p.policy);
    EXPECT_EQ(p.sim.misses, sim->misses) << PolicyKindName(p.policy);
    EXPECT_EQ(p.sim.hit_rate(), sim->hit_rate()) << PolicyKindName(p.policy);
    EXPECT_LE(p.sim.hits, r->policies.back().sim.hits) << "belady is the ceiling";
  }
}

// The live cache (the store's reader, no prefetch) makes the simulator's decisions: same hits and misses for every
// online policy, every miss one record read; belady, which needs the future, has no live replay. One expert per
// line: within a line the cache touches its hits before its misses come in, where the simulator goes in trace
// order, which can move a few hits either way.
TEST_F(CacheReplayTest, TheLiveCacheCountsWhatTheSimulatorCounts) {
  auto lines = SyntheticTraceFor(*experts_, kTokens, kSeed);
  ASSERT_TRUE(lines.ok());
  std::vector<TraceStep> singles;
  for (const TraceStep& s : *lines) {
    for (uint32_t e : s.experts) singles.push_back({s.token, s.layer, {e}, {}, {}});
  }
  const std::vector<TraceStep>* steps = &singles;
  CacheReplayOptions options;
  options.cache.pct = 25;
  options.reader = true;
  EXPECT_TRUE(ReplayCachePolicies(*experts_, *steps, options).status().IsInvalidArgument());  // no store
  auto r = ReplayCachePolicies(*experts_, *steps, options, store_.get());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (const PolicyReplay& p : r->policies) {
    if (p.policy == PolicyKind::kBelady) {
      EXPECT_FALSE(p.reader.has_value());
      continue;
    }
    ASSERT_TRUE(p.reader.has_value()) << PolicyKindName(p.policy);
    EXPECT_EQ(p.reader->hits, p.sim.hits) << PolicyKindName(p.policy);
    EXPECT_EQ(p.reader->misses, p.sim.misses) << PolicyKindName(p.policy);
    EXPECT_EQ(p.reader->bytes_read, p.sim.misses * experts_->max_record_bytes()) << PolicyKindName(p.policy);
    EXPECT_GT(p.reader->seconds, 0);
  }
}

TEST_F(CacheReplayTest, ReplaysTheGivenPoliciesInOrderWithTheGivenWeights) {
  auto steps = SyntheticTraceFor(*experts_, kTokens, kSeed);
  ASSERT_TRUE(steps.ok());
  CacheReplayOptions options;
  options.cache.mb = 1;
  options.policies = {PolicyKind::kBelady, PolicyKind::kTrust};
  options.trust_weights = TrustWeights{.recency = 0, .convergence = 1, .stability = 0, .size = 0};
  auto r = ReplayCachePolicies(*experts_, *steps, options);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->capacity_experts, ExpertCache::SlotsFor(*experts_, uint64_t{1} << 20));
  ASSERT_EQ(r->policies.size(), 2u);
  EXPECT_EQ(r->policies[0].policy, PolicyKind::kBelady);
  EXPECT_EQ(r->policies[1].policy, PolicyKind::kTrust);

  auto trace = FlattenTrace(*steps, experts_->keys(), [&](PolicyKey k) { return experts_->Find(k) != nullptr; });
  ASSERT_TRUE(trace.ok());
  PolicyConfig config;
  config.kind = PolicyKind::kTrust;
  config.traits = experts_->Traits();
  config.trust_weights = options.trust_weights;
  auto sim = SimulatePolicy(*trace, r->capacity_experts, config);
  ASSERT_TRUE(sim.ok());
  EXPECT_EQ(r->policies[1].sim.hits, sim->hits);
}

TEST_F(CacheReplayTest, ErrorsNameTheOptionFields) {
  auto steps = SyntheticTraceFor(*experts_, kTokens, kSeed);
  ASSERT_TRUE(steps.ok());
  CacheReplayOptions none;
  auto r = ReplayCachePolicies(*experts_, *steps, none);
  EXPECT_TRUE(r.status().IsInvalidArgument());
  EXPECT_NE(r.status().message().find("`cache_mb`"), std::string::npos) << r.status().ToString();

  CacheReplayOptions too_big;
  too_big.cache.pct = 150;
  r = ReplayCachePolicies(*experts_, *steps, too_big);
  EXPECT_NE(r.status().message().find("`cache_pct`"), std::string::npos) << r.status().ToString();

  CacheReplayOptions no_policies;
  no_policies.cache.pct = 25;
  no_policies.policies.clear();
  r = ReplayCachePolicies(*experts_, *steps, no_policies);
  EXPECT_NE(r.status().message().find("`policies`"), std::string::npos) << r.status().ToString();

  auto t = SyntheticTraceFor(*experts_, 0, kSeed);
  EXPECT_TRUE(t.status().IsInvalidArgument());
  EXPECT_NE(t.status().message().find("`tokens`"), std::string::npos) << t.status().ToString();

  // A step of another model's shape.
  TraceStep foreign;
  foreign.layer = kLayers;
  foreign.experts = {0};
  CacheReplayOptions ok;
  ok.cache.pct = 25;
  EXPECT_TRUE(ReplayCachePolicies(*experts_, {&foreign, 1}, ok).status().IsInvalidArgument());
}

}  // namespace
}  // namespace es::bench
