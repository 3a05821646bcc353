// Cache benchmark: what ExpertCache adds on top of the store's reader, in one run.
//   BM_AcquireHit/k      Acquire + release of k resident experts (lock, lookup, pin, policy touch): pure overhead.
//   BM_AcquireMiss       Acquire of one expert that is not resident (a one-slot cache, experts in turn): evict,
//                        read and verify straight into the pinned arena (registered with io_uring).
//   BM_PlainRead/mem     ExtentReader::ReadBatch of the same experts, no cache: mem 0 reads into a heap buffer
//                        (4 KiB pages, what a caller without an arena would use), mem 1 into an arena like the
//                        cache's (huge pages, registered), so that miss minus plain/1 is the cache's own cost.
// Experts are Qwen3-30B-A3B sized (9 MiB). Data lives in $EXPERTSTORE_BENCH_DIR (default
// ./expertstore-cache-bench, removed afterwards): put it on the device you want to measure.
// Run: build/bench/cache_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <optional>
#include <filesystem>
#include <memory>
#include <vector>

#include "cache/arena.h"
#include "cache/expert_cache.h"
#include "store/base/aligned_buffer.h"
#include "tests/util/expert_model.h"

namespace es {
namespace {

constexpr uint64_t kExpertBytes = 9ull << 20;  // one Qwen3-30B-A3B expert: 3 x 768 x 2048 bf16
constexpr uint32_t kExperts = 32;              // enough that consecutive misses read different extents
constexpr char kModel[] = "bench";

std::string g_dir;
std::unique_ptr<Store> g_store;

Status Prepare() {
  std::filesystem::remove_all(g_dir);
  {
    ES_ASSIGN_OR_RETURN(auto writer, Store::Open(g_dir, StoreOptions{}));
    testing::TestModelSpec spec{.name = kModel, .layers = 1, .experts = kExperts, .top_k = 8};
    spec.payload_bytes = [](uint32_t, uint32_t) { return kExpertBytes; };
    spec.experts_per_commit = 4;
    ES_RETURN_IF_ERROR(testing::WriteTestModel(*writer, spec));
  }
  StoreOptions options;
  options.read_only = true;
  ES_ASSIGN_OR_RETURN(g_store, Store::Open(g_dir, options));
  return Status::Ok();
}

std::unique_ptr<ExpertCache> OpenCache(benchmark::State& state, uint32_t slots) {
  ExpertCacheOptions o;
  o.capacity_bytes = slots * RecordLength(kExpertBytes);
  auto c = ExpertCache::Open(*g_store, kModel, o);
  if (!c.ok()) {
    state.SkipWithError(c.status().ToString().c_str());
    return nullptr;
  }
  return std::move(c).value();
}

void BM_AcquireHit(benchmark::State& state) {
  const uint32_t k = static_cast<uint32_t>(state.range(0));
  auto cache = OpenCache(state, kExperts);
  if (!cache) return;
  std::vector<ExpertRef> all;
  for (uint32_t e = 0; e < kExperts; ++e) all.push_back({0, e});
  if (!cache->Acquire(all).ok()) {  // everything resident
    state.SkipWithError("prefill failed");
    return;
  }
  uint32_t next = 0;
  for (auto _ : state) {
    std::vector<ExpertRef> refs;
    for (uint32_t i = 0; i < k; ++i) refs.push_back({0, (next + i) % kExperts});
    next = (next + k) % kExperts;
    auto h = cache->Acquire(refs);
    benchmark::DoNotOptimize(h);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * k));
  state.counters["hits"] = static_cast<double>(cache->stats().hits);
}

void BM_AcquireMiss(benchmark::State& state) {
  auto cache = OpenCache(state, 1);
  if (!cache) return;
  uint32_t next = 0;
  for (auto _ : state) {
    std::vector<ExpertRef> refs = {{0, next}};
    next = (next + 1) % kExperts;
    auto h = cache->Acquire(refs);
    if (!h.ok()) state.SkipWithError(h.status().ToString().c_str());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * RecordLength(kExpertBytes)));
  state.counters["registered"] = cache->buffers_registered() ? 1 : 0;
}

void BM_PlainRead(benchmark::State& state) {
  const bool arena_memory = state.range(0) == 1;
  std::vector<Extent> extents;
  auto model = ModelExperts::Load(g_store->catalog(), kModel);
  if (!model.ok()) {
    state.SkipWithError(model.status().ToString().c_str());
    return;
  }
  for (const auto& e : model->experts()) extents.push_back(e.extent);
  const uint64_t record = RecordLength(kExpertBytes);
  AlignedBuffer heap;
  std::unique_ptr<PinnedArena> arena;
  std::optional<uint64_t> registration;
  std::span<std::byte> buffer;
  if (arena_memory) {
    auto a = PinnedArena::Create(record, 1, {});
    if (!a.ok()) {
      state.SkipWithError(a.status().ToString().c_str());
      return;
    }
    arena = std::move(a).value();
    if (auto id = g_store->reader().engine().AddBuffers(arena->RegistrationChunks()); id.ok()) registration = *id;
    buffer = arena->slot(0);
  } else {
    heap = AlignedBuffer(record);
    buffer = heap.span();
  }
  size_t next = 0;
  for (auto _ : state) {
    ExtentRead r{extents[next], buffer, Status::Ok(), {}};
    next = (next + 1) % extents.size();
    g_store->reader().ReadBatch({&r, 1});
    if (!r.status.ok()) state.SkipWithError(r.status.ToString().c_str());
  }
  if (registration) g_store->reader().engine().RemoveBuffers(*registration);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * record));
}

BENCHMARK(BM_AcquireHit)->Arg(1)->Arg(8)->Unit(benchmark::kNanosecond);
BENCHMARK(BM_AcquireMiss)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
BENCHMARK(BM_PlainRead)->ArgName("arena")->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);

}  // namespace
}  // namespace es

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const char* dir = std::getenv("EXPERTSTORE_BENCH_DIR");
  es::g_dir = (dir != nullptr && *dir != '\0') ? dir : "./expertstore-cache-bench";
  es::Status s = es::Prepare();
  if (!s.ok()) {
    std::fprintf(stderr, "error: preparing benchmark data: %s\n", s.ToString().c_str());
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  es::g_store.reset();
  std::filesystem::remove_all(es::g_dir);
  return 0;
}
