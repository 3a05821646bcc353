// Cache size validation.
#include "cache/cache_size.h"

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

}  // namespace es
