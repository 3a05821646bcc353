// The loaded form of a tokenizer.json, shared by the loader (tokenizer_load.cc) and the encoder/decoder
// (tokenizer.cc). Internal to compute/: nothing outside includes it. Immutable after loading.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "compute/tokenizer/bpe.h"
#include "compute/tokenizer/split_regex.h"
#include "compute/tokenizer/tokenizer.h"
#include "compute/tokenizer/unicode.h"

namespace es {

// Upper bound on token ids, so that a hostile file cannot make the loader allocate from a declared number.
inline constexpr TokenId kMaxVocabularySize = 1u << 24;

struct AddedToken {
  std::string content;
  TokenId id = 0;
  bool special = false;
  bool normalized = false;  // matched in the normalized text rather than the raw text
  bool lstrip = false;      // swallows white space on its left
  bool rstrip = false;      // swallows white space on its right
  bool single_word = false;  // only matches with no word character touching it
};

// Finds added tokens in text with leftmost-longest semantics (aho-corasick's MatchKind::LeftmostLongest,
// which Hugging Face uses): the match starting first, the longest among those, patterns earlier in the build
// order winning exact ties. Added tokens are few, so a byte trie with a first-byte filter is enough.
class AddedTokenMatcher {
 public:
  // `patterns[i]` maps to value `values[i]`; empty patterns are ignored.
  void Build(const std::vector<std::string>& patterns, const std::vector<uint32_t>& values);
  bool empty() const { return nodes_.size() <= 1; }
  // The next match at or after `from`: [start, end) and its value.
  bool FindNext(std::string_view text, size_t from, size_t& start, size_t& end, uint32_t& value) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, uint32_t>> children;
    int64_t value = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_{};
};

struct NormalizerStep {
  enum class Kind : uint8_t { kUnicode, kLowercase, kPrepend, kReplace, kStrip };
  Kind kind = Kind::kUnicode;
  unicode::NormalForm form = unicode::NormalForm::kNfc;  // kUnicode
  std::string from;                                      // kReplace
  std::string to;                                        // kReplace, kPrepend
  bool strip_left = false;                               // kStrip
  bool strip_right = false;                              // kStrip
};

// What a split does with the pieces its pattern matched (tokenizers' SplitDelimiterBehavior).
enum class SplitBehavior : uint8_t { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme : uint8_t { kAlways, kFirst, kNever };

struct PreTokenizerStep {
  enum class Kind : uint8_t { kSplit, kByteLevel, kMetaspace, kDigits };
  Kind kind = Kind::kSplit;
  std::shared_ptr<const SplitRegex> regex;  // kSplit; kByteLevel when use_regex
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel
  std::string replacement;        // kMetaspace
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;               // kMetaspace
  bool individual_digits = false;  // kDigits
};

// Decoders act per token, in order, before the tokens are fused; Strip then acts on the fused text.
struct DecoderStep {
  enum class Kind : uint8_t { kReplace, kByteFallback, kMetaspace };
  Kind kind = Kind::kReplace;
  std::string from;            // kReplace; kMetaspace: the replacement character
  std::string to;              // kReplace
  bool drop_on_first = false;  // kMetaspace: the first token loses its replacement characters
};

struct DecoderSpec {
  bool byte_level = false;  // GPT-2 ByteLevel: each token's characters map back to bytes
  std::vector<DecoderStep> steps;
  std::string separator;      // between tokens: " " when tokenizer.json has no decoder
  std::string strip_content;  // Strip: this character, removed up to strip_start times from the start
  size_t strip_start = 0;
};

struct Tokenizer::Impl {
  // Pipeline, in the order Encode runs it.
  std::vector<AddedToken> added;
  AddedTokenMatcher raw_matcher;         // added tokens with normalized = false
  AddedTokenMatcher normalized_matcher;  // added tokens with normalized = true, patterns normalized
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::vector<TokenId> prefix;  // post-processor, with add_special_tokens
  std::vector<TokenId> suffix;
  DecoderSpec decoder;

  // Vocabulary.
  std::vector<std::string> tokens;  // id -> text
  std::vector<uint8_t> token_flags;
  static constexpr uint8_t kPresent = 1;
  static constexpr uint8_t kSpecial = 2;
  TokenTable model_table;  // model vocabulary, text -> id
  TokenTable added_table;  // added tokens, content -> id
  // Each token's decoded bytes (per-token decoder steps applied, not first-token variants).
  std::string decoded_arena;
  std::vector<uint32_t> decoded_offsets;  // size tokens.size() + 1
  bool first_token_differs = false;       // a Metaspace decoder step treats the first token differently

  std::optional<TokenId> bos, eos, pad, unk;
  // tokenizer_config.json's chat_template (empty when it has none) and the bos/eos texts it names.
  std::string chat_template;
  std::optional<std::string> bos_token, eos_token;

  bool Has(TokenId id) const { return id < tokens.size() && (token_flags[id] & kPresent); }
  Status NormalizeText(std::string_view in, std::string& out, std::string& tmp) const;
  // Bytes that token `id` decodes to (before UTF-8 repair and Strip), appended to `out`.
  void AppendDecoded(TokenId id, bool first, std::string& out) const;
  std::string DecodeToken(std::string_view text, bool first) const;
};

// Byte-fallback tokens: "<0xNN>", written with upper-case hex (Rust's format!("<{b:#04X}>")) and read in
// either case, as tokenizers' ByteFallback decoder does.
std::string ByteFallbackToken(uint8_t byte);
std::optional<uint8_t> ParseByteFallbackToken(std::string_view token);

// GPT-2's bytes_to_unicode: the printable character standing for each byte in byte-level vocabularies.
const std::array<char32_t, 256>& ByteToUnicode();
// The inverse, or -1 for a character that stands for no byte.
int UnicodeToByte(char32_t c);

Result<std::unique_ptr<Tokenizer::Impl>> LoadTokenizer(std::string_view tokenizer_json,
                                                       std::string_view tokenizer_config_json);

}  // namespace es
