// The tiny model's reference (models/tiny-qwen3-moe/reference/cases.jsonl): prompts with the logits of
// their last position and their greedy continuation, as transformers computed them. Shared by the CPU and CUDA
// model tests.
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "compute/generator.h"
#include "compute/model.h"
#include "store/base/json.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/tensors.h"
#include "tests/util/test_data.h"

namespace es::testing {

inline constexpr double kMaxReferenceRelL2 = 1e-3;
inline constexpr int32_t kTinyEos = 4093;

struct ReferenceCase {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  std::vector<int32_t> greedy;
};

inline std::vector<ReferenceCase> LoadReferenceCases() {
  std::vector<ReferenceCase> cases;
  std::ifstream in(kReferenceCases);
  std::string line;
  while (std::getline(in, line)) {
    auto v = ParseJson(line);
    EXPECT_TRUE(v.ok());
    if (!v.ok()) continue;
    ReferenceCase c;
    for (const auto& x : v->Find("ids")->array()) c.ids.push_back(static_cast<int32_t>(*x.AsInt64()));
    for (const auto& x : v->Find("last_logits")->array()) c.logits.push_back(static_cast<float>(*x.AsDouble()));
    for (const auto& x : v->Find("greedy")->array()) c.greedy.push_back(static_cast<int32_t>(*x.AsInt64()));
    cases.push_back(std::move(c));
  }
  return cases;
}

// Every case: the last logits within kMaxReferenceRelL2 and the same greedy continuation. The reference stops at
// EOS (included in its list) or where its top two logits were within 0.01, so a continuation without EOS is
// compared over the reference's length.
inline void ExpectMatchesReference(Model& model, ExpertProvider& experts) {
  auto cases = LoadReferenceCases();
  ASSERT_GE(cases.size(), 5u);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const ReferenceCase& c = cases[i];
    auto logits = LastLogits(model, experts, c.ids, {});
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    EXPECT_LT(RelativeL2(*logits, c.logits), kMaxReferenceRelL2);
    std::vector<int32_t> want = c.greedy;
    const bool ends_with_eos = !want.empty() && want.back() == kTinyEos;
    if (ends_with_eos) want.pop_back();
    auto got = GenerateIds(model, experts, c.ids, static_cast<uint32_t>(c.greedy.size()), {kTinyEos},
                           SamplerOptions{}, {});
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    if (!ends_with_eos) got->resize(std::min(got->size(), want.size()));
    EXPECT_EQ(*got, want);
  }
}


// aidreams260K converted to the Mixtral layout (fp32 weights, tied embeddings) generates what the original
// llama2.c program does from BOS (its README). The training texts are quoted, so the first generated token is the
// opening quote.
inline void ExpectAidreamsKnownText(Model& model, ExpertProvider& experts) {
  auto tok = Tokenizer::FromJson(ReadText(std::string(kAidreams) + "/tokenizer.json"));
  ASSERT_TRUE(tok.ok());
  GenerateOptions o;
  o.max_tokens = 20;
  auto r = Generate(model, *tok, experts, "", o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->text.rfind("\"Echoes of vectors unfold, a gentle hum of precision", 0), 0u) << r->text;
}

}  // namespace es::testing
