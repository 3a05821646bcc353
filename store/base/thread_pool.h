// ThreadPool: a fixed set of worker threads draining a FIFO of tasks. Tasks must not throw. Thread-safe.
// The destructor finishes queued tasks, then joins. Where the system refuses threads the pool has fewer (none:
// Submit runs each task on the caller's thread), slower but correct.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "store/base/status.h"

namespace es {

// Starts a thread running `body`. ResourceExhausted naming `what` when the system refuses one (std::thread
// throws; out of memory or of threads), so that no library caller terminates on it.
Result<std::thread> StartThread(std::function<void()> body, std::string_view what);

class ThreadPool {
 public:
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Submit(std::function<void()> task);
  size_t size() const { return workers_.size(); }

 private:
  void Work();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

// Counts down to zero; Wait() blocks until it gets there.
class Latch {
 public:
  explicit Latch(size_t count) : count_(count) {}
  void CountDown() {
    std::lock_guard<std::mutex> lock(mu_);
    if (count_ > 0 && --count_ == 0) cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return count_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  size_t count_;
};

}  // namespace es
