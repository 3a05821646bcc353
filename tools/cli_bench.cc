// Benchmark commands: `bench swapin` (cold expert reads through the cache against the raw device, buffered
// pread and mmap, in one run) and `bench cache` (hit rates of every eviction policy and of belady on a routing
// trace). Both open the store read-only; swapin writes one scratch file next to the store and removes it.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>

#include "cache/cache_size.h"
#include "cache/expert_cache.h"
#include "cache/simulator.h"
#include "cache/trace.h"
#include "store/base/aligned_buffer.h"
#include "tools/cli.h"

namespace es::cli {

namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kKiB = 1ull << 10;
constexpr double kBytesPerGB = 1e9;
constexpr double kPercent = 100.0;
constexpr double kMsPerSecond = 1e3;

// Flag defaults and bounds (the bounds only keep typos from running for days).
constexpr int64_t kDefaultReads = 16;
constexpr int64_t kDefaultBatches = 4;
constexpr int64_t kDefaultRepeat = 3;
constexpr int64_t kMaxSamples = 100000;
constexpr int64_t kMaxRepeat = 1000;
constexpr int64_t kMaxQueueDepth = 4096;
constexpr int64_t kMaxRequestKb = 1 << 20;
constexpr int64_t kDefaultSyntheticTokens = 2000;
constexpr int64_t kMaxSyntheticTokens = 10000000;
constexpr uint32_t kFallbackTopK = 8;  // a model record without top-k (never written by ingest)

double NowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Nearest-rank percentile (p in [0, 1]); 0 for no samples.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double Median(std::vector<double> v) { return Percentile(std::move(v), 0.5); }

Result<std::unique_ptr<Store>> OpenForBench(const Args& args, const IoEngineOptions& io) {
  StoreOptions options;
  options.read_only = true;
  options.io = io;
  ES_ASSIGN_OR_RETURN(options.io_engine, ParseIoEngineKind(args.global().io_engine));
  return Store::Open(args.global().store, options);
}

// ---- bench swapin ---------------------------------------------------------------------------------------

constexpr double kP50 = 0.5;
constexpr double kP99 = 0.99;
// The raw-device sweep: engines x queue depths x request sizes, each timed on a few reads of each size.
constexpr uint32_t kSweepQueueDepths[] = {1, 4, 16, 64};
constexpr uint64_t kSweepRequestBytes[] = {512 * kKiB, 1 * kMiB, 4 * kMiB};
constexpr int kSweepSingleReads = 3;
// A batch is many requests: only deep queues can serve it well, so shallow ones are not timed on it.
constexpr uint32_t kSweepMinBatchQueueDepth = 16;
constexpr int kSweepBatchReads = 2;
// The scratch file holds this many batches' worth of bytes (at least kMinScratchBytes), so that consecutive raw
// reads touch different blocks.
constexpr uint64_t kScratchBatches = 4;
constexpr uint64_t kMinScratchBytes = 64 * kMiB;
constexpr uint64_t kScratchWriteChunk = 8 * kMiB;
constexpr int kVerifyRuns = 5;

// One timed method in one mode: every sample, and the p50 of each repetition.
struct Timings {
  std::vector<double> all_ms;
  std::vector<double> rep_p50_ms;
  size_t rep_begin = 0;

  void Add(double ms) { all_ms.push_back(ms); }
  void EndRepetition() {
    rep_p50_ms.push_back(Median(std::vector<double>(all_ms.begin() + static_cast<ptrdiff_t>(rep_begin), all_ms.end())));
    rep_begin = all_ms.size();
  }
  // The median over repetitions of each repetition's p50: robust against one noisy repetition.
  double p50() const { return Median(rep_p50_ms); }
  double p99() const { return Percentile(all_ms, kP99); }
};

struct RawConfig {
  IoEngineKind kind = IoEngineKind::kPread;
  std::string engine;
  uint32_t queue_depth = 0;
  uint64_t request_bytes = 0;
  std::unique_ptr<IoEngine> io;
};

// The scratch file for the raw-device baseline, removed when this goes.
class Scratch {
 public:
  ~Scratch() {
    file.reset();
    if (!path.empty()) DefaultFileSystem()->Remove(path).IgnoreError();
  }
  Status Create(const std::string& dir, uint64_t bytes) {
    auto fs = DefaultFileSystem();
    path = JoinPath(dir, ".expertstore-swapin-scratch-" + std::to_string(::getpid()));
    size = bytes;
    {
      ES_ASSIGN_OR_RETURN(auto w, fs->Open(path, OpenOptions{.write = true, .create = true, .exclusive = true, .direct = true}));
      AlignedBuffer chunk(kScratchWriteChunk);
      if (chunk.data() == nullptr) return Status::ResourceExhausted("scratch buffer");
      std::mt19937_64 rng(1);
      for (size_t i = 0; i < chunk.size(); i += sizeof(uint64_t)) {
        uint64_t v = rng();
        std::memcpy(chunk.data() + i, &v, sizeof(v));
      }
      for (uint64_t off = 0; off < bytes; off += kScratchWriteChunk) {
        ES_RETURN_IF_ERROR(w->Write(off, chunk.span().first(std::min(kScratchWriteChunk, bytes - off))));
      }
      ES_RETURN_IF_ERROR(w->DataSync());
    }
    ES_ASSIGN_OR_RETURN(file, fs->Open(path, OpenOptions{.direct = true}));
    return Status::Ok();
  }
  // The next `bytes` of the file, wrapping around.
  uint64_t Next(uint64_t bytes) {
    if (cursor + bytes > size) cursor = 0;
    uint64_t at = cursor;
    cursor += bytes;
    return at;
  }

  std::string path;
  std::unique_ptr<File> file;
  uint64_t size = 0;
  uint64_t cursor = 0;
};

class SwapinBench {
 public:
  SwapinBench(const Args& args, Store& store, const ModelExperts& experts) : args_(args), store_(store), experts_(experts) {}

  Status Run() {
    ES_ASSIGN_OR_RETURN(int64_t reads, args_.GetInt("reads", kDefaultReads, 1, kMaxSamples));
    ES_ASSIGN_OR_RETURN(int64_t batches, args_.GetInt("batches", kDefaultBatches, 0, kMaxSamples));
    ES_ASSIGN_OR_RETURN(int64_t repeat, args_.GetInt("repeat", kDefaultRepeat, 1, kMaxRepeat));
    ES_ASSIGN_OR_RETURN(int64_t seed, args_.GetInt("seed", 1, 0, INT64_MAX));
    prime_ = !args_.Has("no-prime");
    reads_ = static_cast<uint32_t>(reads);
    batches_ = static_cast<uint32_t>(batches);
    repeat_ = static_cast<uint32_t>(repeat);
    ES_RETURN_IF_ERROR(ChooseExperts(static_cast<uint64_t>(seed)));
    ES_ASSIGN_OR_RETURN(int64_t k, args_.GetInt("k", experts_.model().top_k == 0 ? kFallbackTopK : experts_.model().top_k, 1,
                                                static_cast<int64_t>(max_layer_experts_)));
    k_ = std::min(static_cast<uint32_t>(k), max_layer_experts_);  // the default (top-k) is not range-checked
    batch_bytes_ = k_ * record_bytes_;

    ExpertCacheOptions co;
    co.capacity_bytes = k_ * experts_.max_record_bytes();
    ES_ASSIGN_OR_RETURN(cache_, ExpertCache::Open(store_, experts_.model().name, co));
    ES_ASSIGN_OR_RETURN(prime_io_, CreateIoEngine(IoEngineKind::kAuto, IoEngineOptions{}));
    prime_buffer_ = AlignedBuffer(batch_bytes_);
    if (prime_buffer_.data() == nullptr) return Status::ResourceExhausted("benchmark buffers");
    // The baselines read into memory of the same kind as the cache's arena: on a virtio disk (254 segments per
    // request) 4 KiB pages split every 1 MiB request in two and cost the baseline a third of its bandwidth,
    // which would flatter the cache.
    ES_ASSIGN_OR_RETURN(bench_arena_, PinnedArena::Create(batch_bytes_, 1, ArenaOptions{}));

    // "Next to the store": its parent directory, normally the same file system and device.
    const std::filesystem::path parent = std::filesystem::path(store_.path()).lexically_normal().parent_path();
    const std::string dir = args_.GetOr("scratch-dir", parent.empty() ? std::filesystem::path(".").string() : parent.string());
    ES_RETURN_IF_ERROR(scratch_.Create(dir, std::max(kMinScratchBytes, AlignUp(kScratchBatches * batch_bytes_, kMiB))));
    ES_RETURN_IF_ERROR(Sweep());
    ES_RETURN_IF_ERROR(TimeVerify());

    ProgressBar bar(args_, "bench swapin");
    const uint64_t total = static_cast<uint64_t>(repeat_) * (reads_ + batches_);
    uint64_t done = 0;
    for (uint32_t rep = 0; rep < repeat_; ++rep) {
      for (uint32_t i = 0; i < reads_; ++i) {
        ES_RETURN_IF_ERROR(TimeRaw(single_cfg_, record_bytes_, raw_single_));
        ES_RETURN_IF_ERROR(TimeCache({NextSingle()}, cache_single_));
        ES_RETURN_IF_ERROR(TimeCopy({NextSingle()}, /*mmap=*/false, pread_single_));
        ES_RETURN_IF_ERROR(TimeCopy({NextSingle()}, /*mmap=*/true, mmap_single_));
        bar.Update(++done, total);
      }
      for (uint32_t b = 0; b < batches_; ++b) {
        ES_RETURN_IF_ERROR(TimeRaw(batch_cfg_, batch_bytes_, raw_batch_));
        ES_RETURN_IF_ERROR(TimeCache(NextBatch(), cache_batch_));
        ES_RETURN_IF_ERROR(TimeCopy(NextBatch(), false, pread_batch_));
        ES_RETURN_IF_ERROR(TimeCopy(NextBatch(), true, mmap_batch_));
        bar.Update(++done, total);
      }
      for (Timings* t : {&raw_single_, &cache_single_, &pread_single_, &mmap_single_}) t->EndRepetition();
      if (batches_ > 0) {
        for (Timings* t : {&raw_batch_, &cache_batch_, &pread_batch_, &mmap_batch_}) t->EndRepetition();
      }
    }
    bar.Finish();
    Report();
    return Status::Ok();
  }

 private:
  // Experts of the most common record size (Qwen3: all of them), shuffled, globally and per layer.
  Status ChooseExperts(uint64_t seed) {
    std::map<uint64_t, uint64_t> sizes;
    for (const auto& e : experts_.experts()) ++sizes[e.extent.record_length];
    record_bytes_ = std::max_element(sizes.begin(), sizes.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    std::mt19937_64 rng(seed);
    for (const auto& e : experts_.experts()) {
      if (e.extent.record_length != record_bytes_) continue;
      expert_bytes_ = e.extent.payload_length;
      all_.push_back({e.layer, e.expert});
      by_layer_[e.layer].push_back({e.layer, e.expert});
    }
    std::shuffle(all_.begin(), all_.end(), rng);
    for (auto& [layer, list] : by_layer_) {
      std::shuffle(list.begin(), list.end(), rng);
      max_layer_experts_ = std::max<uint32_t>(max_layer_experts_, static_cast<uint32_t>(list.size()));
      layers_.push_back(layer);
    }
    return Status::Ok();
  }

  // The next expert in the shuffled order that the cache does not hold (a cold read for every method).
  ExpertRef NextSingle() {
    ExpertRef r = all_[single_cursor_++ % all_.size()];
    for (size_t tries = 1; tries < all_.size() && cache_->IsResident(r); ++tries) r = all_[single_cursor_++ % all_.size()];
    return r;
  }

  // k experts of one layer that the cache does not hold, layers in turn; wraps within a layer.
  std::vector<ExpertRef> NextBatch() {
    uint32_t layer = layers_[batch_layer_++ % layers_.size()];
    auto& list = by_layer_[layer];
    size_t& cursor = layer_cursor_[layer];
    std::vector<ExpertRef> out;
    for (size_t tries = 0; out.size() < k_ && tries < list.size(); ++tries) {
      ExpertRef r = list[cursor++ % list.size()];
      if (!cache_->IsResident(r)) out.push_back(r);
    }
    return out;
  }

  const ExpertInfo& Info(ExpertRef r) const { return *experts_.Find(*experts_.keys().Key(r)); }

  // Reads the bytes once, untimed, with O_DIRECT, so that whatever caches lie below the OS (a VM host's page
  // cache, a drive's buffer) are in the same state for every method. The OS page cache is not touched.
  Status Prime(File* file, uint64_t offset, uint64_t bytes) {
    if (!prime_) return Status::Ok();
    IoRead r{file, offset, prime_buffer_.span().first(bytes), Status::Ok()};
    prime_io_->ReadBatch({&r, 1}, nullptr);
    return r.status;
  }
  Status PrimeExperts(const std::vector<ExpertRef>& refs) {
    for (const ExpertRef& ref : refs) {
      const Extent& e = Info(ref).extent;
      ES_ASSIGN_OR_RETURN(File * f, store_.reader().Segment(e.segment));
      ES_RETURN_IF_ERROR(Prime(f, e.offset, e.record_length));
    }
    return Status::Ok();
  }

  Result<RawConfig> MakeRaw(IoEngineKind kind, uint32_t qd, uint64_t request) {
    RawConfig c;
    c.kind = kind;
    c.queue_depth = qd;
    c.request_bytes = request;
    ES_ASSIGN_OR_RETURN(c.io, CreateIoEngine(kind, IoEngineOptions{.queue_depth = qd, .max_request_bytes = request}));
    c.engine = std::string(c.io->name());
    c.io->RegisterBuffers(bench_arena_->RegistrationChunks()).IgnoreError();  // fixed buffers where possible
    return c;
  }

  Result<double> RawRead(RawConfig& c, uint64_t bytes) {
    uint64_t at = scratch_.Next(bytes);
    ES_RETURN_IF_ERROR(Prime(scratch_.file.get(), at, bytes));
    IoRead r{scratch_.file.get(), at, bench_arena_->slot(0).first(bytes), Status::Ok()};
    double t0 = NowMs();
    c.io->ReadBatch({&r, 1}, nullptr);
    double ms = NowMs() - t0;
    ES_RETURN_IF_ERROR(r.status);
    return ms;
  }

  // The best engine, queue depth and request size for a single expert's bytes and for a batch's, by the median
  // of a few reads each.
  Status Sweep() {
    double best_single = 0, best_batch = 0;
    for (IoEngineKind kind : {IoEngineKind::kUring, IoEngineKind::kPread}) {
      for (uint32_t qd : kSweepQueueDepths) {
        for (uint64_t request : kSweepRequestBytes) {
          auto c = MakeRaw(kind, qd, request);
          if (!c.ok()) {
            if (c.status().IsNotSupported()) break;  // no io_uring here
            return c.status();
          }
          std::vector<double> single, batch;
          for (int i = 0; i < kSweepSingleReads; ++i) {
            ES_ASSIGN_OR_RETURN(double ms, RawRead(*c, record_bytes_));
            single.push_back(ms);
          }
          for (int i = 0; i < kSweepBatchReads && batches_ > 0 && qd >= kSweepMinBatchQueueDepth; ++i) {
            ES_ASSIGN_OR_RETURN(double ms, RawRead(*c, batch_bytes_));
            batch.push_back(ms);
          }
          if (args_.Has("show-sweep")) {
            std::string b = batch.empty() ? "-" : std::to_string(Median(batch));
            std::fprintf(stderr, "sweep %-8s qd %2u %5llu KiB: single p50 %7.2f ms, batch p50 %s ms\n",
                         c->engine.c_str(), qd, static_cast<unsigned long long>(request / kKiB), Median(single),
                         b.c_str());
          }
          if (best_single == 0 || Median(single) < best_single) {
            best_single = Median(single);
            ES_ASSIGN_OR_RETURN(single_cfg_, MakeRaw(kind, qd, request));
          }
          if (!batch.empty() && (best_batch == 0 || Median(batch) < best_batch)) {
            best_batch = Median(batch);
            ES_ASSIGN_OR_RETURN(batch_cfg_, MakeRaw(kind, qd, request));
          }
        }
      }
    }
    if (!batch_cfg_.io) {
      ES_ASSIGN_OR_RETURN(batch_cfg_, MakeRaw(single_cfg_.kind, single_cfg_.queue_depth, single_cfg_.request_bytes));
    }
    return Status::Ok();
  }

  // The CPU cost of verifying one record already in memory (checksum, header, padding): what a swap-in pays
  // beyond the raw read wherever the reads complete too close together for verification to overlap them.
  Status TimeVerify() {
    const ExpertRef ref = all_.front();
    const Extent& e = Info(ref).extent;
    ES_ASSIGN_OR_RETURN(File * f, store_.reader().Segment(e.segment));
    std::span<std::byte> record = prime_buffer_.span().first(e.record_length);
    IoRead r{f, e.offset, record, Status::Ok()};
    prime_io_->ReadBatch({&r, 1}, nullptr);
    ES_RETURN_IF_ERROR(r.status);
    std::vector<double> ms;
    for (int i = 0; i < kVerifyRuns; ++i) {
      double t0 = NowMs();
      Status s = CheckRecord(record, e).status();
      ms.push_back(NowMs() - t0);
      ES_RETURN_IF_ERROR(s);
    }
    verify_ms_ = Median(ms);
    return Status::Ok();
  }

  Status TimeRaw(RawConfig& c, uint64_t bytes, Timings& out) {
    ES_ASSIGN_OR_RETURN(double ms, RawRead(c, bytes));
    out.Add(ms);
    return Status::Ok();
  }

  // Through the cache: every expert must be a miss (the cache holds one batch and the sequences do not repeat
  // within many batches); a hit would make the sample meaningless, so it is an error.
  Status TimeCache(const std::vector<ExpertRef>& refs, Timings& out) {
    ES_RETURN_IF_ERROR(PrimeExperts(refs));
    const uint64_t misses = cache_->stats().misses;
    double t0 = NowMs();
    {
      ES_ASSIGN_OR_RETURN(auto handles, cache_->Acquire(refs));
    }
    out.Add(NowMs() - t0);
    if (cache_->stats().misses - misses != refs.size()) {
      return Status::InvalidArgument("the model has too few experts for cold reads: an expert was still cached");
    }
    return Status::Ok();
  }

  Result<File*> Buffered(uint32_t segment) {
    auto it = buffered_.find(segment);
    if (it != buffered_.end()) return it->second.get();
    ES_ASSIGN_OR_RETURN(auto f, DefaultFileSystem()->Open(
                                    JoinPath(JoinPath(store_.path(), "segments"), SegmentFileName(segment)), OpenOptions{}));
    File* raw = f.get();
    buffered_.emplace(segment, std::move(f));
    return raw;
  }

  // What a simple loader does, one expert after another on one thread, page cache dropped first (untimed):
  // pread of the whole record into a buffer, or mmap of it, both followed by the same verification the cache
  // does (the mmap one in place, so every page is faulted in).
  Status TimeCopy(const std::vector<ExpertRef>& refs, bool use_mmap, Timings& out) {
    ES_RETURN_IF_ERROR(PrimeExperts(refs));
    std::vector<File*> files;
    for (const ExpertRef& ref : refs) {
      ES_ASSIGN_OR_RETURN(File * f, Buffered(Info(ref).extent.segment));
      ES_RETURN_IF_ERROR(f->DropCache());
      files.push_back(f);
    }
    double t0 = NowMs();
    for (size_t i = 0; i < refs.size(); ++i) {
      const Extent& e = Info(refs[i]).extent;
      if (use_mmap) {
        void* map = ::mmap(nullptr, e.record_length, PROT_READ, MAP_SHARED, files[i]->NativeHandle(),
                           static_cast<off_t>(e.offset));
        if (map == MAP_FAILED) return ErrnoStatus(errno, "mmap " + files[i]->path());
        auto checked = CheckRecord({static_cast<const std::byte*>(map), e.record_length}, e);
        ::munmap(map, e.record_length);
        ES_RETURN_IF_ERROR(checked.status());
      } else {
        std::span<std::byte> dst = bench_arena_->slot(0).first(e.record_length);
        ES_RETURN_IF_ERROR(ReadFully(*files[i], e.offset, dst));
        ES_RETURN_IF_ERROR(CheckRecord(dst, e).status());
      }
    }
    out.Add(NowMs() - t0);
    return Status::Ok();
  }

  static double Gbps(uint64_t bytes, double ms) { return ms <= 0 ? 0 : static_cast<double>(bytes) / (ms / kMsPerSecond) / kBytesPerGB; }

  void Report() const {
    const double p50 = cache_single_.p50(), raw = raw_single_.p50(), pr = pread_single_.p50(), mm = mmap_single_.p50();
    const double bp50 = cache_batch_.p50(), braw = raw_batch_.p50(), bpr = pread_batch_.p50(), bmm = mmap_batch_.p50();
    const bool registered = cache_->buffers_registered();
    if (args_.global().json) {
      JsonWriter w;
      w.BeginObject()
          .Key("model").String(experts_.model().name)
          .Key("engine").String(store_.reader().engine().name())
          .Key("reader_queue_depth").Uint(store_.reader().engine().options().queue_depth)
          .Key("reader_request_kb").Uint(store_.reader().engine().options().max_request_bytes / kKiB)
          .Key("registered_buffers").Bool(registered)
          .Key("arena").String(ArenaKindName(cache_->arena_kind()))
          .Key("primed").Bool(prime_)
          .Key("repeat").Uint(repeat_)
          .Key("expert_bytes").Uint(expert_bytes_)
          .Key("record_bytes").Uint(record_bytes_)
          .Key("reads").Uint(cache_single_.all_ms.size())
          .Key("p50_ms").Double(p50)
          .Key("p99_ms").Double(cache_single_.p99())
          .Key("gbps").Double(Gbps(record_bytes_, p50))
          .Key("verify_ms").Double(verify_ms_)
          .Key("raw_device_ms").Double(raw)
          .Key("raw_device_gbps").Double(Gbps(record_bytes_, raw))
          .Key("raw_engine").String(single_cfg_.engine)
          .Key("raw_queue_depth").Uint(single_cfg_.queue_depth)
          .Key("raw_request_kb").Uint(single_cfg_.request_bytes / kKiB)
          .Key("ratio_vs_raw").Double(raw > 0 ? p50 / raw : 0)
          .Key("pread_ms").Double(pr)
          .Key("pread_gbps").Double(Gbps(record_bytes_, pr))
          .Key("mmap_ms").Double(mm)
          .Key("mmap_gbps").Double(Gbps(record_bytes_, mm))
          .Key("speedup_vs_pread").Double(p50 > 0 ? pr / p50 : 0)
          .Key("speedup_vs_mmap").Double(p50 > 0 ? mm / p50 : 0);
      w.Key("batch").BeginObject()
          .Key("k").Uint(k_)
          .Key("batches").Uint(cache_batch_.all_ms.size())
          .Key("bytes").Uint(batch_bytes_)
          .Key("p50_ms").Double(bp50)
          .Key("p99_ms").Double(cache_batch_.p99())
          .Key("gbps").Double(Gbps(batch_bytes_, bp50))
          .Key("raw_device_ms").Double(braw)
          .Key("raw_device_gbps").Double(Gbps(batch_bytes_, braw))
          .Key("raw_engine").String(batch_cfg_.engine)
          .Key("raw_queue_depth").Uint(batch_cfg_.queue_depth)
          .Key("raw_request_kb").Uint(batch_cfg_.request_bytes / kKiB)
          .Key("fraction_of_raw").Double(bp50 > 0 && braw > 0 ? braw / bp50 : 0)
          .Key("pread_gbps").Double(Gbps(batch_bytes_, bpr))
          .Key("mmap_gbps").Double(Gbps(batch_bytes_, bmm))
          .Key("speedup_vs_pread").Double(bp50 > 0 ? bpr / bp50 : 0)
          .Key("speedup_vs_mmap").Double(bp50 > 0 ? bmm / bp50 : 0)
          .EndObject();
      w.EndObject();
      PrintJson(w);
      return;
    }
    const IoEngineOptions& io = store_.reader().engine().options();
    std::printf("bench swapin: model %s, expert %s (record %s), %u repetitions (medians), %s\n",
                experts_.model().name.c_str(), HumanBytes(expert_bytes_).c_str(), HumanBytes(record_bytes_).c_str(),
                repeat_, prime_ ? "primed" : "not primed");
    std::printf("  cache reads: %s qd %u, %s requests%s, %s arena; verifying one record costs %.2f ms of CPU\n",
                std::string(store_.reader().engine().name()).c_str(), io.queue_depth,
                HumanBytes(io.max_request_bytes).c_str(), registered ? ", registered buffers" : "",
                std::string(ArenaKindName(cache_->arena_kind())).c_str(), verify_ms_);
    auto row = [](const char* name, double p50_ms, double p99_ms, uint64_t bytes, const std::string& note) {
      std::printf("  %-28s %9.2f %9.2f %8.2f  %s\n", name, p50_ms, p99_ms, Gbps(bytes, p50_ms), note.c_str());
    };
    auto ratio = [](const char* what, double x) {
      char b[64];
      std::snprintf(b, sizeof(b), "%s %.2fx", what, x);
      return std::string(b);
    };
    std::printf("  %-28s %9s %9s %8s\n", "", "p50 ms", "p99 ms", "GB/s");
    row("one expert (cache miss)", p50, cache_single_.p99(), record_bytes_, ratio("time vs raw", raw > 0 ? p50 / raw : 0));
    row("  raw device", raw, raw_single_.p99(), record_bytes_, single_cfg_.engine + " qd " + std::to_string(single_cfg_.queue_depth) + " " + HumanBytes(single_cfg_.request_bytes) + " requests");
    row("  pread", pr, pread_single_.p99(), record_bytes_, ratio("cache speedup", p50 > 0 ? pr / p50 : 0));
    row("  mmap", mm, mmap_single_.p99(), record_bytes_, ratio("cache speedup", p50 > 0 ? mm / p50 : 0));
    if (batches_ > 0) {
      std::string name = "batch of " + std::to_string(k_) + " (one layer)";
      row(name.c_str(), bp50, cache_batch_.p99(), batch_bytes_, ratio("bandwidth vs raw", bp50 > 0 ? braw / bp50 : 0));
      row("  raw device", braw, raw_batch_.p99(), batch_bytes_, batch_cfg_.engine + " qd " + std::to_string(batch_cfg_.queue_depth) + " " + HumanBytes(batch_cfg_.request_bytes) + " requests");
      row("  pread", bpr, pread_batch_.p99(), batch_bytes_, ratio("cache speedup", bp50 > 0 ? bpr / bp50 : 0));
      row("  mmap", bmm, mmap_batch_.p99(), batch_bytes_, ratio("cache speedup", bp50 > 0 ? bmm / bp50 : 0));
    }
  }

  const Args& args_;
  Store& store_;
  const ModelExperts& experts_;
  bool prime_ = true;
  double verify_ms_ = 0;
  uint32_t reads_ = 0, batches_ = 0, repeat_ = 0, k_ = 0;
  uint64_t expert_bytes_ = 0, record_bytes_ = 0, batch_bytes_ = 0;
  std::vector<ExpertRef> all_;
  std::map<uint32_t, std::vector<ExpertRef>> by_layer_;
  std::map<uint32_t, size_t> layer_cursor_;
  std::vector<uint32_t> layers_;
  uint32_t max_layer_experts_ = 0;
  size_t single_cursor_ = 0, batch_layer_ = 0;
  std::unique_ptr<ExpertCache> cache_;
  std::unique_ptr<IoEngine> prime_io_;
  AlignedBuffer prime_buffer_;
  std::unique_ptr<PinnedArena> bench_arena_;  // raw reads and pread copies land here
  Scratch scratch_;
  RawConfig single_cfg_, batch_cfg_;
  std::map<uint32_t, std::unique_ptr<File>> buffered_;
  Timings raw_single_, cache_single_, pread_single_, mmap_single_;
  Timings raw_batch_, cache_batch_, pread_batch_, mmap_batch_;
};

Status RunSwapin(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  IoEngineOptions io;
  ES_ASSIGN_OR_RETURN(int64_t qd, args.GetInt("queue-depth", io.queue_depth, 1, kMaxQueueDepth));
  ES_ASSIGN_OR_RETURN(int64_t request_kb, args.GetInt("request-kb", static_cast<int64_t>(io.max_request_bytes / kKiB), 0, kMaxRequestKb));
  if (request_kb % (kDirectIoAlignment / kKiB) != 0) return Status::InvalidArgument("--request-kb must be a multiple of 4");
  io.queue_depth = static_cast<uint32_t>(qd);
  io.max_request_bytes = static_cast<uint64_t>(request_kb) * kKiB;
  ES_ASSIGN_OR_RETURN(auto store, OpenForBench(args, io));
  ES_ASSIGN_OR_RETURN(ModelExperts experts, ModelExperts::Load(store->catalog(), model));
  SwapinBench bench(args, *store, experts);
  return bench.Run();
}

// ---- bench cache ----------------------------------------------------------------------------------------

Status RunCacheBench(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(auto store, OpenForBench(args, IoEngineOptions{}));
  ES_ASSIGN_OR_RETURN(ModelExperts experts, ModelExperts::Load(store->catalog(), model));

  std::vector<TraceStep> steps;
  std::string source;
  if (args.Has("trace") == args.Has("synthetic")) return Status::InvalidArgument("give exactly one of --trace and --synthetic");
  if (args.Has("trace")) {
    source = *args.Get("trace");
    ES_ASSIGN_OR_RETURN(steps, ReadTrace(source));
  } else {
    SyntheticTraceOptions o;
    o.layers = experts.keys().layers;
    o.experts_per_layer = experts.keys().experts_per_layer;
    o.top_k = experts.model().top_k == 0 ? o.top_k : std::min(experts.model().top_k, o.experts_per_layer);
    ES_ASSIGN_OR_RETURN(int64_t tokens, args.GetInt("tokens", kDefaultSyntheticTokens, 1, kMaxSyntheticTokens));
    ES_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 1, 0, INT64_MAX));
    o.tokens = static_cast<uint32_t>(tokens);
    o.seed = static_cast<uint64_t>(seed);
    ES_ASSIGN_OR_RETURN(steps, MakeSyntheticTrace(o));
    source = "synthetic";
  }
  if (auto out = args.Get("write-trace")) ES_RETURN_IF_ERROR(WriteTrace(*out, steps));

  CacheSize size;
  if (args.Has("cache-mb")) {
    ES_ASSIGN_OR_RETURN(int64_t mb, args.GetInt("cache-mb", 0, 1, static_cast<int64_t>(kMaxCacheMb)));
    size.mb = static_cast<uint64_t>(mb);
  }
  if (args.Has("cache-pct")) {
    ES_ASSIGN_OR_RETURN(size.pct, args.GetDouble("cache-pct", 0));
  }
  ES_RETURN_IF_ERROR(ValidateCacheSize(size, "cache", /*required=*/true));
  // A percentage is a share of the experts, in whole slots.
  const uint64_t cache_bytes = size.mb ? *size.mb * kMiB
                                       : PercentOfSlots(*size.pct, experts.experts().size()) * experts.max_record_bytes();
  const uint32_t capacity = ExpertCache::SlotsFor(experts, cache_bytes);

  std::vector<PolicyKind> kinds(std::begin(kAllPolicyKinds), std::end(kAllPolicyKinds));
  if (auto list = args.Get("policies")) {
    kinds.clear();
    size_t start = 0;
    while (start <= list->size()) {
      size_t comma = list->find(',', start);
      if (comma == std::string::npos) comma = list->size();
      ES_ASSIGN_OR_RETURN(PolicyKind k, ParsePolicyKind(std::string_view(*list).substr(start, comma - start)));
      kinds.push_back(k);
      start = comma + 1;
    }
  }
  PolicyConfig config;
  config.traits = experts.Traits();
  if (auto w = args.Get("trust-weights")) {
    ES_ASSIGN_OR_RETURN(config.trust_weights, ParseTrustWeights(*w));
  }

  ES_ASSIGN_OR_RETURN(AccessTrace trace, FlattenTrace(steps, experts.keys(),
                                                      [&](PolicyKey k) { return experts.Find(k) != nullptr; }));
  std::vector<std::pair<PolicyKind, SimResult>> results;
  for (PolicyKind kind : kinds) {
    config.kind = kind;
    ES_ASSIGN_OR_RETURN(SimResult r, SimulatePolicy(trace, capacity, config));
    results.emplace_back(kind, r);
  }

  if (args.global().json) {
    JsonWriter w;
    w.BeginObject()
        .Key("model").String(model)
        .Key("trace").String(source)
        .Key("lines").Uint(steps.size())
        .Key("accesses").Uint(trace.keys.size())
        .Key("skipped_absent").Uint(trace.skipped)
        .Key("capacity_experts").Uint(capacity)
        .Key("cache_bytes").Uint(static_cast<uint64_t>(capacity) * experts.max_record_bytes())
        .Key("experts").Uint(experts.experts().size())
        .Key("trust_records").Uint(experts.trust_records())
        .Key("policies").BeginObject();
    for (const auto& [kind, r] : results) {
      w.Key(PolicyKindName(kind)).BeginObject().Key("hit_rate").Double(r.hit_rate()).Key("hits").Uint(r.hits)
          .Key("misses").Uint(r.misses).EndObject();
    }
    w.EndObject().EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("bench cache: model %s, trace %s (%zu lines, %zu accesses), cache %u of %zu experts (%s)\n",
              model.c_str(), source.c_str(), steps.size(), trace.keys.size(), capacity, experts.experts().size(),
              HumanBytes(static_cast<uint64_t>(capacity) * experts.max_record_bytes()).c_str());
  std::printf("  %-8s %9s %12s %12s\n", "policy", "hit rate", "hits", "misses");
  for (const auto& [kind, r] : results) {
    std::printf("  %-8s %8.2f%% %12llu %12llu\n", std::string(PolicyKindName(kind)).c_str(), kPercent * r.hit_rate(),
                static_cast<unsigned long long>(r.hits), static_cast<unsigned long long>(r.misses));
  }
  return Status::Ok();
}

Status RunBench(const Args& args) {
  if (args.positional().size() != 1) return Status::InvalidArgument("usage: expertstore bench swapin|cache --model M ...");
  const std::string& what = args.positional()[0];
  if (what == "swapin") return RunSwapin(args);
  if (what == "cache") return RunCacheBench(args);
  return Status::InvalidArgument("unknown benchmark '" + what + "' (expected swapin or cache)");
}

}  // namespace

void RegisterBenchCommands(std::vector<Command>& commands) {
  commands.push_back(Command{
      "bench",
      "bench swapin --model M [--reads N --batches N --repeat N --k K --scratch-dir D --no-prime --queue-depth Q "
      "--request-kb KB --seed S] | bench cache --model M (--trace T.jsonl | --synthetic [--tokens N --seed S]) "
      "(--cache-mb N | --cache-pct P) [--policies lru,lfu,trust,belady --trust-weights r,c,s,z --write-trace OUT]",
      "benchmarks: cold expert swap-in vs raw device, pread and mmap; policy hit rates on a routing trace",
      {
          {"model", true, "model name"},
          {"reads", true, "swapin: single-expert reads per repetition (default 16)"},
          {"batches", true, "swapin: layer batches per repetition (default 4)"},
          {"repeat", true, "swapin: repetitions; figures are medians over them (default 3)"},
          {"k", true, "swapin: experts per batch (default the model's top-k)"},
          {"scratch-dir", true, "swapin: where the raw-device scratch file goes (default next to the store)"},
          {"show-sweep", false, "swapin: print the raw-device sweep on stderr"},
          {"no-prime", false, "swapin: do not read each range once, untimed, before timing it"},
          {"queue-depth", true, "swapin: the store reader's reads in flight (default 32)"},
          {"request-kb", true, "swapin: the store reader's request size in KiB (default 1024)"},
          {"seed", true, "swapin: expert order; cache: synthetic trace seed (default 1)"},
          {"trace", true, "cache: routing trace (JSON lines from `expertstore trace`)"},
          {"synthetic", false, "cache: replay a synthetic trace with temporal locality instead"},
          {"tokens", true, "cache: tokens of the synthetic trace (default 2000)"},
          {"write-trace", true, "cache: also write the trace replayed to this file"},
          {"cache-mb", true, "cache: cache size in MiB"},
          {"cache-pct", true, "cache: cache size as a percentage of the model's experts"},
          {"policies", true, "cache: comma-separated policies (default lru,lfu,trust,belady)"},
          {"trust-weights", true, "cache: trust policy weights recency,convergence,stability,size (default 0.4,0.3,0.2,0.1)"},
      },
      RunBench});
}

}  // namespace es::cli
