// ExpertCache: one model's experts in a fixed pinned arena, one expert per slot. Acquire pins a batch of
// experts (a layer's top-k) and hands back views of their verified bytes; misses are read in one batched
// ExtentReader call straight into free slots; an expert is read once however many threads ask for it at the
// same time, and never evicted while a handle pins it. A background prefetcher reads predicted experts at lower
// priority than demand misses. Thread-safe: every method may be called from any thread.
#pragma once

#include <condition_variable>
#include <optional>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cache/arena.h"
#include "cache/model_experts.h"
#include "cache/policy.h"
#include "cache/stats.h"
#include "store/records.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es {

// A prefetch read that turns out right saves about one demand read; a wrong one costs about one (device time a
// demand read may queue behind, its verification, the slot it took): reads pay while more than half are right.
inline constexpr double kDefaultPrefetchMinAccuracy = 0.5;

struct ExpertCacheOptions {
  // Rounded down to whole slots of the model's largest expert record, at least one, at most one per expert.
  uint64_t capacity_bytes = 0;
  // lru, lfu, trust, reuse or arc (belady needs the future and is refused).
  PolicyKind policy = PolicyKind::kLru;
  // Experts a token uses per layer: with it, a recency policy too small for one token's experts caches only some
  // layers (PolicyConfig::experts_per_token, CachedLayers). 0: unknown, every layer cached.
  uint32_t experts_per_token = 0;
  TrustWeights trust_weights = {};
  uint64_t trust_horizon = 0;  // 0: PolicyConfig's default
  // The prefetcher's cap on bytes being read at once (rounded up to one slot); 0 disables prefetching.
  uint64_t prefetch_bytes_in_flight = 0;
  // Queued predictions beyond this many drop the oldest (stale guesses are worthless); 0: one per slot.
  uint32_t prefetch_queue_limit = 0;
  // Predictions are read only while the cache's measured guess accuracy (of the predicted experts that were not
  // resident, the share their layer then used; a moving average over about 32 guesses, read or not) is at least
  // this: below it a wrong read costs more than a right one saves. 0 reads every prediction.
  double prefetch_min_accuracy = kDefaultPrefetchMinAccuracy;
  ArenaOptions arena = {};
  // Register the arena with the store's IoEngine (io_uring fixed buffers).
  bool register_buffers = true;
};

struct AcquireOptions {
  // An expert the catalog lacks (a partial checkpoint) yields an empty handle instead of failing the batch.
  bool skip_missing = false;
  // Only the experts ready in the arena now are pinned and counted (as hits); the others yield empty handles and
  // are neither read nor counted. The check and the pin happen under one lock, so an expert seen resident cannot
  // be evicted before it is pinned (a miss tier serves the rest from its low-bit copy).
  bool resident_only = false;
};

class ExpertCache;

// A pinned expert. While it lives, payload() points into the cache's arena and the expert cannot be evicted;
// destroying (or Reset) unpins it. Movable, not copyable. Must not outlive the cache. Reading payload() from
// several threads is safe; the handle object itself is not synchronised.
class ExpertHandle {
 public:
  ExpertHandle() = default;
  ~ExpertHandle() { Reset(); }
  ExpertHandle(ExpertHandle&& other) noexcept { *this = std::move(other); }
  ExpertHandle& operator=(ExpertHandle&& other) noexcept;
  ExpertHandle(const ExpertHandle&) = delete;
  ExpertHandle& operator=(const ExpertHandle&) = delete;

  // False for a default-constructed, moved-from, reset or skipped (absent) handle.
  bool valid() const { return cache_ != nullptr; }
  ExpertRef ref() const { return {info_->layer, info_->expert}; }
  // The catalog record: extent, projection roles, dtypes, shapes and offsets within payload().
  const ExpertInfo& info() const { return *info_; }
  // The verified payload, 4 KiB aligned, in pinned memory.
  std::span<const std::byte> payload() const { return payload_; }
  // One projection's bytes by role ("gate", "up", "down", ...), or an empty span when the expert has none.
  std::span<const std::byte> projection(std::string_view role) const;
  void Reset();

 private:
  friend class ExpertCache;
  ExpertHandle(ExpertCache* cache, uint32_t slot, const ExpertInfo* info, std::span<const std::byte> payload)
      : cache_(cache), slot_(slot), info_(info), payload_(payload) {}

  ExpertCache* cache_ = nullptr;
  uint32_t slot_ = 0;
  const ExpertInfo* info_ = nullptr;
  std::span<const std::byte> payload_;
};

class ExpertCache {
 public:
  // Loads the model's expert index (and trust records, for the trust policy), allocates and registers the
  // arena, and starts the prefetcher if asked. `store` must outlive the cache. NotFound: no such model.
  static Result<std::unique_ptr<ExpertCache>> Open(Store& store, const std::string& model,
                                                   const ExpertCacheOptions& options);
  // The slots a cache of `capacity_bytes` gets for this model (what Open allocates; the simulator uses it too).
  static uint32_t SlotsFor(const ModelExperts& experts, uint64_t capacity_bytes);
  // Stops the prefetcher (after its in-flight reads) and unregisters the arena. Every handle must be gone.
  ~ExpertCache();
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // Pins every expert of `refs` and returns one handle per ref, in order. Misses are read together in one
  // batch; experts another thread (or the prefetcher) is already reading are waited for, not read again.
  // Errors (the batch pins nothing then): NotFound for an expert the catalog lacks (unless skip_missing);
  // ResourceExhausted when the slots are all pinned or in flight, or the batch has more distinct experts than
  // the cache has slots; IOError or Corruption from the read.
  Result<std::vector<ExpertHandle>> Acquire(std::span<const ExpertRef> refs, const AcquireOptions& options = {});

  // Queues predicted experts for background reads. Returns at once; no-op without a prefetcher. Experts already
  // resident, in flight, queued or absent from the catalog are ignored. Reads are issued in batches no larger
  // than the byte cap, never while a demand read is in flight, and never evict an unused prefetched expert.
  // Each prediction of a non-resident expert is a guess, scored when the next Acquire of its layer comes: used
  // or not. A guess still queued then is dropped (its layer has passed), and one that was read but not used is
  // the first to be evicted. While the guesses' moving accuracy is below `prefetch_min_accuracy`, predictions
  // are scored but not read.
  void Prefetch(std::span<const ExpertRef> refs);
  // Reads these experts in the background as Prefetch does, but as loads asked for, not guesses: never scored,
  // throttled or demoted (the full-precision copy of an expert just served from a low-bit one).
  void Load(std::span<const ExpertRef> refs);
  // The moving accuracy of the prefetcher's guesses (1 before any was scored).
  double prefetch_guess_accuracy() const;
  // Drops queued (not yet issued) predictions: all of them, or those of one layer. Reads in flight complete.
  void CancelPrefetch();
  void CancelPrefetch(uint32_t layer);
  // Blocks until the prefetch queue is empty and no prefetch read is in flight.
  void WaitForPrefetches();
  // Whether the prefetcher has nothing queued and nothing in flight now (true without a prefetcher).
  bool LoaderIdle() const;

  // True when the catalog has the expert (a partial checkpoint lacks some).
  bool Contains(ExpertRef ref) const;
  // True when the expert is in a slot and readable now (not in flight).
  bool IsResident(ExpertRef ref) const;
  // Pins those of `refs` that are resident and ready now, without reading anything, counting an access or
  // touching the policy: a copy out of the cache (a GPU upload) that must not disturb it. Empty handles for
  // the rest.
  std::vector<ExpertHandle> PinResident(std::span<const ExpertRef> refs);

  CacheStats stats() const;
  const ModelExperts& experts() const { return experts_; }
  uint32_t capacity_slots() const { return arena_->num_slots(); }
  uint64_t slot_bytes() const { return arena_->slot_bytes(); }
  ArenaKind arena_kind() const { return arena_->kind(); }
  // Whether the store's IoEngine accepted the arena as registered buffers.
  bool buffers_registered() const { return registration_.has_value(); }
  std::string_view policy_name() const { return policy_->name(); }
  // The layers the policy caches (CachedLayers): all of them unless one token's experts do not fit.
  uint32_t cached_layers() const { return cached_layers_; }

 private:
  enum class SlotState : uint8_t { kFree, kLoading, kReady, kFailed };
  struct Slot {
    SlotState state = SlotState::kFree;
    PolicyKey key = 0;
    uint32_t pins = 0;
    bool unused_prefetch = false;  // the prefetcher read it and no demand access has touched it yet
    bool demoted = false;          // a prefetch its layer did not use: the first to be evicted
    Status error;                  // kFailed: why
    std::span<const std::byte> payload;
  };
  static constexpr int32_t kNoSlot = -1;

  ExpertCache(Store& store, ModelExperts experts) : store_(store), experts_(std::move(experts)) {}
  friend class ExpertHandle;
  void Release(uint32_t slot);

  // Requires mu_. A free slot, or one freed by evicting the policy's victim; -1 when every slot is pinned or in
  // flight. For a prefetch of `prefetching` it also spares unused prefetched experts, and gives -1 when the
  // policy holds the victim worth more than the prediction (EvictionPolicy::WorthPrefetching).
  int32_t TakeSlotLocked(uint64_t now, std::optional<PolicyKey> prefetching);
  // Requires mu_. Evicts the ready, unpinned expert in slot `s` and returns the slot.
  int32_t EvictLocked(int32_t s);
  // Requires mu_ and a queued key: takes the prediction out of the queue, counted as dropped.
  void DropQueuedLocked(PolicyKey key);
  // Requires mu_. Releases one pin taken by Acquire; a failed slot with no pins left goes back to the free list.
  void UnpinLocked(uint32_t slot);
  // Reads `slots` (each kLoading for its key) in one batch without the lock, then publishes the results.
  void ReadSlots(const std::vector<uint32_t>& slots, bool prefetch);

  // One Acquire call's state across its phases, one entry per ref in the per-ref vectors.
  struct AcquireBatch {
    std::vector<int64_t> key_of;    // the ref's key, or kSkipped
    std::vector<int32_t> slot_of;   // the slot the batch pins for the ref, or kNoSlot
    std::vector<uint32_t> to_read;  // slots this call claimed and reads
    std::vector<uint32_t> to_wait;  // slots others are reading
  };
  static constexpr int64_t kSkipped = -1;  // a ref that skip_missing left out
  // Requires mu_. Scores the guesses made for the layers of the batch against it, drops those still queued and
  // demotes those read and unused.
  void ScoreGuessesLocked(const AcquireBatch& batch);

  // Resolves every ref's key without the lock (the index is immutable). NotFound for an expert the catalog lacks
  // (unless skip_missing); ResourceExhausted when the batch has more distinct experts than the cache has slots.
  Status ResolveKeys(std::span<const ExpertRef> refs, const AcquireOptions& options, AcquireBatch& batch) const;
  // Caller holds mu_. Pins every expert of the batch (claiming slots for the misses) and commits the batch's
  // statistics; on ResourceExhausted the batch pins and claims nothing.
  Status PinBatchLocked(AcquireBatch& batch);
  // Caller holds mu_. Pins what is already resident or in flight, so that the misses cannot evict it.
  void PinPresentLocked(AcquireBatch& batch, const std::vector<uint64_t>& tick, CacheStats& delta);
  // Caller holds mu_. Claims and pins a slot for each miss (a duplicate of a miss claimed here shares its slot);
  // when no slot can be had, undoes the whole batch and returns ResourceExhausted.
  Status ClaimMissesLocked(AcquireBatch& batch, const std::vector<uint64_t>& tick, CacheStats& delta);
  // Caller holds mu_. Frees the slots the batch claimed and drops every other pin it took.
  void UndoPinsLocked(const AcquireBatch& batch);
  // Reads the claimed slots without the lock, then lets the prefetcher go once no demand read is in flight.
  void ReadClaimed(const std::vector<uint32_t>& to_read);
  // Caller holds mu_. The error of the batch's first failed slot, or OK.
  Status BatchFailureLocked(const AcquireBatch& batch) const;
  // Caller holds mu_. One handle per ref (empty for a skipped one); each takes over its ref's pin.
  std::vector<ExpertHandle> HandlesLocked(const AcquireBatch& batch);

  void PrefetchLoop();
  void Queue(std::span<const ExpertRef> refs, bool guess);

  Store& store_;
  const ModelExperts experts_;
  std::unique_ptr<PinnedArena> arena_;
  std::optional<uint64_t> registration_;  // the engine's id for the arena's registration

  mutable std::mutex mu_;
  std::condition_variable loaded_cv_;    // a slot left kLoading
  std::condition_variable prefetch_cv_;  // work for the prefetcher, or demand reads finished
  std::unique_ptr<EvictionPolicy> policy_;
  uint32_t cached_layers_ = 0;
  std::vector<Slot> slots_;
  std::vector<int32_t> slot_of_key_;  // per key: its slot (loading or ready), or kNoSlot
  std::vector<uint32_t> free_slots_;
  uint64_t now_ = 0;                  // logical clock: demand accesses so far
  uint32_t demand_reads_in_flight_ = 0;
  CacheStats stats_;

  // Prefetcher state (under mu_).
  bool prefetch_enabled_ = false;
  uint64_t prefetch_cap_bytes_ = 0;
  uint32_t prefetch_queue_limit_ = 0;
  std::deque<PolicyKey> prefetch_queue_;  // may hold stale entries: queued_ says which are live
  std::vector<bool> queued_;
  uint32_t queued_count_ = 0;
  uint64_t prefetch_bytes_in_flight_ = 0;
  double prefetch_min_accuracy_ = 0;
  // Guesses: per layer, the keys predicted while not resident, scored at that layer's next Acquire.
  std::vector<std::vector<PolicyKey>> guesses_;
  std::vector<bool> guessed_;  // per key: in guesses_
  double guess_accuracy_ = 1;
  std::vector<uint32_t> demoted_slots_;  // may hold stale entries: Slot::demoted says which are live
  bool stopping_ = false;
  std::thread prefetcher_;
};

}  // namespace es
