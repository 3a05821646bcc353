// SplitRegex against ICU regex as the reference model on corpus and random Unicode text, the specialized
// matcher against the generic one, and refusal of every construct outside the family.
#include "compute/tokenizer/split_regex.h"

#include <gtest/gtest.h>
#include <unicode/uregex.h>
#include <unicode/utext.h>

#include <fstream>
#include <random>
#include <sstream>

#include "compute/tokenizer/unicode.h"
#include "store/base/json.h"
#include "tests/util/files.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

using Spans = std::vector<std::pair<size_t, size_t>>;

constexpr std::string_view kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kDeepSeekPattern =
    R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kCjkPattern = "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+";
constexpr std::string_view kLazyPattern = R"(\p{L}+?\p{N}|[a-z]{2,4}?x|\s+)";

constexpr int kRandomStrings = 3000;
constexpr int kMaxRandomLength = 40;

// All matches by ICU, as byte offsets (a UTF-8 UText's native indexes are byte offsets).
Spans IcuMatches(std::string_view pattern, std::string_view text) {
  UErrorCode error = U_ZERO_ERROR;
  UParseError parse_error;
  UText* utext_pattern = utext_openUTF8(nullptr, pattern.data(), static_cast<int64_t>(pattern.size()), &error);
  URegularExpression* re = uregex_openUText(utext_pattern, 0, &parse_error, &error);
  UText* subject = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &error);
  uregex_setUText(re, subject, &error);
  Spans out;
  while (U_SUCCESS(error) && uregex_findNext(re, &error)) {
    out.emplace_back(static_cast<size_t>(uregex_start64(re, 0, &error)),
                     static_cast<size_t>(uregex_end64(re, 0, &error)));
  }
  EXPECT_TRUE(U_SUCCESS(error)) << u_errorName(error) << " for pattern " << pattern;
  uregex_close(re);
  utext_close(subject);
  utext_close(utext_pattern);
  return out;
}

Spans OurMatches(const SplitRegex& regex, std::string_view text) {
  MatchScratch scratch;
  Spans out;
  EXPECT_TRUE(regex.FindAll(text, scratch, out).ok());
  return out;
}

std::vector<std::string> CorpusTexts() {
  std::vector<std::string> texts;
  for (const std::string& file : {std::string(testing::kCorpus), std::string(testing::kQwen3TokenizerDir) + "/reference.jsonl"}) {
    std::istringstream lines(testing::ReadText(file));
    std::string line;
    while (std::getline(lines, line)) {
      auto doc = ParseJson(line);
      if (doc.ok() && doc->Find("text") != nullptr) texts.push_back(doc->Find("text")->string_value());
    }
  }
  return texts;
}

// Random text from characters chosen to sit on every class boundary the patterns care about.
std::vector<std::string> RandomTexts(uint32_t seed) {
  const std::vector<char32_t> pool = {
      'a', 'Z', 's', 'S', 't', 'T', 'l', 'L', 'd', 'e', 'r', 'v', 'm', 'x', 'k', '0', '7', ' ', ' ', ' ', '\t',
      '\n', '\r', '\v', '\f', '\'', '\'', '-', '.', ',', '!', '"', '_', '(', '[', '\\', 0x17F /* long s */,
      0x212A /* Kelvin */, 0x85 /* NEL */, 0xA0 /* NBSP */, 0x3000 /* ideographic space */, 0x2028, 0x1680,
      0x200B /* zero width space: not White_Space */, 0x4E2D, 0x6587, 0x3042, 0x30A2, 0x0416, 0x0436,
      0x0301 /* combining acute */, 0x0663 /* Arabic-Indic 3 */, 0xBD /* 1/2 */, 0x216B /* Roman 12 */,
      0x1C5 /* Dz titlecase */, 0x2F0 /* modifier letter */, 0x1F600, 0x1F469, 0x200D /* ZWJ */, 0x2581,
      0x3001, 0xFF01, 0x1B /* ESC */, 0xE9, 0xDF};
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  std::uniform_int_distribution<int> length(0, kMaxRandomLength);
  std::vector<std::string> texts;
  for (int i = 0; i < kRandomStrings; ++i) {
    std::string s;
    const int n = length(rng);
    for (int k = 0; k < n; ++k) unicode::AppendUtf8(pool[pick(rng)], s);
    texts.push_back(std::move(s));
  }
  return texts;
}

class SplitRegexDifferentialTest : public ::testing::TestWithParam<std::string_view> {};

TEST_P(SplitRegexDifferentialTest, MatchesIcuOnCorpusAndRandomText) {
  auto regex = SplitRegex::Compile(GetParam());
  ASSERT_TRUE(regex.ok()) << regex.status().ToString();
  std::vector<std::string> texts = CorpusTexts();
  ASSERT_GT(texts.size(), 700u);
  for (auto& t : RandomTexts(/*seed=*/42)) texts.push_back(std::move(t));
  size_t checked = 0;
  for (const std::string& text : texts) {
    ASSERT_EQ(OurMatches(*regex, text), IcuMatches(GetParam(), text)) << "text: " << text;
    ++checked;
  }
  EXPECT_EQ(checked, texts.size());
}

TEST_P(SplitRegexDifferentialTest, GenericMatcherAgreesWithTheSpecializedOne) {
  auto fast = SplitRegex::Compile(GetParam());
  auto generic = SplitRegex::Compile(GetParam(), /*specialize=*/false);
  ASSERT_TRUE(fast.ok() && generic.ok());
  EXPECT_FALSE(generic->specialized());
  EXPECT_EQ(fast->specialized(), GetParam() == kQwenPattern || GetParam() == kLlama3Pattern);
  for (const std::string& text : RandomTexts(/*seed=*/1234)) {
    ASSERT_EQ(OurMatches(*fast, text), OurMatches(*generic, text)) << "text: " << text;
  }
}

INSTANTIATE_TEST_SUITE_P(PreTokenizerPatterns, SplitRegexDifferentialTest,
                         ::testing::Values(kQwenPattern, kGpt2Pattern, kLlama3Pattern, kDeepSeekPattern,
                                           kCjkPattern, kLazyPattern));

TEST(SplitRegexTest, QwenPatternSplitsAsTheTokenizerExpects) {
  auto regex = SplitRegex::Compile(kQwenPattern);
  ASSERT_TRUE(regex.ok());
  auto pieces = [&](std::string_view text) {
    std::vector<std::string> out;
    for (auto [b, e] : OurMatches(*regex, text)) out.emplace_back(text.substr(b, e - b));
    return out;
  };
  EXPECT_EQ(pieces("Hello, world!"), (std::vector<std::string>{"Hello", ",", " world", "!"}));
  // \s+(?!\S) leaves the last space to the word after it.
  EXPECT_EQ(pieces("  leading and trailing  "),
            (std::vector<std::string>{" ", " leading", " and", " trailing", "  "}));
  // Digits one at a time; contractions case-insensitively.
  EXPECT_EQ(pieces("x123"), (std::vector<std::string>{"x", "1", "2", "3"}));
  EXPECT_EQ(pieces("I'LL we'Re"), (std::vector<std::string>{"I", "'LL", " we", "'Re"}));
  // \s*[\r\n]+ takes white space up to and including the last line break.
  EXPECT_EQ(pieces("a \n\n b"), (std::vector<std::string>{"a", " \n\n", " b"}));
}

TEST(SplitRegexTest, CaseInsensitiveLiteralsUseSimpleCaseFolding) {
  auto regex = SplitRegex::Compile("(?i:'s)");
  ASSERT_TRUE(regex.ok());
  MatchScratch scratch;
  EXPECT_EQ(regex->MatchAt("'S", 0, scratch), 2u);
  EXPECT_EQ(regex->MatchAt("'s", 0, scratch), 2u);
  EXPECT_EQ(regex->MatchAt("'\u017F", 0, scratch), 3u);  // long s folds to s, as in Oniguruma
  EXPECT_EQ(regex->MatchAt("'t", 0, scratch), SplitRegex::kNoMatch);
}

TEST(SplitRegexTest, EmptyMatchesFollowOnigFindIter) {
  // An empty match is not allowed where the previous match ended; the search then steps one character.
  auto star = SplitRegex::Compile("x*");
  ASSERT_TRUE(star.ok());
  EXPECT_EQ(OurMatches(*star, "ab"), (Spans{{0, 0}, {1, 1}, {2, 2}}));
  EXPECT_EQ(OurMatches(*star, "xxa"), (Spans{{0, 2}, {3, 3}}));
  EXPECT_EQ(OurMatches(*star, ""), (Spans{{0, 0}}));
}

TEST(SplitRegexTest, CountedAndLazyRepeats) {
  auto counted = SplitRegex::Compile("a{2,3}");
  ASSERT_TRUE(counted.ok());
  EXPECT_EQ(OurMatches(*counted, "aaaaa"), (Spans{{0, 3}, {3, 5}}));
  auto lazy = SplitRegex::Compile("a+?");
  ASSERT_TRUE(lazy.ok());
  EXPECT_EQ(OurMatches(*lazy, "aaa"), (Spans{{0, 1}, {1, 2}, {2, 3}}));
  auto group = SplitRegex::Compile("(?:ab){2}|a");
  ASSERT_TRUE(group.ok());
  EXPECT_EQ(OurMatches(*group, "ababa"), (Spans{{0, 4}, {4, 5}}));
  auto literal = SplitRegex::Literal("--");
  EXPECT_EQ(OurMatches(literal, "a---b--"), (Spans{{1, 3}, {5, 7}}));
}

TEST(SplitRegexTest, RefusesConstructsOutsideTheFamily) {
  for (std::string_view pattern : {R"((a)\1)", "(?<=a)b", "(?<!a)b", R"(\w+)", R"(\bword)", "^a", "a$",
                                   "a*+", "(?>ab)", R"(\p{Han})", "(?i:[a-z])", "(?x)a", "[[:alpha:]]",
                                   "(a*)*", "[a&&b]"}) {
    auto regex = SplitRegex::Compile(pattern);
    ASSERT_FALSE(regex.ok()) << pattern;
    EXPECT_TRUE(regex.status().IsNotSupported()) << pattern << ": " << regex.status().ToString();
  }
}

TEST(SplitRegexTest, HostilePatternsAreBounded) {
  // Exponential backtracking: a single attempt without the memo hits the step limit and says so instead of
  // hanging; FindAll, which remembers the states it explored, answers at once and right.
  auto exponential = SplitRegex::Compile("(?:a|a)*b");
  ASSERT_TRUE(exponential.ok());
  MatchScratch scratch;
  Spans out;
  EXPECT_EQ(exponential->MatchAt(std::string(40, 'a'), 0, scratch), SplitRegex::kBudgetExceeded);
  EXPECT_TRUE(exponential->FindAll(std::string(40, 'a'), scratch, out).ok());
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(OurMatches(*exponential, std::string(40, 'a') + "b"), (Spans{{0, 41}}));
  EXPECT_EQ(OurMatches(*exponential, "aab"), (Spans{{0, 3}}));
  // Polynomial blow-up across start positions (each attempt fails after scanning to the end): a pattern the
  // fuzzer found took seconds over 40 characters; the memo carries failures from one attempt to the next.
  auto chain_of_stars = SplitRegex::Compile(".*.?.?.*.*.?.*? ?.*.*(?i).?..o>");
  ASSERT_TRUE(chain_of_stars.ok());
  const std::string long_text(2000, 'x');
  out.clear();
  EXPECT_TRUE(chain_of_stars->FindAll(long_text, scratch, out).ok());
  EXPECT_TRUE(out.empty());
  // The memo changes the work, never the matches: ICU agrees on the hostile patterns too.
  for (std::string_view text : {"ab xyzO>", "xo>\nab xo> yo>", "aaaab", "aaa", "ba ab aab\n b"}) {
    EXPECT_EQ(OurMatches(*chain_of_stars, text), IcuMatches(".*.?.?.*.*.?.*? ?.*.*(?i).?..o>", text)) << text;
    EXPECT_EQ(OurMatches(*exponential, text), IcuMatches("(?:a|a)*b", text)) << text;
  }
  // Counts beyond the limit are refused, not clamped.
  EXPECT_TRUE(SplitRegex::Compile("a{5000,}").status().IsNotSupported());
  EXPECT_TRUE(SplitRegex::Compile("(?:ab){2000}").status().IsNotSupported());
  // A long chain of optional atoms compiles (its first-set analysis is bounded) and still matches right.
  std::string chain;
  for (int i = 0; i < 5000; ++i) chain += "a?";
  chain += "b";
  auto long_chain = SplitRegex::Compile(chain);
  ASSERT_TRUE(long_chain.ok()) << long_chain.status().ToString();
  EXPECT_EQ(OurMatches(*long_chain, "aaab"), (Spans{{0, 4}}));
  // Deep nesting is refused before it can exhaust the stack.
  EXPECT_FALSE(SplitRegex::Compile(std::string(1000, '(') + "a" + std::string(1000, ')')).ok());
}

TEST(SplitRegexTest, RejectsMalformedPatterns) {
  for (std::string_view pattern : {"(ab", "ab)", "[ab", "*a", "a|+", R"(\p{L)", "[z-a]", "\\", R"(\x{110000})"}) {
    auto regex = SplitRegex::Compile(pattern);
    ASSERT_FALSE(regex.ok()) << pattern;
    EXPECT_TRUE(regex.status().IsInvalidArgument()) << pattern << ": " << regex.status().ToString();
  }
  EXPECT_TRUE(SplitRegex::Compile(std::string_view("\xFF", 1)).status().IsInvalidArgument());
}

}  // namespace
}  // namespace es
