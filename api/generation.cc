// The generation service: model runtimes, the fair queue and the worker.
#include "api/generation.h"

#include <algorithm>

#include "cache/model_experts.h"
#include "cache/policy.h"
#include "cache/states.h"
#include "compute/generator.h"

namespace es::api {

namespace {

// The most MiB a cache size option may name (1 PiB: a typo guard, not a real bound).
constexpr uint64_t kMaxCacheMb = uint64_t{1} << 30;

Result<Tokenizer> LoadTokenizer(Store& store, const ModelInfo& info) {
  auto json = store.ReadAsset(info, "tokenizer.json");
  if (!json.ok()) {
    return json.status().IsNotFound()
               ? Status::NotSupported("model '" + info.name + "' was ingested without a tokenizer.json: it cannot generate text")
               : json.status();
  }
  std::string config;
  if (auto c = store.ReadAsset(info, "tokenizer_config.json"); c.ok()) config = std::move(c).value();
  return Tokenizer::FromJson(*json, config);
}

}  // namespace

Result<std::unique_ptr<ModelRuntime>> ModelRuntime::Open(Store& store, const std::string& model,
                                                         const RuntimeOptions& options, kernels::ComputePool* pool) {
  std::unique_ptr<ModelRuntime> rt(new ModelRuntime());
  kernels::CpuContext ctx;
  ctx.pool = pool;
  ES_ASSIGN_OR_RETURN(rt->model_, Model::Load(store, model, ctx));
  ES_ASSIGN_OR_RETURN(Tokenizer tok, LoadTokenizer(store, rt->model_->info()));
  rt->tokenizer_ = std::make_unique<Tokenizer>(std::move(tok));

  ES_ASSIGN_OR_RETURN(MetabolicState state, ParseMetabolicState(options.state));
  if (!IsGenerationState(state)) {
    return Status::InvalidArgument("state " + options.state + " is not a generation state (wake, focus or crisis)");
  }
  ES_ASSIGN_OR_RETURN(ModelExperts experts, ModelExperts::Load(store.catalog(), model));
  StateModel sm{rt->model_->config().top_k, rt->model_->config().num_experts, experts.experts().size(),
                experts.max_record_bytes()};
  StateOverrides overrides;
  if (options.cache_mb > 0) overrides.cache_mb = std::min(options.cache_mb, kMaxCacheMb);
  if (options.prefetch >= 0) overrides.prefetch_depth = static_cast<uint32_t>(options.prefetch);
  ES_ASSIGN_OR_RETURN(StateBudget budget, ResolveState(state, sm, overrides));
  ExpertCacheOptions co;
  co.capacity_bytes = budget.cache_bytes;
  ES_ASSIGN_OR_RETURN(co.policy, ParsePolicyKind(options.policy));
  if (co.policy == PolicyKind::kBelady) return Status::InvalidArgument("policy belady needs the future: it exists only in `bench cache`");
  co.prefetch_bytes_in_flight = budget.prefetch_bytes_in_flight;
  ES_ASSIGN_OR_RETURN(rt->experts_, CacheExpertProvider::Create(store, model, co));
  rt->forward_.top_k = budget.experts_per_token;
  rt->forward_.prefetch_depth = budget.prefetch_depth;
  rt->forward_.skip_missing_experts = options.skip_missing_experts;
  return rt;
}

GenerationService::GenerationService(Store& store, const GenerationOptions& options, Metrics& metrics)
    : store_(store), options_(options), metrics_(metrics), seeds_(std::random_device{}()) {}

Result<std::unique_ptr<GenerationService>> GenerationService::Create(Store& store, const GenerationOptions& options,
                                                                     Metrics& metrics) {
  // Validate what can be validated before the first request, so that `serve` fails at start, not later.
  ES_ASSIGN_OR_RETURN(MetabolicState state, ParseMetabolicState(options.runtime.state));
  if (!IsGenerationState(state)) {
    return Status::InvalidArgument("--state " + options.runtime.state + " is not a generation state (wake, focus or crisis)");
  }
  ES_ASSIGN_OR_RETURN(PolicyKind policy, ParsePolicyKind(options.runtime.policy));
  if (policy == PolicyKind::kBelady) return Status::InvalidArgument("--policy belady needs the future: it exists only in `bench cache`");
  if (options.max_loaded_models == 0) return Status::InvalidArgument("at least one model must be loadable");
  std::unique_ptr<GenerationService> s(new GenerationService(store, options, metrics));
  ES_ASSIGN_OR_RETURN(s->pool_, kernels::ComputePool::Create(options.runtime.compute_threads));
  s->worker_ = std::thread([svc = s.get()] { svc->WorkerLoop(); });
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
    g.caches.push_back({name, rt->experts().cache().stats(), rt->experts().cache().capacity_slots()});
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
  while (runtimes_.size() >= options_.max_loaded_models) runtimes_.pop_back();
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
    // A stored model that cannot run (no forward pass for its architecture, an unusable config, no tokenizer)
    // is the server's limitation, not a fault of the request.
    const Status& s = runtime.status();
    sink.OnFinish(s.IsInvalidArgument() || s.IsNotSupported()
                      ? Status::NotSupported("model '" + req.model + "' cannot generate text here: " + s.message())
                      : s);
    return;
  }
  ModelRuntime& rt = **runtime;

  GenerateOptions o;
  o.max_tokens = req.max_tokens;
  o.sampler = req.sampler;
  if (!req.seeded) o.sampler.seed = seeds_();
  o.forward = rt.forward();
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
  if (!result.ok()) {
    sink.OnFinish(result.status());
    return;
  }
  metrics_.RecordGeneration(req.model, result->prompt_ids.size(), result->ids.size(), result->prefill_seconds,
                            result->decode_seconds);
  if (result->stop_reason == "stopped" && !filter.stopped()) {
    if (sink.Cancelled()) metrics_.RecordCancelled(req.model);
    sink.OnFinish(Status::ResourceExhausted(sink.Cancelled() ? "the client went away" : "the server is shutting down"));
    return;
  }
  std::string tail = filter.Flush();
  if (!tail.empty()) {
    outcome.text += tail;
    sink.OnText(std::move(tail));
  }
  outcome.finish_reason = result->stop_reason == "length" ? "length" : "stop";
  outcome.prompt_tokens = result->prompt_ids.size();
  outcome.completion_tokens = result->ids.size();
  sink.OnFinish(std::move(outcome));
}

}  // namespace es::api
