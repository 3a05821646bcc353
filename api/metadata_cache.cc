// MetadataCache implementation.
#include "api/metadata_cache.h"

namespace es::api {

Result<std::shared_ptr<const void>> MetadataCache::GetOrLoad(
    std::map<std::string, Entry>& entries, const Catalog& catalog, const std::string& model,
    const std::function<Result<std::shared_ptr<const void>>()>& load) {
  // The sequence is read before the records: a write landing during the load makes the catalog's sequence newer
  // than the entry's, so the next request rebuilds it.
  const uint64_t sequence = catalog.LatestSequence();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = entries.find(model); it != entries.end() && it->second.sequence == sequence) {
      ++stats_.hits;
      return it->second.value;
    }
  }
  ES_ASSIGN_OR_RETURN(std::shared_ptr<const void> value, load());
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.loads;
  Entry& e = entries[model];
  if (e.value == nullptr || e.sequence <= sequence) e = Entry{sequence, value};
  return value;
}

Result<std::shared_ptr<const ModelMetadata>> MetadataCache::Get(const Catalog& catalog, const std::string& model) {
  ES_ASSIGN_OR_RETURN(auto value, GetOrLoad(metadata_, catalog, model, [&]() -> Result<std::shared_ptr<const void>> {
    ES_ASSIGN_OR_RETURN(ModelMetadata loaded, LoadModelMetadata(catalog, model, ModelPrefix(model)));
    return std::shared_ptr<const void>(std::make_shared<const ModelMetadata>(std::move(loaded)));
  }));
  return std::static_pointer_cast<const ModelMetadata>(value);
}

Result<std::shared_ptr<const std::vector<ExpertRow>>> MetadataCache::ExpertRows(const Catalog& catalog,
                                                                                const std::string& model) {
  ES_ASSIGN_OR_RETURN(auto value, GetOrLoad(rows_, catalog, model, [&]() -> Result<std::shared_ptr<const void>> {
    ES_ASSIGN_OR_RETURN(std::vector<ExpertRow> rows, LoadExpertRows(catalog, ModelPrefix(model)));
    return std::shared_ptr<const void>(std::make_shared<const std::vector<ExpertRow>>(std::move(rows)));
  }));
  return std::static_pointer_cast<const std::vector<ExpertRow>>(value);
}

MetadataCache::Stats MetadataCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace es::api
