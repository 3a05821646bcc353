// Continuous batching on the tiny model: Model::ForwardBatch gives each sequence what Forward gives it alone and
// reads each routed expert once per step; BatchEngine generates what GenerateIds generates for each prompt alone,
// whatever the step's row budget and whenever sequences join, and keeps its slot and KV-budget limits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <set>

#include "compute/batch_engine.h"
#include "compute/generator.h"
#include "compute/model.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/reference_cases.h"
#include "tests/util/temp_dir.h"
#include "tests/util/tensors.h"

namespace es {
namespace {

class BatchEngineTest : public testing::SuiteStoreTest {
 protected:
  static void SetUpTestSuite() {
    if (!testing::DataPresent(testing::kReferenceCases)) return;
    Status s = OpenSuiteStore({{"tiny", testing::kTinyModel}});
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  static void TearDownTestSuite() { CloseSuiteStore(); }
  void SetUp() override {
    ES_REQUIRE_DATA(testing::kReferenceCases);
    ASSERT_NE(store_, nullptr);
    model_ = Load("tiny");
    ASSERT_NE(model_, nullptr);
    auto e = DirectExpertProvider::Create(*store_, "tiny");
    ASSERT_TRUE(e.ok());
    experts_ = std::move(e).value();
    for (const auto& c : testing::LoadReferenceCases()) prompts_.push_back(c.ids);
    ASSERT_GE(prompts_.size(), 3u);
  }

  // Each prompt alone, as generate runs it.
  std::vector<int32_t> Alone(const std::vector<int32_t>& prompt, uint32_t max_tokens, const SamplerOptions& sampler) {
    auto ids = GenerateIds(*model_, *experts_, prompt, max_tokens, {}, sampler, {});
    EXPECT_TRUE(ids.ok()) << ids.status().ToString();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  std::unique_ptr<Model> model_;
  std::unique_ptr<DirectExpertProvider> experts_;
  std::vector<std::vector<int32_t>> prompts_;
};

TEST_F(BatchEngineTest, ForwardBatchEqualsForwardOfEachSequence) {
  const ModelConfig& c = model_->config();
  const size_t H = c.hidden;
  // Three sequences at different points: one fresh, one three tokens in, one decoding a single token.
  std::deque<KvCache> alone, batched;
  for (int i = 0; i < 3; ++i) {
    alone.emplace_back(c, 64);
    batched.emplace_back(c, 64);
  }
  std::vector<float> hidden;
  const std::vector<int32_t>& a = prompts_[0];
  const std::vector<int32_t>& b = prompts_[1];
  const std::vector<int32_t>& d = prompts_[2];
  for (std::deque<KvCache>* kvs : {&alone, &batched}) {
    ASSERT_TRUE(model_->Forward(std::span(b).first(3), (*kvs)[1], *experts_, {}, hidden).ok());
    ASSERT_TRUE(model_->Forward(std::span(d).first(d.size() - 1), (*kvs)[2], *experts_, {}, hidden).ok());
  }
  std::vector<std::span<const int32_t>> parts = {a, std::span(b).subspan(3), std::span(d).last(1)};
  std::vector<float> expected;
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(model_->Forward(parts[i], alone[i], *experts_, {}, hidden).ok());
    expected.insert(expected.end(), hidden.begin(), hidden.begin() + static_cast<std::ptrdiff_t>(parts[i].size() * H));
  }
  const uint64_t reads_alone = experts_->counters().misses;
  std::vector<SequenceInput> inputs;
  for (size_t i = 0; i < 3; ++i) inputs.push_back({parts[i], &batched[i]});
  ASSERT_TRUE(model_->ForwardBatch(inputs, *experts_, {}, hidden).ok());
  ASSERT_EQ(hidden.size(), expected.size());
  EXPECT_LT(testing::RelativeL2(hidden, expected), 1e-5);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(batched[i].length(), alone[i].length());

  // Each expert routed by any row is read once per layer: fewer reads than the sequences alone, exactly the union.
  ForwardOptions count;
  std::vector<std::set<int32_t>> routed(c.num_layers);
  count.observer = [&](const RoutingEvent& e) { routed[e.layer].insert(e.experts.begin(), e.experts.end()); };
  for (size_t i = 0; i < 3; ++i) batched[i].Reset();
  const uint64_t before = experts_->counters().misses;
  ASSERT_TRUE(model_->ForwardBatch(inputs, *experts_, count, hidden).ok());
  uint64_t distinct = 0;
  for (const auto& r : routed) distinct += r.size();
  EXPECT_EQ(experts_->counters().misses - before, distinct);
  EXPECT_LT(distinct, reads_alone - 0);  // the sequences alone read their common experts again
}

TEST_F(BatchEngineTest, BadBatchesAreErrors) {
  const ModelConfig& c = model_->config();
  KvCache kv(c, 4);
  std::vector<float> hidden;
  std::vector<int32_t> two = {1, 2};
  std::vector<SequenceInput> shared = {{two, &kv}, {two, &kv}};
  EXPECT_TRUE(model_->ForwardBatch(shared, *experts_, {}, hidden).IsInvalidArgument());
  std::vector<SequenceInput> none;
  EXPECT_TRUE(model_->ForwardBatch(none, *experts_, {}, hidden).IsInvalidArgument());
  KvCache other(c, 1);
  std::vector<SequenceInput> overflow = {{two, &kv}, {two, &other}};
  EXPECT_TRUE(model_->ForwardBatch(overflow, *experts_, {}, hidden).IsResourceExhausted());
  EXPECT_EQ(kv.length(), 0u);
}

// Sequences joining at different steps, prefilled in chunks of a small step budget, each generate what they
// generate alone, greedy and sampled.
TEST_F(BatchEngineTest, SequencesGenerateWhatTheyGenerateAlone) {
  for (size_t step_tokens : {size_t{4}, size_t{512}}) {
    BatchEngineOptions o;
    o.max_sequences = 4;
    o.step_tokens = step_tokens;
    auto engine = BatchEngine::Create(*model_, *experts_, o);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    struct Want {
      std::vector<int32_t> prompt;
      SamplerOptions sampler;
      uint32_t max_tokens;
    };
    std::vector<Want> wants;
    for (size_t i = 0; i < 4; ++i) {
      SamplerOptions s;
      if (i % 2 == 1) {
        s.temperature = 0.8f;
        s.top_p = 0.95f;
        s.seed = 7 + i;
      }
      wants.push_back({prompts_[i % prompts_.size()], s, static_cast<uint32_t>(6 + 3 * i)});
    }
    std::vector<std::optional<Result<SequenceResult>>> results(wants.size());
    std::vector<std::vector<int32_t>> streamed(wants.size());
    auto add = [&](size_t i) {
      SequenceSpec spec;
      spec.prompt = wants[i].prompt;
      spec.max_tokens = wants[i].max_tokens;
      spec.sampler = wants[i].sampler;
      spec.on_token = [&, i](const SampledToken& t) {
        streamed[i].push_back(t.id);
        return Status::Ok();
      };
      spec.on_finish = [&, i](Result<SequenceResult> r) { results[i] = std::move(r); };
      ASSERT_TRUE((*engine)->Add(std::move(spec)).ok());
    };
    add(0);
    add(1);
    ASSERT_TRUE((*engine)->Step().ok());
    ASSERT_TRUE((*engine)->Step().ok());
    add(2);
    ASSERT_TRUE((*engine)->Step().ok());
    add(3);
    while ((*engine)->active() > 0) ASSERT_TRUE((*engine)->Step().ok());
    for (size_t i = 0; i < wants.size(); ++i) {
      ASSERT_TRUE(results[i].has_value()) << i;
      ASSERT_TRUE(results[i]->ok()) << results[i]->status().ToString();
      const SequenceResult& r = **results[i];
      EXPECT_EQ(r.ids, Alone(wants[i].prompt, wants[i].max_tokens, wants[i].sampler)) << "sequence " << i;
      EXPECT_EQ(r.ids, streamed[i]);
      EXPECT_EQ(r.finish_reason, "length");
      EXPECT_EQ(r.prompt_tokens, wants[i].prompt.size());
      EXPECT_GT(r.first_token_seconds, 0);
    }
    EXPECT_EQ((*engine)->kv_bytes_in_use(), 0u);
    // With a budget of 4 rows no step held more than 4; with 512 the whole prompts ran in one step each.
    const BatchEngineCounters& k = (*engine)->counters();
    EXPECT_LE(k.rows, k.steps * step_tokens);
  }
}

TEST_F(BatchEngineTest, StopsCancelsAndReportsLogprobs) {
  BatchEngineOptions o;
  auto engine = BatchEngine::Create(*model_, *experts_, o);
  ASSERT_TRUE(engine.ok());
  const std::vector<int32_t>& prompt = prompts_[0];
  const std::vector<int32_t> greedy = Alone(prompt, 4, {});
  ASSERT_EQ(greedy.size(), 4u);

  std::optional<Result<SequenceResult>> stopped, cancelled, logged, empty;
  SequenceSpec stop;
  stop.prompt = prompt;
  stop.max_tokens = 4;
  size_t cut = 1;  // the first token that did not come earlier: the stop token there
  while (cut < greedy.size() && std::find(greedy.begin(), greedy.begin() + static_cast<std::ptrdiff_t>(cut), greedy[cut]) !=
                                    greedy.begin() + static_cast<std::ptrdiff_t>(cut)) {
    ++cut;
  }
  ASSERT_LT(cut, greedy.size());
  stop.stop = {greedy[cut]};
  stop.on_finish = [&](Result<SequenceResult> r) { stopped = std::move(r); };
  ASSERT_TRUE((*engine)->Add(std::move(stop)).ok());

  int seen = 0;
  SequenceSpec cancel;
  cancel.prompt = prompt;
  cancel.max_tokens = 4;
  cancel.on_token = [&](const SampledToken&) {
    ++seen;
    return Status::Ok();
  };
  cancel.should_stop = [&] { return seen >= 1; };
  cancel.on_finish = [&](Result<SequenceResult> r) { cancelled = std::move(r); };
  ASSERT_TRUE((*engine)->Add(std::move(cancel)).ok());

  std::vector<SampledToken> tokens;
  SequenceSpec logprobs;
  logprobs.prompt = prompt;
  logprobs.max_tokens = 2;
  logprobs.top_logprobs = 3;
  logprobs.on_token = [&](const SampledToken& t) {
    tokens.push_back(t);
    return Status::Ok();
  };
  logprobs.on_finish = [&](Result<SequenceResult> r) { logged = std::move(r); };
  ASSERT_TRUE((*engine)->Add(std::move(logprobs)).ok());

  SequenceSpec none;
  none.prompt = prompt;
  none.max_tokens = 0;
  none.on_finish = [&](Result<SequenceResult> r) { empty = std::move(r); };
  ASSERT_TRUE((*engine)->Add(std::move(none)).ok());

  while ((*engine)->active() > 0) ASSERT_TRUE((*engine)->Step().ok());
  ASSERT_TRUE(stopped && stopped->ok());
  EXPECT_EQ((*stopped)->finish_reason, "stop");
  EXPECT_EQ((*stopped)->ids, std::vector<int32_t>(greedy.begin(), greedy.begin() + static_cast<std::ptrdiff_t>(cut)));
  ASSERT_TRUE(cancelled && cancelled->ok());
  EXPECT_EQ((*cancelled)->finish_reason, "cancelled");
  EXPECT_EQ((*cancelled)->ids.size(), 1u);
  ASSERT_TRUE(empty && empty->ok());
  EXPECT_EQ((*empty)->finish_reason, "length");
  EXPECT_TRUE((*empty)->ids.empty());

  // The greedy token is the most likely; its log-probability is the model's, as LastLogits gives it.
  ASSERT_TRUE(logged && logged->ok());
  ASSERT_EQ(tokens.size(), 2u);
  auto logits = LastLogits(*model_, *experts_, prompt, {});
  ASSERT_TRUE(logits.ok());
  const double nll = TokenNll(logits->data(), logits->size(), greedy[0]);
  EXPECT_EQ(tokens[0].id, greedy[0]);
  EXPECT_NEAR(tokens[0].logprob, -nll, 1e-4);
  ASSERT_EQ(tokens[0].top.size(), 3u);
  EXPECT_EQ(tokens[0].top[0].id, greedy[0]);
  EXPECT_FLOAT_EQ(tokens[0].top[0].logprob, tokens[0].logprob);
  EXPECT_GE(tokens[0].top[0].logprob, tokens[0].top[1].logprob);
  EXPECT_GE(tokens[0].top[1].logprob, tokens[0].top[2].logprob);
  double mass = 0;
  for (const TokenLogprob& t : tokens[0].top) mass += std::exp(t.logprob);
  EXPECT_LE(mass, 1.0 + 1e-5);
}

TEST_F(BatchEngineTest, SlotsAndKvBudgetLimitAdmission) {
  const ModelConfig& c = model_->config();
  const std::vector<int32_t>& prompt = prompts_[0];
  const size_t one = BatchEngine::KvBytes(c, prompt.size() + 4);
  EXPECT_EQ(one, 2 * (prompt.size() + 4) * c.num_layers * c.num_kv_heads * c.head_dim * sizeof(float));
  BatchEngineOptions o;
  o.max_sequences = 3;
  o.kv_budget_bytes = 2 * one;
  auto engine = BatchEngine::Create(*model_, *experts_, o);
  ASSERT_TRUE(engine.ok());
  auto spec = [&](uint32_t max_tokens) {
    SequenceSpec s;
    s.prompt = prompt;
    s.max_tokens = max_tokens;
    return s;
  };
  ASSERT_TRUE((*engine)->Add(spec(4)).ok());
  ASSERT_TRUE((*engine)->Add(spec(4)).ok());
  EXPECT_FALSE((*engine)->CanAdmit(prompt.size(), 4));
  EXPECT_TRUE((*engine)->Add(spec(4)).IsResourceExhausted());  // the KV budget is full
  EXPECT_EQ((*engine)->kv_bytes_in_use(), 2 * one);
  const auto big = static_cast<uint32_t>(3 * (prompt.size() + 4));  // three times one sequence's KV cache
  EXPECT_FALSE((*engine)->EverFits(prompt.size(), big));
  EXPECT_TRUE((*engine)->Add(spec(big)).IsInvalidArgument());
  while ((*engine)->active() > 0) ASSERT_TRUE((*engine)->Step().ok());
  EXPECT_TRUE((*engine)->CanAdmit(prompt.size(), 4));

  SequenceSpec empty;
  EXPECT_TRUE((*engine)->Add(std::move(empty)).IsInvalidArgument());
  SequenceSpec bad = spec(1);
  bad.prompt[0] = static_cast<int32_t>(c.vocab);
  EXPECT_TRUE((*engine)->Add(std::move(bad)).IsInvalidArgument());
  SequenceSpec hot = spec(1);
  hot.sampler.temperature = -1;
  EXPECT_TRUE((*engine)->Add(std::move(hot)).IsInvalidArgument());
  BatchEngineOptions tight;
  tight.max_sequences = 8;
  tight.step_tokens = 4;
  EXPECT_TRUE(BatchEngine::Create(*model_, *experts_, tight).status().IsInvalidArgument());

  // An error from on_token fails that sequence alone.
  std::optional<Result<SequenceResult>> failed, fine;
  SequenceSpec f = spec(3);
  f.on_token = [](const SampledToken&) { return Status::IOError("the client's socket broke"); };
  f.on_finish = [&](Result<SequenceResult> r) { failed = std::move(r); };
  SequenceSpec g = spec(3);
  g.on_finish = [&](Result<SequenceResult> r) { fine = std::move(r); };
  ASSERT_TRUE((*engine)->Add(std::move(f)).ok());
  ASSERT_TRUE((*engine)->Add(std::move(g)).ok());
  while ((*engine)->active() > 0) ASSERT_TRUE((*engine)->Step().ok());
  ASSERT_TRUE(failed.has_value());
  EXPECT_TRUE(failed->status().IsIOError());
  ASSERT_TRUE(fine && fine->ok());
  EXPECT_EQ((*fine)->ids.size(), 3u);
}

}  // namespace
}  // namespace es
