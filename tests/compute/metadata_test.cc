// compute/'s metadata pieces on the real tiny-qwen3-moe: ForwardRowsFrom reproduces a full forward (and an
// ablation done the slow way), calibration measures what it claims, the usage recorder writes exactly the
// counts of the routing it saw, and the routing policies pick what their definitions say.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>

#include "compute/cache_provider.h"
#include "compute/calibration.h"
#include "compute/generator.h"
#include "compute/model.h"
#include "compute/routing_policy.h"
#include "compute/tokenizer/tokenizer.h"
#include "compute/usage_recorder.h"
#include "store/metadata.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/temp_dir.h"
#include "tests/util/tensors.h"

namespace es {
namespace {

constexpr char kModel[] = "tiny";
// Python of the kind the tiny model was trained on, so that it predicts some tokens right.
constexpr char kText[] =
    "import os\nimport sys\n\n\nclass Config(object):\n    def __init__(self, path):\n        self.path = path\n"
    "        self.values = {}\n\n    def get(self, key, default=None):\n        return self.values.get(key, default)\n\n"
    "    def set(self, key, value):\n        self.values[key] = value\n\n\ndef main(argv):\n    config = Config(argv[1])\n"
    "    for name in sorted(os.listdir(config.path)):\n        print(name)\n    return 0\n\n\n"
    "if __name__ == '__main__':\n    sys.exit(main(sys.argv))\n";

// `n` tokens of kText from token `offset` on.
std::vector<int32_t> SomeIds(size_t n, size_t offset) {
  static const std::vector<int32_t> all = [] {
    auto tok = Tokenizer::FromFile(std::string(testing::kTinyModel) + "/tokenizer.json");
    EXPECT_TRUE(tok.ok());
    EncodeOptions enc;
    enc.parse_special_tokens = false;
    auto ids = tok->Encode(kText, enc);
    EXPECT_TRUE(ids.ok());
    return std::vector<int32_t>(ids->begin(), ids->end());
  }();
  EXPECT_GE(all.size(), n + offset);
  return std::vector<int32_t>(all.begin() + static_cast<std::ptrdiff_t>(offset),
                              all.begin() + static_cast<std::ptrdiff_t>(offset + n));
}

class MetadataComputeTest : public testing::SuiteStoreTest {
 protected:
  static void SetUpTestSuite() {
    if (!testing::DataPresent(testing::kTinyModel)) return;
    Status s = OpenSuiteStore({{kModel, testing::kTinyModel}});
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  static void TearDownTestSuite() { CloseSuiteStore(); }
  void SetUp() override {
    ES_REQUIRE_DATA(testing::kTinyModel);
    ASSERT_NE(store_, nullptr);
    model_ = Load(kModel);
    ASSERT_NE(model_, nullptr);
    auto p = DirectExpertProvider::Create(*store_, kModel);
    ASSERT_TRUE(p.ok());
    experts_ = std::move(p).value();
  }

  // A full forward's per-layer pre-MoE residuals, routing (top_k experts and weights per token) and output.
  struct Captured {
    std::vector<std::vector<float>> pre_moe;
    std::vector<std::vector<int32_t>> chosen;
    std::vector<std::vector<float>> weights;
    std::vector<float> clean;
  };
  // Runs `ids` through the model into `kv`, capturing what ForwardRowsFrom needs to re-run rows.
  void ForwardCapturing(const std::vector<int32_t>& ids, KvCache& kv, Captured& out) {
    const ModelConfig& c = model_->config();
    const size_t k = c.top_k;
    out.chosen.assign(c.num_layers, std::vector<int32_t>(ids.size() * k));
    out.weights.assign(c.num_layers, std::vector<float>(ids.size() * k));
    ForwardOptions fo;
    fo.capture_pre_moe = &out.pre_moe;
    fo.observer = [&](const RoutingEvent& e) {
      const auto at = static_cast<std::ptrdiff_t>(e.token * k);
      std::copy(e.experts.begin(), e.experts.end(), out.chosen[e.layer].begin() + at);
      std::copy(e.weights.begin(), e.weights.end(), out.weights[e.layer].begin() + at);
    };
    ASSERT_TRUE(model_->Forward(ids, kv, *experts_, fo, out.clean).ok());
  }

  std::unique_ptr<Model> model_;
  std::unique_ptr<DirectExpertProvider> experts_;
};

// Re-running rows from a layer's MoE block with the routing they had reproduces the full forward's output.
TEST_F(MetadataComputeTest, ForwardRowsFromReproducesTheForward) {
  const ModelConfig& c = model_->config();
  const size_t T = 40, k = c.top_k, H = c.hidden;
  std::vector<int32_t> ids = SomeIds(T, 1);
  KvCache kv(c, T);
  Captured cap;
  ASSERT_NO_FATAL_FAILURE(ForwardCapturing(ids, kv, cap));
  const auto& [pre_moe, chosen, weights, clean] = cap;
  ASSERT_EQ(pre_moe.size(), c.num_layers);
  const std::vector<size_t> rows = {0, 3, 17, 39};  // any subset, in any spacing
  for (uint32_t layer : {0u, 2u, 5u}) {
    SCOPED_TRACE("layer " + std::to_string(layer));
    std::vector<float> residual;
    std::vector<int32_t> fe;
    std::vector<float> fw;
    for (size_t t : rows) {
      residual.insert(residual.end(), pre_moe[layer].begin() + static_cast<std::ptrdiff_t>(t * H),
                      pre_moe[layer].begin() + static_cast<std::ptrdiff_t>((t + 1) * H));
      fe.insert(fe.end(), chosen[layer].begin() + static_cast<std::ptrdiff_t>(t * k),
                chosen[layer].begin() + static_cast<std::ptrdiff_t>((t + 1) * k));
      fw.insert(fw.end(), weights[layer].begin() + static_cast<std::ptrdiff_t>(t * k),
                weights[layer].begin() + static_cast<std::ptrdiff_t>((t + 1) * k));
    }
    std::vector<float> hidden;
    ASSERT_TRUE(model_->ForwardRowsFrom(layer, residual, rows, ForcedRouting{k, fe, fw}, kv, *experts_, {}, hidden).ok());
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_LT(testing::RelativeL2<float>({&hidden[i * H], H}, {&clean[rows[i] * H], H}), 1e-5) << "row " << rows[i];
    }
  }
  EXPECT_EQ(kv.length(), T);  // untouched
}

// An ablation through ForwardRowsFrom equals the slow way: a fresh forward of the prefix whose last token has
// the expert removed at that layer (the others renormalised), everything else exact.
TEST_F(MetadataComputeTest, IsolatedAblationEqualsAFreshForwardOfThePrefix) {
  const ModelConfig& c = model_->config();
  const size_t T = 24, k = c.top_k, H = c.hidden;
  std::vector<int32_t> ids = SomeIds(T, 2);
  KvCache kv(c, T);
  Captured cap;
  ASSERT_NO_FATAL_FAILURE(ForwardCapturing(ids, kv, cap));
  const auto& [pre_moe, chosen, weights, clean] = cap;
  const uint32_t layer = 2;
  const size_t slot = 1;
  const std::vector<size_t> rows = {5, 11, 23};
  std::vector<float> residual;
  std::vector<int32_t> fe;
  std::vector<float> fw;
  for (size_t t : rows) {
    residual.insert(residual.end(), pre_moe[layer].begin() + static_cast<std::ptrdiff_t>(t * H),
                    pre_moe[layer].begin() + static_cast<std::ptrdiff_t>((t + 1) * H));
    float dropped = weights[layer][t * k + slot];
    for (size_t j = 0; j < k; ++j) {
      fe.push_back(j == slot ? -1 : chosen[layer][t * k + j]);
      fw.push_back(j == slot ? 0.0f : weights[layer][t * k + j] / (1.0f - dropped));
    }
  }
  std::vector<float> ablated;
  ASSERT_TRUE(model_->ForwardRowsFrom(layer, residual, rows, ForcedRouting{k, fe, fw}, kv, *experts_, {}, ablated).ok());
  for (size_t i = 0; i < rows.size(); ++i) {
    const size_t t = rows[i];
    SCOPED_TRACE("row " + std::to_string(t));
    // The slow way: the prefix ids[0..t], the last token's layer-2 routing without that expert.
    size_t calls = 0;
    ForwardOptions slow;
    slow.routing = [&](uint32_t l, std::span<const float> probs, size_t kk, std::span<int32_t> e, std::span<float> w) {
      std::vector<float> logits(probs.size());
      for (size_t x = 0; x < probs.size(); ++x) logits[x] = std::log(std::max(probs[x], 1e-30f));
      ASSERT_TRUE(kernels::RouterTopK(logits.data(), 1, probs.size(), kk, c.norm_topk_prob, e.data(), w.data()).ok());
      if (l == layer && calls++ == t) {
        float dropped = w[slot];
        for (size_t j = 0; j < kk; ++j) w[j] = j == slot ? 0.0f : w[j] / (1.0f - dropped);
        e[slot] = -1;
      }
    };
    KvCache fresh(c, t + 1);
    std::vector<float> hidden;
    ASSERT_TRUE(model_->Forward({ids.data(), t + 1}, fresh, *experts_, slow, hidden).ok());
    EXPECT_LT(testing::RelativeL2<float>({&ablated[i * H], H}, {&hidden[t * H], H}), 1e-4);
    // And it did change something.
    EXPECT_GT(testing::RelativeL2<float>({&ablated[i * H], H}, {&clean[t * H], H}), 1e-3);
  }
}

TEST_F(MetadataComputeTest, CalibrationMeasuresEveryRoutedSlot) {
  const ModelConfig& c = model_->config();
  std::vector<std::vector<int32_t>> seqs = {SomeIds(70, 0), SomeIds(50, 20)};
  CalibrationOptions o;
  o.window = 32;
  auto r = Calibrate(*model_, *experts_, seqs, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // Windows: 70 -> 32+32+6, 50 -> 32+18; each scores its length - 1.
  EXPECT_EQ(r->tokens, 31u + 31 + 5 + 31 + 17);
  EXPECT_EQ(r->ablated_positions, r->tokens);
  EXPECT_EQ(r->ablations, r->tokens * c.num_layers * c.top_k);
  uint64_t samples = 0, activations = 0;
  double mean = 0;
  for (const auto& e : r->experts) {
    samples += e.samples;
    activations += e.activations;
    mean += e.nll_increase_sum;
    EXPECT_EQ(e.samples, e.activations);
    if (e.activations > 0) {
      EXPECT_GT(e.weight_sum, 0);
    }
  }
  EXPECT_EQ(samples, r->ablations);
  EXPECT_EQ(activations, r->ablations);
  // Removing experts hurts on average.
  EXPECT_GT(mean / static_cast<double>(samples), 0);

  // A token budget samples windows; a position fraction samples positions.
  o.max_tokens = 40;
  auto budget = Calibrate(*model_, *experts_, seqs, o);
  ASSERT_TRUE(budget.ok());
  EXPECT_LT(budget->tokens, r->tokens);
  EXPECT_GE(budget->tokens, 30u);
  o.max_tokens = 0;
  o.position_fraction = 0.5;
  auto half = Calibrate(*model_, *experts_, seqs, o);
  ASSERT_TRUE(half.ok());
  EXPECT_EQ(half->tokens, r->tokens);
  EXPECT_LT(half->ablated_positions, r->tokens);
  EXPECT_GT(half->ablated_positions, r->tokens / 4);
  o.position_fraction = 0;
  EXPECT_TRUE(Calibrate(*model_, *experts_, seqs, o).status().IsInvalidArgument());
}

// The recorder writes exactly what the routing was: activations, gate mass, co-activations within a layer and
// with the next layer, success counts for correct teacher-forced predictions, domain-labelled counters.
TEST_F(MetadataComputeTest, UsageRecorderWritesExactlyTheRouting) {
  testing::TempDir dir;
  auto opened = Store::Open(dir.Sub("s"), StoreOptions{});
  ASSERT_TRUE(opened.ok());
  Store& store = **opened;
  const ModelConfig& c = model_->config();
  const size_t k = c.top_k;
  UsageRecorder recorder(store, kModel, c.num_layers, c.num_experts, UsageRecorderOptions{.flush_events = 7});
  ASSERT_TRUE(recorder.SetDomain("python").ok());
  EXPECT_TRUE(recorder.SetDomain("no spaces").IsInvalidArgument());
  // The reference model: counts straight from the events.
  std::map<std::pair<uint32_t, uint32_t>, uint64_t> acts, success;
  std::map<std::pair<uint32_t, uint32_t>, double> mass;
  std::map<std::tuple<uint32_t, uint32_t, uint32_t, uint32_t>, uint64_t> co;
  std::vector<std::vector<std::vector<int32_t>>> routed;  // [call][token] -> experts of all layers (flattened)
  std::vector<std::vector<std::vector<int32_t>>> per_layer;  // [token][layer] for the current call
  ForwardOptions fo;
  fo.observer = [&](const RoutingEvent& e) {
    recorder.Observe(e);
    if (per_layer.size() <= e.token) per_layer.resize(e.token + 1, std::vector<std::vector<int32_t>>(c.num_layers));
    per_layer[e.token][e.layer].assign(e.experts.begin(), e.experts.end());
    for (size_t j = 0; j < k; ++j) {
      auto id = std::make_pair(e.layer, static_cast<uint32_t>(e.experts[j]));
      ++acts[id];
      mass[id] += e.weights[j];
      for (size_t i = 0; i < k; ++i) {
        if (i != j) ++co[{e.layer, static_cast<uint32_t>(e.experts[j]), e.layer, static_cast<uint32_t>(e.experts[i])}];
      }
      if (e.layer > 0) {
        for (int32_t prev : per_layer[e.token][e.layer - 1]) {
          ++co[{e.layer - 1, static_cast<uint32_t>(prev), e.layer, static_cast<uint32_t>(e.experts[j])}];
        }
      }
    }
  };
  std::vector<int32_t> ids = SomeIds(30, 5);
  const size_t window = 16;
  auto on_position = [&](size_t index, bool correct) {
    recorder.RecordOutcome((index - 1) % window, correct);
    if (!correct) return;
    for (uint32_t l = 0; l < c.num_layers; ++l) {
      for (int32_t e : per_layer[(index - 1) % window][l]) ++success[{l, static_cast<uint32_t>(e)}];
    }
  };
  // Two windows of one Forward call each.
  auto r1 = EvaluateNll(*model_, *experts_, ids, window, fo, on_position, /*step=*/0);
  ASSERT_TRUE(r1.ok());
  ASSERT_TRUE(recorder.Flush().ok());
  auto expected_acts = acts;

  auto got = LoadModelUsage(store.catalog(), kModel);
  ASSERT_TRUE(got.ok());
  uint64_t total = 0;
  for (const auto& [id, u] : got->totals) {
    EXPECT_EQ(u.activation_count, expected_acts[id]) << id.first << "/" << id.second;
    EXPECT_NEAR(u.gate_mass, mass[id], 1e-4);
    EXPECT_EQ(u.success_count, success[id]) << id.first << "/" << id.second;
    EXPECT_GT(u.last_used_unix_ms, 0u);
    for (const auto& ca : u.coactivations) {
      EXPECT_EQ(ca.count, (co[{id.first, id.second, ca.layer, ca.expert}])) << id.first << "/" << id.second << " with "
                                                                            << ca.layer << "/" << ca.expert;
    }
    uint64_t want_co = 0;
    for (const auto& [key, n] : co) {
      if (std::get<0>(key) == id.first && std::get<1>(key) == id.second) want_co += n;
    }
    uint64_t got_co = 0;
    for (const auto& ca : u.coactivations) got_co += ca.count;
    EXPECT_EQ(got_co, want_co);
    total += u.activation_count;
  }
  EXPECT_EQ(total, ids.size() * c.num_layers * k);  // every token, every layer, k experts
  uint64_t domain_total = 0;
  for (const auto& d : got->domains) {
    EXPECT_EQ(d.domain, "python");
    EXPECT_EQ(d.activations, (expected_acts[{d.layer, d.expert}]));
    domain_total += d.activations;
  }
  EXPECT_EQ(domain_total, total);
  uint64_t successes = 0;
  for (const auto& [id, n] : success) successes += n;
  EXPECT_GT(successes, 0u) << "the test text should have some correct predictions";

  // Token by token (decode-shaped calls) records the same counts.
  testing::TempDir dir2;
  auto opened2 = Store::Open(dir2.Sub("s"), StoreOptions{});
  ASSERT_TRUE(opened2.ok());
  UsageRecorder stepwise(**opened2, kModel, c.num_layers, c.num_experts);
  ForwardOptions fo2;
  fo2.observer = [&](const RoutingEvent& e) { stepwise.Observe(e); };
  ASSERT_TRUE(EvaluateNll(*model_, *experts_, ids, window, fo2,
                          [&](size_t index, bool correct) { stepwise.RecordOutcome((index - 1) % window, correct); },
                          /*step=*/1)
                  .ok());
  ASSERT_TRUE(stepwise.Flush().ok());
  auto got2 = LoadModelUsage((*opened2)->catalog(), kModel);
  ASSERT_TRUE(got2.ok());
  ASSERT_EQ(got2->totals.size(), got->totals.size());
  for (const auto& [id, u] : got2->totals) {
    const UsageCounts& want = got->totals.at(id);
    EXPECT_EQ(u.activation_count, want.activation_count);
    EXPECT_EQ(u.success_count, want.success_count);
    EXPECT_EQ(u.coactivations, want.coactivations);
  }
}

TEST(RoutingPolicy, CacheAwareSwapsOnlyWithinTheMargin) {
  // probs: experts 0..5; top-2 = {0 (0.4), 1 (0.3)}; 2 (0.27) and 3 (0.02) resident.
  std::vector<float> probs = {0.4f, 0.3f, 0.27f, 0.02f, 0.005f, 0.005f};
  auto resident = [](uint32_t, uint32_t e) { return e == 2 || e == 3; };
  std::vector<int32_t> e(2);
  std::vector<float> w(2);
  MakeCacheAwareRouting(resident, /*normalize=*/true, 0.05)(0, probs, 2, e, w);
  EXPECT_EQ(e, (std::vector<int32_t>{0, 2}));  // 1 (0.3) -> 2 (0.27): within 0.05; 0 (0.4) -> 3: not
  EXPECT_NEAR(w[0], 0.4 / 0.67, 1e-6);
  EXPECT_NEAR(w[1], 0.27 / 0.67, 1e-6);
  MakeCacheAwareRouting(resident, true, 0.01)(0, probs, 2, e, w);
  EXPECT_EQ(e, (std::vector<int32_t>{0, 1}));  // margin too small: exact
  MakeCacheAwareRouting(resident, true, 1.0)(0, probs, 2, e, w);
  EXPECT_EQ(e, (std::vector<int32_t>{2, 3}));  // anything goes: both resident
  MakeCacheAwareRouting([](uint32_t, uint32_t) { return true; }, false, 0.05)(0, probs, 2, e, w);
  EXPECT_EQ(e, (std::vector<int32_t>{0, 1}));  // all resident: exact, raw probabilities
  EXPECT_FLOAT_EQ(w[0], 0.4f);
}

TEST(RoutingPolicy, TrustBlendFollowsItsTerms) {
  std::vector<float> probs = {0.1f, 0.5f, 0.3f, 0.1f};
  TrustRoutingInputs in;
  in.layers = 1;
  in.experts_per_layer = 4;
  std::vector<int32_t> e(2);
  std::vector<float> w(2);
  // Router alone: the exact top-k.
  MakeTrustRouting(in, {1, 0, 0, 0})(0, probs, 2, e, w);
  EXPECT_EQ(e, (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(w[0], 0.5 / 0.8, 1e-6);
  // Reward x trust: trusted, successful experts 0 and 3 win when the router term is small.
  in.trust = {1, 0, 0, 0.9};
  in.success_rate = {1, 0.1, 0.1, 1};
  MakeTrustRouting(in, {0.1, 0, 1, 0})(0, probs, 2, e, w);
  EXPECT_EQ(e, (std::vector<int32_t>{0, 3}));
  // Novelty needs surprise: the least used experts win on exploration.
  TrustRoutingInputs fresh;
  fresh.layers = 1;
  fresh.experts_per_layer = 4;
  fresh.activations = {100, 100, 0, 5};
  MakeTrustRouting(fresh, {0, 1, 0, 0})(0, probs, 2, e, w);
  EXPECT_EQ(e, (std::vector<int32_t>{2, 3}));
  // Focus without a domain: continuity with the previous token's experts.
  auto policy = MakeTrustRouting(fresh, {0.01, 0, 0, 1});
  policy(0, probs, 2, e, w);  // first token: no focus yet, the router decides
  EXPECT_EQ(e, (std::vector<int32_t>{1, 2}));
  std::vector<float> other = {0.45f, 0.05f, 0.05f, 0.45f};
  policy(0, other, 2, e, w);  // the previous picks stay
  EXPECT_EQ(e, (std::vector<int32_t>{1, 2}));
  // Focus on a domain: highest lift.
  fresh.domain_lift = {0.5, 1.0, 0.2, 3.0};
  MakeTrustRouting(fresh, {0.01, 0, 0, 1})(0, probs, 2, e, w);
  EXPECT_EQ(e, (std::vector<int32_t>{3, 1}));
  EXPECT_TRUE(ParseTrustRoutingWeights("0.5,0.2,0.2,0.1").ok());
  EXPECT_TRUE(ParseTrustRoutingWeights("0.5,0.2,0.2").status().IsInvalidArgument());
  EXPECT_TRUE(ParseTrustRoutingWeights("0.5,-1,0.2,0.1").status().IsInvalidArgument());
}

}  // namespace
}  // namespace es
