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
    g.running = running_ ? 1 : 0;
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
    std::optional<GenerationJob> job;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left
      job = queue_.Pop();
      running_ = true;
    }
    Run(*job);
    job.reset();  // the sink (and the connection it holds) goes before the service says it is idle
    {
      std::lock_guard lock(mu_);
      running_ = false;
    }
    idle_cv_.notify_all();
  }
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

void GenerationService::Run(GenerationJob& job) {
  GenerationSink& sink = *job.sink;
  if (sink.Cancelled()) {
    sink.OnFinish(Status::ResourceExhausted("the client went away"));
    return;
  }
  if (cancel_all_) {
    sink.OnFinish(Status::ResourceExhausted("the server is shutting down"));
    return;
  }
  const CompletionRequest& req = job.request;
  auto runtime = Runtime(req.model);
  if (!runtime.ok()) {
    // A stored model that cannot run (no forward pass for its architecture, an unusable config, no tokenizer:
    // LoadModelTokenizer's NotFound, the model itself having been found before the request was queued) is the
    // server's limitation, not a fault of the request.
    const Status& s = runtime.status();
    sink.OnFinish(s.IsInvalidArgument() || s.IsNotSupported() || s.IsNotFound()
                      ? Status::NotSupported("model '" + req.model + "' cannot generate text here: " + s.message())
                      : s);
    return;
  }
  ModelRuntime& rt = **runtime;

  GenerateOptions o;
  o.max_tokens = req.max_tokens;
  o.context = options_.context;
  o.sampler = req.sampler.Over(rt.sampler_defaults());
  if (!req.sampler.seed) o.sampler.seed = seeds_();
  o.forward = rt.forward_options();
  StopFilter filter(req.stop);
  o.should_stop = [&] { return filter.stopped() || sink.Cancelled() || cancel_all_.load(); };
  CompletionOutcome outcome;
  auto on_text = [&](std::string_view piece) {
    std::string shown = filter.Push(piece);
    if (shown.empty()) return;
    outcome.text += shown;
    sink.OnText(std::move(shown));
  };
  Result<GenerateResult> result =
      req.chat ? GenerateChat(rt.model(), rt.tokenizer(), rt.experts(), req.messages, o, on_text)
               : Generate(rt.model(), rt.tokenizer(), rt.experts(), req.prompt, o, on_text);
  {
    std::lock_guard lock(runtimes_mu_);
    ModelCacheMetrics& f = prefetch_figures_[req.model];
    const PrefetchAccuracy& a = rt.prefetch_accuracy();
    f.prefetch_predicted = a.predicted;
    f.prefetch_correct = a.correct;
    f.prefetch_used = a.used;
    f.decode_steps_prefetching = rt.prefetch_governor().mode(true).steps;
    f.decode_steps_not_prefetching = rt.prefetch_governor().mode(false).steps;
  }
  // Usage goes to the store after every request (one synced write), so that a killed server loses at most the
  // request in flight. A failed write keeps the counts for the next flush; the completion is unaffected.
  if (Status recorded = rt.FinishRecording(); !recorded.ok()) {
    std::fprintf(stderr, "expertstore: %s\n", recorded.ToString().c_str());
  }
  if (!result.ok()) {
    sink.OnFinish(result.status());
    return;
  }
  metrics_.RecordGeneration(req.model, result->prompt_ids.size(), result->ids.size(), result->prefill_seconds,
                            result->decode_seconds);
  if (result->finish_reason == "cancelled" && !filter.stopped()) {
    if (sink.Cancelled()) metrics_.RecordCancelled(req.model);
    sink.OnFinish(Status::ResourceExhausted(sink.Cancelled() ? "the client went away" : "the server is shutting down"));
    return;
  }
  std::string tail = filter.Flush();
  if (!tail.empty()) {
    outcome.text += tail;
    sink.OnText(std::move(tail));
  }
  outcome.finish_reason = result->finish_reason == "length" ? "length" : "stop";
  outcome.prompt_tokens = result->prompt_ids.size();
  outcome.completion_tokens = result->ids.size();
  sink.OnFinish(std::move(outcome));
}

}  // namespace es::api
