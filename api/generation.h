// The generation service: OpenAI completion jobs queued fairly per client (FairQueue) and run by continuous
// batching (compute/batch_engine.h) on a worker thread, against models loaded on first use
// (compute/runtime/model_runtime.h, as the CLI's generate builds them), so that the HTTP threads keep serving
// metadata and blobs meanwhile. Up to `parallel` jobs of one model decode together, each step reading every routed
// expert once for all of them; a queued job joins at the next step when a slot and KV memory are free, in the
// queue's fair order (a job for another model waits until the running ones finish, then that model is loaded).
// Results and streamed text go to the job's GenerationSink (api/generation_queue.h). Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "api/fair_queue.h"
#include "api/generation_queue.h"
#include "api/metrics.h"
#include "api/openai.h"
#include "compute/batch_engine.h"
#include "compute/kernels/parallel.h"
#include "compute/runtime/model_runtime.h"
#include "store/store.h"

namespace es::api {

struct GenerationOptions {
  RuntimeConfig runtime;            // how models run (record: usage goes to the store)
  size_t max_queued = 64;            // jobs waiting, over all clients
  size_t max_queued_per_client = 8;  // jobs one client may have waiting
  size_t max_loaded_models = 1;      // the least recently used model is unloaded beyond this
  uint32_t compute_threads = 0;      // 0: every core
  uint32_t context = 0;              // tokens of context per request at most (--ctx-size); 0: each model's own
  size_t parallel = 0;               // requests decoding together at most (--parallel); 0: AutoParallel
  size_t kv_budget_bytes = 0;        // KV caches of the running requests at most (--kv-budget-mb); 0: kDefaultKvBudget
  size_t step_tokens = 512;          // forward rows per step (--batch-size): decode rows, then prefill chunks
};

class GenerationService final : public GenerationQueue {
 public:
  // `store` and `metrics` must outlive the service.
  static Result<std::unique_ptr<GenerationService>> Create(Store& store, const GenerationOptions& options,
                                                           Metrics& metrics);
  // Cancels the running job, fails every queued one (ResourceExhausted) and joins the worker.
  ~GenerationService() override;

  // ResourceExhausted also when the client's share of the queue is full.
  Status Submit(GenerationJob job) override;
  bool Drain(std::chrono::steady_clock::time_point deadline) override;
  GenerationGauges gauges() const override;

 private:
  GenerationService(Store& store, const GenerationOptions& options, Metrics& metrics);
  struct Running;
  void WorkerLoop();
  // Worker thread only. Moves queued jobs into the batch while they fit; returns whether any sequence is active.
  bool Admit();
  // Starts `job`: true when it joined the batch or finished (an error, a cancelled client); false when it must
  // wait for room (it is then held as the next job).
  bool Start(GenerationJob& job);
  // After a step: records usage and the prediction figures if a job finished.
  void AfterStep();
  // Choice `index` of `r` finished; the last one to finish finishes the job.
  void Finish(Running& r, size_t index, Result<SequenceResult> result);
  // Worker thread only. The runtime of `model`, loading it (and unloading the least recently used) if needed.
  Result<ModelRuntime*> Runtime(const std::string& model);
  // Requires mu_. Fails every queued job.
  void FailQueuedLocked(const Status& why);

  Store& store_;
  GenerationOptions options_;
  Metrics& metrics_;
  std::unique_ptr<kernels::ComputePool> pool_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // a job was queued, or stop
  std::condition_variable idle_cv_;  // the queue drained and nothing runs
  FairQueue<GenerationJob> queue_;
  bool running_ = false;
  bool accepting_ = true;
  bool stop_ = false;
  std::atomic<bool> cancel_all_{false};

  // Loaded models, most recently used first. Modified by the worker only, under runtimes_mu_ (gauges reads it).
  mutable std::mutex runtimes_mu_;
  std::list<std::pair<std::string, std::unique_ptr<ModelRuntime>>> runtimes_;
  // Per loaded model, its prediction figures as of its last finished request (the worker copies them under
  // runtimes_mu_: the forward pass updates the runtime's own without a lock).
  std::map<std::string, ModelCacheMetrics> prefetch_figures_;
  std::mt19937_64 seeds_;  // worker only: seeds for requests that give none

  // Worker only: the batch of the model `engine_model_` and the jobs in it.
  std::unique_ptr<BatchEngine> engine_;
  std::string engine_model_;
  std::list<std::unique_ptr<Running>> running_jobs_;
  std::optional<GenerationJob> held_;  // under mu_: the next job, waiting for room in the batch
  bool finished_in_step_ = false;
  std::atomic<size_t> active_{0};  // sequences in the batch (gauges)

  std::thread worker_;
};

}  // namespace es::api
