// Compaction: reclaims the dead space in segment files (records of removed or replaced models, rolled-back
// transactions). The live records of every segment whose dead share is above a threshold are copied, verified,
// into new segments; each batch of copies commits with the catalog entries switched to them; the emptied segments
// are then removed, or kept while a reader process has the store open (docs/segment_format.md, Compaction).
// Crash-safe at every step: before a batch commits the catalog references the old copies, after it the new ones,
// and a segment is removed only once nothing references it.
#pragma once

#include <cstdint>
#include <vector>

#include "store/store.h"

namespace es {

struct CompactOptions {
  // A segment is compacted when its dead bytes are more than this share of its record bytes (0: any dead byte).
  double max_dead_fraction = 0.25;
  // Record bytes copied per transaction.
  uint64_t batch_bytes = 256ull << 20;
};

struct CompactStats {
  uint32_t segments_before = 0;
  uint64_t file_bytes_before = 0;
  uint64_t dead_bytes_before = 0;
  std::vector<uint32_t> compacted;  // segments whose live records were moved out
  uint64_t records_moved = 0;
  uint64_t bytes_moved = 0;  // record bytes copied (headers and padding included)
  uint32_t commits = 0;
  bool log_snapshot = false;  // a catalog-log snapshot replaced the log records before it
  DeadSegmentRemoval removal;
};

// Writer only. Corruption when a record to be moved fails its checks (nothing of it is copied; the batches
// committed before it stand) or when catalog entries do not decode (run verify).
Result<CompactStats> Compact(Store& store, const CompactOptions& options);

}  // namespace es
