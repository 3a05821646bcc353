// Metabolic-state budgets, the swap-in histogram and the pinned arena.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "cache/arena.h"
#include "cache/cache_size.h"
#include "cache/states.h"
#include "cache/stats.h"

namespace es {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
// Qwen3-30B-A3B: 48 layers x 128 experts, top-8, 9 MiB experts (records add a 4 KiB header).
constexpr StateModel kQwen3 = {.top_k = 8, .experts_per_layer = 128, .num_experts = 48 * 128,
                               .slot_bytes = 9 * kMiB + 4096};

TEST(StatesTest, PresetsForQwen3) {
  auto wake = ResolveState(MetabolicState::kWake, kQwen3);
  ASSERT_TRUE(wake.ok());
  EXPECT_EQ(wake->experts_per_token, 4u);
  EXPECT_EQ(wake->cache_slots, 308u);  // ceil(5% of 6144)
  EXPECT_EQ(wake->cache_bytes, 308 * kQwen3.slot_bytes);
  EXPECT_EQ(wake->prefetch_depth, 0u);
  EXPECT_EQ(wake->prefetch_bytes_in_flight, 0u);

  auto focus = ResolveState(MetabolicState::kFocus, kQwen3);
  ASSERT_TRUE(focus.ok());
  EXPECT_EQ(focus->experts_per_token, 8u);
  EXPECT_EQ(focus->cache_slots, 922u);
  EXPECT_EQ(focus->prefetch_depth, 1u);
  EXPECT_EQ(focus->prefetch_bytes_in_flight, 8 * kQwen3.slot_bytes);

  auto crisis = ResolveState(MetabolicState::kCrisis, kQwen3);
  ASSERT_TRUE(crisis.ok());
  EXPECT_EQ(crisis->experts_per_token, 16u);
  EXPECT_EQ(crisis->cache_slots, 2458u);
  EXPECT_EQ(crisis->prefetch_depth, 3u);
  EXPECT_EQ(crisis->prefetch_bytes_in_flight, 3 * 16 * kQwen3.slot_bytes);
  EXPECT_LT(wake->cache_bytes, focus->cache_bytes);
  EXPECT_LT(focus->cache_bytes, crisis->cache_bytes);
}

TEST(StatesTest, FloorsAndCeilingsForSmallModels) {
  StateModel tiny{.top_k = 4, .experts_per_layer = 32, .num_experts = 6 * 32, .slot_bytes = 1 * kMiB};
  auto focus = ResolveState(MetabolicState::kFocus, tiny);
  ASSERT_TRUE(focus.ok());
  EXPECT_EQ(focus->cache_slots, 29u);  // 15% of 192 = 28.8 beats the floor of (1 + 2) x 4 = 12
  StateModel one_layer{.top_k = 4, .experts_per_layer = 16, .num_experts = 16, .slot_bytes = kMiB};
  auto crisis = ResolveState(MetabolicState::kCrisis, one_layer);
  ASSERT_TRUE(crisis.ok());
  EXPECT_EQ(crisis->experts_per_token, 8u);
  EXPECT_EQ(crisis->cache_slots, 16u);  // the floor (3 + 2) x 8 = 40 is capped at the 16 experts there are
  StateModel top1{.top_k = 1, .experts_per_layer = 8, .num_experts = 64, .slot_bytes = kMiB};
  auto wake = ResolveState(MetabolicState::kWake, top1);
  ASSERT_TRUE(wake.ok());
  EXPECT_EQ(wake->experts_per_token, 1u);  // never 0
  EXPECT_EQ(wake->cache_slots, 4u);        // max(floor 2, ceil(3.2))
}

TEST(StatesTest, Overrides) {
  auto b = ResolveState(MetabolicState::kWake, kQwen3, {.cache_mb = 1000, .prefetch_depth = 2});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->cache_slots, 1000 * kMiB / kQwen3.slot_bytes);
  EXPECT_EQ(b->experts_per_token, 4u);  // k stays the state's
  EXPECT_EQ(b->prefetch_depth, 2u);
  EXPECT_EQ(b->prefetch_bytes_in_flight, 2 * 4 * kQwen3.slot_bytes);
  auto no_prefetch = ResolveState(MetabolicState::kCrisis, kQwen3, {.prefetch_depth = 0});
  ASSERT_TRUE(no_prefetch.ok());
  EXPECT_EQ(no_prefetch->prefetch_bytes_in_flight, 0u);
  auto too_small = ResolveState(MetabolicState::kFocus, kQwen3, {.cache_mb = 50});  // 5 slots < k = 8
  EXPECT_TRUE(too_small.status().IsInvalidArgument());
  EXPECT_NE(too_small.status().message().find("`cache_mb`"), std::string::npos);
}

TEST(StatesTest, NamesAndMaintenanceStates) {
  for (auto s : {MetabolicState::kWake, MetabolicState::kFocus, MetabolicState::kCrisis, MetabolicState::kRest,
                 MetabolicState::kDream}) {
    EXPECT_EQ(*ParseMetabolicState(MetabolicStateName(s)), s);
  }
  EXPECT_TRUE(ParseMetabolicState("sleep").status().IsInvalidArgument());
  EXPECT_TRUE(IsGenerationState(MetabolicState::kFocus));
  EXPECT_FALSE(IsGenerationState(MetabolicState::kRest));
  EXPECT_FALSE(IsGenerationState(MetabolicState::kDream));
  EXPECT_TRUE(ResolveState(MetabolicState::kRest, kQwen3).status().IsInvalidArgument());
  EXPECT_TRUE(ResolveState(MetabolicState::kDream, kQwen3).status().IsInvalidArgument());
  EXPECT_TRUE(ResolveState(MetabolicState::kFocus, StateModel{}).status().IsInvalidArgument());
}

TEST(HistogramTest, BucketsAreLogSpacedAndInclusive) {
  for (size_t i = 1; i < kSwapInBucketBounds.size(); ++i) {
    double ratio = kSwapInBucketBounds[i] / kSwapInBucketBounds[i - 1];
    EXPECT_GE(ratio, 2.0 - 1e-9);
    EXPECT_LE(ratio, 2.5 + 1e-9);
  }
  LatencyHistogram h;
  h.Observe(0);
  h.Observe(1e-3);    // on a bound: that bucket (Prometheus' le)
  h.Observe(1.1e-3);
  h.Observe(60);      // overflow
  EXPECT_EQ(h.count, 4u);
  EXPECT_DOUBLE_EQ(h.sum_seconds, 0 + 1e-3 + 1.1e-3 + 60);
  EXPECT_EQ(h.counts[0], 1u);
  EXPECT_EQ(h.counts[4], 1u);  // 1 ms
  EXPECT_EQ(h.counts[5], 1u);  // 2 ms
  EXPECT_EQ(h.counts.back(), 1u);
  EXPECT_EQ(h.Cumulative(4), 2u);
  EXPECT_EQ(h.Cumulative(kSwapInBucketBounds.size()), 4u);
  EXPECT_EQ(h.QuantileUpperBound(0.5), 1e-3);
  EXPECT_TRUE(std::isinf(h.QuantileUpperBound(1.0)));
  EXPECT_EQ(LatencyHistogram{}.QuantileUpperBound(0.5), 0);
}

TEST(ArenaTest, SlotsAreAlignedDistinctAndUsable) {
  constexpr uint64_t kSlot = 3 * 4096;
  auto arena = PinnedArena::Create(kSlot, 5, {});
  ASSERT_TRUE(arena.ok()) << arena.status().ToString();
  PinnedArena& a = **arena;
  // No GPU here, so host memory: locked when the limits allow it, else unlocked (with a warning).
  EXPECT_NE(a.kind(), ArenaKind::kCudaPinned);
  EXPECT_EQ(a.bytes(), 5 * kSlot);
  for (uint32_t s = 0; s < 5; ++s) {
    auto slot = a.slot(s);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(slot.data()) % 4096, 0u);
    EXPECT_EQ(slot.size(), kSlot);
    std::memset(slot.data(), static_cast<int>(s + 1), slot.size());
  }
  for (uint32_t s = 0; s < 5; ++s) {
    auto slot = a.slot(s);
    EXPECT_EQ(slot[0], std::byte(s + 1));
    EXPECT_EQ(slot[kSlot - 1], std::byte(s + 1));
  }
  auto chunks = a.RegistrationChunks();
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].data(), a.slot(0).data());
  EXPECT_EQ(chunks[0].size(), a.bytes());

  auto unlocked = PinnedArena::Create(kSlot, 2, {.allow_cuda = false, .allow_mlock = false});
  ASSERT_TRUE(unlocked.ok());
  EXPECT_EQ((*unlocked)->kind(), ArenaKind::kUnlocked);
}

TEST(ArenaTest, BadShapes) {
  EXPECT_TRUE(PinnedArena::Create(0, 4, {}).status().IsInvalidArgument());
  EXPECT_TRUE(PinnedArena::Create(4096 + 1, 4, {}).status().IsInvalidArgument());
  EXPECT_TRUE(PinnedArena::Create(4096, 0, {}).status().IsInvalidArgument());
}

TEST(ArenaTest, ChunksCutAtSlotBoundaries) {
  using Chunks = std::vector<std::pair<uint32_t, uint32_t>>;
  EXPECT_EQ(SlotChunks(3, 10, 9), (Chunks{{0, 3}, {3, 3}, {6, 3}, {9, 1}}));
  EXPECT_EQ(SlotChunks(4, 4, 16), (Chunks{{0, 4}}));
  EXPECT_EQ(SlotChunks(10, 4, 9), Chunks{});
  // Qwen3's 9 MiB slots: 113 per 1 GiB registration.
  auto q = SlotChunks(9 * kMiB + 4096, 300, kMaxRegisteredBufferBytes);
  ASSERT_EQ(q.size(), 3u);
  EXPECT_EQ(q[0], (std::pair<uint32_t, uint32_t>{0, 113}));
  EXPECT_EQ(q[2], (std::pair<uint32_t, uint32_t>{226, 74}));
}

TEST(CacheSizeTest, OneParserForMibAndPercent) {
  EXPECT_TRUE(ValidateCacheSize({}, "cache").ok());
  EXPECT_TRUE(ValidateCacheSize({.mb = 1}, "cache").ok());
  EXPECT_TRUE(ValidateCacheSize({.mb = kMaxCacheMb}, "cache").ok());
  EXPECT_TRUE(ValidateCacheSize({.pct = 100}, "cache").ok());
  EXPECT_TRUE(ValidateCacheSize({.pct = 0.5}, "cache", /*required=*/true).ok());
  const struct {
    CacheSize size;
    bool required;
    const char* message;
  } bad[] = {
      {{.mb = 0}, false, "`gpu_cache_mb` must be between 1 and"},
      {{.mb = kMaxCacheMb + 1}, false, "`gpu_cache_mb` must be between 1 and"},
      {{.pct = 0}, false, "`gpu_cache_pct` must be in (0, 100]"},
      {{.pct = 100.5}, false, "`gpu_cache_pct` must be in (0, 100]"},
      {{.pct = -1}, false, "`gpu_cache_pct` must be in (0, 100]"},
      {{.mb = 4, .pct = 4}, false, "give `gpu_cache_mb` or `gpu_cache_pct`, not both"},
      {{}, true, "give one of `gpu_cache_mb` and `gpu_cache_pct`"},
  };
  for (const auto& b : bad) {
    Status s = ValidateCacheSize(b.size, "gpu_cache", b.required);
    EXPECT_TRUE(s.IsInvalidArgument()) << b.message;
    EXPECT_NE(s.message().find(b.message), std::string::npos) << s.message();
  }
  EXPECT_TRUE(ValidateCacheSize({.pct = std::nan("")}, "cache").IsInvalidArgument());
}

TEST(CacheSizeTest, PercentIsWholeSlotsRoundedDown) {
  EXPECT_EQ(PercentOfSlots(25, 192), 48u);
  EXPECT_EQ(PercentOfSlots(10, 192), 19u);
  EXPECT_EQ(PercentOfSlots(100, 192), 192u);
  EXPECT_EQ(PercentOfSlots(0.4, 192), 0u);
}

}  // namespace
}  // namespace es
