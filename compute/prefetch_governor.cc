// PrefetchGovernor implementation.
#include "compute/prefetch_governor.h"

#include <algorithm>

namespace es {

bool PrefetchGovernor::PrefetchNext() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

PrefetchGovernor::Mode PrefetchGovernor::mode(bool prefetched) const {
  std::lock_guard<std::mutex> lock(mu_);
  return modes_[prefetched ? 1 : 0];
}

bool PrefetchGovernor::PrefersPrefetch() const {
  std::lock_guard<std::mutex> lock(mu_);
  return PrefersPrefetchLocked();
}

bool PrefetchGovernor::PrefersPrefetchLocked() const {
  if (modes_[0].epochs == 0 || modes_[1].epochs == 0) return true;
  return modes_[1].seconds <= modes_[0].seconds;
}

bool PrefetchGovernor::ChooseLocked() {
  // Explore: the mode with fewer epochs runs (prefetch first, the configured behaviour), until each has its share.
  if (modes_[0].epochs < kExploreEpochs || modes_[1].epochs < kExploreEpochs) {
    return modes_[1].epochs <= modes_[0].epochs;
  }
  const bool preferred = PrefersPrefetchLocked();
  if (!explored_) {
    explored_ = true;
    preferred_ = preferred;
    return preferred;
  }
  const bool probed = current_ != preferred_;  // the epoch that just ended ran the other mode
  if (preferred != preferred_) {
    probe_interval_ = kMinProbeInterval;  // the preference changed: look again soon
  } else if (probed) {
    probe_interval_ = std::min(2 * probe_interval_, kMaxProbeInterval);  // the probe confirmed it
  }
  preferred_ = preferred;
  if (probed || ++since_probe_ < probe_interval_) return preferred;
  since_probe_ = 0;
  return !preferred;
}

void PrefetchGovernor::Observe(bool prefetched, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  Mode& m = modes_[prefetched ? 1 : 0];
  ++m.steps;
  if (prefetched != current_) return;  // a step begun before the epoch changed: not this epoch's
  epoch_.push_back(seconds);
  if (epoch_.size() < kEpochSteps) return;
  std::sort(epoch_.begin(), epoch_.end());
  const size_t n = epoch_.size();
  const double median = n % 2 ? epoch_[n / 2] : (epoch_[n / 2 - 1] + epoch_[n / 2]) / 2;
  // A probe's figure replaces more of the other mode's, which is as old as the probe interval.
  const double weight = explored_ && current_ != preferred_ ? kProbeWeight : kWeight;
  m.seconds = m.epochs == 0 ? median : m.seconds + weight * (median - m.seconds);
  ++m.epochs;
  epoch_.clear();
  current_ = ChooseLocked();
}

}  // namespace es
