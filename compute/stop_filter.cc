// StopFilter implementation.
#include "compute/stop_filter.h"

#include <algorithm>
#include <utility>

namespace es {

std::string StopFilter::Push(std::string_view text) {
  if (stopped_) return {};
  pending_.append(text);
  // The earliest complete stop sequence cuts the output.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that could still grow into a stop sequence.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n) {
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopFilter::Flush() {
  if (stopped_) return {};
  return std::exchange(pending_, std::string());
}

}  // namespace es
