// MetadataCache: each model's metadata in memory, so that the metadata routes answer without re-reading the
// catalog: the profile, trust and usage records a query ranks (ModelMetadata) and the expert list's rows
// (ExpertRow). An entry is current while the catalog's sequence number is the one it was built at
// (Catalog::LatestSequence): any write (usage a generation recorded, a merged journal, calibrate or rest in this
// process) rebuilds it on the next request. Thread-safe; a rebuild runs outside the lock.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "store/base/status.h"
#include "store/catalog.h"
#include "store/metadata.h"

namespace es::api {

class MetadataCache {
 public:
  // The model's records as of the catalog's latest write. Errors: the catalog's, reading them.
  Result<std::shared_ptr<const ModelMetadata>> Get(const Catalog& catalog, const std::string& model);
  // Every expert of the model with its trust and usage, in key order (LoadExpertRows).
  Result<std::shared_ptr<const std::vector<ExpertRow>>> ExpertRows(const Catalog& catalog, const std::string& model);

  struct Stats {
    uint64_t hits = 0;
    uint64_t loads = 0;  // entries built or rebuilt
  };
  Stats stats() const;

 private:
  struct Entry {
    uint64_t sequence = 0;
    std::shared_ptr<const void> value;
  };
  // The entry of `model` in `entries`, built by `load` when missing or older than the catalog.
  Result<std::shared_ptr<const void>> GetOrLoad(std::map<std::string, Entry>& entries, const Catalog& catalog,
                                                const std::string& model,
                                                const std::function<Result<std::shared_ptr<const void>>()>& load);
  mutable std::mutex mu_;
  std::map<std::string, Entry> metadata_;
  std::map<std::string, Entry> rows_;
  Stats stats_;
};

}  // namespace es::api
