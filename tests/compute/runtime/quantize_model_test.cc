// QuantizeModel on the tiny model: each expert projection encoded exactly as QuantizeGgmlRow encodes its decoded
// rows, llama.cpp's fallbacks where rows are not whole blocks, dense matrices when asked, the copy running with a
// perplexity near the source's, the source's metadata carried over, a no-op re-run, a refused other setting, and
// a run cut by a failing disk that resumes to the same bytes as a clean one.
#include "compute/runtime/quantize_model.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "compute/generator.h"
#include "compute/kernels/ggml_quantize.h"
#include "compute/runtime/model_runtime.h"
#include "store/base/float16.h"
#include "tests/util/fault_fs.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

class QuantizeModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ES_REQUIRE_DATA(testing::kTinyModel);
    auto store = testing::StoreWithModels(dir_.Sub("store"), {{"tiny", testing::kTinyModel}});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
  }

  QuantizeResult Quantize(const std::string& to, GgmlType experts, std::optional<GgmlType> dense = std::nullopt) {
    QuantizeOptions o{.model = "tiny", .to = to, .experts = experts, .dense = dense};
    auto r = QuantizeModel(*store_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : QuantizeResult{};
  }

  std::vector<ExpertInfo> Experts(const std::string& model) {
    std::vector<ExpertInfo> out;
    EXPECT_TRUE(store_->catalog().Scan(Cf::kExperts, ModelPrefix(model), [&](std::string_view, std::string_view v) {
      out.push_back(*DecodeExpert(v));
      return true;
    }).ok());
    return out;
  }

  // The model's evaluation of a short text, against `reference` when one is named.
  EvalResult Evaluate(const std::string& model, const std::string& reference = "") {
    RuntimeConfig c;
    c.cache_pct = 100;
    auto rt = ModelRuntime::Open(*store_, model, c, nullptr);
    EXPECT_TRUE(rt.ok()) << rt.status().ToString();
    if (!rt.ok()) return {};
    std::unique_ptr<ModelRuntime> ref_rt;
    std::optional<EvalReference> ref;
    if (!reference.empty()) {
      auto opened = ModelRuntime::Open(*store_, reference, c, nullptr);
      EXPECT_TRUE(opened.ok()) << opened.status().ToString();
      if (!opened.ok()) return {};
      ref_rt = std::move(opened).value();
      ref = EvalReference{&ref_rt->model(), &ref_rt->experts(), ref_rt->forward_options()};
    }
    auto ids = (*rt)->tokenizer().Encode("The quick brown fox jumps over the lazy dog. Stores hold experts, and "
                                         "experts hold the weights that a router picks for every token.");
    EXPECT_TRUE(ids.ok());
    const std::vector<int32_t> tokens(ids->begin(), ids->end());
    auto r = EvaluateNll((*rt)->model(), (*rt)->experts(), tokens, 64, (*rt)->forward_options(), {}, 0,
                         ref ? &*ref : nullptr);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : EvalResult{};
  }
  double Perplexity(const std::string& model) { return Evaluate(model).perplexity(); }

  testing::TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(QuantizeModelTest, EncodesEveryProjectionAsTheQuantizerDoes) {
  const QuantizeResult r = Quantize("tiny-q8", GgmlType::kQ8_0);
  EXPECT_EQ(r.experts, 192u);
  EXPECT_TRUE(r.fallbacks.empty());
  EXPECT_LT(r.bytes, r.source_bytes + 4u * 1024 * 1024);
  auto report = store_->Verify("tiny-q8");
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  auto source = testing::ReadAllExperts(*store_, "tiny");
  auto copy = testing::ReadAllExperts(*store_, "tiny-q8");
  ASSERT_TRUE(source.ok() && copy.ok());
  const std::vector<ExpertInfo> before = Experts("tiny"), after = Experts("tiny-q8");
  ASSERT_EQ(before.size(), after.size());
  for (size_t i = 0; i < before.size(); i += 37) {  // a spread of experts, every projection
    const auto& src = source->at({before[i].layer, before[i].expert});
    const auto& dst = copy->at({after[i].layer, after[i].expert});
    ASSERT_EQ(before[i].projections.size(), after[i].projections.size());
    for (size_t p = 0; p < before[i].projections.size(); ++p) {
      const ProjectionInfo& a = before[i].projections[p];
      const ProjectionInfo& b = after[i].projections[p];
      ASSERT_EQ(a.dtype, DType::kBF16);
      EXPECT_EQ(b.ggml_type, static_cast<int32_t>(GgmlType::kQ8_0));
      EXPECT_EQ(b.shape, a.shape);
      const uint64_t cols = a.shape.back(), rows = a.length / 2 / cols;
      std::vector<float> row(cols);
      std::vector<std::byte> want(*GgmlRowBytes(GgmlType::kQ8_0, cols));
      for (uint64_t r0 = 0; r0 < rows; ++r0) {
        for (uint64_t c = 0; c < cols; ++c) {
          uint16_t h;
          std::memcpy(&h, src.data() + a.offset + 2 * (r0 * cols + c), 2);
          row[c] = Bf16ToF32(h);
        }
        ASSERT_TRUE(QuantizeGgmlRow(GgmlType::kQ8_0, row, want).ok());
        ASSERT_EQ(std::memcmp(dst.data() + b.offset + r0 * want.size(), want.data(), want.size()), 0)
            << "layer " << after[i].layer << " expert " << after[i].expert << " " << b.role << " row " << r0;
      }
    }
  }
  // Q8_0 costs the tiny model almost nothing; the KL against the source tells the formats apart (and is 0
  // against itself).
  const double base = Perplexity("tiny"), q8 = Perplexity("tiny-q8");
  EXPECT_NEAR(q8 / base, 1.0, 0.01) << base << " " << q8;
  const EvalResult self = Evaluate("tiny", "tiny");
  EXPECT_EQ(self.kl, 0.0);
  EXPECT_EQ(self.top1_agree, self.tokens);
  Quantize("tiny-q4", GgmlType::kQ4_0);
  const EvalResult k8 = Evaluate("tiny-q8", "tiny"), k4 = Evaluate("tiny-q4", "tiny");
  EXPECT_GT(k8.mean_kl(), 0.0);
  EXPECT_LT(k8.mean_kl(), 1e-3);
  EXPECT_GT(k4.mean_kl(), 4 * k8.mean_kl());  // a 4-bit grid against an 8-bit one
}

TEST_F(QuantizeModelTest, FallsBackWhereRowsAreNotWholeBlocks) {
  // The tiny model's rows are 128 and 96 values: no K-quant super-block fits.
  const QuantizeResult r = Quantize("tiny-q4k", GgmlType::kQ4_K);
  EXPECT_EQ(r.fallbacks, (std::map<std::string, uint64_t>{
                             {"down Q4_K -> Q5_0", 192}, {"gate Q4_K -> Q5_0", 192}, {"up Q4_K -> Q5_0", 192}}));
  for (const ExpertInfo& e : Experts("tiny-q4k")) {
    for (const ProjectionInfo& p : e.projections) EXPECT_EQ(p.ggml_type, static_cast<int32_t>(GgmlType::kQ5_0));
  }
  EXPECT_EQ(FallbackFormat(GgmlType::kQ6_K, 96), GgmlType::kQ8_0);
  EXPECT_EQ(FallbackFormat(GgmlType::kIQ4_XS, 128), GgmlType::kIQ4_NL);
  EXPECT_EQ(FallbackFormat(GgmlType::kQ5_K, 768), GgmlType::kQ5_K);
  EXPECT_EQ(FallbackFormat(GgmlType::kQ8_0, 100), GgmlType::kF16);
}

TEST_F(QuantizeModelTest, DenseMatricesWhenAsked) {
  const QuantizeResult r = Quantize("tiny-d8", GgmlType::kQ8_0, GgmlType::kQ8_0);
  EXPECT_EQ(r.dense_tensors, 57u);
  size_t matrices = 0, vectors = 0;
  ASSERT_TRUE(store_->catalog().Scan(Cf::kTensors, ModelPrefix("tiny-d8"), [&](std::string_view, std::string_view v) {
    const TensorInfo t = *DecodeTensor(v);
    if (t.shape.size() == 2) {
      ++matrices;
      EXPECT_EQ(t.ggml_type, static_cast<int32_t>(GgmlType::kQ8_0)) << t.name;
    } else {
      ++vectors;
      EXPECT_EQ(t.ggml_type, kNoGgmlType) << t.name;  // norms stay as they were
    }
    return true;
  }).ok());
  EXPECT_GT(matrices, 0u);
  EXPECT_GT(vectors, 0u);
  EXPECT_NEAR(Perplexity("tiny-d8") / Perplexity("tiny"), 1.0, 0.02);
}

TEST_F(QuantizeModelTest, CarriesTheSourcesMetadataOver) {
  CatalogBatch batch;
  TrustInfo trust{.trust = 0.75, .convergence_rate = 0.5, .stability = 0.25};
  batch.Put(Cf::kTrust, ExpertKey("tiny", 2, 7), EncodeTrust(trust));
  UsageCounts usage;
  usage.activation_count = 42;
  batch.Put(Cf::kUsage, ExpertKey("tiny", 3, 1), EncodeUsage(usage));
  ASSERT_TRUE(store_->WriteMetadata(batch).ok());
  const QuantizeResult r = Quantize("tiny-q8", GgmlType::kQ8_0);
  EXPECT_EQ(r.metadata_records, 2u);
  auto t = store_->catalog().Get(Cf::kTrust, ExpertKey("tiny-q8", 2, 7));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(DecodeTrust(*t)->trust, 0.75);
  auto u = store_->catalog().Get(Cf::kUsage, ExpertKey("tiny-q8", 3, 1));
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(DecodeUsage(*u)->activation_count, 42u);
}

TEST_F(QuantizeModelTest, RerunsAreNoOpsAndOtherSettingsAreRefused) {
  Quantize("tiny-q", GgmlType::kQ8_0);
  const QuantizeResult again = Quantize("tiny-q", GgmlType::kQ8_0);
  EXPECT_TRUE(again.unchanged);
  EXPECT_EQ(again.bytes_written, 0u);
  QuantizeOptions other{.model = "tiny", .to = "tiny-q", .experts = GgmlType::kQ4_0};
  auto refused = QuantizeModel(*store_, other);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(refused.status().IsInvalidArgument());
  EXPECT_NE(refused.status().message().find("`replace`"), std::string::npos);
  other.replace = true;
  auto replaced = QuantizeModel(*store_, other);
  ASSERT_TRUE(replaced.ok()) << replaced.status().ToString();
  for (const ExpertInfo& e : Experts("tiny-q")) {
    EXPECT_EQ(e.projections[0].ggml_type, static_cast<int32_t>(GgmlType::kQ4_0));
  }
  EXPECT_TRUE(QuantizeModel(*store_, {.model = "tiny", .to = "tiny"}).status().IsInvalidArgument());
  EXPECT_TRUE(QuantizeModel(*store_, {.model = "none", .to = "x"}).status().IsNotFound());
  EXPECT_TRUE(QuantizeModel(*store_, {.model = "tiny", .to = "x", .experts = GgmlType::kQ2_K}).status().IsInvalidArgument());
  auto report = store_->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
}

// With --miss-precision the experts not in the cache come from the model's low-bit copy: the run says it is not
// exact, counts the uses it served from the copy, and stays close to the model's own perplexity; without the copy
// it is refused naming the command that writes it.
TEST_F(QuantizeModelTest, MissesServedFromTheLowBitCopy) {
  RuntimeConfig c;
  c.cache_pct = 25;
  c.miss_precision = "Q8_0";
  auto missing = ModelRuntime::Open(*store_, "tiny", c, nullptr);
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(missing.status().IsNotFound());
  EXPECT_NE(missing.status().message().find("quantize --model tiny --add-tier Q8_0"), std::string::npos);
  RuntimeConfig crisis;
  crisis.state = "crisis";
  crisis.state_given = true;
  auto plain = ModelRuntime::Open(*store_, "tiny", crisis, nullptr);  // no copy yet: the crisis state says so
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_NE((*plain)->describe().find("no low-bit copy for misses"), std::string::npos) << (*plain)->describe();
  Quantize(MissTierModel("tiny", "Q8_0"), GgmlType::kQ8_0);
  auto tiered_crisis = ModelRuntime::Open(*store_, "tiny", crisis, nullptr);  // the crisis state takes the copy
  ASSERT_TRUE(tiered_crisis.ok()) << tiered_crisis.status().ToString();
  EXPECT_NE((*tiered_crisis)->describe().find("Q8_0 copies"), std::string::npos) << (*tiered_crisis)->describe();
  EXPECT_NE((*tiered_crisis)->describe().find("run from the Q8_0 copy"), std::string::npos);
  auto rt = ModelRuntime::Open(*store_, "tiny", c, nullptr);
  ASSERT_TRUE(rt.ok()) << rt.status().ToString();
  EXPECT_FALSE((*rt)->exact());
  auto ids = (*rt)->tokenizer().Encode("The quick brown fox jumps over the lazy dog. Stores hold experts, and "
                                       "experts hold the weights that a router picks for every token.");
  ASSERT_TRUE(ids.ok());
  const std::vector<int32_t> tokens(ids->begin(), ids->end());
  auto tiered = EvaluateNll((*rt)->model(), (*rt)->experts(), tokens, 64, (*rt)->forward_options(), {}, /*step=*/1);
  ASSERT_TRUE(tiered.ok()) << tiered.status().ToString();
  const ProviderCounters counters = (*rt)->experts().counters();
  EXPECT_GT(counters.tier_uses, 0u);
  EXPECT_GT(counters.hits, 0u);  // the full experts loaded behind the copy's reads serve later tokens
  EXPECT_NEAR(tiered->perplexity() / Perplexity("tiny"), 1.0, 0.01);
  EXPECT_GT(counters.tier_promotions, 0u);  // experts the copy served twice were loaded at full precision
  EXPECT_NE((*rt)->describe().find("Q8_0 copies"), std::string::npos) << (*rt)->describe();
  RuntimeConfig bad = c;
  bad.miss_precision = "Q9";
  EXPECT_TRUE(ModelRuntime::Open(*store_, "tiny", bad, nullptr).status().IsInvalidArgument());
  bad = c;
  bad.miss_tier_share = 1.0;
  EXPECT_TRUE(ModelRuntime::Open(*store_, "tiny", bad, nullptr).status().IsInvalidArgument());
  bad = {};
  bad.miss_tier_share = 0.5;  // without a tier
  EXPECT_TRUE(ModelRuntime::Open(*store_, "tiny", bad, nullptr).status().IsInvalidArgument());
}

// The budget is split between the full experts and the copies: the share asked for goes to the copies, the full
// cache keeps its minimum.
TEST(MissTierSplitTest, SharesTheBudget) {
  MissTierSplit s = SplitMissTierBudget(1000, 0.5, 100, 2);
  EXPECT_EQ(s.full_bytes, 500u);
  EXPECT_EQ(s.tier_bytes, 500u);
  s = SplitMissTierBudget(1000, 0.75, 100, 2);
  EXPECT_EQ(s.full_bytes, 200u);  // 250 rounds down to whole slots
  EXPECT_EQ(s.tier_bytes, 800u);
  s = SplitMissTierBudget(1000, 0.95, 100, 3);
  EXPECT_EQ(s.full_bytes, 300u);  // the minimum
  EXPECT_EQ(s.tier_bytes, 700u);
}

// An expert the copy serves is promoted once it has served it twice: the cache loads the full record, and the next
// use runs at full precision; predictions of experts not resident read their low-bit records ahead.
TEST_F(QuantizeModelTest, OftenServedExpertsArePromotedToFullPrecision) {
  Quantize(MissTierModel("tiny", "Q8_0"), GgmlType::kQ8_0);
  auto experts = ModelExperts::Load(store_->catalog(), "tiny");
  ASSERT_TRUE(experts.ok());
  ExpertCacheOptions o;
  o.capacity_bytes = 16 * experts->max_record_bytes();
  o.prefetch_bytes_in_flight = experts->max_record_bytes();
  auto provider = CacheExpertProvider::Create(*store_, "tiny", o);
  ASSERT_TRUE(provider.ok()) << provider.status().ToString();
  MissTierOptions to;
  to.capacity_bytes = 1 << 20;
  to.min_slots = 8;
  to.experts_per_token = 2;
  to.prefetch_depth = 1;
  auto tier = AttachMissTier(*store_, "tiny", GgmlType::kQ8_0, to, **provider);
  ASSERT_TRUE(tier.ok()) << tier.status().ToString();
  CacheExpertProvider& p = **provider;
  const std::vector<uint32_t> batch = {3, 5};
  std::vector<AcquiredExpert> out;
  ASSERT_TRUE(p.Acquire(0, batch, out).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].weights.gate.blocks, GgmlType::kQ8_0);
  out.clear();
  EXPECT_EQ(p.counters().tier_promotions, 0u);
  ASSERT_TRUE(p.Acquire(0, batch, out).ok());  // the second use: one of the two is promoted
  out.clear();
  EXPECT_EQ(p.counters().tier_promotions, 1u);
  p.cache().WaitForPrefetches();
  const bool promoted3 = p.Resident(0, 3);
  EXPECT_NE(promoted3, p.Resident(0, 5));
  ASSERT_TRUE(p.Acquire(0, batch, out).ok());
  EXPECT_FALSE(out[promoted3 ? 0 : 1].weights.gate.blocks.has_value());  // the model's own bf16
  EXPECT_EQ(out[promoted3 ? 1 : 0].weights.gate.blocks, GgmlType::kQ8_0);
  out.clear();
  EXPECT_EQ(p.counters().tier_uses, 5u);
  const std::vector<uint32_t> predicted = {7};
  p.Prefetch(1, predicted);
  p.miss_tier()->WaitForPrefetches();
  EXPECT_TRUE(p.miss_tier()->IsResident({1, 7}));
  EXPECT_FALSE(p.Resident(1, 7));
}

TEST(ExpertRuleTest, ParsesRulesAndNamesWhatIsWrong) {
  auto r = ParseExpertRule("trust:q8_0@25%,Q4_K@rest");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->by, ExpertRule::By::kTrust);
  EXPECT_EQ(r->top, GgmlType::kQ8_0);
  EXPECT_EQ(r->rest, GgmlType::kQ4_K);
  EXPECT_DOUBLE_EQ(r->top_fraction, 0.25);
  r = ParseExpertRule("random:q6_k@50%,iq4_xs@rest,seed=9");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->by, ExpertRule::By::kRandom);
  EXPECT_EQ(r->seed, 9u);
  r = ParseExpertRule("list:q8_0@0:3+5:17,q4_0@rest");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->list, (std::vector<std::pair<uint32_t, uint32_t>>{{0, 3}, {5, 17}}));
  for (const char* bad : {"", "trust", "speed:q8_0@25%,q4_k@rest", "trust:q8_0@25%", "trust:q2_k@25%,q4_k@rest",
                          "trust:q8_0@125%,q4_k@rest", "trust:q8_0@x%,q4_k@rest", "trust:q8_0@25,q4_k@rest",
                          "list:q8_0@0-3,q4_k@rest", "trust:q8_0@25%,q4_k@rest,q4_0@rest", "usage:q8_0@25%,q4_k@rest,seed=3"}) {
    auto e = ParseExpertRule(bad);
    EXPECT_TRUE(e.status().IsInvalidArgument()) << bad;
    EXPECT_NE(e.status().message().find("`experts_by`"), std::string::npos) << bad;
  }
}

// Per layer the top quarter by trust gets Q8_0, the rest Q4_K (Q5_0 on the tiny model's rows); a random rule with
// the same seed chooses the same experts again (a no-op re-run), and ranking by trust without trust records is
// refused.
TEST_F(QuantizeModelTest, RulesChooseEachLayersTopShare) {
  QuantizeOptions o{.model = "tiny", .to = "by-trust", .experts_by = *ParseExpertRule("trust:q8_0@25%,q4_k@rest")};
  EXPECT_TRUE(QuantizeModel(*store_, o).status().IsInvalidArgument());  // no trust records yet
  CatalogBatch batch;
  for (uint32_t e = 0; e < 32; ++e) {
    batch.Put(Cf::kTrust, ExpertKey("tiny", 0, e), EncodeTrust({.trust = (e * 7 % 32) / 32.0}));
  }
  ASSERT_TRUE(store_->WriteMetadata(batch).ok());
  auto r = QuantizeModel(*store_, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->experts_by_format, (std::map<std::string, uint64_t>{{"Q4_K", 144}, {"Q8_0", 48}}));
  for (const ExpertInfo& e : Experts("by-trust")) {
    if (e.layer != 0) continue;
    const bool top = (e.expert * 7 % 32) >= 24;  // the eight highest trusts
    EXPECT_EQ(e.projections[0].ggml_type, static_cast<int32_t>(top ? GgmlType::kQ8_0 : GgmlType::kQ5_0))
        << "expert " << e.expert;
  }
  QuantizeOptions random{.model = "tiny", .to = "by-chance", .experts_by = *ParseExpertRule("random:q8_0@25%,q4_0@rest,seed=4")};
  ASSERT_TRUE(QuantizeModel(*store_, random).ok());
  auto again = QuantizeModel(*store_, random);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->unchanged);
  std::map<uint32_t, int> top_per_layer;
  for (const ExpertInfo& e : Experts("by-chance")) {
    top_per_layer[e.layer] += e.projections[0].ggml_type == static_cast<int32_t>(GgmlType::kQ8_0);
  }
  for (const auto& [layer, n] : top_per_layer) EXPECT_EQ(n, 8) << "layer " << layer;
}

// A disk that fails mid-run: what was committed stays, the store verifies, and the same command finishes the job
// with the bytes a clean run writes.
TEST_F(QuantizeModelTest, AFailedRunResumes) {
  Quantize("clean", GgmlType::kQ4_0);
  store_.reset();
  auto faulty = std::make_shared<testing::FaultInjectionFileSystem>();
  {
    StoreOptions so;
    so.fs = faulty;
    auto store = Store::Open(dir_.Sub("store"), so);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    faulty->AddRule({.op = testing::FaultOp::kWrite, .path_contains = ".seg", .err = EIO, .skip = 40});
    QuantizeOptions o{.model = "tiny", .to = "cut", .experts = GgmlType::kQ4_0, .commit_bytes = 64 << 10};
    auto r = QuantizeModel(**store, o);
    ASSERT_FALSE(r.ok());
    EXPECT_GE(faulty->fired(), 1);
  }
  auto store = Store::Open(dir_.Sub("store"), StoreOptions{});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  store_ = std::move(store).value();
  auto partial = store_->catalog().Get(Cf::kModels, ModelKey("cut"));
  ASSERT_TRUE(partial.ok()) << "nothing was committed before the fault: raise skip";
  EXPECT_FALSE(DecodeModel(*partial)->complete);
  auto report = store_->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  QuantizeOptions o{.model = "tiny", .to = "cut", .experts = GgmlType::kQ4_0};
  auto resumed = QuantizeModel(*store_, o);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_TRUE(resumed->resumed);
  EXPECT_GT(resumed->bytes_written, 0u);
  auto clean = testing::ReadAllExperts(*store_, "clean");
  auto cut = testing::ReadAllExperts(*store_, "cut");
  ASSERT_TRUE(clean.ok() && cut.ok());
  EXPECT_EQ(*clean, *cut);
  auto model = store_->catalog().Get(Cf::kModels, ModelKey("cut"));
  ASSERT_TRUE(model.ok());
  EXPECT_TRUE(DecodeModel(*model)->complete);
  EXPECT_EQ(DecodeModel(*model)->total_bytes, resumed->bytes);
}

}  // namespace
}  // namespace es
