// WarmTier: the local copies of an attached tier's records (`--local-cache-gb`), so that a node's own disk holds
// its hot experts and a miss of the RAM cache goes to the pool only once. One file per record under
// <store>/warm/<tier>/ (the record's bytes, exactly as in the pool), written in the background through a
// temporary file and a rename (temporaries are removed at open), verified against the catalog's extent before it
// is written and again whenever it is read (a damaged copy, a crash's torn one included, is removed and the record
// fetched from the pool again: so the copies need no sync), and evicted least recently used once the
// copies exceed the capacity. Files and not segment records: an evicted copy is space given back at once, where a
// segment record would be dead space until a compaction. Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "store/base/status.h"
#include "store/io_engine.h"
#include "store/segment_format.h"

namespace es::remote {

struct WarmTierStats {
  uint64_t hits = 0;        // records read from a local copy
  uint64_t misses = 0;      // records not held
  uint64_t written = 0;     // copies written
  uint64_t evicted = 0;     // copies removed to stay within the capacity
  uint64_t damaged = 0;     // copies that failed verification when read (removed)
  uint64_t dropped = 0;     // copies not written: the write queue was full
  uint64_t files = 0;       // copies held now
  uint64_t bytes = 0;       // ... and their bytes
};

class WarmTier {
 public:
  // Opens (creating) `dir`, removes unfinished temporaries, indexes the copies there (oldest first by modification
  // time) and evicts beyond `capacity_bytes`.
  static Result<std::unique_ptr<WarmTier>> Open(const std::string& dir, uint64_t capacity_bytes);
  // Finishes the queued writes.
  ~WarmTier();
  WarmTier(const WarmTier&) = delete;
  WarmTier& operator=(const WarmTier&) = delete;

  // The file name of a remote record's copy.
  static std::string KeyOf(const Extent& remote_extent);
  // Fills `record` (extent.record_length bytes) from the local copy and verifies it; false when there is none or
  // it is damaged (then removed).
  bool Read(const Extent& extent, std::span<std::byte> record);
  // The same for several records, read at once (O_DIRECT, all in flight, into 4 KiB-aligned buffers). hit[i] says
  // whether records[i] was filled.
  struct Wanted {
    Extent extent;
    std::span<std::byte> record;
  };
  std::vector<bool> ReadBatch(std::span<const Wanted> wanted);
  // Keeps a copy of a record just fetched (unverified: verified before it is written), unless the queue of writes
  // is full.
  void Offer(const Extent& extent, std::span<const std::byte> record);
  // Waits until the queued writes are done (tests, benchmarks).
  void Flush();
  WarmTierStats stats() const;
  const std::string& dir() const { return dir_; }

 private:
  WarmTier(std::string dir, uint64_t capacity);
  void WriterLoop();
  // Requires mu_. Removes least recently used copies until the bytes fit.
  void EvictLocked();
  // Requires mu_. Forgets and removes a copy.
  void DropLocked(const std::string& key);

  struct Pending {
    Extent extent;
    std::string bytes;
  };
  const std::string dir_;
  const uint64_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, idle_cv_;
  std::list<std::string> lru_;  // least recently used first
  struct Copy {
    uint64_t bytes = 0;
    std::list<std::string>::iterator pos;
  };
  std::map<std::string, Copy> copies_;
  std::deque<Pending> queue_;
  uint64_t queued_bytes_ = 0;
  bool writing_ = false;
  bool stop_ = false;
  WarmTierStats stats_;
  std::mutex io_mu_;  // one batch at a time through io_
  std::unique_ptr<IoEngine> io_;
  std::thread writer_;
};

}  // namespace es::remote
