// GGUF files of the families other than qwen3moe, written with llama.cpp's gguf-py in llama.cpp's conventions
// (tests/ingest/gguf_fixtures/make_arch_fixtures.sh) and run by llama.cpp itself: qwen2moe, olmoe and llama with
// experts (a random Mixtral with grouped key/value heads, and the real aidreams model with its SentencePiece
// tokenizer). Each is ingested twice, from its safetensors original and from the GGUF file: the two give the same
// config and logits, and both give llama.cpp's next-token distributions and greedy continuations on the same file.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <fstream>

#include "compute/cache_provider.h"
#include "compute/generator.h"
#include "compute/kernels/ggml_blocks.h"
#include "compute/model.h"
#include "compute/tokenizer/tokenizer.h"
#include "ingest/gguf.h"
#include "ingest/gguf_model.h"
#include "ingest/make_checkpoint.h"
#include "store/base/json.h"
#include "store/metadata.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/reference_cases.h"
#include "tests/util/temp_dir.h"
#include "tests/util/tokenizer_compare.h"
#include "tests/util/tensors.h"

namespace es {
namespace {

struct Family {
  const char* name;  // the fixture's: NAME.gguf, NAME-llama.jsonl
  const char* arch;  // make-checkpoint's; empty for aidreams (the shared model)
  uint32_t kv_heads;
  uint64_t seed;
};
// As make_arch_fixtures.sh makes them.
constexpr Family kFamilies[] = {
    {"qwen2moe", "qwen2_moe", 2, 11}, {"olmoe", "olmoe", 4, 12}, {"mixtral", "mixtral", 2, 13}, {"aidreams", "", 0, 0}};

struct LlamaCase {
  std::vector<int32_t> ids, greedy;
  std::vector<double> probs;  // by token id
};

std::vector<LlamaCase> LoadLlamaCases(const std::string& name, size_t vocab) {
  std::ifstream in(std::string(testing::kGgufFixtures) + "/" + name + "-llama.jsonl");
  std::vector<LlamaCase> cases;
  std::string line;
  while (std::getline(in, line)) {
    auto v = ParseJson(line);
    EXPECT_TRUE(v.ok()) << line.substr(0, 80);
    if (!v.ok()) break;
    LlamaCase c;
    for (const auto& x : v->Find("ids")->array()) c.ids.push_back(static_cast<int32_t>(*x.AsInt64()));
    for (const auto& x : v->Find("greedy")->array()) c.greedy.push_back(static_cast<int32_t>(*x.AsInt64()));
    c.probs.assign(vocab, 0.0);
    for (const auto& [token, p] : v->Find("probs")->object()) {
      const size_t id = std::stoul(token);
      if (id < vocab) c.probs[id] = *p.AsDouble();
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

class GgufFamiliesTest : public testing::SuiteStoreTest {
 protected:
  static void SetUpTestSuite() {
    if (!testing::DataPresent(testing::kAidreams)) return;
    MakeSuiteDir();
    std::vector<std::pair<std::string, std::string>> models;
    for (const Family& f : kFamilies) {
      std::string original = testing::kAidreams;
      if (*f.arch != '\0') {
        MakeCheckpointOptions o;
        o.arch = f.arch;
        o.layers = 2;
        o.experts = 4;
        o.top_k = 2;
        o.hidden = 32;
        o.moe_intermediate = 16;
        o.heads = 4;
        o.kv_heads = f.kv_heads;
        o.vocab = 288;
        o.dtype = DType::kF32;
        o.seed = f.seed;
        original = dir_->Sub(f.name);
        auto resolved = ResolveMakeCheckpointOptions(
            o, {"layers", "experts", "top_k", "hidden", "moe_intermediate", "heads", "kv_heads", "vocab"});
        ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
        auto made = MakeCheckpoint(original, *resolved);
        ASSERT_TRUE(made.ok()) << made.status().ToString();
      }
      models.push_back({std::string(f.name) + "-st", original});
      models.push_back({std::string(f.name) + "-gguf", std::string(testing::kGgufFixtures) + "/" + f.name + ".gguf"});
    }
    models.push_back({"mixtral-Q8_0-gguf", std::string(testing::kGgufFixtures) + "/mixtral-Q8_0.gguf"});
    Status s = OpenSuiteStore(models);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  static void TearDownTestSuite() { CloseSuiteStore(); }
  void SetUp() override {
    ES_REQUIRE_DATA(testing::kAidreams);
    ASSERT_NE(store_, nullptr);
  }

  // The GGUF model against its original and against llama.cpp.
  void Check(const Family& f) {
    SCOPED_TRACE(f.name);
    auto st = Load(std::string(f.name) + "-st");
    auto gg = Load(std::string(f.name) + "-gguf");
    ASSERT_TRUE(st && gg);
    const ModelConfig& a = st->config();
    const ModelConfig& b = gg->config();
    EXPECT_EQ(a.arch, b.arch);
    EXPECT_EQ(std::tie(a.num_layers, a.hidden, a.num_heads, a.num_kv_heads, a.head_dim, a.vocab, a.num_experts,
                       a.top_k, a.moe_intermediate, a.shared_expert_intermediate, a.norm_topk_prob, a.qkv_bias,
                       a.tie_word_embeddings),
              std::tie(b.num_layers, b.hidden, b.num_heads, b.num_kv_heads, b.head_dim, b.vocab, b.num_experts,
                       b.top_k, b.moe_intermediate, b.shared_expert_intermediate, b.norm_topk_prob, b.qkv_bias,
                       b.tie_word_embeddings));
    EXPECT_EQ(a.qk_norm, b.qk_norm);
    EXPECT_FLOAT_EQ(a.rms_eps, b.rms_eps);
    EXPECT_FLOAT_EQ(a.rope_theta, b.rope_theta);
    auto st_experts = DirectExpertProvider::Create(*store_, std::string(f.name) + "-st");
    auto gg_experts = DirectExpertProvider::Create(*store_, std::string(f.name) + "-gguf");
    ASSERT_TRUE(st_experts.ok() && gg_experts.ok());
    for (const LlamaCase& c : LoadLlamaCases(f.name, b.vocab)) {
      auto want = LastLogits(*st, **st_experts, c.ids, {});
      auto got = LastLogits(*gg, **gg_experts, c.ids, {});
      ASSERT_TRUE(want.ok()) << want.status().ToString();
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      // The same F32 weights in the same order: the same logits.
      EXPECT_LT(testing::RelativeL2(*got, *want), 1e-6);
    }
    CheckLlama(f.name, 1e-5, 1e-2);
  }

  // The model ingested from NAME.gguf against llama.cpp on the same file: KL(llama || ours) below `max_kl`, every
  // log-probability within `max_logp`, and the same greedy continuation. With `min_router_gap`, a prompt is only
  // compared when every routing decision on it is clearer than that (the k-th and (k+1)-th router probabilities
  // of every token and layer differ by more): rounding of the size llama.cpp's quantized products make flips
  // closer ones, and a random router makes some. At least three prompts must qualify.
  void CheckLlama(const std::string& name, double max_kl, double max_logp, bool q8_activations = false,
                  double min_router_gap = 0) {
    auto gg = Load(name + "-gguf", q8_activations);
    ASSERT_TRUE(gg);
    auto experts = DirectExpertProvider::Create(*store_, name + "-gguf");
    ASSERT_TRUE(experts.ok());
    const auto cases = LoadLlamaCases(name, gg->config().vocab);
    ASSERT_EQ(cases.size(), 4u);
    size_t compared = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      SCOPED_TRACE("prompt " + std::to_string(i));
      const LlamaCase& c = cases[i];
      auto got = LastLogits(*gg, **experts, c.ids, {});
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      if (min_router_gap > 0) {
        // The model's own top-k choice (renormalised, as this family's router is), recording how close it was.
        ASSERT_TRUE(gg->config().norm_topk_prob);
        double gap = 1;
        ForwardOptions watch;
        watch.routing = [&](uint32_t, std::span<const float> probs, size_t k, std::span<int32_t> chosen,
                            std::span<float> weights) {
          std::vector<int32_t> order(probs.size());
          for (size_t e = 0; e < order.size(); ++e) order[e] = static_cast<int32_t>(e);
          std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
          gap = std::min<double>(gap, probs[order[k - 1]] - probs[order[k]]);
          float sum = 0;
          for (size_t j = 0; j < k; ++j) sum += probs[order[j]];
          for (size_t j = 0; j < k; ++j) {
            chosen[j] = order[j];
            weights[j] = probs[order[j]] / sum;
          }
        };
        auto watched = LastLogits(*gg, **experts, c.ids, watch);
        ASSERT_TRUE(watched.ok());
        EXPECT_LT(testing::RelativeL2(*watched, *got), 1e-6);  // the watcher routes as the model does
        std::printf("%s prompt %zu: closest routing decision %.3g\n", name.c_str(), i, gap);
        if (gap < min_router_gap) continue;
      }
      ++compared;
      double max_logit = -INFINITY, sum = 0;
      for (float x : *got) max_logit = std::max<double>(max_logit, x);
      for (float x : *got) sum += std::exp(x - max_logit);
      double kl = 0, worst = 0;
      for (size_t t = 0; t < got->size(); ++t) {
        const double logp = (*got)[t] - max_logit - std::log(sum);
        if (c.probs[t] <= 0) continue;
        kl += c.probs[t] * (std::log(c.probs[t]) - logp);
        worst = std::max(worst, std::abs(std::log(c.probs[t]) - logp));
      }
      EXPECT_LT(kl, max_kl);
      EXPECT_LT(worst, max_logp);
      std::printf("%s prompt %zu: KL %.3g, largest log-probability difference %.3g\n", name.c_str(), i, kl, worst);
      auto greedy = GenerateIds(*gg, **experts, c.ids, static_cast<uint32_t>(c.greedy.size()), {},
                                SamplerOptions{}, {});
      ASSERT_TRUE(greedy.ok()) << greedy.status().ToString();
      EXPECT_EQ(*greedy, c.greedy);
    }
    EXPECT_GE(compared, 3u);
  }

};

TEST_F(GgufFamiliesTest, Qwen2MoeAgreesWithItsOriginalAndLlamaCpp) { Check(kFamilies[0]); }
TEST_F(GgufFamiliesTest, OlmoeAgreesWithItsOriginalAndLlamaCpp) { Check(kFamilies[1]); }
// Architecture llama with experts, its q and k rows reordered by the converter and grouped key/value heads.
TEST_F(GgufFamiliesTest, MixtralAgreesWithItsOriginalAndLlamaCpp) { Check(kFamilies[2]); }
TEST_F(GgufFamiliesTest, AidreamsAgreesWithItsOriginalAndLlamaCpp) { Check(kFamilies[3]); }
// The Mixtral quantized to Q8_0 by llama.cpp: its reordered q and k rows are rows of blocks. Activations rounded to
// 8 bits for the Q8_0 products, as llama.cpp rounds them.
TEST_F(GgufFamiliesTest, QuantizedMixtralAgreesWithLlamaCpp) { CheckLlama("mixtral-Q8_0", 1e-5, 1e-2, true, 1e-4); }

// The q and k rows of the Q8_0 file, put back in the original order at ingest, decode to the original's rows
// within Q8_0's rounding (a random model's attention is too flat for the logits alone to show a wrong order).
TEST_F(GgufFamiliesTest, QuantizedQkRowsAreInTheOriginalOrder) {
  auto st = Load("mixtral-st");
  auto q8 = Load("mixtral-Q8_0-gguf");
  ASSERT_TRUE(st && q8);
  for (const char* proj : {"q_proj", "k_proj"}) {
    for (uint32_t layer = 0; layer < 2; ++layer) {
      const std::string name = "model.layers." + std::to_string(layer) + ".self_attn." + proj + ".weight";
      SCOPED_TRACE(name);
      auto want = st->weights().Matrix(name);
      auto got = q8->weights().Matrix(name);
      ASSERT_TRUE(want.ok() && got.ok());
      ASSERT_EQ(want->dtype, DType::kF32);
      ASSERT_TRUE(got->blocks.has_value());
      EXPECT_EQ(*got->blocks, GgmlType::kQ8_0);
      ASSERT_EQ(std::tie(want->rows, want->cols), std::tie(got->rows, got->cols));
      const size_t row_bytes = *GgmlRowBytes(GgmlType::kQ8_0, got->cols);
      std::vector<float> decoded(got->rows * got->cols);
      for (size_t r = 0; r < got->rows; ++r) {
        std::span<const std::byte> row(static_cast<const std::byte*>(got->data) + r * row_bytes, row_bytes);
        ASSERT_TRUE(DequantizeGgmlRow(GgmlType::kQ8_0, row, {decoded.data() + r * got->cols, got->cols}).ok());
      }
      const auto* original = static_cast<const float*>(want->data);
      EXPECT_LT(testing::RelativeL2(decoded, std::vector<float>(original, original + decoded.size())), 1e-2);
    }
  }
}

// The real model from its GGUF file generates the text its original program does, through the SentencePiece
// tokenizer rebuilt from the file's tokens, scores and types.
TEST_F(GgufFamiliesTest, AidreamsFromGgufGeneratesItsKnownText) {
  auto model = Load("aidreams-gguf");
  ASSERT_TRUE(model);
  auto experts = DirectExpertProvider::Create(*store_, "aidreams-gguf");
  ASSERT_TRUE(experts.ok());
  auto info = LoadModelInfo(store_->catalog(), "aidreams-gguf");
  ASSERT_TRUE(info.ok());
  auto json = store_->ReadAsset(*info, "tokenizer.json");
  auto config = store_->ReadAsset(*info, "tokenizer_config.json");
  ASSERT_TRUE(json.ok() && config.ok());
  auto tok = Tokenizer::FromJson(*json, *config);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  GenerateOptions o;
  o.max_tokens = 20;
  auto r = Generate(*model, *tok, **experts, "", o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->text.rfind("\"Echoes of vectors unfold, a gentle hum of precision", 0), 0u) << r->text;
}

// The SentencePiece vocabulary of the GGUF file, turned into a byte-fallback BPE tokenizer, encodes the corpus
// exactly as the model's own tokenizer.json does, and its merges are that file's merges in the same order.
TEST_F(GgufFamiliesTest, SentencePieceTokenizerEncodesAsTheOriginal) {
  ES_REQUIRE_DATA(testing::kCorpus);
  auto file = GgufFile::Open(nullptr, std::string(testing::kGgufFixtures) + "/aidreams.gguf");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto json = GgufTokenizerJson(file->header());
  auto config = GgufTokenizerConfigJson(file->header());
  ASSERT_TRUE(json.ok() && config.ok()) << json.status().ToString();
  const std::string dir = testing::kAidreams;
  auto ours_doc = ParseJson(*json);
  auto original_doc = ParseJson(testing::ReadText(dir + "/tokenizer.json"));
  ASSERT_TRUE(ours_doc.ok() && original_doc.ok());
  const JsonValue* ours_merges = ours_doc->Find("model")->Find("merges");
  const JsonValue* original_merges = original_doc->Find("model")->Find("merges");
  ASSERT_EQ(ours_merges->array().size(), original_merges->array().size());
  for (size_t i = 0; i < ours_merges->array().size(); ++i) {
    for (size_t side = 0; side < 2; ++side) {
      ASSERT_EQ(ours_merges->array()[i].array()[side].string_value(),
                original_merges->array()[i].array()[side].string_value())
          << "merge " << i;
    }
  }
  auto ours = Tokenizer::FromJson(*json, *config);
  auto original = Tokenizer::FromJson(testing::ReadText(dir + "/tokenizer.json"),
                                      testing::ReadText(dir + "/tokenizer_config.json"));
  ASSERT_TRUE(ours.ok()) << ours.status().ToString();
  ASSERT_TRUE(original.ok());
  // Characters outside the vocabulary too (byte fallback), and the special tokens.
  testing::ExpectSameEncodings(*ours, *original, " \xc3\xa9t\xc3\xa9 \xe2\x82\xac</s>", /*decode=*/true);
}

}  // namespace
}  // namespace es
