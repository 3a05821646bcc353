// Tokenizer on the real Qwen3 (exact reference ids), tiny-qwen3-moe and aidreams-mixtral tokenizers, small
// synthetic tokenizer.json documents for each feature, and one negative test per bad-input class.
#include "compute/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "compute/tokenizer/tokenizer_impl.h"  // ByteToUnicode, to name byte-level tokens
#include "compute/tokenizer/unicode.h"
#include "store/base/json.h"
#include "tests/util/files.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

const std::string kQwen3Dir = testing::kQwen3TokenizerDir;
const std::string kTinyQwenDir = testing::kTinyModel;
const std::string kMixtralDir = testing::kAidreams;

constexpr size_t kQwen3VocabSize = 151669;
constexpr size_t kQwen3ReferenceLines = 98;
constexpr TokenId kQwenEndOfText = 151643;
constexpr TokenId kQwenImStart = 151644;
constexpr TokenId kQwenImEnd = 151645;
constexpr TokenId kQwenToolCall = 151657;  // an added token that is not special
constexpr size_t kCorpusDomains = 7;
constexpr TokenId kMixtralBos = 1;
constexpr TokenId kMixtralEos = 2;
constexpr TokenId kMixtralUnk = 0;
constexpr int kThreads = 4;

struct ReferenceLine {
  std::string text;
  std::vector<TokenId> ids;
};

std::vector<ReferenceLine> QwenReference() {
  std::vector<ReferenceLine> lines;
  std::istringstream in(testing::ReadText(kQwen3Dir + "/reference.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    auto doc = ParseJson(line);
    EXPECT_TRUE(doc.ok());
    ReferenceLine ref;
    ref.text = doc->Find("text")->string_value();
    for (const JsonValue& v : doc->Find("ids")->array()) ref.ids.push_back(static_cast<TokenId>(*v.AsUint64()));
    lines.push_back(std::move(ref));
  }
  return lines;
}

std::vector<std::pair<std::string, std::string>> Corpus() {
  std::vector<std::pair<std::string, std::string>> out;  // (domain, text)
  std::istringstream in(testing::ReadText(testing::kCorpus));
  std::string line;
  while (std::getline(in, line)) {
    auto doc = ParseJson(line);
    EXPECT_TRUE(doc.ok());
    out.emplace_back(doc->Find("domain")->string_value(), doc->Find("text")->string_value());
  }
  return out;
}

// The shared tokenizers load once for the whole binary (the Qwen3 one is 11 MB).
const Tokenizer& Qwen3() {
  static const Tokenizer* t = [] {
    auto r = Tokenizer::FromFile(kQwen3Dir + "/tokenizer.json", kQwen3Dir + "/tokenizer_config.json");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return new Tokenizer(std::move(r).value());
  }();
  return *t;
}

const Tokenizer& Mixtral() {
  static const Tokenizer* t = [] {
    auto r = Tokenizer::FromFile(kMixtralDir + "/tokenizer.json", kMixtralDir + "/tokenizer_config.json");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return new Tokenizer(std::move(r).value());
  }();
  return *t;
}

// Decodes `ids` one at a time; every piece must be valid UTF-8 on its own.
std::string StreamDecode(const Tokenizer& t, const std::vector<TokenId>& ids, DecodeOptions options = {}) {
  StreamDecoder stream(t, options);
  std::string out;
  for (TokenId id : ids) {
    auto piece = stream.Push(id);
    EXPECT_TRUE(piece.ok()) << piece.status().ToString();
    EXPECT_TRUE(unicode::IsValidUtf8(*piece));
    out += *piece;
  }
  out += stream.Finish();
  return out;
}

TokenId ByteToken(const Tokenizer& t, unsigned char byte) {
  std::string text;
  unicode::AppendUtf8(ByteToUnicode()[byte], text);
  auto id = t.TokenToId(text);
  EXPECT_TRUE(id.has_value()) << "no token for byte " << int{byte};
  return id.value_or(0);
}

// Qwen3 ----------------------------------------------------------------------------------------------------

TEST(Qwen3TokenizerTest, EncodesEveryReferenceLineExactly) {
  const auto reference = QwenReference();
  ASSERT_EQ(reference.size(), kQwen3ReferenceLines);
  for (size_t i = 0; i < reference.size(); ++i) {
    // Qwen3 has no post-processor template: special tokens or not, the ids are the same.
    for (bool add_special : {false, true}) {
      auto ids = Qwen3().Encode(reference[i].text, {.add_special_tokens = add_special});
      ASSERT_TRUE(ids.ok()) << ids.status().ToString();
      EXPECT_EQ(*ids, reference[i].ids) << "line " << i << ": " << reference[i].text;
    }
  }
}

TEST(Qwen3TokenizerTest, DecodesEveryReferenceLineBackToItsText) {
  for (const auto& ref : QwenReference()) {
    auto text = Qwen3().Decode(ref.ids);
    ASSERT_TRUE(text.ok()) << text.status().ToString();
    EXPECT_EQ(*text, ref.text);
    EXPECT_EQ(StreamDecode(Qwen3(), ref.ids), ref.text);
  }
}

TEST(Qwen3TokenizerTest, VocabularyAndSpecialTokens) {
  const Tokenizer& t = Qwen3();
  EXPECT_EQ(t.vocab_size(), kQwen3VocabSize);
  EXPECT_EQ(t.IdToToken(kQwenEndOfText), "<|endoftext|>");
  EXPECT_EQ(t.TokenToId("<|im_start|>"), kQwenImStart);
  EXPECT_EQ(t.TokenToId("Ġthe"), 279u);
  EXPECT_EQ(t.IdToToken(279), "Ġthe");
  EXPECT_FALSE(t.IdToToken(static_cast<TokenId>(kQwen3VocabSize)).has_value());
  EXPECT_FALSE(t.TokenToId("not a token at all").has_value());
  EXPECT_TRUE(t.IsSpecial(kQwenEndOfText));
  EXPECT_FALSE(t.IsSpecial(kQwenToolCall));
  EXPECT_FALSE(t.IsSpecial(279));
  // From tokenizer_config.json: no bos, eos <|im_end|>, pad <|endoftext|>.
  EXPECT_FALSE(t.bos_id().has_value());
  EXPECT_EQ(t.eos_id(), kQwenImEnd);
  EXPECT_EQ(t.pad_id(), kQwenEndOfText);
  EXPECT_FALSE(t.unk_id().has_value());
  // Every id's text maps back to it.
  for (TokenId id = 0; id < t.vocab_size(); id += 97) EXPECT_EQ(t.TokenToId(*t.IdToToken(id)), id);
}

TEST(Qwen3TokenizerTest, NormalizesToNfcBeforeSplitting) {
  // "é" composed (U+00E9) and decomposed (e + U+0301) must encode identically.
  auto composed = Qwen3().Encode("caf\u00E9 na\u00EFve");
  auto decomposed = Qwen3().Encode("cafe\u0301 nai\u0308ve");
  ASSERT_TRUE(composed.ok() && decomposed.ok());
  EXPECT_EQ(*composed, *decomposed);
}

TEST(Qwen3TokenizerTest, SpecialTokensCanBeTreatedAsText) {
  const std::string text = "<|im_start|>user";
  auto parsed = Qwen3().Encode(text);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->front(), kQwenImStart);
  auto literal = Qwen3().Encode(text, {.parse_special_tokens = false});
  ASSERT_TRUE(literal.ok());
  EXPECT_EQ(std::count(literal->begin(), literal->end(), kQwenImStart), 0);
  EXPECT_GT(literal->size(), parsed->size());
  EXPECT_EQ(*Qwen3().Decode(*literal), text);
  // A non-special added token is still recognised.
  auto tool = Qwen3().Encode("<tool_call>", {.parse_special_tokens = false});
  ASSERT_TRUE(tool.ok());
  EXPECT_EQ(*tool, std::vector<TokenId>{kQwenToolCall});
}

TEST(Qwen3TokenizerTest, SkipSpecialTokensWhenDecoding) {
  auto ids = Qwen3().Encode("<|im_start|>user\nhi<|im_end|><tool_call>");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*Qwen3().Decode(*ids), "<|im_start|>user\nhi<|im_end|><tool_call>");
  EXPECT_EQ(*Qwen3().Decode(*ids, {.skip_special_tokens = true}), "user\nhi<tool_call>");
  EXPECT_EQ(StreamDecode(Qwen3(), *ids, {.skip_special_tokens = true}), "user\nhi<tool_call>");
}

TEST(Qwen3TokenizerTest, StreamingHoldsBackIncompleteUtf8) {
  const Tokenizer& t = Qwen3();
  StreamDecoder stream(t);
  // U+1F600 is F0 9F 98 80: nothing comes out until its last byte arrives.
  const unsigned char emoji[] = {0xF0, 0x9F, 0x98, 0x80};
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(*stream.Push(ByteToken(t, emoji[i])), "");
  EXPECT_EQ(*stream.Push(ByteToken(t, emoji[3])), "\U0001F600");
  EXPECT_EQ(*stream.Push(ByteToken(t, 'a')), "a");
  // A byte that can never start a sequence is replaced at once; a sequence broken by a new lead byte is
  // replaced when the break is seen; one left incomplete at the end is replaced by Finish.
  EXPECT_EQ(*stream.Push(ByteToken(t, 0xFF)), "\uFFFD");
  EXPECT_EQ(*stream.Push(ByteToken(t, 0xE6)), "");
  EXPECT_EQ(*stream.Push(ByteToken(t, 'b')), "\uFFFDb");
  EXPECT_EQ(*stream.Push(ByteToken(t, 0xE6)), "");
  EXPECT_EQ(*stream.Push(ByteToken(t, 0x97)), "");
  EXPECT_EQ(stream.Finish(), "\uFFFD");
  // Decode agrees with the stream on the same invalid bytes.
  std::vector<TokenId> ids = {ByteToken(t, 0xFF), ByteToken(t, 0xE6), ByteToken(t, 'b'), ByteToken(t, 0xE6),
                              ByteToken(t, 0x97)};
  EXPECT_EQ(*t.Decode(ids), "\uFFFD\uFFFDb\uFFFD");
  EXPECT_EQ(StreamDecode(t, ids), "\uFFFD\uFFFDb\uFFFD");
}

TEST(Qwen3TokenizerTest, PreTokenizeShowsTheWords) {
  auto words = Qwen3().PreTokenize("Hello, world!<|endoftext|>  x");
  ASSERT_TRUE(words.ok());
  EXPECT_EQ(*words, (std::vector<std::string>{"Hello", ",", " world", "!", "<|endoftext|>", " ", " x"}));
}

TEST(Qwen3TokenizerTest, RejectsInvalidInput) {
  EXPECT_TRUE(Qwen3().Encode(std::string_view("ab\xC3", 3)).status().IsInvalidArgument());
  EXPECT_TRUE(Qwen3().Encode(std::string_view("\xED\xA0\x80", 3)).status().IsInvalidArgument());  // surrogate
  const std::vector<TokenId> out_of_range = {1, static_cast<TokenId>(kQwen3VocabSize)};
  EXPECT_TRUE(Qwen3().Decode(out_of_range).status().IsInvalidArgument());
  StreamDecoder stream(Qwen3());
  EXPECT_TRUE(stream.Push(static_cast<TokenId>(kQwen3VocabSize + 5)).status().IsInvalidArgument());
}

TEST(Qwen3TokenizerTest, EncodesConsistentlyFromSeveralThreads) {
  const auto reference = QwenReference();
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int k = 0; k < kThreads; ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 3; ++round) {
        for (const auto& ref : reference) {
          auto ids = Qwen3().Encode(ref.text);
          if (!ids.ok() || *ids != ref.ids) ++failures[k];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int k = 0; k < kThreads; ++k) EXPECT_EQ(failures[k], 0) << "thread " << k;
}

// tiny-qwen3-moe ---------------------------------------------------------------------------------------------

TEST(TinyQwenTokenizerTest, RoundTripsEveryDomainOfTheCorpus) {
  auto t = Tokenizer::FromFile(kTinyQwenDir + "/tokenizer.json", kTinyQwenDir + "/tokenizer_config.json");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->vocab_size(), 4096u);
  EXPECT_EQ(t->eos_id(), 4093u);
  EXPECT_EQ(t->pad_id(), 4093u);
  EXPECT_FALSE(t->bos_id().has_value());
  std::map<std::string, size_t> per_domain;
  for (const auto& [domain, text] : Corpus()) {
    auto ids = t->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    EXPECT_FALSE(ids->empty());
    for (TokenId id : *ids) ASSERT_LT(id, t->vocab_size());
    EXPECT_EQ(*t->Decode(*ids), text) << domain;
    EXPECT_EQ(StreamDecode(*t, *ids), text) << domain;
    ++per_domain[domain];
  }
  EXPECT_EQ(per_domain.size(), kCorpusDomains);
  for (const char* domain : {"english", "german", "spanish", "russian", "chinese", "python", "c"}) {
    EXPECT_GT(per_domain[domain], 0u) << domain;
  }
}

// aidreams-mixtral (SentencePiece BPE) -------------------------------------------------------------------

TEST(MixtralTokenizerTest, SpecialTokensFromTemplateAndConfig) {
  const Tokenizer& t = Mixtral();
  EXPECT_EQ(t.vocab_size(), 512u);
  EXPECT_EQ(t.bos_id(), kMixtralBos);
  EXPECT_EQ(t.eos_id(), kMixtralEos);
  EXPECT_EQ(t.unk_id(), kMixtralUnk);
  EXPECT_TRUE(t.IsSpecial(kMixtralBos));
  // Without tokenizer_config.json, bos comes from the post-processor template.
  auto bare = Tokenizer::FromJson(testing::ReadText(kMixtralDir + "/tokenizer.json"));
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->bos_id(), kMixtralBos);
  EXPECT_FALSE(bare->eos_id().has_value());
  EXPECT_EQ(bare->unk_id(), kMixtralUnk);
}

TEST(MixtralTokenizerTest, EncodesAsDerivedByHandFromTheMerges) {
  const Tokenizer& t = Mixtral();
  // "of a": the normalizer makes "▁of▁a"; merges ('▁','o') -> '▁o', ('▁o','f') -> '▁of', ('▁','a') -> '▁a'.
  const TokenId of = *t.TokenToId("\u2581of");
  const TokenId a = *t.TokenToId("\u2581a");
  EXPECT_EQ(of, 275u);
  EXPECT_EQ(a, 262u);
  EXPECT_EQ(*t.Encode("of a"), (std::vector<TokenId>{kMixtralBos, of, a}));
  EXPECT_EQ(*t.Encode("of a", {.add_special_tokens = false}), (std::vector<TokenId>{of, a}));
  // "Hello": no merge joins 'H' with a neighbour but ('e','l') does: ▁ H el l o.
  EXPECT_EQ(*t.Encode("Hello", {.add_special_tokens = false}),
            (std::vector<TokenId>{*t.TokenToId("\u2581"), *t.TokenToId("H"), *t.TokenToId("el"),
                                  *t.TokenToId("l"), *t.TokenToId("o")}));
}

TEST(MixtralTokenizerTest, FallsBackToBytesForCharactersOutsideTheVocabulary) {
  const Tokenizer& t = Mixtral();
  ASSERT_FALSE(t.TokenToId("\u65E5").has_value());  // 日 is not in the 512-token vocabulary
  auto ids = t.Encode("\u65E5");
  ASSERT_TRUE(ids.ok());
  // 日 is E6 97 A5.
  EXPECT_EQ(*ids, (std::vector<TokenId>{kMixtralBos, *t.TokenToId("\u2581"), *t.TokenToId("<0xE6>"),
                                        *t.TokenToId("<0x97>"), *t.TokenToId("<0xA5>")}));
  EXPECT_EQ(*t.Decode(*ids), "<s> \u65E5");
  EXPECT_EQ(*t.Decode(*ids, {.skip_special_tokens = true}), "\u65E5");
  EXPECT_EQ(StreamDecode(t, *ids, {.skip_special_tokens = true}), "\u65E5");
  // A newline is a byte token too.
  auto newline = t.Encode("a\nb", {.add_special_tokens = false});
  ASSERT_TRUE(newline.ok());
  EXPECT_NE(std::find(newline->begin(), newline->end(), *t.TokenToId("<0x0A>")), newline->end());
}

TEST(MixtralTokenizerTest, RoundTripsTheCorpusAndAddedTokens) {
  const Tokenizer& t = Mixtral();
  size_t texts = 0;
  for (const auto& [domain, text] : Corpus()) {
    auto ids = t.Encode(text);
    ASSERT_TRUE(ids.ok());
    ASSERT_EQ(ids->front(), kMixtralBos);
    EXPECT_EQ(*t.Decode(*ids, {.skip_special_tokens = true}), text) << domain;
    EXPECT_EQ(StreamDecode(t, *ids, {.skip_special_tokens = true}), text) << domain;
    EXPECT_EQ(StreamDecode(t, *ids), *t.Decode(*ids)) << domain;
    ++texts;
  }
  EXPECT_EQ(texts, 700u);
  // Leading spaces survive: the decoder strips only the one space the normalizer prepended.
  for (const char* text : {" x", "  two  spaces ", "", "\n"}) {
    auto ids = t.Encode(text, {.add_special_tokens = false});
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*t.Decode(*ids), text);
  }
  // Special tokens in the text are cut out before normalization, each side normalized on its own.
  auto ids = t.Encode("hi</s>", {.add_special_tokens = false});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->back(), kMixtralEos);
  EXPECT_EQ(*t.Decode(*ids), "hi</s>");
}

// Synthetic tokenizer.json documents -------------------------------------------------------------------------

// A character-level BPE over `chars` (each its own token, ids from 0), with extra JSON spliced in.
std::string CharTokenizerJson(const std::string& chars, const std::string& added_tokens = "[]",
                              const std::string& normalizer = "null", const std::string& pre_tokenizer = "null",
                              const std::string& decoder = "null", const std::string& extra_vocab = "",
                              const std::string& merges = "[]") {
  std::string vocab;
  size_t pos = 0;
  int id = 0;
  while (pos < chars.size()) {
    const size_t start = pos;
    unicode::DecodeNext(chars, pos);
    std::string c = chars.substr(start, pos - start);
    if (c == "\"" || c == "\\") c = "\\" + c;
    if (!vocab.empty()) vocab += ",";
    vocab += "\"" + c + "\":" + std::to_string(id++);
  }
  if (!extra_vocab.empty()) vocab += "," + extra_vocab;
  return R"({"version":"1.0","truncation":null,"padding":null,"added_tokens":)" + added_tokens +
         R"(,"normalizer":)" + normalizer + R"(,"pre_tokenizer":)" + pre_tokenizer +
         R"(,"post_processor":null,"decoder":)" + decoder +
         R"(,"model":{"type":"BPE","dropout":null,"unk_token":null,"fuse_unk":false,"byte_fallback":false,"vocab":{)" +
         vocab + R"(},"merges":)" + merges + "}}";
}

std::vector<std::string> Words(const Tokenizer& t, std::string_view text, EncodeOptions options = {}) {
  auto words = t.PreTokenize(text, options);
  EXPECT_TRUE(words.ok()) << words.status().ToString();
  return words.ok() ? *words : std::vector<std::string>{};
}

TEST(SyntheticTokenizerTest, SplitBehaviorsMatchTheTokenizersDocumentation) {
  // tokenizers' documented example: splitting "the-final--countdown" on '-'.
  const std::map<std::string, std::vector<std::string>> expected = {
      {"Removed", {"the", "final", "countdown"}},
      {"Isolated", {"the", "-", "final", "-", "-", "countdown"}},
      {"MergedWithPrevious", {"the-", "final-", "-", "countdown"}},
      {"MergedWithNext", {"the", "-final", "-", "-countdown"}},
      {"Contiguous", {"the", "-", "final", "--", "countdown"}},
  };
  for (const auto& [behavior, words] : expected) {
    const std::string pre = R"({"type":"Split","pattern":{"String":"-"},"behavior":")" + behavior +
                            R"(","invert":false})";
    auto t = Tokenizer::FromJson(CharTokenizerJson("thefinalcoud-", "[]", "null", pre));
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(Words(*t, "the-final--countdown"), words) << behavior;
  }
  // invert: the pattern marks what to keep; Removed then drops the separators.
  auto inverted = Tokenizer::FromJson(CharTokenizerJson(
      "ab ", "[]", "null", R"({"type":"Split","pattern":{"Regex":"\\p{L}+"},"behavior":"Removed","invert":true})"));
  ASSERT_TRUE(inverted.ok()) << inverted.status().ToString();
  EXPECT_EQ(Words(*inverted, "ab  ba a"), (std::vector<std::string>{"ab", "ba", "a"}));
}

TEST(SyntheticTokenizerTest, PathologicalSplitPatternFailsInsteadOfHanging) {
  // Exponential backtracking is answered, and right: the matcher remembers the states it explored.
  auto t = Tokenizer::FromJson(CharTokenizerJson(
      "ab", "[]", "null", R"({"type":"Split","pattern":{"Regex":"(?:a|a)*b"},"behavior":"Isolated"})"));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(*t->Encode(std::string(40, 'a')), std::vector<TokenId>(40, 0));
  EXPECT_EQ(*t->Encode("aab"), (std::vector<TokenId>{0, 0, 1}));
  // A chain of stars still does quadratic work per attempt; over a long text it reaches the step limit and
  // says so instead of hanging.
  auto chain = Tokenizer::FromJson(CharTokenizerJson(
      "ab", "[]", "null", R"({"type":"Split","pattern":{"Regex":".*.?.?.*.*.?.*? ?.*.*.?..o>"},"behavior":"Isolated"})"));
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_TRUE(chain->Encode(std::string(8000, 'a')).status().IsResourceExhausted());
}

TEST(SyntheticTokenizerTest, DigitsAndByteLevelRegex) {
  auto digits = Tokenizer::FromJson(CharTokenizerJson(
      "a1234", "[]", "null", R"({"type":"Digits","individual_digits":false})"));
  ASSERT_TRUE(digits.ok());
  EXPECT_EQ(Words(*digits, "a12a3"), (std::vector<std::string>{"a", "12", "a", "3"}));
  auto single = Tokenizer::FromJson(CharTokenizerJson(
      "a1234", "[]", "null", R"({"type":"Digits","individual_digits":true})"));
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(Words(*single, "a12"), (std::vector<std::string>{"a", "1", "2"}));
}

TEST(SyntheticTokenizerTest, AddedTokenFlags) {
  const std::string chars = "ab <>mskxyYESe";
  auto make = [&](const std::string& flags, const std::string& normalizer = "null") {
    const std::string added = R"([{"id":14,"content":"<mask>","special":true,"normalized":false,)" + flags + "}]";
    auto t = Tokenizer::FromJson(CharTokenizerJson(chars, added, normalizer, "null", "null", R"("<mask>":14)"));
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return std::move(t).value();
  };
  auto plain = make(R"("lstrip":false,"rstrip":false,"single_word":false)");
  EXPECT_EQ(Words(plain, "a <mask> b"), (std::vector<std::string>{"a ", "<mask>", " b"}));
  auto stripped = make(R"("lstrip":true,"rstrip":true,"single_word":false)");
  EXPECT_EQ(Words(stripped, "a <mask> b"), (std::vector<std::string>{"a", "<mask>", "b"}));
  EXPECT_EQ(*stripped.Encode("a <mask> b"), (std::vector<TokenId>{0, 14, 1}));
  // lstrip never reaches back into white space an earlier token already took.
  EXPECT_EQ(Words(stripped, "<mask> <mask>"), (std::vector<std::string>{"<mask>", "<mask>"}));
  auto single_word = make(R"("lstrip":false,"rstrip":false,"single_word":true)");
  EXPECT_EQ(Words(single_word, "a<mask> <mask>"), (std::vector<std::string>{"a<mask> ", "<mask>"}));
  EXPECT_EQ(Words(single_word, "<mask>x"), (std::vector<std::string>{"<mask>x"}));
  EXPECT_EQ(Words(single_word, "<mask>."), (std::vector<std::string>{"<mask>", "."}));

  // A normalized added token matches the normalized text: "YES" lowercased finds "yes".
  const std::string added = R"([{"id":20,"content":"YES","special":false,"normalized":true}])";
  auto lower = Tokenizer::FromJson(CharTokenizerJson(chars, added, R"({"type":"Lowercase"})"));
  ASSERT_TRUE(lower.ok()) << lower.status().ToString();
  EXPECT_EQ(lower->vocab_size(), 21u);
  EXPECT_EQ(*lower->Encode("xYeSy"), (std::vector<TokenId>{8, 20, 9}));
  EXPECT_FALSE(lower->IsSpecial(20));
}

TEST(SyntheticTokenizerTest, MetaspacePrependSchemes) {
  const std::string chars = "\u2581Heyhow";
  const std::string added = R"([{"id":7,"content":"<s>","special":true,"normalized":false}])";
  auto words = [&](const std::string& scheme, bool split, std::string_view text) {
    const std::string pre = R"({"type":"Metaspace","replacement":"\u2581","prepend_scheme":")" + scheme +
                            R"(","split":)" + (split ? "true" : "false") + "}";
    auto t = Tokenizer::FromJson(CharTokenizerJson(chars, added, "null", pre, "null", R"("<s>":7)"));
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return Words(*t, text);
  };
  // tokenizers' own test cases for prepend_scheme "first".
  EXPECT_EQ(words("first", false, "Hey <s>how"),
            (std::vector<std::string>{"\u2581Hey\u2581", "<s>", "how"}));
  EXPECT_EQ(words("first", false, " Hey <s>how"),
            (std::vector<std::string>{"\u2581Hey\u2581", "<s>", "how"}));
  EXPECT_EQ(words("always", false, "Hey <s>how"),
            (std::vector<std::string>{"\u2581Hey\u2581", "<s>", "\u2581how"}));
  EXPECT_EQ(words("never", true, "Hey how"), (std::vector<std::string>{"Hey", "\u2581how"}));
  EXPECT_EQ(words("always", true, "Hey  how"),
            (std::vector<std::string>{"\u2581Hey", "\u2581", "\u2581how"}));
}

TEST(SyntheticTokenizerTest, MetaspaceDecoderDropsTheFirstTokensReplacement) {
  const std::string decoder = R"({"type":"Metaspace","replacement":"\u2581","prepend_scheme":"always","split":true})";
  auto t = Tokenizer::FromJson(CharTokenizerJson("\u2581ab", "[]", "null", "null", decoder));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  const std::vector<TokenId> ids = {0, 1, 0, 2};  // ▁ a ▁ b
  EXPECT_EQ(*t->Decode(ids), "a b");
  EXPECT_EQ(StreamDecode(*t, ids), "a b");
}

TEST(ByteFallbackTokenTest, FormatAndParse) {
  EXPECT_EQ(ByteFallbackToken(0x0A), "<0x0A>");
  EXPECT_EQ(ByteFallbackToken(0xE6), "<0xE6>");
  for (unsigned b = 0; b < 256; ++b) {
    EXPECT_EQ(ParseByteFallbackToken(ByteFallbackToken(static_cast<uint8_t>(b))), static_cast<uint8_t>(b));
  }
  EXPECT_EQ(ParseByteFallbackToken("<0xe6>"), uint8_t{0xE6});
  for (const char* bad : {"<0xG0>", "<0x0A", "0x0A>", "<0x0AA>", "<0X0A>", ""}) {
    EXPECT_FALSE(ParseByteFallbackToken(bad).has_value()) << bad;
  }
}

TEST(SyntheticTokenizerTest, NoDecoderJoinsTokensWithSpaces) {
  auto t = Tokenizer::FromJson(CharTokenizerJson("ab"));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t->Decode(std::vector<TokenId>{0, 1, 0}), "a b a");
}

TEST(SyntheticTokenizerTest, PostProcessors) {
  const std::string base = CharTokenizerJson("ab", R"([{"id":2,"content":"<s>","special":true},)"
                                                   R"({"id":3,"content":"</s>","special":true}])",
                                             "null", "null", "null", R"("<s>":2,"</s>":3)");
  auto with = [&](const std::string& processor) {
    std::string json = base;
    json.replace(json.find(R"("post_processor":null)"), std::string(R"("post_processor":null)").size(),
                 R"("post_processor":)" + processor);
    auto t = Tokenizer::FromJson(json);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return std::move(t).value();
  };
  auto roberta = with(R"({"type":"RobertaProcessing","sep":["</s>",3],"cls":["<s>",2]})");
  EXPECT_EQ(*roberta.Encode("ab"), (std::vector<TokenId>{2, 0, 1, 3}));
  EXPECT_EQ(roberta.bos_id(), 2u);
  EXPECT_EQ(roberta.eos_id(), 3u);
  auto sequence = with(
      R"({"type":"Sequence","processors":[{"type":"ByteLevel"},{"type":"TemplateProcessing",)"
      R"("single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}},)"
      R"({"SpecialToken":{"id":"</s>","type_id":0}}],"pair":[],)"
      R"("special_tokens":{"<s>":{"id":"<s>","ids":[2],"tokens":["<s>"]},"</s>":{"id":"</s>","ids":[3],"tokens":["</s>"]}}}]})");
  EXPECT_EQ(*sequence.Encode("a"), (std::vector<TokenId>{2, 0, 3}));
  EXPECT_EQ(*sequence.Encode("a", {.add_special_tokens = false}), (std::vector<TokenId>{0}));
}

// Negative tests: one per bad-input class. ------------------------------------------------------------------

void ExpectInvalid(const std::string& json, std::string_view mention = "") {
  auto t = Tokenizer::FromJson(json);
  ASSERT_FALSE(t.ok()) << json.substr(0, 200);
  EXPECT_TRUE(t.status().IsInvalidArgument()) << t.status().ToString();
  EXPECT_NE(t.status().message().find(mention), std::string::npos) << t.status().ToString();
}

void ExpectNotSupported(const std::string& json, std::string_view mention) {
  auto t = Tokenizer::FromJson(json);
  ASSERT_FALSE(t.ok()) << json.substr(0, 200);
  EXPECT_TRUE(t.status().IsNotSupported()) << t.status().ToString();
  EXPECT_NE(t.status().message().find(mention), std::string::npos) << t.status().ToString();
}

std::string Replace(std::string s, std::string_view from, std::string_view to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

TEST(TokenizerLoadTest, RejectsMalformedDocuments) {
  const std::string good = CharTokenizerJson("ab", "[]", "null", "null", "null", R"("ab":2)", R"([["a","b"]])");
  ASSERT_TRUE(Tokenizer::FromJson(good).ok());
  ExpectInvalid("{", "tokenizer.json");
  ExpectInvalid("", "tokenizer.json");
  ExpectInvalid("[]", "object");
  ExpectInvalid(R"({"model":null})", "model");
  ExpectInvalid(Replace(good, R"("vocab":{)", R"("vocab":{"c":-1,)"), "token id");
  ExpectInvalid(Replace(good, R"("vocab":{)", R"("vocab":{"c":"3",)"), "token id");
  ExpectInvalid(Replace(good, R"("vocab":{)", R"("vocab":{"c":99999999999,)"), "token id");
  ExpectInvalid(Replace(good, R"("vocab":{)", R"("vocab":{"c":9999999,)"), "too sparse");
  ExpectInvalid(Replace(good, R"("vocab":{)", R"("vocab":{"c":1,)"), "used twice");
  ExpectInvalid(Replace(good, R"("vocab":{)", R"("vocab":{"a":5,)"), "duplicate");  // duplicate key
  ExpectInvalid(Replace(good, R"([["a","b"]])", R"([["a","q"]])"), "unknown token 'q'");
  ExpectInvalid(Replace(good, R"([["a","b"]])", R"([["b","a"]])"), "'ba', which is not in the vocabulary");
  ExpectInvalid(Replace(good, R"([["a","b"]])", R"(["ab"])"), "not 'left right'");
  ExpectInvalid(Replace(good, R"([["a","b"]])", R"([["a"]])"), "pair of strings");
  ExpectInvalid(Replace(good, R"("unk_token":null)", R"("unk_token":"<unk>")"), "unk_token");
  ExpectInvalid(Replace(good, R"("added_tokens":[])", R"("added_tokens":[{"id":7,"content":"a"}])"),
                "vocabulary has it at 0");
  ExpectInvalid(Replace(good, R"("added_tokens":[])", R"("added_tokens":[{"id":1,"content":"<x>"}])"),
                "belongs to another");
  ExpectInvalid(Replace(good, R"("added_tokens":[])", R"("added_tokens":[{"content":"<x>"}])"), "'id'");
  ExpectInvalid(Replace(good, R"("added_tokens":[])",
                        R"("added_tokens":[{"id":5,"content":"<x>"},{"id":6,"content":"<x>"}])"),
                "duplicate");
  ExpectInvalid(Replace(good, R"("fuse_unk":false)", R"("fuse_unk":"no")"), "fuse_unk");
  ExpectInvalid(Replace(good, R"("post_processor":null)",
                        R"("post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>"}},)"
                        R"({"Sequence":{"id":"A"}}],"special_tokens":{}})"),
                "not defined");
  ExpectInvalid(Replace(good, R"("pre_tokenizer":null)",
                        R"("pre_tokenizer":{"type":"Split","pattern":{"Regex":"(a"},"behavior":"Isolated"})"),
                "missing ')'");
  ExpectInvalid(Replace(good, R"("pre_tokenizer":null)",
                        R"("pre_tokenizer":{"type":"Split","pattern":{"Regex":"a"},"behavior":"Sideways"})"),
                "Sideways");
  ExpectInvalid(Replace(good, R"("normalizer":null)", R"("normalizer":{"kind":"NFC"})"), "type");
}

TEST(TokenizerLoadTest, RefusesUnsupportedFeaturesByName) {
  const std::string good = CharTokenizerJson("ab", "[]", "null", "null", "null", R"("ab":2)", R"([["a","b"]])");
  ExpectNotSupported(Replace(good, R"("type":"BPE")", R"("type":"Unigram")"), "Unigram");
  ExpectNotSupported(Replace(good, R"("type":"BPE")", R"("type":"WordPiece")"), "WordPiece");
  ExpectNotSupported(Replace(good, R"("dropout":null)", R"("dropout":0.1)"), "dropout");
  ExpectNotSupported(Replace(good, R"("type":"BPE")", R"("type":"BPE","continuing_subword_prefix":"##")"),
                     "continuing_subword_prefix");
  ExpectNotSupported(Replace(good, R"("truncation":null)", R"("truncation":{"max_length":8})"), "truncation");
  ExpectNotSupported(Replace(good, R"("padding":null)", R"("padding":{"strategy":{"Fixed":8}})"), "padding");
  ExpectNotSupported(Replace(good, R"("normalizer":null)", R"("normalizer":{"type":"BertNormalizer"})"),
                     "BertNormalizer");
  ExpectNotSupported(Replace(good, R"("normalizer":null)", R"("normalizer":{"type":"Precompiled"})"),
                     "Precompiled");
  ExpectNotSupported(Replace(good, R"("pre_tokenizer":null)", R"("pre_tokenizer":{"type":"Whitespace"})"),
                     "Whitespace");
  ExpectNotSupported(
      Replace(good, R"("pre_tokenizer":null)",
              R"("pre_tokenizer":{"type":"Split","pattern":{"Regex":"(?<=a)b"},"behavior":"Isolated"})"),
      "(?<=");
  ExpectNotSupported(Replace(good, R"("pre_tokenizer":null)",
                             R"("pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"ByteLevel"},)"
                             R"({"type":"Digits"}]})"),
                     "after ByteLevel");
  ExpectNotSupported(Replace(good, R"("decoder":null)", R"("decoder":{"type":"WordPiece"})"), "WordPiece");
  ExpectNotSupported(Replace(good, R"("decoder":null)",
                             R"("decoder":{"type":"Sequence","decoders":[{"type":"Strip","content":" ","start":1,"stop":0}]})"),
                     "Strip");
  ExpectNotSupported(Replace(good, R"("decoder":null)",
                             R"("decoder":{"type":"Sequence","decoders":[{"type":"ByteLevel"},{"type":"Fuse"}]})"),
                     "ByteLevel");
  ExpectNotSupported(Replace(good, R"("post_processor":null)", R"("post_processor":{"type":"Mystery"})"),
                     "Mystery");
}

TEST(TokenizerLoadTest, ConfigAndFileErrors) {
  const std::string json = testing::ReadText(kMixtralDir + "/tokenizer.json");
  EXPECT_TRUE(Tokenizer::FromJson(json, "{").status().IsInvalidArgument());
  EXPECT_TRUE(Tokenizer::FromJson(json, R"({"eos_token": "<nope>"})").status().IsInvalidArgument());
  EXPECT_TRUE(Tokenizer::FromJson(json, R"({"eos_token": 5})").status().IsInvalidArgument());
  auto object_form = Tokenizer::FromJson(json, R"({"eos_token": {"content": "</s>", "special": true}})");
  ASSERT_TRUE(object_form.ok());
  EXPECT_EQ(object_form->eos_id(), kMixtralEos);
  EXPECT_FALSE(Tokenizer::FromFile(std::string(testing::kShared) + "/no/such/tokenizer.json").ok());
}

}  // namespace
}  // namespace es
