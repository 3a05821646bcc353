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

#include "store/status.h"

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

  // Calls fn(begin, end) on disjoint ranges covering [0, n), each at most `grain` long (grain 0 counts as 1),
  // from the calling thread and the workers, and returns when all are done. fn must not throw. Thread-safe:
  // concurrent callers take turns; a call from inside fn (nesting) runs inline on the calling thread.
  template <typename Fn>
  void ParallelFor(size_t n, size_t grain, Fn&& fn) {
    using FnType = std::remove_reference_t<Fn>;
    Run(n, grain, [](void* f, size_t begin, size_t end) { (*static_cast<FnType*>(f))(begin, end); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  using RangeFn = void (*)(void* context, size_t begin, size_t end);

  ComputePool() = default;
  void Run(size_t n, size_t grain, RangeFn fn, void* context);
  void RunChunks();
  void WorkerLoop();

  std::mutex callers_mu_;  // one ParallelFor at a time

  // The current job: written by the caller before `generation_` is bumped (release), read by workers after
  // they observe the bump (acquire), and not rewritten until every worker has checked out via `pending_`.
  RangeFn job_fn_ = nullptr;
  void* job_context_ = nullptr;
  size_t job_n_ = 0;
  size_t job_grain_ = 1;

  std::atomic<size_t> next_begin_{0};    // the next unclaimed index of the current job
  std::atomic<uint32_t> generation_{0};  // bumped once per job (and once to stop)
  std::atomic<uint32_t> pending_{0};     // workers that have not finished the current job
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
