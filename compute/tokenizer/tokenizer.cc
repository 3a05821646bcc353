// Encode and decode in tokenizers' pipeline order (added tokens, normalizer, pre-tokenizer, BPE, post-processor);
// decoding repairs invalid UTF-8 once over the whole output, so Decode and StreamDecoder agree byte for byte.
#include "compute/tokenizer/tokenizer.h"

#include <algorithm>

#include "compute/tokenizer/tokenizer_impl.h"
#include "store/base/file_system.h"

namespace es {
namespace {

// One cut of a text: a span of ordinary text (token < 0) or an added token.
struct Segment {
  size_t begin;
  size_t end;
  int64_t token;  // index into Impl::added, or -1
};

// A word being pre-tokenized: a span of EncodeScratch::arena. `at_start`: it begins where the input began
// (a Metaspace "first" prepend scheme only prefixes that one).
struct Piece {
  size_t begin;
  size_t end;
  bool at_start;
};

// Reused working memory: one per thread, so that steady-state encoding does not allocate.
struct EncodeScratch {
  std::vector<Segment> raw_segments;
  std::vector<Segment> normalized_segments;
  std::string normalized;
  std::string normalize_tmp;
  std::string arena;
  std::vector<Piece> pieces;
  std::vector<Piece> next_pieces;
  std::vector<std::pair<size_t, size_t>> matches;
  struct Cut {
    size_t begin;
    size_t end;
    bool is_match;
  };
  std::vector<Cut> cuts;
  MatchScratch regex;
  BpeScratch bpe;
};

EncodeScratch& ThreadScratch() {
  thread_local EncodeScratch scratch;
  return scratch;
}

bool EndsWithWordChar(std::string_view text) {
  if (text.empty()) return false;
  size_t pos = unicode::PrevBoundary(text, text.size());
  return unicode::IsWordChar(unicode::DecodeNext(text, pos));
}

bool StartsWithWordChar(std::string_view text) {
  if (text.empty()) return false;
  size_t pos = 0;
  return unicode::IsWordChar(unicode::DecodeNext(text, pos));
}

// Start of the white-space run that ends `text` (text.size() when there is none).
size_t TrailingSpaceStart(std::string_view text) {
  size_t pos = text.size();
  while (pos > 0) {
    const size_t prev = unicode::PrevBoundary(text, pos);
    size_t p = prev;
    if (!unicode::IsWhiteSpace(unicode::DecodeNext(text, p))) break;
    pos = prev;
  }
  return pos;
}

// Length of the white-space run that starts `text`.
size_t LeadingSpaceLength(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t next = pos;
    if (!unicode::IsWhiteSpace(unicode::DecodeNext(text, next))) break;
    pos = next;
  }
  return pos;
}

// tokenizers' AddedVocabulary::find_matches: cuts `text` at the added tokens `matcher` finds, applying their
// single_word, lstrip and rstrip flags, and skipping special tokens when they are not to be parsed.
void CutAddedTokens(std::string_view text, const AddedTokenMatcher& matcher, const std::vector<AddedToken>& added,
                    bool parse_special, std::vector<Segment>& out) {
  out.clear();
  if (text.empty()) return;
  if (matcher.empty()) {
    out.push_back({0, text.size(), -1});
    return;
  }
  size_t consumed = 0;  // end of the last token (with its stripped space)
  size_t search = 0;
  size_t match_start, match_end;
  uint32_t index;
  while (matcher.FindNext(text, search, match_start, match_end, index)) {
    search = match_end;
    const AddedToken& token = added[index];
    if (token.special && !parse_special) continue;
    if (token.single_word) {
      const bool space_before = match_start == 0 || !EndsWithWordChar(text.substr(0, match_start));
      const bool space_after = match_end == text.size() || !StartsWithWordChar(text.substr(match_end));
      if (!space_before || !space_after) continue;
    }
    size_t start = match_start;
    size_t stop = match_end;
    if (token.lstrip) start = std::max(TrailingSpaceStart(text.substr(0, match_start)), consumed);
    if (token.rstrip) stop += LeadingSpaceLength(text.substr(match_end));
    // A token beginning inside the space an earlier rstrip took (only possible for tokens that start with
    // white space): tokenizers would emit overlapping pieces; it is skipped here.
    if (start < consumed) continue;
    if (consumed < start) out.push_back({consumed, start, -1});
    out.push_back({start, stop, static_cast<int64_t>(index)});
    consumed = stop;
    search = std::max(search, stop);
  }
  if (consumed < text.size()) out.push_back({consumed, text.size(), -1});
}

// NormalizedString::split: `matches` (relative to the piece) cut it; `behavior` says where the matched
// parts go. Appends the non-empty results to `out`.
void SplitPiece(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
                bool invert, EncodeScratch& s, std::vector<Piece>& out) {
  auto& cuts = s.cuts;
  cuts.clear();
  const size_t length = piece.end - piece.begin;
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev != b) cuts.push_back({prev, b, invert});
    cuts.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != length) cuts.push_back({prev, length, invert});

  auto emit = [&](size_t b, size_t e) {
    if (b != e) out.push_back({piece.begin + b, piece.begin + e, piece.at_start && b == 0});
  };
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& c : cuts) emit(c.begin, c.end);
      break;
    case SplitBehavior::kRemoved:
      for (const auto& c : cuts) {
        if (!c.is_match) emit(c.begin, c.end);
      }
      break;
    case SplitBehavior::kContiguous:
    case SplitBehavior::kMergedWithPrevious: {
      // Contiguous joins runs with the same match status; MergedWithPrevious glues a match onto the piece
      // before it. Both fold left to right over the cuts.
      std::vector<std::pair<size_t, size_t>> acc;
      bool previous_match = false;
      for (const auto& c : cuts) {
        const bool join = behavior == SplitBehavior::kContiguous ? c.is_match == previous_match
                                                                  : c.is_match && !previous_match;
        if (join && !acc.empty()) {
          acc.back().second = c.end;
        } else {
          acc.emplace_back(c.begin, c.end);
        }
        previous_match = c.is_match;
      }
      for (const auto& [b, e] : acc) emit(b, e);
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      std::vector<std::pair<size_t, size_t>> acc;
      bool previous_match = false;
      for (auto it = cuts.rbegin(); it != cuts.rend(); ++it) {
        if (it->is_match && !previous_match && !acc.empty()) {
          acc.back().first = it->begin;
        } else {
          acc.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      for (auto it = acc.rbegin(); it != acc.rend(); ++it) emit(it->first, it->second);
      break;
    }
  }
}

// Finds every occurrence of `needle` (non-overlapping, left to right) in `text`.
void FindLiteral(std::string_view text, std::string_view needle, std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  size_t pos = 0;
  while ((pos = text.find(needle, pos)) != std::string_view::npos) {
    out.emplace_back(pos, pos + needle.size());
    pos += needle.size();
  }
}

void ReplaceAll(std::string_view text, std::string_view from, std::string_view to, std::string& out) {
  out.clear();
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
}

// Rewrites a piece's text (prepend and/or replace), placing the new text at the end of the arena.
Piece RewritePiece(const Piece& piece, std::string_view prefix, std::string_view from, std::string_view to,
                   EncodeScratch& s) {
  std::string replaced;
  const std::string_view text(s.arena.data() + piece.begin, piece.end - piece.begin);
  if (from.empty()) {
    replaced.assign(text);
  } else {
    ReplaceAll(text, from, to, replaced);
  }
  const size_t begin = s.arena.size();
  s.arena.append(prefix);
  s.arena.append(replaced);
  return {begin, s.arena.size(), piece.at_start};
}

Status RunPreTokenizerStep(const PreTokenizerStep& step, EncodeScratch& s) {
  s.next_pieces.clear();
  for (const Piece& original : s.pieces) {
    Piece piece = original;
    auto text = [&](const Piece& p) { return std::string_view(s.arena).substr(p.begin, p.end - p.begin); };
    switch (step.kind) {
      case PreTokenizerStep::Kind::kSplit:
        s.matches.clear();
        ES_RETURN_IF_ERROR(step.regex->FindAll(text(piece), s.regex, s.matches));
        SplitPiece(piece, s.matches, step.behavior, step.invert, s, s.next_pieces);
        break;
      case PreTokenizerStep::Kind::kByteLevel:
        if (step.add_prefix_space && text(piece).front() != ' ') piece = RewritePiece(piece, " ", "", "", s);
        if (step.regex) {
          s.matches.clear();
          ES_RETURN_IF_ERROR(step.regex->FindAll(text(piece), s.regex, s.matches));
          SplitPiece(piece, s.matches, SplitBehavior::kIsolated, false, s, s.next_pieces);
        } else {
          s.next_pieces.push_back(piece);
        }
        break;
      case PreTokenizerStep::Kind::kMetaspace: {
        piece = RewritePiece(piece, "", " ", step.replacement, s);
        const bool starts_with_replacement = text(piece).starts_with(step.replacement);
        const bool prepend = !starts_with_replacement && (step.prepend_scheme == PrependScheme::kAlways ||
                                                          (step.prepend_scheme == PrependScheme::kFirst &&
                                                           piece.at_start));
        if (prepend) piece = RewritePiece(piece, step.replacement, "", "", s);
        if (step.split) {
          FindLiteral(text(piece), step.replacement, s.matches);
          SplitPiece(piece, s.matches, SplitBehavior::kMergedWithNext, false, s, s.next_pieces);
        } else {
          s.next_pieces.push_back(piece);
        }
        break;
      }
      case PreTokenizerStep::Kind::kDigits: {
        s.matches.clear();
        const std::string_view t = text(piece);
        size_t pos = 0;
        while (pos < t.size()) {
          const size_t start = pos;
          if (unicode::IsNumber(unicode::DecodeNext(t, pos))) s.matches.emplace_back(start, pos);
        }
        SplitPiece(piece, s.matches,
                   step.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false, s,
                   s.next_pieces);
        break;
      }
    }
  }
  std::swap(s.pieces, s.next_pieces);
  return Status::Ok();
}

}  // namespace

// AddedTokenMatcher -------------------------------------------------------------------------------------

void AddedTokenMatcher::Build(const std::vector<std::string>& patterns, const std::vector<uint32_t>& values) {
  nodes_.assign(1, Node());
  first_byte_.fill(false);
  for (size_t i = 0; i < patterns.size(); ++i) {
    const std::string& p = patterns[i];
    if (p.empty()) continue;
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    uint32_t node = 0;
    for (char ch : p) {
      const auto c = static_cast<unsigned char>(ch);
      uint32_t child = 0;
      for (const auto& [label, next] : nodes_[node].children) {
        if (label == c) child = next;
      }
      if (child == 0) {
        child = static_cast<uint32_t>(nodes_.size());
        nodes_[node].children.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[node].value < 0) nodes_[node].value = values[i];  // the first pattern wins exact ties
  }
}

bool AddedTokenMatcher::FindNext(std::string_view text, size_t from, size_t& start, size_t& end,
                                 uint32_t& value) const {
  for (size_t s = from; s < text.size(); ++s) {
    if (!first_byte_[static_cast<unsigned char>(text[s])]) continue;
    uint32_t node = 0;
    int64_t best = -1;
    size_t best_end = 0;
    for (size_t i = s; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      uint32_t child = 0;
      for (const auto& [label, next] : nodes_[node].children) {
        if (label == c) child = next;
      }
      if (child == 0) break;
      node = child;
      if (nodes_[node].value >= 0) {
        best = nodes_[node].value;
        best_end = i + 1;
      }
    }
    if (best >= 0) {
      start = s;
      end = best_end;
      value = static_cast<uint32_t>(best);
      return true;
    }
  }
  return false;
}

// Impl --------------------------------------------------------------------------------------------------

Status Tokenizer::Impl::NormalizeText(std::string_view in, std::string& out, std::string& tmp) const {
  out.assign(in);
  for (const NormalizerStep& step : normalizer) {
    switch (step.kind) {
      case NormalizerStep::Kind::kUnicode:
        ES_RETURN_IF_ERROR(unicode::Normalize(step.form, out, tmp));
        std::swap(out, tmp);
        break;
      case NormalizerStep::Kind::kLowercase:
        ES_RETURN_IF_ERROR(unicode::Lowercase(out, tmp));
        std::swap(out, tmp);
        break;
      case NormalizerStep::Kind::kPrepend:
        if (!out.empty()) out.insert(0, step.to);
        break;
      case NormalizerStep::Kind::kReplace:
        ReplaceAll(out, step.from, step.to, tmp);
        std::swap(out, tmp);
        break;
      case NormalizerStep::Kind::kStrip: {
        size_t begin = step.strip_left ? LeadingSpaceLength(out) : 0;
        size_t end = step.strip_right ? TrailingSpaceStart(out) : out.size();
        if (end < begin) end = begin;
        tmp.assign(out, begin, end - begin);
        std::swap(out, tmp);
        break;
      }
    }
  }
  return Status::Ok();
}

std::string Tokenizer::Impl::DecodeToken(std::string_view text, bool first) const {
  std::string out;
  if (decoder.byte_level) {
    size_t pos = 0;
    while (pos < text.size()) {
      const int b = UnicodeToByte(unicode::DecodeNext(text, pos));
      if (b < 0) return std::string(text);  // not a byte-level token (an added token): its own text
      out.push_back(static_cast<char>(b));
    }
    return out;
  }
  out.assign(text);
  std::string tmp;
  for (const DecoderStep& step : decoder.steps) {
    switch (step.kind) {
      case DecoderStep::Kind::kReplace:
        ReplaceAll(out, step.from, step.to, tmp);
        std::swap(out, tmp);
        break;
      case DecoderStep::Kind::kMetaspace:
        ReplaceAll(out, step.from, first && step.drop_on_first ? "" : " ", tmp);
        std::swap(out, tmp);
        break;
      case DecoderStep::Kind::kByteFallback:
        if (auto byte = ParseByteFallbackToken(out)) out.assign(1, static_cast<char>(*byte));
        break;
    }
  }
  return out;
}

void Tokenizer::Impl::AppendDecoded(TokenId id, bool first, std::string& out) const {
  if (first && first_token_differs) {
    out += DecodeToken(tokens[id], true);
    return;
  }
  out.append(decoded_arena, decoded_offsets[id], decoded_offsets[id + 1] - decoded_offsets[id]);
}

// Tokenizer ---------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::FromJson(std::string_view tokenizer_json, std::string_view tokenizer_config_json) {
  ES_ASSIGN_OR_RETURN(auto impl, LoadTokenizer(tokenizer_json, tokenizer_config_json));
  return Tokenizer(std::move(impl));
}

Result<Tokenizer> Tokenizer::FromFile(const std::string& tokenizer_json_path,
                                      const std::string& tokenizer_config_path) {
  ES_ASSIGN_OR_RETURN(std::string json, ReadFile(*DefaultFileSystem(), tokenizer_json_path));
  std::string config;
  if (!tokenizer_config_path.empty()) {
    ES_ASSIGN_OR_RETURN(config, ReadFile(*DefaultFileSystem(), tokenizer_config_path));
  }
  auto tokenizer = FromJson(json, config);
  if (!tokenizer.ok()) return tokenizer.status().WithContext(tokenizer_json_path);
  return tokenizer;
}

namespace {

// The encoding pipeline up to the model: calls on_token(id) for an added token and on_word(text, scratch) for
// each pre-tokenized word, in text order.
template <typename OnToken, typename OnWord>
Status ForEachWord(const Tokenizer::Impl& impl, std::string_view text, const EncodeOptions& options,
                   OnToken&& on_token, OnWord&& on_word) {
  if (!unicode::IsValidUtf8(text)) return Status::InvalidArgument("text to encode is not valid UTF-8");
  EncodeScratch& s = ThreadScratch();
  CutAddedTokens(text, impl.raw_matcher, impl.added, options.parse_special_tokens, s.raw_segments);
  for (const Segment& raw : s.raw_segments) {
    if (raw.token >= 0) {
      on_token(impl.added[raw.token].id);
      continue;
    }
    ES_RETURN_IF_ERROR(impl.NormalizeText(text.substr(raw.begin, raw.end - raw.begin), s.normalized,
                                          s.normalize_tmp));
    CutAddedTokens(s.normalized, impl.normalized_matcher, impl.added, options.parse_special_tokens,
                   s.normalized_segments);
    for (const Segment& seg : s.normalized_segments) {
      if (seg.token >= 0) {
        on_token(impl.added[seg.token].id);
        continue;
      }
      s.arena.assign(s.normalized, seg.begin, seg.end - seg.begin);
      s.pieces.assign(1, Piece{0, s.arena.size(), raw.begin == 0 && seg.begin == 0});
      for (const PreTokenizerStep& step : impl.pre_tokenizer) ES_RETURN_IF_ERROR(RunPreTokenizerStep(step, s));
      for (const Piece& piece : s.pieces) {
        on_word(std::string_view(s.arena).substr(piece.begin, piece.end - piece.begin), s);
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<TokenId>> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  const Impl& impl = *impl_;
  std::vector<TokenId> ids;
  ids.reserve(text.size() / 3 + impl.prefix.size() + impl.suffix.size());
  if (options.add_special_tokens) ids.insert(ids.end(), impl.prefix.begin(), impl.prefix.end());
  ES_RETURN_IF_ERROR(ForEachWord(
      impl, text, options, [&](TokenId id) { ids.push_back(id); },
      [&](std::string_view word, EncodeScratch& s) { impl.model->Encode(word, ids, s.bpe); }));
  if (options.add_special_tokens) ids.insert(ids.end(), impl.suffix.begin(), impl.suffix.end());
  return ids;
}

Result<std::vector<std::string>> Tokenizer::PreTokenize(std::string_view text, const EncodeOptions& options) const {
  std::vector<std::string> words;
  ES_RETURN_IF_ERROR(ForEachWord(
      *impl_, text, options, [&](TokenId id) { words.push_back(impl_->tokens[id]); },
      [&](std::string_view word, EncodeScratch&) { words.emplace_back(word); }));
  return words;
}

namespace {

// The Strip decoder: up to `count` copies of `content` leave the start of the text.
size_t StripPrefix(const std::string& text, const std::string& content, size_t count) {
  size_t cut = 0;
  while (count > 0 && !content.empty() && text.compare(cut, content.size(), content) == 0) {
    cut += content.size();
    --count;
  }
  return cut;
}

}  // namespace

// The same steps as StreamDecoder over the whole input at once (tests hold the two to the same output).
Result<std::string> Tokenizer::Decode(std::span<const TokenId> ids, const DecodeOptions& options) const {
  const Impl& impl = *impl_;
  std::string bytes;
  bytes.reserve(ids.size() * 4);
  bool first = true;
  for (TokenId id : ids) {
    if (!impl.Has(id)) return Status::InvalidArgument("token id " + std::to_string(id) + " is not in the vocabulary");
    if (options.skip_special_tokens && (impl.token_flags[id] & Impl::kSpecial)) continue;
    if (!first) bytes += impl.decoder.separator;
    impl.AppendDecoded(id, first, bytes);
    first = false;
  }
  std::string text;
  text.reserve(bytes.size());
  unicode::AppendUtf8Lossy(bytes, /*final=*/true, text);
  text.erase(0, StripPrefix(text, impl.decoder.strip_content, impl.decoder.strip_start));
  return text;
}

size_t Tokenizer::vocab_size() const { return impl_->tokens.size(); }

std::optional<std::string_view> Tokenizer::IdToToken(TokenId id) const {
  if (!impl_->Has(id)) return std::nullopt;
  return std::string_view(impl_->tokens[id]);
}

std::optional<TokenId> Tokenizer::TokenToId(std::string_view token) const {
  if (auto id = impl_->added_table.Find(token)) return id;
  return impl_->model_table.Find(token);
}

bool Tokenizer::IsSpecial(TokenId id) const {
  return impl_->Has(id) && (impl_->token_flags[id] & Impl::kSpecial);
}

std::optional<TokenId> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<TokenId> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<TokenId> Tokenizer::pad_id() const { return impl_->pad; }
std::optional<TokenId> Tokenizer::unk_id() const { return impl_->unk; }
std::optional<std::string_view> Tokenizer::bos_token() const {
  if (impl_->bos_token) return std::string_view(*impl_->bos_token);
  return impl_->bos ? IdToToken(*impl_->bos) : std::nullopt;
}
std::optional<std::string_view> Tokenizer::eos_token() const {
  if (impl_->eos_token) return std::string_view(*impl_->eos_token);
  return impl_->eos ? IdToToken(*impl_->eos) : std::nullopt;
}
std::string_view Tokenizer::chat_template() const { return impl_->chat_template; }

// StreamDecoder -----------------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, DecodeOptions options)
    : impl_(tokenizer.impl_.get()), options_(options), strip_left_(impl_->decoder.strip_start) {}

Result<std::string> StreamDecoder::Push(TokenId id) {
  if (!impl_->Has(id)) return Status::InvalidArgument("token id " + std::to_string(id) + " is not in the vocabulary");
  if (options_.skip_special_tokens && (impl_->token_flags[id] & Tokenizer::Impl::kSpecial)) return std::string();
  if (!first_token_) pending_ += impl_->decoder.separator;
  impl_->AppendDecoded(id, first_token_, pending_);
  first_token_ = false;
  return Emit(/*final=*/false);
}

std::string StreamDecoder::Finish() {
  std::string out = Emit(/*final=*/true);
  pending_.clear();
  first_token_ = true;
  strip_left_ = impl_->decoder.strip_start;
  return out;
}

std::string StreamDecoder::Emit(bool final) {
  std::string out;
  const size_t consumed = unicode::AppendUtf8Lossy(pending_, final, out);
  pending_.erase(0, consumed);
  // The Strip decoder removes leading characters of the whole text: keep removing them while the output so
  // far consists only of them.
  const std::string& strip = impl_->decoder.strip_content;
  const size_t cut = StripPrefix(out, strip, strip_left_);
  strip_left_ = cut < out.size() ? 0 : strip_left_ - (strip.empty() ? 0 : cut / strip.size());
  out.erase(0, cut);
  return out;
}

}  // namespace es
