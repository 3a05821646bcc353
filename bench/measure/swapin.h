// `bench swapin`'s measurement: cold expert reads through the ExpertCache against the raw device (the fastest
// engine, queue depth and request size of a sweep, on a scratch file), buffered pread and mmap, all verifying
// what they read. The store is only read; the one scratch file written is removed before MeasureSwapin returns.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "cache/arena.h"
#include "store/base/status.h"
#include "store/io_engine.h"
#include "store/store.h"

namespace es::bench {

inline constexpr uint64_t kKiB = 1024;

// Bounds on the options (they only keep typos from running for days).
inline constexpr uint32_t kMaxSwapinSamples = 100000;
inline constexpr uint32_t kMaxSwapinRepeat = 1000;
inline constexpr uint32_t kMaxSwapinQueueDepth = 4096;
inline constexpr uint64_t kMaxSwapinRequestKb = uint64_t{1} << 20;

// What to measure. Validation errors name these fields.
struct SwapinOptions {
  std::string model;
  uint32_t reads = 16;        // single-expert reads per repetition, in [1, kMaxSwapinSamples]
  uint32_t batches = 4;       // layer batches per repetition, in [0, kMaxSwapinSamples]
  uint32_t repeat = 3;        // repetitions, in [1, kMaxSwapinRepeat]; figures are medians over them
  std::optional<uint32_t> k;  // experts per batch, in [1, the largest layer]; unset: the model's top-k, capped
  std::string scratch_dir;    // where the raw-device scratch file goes; empty: the store's parent directory
  bool prime = true;          // read each range once, untimed, with O_DIRECT, before timing it
  uint64_t seed = 1;          // the order experts are read in
  // The store reader's settings: the store must be opened with SwapinReaderOptions(options) for the figures to
  // describe them (MeasureSwapin reports the reader it finds).
  uint32_t queue_depth = IoEngineOptions{}.queue_depth;  // in [1, kMaxSwapinQueueDepth]
  uint64_t request_kb = IoEngineOptions{}.max_request_bytes / kKiB;  // a multiple of 4, at most kMaxSwapinRequestKb
};

// One raw-device configuration the sweep timed, by the median of a few reads each.
struct SweepPoint {
  std::string engine;
  uint32_t queue_depth = 0;
  uint64_t request_bytes = 0;
  double single_p50_ms = 0;            // reads of one expert's record bytes
  std::optional<double> batch_p50_ms;  // reads of a batch's bytes; unset for shallow queues or no batches
};

// Hooks for a front end, called on the caller's thread while MeasureSwapin runs. Either may be empty.
struct SwapinObserver {
  std::function<void(const SweepPoint&)> on_sweep_point;
  // Timed steps (one single read or one batch, every method) done of total: first (0, total) when timing
  // starts, after the sweep, then once per step.
  std::function<void(uint64_t done, uint64_t total)> on_progress;
};

// One method's times in one mode.
struct MethodFigures {
  double p50_ms = 0;  // the median over repetitions of each repetition's p50
  double p99_ms = 0;  // over every sample
  double gbps = 0;    // the mode's bytes at p50, decimal GB/s
};

// The raw-device configuration a mode was timed with: the sweep's fastest for that mode's bytes.
struct RawDeviceConfig {
  std::string engine;
  uint32_t queue_depth = 0;
  uint64_t request_bytes = 0;
};

// One expert at a time, or a layer's batch of k.
struct SwapinModeResult {
  uint64_t samples = 0;  // timed through the cache, every repetition; 0 for batches when `batches` is 0
  uint64_t bytes = 0;    // read per sample: one record, or k records
  MethodFigures cache, raw_device, pread, mmap;
  RawDeviceConfig raw_config;
  double ratio_vs_raw = 0;      // cache p50 / raw p50: time against the raw device (0 without a raw time)
  double fraction_of_raw = 0;   // raw p50 / cache p50: the share of the raw device's bandwidth the cache gets
  double speedup_vs_pread = 0;  // pread p50 / cache p50
  double speedup_vs_mmap = 0;   // mmap p50 / cache p50
};

struct SwapinResult {
  std::string model;
  // The store reader the cache read through.
  std::string reader_engine;
  uint32_t reader_queue_depth = 0;
  uint64_t reader_request_bytes = 0;
  bool registered_buffers = false;  // the cache's arena is registered with the reader's engine
  ArenaKind arena = ArenaKind::kUnlocked;
  bool primed = true;
  uint32_t repeat = 0;
  uint32_t k = 0;
  uint64_t expert_bytes = 0;  // payload of the experts read (those of the most common record size)
  uint64_t record_bytes = 0;  // their record: header + padded payload
  double verify_ms = 0;       // CPU time to verify one record already in memory (median of a few)
  SwapinModeResult single;
  SwapinModeResult batch;
};

// InvalidArgument naming the field out of range. `k` is checked against the model by MeasureSwapin.
Status ValidateSwapinOptions(const SwapinOptions& options);
// The reader settings to open the store with (queue_depth, request_kb); validates `options` first.
Result<IoEngineOptions> SwapinReaderOptions(const SwapinOptions& options);

// Measures `options.model` in `store` (opened read-only with SwapinReaderOptions). The cache, engines and
// buffers it creates are its own and gone when it returns. NotFound for an unknown model; InvalidArgument when
// the model has too few experts for every read to be cold.
Result<SwapinResult> MeasureSwapin(Store& store, const SwapinOptions& options, const SwapinObserver& observer = {});

}  // namespace es::bench
