// Repair (store/repair.h): rebuild the catalog from the segments' catalog log.
#include "store/repair.h"

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>

#include "store/base/aligned_buffer.h"
#include "store/catalog.h"
#include "store/catalog_log.h"
#include "store/extent_reader.h"
#include "store/io_engine.h"
#include "store/records.h"
#include "store/store.h"

namespace es {
namespace {

namespace stdfs = std::filesystem;

constexpr std::string_view kCatalogDir = "catalog";
constexpr std::string_view kSegmentsDir = "segments";
constexpr std::string_view kLockFile = "LOCK";
constexpr std::string_view kRebuiltDir = "catalog.repair";  // the new catalog, until it is put in place
constexpr std::string_view kSalvageDir = "catalog.salvage";  // a copy of the old one, for its metadata
// Written into the new catalog once it is complete and closed: a repair killed between moving the old catalog aside
// and moving the new one into place is finished by the next one.
constexpr std::string_view kDoneMarker = "REPAIR-DONE";
// Entries per batch written into the new catalog.
constexpr size_t kBatchEntries = 4096;

// A catalog-log record found by the scan.
struct FoundLog {
  uint64_t sequence = 0;
  bool snapshot = false;
  Extent extent;
};

Status FsStatus(const std::error_code& ec, const std::string& what) {
  return ec ? ErrnoStatus(ec.value(), what) : Status::Ok();
}

Status RemoveTree(const std::string& dir) {
  std::error_code ec;
  stdfs::remove_all(dir, ec);
  return FsStatus(ec, "remove " + dir);
}

// Reads and checks one whole record, then decodes it as a catalog log.
Result<CatalogLog> ReadLog(File& file, const Extent& e) {
  AlignedBuffer buffer(e.record_length);
  if (buffer.data() == nullptr) return Status::ResourceExhausted("cannot allocate a buffer for a catalog-log record");
  ES_RETURN_IF_ERROR(ReadFully(file, e.offset, buffer.span()));
  ES_ASSIGN_OR_RETURN(std::span<const std::byte> payload, CheckRecord(buffer.span(), e));
  return DecodeCatalogLog(payload);
}

std::string Where(const Extent& e) { return SegmentFileName(e.segment) + ":" + std::to_string(e.offset); }

// Walks one segment's records by their headers. After a header that fails its checks, looks for the next intact
// one block by block (records start on block boundaries). Catalog-log records are read whole and checked.
Status ScanSegment(FileSystem& fs, const std::string& dir, uint32_t id, RepairReport& report,
                   std::vector<FoundLog>& logs, uint64_t& end) {
  ES_ASSIGN_OR_RETURN(auto file, fs.Open(JoinPath(dir, SegmentFileName(id)), OpenOptions{}));
  ES_ASSIGN_OR_RETURN(const uint64_t size, file->Size());
  AlignedBuffer block(kBlockSize);
  if (block.data() == nullptr) return Status::ResourceExhausted("cannot allocate a header buffer");
  end = std::min(size, kSegmentHeaderSize);
  if (size >= kSegmentHeaderSize) {
    ES_RETURN_IF_ERROR(ReadFully(*file, 0, block.span()));
    auto header = DecodeSegmentHeader(block.span());
    if (!header.ok() || header->segment_id != id) {
      report.problems.push_back("segment " + SegmentFileName(id) + ": its header is damaged (" +
                                (header.ok() ? std::string("it names another segment") : header.status().message()) +
                                "); its records were still read");
    }
  }
  uint64_t damaged_from = 0;
  bool in_damage = false;
  auto close_damage = [&](uint64_t at) {
    if (!in_damage) return;
    report.damaged_bytes += at - damaged_from;
    report.problems.push_back("segment " + SegmentFileName(id) + ": bytes " + std::to_string(damaged_from) + " to " +
                              std::to_string(at) + " hold no intact record header (a torn last append, or damage)");
    in_damage = false;
  };
  uint64_t at = kSegmentHeaderSize;
  while (at + kBlockSize <= size) {
    ES_RETURN_IF_ERROR(ReadFully(*file, at, block.span()));
    auto header = DecodeRecordHeader(block.span());
    const uint64_t length = header.ok() ? RecordLength(header->payload_length) : 0;
    if (!header.ok() || length > size - at) {
      // A damaged header, or one whose record runs past the end of the file (a torn last append, or damage).
      if (!in_damage) damaged_from = at;
      in_damage = true;
      at += kBlockSize;
      continue;
    }
    close_damage(at);
    ++report.records;
    const Extent extent{id, at, length, header->payload_length, header->payload_checksum};
    if (header->kind == RecordKind::kCatalogLog) {
      auto log = ReadLog(*file, extent);
      if (!log.ok()) {
        report.problems.push_back("catalog-log record at " + Where(extent) + " is damaged: " + log.status().message());
      } else if (header->key != CatalogLogKey(log->sequence)) {
        report.problems.push_back("catalog-log record at " + Where(extent) + " names another sequence");
      } else {
        logs.push_back({log->sequence, log->snapshot, extent});
      }
    }
    at += length;
    end = at;
  }
  // Trailing bytes no intact record explains: a torn append, or damage at the end of the file.
  if (in_damage || at < size) {
    if (!in_damage) damaged_from = at;
    in_damage = true;
    close_damage(size);
  }
  return Status::Ok();
}

using State = std::map<std::pair<Cf, std::string>, std::string>;

// The records of the log to replay: the newest intact snapshot and every commit after it, in order. Gaps in the
// sequence are reported: the commits they held are lost.
std::vector<FoundLog> ChooseReplay(std::vector<FoundLog> logs, RepairReport& report) {
  // By sequence; of two records with one sequence (a commit whose catalog write failed and was written again) the
  // later one.
  std::sort(logs.begin(), logs.end(), [](const FoundLog& a, const FoundLog& b) {
    return std::tie(a.sequence, a.extent.segment, a.extent.offset) < std::tie(b.sequence, b.extent.segment, b.extent.offset);
  });
  std::map<uint64_t, FoundLog> by_sequence;
  for (const FoundLog& l : logs) by_sequence[l.sequence] = l;
  uint64_t base = 0;
  for (const auto& [sequence, l] : by_sequence) {
    if (l.snapshot) base = sequence;
  }
  std::vector<FoundLog> replay;
  uint64_t expected = base == 0 ? 1 : base;
  for (const auto& [sequence, l] : by_sequence) {
    if (sequence < base) continue;
    if (sequence > expected) {
      report.problems.push_back("catalog-log records " + std::to_string(expected) + " to " + std::to_string(sequence - 1) +
                                " are missing or damaged: the commits they held are lost");
    }
    replay.push_back(l);
    expected = sequence + 1;
  }
  report.snapshot_sequence = base;
  report.last_sequence = replay.empty() ? 0 : replay.back().sequence;
  return replay;
}

Status Replay(FileSystem& fs, const std::string& dir, const std::vector<FoundLog>& replay, State& state) {
  for (const FoundLog& l : replay) {
    ES_ASSIGN_OR_RETURN(auto file, fs.Open(JoinPath(dir, SegmentFileName(l.extent.segment)), OpenOptions{}));
    ES_ASSIGN_OR_RETURN(CatalogLog log, ReadLog(*file, l.extent));
    if (log.snapshot) state.clear();
    for (CatalogLogEntry& e : log.entries) {
      if (e.op == CatalogLogEntry::Op::kPut) {
        state[{e.cf, std::move(e.key)}] = std::move(e.value);
      } else {
        state.erase({e.cf, e.key});
      }
    }
  }
  return Status::Ok();
}

// Writes `batch` once it holds kBatchEntries entries (or at the end, with force).
Status FlushBatch(Catalog& catalog, CatalogBatch& batch, bool force) {
  if (batch.size() == 0 || (!force && batch.size() < kBatchEntries)) return Status::Ok();
  ES_RETURN_IF_ERROR(catalog.Write(batch, /*sync=*/false));
  batch.Clear();
  return Status::Ok();
}

// One metadata entry read from the old catalog.
struct MetadataEntry {
  Cf cf;
  std::string key;
  std::string value;
};

// Reads the repaired models' metadata (usage, trust, profiles) and the journal positions out of a copy of the old
// catalog; with `salvage`, RocksDB's RepairDB runs on the copy first. The copy is removed afterwards.
Status ReadMetadata(const std::string& path, const std::set<std::string>& models, bool salvage,
                    std::vector<MetadataEntry>& out) {
  out.clear();
  const std::string old_dir = JoinPath(path, kCatalogDir);
  const std::string copy = JoinPath(path, kSalvageDir);
  ES_RETURN_IF_ERROR(RemoveTree(copy));
  std::error_code ec;
  stdfs::copy(old_dir, copy, stdfs::copy_options::recursive, ec);
  ES_RETURN_IF_ERROR(FsStatus(ec, "copy " + old_dir));
  // The copy's LOCK file, if any, is not held by anyone.
  Status s = salvage ? Catalog::Salvage(copy) : Status::Ok();
  if (s.ok()) {
    // Opened as a writer: RepairDB keeps only the column families that still hold table files, and a writer's open
    // creates the missing ones (empty) where a reader's would fail. It is a copy.
    auto old = Catalog::Open(copy, /*read_only=*/false, /*create=*/false);
    if (!old.ok()) s = old.status();
    for (const std::string& model : models) {
      for (Cf cf : {Cf::kUsage, Cf::kTrust, Cf::kProfiles}) {
        if (!s.ok()) break;
        s = (*old)->Scan(cf, ModelPrefix(model), [&](std::string_view key, std::string_view value) {
          out.push_back({cf, std::string(key), std::string(value)});
          return true;
        });
      }
    }
    // How far the journals of read-only processes were merged: without it they would be merged again.
    if (s.ok()) {
      s = (*old)->Scan(Cf::kMeta, "journal/", [&](std::string_view key, std::string_view value) {
        out.push_back({Cf::kMeta, std::string(key), std::string(value)});
        return true;
      });
    }
  }
  RemoveTree(copy).IgnoreError();
  return s;
}

// The old catalog's metadata for the repaired models, into the new catalog: read from a copy as it is when that
// opens and reads whole, else from a copy that RocksDB's RepairDB salvaged (what its damaged files still hold).
Status SalvageMetadata(const std::string& path, const std::set<std::string>& models, Catalog& rebuilt,
                       RepairReport& report) {
  std::vector<MetadataEntry> entries;
  Status s = ReadMetadata(path, models, /*salvage=*/false, entries);
  if (!s.ok()) {
    Status salvaged = ReadMetadata(path, models, /*salvage=*/true, entries);
    if (!salvaged.ok()) return salvaged.WithContext("opened as it was: " + s.message() + "; salvaged");
  }
  CatalogBatch batch;
  for (const MetadataEntry& e : entries) {
    // Usage is written only through the merge operator; into an empty catalog a merge is the value.
    if (e.cf == Cf::kUsage) {
      batch.Merge(e.cf, e.key, e.value);
    } else {
      batch.Put(e.cf, e.key, e.value);
    }
    if (e.cf != Cf::kMeta) ++report.metadata_entries;
    ES_RETURN_IF_ERROR(FlushBatch(rebuilt, batch, false));
  }
  return FlushBatch(rebuilt, batch, true);
}

// Checks every record the rebuilt catalog references, drops the entries whose records fail, and marks their models
// incomplete.
Status CheckRebuilt(const std::string& segments_dir, std::shared_ptr<FileSystem> fs, Catalog& rebuilt,
                    std::map<std::string, RepairedModel>& models) {
  std::vector<ExtentRef> refs;
  std::vector<CorruptEntry> undecodable;
  ES_RETURN_IF_ERROR(CollectExtents(rebuilt, "", refs, undecodable));
  ES_ASSIGN_OR_RETURN(auto engine, CreateIoEngine(IoEngineKind::kAuto, IoEngineOptions{}));
  ExtentReader reader(fs, segments_dir, std::move(engine));
  VerifyReport report;
  report.corrupt = undecodable;
  ES_RETURN_IF_ERROR(CheckExtents(reader, refs, report));
  if (report.corrupt.empty()) return Status::Ok();
  std::map<std::string, const ExtentRef*> by_what;
  for (const ExtentRef& r : refs) by_what[r.what] = &r;
  CatalogBatch batch;
  std::map<std::string, std::set<std::string>> dropped_assets;  // model -> asset names
  for (const CorruptEntry& c : report.corrupt) {
    auto it = by_what.find(c.what);
    if (it == by_what.end()) continue;  // a segment's own problem: its entries are listed one by one as well
    const ExtentRef& r = *it->second;
    std::string model;
    if (c.what.starts_with("expert ")) {
      batch.Delete(Cf::kExperts, r.record_key);
      model = r.record_key.substr(0, r.record_key.find('\0'));
    } else if (c.what.starts_with("tensor ")) {
      batch.Delete(Cf::kTensors, r.record_key);
      model = r.record_key.substr(0, r.record_key.find('\0'));
    } else if (c.what.starts_with("asset ")) {
      model = r.record_key.substr(0, r.record_key.find('\0'));
      dropped_assets[model].insert(r.record_key.substr(model.size() + 1 + std::string_view("asset/").size()));
    } else {
      batch.Delete(Cf::kMeta, r.record_key);  // a log record that changed since the scan read it
      continue;
    }
    auto m = models.find(model);
    if (m == models.end()) continue;  // entries without a model record stay only as long as their records are intact
    m->second.dropped.push_back(c.what + ": " + c.message);
    m->second.complete = false;
    uint64_t& count = c.what.starts_with("expert ") ? m->second.experts
                      : c.what.starts_with("tensor ") ? m->second.tensors : m->second.assets;
    if (count > 0) --count;
  }
  for (auto& [name, m] : models) {
    if (m.dropped.empty()) continue;
    ES_ASSIGN_OR_RETURN(std::string value, rebuilt.Get(Cf::kModels, ModelKey(name)));
    ES_ASSIGN_OR_RETURN(ModelInfo info, DecodeModel(value));
    info.complete = false;
    const std::set<std::string>& dropped = dropped_assets[name];
    std::erase_if(info.assets, [&dropped](const AssetInfo& a) { return dropped.contains(a.name); });
    batch.Put(Cf::kModels, ModelKey(name), EncodeModel(info));
  }
  return rebuilt.Write(batch, /*sync=*/false);
}

// The models the replayed entries describe, with their counts. Entries that do not decode are left out of `state`
// and reported; the rest stay as the log left them.
void CountModels(State& state, std::map<std::string, RepairedModel>& models, RepairReport& report) {
  for (const auto& [where, value] : state) {
    const auto& [cf, key] = where;
    if (cf != Cf::kModels) continue;
    auto info = DecodeModel(value);
    if (!info.ok()) {
      report.problems.push_back("model " + key + ": its record does not decode");
      continue;
    }
    RepairedModel& m = models[key];
    m.name = key;
    m.complete = info->complete;
    m.assets = info->assets.size();
  }
  for (auto it = state.begin(); it != state.end();) {
    const auto& [cf, key] = it->first;
    const std::string model = key.substr(0, key.find('\0'));
    auto m = models.find(model);
    bool keep = true;
    if (cf == Cf::kModels) {
      keep = m != models.end();
    } else if (cf == Cf::kExperts) {
      keep = DecodeExpert(it->second).ok() && ParseExpertKey(key).ok();
      if (keep && m != models.end()) ++m->second.experts;
    } else if (cf == Cf::kTensors) {
      keep = DecodeTensor(it->second).ok();
      if (keep && m != models.end()) ++m->second.tensors;
    }
    if (!keep && cf != Cf::kModels) {
      report.problems.push_back(std::string(cf == Cf::kExperts ? "expert" : "tensor") + " entry of " + model +
                                " does not decode; it was left out");
      if (m != models.end()) m->second.complete = false;
    }
    it = keep ? std::next(it) : state.erase(it);
  }
}

// Moves the finished new catalog into place (there is no catalog there now) and drops its marker.
Status PutInPlace(FileSystem& fs, const std::string& path) {
  const std::string catalog_dir = JoinPath(path, kCatalogDir);
  ES_RETURN_IF_ERROR(fs.Rename(JoinPath(path, kRebuiltDir), catalog_dir));
  ES_RETURN_IF_ERROR(fs.SyncDir(path));
  ES_RETURN_IF_ERROR(fs.Remove(JoinPath(catalog_dir, kDoneMarker)));
  return fs.SyncDir(catalog_dir);
}

}  // namespace

Result<RepairReport> RepairStore(const std::string& path, std::shared_ptr<FileSystem> fs_ptr) {
  std::shared_ptr<FileSystem> fs = fs_ptr ? fs_ptr : DefaultFileSystem();
  RepairReport report;
  const std::string segments_dir = JoinPath(path, kSegmentsDir);
  ES_ASSIGN_OR_RETURN(bool has_segments, fs->Exists(segments_dir));
  if (!has_segments) return Status::NotFound("no segments at " + segments_dir + ": nothing to repair from");
  auto lock = fs->LockFile(JoinPath(path, kLockFile));
  if (!lock.ok()) {
    return Status::Busy("another process has the store at " + path + " open for writing (" + lock.status().message() +
                        "); stop it before repairing");
  }

  // A repair killed after it moved the old catalog aside and before it moved the new one in: finish that first, so
  // that this one salvages the metadata the new catalog carries.
  ES_ASSIGN_OR_RETURN(bool has_catalog, fs->Exists(JoinPath(path, kCatalogDir)));
  ES_ASSIGN_OR_RETURN(bool finished, fs->Exists(JoinPath(JoinPath(path, kRebuiltDir), kDoneMarker)));
  if (!has_catalog && finished) ES_RETURN_IF_ERROR(PutInPlace(*fs, path));

  // 1. Every record header, and every catalog-log record checked.
  ES_ASSIGN_OR_RETURN(auto sizes, SegmentFileSizes(*fs, segments_dir));
  std::vector<FoundLog> logs;
  uint32_t last_segment = 0;
  uint64_t last_end = 0;
  for (const auto& [id, size] : sizes) {
    ++report.segments;
    uint64_t end = 0;
    ES_RETURN_IF_ERROR(ScanSegment(*fs, segments_dir, id, report, logs, end));
    last_segment = id;
    last_end = end;
  }
  if (logs.empty()) {
    return Status::NotSupported("the segments of the store at " + path + " hold no catalog log (a store of format "
                                "version 1 that no writer of this version has opened): its catalog cannot be rebuilt; "
                                "nothing was changed");
  }

  // 2. The catalog's record entries: the log replayed from its newest intact snapshot.
  std::vector<FoundLog> replay = ChooseReplay(logs, report);
  State state;
  ES_RETURN_IF_ERROR(Replay(*fs, segments_dir, replay, state));
  report.log_records = replay.size();
  std::map<std::string, RepairedModel> models;
  CountModels(state, models, report);

  // 3. The new catalog, beside the old one.
  const std::string rebuilt_dir = JoinPath(path, kRebuiltDir);
  ES_RETURN_IF_ERROR(RemoveTree(rebuilt_dir));
  {
    ES_ASSIGN_OR_RETURN(auto rebuilt, Catalog::Open(rebuilt_dir, /*read_only=*/false, /*create=*/true));
    CatalogBatch batch;
    batch.Put(Cf::kMeta, kFormatVersionKey, kFormatVersion);
    for (const auto& [where, value] : state) {
      const auto& [cf, key] = where;
      batch.Put(cf, key, value);
      ES_RETURN_IF_ERROR(FlushBatch(*rebuilt, batch, false));
    }
    // The log records replayed stay referenced, so that the next repair finds the same history.
    for (const FoundLog& l : replay) batch.Put(Cf::kMeta, CatalogLogKey(l.sequence), EncodeCatalogLogRef(l.extent));
    ES_RETURN_IF_ERROR(FlushBatch(*rebuilt, batch, true));
    ES_RETURN_IF_ERROR(CheckRebuilt(segments_dir, fs, *rebuilt, models));

    // 4. Metadata from the old catalog, where it survives.
    ES_ASSIGN_OR_RETURN(bool had_catalog, fs->Exists(JoinPath(path, kCatalogDir)));
    if (had_catalog) {
      std::set<std::string> names;
      for (const auto& [name, m] : models) names.insert(name);
      Status salvaged = SalvageMetadata(path, names, *rebuilt, report);
      if (!salvaged.ok()) {
        report.metadata_error = salvaged.ToString();
        report.metadata_entries = 0;
      }
    } else {
      report.metadata_error = "there was no catalog to salvage metadata from";
    }

    // Everything the scan found intact is kept: the write position is the end of the last segment's last intact
    // record, and the next writer's open removes only what lies past it (a torn append).
    batch.Put(Cf::kMeta, kWritePositionKey,
              EncodeWritePosition({last_segment, std::max(last_end, kSegmentHeaderSize)}));
    ES_RETURN_IF_ERROR(rebuilt->Write(batch, /*sync=*/true));
  }  // closed: flushed into table files

  // 5. The new catalog in place of the old one, which is kept.
  ES_RETURN_IF_ERROR(fs->Open(JoinPath(rebuilt_dir, kDoneMarker), OpenOptions{.write = true, .create = true}).status());
  ES_RETURN_IF_ERROR(fs->SyncDir(rebuilt_dir));
  const std::string catalog_dir = JoinPath(path, kCatalogDir);
  ES_ASSIGN_OR_RETURN(bool had_catalog, fs->Exists(catalog_dir));
  if (had_catalog) {
    std::string kept = catalog_dir + ".damaged-" + std::to_string(static_cast<uint64_t>(std::time(nullptr)));
    for (int n = 1; fs->Exists(kept).ok() && *fs->Exists(kept); ++n) {
      kept = catalog_dir + ".damaged-" + std::to_string(static_cast<uint64_t>(std::time(nullptr))) + "-" + std::to_string(n);
    }
    ES_RETURN_IF_ERROR(fs->Rename(catalog_dir, kept));
    report.old_catalog = kept;
  }
  ES_RETURN_IF_ERROR(PutInPlace(*fs, path));
  for (auto& [name, m] : models) report.models.push_back(std::move(m));
  return report;
}

}  // namespace es
