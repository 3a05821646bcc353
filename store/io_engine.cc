// The two read engines. Large reads are split into pieces (IoEngineOptions::max_request_bytes); a request
// completes when all its pieces have, and its status is the first error any piece met.
#include "store/io_engine.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <map>
#include <atomic>
#include <cstdio>
#include <deque>
#include <mutex>
#include <vector>

#include "store/base/thread_pool.h"

namespace es {

Result<IoEngineKind> ParseIoEngineKind(std::string_view name) {
  if (name == "auto") return IoEngineKind::kAuto;
  if (name == "uring") return IoEngineKind::kUring;
  if (name == "pread") return IoEngineKind::kPread;
  return Status::InvalidArgument("unknown I/O engine '" + std::string(name) + "' (expected auto, uring or pread)");
}

namespace {

// Consecutive attempts at one piece that made no progress (EINTR, EAGAIN, sub-block short reads) before the
// piece is failed with IOError.
constexpr int kMaxStalls = 64;

struct Piece {
  size_t request = 0;
  uint64_t offset = 0;
  std::byte* dst = nullptr;
  size_t length = 0;
  size_t done = 0;
  int stalls = 0;
};

// Splits every request into pieces no larger than max_bytes (0: no limit). Empty requests get no piece;
// `pieces_per_request` counts them.
std::vector<Piece> SplitRequests(std::span<IoRead> reads, uint64_t max_bytes, std::vector<size_t>& pieces_per_request) {
  std::vector<Piece> pieces;
  pieces_per_request.assign(reads.size(), 0);
  for (size_t i = 0; i < reads.size(); ++i) {
    IoRead& r = reads[i];
    r.status = Status::Ok();
    if (r.file == nullptr) {
      r.status = Status::InvalidArgument("read without a file");
      continue;
    }
    if (r.file->direct() && (r.offset % kDirectIoAlignment != 0 || r.dst.size() % kDirectIoAlignment != 0 ||
                             reinterpret_cast<uintptr_t>(r.dst.data()) % kDirectIoAlignment != 0)) {
      r.status = Status::InvalidArgument("unaligned O_DIRECT read of " + r.file->path());
      continue;
    }
    uint64_t step = max_bytes == 0 ? r.dst.size() : max_bytes;
    for (uint64_t off = 0; off < r.dst.size(); off += step) {
      Piece p;
      p.request = i;
      p.offset = r.offset + off;
      p.dst = r.dst.data() + off;
      p.length = static_cast<size_t>(std::min<uint64_t>(step, r.dst.size() - off));
      pieces.push_back(p);
      ++pieces_per_request[i];
    }
  }
  return pieces;
}

// ---------------------------------------------------------------------------------------------------------
// pread engine: each piece is a task on a shared pool; ReadFully handles EINTR and short reads.

class PreadEngine final : public IoEngine {
 public:
  explicit PreadEngine(const IoEngineOptions& options)
      : IoEngine(options), pool_(std::clamp<uint32_t>(options.queue_depth, 1, kMaxPreadThreads)) {}

  std::string_view name() const override { return "pread"; }

  void ReadBatch(std::span<IoRead> reads, const std::function<void(size_t)>& on_complete) override {
    std::vector<size_t> counts;
    std::vector<Piece> pieces = SplitRequests(reads, options().max_request_bytes, counts);
    auto remaining = std::make_unique<std::atomic<size_t>[]>(reads.size());
    auto errors = std::make_unique<std::mutex[]>(reads.size());
    for (size_t i = 0; i < reads.size(); ++i) {
      remaining[i].store(counts[i]);
      if (counts[i] == 0 && on_complete) on_complete(i);
    }
    Latch latch(pieces.size());
    for (const Piece& p : pieces) {
      pool_.Submit([&, p] {
        IoRead& r = reads[p.request];
        Status s = ReadFully(*r.file, p.offset, {p.dst, p.length});
        if (!s.ok()) {
          std::lock_guard<std::mutex> lock(errors[p.request]);
          if (r.status.ok()) r.status = std::move(s);
        }
        if (remaining[p.request].fetch_sub(1) == 1 && on_complete) on_complete(p.request);
        latch.CountDown();
      });
    }
    latch.Wait();
  }

  Result<uint64_t> AddBuffers(std::span<const std::span<std::byte>>) override {
    return Status::NotSupported("the pread engine has no registered buffers");
  }
  void RemoveBuffers(uint64_t) override {}
  size_t registered_buffers() const override { return 0; }

 private:
  ThreadPool pool_;
};

// ---------------------------------------------------------------------------------------------------------
// io_uring engine: a pool of rings, one per concurrent ReadBatch call. The calling thread submits up to
// queue_depth pieces, reaps completions, resubmits the rest of short or interrupted pieces, and runs
// on_complete while the device works on the pieces still in flight.

struct Ring {
  struct io_uring ring;
  uint64_t registered_generation = 0;  // which registration (generation) the ring's buffers reflect; 0: none
  bool has_buffers = false;
  std::vector<std::span<std::byte>> buffer_snapshot;  // what is registered on this ring, sorted by address
};

class UringEngine final : public IoEngine {
 public:
  explicit UringEngine(const IoEngineOptions& options) : IoEngine(options) {}
  ~UringEngine() override {
    for (auto& r : rings_) io_uring_queue_exit(&r->ring);
  }

  // Creates the first ring: this is the run-time probe.
  Status Init() {
    ES_ASSIGN_OR_RETURN(auto ring, NewRing());
    free_.push_back(ring.get());
    rings_.push_back(std::move(ring));
    return Status::Ok();
  }

  std::string_view name() const override { return "io_uring"; }

  void ReadBatch(std::span<IoRead> reads, const std::function<void(size_t)>& on_complete) override {
    std::vector<size_t> counts;
    std::vector<Piece> pieces = SplitRequests(reads, options().max_request_bytes, counts);
    for (size_t i = 0; i < reads.size(); ++i) {
      if (counts[i] == 0 && on_complete) on_complete(i);
    }
    if (pieces.empty()) return;
    Result<Ring*> ring = AcquireRing();
    if (!ring.ok()) {
      for (size_t i = 0; i < reads.size(); ++i) {
        if (counts[i] == 0) continue;
        reads[i].status = ring.status();
        if (on_complete) on_complete(i);
      }
      return;
    }
    Run(**ring, reads, pieces, counts, on_complete);
    ReleaseRing(*ring);
  }

  Result<uint64_t> AddBuffers(std::span<const std::span<std::byte>> buffers) override {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = ++next_owner_;
    owners_[id].assign(buffers.begin(), buffers.end());
    Status s = Publish();
    if (!s.ok()) {
      // Back to what the other owners had registered.
      owners_.erase(id);
      Publish().IgnoreError();
      return s;
    }
    return id;
  }

  void RemoveBuffers(uint64_t id) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (owners_.erase(id) > 0) Publish().IgnoreError();
  }

  size_t registered_buffers() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return registered_.size();
  }

 private:
  Result<std::unique_ptr<Ring>> NewRing() {
    auto r = std::make_unique<Ring>();
    unsigned entries = std::max<uint32_t>(1, options().queue_depth);
    int rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) return ErrnoStatus(-rc, "io_uring_queue_init").WithContext("io_uring unavailable");
    return r;
  }

  Result<Ring*> AcquireRing() {
    std::lock_guard<std::mutex> lock(mu_);
    Ring* r = nullptr;
    if (!free_.empty()) {
      r = free_.back();
      free_.pop_back();
    } else {
      ES_ASSIGN_OR_RETURN(auto ring, NewRing());
      r = ring.get();
      rings_.push_back(std::move(ring));
    }
    SyncRegistration(*r).IgnoreError();  // unregistered reads still work
    return r;
  }

  void ReleaseRing(Ring* r) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(r);
  }

  // Makes the union of the owners' buffers the registration, now on the idle rings (so that a refusal is
  // reported to the caller); busy rings catch up when they are next acquired. Requires mu_.
  Status Publish() {
    registered_.clear();
    for (const auto& [id, buffers] : owners_) registered_.insert(registered_.end(), buffers.begin(), buffers.end());
    std::sort(registered_.begin(), registered_.end(),
              [](const auto& a, const auto& b) { return a.data() < b.data(); });
    ++generation_;
    Status result;
    for (Ring* r : free_) {
      Status s = SyncRegistration(*r);
      if (!s.ok()) result = s;
    }
    return result;
  }

  // Requires mu_.
  Status SyncRegistration(Ring& r) {
    if (r.registered_generation == generation_) return Status::Ok();
    if (r.has_buffers) {
      io_uring_unregister_buffers(&r.ring);
      r.has_buffers = false;
      r.buffer_snapshot.clear();
    }
    r.registered_generation = generation_;
    if (registered_.empty()) return Status::Ok();
    std::vector<struct iovec> iov;
    for (auto b : registered_) iov.push_back({b.data(), b.size()});
    int rc = io_uring_register_buffers(&r.ring, iov.data(), static_cast<unsigned>(iov.size()));
    if (rc < 0) {
      static std::once_flag warned;
      std::call_once(warned, [rc] {
        std::fprintf(stderr, "expertstore: warning: io_uring buffer registration refused (%s); reads stay unregistered\n",
                     strerror(-rc));
      });
      return ErrnoStatus(-rc, "io_uring_register_buffers");
    }
    r.has_buffers = true;
    r.buffer_snapshot = registered_;
    return Status::Ok();
  }

  // Index of the registered buffer holding [p, p+n), or -1.
  static int FindBuffer(const std::vector<std::span<std::byte>>& bufs, const std::byte* p, size_t n) {
    auto it = std::upper_bound(bufs.begin(), bufs.end(), p,
                               [](const std::byte* x, const std::span<std::byte>& b) { return x < b.data(); });
    if (it == bufs.begin()) return -1;
    --it;
    if (p + n <= it->data() + it->size()) return static_cast<int>(it - bufs.begin());
    return -1;
  }

  void Run(Ring& ring, std::span<IoRead> reads, std::vector<Piece>& pieces, std::vector<size_t>& remaining,
           const std::function<void(size_t)>& on_complete) {
    struct io_uring* uring = &ring.ring;
    const size_t depth = std::max<uint32_t>(1, options().queue_depth);
    std::deque<size_t> ready;       // pieces to (re)submit
    std::vector<size_t> completed;  // requests whose on_complete is due
    for (size_t i = 0; i < pieces.size(); ++i) ready.push_back(i);
    size_t in_flight = 0;
    size_t finished = 0;

    auto finish_piece = [&](size_t index, Status s) {
      Piece& p = pieces[index];
      IoRead& r = reads[p.request];
      if (!s.ok() && r.status.ok()) r.status = std::move(s);
      ++finished;
      if (--remaining[p.request] == 0) completed.push_back(p.request);
    };

    while (finished < pieces.size() || !completed.empty()) {
      // 1. Keep the device busy: queue and submit what fits, without waiting.
      bool queued = false;
      while (in_flight < depth && !ready.empty()) {
        struct io_uring_sqe* sqe = io_uring_get_sqe(uring);
        if (sqe == nullptr) break;
        size_t index = ready.front();
        ready.pop_front();
        Piece& p = pieces[index];
        File* file = reads[p.request].file;
        std::byte* dst = p.dst + p.done;
        size_t len = p.length - p.done;
        int buf = ring.has_buffers ? FindBuffer(ring.buffer_snapshot, dst, len) : -1;
        if (buf >= 0) {
          io_uring_prep_read_fixed(sqe, file->NativeHandle(), dst, static_cast<unsigned>(len), p.offset + p.done, buf);
        } else {
          io_uring_prep_read(sqe, file->NativeHandle(), dst, static_cast<unsigned>(len), p.offset + p.done);
        }
        io_uring_sqe_set_data64(sqe, index);
        ++in_flight;
        queued = true;
      }
      if (queued) {
        int rc = io_uring_submit(uring);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
          // The ring itself failed: nothing submitted in this round reached the kernel.
          DrainAndFail(ring, ready, in_flight, ErrnoStatus(-rc, "io_uring_submit"), finish_piece);
          if (on_complete) {
            for (size_t r : completed) on_complete(r);
          }
          return;
        }
      }
      // 2. While those reads run, hand finished requests to the caller (it verifies them there).
      if (!completed.empty()) {
        std::vector<size_t> due;
        due.swap(completed);
        if (on_complete) {
          for (size_t r : due) on_complete(r);
        }
        continue;  // completions may have arrived meanwhile: reap without blocking first
      }
      if (finished == pieces.size()) break;
      // 3. Wait for at least one completion, then reap all that are there.
      struct io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(uring, &cqe);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
        DrainAndFail(ring, ready, in_flight, ErrnoStatus(-rc, "io_uring_wait_cqe"), finish_piece);
        if (on_complete) {
            for (size_t r : completed) on_complete(r);
          }
        return;
      }
      unsigned head;
      unsigned seen = 0;
      io_uring_for_each_cqe(uring, head, cqe) {
        ++seen;
        --in_flight;
        size_t index = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
        HandleCompletion(reads, pieces, index, cqe->res, ready, finish_piece);
      }
      io_uring_cq_advance(uring, seen);
    }
  }

  // Interprets one completion: retries EINTR/EAGAIN and short reads, fails the piece on errors and early EOF.
  template <typename Finish>
  static void HandleCompletion(std::span<IoRead> reads, std::vector<Piece>& pieces, size_t index, int raw_res,
                               std::deque<size_t>& ready, Finish& finish_piece) {
    Piece& p = pieces[index];
    File* file = reads[p.request].file;
    size_t len = p.length - p.done;
    int res = file->FilterAsyncReadResult(p.offset + p.done, len, raw_res);
    if (res == -EINTR || res == -EAGAIN) {
      if (++p.stalls > kMaxStalls) {
        finish_piece(index, ErrnoStatus(-res, "read " + file->path()));
      } else {
        ready.push_back(index);
      }
      return;
    }
    if (res < 0) {
      finish_piece(index, ErrnoStatus(-res, "read " + file->path()));
      return;
    }
    if (res == 0) {
      finish_piece(index, Status::Corruption("unexpected end of file in " + file->path() + " at offset " +
                                             std::to_string(p.offset + p.done)));
      return;
    }
    size_t advance = std::min(static_cast<size_t>(res), len);
    // O_DIRECT needs aligned offsets: keep only the aligned part of a short read and read the rest again.
    if (file->direct() && advance < len) advance -= advance % kDirectIoAlignment;
    if (advance == 0) {
      if (++p.stalls > kMaxStalls) {
        finish_piece(index, Status::IOError("read " + file->path() + ": no progress after short reads"));
      } else {
        ready.push_back(index);
      }
      return;
    }
    p.stalls = 0;
    p.done += advance;
    if (p.done < p.length) {
      ready.push_back(index);
    } else {
      finish_piece(index, Status::Ok());
    }
  }

  template <typename Finish>
  void DrainAndFail(Ring& ring, std::deque<size_t>& ready, size_t in_flight, const Status& s, Finish& finish_piece) {
    // Wait for what is in flight (its buffers must not be released while the kernel writes into them).
    while (in_flight > 0) {
      struct io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(&ring.ring, &cqe);
      if (rc == -EINTR) continue;
      if (rc < 0) break;
      size_t index = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
      io_uring_cqe_seen(&ring.ring, cqe);
      --in_flight;
      finish_piece(index, s);
    }
    for (size_t index : ready) finish_piece(index, s);
    ready.clear();
  }

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Ring>> rings_;
  std::vector<Ring*> free_;
  std::map<uint64_t, std::vector<std::span<std::byte>>> owners_;  // AddBuffers id -> its buffers
  uint64_t next_owner_ = 0;
  std::vector<std::span<std::byte>> registered_;  // the union of the owners' buffers, sorted by address
  uint64_t generation_ = 1;
};

}  // namespace

Result<std::unique_ptr<IoEngine>> CreatePreadEngine(const IoEngineOptions& options) {
  return std::unique_ptr<IoEngine>(new PreadEngine(options));
}

Result<std::unique_ptr<IoEngine>> CreateUringEngine(const IoEngineOptions& options) {
  auto engine = std::make_unique<UringEngine>(options);
  Status s = engine->Init();
  if (!s.ok()) return Status::NotSupported(s.message());
  return std::unique_ptr<IoEngine>(std::move(engine));
}

Result<std::unique_ptr<IoEngine>> CreateIoEngine(IoEngineKind kind, const IoEngineOptions& options) {
  if (options.max_request_bytes % kDirectIoAlignment != 0) {
    return Status::InvalidArgument("max_request_bytes must be a multiple of 4096");
  }
  if (kind == IoEngineKind::kAuto) {
    if (const char* env = ::getenv("EXPERTSTORE_IO_ENGINE"); env != nullptr && *env != '\0') {
      ES_ASSIGN_OR_RETURN(kind, ParseIoEngineKind(env));
    }
  }
  switch (kind) {
    case IoEngineKind::kPread: return CreatePreadEngine(options);
    case IoEngineKind::kUring: return CreateUringEngine(options);
    case IoEngineKind::kAuto: {
      auto uring = CreateUringEngine(options);
      if (uring.ok()) return uring;
      return CreatePreadEngine(options);
    }
  }
  return Status::InvalidArgument("unknown I/O engine kind");
}

}  // namespace es
