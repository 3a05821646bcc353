// The fitted lookahead on the real tiny-qwen3-moe and the shared corpus: a fit pulled all the way to its prior is
// the routers applied early; a fit on one part of the corpus predicts the routing of the other part better than
// the routers do; the asset round-trips through the store (verify accepts it, a refit replaces it) and every
// malformed asset is Corruption; predictions never change the output; the runtime uses a stored fit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "compute/cache_provider.h"
#include "compute/generator.h"
#include "compute/lookahead.h"
#include "compute/model.h"
#include "compute/runtime/metadata_jobs.h"
#include "compute/runtime/model_runtime.h"
#include "compute/tokenizer/tokenizer.h"
#include "store/metadata.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

constexpr char kModel[] = "tiny";
// Corpus texts the fits use, and the held-out ones after them.
constexpr size_t kFitTexts = 200;
constexpr size_t kHeldOutTexts = 100;

class LookaheadTest : public testing::SuiteStoreTest {
 protected:
  static void SetUpTestSuite() {
    if (!testing::DataPresent(testing::kTinyModel) || !testing::DataPresent(testing::kCorpus)) return;
    Status s = OpenSuiteStore({{kModel, testing::kTinyModel}});
    ASSERT_TRUE(s.ok()) << s.ToString();
    auto tok = Tokenizer::FromFile(std::string(testing::kTinyModel) + "/tokenizer.json");
    ASSERT_TRUE(tok.ok());
    auto texts = ReadTexts(testing::kCorpus);
    ASSERT_TRUE(texts.ok()) << texts.status().ToString();
    ASSERT_GE(texts->size(), kFitTexts + kHeldOutTexts);
    fit_ = new std::vector<std::vector<int32_t>>();
    held_ = new std::vector<std::vector<int32_t>>();
    for (size_t i = 0; i < kFitTexts + kHeldOutTexts; ++i) {
      auto ids = EncodeText(*tok, (*texts)[i]);
      ASSERT_TRUE(ids.ok());
      (i < kFitTexts ? fit_ : held_)->push_back(std::move(ids).value());
    }
  }
  static void TearDownTestSuite() {
    CloseSuiteStore();
    delete fit_;
    delete held_;
  }
  void SetUp() override {
    ES_REQUIRE_DATA(testing::kTinyModel);
    ES_REQUIRE_DATA(testing::kCorpus);
    ASSERT_NE(store_, nullptr);
    model_ = Load(kModel);
    ASSERT_NE(model_, nullptr);
    auto p = DirectExpertProvider::Create(*store_, kModel);
    ASSERT_TRUE(p.ok());
    experts_ = std::move(p).value();
  }

  LookaheadFitResult Fit(const LookaheadFitOptions& o) {
    auto fit = FitLookahead(*model_, *experts_, *fit_, o);
    EXPECT_TRUE(fit.ok()) << fit.status().ToString();
    return fit.ok() ? std::move(fit).value() : LookaheadFitResult{};
  }

  std::vector<LookaheadScore> Score(const LookaheadPredictor* p, uint32_t depth, std::vector<double> thresholds) {
    auto s = ScoreLookahead(*model_, *experts_, *held_, p, depth, thresholds, LookaheadFitOptions{});
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : std::vector<LookaheadScore>(thresholds.size());
  }

  static inline std::vector<std::vector<int32_t>>* fit_ = nullptr;
  static inline std::vector<std::vector<int32_t>>* held_ = nullptr;
  std::unique_ptr<Model> model_;
  std::unique_ptr<ExpertProvider> experts_;
};

TEST_F(LookaheadTest, AFitPulledToItsPriorIsTheRoutersAppliedEarly) {
  LookaheadFitOptions o;
  o.ridge = 1e9;
  o.max_tokens = 4000;
  LookaheadFitResult fit = Fit(o);
  const uint32_t E = model_->config().num_experts;
  ASSERT_EQ(fit.predictor.size(), model_->config().num_layers - 1u);
  const std::vector<double> thresholds{0.0, 2.0 / E};
  auto router = Score(nullptr, 1, thresholds);
  auto fitted = Score(&fit.predictor, 1, thresholds);
  for (size_t i = 0; i < thresholds.size(); ++i) {
    EXPECT_GT(router[i].predicted, 10000u);
    EXPECT_EQ(router[i].used, fitted[i].used);
    // The same guesses up to float rounding near a threshold or a tie.
    EXPECT_NEAR(static_cast<double>(fitted[i].predicted), static_cast<double>(router[i].predicted),
                0.002 * static_cast<double>(router[i].predicted));
    EXPECT_NEAR(static_cast<double>(fitted[i].correct), static_cast<double>(router[i].correct),
                0.002 * static_cast<double>(router[i].correct));
  }
}

TEST_F(LookaheadTest, AFitPredictsHeldOutRoutingBetterThanTheRouters) {
  LookaheadFitOptions o;
  o.depth = 2;
  LookaheadFitResult fit = Fit(o);
  const uint32_t E = model_->config().num_experts;
  EXPECT_EQ(fit.predictor.depth(), 2u);
  EXPECT_GT(fit.validation_tokens, 0u);
  // The threshold chosen on the held-back windows reaches the target precision there.
  const float chosen = fit.predictor.min_prob();
  EXPECT_GT(chosen, 1.0f / static_cast<float>(E));
  bool found = false;
  for (const LookaheadScore& v : fit.validation) {
    if (static_cast<float>(v.threshold) == chosen) {
      found = true;
      EXPECT_GE(v.precision(), kLookaheadTargetPrecision);
    }
  }
  EXPECT_TRUE(found);
  for (uint32_t depth : {1u, 2u}) {
    SCOPED_TRACE(depth);
    const std::vector<double> thresholds{0.0, 2.0 / E, chosen};
    auto router = Score(nullptr, depth, thresholds);
    auto fitted = Score(&fit.predictor, depth, thresholds);
    for (size_t i = 0; i < thresholds.size(); ++i) {
      SCOPED_TRACE(thresholds[i]);
      EXPECT_GT(fitted[i].precision(), router[i].precision() + 0.02);
      EXPECT_GE(fitted[i].recall(), router[i].recall() - 0.01);
    }
    if (depth == 1) {
      // On text it never saw, the fit's own threshold is right nearly 9 times in 10 and finds about half the
      // experts.
      EXPECT_GE(fitted[2].precision(), 0.85);
      EXPECT_GE(fitted[2].recall(), 0.45);
    }
  }
}

TEST_F(LookaheadTest, TheAssetRoundTripsThroughTheStore) {
  LookaheadFitOptions o;
  o.max_tokens = 3000;
  LookaheadFitResult fit = Fit(o);
  const std::string bytes = fit.predictor.Serialize();
  EXPECT_TRUE(LoadLookahead(*store_, *model_).status().IsNotFound());
  ASSERT_TRUE(store_->PutAsset(kModel, kLookaheadAsset, bytes).ok());
  auto info = LoadModelInfo(store_->catalog(), kModel);
  ASSERT_TRUE(info.ok());
  auto reloaded = Model::Load(*store_, kModel, model_->context());
  ASSERT_TRUE(reloaded.ok());
  auto back = LoadLookahead(*store_, **reloaded);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Serialize(), bytes);
  EXPECT_EQ(back->min_prob(), fit.predictor.min_prob());
  // A refit replaces the asset: one of that name, the model's bytes count it once, verify accepts the store.
  o.ridge = 1.0;
  LookaheadFitResult refit = Fit(o);
  ASSERT_TRUE(store_->PutAsset(kModel, kLookaheadAsset, refit.predictor.Serialize()).ok());
  auto after = LoadModelInfo(store_->catalog(), kModel);
  ASSERT_TRUE(after.ok());
  size_t named = 0;
  for (const AssetInfo& a : after->assets) named += a.name == kLookaheadAsset;
  EXPECT_EQ(named, 1u);
  EXPECT_EQ(after->total_bytes, info->total_bytes);  // same size, replaced
  auto report = store_->Verify(kModel);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  auto reread = Model::Load(*store_, kModel, model_->context());
  ASSERT_TRUE(reread.ok());
  auto refitted = LoadLookahead(*store_, **reread);
  ASSERT_TRUE(refitted.ok());
  EXPECT_EQ(refitted->Serialize(), refit.predictor.Serialize());
  EXPECT_TRUE(store_->PutAsset("no-such-model", kLookaheadAsset, bytes).IsNotFound());
}

TEST_F(LookaheadTest, EveryMalformedAssetIsCorruption) {
  LookaheadFitOptions o;
  o.max_tokens = 1000;
  LookaheadFitResult fit = Fit(o);
  const std::string good = fit.predictor.Serialize();
  const ModelConfig& c = model_->config();
  ASSERT_TRUE(LookaheadPredictor::Parse(good, c).ok());
  auto corrupt = [&](std::string bytes, const char* what) {
    auto p = LookaheadPredictor::Parse(bytes, c);
    EXPECT_TRUE(p.status().IsCorruption()) << what << ": " << p.status().ToString();
  };
  corrupt("", "empty");
  corrupt(good.substr(0, 10), "truncated header");
  corrupt(good.substr(0, good.size() - 4), "truncated map");
  corrupt(good + "x", "trailing bytes");
  std::string magic = good;
  magic[0] = 'X';
  corrupt(magic, "bad magic");
  std::string hidden = good;
  const uint32_t wrong_hidden = c.hidden + 1;
  std::memcpy(&hidden[8], &wrong_hidden, 4);
  corrupt(hidden, "another hidden size");
  std::string prob = good;
  const float two = 2.0f;
  std::memcpy(&prob[16], &two, 4);
  corrupt(prob, "threshold above 1");
  // The first map's header sits after magic, hidden, experts, threshold and count.
  std::string order = good;
  const uint32_t from = 3, to = 3;
  std::memcpy(&order[24], &from, 4);
  std::memcpy(&order[28], &to, 4);
  corrupt(order, "a map from a layer to itself");
  std::string nan = good;
  const float q = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(&nan[good.size() - 4], &q, 4);
  corrupt(nan, "NaN weight");
}

TEST_F(LookaheadTest, PredictionsNeverChangeTheOutputAndAreScored) {
  LookaheadFitOptions o;
  o.max_tokens = 3000;
  LookaheadFitResult fit = Fit(o);
  constexpr size_t kTokens = 48;
  auto text = std::find_if(held_->begin(), held_->end(), [](const auto& t) { return t.size() >= kTokens; });
  ASSERT_NE(text, held_->end());
  const std::vector<int32_t> ids(text->begin(), text->begin() + kTokens);
  const ModelConfig& c = model_->config();
  auto run = [&](const LookaheadPredictor* p, PrefetchAccuracy& acc, std::vector<float>& logits) {
    ExpertCacheOptions co;
    co.capacity_bytes = 24ull << 20;
    co.prefetch_bytes_in_flight = 4ull << 20;
    auto cache = CacheExpertProvider::Create(*store_, kModel, co);
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    ForwardOptions f;
    f.prefetch_depth = 1;
    f.prefetch_min_prob = p ? p->min_prob() : 0.0f;
    f.prefetch_accuracy = &acc;
    f.lookahead = p;
    KvCache kv(c, ids.size());
    std::vector<float> hidden;
    // One token at a time, as decode runs.
    for (size_t t = 0; t < ids.size(); ++t) {
      Status st = model_->Forward(std::span(ids).subspan(t, 1), kv, **cache, f, hidden);
      ASSERT_TRUE(st.ok()) << st.ToString();
    }
    logits.resize(c.vocab);
    ASSERT_TRUE(model_->ComputeLogits(hidden.data(), 1, logits.data()).ok());
  };
  PrefetchAccuracy router_acc, fitted_acc;
  std::vector<float> router_logits, fitted_logits;
  run(nullptr, router_acc, router_logits);
  run(&fit.predictor, fitted_acc, fitted_logits);
  EXPECT_EQ(router_logits, fitted_logits);
  // Both scored every decoded layer after the first; the fit's stricter threshold predicts fewer, surer experts.
  EXPECT_EQ(router_acc.used, fitted_acc.used);
  EXPECT_EQ(router_acc.used, ids.size() * (c.num_layers - 1) * c.top_k);
  EXPECT_LT(fitted_acc.predicted, router_acc.predicted);
  EXPECT_GT(fitted_acc.precision(), router_acc.precision());
}

TEST_F(LookaheadTest, TheRuntimeUsesAStoredFit) {
  testing::TempDir fresh;
  auto s = testing::StoreWithModels(fresh.Sub("store"), {{kModel, testing::kTinyModel}});
  ASSERT_TRUE(s.ok());
  RuntimeConfig config;
  config.need_tokenizer = false;
  config.prefetch = 1;
  config.prefetch_predictor = "fitted";
  EXPECT_TRUE(ModelRuntime::Open(**s, kModel, config, pool_).status().IsNotFound());
  config.prefetch_predictor = "auto";
  {
    auto rt = ModelRuntime::Open(**s, kModel, config, pool_);
    ASSERT_TRUE(rt.ok()) << rt.status().ToString();
    EXPECT_EQ((*rt)->forward_options().lookahead, nullptr);
  }
  LookaheadFitOptions o;
  o.max_tokens = 2000;
  LookaheadFitResult fit = Fit(o);
  ASSERT_TRUE((*s)->PutAsset(kModel, kLookaheadAsset, fit.predictor.Serialize()).ok());
  for (const char* predictor : {"auto", "fitted"}) {
    config.prefetch_predictor = predictor;
    auto rt = ModelRuntime::Open(**s, kModel, config, pool_);
    ASSERT_TRUE(rt.ok()) << rt.status().ToString();
    ASSERT_NE((*rt)->forward_options().lookahead, nullptr);
    EXPECT_EQ((*rt)->forward_options().prefetch_min_prob, fit.predictor.min_prob());
    EXPECT_NE((*rt)->describe().find("fitted lookahead"), std::string::npos) << (*rt)->describe();
  }
  config.prefetch_predictor = "router";
  auto rt = ModelRuntime::Open(**s, kModel, config, pool_);
  ASSERT_TRUE(rt.ok());
  EXPECT_EQ((*rt)->forward_options().lookahead, nullptr);
  config.prefetch_min_prob = 0.5;
  config.prefetch_predictor = "auto";
  auto pinned = ModelRuntime::Open(**s, kModel, config, pool_);
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ((*pinned)->forward_options().prefetch_min_prob, 0.5f);
  config.prefetch_predictor = "sometimes";
  EXPECT_TRUE(ModelRuntime::Open(**s, kModel, config, pool_).status().IsInvalidArgument());
  // The GPU backends predict with the routers: asking them for the fit is refused before anything opens.
  config.prefetch_predictor = "fitted";
  config.device = "cuda";
  Status refused = ValidateRuntimeConfig(config);
  EXPECT_TRUE(refused.IsInvalidArgument());
  EXPECT_NE(refused.message().find("fitted lookahead"), std::string::npos) << refused.ToString();
  config.prefetch_predictor = "auto";  // fine on cuda (the routers predict), whether or not a device is present
  EXPECT_EQ(ValidateRuntimeConfig(config).message().find("fitted lookahead"), std::string::npos);
}

}  // namespace
}  // namespace es
