// ExpertCache: one mutex guards the slot table, the policy, the prefetch queue and the statistics; reads run
// without it. A slot moves free -> loading (claimed by one reader, pinned) -> ready (evictable once unpinned)
// or failed (returned to the free list when its last pin goes). Waiters for a loading slot block on loaded_cv_.
#include "cache/expert_cache.h"
#include "store/base/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace es {

// ---- ExpertHandle ---------------------------------------------------------------------------------------

ExpertHandle& ExpertHandle::operator=(ExpertHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    cache_ = std::exchange(other.cache_, nullptr);
    slot_ = other.slot_;
    info_ = std::exchange(other.info_, nullptr);
    payload_ = std::exchange(other.payload_, {});
  }
  return *this;
}

void ExpertHandle::Reset() {
  if (cache_ != nullptr) cache_->Release(slot_);
  cache_ = nullptr;
  info_ = nullptr;
  payload_ = {};
}

std::span<const std::byte> ExpertHandle::projection(std::string_view role) const {
  if (info_ == nullptr) return {};
  for (const ProjectionInfo& p : info_->projections) {
    if (p.role != role) continue;
    if (p.offset > payload_.size() || p.length > payload_.size() - p.offset) return {};  // a damaged record
    return payload_.subspan(p.offset, p.length);
  }
  return {};
}

// ---- ExpertCache ----------------------------------------------------------------------------------------

namespace {

std::string ExpertName(ExpertRef ref) {
  return "layer " + std::to_string(ref.layer) + " expert " + std::to_string(ref.expert);
}

}  // namespace

uint32_t ExpertCache::SlotsFor(const ModelExperts& experts, uint64_t capacity_bytes) {
  // More slots than experts could never fill; fewer than one could hold nothing.
  return static_cast<uint32_t>(
      std::clamp<uint64_t>(capacity_bytes / experts.max_record_bytes(), 1, experts.experts().size()));
}

Result<std::unique_ptr<ExpertCache>> ExpertCache::Open(Store& store, const std::string& model,
                                                       const ExpertCacheOptions& options) {
  if (options.policy == PolicyKind::kBelady) {
    return Status::InvalidArgument("belady needs the future access sequence: it is for replaying a recorded trace, "
                                   "not a live cache");
  }
  ES_ASSIGN_OR_RETURN(ModelExperts experts, ModelExperts::Load(store.catalog(), model));
  const uint64_t slot_bytes = experts.max_record_bytes();
  const uint32_t slots = SlotsFor(experts, options.capacity_bytes);

  std::unique_ptr<ExpertCache> cache(new ExpertCache(store, std::move(experts)));
  const ModelExperts& e = cache->experts_;
  ES_ASSIGN_OR_RETURN(cache->arena_, PinnedArena::Create(slot_bytes, slots, options.arena));

  PolicyConfig pc;
  pc.kind = options.policy;
  pc.num_keys = e.keys().num_keys();
  pc.capacity = slots;
  pc.layers = e.keys().layers;
  pc.experts_per_token = options.experts_per_token;
  if (options.policy == PolicyKind::kTrust) pc.traits = e.Traits();
  pc.trust_weights = options.trust_weights;
  pc.trust_horizon = options.trust_horizon;
  ES_ASSIGN_OR_RETURN(cache->policy_, MakePolicy(pc));
  cache->cached_layers_ = CachedLayers(pc);

  cache->slots_.resize(slots);
  for (uint32_t s = slots; s > 0; --s) cache->free_slots_.push_back(s - 1);
  cache->slot_of_key_.assign(e.keys().num_keys(), kNoSlot);
  cache->queued_.assign(e.keys().num_keys(), false);

  if (options.register_buffers) {
    // NotSupported (the pread engine) and ResourceExhausted (kernel limits; the engine warns once) leave reads
    // unregistered but correct.
    auto registration = store.reader().engine().AddBuffers(cache->arena_->RegistrationChunks());
    if (registration.ok()) cache->registration_ = *registration;
  }
  if (options.prefetch_bytes_in_flight > 0) {
    cache->prefetch_enabled_ = true;
    cache->prefetch_cap_bytes_ = std::max(options.prefetch_bytes_in_flight, slot_bytes);
    cache->prefetch_queue_limit_ =
        options.prefetch_queue_limit != 0 ? options.prefetch_queue_limit : slots;
    cache->prefetch_min_accuracy_ = options.prefetch_min_accuracy;
    cache->guesses_.resize(e.keys().layers);
    cache->guessed_.assign(e.keys().num_keys(), false);
    ES_ASSIGN_OR_RETURN(cache->prefetcher_, StartThread([c = cache.get()] { c->PrefetchLoop(); }, "the prefetcher"));
  }
  return cache;
}

ExpertCache::~ExpertCache() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  prefetch_cv_.notify_all();
  if (prefetcher_.joinable()) prefetcher_.join();
  // The engine must not keep the arena registered once it is freed: a later allocation at the same address
  // would otherwise be read into through stale fixed buffers.
  if (registration_) store_.reader().engine().RemoveBuffers(*registration_);
}

bool ExpertCache::Contains(ExpertRef ref) const {
  auto key = experts_.keys().Key(ref);
  return key && experts_.Find(*key) != nullptr;
}

bool ExpertCache::IsResident(ExpertRef ref) const {
  auto key = experts_.keys().Key(ref);
  if (!key) return false;
  std::lock_guard<std::mutex> lock(mu_);
  int32_t s = slot_of_key_[*key];
  return s != kNoSlot && slots_[static_cast<size_t>(s)].state == SlotState::kReady;
}

std::vector<ExpertHandle> ExpertCache::PinResident(std::span<const ExpertRef> refs) {
  std::vector<ExpertHandle> handles(refs.size());
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < refs.size(); ++i) {
    auto key = experts_.keys().Key(refs[i]);
    if (!key) continue;
    int32_t s = slot_of_key_[*key];
    if (s == kNoSlot) continue;
    Slot& slot = slots_[static_cast<size_t>(s)];
    if (slot.state != SlotState::kReady) continue;
    ++slot.pins;
    handles[i] = ExpertHandle(this, static_cast<uint32_t>(s), experts_.Find(slot.key), slot.payload);
  }
  return handles;
}

CacheStats ExpertCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

int32_t ExpertCache::TakeSlotLocked(uint64_t now, std::optional<PolicyKey> prefetching) {
  const bool for_prefetch = prefetching.has_value();
  if (!free_slots_.empty()) {
    uint32_t s = free_slots_.back();
    free_slots_.pop_back();
    return static_cast<int32_t>(s);
  }
  // A prefetch its layer did not use goes before anything the policy ranks.
  std::erase_if(demoted_slots_, [&](uint32_t d) { return !slots_[d].demoted; });  // used since, or evicted
  for (size_t i = demoted_slots_.size(); i > 0; --i) {
    const uint32_t d = demoted_slots_[i - 1];
    if (slots_[d].pins != 0 || slots_[d].state != SlotState::kReady) continue;  // being read or used
    demoted_slots_.erase(demoted_slots_.begin() + static_cast<ptrdiff_t>(i - 1));
    return EvictLocked(static_cast<int32_t>(d));
  }
  auto victim = policy_->Victim(now, [&](PolicyKey k) {
    const Slot& slot = slots_[static_cast<size_t>(slot_of_key_[k])];
    return slot.pins == 0 && slot.state == SlotState::kReady && !(for_prefetch && slot.unused_prefetch);
  });
  if (!victim) return kNoSlot;
  if (prefetching && !policy_->WorthPrefetching(*prefetching, *victim)) return kNoSlot;
  return EvictLocked(slot_of_key_[*victim]);
}

int32_t ExpertCache::EvictLocked(int32_t s) {
  Slot& slot = slots_[static_cast<size_t>(s)];
  if (slot.unused_prefetch) ++stats_.wasted_prefetches;
  policy_->Erase(slot.key);
  slot_of_key_[slot.key] = kNoSlot;
  slot = Slot{};
  ++stats_.evictions;
  return s;
}

void ExpertCache::ScoreGuessesLocked(const AcquireBatch& batch) {
  constexpr double kWeight = 1.0 / 32;  // the moving average's weight of one guess
  for (int64_t k : batch.key_of) {
    if (k == kSkipped) continue;
    std::vector<PolicyKey>& guesses = guesses_[experts_.keys().Ref(static_cast<PolicyKey>(k)).layer];
    if (guesses.empty()) continue;
    for (PolicyKey g : guesses) {
      guessed_[g] = false;
      const bool used = std::find(batch.key_of.begin(), batch.key_of.end(), static_cast<int64_t>(g)) !=
                        batch.key_of.end();
      ++stats_.prefetch_guesses;
      stats_.prefetch_guesses_right += used;
      guess_accuracy_ += kWeight * ((used ? 1.0 : 0.0) - guess_accuracy_);
      if (used) continue;
      if (queued_[g]) {  // its layer has come: reading it now would serve only a later pass, if any
        DropQueuedLocked(g);
        continue;
      }
      const int32_t s = slot_of_key_[g];
      if (s == kNoSlot) continue;
      Slot& slot = slots_[static_cast<size_t>(s)];
      if (!slot.unused_prefetch || slot.demoted) continue;
      slot.demoted = true;
      demoted_slots_.push_back(static_cast<uint32_t>(s));
      ++stats_.prefetch_unused;
    }
    guesses.clear();
  }
}

void ExpertCache::DropQueuedLocked(PolicyKey key) {
  queued_[key] = false;  // its deque entry stays as dead weight, skipped and compacted away
  --queued_count_;
  ++stats_.prefetch_dropped;
}

double ExpertCache::prefetch_guess_accuracy() const {
  std::lock_guard<std::mutex> lock(mu_);
  return guess_accuracy_;
}

void ExpertCache::UnpinLocked(uint32_t s) {
  Slot& slot = slots_[s];
  if (--slot.pins == 0 && slot.state == SlotState::kFailed) {
    slot = Slot{};
    free_slots_.push_back(s);
  }
}

void ExpertCache::Release(uint32_t slot) {
  std::lock_guard<std::mutex> lock(mu_);
  UnpinLocked(slot);
}

void ExpertCache::ReadSlots(const std::vector<uint32_t>& slot_ids, bool prefetch) {
  std::vector<ExtentRead> reads(slot_ids.size());
  std::vector<PolicyKey> keys(slot_ids.size());
  {
    // The claiming thread wrote the keys under the lock; reading them under it keeps the analysis simple.
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < slot_ids.size(); ++i) {
      keys[i] = slots_[slot_ids[i]].key;
      reads[i].extent = experts_.Find(keys[i])->extent;
      reads[i].buffer = arena_->slot(slot_ids[i]);
    }
  }
  store_.reader().ReadBatch(reads);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < slot_ids.size(); ++i) {
      Slot& slot = slots_[slot_ids[i]];
      stats_.bytes_read += reads[i].extent.record_length;
      if (prefetch) stats_.prefetch_bytes_read += reads[i].extent.record_length;
      if (reads[i].status.ok()) {
        slot.state = SlotState::kReady;
        slot.payload = reads[i].payload;
        continue;
      }
      // Failed: the key is forgotten at once so that the next Acquire reads again; the slot is reclaimed when
      // the last waiter has seen the error.
      ++stats_.read_errors;
      slot.state = SlotState::kFailed;
      slot.error = reads[i].status.WithContext(ExpertName(experts_.keys().Ref(keys[i])));
      slot.unused_prefetch = false;
      slot_of_key_[keys[i]] = kNoSlot;
      policy_->Erase(keys[i]);
    }
  }
  loaded_cv_.notify_all();
}

Status ExpertCache::ResolveKeys(std::span<const ExpertRef> refs, const AcquireOptions& options,
                                AcquireBatch& batch) const {
  const size_t n = refs.size();
  batch.key_of.assign(n, kSkipped);
  std::vector<PolicyKey> distinct;
  for (size_t i = 0; i < n; ++i) {
    auto key = experts_.keys().Key(refs[i]);
    if (!key || experts_.Find(*key) == nullptr) {
      if (options.skip_missing) continue;
      return Status::NotFound("model '" + experts_.model().name + "' has no " + ExpertName(refs[i]) +
                              " (a partial checkpoint)");
    }
    batch.key_of[i] = *key;
    distinct.push_back(*key);
  }
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  // Resident experts fit by definition: only a batch that may read needs the room.
  if (!options.resident_only && distinct.size() > capacity_slots()) {
    return Status::ResourceExhausted("a batch of " + std::to_string(distinct.size()) + " experts exceeds the cache's " +
                                     std::to_string(capacity_slots()) + " slots");
  }
  return Status::Ok();
}

Status ExpertCache::PinBatchLocked(AcquireBatch& batch) {
  const size_t n = batch.key_of.size();
  batch.slot_of.assign(n, kNoSlot);
  // Each access gets its own tick, in the order given, exactly as the simulator assigns them.
  std::vector<uint64_t> tick(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (batch.key_of[i] != kSkipped) tick[i] = now_++;
  }
  if (prefetch_enabled_) ScoreGuessesLocked(batch);
  CacheStats delta;  // committed to stats_ only if the batch is admitted
  PinPresentLocked(batch, tick, delta);
  ES_RETURN_IF_ERROR(ClaimMissesLocked(batch, tick, delta));
  stats_.hits += delta.hits;
  stats_.misses += delta.misses;
  stats_.prefetch_hits += delta.prefetch_hits;
  stats_.prefetch_late += delta.prefetch_late;
  if (!batch.to_read.empty()) ++demand_reads_in_flight_;
  return Status::Ok();
}

void ExpertCache::PinPresentLocked(AcquireBatch& batch, const std::vector<uint64_t>& tick, CacheStats& delta) {
  for (size_t i = 0; i < batch.key_of.size(); ++i) {
    if (batch.key_of[i] == kSkipped) continue;
    PolicyKey key = static_cast<PolicyKey>(batch.key_of[i]);
    int32_t s = slot_of_key_[key];
    if (s == kNoSlot) continue;
    Slot& slot = slots_[static_cast<size_t>(s)];
    ++slot.pins;
    batch.slot_of[i] = s;
    policy_->Touch(key, tick[i]);
    const bool ready = slot.state == SlotState::kReady;
    if (ready) {
      ++delta.hits;
    } else {
      ++delta.misses;
      batch.to_wait.push_back(static_cast<uint32_t>(s));
    }
    if (slot.unused_prefetch) {
      ++delta.prefetch_hits;
      if (!ready) ++delta.prefetch_late;
      slot.unused_prefetch = false;
    }
    slot.demoted = false;
  }
}

Status ExpertCache::ClaimMissesLocked(AcquireBatch& batch, const std::vector<uint64_t>& tick, CacheStats& delta) {
  for (size_t i = 0; i < batch.key_of.size(); ++i) {
    if (batch.key_of[i] == kSkipped || batch.slot_of[i] != kNoSlot) continue;
    PolicyKey key = static_cast<PolicyKey>(batch.key_of[i]);
    ++delta.misses;
    if (int32_t s = slot_of_key_[key]; s != kNoSlot) {
      ++slots_[static_cast<size_t>(s)].pins;
      batch.slot_of[i] = s;
      policy_->Touch(key, tick[i]);
      continue;
    }
    if (queued_[key]) DropQueuedLocked(key);  // demand overtakes the queued prediction
    int32_t s = TakeSlotLocked(tick[i], std::nullopt);
    if (s == kNoSlot) {
      UndoPinsLocked(batch);
      return Status::ResourceExhausted("every one of the cache's " + std::to_string(capacity_slots()) +
                                       " slots is pinned or being read");
    }
    Slot& slot = slots_[static_cast<size_t>(s)];
    slot = Slot{};
    slot.state = SlotState::kLoading;
    slot.key = key;
    slot.pins = 1;
    slot_of_key_[key] = s;
    batch.slot_of[i] = s;
    policy_->Insert(key, tick[i]);
    policy_->Touch(key, tick[i]);
    batch.to_read.push_back(static_cast<uint32_t>(s));
  }
  return Status::Ok();
}

void ExpertCache::UndoPinsLocked(const AcquireBatch& batch) {
  // The claimed slots go back to the free list (nobody else can have seen them: the lock was held throughout),
  // every other pin of this batch is dropped.
  for (uint32_t c : batch.to_read) {
    slot_of_key_[slots_[c].key] = kNoSlot;
    policy_->Erase(slots_[c].key);
    slots_[c] = Slot{};
    free_slots_.push_back(c);
  }
  for (int32_t s : batch.slot_of) {
    if (s != kNoSlot && slots_[static_cast<size_t>(s)].state != SlotState::kFree) {
      UnpinLocked(static_cast<uint32_t>(s));
    }
  }
}

void ExpertCache::ReadClaimed(const std::vector<uint32_t>& to_read) {
  if (to_read.empty()) return;
  ReadSlots(to_read, /*prefetch=*/false);
  std::lock_guard<std::mutex> lock(mu_);
  if (--demand_reads_in_flight_ == 0) prefetch_cv_.notify_all();
}

Status ExpertCache::BatchFailureLocked(const AcquireBatch& batch) const {
  for (int32_t s : batch.slot_of) {
    if (s != kNoSlot && slots_[static_cast<size_t>(s)].state == SlotState::kFailed) {
      return slots_[static_cast<size_t>(s)].error;
    }
  }
  return Status::Ok();
}

std::vector<ExpertHandle> ExpertCache::HandlesLocked(const AcquireBatch& batch) {
  std::vector<ExpertHandle> handles(batch.slot_of.size());
  for (size_t i = 0; i < batch.slot_of.size(); ++i) {
    if (batch.slot_of[i] == kNoSlot) continue;
    const Slot& slot = slots_[static_cast<size_t>(batch.slot_of[i])];
    handles[i] = ExpertHandle(this, static_cast<uint32_t>(batch.slot_of[i]), experts_.Find(slot.key), slot.payload);
  }
  return handles;
}

Result<std::vector<ExpertHandle>> ExpertCache::Acquire(std::span<const ExpertRef> refs, const AcquireOptions& options) {
  AcquireBatch batch;
  ES_RETURN_IF_ERROR(ResolveKeys(refs, options, batch));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (options.resident_only) {
      for (int64_t& key : batch.key_of) {
        if (key == kSkipped) continue;
        const int32_t s = slot_of_key_[static_cast<PolicyKey>(key)];
        if (s == kNoSlot || slots_[static_cast<size_t>(s)].state != SlotState::kReady) key = kSkipped;
      }
    }
    ES_RETURN_IF_ERROR(PinBatchLocked(batch));
  }

  const auto start = std::chrono::steady_clock::now();
  ReadClaimed(batch.to_read);

  std::unique_lock<std::mutex> lock(mu_);
  if (!batch.to_wait.empty()) {
    loaded_cv_.wait(lock, [&] {
      return std::none_of(batch.to_wait.begin(), batch.to_wait.end(),
                          [&](uint32_t s) { return slots_[s].state == SlotState::kLoading; });
    });
  }
  if (!batch.to_read.empty() || !batch.to_wait.empty()) {
    stats_.swap_in.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (Status failure = BatchFailureLocked(batch); !failure.ok()) {
    for (int32_t s : batch.slot_of) {
      if (s != kNoSlot) UnpinLocked(static_cast<uint32_t>(s));
    }
    return failure;
  }
  return HandlesLocked(batch);
}

// ---- prefetcher -----------------------------------------------------------------------------------------

void ExpertCache::Prefetch(std::span<const ExpertRef> refs) { Queue(refs, /*guess=*/true); }

void ExpertCache::Load(std::span<const ExpertRef> refs) { Queue(refs, /*guess=*/false); }

void ExpertCache::Queue(std::span<const ExpertRef> refs, bool guess) {
  if (!prefetch_enabled_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const ExpertRef& ref : refs) {
      auto key = experts_.keys().Key(ref);
      if (!key || experts_.Find(*key) == nullptr || slot_of_key_[*key] != kNoSlot || queued_[*key]) continue;
      if (guess && !guessed_[*key]) {
        guessed_[*key] = true;
        guesses_[ref.layer].push_back(*key);
      }
      if (guess && guess_accuracy_ < prefetch_min_accuracy_) {
        ++stats_.prefetch_throttled;
        continue;
      }
      queued_[*key] = true;
      ++queued_count_;
      prefetch_queue_.push_back(*key);
      while (queued_count_ > prefetch_queue_limit_) {  // the oldest guesses are the stalest: drop them
        PolicyKey old = prefetch_queue_.front();
        prefetch_queue_.pop_front();
        if (queued_[old]) DropQueuedLocked(old);
      }
    }
    // Entries overtaken by demand stay in the deque as dead weight; compact when they dominate.
    if (prefetch_queue_.size() > 2 * static_cast<size_t>(queued_count_) + prefetch_queue_limit_) {
      std::erase_if(prefetch_queue_, [&](PolicyKey k) { return !queued_[k]; });
    }
  }
  prefetch_cv_.notify_all();
}

void ExpertCache::CancelPrefetch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (PolicyKey k : prefetch_queue_) {
      if (queued_[k]) {
        queued_[k] = false;
        ++stats_.prefetch_cancelled;
      }
    }
    prefetch_queue_.clear();
    queued_count_ = 0;
  }
  prefetch_cv_.notify_all();
}

void ExpertCache::CancelPrefetch(uint32_t layer) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase_if(prefetch_queue_, [&](PolicyKey k) {
      if (!queued_[k]) return true;
      if (experts_.keys().Ref(k).layer != layer) return false;
      queued_[k] = false;
      --queued_count_;
      ++stats_.prefetch_cancelled;
      return true;
    });
  }
  prefetch_cv_.notify_all();
}

void ExpertCache::WaitForPrefetches() {
  std::unique_lock<std::mutex> lock(mu_);
  prefetch_cv_.wait(lock, [&] { return stopping_ || (queued_count_ == 0 && prefetch_bytes_in_flight_ == 0); });
}

bool ExpertCache::LoaderIdle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_count_ == 0 && prefetch_bytes_in_flight_ == 0;
}

void ExpertCache::PrefetchLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    // Demand first: no new prefetch batch starts while a demand read is in flight.
    prefetch_cv_.wait(lock, [&] { return stopping_ || (queued_count_ > 0 && demand_reads_in_flight_ == 0); });
    if (stopping_) return;
    std::vector<uint32_t> batch;
    uint64_t bytes = 0;
    while (!prefetch_queue_.empty()) {
      PolicyKey key = prefetch_queue_.front();
      if (!queued_[key]) {
        prefetch_queue_.pop_front();
        continue;
      }
      const uint64_t record = experts_.Find(key)->extent.record_length;
      if (!batch.empty() && bytes + record > prefetch_cap_bytes_) break;
      prefetch_queue_.pop_front();
      queued_[key] = false;
      --queued_count_;
      if (slot_of_key_[key] != kNoSlot) continue;  // became resident after it was queued
      int32_t s = TakeSlotLocked(now_, key);
      if (s == kNoSlot) {
        ++stats_.prefetch_dropped;
        continue;
      }
      Slot& slot = slots_[static_cast<size_t>(s)];
      slot = Slot{};
      slot.state = SlotState::kLoading;
      slot.key = key;
      slot.pins = 1;  // the prefetcher's, until the read is published
      slot.unused_prefetch = true;
      slot_of_key_[key] = s;
      policy_->Insert(key, now_);
      batch.push_back(static_cast<uint32_t>(s));
      bytes += record;
      ++stats_.prefetch_issued;
    }
    if (batch.empty()) {
      prefetch_cv_.notify_all();  // the queue drained without a read: wake WaitForPrefetches
      continue;
    }
    prefetch_bytes_in_flight_ = bytes;
    stats_.prefetch_max_bytes_in_flight = std::max(stats_.prefetch_max_bytes_in_flight, bytes);
    lock.unlock();
    ReadSlots(batch, /*prefetch=*/true);
    lock.lock();
    for (uint32_t s : batch) UnpinLocked(s);
    prefetch_bytes_in_flight_ = 0;
    prefetch_cv_.notify_all();
  }
}

}  // namespace es
