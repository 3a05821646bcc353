// FairQueue: jobs queued per client and served round-robin across clients, so that one client's burst cannot
// starve the others (each client with waiting jobs gets one turn per round, in order of arrival). Not
// thread-safe: the generation service guards it with its lock.
#pragma once

#include <cstddef>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>

namespace es::api {

template <typename Job>
class FairQueue {
 public:
  void Push(const std::string& client, Job job) {
    auto& q = queues_[client];
    if (q.empty()) turns_.push_back(client);
    q.push_back(std::move(job));
    ++size_;
  }

  // The next job: the oldest of the client whose turn it is.
  std::optional<Job> Pop() {
    if (turns_.empty()) return std::nullopt;
    std::string client = std::move(turns_.front());
    turns_.pop_front();
    auto it = queues_.find(client);
    Job job = std::move(it->second.front());
    it->second.pop_front();
    if (it->second.empty()) {
      queues_.erase(it);
    } else {
      turns_.push_back(std::move(client));
    }
    --size_;
    return job;
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t size_of(const std::string& client) const {
    auto it = queues_.find(client);
    return it == queues_.end() ? 0 : it->second.size();
  }

 private:
  std::map<std::string, std::deque<Job>> queues_;
  std::deque<std::string> turns_;  // clients with waiting jobs, in turn order
  size_t size_ = 0;
};

}  // namespace es::api
