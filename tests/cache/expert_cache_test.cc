// ExpertCache against a std::map reference of every expert's bytes: hits and misses, pinning, partial
// checkpoints, slot exhaustion and rollback, read errors and corruption, one read per expert under concurrent
// acquirers, the prefetcher (hits, waste, cancel, byte cap, demand priority), equality with the simulator, and
// a stress test for TSan with acquirers, prefetchers and evictions all at once. Runs under both I/O engines.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "cache/expert_cache.h"
#include "cache/simulator.h"
#include "cache/trace.h"
#include "tests/cache/slow_fs.h"
#include "tests/util/expert_model.h"
#include "tests/util/fault_fs.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::TestExpertPayload;
using testing::TestModelSpec;
using Reference = std::map<std::pair<uint32_t, uint32_t>, std::vector<std::byte>>;

class ExpertCacheTest : public ::testing::Test {
 protected:
  // Writes the model through a plain store, then reopens it through `fs` (null: the real file system).
  void Build(const TestModelSpec& spec, std::shared_ptr<FileSystem> fs = nullptr) {
    spec_ = spec;
    {
      auto writer = Store::Open(dir_.path(), StoreOptions{});
      ASSERT_TRUE(writer.ok()) << writer.status().ToString();
      ASSERT_TRUE(testing::WriteTestModel(**writer, spec).ok());
    }
    StoreOptions options;
    options.read_only = true;
    options.fs = fs;
    auto store = Store::Open(dir_.path(), options);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    for (uint32_t l = 0; l < spec.layers; ++l) {
      for (uint32_t e = 0; e < spec.experts; ++e) {
        if (spec.missing.count({l, e}) == 0) reference_[{l, e}] = TestExpertPayload(l, e, spec.payload_bytes(l, e));
      }
    }
  }

  std::unique_ptr<ExpertCache> Open(ExpertCacheOptions options) {
    auto c = ExpertCache::Open(*store_, spec_.name, options);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  uint64_t SlotBytes() const {
    uint64_t m = 0;
    for (const auto& [k, v] : reference_) m = std::max(m, RecordLength(v.size()));
    return m;
  }
  uint64_t Record(uint32_t l, uint32_t e) const { return RecordLength(reference_.at({l, e}).size()); }

  // The handle's bytes are exactly the stored expert's.
  void ExpectBytes(const ExpertHandle& h) const {
    ASSERT_TRUE(h.valid());
    const auto& want = reference_.at({h.ref().layer, h.ref().expert});
    ASSERT_EQ(h.payload().size(), want.size());
    EXPECT_EQ(std::memcmp(h.payload().data(), want.data(), want.size()), 0)
        << "layer " << h.ref().layer << " expert " << h.ref().expert;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(h.payload().data()) % 4096, 0u);
  }

  testing::TempDir dir_;
  TestModelSpec spec_;
  std::unique_ptr<Store> store_;
  Reference reference_;
};

TEST_F(ExpertCacheTest, MissesThenHitsWithTheStoredBytes) {
  Build({});
  auto cache = Open({.capacity_bytes = 16 * SlotBytes()});
  ASSERT_TRUE(cache);
  EXPECT_EQ(cache->capacity_slots(), 16u);
  EXPECT_EQ(cache->slot_bytes(), SlotBytes());
  EXPECT_NE(cache->arena_kind(), ArenaKind::kCudaPinned);
  std::vector<ExpertRef> refs = {{0, 1}, {1, 5}, {0, 7}};
  {
    auto handles = cache->Acquire(refs);
    ASSERT_TRUE(handles.ok()) << handles.status().ToString();
    ASSERT_EQ(handles->size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ((*handles)[i].ref(), refs[i]);
      ExpectBytes((*handles)[i]);
    }
    // Projections are views into the payload at the catalog's offsets.
    const ExpertHandle& h = (*handles)[1];
    const auto& want = reference_.at({1, 5});
    ASSERT_EQ(h.info().projections.size(), 3u);
    auto up = h.projection("up");
    ASSERT_EQ(up.size(), h.info().projections[1].length);
    EXPECT_EQ(std::memcmp(up.data(), want.data() + h.info().projections[1].offset, up.size()), 0);
    EXPECT_TRUE(h.projection("w4").empty());
  }
  CacheStats s = cache->stats();
  EXPECT_EQ(s.misses, 3u);
  EXPECT_EQ(s.hits, 0u);
  EXPECT_EQ(s.bytes_read, Record(0, 1) + Record(1, 5) + Record(0, 7));
  EXPECT_EQ(s.swap_in.count, 1u);  // one stall for the batch
  for (const auto& r : refs) EXPECT_TRUE(cache->IsResident(r));

  auto again = cache->Acquire(refs);
  ASSERT_TRUE(again.ok());
  for (const auto& h : *again) ExpectBytes(h);
  s = cache->stats();
  EXPECT_EQ(s.hits, 3u);
  EXPECT_EQ(s.bytes_read, Record(0, 1) + Record(1, 5) + Record(0, 7));
  EXPECT_EQ(s.swap_in.count, 1u);  // hits never stall
}

TEST_F(ExpertCacheTest, HandlesMoveAndReset) {
  Build({});
  auto cache = Open({.capacity_bytes = 1 * SlotBytes()});
  ASSERT_TRUE(cache);
  std::vector<ExpertRef> a = {{0, 0}};
  auto h = cache->Acquire(a);
  ASSERT_TRUE(h.ok());
  ExpertHandle moved = std::move((*h)[0]);
  EXPECT_FALSE((*h)[0].valid());
  ExpectBytes(moved);
  std::vector<ExpertRef> b = {{0, 1}};
  EXPECT_TRUE(cache->Acquire(b).status().IsResourceExhausted());  // the one slot is pinned by `moved`
  moved.Reset();
  EXPECT_FALSE(moved.valid());
  auto h2 = cache->Acquire(b);
  ASSERT_TRUE(h2.ok());
  ExpectBytes((*h2)[0]);
}

TEST_F(ExpertCacheTest, PinnedExpertsAreNeverEvicted) {
  Build({.layers = 3, .experts = 8});
  auto cache = Open({.capacity_bytes = 3 * SlotBytes()});
  ASSERT_TRUE(cache);
  std::vector<ExpertRef> pinned_ref = {{2, 2}};
  auto pinned = cache->Acquire(pinned_ref);
  ASSERT_TRUE(pinned.ok());
  const std::byte* where = (*pinned)[0].payload().data();
  for (int round = 0; round < 3; ++round) {
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t e = 0; e < 8; ++e) {
        std::vector<ExpertRef> r = {{l, e}};
        auto h = cache->Acquire(r);
        ASSERT_TRUE(h.ok()) << h.status().ToString();
        ExpectBytes((*h)[0]);
      }
    }
  }
  EXPECT_GE(cache->stats().evictions, 40u);
  EXPECT_TRUE(cache->IsResident({2, 2}));
  EXPECT_EQ((*pinned)[0].payload().data(), where);
  ExpectBytes((*pinned)[0]);
  const uint64_t misses = cache->stats().misses;
  auto again = cache->Acquire(pinned_ref);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(cache->stats().misses, misses);  // a hit: it was never evicted
}

// PinResident (a GPU upload's lease): pins what is resident, reads nothing, counts nothing, and a pinned expert
// is not evicted until its handle goes.
TEST_F(ExpertCacheTest, PinResidentPinsWithoutReadingOrCounting) {
  Build({.layers = 2, .experts = 8});
  auto cache = Open({.capacity_bytes = 2 * SlotBytes()});
  ASSERT_TRUE(cache);
  std::vector<ExpertRef> warm = {{0, 1}, {0, 2}};
  ASSERT_TRUE(cache->Acquire(warm).ok());
  const CacheStats before = cache->stats();
  std::vector<ExpertRef> ask = {{0, 2}, {1, 0}, {0, 1}, {5, 5}};  // resident, absent, resident, not in the model
  std::vector<ExpertHandle> pinned = cache->PinResident(ask);
  ASSERT_EQ(pinned.size(), 4u);
  ExpectBytes(pinned[0]);
  EXPECT_FALSE(pinned[1].valid());
  ExpectBytes(pinned[2]);
  EXPECT_FALSE(pinned[3].valid());
  const CacheStats after = cache->stats();
  EXPECT_EQ(after.hits, before.hits);
  EXPECT_EQ(after.misses, before.misses);
  EXPECT_EQ(after.bytes_read, before.bytes_read);
  EXPECT_FALSE(cache->IsResident({1, 0}));
  // Both slots are pinned: a miss cannot be admitted until the handles go.
  std::vector<ExpertRef> miss = {{1, 0}};
  EXPECT_TRUE(cache->Acquire(miss).status().IsResourceExhausted());
  pinned.clear();
  EXPECT_TRUE(cache->Acquire(miss).ok());
}

TEST_F(ExpertCacheTest, ResidentOnlyAcquirePinsAndCountsWhatIsReadyAndReadsNothing) {
  auto slow = std::make_shared<testing::SlowFileSystem>(DefaultFileSystem(), ".seg");
  Build({.layers = 2, .experts = 8}, slow);
  auto cache = Open({.capacity_bytes = 3 * SlotBytes(), .prefetch_bytes_in_flight = SlotBytes()});
  ASSERT_TRUE(cache);
  std::vector<ExpertRef> warm = {{0, 1}, {0, 2}};
  ASSERT_TRUE(cache->Acquire(warm).ok());
  // {1, 3} is being prefetched (slowly): in the arena but not ready, so not resident.
  slow->set_delay(std::chrono::milliseconds(200));
  std::vector<ExpertRef> ahead = {{1, 3}};
  cache->Prefetch(ahead);
  for (int i = 0; i < 100 && cache->stats().prefetch_issued == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(cache->stats().prefetch_issued, 1u);
  const CacheStats before = cache->stats();
  std::vector<ExpertRef> ask = {{0, 2}, {1, 0}, {1, 3}, {0, 1}};  // ready, absent, loading, ready
  auto got = cache->Acquire(ask, {.resident_only = true});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->size(), 4u);
  ExpectBytes((*got)[0]);
  EXPECT_FALSE((*got)[1].valid());
  EXPECT_FALSE((*got)[2].valid());
  ExpectBytes((*got)[3]);
  const CacheStats after = cache->stats();
  EXPECT_EQ(after.hits - before.hits, 2u);
  EXPECT_EQ(after.misses, before.misses);
  EXPECT_FALSE(cache->IsResident({1, 0}));  // nothing was read for it
  cache->WaitForPrefetches();
  EXPECT_EQ(cache->stats().bytes_read, before.bytes_read + Record(1, 3));  // only the prefetch
  // The pinned ones stay while their handles live: two of three slots, so a batch of two misses is refused.
  std::vector<ExpertRef> two = {{1, 5}, {1, 6}};
  EXPECT_TRUE(cache->Acquire(two).status().IsResourceExhausted());
  got->clear();
  EXPECT_TRUE(cache->Acquire(two).ok());
}

TEST_F(ExpertCacheTest, PartialCheckpointsReportOrSkipAbsentExperts) {
  Build({.layers = 2, .experts = 8, .missing = {{1, 3}}});
  auto cache = Open({.capacity_bytes = 8 * SlotBytes()});
  ASSERT_TRUE(cache);
  EXPECT_FALSE(cache->Contains({1, 3}));
  EXPECT_TRUE(cache->Contains({1, 4}));
  EXPECT_FALSE(cache->Contains({2, 0}));  // outside the model
  std::vector<ExpertRef> refs = {{0, 0}, {1, 3}, {0, 1}};
  auto strict = cache->Acquire(refs);
  ASSERT_TRUE(strict.status().IsNotFound());
  EXPECT_NE(strict.status().message().find("layer 1 expert 3"), std::string::npos) << strict.status().message();
  EXPECT_EQ(cache->stats().misses, 0u);  // nothing was pinned or read
  auto skipping = cache->Acquire(refs, {.skip_missing = true});
  ASSERT_TRUE(skipping.ok());
  ExpectBytes((*skipping)[0]);
  EXPECT_FALSE((*skipping)[1].valid());
  ExpectBytes((*skipping)[2]);
  std::vector<ExpertRef> outside = {{7, 0}};
  EXPECT_TRUE(cache->Acquire(outside).status().IsNotFound());
  EXPECT_TRUE(ExpertCache::Open(*store_, "nope", {}).status().IsNotFound());
  EXPECT_TRUE(ExpertCache::Open(*store_, spec_.name, {.policy = PolicyKind::kBelady}).status().IsInvalidArgument());
}

TEST_F(ExpertCacheTest, ExhaustedSlotsRollBackTheWholeBatch) {
  Build({});
  auto cache = Open({.capacity_bytes = 3 * SlotBytes()});
  ASSERT_TRUE(cache);
  std::vector<ExpertRef> four = {{0, 0}, {0, 1}, {0, 2}, {0, 3}};
  EXPECT_TRUE(cache->Acquire(four).status().IsResourceExhausted());  // more than the cache holds, up front
  std::vector<ExpertRef> a = {{1, 0}};
  auto held = cache->Acquire(a);
  ASSERT_TRUE(held.ok());
  std::vector<ExpertRef> three = {{0, 0}, {0, 1}, {0, 2}};
  const uint64_t read_before = cache->stats().bytes_read;
  auto r = cache->Acquire(three);
  ASSERT_TRUE(r.status().IsResourceExhausted());
  // Two slots were claimed before the third miss found none: both went back, nothing was read.
  EXPECT_EQ(cache->stats().bytes_read, read_before);
  EXPECT_FALSE(cache->IsResident({0, 0}));
  EXPECT_FALSE(cache->IsResident({0, 1}));
  EXPECT_TRUE(cache->IsResident({1, 0}));
  held->clear();
  auto ok = cache->Acquire(three);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  for (const auto& h : *ok) ExpectBytes(h);
  EXPECT_FALSE(cache->IsResident({1, 0}));  // evicted for them
}

TEST_F(ExpertCacheTest, ReadErrorsFailTheBatchAndAreRetried) {
  auto faults = std::make_shared<testing::FaultInjectionFileSystem>();
  Build({}, faults);
  auto cache = Open({.capacity_bytes = 4 * SlotBytes()});
  ASSERT_TRUE(cache);
  faults->AddRule({.op = testing::FaultOp::kRead, .path_contains = ".seg", .err = EIO, .times = 1});
  faults->AddRule({.op = testing::FaultOp::kAsyncRead, .path_contains = ".seg", .err = EIO, .times = 1});
  std::vector<ExpertRef> refs = {{0, 2}};
  auto failed = cache->Acquire(refs);
  ASSERT_TRUE(failed.status().IsIOError()) << failed.status().ToString();
  EXPECT_NE(failed.status().message().find("layer 0 expert 2"), std::string::npos);
  EXPECT_FALSE(cache->IsResident({0, 2}));
  EXPECT_EQ(cache->stats().read_errors, 1u);
  faults->ClearRules();
  auto retried = cache->Acquire(refs);
  ASSERT_TRUE(retried.ok()) << retried.status().ToString();
  ExpectBytes((*retried)[0]);
  // The failed slot went back to the free list: all four slots can still be pinned at once.
  retried->clear();
  std::vector<ExpertRef> four = {{1, 0}, {1, 1}, {1, 2}, {1, 3}};
  EXPECT_TRUE(cache->Acquire(four).ok());
}

TEST_F(ExpertCacheTest, CorruptExtentIsCorruptionNeverBytes) {
  Build({});
  auto cache = Open({.capacity_bytes = 4 * SlotBytes()});
  ASSERT_TRUE(cache);
  const ExpertInfo* info = cache->experts().Find(*cache->experts().keys().Key({1, 6}));
  ASSERT_NE(info, nullptr);
  {
    auto f = DefaultFileSystem()->Open(dir_.path() + "/segments/" + SegmentFileName(info->extent.segment),
                                       OpenOptions{.write = true});
    ASSERT_TRUE(f.ok());
    const uint64_t at = info->extent.offset + kRecordHeaderSize + 100;
    std::byte b;
    ASSERT_TRUE(ReadFully(**f, at, {&b, 1}).ok());
    b ^= std::byte{0x40};
    ASSERT_TRUE((*f)->Write(at, {&b, 1}).ok());
    ASSERT_TRUE((*f)->Sync().ok());
  }
  std::vector<ExpertRef> refs = {{1, 5}, {1, 6}};
  auto r = cache->Acquire(refs);
  ASSERT_TRUE(r.status().IsCorruption()) << r.status().ToString();
  EXPECT_TRUE(cache->IsResident({1, 5}));  // its neighbour in the batch was fine and stays cached
  EXPECT_FALSE(cache->IsResident({1, 6}));
}

TEST_F(ExpertCacheTest, ConcurrentAcquirersOfOneMissingExpertShareOneRead) {
  auto slow = std::make_shared<testing::SlowFileSystem>(DefaultFileSystem(), ".seg");
  Build({}, slow);
  auto cache = Open({.capacity_bytes = 4 * SlotBytes()});
  ASSERT_TRUE(cache);
  slow->set_delay(std::chrono::milliseconds(100));
  constexpr int kThreads = 8;
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  std::vector<const std::byte*> where(kThreads, nullptr);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ++ready;
      while (ready.load() < kThreads) std::this_thread::yield();
      std::vector<ExpertRef> refs = {{1, 2}};
      auto h = cache->Acquire(refs);
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      ExpectBytes((*h)[0]);
      where[t] = (*h)[0].payload().data();
    });
  }
  for (auto& th : threads) th.join();
  CacheStats s = cache->stats();
  EXPECT_EQ(s.bytes_read, Record(1, 2));  // read once
  EXPECT_EQ(s.hits + s.misses, static_cast<uint64_t>(kThreads));
  EXPECT_GE(s.misses, 2u);  // at least one waited for another's read (the 100 ms window is far wider than a start)
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(where[t], where[0]);
}

TEST_F(ExpertCacheTest, PrefetchedExpertsAreHitsAndUnusedOnesAreWasted) {
  Build({});
  auto cache = Open({.capacity_bytes = 4 * SlotBytes(), .prefetch_bytes_in_flight = 2 * SlotBytes()});
  ASSERT_TRUE(cache);
  std::vector<ExpertRef> predicted = {{1, 0}, {1, 1}, {1, 2}};
  cache->Prefetch(predicted);
  cache->WaitForPrefetches();
  for (const auto& r : predicted) EXPECT_TRUE(cache->IsResident(r));
  CacheStats s = cache->stats();
  EXPECT_EQ(s.prefetch_issued, 3u);
  EXPECT_EQ(s.prefetch_bytes_read, Record(1, 0) + Record(1, 1) + Record(1, 2));
  EXPECT_LE(s.prefetch_max_bytes_in_flight, 2 * SlotBytes());
  std::vector<ExpertRef> used = {{1, 0}, {1, 1}};
  {
    auto h = cache->Acquire(used);
    ASSERT_TRUE(h.ok());
    for (const auto& x : *h) ExpectBytes(x);
  }
  s = cache->stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.prefetch_hits, 2u);
  EXPECT_EQ(s.prefetch_late, 0u);
  // Demand for four other experts pushes everything out, including (1, 2), which was never used.
  for (uint32_t e = 0; e < 4; ++e) {
    std::vector<ExpertRef> r = {{0, e}};
    ASSERT_TRUE(cache->Acquire(r).ok());
  }
  s = cache->stats();
  EXPECT_EQ(s.wasted_prefetches, 1u);
  EXPECT_EQ(s.prefetch_hits, 2u);
  // Prefetching what is resident, absent or outside the model does nothing.
  std::vector<ExpertRef> noise = {{0, 3}, {9, 9}};
  cache->Prefetch(noise);
  cache->WaitForPrefetches();
  EXPECT_EQ(cache->stats().prefetch_issued, 3u);
}

TEST_F(ExpertCacheTest, PrefetchRespectsTheByteCap) {
  Build({.layers = 2, .experts = 16});
  auto cache = Open({.capacity_bytes = 32 * SlotBytes(), .prefetch_bytes_in_flight = 3 * SlotBytes()});
  ASSERT_TRUE(cache);
  std::vector<ExpertRef> all;
  for (uint32_t e = 0; e < 16; ++e) all.push_back({1, e});
  cache->Prefetch(all);
  cache->WaitForPrefetches();
  CacheStats s = cache->stats();
  EXPECT_EQ(s.prefetch_issued, 16u);
  EXPECT_GT(s.prefetch_max_bytes_in_flight, 0u);
  EXPECT_LE(s.prefetch_max_bytes_in_flight, 3 * SlotBytes());
  for (const auto& r : all) EXPECT_TRUE(cache->IsResident(r));
}

TEST_F(ExpertCacheTest, CancelDropsQueuedPredictionsOfALayer) {
  auto slow = std::make_shared<testing::SlowFileSystem>(DefaultFileSystem(), ".seg");
  Build({.layers = 2, .experts = 8}, slow);
  auto cache = Open({.capacity_bytes = 16 * SlotBytes(), .prefetch_bytes_in_flight = 1});  // one read at a time
  ASSERT_TRUE(cache);
  slow->set_delay(std::chrono::milliseconds(40));
  std::vector<ExpertRef> predicted;
  for (uint32_t l = 0; l < 2; ++l) {
    for (uint32_t e = 0; e < 4; ++e) predicted.push_back({l, e});
  }
  cache->Prefetch(predicted);
  cache->CancelPrefetch(1);  // layer 1 is queued behind layer 0's four reads of 40 ms each
  cache->WaitForPrefetches();
  CacheStats s = cache->stats();
  EXPECT_EQ(s.prefetch_cancelled, 4u);
  EXPECT_EQ(s.prefetch_issued, 4u);
  for (uint32_t e = 0; e < 4; ++e) {
    EXPECT_TRUE(cache->IsResident({0, e}));
    EXPECT_FALSE(cache->IsResident({1, e}));
  }
  std::vector<ExpertRef> more = {{1, 4}, {1, 5}, {1, 6}, {1, 7}};
  cache->Prefetch(more);
  cache->CancelPrefetch();
  cache->WaitForPrefetches();
  s = cache->stats();
  EXPECT_EQ(s.prefetch_cancelled + s.prefetch_issued, 12u);
  EXPECT_GE(s.prefetch_cancelled, 7u);  // at most the first of the four was already issued
}

TEST_F(ExpertCacheTest, DemandReadsOvertakeQueuedPrefetches) {
  auto slow = std::make_shared<testing::SlowFileSystem>(DefaultFileSystem(), ".seg");
  Build({.layers = 2, .experts = 16}, slow);
  auto cache = Open({.capacity_bytes = 32 * SlotBytes(), .prefetch_bytes_in_flight = 1});
  ASSERT_TRUE(cache);
  slow->set_delay(std::chrono::milliseconds(30));
  slow->ClearLog();
  std::vector<ExpertRef> predicted;
  for (uint32_t e = 0; e < 12; ++e) predicted.push_back({1, e});
  cache->Prefetch(predicted);
  std::vector<ExpertRef> demand = {{0, 9}};
  auto h = cache->Acquire(demand);
  ASSERT_TRUE(h.ok());
  ExpectBytes((*h)[0]);
  cache->WaitForPrefetches();
  auto order = slow->completed();
  const uint64_t demand_offset = cache->experts().Find(*cache->experts().keys().Key({0, 9}))->extent.offset;
  auto it = std::find(order.begin(), order.end(), demand_offset);
  ASSERT_NE(it, order.end());
  // FIFO service would put the demand read 13th; with priority at most the prefetch already issued precedes it.
  EXPECT_LE(it - order.begin(), 2);
  EXPECT_EQ(order.size(), 13u);
}

TEST_F(ExpertCacheTest, NoPrefetchReadStartsWhileADemandReadIsInFlight) {
  auto slow = std::make_shared<testing::SlowFileSystem>(DefaultFileSystem(), ".seg");
  Build({.layers = 2, .experts = 16}, slow);
  auto cache = Open({.capacity_bytes = 32 * SlotBytes(), .prefetch_bytes_in_flight = 4 * SlotBytes()});
  ASSERT_TRUE(cache);
  slow->Hold();
  std::thread demand([&] {
    std::vector<ExpertRef> refs = {{0, 3}};
    auto h = cache->Acquire(refs);
    ASSERT_TRUE(h.ok());
    ExpectBytes((*h)[0]);
  });
  while (slow->blocked() == 0) std::this_thread::yield();  // the demand read is in flight
  std::vector<ExpertRef> predicted = {{1, 0}, {1, 1}, {1, 2}, {1, 3}, {1, 4}};
  cache->Prefetch(predicted);
  // Give a wrong prefetcher every chance to start; a right one never does, however long this is.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(cache->stats().prefetch_issued, 0u);
  EXPECT_EQ(slow->blocked(), 1);
  slow->Release();
  demand.join();
  cache->WaitForPrefetches();
  EXPECT_EQ(cache->stats().prefetch_issued, 5u);
  for (const auto& r : predicted) EXPECT_TRUE(cache->IsResident(r));
}

TEST_F(ExpertCacheTest, DemandJoinsAnInFlightPrefetchWithoutASecondRead) {
  auto slow = std::make_shared<testing::SlowFileSystem>(DefaultFileSystem(), ".seg");
  Build({}, slow);
  auto cache = Open({.capacity_bytes = 4 * SlotBytes(), .prefetch_bytes_in_flight = SlotBytes()});
  ASSERT_TRUE(cache);
  slow->set_delay(std::chrono::milliseconds(60));
  std::vector<ExpertRef> refs = {{1, 1}};
  cache->Prefetch(refs);
  auto h = cache->Acquire(refs);
  ASSERT_TRUE(h.ok());
  ExpectBytes((*h)[0]);
  cache->WaitForPrefetches();
  CacheStats s = cache->stats();
  EXPECT_EQ(s.bytes_read, Record(1, 1));
  // Either the prefetch was in flight (a late prefetch hit) or demand took it from the queue first.
  EXPECT_EQ(s.prefetch_late + s.prefetch_dropped, 1u);
  EXPECT_EQ(s.misses, 1u);
}

// A prefetched expert that its layer's next Acquire does not use is the first to go, before what the policy
// ranks (lru here would evict the least recently used demand expert instead).
TEST_F(ExpertCacheTest, PrefetchesTheirLayerDidNotUseAreEvictedFirst) {
  Build({});
  auto cache = Open({.capacity_bytes = 4 * SlotBytes(), .prefetch_bytes_in_flight = 2 * SlotBytes()});
  ASSERT_TRUE(cache);
  std::vector<ExpertRef> first = {{0, 0}, {0, 1}};
  ASSERT_TRUE(cache->Acquire(first).ok());
  std::vector<ExpertRef> predicted = {{1, 0}, {1, 1}};
  cache->Prefetch(predicted);
  cache->WaitForPrefetches();
  std::vector<ExpertRef> layer1 = {{1, 0}};
  ASSERT_TRUE(cache->Acquire(layer1).ok());
  CacheStats s = cache->stats();
  EXPECT_EQ(s.prefetch_guesses, 2u);
  EXPECT_EQ(s.prefetch_guesses_right, 1u);
  EXPECT_EQ(s.prefetch_unused, 1u);
  std::vector<ExpertRef> next = {{0, 2}};  // the cache is full: something goes
  ASSERT_TRUE(cache->Acquire(next).ok());
  EXPECT_FALSE(cache->IsResident({1, 1}));
  EXPECT_TRUE(cache->IsResident({0, 0}));
  EXPECT_EQ(cache->stats().wasted_prefetches, 1u);
}

// A guess still queued when its layer comes is dropped, not read for a pass that has gone.
TEST_F(ExpertCacheTest, GuessesStillQueuedWhenTheirLayerComesAreDropped) {
  auto slow = std::make_shared<testing::SlowFileSystem>(DefaultFileSystem(), ".seg");
  Build({.layers = 2, .experts = 8}, slow);
  auto cache = Open({.capacity_bytes = 8 * SlotBytes(), .prefetch_bytes_in_flight = 1});  // one read at a time
  ASSERT_TRUE(cache);
  slow->set_delay(std::chrono::milliseconds(100));
  std::vector<ExpertRef> predicted = {{1, 0}, {1, 1}, {1, 2}, {1, 3}};
  cache->Prefetch(predicted);
  std::vector<ExpertRef> used = {{1, 0}};  // at most (1, 0) has been issued: each read takes 100 ms
  ASSERT_TRUE(cache->Acquire(used).ok());
  cache->WaitForPrefetches();
  CacheStats s = cache->stats();
  EXPECT_EQ(s.prefetch_guesses, 4u);
  EXPECT_EQ(s.prefetch_guesses_right, 1u);
  EXPECT_LE(s.prefetch_issued, 1u);
  EXPECT_GE(s.prefetch_dropped, 3u);
  for (uint32_t e = 1; e < 4; ++e) EXPECT_FALSE(cache->IsResident({1, e}));
}

// Guesses are scored whether or not they were read: while most are wrong the prefetcher reads none, and it
// resumes once they are right again.
TEST_F(ExpertCacheTest, WrongGuessesThrottleThePrefetcherAndRightOnesResumeIt) {
  Build({.layers = 2, .experts = 96});
  auto cache = Open({.capacity_bytes = 192 * SlotBytes(), .prefetch_bytes_in_flight = SlotBytes(),
                     .prefetch_min_accuracy = 0.5});
  ASSERT_TRUE(cache);
  constexpr uint32_t kWrong = 40;
  for (uint32_t i = 0; i < kWrong; ++i) {
    std::vector<ExpertRef> guess = {{1, 8 + i}}, used = {{1, 0}};
    cache->Prefetch(guess);
    cache->WaitForPrefetches();
    ASSERT_TRUE(cache->Acquire(used).ok());
  }
  CacheStats s = cache->stats();
  EXPECT_EQ(s.prefetch_guesses, kWrong);
  EXPECT_EQ(s.prefetch_guesses_right, 0u);
  // The moving accuracy (weight 1/32 a guess) falls below 0.5 after 22 wrong guesses: (31/32)^22 < 0.5.
  EXPECT_EQ(s.prefetch_issued, 22u);
  EXPECT_EQ(s.prefetch_throttled, kWrong - 22);
  EXPECT_LT(cache->prefetch_guess_accuracy(), 0.5);
  for (uint32_t i = 0; i < 40; ++i) {
    std::vector<ExpertRef> guess = {{1, 50 + i}};
    cache->Prefetch(guess);
    cache->WaitForPrefetches();
    ASSERT_TRUE(cache->Acquire(guess).ok());
  }
  s = cache->stats();
  EXPECT_EQ(s.prefetch_guesses_right, 40u);
  EXPECT_GT(s.prefetch_issued, 22u);  // reads again
  EXPECT_GT(s.prefetch_hits, 0u);
  EXPECT_GE(cache->prefetch_guess_accuracy(), 0.5);
}

// The live cache and the simulator make the same decisions on the same accesses (one source of truth).
TEST_F(ExpertCacheTest, MatchesTheSimulatorForEveryOnlinePolicy) {
  Build({.layers = 3, .experts = 16, .trust = [](uint32_t l, uint32_t e) {
           return std::pair<double, double>{((l * 16 + e) * 37 % 100) / 100.0, ((l * 16 + e) * 61 % 100) / 100.0};
         }});
  auto steps = MakeSyntheticTrace({.layers = 3, .experts_per_layer = 16, .top_k = 3, .tokens = 150, .seed = 5});
  ASSERT_TRUE(steps.ok());
  auto model = ModelExperts::Load(store_->catalog(), spec_.name);
  ASSERT_TRUE(model.ok());
  auto trace = FlattenTrace(*steps, model->keys());
  ASSERT_TRUE(trace.ok());
  constexpr uint32_t kSlots = 10;
  for (PolicyKind kind : {PolicyKind::kLru, PolicyKind::kLfu, PolicyKind::kTrust}) {
    PolicyConfig pc{.kind = kind};
    pc.traits = model->Traits();
    auto sim = SimulatePolicy(*trace, kSlots, pc);
    ASSERT_TRUE(sim.ok());
    auto cache = Open({.capacity_bytes = kSlots * SlotBytes(), .policy = kind});
    ASSERT_TRUE(cache);
    for (const TraceStep& step : *steps) {
      std::vector<ExpertRef> refs;
      for (uint32_t e : step.experts) refs.push_back({step.layer, e});
      auto h = cache->Acquire(refs);
      ASSERT_TRUE(h.ok()) << h.status().ToString();
    }
    CacheStats s = cache->stats();
    EXPECT_EQ(s.hits, sim->hits) << PolicyKindName(kind);
    EXPECT_EQ(s.misses, sim->misses) << PolicyKindName(kind);
    EXPECT_EQ(s.evictions, sim->evictions) << PolicyKindName(kind);
    EXPECT_GT(s.hits, 0u);
  }
}

// Acquirers, prefetchers, cancels and evictions at once (run under TSan): every handle's bytes equal the
// reference while it is held, nothing fails but slot exhaustion, and the counters add up.
TEST_F(ExpertCacheTest, StressConcurrentAcquirePrefetchEvict) {
  constexpr uint32_t kLayers = 4;
  constexpr uint32_t kExperts = 16;
  Build({.layers = kLayers, .experts = kExperts, .missing = {{2, 5}, {3, 0}},
         .trust = [](uint32_t l, uint32_t e) { return std::pair<double, double>{(e % 4) / 4.0, (l % 3) / 3.0}; }});
  for (PolicyKind kind : {PolicyKind::kLru, PolicyKind::kTrust}) {
    auto cache = Open({.capacity_bytes = 12 * SlotBytes(), .policy = kind,
                       .prefetch_bytes_in_flight = 3 * SlotBytes(), .prefetch_queue_limit = 8,
                       .prefetch_min_accuracy = 0});  // random guesses: read them all anyway
    ASSERT_TRUE(cache);
    constexpr int kAcquirers = 4;
    constexpr int kIterations = 250;
    std::atomic<uint64_t> admitted{0}, exhausted{0}, other_errors{0};
    std::atomic<bool> done{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < kAcquirers; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(100 + t);
        std::vector<ExpertHandle> kept;  // sometimes held across the next Acquire, to pile up pins
        for (int i = 0; i < kIterations; ++i) {
          const uint32_t layer = static_cast<uint32_t>(rng() % kLayers);
          std::vector<ExpertRef> refs;
          const uint32_t k = 1 + static_cast<uint32_t>(rng() % 4);
          while (refs.size() < k) {
            ExpertRef r{layer, static_cast<uint32_t>(rng() % kExperts)};
            if (std::find(refs.begin(), refs.end(), r) == refs.end()) refs.push_back(r);
          }
          auto h = cache->Acquire(refs, {.skip_missing = true});
          if (!h.ok()) {
            (h.status().IsResourceExhausted() ? exhausted : other_errors)++;
            if (!h.status().IsResourceExhausted()) ADD_FAILURE() << h.status().ToString();
            kept.clear();
            continue;
          }
          for (const auto& x : *h) {
            if (x.valid()) admitted++;
            if (x.valid()) ExpectBytes(x);
          }
          if (rng() % 4 == 0) {
            kept.clear();
            for (auto& x : *h) kept.push_back(std::move(x));
          } else if (rng() % 2 == 0) {
            kept.clear();
          }
          std::this_thread::yield();
          for (const auto& x : kept) {
            if (x.valid()) ExpectBytes(x);  // still intact while pinned, whatever the others evicted
          }
        }
      });
    }
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(200 + t);
        while (!done.load()) {
          std::vector<ExpertRef> guess;
          const uint32_t layer = static_cast<uint32_t>(rng() % kLayers);
          for (int i = 0; i < 3; ++i) guess.push_back({layer, static_cast<uint32_t>(rng() % kExperts)});
          cache->Prefetch(guess);
          if (rng() % 5 == 0) cache->CancelPrefetch(static_cast<uint32_t>(rng() % kLayers));
          if (rng() % 17 == 0) cache->CancelPrefetch();
          (void)cache->stats();
          (void)cache->IsResident(guess[0]);
          std::this_thread::yield();
        }
      });
    }
    for (int t = 0; t < kAcquirers; ++t) threads[t].join();
    done = true;
    for (size_t t = kAcquirers; t < threads.size(); ++t) threads[t].join();
    cache->WaitForPrefetches();
    CacheStats s = cache->stats();
    EXPECT_EQ(other_errors.load(), 0u);
    EXPECT_EQ(s.read_errors, 0u);
    EXPECT_EQ(s.hits + s.misses, admitted.load()) << PolicyKindName(kind);
    EXPECT_GT(s.evictions, 0u);
    EXPECT_GT(s.hits, 0u);
    EXPECT_GT(s.prefetch_issued, 0u);
    EXPECT_LE(s.prefetch_max_bytes_in_flight, 3 * SlotBytes());
    EXPECT_LE(s.prefetch_hits, s.prefetch_issued);
    // Every pin was released: the whole cache can be pinned at once again.
    std::vector<ExpertRef> twelve;
    for (uint32_t e = 0; e < 12; ++e) twelve.push_back({0, e});
    auto all = cache->Acquire(twelve);
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    for (const auto& x : *all) ExpectBytes(x);
  }
}

}  // namespace
}  // namespace es
