// The sampler's penalties and min-p against a direct computation of their definitions, the sampling defaults read
// from generation_config.json, the stop filter, and the standard error calibration keeps per expert.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "compute/calibration.h"
#include "compute/sampler.h"
#include "compute/stop_filter.h"

namespace es {
namespace {

// The penalised logits by the definitions (transformers' repetition penalty, OpenAI's presence and frequency).
std::vector<float> Penalised(std::vector<float> logits, const std::vector<int32_t>& window, const SamplerOptions& o) {
  std::map<int32_t, int> counts;
  for (int32_t t : window) ++counts[t];
  for (const auto& [t, n] : counts) {
    float& l = logits[static_cast<size_t>(t)];
    l = l > 0 ? l / o.repetition_penalty : l * o.repetition_penalty;
    l -= o.presence_penalty + o.frequency_penalty * static_cast<float>(n);
  }
  return logits;
}

TEST(SamplerTest, GreedyWithPenaltiesPicksTheArgmaxOfThePenalisedLogits) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0, 2);
  for (int trial = 0; trial < 200; ++trial) {
    SamplerOptions o;
    o.repetition_penalty = 1.0f + static_cast<float>(trial % 5) * 0.3f;
    o.presence_penalty = static_cast<float>(trial % 3) * 0.5f;
    o.frequency_penalty = static_cast<float>(trial % 4) * 0.25f;
    o.penalty_last_n = 6;
    std::vector<float> logits(32);
    for (float& l : logits) l = normal(rng);
    std::vector<int32_t> seen(10);
    for (int32_t& t : seen) t = static_cast<int32_t>(rng() % 8);  // repeats among the first 8 ids
    auto s = Sampler::Create(o);
    ASSERT_TRUE(s.ok());
    for (int32_t t : seen) s->Accept(t);
    // Only the last penalty_last_n tokens count.
    const std::vector<int32_t> window(seen.end() - 6, seen.end());
    const std::vector<float> want = Penalised(logits, window, o);
    EXPECT_EQ(s->Sample(logits), std::max_element(want.begin(), want.end()) - want.begin()) << trial;
  }
}

TEST(SamplerTest, RepetitionPenaltyStopsALoop) {
  // Token 3 is the most likely; once seen, a strong penalty moves the choice to the runner-up.
  const std::vector<float> logits = {0.1f, 0.2f, 1.5f, 2.0f};
  SamplerOptions o;
  o.repetition_penalty = 2.0f;
  auto s = Sampler::Create(o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->Sample(logits), 3);
  s->Accept(3);
  EXPECT_EQ(s->Sample(logits), 2);
}

TEST(SamplerTest, MinPKeepsOnlyTokensNearTheTop) {
  // Probabilities after softmax at temperature 1: token 0 dominates; min_p 0.5 leaves only tokens at least half
  // as likely, here token 0 and token 1.
  const std::vector<float> logits = {3.0f, 2.5f, 0.0f, -1.0f};
  SamplerOptions o;
  o.temperature = 1.0f;
  o.min_p = 0.5f;
  for (uint64_t seed = 0; seed < 300; ++seed) {
    o.seed = seed;
    auto s = Sampler::Create(o);
    ASSERT_TRUE(s.ok());
    const int32_t t = s->Sample(logits);
    EXPECT_TRUE(t == 0 || t == 1) << t;
  }
}

TEST(SamplerTest, OutOfRangeSettingsNameTheirField) {
  for (auto [set, field] : std::vector<std::pair<void (*)(SamplerOptions&), const char*>>{
           {[](SamplerOptions& o) { o.min_p = 1.5f; }, "`min_p`"},
           {[](SamplerOptions& o) { o.repetition_penalty = 0.0f; }, "`repetition_penalty`"},
           {[](SamplerOptions& o) { o.presence_penalty = 3.0f; }, "`presence_penalty`"},
           {[](SamplerOptions& o) { o.frequency_penalty = -2.5f; }, "`frequency_penalty`"},
           {[](SamplerOptions& o) { o.top_p = 0.0f; }, "`top_p`"}}) {
    SamplerOptions o;
    set(o);
    auto s = Sampler::Create(o);
    ASSERT_FALSE(s.ok()) << field;
    EXPECT_NE(s.status().message().find(field), std::string::npos) << s.status().message();
  }
}

TEST(SamplerDefaultsTest, GenerationConfigAsTransformersReadsIt) {
  auto tiny = SamplerDefaultsFromGenerationConfig(
      R"({"do_sample": true, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "eos_token_id": 4093})");
  ASSERT_TRUE(tiny.ok()) << tiny.status().ToString();
  EXPECT_FLOAT_EQ(tiny->temperature, 0.7f);
  EXPECT_FLOAT_EQ(tiny->top_p, 0.9f);
  EXPECT_EQ(tiny->top_k, 40u);
  // do_sample absent or false: greedy, whatever temperature says; the repetition penalty still applies.
  auto greedy = SamplerDefaultsFromGenerationConfig(R"({"temperature": 0.7, "repetition_penalty": 1.1})");
  ASSERT_TRUE(greedy.ok());
  EXPECT_EQ(greedy->temperature, 0.0f);
  EXPECT_FLOAT_EQ(greedy->repetition_penalty, 1.1f);
  // do_sample without a temperature samples at 1.
  EXPECT_EQ(SamplerDefaultsFromGenerationConfig(R"({"do_sample": true})")->temperature, 1.0f);
  EXPECT_EQ(SamplerDefaultsFromGenerationConfig("")->temperature, 0.0f);
  EXPECT_FALSE(SamplerDefaultsFromGenerationConfig("[1]").ok());
  EXPECT_FALSE(SamplerDefaultsFromGenerationConfig(R"({"do_sample": true, "top_p": 2})").ok());
  // A request's settings override the model's, one by one.
  SamplerRequest r;
  r.temperature = 0.0f;
  const SamplerOptions merged = r.Over(*tiny);
  EXPECT_EQ(merged.temperature, 0.0f);
  EXPECT_EQ(merged.top_k, 40u);
}

TEST(StopFilterTest, HoldsBackAPossibleStopAndCutsAtIt) {
  StopFilter f({"END"});
  EXPECT_EQ(f.Push("abc E"), "abc ");  // "E" may begin END
  EXPECT_EQ(f.Push("N"), "");
  EXPECT_EQ(f.Push("Dx"), "");
  EXPECT_TRUE(f.stopped());
  StopFilter g({"END"});
  EXPECT_EQ(g.Push("abc E"), "abc ");
  EXPECT_EQ(g.Push("x"), "Ex");
  EXPECT_EQ(g.Flush(), "");
}

TEST(CalibrationTest, StandardErrorOfTheMeanIncrease) {
  ExpertContribution c;
  for (double x : {1.0, 2.0, 3.0, 4.0}) {
    ++c.samples;
    c.nll_increase_sum += x;
    c.nll_increase_sq_sum += x * x;
  }
  // Sample variance of 1..4 is 5/3; the standard error is sqrt(5/3 / 4).
  EXPECT_NEAR(c.increase_stderr(), std::sqrt(5.0 / 12.0), 1e-12);
  ExpertContribution one;
  one.samples = 1;
  one.nll_increase_sum = 2;
  one.nll_increase_sq_sum = 4;
  EXPECT_EQ(one.increase_stderr(), 0.0);
}

}  // namespace
}  // namespace es
