// FaultInjectionFileSystem implementation.
#include "tests/util/fault_fs.h"

#include <errno.h>

#include <algorithm>

namespace es::testing {

namespace {

class FaultFile final : public FileWrapper {
 public:
  FaultFile(FaultInjectionFileSystem* fs, std::unique_ptr<File> target) : FileWrapper(std::move(target)), fs_(fs) {}

  Result<size_t> Read(uint64_t offset, std::span<std::byte> dst) override {
    FaultRule rule;
    bool shorten = false;
    if (fs_->Fire(FaultOp::kRead, path(), &rule)) {
      if (!rule.short_io) return ErrnoStatus(rule.err, "read " + path() + " (injected)");
      shorten = true;
    }
    ES_ASSIGN_OR_RETURN(size_t n, target().Read(offset, dst));
    // A short read: report fewer bytes (an unaligned count, as the kernel may); the caller must continue.
    if (shorten && n > 1) n = n / 2 - 1 + (n == 2);
    return n;
  }

  Status Write(uint64_t offset, std::span<const std::byte> src) override {
    if (fs_->crashed()) return Status::Ok();
    FaultRule rule;
    if (fs_->Fire(FaultOp::kWrite, path(), &rule)) {
      if (rule.short_io && src.size() > 1) {
        // Part of the data reaches the file before the failure, as a real ENOSPC mid-write leaves it.
        TrackBeforeChange();
        target().Write(offset, src.first(src.size() / 2)).IgnoreError();
      }
      return ErrnoStatus(rule.err, "write " + path() + " (injected)");
    }
    TrackBeforeChange();
    return target().Write(offset, src);
  }

  Status DataSync() override { return DoSync(); }
  Status Sync() override { return DoSync(); }

  Status Truncate(uint64_t size) override {
    if (fs_->crashed()) return Status::Ok();
    FaultRule rule;
    if (fs_->Fire(FaultOp::kTruncate, path(), &rule)) return ErrnoStatus(rule.err, "truncate " + path() + " (injected)");
    TrackBeforeChange();
    return target().Truncate(size);
  }

  int FilterAsyncReadResult(uint64_t offset, size_t length, int res) override {
    FaultRule rule;
    if (res > 0 && fs_->Fire(FaultOp::kAsyncRead, path(), &rule)) {
      if (!rule.short_io) return -rule.err;
      // Pretend the kernel returned fewer bytes; the engine must read the rest again.
      return std::max(1, res / 2 - 1);
    }
    return res;
  }

 private:
  void TrackBeforeChange() {
    auto size = target().Size();
    fs_->Track(path(), size.ok() ? *size : 0, /*created=*/false);
  }

  Status DoSync() {
    if (fs_->crashed()) return Status::Ok();
    FaultRule rule;
    if (fs_->Fire(FaultOp::kSync, path(), &rule)) return ErrnoStatus(rule.err, "fsync " + path() + " (injected)");
    ES_RETURN_IF_ERROR(target().Sync());
    ES_ASSIGN_OR_RETURN(uint64_t size, target().Size());
    fs_->NoteSynced(path(), size);
    return Status::Ok();
  }

  FaultInjectionFileSystem* fs_;
};

bool Matches(const FaultRule& r, FaultOp op, const std::string& path) {
  return r.op == op && (r.path_contains.empty() || path.find(r.path_contains) != std::string::npos);
}

}  // namespace

FaultInjectionFileSystem::FaultInjectionFileSystem(std::shared_ptr<FileSystem> base)
    : FileSystemWrapper(std::move(base)) {}

void FaultInjectionFileSystem::AddRule(const FaultRule& rule) {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.push_back(rule);
  seen_.push_back(0);
}

void FaultInjectionFileSystem::ClearRules() {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.clear();
  seen_.clear();
}

bool FaultInjectionFileSystem::Fire(FaultOp op, const std::string& path, FaultRule* out) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < rules_.size(); ++i) {
    FaultRule& r = rules_[i];
    if (!Matches(r, op, path) || r.times == 0) continue;
    if (seen_[i]++ < r.skip) continue;
    if (r.times > 0) --r.times;
    *out = r;
    ++fired_;
    return true;
  }
  return false;
}

std::string FaultInjectionFileSystem::Current(const std::string& path) const {
  std::string p = path;
  for (auto it = renamed_.find(p); it != renamed_.end(); it = renamed_.find(p)) p = it->second;
  return p;
}

void FaultInjectionFileSystem::NoteSynced(const std::string& path, uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  Tracked& t = tracked_[Current(path)];
  t.synced_size = size;
  t.ever_synced = true;
}

void FaultInjectionFileSystem::Track(const std::string& path, uint64_t durable_size, bool created) {
  std::lock_guard<std::mutex> lock(mu_);
  tracked_.try_emplace(Current(path), Tracked{durable_size, !created});
}

void FaultInjectionFileSystem::Crash() {
  std::lock_guard<std::mutex> lock(mu_);
  crashed_ = true;
  for (const auto& [path, t] : tracked_) {
    if (!t.ever_synced) {
      target().Remove(path).IgnoreError();
      continue;
    }
    auto f = target().Open(path, OpenOptions{.write = true});
    if (!f.ok()) continue;
    auto size = (*f)->Size();
    if (size.ok() && *size > t.synced_size) (*f)->Truncate(t.synced_size).IgnoreError();
  }
  tracked_.clear();
  renamed_.clear();
}

void FaultInjectionFileSystem::Restart() { crashed_ = false; }

Result<std::unique_ptr<File>> FaultInjectionFileSystem::Open(const std::string& path, const OpenOptions& options) {
  FaultRule rule;
  if (Fire(FaultOp::kOpen, path, &rule)) return ErrnoStatus(rule.err, "open " + path + " (injected)");
  if (crashed() && options.create) return ErrnoStatus(EROFS, "open " + path + " after the simulated crash");
  bool existed = true;
  if (options.create) {
    ES_ASSIGN_OR_RETURN(existed, target().Exists(path));
  }
  ES_ASSIGN_OR_RETURN(auto base, target().Open(path, options));
  if (!existed) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      renamed_.erase(path);  // a new file at a name an earlier one was renamed away from
    }
    Track(path, 0, /*created=*/true);
  }
  return std::unique_ptr<File>(new FaultFile(this, std::move(base)));
}

Status FaultInjectionFileSystem::Rename(const std::string& from, const std::string& to) {
  if (crashed()) return Status::Ok();
  FaultRule rule;
  if (Fire(FaultOp::kRename, from, &rule)) return ErrnoStatus(rule.err, "rename " + from + " (injected)");
  ES_RETURN_IF_ERROR(target().Rename(from, to));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tracked_.find(from);
  if (it != tracked_.end()) {
    tracked_[to] = it->second;
    tracked_.erase(it);
  }
  // Files still open under the old name write to, and sync, the renamed file.
  renamed_[from] = to;
  renamed_.erase(to);
  return Status::Ok();
}

Status FaultInjectionFileSystem::Remove(const std::string& path) {
  if (crashed()) return Status::Ok();
  FaultRule rule;
  if (Fire(FaultOp::kRemove, path, &rule)) return ErrnoStatus(rule.err, "remove " + path + " (injected)");
  ES_RETURN_IF_ERROR(target().Remove(path));
  std::lock_guard<std::mutex> lock(mu_);
  tracked_.erase(path);
  return Status::Ok();
}

Status FaultInjectionFileSystem::SyncDir(const std::string& path) {
  if (crashed()) return Status::Ok();
  FaultRule rule;
  if (Fire(FaultOp::kSyncDir, path, &rule)) return ErrnoStatus(rule.err, "fsync directory " + path + " (injected)");
  return target().SyncDir(path);
}

}  // namespace es::testing
