// Text generation and teacher-forced evaluation on a Model: prompt -> tokens -> one batched prefill -> decode
// steps with sampling until EOS or max tokens, streaming text as it completes; and the NLL / perplexity of a
// token sequence in consecutive windows. Not thread-safe (one generation at a time per Model).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/trace.h"
#include "compute/expert_provider.h"
#include "compute/model.h"
#include "compute/sampler.h"
#include "compute/stop_filter.h"
#include "compute/tokenizer/chat_template.h"
#include "compute/tokenizer/tokenizer.h"

namespace es {

struct GenerateOptions {
  uint32_t max_tokens = 64;
  uint32_t context = 0;  // tokens of context (prompt plus generated) at most; 0: the model's (max_position_embeddings)
  SamplerOptions sampler;
  bool chat = false;  // the prompt is one user message in the model's chat template (chat_template.h)
  ForwardOptions forward;
  // Asked after each generated token's text is delivered; true ends generation there with finish_reason
  // "cancelled" (a client that went away, a stop sequence seen by the caller). Empty: never.
  std::function<bool()> should_stop;
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> ids;  // generated
  std::string text;          // generated text
  // OpenAI's names: "stop" (an end-of-sequence token), "length" (max_tokens), or "cancelled" (should_stop said so).
  std::string finish_reason;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// `text` as the model's input ids. By default it is user text: special-token strings in it ("<|im_end|>") stay
// characters; `parse_special_tokens` recognises them (a chat template's own markup).
Result<std::vector<int32_t>> EncodeText(const Tokenizer& tokenizer, std::string_view text,
                                        bool parse_special_tokens = false);

// A generated sequence's text as its reader sees it: ids decoded as their characters complete (special tokens
// skipped), stop sequences cut (StopFilter). One per sequence of a batch (serve, generate --batch-file). Not
// thread-safe.
class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops)
      : decoder_(tokenizer, DecodeOptions{.skip_special_tokens = true}), filter_(std::move(stops)) {}
  // The text that became final with this id (often empty).
  Result<std::string> Push(int32_t id);
  // The rest, once the sequence ended.
  std::string Finish() { return filter_.Push(decoder_.Finish()) + filter_.Flush(); }
  // A stop sequence was seen: the sequence should end.
  bool stopped() const { return filter_.stopped(); }

 private:
  StreamDecoder decoder_;
  StopFilter filter_;
};

// The stop tokens: the config's eos ids, the tokenizer's eos, and <|im_end|> when chatting.
std::vector<int32_t> StopTokens(const Model& model, const Tokenizer& tokenizer, bool chat);

// InvalidArgument when the prompt plus max_tokens exceed the context (options.context, or the model's
// max_position_embeddings), or when options.context exceeds the model's.
Result<GenerateResult> Generate(Model& model, const Tokenizer& tokenizer, ExpertProvider& experts,
                                std::string_view prompt, const GenerateOptions& options,
                                const std::function<void(std::string_view)>& on_text = {});
// Generation for a conversation in the model's chat template (options.chat is implied: <|im_end|> stops).
Result<GenerateResult> GenerateChat(Model& model, const Tokenizer& tokenizer, ExpertProvider& experts,
                                    std::span<const ChatMessage> messages, const GenerateOptions& options,
                                    const std::function<void(std::string_view)>& on_text = {});

// Generation from token ids (no tokenizer): greedy or sampled continuation of `prompt_ids`.
Result<std::vector<int32_t>> GenerateIds(Model& model, ExpertProvider& experts, std::span<const int32_t> prompt_ids,
                                         uint32_t max_tokens, const std::vector<int32_t>& stop,
                                         const SamplerOptions& sampler, const ForwardOptions& forward);

// The logits of the last position after running `ids` from an empty context.
Result<std::vector<float>> LastLogits(Model& model, ExpertProvider& experts, std::span<const int32_t> ids,
                                      const ForwardOptions& forward);

// -log softmax(logits)[target] over `vocab` logits, in double precision.
double TokenNll(const float* logits, size_t vocab, int32_t target);
// True when `target` is the argmax of the logits (the lowest index among equals).
bool IsTop1(const float* logits, size_t vocab, int32_t target);
// KL(p || q) in nats of the softmax distributions of two logit rows of `vocab` values, in double.
double KlOfLogits(const float* p_logits, const float* q_logits, size_t vocab);

struct EvalResult {
  uint64_t tokens = 0;       // predicted tokens
  double nll = 0;            // total negative log-likelihood, nats
  uint64_t top1_correct = 0; // positions where the argmax was the next token
  double seconds = 0;
  // With a reference model: the summed KL(reference || this) of the next-token distributions, nats, and the
  // positions where both put the same token first.
  double kl = 0;
  uint64_t top1_agree = 0;
  double mean_nll() const { return tokens ? nll / static_cast<double>(tokens) : 0; }
  double mean_kl() const { return tokens ? kl / static_cast<double>(tokens) : 0; }
  double perplexity() const;
};

// Another model run over the same windows, for EvaluateNll to compare its distributions with (a quantized
// copy against its source, say). Both must share the vocabulary.
struct EvalReference {
  Model* model = nullptr;
  ExpertProvider* experts = nullptr;
  ForwardOptions forward;
};

// Teacher-forced NLL of `ids` as one sequence, in consecutive non-overlapping windows of `window` tokens (each
// window starts with an empty context; its first token is context only, the rest are predicted). A sequence
// that fits one window is scored exactly as one pass. `on_position(index, correct)` reports, for each
// predicted token (index into ids), whether the model's top-1 was right (usage recording uses it); it is called
// after the Forward call that routed the predicting token ids[index - 1], at KV position (index - 1) % window,
// and before the next call. `step` > 0 runs each window `step` tokens per Forward call through the KV cache
// (1: as decode does, which is what cache hit rates of generation mean); 0 runs a window in one call. The NLL
// does not depend on it beyond float rounding.
// With `reference`, the reference runs the same calls and EvalResult's kl and top1_agree compare the two
// (InvalidArgument when the vocabularies differ).
Result<EvalResult> EvaluateNll(Model& model, ExpertProvider& experts, std::span<const int32_t> ids, size_t window,
                               const ForwardOptions& forward,
                               const std::function<void(size_t index, bool correct)>& on_position = {},
                               size_t step = 0, const EvalReference* reference = nullptr);

// Routes `ids` token by token, in decode order, as generation routes them (the KV cache restarts from empty when
// the model's context is full), and gives `on_step` each token's routing at each MoE layer: a trace step whose
// token is the index into `ids`, leaving out experts dropped from a partial checkpoint. `forward`'s own observer
// sees every routing too. The first error of `on_step` stops the run and is returned.
Status TraceRouting(Model& model, ExpertProvider& experts, std::span<const int32_t> ids, const ForwardOptions& forward,
                    const std::function<Status(const TraceStep&)>& on_step);

}  // namespace es
