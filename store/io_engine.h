// IoEngine: batched positional reads with an io_uring implementation (O_DIRECT, registered buffers where
// the limits allow, probed at run time) and a pread thread-pool fallback. Both resume short reads, retry
// EINTR/EAGAIN and give each read its own status. Buffers are caller-owned and must stay valid until
// ReadBatch returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "store/base/file_system.h"
#include "store/base/status.h"

namespace es {

enum class IoEngineKind {
  kAuto,   // io_uring when the kernel allows it, else pread
  kUring,  // io_uring or an error
  kPread,  // a pool of threads calling pread
};

// "auto", "uring", "pread" (case-sensitive); InvalidArgument otherwise.
Result<IoEngineKind> ParseIoEngineKind(std::string_view name);

// The pread fallback's thread count at most: threads beyond it add memory, not throughput.
inline constexpr uint32_t kMaxPreadThreads = 32;

struct IoEngineOptions {
  // Most reads in flight at once, per ReadBatch call (io_uring submission depth; the pread fallback runs
  // min(queue_depth, kMaxPreadThreads) worker threads).
  uint32_t queue_depth = 128;
  // Reads larger than this are split into pieces of this size so that one large extent still keeps several
  // requests in flight. A multiple of 4 KiB; 0 disables splitting. 512 KiB and depth 128 were the fastest for
  // single 9 MiB experts in `bench swapin` on the development VM (p50 6.4-6.9 ms against 7.4-7.5 ms with 1 MiB
  // and depth 32; a layer's 8 experts at 0.96 of the raw device either way).
  uint64_t max_request_bytes = 512u << 10;
};

struct IoRead {
  File* file = nullptr;
  uint64_t offset = 0;
  std::span<std::byte> dst;  // O_DIRECT files need offset, size and address 4 KiB aligned
  Status status;             // set by ReadBatch
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  virtual std::string_view name() const = 0;
  const IoEngineOptions& options() const { return options_; }

  // Reads every request fully. `on_complete(i)`, if given, runs once per request as soon as request i is done
  // (successfully or not), possibly on another thread and concurrently with other indices, while later reads
  // are still in flight: callers verify data there to overlap it with I/O. Thread-safe.
  virtual void ReadBatch(std::span<IoRead> reads, const std::function<void(size_t)>& on_complete) = 0;

  // Registers long-lived buffers (a cache arena) so that reads landing inside them skip per-I/O page pinning.
  // Registrations add up: each caller's buffers stay registered, beside every other caller's (two caches on one
  // store), until it removes them with the id returned, which it must do before freeing them. NotSupported where
  // the engine has no such notion; ResourceExhausted where the kernel's limits refuse (nothing is added; reads
  // still work, unregistered). Thread-safe.
  virtual Result<uint64_t> AddBuffers(std::span<const std::span<std::byte>> buffers) = 0;
  virtual void RemoveBuffers(uint64_t id) = 0;
  // The buffers registered now, over all owners (0 for an engine without registration).
  virtual size_t registered_buffers() const = 0;

 protected:
  explicit IoEngine(const IoEngineOptions& options) : options_(options) {}

 private:
  IoEngineOptions options_;
};

Result<std::unique_ptr<IoEngine>> CreatePreadEngine(const IoEngineOptions& options);
// NotSupported when the kernel or a seccomp filter refuses io_uring.
Result<std::unique_ptr<IoEngine>> CreateUringEngine(const IoEngineOptions& options);
// kAuto falls back to pread when io_uring is unavailable. The environment variable EXPERTSTORE_IO_ENGINE
// (auto|uring|pread), when set, overrides kAuto (the test suite runs under both engines this way).
Result<std::unique_ptr<IoEngine>> CreateIoEngine(IoEngineKind kind, const IoEngineOptions& options);

}  // namespace es
