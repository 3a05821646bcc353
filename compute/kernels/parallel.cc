// ComputePool: workers spin briefly on the job number and then sleep on it (futex via atomic wait), so
// back-to-back kernels of one decode step hand off in microseconds while an idle pool costs no CPU. Chunks are
// claimed dynamically, so a worker that the OS has descheduled simply gets none.
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

// claim_ layout.
constexpr int kChunkBits = 20;
constexpr uint64_t kChunkMask = (uint64_t{1} << kChunkBits) - 1;
constexpr uint32_t kJobMask = (uint32_t{1} << (64 - 2 * kChunkBits)) - 1;

uint64_t PackClaim(uint32_t job, uint64_t next, uint64_t count) {
  return (static_cast<uint64_t>(job & kJobMask) << (2 * kChunkBits)) | (next << kChunkBits) | count;
}
uint32_t ClaimJob(uint64_t claim) { return static_cast<uint32_t>(claim >> (2 * kChunkBits)); }
uint64_t ClaimNext(uint64_t claim) { return (claim >> kChunkBits) & kChunkMask; }
uint64_t ClaimCount(uint64_t claim) { return claim & kChunkMask; }

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
  published_.fetch_add(1, std::memory_order_release);
  published_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ComputePool::Run(size_t n, size_t grain, RangeFn fn, void* context) {
  if (n == 0) return;
  grain = std::max({grain, size_t{1}, (n + kMaxChunks - 1) / kMaxChunks});
  if (workers_.empty() || n <= grain || tls_inside_pool) {
    for (size_t begin = 0; begin < n; begin += grain) fn(context, begin, std::min(n, begin + grain));
    return;
  }
  std::lock_guard<std::mutex> lock(callers_mu_);
  const uint64_t chunks = (n + grain - 1) / grain;
  const uint32_t job = (published_.load(std::memory_order_relaxed) + 1) & kJobMask;
  job_fn_.store(fn, std::memory_order_relaxed);
  job_context_.store(context, std::memory_order_relaxed);
  job_n_.store(n, std::memory_order_relaxed);
  job_grain_.store(grain, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  claim_.store(PackClaim(job, 0, chunks), std::memory_order_release);
  published_.store(job, std::memory_order_release);
  published_.notify_all();

  tls_inside_pool = true;
  RunChunks(job);
  tls_inside_pool = false;

  // Every chunk was claimed; wait for the ones still running elsewhere. That also makes their outputs visible.
  for (uint32_t finished = done_.load(std::memory_order_acquire); finished != chunks;
       finished = done_.load(std::memory_order_acquire)) {
    WaitForChange(done_, finished);
  }
}

void ComputePool::RunChunks(uint32_t job) {
  uint64_t claim = claim_.load(std::memory_order_acquire);
  for (;;) {
    if (ClaimJob(claim) != job || ClaimNext(claim) >= ClaimCount(claim)) return;
    // Read the job before claiming: a successful exchange below proves that what was read belongs to `job`.
    const RangeFn fn = job_fn_.load(std::memory_order_relaxed);
    void* const context = job_context_.load(std::memory_order_relaxed);
    const size_t n = job_n_.load(std::memory_order_relaxed);
    const size_t grain = job_grain_.load(std::memory_order_relaxed);
    const uint64_t chunk = ClaimNext(claim);
    if (!claim_.compare_exchange_weak(claim, claim + (uint64_t{1} << kChunkBits), std::memory_order_acquire,
                                      std::memory_order_acquire)) {
      continue;  // `claim` now holds the current value
    }
    const size_t begin = chunk * grain;
    fn(context, begin, std::min(n, begin + grain));
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == ClaimCount(claim)) done_.notify_one();
    claim = claim_.load(std::memory_order_acquire);
  }
}

void ComputePool::WorkerLoop() {
  tls_inside_pool = true;
  // The job number this worker was created under: 0, as no job can start before Create returns. (Reading
  // published_ here instead could skip a job published before this thread got scheduled.)
  uint32_t seen = 0;
  for (;;) {
    seen = WaitForChange(published_, seen);
    if (stopping_.load(std::memory_order_relaxed)) return;
    RunChunks(seen);
  }
}

}  // namespace es::kernels
