// The forward pass against the reference: for every case in tiny-qwen3-moe/reference/cases.jsonl, the
// final-position logits match within a relative L2 error of 1e-3 and the greedy continuation is identical; the
// same for the model re-laid out as qwen3_omni_moe; and results do not depend on how experts are supplied.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "compute/cache_provider.h"
#include "compute/generator.h"
#include "compute/model.h"
#include "store/metadata.h"
#include "tests/util/reference_cases.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/temp_dir.h"
#include "tests/util/tensors.h"

namespace es {
namespace {

using testing::kTinyEos;
using Case = testing::ReferenceCase;
using testing::kAidreams;

std::vector<Case> LoadCases() { return testing::LoadReferenceCases(); }

class ModelTest : public testing::SuiteStoreTest {
 protected:
  static void SetUpTestSuite() {
    if (!testing::DataPresent(testing::kReferenceCases) || !testing::DataPresent(kAidreams)) return;
    MakeSuiteDir();
    // The same weights as qwen3_omni_moe.
    std::string config = testing::ReadText(std::string(testing::kTinyModel) + "/config.json");
    std::string omni = "{\"model_type\":\"qwen3_omni_moe\",\"thinker_config\":{\"text_config\":" + config + "}}";
    ASSERT_TRUE(testing::RewriteCheckpoint(testing::kTinyModel, dir_->Sub("omni"), [](const std::string& n) -> std::optional<std::string> {
                  return n == "lm_head.weight" ? "thinker.lm_head.weight" : "thinker." + n;
                }, omni).ok());
    // The same weights as llama.cpp's converter writes them to a GGUF file.
    auto gguf = testing::WriteTinyGguf(dir_->Sub("tiny.gguf"));
    ASSERT_TRUE(gguf.ok()) << gguf.status().ToString();
    gguf_ = new testing::RebuiltGguf(*gguf);
    Status s = OpenSuiteStore({{"tiny", testing::kTinyModel},
                               {"omni", dir_->Sub("omni")},
                               {"gguf", dir_->Sub("tiny.gguf")},
                               {"aidreams", kAidreams}});
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  static void TearDownTestSuite() {
    delete gguf_;
    CloseSuiteStore();
  }
  void SetUp() override {
    ES_REQUIRE_DATA(testing::kReferenceCases);
    ES_REQUIRE_DATA(kAidreams);
    ASSERT_NE(store_, nullptr);
  }

  void CheckReference(const std::string& name) {
    auto model = Load(name);
    ASSERT_TRUE(model);
    auto experts = DirectExpertProvider::Create(*store_, name);
    ASSERT_TRUE(experts.ok());
    testing::ExpectMatchesReference(*model, **experts);
  }

  static testing::RebuiltGguf* gguf_;
};

testing::RebuiltGguf* ModelTest::gguf_ = nullptr;

TEST_F(ModelTest, TinyQwen3MoeMatchesReference) { CheckReference("tiny"); }

TEST_F(ModelTest, OmniLayoutMatchesReference) { CheckReference("omni"); }

// The tiny model as a BF16 GGUF file (byte for byte the one llama.cpp's converter writes, which the checksum
// shows), ingested from that file: config and tokenizer from its metadata, experts cut from its 3-D tensors.
TEST_F(ModelTest, GgufOfTinyMatchesReference) {
  ASSERT_NE(gguf_, nullptr);
  EXPECT_EQ(gguf_->xxh3, gguf_->expected_xxh3);
  CheckReference("gguf");
  auto info = LoadModelInfo(store_->catalog(), "gguf");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  auto tokenizer = store_->ReadAsset(*info, "tokenizer.json");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
}

// Prefill in one batch and token-by-token decode agree: the KV cache is right.
TEST_F(ModelTest, PrefillEqualsIncrementalDecode) {
  auto model = Load("tiny");
  ASSERT_TRUE(model);
  auto experts = DirectExpertProvider::Create(*store_, "tiny");
  ASSERT_TRUE(experts.ok());
  auto c = LoadCases()[1];
  auto batch = LastLogits(*model, **experts, c.ids, {});
  ASSERT_TRUE(batch.ok());
  KvCache kv(model->config(), c.ids.size());
  std::vector<float> hidden, logits(model->config().vocab);
  for (int32_t id : c.ids) ASSERT_TRUE(model->Forward({&id, 1}, kv, **experts, {}, hidden).ok());
  ASSERT_TRUE(model->ComputeLogits(hidden.data(), 1, logits.data()).ok());
  EXPECT_LT(testing::RelativeL2(logits, *batch), 1e-5);
}

// A routing trace: one step per token and MoE layer, in decode order, the router's k picks with weights that
// sum to 1 (norm_topk_prob), the same routing a plain decode's observer sees; an error of the consumer stops it.
TEST_F(ModelTest, TraceRoutingFollowsDecode) {
  auto model = Load("tiny");
  ASSERT_TRUE(model);
  auto experts = DirectExpertProvider::Create(*store_, "tiny");
  ASSERT_TRUE(experts.ok());
  const auto c = LoadCases()[0];
  const ModelConfig& config = model->config();
  std::vector<TraceStep> steps;
  ASSERT_TRUE(TraceRouting(*model, **experts, c.ids, {}, [&](const TraceStep& s) {
                steps.push_back(s);
                return Status::Ok();
              }).ok());
  ASSERT_EQ(steps.size(), c.ids.size() * config.num_layers);
  std::vector<std::pair<uint32_t, std::vector<int32_t>>> seen;
  ForwardOptions watch;
  watch.observer = [&](const RoutingEvent& e) { seen.push_back({e.layer, {e.experts.begin(), e.experts.end()}}); };
  KvCache kv(config, c.ids.size());
  std::vector<float> hidden;
  for (int32_t id : c.ids) ASSERT_TRUE(model->Forward({&id, 1}, kv, **experts, watch, hidden).ok());
  ASSERT_EQ(seen.size(), steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(steps[i].token, i / config.num_layers);
    EXPECT_EQ(steps[i].layer, seen[i].first);
    ASSERT_EQ(steps[i].experts.size(), config.top_k);
    EXPECT_EQ(std::vector<int32_t>(steps[i].experts.begin(), steps[i].experts.end()), seen[i].second);
    double sum = 0;
    for (double w : steps[i].weights) sum += w;
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
  size_t calls = 0;
  Status stop = TraceRouting(*model, **experts, c.ids, {}, [&](const TraceStep&) {
    return ++calls == 3 ? Status::IOError("disk full") : Status::Ok();
  });
  EXPECT_TRUE(stop.IsIOError());
  EXPECT_EQ(calls, 3u);
}

// The Mixtral family, float32 weights and tied embeddings: aidreams260K converted to the Mixtral layout
// generates what the original llama2.c program does from BOS (its README).
TEST_F(ModelTest, MixtralLayoutGeneratesTheKnownText) {
  auto model = Load("aidreams");
  ASSERT_TRUE(model);
  EXPECT_TRUE(model->config().tie_word_embeddings);
  auto experts = DirectExpertProvider::Create(*store_, "aidreams");
  ASSERT_TRUE(experts.ok());
  testing::ExpectAidreamsKnownText(*model, **experts);
}

// Exact routing does not depend on how experts are supplied: a cache far smaller than the model (with and
// without prefetch, under each policy) gives the same logits, bit for bit, and the same tokens as reading
// every expert from disk.
TEST_F(ModelTest, CacheSizeAndPolicyDoNotChangeResults) {
  auto model = Load("tiny");
  ASSERT_TRUE(model);
  auto direct = DirectExpertProvider::Create(*store_, "tiny");
  ASSERT_TRUE(direct.ok());
  auto cases = LoadCases();
  const Case& c = cases[4];  // the longest prompt
  auto want_logits = LastLogits(*model, **direct, c.ids, {});
  ASSERT_TRUE(want_logits.ok());
  auto want_ids = GenerateIds(*model, **direct, c.ids, 24, {kTinyEos}, SamplerOptions{}, {});
  ASSERT_TRUE(want_ids.ok());
  const uint64_t expert_bytes = (*direct)->counters().bytes_read / std::max<uint64_t>(1, (*direct)->counters().misses);
  struct Config {
    uint32_t slots;
    PolicyKind policy;
    uint32_t prefetch_depth;
  };
  // 4 slots = exactly one layer's top-4: every layer evicts the previous one's experts.
  const Config configs[] = {{4, PolicyKind::kLru, 0}, {8, PolicyKind::kLfu, 1}, {12, PolicyKind::kLru, 2},
                            {192, PolicyKind::kTrust, 1}};
  for (const auto& cfg : configs) {
    SCOPED_TRACE("slots " + std::to_string(cfg.slots));
    ExpertCacheOptions o;
    o.capacity_bytes = cfg.slots * expert_bytes;
    o.policy = cfg.policy;
    o.prefetch_bytes_in_flight = cfg.prefetch_depth * 4 * expert_bytes;
    auto cache = CacheExpertProvider::Create(*store_, "tiny", o);
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    EXPECT_EQ((*cache)->cache().capacity_slots(), cfg.slots);
    ForwardOptions fo;
    fo.prefetch_depth = cfg.prefetch_depth;
    auto logits = LastLogits(*model, **cache, c.ids, fo);
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    EXPECT_EQ(*logits, *want_logits);
    auto ids = GenerateIds(*model, **cache, c.ids, 24, {kTinyEos}, SamplerOptions{}, fo);
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    EXPECT_EQ(*ids, *want_ids);
    ProviderCounters n = (*cache)->counters();
    if (cfg.slots < 192) {
      EXPECT_GT(n.misses, 192u) << "a small cache must have re-read experts";
    }
  }
}

TEST_F(ModelTest, BadTokensAndContextOverflowAreErrors) {
  auto model = Load("tiny");
  ASSERT_TRUE(model);
  auto experts = DirectExpertProvider::Create(*store_, "tiny");
  ASSERT_TRUE(experts.ok());
  std::vector<int32_t> bad = {1, 99999};
  EXPECT_TRUE(LastLogits(*model, **experts, bad, {}).status().IsInvalidArgument());
  KvCache kv(model->config(), 2);
  std::vector<int32_t> three = {1, 2, 3};
  std::vector<float> hidden;
  EXPECT_TRUE(model->Forward(three, kv, **experts, {}, hidden).IsResourceExhausted());
}

}  // namespace
}  // namespace es
