// Two tokenizers against each other over the shared corpus: the same ids for every text (with `suffix` appended:
// special tokens, characters outside a vocabulary), and, when asked, the same decoded text.
#pragma once

#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "compute/tokenizer/tokenizer.h"
#include "store/base/json.h"
#include "tests/util/files.h"
#include "tests/util/test_data.h"

namespace es::testing {

inline void ExpectSameEncodings(const Tokenizer& ours, const Tokenizer& original, const std::string& suffix,
                                bool decode) {
  std::istringstream corpus(ReadText(kCorpus));
  std::string line;
  size_t texts = 0, tokens = 0;
  while (std::getline(corpus, line)) {
    auto doc = ParseJson(line);
    ASSERT_TRUE(doc.ok());
    const std::string text = doc->Find("text")->string_value() + suffix;
    auto a = ours.Encode(text);
    auto b = original.Encode(text);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(*a, *b) << "text " << texts;
    if (decode) {
      auto back = ours.Decode(*a);
      auto back_original = original.Decode(*b);
      ASSERT_TRUE(back.ok() && back_original.ok());
      EXPECT_EQ(*back, *back_original) << "text " << texts;
    }
    tokens += a->size();
    ++texts;
  }
  EXPECT_GT(texts, 100u);
  EXPECT_GT(tokens, 10'000u);
}

}  // namespace es::testing
