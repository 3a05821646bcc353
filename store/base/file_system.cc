// PosixFileSystem: the real OS calls behind FileSystem, the single errno -> Status mapping, and the whole-file
// helpers.
#include "store/base/file_system.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

namespace es {

Status ErrnoStatus(int err, std::string_view what) {
  std::string msg(what);
  msg += ": ";
  msg += strerror(err);
  switch (err) {
    case ENOENT: return Status::NotFound(msg);
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE: return Status::ResourceExhausted(msg);
    case EINVAL:
    case ENAMETOOLONG:
    case ENOTDIR:
    case EISDIR: return Status::InvalidArgument(msg);
    case EWOULDBLOCK: return Status::Busy(msg);
    case ENOSYS:
    case EOPNOTSUPP: return Status::NotSupported(msg);
    default: return Status::IOError(msg);
  }
}

std::string JoinPath(std::string_view a, std::string_view b) {
  std::string out(a);
  if (!out.empty() && out.back() != '/') out += '/';
  out += b;
  return out;
}

Status CreateDirs(FileSystem& fs, const std::string& path) {
  std::vector<std::string> missing;
  for (std::string dir = path; !dir.empty() && dir != "/" && dir != ".";) {
    ES_ASSIGN_OR_RETURN(bool there, fs.Exists(dir));
    if (there) break;
    missing.push_back(dir);
    const std::string parent = DirName(dir);
    if (parent == dir) break;
    dir = parent;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) ES_RETURN_IF_ERROR(fs.CreateDir(*it));
  return Status::Ok();
}

std::string DirName(std::string_view path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

namespace {

class PosixFile final : public File {
 public:
  PosixFile(std::string path, int fd, bool direct) : File(std::move(path)), fd_(fd), direct_(direct) {}
  ~PosixFile() override { ::close(fd_); }

  Result<size_t> Read(uint64_t offset, std::span<std::byte> dst) override {
    while (true) {
      ssize_t n = ::pread(fd_, dst.data(), dst.size(), static_cast<off_t>(offset));
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read " + path());
    }
  }

  Status Write(uint64_t offset, std::span<const std::byte> src) override {
    while (!src.empty()) {
      ssize_t n = ::pwrite(fd_, src.data(), src.size(), static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, "write " + path());
      }
      if (n == 0) return Status::IOError("write " + path() + ": wrote 0 bytes");
      src = src.subspan(static_cast<size_t>(n));
      offset += static_cast<uint64_t>(n);
    }
    return Status::Ok();
  }

  Status DataSync() override {
    if (::fdatasync(fd_) != 0) return ErrnoStatus(errno, "fdatasync " + path());
    return Status::Ok();
  }
  Status Sync() override {
    if (::fsync(fd_) != 0) return ErrnoStatus(errno, "fsync " + path());
    return Status::Ok();
  }
  Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) return ErrnoStatus(errno, "truncate " + path());
    return Status::Ok();
  }
  Result<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoStatus(errno, "stat " + path());
    return static_cast<uint64_t>(st.st_size);
  }
  Status DropCache() override {
    int rc = ::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);
    if (rc != 0) return ErrnoStatus(rc, "fadvise " + path());
    return Status::Ok();
  }
  int NativeHandle() const override { return fd_; }
  bool direct() const override { return direct_; }

 private:
  int fd_;
  bool direct_;
};

class PosixLock final : public FileLock {
 public:
  explicit PosixLock(int fd) : fd_(fd) {}
  ~PosixLock() override {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

 private:
  int fd_;
};

class PosixFileSystem final : public FileSystem {
 public:
  Result<std::unique_ptr<File>> Open(const std::string& path, const OpenOptions& options) override {
    int flags = O_CLOEXEC | (options.write ? O_RDWR : O_RDONLY);
    if (options.create) flags |= O_CREAT;
    if (options.exclusive) flags |= O_EXCL;
    bool direct = options.direct;
    int fd = ::open(path.c_str(), flags | (direct ? O_DIRECT : 0), 0644);
    if (fd < 0 && direct && errno == EINVAL) {
      // tmpfs and some overlay file systems refuse O_DIRECT: fall back to buffered I/O.
      direct = false;
      fd = ::open(path.c_str(), flags, 0644);
    }
    if (fd < 0) return ErrnoStatus(errno, "open " + path);
    return std::unique_ptr<File>(new PosixFile(path, fd, direct));
  }

  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoStatus(errno, "rename " + from + " to " + to);
    return Status::Ok();
  }
  Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoStatus(errno, "remove " + path);
    return Status::Ok();
  }
  Status CreateDir(const std::string& path) override {
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return ErrnoStatus(errno, "mkdir " + path);
    return Status::Ok();
  }
  Status SyncDir(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, "open directory " + path);
    Status s;
    if (::fsync(fd) != 0) s = ErrnoStatus(errno, "fsync directory " + path);
    ::close(fd);
    return s;
  }
  Result<bool> Exists(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) return true;
    if (errno == ENOENT) return false;
    return ErrnoStatus(errno, "stat " + path);
  }
  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, "list " + dir);
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(d)) {
      std::string_view name(e->d_name);
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(d);
    return names;
  }
  Result<std::unique_ptr<FileLock>> LockFile(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus(errno, "open " + path);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) return Status::Busy("another process holds " + path);
      return ErrnoStatus(err, "lock " + path);
    }
    return std::unique_ptr<FileLock>(new PosixLock(fd));
  }
  Result<std::unique_ptr<FileLock>> LockFileShared(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, "open " + path);
    while (::flock(fd, LOCK_SH) != 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoStatus(err, "lock " + path);
    }
    return std::unique_ptr<FileLock>(new PosixLock(fd));
  }
  Result<uint64_t> FreeSpace(const std::string& path) override {
    struct statvfs st;
    if (::statvfs(path.c_str(), &st) != 0) return ErrnoStatus(errno, "statvfs " + path);
    return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  }
};

}  // namespace

std::shared_ptr<FileSystem> DefaultFileSystem() {
  static std::shared_ptr<FileSystem> fs = std::make_shared<PosixFileSystem>();
  return fs;
}

Status ReadFully(File& file, uint64_t offset, std::span<std::byte> dst) {
  constexpr int kMaxStalls = 64;  // consecutive reads that made no aligned progress
  int stalls = 0;
  while (!dst.empty()) {
    ES_ASSIGN_OR_RETURN(size_t n, file.Read(offset, dst));
    if (n == 0) {
      return Status::Corruption("unexpected end of file in " + file.path() + " at offset " + std::to_string(offset));
    }
    if (n > dst.size()) return Status::IOError("read " + file.path() + " returned more bytes than asked for");
    // O_DIRECT needs aligned offsets: keep only the aligned part of a short read and read the rest again.
    size_t advance = (file.direct() && n < dst.size()) ? n - n % kDirectIoAlignment : n;
    if (advance == 0) {
      if (++stalls > kMaxStalls) return Status::IOError("read " + file.path() + ": no progress after short reads");
      continue;
    }
    stalls = 0;
    dst = dst.subspan(advance);
    offset += advance;
  }
  return Status::Ok();
}

Result<std::string> ReadFile(FileSystem& fs, const std::string& path) {
  ES_ASSIGN_OR_RETURN(auto file, fs.Open(path, OpenOptions{}));
  ES_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  std::string data(size, '\0');
  ES_RETURN_IF_ERROR(ReadFully(*file, 0, std::as_writable_bytes(std::span<char>(data.data(), data.size()))));
  return data;
}

namespace {

constexpr std::string_view kTmpSuffix = ".tmp";
// Appended bytes are written once this many have gathered.
constexpr size_t kAtomicWriteBuffer = size_t{1} << 16;

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::shared_ptr<FileSystem> fs, std::string path, std::unique_ptr<File> file)
    : fs_(std::move(fs)), path_(std::move(path)), tmp_path_(path_ + std::string(kTmpSuffix)), file_(std::move(file)) {}

Result<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(std::shared_ptr<FileSystem> fs, std::string path) {
  const std::string tmp = path + std::string(kTmpSuffix);
  ES_ASSIGN_OR_RETURN(auto file, fs->Open(tmp, OpenOptions{.write = true, .create = true}));
  // A temporary left by an interrupted earlier run starts over.
  ES_RETURN_IF_ERROR(file->Truncate(0));
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(std::move(fs), std::move(path), std::move(file)));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (committed_) return;
  file_.reset();
  fs_->Remove(tmp_path_).IgnoreError();  // nothing to publish; a temporary that stays is overwritten next time
}

Status AtomicFileWriter::Append(std::string_view data) {
  if (committed_) return Status::InvalidArgument("AtomicFileWriter: append after commit to " + path_);
  buffer_.append(data);
  return buffer_.size() >= kAtomicWriteBuffer ? Flush() : Status::Ok();
}

Status AtomicFileWriter::Flush() {
  ES_RETURN_IF_ERROR(file_->Write(written_, std::as_bytes(std::span<const char>(buffer_.data(), buffer_.size()))));
  written_ += buffer_.size();
  buffer_.clear();
  return Status::Ok();
}

Status AtomicFileWriter::Commit() {
  if (committed_) return Status::Ok();
  ES_RETURN_IF_ERROR(Flush());
  ES_RETURN_IF_ERROR(file_->Sync());
  file_.reset();
  ES_RETURN_IF_ERROR(fs_->Rename(tmp_path_, path_));
  committed_ = true;
  return fs_->SyncDir(DirName(path_));
}

Status WriteFileAtomic(std::shared_ptr<FileSystem> fs, const std::string& path, std::string_view data) {
  ES_ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Create(std::move(fs), path));
  ES_RETURN_IF_ERROR(writer->Append(data));
  return writer->Commit();
}

}  // namespace es
