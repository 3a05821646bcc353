// Store: open, locking, crash recovery and write transactions.
#include "store/store.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <optional>
#include <set>

#include "store/base/aligned_buffer.h"
#include "store/base/thread_pool.h"
#include "store/metadata.h"

namespace es {

namespace {
constexpr std::string_view kCatalogDir = "catalog";
constexpr std::string_view kSegmentsDir = "segments";
constexpr std::string_view kLockFile = "LOCK";
constexpr std::string_view kTmpSuffix = ".tmp";
// Version 2 (kFormatVersion) added the catalog log (store/catalog_log.h). A writer upgrades a version-1 store by
// writing its first snapshot; readers read both.
constexpr std::string_view kLegacyFormatVersion = "1";
// Read-only processes hold this file shared while they have the store open; the writer removes dead segments only
// when it can lock it exclusively.
constexpr std::string_view kReadersFile = "READERS";
// Said wherever an open stops at a catalog that disagrees with the segments.
constexpr std::string_view kRepairHint = " (`expertstore repair` rebuilds the catalog from the segments)";

Result<SegmentWriter::Position> DecodeWritePosition(std::string_view v) {
  SegmentWriter::Position p;
  const char* end = v.data() + v.size();
  auto [colon, ec1] = std::from_chars(v.data(), end, p.segment);
  if (ec1 == std::errc() && colon != end && *colon == ':') {
    auto [last, ec2] = std::from_chars(colon + 1, end, p.offset);
    if (ec2 == std::errc() && last == end) return p;
  }
  return Status::Corruption("catalog meta write_position is malformed: " + std::string(v));
}
}  // namespace

// Where the last committed transaction's data ended: "segment:offset" (docs/segment_format.md, Recovery).
std::string EncodeWritePosition(SegmentWriter::Position p) {
  return std::to_string(p.segment) + ":" + std::to_string(p.offset);
}

// ---- WriteTxn -------------------------------------------------------------------------------------------

WriteTxn::WriteTxn(Store* store, std::unique_lock<std::mutex> lock, SegmentWriter::Position start)
    : store_(store), lock_(std::move(lock)), start_(start), next_log_sequence_(store->next_log_sequence_) {}

WriteTxn::~WriteTxn() {
  if (!done_) Abort().IgnoreError();  // a failed rollback already marked the writer dead
}

Status WriteTxn::BeginRecord(RecordKind kind, std::string key, uint64_t payload_length) {
  if (done_) return Status::InvalidArgument("transaction already finished");
  if (!failed_.ok()) return failed_;
  Status s = store_->writer_->BeginRecord(kind, std::move(key), payload_length);
  if (!s.ok()) failed_ = s;
  return s;
}

Status WriteTxn::WritePayload(std::span<const std::byte> data) {
  if (!failed_.ok()) return failed_;
  Status s = store_->writer_->WritePayload(data);
  if (!s.ok()) failed_ = s;
  return s;
}

Result<Extent> WriteTxn::FinishRecord() {
  if (!failed_.ok()) return failed_;
  auto e = store_->writer_->FinishRecord();
  if (!e.ok()) failed_ = e.status();
  return e;
}

Result<Extent> WriteTxn::AppendRecord(RecordKind kind, std::string key, std::span<const std::byte> payload) {
  ES_RETURN_IF_ERROR(BeginRecord(kind, std::move(key), payload.size()));
  ES_RETURN_IF_ERROR(WritePayload(payload));
  return FinishRecord();
}

Status WriteTxn::AppendCatalogLog(bool snapshot, std::vector<CatalogLogEntry> entries) {
  const CatalogLog log{next_log_sequence_, snapshot, std::move(entries)};
  const std::string payload = EncodeCatalogLog(log);
  const std::string key = CatalogLogKey(log.sequence);
  ES_ASSIGN_OR_RETURN(Extent at, AppendRecord(RecordKind::kCatalogLog, key, std::as_bytes(std::span(payload))));
  batch_.Put(Cf::kMeta, key, EncodeCatalogLogRef(at));
  ++next_log_sequence_;
  logged_ = true;
  return Status::Ok();
}

Status WriteTxn::CommitWithSnapshot() {
  if (done_) return Status::InvalidArgument("transaction already finished");
  Status s = failed_;
  if (s.ok()) {
    // The record entries as this commit leaves them: the catalog's, with the batch's changes applied in order.
    std::map<std::pair<Cf, std::string>, std::string> entries;
    for (Cf cf : {Cf::kModels, Cf::kTensors, Cf::kExperts}) {
      if (s.ok()) {
        s = store_->catalog_->Scan(cf, "", [&](std::string_view key, std::string_view value) {
          entries[{cf, std::string(key)}] = value;
          return true;
        });
      }
    }
    for (CatalogLogEntry& m : RecordMutations(batch_)) {
      if (m.op == CatalogLogEntry::Op::kPut) {
        entries[{m.cf, std::move(m.key)}] = std::move(m.value);
      } else {
        entries.erase({m.cf, m.key});
      }
    }
    // The snapshot holds everything the earlier log records did.
    if (s.ok()) {
      s = store_->catalog_->Scan(Cf::kMeta, kCatalogLogKeyPrefix, [&](std::string_view key, std::string_view) {
        batch_.Delete(Cf::kMeta, key);
        return true;
      });
    }
    std::vector<CatalogLogEntry> snapshot;
    snapshot.reserve(entries.size());
    for (auto& [where, value] : entries) {
      snapshot.push_back({CatalogLogEntry::Op::kPut, where.first, where.second, std::move(value)});
    }
    if (s.ok()) s = AppendCatalogLog(/*snapshot=*/true, std::move(snapshot));
  }
  if (!s.ok()) {
    Abort().IgnoreError();
    return s;
  }
  return Commit();
}

Status WriteTxn::Commit() {
  if (done_) return Status::InvalidArgument("transaction already finished");
  if (!failed_.ok()) {
    Status why = failed_;
    Abort().IgnoreError();
    return why;
  }
  // The segments keep their own copy of what this commit changes in the catalog's record entries, written with the
  // data: `repair` rebuilds a lost catalog from it.
  std::vector<CatalogLogEntry> mutations = logged_ ? std::vector<CatalogLogEntry>() : RecordMutations(batch_);
  if (!mutations.empty()) {
    Status logged = AppendCatalogLog(/*snapshot=*/false, std::move(mutations));
    if (!logged.ok()) {
      Abort().IgnoreError();
      return logged;
    }
  }
  // Data first: only once every appended record is durable may the catalog reference it.
  Status s = store_->writer_->Sync();
  if (s.ok()) {
    // The catalog learns where committed data ends with the batch that references it: recovery keeps every
    // byte before it and knows a segment that holds fewer lost data.
    batch_.Put(Cf::kMeta, kWritePositionKey, EncodeWritePosition(store_->writer_->position()));
    s = store_->catalog_->Write(batch_, /*sync=*/true);
  }
  if (!s.ok()) {
    Abort().IgnoreError();
    return s;
  }
  done_ = true;
  store_->next_log_sequence_ = next_log_sequence_;
  lock_.unlock();
  return Status::Ok();
}

Status WriteTxn::Abort() {
  if (done_) return Status::Ok();
  done_ = true;
  Status s = store_->writer_->RollbackTo(start_);
  lock_.unlock();
  return s;
}

Status WriteTxn::SealSegment() {
  if (done_) return Status::InvalidArgument("transaction already finished");
  if (!failed_.ok()) return failed_;
  Status s = store_->writer_->Seal();
  if (!s.ok()) failed_ = s;
  return s;
}

SegmentWriter::Position WriteTxn::position() const { return store_->writer_->position(); }

// ---- Store ----------------------------------------------------------------------------------------------

Store::~Store() { StopJournalMerging(); }

namespace {

// Bytes past the segment headers in segment files of these sizes.
uint64_t RecordBytes(const std::map<uint32_t, uint64_t>& sizes) {
  uint64_t bytes = 0;
  for (const auto& [id, size] : sizes) bytes += SegmentSpace{id, size, 0}.record_bytes();
  return bytes;
}

}  // namespace

Result<std::map<uint32_t, uint64_t>> SegmentFileSizes(FileSystem& fs, const std::string& dir) {
  std::map<uint32_t, uint64_t> sizes;
  ES_ASSIGN_OR_RETURN(bool there, fs.Exists(dir));
  if (!there) return sizes;
  ES_ASSIGN_OR_RETURN(auto names, fs.ListDir(dir));
  for (const auto& name : names) {
    auto id = ParseSegmentFileName(name);
    if (!id) continue;
    ES_ASSIGN_OR_RETURN(auto file, fs.Open(JoinPath(dir, name), OpenOptions{}));
    ES_ASSIGN_OR_RETURN(sizes[*id], file->Size());
  }
  return sizes;
}

Result<std::unique_ptr<Store>> Store::Open(const std::string& path, const StoreOptions& options) {
  std::unique_ptr<Store> store(new Store());
  store->path_ = path;
  store->segments_dir_ = JoinPath(path, kSegmentsDir);
  store->read_only_ = options.read_only;
  store->fs_ = options.fs ? options.fs : DefaultFileSystem();
  store->max_segment_bytes_ = options.max_segment_bytes;
  FileSystem& fs = *store->fs_;

  ES_ASSIGN_OR_RETURN(bool exists, fs.Exists(JoinPath(path, kCatalogDir)));
  if (!exists) {
    // A catalog that is missing beside segments holding records was lost, not never made: opening it as a new
    // store would truncate every segment to its header.
    ES_ASSIGN_OR_RETURN(auto sizes, SegmentFileSizes(fs, store->segments_dir_));
    const uint64_t orphaned = RecordBytes(sizes);
    if (orphaned > 0) {
      return Status::Corruption("the store at " + path + " has no catalog, but its segments hold " +
                                std::to_string(orphaned) + " bytes of records: the catalog was lost; nothing was "
                                "changed" + std::string(kRepairHint));
    }
  }
  if (!exists && (options.read_only || !options.create_if_missing)) {
    return Status::NotFound("no expertstore at " + path);
  }
  if (!options.read_only) {
    // A new store's missing parent directories too (`--store runs/today/s`).
    ES_RETURN_IF_ERROR(CreateDirs(fs, path));
    ES_ASSIGN_OR_RETURN(store->lock_, fs.LockFile(JoinPath(path, kLockFile)));
    ES_RETURN_IF_ERROR(fs.CreateDir(store->segments_dir_));
    ES_RETURN_IF_ERROR(fs.Open(JoinPath(path, kReadersFile), OpenOptions{.write = true, .create = true}).status());
  } else {
    // Announced before the catalog is read, so that no segment the catalog references can be removed under this
    // reader. Stores on read-only media, or made before the file existed, have no writer to announce to.
    auto shared = fs.LockFileShared(JoinPath(path, kReadersFile));
    if (shared.ok()) store->readers_lock_ = std::move(shared).value();
  }
  // Only a new store creates its catalog: in an existing one, a catalog RocksDB cannot find (a lost CURRENT file)
  // is an error, never a fresh empty catalog over the old one's files.
  auto catalog = Catalog::Open(JoinPath(path, kCatalogDir), options.read_only, !exists);
  if (!catalog.ok()) {
    if (catalog.status().IsCorruption()) return Status::Corruption(catalog.status().message() + std::string(kRepairHint));
    return catalog.status();
  }
  store->catalog_ = std::move(catalog).value();
  if (!exists) {
    // A new store: record its format, and make its directories durable before anything is written into them.
    CatalogBatch batch;
    batch.Put(Cf::kMeta, kFormatVersionKey, kFormatVersion);
    // Nothing committed yet: segments written before the first commit are removed on open, never taken for a lost
    // catalog's.
    batch.Put(Cf::kMeta, kWritePositionKey, EncodeWritePosition({}));
    ES_RETURN_IF_ERROR(store->catalog_->Write(batch));
    ES_RETURN_IF_ERROR(fs.SyncDir(path));
  }
  bool legacy = false;  // a version-1 store (or one older still, with no version recorded)
  if (exists) {
    auto version = store->catalog_->Get(Cf::kMeta, kFormatVersionKey);
    if (!version.ok() && !version.status().IsNotFound()) return version.status();
    if (version.ok() && *version != kFormatVersion && *version != kLegacyFormatVersion) {
      return Status::NotSupported("store " + path + " has format version " + *version + "; this build reads " +
                                  std::string(kLegacyFormatVersion) + " and " + std::string(kFormatVersion));
    }
    legacy = !version.ok() || *version == kLegacyFormatVersion;
  }
  ES_ASSIGN_OR_RETURN(auto engine, CreateIoEngine(options.io_engine, options.io));
  store->reader_ = std::make_unique<ExtentReader>(store->fs_, store->segments_dir_, std::move(engine));
  if (!options.read_only) {
    ES_RETURN_IF_ERROR(store->Recover());
    // What read-only processes recorded while no writer ran (or before the last writer merged it).
    ES_ASSIGN_OR_RETURN(store->open_merge_stats_, store->MergeJournals());
    std::string last_log;
    ES_RETURN_IF_ERROR(store->catalog_->Scan(Cf::kMeta, kCatalogLogKeyPrefix, [&](std::string_view key, std::string_view) {
      last_log = key;
      return true;
    }));
    if (auto sequence = ParseCatalogLogKey(last_log)) store->next_log_sequence_ = *sequence + 1;
    // A version-1 store has no catalog log: its first snapshot makes it repairable, and version 2.
    if (legacy) ES_RETURN_IF_ERROR(store->UpgradeFormat());
  }
  return store;
}

Status Store::Recover() {
  ES_ASSIGN_OR_RETURN(auto names, fs_->ListDir(segments_dir_));
  std::map<uint32_t, uint64_t> referenced_end;  // segment -> end of its last referenced record
  std::vector<ExtentRef> refs;
  std::vector<CorruptEntry> undecodable;
  ES_RETURN_IF_ERROR(CollectExtents(*catalog_, "", refs, undecodable));
  for (const auto& r : refs) {
    uint64_t& end = referenced_end[r.extent.segment];
    end = std::max(end, r.extent.end());
  }
  bool removed_tmp = false;
  for (const auto& name : names) {
    if (name.ends_with(kTmpSuffix)) {
      // A segment whose publication never completed: nothing can reference it.
      ES_RETURN_IF_ERROR(fs_->Remove(JoinPath(segments_dir_, name)));
      removed_tmp = true;
    }
  }
  if (removed_tmp) ES_RETURN_IF_ERROR(fs_->SyncDir(segments_dir_));
  ES_ASSIGN_OR_RETURN(auto sizes, SegmentFileSizes(*fs_, segments_dir_));
  std::optional<SegmentWriter::Position> committed;
  auto wp = catalog_->Get(Cf::kMeta, kWritePositionKey);
  if (wp.ok()) {
    ES_ASSIGN_OR_RETURN(committed, DecodeWritePosition(*wp));
  } else if (!wp.status().IsNotFound()) {
    return wp.status();
  }
  auto truncate = [&](uint32_t id, uint64_t keep) -> Status {
    if (sizes[id] <= keep) return Status::Ok();
    ES_ASSIGN_OR_RETURN(auto file, fs_->Open(JoinPath(segments_dir_, SegmentFileName(id)), OpenOptions{.write = true}));
    ES_RETURN_IF_ERROR(file->Truncate(keep));
    ES_RETURN_IF_ERROR(file->Sync());
    sizes[id] = keep;
    return Status::Ok();
  };
  uint32_t last = sizes.empty() ? 0 : sizes.rbegin()->first;
  if (!committed) {
    // A store whose catalog has never recorded a commit position (written before it did, or never written to).
    // An empty catalog beside segments that hold records lost its entries: never treat it as a new store.
    const uint64_t record_bytes = RecordBytes(sizes);
    ES_ASSIGN_OR_RETURN(auto models, ListModels());
    if (refs.empty() && models.empty() && record_bytes > 0) {
      return Status::Corruption("the catalog of the store at " + path_ + " is empty, but its segments hold " +
                                std::to_string(record_bytes) + " bytes of records: the catalog lost its entries; "
                                "nothing was changed" + std::string(kRepairHint));
    }
    // Truncate every torn tail: bytes past the last referenced record were never acknowledged.
    for (const auto& [id, size] : sizes) {
      ES_RETURN_IF_ERROR(truncate(id, std::max<uint64_t>(kSegmentHeaderSize, referenced_end[id])));
    }
  } else {
    // Everything up to the commit position was acknowledged. A segment that holds less, or a reference past it,
    // means the catalog and the segments disagree: stop before changing anything.
    const SegmentWriter::Position c = *committed;
    if (!referenced_end.empty() && referenced_end.rbegin()->first > c.segment) {
      return Status::Corruption("the catalog of the store at " + path_ + " references segment " +
                                std::to_string(referenced_end.rbegin()->first) + ", past its last commit (segment " +
                                std::to_string(c.segment) + "); nothing was changed" + std::string(kRepairHint));
    }
    if (c.segment != 0) {
      auto it = sizes.find(c.segment);
      uint64_t need = std::max<uint64_t>(kSegmentHeaderSize, c.offset);
      if (it == sizes.end() || it->second < need) {
        return Status::Corruption("segment " + SegmentFileName(c.segment) + " of the store at " + path_ + " holds " +
                                  (it == sizes.end() ? std::string("nothing (it is missing)")
                                                     : std::to_string(it->second) + " bytes") +
                                  ", but the catalog's last commit wrote up to byte " + std::to_string(need) +
                                  ": committed data was lost; nothing was changed" + std::string(kRepairHint));
      }
    }
    // Segments created after the last commit, and the active segment's tail past it, were never acknowledged.
    bool removed = false;
    for (const auto& [id, size] : sizes) {
      if (id <= c.segment) continue;
      ES_RETURN_IF_ERROR(fs_->Remove(JoinPath(segments_dir_, SegmentFileName(id))));
      removed = true;
    }
    if (removed) ES_RETURN_IF_ERROR(fs_->SyncDir(segments_dir_));
    std::erase_if(sizes, [&](const auto& entry) { return entry.first > c.segment; });
    if (c.segment != 0) {
      ES_RETURN_IF_ERROR(truncate(c.segment, std::max({kSegmentHeaderSize, c.offset, referenced_end[c.segment]})));
    }
    last = c.segment;
  }
  writer_ = std::make_unique<SegmentWriter>(fs_, segments_dir_, max_segment_bytes_);
  ES_RETURN_IF_ERROR(writer_->Open(last, sizes.count(last) ? sizes[last] : 0));
  // What the catalog references and the sizes are as read above: nothing was written since.
  if (committed && undecodable.empty()) ES_RETURN_IF_ERROR(RemoveUnreferenced(refs, sizes).status());
  return Status::Ok();
}

Status Store::UpgradeFormat() {
  ES_ASSIGN_OR_RETURN(auto txn, BeginWrite());
  txn->batch().Put(Cf::kMeta, kFormatVersionKey, kFormatVersion);
  return txn->CommitWithSnapshot();
}

Result<uint64_t> Store::CatalogLogRecords() {
  uint64_t n = 0;
  ES_RETURN_IF_ERROR(catalog_->Scan(Cf::kMeta, kCatalogLogKeyPrefix, [&](std::string_view, std::string_view) {
    ++n;
    return true;
  }));
  return n;
}

bool Store::ReadersPresent() {
  // An exclusive lock is granted only while no reader holds the file shared; it is released at once.
  auto probe = fs_->LockFile(JoinPath(path_, kReadersFile));
  return !probe.ok();
}

Result<DeadSegmentRemoval> Store::RemoveDeadSegments() {
  if (read_only_) return Status::NotSupported("the store at " + path_ + " is open read-only");
  // No transaction in flight: the segments it creates are unreferenced until it commits.
  std::lock_guard lock(write_mu_);
  std::vector<ExtentRef> refs;
  std::vector<CorruptEntry> undecodable;
  ES_RETURN_IF_ERROR(CollectExtents(*catalog_, "", refs, undecodable));
  if (!undecodable.empty()) return DeadSegmentRemoval{};  // what the damaged entries reference is unknown: keep all
  ES_ASSIGN_OR_RETURN(auto sizes, SegmentFileSizes(*fs_, segments_dir_));
  return RemoveUnreferenced(refs, sizes);
}

Result<DeadSegmentRemoval> Store::RemoveUnreferenced(const std::vector<ExtentRef>& refs,
                                                     const std::map<uint32_t, uint64_t>& sizes) {
  DeadSegmentRemoval out;
  std::set<uint32_t> referenced;
  for (const auto& r : refs) referenced.insert(r.extent.segment);
  const uint32_t active = writer_->position().segment;
  std::vector<std::pair<uint32_t, uint64_t>> dead;
  for (const auto& [id, size] : sizes) {
    if (id < active && !referenced.contains(id)) dead.emplace_back(id, size);
  }
  if (dead.empty()) return out;
  if (ReadersPresent()) {
    for (const auto& [id, size] : dead) out.kept_for_readers.push_back(id);
    return out;
  }
  for (const auto& [id, size] : dead) {
    // Opened first: extents this process read from the catalog earlier stay readable until it closes the store.
    reader_->Segment(id).status().IgnoreError();
    ES_RETURN_IF_ERROR(fs_->Remove(JoinPath(segments_dir_, SegmentFileName(id))));
    out.removed.push_back(id);
    out.bytes_freed += size;
  }
  ES_RETURN_IF_ERROR(fs_->SyncDir(segments_dir_));
  return out;
}

Result<std::unique_ptr<WriteTxn>> Store::BeginWrite() {
  if (read_only_) return Status::NotSupported("the store at " + path_ + " is open read-only");
  std::unique_lock<std::mutex> lock(write_mu_);
  if (writer_->dead()) {
    return Status::IOError("the store's writer is read-only after an earlier failure: " +
                           writer_->dead_reason().ToString());
  }
  SegmentWriter::Position start = writer_->position();
  return std::unique_ptr<WriteTxn>(new WriteTxn(this, std::move(lock), start));
}

bool Store::writer_dead() const { return writer_ && writer_->dead(); }

Result<std::vector<ModelInfo>> Store::ListModels() {
  std::vector<ModelInfo> models;
  Status decode;
  ES_RETURN_IF_ERROR(catalog_->Scan(Cf::kModels, "", [&](std::string_view, std::string_view value) {
    auto m = DecodeModel(value);
    if (!m.ok()) {
      decode = m.status();
      return false;
    }
    models.push_back(std::move(m).value());
    return true;
  }));
  ES_RETURN_IF_ERROR(decode);
  return models;
}

}  // namespace es

namespace es {

Result<std::string> Store::ReadAsset(const ModelInfo& model, std::string_view asset) {
  for (const auto& a : model.assets) {
    if (a.name != asset) continue;
    auto record = reader_->ReadRecord(a.extent);
    if (!record.ok()) return record.status().WithContext("asset " + model.name + "/" + a.name);
    return std::string(reinterpret_cast<const char*>(record->payload.data()), record->payload.size());
  }
  return Status::NotFound("model '" + model.name + "' has no asset " + std::string(asset));
}

Status Store::PutAsset(const std::string& model, std::string_view asset, std::string_view bytes) {
  ES_ASSIGN_OR_RETURN(auto txn, BeginWrite());
  ES_ASSIGN_OR_RETURN(ModelInfo info, LoadModelInfo(*catalog_, model));
  ES_ASSIGN_OR_RETURN(std::optional<uint32_t> tier, AttachedTier(*catalog_, model));
  if (tier) {
    return Status::InvalidArgument("model '" + model + "' is attached from a remote tier: its assets are written "
                                   "where it was published");
  }
  ES_ASSIGN_OR_RETURN(Extent extent, txn->AppendRecord(RecordKind::kAsset, AssetRecordKey(model, asset),
                                                       std::as_bytes(std::span(bytes.data(), bytes.size()))));
  std::erase_if(info.assets, [&](const AssetInfo& a) {
    if (a.name != asset) return false;
    info.total_bytes -= std::min(info.total_bytes, a.extent.payload_length);
    return true;
  });
  info.assets.push_back({std::string(asset), extent});
  info.total_bytes += bytes.size();
  txn->batch().Put(Cf::kModels, ModelKey(model), EncodeModel(info));
  return txn->Commit();
}

}  // namespace es

namespace es {

std::string Store::journal_dir() const { return JoinPath(path_, kJournalDirName); }

Status Store::WriteMetadata(const CatalogBatch& batch) {
  if (batch.size() == 0) return Status::Ok();
  if (!read_only_) return catalog_->Write(batch, /*sync=*/true);
  std::lock_guard<std::mutex> lock(journal_mu_);
  if (!journal_) {
    ES_ASSIGN_OR_RETURN(journal_, JournalWriter::Create(fs_, journal_dir()));
  }
  return journal_->Append(batch);
}

Result<JournalMergeStats> Store::MergeJournals() {
  if (read_only_) return Status::NotSupported("the store at " + path_ + " is open read-only: only its writer merges journals");
  std::lock_guard<std::mutex> lock(journal_mu_);
  return ::es::MergeJournals(*fs_, journal_dir(), *catalog_);
}

Status Store::StartJournalMerging(std::chrono::milliseconds interval) {
  if (read_only_) return Status::NotSupported("only the store's writer merges journals");
  std::lock_guard<std::mutex> lock(merger_mu_);
  if (merger_.joinable()) return Status::InvalidArgument("journal merging already runs");
  merger_stop_ = false;
  ES_ASSIGN_OR_RETURN(merger_, StartThread([this, interval] {
    std::unique_lock<std::mutex> l(merger_mu_);
    while (!merger_cv_.wait_for(l, interval, [this] { return merger_stop_; })) {
      l.unlock();
      auto merged = MergeJournals();
      l.lock();
      if (!merged.ok()) merger_status_ = merged.status();
    }
  }, "journal merging"));
  return Status::Ok();
}

Status Store::journal_merge_status() const {
  std::lock_guard<std::mutex> lock(merger_mu_);
  return merger_status_;
}

void Store::StopJournalMerging() {
  {
    std::lock_guard<std::mutex> lock(merger_mu_);
    merger_stop_ = true;
  }
  merger_cv_.notify_all();
  if (merger_.joinable()) merger_.join();
}

Status DeleteModel(Store& store, const std::string& name) {
  if (store.read_only()) return Status::NotSupported("deleting a model needs the store open for writing");
  // A transaction of its own: serialised with ingest and compaction, which read the entries they rewrite.
  ES_ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  ES_RETURN_IF_ERROR(StageModelDeletion(store.catalog(), name, txn->batch()));
  return txn->Commit();
}

Status StageModelDeletion(const Catalog& catalog, const std::string& name, CatalogBatch& batch) {
  std::string prefix = ModelPrefix(name);
  for (Cf cf : {Cf::kTensors, Cf::kExperts, Cf::kUsage, Cf::kTrust, Cf::kProfiles}) {
    ES_RETURN_IF_ERROR(catalog.Scan(cf, prefix, [&](std::string_view key, std::string_view) {
      batch.Delete(cf, key);
      return true;
    }));
  }
  // An attached model's tier (each attach has its own) goes with it.
  ES_ASSIGN_OR_RETURN(std::optional<uint32_t> tier, AttachedTier(catalog, name));
  if (tier) batch.Delete(Cf::kMeta, std::string(kTierKeyPrefix) + std::to_string(*tier));
  batch.Delete(Cf::kModels, ModelKey(name));
  return Status::Ok();
}

Result<std::optional<uint32_t>> AttachedTier(const Catalog& catalog, const std::string& name) {
  std::optional<uint32_t> tier;
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kTensors, ModelPrefix(name), [&](std::string_view, std::string_view value) {
    if (auto t = DecodeTensor(value); t.ok() && IsRemote(t->extent)) tier = RemoteTier(t->extent);
    return false;  // the first tells
  }));
  return tier;
}

}  // namespace es
