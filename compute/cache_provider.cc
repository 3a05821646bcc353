// CacheExpertProvider implementation.
#include "compute/cache_provider.h"

#include <optional>

namespace es {

Result<std::unique_ptr<CacheExpertProvider>> CacheExpertProvider::Create(Store& store, const std::string& model,
                                                                         const ExpertCacheOptions& options) {
  ES_ASSIGN_OR_RETURN(auto cache, ExpertCache::Open(store, model, options));
  return std::unique_ptr<CacheExpertProvider>(
      new CacheExpertProvider(std::move(cache), options.prefetch_bytes_in_flight > 0));
}

Status CacheExpertProvider::SetMissTier(std::unique_ptr<ExpertCache> tier) {
  if (!prefetch_) return Status::InvalidArgument("a miss tier needs the cache's prefetcher to load full experts");
  tier_ = std::move(tier);
  std::lock_guard<std::mutex> lock(tier_mu_);
  tier_count_.assign(cache_->experts().keys().num_keys(), 0);
  return Status::Ok();
}

Status CacheExpertProvider::AcquireFrom(ExpertCache& cache, std::span<const ExpertRef> refs,
                                        std::span<const size_t> positions, std::span<const uint32_t> experts,
                                        std::vector<AcquiredExpert>& out, const AcquireOptions& options) {
  if (refs.empty()) return Status::Ok();
  auto acquired = cache.Acquire(refs, options);
  if (!acquired.ok() && acquired.status().IsResourceExhausted() && prefetch_) {
    // The prefetcher's reads in flight hold slots a demand batch as large as the cache needs: let them land
    // (they become evictable) and try again.
    cache.WaitForPrefetches();
    acquired = cache.Acquire(refs, options);
  }
  ES_ASSIGN_OR_RETURN(auto handles, std::move(acquired));
  for (size_t i = 0; i < handles.size(); ++i) {
    if (!handles[i].valid()) continue;  // not resident (resident_only)
    auto handle = std::make_shared<ExpertHandle>(std::move(handles[i]));
    ES_ASSIGN_OR_RETURN(auto weights, ExpertWeightsFromPayload(handle->info(), handle->payload()));
    out[positions[i]] = {experts[positions[i]], weights, handle, handle->payload()};
  }
  return Status::Ok();
}

Status CacheExpertProvider::Acquire(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) {
  out.assign(experts.size(), {});
  std::vector<ExpertRef> refs;
  std::vector<size_t> at;
  for (size_t i = 0; i < experts.size(); ++i) {
    refs.push_back({layer, experts[i]});
    at.push_back(i);
  }
  // Without a tier every expert comes from the cache; with one, only those resident now, checked and pinned in
  // one step (an expert seen resident is never evicted before its pin and read again at full precision).
  ES_RETURN_IF_ERROR(AcquireFrom(*cache_, refs, at, experts, out, {.resident_only = tier_ != nullptr}));
  if (tier_ == nullptr) return Status::Ok();
  std::vector<ExpertRef> low;
  std::vector<size_t> low_at;
  for (size_t i = 0; i < experts.size(); ++i) {
    if (out[i].lease != nullptr) continue;
    low.push_back(refs[i]);
    low_at.push_back(i);
  }
  if (low.empty()) return Status::Ok();
  ES_RETURN_IF_ERROR(AcquireFrom(*tier_, low, low_at, experts, out));
  tier_uses_ += low.size();
  Promote(low);
  return Status::Ok();
}

void CacheExpertProvider::Promote(std::span<const ExpertRef> served) {
  // The expert of the batch the tier served most often since its last promotion, if often enough and the loader
  // is idle (a promotion must not delay the reads later layers wait for).
  std::optional<ExpertRef> best;
  {
    std::lock_guard<std::mutex> lock(tier_mu_);
    uint32_t best_count = 0;
    PolicyKey best_key = 0;
    for (const ExpertRef& ref : served) {
      // A layer the cache does not keep (too small for one token's experts: CachedLayers) would evict a promoted
      // expert before its next use: a full read for nothing.
      if (ref.layer >= cache_->cached_layers()) continue;
      const auto key = cache_->experts().keys().Key(ref);
      if (!key) continue;
      const uint32_t count = ++tier_count_[*key];
      if (count >= kPromoteAfterTierUses && count > best_count) {
        best = ref;
        best_count = count;
        best_key = *key;
      }
    }
    if (!best || !cache_->LoaderIdle()) return;
    tier_count_[best_key] = 0;
  }
  ++promotions_;
  cache_->Load(std::span<const ExpertRef>(&*best, 1));  // full precision for the tokens after this one
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
  if (tier_ == nullptr) {
    cache_->Prefetch(refs);
    return;
  }
  // With a tier, what is not resident will run from the low-bit copy: read that ahead instead.
  std::erase_if(refs, [&](const ExpertRef& r) { return cache_->IsResident(r); });
  tier_->Prefetch(refs);
}

ProviderCounters CacheExpertProvider::counters() const {
  CacheStats s = cache_->stats();
  ProviderCounters c{s.hits, s.misses, s.prefetch_hits, s.wasted_prefetches, s.prefetch_late, s.bytes_read,
                     s.prefetch_bytes_read, s.prefetch_throttled};
  if (tier_ != nullptr) {
    // The cache never misses then: the tier's misses are the model's reads, its hits hits.
    const CacheStats t = tier_->stats();
    c.hits += t.hits;
    c.misses += t.misses;
    c.prefetch_hits += t.prefetch_hits;
    c.wasted_prefetches += t.wasted_prefetches;
    c.prefetch_late += t.prefetch_late;
    c.bytes_read += t.bytes_read;
    c.prefetch_bytes_read += t.prefetch_bytes_read;
    c.prefetch_throttled += t.prefetch_throttled;
    c.tier_uses = tier_uses_.load();
    c.tier_promotions = promotions_.load();
  }
  return c;
}

}  // namespace es
