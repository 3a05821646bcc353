// The metadata journal: framing, the per-process appender and the writer's exactly-once merge.
#include "store/journal.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>
#include <random>

#include "store/base/checksum.h"

namespace es {

namespace {

void PutLe32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutLe64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetLe32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t GetLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::span<const std::byte> Bytes(std::string_view s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }
std::span<std::byte> MutableBytes(std::string& s) { return {reinterpret_cast<std::byte*>(s.data()), s.size()}; }

std::string Header() {
  std::string h(kJournalMagic);
  PutLe32(h, kJournalVersion);
  PutLe32(h, 0);
  return h;
}

// <unix ms>-<pid>-<64 random bits>, hex: unique across processes and time, so a name (and its marker) is
// never reused.
std::string NewJournalName() {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch());
  std::random_device rd;
  constexpr int kWordBits = 32;  // random_device yields 32-bit words
  uint64_t r = (static_cast<uint64_t>(rd()) << kWordBits) ^ rd();
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%llx-%x-%016llx", static_cast<unsigned long long>(ms.count()),
                static_cast<unsigned>(::getpid()), static_cast<unsigned long long>(r));
  return buf;
}

std::string MarkerKey(std::string_view name) { return std::string(kJournalMarkerPrefix) + std::string(name); }

}  // namespace

bool JournalAccepts(CatalogBatch::OpKind kind, Cf cf) {
  if (kind == CatalogBatch::OpKind::kMerge) return cf == Cf::kUsage;
  if (kind == CatalogBatch::OpKind::kPut) return cf == Cf::kTrust || cf == Cf::kProfiles;
  return false;
}

Result<std::string> EncodeJournalPayload(const CatalogBatch& batch) {
  std::string out;
  PutLe32(out, static_cast<uint32_t>(batch.size()));
  Status bad;
  batch.ForEach([&](CatalogBatch::OpKind kind, Cf cf, std::string_view key, std::string_view value) {
    if (!JournalAccepts(kind, cf)) {
      bad = Status::InvalidArgument("the metadata journal carries only usage merges and trust/profile puts, not " +
                                    std::string(CfName(cf)) + " mutations");
      return;
    }
    out.push_back(static_cast<char>(kind));
    out.push_back(static_cast<char>(cf));
    PutLe32(out, static_cast<uint32_t>(key.size()));
    out.append(key);
    PutLe32(out, static_cast<uint32_t>(value.size()));
    out.append(value);
  });
  ES_RETURN_IF_ERROR(bad);
  return out;
}

Result<CatalogBatch> DecodeJournalPayload(std::string_view p) {
  auto corrupt = [] { return Status::Corruption("malformed journal record"); };
  if (p.size() < 4) return corrupt();
  uint32_t n = GetLe32(p.data());
  size_t pos = 4;
  CatalogBatch batch;
  for (uint32_t i = 0; i < n; ++i) {
    if (p.size() - pos < 6) return corrupt();
    auto kind = static_cast<CatalogBatch::OpKind>(static_cast<uint8_t>(p[pos]));
    uint8_t cf_byte = static_cast<uint8_t>(p[pos + 1]);
    pos += 2;
    if (cf_byte >= kNumCfs) return corrupt();
    Cf cf = static_cast<Cf>(cf_byte);
    if (!JournalAccepts(kind, cf)) return corrupt();
    std::string_view parts[2];
    for (auto& part : parts) {
      if (p.size() - pos < 4) return corrupt();
      uint32_t len = GetLe32(p.data() + pos);
      pos += 4;
      if (p.size() - pos < len) return corrupt();
      part = p.substr(pos, len);
      pos += len;
    }
    if (kind == CatalogBatch::OpKind::kMerge) {
      batch.Merge(cf, parts[0], parts[1]);
    } else {
      batch.Put(cf, parts[0], parts[1]);
    }
  }
  if (pos != p.size()) return corrupt();
  return batch;
}

std::string FrameJournalRecord(std::string_view payload) {
  std::string frame;
  frame.reserve(kJournalFrameHeaderSize + payload.size());
  PutLe32(frame, kJournalRecordMagic);
  PutLe32(frame, static_cast<uint32_t>(payload.size()));
  PutLe64(frame, Xxh3(Bytes(payload)));
  frame.append(payload);
  return frame;
}

// ---- JournalWriter --------------------------------------------------------------------------------------

Result<std::unique_ptr<JournalWriter>> JournalWriter::Create(std::shared_ptr<FileSystem> fs, const std::string& dir) {
  ES_RETURN_IF_ERROR(fs->CreateDir(dir));
  // LockFile creates the temporary file, then locks it. A merger listing the directory in between can lock it
  // first and remove it as abandoned: then our lock fails (Busy) or holds an unlinked file (the open below finds
  // no file). Either way the name is spoiled; a fresh one is tried.
  constexpr int kAttempts = 8;
  Status last;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    std::string name = NewJournalName();
    std::string tmp = JoinPath(dir, name + std::string(kJournalTmpSuffix));
    std::unique_ptr<JournalWriter> w(new JournalWriter());
    w->fs_ = fs;
    w->path_ = JoinPath(dir, name + std::string(kJournalSuffix));
    // The lock comes first: a merger that could take it would think the file abandoned.
    auto lock = fs->LockFile(tmp);
    if (!lock.ok()) {
      if (!lock.status().IsBusy()) return lock.status();
      last = lock.status();
      continue;
    }
    w->lock_ = std::move(lock).value();
    auto file = fs->Open(tmp, OpenOptions{.write = true});
    if (!file.ok()) {
      if (!file.status().IsNotFound()) return file.status();
      last = file.status();
      continue;
    }
    w->file_ = std::move(file).value();
    std::string header = Header();
    ES_RETURN_IF_ERROR(w->file_->Write(0, Bytes(header)));
    ES_RETURN_IF_ERROR(w->file_->Sync());
    ES_RETURN_IF_ERROR(fs->Rename(tmp, w->path_));
    ES_RETURN_IF_ERROR(fs->SyncDir(dir));
    w->end_ = kJournalHeaderSize;
    return w;
  }
  return last.WithContext("creating a journal file (a merger kept removing it)");
}

JournalWriter::~JournalWriter() = default;

uint64_t JournalWriter::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return end_;
}

Status JournalWriter::Append(const CatalogBatch& batch) {
  if (batch.size() == 0) return Status::Ok();
  ES_ASSIGN_OR_RETURN(std::string payload, EncodeJournalPayload(batch));
  if (payload.size() > kMaxJournalRecordBytes) {
    return Status::InvalidArgument("journal record of " + std::to_string(payload.size()) + " bytes exceeds the limit");
  }
  std::string frame = FrameJournalRecord(payload);
  std::lock_guard<std::mutex> lock(mu_);
  if (!failed_.ok()) return failed_;
  Status s = file_->Write(end_, Bytes(frame));
  if (s.ok()) s = file_->DataSync();
  if (!s.ok()) {
    // As for the segment writer: a failed write or sync is never retried, since what reached the disk is unknown.
    failed_ = Status::IOError("journal " + path_ + " refuses appends after a failure: " + s.ToString());
    return s;
  }
  end_ += frame.size();
  return Status::Ok();
}

// ---- merging --------------------------------------------------------------------------------------------

void JournalMergeStats::Add(const JournalMergeStats& o) {
  files += o.files;
  records += o.records;
  entries += o.entries;
  files_removed += o.files_removed;
  torn_tails += o.torn_tails;
  stale_tmp_removed += o.stale_tmp_removed;
  damaged.insert(damaged.end(), o.damaged.begin(), o.damaged.end());
}

namespace {

// Catalog bytes merged per commit: bounds memory while keeping commits (each a synced write) few.
constexpr size_t kMergeCommitBytes = 4u << 20;

// Applies the records of one journal file past its marker. `finished`: its owner is gone.
Status MergeOneFile(FileSystem& fs, const std::string& dir, const std::string& name, bool finished, Catalog& catalog,
                    JournalMergeStats& stats) {
  std::string path = JoinPath(dir, name);
  std::string marker_key = MarkerKey(name);
  uint64_t offset = kJournalHeaderSize;
  auto marker = catalog.Get(Cf::kMeta, marker_key);
  if (marker.ok()) {
    auto [ptr, ec] = std::from_chars(marker->data(), marker->data() + marker->size(), offset);
    if (ec != std::errc() || ptr != marker->data() + marker->size() || offset < kJournalHeaderSize) {
      stats.damaged.push_back(name + ": unreadable marker '" + *marker + "'");
      return Status::Ok();
    }
  } else if (!marker.status().IsNotFound()) {
    return marker.status();
  }
  ES_ASSIGN_OR_RETURN(auto file, fs.Open(path, OpenOptions{}));
  ES_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  std::string header(kJournalHeaderSize, '\0');
  if (size >= kJournalHeaderSize) ES_RETURN_IF_ERROR(ReadFully(*file, 0, MutableBytes(header)));
  if (size < kJournalHeaderSize || header != Header()) {
    stats.damaged.push_back(name + ": not a journal file (bad header)");
    return Status::Ok();
  }
  if (offset > size) {
    stats.damaged.push_back(name + ": marker " + std::to_string(offset) + " lies past the end (" +
                            std::to_string(size) + " bytes)");
    return Status::Ok();
  }

  CatalogBatch batch;
  size_t batch_bytes = 0;
  uint64_t batch_records = 0;
  uint64_t pos = offset;
  auto commit = [&]() -> Status {
    if (batch_records == 0) return Status::Ok();
    uint64_t entries = batch.size();
    batch.Put(Cf::kMeta, marker_key, std::to_string(pos));
    ES_RETURN_IF_ERROR(catalog.Write(batch, /*sync=*/true));
    stats.records += batch_records;
    stats.entries += entries;
    batch.Clear();
    batch_bytes = 0;
    batch_records = 0;
    return Status::Ok();
  };
  std::string frame_header(kJournalFrameHeaderSize, '\0');
  std::string payload;
  while (size - pos >= kJournalFrameHeaderSize) {
    // Read errors propagate: only bytes that read back fine and fail their checks are a torn tail.
    ES_RETURN_IF_ERROR(ReadFully(*file, pos, MutableBytes(frame_header)));
    uint32_t magic = GetLe32(frame_header.data());
    uint64_t len = GetLe32(frame_header.data() + 4);
    uint64_t checksum = GetLe64(frame_header.data() + 8);
    if (magic != kJournalRecordMagic || len > kMaxJournalRecordBytes ||
        size - pos - kJournalFrameHeaderSize < len) {
      break;
    }
    payload.resize(len);
    ES_RETURN_IF_ERROR(ReadFully(*file, pos + kJournalFrameHeaderSize, MutableBytes(payload)));
    if (Xxh3(Bytes(payload)) != checksum) break;
    auto decoded = DecodeJournalPayload(payload);
    if (!decoded.ok()) break;
    decoded->ForEach([&](CatalogBatch::OpKind kind, Cf cf, std::string_view key, std::string_view value) {
      if (kind == CatalogBatch::OpKind::kMerge) {
        batch.Merge(cf, key, value);
      } else {
        batch.Put(cf, key, value);
      }
    });
    pos += kJournalFrameHeaderSize + len;
    batch_bytes += len;
    ++batch_records;
    if (batch_bytes >= kMergeCommitBytes) ES_RETURN_IF_ERROR(commit());
  }
  ES_RETURN_IF_ERROR(commit());
  if (!finished) return Status::Ok();
  // The owner is gone: nothing more will come. Bytes past the last valid record are an interrupted append.
  if (pos < size) ++stats.torn_tails;
  file.reset();
  ES_RETURN_IF_ERROR(fs.Remove(path));
  ES_RETURN_IF_ERROR(fs.SyncDir(dir));
  // Only now may the marker go: had the file survived a crash, the marker would keep it from being re-applied.
  CatalogBatch drop;
  drop.Delete(Cf::kMeta, marker_key);
  ES_RETURN_IF_ERROR(catalog.Write(drop, /*sync=*/true));
  ++stats.files_removed;
  return Status::Ok();
}

}  // namespace

Result<JournalMergeStats> MergeJournals(FileSystem& fs, const std::string& dir, Catalog& catalog) {
  JournalMergeStats stats;
  if (catalog.read_only()) return Status::NotSupported("merging journals needs the store's writer");
  ES_ASSIGN_OR_RETURN(bool exists, fs.Exists(dir));
  std::vector<std::string> names;
  if (exists) {
    ES_ASSIGN_OR_RETURN(names, fs.ListDir(dir));
  }
  std::sort(names.begin(), names.end());
  bool removed_tmp = false;
  for (const auto& name : names) {
    std::string path = JoinPath(dir, name);
    if (name.ends_with(kJournalTmpSuffix)) {
      // Its creator died before publishing it (or is publishing it now: then it holds the lock).
      auto lock = fs.LockFile(path);
      if (lock.ok()) {
        ES_RETURN_IF_ERROR(fs.Remove(path));
        removed_tmp = true;
        ++stats.stale_tmp_removed;
      } else if (!lock.status().IsBusy()) {
        return lock.status();
      }
      continue;
    }
    if (!name.ends_with(kJournalSuffix)) continue;
    ++stats.files;
    auto lock = fs.LockFile(path);
    if (!lock.ok() && !lock.status().IsBusy()) return lock.status();
    // Holding the lock for the whole merge keeps the file from changing hands; there is no one to hand it to,
    // since only this writer removes journal files and journal names are never reused.
    ES_RETURN_IF_ERROR(MergeOneFile(fs, dir, name, /*finished=*/lock.ok(), catalog, stats).WithContext("journal " + path));
  }
  if (removed_tmp) ES_RETURN_IF_ERROR(fs.SyncDir(dir));
  // Markers of files that no longer exist: the file was deleted but the marker's removal did not commit.
  CatalogBatch orphans;
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kMeta, kJournalMarkerPrefix, [&](std::string_view key, std::string_view) {
    std::string_view name = key.substr(kJournalMarkerPrefix.size());
    if (!std::binary_search(names.begin(), names.end(), std::string(name))) orphans.Delete(Cf::kMeta, key);
    return true;
  }));
  if (orphans.size() > 0) ES_RETURN_IF_ERROR(catalog.Write(orphans, /*sync=*/true));
  return stats;
}

}  // namespace es
