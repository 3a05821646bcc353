// BatchEngine: continuous batching. Sequences join and leave between forward steps; each step runs every active
// sequence through one Model::ForwardBatch, so an expert routed by any of them is read once for the step and runs
// over all the rows routed to it (the point of batching a MoE model whose experts live on disk). A sequence's
// prompt is prefilled in chunks that share a step's row budget with the others' decode rows, so a long prompt does
// not stall the sequences already decoding. Each sequence keeps its own KvCache, sampler, stop tokens and
// callbacks; the engine bounds the number of sequences and the bytes of their KV caches. Tokens in, tokens out:
// text is the caller's (a TextStream per sequence, compute/generator.h). Not thread-safe: one thread adds and steps.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/model.h"
#include "compute/sampler.h"

namespace es {

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
};

// A generated token with, when asked for, its log-probability under the model (log softmax of the raw logits:
// temperature 1, before penalties and filters, as OpenAI's API reports them) and the most likely alternatives.
struct SampledToken {
  int32_t id = 0;
  float logprob = 0;
  std::vector<TokenLogprob> top;  // the top_logprobs most likely tokens, most likely first
};

struct SequenceResult {
  std::vector<int32_t> ids;   // generated (a stop token is not included)
  // OpenAI's names: "stop" (a stop token), "length" (max_tokens), or "cancelled" (should_stop said so).
  std::string finish_reason;
  size_t prompt_tokens = 0;
  double first_token_seconds = 0;  // from Add to the first token sampled: waiting for steps and prefill
  double prefill_seconds = 0;      // from the sequence's first step to its first token sampled
  double decode_seconds = 0;       // from the first token to the last
};

struct SequenceSpec {
  std::vector<int32_t> prompt;  // not empty
  uint32_t max_tokens = 16;
  SamplerOptions sampler;
  std::vector<int32_t> stop;  // token ids that end the sequence (any order)
  size_t sample_vocab = 0;    // sample only ids below this (a tokenizer smaller than the padded vocabulary); 0: all
  bool logprobs = false;      // fill SampledToken::logprob
  uint32_t top_logprobs = 0;  // and this many alternatives (implies logprobs)
  // Each generated token, in order; an error fails the sequence with it.
  std::function<Status(const SampledToken&)> on_token;
  // Asked before each step and after each token: true ends the sequence as "cancelled". Empty: never.
  std::function<bool()> should_stop;
  // Called once, when the sequence leaves: its result, or why it failed (the step's forward pass failed, ...).
  std::function<void(Result<SequenceResult>)> on_finish;
};

struct BatchEngineOptions {
  size_t max_sequences = 8;     // sequences decoding together at most
  size_t step_tokens = 512;     // rows of one forward step at most: one per decoding sequence, then prefill chunks
  size_t kv_budget_bytes = 0;   // the KV caches of the active sequences at most (KvBytes); 0: no limit
  size_t context = 0;           // tokens (prompt plus generated) per sequence at most; 0: the model's
  ForwardOptions forward;
};

// Counters summed over the engine's life.
struct BatchEngineCounters {
  uint64_t steps = 0;
  uint64_t rows = 0;             // forward rows (prefill and decode)
  uint64_t sequences_per_step_sum = 0;  // over steps: their mean batch is this / steps
};

// The KV budget when none is given, and the rule for a batch size left to memory (llama-server's slots): as many
// sequences of kAutoParallelTokens tokens (or of the context, if shorter) as the budget holds, from 1 to
// kMaxAutoParallel.
inline constexpr size_t kDefaultKvBudget = size_t{1} << 30;
inline constexpr size_t kAutoParallelTokens = 1024;
inline constexpr size_t kMaxAutoParallel = 16;
size_t AutoParallel(const ModelConfig& config, size_t context, size_t kv_budget_bytes);

class BatchEngine {
 public:
  // `model` and `experts` must outlive the engine. InvalidArgument for options out of range.
  static Result<std::unique_ptr<BatchEngine>> Create(Model& model, ExpertProvider& experts,
                                                     const BatchEngineOptions& options);
  ~BatchEngine();

  // The bytes of a KvCache holding `tokens` positions of `config`'s model.
  static size_t KvBytes(const ModelConfig& config, size_t tokens);
  // Whether `sequences` sequences of this size could join now (free slots and room in the KV budget).
  bool CanAdmit(size_t prompt_tokens, uint32_t max_tokens, size_t sequences = 1) const;
  // Whether they could ever join (they fit the slots and the KV budget by themselves).
  bool EverFits(size_t prompt_tokens, uint32_t max_tokens, size_t sequences = 1) const;
  // Joins at the next step. InvalidArgument for an empty prompt, a prompt plus max_tokens beyond the context, a
  // sampler setting out of range, or a sequence larger than the whole KV budget; ResourceExhausted when it cannot
  // join now (CanAdmit). On an error on_finish is not called.
  Status Add(SequenceSpec spec);
  size_t active() const { return sequences_.size(); }
  size_t kv_bytes_in_use() const { return kv_bytes_; }
  const BatchEngineOptions& options() const { return options_; }
  const BatchEngineCounters& counters() const { return counters_; }

  // One forward step over the active sequences (nothing when none); those that finish leave, their on_finish
  // called. A failed forward pass fails the sequences of the step with its status, which is also returned.
  Status Step();
  // Ends every active sequence with `why` (on_finish hears it).
  void Abort(const Status& why);

 private:
  struct Sequence;
  BatchEngine(Model& model, ExpertProvider& experts, const BatchEngineOptions& options);
  size_t Limit() const;
  // Samples the next token of `s` from its logits row; returns true when the sequence is finished.
  bool Sample(Sequence& s, const float* logits, std::chrono::steady_clock::time_point now);
  void Finish(size_t index, Result<SequenceResult> result);

  Model& model_;
  ExpertProvider& experts_;
  BatchEngineOptions options_;
  std::vector<std::unique_ptr<Sequence>> sequences_;  // in order of joining
  size_t kv_bytes_ = 0;
  BatchEngineCounters counters_;
  std::vector<float> hidden_, rows_, logits_;
};

}  // namespace es
