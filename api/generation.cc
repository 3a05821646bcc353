// The generation service: model runtimes, the fair queue and the worker.
#include "api/generation.h"

#include <algorithm>

#include <cstdio>

#include "compute/generator.h"
#include "store/base/thread_pool.h"

namespace es::api {

GenerationService::GenerationService(Store& store, const GenerationOptions& options, Metrics& metrics)
    : store_(store), options_(options), metrics_(metrics), seeds_(std::random_device{}()) {}

Result<std::unique_ptr<GenerationService>> GenerationService::Create(Store& store, const GenerationOptions& options,
                                                                     Metrics& metrics) {
  // Validate what can be validated before the first request, so that `serve` fails at start, not later.
  ES_RETURN_IF_ERROR(ValidateRuntimeConfig(options.runtime));
  if (options.max_loaded_models == 0) return Status::InvalidArgument("at least one model must be loadable");
  std::unique_ptr<GenerationService> s(new GenerationService(store, options, metrics));
  ES_ASSIGN_OR_RETURN(s->pool_, kernels::ComputePool::Create(options.compute_threads));
  ES_ASSIGN_OR_RETURN(s->worker_, StartThread([svc = s.get()] { svc->WorkerLoop(); }, "the generation worker"));
  return s;
}

GenerationService::~GenerationService() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    accepting_ = false;
    cancel_all_ = true;
    FailQueuedLocked(Status::ResourceExhausted("the server is shutting down"));
  }
  work_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void GenerationService::FailQueuedLocked(const Status& why) {
  while (auto job = queue_.Pop()) job->sink->OnFinish(why);
  idle_cv_.notify_all();
}

Status GenerationService::Submit(GenerationJob job) {
  {
    std::lock_guard lock(mu_);
    if (!accepting_) return Status::ResourceExhausted("the server is shutting down");
    if (queue_.size() >= options_.max_queued) {
      return Status::ResourceExhausted("the generation queue is full (" + std::to_string(options_.max_queued) +
                                       " requests waiting)");
    }
    if (queue_.size_of(job.client) >= options_.max_queued_per_client) {
      return Status::ResourceExhausted("this client already has " + std::to_string(options_.max_queued_per_client) +
                                       " generation requests waiting");
    }
    std::string client = job.client;
    queue_.Push(client, std::move(job));
  }
  work_cv_.notify_one();
  return Status::Ok();
}

bool GenerationService::Drain(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mu_);
  accepting_ = false;
  bool done = idle_cv_.wait_until(lock, deadline, [&] { return queue_.empty() && !running_; });
  if (!done) {
    cancel_all_ = true;
    FailQueuedLocked(Status::ResourceExhausted("the server is shutting down"));
    idle_cv_.wait(lock, [&] { return queue_.empty() && !running_; });
  }
  return done;
}

GenerationGauges GenerationService::gauges() const {
  GenerationGauges g;
  {
    std::lock_guard lock(mu_);
    g.queued = queue_.size();
    g.running = active_.load() + (held_ ? 1 : 0);
  }
  std::lock_guard lock(runtimes_mu_);
  for (const auto& [name, rt] : runtimes_) {
    if (CacheExpertProvider* cache = rt->cache_provider()) {
      ModelCacheMetrics m;
      if (auto it = prefetch_figures_.find(name); it != prefetch_figures_.end()) m = it->second;
      m.model = name;
      m.stats = cache->cache().stats();
      m.capacity_slots = cache->cache().capacity_slots();
      const ProviderCounters pc = cache->counters();
      m.expert_uses = pc.hits + pc.misses;
      m.tier_uses = pc.tier_uses;
      m.tier_promotions = pc.tier_promotions;
      g.caches.push_back(std::move(m));
    }
  }
  return g;
}

void GenerationService::WorkerLoop() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (active_ == 0 && !held_ && queue_.empty()) {
        running_ = false;
        idle_cv_.notify_all();
        work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) break;  // stop_ and nothing left
      }
      running_ = true;
    }
    if (!Admit()) continue;
    // A failed step has already failed its sequences (their sinks heard why); the next step goes on.
    engine_->Step().IgnoreError();
    active_ = engine_->active();
    AfterStep();
  }
  // Shutdown: the batch ends (its jobs hear why) before the runtimes go.
  if (engine_) engine_->Abort(Status::ResourceExhausted("the server is shutting down"));
  std::lock_guard lock(mu_);
  if (held_) held_->sink->OnFinish(Status::ResourceExhausted("the server is shutting down"));
  held_.reset();
}

Result<ModelRuntime*> GenerationService::Runtime(const std::string& model) {
  std::lock_guard lock(runtimes_mu_);
  for (auto it = runtimes_.begin(); it != runtimes_.end(); ++it) {
    if (it->first != model) continue;
    runtimes_.splice(runtimes_.begin(), runtimes_, it);
    return runtimes_.front().second.get();
  }
  // Unload first, so that two models' caches are never allocated at once.
  while (runtimes_.size() >= options_.max_loaded_models) {
    prefetch_figures_.erase(runtimes_.back().first);  // a reloaded runtime counts from zero, as its cache does
    runtimes_.pop_back();
  }
  ES_ASSIGN_OR_RETURN(auto rt, ModelRuntime::Open(store_, model, options_.runtime, pool_.get()));
  runtimes_.emplace_front(model, std::move(rt));
  return runtimes_.front().second.get();
}

// A job in the batch: per choice its text state; the engine's callbacks point here.
struct GenerationService::Running {
  struct Choice {
    Choice(const std::vector<std::string>& stops, const Tokenizer& tokenizer) : text(tokenizer, stops) {}
    TextStream text;
    CompletionChoice out;
    std::vector<TokenLogprobs> pending;  // log-probabilities not yet delivered with a delta
    std::optional<Result<SequenceResult>> result;
  };
  Running(GenerationJob j, const Tokenizer& t) : job(std::move(j)), tokenizer(t) {
    for (uint32_t i = 0; i < job.request.n; ++i) choices.push_back(std::make_unique<Choice>(job.request.stop, t));
  }
  GenerationJob job;
  const Tokenizer& tokenizer;
  std::vector<std::unique_ptr<Choice>> choices;
  size_t finished = 0;
  Status failure;  // the first choice's error: every other choice stops
  bool done = false;

  // The text of one token (its bytes, special tokens included).
  std::string TokenText(int32_t id) const {
    const TokenId one = static_cast<TokenId>(id);
    auto text = tokenizer.Decode({&one, 1}, DecodeOptions{.skip_special_tokens = false});
    return text.ok() ? std::move(*text) : std::string();
  }
  // Delivers choice i's final text and the log-probabilities gathered so far.
  void Deliver(size_t i, std::string text) {
    Choice& c = *choices[i];
    if (text.empty() && c.pending.empty()) return;
    c.out.text += text;
    job.sink->OnText(TextDelta{i, std::move(text), std::exchange(c.pending, {})});
  }
};

namespace {

// A model that cannot run here (no forward pass for its architecture, an unusable config, no tokenizer:
// LoadModelTokenizer's NotFound, the model itself having been found before the request was queued) is the
// server's limitation, not a fault of the request.
Status CannotRun(const std::string& model, const Status& s) {
  return s.IsInvalidArgument() || s.IsNotSupported() || s.IsNotFound()
             ? Status::NotSupported("model '" + model + "' cannot generate text here: " + s.message())
             : s;
}

}  // namespace

bool GenerationService::Admit() {
  for (;;) {
    std::optional<GenerationJob> job;
    {
      std::lock_guard lock(mu_);
      if (held_) {
        job = std::move(held_);
        held_.reset();
      } else {
        job = queue_.Pop();
      }
    }
    if (!job) break;
    if (!Start(*job)) {
      std::lock_guard lock(mu_);
      held_ = std::move(job);
      break;
    }
  }
  active_ = engine_ ? engine_->active() : 0;
  return active_ > 0;
}

bool GenerationService::Start(GenerationJob& job) {
  GenerationSink& sink = *job.sink;
  if (sink.Cancelled()) {
    sink.OnFinish(Status::ResourceExhausted("the client went away"));
    return true;
  }
  if (cancel_all_) {
    sink.OnFinish(Status::ResourceExhausted("the server is shutting down"));
    return true;
  }
  const CompletionRequest& req = job.request;
  if (engine_ && engine_model_ != req.model) {
    if (engine_->active() > 0) return false;  // another model's batch runs: wait for it to finish
    engine_.reset();
  }
  auto runtime = Runtime(req.model);
  if (!runtime.ok()) {
    sink.OnFinish(CannotRun(req.model, runtime.status()));
    return true;
  }
  ModelRuntime& rt = **runtime;
  if (!engine_) {
    BatchEngineOptions eo;
    eo.context = options_.context;
    eo.forward = rt.forward_options();
    eo.step_tokens = options_.step_tokens;
    eo.kv_budget_bytes = options_.kv_budget_bytes == 0 ? kDefaultKvBudget : options_.kv_budget_bytes;
    eo.max_sequences = options_.parallel;
    if (eo.max_sequences == 0) eo.max_sequences = AutoParallel(rt.model().config(), eo.context, eo.kv_budget_bytes);
    eo.step_tokens = std::max(eo.step_tokens, eo.max_sequences);
    auto engine = BatchEngine::Create(rt.model(), rt.experts(), eo);
    if (!engine.ok()) {
      sink.OnFinish(CannotRun(req.model, engine.status()));
      return true;
    }
    engine_ = std::move(engine).value();
    engine_model_ = req.model;
  }

  // The prompt as the model reads it: user text, or the chat template whose special tokens are markup.
  const Tokenizer& tokenizer = rt.tokenizer();
  Result<std::string> text = req.chat ? ApplyChatTemplate(tokenizer, req.messages) : Result<std::string>(req.prompt);
  Result<std::vector<int32_t>> ids =
      text.ok() ? EncodeText(tokenizer, *text, /*parse_special_tokens=*/req.chat) : Result<std::vector<int32_t>>(text.status());
  if (!ids.ok()) {
    sink.OnFinish(ids.status());
    return true;
  }
  if (!engine_->EverFits(ids->size(), req.max_tokens, req.n)) {
    sink.OnFinish(Status::InvalidArgument(
        std::to_string(req.n) + " choice(s) of " + std::to_string(ids->size() + req.max_tokens) +
        " tokens need " + std::to_string(req.n) + " sequences and " +
        std::to_string((req.n * BatchEngine::KvBytes(rt.model().config(), ids->size() + req.max_tokens)) >> 20) +
        " MiB of KV cache; the batch holds " + std::to_string(engine_->options().max_sequences) + " (--parallel) in " +
        std::to_string(engine_->options().kv_budget_bytes >> 20) + " MiB (--kv-budget-mb)"));
    return true;
  }
  if (!engine_->CanAdmit(ids->size(), req.max_tokens, req.n)) return false;  // the next job in line waits for room
  auto running = std::make_unique<Running>(std::move(job), tokenizer);
  Running* r = running.get();
  const CompletionRequest& request = r->job.request;
  SamplerOptions sampler = request.sampler.Over(rt.sampler_defaults());
  if (!request.sampler.seed) sampler.seed = seeds_();
  const std::vector<int32_t> stop = StopTokens(rt.model(), tokenizer, request.chat);
  size_t added = 0;
  for (size_t i = 0; i < request.n; ++i) {
    SequenceSpec spec;
    spec.prompt = *ids;
    spec.max_tokens = request.max_tokens;
    spec.sampler = sampler;
    spec.sampler.seed = sampler.seed + i;  // each choice its own reproducible stream
    spec.stop = stop;
    spec.sample_vocab = tokenizer.vocab_size();
    spec.logprobs = request.logprobs;
    spec.top_logprobs = request.top_logprobs;
    spec.on_token = [r, i](const SampledToken& t) -> Status {
      Running::Choice& c = *r->choices[i];
      ES_ASSIGN_OR_RETURN(std::string shown, c.text.Push(t.id));
      if (r->job.request.logprobs) {
        TokenLogprobs lp{r->TokenText(t.id), t.logprob, {}};
        for (const TokenLogprob& alt : t.top) lp.top.emplace_back(r->TokenText(alt.id), alt.logprob);
        c.out.logprobs.push_back(lp);
        c.pending.push_back(std::move(lp));
      }
      if (!shown.empty()) r->Deliver(i, std::move(shown));
      return Status::Ok();
    };
    spec.should_stop = [this, r, i] {
      return r->choices[i]->text.stopped() || r->job.sink->Cancelled() || cancel_all_.load() || !r->failure.ok();
    };
    spec.on_finish = [this, r, i](Result<SequenceResult> result) { Finish(*r, i, std::move(result)); };
    if (Status st = engine_->Add(std::move(spec)); !st.ok()) {
      // Only the first can fail (admission was checked for all): the job never started.
      if (added == 0) {
        r->job.sink->OnFinish(st);
        return true;
      }
      Finish(*r, i, st);
      for (size_t j = i + 1; j < request.n; ++j) Finish(*r, j, st);
      break;
    }
    ++added;
  }
  running_jobs_.push_back(std::move(running));
  return true;
}

void GenerationService::Finish(Running& r, size_t index, Result<SequenceResult> result) {
  Running::Choice& c = *r.choices[index];
  if (!result.ok() && r.failure.ok()) r.failure = result.status();
  c.result = std::move(result);
  if (++r.finished < r.choices.size()) return;

  // The last choice finished: the job's outcome.
  r.done = true;
  finished_in_step_ = true;
  GenerationSink& sink = *r.job.sink;
  const CompletionRequest& req = r.job.request;
  if (!r.failure.ok()) {
    sink.OnFinish(r.failure);
    return;
  }
  CompletionOutcome outcome;
  double prefill = 0, decode = 0;
  bool cancelled = false;
  for (size_t i = 0; i < r.choices.size(); ++i) {
    Running::Choice& ch = *r.choices[i];
    const SequenceResult& sr = **ch.result;
    outcome.prompt_tokens = sr.prompt_tokens;
    outcome.completion_tokens += sr.ids.size();
    prefill = std::max(prefill, sr.prefill_seconds);
    decode = std::max(decode, sr.decode_seconds);
    cancelled = cancelled || (sr.finish_reason == "cancelled" && !ch.text.stopped());
  }
  metrics_.RecordGeneration(req.model, outcome.prompt_tokens, outcome.completion_tokens, prefill, decode);
  if (cancelled) {
    if (sink.Cancelled()) metrics_.RecordCancelled(req.model);
    sink.OnFinish(Status::ResourceExhausted(sink.Cancelled() ? "the client went away" : "the server is shutting down"));
    return;
  }
  for (size_t i = 0; i < r.choices.size(); ++i) {
    Running::Choice& ch = *r.choices[i];
    r.Deliver(i, ch.text.Finish());
    ch.out.finish_reason = (*ch.result)->finish_reason == "length" ? "length" : "stop";
    outcome.choices.push_back(std::move(ch.out));
  }
  sink.OnFinish(std::move(outcome));
}

void GenerationService::AfterStep() {
  // The sink (and the connection it holds) of a finished job goes now.
  running_jobs_.remove_if([](const std::unique_ptr<Running>& r) { return r->done; });
  if (!finished_in_step_) return;
  finished_in_step_ = false;
  auto runtime = Runtime(engine_model_);
  if (!runtime.ok()) return;
  ModelRuntime& rt = **runtime;
  {
    std::lock_guard lock(runtimes_mu_);
    ModelCacheMetrics& f = prefetch_figures_[engine_model_];
    const PrefetchAccuracy& a = rt.prefetch_accuracy();
    f.prefetch_predicted = a.predicted;
    f.prefetch_correct = a.correct;
    f.prefetch_used = a.used;
    f.decode_steps_prefetching = rt.prefetch_governor().mode(true).steps;
    f.decode_steps_not_prefetching = rt.prefetch_governor().mode(false).steps;
  }
  // Usage goes to the store whenever a request finishes (one synced write), so that a killed server loses at
  // most the requests in flight. A failed write keeps the counts for the next flush; completions are unaffected.
  if (Status recorded = rt.FinishRecording(); !recorded.ok()) {
    std::fprintf(stderr, "expertstore: %s\n", recorded.ToString().c_str());
  }
}

}  // namespace es::api
