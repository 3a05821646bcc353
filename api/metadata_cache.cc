// MetadataCache implementation.
#include "api/metadata_cache.h"

namespace es::api {

Result<std::shared_ptr<const ModelMetadata>> MetadataCache::Get(const Catalog& catalog, const std::string& model) {
  // The sequence is read before the records: a write landing during the scan makes the catalog's sequence newer
  // than the entry's, so the next request rebuilds it.
  const uint64_t sequence = catalog.LatestSequence();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = entries_.find(model); it != entries_.end() && it->second.sequence == sequence) {
      ++stats_.hits;
      return it->second.metadata;
    }
  }
  ES_ASSIGN_OR_RETURN(ModelMetadata loaded, LoadModelMetadata(catalog, model, ModelPrefix(model)));
  auto metadata = std::make_shared<const ModelMetadata>(std::move(loaded));
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.loads;
  Entry& e = entries_[model];
  if (e.metadata == nullptr || e.sequence <= sequence) e = Entry{sequence, metadata};
  return metadata;
}

MetadataCache::Stats MetadataCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace es::api
