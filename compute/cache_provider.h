// CacheExpertProvider: the forward pass's experts through the pinned-memory ExpertCache, with the cache's
// prefetcher fed by the model's next-layer router predictions. The cache is owned; the store must outlive it.
#pragma once

#include <memory>
#include <string>

#include "cache/expert_cache.h"
#include "compute/expert_provider.h"

namespace es {

class CacheExpertProvider final : public ExpertProvider {
 public:
  static Result<std::unique_ptr<CacheExpertProvider>> Create(Store& store, const std::string& model,
                                                             const ExpertCacheOptions& options);
  Status Acquire(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) override;
  void Prefetch(uint32_t layer, std::span<const uint32_t> experts) override;
  bool prefetches() const override { return prefetch_; }
  size_t max_batch() const override { return cache_->capacity_slots(); }
  bool Has(uint32_t layer, uint32_t expert) const override { return cache_->Contains({layer, expert}); }
  bool Resident(uint32_t layer, uint32_t expert) const override { return cache_->IsResident({layer, expert}); }
  void AcquireResident(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) override;
  ProviderCounters counters() const override;
  ExpertCache& cache() { return *cache_; }

 private:
  explicit CacheExpertProvider(std::unique_ptr<ExpertCache> cache, bool prefetch)
      : cache_(std::move(cache)), prefetch_(prefetch) {}
  std::unique_ptr<ExpertCache> cache_;
  bool prefetch_;
};

}  // namespace es
