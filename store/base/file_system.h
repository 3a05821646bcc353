// The file-system interface through which the libraries make every OS call on files, so that tests can inject
// faults (EIO, short reads, ENOSPC, failing fsync, lost unsynced data) by wrapping it; pass-through wrappers
// (FileSystemWrapper, FileWrapper) to derive such doubles from; and the whole-file helpers (ReadFile, an
// atomically published file). PosixFileSystem is the real one.
// Thread safety: FileSystem and File methods may be called from several threads at once; positional I/O only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "store/base/status.h"

namespace es {

// O_DIRECT transfers must start, end and sit in memory on multiples of this.
inline constexpr size_t kDirectIoAlignment = 4096;

// errno -> Status, the one place this mapping lives. `what` says what was being done ("open /x/y").
Status ErrnoStatus(int err, std::string_view what);

struct OpenOptions {
  bool write = false;      // open read-write, else read-only
  bool create = false;     // create if missing (with write)
  bool exclusive = false;  // fail if it exists (with create)
  bool direct = false;     // O_DIRECT; falls back to buffered I/O where the file system refuses it
};

class File {
 public:
  virtual ~File() = default;

  // One read attempt at `offset`: may return fewer bytes than asked (0 at end of file). EINTR is retried.
  virtual Result<size_t> Read(uint64_t offset, std::span<std::byte> dst) = 0;
  // Writes all of `src` at `offset` (loops over short writes).
  virtual Status Write(uint64_t offset, std::span<const std::byte> src) = 0;
  virtual Status DataSync() = 0;  // fdatasync
  virtual Status Sync() = 0;      // fsync
  virtual Status Truncate(uint64_t size) = 0;
  virtual Result<uint64_t> Size() = 0;
  // Drops the file's cached pages (posix_fadvise DONTNEED) so the next buffered read goes to the device.
  virtual Status DropCache() = 0;

  // The OS descriptor for asynchronous engines (io_uring), or -1 if this file has none.
  virtual int NativeHandle() const = 0;
  // True when the descriptor was opened with O_DIRECT (reads must then be 4 KiB aligned).
  virtual bool direct() const = 0;
  // Every asynchronous read result on NativeHandle() passes through here before it is interpreted: `res` is
  // the byte count or -errno. The real file returns it unchanged; a fault-injecting file may shorten or fail it.
  virtual int FilterAsyncReadResult(uint64_t offset, size_t length, int res) { return res; }

  const std::string& path() const { return path_; }

 protected:
  explicit File(std::string path) : path_(std::move(path)) {}

 private:
  std::string path_;
};

// An advisory exclusive lock held until destroyed.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  virtual Result<std::unique_ptr<File>> Open(const std::string& path, const OpenOptions& options) = 0;
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  virtual Status Remove(const std::string& path) = 0;
  virtual Status CreateDir(const std::string& path) = 0;  // OK if it exists already
  virtual Status SyncDir(const std::string& path) = 0;
  virtual Result<bool> Exists(const std::string& path) = 0;
  // Names (not paths) of the entries of `dir`, without "." and "..".
  virtual Result<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  // Takes an exclusive, non-blocking lock on `path` (created if missing). Busy if another process holds it.
  virtual Result<std::unique_ptr<FileLock>> LockFile(const std::string& path) = 0;
  // Takes a shared lock on the existing file `path`, waiting while an exclusive holder (LockFile) finishes.
  // NotFound when there is no such file. Works on a read-only file system.
  virtual Result<std::unique_ptr<FileLock>> LockFileShared(const std::string& path) = 0;
  // Free bytes on the file system holding `path`.
  virtual Result<uint64_t> FreeSpace(const std::string& path) = 0;
};

// The process-wide POSIX file system.
std::shared_ptr<FileSystem> DefaultFileSystem();

// A File that forwards every call to another, as LevelDB's EnvWrapper does for its Env: a test double derives
// from it and overrides only the calls it changes.
class FileWrapper : public File {
 public:
  explicit FileWrapper(std::unique_ptr<File> target) : File(target->path()), target_(std::move(target)) {}

  Result<size_t> Read(uint64_t offset, std::span<std::byte> dst) override { return target_->Read(offset, dst); }
  Status Write(uint64_t offset, std::span<const std::byte> src) override { return target_->Write(offset, src); }
  Status DataSync() override { return target_->DataSync(); }
  Status Sync() override { return target_->Sync(); }
  Status Truncate(uint64_t size) override { return target_->Truncate(size); }
  Result<uint64_t> Size() override { return target_->Size(); }
  Status DropCache() override { return target_->DropCache(); }
  int NativeHandle() const override { return target_->NativeHandle(); }
  bool direct() const override { return target_->direct(); }
  int FilterAsyncReadResult(uint64_t offset, size_t length, int res) override {
    return target_->FilterAsyncReadResult(offset, length, res);
  }

 protected:
  File& target() const { return *target_; }

 private:
  std::unique_ptr<File> target_;
};

// A FileSystem that forwards every call to another (LevelDB's EnvWrapper); see FileWrapper.
class FileSystemWrapper : public FileSystem {
 public:
  explicit FileSystemWrapper(std::shared_ptr<FileSystem> target) : target_(std::move(target)) {}

  Result<std::unique_ptr<File>> Open(const std::string& path, const OpenOptions& options) override {
    return target_->Open(path, options);
  }
  Status Rename(const std::string& from, const std::string& to) override { return target_->Rename(from, to); }
  Status Remove(const std::string& path) override { return target_->Remove(path); }
  Status CreateDir(const std::string& path) override { return target_->CreateDir(path); }
  Status SyncDir(const std::string& path) override { return target_->SyncDir(path); }
  Result<bool> Exists(const std::string& path) override { return target_->Exists(path); }
  Result<std::vector<std::string>> ListDir(const std::string& dir) override { return target_->ListDir(dir); }
  Result<std::unique_ptr<FileLock>> LockFile(const std::string& path) override { return target_->LockFile(path); }
  Result<std::unique_ptr<FileLock>> LockFileShared(const std::string& path) override {
    return target_->LockFileShared(path);
  }
  Result<uint64_t> FreeSpace(const std::string& path) override { return target_->FreeSpace(path); }

 protected:
  FileSystem& target() const { return *target_; }

 private:
  std::shared_ptr<FileSystem> target_;
};

// The whole contents of the file at `path` (NotFound when it does not exist).
Result<std::string> ReadFile(FileSystem& fs, const std::string& path);

// A file written in pieces and published whole: Append writes `path`.tmp (buffered); Commit flushes and syncs
// it, renames it over `path` and syncs the directory, so a reader sees the old file or all of the new one, never
// a part. A writer destroyed before Commit, or whose Commit failed before the rename, removes its temporary and
// leaves `path` as it was. Not thread-safe.
class AtomicFileWriter {
 public:
  static Result<std::unique_ptr<AtomicFileWriter>> Create(std::shared_ptr<FileSystem> fs, std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  Status Append(std::string_view data);
  Status Commit();

 private:
  AtomicFileWriter(std::shared_ptr<FileSystem> fs, std::string path, std::unique_ptr<File> file);
  Status Flush();

  std::shared_ptr<FileSystem> fs_;
  std::string path_;
  std::string tmp_path_;
  std::unique_ptr<File> file_;
  std::string buffer_;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// WriteFileAtomic: `data` as the whole new contents of `path`, through an AtomicFileWriter.
Status WriteFileAtomic(std::shared_ptr<FileSystem> fs, const std::string& path, std::string_view data);

// Reads exactly dst.size() bytes at `offset`, looping over short reads (on an O_DIRECT file a short read is
// resumed from the last aligned boundary). Reaching the end of the file first is Corruption: the caller
// expected those bytes to exist.
Status ReadFully(File& file, uint64_t offset, std::span<std::byte> dst);

// Joins two path parts with one '/'.
std::string JoinPath(std::string_view a, std::string_view b);
// The directory part of `path` ("." when it has none).
std::string DirName(std::string_view path);

// Creates `path` and whichever of its parents are missing, as mkdir -p does. OK if it exists already.
Status CreateDirs(FileSystem& fs, const std::string& path);

}  // namespace es
