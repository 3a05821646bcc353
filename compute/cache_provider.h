// CacheExpertProvider: the forward pass's experts through the pinned-memory ExpertCache, with the cache's
// prefetcher fed by the model's next-layer router predictions. The cache is owned; the store must outlive it.
#pragma once

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

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
  // With a miss tier, a batch may be served wholly from it: no larger than either cache.
  size_t max_batch() const override {
    return tier_ == nullptr ? cache_->capacity_slots() : std::min(cache_->capacity_slots(), tier_->capacity_slots());
  }
  bool Has(uint32_t layer, uint32_t expert) const override { return cache_->Contains({layer, expert}); }
  bool Resident(uint32_t layer, uint32_t expert) const override { return cache_->IsResident({layer, expert}); }
  void AcquireResident(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) override;
  ProviderCounters counters() const override;
  ExpertCache& cache() { return *cache_; }

  // A low-bit copy of the model (the same experts, re-encoded: `quantize --add-tier`) that serves the experts not
  // resident in the cache: Acquire pins the resident ones from the cache and the others' low-bit records through
  // `tier`, a cache of its own (its hits cost nothing, its misses one small read); predictions of experts not
  // resident prefetch their low-bit records. An expert served from the copy kPromoteAfterTierUses times is
  // promoted: the cache loads its full-precision record in the background, one load at a time and only while
  // the cache's loader is idle, so promotions never queue ahead of the reads a token waits for, and only in the
  // layers the cache keeps (ExpertCache::cached_layers: a cache smaller than one token's experts keeps the
  // first few layers, where a promotion lasts). The output is then not the model's own. The cache must have a
  // prefetcher (its loads), the tier may have one (prefetch).
  Status SetMissTier(std::unique_ptr<ExpertCache> tier);
  ExpertCache* miss_tier() const { return tier_.get(); }
  static constexpr uint32_t kPromoteAfterTierUses = 2;

 private:
  explicit CacheExpertProvider(std::unique_ptr<ExpertCache> cache, bool prefetch)
      : cache_(std::move(cache)), prefetch_(prefetch) {}
  // Counts the tier's uses of `served` and promotes the most used one when due (SetMissTier).
  void Promote(std::span<const ExpertRef> served);
  // Pins `refs` in `cache` and puts their views in `out` at `positions` (with `options.resident_only`, only those
  // resident; the others' entries stay empty).
  Status AcquireFrom(ExpertCache& cache, std::span<const ExpertRef> refs, std::span<const size_t> positions,
                     std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out,
                     const AcquireOptions& options = {});
  std::unique_ptr<ExpertCache> cache_;
  bool prefetch_;
  std::unique_ptr<ExpertCache> tier_;
  std::atomic<uint64_t> tier_uses_{0};
  std::atomic<uint64_t> promotions_{0};
  std::mutex tier_mu_;
  std::vector<uint32_t> tier_count_;  // per key: uses served from the tier since the last promotion (tier_mu_)
};

}  // namespace es
