// ComputePool: a persistent set of worker threads for data-parallel kernels, and ParallelFor over index ranges.
// Guarantees: ParallelFor returns only after every index was handed to the callback exactly once; which thread
// runs a range is unspecified, so kernels that compute each output element inside one callback (as all of
// es_kernels do) produce the same bits whatever the thread count.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "store/base/status.h"

namespace es::kernels {

class ComputePool {
 public:
  // `threads` counts the calling thread, which always takes part: 1 starts no worker and runs inline.
  // 0 means one per hardware thread. Fails with ResourceExhausted when a thread cannot be started.
  static Result<std::unique_ptr<ComputePool>> Create(size_t threads);
  ~ComputePool();
  ComputePool(const ComputePool&) = delete;
  ComputePool& operator=(const ComputePool&) = delete;

  size_t threads() const { return workers_.size() + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), from the calling thread and the workers, and
  // returns when all are done. Each range is at most max(grain, ceil(n / kMaxChunks)) long (grain 0 counts as
  // 1). fn must not throw. Thread-safe: concurrent callers take turns; a call from inside fn (nesting) runs
  // inline on the calling thread. The caller never waits for a worker that has no range: a descheduled worker
  // cannot stall a job that the others finish.
  template <typename Fn>
  void ParallelFor(size_t n, size_t grain, Fn&& fn) {
    using FnType = std::remove_reference_t<Fn>;
    Run(n, grain, [](void* f, size_t begin, size_t end) { (*static_cast<FnType*>(f))(begin, end); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // The most ranges one ParallelFor is cut into.
  static constexpr size_t kMaxChunks = (size_t{1} << 20) - 1;

 private:
  using RangeFn = void (*)(void* context, size_t begin, size_t end);

  ComputePool() = default;
  void Run(size_t n, size_t grain, RangeFn fn, void* context);
  // Claims and runs chunks of the job numbered `job` until none is left or a newer job replaced it.
  void RunChunks(uint32_t job);
  void WorkerLoop();

  std::mutex callers_mu_;  // one ParallelFor at a time

  // The current job. Written by the caller before it publishes `claim_`; a thread reads them after loading
  // `claim_` and uses them only if its compare-and-swap on `claim_` then succeeds, which proves that the job it
  // read is still current (it cannot finish while a chunk is unclaimed). Atomics only because a late worker
  // may read them while the next job is being written, and then discards what it read.
  std::atomic<RangeFn> job_fn_{nullptr};
  std::atomic<void*> job_context_{nullptr};
  std::atomic<size_t> job_n_{0};
  std::atomic<size_t> job_grain_{1};

  // Job number (24 bits) | next unclaimed chunk (20 bits) | chunk count (20 bits). Claiming a chunk is one
  // compare-and-swap that also checks the job number, so a worker waking late can never run a chunk of a job
  // it did not read.
  std::atomic<uint64_t> claim_{0};
  std::atomic<uint32_t> published_{0};  // job number of the latest job; workers wait on it
  std::atomic<uint32_t> done_{0};       // chunks of the current job finished; the caller waits on it
  std::atomic<bool> stopping_{false};
  std::vector<std::thread> workers_;
};

// Runs fn over [0, n) on `pool`, or inline on the calling thread when pool is null.
template <typename Fn>
void ParallelFor(ComputePool* pool, size_t n, size_t grain, Fn&& fn) {
  if (pool != nullptr) {
    pool->ParallelFor(n, grain, fn);
    return;
  }
  if (grain == 0) grain = 1;
  for (size_t begin = 0; begin < n; begin += grain) fn(begin, begin + grain < n ? begin + grain : n);
}

}  // namespace es::kernels
