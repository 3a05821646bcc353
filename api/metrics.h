// Service metrics and their Prometheus text exposition (GET /metrics): HTTP requests by route and code with a
// latency histogram, connections, blob bytes served, generation counters, and the expert caches' statistics
// (hits, misses, bytes read, swap-in latency histogram). Thread-safe: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cache/stats.h"
#include "store/catalog.h"

namespace es::api {

// One loaded model's expert cache, as the generation service reports it.
struct ModelCacheMetrics {
  std::string model;
  CacheStats stats;
  uint64_t capacity_slots = 0;
  // The lookahead router's predictions over the runtime's finished generations (PrefetchAccuracy), and its
  // decode steps by whether they prefetched (PrefetchGovernor).
  uint64_t prefetch_predicted = 0;  // distinct experts predicted for a layer
  uint64_t prefetch_correct = 0;    // ... that the layer then used
  uint64_t prefetch_used = 0;       // distinct experts layers used where a prediction had been made
  uint64_t decode_steps_prefetching = 0;
  uint64_t decode_steps_not_prefetching = 0;
  // Expert uses (ProviderCounters hits + misses), those a low-bit miss tier served, and its promotions.
  uint64_t expert_uses = 0;
  uint64_t tier_uses = 0;
  uint64_t tier_promotions = 0;
};

// The generation service's gauges at the moment of a scrape.
struct GenerationGauges {
  uint64_t queued = 0;    // jobs waiting
  uint64_t running = 0;   // 0 or 1
  std::vector<ModelCacheMetrics> caches;
};

class Metrics {
 public:
  void RecordRequest(std::string_view route, int status, double seconds);
  void ConnectionOpened();
  void ConnectionClosed();
  void ConnectionRejected();  // over the connection cap
  void AddBlobBytes(uint64_t bytes);
  // One finished generation (also cancelled ones: the tokens were computed).
  void RecordGeneration(std::string_view model, uint64_t prompt_tokens, uint64_t completion_tokens,
                        double prefill_seconds, double decode_seconds);
  // A generation stopped because its client went away.
  void RecordCancelled(std::string_view model);

  // The Prometheus text format (version 0.0.4).
  std::string Render(const GenerationGauges& generation, const CatalogMemory& catalog = {}) const;

  uint64_t open_connections() const;

 private:
  struct RouteStats {
    LatencyHistogram latency;
    std::map<int, uint64_t> by_code;
  };
  struct ModelGeneration {
    uint64_t requests = 0;
    uint64_t prompt_tokens = 0;
    uint64_t completion_tokens = 0;
    double prefill_seconds = 0;
    double decode_seconds = 0;
    double last_tokens_per_second = 0;
    uint64_t cancelled = 0;
  };

  mutable std::mutex mu_;
  std::map<std::string, RouteStats, std::less<>> routes_;
  uint64_t connections_open_ = 0;
  uint64_t connections_total_ = 0;
  uint64_t connections_rejected_ = 0;
  uint64_t blob_bytes_ = 0;
  std::map<std::string, ModelGeneration, std::less<>> generation_;
};

}  // namespace es::api
