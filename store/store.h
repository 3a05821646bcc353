// Store: one expertstore directory (docs/segment_format.md, docs/catalog_schema.md):
//   STORE/catalog/   RocksDB catalog        STORE/segments/  append-only segment files
//   STORE/LOCK       held by the one writer process (flock)
//   STORE/journal/   metadata appended by read-only processes, merged by the writer (store/journal.h)
// A writer recovers on open (removes unpublished .tmp segments, truncates torn tails no catalog entry
// references). Readers open beside a running writer without the lock. Data is made durable before the
// catalog batch that references it commits, so nothing the catalog references is ever lost.
// Thread safety: every method is thread-safe; write transactions are serialised (one at a time).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "store/catalog.h"
#include "store/catalog_log.h"
#include "store/extent_reader.h"
#include "store/base/file_system.h"
#include "store/io_engine.h"
#include "store/journal.h"
#include "store/records.h"
#include "store/segment_writer.h"
#include "store/base/status.h"

namespace es {

struct StoreOptions {
  bool read_only = false;
  bool create_if_missing = true;  // writers only
  IoEngineKind io_engine = IoEngineKind::kAuto;
  IoEngineOptions io;
  uint64_t max_segment_bytes = 1ull << 30;
  std::shared_ptr<FileSystem> fs;  // null: the real file system
};

class Store;
struct ExtentRef;

// A write transaction: records appended to segments plus catalog mutations, committed together (data
// fdatasync'd first, then the catalog batch with sync). Destroying it uncommitted rolls the data back.
class WriteTxn {
 public:
  ~WriteTxn();
  WriteTxn(const WriteTxn&) = delete;
  WriteTxn& operator=(const WriteTxn&) = delete;

  // Streams one record (payload_length bytes through WritePayload) and returns where it lives.
  Status BeginRecord(RecordKind kind, std::string key, uint64_t payload_length);
  Status WritePayload(std::span<const std::byte> data);
  Result<Extent> FinishRecord();
  // The three above for a payload already in memory.
  Result<Extent> AppendRecord(RecordKind kind, std::string key, std::span<const std::byte> payload);

  // Catalog mutations to commit with the data.
  CatalogBatch& batch() { return batch_; }

  Status Commit();
  // Commits as Commit does, but the catalog log gets a snapshot of the record entries as this commit leaves them
  // instead of this commit's changes, and the references to earlier log records are dropped (their records become
  // dead space). Compaction's last commit, and a version-1 store's upgrade.
  Status CommitWithSnapshot();
  // Drops everything appended; the catalog is untouched.
  Status Abort();
  // Starts a new segment now: nothing more is appended to the one that was active (compaction empties it).
  Status SealSegment();
  // Where the next record would go.
  SegmentWriter::Position position() const;

 private:
  friend class Store;
  WriteTxn(Store* store, std::unique_lock<std::mutex> lock, SegmentWriter::Position start);

  // Appends the catalog-log record of `entries` (a commit's record mutations, or a snapshot) and stages its
  // reference in the batch.
  Status AppendCatalogLog(bool snapshot, std::vector<CatalogLogEntry> entries);

  Store* store_;
  std::unique_lock<std::mutex> lock_;
  SegmentWriter::Position start_;
  uint64_t next_log_sequence_ = 0;  // the store's next sequence once this transaction commits
  bool logged_ = false;             // the catalog-log record of this commit is appended
  CatalogBatch batch_;
  bool done_ = false;
  Status failed_;
};

struct CorruptEntry {
  std::string what;     // "expert m/3/17", "tensor m/model.embed_tokens.weight", "segment 000002.seg", ...
  std::string message;
};

// One segment file's space: the records the catalog references, and the rest past the header (records of removed
// or replaced models, rolled-back transactions), which only compaction could reclaim.
struct SegmentSpace {
  uint32_t segment = 0;
  uint64_t file_bytes = 0;
  uint64_t live_bytes = 0;  // record lengths of the extents the catalog references
  uint64_t record_bytes() const;  // past the segment header
  uint64_t dead_bytes() const;
};

// What RemoveDeadSegments did.
struct DeadSegmentRemoval {
  std::vector<uint32_t> removed;
  uint64_t bytes_freed = 0;
  std::vector<uint32_t> kept_for_readers;  // dead, but a reader process has the store open
};

struct VerifyReport {
  uint64_t checked = 0;  // extents read and checked
  uint64_t bytes = 0;    // payload bytes checked
  std::vector<CorruptEntry> corrupt;
  std::vector<SegmentSpace> segments;  // every segment file, by id (whole-store verifies only)
  uint64_t remote = 0;   // records of attached remote tiers: in the catalog, not in any local segment, not read
  bool ok() const { return corrupt.empty(); }
};

class Store {
 public:
  static Result<std::unique_ptr<Store>> Open(const std::string& path, const StoreOptions& options);
  ~Store();

  const std::string& path() const { return path_; }
  const std::string& segments_dir() const { return segments_dir_; }
  bool read_only() const { return read_only_; }
  Catalog& catalog() { return *catalog_; }
  ExtentReader& reader() { return *reader_; }
  FileSystem& fs() { return *fs_; }

  // Starts the (single) write transaction; blocks while another is open in this process.
  Result<std::unique_ptr<WriteTxn>> BeginWrite();

  // Re-reads every extent the catalog references (of one model, or all when model is empty) and checks its
  // checksum, header, padding, that it lies inside an existing segment and overlaps no other extent, and that
  // every catalog value decodes. A non-OK Status means verify itself could not run.
  Result<VerifyReport> Verify(const std::string& model = "");

  // Lists the models in the catalog.
  Result<std::vector<ModelInfo>> ListModels();
  // A model asset's bytes (tokenizer.json, ...), verified. NotFound when the model has no such asset.
  Result<std::string> ReadAsset(const ModelInfo& model, std::string_view asset);
  // Writer only: stores `bytes` as the model's asset `asset` in one transaction, replacing an asset of that name
  // (whose record becomes dead space). NotFound for an unknown model; InvalidArgument for a model attached from a
  // remote tier (its records live in the pool).
  Status PutAsset(const std::string& model, std::string_view asset, std::string_view bytes);

  // True when the writer refused further writes after a failed fsync.
  bool writer_dead() const;
  // Writer only: removes the sealed segment files that the catalog no longer references (emptied by compaction,
  // or holding only records of removed models). While another process has the store open for reading (it may
  // hold extents into them) they stay, and a later call (every writer's open runs one) removes them. Segments this
  // process's reader has open stay readable through it until the store closes.
  Result<DeadSegmentRemoval> RemoveDeadSegments();
  // True when another process has the store open read-only (a reader holds STORE/READERS shared).
  bool ReadersPresent();
  // How many catalog-log records the catalog references.
  Result<uint64_t> CatalogLogRecords();

  // ---- metadata (usage, trust, profiles): from the writer or from read-only processes ----
  // Applies a batch of usage merges and trust/profile puts: straight into the catalog (synced) in the writer;
  // in a read-only process, appended to this process's journal file (created on first use), which the writer
  // merges exactly once. Other mutations are InvalidArgument in a read-only process.
  Status WriteMetadata(const CatalogBatch& batch);
  // True when WriteMetadata goes to the journal (this process does not hold the writer lock).
  bool journaling() const { return read_only_; }
  // Writer only: merges every journal file into the catalog now (docs/catalog_schema.md). Writers also merge
  // on open (open_merge_stats()) and, after StartJournalMerging, periodically.
  Result<JournalMergeStats> MergeJournals();
  // Writer only: merges journals every `interval` on a background thread until the store closes. Errors of
  // the periodic merges are kept in journal_merge_status().
  Status StartJournalMerging(std::chrono::milliseconds interval);
  Status journal_merge_status() const;
  const JournalMergeStats& open_merge_stats() const { return open_merge_stats_; }
  std::string journal_dir() const;

 private:
  friend class WriteTxn;
  Store() = default;
  Status Recover();
  // A transaction that only writes a catalog-log snapshot and records this build's format version.
  Status UpgradeFormat();
  // RemoveDeadSegments over what the caller read: every catalog reference and the segment files' sizes (the
  // write lock held, or the store still opening).
  Result<DeadSegmentRemoval> RemoveUnreferenced(const std::vector<ExtentRef>& refs,
                                                const std::map<uint32_t, uint64_t>& sizes);
  void StopJournalMerging();

  std::string path_;
  std::string segments_dir_;
  bool read_only_ = false;
  std::shared_ptr<FileSystem> fs_;
  std::unique_ptr<FileLock> lock_;
  std::unique_ptr<FileLock> readers_lock_;  // read-only processes: STORE/READERS, shared
  std::unique_ptr<Catalog> catalog_;
  std::unique_ptr<ExtentReader> reader_;
  std::unique_ptr<SegmentWriter> writer_;
  uint64_t max_segment_bytes_ = 0;
  std::mutex write_mu_;
  uint64_t next_log_sequence_ = 1;  // writer: the sequence of the next catalog-log record (guarded by write_mu_)

  std::mutex journal_mu_;  // guards journal_ and serialises merges
  std::unique_ptr<JournalWriter> journal_;
  JournalMergeStats open_merge_stats_;
  std::thread merger_;
  mutable std::mutex merger_mu_;
  std::condition_variable merger_cv_;
  bool merger_stop_ = false;
  Status merger_status_;
};

// Removes every catalog entry of a model (model record, tensors, experts, usage, trust, profiles) in one atomic
// batch. Its records become dead space in the segments. Needs the writer.
Status DeleteModel(Store& store, const std::string& name);
// The deletions DeleteModel commits, added to `batch` (a transaction's, so that they commit with its writes).
Status StageModelDeletion(const Catalog& catalog, const std::string& name, CatalogBatch& batch);
// The remote tier a model is attached from (its tensors' extents name it), or nullopt for a local model.
Result<std::optional<uint32_t>> AttachedTier(const Catalog& catalog, const std::string& name);

// The size of every segment file under `dir` (`NNNNNN.seg`; temporaries and other files are left out), by id.
// Empty when there is no such directory.
Result<std::map<uint32_t, uint64_t>> SegmentFileSizes(FileSystem& fs, const std::string& dir);

// The catalog's record of its store's format and of where the last commit's data ended (`meta` entries written by
// Store and by RepairStore).
inline constexpr std::string_view kFormatVersionKey = "format_version";
inline constexpr std::string_view kFormatVersion = "2";
inline constexpr std::string_view kWritePositionKey = "write_position";
std::string EncodeWritePosition(SegmentWriter::Position p);

// Every local extent the catalog references, with a description, in key order (verify, recovery, compaction,
// tools); for the whole store (model empty) also the catalog-log records. Extents of remote tiers (IsRemote) go to
// *remote instead (dropped when it is null).
struct ExtentRef {
  std::string what;
  std::string record_key;  // the key stored in the record header
  Extent extent;
};
Status CollectExtents(const Catalog& catalog, const std::string& model, std::vector<ExtentRef>& out,
                      std::vector<CorruptEntry>& undecodable, std::vector<ExtentRef>* remote = nullptr);
// Reads the records `refs` describe and checks each as verify does (inside an existing segment with a valid header,
// no overlaps, header key, length, checksum, padding); what fails is added to report.corrupt.
Status CheckExtents(ExtentReader& reader, const std::vector<ExtentRef>& refs, VerifyReport& report);
// Every segment file's space, by id: its size, and the record lengths `refs` place in it.
Result<std::vector<SegmentSpace>> SegmentSpaces(FileSystem& fs, const std::string& dir, const std::vector<ExtentRef>& refs);

}  // namespace es
