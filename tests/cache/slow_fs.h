// SlowFileSystem: wraps a FileSystem so that every read of a file whose path contains a substring takes at
// least `delay` and is logged in completion order. Makes races (two acquirers of one missing expert, demand
// overtaking prefetch) wide enough to observe, or holds them until released; tests assert orders and counts,
// never times. Both engines pass through it: pread calls File::Read, io_uring results pass through
// FilterAsyncReadResult. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "store/base/file_system.h"

namespace es::testing {

class SlowFileSystem final : public FileSystemWrapper {
 public:
  SlowFileSystem(std::shared_ptr<FileSystem> base, std::string path_contains)
      : FileSystemWrapper(std::move(base)), match_(std::move(path_contains)) {}

  void set_delay(std::chrono::milliseconds d) {
    std::lock_guard<std::mutex> lock(mu_);
    delay_ = d;
  }
  // File offsets of the reads completed so far (one entry per engine piece), in completion order.
  std::vector<uint64_t> completed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return completed_;
  }
  // While held, every read blocks (after its data arrived, before it completes) until Release.
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      held_ = false;
    }
    cv_.notify_all();
  }
  // Reads blocked by Hold right now.
  int blocked() const {
    std::lock_guard<std::mutex> lock(mu_);
    return blocked_;
  }
  void ClearLog() {
    std::lock_guard<std::mutex> lock(mu_);
    completed_.clear();
  }

  Result<std::unique_ptr<File>> Open(const std::string& path, const OpenOptions& options) override {
    ES_ASSIGN_OR_RETURN(auto f, target().Open(path, options));
    if (path.find(match_) == std::string::npos) return f;
    return std::unique_ptr<File>(new SlowFile(this, std::move(f)));
  }

 private:
  class SlowFile final : public FileWrapper {
   public:
    SlowFile(SlowFileSystem* fs, std::unique_ptr<File> target) : FileWrapper(std::move(target)), fs_(fs) {}
    Result<size_t> Read(uint64_t offset, std::span<std::byte> dst) override {
      auto r = target().Read(offset, dst);
      fs_->Slow(offset);
      return r;
    }
    int FilterAsyncReadResult(uint64_t offset, size_t length, int res) override {
      res = target().FilterAsyncReadResult(offset, length, res);
      fs_->Slow(offset);
      return res;
    }

   private:
    SlowFileSystem* fs_;
  };

  void Slow(uint64_t offset) {
    std::chrono::milliseconds d;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++blocked_;
      cv_.wait(lock, [&] { return !held_; });
      --blocked_;
      d = delay_;
    }
    std::this_thread::sleep_for(d);
    std::lock_guard<std::mutex> lock(mu_);
    completed_.push_back(offset);
  }

  std::string match_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  int blocked_ = 0;
  std::chrono::milliseconds delay_{0};
  std::vector<uint64_t> completed_;
};

}  // namespace es::testing
