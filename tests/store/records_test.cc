// Catalog records: encode/decode round trips, key order, damaged values, the usage merge.
#include "store/records.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace es {
namespace {

TEST(Records, ExpertKeysSortByLayerThenExpert) {
  std::vector<std::string> keys;
  for (uint32_t l : {0u, 1u, 255u, 256u, 70000u}) {
    for (uint32_t e : {0u, 1u, 127u, 128u, 300u}) keys.push_back(ExpertKey("m", l, e));
  }
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  auto id = ParseExpertKey(ExpertKey("model-x", 47, 12));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->model, "model-x");
  EXPECT_EQ(id->layer, 47u);
  EXPECT_EQ(id->expert, 12u);
  EXPECT_TRUE(ExpertKey("m", 3, 4).starts_with(LayerPrefix("m", 3)));
  EXPECT_FALSE(ExpertKey("mm", 3, 4).starts_with(ModelPrefix("m")));
  EXPECT_TRUE(ParseExpertKey("nonsense").status().IsCorruption());
}

TEST(Records, ModelNames) {
  EXPECT_TRUE(ValidateModelName("qwen3-30b-a3b_v1.5").ok());
  EXPECT_FALSE(ValidateModelName("").ok());
  EXPECT_FALSE(ValidateModelName(".hidden").ok());
  EXPECT_FALSE(ValidateModelName("a/b").ok());
  EXPECT_FALSE(ValidateModelName(std::string("a\0b", 3)).ok());
  EXPECT_FALSE(ValidateModelName(std::string(129, 'a')).ok());
}

TEST(Records, ExpertRoundTrip) {
  ExpertInfo e;
  e.layer = 3;
  e.expert = 17;
  e.extent = {2, 8192, 12288, 5000, 0x1234};
  e.projections = {{"gate", "model.layers.3.mlp.experts.17.gate_proj.weight", DType::kBF16, {768, 2048}, 0, 3145728},
                   {"down", "d", DType::kBF16, {2048, 768}, 3145728, 3145728}};
  auto d = DecodeExpert(EncodeExpert(e));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->layer, 3u);
  EXPECT_EQ(d->extent, e.extent);
  ASSERT_EQ(d->projections.size(), 2u);
  EXPECT_EQ(d->projections[0].source_name, e.projections[0].source_name);
  EXPECT_EQ(d->projections[1].shape, (std::vector<uint64_t>{2048, 768}));
  EXPECT_EQ(d->projections[1].dtype, DType::kBF16);
}

TEST(Records, ModelRoundTrip) {
  ModelInfo m;
  m.name = "tiny";
  m.arch = "qwen3_moe";
  m.config_json = "{}";
  m.num_layers = 6;
  m.experts_per_layer = 32;
  m.top_k = 4;
  m.complete = true;
  m.assets = {{"tokenizer.json", {1, 4096, 8192, 10, 99}}};
  auto d = DecodeModel(EncodeModel(m));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->arch, "qwen3_moe");
  EXPECT_TRUE(d->complete);
  ASSERT_EQ(d->assets.size(), 1u);
  EXPECT_EQ(d->assets[0].extent.checksum, 99u);
}

TEST(Records, DamagedValueIsCorruption) {
  std::string bytes = EncodeTensor(TensorInfo{"x", DType::kF32, {2, 3}, {1, 4096, 8192, 24, 5}, ""});
  EXPECT_TRUE(DecodeTensor(bytes).ok());
  EXPECT_TRUE(DecodeTensor(bytes.substr(0, bytes.size() / 2)).status().IsCorruption());
  EXPECT_TRUE(DecodeTensor("").status().IsCorruption());
  std::string garbage(64, '\xff');
  EXPECT_TRUE(DecodeModel(garbage).status().IsCorruption());
}

TEST(Records, UsageMergeAddsCounts) {
  UsageCounts a;
  a.activation_count = 3;
  a.gate_mass = 1.5;
  a.last_used_unix_ms = 100;
  a.coactivations = {{0, 1, 2}, {0, 5, 1}, {1, 0, 7}};
  UsageCounts b;
  b.activation_count = 2;
  b.gate_mass = 0.25;
  b.success_count = 1;
  b.last_used_unix_ms = 50;
  b.coactivations = {{0, 0, 1}, {0, 5, 4}, {2, 3, 1}};
  a.MergeFrom(b);
  EXPECT_EQ(a.activation_count, 5u);
  EXPECT_DOUBLE_EQ(a.gate_mass, 1.75);
  EXPECT_EQ(a.success_count, 1u);
  EXPECT_EQ(a.last_used_unix_ms, 100u);
  std::vector<CoActivation> want = {{0, 0, 1}, {0, 1, 2}, {0, 5, 5}, {1, 0, 7}, {2, 3, 1}};
  EXPECT_EQ(a.coactivations, want);
  auto d = DecodeUsage(EncodeUsage(a));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->coactivations, want);
}

}  // namespace
}  // namespace es
