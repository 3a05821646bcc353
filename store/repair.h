// Repair: rebuilds a store's catalog from its segments, as LevelDB's RepairDB rebuilds a database from its files
// (docs/segment_format.md, Repair). The segments hold a catalog log (store/catalog_log.h): the changes every commit
// made to the catalog's record entries, and snapshots of them. Repair scans every record header, replays the log
// from the newest intact snapshot, checks every record the result references (dropping those that fail, and
// marking their models incomplete), carries over the metadata (usage, trust, profiles, journal positions) that can
// be salvaged from the old catalog, and only then puts the new catalog in place. The old catalog is kept beside it
// (`catalog.damaged-UNIXTIME`). Repair changes no segment byte; the next writer's open removes what lies past the
// last intact record of the last segment, as it removes a torn append.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "store/base/file_system.h"
#include "store/base/status.h"

namespace es {

struct RepairedModel {
  std::string name;
  uint64_t experts = 0;
  uint64_t tensors = 0;
  uint64_t assets = 0;
  bool complete = false;             // as the catalog said, unless entries had to be dropped
  std::vector<std::string> dropped;  // entries whose records failed their checks ("expert m/3/17: ...")
};

struct RepairReport {
  uint32_t segments = 0;
  uint64_t records = 0;             // intact record headers found
  uint64_t damaged_bytes = 0;       // bytes skipped over because no intact record header described them
  uint64_t log_records = 0;         // catalog-log records replayed
  uint64_t snapshot_sequence = 0;   // the snapshot replay started from (0: the log from its first commit)
  uint64_t last_sequence = 0;       // the last commit replayed
  std::vector<std::string> problems;  // damaged log records, commits missing from the log, damaged segment headers
  std::vector<RepairedModel> models;
  uint64_t metadata_entries = 0;    // usage, trust and profile entries carried over from the old catalog
  std::string metadata_error;       // why metadata could not be salvaged ("" when it was, or there was no catalog)
  std::string old_catalog;          // where the replaced catalog was moved ("" when there was none)
};

// Needs the writer lock (no other process may have the store open for writing). NotFound when there are no
// segments; NotSupported when the segments hold no catalog log (a version-1 store that no writer of this version
// has opened): nothing is changed then. `fs` (null: the real one) reads the segments; the catalog
// directories are RocksDB's and use the real file system.
Result<RepairReport> RepairStore(const std::string& path, std::shared_ptr<FileSystem> fs = nullptr);

}  // namespace es
