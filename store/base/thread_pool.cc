// ThreadPool implementation.
#include "store/base/thread_pool.h"

#include <string>

namespace es {

Result<std::thread> StartThread(std::function<void()> body, std::string_view what) {
  try {
    return std::thread(std::move(body));
  } catch (const std::exception& e) {
    return Status::ResourceExhausted(std::string(what) + ": cannot start a thread (" + e.what() + ")");
  }
}

ThreadPool::ThreadPool(size_t threads) {
  if (threads == 0) threads = 1;
  for (size_t i = 0; i < threads; ++i) {
    auto t = StartThread([this] { Work(); }, "thread pool");
    if (!t.ok()) break;  // fewer workers; with none, Submit runs tasks inline
    workers_.push_back(std::move(t).value());
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Submit(std::function<void()> task) {
  if (workers_.empty()) {
    task();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
}

void ThreadPool::Work() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace es
