// Derived metadata (store/metadata.h): domain usage keys, stability, trust normalisation, profiles' share and
// lift against hand-computed values, the rest state recomputing from recorded usage, and queries over one model
// and over several.
#include "store/metadata.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <tuple>

#include "store/store.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

TEST(Metadata, DomainUsageKeysSortAfterTheTotalAndParse) {
  std::string total = ExpertKey("m", 3, 7);
  std::string python = DomainUsageKey("m", 3, 7, "python");
  EXPECT_LT(total, python);
  EXPECT_LT(python, ExpertKey("m", 3, 8));
  EXPECT_EQ(python.rfind(total, 0), 0u);
  auto p = ParseUsageKey(python);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->id.layer, 3u);
  EXPECT_EQ(p->id.expert, 7u);
  EXPECT_EQ(p->domain, "python");
  auto t = ParseUsageKey(total);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->domain.empty());
  EXPECT_TRUE(ParseUsageKey("m").status().IsCorruption());
  EXPECT_TRUE(ParseUsageKey(total + "bad domain").status().IsCorruption());
  EXPECT_TRUE(ValidateDomainName("zh-Hans_2.0").ok());
  EXPECT_TRUE(ValidateDomainName("").IsInvalidArgument());
  EXPECT_TRUE(ValidateDomainName("a/b").IsInvalidArgument());
  EXPECT_TRUE(ValidateDomainName(std::string(65, 'a')).IsInvalidArgument());
}

TEST(Metadata, StabilityIsOneMinusTheCoefficientOfVariation) {
  // Weights 0.2, 0.4, 0.6: mean 0.4, population std sqrt(0.08/3).
  double s = StabilityFromMoments(3, 1.2, 0.04 + 0.16 + 0.36);
  EXPECT_NEAR(s, 1 - std::sqrt(0.08 / 3) / 0.4, 1e-12);
  EXPECT_DOUBLE_EQ(StabilityFromMoments(5, 2.5, 5 * 0.25), 1.0);  // constant weight
  EXPECT_DOUBLE_EQ(StabilityFromMoments(1, 0.5, 0.25), 0.0);      // too few activations to say
  EXPECT_DOUBLE_EQ(StabilityFromMoments(2, 1.0, 1.0), 0.0);       // weights 0 and 1: CV 1
  EXPECT_DOUBLE_EQ(StabilityFromMoments(0, 0, 0), 0.0);
}

TEST(Metadata, TrustComponentsAreNormalisedIntoTheUnitInterval) {
  constexpr uint64_t kMiB = 1 << 20;
  std::vector<ExpertMeasurement> m = {
      {0, 0, 100, 0.20, 100, 40, 17, kMiB},      // the model's largest contribution
      {0, 1, 100, 0.05, 100, 40, 16.5, kMiB / 2},  // a quarter of it, at half the size: efficiency 0.5
      {0, 2, 100, -0.01, 100, 40, 16.5, kMiB},   // removing it helped: contribution 0
      {1, 0, 5, 0.90, 5, 2, 0.9, kMiB},          // too few samples to set the reference; capped at 1
      {1, 1, 0, 0, 0, 0, 0, kMiB},               // never selected
  };
  TrustScoreWeights w;
  auto out = TrustFromMeasurements(m, w, 1234, 99);
  ASSERT_EQ(out.size(), m.size());
  EXPECT_DOUBLE_EQ(out[0].second.convergence_rate, 1.0);
  EXPECT_DOUBLE_EQ(out[1].second.convergence_rate, 0.25);
  EXPECT_DOUBLE_EQ(out[2].second.convergence_rate, 0.0);
  EXPECT_DOUBLE_EQ(out[2].second.raw_contribution, -0.01);
  EXPECT_DOUBLE_EQ(out[3].second.convergence_rate, 1.0);
  EXPECT_DOUBLE_EQ(out[0].second.efficiency, 1.0);
  EXPECT_DOUBLE_EQ(out[1].second.efficiency, 0.5);
  EXPECT_DOUBLE_EQ(out[3].second.efficiency, 1.0);  // alone in its layer
  EXPECT_DOUBLE_EQ(out[4].second.trust, 0.0);
  for (const auto& [id, t] : out) {
    for (double x : {t.trust, t.convergence_rate, t.stability, t.efficiency}) {
      EXPECT_GE(x, 0.0);
      EXPECT_LE(x, 1.0);
    }
    EXPECT_NEAR(t.trust, (0.5 * t.convergence_rate + 0.25 * t.stability + 0.25 * t.efficiency), 1e-12);
    EXPECT_EQ(t.calibration_tokens, 1234u);
  }
  EXPECT_DOUBLE_EQ(CombineTrust(2, -1, NAN, w), 0.5);  // components are clamped
  EXPECT_DOUBLE_EQ(CombineTrust(1, 0, 0, TrustScoreWeights{1, 0, 0}), 1.0);
  EXPECT_TRUE(ParseTrustScoreWeights("1,1,0").ok());
  EXPECT_TRUE(ParseTrustScoreWeights("0,0,0").status().IsInvalidArgument());
  EXPECT_TRUE(ParseTrustScoreWeights("1,1").status().IsInvalidArgument());
}

TEST(Metadata, ProfilesShareAndLift) {
  // Layer 0: domain a has 100 activations, b 300. Expert 0: 60 a + 60 b; expert 1: 40 a + 240 b.
  std::vector<DomainActivations> acts = {{0, 0, "a", 60}, {0, 0, "b", 60}, {0, 1, "a", 40}, {0, 1, "b", 240}};
  std::map<std::pair<uint32_t, uint32_t>, std::vector<CoActivation>> co = {
      {{0, 0}, {{0, 1, 5}, {1, 3, 9}, {1, 4, 1}}}};
  auto p = ComputeProfiles(acts, co, 2, 7);
  ASSERT_EQ(p.size(), 2u);
  const ProfileInfo& e0 = p[{0, 0}];
  ASSERT_EQ(e0.domains.size(), 2u);
  EXPECT_EQ(e0.domains[0].domain, "a");
  EXPECT_DOUBLE_EQ(e0.domains[0].share, 0.5);
  // P(e0 | a) = 60/100, P(e0) = 120/400: lift 2. P(e0 | b) = 60/300: lift 2/3.
  EXPECT_DOUBLE_EQ(e0.domains[0].lift, 2.0);
  EXPECT_NEAR(e0.domains[1].lift, 2.0 / 3, 1e-12);
  EXPECT_EQ(e0.primary_domain, "a");
  ASSERT_EQ(e0.top_coactivated.size(), 2u);
  EXPECT_EQ(e0.top_coactivated[0], (CoActivation{1, 3, 9}));
  EXPECT_EQ(e0.top_coactivated[1], (CoActivation{0, 1, 5}));
  const ProfileInfo& e1 = p[{0, 1}];
  EXPECT_EQ(e1.primary_domain, "b");
  EXPECT_NEAR(e1.domains[1].lift, (240.0 / 300) / (280.0 / 400), 1e-12);
  EXPECT_TRUE(e1.top_coactivated.empty());
}

TEST(Metadata, RestRecomputesFromRecordedUsage) {
  testing::TempDir dir;
  auto s = Store::Open(dir.Sub("s"), StoreOptions{});
  ASSERT_TRUE(s.ok());
  Store& store = **s;
  CatalogBatch b;
  UsageCounts u;
  u.activation_count = 4;
  u.gate_mass = 2;        // weights all 0.5
  u.gate_mass_sq = 1;
  b.Merge(Cf::kUsage, ExpertKey("m", 0, 0), EncodeUsage(u));
  UsageCounts d;
  d.activation_count = 3;
  b.Merge(Cf::kUsage, DomainUsageKey("m", 0, 0, "python"), EncodeUsage(d));
  d.activation_count = 1;
  b.Merge(Cf::kUsage, DomainUsageKey("m", 0, 0, "c"), EncodeUsage(d));
  b.Merge(Cf::kUsage, DomainUsageKey("m", 0, 1, "c"), EncodeUsage(d));
  TrustInfo t{.trust = 0, .convergence_rate = 0.8, .stability = 0.1, .efficiency = 0.4};
  b.Put(Cf::kTrust, ExpertKey("m", 0, 0), EncodeTrust(t));
  ASSERT_TRUE(store.catalog().Write(b).ok());
  auto r = Rest(store, "m", TrustScoreWeights{}, 8, 42);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->profiles, 2u);
  EXPECT_EQ(r->trust_updated, 1u);
  auto trust = LoadModelTrust(store.catalog(), "m");
  ASSERT_TRUE(trust.ok());
  const TrustInfo& got = trust->at({0, 0});
  EXPECT_DOUBLE_EQ(got.stability, 1.0);  // constant weights in the recorded usage
  EXPECT_DOUBLE_EQ(got.convergence_rate, 0.8);
  EXPECT_DOUBLE_EQ(got.trust, 0.5 * 0.8 + 0.25 * 1.0 + 0.25 * 0.4);
  auto profiles = LoadModelProfiles(store.catalog(), "m");
  ASSERT_TRUE(profiles.ok());
  EXPECT_EQ(profiles->at({0, 0}).primary_domain, "python");
  EXPECT_EQ(profiles->at({0, 1}).primary_domain, "c");
  StoreOptions read_only;
  read_only.read_only = true;
  auto ro = Store::Open(dir.Sub("s"), read_only);
  ASSERT_TRUE(ro.ok());
  EXPECT_TRUE(Rest(**ro, "m", {}, 8, 0).status().IsNotSupported());
}

TEST(Metadata, QueryRanksByLiftTrustAndActivations) {
  testing::TempDir dir;
  auto s = Store::Open(dir.Sub("s"), StoreOptions{});
  ASSERT_TRUE(s.ok());
  Store& store = **s;
  CatalogBatch b;
  // Four experts in two layers: lift for "py" 3, 1, 2, 0.5; trust on three; activations 10, 40, 20, 30.
  const double lifts[] = {3, 1, 2, 0.5};
  const uint64_t acts[] = {10, 40, 20, 30};
  for (uint32_t i = 0; i < 4; ++i) {
    uint32_t layer = i / 2, expert = i % 2;
    ExpertInfo info;
    info.layer = layer;
    info.expert = expert;
    b.Put(Cf::kExperts, ExpertKey("m", layer, expert), EncodeExpert(info));
    ProfileInfo p;
    p.primary_domain = i == 3 ? "c" : "py";
    p.domains = {{"c", i, 0.1, i == 3 ? 4.0 : 0.2}, {"py", acts[i] - i, 0.9, lifts[i]}};
    b.Put(Cf::kProfiles, ExpertKey("m", layer, expert), EncodeProfile(p));
    if (i != 2) b.Put(Cf::kTrust, ExpertKey("m", layer, expert), EncodeTrust(TrustInfo{.trust = 0.1 * (i + 1)}));
    UsageCounts u;
    u.activation_count = acts[i];
    b.Merge(Cf::kUsage, ExpertKey("m", layer, expert), EncodeUsage(u));
  }
  ASSERT_TRUE(store.catalog().Write(b).ok());
  auto order = [&](ExpertQuery q) {
    std::vector<std::pair<uint32_t, uint32_t>> out;
    auto rows = QueryExperts(store.catalog(), "m", q);
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    if (rows.ok()) {
      for (const auto& r : *rows) out.push_back({r.layer, r.expert});
    }
    return out;
  };
  using V = std::vector<std::pair<uint32_t, uint32_t>>;
  ExpertQuery q;
  q.domain = "py";
  EXPECT_EQ(order(q), (V{{0, 0}, {1, 0}, {0, 1}, {1, 1}}));
  q.order = {RankKey::kTrust};
  EXPECT_EQ(order(q), (V{{1, 1}, {0, 1}, {0, 0}, {1, 0}}));  // uncalibrated (1, 0) last
  q.order = {RankKey::kActivations};
  q.top = 2;
  EXPECT_EQ(order(q), (V{{0, 1}, {1, 1}}));
  q = ExpertQuery{};
  q.has_layer = true;
  q.layer = 1;
  auto rows = QueryExperts(store.catalog(), "m", q);  // primary domains: (1, 1) is c with lift 4
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].expert, 1u);
  EXPECT_EQ((*rows)[0].domain, "c");
  EXPECT_DOUBLE_EQ((*rows)[0].lift, 4.0);
  q = ExpertQuery{};
  q.domain = "py";
  q.min_activations = 25;
  EXPECT_EQ(order(q), (V{{0, 1}, {1, 1}}));
  q.domain = "cobol";
  EXPECT_TRUE(QueryExperts(store.catalog(), "m", q).status().IsNotFound());
  EXPECT_TRUE(ParseRankOrder("trust,lift").ok());
  EXPECT_TRUE(ParseRankOrder("speed").status().IsInvalidArgument());
}

// The same query over several models ranks their experts together; a model whose profiles lack the domain is
// left out, and a domain no model knows is NotFound listing those they know.
TEST(Metadata, QueryAcrossModelsRanksEveryModelsExpertsTogether) {
  testing::TempDir dir;
  auto s = Store::Open(dir.Sub("s"), StoreOptions{});
  ASSERT_TRUE(s.ok());
  Store& store = **s;
  CatalogBatch b;
  // Model a: lifts 3 and 1 for "py"; model b: lifts 2 and 4; model c: only "c".
  const std::vector<std::tuple<std::string, std::string, double>> experts = {
      {"a", "py", 3}, {"a", "py", 1}, {"b", "py", 2}, {"b", "py", 4}, {"c", "c", 5}};
  std::map<std::string, uint32_t> next;
  for (const auto& [model, domain, lift] : experts) {
    ExpertInfo info;
    info.expert = next[model]++;
    b.Put(Cf::kExperts, ExpertKey(model, 0, info.expert), EncodeExpert(info));
    ProfileInfo p;
    p.primary_domain = domain;
    p.domains = {{domain, 10, 0.5, lift}};
    b.Put(Cf::kProfiles, ExpertKey(model, 0, info.expert), EncodeProfile(p));
  }
  ASSERT_TRUE(store.catalog().Write(b).ok());
  ExpertQuery q;
  q.domain = "PY";  // matched case-insensitively, per model
  auto rows = QueryExpertsAcrossModels(store.catalog(), {"a", "b", "c"}, q);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  std::vector<std::pair<std::string, double>> got;
  for (const ModelQueryRow& r : *rows) got.push_back({r.model, r.row.lift});
  EXPECT_EQ(got, (std::vector<std::pair<std::string, double>>{{"b", 4}, {"a", 3}, {"b", 2}, {"a", 1}}));
  q.top = 2;
  EXPECT_EQ(QueryExpertsAcrossModels(store.catalog(), {"a", "b", "c"}, q)->size(), 2u);
  q.domain = "cobol";
  auto none = QueryExpertsAcrossModels(store.catalog(), {"a", "b", "c"}, q);
  EXPECT_TRUE(none.status().IsNotFound());
  EXPECT_NE(none.status().message().find("c, py"), std::string::npos) << none.status().ToString();
  q.domain = "";
  EXPECT_TRUE(QueryExpertsAcrossModels(store.catalog(), {"a"}, q).status().IsInvalidArgument());
}

}  // namespace
}  // namespace es
