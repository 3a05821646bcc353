// OpenAI-compatible completions: parsing and validating /v1/completions and /v1/chat/completions request
// bodies, formatting responses and server-sent-event chunks in OpenAI's shapes, and holding back generated
// text that may begin a stop sequence. Pure functions of their inputs (no I/O), so the fuzz target drives them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "compute/generator.h"
#include "compute/sampler.h"
#include "compute/stop_filter.h"
#include "store/base/status.h"

namespace es::api {

// Server-side bounds on what a request may ask for.
struct CompletionLimits {
  uint32_t max_tokens = 4096;             // the most tokens one request may generate
  uint32_t max_choices = 16;              // `n` at most
  uint32_t max_top_logprobs = 20;         // OpenAI's limit for top_logprobs
  uint32_t default_max_tokens = 16;       // /v1/completions without max_tokens (OpenAI's default)
  uint32_t default_chat_max_tokens = 512; // /v1/chat/completions without max_tokens
  size_t max_stop_sequences = 4;          // OpenAI's limit
  size_t max_stop_bytes = 256;            // per sequence: the stop filter's work per token grows with its square
  size_t max_messages = 256;
};

struct CompletionRequest {
  bool chat = false;
  std::string model;
  std::string prompt;                 // completions
  std::vector<ChatMessage> messages;  // chat completions
  uint32_t max_tokens = 0;
  SamplerRequest sampler;             // what the request sets; the rest is the model's (generation_config.json)
  std::vector<std::string> stop;      // stop sequences, excluded from the output
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage: a last chunk with token counts
  uint32_t n = 1;                     // choices, each its own sequence in the batch (seed + i for choice i)
  bool logprobs = false;              // each generated token's log-probability (completions: `logprobs` N >= 0;
                                      // chat: `logprobs` true)
  uint32_t top_logprobs = 0;          // and the N most likely alternatives at each position
};

// One generated token's log-probability under the model (raw logits, temperature 1, before penalties) and the
// most likely alternatives, each as its text (the token's bytes).
struct TokenLogprobs {
  std::string token;
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;
};

// Generated text as it becomes final, for choice `index` (stop sequences already cut), with the log-probabilities of
// the tokens generated since the previous delta of that choice (when the request asked for them).
struct TextDelta {
  size_t index = 0;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
};

// Parses a request body. InvalidArgument (naming the field) for malformed JSON, a wrong type or a value out of
// range; NotSupported for OpenAI features this server does not implement (echo, logit_bias, tools, best_of, a
// response_format other than text, token-id prompts). Unknown fields are ignored, as most
// OpenAI-compatible servers do. Sampling fields left out stay unset in `sampler` (the model's defaults apply;
// without `seed` the caller picks a fresh one). Besides OpenAI's fields: top_k, min_p, repetition_penalty (or
// llama-server's repeat_penalty) and repeat_last_n.
Result<CompletionRequest> ParseCompletionRequest(std::string_view body, bool chat, const CompletionLimits& limits);

struct CompletionChoice {
  std::string text;
  std::string finish_reason;  // "stop" (end of sequence or a stop sequence) or "length"
  std::vector<TokenLogprobs> logprobs;  // per generated token, when asked for
};

struct CompletionOutcome {
  std::vector<CompletionChoice> choices;  // request.n of them, by index
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;  // over all choices
};

// The whole (non-streaming) response: a text_completion or chat.completion object.
std::string FormatCompletion(const CompletionRequest& request, std::string_view id, int64_t created,
                             const CompletionOutcome& outcome);

// One streamed chunk's JSON: text_completion or chat.completion.chunk, for choice delta.index. `role_only` gives
// the chat stream's first chunk of a choice (delta {"role": "assistant"}); `finish_reason` is set on its last.
// Log-probabilities appear when the request asked for them.
std::string FormatChunk(const CompletionRequest& request, std::string_view id, int64_t created, const TextDelta& delta,
                        std::optional<std::string_view> finish_reason, bool role_only = false);
// The chunk carrying usage (stream_options.include_usage): empty choices.
std::string FormatUsageChunk(const CompletionRequest& request, std::string_view id, int64_t created,
                             const CompletionOutcome& outcome);

// "data: <json>\n\n".
std::string SseEvent(std::string_view json);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";
inline constexpr std::string_view kSseContentType = "text/event-stream";


}  // namespace es::api
