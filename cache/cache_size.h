// A cache's size as users give it: in MiB, or as a percentage of a model's experts. The one parser and checker of
// that pair, for the host expert cache, the GPU expert cache and the cache simulator. Errors name the options'
// fields in backquotes (`cache_mb`, `cache_pct`, or with another prefix), which a front end may translate into
// its own names for them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "store/base/status.h"

namespace es {

// The largest size in MiB any cache accepts (1 PiB).
inline constexpr uint64_t kMaxCacheMb = uint64_t{1} << 30;

struct CacheSize {
  std::optional<uint64_t> mb = std::nullopt;
  std::optional<double> pct = std::nullopt;
};

// At most one of mb and pct (exactly one when `required`), mb in [1, kMaxCacheMb], pct in (0, 100]. `prefix`
// names the pair in messages: "cache" -> `cache_mb` and `cache_pct`.
Status ValidateCacheSize(const CacheSize& size, std::string_view prefix, bool required = false);

// `pct` percent of `total` slots, rounded down to whole slots.
uint64_t PercentOfSlots(double pct, uint64_t total);

// The default host cache when no size or state is given: it may take what memory is available now less a
// margin, kept for the KV cache, the page cache and other processes: a quarter of what is available, and at
// least kMinFreeMemoryBytes.
inline constexpr uint64_t kMinFreeMemoryBytes = uint64_t{1} << 30;
inline constexpr uint64_t kFreeMemoryDivisor = 4;
uint64_t CacheBytesForMemory(uint64_t available_bytes);

// The memory this process could still use, in bytes: /proc/meminfo's MemAvailable, lowered to the cgroup's
// memory.max less memory.current where a cgroup (v2) limit applies. IOError when /proc/meminfo cannot be read.
Result<uint64_t> AvailableMemoryBytes();

}  // namespace es
