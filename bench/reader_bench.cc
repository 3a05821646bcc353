// Reader benchmark: cold reads of segment records (O_DIRECT) through the ExtentReader (read + full
// verification) over extent sizes 1..16 MiB and queue depths 1..64, io_uring vs pread vs mmap (pages dropped
// with posix_fadvise first), and in the same run the raw device: the same number of bytes read from a
// contiguous scratch file with the same engine and no verification. Each iteration reads `qd` distinct
// extents as one batch; counters: GB/s (bytes/s), p50/p99 of the batch time in ms.
//
// Data lives in $EXPERTSTORE_BENCH_DIR (default ./expertstore-bench, removed afterwards): put it on the
// device you want to measure. Run: build/bench/reader_bench --benchmark_repetitions=5
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <vector>

#include "bench/measure/stats.h"
#include "store/base/aligned_buffer.h"
#include "store/extent_reader.h"
#include "store/segment_writer.h"

namespace es {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr int kSizesMiB[] = {1, 2, 4, 8, 16};
constexpr int kMaxQd = 64;
// Extents written per size: enough for the deepest batch, twice, so consecutive iterations read other data.
constexpr int kExtentsPerSize = 2 * kMaxQd;

std::string g_dir;
std::map<int, std::vector<Extent>> g_extents;  // size MiB -> extents
std::string g_scratch;                          // contiguous file for the raw-device baseline
uint64_t g_scratch_bytes = 0;

Status WriteData() {
  auto fs = DefaultFileSystem();
  std::string segments = g_dir + "/segments";
  ES_RETURN_IF_ERROR(fs->CreateDir(g_dir));
  ES_RETURN_IF_ERROR(fs->CreateDir(segments));
  SegmentWriter writer(fs, segments, 4ull << 30);
  ES_RETURN_IF_ERROR(writer.Open(0, 0));
  std::mt19937_64 rng(1);
  std::vector<std::byte> payload(16 * kMiB);
  for (auto& b : payload) b = static_cast<std::byte>(rng());
  for (int mib : kSizesMiB) {
    for (int i = 0; i < kExtentsPerSize; ++i) {
      payload[0] = static_cast<std::byte>(i);  // distinct checksums
      ES_RETURN_IF_ERROR(writer.BeginRecord(RecordKind::kExpert, "bench", mib * kMiB));
      ES_RETURN_IF_ERROR(writer.WritePayload({payload.data(), mib * kMiB}));
      ES_ASSIGN_OR_RETURN(Extent e, writer.FinishRecord());
      g_extents[mib].push_back(e);
    }
  }
  ES_RETURN_IF_ERROR(writer.Sync());
  // Raw baseline file: as many bytes as the largest batch reads.
  g_scratch = g_dir + "/scratch";
  g_scratch_bytes = static_cast<uint64_t>(kMaxQd) * 16 * kMiB;
  ES_ASSIGN_OR_RETURN(auto f, fs->Open(g_scratch, OpenOptions{.write = true, .create = true}));
  for (uint64_t off = 0; off < g_scratch_bytes; off += payload.size()) ES_RETURN_IF_ERROR(f->Write(off, payload));
  return f->Sync();
}

void Report(benchmark::State& state, const std::vector<double>& ms, uint64_t bytes_per_iter) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes_per_iter));
  state.counters["p50_ms"] = bench::Percentile(ms, bench::kP50);
  state.counters["p99_ms"] = bench::Percentile(ms, bench::kP99);
  state.counters["MiB_per_batch"] = static_cast<double>(bytes_per_iter) / kMiB;
}

IoEngineKind EngineOf(int64_t v) { return v == 0 ? IoEngineKind::kUring : IoEngineKind::kPread; }

// The ExtentReader: read + verify, args {engine (0 uring, 1 pread), size MiB, qd}.
void BM_Reader(benchmark::State& state) {
  int mib = static_cast<int>(state.range(1));
  int qd = static_cast<int>(state.range(2));
  IoEngineOptions io;
  io.queue_depth = static_cast<uint32_t>(qd);
  auto engine = CreateIoEngine(EngineOf(state.range(0)), io);
  if (!engine.ok()) {
    state.SkipWithError(engine.status().ToString().c_str());
    return;
  }
  ExtentReader reader(DefaultFileSystem(), g_dir + "/segments", std::move(engine).value());
  const auto& extents = g_extents[mib];
  uint64_t record = extents[0].record_length;
  AlignedBuffer buffer(record * qd);
  std::vector<double> ms;
  size_t next = 0;
  for (auto _ : state) {
    std::vector<ExtentRead> reads;
    for (int i = 0; i < qd; ++i) {
      reads.push_back({extents[next], {buffer.data() + i * record, record}, Status::Ok(), {}});
      next = (next + 1) % extents.size();
    }
    auto t0 = std::chrono::steady_clock::now();
    reader.ReadBatch(reads);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    for (const auto& r : reads) {
      if (!r.status.ok()) state.SkipWithError(r.status.ToString().c_str());
    }
  }
  Report(state, ms, static_cast<uint64_t>(qd) * mib * kMiB);
}

// The raw device: the same bytes per batch as BM_Reader, contiguous in a scratch file, same engine, no checks.
void BM_RawDevice(benchmark::State& state) {
  int mib = static_cast<int>(state.range(1));
  int qd = static_cast<int>(state.range(2));
  IoEngineOptions io;
  io.queue_depth = static_cast<uint32_t>(qd);
  auto engine = CreateIoEngine(EngineOf(state.range(0)), io);
  if (!engine.ok()) {
    state.SkipWithError(engine.status().ToString().c_str());
    return;
  }
  auto file = DefaultFileSystem()->Open(g_scratch, OpenOptions{.direct = true});
  if (!file.ok()) {
    state.SkipWithError(file.status().ToString().c_str());
    return;
  }
  uint64_t bytes = static_cast<uint64_t>(mib) * kMiB;
  AlignedBuffer buffer(bytes * qd);
  std::vector<double> ms;
  uint64_t offset = 0;
  for (auto _ : state) {
    std::vector<IoRead> reads;
    for (int i = 0; i < qd; ++i) {
      if (offset + bytes > g_scratch_bytes) offset = 0;
      reads.push_back({file->get(), offset, {buffer.data() + i * bytes, bytes}, Status::Ok()});
      offset += bytes;
    }
    auto t0 = std::chrono::steady_clock::now();
    (*engine)->ReadBatch(reads, nullptr);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    for (const auto& r : reads) {
      if (!r.status.ok()) state.SkipWithError(r.status.ToString().c_str());
    }
  }
  Report(state, ms, static_cast<uint64_t>(qd) * bytes);
}

// mmap: pages dropped with posix_fadvise before each batch (untimed), then copied out of the mapping and
// verified, one thread, as a program that mmaps its weights would. Args {size MiB, qd}.
void BM_Mmap(benchmark::State& state) {
  int mib = static_cast<int>(state.range(0));
  int qd = static_cast<int>(state.range(1));
  const auto& extents = g_extents[mib];
  uint32_t segment = extents[0].segment;
  std::string path = g_dir + "/segments/" + SegmentFileName(segment);
  int fd = ::open(path.c_str(), O_RDONLY);
  size_t length = std::filesystem::file_size(path);
  void* map = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    state.SkipWithError("mmap failed");
    ::close(fd);
    return;
  }
  auto* base = static_cast<const std::byte*>(map);
  uint64_t record = extents[0].record_length;
  AlignedBuffer buffer(record * qd);
  std::vector<double> ms;
  size_t next = 0;
  for (auto _ : state) {
    state.PauseTiming();
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    state.ResumeTiming();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < qd; ++i) {
      const Extent& e = extents[next];
      next = (next + 1) % extents.size();
      std::memcpy(buffer.data() + i * record, base + e.offset, e.record_length);
      auto p = CheckRecord({buffer.data() + i * record, e.record_length}, e);
      if (!p.ok()) state.SkipWithError(p.status().ToString().c_str());
    }
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  ::munmap(map, length);
  ::close(fd);
  Report(state, ms, static_cast<uint64_t>(qd) * mib * kMiB);
}

void EngineArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"engine", "MiB", "qd"});
  for (int engine : {0, 1}) {
    for (int mib : kSizesMiB) {
      for (int qd : {1, 2, 4, 8, 16, 32, 64}) {
        if (static_cast<uint64_t>(mib) * qd > 256) continue;  // keep batches under 256 MiB
        b->Args({engine, mib, qd});
      }
    }
  }
}

void MmapArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"MiB", "qd"});
  for (int mib : kSizesMiB) {
    for (int qd : {1, 8}) b->Args({mib, qd});
  }
}

BENCHMARK(BM_Reader)->Apply(EngineArgs)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
BENCHMARK(BM_RawDevice)->Apply(EngineArgs)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
BENCHMARK(BM_Mmap)->Apply(MmapArgs)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);

}  // namespace
}  // namespace es

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const char* dir = std::getenv("EXPERTSTORE_BENCH_DIR");
  es::g_dir = (dir != nullptr && *dir != '\0') ? dir : "./expertstore-bench";
  std::filesystem::remove_all(es::g_dir);
  es::Status s = es::WriteData();
  if (!s.ok()) {
    std::fprintf(stderr, "error: preparing benchmark data: %s\n", s.ToString().c_str());
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::filesystem::remove_all(es::g_dir);
  return 0;
}
