// BatchEngine implementation.
#include "compute/batch_engine.h"

#include <algorithm>
#include <cmath>

namespace es {

namespace {

double SecondsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// log softmax(logits)[id] for each wanted id, and the `top` most likely, from one row of raw logits.
void FillLogprobs(std::span<const float> logits, uint32_t top, SampledToken& token) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v - mx));
  const double log_sum = std::log(sum);
  auto logprob = [&](int32_t id) {
    return static_cast<float>(static_cast<double>(logits[static_cast<size_t>(id)] - mx) - log_sum);
  };
  token.logprob = logprob(token.id);
  if (top == 0) return;
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  const size_t n = std::min<size_t>(top, ids.size());
  // Most likely first; equal logits by lower id.
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n), ids.end(), [&](int32_t a, int32_t b) {
    const float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  });
  for (size_t i = 0; i < n; ++i) token.top.push_back({ids[i], logprob(ids[i])});
}

}  // namespace

struct BatchEngine::Sequence {
  Sequence(const ModelConfig& config, size_t capacity, Sampler s) : kv(config, capacity), sampler(std::move(s)) {}
  SequenceSpec spec;
  KvCache kv;
  Sampler sampler;
  size_t kv_bytes = 0;
  size_t prefilled = 0;          // prompt tokens run so far
  int32_t next = -1;             // the token to run next (decoding)
  SequenceResult result;
  std::chrono::steady_clock::time_point added, started, first_token;
  bool has_started = false;
  size_t step_first_row = 0;     // this step: its rows in the batch
  size_t step_rows = 0;
  bool step_samples = false;     // this step ends with a token to sample
  Status failure;                // on_token's error
};

BatchEngine::BatchEngine(Model& model, ExpertProvider& experts, const BatchEngineOptions& options)
    : model_(model), experts_(experts), options_(options) {}

BatchEngine::~BatchEngine() = default;

Result<std::unique_ptr<BatchEngine>> BatchEngine::Create(Model& model, ExpertProvider& experts,
                                                         const BatchEngineOptions& options) {
  if (options.max_sequences == 0) return Status::InvalidArgument("a batch must hold at least one sequence");
  if (options.step_tokens < options.max_sequences) {
    return Status::InvalidArgument("a step of " + std::to_string(options.step_tokens) + " tokens cannot hold " +
                                   std::to_string(options.max_sequences) + " decoding sequences");
  }
  if (options.context > model.config().max_positions) {
    return Status::InvalidArgument("`ctx_size` " + std::to_string(options.context) +
                                   " is above the model's context of " +
                                   std::to_string(model.config().max_positions) + " tokens");
  }
  return std::unique_ptr<BatchEngine>(new BatchEngine(model, experts, options));
}

size_t BatchEngine::KvBytes(const ModelConfig& config, size_t tokens) {
  return 2 * tokens * static_cast<size_t>(config.num_layers) * config.num_kv_heads * config.head_dim * sizeof(float);
}

size_t AutoParallel(const ModelConfig& config, size_t context, size_t kv_budget_bytes) {
  const size_t limit = context == 0 ? config.max_positions : context;
  const size_t one = std::max<size_t>(1, BatchEngine::KvBytes(config, std::min(limit, kAutoParallelTokens)));
  return std::clamp<size_t>(kv_budget_bytes / one, 1, kMaxAutoParallel);
}

size_t BatchEngine::Limit() const { return options_.context == 0 ? model_.config().max_positions : options_.context; }

bool BatchEngine::EverFits(size_t prompt_tokens, uint32_t max_tokens, size_t sequences) const {
  return sequences <= options_.max_sequences &&
         (options_.kv_budget_bytes == 0 ||
          sequences * KvBytes(model_.config(), prompt_tokens + max_tokens) <= options_.kv_budget_bytes);
}

bool BatchEngine::CanAdmit(size_t prompt_tokens, uint32_t max_tokens, size_t sequences) const {
  if (sequences_.size() + sequences > options_.max_sequences) return false;
  return options_.kv_budget_bytes == 0 ||
         kv_bytes_ + sequences * KvBytes(model_.config(), prompt_tokens + max_tokens) <= options_.kv_budget_bytes;
}

Status BatchEngine::Add(SequenceSpec spec) {
  if (spec.prompt.empty()) return Status::InvalidArgument("empty prompt");
  const size_t limit = Limit();
  if (spec.prompt.size() + spec.max_tokens > limit) {
    return Status::InvalidArgument("the prompt's " + std::to_string(spec.prompt.size()) + " tokens plus " +
                                   std::to_string(spec.max_tokens) + " to generate exceed the context of " +
                                   std::to_string(limit) + " tokens");
  }
  // Checked here, not by the step's forward pass, whose failure would fail every sequence of the step.
  ES_RETURN_IF_ERROR(CheckTokens(spec.prompt, model_.config().vocab));
  const size_t capacity = spec.prompt.size() + spec.max_tokens;
  if (!EverFits(spec.prompt.size(), spec.max_tokens)) {
    return Status::InvalidArgument("a sequence of " + std::to_string(capacity) + " tokens needs " +
                                   std::to_string(KvBytes(model_.config(), capacity) >> 20) +
                                   " MiB of KV cache, more than the budget of " +
                                   std::to_string(options_.kv_budget_bytes >> 20) + " MiB");
  }
  if (!CanAdmit(spec.prompt.size(), spec.max_tokens)) {
    return Status::ResourceExhausted("the batch is full (" + std::to_string(sequences_.size()) + " sequences, " +
                                     std::to_string(kv_bytes_ >> 20) + " MiB of KV cache)");
  }
  ES_ASSIGN_OR_RETURN(Sampler sampler, Sampler::Create(spec.sampler));
  for (int32_t id : spec.prompt) sampler.Accept(id);
  std::sort(spec.stop.begin(), spec.stop.end());
  if (spec.top_logprobs > 0) spec.logprobs = true;
  auto s = std::make_unique<Sequence>(model_.config(), capacity, std::move(sampler));
  s->spec = std::move(spec);
  s->kv_bytes = KvBytes(model_.config(), capacity);
  s->result.prompt_tokens = s->spec.prompt.size();
  s->added = std::chrono::steady_clock::now();
  kv_bytes_ += s->kv_bytes;
  sequences_.push_back(std::move(s));
  return Status::Ok();
}

void BatchEngine::Finish(size_t index, Result<SequenceResult> result) {
  std::unique_ptr<Sequence> s = std::move(sequences_[index]);
  sequences_.erase(sequences_.begin() + static_cast<std::ptrdiff_t>(index));
  kv_bytes_ -= s->kv_bytes;
  if (s->spec.on_finish) s->spec.on_finish(std::move(result));
}

void BatchEngine::Abort(const Status& why) {
  while (!sequences_.empty()) Finish(sequences_.size() - 1, why);
}

bool BatchEngine::Sample(Sequence& s, const float* logits, std::chrono::steady_clock::time_point now) {
  const size_t V = model_.config().vocab;
  const size_t vocab = s.spec.sample_vocab == 0 ? V : std::min(s.spec.sample_vocab, V);
  const bool first = s.result.ids.empty() && s.next < 0;
  if (first) {
    s.first_token = now;
    s.result.first_token_seconds = SecondsBetween(s.added, now);
    s.result.prefill_seconds = SecondsBetween(s.started, now);
  }
  auto done = [&](const char* reason) {
    s.result.finish_reason = reason;
    s.result.decode_seconds = SecondsBetween(s.first_token, std::chrono::steady_clock::now());
    return true;
  };
  if (s.spec.max_tokens == 0) return done("length");
  const std::span<const float> row(logits, vocab);
  SampledToken token;
  token.id = s.sampler.Sample(row);
  if (std::binary_search(s.spec.stop.begin(), s.spec.stop.end(), token.id)) return done("stop");
  s.result.ids.push_back(token.id);
  s.sampler.Accept(token.id);
  if (s.spec.logprobs) FillLogprobs(row, s.spec.top_logprobs, token);
  if (s.spec.on_token) {
    if (Status st = s.spec.on_token(token); !st.ok()) {
      s.failure = std::move(st);
      return true;
    }
  }
  if (s.spec.should_stop && s.spec.should_stop()) return done("cancelled");
  if (s.result.ids.size() >= s.spec.max_tokens) return done("length");
  s.next = token.id;
  return false;
}

Status BatchEngine::Step() {
  // Sequences whose caller gave up leave before the step.
  for (size_t i = sequences_.size(); i-- > 0;) {
    Sequence& s = *sequences_[i];
    if (s.spec.should_stop && s.spec.should_stop()) {
      s.result.finish_reason = "cancelled";
      if (!s.result.ids.empty()) s.result.decode_seconds = SecondsBetween(s.first_token, std::chrono::steady_clock::now());
      Finish(i, std::move(s.result));
    }
  }
  if (sequences_.empty()) return Status::Ok();

  // Decoding sequences take one row each; prefilling ones, oldest first, the rest of the step's rows.
  size_t decoding = 0;
  for (const auto& s : sequences_) decoding += s->next >= 0 ? 1 : 0;
  size_t budget = options_.step_tokens > decoding ? options_.step_tokens - decoding : 0;
  std::vector<SequenceInput> inputs;
  std::vector<Sequence*> stepped;
  size_t rows = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const auto& sp : sequences_) {
    Sequence& s = *sp;
    s.step_rows = 0;
    s.step_samples = false;
    if (s.next >= 0) {
      s.step_first_row = rows;
      s.step_rows = 1;
      s.step_samples = true;
      inputs.push_back({{&s.next, 1}, &s.kv});
    } else {
      const size_t left = s.spec.prompt.size() - s.prefilled;
      const size_t n = std::min(left, budget);
      if (n == 0) continue;
      budget -= n;
      s.step_first_row = rows;
      s.step_rows = n;
      s.step_samples = n == left;
      if (!s.has_started) {
        s.has_started = true;
        s.started = start;
      }
      inputs.push_back({std::span<const int32_t>(s.spec.prompt).subspan(s.prefilled, n), &s.kv});
    }
    rows += s.step_rows;
    stepped.push_back(&s);
  }
  if (inputs.empty()) return Status::Ok();

  const size_t H = model_.config().hidden, V = model_.config().vocab;
  Status status = model_.ForwardBatch(inputs, experts_, options_.forward, hidden_);
  size_t sampling = 0;
  if (status.ok()) {
    // The last row of every sequence that samples, gathered for one logits pass.
    for (Sequence* s : stepped) sampling += s->step_samples ? 1 : 0;
    rows_.resize(sampling * H);
    size_t r = 0;
    for (Sequence* s : stepped) {
      if (!s->step_samples) continue;
      const size_t last = s->step_first_row + s->step_rows - 1;
      std::copy(&hidden_[last * H], &hidden_[(last + 1) * H], &rows_[r * H]);
      ++r;
    }
    logits_.resize(sampling * V);
    status = model_.ComputeLogits(rows_.data(), sampling, logits_.data());
  }
  if (!status.ok()) {
    for (size_t i = sequences_.size(); i-- > 0;) {
      if (std::find(stepped.begin(), stepped.end(), sequences_[i].get()) != stepped.end()) Finish(i, status);
    }
    return status;
  }
  ++counters_.steps;
  counters_.rows += rows;
  counters_.sequences_per_step_sum += stepped.size();

  const auto now = std::chrono::steady_clock::now();
  size_t r = 0;
  std::vector<Sequence*> finished;
  for (Sequence* s : stepped) {
    if (s->next < 0) s->prefilled += s->step_rows;
    if (!s->step_samples) continue;
    if (Sample(*s, &logits_[r * V], now)) finished.push_back(s);
    ++r;
  }
  for (Sequence* s : finished) {
    const auto it = std::find_if(sequences_.begin(), sequences_.end(), [&](const auto& p) { return p.get() == s; });
    const auto index = static_cast<size_t>(it - sequences_.begin());
    if (!s->failure.ok()) {
      Finish(index, s->failure);
    } else {
      Finish(index, std::move(s->result));
    }
  }
  return Status::Ok();
}

}  // namespace es
