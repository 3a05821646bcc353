// The RocksDB-backed catalog and the usage merge operator.
#include "store/catalog.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/merge_operator.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/utilities/options_util.h>

#include <array>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "store/records.h"

namespace es {

namespace {

constexpr std::array<std::string_view, kNumCfs> kCfNames = {"models", "tensors", "experts", "usage",
                                                             "trust",  "profiles", "meta"};

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return Status::NotFound(msg);
  if (s.IsCorruption()) return Status::Corruption(msg);
  if (s.IsInvalidArgument()) return Status::InvalidArgument(msg);
  if (s.IsNotSupported()) return Status::NotSupported(msg);
  if (s.IsNoSpace() || s.IsMemoryLimit()) return Status::ResourceExhausted(msg);
  if (s.IsBusy() || s.IsTryAgain()) return Status::Busy(msg);
  return Status::IOError(msg);
}

// RocksDB's own info log (catalog/LOG) writes through a WritableFileWriter that, built with assertions as
// Debian's library is, aborts the process on its second write after a failed one: a full disk would kill every
// command at open. This logger appends with plain stdio and drops what it cannot write; it never opens its file
// for a read-only catalog (a read-only mount).
class CatalogLogger final : public rocksdb::Logger {
 public:
  CatalogLogger(std::string path, bool read_only)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), path_(std::move(path)), failed_(read_only) {}
  ~CatalogLogger() override {
    if (file_ != nullptr) std::fclose(file_);
  }
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (failed_) return;
    if (file_ == nullptr) file_ = std::fopen(path_.c_str(), "a");  // opened at the first message: after the directory
    if (file_ == nullptr) {
      failed_ = true;
      return;
    }
    if (std::vfprintf(file_, format, ap) < 0 || std::fputc('\n', file_) == EOF || std::fflush(file_) != 0) {
      failed_ = true;  // a full disk: the log is best effort, the catalog's own writes report their errors
    }
  }

 private:
  const std::string path_;
  std::FILE* file_ = nullptr;
  std::mutex mu_;
  bool failed_;
};

// RocksDB starts its background threads while it opens, and std::thread throws when the system refuses one (out
// of memory or of threads): that becomes an error here instead of terminating the process.
template <typename OpenFn>
rocksdb::Status OpenGuarded(OpenFn&& open) {
  try {
    return open();
  } catch (const std::exception& e) {
    return rocksdb::Status::MemoryLimit(std::string("cannot start the catalog's threads: ") + e.what());
  }
}

constexpr size_t kMaxSuccessiveUsageMerges = 16;
constexpr size_t kUsageWriteBufferBytes = 1u << 20;

// Sums UsageRecords. A damaged operand makes the merge fail, which RocksDB reports as Corruption on read.
class UsageMergeOperator final : public rocksdb::AssociativeMergeOperator {
 public:
  bool Merge(const rocksdb::Slice& key, const rocksdb::Slice* existing, const rocksdb::Slice& value,
             std::string* new_value, rocksdb::Logger* logger) const override {
    UsageCounts total;
    if (existing != nullptr) {
      auto e = DecodeUsage(std::string_view(existing->data(), existing->size()));
      if (!e.ok()) return false;
      total = std::move(e).value();
    }
    auto v = DecodeUsage(std::string_view(value.data(), value.size()));
    if (!v.ok()) return false;
    total.MergeFrom(*v);
    *new_value = EncodeUsage(total);
    return true;
  }
  const char* Name() const override { return "expertstore.UsageMerge"; }
};

// One block cache for every column family of every catalog in the process. Left unset, each column family's table
// factory makes its own 32 MiB cache, and a server whose usage column family flushes new tables all day grows
// toward 7 x 32 MiB.
constexpr size_t kBlockCacheBytes = 8u << 20;

rocksdb::ColumnFamilyOptions CfOptions(Cf cf) {
  static const std::shared_ptr<rocksdb::Cache> block_cache = rocksdb::NewLRUCache(kBlockCacheBytes);
  rocksdb::ColumnFamilyOptions o;
  rocksdb::BlockBasedTableOptions t;
  t.block_cache = block_cache;
  t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
  o.compression = rocksdb::kNoCompression;  // values are small FlatBuffers; keep reads copy-light
  if (cf == Cf::kUsage) {
    o.merge_operator = std::make_shared<UsageMergeOperator>();
    // Every generation merges into the same keys: without a bound, a read applies every operand the memtable holds
    // (thousands after a busy hour of serving), and reads slow down as the server runs. Past this many the
    // write folds them into one value.
    o.max_successive_merges = kMaxSuccessiveUsageMerges;
    // A serving process rewrites the same few thousand keys all day: a small memtable bounds the memory that
    // churn holds (RocksDB's default is 64 MiB per column family) at the cost of more, small flushes.
    o.write_buffer_size = kUsageWriteBufferBytes;
  }
  return o;
}

}  // namespace

std::string_view CfName(Cf cf) { return kCfNames[static_cast<size_t>(cf)]; }

struct CatalogBatch::Rep {
  struct Op {
    OpKind kind;
    Cf cf;
    std::string key;
    std::string value;
  };
  std::vector<Op> ops;
};

CatalogBatch::CatalogBatch() : rep_(std::make_unique<Rep>()) {}
CatalogBatch::~CatalogBatch() = default;
CatalogBatch::CatalogBatch(CatalogBatch&&) noexcept = default;
CatalogBatch& CatalogBatch::operator=(CatalogBatch&&) noexcept = default;

void CatalogBatch::Put(Cf cf, std::string_view key, std::string_view value) {
  rep_->ops.push_back({OpKind::kPut, cf, std::string(key), std::string(value)});
}
void CatalogBatch::Delete(Cf cf, std::string_view key) {
  rep_->ops.push_back({OpKind::kDelete, cf, std::string(key), {}});
}
void CatalogBatch::Merge(Cf cf, std::string_view key, std::string_view value) {
  rep_->ops.push_back({OpKind::kMerge, cf, std::string(key), std::string(value)});
}
size_t CatalogBatch::size() const { return rep_->ops.size(); }
void CatalogBatch::Clear() { rep_->ops.clear(); }
void CatalogBatch::ForEach(
    const std::function<void(OpKind, Cf, std::string_view, std::string_view)>& fn) const {
  for (const auto& op : rep_->ops) fn(op.kind, op.cf, op.key, op.value);
}

struct Catalog::Rep {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // indexed by Cf; the default CF is kept separately
  rocksdb::ColumnFamilyHandle* default_cf = nullptr;
  bool read_only = false;

  ~Rep() {
    if (db) {
      if (!read_only) {
        // On a clean close the catalog moves from the write-ahead log into table files (block checksums, one
        // MANIFEST), so the log a later open replays is empty. A failure (a full disk) leaves it in the log, as
        // after a crash.
        std::vector<rocksdb::ColumnFamilyHandle*> all(handles);
        all.push_back(default_cf);
        rocksdb::FlushOptions flush;
        flush.wait = true;
        db->Flush(flush, all).PermitUncheckedError();
      }
      for (auto* h : handles) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
      if (default_cf != nullptr) db->DestroyColumnFamilyHandle(default_cf).PermitUncheckedError();
      db->Close().PermitUncheckedError();
    }
  }
  rocksdb::ColumnFamilyHandle* H(Cf cf) const { return handles[static_cast<size_t>(cf)]; }
};

Catalog::Catalog(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}
Catalog::~Catalog() = default;

namespace {

std::vector<rocksdb::ColumnFamilyDescriptor> Descriptors() {
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  for (int i = 0; i < kNumCfs; ++i) {
    descriptors.emplace_back(std::string(kCfNames[i]), CfOptions(static_cast<Cf>(i)));
  }
  return descriptors;
}

}  // namespace

Status Catalog::Salvage(const std::string& dir) {
  rocksdb::DBOptions db_options;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.info_log = std::make_shared<CatalogLogger>(dir + "/LOG", false);
  db_options.max_file_opening_threads = 1;
  // Table files a killed process wrote but never recorded in the MANIFEST are salvaged too, and may overlap the
  // recorded ones entry for entry: the same entries twice is no inconsistency here.
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = Descriptors();
  for (auto& d : descriptors) d.options.force_consistency_checks = false;
  rocksdb::ColumnFamilyOptions unknown;
  unknown.force_consistency_checks = false;
  return FromRocks(OpenGuarded([&] { return rocksdb::RepairDB(dir, db_options, descriptors, unknown); }),
                   "salvage catalog " + dir);
}

Result<std::unique_ptr<Catalog>> Catalog::Open(const std::string& dir, bool read_only, bool create) {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = create && !read_only;
  db_options.create_missing_column_families = !read_only;
  db_options.paranoid_checks = true;
  // A damaged write-ahead log is an error, not the end of the history: point-in-time recovery (RocksDB's default)
  // would stop at the first bad record and open whatever came before it, an empty catalog after one flipped byte.
  // Only an incomplete last record (a process killed mid-append) is tolerated; nothing in it was acknowledged.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  db_options.max_open_files = -1;  // readers open every table file at once, so a writer's deletions cannot race them
  // ... on the opening thread: the catalog has a handful of table files, and RocksDB's opener threads terminate
  // the process when the system refuses to start one.
  db_options.max_file_opening_threads = 1;
  db_options.keep_log_file_num = 3;
  db_options.max_log_file_size = 1 << 20;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.info_log = std::make_shared<CatalogLogger>(dir + "/LOG", read_only);

  const std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = Descriptors();

  auto rep = std::make_unique<Rep>();
  rep->read_only = read_only;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s;
  if (read_only) {
    // A writer flushing or compacting while we read its MANIFEST can make a listed file vanish: retry.
    constexpr int kAttempts = 5;
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
      s = OpenGuarded([&] { return rocksdb::DB::OpenForReadOnly(db_options, dir, descriptors, &handles, &raw); });
      if (s.ok() || !(s.IsIOError() || s.IsPathNotFound())) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20 << attempt));
    }
    if (!s.ok() && (s.IsInvalidArgument() || s.IsPathNotFound())) {
      return Status::NotFound("no catalog at " + dir + " (" + s.ToString() + ")");
    }
  } else {
    s = OpenGuarded([&] { return rocksdb::DB::Open(db_options, dir, descriptors, &handles, &raw); });
  }
  if (!s.ok()) return FromRocks(s, "open catalog " + dir);
  rep->db.reset(raw);
  rep->default_cf = handles[0];
  rep->handles.assign(handles.begin() + 1, handles.end());
  return std::unique_ptr<Catalog>(new Catalog(std::move(rep)));
}

bool Catalog::read_only() const { return rep_->read_only; }

Result<std::string> Catalog::Get(Cf cf, std::string_view key) const {
  std::string value;
  rocksdb::Status s = rep_->db->Get(rocksdb::ReadOptions(), rep_->H(cf), rocksdb::Slice(key.data(), key.size()), &value);
  if (s.IsNotFound()) return Status::NotFound(std::string(CfName(cf)) + " entry not found");
  if (!s.ok()) return FromRocks(s, "catalog get");
  return value;
}

Status Catalog::Write(const CatalogBatch& batch, bool sync) {
  if (rep_->read_only) return Status::NotSupported("catalog is open read-only");
  rocksdb::WriteBatch wb;
  for (const auto& op : batch.rep_->ops) {
    rocksdb::Slice k(op.key), v(op.value);
    rocksdb::Status s;
    switch (op.kind) {
      case CatalogBatch::OpKind::kPut: s = wb.Put(rep_->H(op.cf), k, v); break;
      case CatalogBatch::OpKind::kDelete: s = wb.Delete(rep_->H(op.cf), k); break;
      case CatalogBatch::OpKind::kMerge: s = wb.Merge(rep_->H(op.cf), k, v); break;
    }
    if (!s.ok()) return FromRocks(s, "catalog batch");
  }
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(rep_->db->Write(wo, &wb), "catalog write");
}

Status Catalog::Scan(Cf cf, std::string_view prefix,
                     const std::function<bool(std::string_view, std::string_view)>& fn) const {
  rocksdb::ReadOptions ro;
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(ro, rep_->H(cf)));
  rocksdb::Slice p(prefix.data(), prefix.size());
  for (it->Seek(p); it->Valid() && it->key().starts_with(p); it->Next()) {
    if (!fn(std::string_view(it->key().data(), it->key().size()),
            std::string_view(it->value().data(), it->value().size()))) {
      break;
    }
  }
  return FromRocks(it->status(), "catalog scan");
}

uint64_t Catalog::LatestSequence() const { return rep_->db->GetLatestSequenceNumber(); }

CatalogMemory Catalog::Memory() const {
  CatalogMemory m;
  uint64_t v = 0;
  if (rep_->db->GetIntProperty(rep_->H(Cf::kModels), rocksdb::DB::Properties::kBlockCacheUsage, &v)) m.block_cache = v;
  for (auto* h : rep_->handles) {
    if (rep_->db->GetIntProperty(h, rocksdb::DB::Properties::kCurSizeAllMemTables, &v)) m.memtables += v;
    if (rep_->db->GetIntProperty(h, rocksdb::DB::Properties::kEstimateTableReadersMem, &v)) m.table_readers += v;
  }
  return m;
}

Status Catalog::Compact() {
  if (rep_->read_only) return Status::NotSupported("catalog is open read-only");
  for (auto* h : rep_->handles) {
    ES_RETURN_IF_ERROR(FromRocks(rep_->db->CompactRange(rocksdb::CompactRangeOptions(), h, nullptr, nullptr), "compact"));
  }
  return Status::Ok();
}

}  // namespace es
