// SegmentWriter: appends records to the active segment file, publishes new segments atomically
// (create .tmp, write header, fsync, rename, fsync directory) and rolls back what a failed or abandoned
// transaction appended. Once an fsync fails the writer is dead: every later call returns IOError, since
// the kernel may have dropped the dirty pages it could not write (fsyncgate), and a retry would lie.
// Not thread-safe: the Store serialises transactions.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "store/base/aligned_buffer.h"
#include "store/base/checksum.h"
#include "store/base/file_system.h"
#include "store/segment_format.h"
#include "store/base/status.h"

namespace es {

class SegmentWriter {
 public:
  struct Position {
    uint32_t segment = 0;  // the last segment created (0: none yet)
    uint64_t offset = 0;   // where its next record goes; 0 when it is not open for appending
  };

  SegmentWriter(std::shared_ptr<FileSystem> fs, std::string segments_dir, uint64_t max_segment_bytes);
  ~SegmentWriter();

  // Continues appending at the end of `last_segment` (its size after recovery); the first record starts a
  // new segment when there is none (0), or it is full or damaged.
  Status Open(uint32_t last_segment, uint64_t last_segment_size);

  // Where the next record would go.
  Position position() const { return {active_id_, active_ ? tail_ : 0}; }

  // Streams one record: Begin, then payload bytes summing to payload_length, then Finish. The record is not
  // durable until Sync().
  Status BeginRecord(RecordKind kind, std::string key, uint64_t payload_length);
  Status WritePayload(std::span<const std::byte> data);
  Result<Extent> FinishRecord();

  // fdatasync every segment written since the last Sync. Failure kills the writer.
  Status Sync();
  // Starts the next segment now (published empty), so that nothing more is appended to the current one.
  Status Seal();
  // Drops everything appended after `pos` (which must come from position()): truncates the active segment
  // and removes segments created since. Failure kills the writer.
  Status RollbackTo(Position pos);

  bool dead() const { return !dead_reason_.ok(); }
  const Status& dead_reason() const { return dead_reason_; }

 private:
  Status CheckAlive() const;
  Status Kill(Status why);
  Status StartSegment(uint32_t id);
  Status FlushStaging();

  std::shared_ptr<FileSystem> fs_;
  std::string dir_;
  uint64_t max_segment_bytes_;
  Status dead_reason_;

  uint32_t active_id_ = 0;
  std::unique_ptr<File> active_;
  uint64_t tail_ = 0;                    // end of the last finished record
  std::vector<std::unique_ptr<File>> unsynced_sealed_;  // earlier segments written since the last Sync
  std::vector<uint32_t> created_since_sync_;  // segment ids created since the last Sync (for rollback)
  bool active_dirty_ = false;

  // The record being written.
  bool in_record_ = false;
  RecordHeader header_;
  uint64_t record_offset_ = 0;
  uint64_t payload_written_ = 0;
  uint64_t staged_from_ = 0;  // file offset of staging_[0]
  size_t staged_ = 0;
  AlignedBuffer staging_;
  Xxh3Stream hash_;
};

}  // namespace es
