// tokenizer.json (and tokenizer_config.json) into Tokenizer::Impl: every field that changes the output is
// implemented exactly or refused with NotSupported; malformed or inconsistent files are InvalidArgument.
#include <algorithm>
#include <string>
#include <unordered_set>

#include "compute/tokenizer/tokenizer_impl.h"
#include "store/base/json.h"

namespace es {
namespace {

// The pattern GPT-2's ByteLevel pre-tokenizer splits with when use_regex is set (tokenizers' byte_level.rs).
constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kDefaultMetaspace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK
constexpr std::string_view kByteTokenPrefix = "<0x";
constexpr std::string_view kByteTokenSuffix = ">";
constexpr size_t kByteTokenHexDigits = 2;
constexpr int kHexBase = 16;

// Ids may leave gaps (a vocabulary padded for the model), but at most this sparse.
constexpr size_t kIdSparsityFactor = 2;
constexpr size_t kIdSlack = 1024;

// tokenizers joins the tokens with this when tokenizer.json has no decoder.
constexpr char kNoDecoderSeparator = ' ';

// First code point outside the 256 printable characters bytes_to_unicode uses.
constexpr char32_t kByteLevelShift = 256;

// Distinct byte values: each has a byte-level symbol and a byte-fallback token.
constexpr size_t kByteValues = 256;

Status Invalid(std::string_view where, std::string_view what) {
  return Status::InvalidArgument("tokenizer.json: " + std::string(where) + ": " + std::string(what));
}
Status Unsupported(std::string_view what) {
  return Status::NotSupported("tokenizer.json: " + std::string(what) + " is not supported");
}

// A member that is present and not null.
const JsonValue* Field(const JsonValue& object, std::string_view key) {
  const JsonValue* v = object.Find(key);
  return v != nullptr && !v->is_null() ? v : nullptr;
}

Status ReadBool(const JsonValue& object, std::string_view key, std::string_view where, bool& out) {
  const JsonValue* v = Field(object, key);
  if (v == nullptr) return Status::Ok();
  if (!v->is_bool()) return Invalid(where, "'" + std::string(key) + "' must be a boolean");
  out = v->bool_value();
  return Status::Ok();
}

Status ReadString(const JsonValue& object, std::string_view key, std::string_view where, std::string& out) {
  const JsonValue* v = Field(object, key);
  if (v == nullptr) return Status::Ok();
  if (!v->is_string()) return Invalid(where, "'" + std::string(key) + "' must be a string");
  out = v->string_value();
  return Status::Ok();
}

Status ReadUint(const JsonValue& object, std::string_view key, std::string_view where, uint64_t& out) {
  const JsonValue* v = Field(object, key);
  if (v == nullptr) return Status::Ok();
  auto value = v->AsUint64();
  if (!value.ok()) return Invalid(where, "'" + std::string(key) + "' must be a non-negative integer");
  out = *value;
  return Status::Ok();
}

Result<std::string> TypeOf(const JsonValue& object, std::string_view where) {
  if (!object.is_object()) return Invalid(where, "must be an object");
  const JsonValue* type = Field(object, "type");
  if (type == nullptr || !type->is_string()) return Invalid(where, "missing 'type'");
  return type->string_value();
}

Result<TokenId> ReadId(const JsonValue& v, std::string_view where) {
  auto value = v.AsUint64();
  if (!value.ok() || *value >= kMaxVocabularySize) {
    return Invalid(where, "token id must be an integer below " + std::to_string(kMaxVocabularySize));
  }
  return static_cast<TokenId>(*value);
}

// A split pattern: {"String": "..."} or {"Regex": "..."}.
Result<std::shared_ptr<const SplitRegex>> ReadPattern(const JsonValue& step, std::string_view where) {
  const JsonValue* pattern = Field(step, "pattern");
  if (pattern == nullptr || !pattern->is_object()) return Invalid(where, "missing 'pattern'");
  if (const JsonValue* s = Field(*pattern, "String")) {
    if (!s->is_string() || s->string_value().empty()) return Invalid(where, "'String' pattern must be non-empty");
    return std::make_shared<const SplitRegex>(SplitRegex::Literal(s->string_value()));
  }
  if (const JsonValue* r = Field(*pattern, "Regex")) {
    if (!r->is_string()) return Invalid(where, "'Regex' pattern must be a string");
    auto regex = SplitRegex::Compile(r->string_value());
    if (!regex.ok()) return regex.status().WithContext(std::string("tokenizer.json: ") + std::string(where));
    return std::make_shared<const SplitRegex>(std::move(regex).value());
  }
  return Invalid(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

// Normalizers --------------------------------------------------------------------------------------------

Status LoadNormalizer(const JsonValue& node, std::vector<NormalizerStep>& out) {
  ES_ASSIGN_OR_RETURN(std::string type, TypeOf(node, "normalizer"));
  NormalizerStep step;
  if (type == "Sequence") {
    const JsonValue* list = Field(node, "normalizers");
    if (list == nullptr || !list->is_array()) return Invalid("normalizer", "Sequence needs 'normalizers'");
    for (const JsonValue& child : list->array()) ES_RETURN_IF_ERROR(LoadNormalizer(child, out));
    return Status::Ok();
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    step.kind = NormalizerStep::Kind::kUnicode;
    step.form = type == "NFC"    ? unicode::NormalForm::kNfc
                : type == "NFD"  ? unicode::NormalForm::kNfd
                : type == "NFKC" ? unicode::NormalForm::kNfkc
                                 : unicode::NormalForm::kNfkd;
  } else if (type == "Lowercase") {
    step.kind = NormalizerStep::Kind::kLowercase;
  } else if (type == "Prepend") {
    step.kind = NormalizerStep::Kind::kPrepend;
    ES_RETURN_IF_ERROR(ReadString(node, "prepend", "Prepend normalizer", step.to));
  } else if (type == "Replace") {
    step.kind = NormalizerStep::Kind::kReplace;
    const JsonValue* pattern = Field(node, "pattern");
    const JsonValue* literal = pattern != nullptr ? Field(*pattern, "String") : nullptr;
    if (literal == nullptr) {
      if (pattern != nullptr && Field(*pattern, "Regex") != nullptr) return Unsupported("a Regex Replace normalizer");
      return Invalid("Replace normalizer", "missing pattern");
    }
    if (!literal->is_string() || literal->string_value().empty()) {
      return Invalid("Replace normalizer", "pattern must be a non-empty string");
    }
    step.from = literal->string_value();
    ES_RETURN_IF_ERROR(ReadString(node, "content", "Replace normalizer", step.to));
  } else if (type == "Strip") {
    step.kind = NormalizerStep::Kind::kStrip;
    ES_RETURN_IF_ERROR(ReadBool(node, "strip_left", "Strip normalizer", step.strip_left));
    ES_RETURN_IF_ERROR(ReadBool(node, "strip_right", "Strip normalizer", step.strip_right));
  } else {
    return Unsupported("normalizer '" + type + "'");
  }
  out.push_back(std::move(step));
  return Status::Ok();
}

// Pre-tokenizers -----------------------------------------------------------------------------------------

Result<SplitBehavior> ReadBehavior(const JsonValue& node, std::string_view where) {
  std::string behavior = "Isolated";
  ES_RETURN_IF_ERROR(ReadString(node, "behavior", where, behavior));
  if (behavior == "Removed") return SplitBehavior::kRemoved;
  if (behavior == "Isolated") return SplitBehavior::kIsolated;
  if (behavior == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (behavior == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (behavior == "Contiguous") return SplitBehavior::kContiguous;
  return Invalid(where, "unknown behavior '" + behavior + "'");
}

Result<PrependScheme> ReadPrependScheme(const JsonValue& node, std::string_view where) {
  // Older files say add_prefix_space (true = always); newer ones prepend_scheme.
  PrependScheme scheme = PrependScheme::kAlways;
  if (const JsonValue* s = Field(node, "prepend_scheme")) {
    if (!s->is_string()) return Invalid(where, "'prepend_scheme' must be a string");
    const std::string& name = s->string_value();
    if (name == "always") scheme = PrependScheme::kAlways;
    else if (name == "first") scheme = PrependScheme::kFirst;
    else if (name == "never") scheme = PrependScheme::kNever;
    else return Invalid(where, "unknown prepend_scheme '" + name + "'");
  }
  bool add_prefix_space = true;
  ES_RETURN_IF_ERROR(ReadBool(node, "add_prefix_space", where, add_prefix_space));
  if (!add_prefix_space) {
    if (Field(node, "prepend_scheme") != nullptr && scheme != PrependScheme::kNever) {
      return Invalid(where, "add_prefix_space does not match prepend_scheme");
    }
    scheme = PrependScheme::kNever;
  }
  return scheme;
}

Status ReadReplacement(const JsonValue& node, std::string_view where, std::string& out) {
  out = std::string(kDefaultMetaspace);
  ES_RETURN_IF_ERROR(ReadString(node, "replacement", where, out));
  size_t pos = 0;
  if (out.empty() || !unicode::IsValidUtf8(out) || (unicode::DecodeNext(out, pos), pos != out.size())) {
    return Invalid(where, "'replacement' must be one character");
  }
  return Status::Ok();
}

Status LoadPreTokenizer(const JsonValue& node, std::vector<PreTokenizerStep>& out) {
  ES_ASSIGN_OR_RETURN(std::string type, TypeOf(node, "pre_tokenizer"));
  PreTokenizerStep step;
  if (type == "Sequence") {
    const JsonValue* list = Field(node, "pretokenizers");
    if (list == nullptr || !list->is_array()) return Invalid("pre_tokenizer", "Sequence needs 'pretokenizers'");
    for (const JsonValue& child : list->array()) ES_RETURN_IF_ERROR(LoadPreTokenizer(child, out));
    return Status::Ok();
  }
  if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    ES_ASSIGN_OR_RETURN(step.regex, ReadPattern(node, "Split pre-tokenizer"));
    ES_ASSIGN_OR_RETURN(step.behavior, ReadBehavior(node, "Split pre-tokenizer"));
    ES_RETURN_IF_ERROR(ReadBool(node, "invert", "Split pre-tokenizer", step.invert));
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    bool use_regex = true;
    step.add_prefix_space = true;
    ES_RETURN_IF_ERROR(ReadBool(node, "add_prefix_space", "ByteLevel pre-tokenizer", step.add_prefix_space));
    ES_RETURN_IF_ERROR(ReadBool(node, "use_regex", "ByteLevel pre-tokenizer", use_regex));
    if (use_regex) {
      auto regex = SplitRegex::Compile(kGpt2SplitPattern);
      if (!regex.ok()) return regex.status();
      step.regex = std::make_shared<const SplitRegex>(std::move(regex).value());
    }
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    ES_RETURN_IF_ERROR(ReadReplacement(node, "Metaspace pre-tokenizer", step.replacement));
    ES_ASSIGN_OR_RETURN(step.prepend_scheme, ReadPrependScheme(node, "Metaspace pre-tokenizer"));
    ES_RETURN_IF_ERROR(ReadBool(node, "split", "Metaspace pre-tokenizer", step.split));
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::Kind::kDigits;
    ES_RETURN_IF_ERROR(ReadBool(node, "individual_digits", "Digits pre-tokenizer", step.individual_digits));
  } else {
    return Unsupported("pre-tokenizer '" + type + "'");
  }
  out.push_back(std::move(step));
  return Status::Ok();
}

// Post-processors ----------------------------------------------------------------------------------------

// A processor's effect on a single sequence: ids before it and ids after it.
Status LoadPostProcessor(const JsonValue& node, std::vector<TokenId>& prefix, std::vector<TokenId>& suffix) {
  ES_ASSIGN_OR_RETURN(std::string type, TypeOf(node, "post_processor"));
  if (type == "ByteLevel") return Status::Ok();  // only adjusts offsets
  if (type == "Sequence") {
    const JsonValue* list = Field(node, "processors");
    if (list == nullptr || !list->is_array()) return Invalid("post_processor", "Sequence needs 'processors'");
    // Each processor wraps what the previous ones produced.
    for (const JsonValue& child : list->array()) {
      std::vector<TokenId> p, s;
      ES_RETURN_IF_ERROR(LoadPostProcessor(child, p, s));
      prefix.insert(prefix.begin(), p.begin(), p.end());
      suffix.insert(suffix.end(), s.begin(), s.end());
    }
    return Status::Ok();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    // "cls": ["<s>", 0], "sep": ["</s>", 2]
    for (const char* key : {"cls", "sep"}) {
      const JsonValue* pair = Field(node, key);
      if (pair == nullptr || !pair->is_array() || pair->array().size() != 2) {
        return Invalid(type, std::string("'") + key + "' must be [token, id]");
      }
      ES_ASSIGN_OR_RETURN(TokenId id, ReadId(pair->array()[1], type));
      (std::string_view(key) == "cls" ? prefix : suffix).push_back(id);
    }
    return Status::Ok();
  }
  if (type != "TemplateProcessing") return Unsupported("post-processor '" + type + "'");
  const JsonValue* single = Field(node, "single");
  const JsonValue* specials = Field(node, "special_tokens");
  if (single == nullptr || !single->is_array()) return Invalid("TemplateProcessing", "missing 'single'");
  bool seen_sequence = false;
  for (const JsonValue& item : single->array()) {
    if (!item.is_object()) return Invalid("TemplateProcessing", "template items must be objects");
    if (const JsonValue* seq = Field(item, "Sequence")) {
      std::string id;
      ES_RETURN_IF_ERROR(ReadString(*seq, "id", "TemplateProcessing", id));
      if (id != "A") return Invalid("TemplateProcessing", "the single template may only hold sequence A");
      if (seen_sequence) return Invalid("TemplateProcessing", "sequence A appears twice");
      seen_sequence = true;
      continue;
    }
    const JsonValue* special = Field(item, "SpecialToken");
    if (special == nullptr) return Invalid("TemplateProcessing", "unknown template item");
    std::string name;
    ES_RETURN_IF_ERROR(ReadString(*special, "id", "TemplateProcessing", name));
    const JsonValue* entry = specials != nullptr ? Field(*specials, name) : nullptr;
    const JsonValue* ids = entry != nullptr ? Field(*entry, "ids") : nullptr;
    if (ids == nullptr || !ids->is_array()) {
      return Invalid("TemplateProcessing", "special token '" + name + "' is not defined");
    }
    for (const JsonValue& v : ids->array()) {
      ES_ASSIGN_OR_RETURN(TokenId id, ReadId(v, "TemplateProcessing"));
      (seen_sequence ? suffix : prefix).push_back(id);
    }
  }
  if (!seen_sequence) return Invalid("TemplateProcessing", "the single template has no sequence A");
  return Status::Ok();
}

// Decoders -----------------------------------------------------------------------------------------------

struct DecoderParseState {
  bool fused = false;         // a Fuse step has run: the rest sees one string
  bool bytes_decoded = false;  // ByteFallback has run: later text steps would see partial characters
  bool stripped = false;
};

Status LoadDecoderStep(const JsonValue& node, bool top_level, DecoderSpec& spec, DecoderParseState& state) {
  ES_ASSIGN_OR_RETURN(std::string type, TypeOf(node, "decoder"));
  if (type == "Sequence") {
    const JsonValue* list = Field(node, "decoders");
    if (list == nullptr || !list->is_array()) return Invalid("decoder", "Sequence needs 'decoders'");
    const auto& items = list->array();
    for (const JsonValue& child : items) {
      // ByteLevel turns all tokens into one string at once; anything around it changes the meaning.
      const JsonValue* child_type = child.is_object() ? Field(child, "type") : nullptr;
      if (child_type != nullptr && child_type->is_string() && child_type->string_value() == "ByteLevel" &&
          items.size() != 1) {
        return Unsupported("a ByteLevel decoder combined with other decoders");
      }
      ES_RETURN_IF_ERROR(LoadDecoderStep(child, items.size() == 1 && top_level, spec, state));
    }
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    if (!top_level) return Unsupported("a ByteLevel decoder combined with other decoders");
    spec.byte_level = true;
    return Status::Ok();
  }
  if (state.stripped) return Unsupported("a decoder after Strip");
  if (type == "Fuse") {
    state.fused = true;
    return Status::Ok();
  }
  if (type == "Strip") {
    std::string content = " ";
    uint64_t start = 0, stop = 0;
    ES_RETURN_IF_ERROR(ReadString(node, "content", "Strip decoder", content));
    ES_RETURN_IF_ERROR(ReadUint(node, "start", "Strip decoder", start));
    ES_RETURN_IF_ERROR(ReadUint(node, "stop", "Strip decoder", stop));
    if (!state.fused) return Unsupported("a Strip decoder before Fuse (per-token strip)");
    if (stop != 0) return Unsupported("a Strip decoder with stop > 0");
    spec.strip_content = content;
    spec.strip_start = start;
    state.stripped = true;
    return Status::Ok();
  }
  if (state.fused) return Unsupported("decoder '" + type + "' after Fuse");
  DecoderStep step;
  if (type == "Replace") {
    if (state.bytes_decoded) return Unsupported("a Replace decoder after ByteFallback");
    step.kind = DecoderStep::Kind::kReplace;
    const JsonValue* pattern = Field(node, "pattern");
    const JsonValue* literal = pattern != nullptr ? Field(*pattern, "String") : nullptr;
    if (literal == nullptr || !literal->is_string() || literal->string_value().empty()) {
      return Unsupported("a Replace decoder without a String pattern");
    }
    step.from = literal->string_value();
    ES_RETURN_IF_ERROR(ReadString(node, "content", "Replace decoder", step.to));
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::kByteFallback;
    state.bytes_decoded = true;
  } else if (type == "Metaspace") {
    if (state.bytes_decoded) return Unsupported("a Metaspace decoder after ByteFallback");
    step.kind = DecoderStep::Kind::kMetaspace;
    ES_RETURN_IF_ERROR(ReadReplacement(node, "Metaspace decoder", step.from));
    ES_ASSIGN_OR_RETURN(PrependScheme scheme, ReadPrependScheme(node, "Metaspace decoder"));
    step.drop_on_first = scheme != PrependScheme::kNever;
  } else {
    return Unsupported("decoder '" + type + "'");
  }
  spec.steps.push_back(std::move(step));
  return Status::Ok();
}

// Byte-level vocabularies ---------------------------------------------------------------------------------

// Raw bytes of a byte-level token's text, or false when a character stands for no byte.
bool ByteLevelBytes(std::string_view text, std::string& out) {
  out.clear();
  size_t pos = 0;
  while (pos < text.size()) {
    const int b = UnicodeToByte(unicode::DecodeNext(text, pos));
    if (b < 0) return false;
    out.push_back(static_cast<char>(b));
  }
  return true;
}


// tokenizer_config.json: a special token is "text", {"content": "text", ...} or null.
Status ReadConfigToken(const JsonValue& config, std::string_view key, const Tokenizer::Impl& impl,
                       std::optional<TokenId>& out) {
  const JsonValue* v = config.Find(key);
  if (v == nullptr) return Status::Ok();  // absent: keep what tokenizer.json implies
  if (v->is_null()) {
    out.reset();
    return Status::Ok();
  }
  const JsonValue* content = v->is_object() ? Field(*v, "content") : v;
  if (content == nullptr || !content->is_string()) {
    return Status::InvalidArgument("tokenizer_config.json: '" + std::string(key) + "' must be a string");
  }
  std::optional<TokenId> id = impl.added_table.Find(content->string_value());
  if (!id) id = impl.model_table.Find(content->string_value());
  if (!id) {
    return Status::InvalidArgument("tokenizer_config.json: " + std::string(key) + " '" + content->string_value() +
                                   "' is not in the vocabulary");
  }
  out = id;
  return Status::Ok();
}

// The text of a special token as ReadConfigToken accepted it; nullopt when absent or null.
std::optional<std::string> ConfigTokenText(const JsonValue& config, std::string_view key) {
  const JsonValue* v = config.Find(key);
  if (v == nullptr || v->is_null()) return std::nullopt;
  const JsonValue* content = v->is_object() ? Field(*v, "content") : v;
  return content->string_value();
}

// chat_template: a string, or Hugging Face's list of named templates, of which "default" is the one used.
Status ReadChatTemplate(const JsonValue& config, std::string& out) {
  const JsonValue* v = config.Find("chat_template");
  if (v == nullptr || v->is_null()) return Status::Ok();
  if (v->is_string()) {
    out = v->string_value();
    return Status::Ok();
  }
  if (!v->is_array()) {
    return Status::InvalidArgument("tokenizer_config.json: 'chat_template' must be a string or a list");
  }
  for (const JsonValue& entry : v->array()) {
    const JsonValue* name = entry.is_object() ? entry.Find("name") : nullptr;
    const JsonValue* text = entry.is_object() ? entry.Find("template") : nullptr;
    if (name == nullptr || !name->is_string() || text == nullptr || !text->is_string()) {
      return Status::InvalidArgument(
          "tokenizer_config.json: each 'chat_template' entry must have a string 'name' and 'template'");
    }
    if (name->string_value() == "default") out = text->string_value();
  }
  return Status::Ok();
}

Status CheckUnsupportedTopLevel(const JsonValue& root) {
  if (Field(root, "truncation") != nullptr) return Unsupported("truncation");
  if (const JsonValue* padding = Field(root, "padding")) {
    // Padding to the longest sequence of a batch changes nothing for one sequence; fixed padding would.
    const JsonValue* strategy = padding->is_object() ? Field(*padding, "strategy") : nullptr;
    if (strategy == nullptr || !strategy->is_string() || strategy->string_value() != "BatchLongest") {
      return Unsupported("padding other than BatchLongest");
    }
  }
  return Status::Ok();
}

// The model's type and BPE options: NotSupported for another type, dropout or subword affixes.
Status ReadBpeOptions(const JsonValue& model, BpeModel::Options& options) {
  std::string type;
  ES_RETURN_IF_ERROR(ReadString(model, "type", "model", type));
  if (type.empty() && Field(model, "merges") != nullptr) type = "BPE";  // untagged older files
  if (type != "BPE") return Unsupported("model type '" + (type.empty() ? std::string("?") : type) + "'");

  if (const JsonValue* dropout = Field(model, "dropout")) {
    auto p = dropout->AsDouble();
    if (!p.ok()) return Invalid("model", "'dropout' must be a number");
    if (*p > 0) return Unsupported("BPE dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    std::string affix;
    ES_RETURN_IF_ERROR(ReadString(model, key, "model", affix));
    if (!affix.empty()) return Unsupported(std::string("BPE ") + key);
  }
  ES_RETURN_IF_ERROR(ReadBool(model, "byte_fallback", "model", options.byte_fallback));
  ES_RETURN_IF_ERROR(ReadBool(model, "fuse_unk", "model", options.fuse_unk));
  return ReadBool(model, "ignore_merges", "model", options.ignore_merges);
}

// The vocabulary (text -> id) into `entries`, the id table (sized for the added tokens' ids too) and the model
// table. Entries view the JSON's keys.
Status LoadVocabulary(const JsonValue& model, Tokenizer::Impl& impl,
                      std::vector<std::pair<std::string_view, TokenId>>& entries) {
  const JsonValue* vocab = Field(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) return Invalid("model", "'vocab' must be an object");
  entries.reserve(vocab->object().size());
  TokenId max_id = 0;
  for (const auto& [text, value] : vocab->object()) {
    ES_ASSIGN_OR_RETURN(TokenId id, ReadId(value, "model.vocab"));
    entries.emplace_back(text, id);
    max_id = std::max(max_id, id);
  }
  for (const AddedToken& t : impl.added) max_id = std::max(max_id, t.id);
  // The id table is sized by the largest id, so ids must be roughly dense: one huge id in a small file
  // must not make the loader allocate gigabytes.
  const size_t token_count = entries.size() + impl.added.size();
  if (max_id >= kIdSparsityFactor * token_count + kIdSlack) {
    return Invalid("model.vocab", "token ids are too sparse (largest " + std::to_string(max_id) + " for " +
                                      std::to_string(token_count) + " tokens)");
  }
  const size_t size = token_count == 0 ? 0 : size_t{max_id} + 1;
  impl.tokens.assign(size, std::string());
  impl.token_flags.assign(size, 0);
  for (const auto& [text, id] : entries) {
    if (impl.token_flags[id] & Tokenizer::Impl::kPresent) {
      return Invalid("model.vocab", "id " + std::to_string(id) + " is used twice");
    }
    impl.token_flags[id] |= Tokenizer::Impl::kPresent;
    impl.tokens[id] = std::string(text);
  }
  return impl.model_table.Build(entries).WithContext("tokenizer.json: model.vocab");
}

// Enters the added tokens into the id table. They take their ids from the file; one that is also in the
// vocabulary must agree with it.
Status RegisterAddedTokens(Tokenizer::Impl& impl) {
  for (const AddedToken& t : impl.added) {
    if (auto existing = impl.model_table.Find(t.content); existing && *existing != t.id) {
      return Invalid("added_tokens", "'" + t.content + "' has id " + std::to_string(t.id) +
                                         " but the vocabulary has it at " + std::to_string(*existing));
    }
    if (!(impl.token_flags[t.id] & Tokenizer::Impl::kPresent)) {
      impl.token_flags[t.id] |= Tokenizer::Impl::kPresent;
    } else if (!impl.model_table.Find(t.content)) {
      return Invalid("added_tokens", "id " + std::to_string(t.id) + " of '" + t.content +
                                         "' belongs to another vocabulary token");
    }
    impl.tokens[t.id] = t.content;
    if (t.special) impl.token_flags[t.id] |= Tokenizer::Impl::kSpecial;
  }
  return Status::Ok();
}

// The model's unk_token, when it names one: it must be in the vocabulary.
Status ReadUnkToken(const JsonValue& model, Tokenizer::Impl& impl, BpeModel::Options& options) {
  std::string unk_token;
  ES_RETURN_IF_ERROR(ReadString(model, "unk_token", "model", unk_token));
  if (unk_token.empty()) return Status::Ok();
  options.unk_id = impl.model_table.Find(unk_token);
  if (!options.unk_id) return Invalid("model", "unk_token '" + unk_token + "' is not in the vocabulary");
  impl.unk = options.unk_id;
  return Status::Ok();
}

// One merge's two halves: ["a", "b"], or "a b" in older files. The views point into `m`.
Status ReadMergeHalves(const JsonValue& m, size_t rank, std::string_view& left, std::string_view& right) {
  if (m.is_string()) {
    const std::string& s = m.string_value();
    const size_t space = s.find(' ');
    if (space == std::string::npos) return Invalid("model.merges", "merge '" + s + "' is not 'left right'");
    left = std::string_view(s).substr(0, space);
    right = std::string_view(s).substr(space + 1);
    return Status::Ok();
  }
  if (m.is_array() && m.array().size() == 2 && m.array()[0].is_string() && m.array()[1].is_string()) {
    left = m.array()[0].string_value();
    right = m.array()[1].string_value();
    return Status::Ok();
  }
  return Invalid("model.merges", "merge " + std::to_string(rank) + " is not a pair of strings");
}

// The merges by rank, as vocabulary ids: the (left, right) pairs and the id of each concatenation.
struct BpeMerges {
  std::vector<std::pair<TokenId, TokenId>> pairs;
  std::vector<TokenId> merged;
};

// The model's merges, if any; every half and every concatenation must be in the vocabulary.
Status LoadMerges(const JsonValue& model, const Tokenizer::Impl& impl, BpeMerges& out) {
  const JsonValue* merges = Field(model, "merges");
  if (merges == nullptr) return Status::Ok();
  if (!merges->is_array()) return Invalid("model", "'merges' must be an array");
  out.pairs.reserve(merges->array().size());
  out.merged.reserve(merges->array().size());
  std::string joined;
  for (size_t rank = 0; rank < merges->array().size(); ++rank) {
    std::string_view left, right;
    ES_RETURN_IF_ERROR(ReadMergeHalves(merges->array()[rank], rank, left, right));
    auto left_id = impl.model_table.Find(left);
    auto right_id = impl.model_table.Find(right);
    if (!left_id || !right_id) {
      return Invalid("model.merges", "merge " + std::to_string(rank) + " references unknown token '" +
                                         std::string(left_id ? right : left) + "'");
    }
    joined.assign(left);
    joined.append(right);
    auto merged_id = impl.model_table.Find(joined);
    if (!merged_id) {
      return Invalid("model.merges", "merge " + std::to_string(rank) + " produces '" + joined +
                                         "', which is not in the vocabulary");
    }
    out.pairs.emplace_back(*left_id, *right_id);
    out.merged.push_back(*merged_id);
  }
  return Status::Ok();
}

// What BpeModel::Build encodes with besides the merges. `keys` may view `byte_keys`, so this is filled in place
// and never copied.
struct EncodingKeys {
  std::vector<std::string> byte_keys;
  std::vector<std::pair<std::string_view, TokenId>> keys;
  std::array<std::optional<TokenId>, kByteValues> byte_symbols{};
  std::array<std::string, kByteValues> byte_symbol_text{};
  std::array<std::optional<TokenId>, kByteValues> fallback_ids{};
};

// Encoding keys: raw bytes for byte-level vocabularies (so that encoding never maps characters), text
// otherwise. Tokens outside the byte-level alphabet cannot come out of byte-level encoding: no key.
void BuildEncodingKeys(const std::vector<std::pair<std::string_view, TokenId>>& entries,
                       const Tokenizer::Impl& impl, const BpeModel::Options& options, EncodingKeys& out) {
  if (options.byte_level) {
    out.byte_keys.reserve(entries.size());
    std::string bytes;
    std::vector<TokenId> key_ids;
    for (const auto& [text, id] : entries) {
      if (!ByteLevelBytes(text, bytes)) continue;
      out.byte_keys.push_back(bytes);
      key_ids.push_back(id);
    }
    out.keys.reserve(out.byte_keys.size());
    for (size_t i = 0; i < out.byte_keys.size(); ++i) out.keys.emplace_back(out.byte_keys[i], key_ids[i]);
    for (unsigned b = 0; b < kByteValues; ++b) {
      std::string text;
      unicode::AppendUtf8(ByteToUnicode()[b], text);
      out.byte_symbols[b] = impl.model_table.Find(text);
      out.byte_symbol_text[b] = std::move(text);
    }
  } else {
    out.keys = entries;
  }
  if (options.byte_fallback) {
    for (unsigned b = 0; b < kByteValues; ++b) {
      out.fallback_ids[b] = impl.model_table.Find(ByteFallbackToken(static_cast<uint8_t>(b)));
    }
  }
}

Status LoadModelAndVocabulary(const JsonValue& root, Tokenizer::Impl& impl, bool byte_level) {
  const JsonValue* model = Field(root, "model");
  if (model == nullptr || !model->is_object()) return Invalid("model", "missing");
  BpeModel::Options options;
  options.byte_level = byte_level;
  ES_RETURN_IF_ERROR(ReadBpeOptions(*model, options));

  std::vector<std::pair<std::string_view, TokenId>> entries;
  ES_RETURN_IF_ERROR(LoadVocabulary(*model, impl, entries));
  ES_RETURN_IF_ERROR(RegisterAddedTokens(impl));
  ES_RETURN_IF_ERROR(ReadUnkToken(*model, impl, options));
  BpeMerges merges;
  ES_RETURN_IF_ERROR(LoadMerges(*model, impl, merges));

  EncodingKeys keys;
  BuildEncodingKeys(entries, impl, options, keys);
  auto bpe = BpeModel::Build(options, keys.keys, merges.pairs, merges.merged, keys.byte_symbols,
                             keys.byte_symbol_text, keys.fallback_ids);
  if (!bpe.ok()) return bpe.status().WithContext("tokenizer.json: model");
  impl.model = std::move(bpe).value();
  return Status::Ok();
}

Status LoadAddedTokens(const JsonValue& root, Tokenizer::Impl& impl) {
  const JsonValue* list = Field(root, "added_tokens");
  if (list == nullptr) return Status::Ok();
  if (!list->is_array()) return Invalid("added_tokens", "must be an array");
  for (const JsonValue& item : list->array()) {
    if (!item.is_object()) return Invalid("added_tokens", "entries must be objects");
    AddedToken t;
    const JsonValue* id = Field(item, "id");
    if (id == nullptr) return Invalid("added_tokens", "entry without 'id'");
    ES_ASSIGN_OR_RETURN(t.id, ReadId(*id, "added_tokens"));
    ES_RETURN_IF_ERROR(ReadString(item, "content", "added_tokens", t.content));
    if (t.content.empty()) return Invalid("added_tokens", "entry with empty 'content'");
    ES_RETURN_IF_ERROR(ReadBool(item, "special", "added_tokens", t.special));
    t.normalized = !t.special;  // tokenizers' default when the field is absent
    ES_RETURN_IF_ERROR(ReadBool(item, "normalized", "added_tokens", t.normalized));
    ES_RETURN_IF_ERROR(ReadBool(item, "lstrip", "added_tokens", t.lstrip));
    ES_RETURN_IF_ERROR(ReadBool(item, "rstrip", "added_tokens", t.rstrip));
    ES_RETURN_IF_ERROR(ReadBool(item, "single_word", "added_tokens", t.single_word));
    impl.added.push_back(std::move(t));
  }
  std::vector<std::pair<std::string_view, TokenId>> entries;
  for (const AddedToken& t : impl.added) entries.emplace_back(t.content, t.id);
  ES_RETURN_IF_ERROR(impl.added_table.Build(entries).WithContext("tokenizer.json: added_tokens"));
  std::unordered_set<TokenId> seen_ids;
  for (const AddedToken& t : impl.added) {
    if (!seen_ids.insert(t.id).second) return Invalid("added_tokens", "id " + std::to_string(t.id) + " is used twice");
  }
  return Status::Ok();
}

// Builds the two matchers. Order as tokenizers builds its tries: special tokens first, then the others,
// each in file order; normalized ones are matched in their normalized form.
Status BuildAddedMatchers(Tokenizer::Impl& impl) {
  std::vector<std::string> raw_patterns, normalized_patterns;
  std::vector<uint32_t> raw_values, normalized_values;
  std::string normalized, tmp;
  for (int pass = 0; pass < 2; ++pass) {
    const bool want_special = pass == 0;
    for (uint32_t i = 0; i < impl.added.size(); ++i) {
      const AddedToken& t = impl.added[i];
      if (t.special != want_special) continue;
      if (t.normalized) {
        ES_RETURN_IF_ERROR(impl.NormalizeText(t.content, normalized, tmp));
        normalized_patterns.push_back(normalized);
        normalized_values.push_back(i);
      } else {
        raw_patterns.push_back(t.content);
        raw_values.push_back(i);
      }
    }
  }
  impl.raw_matcher.Build(raw_patterns, raw_values);
  impl.normalized_matcher.Build(normalized_patterns, normalized_values);
  return Status::Ok();
}

void BuildDecodedTable(Tokenizer::Impl& impl) {
  impl.decoded_offsets.assign(impl.tokens.size() + 1, 0);
  impl.decoded_arena.clear();
  for (size_t id = 0; id < impl.tokens.size(); ++id) {
    impl.decoded_offsets[id] = static_cast<uint32_t>(impl.decoded_arena.size());
    if (impl.token_flags[id] & Tokenizer::Impl::kPresent) {
      impl.decoded_arena += impl.DecodeToken(impl.tokens[id], /*first=*/false);
    }
  }
  impl.decoded_offsets[impl.tokens.size()] = static_cast<uint32_t>(impl.decoded_arena.size());
  for (const DecoderStep& step : impl.decoder.steps) {
    if (step.kind == DecoderStep::Kind::kMetaspace && step.drop_on_first) impl.first_token_differs = true;
  }
}

}  // namespace

std::string ByteFallbackToken(uint8_t byte) {
  constexpr char kHex[] = "0123456789ABCDEF";
  constexpr int kNibbleBits = 4;
  constexpr uint8_t kNibbleMask = 0xF;
  std::string token(kByteTokenPrefix);
  token.push_back(kHex[byte >> kNibbleBits]);
  token.push_back(kHex[byte & kNibbleMask]);
  token.append(kByteTokenSuffix);
  return token;
}

std::optional<uint8_t> ParseByteFallbackToken(std::string_view token) {
  if (token.size() != kByteTokenPrefix.size() + kByteTokenHexDigits + kByteTokenSuffix.size() ||
      !token.starts_with(kByteTokenPrefix) || !token.ends_with(kByteTokenSuffix)) {
    return std::nullopt;
  }
  int value = 0;
  for (char c : token.substr(kByteTokenPrefix.size(), kByteTokenHexDigits)) {
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else return std::nullopt;
    value = value * kHexBase + digit;
  }
  return static_cast<uint8_t>(value);
}

const std::array<char32_t, 256>& ByteToUnicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = kByteLevelShift;
    for (unsigned b = 0; b < 256; ++b) {
      // Printable Latin-1 characters stand for themselves; the rest are shifted past U+00FF.
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

int UnicodeToByte(char32_t c) {
  static const std::vector<int> inverse = [] {
    std::vector<int> inv(kByteLevelShift * 2, -1);
    for (unsigned b = 0; b < 256; ++b) inv[ByteToUnicode()[b]] = static_cast<int>(b);
    return inv;
  }();
  return c < inverse.size() ? inverse[c] : -1;
}

Result<std::unique_ptr<Tokenizer::Impl>> LoadTokenizer(std::string_view tokenizer_json,
                                                       std::string_view tokenizer_config_json) {
  auto parsed = ParseJson(tokenizer_json);
  if (!parsed.ok()) return parsed.status().WithContext("tokenizer.json");
  const JsonValue& root = *parsed;
  if (!root.is_object()) return Invalid("document", "must be an object");
  ES_RETURN_IF_ERROR(CheckUnsupportedTopLevel(root));

  auto impl = std::make_unique<Tokenizer::Impl>();
  if (const JsonValue* n = Field(root, "normalizer")) ES_RETURN_IF_ERROR(LoadNormalizer(*n, impl->normalizer));
  if (const JsonValue* p = Field(root, "pre_tokenizer")) {
    ES_RETURN_IF_ERROR(LoadPreTokenizer(*p, impl->pre_tokenizer));
  }
  bool byte_level = false;
  for (size_t i = 0; i < impl->pre_tokenizer.size(); ++i) {
    if (impl->pre_tokenizer[i].kind != PreTokenizerStep::Kind::kByteLevel) continue;
    // Later steps would see the byte-level characters (Ġ is a letter), a combination nobody uses.
    if (i + 1 != impl->pre_tokenizer.size()) return Unsupported("a pre-tokenizer after ByteLevel");
    byte_level = true;
  }
  ES_RETURN_IF_ERROR(LoadAddedTokens(root, *impl));
  ES_RETURN_IF_ERROR(LoadModelAndVocabulary(root, *impl, byte_level));
  ES_RETURN_IF_ERROR(BuildAddedMatchers(*impl));
  if (const JsonValue* p = Field(root, "post_processor")) {
    ES_RETURN_IF_ERROR(LoadPostProcessor(*p, impl->prefix, impl->suffix));
  }
  for (const auto* ids : {&impl->prefix, &impl->suffix}) {
    for (TokenId id : *ids) {
      if (!impl->Has(id)) return Invalid("post_processor", "id " + std::to_string(id) + " is not in the vocabulary");
    }
  }
  if (const JsonValue* d = Field(root, "decoder")) {
    DecoderParseState state;
    ES_RETURN_IF_ERROR(LoadDecoderStep(*d, true, impl->decoder, state));
  } else {
    impl->decoder.separator.assign(1, kNoDecoderSeparator);
  }
  BuildDecodedTable(*impl);

  // Special ids: the post-processor's tokens around the sequence, then tokenizer_config.json overrides.
  if (impl->prefix.size() == 1) impl->bos = impl->prefix[0];
  if (impl->suffix.size() == 1) impl->eos = impl->suffix[0];
  if (!tokenizer_config_json.empty()) {
    auto config = ParseJson(tokenizer_config_json);
    if (!config.ok()) return config.status().WithContext("tokenizer_config.json");
    if (!config->is_object()) return Status::InvalidArgument("tokenizer_config.json: must be an object");
    ES_RETURN_IF_ERROR(ReadConfigToken(*config, "bos_token", *impl, impl->bos));
    ES_RETURN_IF_ERROR(ReadConfigToken(*config, "eos_token", *impl, impl->eos));
    ES_RETURN_IF_ERROR(ReadConfigToken(*config, "pad_token", *impl, impl->pad));
    ES_RETURN_IF_ERROR(ReadConfigToken(*config, "unk_token", *impl, impl->unk));
    if (config->Find("bos_token") != nullptr) impl->bos_token = ConfigTokenText(*config, "bos_token");
    if (config->Find("eos_token") != nullptr) impl->eos_token = ConfigTokenText(*config, "eos_token");
    ES_RETURN_IF_ERROR(ReadChatTemplate(*config, impl->chat_template));
  }
  return impl;
}

}  // namespace es
