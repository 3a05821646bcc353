// PrefetchGovernor: whether a decode step predicts and prefetches, chosen by measuring. Prefetching pays when a
// right guess saves more stall than the reads, wakeups and verification of all guesses cost, and that depends on
// the machine (cores, disk), the expert size and the model's predictability, none of which a fixed rule knows.
// So decode steps run in short epochs, prefetching or not, each epoch's median step time is kept per mode as a
// moving average, and the faster mode runs, with an epoch given to the other now and then to keep its figure
// current: after kMinProbeInterval epochs, and twice as long after each probe that leaves the preference as it
// was (up to kMaxProbeInterval), back to the shortest when the preference changes. Before both modes have
// kExploreEpochs epochs they alternate. Prefill is not governed (Model::Forward asks only for single-token
// steps). Thread-safe.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace es {

class PrefetchGovernor {
 public:
  static constexpr uint32_t kEpochSteps = 4;     // decode steps per epoch
  static constexpr uint32_t kExploreEpochs = 2;  // epochs of each mode before the faster one is preferred
  static constexpr uint32_t kMinProbeInterval = 8;   // epochs of the preferred mode between probes of the other
  static constexpr uint32_t kMaxProbeInterval = 64;
  static constexpr double kWeight = 0.25;        // the moving average's weight of one epoch
  static constexpr double kProbeWeight = 0.5;    // ... of a probe epoch

  // Whether the next decode step prefetches.
  bool PrefetchNext() const;
  // A decode step run in mode `prefetched` took `seconds`.
  void Observe(bool prefetched, double seconds);

  struct Mode {
    double seconds = 0;   // moving average of epoch medians, per step
    uint64_t epochs = 0;  // finished epochs
    uint64_t steps = 0;   // steps observed
  };
  Mode mode(bool prefetched) const;
  // True when the prefetching mode is the one preferred now (it measured faster, or nothing is known yet).
  bool PrefersPrefetch() const;

 private:
  bool PrefersPrefetchLocked() const;
  bool ChooseLocked();

  mutable std::mutex mu_;
  Mode modes_[2];                 // [0] without prefetch, [1] with
  bool current_ = true;           // the running epoch's mode
  std::vector<double> epoch_;     // the running epoch's step times
  uint32_t probe_interval_ = kMinProbeInterval;
  uint32_t since_probe_ = 0;      // preferred epochs since the last probe
  bool preferred_ = true;         // the preference when the last epoch ended
  bool explored_ = false;         // both modes have had their exploration epochs
};

}  // namespace es
