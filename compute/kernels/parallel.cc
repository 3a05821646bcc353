// ComputePool: workers spin briefly on the job generation and then sleep on it (futex via atomic wait), so
// back-to-back kernels of one decode step hand off in microseconds while an idle pool costs no CPU.
#include "compute/kernels/parallel.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace es::kernels {
namespace {

// How long a thread polls before it sleeps: longer than the gap between two kernels of one layer, far shorter
// than a scheduler tick. Measured in time, not iterations, because `pause` costs 10 to 140 cycles by CPU.
constexpr std::chrono::microseconds kSpinTime{50};
// Polls between two reads of the clock.
constexpr int kPollsPerClockRead = 64;

// Set while a thread runs pool work, so that a nested ParallelFor runs inline instead of deadlocking.
thread_local bool tls_inside_pool = false;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Waits until `value` differs from `old`, polling first; returns the new value.
uint32_t WaitForChange(const std::atomic<uint32_t>& value, uint32_t old) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  do {
    for (int i = 0; i < kPollsPerClockRead; ++i) {
      const uint32_t now = value.load(std::memory_order_acquire);
      if (now != old) return now;
      CpuRelax();
    }
  } while (std::chrono::steady_clock::now() < deadline);
  for (;;) {
    value.wait(old, std::memory_order_acquire);
    const uint32_t now = value.load(std::memory_order_acquire);
    if (now != old) return now;
  }
}

}  // namespace

Result<std::unique_ptr<ComputePool>> ComputePool::Create(size_t threads) {
  if (threads == 0) threads = std::max<size_t>(1, std::thread::hardware_concurrency());
  std::unique_ptr<ComputePool> pool(new (std::nothrow) ComputePool());
  if (pool == nullptr) return Status::ResourceExhausted("ComputePool: out of memory");
  try {
    pool->workers_.reserve(threads - 1);
    for (size_t i = 1; i < threads; ++i) pool->workers_.emplace_back([p = pool.get()] { p->WorkerLoop(); });
  } catch (const std::exception& e) {
    // The destructor stops and joins the workers that did start.
    return Status::ResourceExhausted(std::string("ComputePool: cannot start a worker thread: ") + e.what());
  }
  return pool;
}

ComputePool::~ComputePool() {
  stopping_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ComputePool::Run(size_t n, size_t grain, RangeFn fn, void* context) {
  if (n == 0) return;
  if (grain == 0) grain = 1;
  if (workers_.empty() || n <= grain || tls_inside_pool) {
    for (size_t begin = 0; begin < n; begin += grain) fn(context, begin, std::min(n, begin + grain));
    return;
  }
  std::lock_guard<std::mutex> lock(callers_mu_);
  job_fn_ = fn;
  job_context_ = context;
  job_n_ = n;
  job_grain_ = grain;
  next_begin_.store(0, std::memory_order_relaxed);
  pending_.store(static_cast<uint32_t>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();

  tls_inside_pool = true;
  RunChunks();
  tls_inside_pool = false;

  // The job's fields stay valid until every worker has checked out; that is also what makes the outputs visible.
  for (uint32_t left = pending_.load(std::memory_order_acquire); left != 0;
       left = pending_.load(std::memory_order_acquire)) {
    WaitForChange(pending_, left);
  }
}

void ComputePool::RunChunks() {
  for (;;) {
    const size_t begin = next_begin_.fetch_add(job_grain_, std::memory_order_relaxed);
    if (begin >= job_n_) return;
    job_fn_(job_context_, begin, std::min(job_n_, begin + job_grain_));
  }
}

void ComputePool::WorkerLoop() {
  tls_inside_pool = true;
  // The generation this worker was created under: 0, as no job can start before Create returns. (Reading
  // generation_ here instead would skip a job published before this thread got scheduled.)
  uint32_t seen = 0;
  for (;;) {
    seen = WaitForChange(generation_, seen);
    if (stopping_.load(std::memory_order_relaxed)) return;
    RunChunks();
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

}  // namespace es::kernels
