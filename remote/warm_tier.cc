// WarmTier implementation.
#include "remote/warm_tier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "store/base/file_system.h"
#include "store/base/thread_pool.h"

namespace es::remote {

namespace {

constexpr uint64_t kMaxQueuedBytes = uint64_t{256} << 20;  // copies waiting to be written
constexpr std::string_view kTmpSuffix = ".tmp";

// Writes `bytes` to `path` through a temporary and a rename, without syncing: a copy a crash tore (renamed before its
// bytes reached the disk) fails the verification every read does and is fetched again, so the sync a durable file
// needs would only slow the fills down.
bool WriteCopy(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + std::string(kTmpSuffix);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  const bool ok = ::close(fd) == 0 && done == bytes.size() && ::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) ::unlink(tmp.c_str());
  return ok;
}

}  // namespace

WarmTier::WarmTier(std::string dir, uint64_t capacity) : dir_(std::move(dir)), capacity_(capacity) {}

Result<std::unique_ptr<WarmTier>> WarmTier::Open(const std::string& dir, uint64_t capacity_bytes) {
  auto fs = DefaultFileSystem();
  ES_RETURN_IF_ERROR(CreateDirs(*fs, dir));
  std::unique_ptr<WarmTier> w(new WarmTier(dir, capacity_bytes));
  ES_ASSIGN_OR_RETURN(std::vector<std::string> names, fs->ListDir(dir));
  std::vector<std::pair<int64_t, std::string>> by_age;
  for (const std::string& name : names) {
    const std::string path = JoinPath(dir, name);
    if (name.ends_with(kTmpSuffix)) {
      ES_RETURN_IF_ERROR(fs->Remove(path));  // a write a crash interrupted
      continue;
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    by_age.push_back({static_cast<int64_t>(st.st_mtime), name});
    w->copies_[name].bytes = static_cast<uint64_t>(st.st_size);
    w->stats_.bytes += static_cast<uint64_t>(st.st_size);
  }
  std::sort(by_age.begin(), by_age.end());
  for (const auto& [age, name] : by_age) w->copies_[name].pos = w->lru_.insert(w->lru_.end(), name);
  w->stats_.files = w->copies_.size();
  {
    std::lock_guard lock(w->mu_);
    w->EvictLocked();
  }
  ES_ASSIGN_OR_RETURN(w->io_, CreateIoEngine(IoEngineKind::kAuto, IoEngineOptions{}));
  ES_ASSIGN_OR_RETURN(w->writer_, StartThread([raw = w.get()] { raw->WriterLoop(); }, "the warm tier's writer"));
  return w;
}

WarmTier::~WarmTier() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

std::string WarmTier::KeyOf(const Extent& e) {
  const RemoteRecordId id = RemoteRecordOf(e);
  switch (id.kind) {
    case RemoteRecordKind::kExpert: return "e." + std::to_string(id.layer) + "." + std::to_string(id.index);
    case RemoteRecordKind::kTensor: return "t." + std::to_string(id.index);
    case RemoteRecordKind::kAsset: return "a." + std::to_string(id.index);
  }
  return "x." + std::to_string(e.offset);
}

bool WarmTier::Read(const Extent& extent, std::span<std::byte> record) {
  const Wanted one{extent, record};
  return ReadBatch({&one, 1})[0];
}

void WarmTier::DropLocked(const std::string& key) {
  auto it = copies_.find(key);
  if (it == copies_.end()) return;
  stats_.bytes -= it->second.bytes;
  lru_.erase(it->second.pos);
  copies_.erase(it);
  stats_.files = copies_.size();
  DefaultFileSystem()->Remove(JoinPath(dir_, key)).IgnoreError();
}

std::vector<bool> WarmTier::ReadBatch(std::span<const Wanted> wanted) {
  std::vector<bool> hit(wanted.size(), false);
  std::vector<std::string> keys(wanted.size());
  std::vector<size_t> held;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < wanted.size(); ++i) {
      keys[i] = KeyOf(wanted[i].extent);
      auto it = copies_.find(keys[i]);
      if (it == copies_.end() || it->second.bytes != wanted[i].extent.record_length ||
          wanted[i].record.size() < wanted[i].extent.record_length) {
        ++stats_.misses;
        continue;
      }
      lru_.splice(lru_.end(), lru_, it->second.pos);  // most recently used
      held.push_back(i);
    }
  }
  if (held.empty()) return hit;
  // Outside the lock: a copy evicted meanwhile stays readable through its open file, or fails to open (a miss).
  std::vector<std::unique_ptr<File>> files;
  std::vector<IoRead> io;
  std::vector<size_t> of;  // io -> wanted
  for (size_t i : held) {
    auto f = DefaultFileSystem()->Open(JoinPath(dir_, keys[i]), OpenOptions{.direct = true});
    if (!f.ok()) continue;
    io.push_back({f->get(), 0, wanted[i].record.first(wanted[i].extent.record_length), Status::Ok()});
    of.push_back(i);
    files.push_back(std::move(f).value());
  }
  {
    std::lock_guard lock(io_mu_);
    if (!io.empty()) io_->ReadBatch(io, nullptr);
  }
  std::vector<bool> damaged(wanted.size(), false);
  for (size_t k = 0; k < io.size(); ++k) {
    const size_t i = of[k];
    if (io[k].status.ok() && CheckRecord(io[k].dst, wanted[i].extent).ok()) {
      hit[i] = true;
    } else {
      damaged[i] = true;
    }
  }
  std::lock_guard lock(mu_);
  for (size_t i : held) {
    if (hit[i]) {
      ++stats_.hits;
      continue;
    }
    ++stats_.misses;
    if (damaged[i]) {
      ++stats_.damaged;
      DropLocked(keys[i]);
    }
  }
  return hit;
}

void WarmTier::Offer(const Extent& extent, std::span<const std::byte> record) {
  {
    std::lock_guard lock(mu_);
    if (capacity_ < record.size() || copies_.contains(KeyOf(extent))) return;
    if (queued_bytes_ + record.size() > kMaxQueuedBytes) {
      ++stats_.dropped;
      return;
    }
    queue_.push_back({extent, std::string(reinterpret_cast<const char*>(record.data()), record.size())});
    queued_bytes_ += record.size();
  }
  work_cv_.notify_one();
}

void WarmTier::Flush() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return queue_.empty() && !writing_; });
}

WarmTierStats WarmTier::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void WarmTier::EvictLocked() {
  while (stats_.bytes > capacity_ && !lru_.empty()) {
    const std::string key = lru_.front();
    DropLocked(key);
    ++stats_.evicted;
  }
  stats_.files = copies_.size();
}

void WarmTier::WriterLoop() {
  for (;;) {
    Pending p;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      p = std::move(queue_.front());
      queue_.pop_front();
      queued_bytes_ -= p.bytes.size();
      writing_ = true;
    }
    // Only an intact record is kept; a write that fails (a full disk) keeps nothing and the reads go to the pool.
    const std::string key = KeyOf(p.extent);
    const bool intact = CheckRecord(std::as_bytes(std::span(p.bytes.data(), p.bytes.size())), p.extent).ok();
    const bool written = intact && WriteCopy(JoinPath(dir_, key), p.bytes);
    {
      std::lock_guard lock(mu_);
      if (written && !copies_.contains(key)) {
        copies_[key] = {p.bytes.size(), lru_.insert(lru_.end(), key)};
        stats_.bytes += p.bytes.size();
        ++stats_.written;
        EvictLocked();
      }
      writing_ = false;
    }
    idle_cv_.notify_all();
  }
}

}  // namespace es::remote
