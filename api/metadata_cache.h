// MetadataCache: each model's profile, trust and usage records in memory (ModelMetadata), so that the metadata
// routes rank experts without re-reading the catalog. An entry is current while the catalog's sequence number is
// the one it was built at (Catalog::LatestSequence): any write (usage a generation recorded, a merged journal,
// calibrate or rest in this process) rebuilds it on the next request. Thread-safe; a rebuild runs outside the lock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "store/base/status.h"
#include "store/catalog.h"
#include "store/metadata.h"

namespace es::api {

class MetadataCache {
 public:
  // The model's records as of the catalog's latest write. Errors: the catalog's, reading them.
  Result<std::shared_ptr<const ModelMetadata>> Get(const Catalog& catalog, const std::string& model);

  struct Stats {
    uint64_t hits = 0;
    uint64_t loads = 0;  // entries built or rebuilt
  };
  Stats stats() const;

 private:
  struct Entry {
    uint64_t sequence = 0;
    std::shared_ptr<const ModelMetadata> metadata;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  Stats stats_;
};

}  // namespace es::api
