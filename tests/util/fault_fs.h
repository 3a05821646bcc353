// FaultInjectionFileSystem: wraps a FileSystem and, on request, fails or shortens operations (EIO, ENOSPC,
// EINTR, short reads, failing fsync) and simulates a crash that loses every write not yet made durable by
// fsync/fdatasync (files are cut back to their last synced length; files never synced vanish).
// Rules match a path substring and an operation; each fires after `skip` matching calls, `times` times
// (-1: forever). Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "store/base/file_system.h"

namespace es::testing {

enum class FaultOp { kRead, kAsyncRead, kWrite, kSync, kTruncate, kOpen, kRename, kRemove, kSyncDir };

struct FaultRule {
  FaultOp op = FaultOp::kRead;
  std::string path_contains;  // "" matches every path
  int err = 0;                // errno to fail with (0 with short_io: shorten instead)
  bool short_io = false;      // reads: return fewer bytes; writes: write part, then fail with err
  int skip = 0;
  int times = 1;
};

class FaultInjectionFileSystem : public FileSystemWrapper {
 public:
  explicit FaultInjectionFileSystem(std::shared_ptr<FileSystem> base = DefaultFileSystem());

  void AddRule(const FaultRule& rule);
  void ClearRules();
  // How many faults have fired so far.
  int fired() const { return fired_.load(); }

  // Simulated power loss: from now on nothing reaches the disk (writes, truncates, renames and removes are
  // silently dropped), and every file is cut back to what was last synced.
  void Crash();
  // Back to normal operation after Crash() (the "machine" rebooted).
  void Restart();

  Result<std::unique_ptr<File>> Open(const std::string& path, const OpenOptions& options) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Remove(const std::string& path) override;
  Status SyncDir(const std::string& path) override;

  // Used by the wrapped files.
  // Returns the rule that fires for this operation on this path, if any (and consumes one firing).
  bool Fire(FaultOp op, const std::string& path, FaultRule* out);
  bool crashed() const { return crashed_.load(); }
  void NoteSynced(const std::string& path, uint64_t size);
  // Starts tracking a file about to change: `durable_size` is what survives a crash until the next sync
  // (0 for a file this file system just created). A file already tracked is left as it is.
  void Track(const std::string& path, uint64_t durable_size, bool created);

 private:
  struct Tracked {
    uint64_t synced_size = 0;
    bool ever_synced = false;
  };

  std::mutex mu_;
  std::vector<FaultRule> rules_;
  std::vector<int> seen_;  // matching calls per rule
  std::map<std::string, Tracked> tracked_;  // files written through this file system
  std::map<std::string, std::string> renamed_;  // old name -> new name, for files still open under the old one
  // The name a file opened as `path` has now (mu_ held).
  std::string Current(const std::string& path) const;
  std::atomic<int> fired_{0};
  std::atomic<bool> crashed_{false};
};

}  // namespace es::testing
