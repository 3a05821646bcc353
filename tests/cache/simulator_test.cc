// The trace format (one negative test per bad-input class, round trip), the synthetic generator (shape,
// determinism, locality) and the simulator's batch semantics.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "cache/simulator.h"
#include "cache/trace.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

TEST(TraceTest, ParsesLinesAndSkipsBlankOnes) {
  auto t = ParseTrace(
      "{\"token\":0,\"layer\":1,\"experts\":[3,5],\"weights\":[0.75,0.25]}\n"
      "\n"
      "{\"layer\":0,\"token\":1,\"experts\":[7],\"extra\":\"ignored\"}\r\n");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_EQ(t->size(), 2u);
  EXPECT_EQ((*t)[0].token, 0u);
  EXPECT_EQ((*t)[0].layer, 1u);
  EXPECT_EQ((*t)[0].experts, (std::vector<uint32_t>{3, 5}));
  EXPECT_EQ((*t)[0].weights, (std::vector<double>{0.75, 0.25}));
  EXPECT_EQ((*t)[1].experts, (std::vector<uint32_t>{7}));
  EXPECT_TRUE((*t)[1].weights.empty());
}

TEST(TraceTest, RejectsEachBadInputClassNamingTheLine) {
  const char* good = "{\"token\":0,\"layer\":0,\"experts\":[1]}\n";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"not json", "{\"token\":0,"},
      {"not an object", "[1,2]"},
      {"missing field", "{\"token\":0,\"experts\":[1]}"},
      {"negative token", "{\"token\":-1,\"layer\":0,\"experts\":[1]}"},
      {"fractional layer", "{\"token\":0,\"layer\":0.5,\"experts\":[1]}"},
      {"layer too large", "{\"token\":0,\"layer\":4294967296,\"experts\":[1]}"},
      {"experts not array", "{\"token\":0,\"layer\":0,\"experts\":1}"},
      {"experts empty", "{\"token\":0,\"layer\":0,\"experts\":[]}"},
      {"expert not integer", "{\"token\":0,\"layer\":0,\"experts\":[\"1\"]}"},
      {"duplicate expert", "{\"token\":0,\"layer\":0,\"experts\":[1,1]}"},
      {"weights length", "{\"token\":0,\"layer\":0,\"experts\":[1,2],\"weights\":[1]}"},
      {"weight not number", "{\"token\":0,\"layer\":0,\"experts\":[1],\"weights\":[true]}"},
      {"predicted not array", "{\"token\":0,\"layer\":0,\"experts\":[1],\"predicted\":1}"},
      {"predicted not integer", "{\"token\":0,\"layer\":0,\"experts\":[1],\"predicted\":[0.5]}"},
      {"duplicate prediction", "{\"token\":0,\"layer\":0,\"experts\":[1],\"predicted\":[2,2]}"},
  };
  for (const auto& [what, line] : bad) {
    auto t = ParseTrace(std::string(good) + line + "\n");
    ASSERT_FALSE(t.ok()) << what;
    EXPECT_TRUE(t.status().IsInvalidArgument()) << what;
    EXPECT_NE(t.status().message().find("line 2"), std::string::npos) << what << ": " << t.status().message();
  }
}

TEST(TraceTest, WriteReadRoundTrip) {
  testing::TempDir dir;
  auto steps = MakeSyntheticTrace({.layers = 3, .experts_per_layer = 16, .top_k = 3, .tokens = 50, .seed = 4});
  ASSERT_TRUE(steps.ok());
  ASSERT_TRUE(WriteTrace(dir.Sub("t.jsonl"), *steps).ok());
  ASSERT_TRUE(WriteTrace(dir.Sub("t.jsonl"), *steps).ok());  // replaces
  auto back = ReadTrace(dir.Sub("t.jsonl"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->size(), steps->size());
  for (size_t i = 0; i < steps->size(); ++i) {
    EXPECT_EQ((*back)[i].token, (*steps)[i].token);
    EXPECT_EQ((*back)[i].layer, (*steps)[i].layer);
    EXPECT_EQ((*back)[i].experts, (*steps)[i].experts);
    EXPECT_EQ((*back)[i].weights, (*steps)[i].weights);  // shortest round-trip doubles
  }
  EXPECT_TRUE(ReadTrace(dir.Sub("absent.jsonl")).status().IsNotFound());
}

TEST(TraceTest, PredictionsRoundTripAndAreOptional) {
  TraceStep none{0, 1, {3}, {}, {}};
  TraceStep empty{0, 2, {4}, {}, std::vector<uint32_t>{}};
  TraceStep some{1, 1, {5, 6}, {}, std::vector<uint32_t>{6, 2}};
  EXPECT_EQ(FormatTraceLine(none).find("predicted"), std::string::npos);
  std::string text;
  for (const TraceStep& s : {none, empty, some}) text += FormatTraceLine(s) + "\n";
  auto back = ParseTrace(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->size(), 3u);
  EXPECT_FALSE((*back)[0].predicted.has_value());
  ASSERT_TRUE((*back)[1].predicted.has_value());
  EXPECT_TRUE((*back)[1].predicted->empty());
  EXPECT_EQ((*back)[2].predicted, (std::vector<uint32_t>{6, 2}));
}

TEST(SyntheticTraceTest, ShapeAndDeterminism) {
  SyntheticTraceOptions o{.layers = 5, .experts_per_layer = 20, .top_k = 4, .tokens = 100, .seed = 9};
  auto a = MakeSyntheticTrace(o);
  auto b = MakeSyntheticTrace(o);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), 500u);
  for (size_t i = 0; i < a->size(); ++i) {
    const TraceStep& s = (*a)[i];
    EXPECT_EQ(s.token, i / 5);
    EXPECT_EQ(s.layer, i % 5);
    ASSERT_EQ(s.experts.size(), 4u);
    EXPECT_EQ(std::set<uint32_t>(s.experts.begin(), s.experts.end()).size(), 4u);
    double sum = 0;
    for (size_t j = 0; j < 4; ++j) {
      EXPECT_LT(s.experts[j], 20u);
      EXPECT_GT(s.weights[j], 0);
      if (j > 0) {
        EXPECT_LE(s.weights[j], s.weights[j - 1]);
      }
      sum += s.weights[j];
    }
    EXPECT_NEAR(sum, 1.0, 1e-9);
    EXPECT_EQ(s.experts, (*b)[i].experts);
  }
  o.seed = 10;
  auto c = MakeSyntheticTrace(o);
  ASSERT_TRUE(c.ok());
  bool differs = false;
  for (size_t i = 0; i < a->size(); ++i) differs |= (*a)[i].experts != (*c)[i].experts;
  EXPECT_TRUE(differs);
  EXPECT_TRUE(MakeSyntheticTrace({.experts_per_layer = 4, .top_k = 5}).status().IsInvalidArgument());
  EXPECT_TRUE(MakeSyntheticTrace({.repeat = 1.5}).status().IsInvalidArgument());
  // A degenerate popularity still yields k distinct experts per line.
  auto skewed = MakeSyntheticTrace({.layers = 1, .experts_per_layer = 8, .top_k = 8, .tokens = 10, .zipf_s = 40});
  ASSERT_TRUE(skewed.ok());
  for (const auto& s : *skewed) EXPECT_EQ(std::set<uint32_t>(s.experts.begin(), s.experts.end()).size(), 8u);
}

// With locality an LRU cache of a quarter of the experts hits far more often than a quarter of the time, which
// is all independent uniform routing would give.
TEST(SyntheticTraceTest, HasTemporalLocality) {
  SyntheticTraceOptions o{.layers = 4, .experts_per_layer = 128, .top_k = 8, .tokens = 1000, .seed = 2};
  auto steps = MakeSyntheticTrace(o);
  ASSERT_TRUE(steps.ok());
  auto trace = FlattenTrace(*steps, KeySpace{4, 128});
  ASSERT_TRUE(trace.ok());
  auto lru = SimulatePolicy(*trace, 128, PolicyConfig{.kind = PolicyKind::kLru});
  ASSERT_TRUE(lru.ok());
  EXPECT_GT(lru->hit_rate(), 0.25 + 0.2);
  o.repeat = 0;
  o.zipf_s = 0;  // uniform routing, no reuse
  auto uniform = MakeSyntheticTrace(o);
  ASSERT_TRUE(uniform.ok());
  auto flat = FlattenTrace(*uniform, KeySpace{4, 128});
  ASSERT_TRUE(flat.ok());
  auto lru_uniform = SimulatePolicy(*flat, 128, PolicyConfig{.kind = PolicyKind::kLru});
  ASSERT_TRUE(lru_uniform.ok());
  EXPECT_NEAR(lru_uniform->hit_rate(), 0.25, 0.03);
}

TEST(SimulatorTest, FlattenMapsKeysAndSkipsAbsentExperts) {
  std::vector<TraceStep> steps = {{0, 1, {2, 3}, {}, {}}, {0, 0, {1}, {}, {}}};
  auto t = FlattenTrace(steps, KeySpace{2, 4}, [](PolicyKey k) { return k != 7; });
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->keys, (std::vector<PolicyKey>{6, 1}));  // 1*4+2; 1*4+3 = 7 skipped; 0*4+1
  EXPECT_EQ(t->group_begin, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(t->skipped, 1u);
  EXPECT_FALSE(t->has_predictions());
  // Predictions travel per group, absent experts left out; a step without one has an empty range.
  steps[0].predicted = std::vector<uint32_t>{3, 0};
  auto p = FlattenTrace(steps, KeySpace{2, 4}, [](PolicyKey k) { return k != 7; });
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p->has_predictions());
  EXPECT_EQ(p->predicted, (std::vector<PolicyKey>{4}));  // 1*4+3 = 7 skipped; 1*4+0
  EXPECT_EQ(p->predicted_begin, (std::vector<size_t>{0, 1, 1}));
  std::vector<TraceStep> outside = {{0, 2, {0}, {}, {}}};
  EXPECT_TRUE(FlattenTrace(outside, KeySpace{2, 4}).status().IsInvalidArgument());
  std::vector<TraceStep> wide = {{0, 0, {4}, {}, {}}};
  EXPECT_TRUE(FlattenTrace(wide, KeySpace{2, 4}).status().IsInvalidArgument());
}

// A policy that records what the simulator lets it evict.
class SpyPolicy final : public EvictionPolicy {
 public:
  SpyPolicy(std::unique_ptr<EvictionPolicy> inner, uint32_t num_keys) : inner_(std::move(inner)), num_keys_(num_keys) {}
  std::string_view name() const override { return "spy"; }
  void Insert(PolicyKey k, uint64_t now) override { inner_->Insert(k, now); }
  void Touch(PolicyKey k, uint64_t now) override { inner_->Touch(k, now); }
  void Erase(PolicyKey k) override { inner_->Erase(k); }
  std::optional<PolicyKey> Victim(uint64_t now, const std::function<bool(PolicyKey)>& evictable) override {
    vetoes.emplace_back();
    for (PolicyKey k = 0; k < num_keys_; ++k) {
      if (!evictable(k)) vetoes.back().insert(k);
    }
    return inner_->Victim(now, evictable);
  }
  std::vector<std::set<PolicyKey>> vetoes;

 private:
  std::unique_ptr<EvictionPolicy> inner_;
  uint32_t num_keys_;
};

TEST(SimulatorTest, KeysOfTheCurrentBatchAreNeverVictims) {
  // Capacity 3. Line 2 = {3, 0}: 0 is resident and the least recently used, but it is in the batch, so the
  // miss on 3 must evict 1 instead, as ExpertCache::Acquire pins a batch's hits before reading its misses.
  AccessTrace t;
  t.num_keys = 8;
  t.keys = {0, 1, 2, 3, 0};
  t.group_begin = {0, 3, 5};
  SpyPolicy spy(std::move(MakePolicy({.kind = PolicyKind::kLru, .num_keys = 8})).value(), 8);
  auto r = Simulate(t, 3, spy);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->hits, 1u);  // 0 survived
  EXPECT_EQ(r->misses, 4u);
  EXPECT_EQ(r->evictions, 1u);
  ASSERT_EQ(spy.vetoes.size(), 1u);
  EXPECT_EQ(spy.vetoes[0], (std::set<PolicyKey>{0, 3}));

  AccessTrace wide;
  wide.num_keys = 8;
  wide.keys = {0, 1, 2, 3};
  wide.group_begin = {0, 4};
  EXPECT_TRUE(SimulatePolicy(wide, 3, {.kind = PolicyKind::kLru}).status().IsResourceExhausted());
  EXPECT_TRUE(SimulatePolicy(wide, 0, {.kind = PolicyKind::kLru}).status().IsInvalidArgument());
}

// A trace of one expert per line with the given predictions per line.
AccessTrace PredictedTrace(std::vector<PolicyKey> keys, std::vector<std::vector<PolicyKey>> predicted) {
  AccessTrace t;
  t.num_keys = 8;
  t.keys = std::move(keys);
  for (size_t g = 0; g <= t.keys.size(); ++g) t.group_begin.push_back(g);
  for (const auto& p : predicted) {
    t.predicted_begin.push_back(t.predicted.size());
    t.predicted.insert(t.predicted.end(), p.begin(), p.end());
  }
  t.predicted_begin.push_back(t.predicted.size());
  return t;
}

TEST(SimulatorTest, RightPredictionsBecomeHitsAndEveryReadIsCounted) {
  // Capacity 2, four lines that never repeat: without prefetch every access misses. Each line predicted right
  // before it: the read lands while the previous line (pinned) computes, evicting the line before that.
  AccessTrace t = PredictedTrace({0, 4, 1, 5}, {{}, {4}, {1}, {5}});
  auto plain = SimulatePolicy(t, 2, {.kind = PolicyKind::kLru});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->hits, 0u);
  EXPECT_EQ(plain->prefetches, 0u);
  auto r = SimulatePolicy(t, 2, {.kind = PolicyKind::kLru}, {.prefetch = true});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->accesses, 4u);
  EXPECT_EQ(r->hits, 3u);
  EXPECT_EQ(r->misses, 1u);
  EXPECT_EQ(r->prefetches, 3u);
  EXPECT_EQ(r->prefetch_hits, 3u);
  EXPECT_EQ(r->prefetch_wasted, 0u);
  EXPECT_DOUBLE_EQ(r->reads_per_access(), 1.0);  // prefetch hides reads; it does not save them

  // A resident prediction is not read again.
  AccessTrace again = PredictedTrace({0, 0}, {{}, {0}});
  auto a = SimulatePolicy(again, 2, {.kind = PolicyKind::kLru}, {.prefetch = true});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->prefetches, 0u);
  EXPECT_EQ(a->hits, 1u);

  // A wrong guess is read, demoted after its line, and the first victim of the next read: wasted.
  AccessTrace wrong = PredictedTrace({0, 4, 1, 0}, {{}, {6}, {1}, {}});
  auto w = SimulatePolicy(wrong, 2, {.kind = PolicyKind::kLru}, {.prefetch = true});
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->prefetches, 2u);
  EXPECT_EQ(w->prefetch_hits, 1u);
  EXPECT_EQ(w->prefetch_wasted, 1u);
  // 0 is evicted by 4's miss (6 is an unused prefetch but not yet demoted; lru takes the older 0), then 6 goes
  // first for 1, so line 4 finds 0 gone: 1 hit of 4.
  EXPECT_EQ(w->hits, 1u);

  AccessTrace bare = t;
  bare.predicted.clear();
  bare.predicted_begin.clear();
  EXPECT_TRUE(SimulatePolicy(bare, 2, {.kind = PolicyKind::kLru}, {.prefetch = true}).status().IsInvalidArgument());
}

TEST(SimulatorTest, APolicyCanRefuseAPrefetchItsVictimOutranks) {
  // reuse refuses to evict an expert expected back before the predicted one's layer: with every slot holding
  // the layer-0 experts that come back next token, a prediction for a cold layer-1 expert is dropped.
  AccessTrace t;
  t.num_keys = 8;
  t.layers = 2;
  // Keys 0..3 are layer 0, 4..7 layer 1. Tokens use {0, 1} at layer 0 and {4} at layer 1, many times.
  for (int token = 0; token < 20; ++token) {
    t.group_begin.push_back(t.keys.size());
    t.keys.insert(t.keys.end(), {0, 1});
    t.predicted_begin.push_back(t.predicted.size());
    t.group_begin.push_back(t.keys.size());
    t.keys.push_back(4);
    t.predicted_begin.push_back(t.predicted.size());
    t.predicted.push_back(token == 19 ? 5 : 4);  // the last prediction is a cold expert
  }
  t.group_begin.push_back(t.keys.size());
  t.predicted_begin.push_back(t.predicted.size());
  auto r = SimulatePolicy(t, 3, {.kind = PolicyKind::kReuse}, {.prefetch = true});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->prefetches, 1u);  // 4, into a free slot at the first token; 5 would evict 0, 1 or 4
  auto lru = SimulatePolicy(t, 3, {.kind = PolicyKind::kLru}, {.prefetch = true});
  ASSERT_TRUE(lru.ok());
  EXPECT_EQ(lru->prefetches, 2u);  // lru has no estimate and takes 5 too
}

}  // namespace
}  // namespace es
