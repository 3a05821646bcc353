// GenerationQueue: what the HTTP layer needs of a text-generation backend (queue a completion job, drain,
// report gauges), apart from how jobs run (api/generation.h). The handler and the transport see only this, so
// that they do not link the compute layer (the fuzz target builds without it) and tests can drive them.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "api/metrics.h"
#include "api/openai.h"
#include "store/base/status.h"

namespace es::api {

// Where a job's output goes. Implemented by the transport; called from the generation thread, so
// implementations must be thread-safe. OnText and OnFinish are never called after OnFinish.
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  // True once the client has gone away: generation stops for it at the next token.
  virtual bool Cancelled() const = 0;
  // Generated text of one choice that is final (stop sequences already cut), in order, with the log-probabilities
  // of its tokens when the request asked for them.
  virtual void OnText(TextDelta delta) = 0;
  // The end: the outcome, or why the job failed (the model failed to load, the prompt is too long, ...).
  virtual void OnFinish(Result<CompletionOutcome> outcome) = 0;
};

struct GenerationJob {
  CompletionRequest request;
  std::string client;  // the fairness key
  std::shared_ptr<GenerationSink> sink;
};

// Thread-safe.
class GenerationQueue {
 public:
  virtual ~GenerationQueue() = default;
  // Queues a job; its sink hears the rest. ResourceExhausted when the queue is full or draining.
  virtual Status Submit(GenerationJob job) = 0;
  // Refuses new jobs, then waits until nothing is queued or running, or until `deadline`, after which the
  // running job is cancelled and queued ones fail. Returns whether everything finished in time.
  virtual bool Drain(std::chrono::steady_clock::time_point deadline) = 0;
  virtual GenerationGauges gauges() const = 0;
};

}  // namespace es::api
