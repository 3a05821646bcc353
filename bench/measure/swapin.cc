// The cold swap-in measurement (swapin.h): one SwapinRun per call owns the cache, the engines, the buffers and
// the scratch file, and releases them all (the scratch file removed) on every return path.
#include "bench/measure/swapin.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "bench/measure/stats.h"
#include "cache/expert_cache.h"
#include "cache/model_experts.h"
#include "store/base/aligned_buffer.h"
#include "store/segment_format.h"

namespace es::bench {

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint32_t kFallbackTopK = 8;  // a model record without top-k (never written by ingest)
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
constexpr uint64_t kScratchDataSeed = 1;
constexpr int kVerifyRuns = 5;

double NowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// An engine for the raw-device baseline and the settings it was made with.
struct RawEngine {
  IoEngineKind kind = IoEngineKind::kPread;
  RawDeviceConfig config;
  std::unique_ptr<IoEngine> io;
};

// The scratch file for the raw-device baseline, removed when this goes.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    file_.reset();
    if (!path_.empty()) DefaultFileSystem()->Remove(path_).IgnoreError();
  }

  // Writes `bytes` of random data (O_DIRECT, synced) to a new file in `dir` and opens it for O_DIRECT reads.
  Status Create(const std::string& dir, uint64_t bytes) {
    auto fs = DefaultFileSystem();
    path_ = JoinPath(dir, ".expertstore-swapin-scratch-" + std::to_string(::getpid()));
    size_ = bytes;
    {
      ES_ASSIGN_OR_RETURN(auto w, fs->Open(path_, OpenOptions{.write = true, .create = true, .exclusive = true,
                                                              .direct = true}));
      AlignedBuffer chunk(kScratchWriteChunk);
      if (chunk.data() == nullptr) return Status::ResourceExhausted("scratch buffer");
      std::mt19937_64 rng(kScratchDataSeed);
      for (size_t i = 0; i < chunk.size(); i += sizeof(uint64_t)) {
        uint64_t v = rng();
        std::memcpy(chunk.data() + i, &v, sizeof(v));
      }
      for (uint64_t off = 0; off < bytes; off += kScratchWriteChunk) {
        ES_RETURN_IF_ERROR(w->Write(off, chunk.span().first(std::min(kScratchWriteChunk, bytes - off))));
      }
      ES_RETURN_IF_ERROR(w->DataSync());
    }
    ES_ASSIGN_OR_RETURN(file_, fs->Open(path_, OpenOptions{.direct = true}));
    return Status::Ok();
  }

  // The offset of the next `bytes` of the file, wrapping around.
  uint64_t Next(uint64_t bytes) {
    if (cursor_ + bytes > size_) cursor_ = 0;
    uint64_t at = cursor_;
    cursor_ += bytes;
    return at;
  }
  // Owned by this; valid until it goes.
  File* file() const { return file_.get(); }

 private:
  std::string path_;
  std::unique_ptr<File> file_;
  uint64_t size_ = 0;
  uint64_t cursor_ = 0;
};

MethodFigures Figures(const Timings& t, uint64_t bytes) {
  return MethodFigures{.p50_ms = t.p50(), .p99_ms = t.p99(), .gbps = GigabytesPerSecond(bytes, t.p50())};
}

// The four methods' timings in one mode, and the figures derived from them.
struct ModeTimings {
  Timings raw, cache, pread, mmap;

  void EndRepetition() {
    for (Timings* t : {&raw, &cache, &pread, &mmap}) t->EndRepetition();
  }
  SwapinModeResult Summarize(uint64_t bytes, const RawDeviceConfig& raw_config) const {
    SwapinModeResult r;
    r.samples = cache.samples();
    r.bytes = bytes;
    r.cache = Figures(cache, bytes);
    r.raw_device = Figures(raw, bytes);
    r.pread = Figures(pread, bytes);
    r.mmap = Figures(mmap, bytes);
    r.raw_config = raw_config;
    const double p50 = r.cache.p50_ms, raw_p50 = r.raw_device.p50_ms;
    r.ratio_vs_raw = raw_p50 > 0 ? p50 / raw_p50 : 0;
    r.fraction_of_raw = p50 > 0 && raw_p50 > 0 ? raw_p50 / p50 : 0;
    r.speedup_vs_pread = p50 > 0 ? r.pread.p50_ms / p50 : 0;
    r.speedup_vs_mmap = p50 > 0 ? r.mmap.p50_ms / p50 : 0;
    return r;
  }
};

class SwapinRun {
 public:
  SwapinRun(Store& store, const ModelExperts& experts, const SwapinOptions& options, const SwapinObserver& observer)
      : store_(store), experts_(experts), options_(options), observer_(observer) {}

  Result<SwapinResult> Run() {
    ES_RETURN_IF_ERROR(ChooseExperts());
    const uint32_t top_k = experts_.model().top_k == 0 ? kFallbackTopK : experts_.model().top_k;
    if (options_.k && (*options_.k < 1 || *options_.k > max_layer_experts_)) {
      return Status::InvalidArgument("`k` must be between 1 and " + std::to_string(max_layer_experts_));
    }
    k_ = std::min(options_.k.value_or(top_k), max_layer_experts_);  // the default (top-k) is only capped
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
    if (remote_) {
      // An attached model: its records are objects in a RADOS pool, and the baseline is reading those objects
      // (the same reads, all of a batch in flight, through librados) without the cache or verification.
      single_raw_.config.engine = batch_raw_.config.engine = "rados";
      single_raw_.config.queue_depth = 1;
      batch_raw_.config.queue_depth = k_;
      ES_RETURN_IF_ERROR(TimeAll());
      return Report();
    }

    const uint64_t scratch_bytes = std::max(kMinScratchBytes, AlignUp(kScratchBatches * batch_bytes_, kMiB));
    ES_RETURN_IF_ERROR(scratch_.Create(ScratchDir(), scratch_bytes));
    ES_RETURN_IF_ERROR(Sweep());
    ES_RETURN_IF_ERROR(TimeVerify());
    ES_RETURN_IF_ERROR(TimeAll());
    return Report();
  }

 private:
  // "Next to the store": its parent directory, normally the same file system and device.
  std::string ScratchDir() const {
    if (!options_.scratch_dir.empty()) return options_.scratch_dir;
    const std::filesystem::path parent = std::filesystem::path(store_.path()).lexically_normal().parent_path();
    return parent.empty() ? std::filesystem::path(".").string() : parent.string();
  }

  // Experts of the most common record size (Qwen3: all of them), shuffled, globally and per layer.
  Status ChooseExperts() {
    std::map<uint64_t, uint64_t> sizes;
    for (const auto& e : experts_.experts()) ++sizes[e.extent.record_length];
    if (sizes.empty()) return Status::InvalidArgument("model '" + experts_.model().name + "' has no experts");
    record_bytes_ = std::max_element(sizes.begin(), sizes.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    std::mt19937_64 rng(options_.seed);
    for (const auto& e : experts_.experts()) {
      if (e.extent.record_length != record_bytes_) continue;
      expert_bytes_ = e.extent.payload_length;
      all_.push_back({e.layer, e.expert});
      by_layer_[e.layer].push_back({e.layer, e.expert});
    }
    std::shuffle(all_.begin(), all_.end(), rng);
    remote_ = IsRemote(experts_.experts().front().extent);
    for (auto& [layer, list] : by_layer_) {
      std::shuffle(list.begin(), list.end(), rng);
      max_layer_experts_ = std::max<uint32_t>(max_layer_experts_, static_cast<uint32_t>(list.size()));
      layers_.push_back(layer);
    }
    return Status::Ok();
  }

  // Every method in turn on fresh experts, `reads` single experts then `batches` batches per repetition.
  Status TimeAll() {
    const uint64_t total = static_cast<uint64_t>(options_.repeat) * (options_.reads + options_.batches);
    uint64_t done = 0;
    Progress(done, total);
    for (uint32_t rep = 0; rep < options_.repeat; ++rep) {
      for (uint32_t i = 0; i < options_.reads; ++i) {
        if (remote_) {
          ES_RETURN_IF_ERROR(TimeRemoteRaw({NextSingle()}, single_.raw));
          ES_RETURN_IF_ERROR(TimeCache({NextSingle()}, single_.cache));
          Progress(++done, total);
          continue;
        }
        ES_RETURN_IF_ERROR(TimeRaw(single_raw_, record_bytes_, single_.raw));
        ES_RETURN_IF_ERROR(TimeCache({NextSingle()}, single_.cache));
        ES_RETURN_IF_ERROR(TimeCopy({NextSingle()}, /*use_mmap=*/false, single_.pread));
        ES_RETURN_IF_ERROR(TimeCopy({NextSingle()}, /*use_mmap=*/true, single_.mmap));
        Progress(++done, total);
      }
      for (uint32_t b = 0; b < options_.batches; ++b) {
        if (remote_) {
          ES_RETURN_IF_ERROR(TimeRemoteRaw(NextBatch(), batch_.raw));
          ES_RETURN_IF_ERROR(TimeCache(NextBatch(), batch_.cache));
          Progress(++done, total);
          continue;
        }
        ES_RETURN_IF_ERROR(TimeRaw(batch_raw_, batch_bytes_, batch_.raw));
        ES_RETURN_IF_ERROR(TimeCache(NextBatch(), batch_.cache));
        ES_RETURN_IF_ERROR(TimeCopy(NextBatch(), /*use_mmap=*/false, batch_.pread));
        ES_RETURN_IF_ERROR(TimeCopy(NextBatch(), /*use_mmap=*/true, batch_.mmap));
        Progress(++done, total);
      }
      single_.EndRepetition();
      if (options_.batches > 0) batch_.EndRepetition();
    }
    return Status::Ok();
  }

  void Progress(uint64_t done, uint64_t total) const {
    if (observer_.on_progress) observer_.on_progress(done, total);
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
    if (!options_.prime) return Status::Ok();
    IoRead r{file, offset, prime_buffer_.span().first(bytes), Status::Ok()};
    prime_io_->ReadBatch({&r, 1}, nullptr);
    return r.status;
  }
  Status PrimeExperts(const std::vector<ExpertRef>& refs) {
    if (remote_) return Status::Ok();  // nothing below the OS to prime: the objects are across the network
    for (const ExpertRef& ref : refs) {
      const Extent& e = Info(ref).extent;
      ES_ASSIGN_OR_RETURN(File * f, store_.reader().Segment(e.segment));
      ES_RETURN_IF_ERROR(Prime(f, e.offset, e.record_length));
    }
    return Status::Ok();
  }

  Result<RawEngine> MakeRaw(IoEngineKind kind, uint32_t qd, uint64_t request) {
    RawEngine c;
    c.kind = kind;
    c.config.queue_depth = qd;
    c.config.request_bytes = request;
    ES_ASSIGN_OR_RETURN(c.io, CreateIoEngine(kind, IoEngineOptions{.queue_depth = qd, .max_request_bytes = request}));
    c.config.engine = std::string(c.io->name());
    c.io->AddBuffers(bench_arena_->RegistrationChunks()).status().IgnoreError();  // fixed buffers where possible
    return c;
  }

  Result<double> RawRead(RawEngine& c, uint64_t bytes) {
    uint64_t at = scratch_.Next(bytes);
    ES_RETURN_IF_ERROR(Prime(scratch_.file(), at, bytes));
    IoRead r{scratch_.file(), at, bench_arena_->slot(0).first(bytes), Status::Ok()};
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
          for (int i = 0; i < kSweepBatchReads && options_.batches > 0 && qd >= kSweepMinBatchQueueDepth; ++i) {
            ES_ASSIGN_OR_RETURN(double ms, RawRead(*c, batch_bytes_));
            batch.push_back(ms);
          }
          if (observer_.on_sweep_point) {
            SweepPoint p{.engine = c->config.engine, .queue_depth = qd, .request_bytes = request,
                         .single_p50_ms = Median(single),
                         .batch_p50_ms = batch.empty() ? std::nullopt : std::optional<double>(Median(batch))};
            observer_.on_sweep_point(p);
          }
          if (best_single == 0 || Median(single) < best_single) {
            best_single = Median(single);
            ES_ASSIGN_OR_RETURN(single_raw_, MakeRaw(kind, qd, request));
          }
          if (!batch.empty() && (best_batch == 0 || Median(batch) < best_batch)) {
            best_batch = Median(batch);
            ES_ASSIGN_OR_RETURN(batch_raw_, MakeRaw(kind, qd, request));
          }
        }
      }
    }
    if (!batch_raw_.io) {
      ES_ASSIGN_OR_RETURN(batch_raw_, MakeRaw(single_raw_.kind, single_raw_.config.queue_depth,
                                              single_raw_.config.request_bytes));
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

  // An attached model's baseline: the records' objects read through the store's reader unverified (ReadRaw: the
  // tier's librados reads, all in flight at once), into the benchmark's own memory.
  Status TimeRemoteRaw(const std::vector<ExpertRef>& refs, Timings& out) {
    std::vector<ExtentRead> reads;
    uint64_t at = 0;
    for (const ExpertRef& ref : refs) {
      const Extent& e = Info(ref).extent;
      reads.push_back({e, bench_arena_->slot(0).subspan(at, e.record_length), {}, {}});
      at += e.record_length;
    }
    double t0 = NowMs();
    store_.reader().ReadRaw(reads);
    out.Add(NowMs() - t0);
    for (const ExtentRead& r : reads) ES_RETURN_IF_ERROR(r.status);
    return Status::Ok();
  }

  Status TimeRaw(RawEngine& c, uint64_t bytes, Timings& out) {
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

  SwapinResult Report() const {
    SwapinResult r;
    r.model = experts_.model().name;
    const IoEngine& reader = store_.reader().engine();
    r.reader_engine = remote_ ? "rados" : std::string(reader.name());
    r.reader_queue_depth = reader.options().queue_depth;
    r.reader_request_bytes = reader.options().max_request_bytes;
    r.registered_buffers = cache_->buffers_registered();
    r.arena = cache_->arena_kind();
    r.primed = options_.prime;
    r.repeat = options_.repeat;
    r.k = k_;
    r.expert_bytes = expert_bytes_;
    r.record_bytes = record_bytes_;
    r.verify_ms = verify_ms_;
    r.single = single_.Summarize(record_bytes_, single_raw_.config);
    r.batch = batch_.Summarize(batch_bytes_, batch_raw_.config);
    return r;
  }

  Store& store_;
  const ModelExperts& experts_;
  const SwapinOptions& options_;
  const SwapinObserver& observer_;
  double verify_ms_ = 0;
  bool remote_ = false;  // an attached model: records read from a RADOS pool
  uint32_t k_ = 0;
  uint64_t expert_bytes_ = 0, record_bytes_ = 0, batch_bytes_ = 0;
  std::vector<ExpertRef> all_;
  std::map<uint32_t, std::vector<ExpertRef>> by_layer_;
  std::map<uint32_t, size_t> layer_cursor_;
  std::vector<uint32_t> layers_;
  uint32_t max_layer_experts_ = 0;
  size_t single_cursor_ = 0, batch_layer_ = 0;
  // Declared before the engines and files that read into its memory, so destroyed after them.
  std::unique_ptr<PinnedArena> bench_arena_;  // raw reads and pread copies land here
  std::unique_ptr<ExpertCache> cache_;
  std::unique_ptr<IoEngine> prime_io_;
  AlignedBuffer prime_buffer_;
  Scratch scratch_;
  RawEngine single_raw_, batch_raw_;
  std::map<uint32_t, std::unique_ptr<File>> buffered_;
  ModeTimings single_, batch_;
};

}  // namespace

Status ValidateSwapinOptions(const SwapinOptions& o) {
  auto between = [](std::string_view field, uint64_t v, uint64_t min, uint64_t max) -> Status {
    if (v >= min && v <= max) return Status::Ok();
    return Status::InvalidArgument("`" + std::string(field) + "` must be between " + std::to_string(min) + " and " +
                                   std::to_string(max));
  };
  ES_RETURN_IF_ERROR(between("reads", o.reads, 1, kMaxSwapinSamples));
  ES_RETURN_IF_ERROR(between("batches", o.batches, 0, kMaxSwapinSamples));
  ES_RETURN_IF_ERROR(between("repeat", o.repeat, 1, kMaxSwapinRepeat));
  ES_RETURN_IF_ERROR(between("queue_depth", o.queue_depth, 1, kMaxSwapinQueueDepth));
  ES_RETURN_IF_ERROR(between("request_kb", o.request_kb, 0, kMaxSwapinRequestKb));
  if (o.request_kb % (kDirectIoAlignment / kKiB) != 0) {
    return Status::InvalidArgument("`request_kb` must be a multiple of " + std::to_string(kDirectIoAlignment / kKiB));
  }
  return Status::Ok();
}

Result<IoEngineOptions> SwapinReaderOptions(const SwapinOptions& options) {
  ES_RETURN_IF_ERROR(ValidateSwapinOptions(options));
  return IoEngineOptions{.queue_depth = options.queue_depth, .max_request_bytes = options.request_kb * kKiB};
}

Result<SwapinResult> MeasureSwapin(Store& store, const SwapinOptions& options, const SwapinObserver& observer) {
  ES_RETURN_IF_ERROR(ValidateSwapinOptions(options));
  ES_ASSIGN_OR_RETURN(ModelExperts experts, ModelExperts::Load(store.catalog(), options.model));
  SwapinRun run(store, experts, options, observer);
  return run.Run();
}

}  // namespace es::bench
