// libFuzzer target: tokenizer.json, split patterns, text and ids. Besides ASan/UBSan it checks round trips,
// Decode == streamed decode, and the specialized Qwen matcher against the generic one on the fuzzed text.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "compute/tokenizer/split_regex.h"
#include "compute/tokenizer/tokenizer.h"
#include "compute/tokenizer/tokenizer_impl.h"  // ByteToUnicode
#include "compute/tokenizer/unicode.h"

namespace {

// Byte-level BPE with Qwen's split pattern, no normalizer (so round trips are exact), a few merges and two
// added tokens (neither with lstrip/rstrip, which swallow white space and so break round trips): small
// enough to build once, rich enough to reach every encode path.
constexpr std::string_view kByteLevelJson = R"({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 260, "content": "<|end|>", "special": true, "normalized": false},
    {"id": 261, "content": "<tool>", "special": false, "normalized": false, "single_word": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
  "post_processor": null,
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": VOCAB, "merges": [["t", "h"], ["th", "e"], ["Ġ", "the"], ["Ġ", "Ġ"]]}
})";

std::string ByteLevelVocabulary() {
  std::string vocab = "{";
  // The 256 byte characters of GPT-2's bytes_to_unicode, then the merged tokens.
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    es::unicode::AppendUtf8(es::ByteToUnicode()[b], ch);
    if (ch == "\"" || ch == "\\") ch = "\\" + ch;
    vocab += "\"" + ch + "\": " + std::to_string(b) + ", ";
  }
  vocab += R"("th": 256, "the": 257, "Ġthe": 258, "ĠĠ": 259})";
  return vocab;
}

const es::Tokenizer& ByteLevelTokenizer() {
  static const es::Tokenizer* tokenizer = [] {
    std::string json(kByteLevelJson);
    json.replace(json.find("VOCAB"), 5, ByteLevelVocabulary());
    auto t = es::Tokenizer::FromJson(json);
    if (!t.ok()) std::abort();
    return new es::Tokenizer(std::move(t).value());
  }();
  return *tokenizer;
}

constexpr std::string_view kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The hand-written Qwen matcher and the generic one must split any valid text identically.
void CompareQwenMatchers(std::string_view text) {
  static const auto* fast = new es::SplitRegex(std::move(es::SplitRegex::Compile(kQwenPattern)).value());
  static const auto* generic =
      new es::SplitRegex(std::move(es::SplitRegex::Compile(kQwenPattern, /*specialize=*/false)).value());
  if (!fast->specialized() || generic->specialized()) std::abort();
  es::MatchScratch scratch;
  std::vector<std::pair<size_t, size_t>> a, b;
  if (!fast->FindAll(text, scratch, a).ok() || !generic->FindAll(text, scratch, b).ok() || a != b) std::abort();
}

void FuzzText(std::string_view text) {
  if (es::unicode::IsValidUtf8(text)) CompareQwenMatchers(text);
  const es::Tokenizer& t = ByteLevelTokenizer();
  auto ids = t.Encode(text);
  if (!ids.ok()) {
    if (es::unicode::IsValidUtf8(text)) std::abort();  // only invalid UTF-8 may be refused
    return;
  }
  auto decoded = t.Decode(*ids);
  if (!decoded.ok() || *decoded != text) std::abort();
  es::StreamDecoder stream(t);
  std::string streamed;
  for (es::TokenId id : *ids) {
    auto piece = stream.Push(id);
    if (!piece.ok()) std::abort();
    streamed += *piece;
  }
  streamed += stream.Finish();
  if (streamed != *decoded) std::abort();
}

void FuzzIds(const uint8_t* data, size_t size) {
  const es::Tokenizer& t = ByteLevelTokenizer();
  std::vector<es::TokenId> ids;
  for (size_t i = 0; i + 1 < size; i += 2) ids.push_back(static_cast<es::TokenId>(data[i] | (data[i + 1] << 8)) % 300);
  auto decoded = t.Decode(ids);
  es::StreamDecoder stream(t);
  std::string streamed;
  bool ok = true;
  for (es::TokenId id : ids) {
    auto piece = stream.Push(id);
    if (!piece.ok()) {
      ok = false;
      break;
    }
    streamed += *piece;
  }
  streamed += stream.Finish();
  if (decoded.ok() != ok) std::abort();
  if (ok && (*decoded != streamed || !es::unicode::IsValidUtf8(streamed))) std::abort();
}

void FuzzPattern(std::string_view pattern) {
  auto regex = es::SplitRegex::Compile(pattern);
  if (!regex.ok()) return;
  es::MatchScratch scratch;
  std::vector<std::pair<size_t, size_t>> matches;
  for (std::string_view text : {"Hello, world!  It's 2024\r\n\t\xC3\xA9t\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87", ""}) {
    matches.clear();
    if (!regex->FindAll(text, scratch, matches).ok()) continue;  // only the backtracking limit
    size_t last = 0;
    for (const auto& [b, e] : matches) {
      if (b < last || e < b || e > text.size()) std::abort();
      last = e;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0: (void)es::Tokenizer::FromJson(rest); break;
    case 1: FuzzPattern(rest); break;
    case 2: FuzzText(rest); break;
    case 3: FuzzIds(data + 1, size - 1); break;
  }
  return 0;
}
