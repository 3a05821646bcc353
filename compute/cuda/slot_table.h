// SlotTable: DeviceExpertCache's host-side bookkeeping, apart from any CUDA call: which key lives in which slot,
// who holds it, recency, the counters, and the choice of a victim. Plain C++, header-only: device_cache.cu wraps it
// with CUDA events and copies, and the test emulator (tests/util/cuda_emulator/) with emulated ones, so the
// emulated backend tests run this very logic. Not thread-safe: the cache calls it under its mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "store/base/status.h"

namespace es::cuda {

struct DeviceCacheStats {
  uint64_t uploads = 0;         // copies enqueued (misses)
  uint64_t bytes_uploaded = 0;  // their bytes
  uint64_t hits = 0;            // Upload / Acquire calls that found the key resident
  uint64_t evictions = 0;       // resident experts replaced
  uint64_t ordered_evictions = 0;  // of those, victims whose last use had not completed: the copy waits on the GPU
};

namespace internal {

class SlotTable {
 public:
  struct Slot {
    bool occupied = false;
    uint64_t key = 0;
    size_t bytes = 0;
    uint32_t holders = 0;
    bool use_recorded = false;  // use_event has been recorded at least once since the slot was filled
    uint64_t last_touch = 0;
    void* ready_event = nullptr;  // the implementation's event objects
    void* use_event = nullptr;
  };

  explicit SlotTable(size_t slots = 0) : slots_(slots) {}

  size_t size() const { return slots_.size(); }
  Slot& operator[](size_t i) { return slots_[i]; }
  const Slot& operator[](size_t i) const { return slots_[i]; }
  std::vector<Slot>& slots() { return slots_; }
  const DeviceCacheStats& stats() const { return stats_; }

  // The slot holding `key`, counted as a hit and just used; nullopt when it is not resident.
  std::optional<size_t> Hit(uint64_t key) {
    auto it = index_.find(key);
    if (it == index_.end()) return std::nullopt;
    slots_[it->second].last_touch = ++clock_;
    ++stats_.hits;
    return it->second;
  }
  bool Contains(uint64_t key) const { return index_.count(key) != 0; }
  // Contains, and a resident key counts as just used (not as a hit).
  bool Touch(uint64_t key) {
    auto it = index_.find(key);
    if (it == index_.end()) return false;
    slots_[it->second].last_touch = ++clock_;
    return true;
  }

  // The slot a miss goes to: a free one, else the least recently used one nobody holds, preferring one whose last
  // use has completed (`use_done(use_event)` -> Result<bool>, asked only of slots whose use was recorded). When
  // every unheld slot is still in use, the least recently used of them, with *use_pending set: the copy into it
  // must wait for that use. ResourceExhausted when every slot is held.
  template <typename UseDone>
  Result<size_t> PickVictim(UseDone use_done, bool* use_pending) {
    *use_pending = false;
    size_t oldest_done = slots_.size();
    size_t oldest_busy = slots_.size();
    for (size_t i = 0; i < slots_.size(); ++i) {
      const Slot& slot = slots_[i];
      if (!slot.occupied) return i;
      if (slot.holders > 0) continue;
      bool done = true;
      if (slot.use_recorded) {
        Result<bool> d = use_done(slot.use_event);
        if (!d.ok()) return d.status();
        done = *d;
      }
      size_t& oldest = done ? oldest_done : oldest_busy;
      if (oldest == slots_.size() || slot.last_touch < slots_[oldest].last_touch) oldest = i;
    }
    if (oldest_done != slots_.size()) return oldest_done;
    if (oldest_busy != slots_.size()) {
      *use_pending = true;
      return oldest_busy;
    }
    return Status::ResourceExhausted("DeviceExpertCache: all " + std::to_string(slots_.size()) +
                                     " slots are held; release some before uploading more");
  }

  // Empties the victim before its copy is enqueued (its old key forgotten, counted as an eviction): a failure
  // between here and Fill leaves it free, never half-claimed.
  void Vacate(size_t index, bool use_pending) {
    Slot& slot = slots_[index];
    if (slot.occupied) {
      index_.erase(slot.key);
      ++stats_.evictions;
      if (use_pending) ++stats_.ordered_evictions;
    }
    slot.occupied = false;
  }

  // The slot now holds `key`: its copy is enqueued.
  void Fill(size_t index, uint64_t key, size_t bytes) {
    Slot& slot = slots_[index];
    slot.occupied = true;
    slot.key = key;
    slot.bytes = bytes;
    slot.holders = 0;
    slot.use_recorded = false;
    slot.last_touch = ++clock_;
    index_[key] = index;
    ++stats_.uploads;
    stats_.bytes_uploaded += bytes;
  }

  // Whether a Release of (index, key) matches a holder.
  Status CheckHeld(size_t index, uint64_t key) const {
    if (index >= slots_.size()) return Status::InvalidArgument("DeviceExpertCache::Release: no such slot");
    const Slot& slot = slots_[index];
    if (!slot.occupied || slot.key != key || slot.holders == 0) {
      return Status::InvalidArgument("DeviceExpertCache::Release: the slot is not held for this key");
    }
    return Status::Ok();
  }
  // After the slot's last-use event was recorded.
  void Released(size_t index) {
    slots_[index].use_recorded = true;
    --slots_[index].holders;
  }

 private:
  std::vector<Slot> slots_;
  std::unordered_map<uint64_t, size_t> index_;
  uint64_t clock_ = 0;
  DeviceCacheStats stats_;
};

}  // namespace internal
}  // namespace es::cuda
