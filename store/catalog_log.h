// The catalog log: a copy, inside the segments, of every commit's changes to the catalog entries that reference
// records (models, dense tensors, experts), so that the catalog can be rebuilt from the segments alone (`repair`,
// store/repair.h). docs/segment_format.md describes the payload and docs/catalog_schema.md the references.
//
// Every write transaction whose batch puts or deletes such an entry appends one catalog-log record (kind
// kCatalogLog) holding those mutations, before its data is synced, and references it from the catalog's `meta`
// column family (`log/` + a 20-digit sequence number). A snapshot record holds every such entry of the catalog at
// once; commits after it are replayed on top of it. Compaction writes a snapshot and drops the references to the
// records before it, which then become dead space.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "store/catalog.h"
#include "store/segment_format.h"
#include "store/base/status.h"

namespace es {

// The column families whose entries reference records: the only ones the log holds.
bool IsRecordCf(Cf cf);

struct CatalogLogEntry {
  enum class Op : uint8_t { kPut = 1, kDelete = 2 };
  Op op = Op::kPut;
  Cf cf = Cf::kModels;
  std::string key;
  std::string value;  // empty for a delete
  bool operator==(const CatalogLogEntry&) const = default;
};

struct CatalogLog {
  uint64_t sequence = 0;  // 1 for a store's first commit; one more for each later record
  bool snapshot = false;  // every record-bearing entry of the catalog, not the changes of one commit
  std::vector<CatalogLogEntry> entries;
};

// The payload of a catalog-log record, and back. Decoding checks every length against the payload; anything
// malformed is Corruption.
std::string EncodeCatalogLog(const CatalogLog& log);
Result<CatalogLog> DecodeCatalogLog(std::span<const std::byte> payload);

// The `meta` key that references the log record of `sequence`: "log/" + 20 decimal digits (numeric order equals
// key order). Also the key in the record's header.
inline constexpr std::string_view kCatalogLogKeyPrefix = "log/";
std::string CatalogLogKey(uint64_t sequence);
std::optional<uint64_t> ParseCatalogLogKey(std::string_view key);

// The `meta` value of a log reference: the record's extent (a CatalogLogRef FlatBuffer).
std::string EncodeCatalogLogRef(const Extent& extent);
Result<Extent> DecodeCatalogLogRef(std::string_view value);

// The record-bearing mutations of a batch, in order (puts and deletes of models, tensors and experts).
std::vector<CatalogLogEntry> RecordMutations(const CatalogBatch& batch);

}  // namespace es
