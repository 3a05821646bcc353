// ExtentReader: reads whole segment records in batches through an IoEngine and verifies each one (header,
// length, payload checksum, zero padding) before handing its payload out. A mismatch is Corruption; garbage
// is never returned. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "store/base/aligned_buffer.h"
#include "store/base/file_system.h"
#include "store/io_engine.h"
#include "store/segment_format.h"
#include "store/base/status.h"

namespace es {

struct ExtentRead {
  Extent extent;
  // Caller-owned, 4 KiB-aligned, at least extent.record_length bytes; must outlive ReadBatch.
  std::span<std::byte> buffer;
  // Outputs.
  Status status;
  std::span<const std::byte> payload;  // inside `buffer`, valid while the buffer is
};

// Where the records of a remote tier are read from (remote/: a RADOS pool). Thread-safe.
class RecordSource {
 public:
  struct Fetch {
    Extent extent;               // IsRemote(extent)
    std::span<std::byte> record;  // extent.record_length bytes to fill with the record's raw bytes
    Status status;
  };
  virtual ~RecordSource() = default;
  // Fills each fetch's record (many in flight); each gets its own status. `on_fetched(i)`, when set, is called
  // once fetch i is complete (its status set), in order, while later fetches may still be in flight, so that
  // the reader verifies what arrived meanwhile.
  virtual void FetchRecords(std::span<Fetch> fetches, const std::function<void(size_t)>& on_fetched) = 0;
  // Where a record is, for messages ("object POOL/NAME").
  virtual std::string Describe(const Extent& extent) const = 0;
};

class ExtentReader {
 public:
  ExtentReader(std::shared_ptr<FileSystem> fs, std::string segments_dir, std::unique_ptr<IoEngine> engine);
  ~ExtentReader();

  // Reads and verifies every request; each gets its own status.
  void ReadBatch(std::span<ExtentRead> reads);
  // One record read and verified into a buffer of its own (`payload` points into `buffer`, and stays valid when the
  // result is moved). ResourceExhausted when the buffer cannot be allocated; the read's own error otherwise.
  struct Record {
    AlignedBuffer buffer;
    std::span<const std::byte> payload;
  };
  Result<Record> ReadRecord(const Extent& extent);
  // The raw record bytes, not verified (verify and debugging tools).
  void ReadRaw(std::span<ExtentRead> reads);

  IoEngine& engine() { return *engine_; }
  // Remote extents of tier `tier` are read from `source` from now on (null: no longer). Until a source is set
  // their reads fail with Unavailable naming the tier.
  void SetRecordSource(uint32_t tier, std::shared_ptr<RecordSource> source);
  // The open segment file, opened on first use (O_DIRECT where the file system allows it).
  Result<File*> Segment(uint32_t id);

 private:
  void Read(std::span<ExtentRead> reads, bool verify);
  // The remote ones of `reads` (IsRemote), fetched from their tiers' sources and verified.
  void ReadRemote(std::span<ExtentRead> reads, const std::vector<size_t>& remote, bool verify);

  std::shared_ptr<FileSystem> fs_;
  std::string dir_;
  std::unique_ptr<IoEngine> engine_;
  std::mutex mu_;
  std::map<uint32_t, std::unique_ptr<File>> segments_;
  std::map<uint32_t, std::shared_ptr<RecordSource>> sources_;  // under mu_
};

}  // namespace es
