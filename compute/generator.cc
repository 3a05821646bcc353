// Generation and evaluation.
#include "compute/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

namespace es {

namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Rows of logits computed at once during evaluation (bounds memory for large vocabularies).
constexpr size_t kEvalLogitRows = 32;

}  // namespace

double GenerateResult::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? static_cast<double>(prompt_ids.size()) / prefill_seconds : 0;
}

double GenerateResult::decode_tokens_per_second() const {
  return decode_seconds > 0 && ids.size() > 1 ? static_cast<double>(ids.size() - 1) / decode_seconds : 0;
}

double EvalResult::perplexity() const { return std::exp(mean_nll()); }

Result<std::vector<int32_t>> EncodeText(const Tokenizer& tokenizer, std::string_view text, bool parse_special_tokens) {
  EncodeOptions enc;
  enc.parse_special_tokens = parse_special_tokens;
  ES_ASSIGN_OR_RETURN(auto tokens, tokenizer.Encode(text, enc));
  return std::vector<int32_t>(tokens.begin(), tokens.end());
}

Result<std::string> TextStream::Push(int32_t id) {
  ES_ASSIGN_OR_RETURN(std::string piece, decoder_.Push(static_cast<TokenId>(id)));
  return filter_.Push(piece);
}

std::vector<int32_t> StopTokens(const Model& model, const Tokenizer& tokenizer, bool chat) {
  std::vector<int32_t> stop;
  for (int64_t e : model.config().eos_ids) stop.push_back(static_cast<int32_t>(e));
  if (auto e = tokenizer.eos_id()) stop.push_back(static_cast<int32_t>(*e));
  if (chat) {
    if (auto e = tokenizer.TokenToId("<|im_end|>")) stop.push_back(static_cast<int32_t>(*e));
  }
  std::sort(stop.begin(), stop.end());
  stop.erase(std::unique(stop.begin(), stop.end()), stop.end());
  return stop;
}

Result<std::vector<float>> LastLogits(Model& model, ExpertProvider& experts, std::span<const int32_t> ids,
                                      const ForwardOptions& forward) {
  KvCache kv(model.config(), ids.size());
  std::vector<float> hidden;
  ES_RETURN_IF_ERROR(model.Forward(ids, kv, experts, forward, hidden));
  std::vector<float> logits(model.config().vocab);
  ES_RETURN_IF_ERROR(model.ComputeLogits(&hidden[(ids.size() - 1) * model.config().hidden], 1, logits.data()));
  return logits;
}

namespace {

// The shared decode loop: prefill the prompt, then sample until a stop token or max_tokens. `on_token` sees
// each generated id as it comes.
// `sample_vocab` limits sampling to ids below it (a tokenizer smaller than the model's padded vocabulary).
Status DecodeLoop(Model& model, ExpertProvider& experts, std::span<const int32_t> prompt, uint32_t max_tokens,
                  size_t context, size_t sample_vocab, const std::vector<int32_t>& stop, const SamplerOptions& sampler_options, const ForwardOptions& forward,
                  std::vector<int32_t>& out, double* prefill_seconds, double* decode_seconds, bool* hit_stop,
                  const std::function<Status(int32_t)>& on_token, const std::function<bool()>& should_stop = {},
                  bool* stopped = nullptr) {
  if (prompt.empty()) return Status::InvalidArgument("empty prompt");
  const size_t limit = context == 0 ? model.config().max_positions : context;
  if (limit > model.config().max_positions) {
    return Status::InvalidArgument("`ctx_size` " + std::to_string(limit) + " is above the model's context of " +
                                   std::to_string(model.config().max_positions) + " tokens");
  }
  if (prompt.size() + max_tokens > limit) {
    return Status::InvalidArgument("the prompt's " + std::to_string(prompt.size()) + " tokens plus " +
                                   std::to_string(max_tokens) + " to generate exceed the context of " +
                                   std::to_string(limit) + " tokens");
  }
  ES_ASSIGN_OR_RETURN(Sampler sampler, Sampler::Create(sampler_options));
  for (int32_t id : prompt) sampler.Accept(id);
  KvCache kv(model.config(), prompt.size() + max_tokens);
  std::vector<float> hidden, logits(model.config().vocab);
  auto t0 = std::chrono::steady_clock::now();
  ES_RETURN_IF_ERROR(model.Forward(prompt, kv, experts, forward, hidden));
  ES_RETURN_IF_ERROR(model.ComputeLogits(&hidden[(prompt.size() - 1) * model.config().hidden], 1, logits.data()));
  *prefill_seconds = Since(t0);
  auto t1 = std::chrono::steady_clock::now();
  *hit_stop = false;
  for (uint32_t i = 0; i < max_tokens; ++i) {
    int32_t next = sampler.Sample(std::span<const float>(logits).first(std::min(sample_vocab, logits.size())));
    if (std::binary_search(stop.begin(), stop.end(), next)) {
      *hit_stop = true;
      break;
    }
    out.push_back(next);
    sampler.Accept(next);
    if (on_token) ES_RETURN_IF_ERROR(on_token(next));
    if (should_stop && should_stop()) {
      *stopped = true;
      break;
    }
    if (i + 1 == max_tokens) break;
    ES_RETURN_IF_ERROR(model.Forward({&next, 1}, kv, experts, forward, hidden));
    ES_RETURN_IF_ERROR(model.ComputeLogits(hidden.data(), 1, logits.data()));
  }
  *decode_seconds = Since(t1);
  return Status::Ok();
}

}  // namespace

Result<std::vector<int32_t>> GenerateIds(Model& model, ExpertProvider& experts, std::span<const int32_t> prompt_ids,
                                         uint32_t max_tokens, const std::vector<int32_t>& stop,
                                         const SamplerOptions& sampler, const ForwardOptions& forward) {
  std::vector<int32_t> sorted_stop = stop;
  std::sort(sorted_stop.begin(), sorted_stop.end());
  std::vector<int32_t> out;
  double prefill = 0, decode = 0;
  bool hit = false;
  ES_RETURN_IF_ERROR(DecodeLoop(model, experts, prompt_ids, max_tokens, /*context=*/0, model.config().vocab, sorted_stop, sampler,
                                forward, out, &prefill,
                                &decode, &hit, {}));
  return out;
}

namespace {

// Generation from the final prompt text. `templated`: the text is a chat template whose special tokens must
// be recognised and <|im_end|> stops; otherwise it is user text, special-token strings included.
Result<GenerateResult> GenerateText(Model& model, const Tokenizer& tokenizer, ExpertProvider& experts,
                                    const std::string& text, bool templated, const GenerateOptions& options,
                                    const std::function<void(std::string_view)>& on_text) {
  GenerateResult r;
  ES_ASSIGN_OR_RETURN(r.prompt_ids, EncodeText(tokenizer, text, /*parse_special_tokens=*/templated));
  StreamDecoder decoder(tokenizer, DecodeOptions{.skip_special_tokens = true});
  bool hit_stop = false, stopped = false;
  ES_RETURN_IF_ERROR(DecodeLoop(model, experts, r.prompt_ids, options.max_tokens, options.context, tokenizer.vocab_size(),
                                StopTokens(model, tokenizer, templated),
                                options.sampler, options.forward, r.ids, &r.prefill_seconds, &r.decode_seconds, &hit_stop,
                                [&](int32_t id) -> Status {
                                  ES_ASSIGN_OR_RETURN(std::string piece, decoder.Push(static_cast<TokenId>(id)));
                                  r.text += piece;
                                  if (on_text && !piece.empty()) on_text(piece);
                                  return Status::Ok();
                                },
                                options.should_stop, &stopped));
  std::string rest = decoder.Finish();
  r.text += rest;
  if (on_text && !rest.empty()) on_text(rest);
  r.finish_reason = stopped ? "cancelled" : hit_stop ? "stop" : "length";
  return r;
}

}  // namespace

Result<GenerateResult> Generate(Model& model, const Tokenizer& tokenizer, ExpertProvider& experts,
                                std::string_view prompt, const GenerateOptions& options,
                                const std::function<void(std::string_view)>& on_text) {
  if (options.chat) {
    ES_ASSIGN_OR_RETURN(std::string text, ApplyChatTemplate(tokenizer, prompt));
    return GenerateText(model, tokenizer, experts, text, /*templated=*/true, options, on_text);
  }
  return GenerateText(model, tokenizer, experts, std::string(prompt), /*templated=*/false, options, on_text);
}

Result<GenerateResult> GenerateChat(Model& model, const Tokenizer& tokenizer, ExpertProvider& experts,
                                    std::span<const ChatMessage> messages, const GenerateOptions& options,
                                    const std::function<void(std::string_view)>& on_text) {
  ES_ASSIGN_OR_RETURN(std::string text, ApplyChatTemplate(tokenizer, messages));
  return GenerateText(model, tokenizer, experts, text, /*templated=*/true, options, on_text);
}

double TokenNll(const float* logits, size_t vocab, int32_t target) {
  float mx = *std::max_element(logits, logits + vocab);
  // Each term in float (every term lies in (0, 1], so its relative error stays near 1e-7: far below any NLL
  // difference that matters, at a third of the cost of double exp, which dominated calibration), summed in double.
  double sum = 0;
  for (size_t v = 0; v < vocab; ++v) sum += std::exp(logits[v] - mx);
  return -(static_cast<double>(logits[target] - mx) - std::log(sum));
}

bool IsTop1(const float* logits, size_t vocab, int32_t target) {
  return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits) == target;
}

double KlOfLogits(const float* p_logits, const float* q_logits, size_t vocab) {
  const float pm = *std::max_element(p_logits, p_logits + vocab), qm = *std::max_element(q_logits, q_logits + vocab);
  double ps = 0, qs = 0;
  for (size_t v = 0; v < vocab; ++v) {
    ps += std::exp(static_cast<double>(p_logits[v] - pm));
    qs += std::exp(static_cast<double>(q_logits[v] - qm));
  }
  const double log_ps = std::log(ps), log_qs = std::log(qs);
  double kl = 0;
  for (size_t v = 0; v < vocab; ++v) {
    const double lp = static_cast<double>(p_logits[v] - pm) - log_ps, lq = static_cast<double>(q_logits[v] - qm) - log_qs;
    kl += std::exp(lp) * (lp - lq);
  }
  return std::max(0.0, kl);
}

Result<EvalResult> EvaluateNll(Model& model, ExpertProvider& experts, std::span<const int32_t> ids, size_t window,
                               const ForwardOptions& forward, const std::function<void(size_t, bool)>& on_position,
                               size_t step, const EvalReference* reference) {
  if (reference != nullptr && reference->model->config().vocab != model.config().vocab) {
    return Status::InvalidArgument("the reference model has " + std::to_string(reference->model->config().vocab) +
                                   " tokens in its vocabulary, this one " + std::to_string(model.config().vocab));
  }
  if (window < 2) return Status::InvalidArgument("evaluation window must hold at least 2 tokens");
  if (ids.size() < 2) {
    // Perplexity over no predicted token would be exp(0) = 1: a perfect score for an empty text.
    return Status::InvalidArgument("the text is " + std::to_string(ids.size()) +
                                   " token(s) long; perplexity needs at least 2 (one to predict from, one to predict)");
  }
  EvalResult r;
  auto t0 = std::chrono::steady_clock::now();
  const size_t V = model.config().vocab, H = model.config().hidden;
  KvCache kv(model.config(), window);
  std::vector<float> hidden, logits(kEvalLogitRows * V);
  std::optional<KvCache> ref_kv;
  std::vector<float> ref_hidden, ref_logits;
  if (reference != nullptr) {
    ref_kv.emplace(reference->model->config(), window);
    ref_logits.resize(kEvalLogitRows * V);
  }
  const size_t ref_h = reference != nullptr ? reference->model->config().hidden : 0;
  for (size_t start = 0; start + 1 < ids.size(); start += window) {
    size_t len = std::min(window, ids.size() - start);
    if (len < 2) break;
    kv.Reset();
    if (ref_kv) ref_kv->Reset();
    const size_t chunk = step == 0 ? len : step;
    for (size_t first = 0; first < len; first += chunk) {
      size_t n_in = std::min(chunk, len - first);
      ES_RETURN_IF_ERROR(model.Forward(ids.subspan(start + first, n_in), kv, experts, forward, hidden));
      if (reference != nullptr) {
        ES_RETURN_IF_ERROR(reference->model->Forward(ids.subspan(start + first, n_in), *ref_kv, *reference->experts,
                                                     reference->forward, ref_hidden));
      }
      // Rows of this call that predict a token of the window.
      size_t predicting = std::min(n_in, len - 1 - first);
      for (size_t row = 0; row < predicting; row += kEvalLogitRows) {
        size_t n = std::min(kEvalLogitRows, predicting - row);
        ES_RETURN_IF_ERROR(model.ComputeLogits(&hidden[row * H], n, logits.data()));
        if (reference != nullptr) {
          ES_RETURN_IF_ERROR(reference->model->ComputeLogits(&ref_hidden[row * ref_h], n, ref_logits.data()));
        }
        for (size_t i = 0; i < n; ++i) {
          const float* l = &logits[i * V];
          size_t index = start + first + row + i + 1;
          int32_t target = ids[index];
          r.nll += TokenNll(l, V, target);
          bool correct = IsTop1(l, V, target);
          r.top1_correct += correct;
          ++r.tokens;
          if (reference != nullptr) {
            const float* rl = &ref_logits[i * V];
            r.kl += KlOfLogits(rl, l, V);
            r.top1_agree += std::max_element(rl, rl + V) - rl == std::max_element(l, l + V) - l;
          }
          if (on_position) on_position(index, correct);
        }
      }
    }
  }
  r.seconds = Since(t0);
  return r;
}

Status TraceRouting(Model& model, ExpertProvider& experts, std::span<const int32_t> ids, const ForwardOptions& forward,
                    const std::function<Status(const TraceStep&)>& on_step) {
  size_t base = 0;
  Status stepped;
  ForwardOptions fo = forward;
  fo.prefetch_governor = nullptr;  // a trace scores the predictions of every step
  fo.observer = [&](const RoutingEvent& e) {
    if (forward.observer) forward.observer(e);
    if (!stepped.ok()) return;
    TraceStep step;
    step.token = base + e.token;
    step.layer = e.layer;
    for (size_t j = 0; j < e.experts.size(); ++j) {
      if (e.experts[j] < 0) continue;  // dropped: the partial checkpoint lacks it
      step.experts.push_back(static_cast<uint32_t>(e.experts[j]));
      step.weights.push_back(e.weights[j]);
    }
    if (e.predicted != nullptr) step.predicted = *e.predicted;
    stepped = on_step(step);
  };
  KvCache kv(model.config(), std::min<size_t>(model.config().max_positions, ids.size()));
  std::vector<float> hidden;
  for (size_t i = 0; i < ids.size() && stepped.ok(); ++i) {
    if (kv.length() == kv.capacity()) kv.Reset();
    base = i;
    ES_RETURN_IF_ERROR(model.Forward({&ids[i], 1}, kv, experts, fo, hidden));
  }
  return stepped;
}

}  // namespace es
