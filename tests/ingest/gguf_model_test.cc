// The model a GGUF file describes, read back into Hugging Face form, against the checkpoint it was converted from:
// the tiny model's GGUF header (written by llama.cpp's gguf-py, tests/ingest/gguf_fixtures) must give its
// config.json's fields, a tokenizer that encodes the corpus exactly as its tokenizer.json does, and dense tensor
// names that its safetensors index holds.
#include "ingest/gguf_model.h"

#include <gtest/gtest.h>

#include <set>
#include <sstream>
#include <string>

#include "compute/tokenizer/tokenizer.h"
#include "store/base/json.h"
#include "store/base/utf8.h"
#include "tests/util/files.h"
#include "tests/util/test_data.h"
#include "tests/util/tokenizer_compare.h"

namespace es {
namespace {

GgufHeader TinyHeader() {
  const std::string dir = testing::kGgufFixtures;
  auto meta = ParseJson(testing::ReadText(dir + "/tiny-qwen3-moe.json"));
  EXPECT_TRUE(meta.ok());
  const std::string prefix = testing::ReadText(dir + "/" + meta->Find("file")->string_value());
  auto header = ParseGgufHeader(prefix, *meta->Find("file_size")->AsUint64());
  EXPECT_TRUE(header.ok()) << header.status().ToString();
  return std::move(header).value();
}

TEST(GgufModelTest, ConfigMatchesTheOriginal) {
  auto config = GgufConfigJson(TinyHeader());
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  auto ours = ParseJson(*config);
  ASSERT_TRUE(ours.ok()) << *config;
  auto original = ParseJson(testing::ReadText(std::string(testing::kTinyModel) + "/config.json"));
  ASSERT_TRUE(original.ok());
  for (std::string_view key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "num_key_value_heads", "head_dim", "num_experts", "num_experts_per_tok",
                               "moe_intermediate_size", "intermediate_size", "max_position_embeddings",
                               "bos_token_id", "eos_token_id"}) {
    ASSERT_NE(ours->Find(key), nullptr) << key;
    EXPECT_EQ(*ours->Find(key)->AsUint64(), *original->Find(key)->AsUint64()) << key;
  }
  for (std::string_view key : {"model_type", "hidden_act"}) {
    EXPECT_EQ(ours->Find(key)->string_value(), original->Find(key)->string_value()) << key;
  }
  for (std::string_view key : {"norm_topk_prob", "tie_word_embeddings"}) {
    EXPECT_EQ(ours->Find(key)->bool_value(), original->Find(key)->bool_value()) << key;
  }
  // GGUF keeps these as f32: equal once read as the forward pass reads them.
  for (std::string_view key : {"rms_norm_eps", "rope_theta"}) {
    EXPECT_EQ(static_cast<float>(*ours->Find(key)->AsDouble()), static_cast<float>(*original->Find(key)->AsDouble()))
        << key;
  }
}

TEST(GgufModelTest, TokenizerEncodesTheCorpusAsTheOriginal) {
  ES_REQUIRE_DATA(testing::kCorpus);
  const GgufHeader header = TinyHeader();
  auto json = GgufTokenizerJson(header);
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  auto config = GgufTokenizerConfigJson(header);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  auto ours = Tokenizer::FromJson(*json, *config);
  ASSERT_TRUE(ours.ok()) << ours.status().ToString();
  const std::string dir = testing::kTinyModel;
  auto original = Tokenizer::FromJson(testing::ReadText(dir + "/tokenizer.json"),
                                      testing::ReadText(dir + "/tokenizer_config.json"));
  ASSERT_TRUE(original.ok()) << original.status().ToString();
  // Special tokens in the text too: they must split out the same way.
  testing::ExpectSameEncodings(*ours, *original, "<|im_end|>\n<|im_start|>", /*decode=*/false);
}

TEST(GgufModelTest, DenseTensorsHaveTheOriginalNames) {
  const GgufHeader header = TinyHeader();
  auto index = ParseJson(testing::ReadText(std::string(testing::kTinyModel) + "/model.safetensors.index.json"));
  ASSERT_TRUE(index.ok());
  std::set<std::string> hf_names;
  for (const auto& [name, shard] : index->Find("weight_map")->object()) hf_names.insert(name);
  size_t dense = 0;
  for (const GgufTensorInfo& t : header.tensors()) {
    if (t.name.find("_exps.") != std::string::npos) {
      EXPECT_FALSE(GgufDenseTensorHfName("qwen3moe", t.name).ok()) << t.name;  // experts are not dense tensors
      continue;
    }
    auto hf = GgufDenseTensorHfName("qwen3moe", t.name);
    ASSERT_TRUE(hf.ok()) << hf.status().ToString();
    EXPECT_EQ(hf_names.count(*hf), 1u) << t.name << " -> " << *hf;
    ++dense;
  }
  EXPECT_EQ(dense, 3u + 9u * 6u);  // embeddings, final norm, output; nine tensors per layer
  for (std::string_view bad : {"blk.01.attn_q.weight", "blk.x.attn_q.weight", "blk.1.attn_z.weight", "blk.1",
                               "token_embd.bias"}) {
    EXPECT_TRUE(GgufDenseTensorHfName("qwen3moe", bad).status().IsInvalidArgument()) << bad;
  }
}

TEST(GgufModelTest, UnsupportedArchitecturesAndTokenizersSaySo) {
  auto meta = ParseJson(testing::ReadText(std::string(testing::kGgufFixtures) + "/tiny-qwen3-moe.json"));
  ASSERT_TRUE(meta.ok());
  std::string prefix =
      testing::ReadText(std::string(testing::kGgufFixtures) + "/" + meta->Find("file")->string_value());
  // The same header with its architecture renamed (same length) and its tokenizer model renamed.
  const size_t arch = prefix.find("qwen3moe");
  ASSERT_NE(arch, std::string::npos);
  std::string renamed = prefix;
  renamed.replace(arch, 8, "deepseek");
  auto other = ParseGgufHeader(renamed, *meta->Find("file_size")->AsUint64());
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  EXPECT_TRUE(GgufConfigJson(*other).status().IsNotSupported());
  const size_t model = prefix.find("gpt2");
  ASSERT_NE(model, std::string::npos);
  std::string spm = prefix;
  spm.replace(model, 4, "llam");
  auto spm_header = ParseGgufHeader(spm, *meta->Find("file_size")->AsUint64());
  ASSERT_TRUE(spm_header.ok());
  auto refused = GgufTokenizerJson(*spm_header);
  EXPECT_TRUE(refused.status().IsNotSupported());
  EXPECT_NE(refused.status().message().find("'llam'"), std::string::npos) << refused.status().ToString();
}

// llama files: with experts they are the mixtral family (router block_sparse_moe.gate); without, or with RoPE on
// part of each head, or in the per-expert layout of old converters, they are refused by name.
TEST(GgufModelTest, LlamaWithExpertsIsMixtralAndTheRestIsRefused) {
  const std::string file = testing::ReadText(std::string(testing::kGgufFixtures) + "/aidreams.gguf");
  auto parse = [&](const std::string& bytes) { return ParseGgufHeader(bytes, bytes.size()); };
  auto header = parse(file);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  auto config = GgufConfigJson(*header);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  auto json = ParseJson(*config);
  ASSERT_TRUE(json.ok());
  EXPECT_EQ(json->Find("model_type")->string_value(), "mixtral");
  EXPECT_EQ(*json->Find("num_local_experts")->AsUint64(), 4u);
  EXPECT_EQ(*json->Find("intermediate_size")->AsUint64(), 43u);
  EXPECT_EQ(*GgufDenseTensorHfName("llama", "blk.2.ffn_gate_inp.weight"), "model.layers.2.block_sparse_moe.gate.weight");
  EXPECT_EQ(*GgufDenseTensorHfName("qwen2moe", "blk.2.ffn_gate_inp.weight"), "model.layers.2.mlp.gate.weight");
  EXPECT_EQ(*GgufPermutedHeads(*header, "blk.1.attn_q.weight"), 4u);
  EXPECT_EQ(*GgufPermutedHeads(*header, "blk.1.attn_v.weight"), 0u);
  auto legacy = GgufDenseTensorHfName("llama", "blk.0.ffn_gate.3.weight");
  EXPECT_TRUE(legacy.status().IsNotSupported());
  EXPECT_NE(legacy.status().message().find("per-expert"), std::string::npos) << legacy.status().ToString();
  // Without llama.expert_count (the key renamed, same length): a dense model.
  std::string dense = file;
  const size_t key = dense.find("llama.expert_count");
  ASSERT_NE(key, std::string::npos);
  dense.replace(key, 18, "llama.expert_cnt_x");
  auto dense_header = parse(dense);
  ASSERT_TRUE(dense_header.ok());
  auto refused = GgufConfigJson(*dense_header);
  EXPECT_TRUE(refused.status().IsNotSupported());
  EXPECT_NE(refused.status().message().find("dense"), std::string::npos) << refused.status().ToString();
  // RoPE over 8 of each head's 16 dimensions.
  std::string partial = file;
  const std::string rope_key = "llama.rope.dimension_count";
  const size_t rope = partial.find(rope_key);
  ASSERT_NE(rope, std::string::npos);
  const uint32_t eight = 8;
  partial.replace(rope + rope_key.size() + 4, 4, reinterpret_cast<const char*>(&eight), 4);  // after the type
  auto partial_header = parse(partial);
  ASSERT_TRUE(partial_header.ok());
  refused = GgufConfigJson(*partial_header);
  EXPECT_TRUE(refused.status().IsNotSupported());
  EXPECT_NE(refused.status().message().find("partial RoPE"), std::string::npos) << refused.status().ToString();
}

// Token strings from the file become JSON: one not UTF-8 is refused by name; one listed twice maps to its last id,
// as llama.cpp maps it, and the tokenizer.json stays valid JSON (its vocabulary is a map).
TEST(GgufModelTest, TokenStringsAreCheckedAndDeduplicated) {
  const std::string file = testing::ReadText(std::string(testing::kGgufFixtures) + "/aidreams.gguf");
  std::string twice = file;
  const size_t at = twice.find("<0x05>");
  ASSERT_NE(at, std::string::npos);
  twice.replace(at, 6, "<0x04>");
  auto header = ParseGgufHeader(twice, twice.size());
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  auto json = GgufTokenizerJson(*header);
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  auto doc = ParseJson(*json);
  ASSERT_TRUE(doc.ok()) << doc.status().ToString();
  EXPECT_EQ(*doc->Find("model")->Find("vocab")->Find("<0x04>")->AsUint64(), 8u);  // ids 7 and 8: the last
  std::string broken = file;
  broken[broken.find("<0x05>") + 1] = '\xff';
  auto bad = ParseGgufHeader(broken, broken.size());
  ASSERT_TRUE(bad.ok());
  for (const auto& made : {GgufTokenizerJson(*bad), GgufTokenizerConfigJson(*bad)}) {
    EXPECT_TRUE(made.status().IsInvalidArgument());
    EXPECT_NE(made.status().message().find("tokenizer.ggml.tokens[8] is not UTF-8"), std::string::npos)
        << made.status().ToString();
  }
  EXPECT_FALSE(IsValidUtf8("\xc0\x80"));      // overlong
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));  // a surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_TRUE(IsValidUtf8("\xe2\x96\x81 \xf0\x9f\x99\x82"));
}

}  // namespace
}  // namespace es
