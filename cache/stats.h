// Cache statistics: counters and a swap-in latency histogram with fixed, log-spaced buckets (1-2-5 per decade,
// 50 us to 5 s), chosen once so that the Prometheus exposition (/metrics) and every report share the bounds.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace es {

// Upper bounds of the histogram's buckets in seconds; one more bucket (+Inf) takes everything above.
inline constexpr std::array<double, 16> kSwapInBucketBounds = {
    50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 200e-3, 500e-3, 1.0, 2.0, 5.0};

// A latency histogram. Not thread-safe (the cache updates it under its lock); copyable as a snapshot.
struct LatencyHistogram {
  // counts[i]: observations <= kSwapInBucketBounds[i] and > the previous bound (not cumulative);
  // counts.back(): observations above the last bound.
  std::array<uint64_t, kSwapInBucketBounds.size() + 1> counts{};
  uint64_t count = 0;
  double sum_seconds = 0;

  void Observe(double seconds);
  // Prometheus' cumulative count for bucket i (observations <= its bound).
  uint64_t Cumulative(size_t bucket) const;
  // The upper bound of the bucket holding the q-quantile (0 < q <= 1), +Inf for the overflow bucket, 0 when
  // empty: coarse, as any bucketed quantile is.
  double QuantileUpperBound(double q) const;
};

struct CacheStats {
  // Demand: every key passed to Acquire that the catalog has. hits + misses = demand accesses.
  uint64_t hits = 0;               // resident and ready
  uint64_t misses = 0;             // read by this Acquire, or in flight for another acquirer or the prefetcher
  uint64_t evictions = 0;
  uint64_t read_errors = 0;        // reads that failed (I/O error, corruption), demand or prefetch
  // Prefetch.
  uint64_t prefetch_issued = 0;     // reads the prefetcher started
  uint64_t prefetch_hits = 0;       // prefetched experts whose first demand access found them (ready or in flight)
  uint64_t prefetch_late = 0;       // ... of which still in flight at that access (counted as misses too)
  uint64_t wasted_prefetches = 0;   // prefetched experts evicted before any demand access
  uint64_t prefetch_cancelled = 0;  // queued predictions removed by CancelPrefetch
  uint64_t prefetch_dropped = 0;    // queued predictions never issued: queue overflow, no free slot, demand
                                    // asked for the expert first, or its layer came without using it
  // Guesses: predictions of experts not resident, scored when their layer next acquires.
  uint64_t prefetch_guesses = 0;         // guesses scored
  uint64_t prefetch_guesses_right = 0;   // ... that the layer used
  uint64_t prefetch_unused = 0;          // prefetched experts their layer did not use (demoted: evicted first)
  uint64_t prefetch_throttled = 0;       // predictions not read because the guesses' accuracy was too low
  uint64_t prefetch_max_bytes_in_flight = 0;  // high-water mark, never above the configured cap
  // I/O.
  uint64_t bytes_read = 0;           // record bytes requested from the device, demand + prefetch
  uint64_t prefetch_bytes_read = 0;  // ... of which by the prefetcher
  // One observation per Acquire that waited for at least one read: how long it stalled.
  LatencyHistogram swap_in;
};

}  // namespace es
