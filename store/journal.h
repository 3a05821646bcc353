// The metadata journal: how a process that finds the store held by another writer (STORE/LOCK) still records
// usage, trust and profiles. Each such process appends framed, checksummed, fdatasync'd records to a file of
// its own under STORE/journal/; the writer merges every file into the catalog exactly once, committing each
// merged range together with a marker of how far the file has been consumed (docs/catalog_schema.md).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "store/catalog.h"
#include "store/base/file_system.h"
#include "store/base/status.h"

namespace es {

inline constexpr std::string_view kJournalDirName = "journal";
inline constexpr std::string_view kJournalSuffix = ".jnl";
// A journal file being created: it holds no records yet and becomes `.jnl` by rename.
inline constexpr std::string_view kJournalTmpSuffix = ".jnl.tmp";
// The meta column family key prefix of the consumed-offset markers: "journal/<file name>" -> decimal offset.
inline constexpr std::string_view kJournalMarkerPrefix = "journal/";

// File header: magic (8 bytes), version (u32 LE), reserved (u32, zero).
inline constexpr std::string_view kJournalMagic = "ESJOURNL";
inline constexpr uint32_t kJournalVersion = 1;
inline constexpr uint64_t kJournalHeaderSize = 16;
// Record frame: magic (u32 LE), payload length (u32 LE), xxh3-64 of the payload (u64 LE), then the payload.
inline constexpr uint32_t kJournalRecordMagic = 0x4345524a;  // "JREC" read little-endian
inline constexpr uint64_t kJournalFrameHeaderSize = 16;
// No record is larger: a length beyond it can only be a torn or damaged frame.
inline constexpr uint64_t kMaxJournalRecordBytes = 256ull << 20;

// True for the mutations a journal may carry: usage merges, trust and profile puts. Anything else (deleting,
// touching models or experts) needs the writer.
bool JournalAccepts(CatalogBatch::OpKind kind, Cf cf);

// One record's payload: u32 entry count, then per entry u8 kind, u8 column family, u32 key length, key,
// u32 value length, value (all little-endian). InvalidArgument for a mutation the journal does not accept.
Result<std::string> EncodeJournalPayload(const CatalogBatch& batch);
// The inverse; Corruption when the payload is malformed or holds a mutation the journal does not accept.
Result<CatalogBatch> DecodeJournalPayload(std::string_view payload);
// A full frame (header + payload) for `payload`.
std::string FrameJournalRecord(std::string_view payload);

// One process's journal file, created with a unique name and held under an flock for as long as this object
// lives (which tells the merging writer that more records may come). Thread-safe: appends are serialised.
class JournalWriter {
 public:
  // Creates `dir` if needed and a new journal file in it: written and synced as `<name>.jnl.tmp` under the
  // lock, then renamed to `<name>.jnl` and the directory synced, so a merger never sees a half-made header.
  static Result<std::unique_ptr<JournalWriter>> Create(std::shared_ptr<FileSystem> fs, const std::string& dir);
  ~JournalWriter();

  // Appends `batch` as one record and makes it durable (fdatasync) before returning. After a failed write or
  // sync the journal refuses every later append (the tail may be torn; the merger ignores a torn tail, and
  // nothing valid may ever follow it).
  Status Append(const CatalogBatch& batch);
  const std::string& path() const { return path_; }
  uint64_t size() const;

 private:
  JournalWriter() = default;
  std::shared_ptr<FileSystem> fs_;
  std::unique_ptr<FileLock> lock_;
  std::unique_ptr<File> file_;
  std::string path_;
  mutable std::mutex mu_;
  uint64_t end_ = 0;
  Status failed_;
};

struct JournalMergeStats {
  uint64_t files = 0;          // journal files examined
  uint64_t records = 0;        // records merged into the catalog
  uint64_t entries = 0;        // catalog mutations applied
  uint64_t files_removed = 0;  // finished files fully consumed and deleted
  uint64_t torn_tails = 0;     // finished files whose last append was interrupted (its bytes ignored)
  uint64_t stale_tmp_removed = 0;
  std::vector<std::string> damaged;  // files left alone: a bad header or marker ("name: why")
  void Add(const JournalMergeStats& other);
};

// Merges every journal file in `dir` into `catalog`, which the caller writes as the store's one writer (it
// holds STORE/LOCK). Per file: records after the file's marker are applied in catalog batches, each committing
// the new marker with the mutations it covers (sync), so a crash at any point neither loses nor repeats a
// record. A file whose owner is gone (its flock can be taken) is consumed to its end, a torn tail ignored,
// then deleted, and its marker removed after the deletion is durable. A live file is consumed up to its last
// complete record. Not thread-safe: one merge at a time (Store serialises them).
Result<JournalMergeStats> MergeJournals(FileSystem& fs, const std::string& dir, Catalog& catalog);

}  // namespace es
