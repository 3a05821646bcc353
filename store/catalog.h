// Catalog: the RocksDB database under STORE/catalog with one column family per record kind
// (docs/catalog_schema.md). No RocksDB type appears here. Thread-safe: RocksDB serialises writers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "store/base/status.h"

namespace es {

enum class Cf : uint8_t { kModels = 0, kTensors, kExperts, kUsage, kTrust, kProfiles, kMeta };
inline constexpr int kNumCfs = 7;
std::string_view CfName(Cf cf);

class Catalog;

// What the catalog holds in memory (RocksDB's own accounting).
struct CatalogMemory {
  uint64_t block_cache = 0;    // cached table blocks (one LRU cache for every catalog in the process)
  uint64_t memtables = 0;      // write buffers, active and immutable, of every column family
  uint64_t table_readers = 0;  // open table files' indexes and filters
};

// A set of mutations applied atomically by Catalog::Write. Not thread-safe.
class CatalogBatch {
 public:
  enum class OpKind : uint8_t { kPut = 0, kDelete = 1, kMerge = 2 };

  CatalogBatch();
  ~CatalogBatch();
  CatalogBatch(CatalogBatch&&) noexcept;
  CatalogBatch& operator=(CatalogBatch&&) noexcept;

  void Put(Cf cf, std::string_view key, std::string_view value);
  void Delete(Cf cf, std::string_view key);
  // Usage only: adds a UsageRecord of increments through the merge operator.
  void Merge(Cf cf, std::string_view key, std::string_view value);
  size_t size() const;
  void Clear();
  // Visits the mutations in the order they were added (the metadata journal serialises batches with it).
  void ForEach(const std::function<void(OpKind kind, Cf cf, std::string_view key, std::string_view value)>& fn) const;

 private:
  friend class Catalog;
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

class Catalog {
 public:
  // Opens (or, with create, creates) the database in `dir`. Read-only catalogs open beside a running writer
  // and see the catalog as it was when they opened.
  static Result<std::unique_ptr<Catalog>> Open(const std::string& dir, bool read_only, bool create);
  ~Catalog();

  bool read_only() const;
  Result<std::string> Get(Cf cf, std::string_view key) const;  // NotFound when absent
  // Applies the batch atomically; sync makes it durable (WAL fsync) before returning.
  Status Write(const CatalogBatch& batch, bool sync = true);
  // Visits keys starting with `prefix` in order; `fn` returns false to stop early.
  Status Scan(Cf cf, std::string_view prefix,
              const std::function<bool(std::string_view key, std::string_view value)>& fn) const;
  // The sequence number of the last write this catalog applied: it changes with every Write (journals merged
  // included), so a view built from the catalog is current while it is unchanged. Constant for a read-only one.
  uint64_t LatestSequence() const;
  // Compacts every column family (the `rest` state).
  Status Compact();
  CatalogMemory Memory() const;
  // Rebuilds a damaged catalog in `dir` in place from whatever its table and log files still hold (RocksDB's
  // RepairDB: entries in damaged blocks or log records are lost). Run it on a copy.
  static Status Salvage(const std::string& dir);

 private:
  struct Rep;
  explicit Catalog(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

}  // namespace es
