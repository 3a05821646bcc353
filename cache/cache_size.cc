// Cache size validation.
#include "cache/cache_size.h"

#include <algorithm>
#include <fstream>
#include <string>

namespace es {

namespace {

constexpr double kPercent = 100;

std::string Field(std::string_view prefix, std::string_view unit) {
  return "`" + std::string(prefix) + "_" + std::string(unit) + "`";
}

}  // namespace

Status ValidateCacheSize(const CacheSize& size, std::string_view prefix, bool required) {
  if (size.mb && size.pct) {
    return Status::InvalidArgument("give " + Field(prefix, "mb") + " or " + Field(prefix, "pct") + ", not both");
  }
  if (required && !size.mb && !size.pct) {
    return Status::InvalidArgument("give one of " + Field(prefix, "mb") + " and " + Field(prefix, "pct"));
  }
  if (size.mb && (*size.mb == 0 || *size.mb > kMaxCacheMb)) {
    return Status::InvalidArgument(Field(prefix, "mb") + " must be between 1 and " + std::to_string(kMaxCacheMb));
  }
  if (size.pct && !(*size.pct > 0 && *size.pct <= kPercent)) {
    return Status::InvalidArgument(Field(prefix, "pct") + " must be in (0, 100]");
  }
  return Status::Ok();
}

uint64_t PercentOfSlots(double pct, uint64_t total) {
  return static_cast<uint64_t>(pct / kPercent * static_cast<double>(total));
}

uint64_t CacheBytesForMemory(uint64_t available_bytes) {
  const uint64_t margin = std::max(kMinFreeMemoryBytes, available_bytes / kFreeMemoryDivisor);
  return available_bytes > margin ? available_bytes - margin : 0;
}

namespace {

// The first number in a small file, or nullopt ("max", missing file).
std::optional<uint64_t> ReadNumber(const char* path) {
  std::ifstream in(path);
  uint64_t v = 0;
  if (!(in >> v)) return std::nullopt;
  return v;
}

}  // namespace

Result<uint64_t> AvailableMemoryBytes() {
  std::ifstream meminfo("/proc/meminfo");
  if (!meminfo) return Status::IOError("cannot read /proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  std::optional<uint64_t> available;
  while (meminfo >> key >> kib) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") {
      available = kib * 1024;
      break;
    }
  }
  if (!available) return Status::IOError("/proc/meminfo has no MemAvailable");
  // A container's limit (cgroup v2, the process's own group is mounted at /sys/fs/cgroup).
  const auto limit = ReadNumber("/sys/fs/cgroup/memory.max");
  const auto current = ReadNumber("/sys/fs/cgroup/memory.current");
  if (limit && current) *available = std::min(*available, *limit > *current ? *limit - *current : 0);
  return *available;
}

}  // namespace es
