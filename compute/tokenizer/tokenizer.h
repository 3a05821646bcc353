// Tokenizer: a Hugging Face tokenizer.json (byte-level BPE as in Qwen2/3 and OLMoE, SentencePiece-style BPE as in
// Llama and Mixtral) reproducing tokenizers' ids; features it lacks fail loading with NotSupported naming them.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "compute/tokenizer/token.h"
#include "store/base/status.h"

namespace es {

struct EncodeOptions {
  // Add the post-processor's special tokens (the BOS of Llama/Mixtral), as `add_special_tokens` in
  // Hugging Face's encode, whose default this keeps.
  bool add_special_tokens = true;
  // Recognise special added tokens ("<|im_start|>", "<s>") written in the text. False encodes their text as
  // ordinary text (Hugging Face's `split_special_tokens`), which is what untrusted user text should get.
  bool parse_special_tokens = true;
};

struct DecodeOptions {
  bool skip_special_tokens = false;
};

class StreamDecoder;

// Immutable once loaded and safe to use from several threads at once. Each thread that encodes keeps
// reusable working memory (its word cache, at most about 4 MiB) for the rest of its life.
class Tokenizer {
 public:
  // `tokenizer_json` is the text of tokenizer.json (a model asset need not be a file). The optional
  // `tokenizer_config_json` (tokenizer_config.json) names the bos/eos/pad tokens; without it they are
  // inferred from the post-processor (bos before the sequence, eos after it) and the model's unk token.
  // InvalidArgument for malformed or inconsistent input, NotSupported for a feature not implemented.
  static Result<Tokenizer> FromJson(std::string_view tokenizer_json, std::string_view tokenizer_config_json = {});
  // Reads the files and calls FromJson. An empty `tokenizer_config_path` means none.
  static Result<Tokenizer> FromFile(const std::string& tokenizer_json_path,
                                    const std::string& tokenizer_config_path = {});

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // InvalidArgument when `text` is not valid UTF-8; ResourceExhausted if a split pattern from the file
  // backtracks pathologically on it (never for the patterns real tokenizers use).
  Result<std::vector<TokenId>> Encode(std::string_view text, const EncodeOptions& options = {}) const;
  // The words the BPE model would see for `text`, in order: added tokens as their content, every other word
  // after normalization and pre-tokenization (raw bytes for byte-level vocabularies, so "Ġ" reads as " ").
  // For inspection (tokenizers' pre_tokenize_str) and tests.
  Result<std::vector<std::string>> PreTokenize(std::string_view text, const EncodeOptions& options = {}) const;
  // Text of `ids`; bytes that do not form valid UTF-8 become U+FFFD. InvalidArgument for an id with no token
  // (Hugging Face drops those silently; here it is reported, since it means the caller's ids are wrong).
  Result<std::string> Decode(std::span<const TokenId> ids, const DecodeOptions& options = {}) const;

  // One past the largest id (the model's vocabulary plus added tokens): 151,669 for Qwen3.
  size_t vocab_size() const;
  // The token's text as tokenizer.json spells it ("Ġthe", "▁the", "<|im_end|>"). The view lives as long as
  // the Tokenizer.
  std::optional<std::string_view> IdToToken(TokenId id) const;
  std::optional<TokenId> TokenToId(std::string_view token) const;
  // Whether `id` is an added token marked special (skipped by skip_special_tokens).
  bool IsSpecial(TokenId id) const;

  std::optional<TokenId> bos_id() const;
  std::optional<TokenId> eos_id() const;
  std::optional<TokenId> pad_id() const;
  std::optional<TokenId> unk_id() const;
  // The bos/eos tokens' text (tokenizer_config.json's, else the post-processor's), nullopt when there is none.
  std::optional<std::string_view> bos_token() const;
  std::optional<std::string_view> eos_token() const;
  // tokenizer_config.json's chat_template, the Jinja source of the model's prompt format (of HF's list form
  // [{"name", "template"}], the one named "default"). Empty when the model has none. The view lives as long as
  // the Tokenizer.
  std::string_view chat_template() const;

  struct Impl;

 private:
  friend class StreamDecoder;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Incremental decoding for generation: feed ids one at a time and get the text they complete. Bytes of a
// UTF-8 sequence split across tokens are held back until the sequence completes (or proves invalid, then
// U+FFFD), so every returned piece is valid UTF-8 and the pieces concatenate to exactly Decode(all ids).
// Not thread-safe; the Tokenizer must outlive it.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, DecodeOptions options = {});

  // The newly completed text (often empty while a multi-byte character is incomplete).
  Result<std::string> Push(TokenId id);
  // End of stream: whatever is still held back, incomplete sequences as U+FFFD. The decoder may then be
  // reused for a new stream.
  std::string Finish();

 private:
  std::string Emit(bool final);

  const Tokenizer::Impl* impl_;
  DecodeOptions options_;
  std::string pending_;      // bytes not yet returned (an incomplete UTF-8 sequence)
  bool first_token_ = true;  // no token has been emitted yet (decoders treat the first one specially)
  size_t strip_left_ = 0;    // leading characters the decoder still strips from the output
};

}  // namespace es
