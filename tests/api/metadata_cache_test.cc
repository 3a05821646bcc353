// The query route's in-memory metadata (api/metadata_cache.h): it ranks exactly as the catalog scan does, answers
// repeated requests from memory, and follows a write to the catalog at the next request.
#include "api/metadata_cache.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "store/metadata.h"
#include "tests/api/api_test_util.h"
#include "tests/util/expert_model.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

void ExpectSameRows(const std::vector<ExpertQueryRow>& a, const std::vector<ExpertQueryRow>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].layer, b[i].layer) << i;
    EXPECT_EQ(a[i].expert, b[i].expert) << i;
    EXPECT_EQ(a[i].domain, b[i].domain) << i;
    EXPECT_EQ(a[i].lift, b[i].lift) << i;
    EXPECT_EQ(a[i].share, b[i].share) << i;
    EXPECT_EQ(a[i].domain_activations, b[i].domain_activations) << i;
    EXPECT_EQ(a[i].has_trust, b[i].has_trust) << i;
    EXPECT_EQ(a[i].trust, b[i].trust) << i;
    EXPECT_EQ(a[i].activations, b[i].activations) << i;
  }
}

ExpertQuery Query(std::string domain, std::string order, size_t top, int layer = -1, uint64_t min_activations = 0) {
  ExpertQuery q;
  q.domain = std::move(domain);
  q.order = *ParseRankOrder(order);
  q.top = top;
  if (layer >= 0) {
    q.has_layer = true;
    q.layer = static_cast<uint32_t>(layer);
  }
  q.min_activations = min_activations;
  return q;
}

TEST(MetadataCacheTest, RanksAsTheCatalogDoesAndFollowsWrites) {
  Store& store = testing::SharedStore();
  const Catalog& catalog = store.catalog();
  api::MetadataCache cache;
  const std::string model = testing::kSynthetic;
  for (const ExpertQuery& q :
       {Query("", "lift", 10), Query("python", "lift", 5), Query("German", "lift", 100, 1), Query("", "trust", 3),
        Query("", "activations", 7), Query("python", "trust,lift", 4), Query("german", "lift", 100, -1, 40),
        Query("klingon", "lift", 5), Query("python", "lift", 5, 2), Query("python", "lift", 0)}) {
    auto direct = QueryExperts(catalog, model, q);
    auto view = cache.Get(catalog, model);
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    auto cached = QueryExperts(**view, q);
    ASSERT_EQ(direct.ok(), cached.ok()) << q.domain;
    if (!direct.ok()) {
      EXPECT_EQ(direct.status().ToString(), cached.status().ToString());
      continue;
    }
    ExpectSameRows(*direct, *cached);
  }
  EXPECT_EQ(cache.stats().loads, 1u);  // one load, every later request from memory
  EXPECT_GE(cache.stats().hits, 9u);

  // A write (a trust record raised to the top) shows at the next request; then put back.
  const std::string key = ExpertKey(model, 0, 3);
  auto old = store.catalog().Get(Cf::kTrust, key);
  ASSERT_TRUE(old.ok());
  TrustInfo top = *DecodeTrust(*old);
  top.trust = 0.999;
  CatalogBatch raise;
  raise.Put(Cf::kTrust, key, EncodeTrust(top));
  ASSERT_TRUE(store.catalog().Write(raise).ok());
  auto view = cache.Get(catalog, model);
  ASSERT_TRUE(view.ok());
  auto rows = QueryExperts(**view, Query("", "trust", 1));
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].layer, 0u);
  EXPECT_EQ((*rows)[0].expert, 3u);
  EXPECT_DOUBLE_EQ((*rows)[0].trust, 0.999);
  EXPECT_EQ(cache.stats().loads, 2u);
  CatalogBatch restore;
  restore.Put(Cf::kTrust, key, *old);
  ASSERT_TRUE(store.catalog().Write(restore).ok());
  rows = QueryExperts(**cache.Get(catalog, model), Query("", "trust", 1));
  ASSERT_TRUE(rows.ok());
  EXPECT_NE((*rows)[0].trust, 0.999);
}

// The expert list's rows from memory equal the catalog's, and a usage write shows at the next request.
TEST(MetadataCacheTest, ExpertRowsFollowUsageWrites) {
  testing::TempDir dir;
  auto opened = Store::Open(dir.Sub("store"), StoreOptions{});
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  Store& store = **opened;
  const std::string model = "m";
  ASSERT_TRUE(testing::WriteTestModel(store, {.name = model, .layers = 2, .experts = 4}).ok());
  api::MetadataCache cache;
  auto direct = LoadExpertRows(store.catalog(), ModelPrefix(model));
  ASSERT_TRUE(direct.ok());
  auto rows = cache.ExpertRows(store.catalog(), model);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ((*rows)->size(), direct->size());
  ASSERT_EQ(direct->size(), 8u);
  for (size_t i = 0; i < direct->size(); ++i) {
    EXPECT_EQ((**rows)[i].expert.layer, (*direct)[i].expert.layer);
    EXPECT_EQ((**rows)[i].expert.expert, (*direct)[i].expert.expert);
    EXPECT_EQ((**rows)[i].usage.activation_count, (*direct)[i].usage.activation_count);
  }
  ASSERT_TRUE(cache.ExpertRows(store.catalog(), model).ok());
  EXPECT_EQ(cache.stats().loads, 1u);
  const uint64_t before = (**rows)[5].usage.activation_count;
  UsageCounts more;
  more.activation_count = 5;
  CatalogBatch batch;
  batch.Merge(Cf::kUsage, ExpertKey(model, (**rows)[5].expert.layer, (**rows)[5].expert.expert), EncodeUsage(more));
  ASSERT_TRUE(store.catalog().Write(batch).ok());
  auto after = cache.ExpertRows(store.catalog(), model);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((**after)[5].usage.activation_count, before + 5);
  EXPECT_EQ(cache.stats().loads, 2u);
}

}  // namespace
}  // namespace es
