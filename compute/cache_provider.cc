// CacheExpertProvider implementation.
#include "compute/cache_provider.h"

namespace es {

Result<std::unique_ptr<CacheExpertProvider>> CacheExpertProvider::Create(Store& store, const std::string& model,
                                                                         const ExpertCacheOptions& options) {
  ES_ASSIGN_OR_RETURN(auto cache, ExpertCache::Open(store, model, options));
  return std::unique_ptr<CacheExpertProvider>(
      new CacheExpertProvider(std::move(cache), options.prefetch_bytes_in_flight > 0));
}

Status CacheExpertProvider::Acquire(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) {
  out.clear();
  std::vector<ExpertRef> refs;
  refs.reserve(experts.size());
  for (uint32_t e : experts) refs.push_back({layer, e});
  auto acquired = cache_->Acquire(refs);
  if (!acquired.ok() && acquired.status().IsResourceExhausted() && prefetch_) {
    // The prefetcher's reads in flight hold slots a demand batch as large as the cache needs: let them land
    // (they become evictable) and try again.
    cache_->WaitForPrefetches();
    acquired = cache_->Acquire(refs);
  }
  ES_ASSIGN_OR_RETURN(auto handles, std::move(acquired));
  for (size_t i = 0; i < handles.size(); ++i) {
    auto handle = std::make_shared<ExpertHandle>(std::move(handles[i]));
    ES_ASSIGN_OR_RETURN(auto weights, ExpertWeightsFromPayload(handle->info(), handle->payload()));
    out.push_back({experts[i], weights, handle, handle->payload()});
  }
  return Status::Ok();
}

void CacheExpertProvider::AcquireResident(uint32_t layer, std::span<const uint32_t> experts,
                                          std::vector<AcquiredExpert>& out) {
  out.clear();
  std::vector<ExpertRef> refs;
  refs.reserve(experts.size());
  for (uint32_t e : experts) refs.push_back({layer, e});
  std::vector<ExpertHandle> handles = cache_->PinResident(refs);
  for (size_t i = 0; i < handles.size(); ++i) {
    if (!handles[i].valid()) continue;
    auto handle = std::make_shared<ExpertHandle>(std::move(handles[i]));
    auto weights = ExpertWeightsFromPayload(handle->info(), handle->payload());
    if (!weights.ok()) continue;  // a corrupt record is reported by the demand path that needs it
    out.push_back({experts[i], *weights, handle, handle->payload()});
  }
}

void CacheExpertProvider::Prefetch(uint32_t layer, std::span<const uint32_t> experts) {
  if (!prefetch_) return;
  std::vector<ExpertRef> refs;
  for (uint32_t e : experts) refs.push_back({layer, e});
  cache_->Prefetch(refs);
}

ProviderCounters CacheExpertProvider::counters() const {
  CacheStats s = cache_->stats();
  return {s.hits, s.misses, s.prefetch_hits, s.wasted_prefetches, s.bytes_read, s.prefetch_bytes_read,
          s.prefetch_throttled};
}

}  // namespace es
