// BpeModel against a naive BPE on random vocabularies (both merge strategies, cached and not), and the
// unknown-character rules (unk, fuse_unk, byte fallback).
#include "compute/tokenizer/bpe.h"

#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <random>

#include "compute/tokenizer/tokenizer_impl.h"  // ByteFallbackToken

namespace es {
namespace {

constexpr int kRandomVocabularies = 20;
constexpr int kMergesPerVocabulary = 300;
constexpr int kWordsPerVocabulary = 200;
constexpr int kMaxWordLength = 120;

struct CharVocabulary {
  std::vector<std::string> tokens;            // id -> text
  std::map<std::string, TokenId> ids;          // text -> id
  std::vector<std::pair<TokenId, TokenId>> merges;
  std::vector<TokenId> merged;

  TokenId Add(const std::string& text) {
    auto [it, inserted] = ids.emplace(text, static_cast<TokenId>(tokens.size()));
    if (inserted) tokens.push_back(text);
    return it->second;
  }
};

CharVocabulary RandomVocabulary(std::mt19937& rng) {
  CharVocabulary v;
  for (char c : std::string("abcd")) v.Add(std::string(1, c));
  std::map<std::pair<TokenId, TokenId>, bool> seen;
  for (int i = 0; i < kMergesPerVocabulary; ++i) {
    // Prefer recent (longer) tokens on one side now and then, so that merges chain.
    std::uniform_int_distribution<size_t> any(0, v.tokens.size() - 1);
    const TokenId left = static_cast<TokenId>(any(rng));
    const TokenId right = static_cast<TokenId>(any(rng));
    if (!seen.emplace(std::make_pair(left, right), true).second) continue;
    const TokenId result = v.Add(v.tokens[left] + v.tokens[right]);
    v.merges.emplace_back(left, right);
    v.merged.push_back(result);
  }
  return v;
}

// The definition of BPE, written as plainly as possible.
std::vector<TokenId> NaiveBpe(const CharVocabulary& v, const std::string& word) {
  std::vector<TokenId> ids;
  for (char c : word) ids.push_back(v.ids.at(std::string(1, c)));
  std::map<std::pair<TokenId, TokenId>, size_t> rank;
  for (size_t r = 0; r < v.merges.size(); ++r) rank.emplace(v.merges[r], r);
  while (true) {
    size_t best = 0;
    size_t best_rank = std::numeric_limits<size_t>::max();
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      auto it = rank.find({ids[i], ids[i + 1]});
      if (it != rank.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == std::numeric_limits<size_t>::max()) return ids;
    ids[best] = v.merged[best_rank];
    ids.erase(ids.begin() + static_cast<ptrdiff_t>(best) + 1);
  }
}

std::unique_ptr<BpeModel> BuildModel(const CharVocabulary& v, BpeModel::Options options) {
  std::vector<std::pair<std::string_view, TokenId>> keys;
  for (size_t id = 0; id < v.tokens.size(); ++id) keys.emplace_back(v.tokens[id], static_cast<TokenId>(id));
  std::array<std::optional<TokenId>, 256> no_bytes{};
  std::array<std::string, 256> no_text{};
  std::array<std::optional<TokenId>, 256> fallback{};
  for (unsigned b = 0; b < 256; ++b) {
    if (auto it = v.ids.find(ByteFallbackToken(static_cast<uint8_t>(b))); it != v.ids.end()) fallback[b] = it->second;
  }
  auto model = BpeModel::Build(options, keys, v.merges, v.merged, no_bytes, no_text, fallback);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return std::move(model).value();
}

TEST(BpeModelTest, LinearAndHeapMergingMatchTheNaiveDefinition) {
  std::mt19937 rng(7);
  for (int round = 0; round < kRandomVocabularies; ++round) {
    const CharVocabulary v = RandomVocabulary(rng);
    BpeModel::Options linear;
    linear.use_cache = false;
    linear.linear_scan_limit = std::numeric_limits<size_t>::max();
    BpeModel::Options heap = linear;
    heap.linear_scan_limit = 0;
    BpeModel::Options cached;  // defaults: cache on, mixed strategy
    auto linear_model = BuildModel(v, linear);
    auto heap_model = BuildModel(v, heap);
    auto cached_model = BuildModel(v, cached);
    std::uniform_int_distribution<int> length(1, kMaxWordLength);
    std::uniform_int_distribution<int> letter(0, 3);
    BpeScratch scratch;
    for (int w = 0; w < kWordsPerVocabulary; ++w) {
      std::string word;
      for (int i = length(rng); i > 0; --i) word.push_back(static_cast<char>('a' + letter(rng)));
      const std::vector<TokenId> want = NaiveBpe(v, word);
      for (const BpeModel* model : {linear_model.get(), heap_model.get(), cached_model.get()}) {
        for (int repeat = 0; repeat < 2; ++repeat) {  // the second time, from the cache where enabled
          std::vector<TokenId> got;
          model->Encode(word, got, scratch);
          ASSERT_EQ(got, want) << "word " << word << " round " << round;
        }
      }
    }
  }
}

class BpeUnknownTest : public ::testing::Test {
 protected:
  BpeUnknownTest() {
    for (const char* t : {"a", "b", "<unk>", "<0x78>", "ab"}) v_.Add(t);
    v_.merges.emplace_back(v_.ids["a"], v_.ids["b"]);
    v_.merged.push_back(v_.ids["ab"]);
  }
  std::vector<TokenId> Encode(BpeModel::Options options, std::string_view word) {
    options.use_cache = false;
    auto model = BuildModel(v_, options);
    std::vector<TokenId> out;
    BpeScratch scratch;
    model->Encode(word, out, scratch);
    return out;
  }
  CharVocabulary v_;
};

TEST_F(BpeUnknownTest, UnknownCharactersFollowUnkFuseAndFallbackRules) {
  const TokenId a = 0, b = 1, unk = 2, x_byte = 3, ab = 4;
  BpeModel::Options options;
  // No unk token: unknown characters are dropped, as tokenizers does.
  EXPECT_EQ(Encode(options, "azzb"), (std::vector<TokenId>{ab}));
  options.unk_id = unk;
  EXPECT_EQ(Encode(options, "azzb"), (std::vector<TokenId>{a, unk, unk, b}));
  options.fuse_unk = true;
  EXPECT_EQ(Encode(options, "azzb"), (std::vector<TokenId>{a, unk, b}));
  options.byte_fallback = true;
  // 'x' has a byte token; 'z' does not and stays unknown.
  EXPECT_EQ(Encode(options, "axb"), (std::vector<TokenId>{a, x_byte, b}));
  // tokenizers adds byte tokens before flushing a pending unk; kept for exact parity.
  EXPECT_EQ(Encode(options, "zx"), (std::vector<TokenId>{x_byte, unk}));
  options.ignore_merges = true;
  EXPECT_EQ(Encode(options, "ab"), (std::vector<TokenId>{ab}));
}

TEST(TokenTableTest, FindsEveryKeyAndRejectsDuplicates) {
  std::vector<std::string> storage;
  for (int i = 0; i < 1000; ++i) storage.push_back(std::to_string(i) + "k");
  std::vector<std::pair<std::string_view, TokenId>> entries;
  for (size_t i = 0; i < storage.size(); ++i) entries.emplace_back(storage[i], static_cast<TokenId>(i * 3));
  TokenTable table;
  ASSERT_TRUE(table.Build(entries).ok());
  for (size_t i = 0; i < storage.size(); ++i) EXPECT_EQ(table.Find(storage[i]), static_cast<TokenId>(i * 3));
  EXPECT_FALSE(table.Find("missing").has_value());
  EXPECT_FALSE(table.Find("").has_value());
  entries.emplace_back("5k", 1);
  EXPECT_TRUE(table.Build(entries).IsInvalidArgument());
}

}  // namespace
}  // namespace es
