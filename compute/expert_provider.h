// ExpertProvider: how the forward pass gets the experts the router picked. The cache-backed provider pulls
// them through the pinned-memory ExpertCache (with prefetch); DirectExpertProvider reads every selected expert
// from disk on every call, the naive baseline a first prototype would be. Views stay valid while their lease
// is held; a provider is used by one generation at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "compute/kernels/cpu_kernels.h"
#include "store/records.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es {

struct AcquiredExpert {
  uint32_t expert = 0;
  kernels::ExpertWeights weights;  // points into memory the lease keeps alive
  std::shared_ptr<void> lease;
  std::span<const std::byte> payload;  // the whole record payload `weights` point into (what a GPU upload copies)
};

struct ProviderCounters {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t prefetch_hits = 0;
  uint64_t wasted_prefetches = 0;
  uint64_t prefetch_late = 0;        // prefetch hits whose read was still in flight (counted as misses: a wait)
  uint64_t bytes_read = 0;           // demand + prefetch
  uint64_t prefetch_bytes_read = 0;  // ... of which read ahead by the prefetcher
  uint64_t prefetch_throttled = 0;   // predictions not read while the prefetcher's guesses were mostly wrong
  uint64_t tier_uses = 0;            // expert uses served from a low-bit miss tier (not the model's own precision)
  uint64_t tier_promotions = 0;      // ... experts the tier served often enough to load at full precision
};

class ExpertProvider {
 public:
  virtual ~ExpertProvider() = default;
  // The experts of `layer` with these ids, in the same order. NotFound when the store lacks one (a partial
  // checkpoint): the message names it.
  virtual Status Acquire(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) = 0;
  // A hint: these experts of `layer` are likely needed soon. Default: ignored.
  virtual void Prefetch(uint32_t layer, std::span<const uint32_t> experts) {}
  // Whether the store holds expert `expert` of `layer` (false for the gaps of a partial checkpoint).
  virtual bool Has(uint32_t layer, uint32_t expert) const = 0;
  virtual bool prefetches() const { return false; }
  // Whether Acquire would find the expert in memory now, without reading. Default: false.
  virtual bool Resident(uint32_t layer, uint32_t expert) const { return false; }
  // Leases on those of `experts` that are in memory now, without reading, counting an access or changing what
  // the cache keeps (a GPU backend uploads them ahead of use); the rest are left out. Default: none.
  virtual void AcquireResident(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) {
    out.clear();
  }
  // The most experts one Acquire may pin (a cache's slot count); larger sets are acquired in parts.
  virtual size_t max_batch() const { return SIZE_MAX; }
  virtual ProviderCounters counters() const = 0;
};

// Builds kernel weight views over an expert payload laid out as its catalog record says (gate, up, down).
Result<kernels::ExpertWeights> ExpertWeightsFromPayload(const ExpertInfo& info, std::span<const std::byte> payload);

// Reads the selected experts from the store on every call, into fresh buffers: no cache, no prefetch.
class DirectExpertProvider final : public ExpertProvider {
 public:
  // Loads the model's expert catalog (small) up front.
  static Result<std::unique_ptr<DirectExpertProvider>> Create(Store& store, const std::string& model);
  Status Acquire(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) override;
  bool Has(uint32_t layer, uint32_t expert) const override {
    return layer < experts_.size() && expert < experts_[layer].size() && experts_[layer][expert].has_value();
  }
  ProviderCounters counters() const override { return counters_; }

 private:
  DirectExpertProvider(Store& store, std::string model) : store_(store), model_(std::move(model)) {}
  Store& store_;
  std::string model_;
  std::vector<std::vector<std::optional<ExpertInfo>>> experts_;  // [layer][expert]
  ProviderCounters counters_;
};

// Looks up the catalog records of every expert of a model: [layer][expert], empty where absent.
Result<std::vector<std::vector<std::optional<ExpertInfo>>>> LoadExpertCatalog(Store& store, const std::string& model,
                                                                               uint32_t layers, uint32_t experts);

}  // namespace es
