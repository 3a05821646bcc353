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

// A job in the batch: its text state. The engine's callbacks point here.
struct GenerationService::Running {
  Running(GenerationJob j, const Tokenizer& tokenizer)
      : job(std::move(j)), filter(job.request.stop), decoder(tokenizer, DecodeOptions{.skip_special_tokens = true}) {}
  GenerationJob job;
  StopFilter filter;
  StreamDecoder decoder;
  CompletionOutcome outcome;
  Status text_error;  // the decoder's
  bool done = false;
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
  if (!engine_->CanAdmit(ids->size(), req.max_tokens) && engine_->EverFits(ids->size(), req.max_tokens) &&
      engine_->active() > 0) {
    return false;  // no slot or KV room now: the next job in line waits for one
  }
  auto running = std::make_unique<Running>(std::move(job), tokenizer);
  Running* r = running.get();
  SequenceSpec spec;
  spec.prompt = std::move(*ids);
  spec.max_tokens = r->job.request.max_tokens;
  spec.sampler = r->job.request.sampler.Over(rt.sampler_defaults());
  if (!r->job.request.sampler.seed) spec.sampler.seed = seeds_();
  spec.stop = StopTokens(rt.model(), tokenizer, r->job.request.chat);
  spec.sample_vocab = tokenizer.vocab_size();
  spec.on_token = [r](const SampledToken& t) -> Status {
    Result<std::string> piece = r->decoder.Push(static_cast<TokenId>(t.id));
    if (!piece.ok()) return piece.status();
    std::string shown = r->filter.Push(*piece);
    if (!shown.empty()) {
      r->outcome.text += shown;
      r->job.sink->OnText(std::move(shown));
    }
    return Status::Ok();
  };
  spec.should_stop = [this, r] { return r->filter.stopped() || r->job.sink->Cancelled() || cancel_all_.load(); };
  spec.on_finish = [this, r](Result<SequenceResult> result) { Finish(*r, std::move(result)); };
  if (Status added = engine_->Add(std::move(spec)); !added.ok()) {
    r->job.sink->OnFinish(added);
    return true;
  }
  running_jobs_.push_back(std::move(running));
  return true;
}

void GenerationService::Finish(Running& r, Result<SequenceResult> result) {
  r.done = true;
  finished_in_step_ = true;
  GenerationSink& sink = *r.job.sink;
  const CompletionRequest& req = r.job.request;
  if (!result.ok()) {
    sink.OnFinish(result.status());
    return;
  }
  metrics_.RecordGeneration(req.model, result->prompt_tokens, result->ids.size(), result->prefill_seconds,
                            result->decode_seconds);
  if (result->finish_reason == "cancelled" && !r.filter.stopped()) {
    if (sink.Cancelled()) metrics_.RecordCancelled(req.model);
    sink.OnFinish(Status::ResourceExhausted(sink.Cancelled() ? "the client went away" : "the server is shutting down"));
    return;
  }
  std::string tail = r.filter.Push(r.decoder.Finish()) + r.filter.Flush();
  if (!tail.empty()) {
    r.outcome.text += tail;
    sink.OnText(std::move(tail));
  }
  r.outcome.finish_reason = result->finish_reason == "length" ? "length" : "stop";
  r.outcome.prompt_tokens = result->prompt_tokens;
  r.outcome.completion_tokens = result->ids.size();
  sink.OnFinish(std::move(r.outcome));
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
