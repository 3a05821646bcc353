// Benchmark commands: `bench swapin` (cold expert reads through the cache against the raw device, buffered pread
// and mmap, in one run) and `bench cache` (hit rates of every eviction policy and of belady on a routing trace).
// The measurements are es_bench's (bench/measure); here are their flags and printing. Both open the store
// read-only; swapin writes one scratch file next to the store and removes it.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bench/measure/cache_replay.h"
#include "bench/measure/swapin.h"
#include "remote/tier.h"
#include "cache/arena.h"
#include "cache/cache_size.h"
#include "cache/model_experts.h"
#include "cache/policy.h"
#include "cache/trace.h"
#include "tools/cli.h"

namespace es::cli {

namespace {

constexpr uint64_t kKiB = 1ull << 10;
constexpr double kPercent = 100.0;

Result<std::unique_ptr<Store>> OpenForBench(const Args& args, const IoEngineOptions& io) {
  StoreOptions options;
  options.read_only = true;
  options.io = io;
  ES_ASSIGN_OR_RETURN(options.io_engine, ParseIoEngineKind(args.global().io_engine));
  ES_ASSIGN_OR_RETURN(auto store, Store::Open(args.global().store, options));
  ES_RETURN_IF_ERROR(remote::ConnectTiers(*store, LocalCacheBytes(args)).status());  // an attached model reads from its pool
  return store;
}

// ---- bench swapin ---------------------------------------------------------------------------------------

Result<bench::SwapinOptions> SwapinFlags(const Args& args) {
  bench::SwapinOptions o;
  ES_ASSIGN_OR_RETURN(o.model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(int64_t reads, args.GetInt("reads", o.reads, 1, bench::kMaxSwapinSamples));
  ES_ASSIGN_OR_RETURN(int64_t batches, args.GetInt("batches", o.batches, 0, bench::kMaxSwapinSamples));
  ES_ASSIGN_OR_RETURN(int64_t repeat, args.GetInt("repeat", o.repeat, 1, bench::kMaxSwapinRepeat));
  o.reads = static_cast<uint32_t>(reads);
  o.batches = static_cast<uint32_t>(batches);
  o.repeat = static_cast<uint32_t>(repeat);
  if (args.Has("k")) {
    // The bound depends on the model, so MeasureSwapin checks it. Clamping keeps a value out of range out of
    // range, so that its message gives the model's bound.
    ES_ASSIGN_OR_RETURN(int64_t k, args.GetInt("k", 0, INT64_MIN, INT64_MAX));
    o.k = static_cast<uint32_t>(std::clamp<int64_t>(k, 0, std::numeric_limits<uint32_t>::max()));
  }
  o.scratch_dir = args.GetOr("scratch-dir", "");
  o.prime = !args.Has("no-prime");
  ES_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", static_cast<int64_t>(o.seed), 0, INT64_MAX));
  o.seed = static_cast<uint64_t>(seed);
  ES_ASSIGN_OR_RETURN(int64_t qd, args.GetInt("queue-depth", o.queue_depth, 1, bench::kMaxSwapinQueueDepth));
  ES_ASSIGN_OR_RETURN(int64_t request_kb, args.GetInt("request-kb", static_cast<int64_t>(o.request_kb), 0,
                                                      static_cast<int64_t>(bench::kMaxSwapinRequestKb)));
  o.queue_depth = static_cast<uint32_t>(qd);
  o.request_kb = static_cast<uint64_t>(request_kb);
  return o;
}

void PrintSweepPoint(const bench::SweepPoint& p) {
  std::string batch = p.batch_p50_ms ? std::to_string(*p.batch_p50_ms) : "-";
  std::fprintf(stderr, "sweep %-8s qd %2u %5llu KiB: single p50 %7.2f ms, batch p50 %s ms\n", p.engine.c_str(),
               p.queue_depth, static_cast<unsigned long long>(p.request_bytes / kKiB), p.single_p50_ms, batch.c_str());
}

void PrintSwapinJson(const bench::SwapinResult& r) {
  const bench::SwapinModeResult& s = r.single;
  const bench::SwapinModeResult& b = r.batch;
  JsonWriter w;
  w.BeginObject()
      .Key("model").String(r.model)
      .Key("engine").String(r.reader_engine)
      .Key("reader_queue_depth").Uint(r.reader_queue_depth)
      .Key("reader_request_kb").Uint(r.reader_request_bytes / kKiB)
      .Key("registered_buffers").Bool(r.registered_buffers)
      .Key("arena").String(ArenaKindName(r.arena))
      .Key("primed").Bool(r.primed)
      .Key("repeat").Uint(r.repeat)
      .Key("expert_bytes").Uint(r.expert_bytes)
      .Key("record_bytes").Uint(r.record_bytes)
      .Key("reads").Uint(s.samples)
      .Key("p50_ms").Double(s.cache.p50_ms)
      .Key("p99_ms").Double(s.cache.p99_ms)
      .Key("gbps").Double(s.cache.gbps)
      .Key("verify_ms").Double(r.verify_ms)
      .Key("raw_device_ms").Double(s.raw_device.p50_ms)
      .Key("raw_device_gbps").Double(s.raw_device.gbps)
      .Key("raw_engine").String(s.raw_config.engine)
      .Key("raw_queue_depth").Uint(s.raw_config.queue_depth)
      .Key("raw_request_kb").Uint(s.raw_config.request_bytes / kKiB)
      .Key("ratio_vs_raw").Double(s.ratio_vs_raw)
      .Key("pread_ms").Double(s.pread.p50_ms)
      .Key("pread_gbps").Double(s.pread.gbps)
      .Key("mmap_ms").Double(s.mmap.p50_ms)
      .Key("mmap_gbps").Double(s.mmap.gbps)
      .Key("speedup_vs_pread").Double(s.speedup_vs_pread)
      .Key("speedup_vs_mmap").Double(s.speedup_vs_mmap);
  w.Key("batch").BeginObject()
      .Key("k").Uint(r.k)
      .Key("batches").Uint(b.samples)
      .Key("bytes").Uint(b.bytes)
      .Key("p50_ms").Double(b.cache.p50_ms)
      .Key("p99_ms").Double(b.cache.p99_ms)
      .Key("gbps").Double(b.cache.gbps)
      .Key("raw_device_ms").Double(b.raw_device.p50_ms)
      .Key("raw_device_gbps").Double(b.raw_device.gbps)
      .Key("raw_engine").String(b.raw_config.engine)
      .Key("raw_queue_depth").Uint(b.raw_config.queue_depth)
      .Key("raw_request_kb").Uint(b.raw_config.request_bytes / kKiB)
      .Key("fraction_of_raw").Double(b.fraction_of_raw)
      .Key("pread_gbps").Double(b.pread.gbps)
      .Key("mmap_gbps").Double(b.mmap.gbps)
      .Key("speedup_vs_pread").Double(b.speedup_vs_pread)
      .Key("speedup_vs_mmap").Double(b.speedup_vs_mmap)
      .EndObject();
  w.EndObject();
  PrintJson(w);
}

std::string RawNote(const bench::RawDeviceConfig& c) {
  return c.engine + " qd " + std::to_string(c.queue_depth) + " " + HumanBytes(c.request_bytes) + " requests";
}

std::string RatioNote(const char* what, double x) {
  char b[64];
  std::snprintf(b, sizeof(b), "%s %.2fx", what, x);
  return b;
}

void PrintSwapinTable(const bench::SwapinResult& r) {
  std::printf("bench swapin: model %s, expert %s (record %s), %u repetitions (medians), %s\n", r.model.c_str(),
              HumanBytes(r.expert_bytes).c_str(), HumanBytes(r.record_bytes).c_str(), r.repeat,
              r.primed ? "primed" : "not primed");
  const bool rados = r.reader_engine == "rados";
  if (rados) {
    std::printf("  an attached model: cache reads from its RADOS pool, against the same objects read through librados "
                "(all of a batch in flight) without cache or verification\n");
  } else {
    std::printf("  cache reads: %s qd %u, %s requests%s, %s arena; verifying one record costs %.2f ms of CPU\n",
                r.reader_engine.c_str(), r.reader_queue_depth, HumanBytes(r.reader_request_bytes).c_str(),
                r.registered_buffers ? ", registered buffers" : "", std::string(ArenaKindName(r.arena)).c_str(),
                r.verify_ms);
  }
  auto row = [](const std::string& name, const bench::MethodFigures& f, const std::string& note) {
    std::printf("  %-28s %9.2f %9.2f %8.2f  %s\n", name.c_str(), f.p50_ms, f.p99_ms, f.gbps, note.c_str());
  };
  std::printf("  %-28s %9s %9s %8s\n", "", "p50 ms", "p99 ms", "GB/s");
  const bench::SwapinModeResult& s = r.single;
  const std::string raw = rados ? "  raw RADOS reads" : "  raw device";
  row("one expert (cache miss)", s.cache, RatioNote("time vs raw", s.ratio_vs_raw));
  row(raw, s.raw_device, rados ? "librados, one read" : RawNote(s.raw_config));
  if (!rados) {
    row("  pread", s.pread, RatioNote("cache speedup", s.speedup_vs_pread));
    row("  mmap", s.mmap, RatioNote("cache speedup", s.speedup_vs_mmap));
  }
  const bench::SwapinModeResult& b = r.batch;
  if (b.samples > 0) {
    row("batch of " + std::to_string(r.k) + " (one layer)", b.cache, RatioNote("bandwidth vs raw", b.fraction_of_raw));
    row(raw, b.raw_device, rados ? "librados, " + std::to_string(r.k) + " reads in flight" : RawNote(b.raw_config));
    if (!rados) {
      row("  pread", b.pread, RatioNote("cache speedup", b.speedup_vs_pread));
      row("  mmap", b.mmap, RatioNote("cache speedup", b.speedup_vs_mmap));
    }
  }
}

Status RunSwapin(const Args& args) {
  ES_ASSIGN_OR_RETURN(bench::SwapinOptions options, SwapinFlags(args));
  ES_ASSIGN_OR_RETURN(IoEngineOptions io, bench::SwapinReaderOptions(options));
  ES_ASSIGN_OR_RETURN(auto store, OpenForBench(args, io));

  bench::SwapinObserver observer;
  if (args.Has("show-sweep")) observer.on_sweep_point = PrintSweepPoint;
  // Started by the first call, (0, total), when timing starts: the rate and ETA are the timed runs'. Drawn from
  // the first step done.
  std::optional<ProgressBar> bar;
  observer.on_progress = [&](uint64_t done, uint64_t total) {
    if (!bar) bar.emplace(args, "bench swapin");
    if (done > 0) bar->Update(done, total);
  };
  ES_ASSIGN_OR_RETURN(bench::SwapinResult result, bench::MeasureSwapin(*store, options, observer));
  if (bar) bar->Finish();

  if (args.global().json) {
    PrintSwapinJson(result);
  } else {
    PrintSwapinTable(result);
  }
  return Status::Ok();
}

// ---- bench cache ----------------------------------------------------------------------------------------

Result<std::vector<PolicyKind>> ParsePolicyList(std::string_view list) {
  std::vector<PolicyKind> kinds;
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    ES_ASSIGN_OR_RETURN(PolicyKind k, ParsePolicyKind(list.substr(start, comma - start)));
    kinds.push_back(k);
    start = comma + 1;
  }
  return kinds;
}

Result<bench::CacheReplayOptions> CacheReplayFlags(const Args& args) {
  bench::CacheReplayOptions o;
  ES_ASSIGN_OR_RETURN(o.cache, CacheSizeFromFlags(args, "cache"));
  if (auto list = args.Get("policies")) {
    ES_ASSIGN_OR_RETURN(o.policies, ParsePolicyList(*list));
  }
  if (auto w = args.Get("trust-weights")) {
    ES_ASSIGN_OR_RETURN(o.trust_weights, ParseTrustWeights(*w));
  }
  o.reader = args.Has("reader");
  o.prefetch = args.Has("prefetch");
  return o;
}

void PrintCacheJson(const std::string& model, const std::string& source, size_t lines, const ModelExperts& experts,
                    const bench::CacheReplayResult& r) {
  JsonWriter w;
  w.BeginObject()
      .Key("model").String(model)
      .Key("trace").String(source)
      .Key("lines").Uint(lines)
      .Key("accesses").Uint(r.accesses)
      .Key("skipped_absent").Uint(r.skipped_absent)
      .Key("capacity_experts").Uint(r.capacity_experts)
      .Key("cache_bytes").Uint(r.cache_bytes)
      .Key("experts").Uint(experts.experts().size())
      .Key("trust_records").Uint(experts.trust_records())
      .Key("policies").BeginObject();
  for (const bench::PolicyReplay& p : r.policies) {
    w.Key(PolicyKindName(p.policy)).BeginObject().Key("hit_rate").Double(p.sim.hit_rate()).Key("hits").Uint(p.sim.hits)
        .Key("misses").Uint(p.sim.misses).Key("cached_layers").Uint(p.cached_layers);
    if (p.reader) {
      w.Key("reader").BeginObject().Key("hit_rate").Double(p.reader->hit_rate()).Key("seconds").Double(p.reader->seconds)
          .Key("bytes_read").Uint(p.reader->bytes_read).Key("gbps").Double(p.reader->gbps())
          .Key("accesses_per_second").Double(static_cast<double>(p.reader->hits + p.reader->misses) / p.reader->seconds)
          .EndObject();
    }
    if (p.prefetch) {
      w.Key("prefetch").BeginObject().Key("hit_rate").Double(p.prefetch->hit_rate())
          .Key("reads_per_access").Double(p.prefetch->reads_per_access()).Key("misses").Uint(p.prefetch->misses)
          .Key("prefetches").Uint(p.prefetch->prefetches).Key("prefetch_hits").Uint(p.prefetch->prefetch_hits)
          .Key("prefetch_wasted").Uint(p.prefetch->prefetch_wasted).EndObject();
    }
    w.EndObject();
  }
  w.EndObject().EndObject();
  PrintJson(w);
}

void PrintCacheTable(const std::string& model, const std::string& source, size_t lines, const ModelExperts& experts,
                     const bench::CacheReplayResult& r) {
  std::printf("bench cache: model %s, trace %s (%zu lines, %llu accesses), cache %u of %zu experts (%s)\n",
              model.c_str(), source.c_str(), lines, static_cast<unsigned long long>(r.accesses), r.capacity_experts,
              experts.experts().size(), HumanBytes(r.cache_bytes).c_str());
  const bool prefetch = !r.policies.empty() && r.policies[0].prefetch;
  std::printf("  %-8s %9s %12s %12s%s%s\n", "policy", "hit rate", "hits", "misses",
              prefetch ? "   with prefetch: hit rate, reads/access" : "",
              r.policies.empty() || !r.policies[0].reader ? "" : "   live cache: seconds, read, GB/s");
  for (const bench::PolicyReplay& p : r.policies) {
    std::printf("  %-8s %8.2f%% %12llu %12llu", std::string(PolicyKindName(p.policy)).c_str(),
                kPercent * p.sim.hit_rate(), static_cast<unsigned long long>(p.sim.hits),
                static_cast<unsigned long long>(p.sim.misses));
    if (p.prefetch) {
      std::printf("   %8.2f%% %6.3f", kPercent * p.prefetch->hit_rate(), p.prefetch->reads_per_access());
    } else if (prefetch) {
      std::printf("   %8s %6.3f", "-", p.sim.reads_per_access());
    }
    if (p.reader) {
      std::printf("   %8.2f s %10s %6.2f", p.reader->seconds, HumanBytes(p.reader->bytes_read).c_str(), p.reader->gbps());
    }
    if (p.cached_layers < experts.keys().layers) {
      std::printf("   (caches layers below %u of %u: one token's experts do not fit)", p.cached_layers,
                  experts.keys().layers);
    }
    std::printf("\n");
  }
}

Status RunCacheBench(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  if (args.Has("trace") == args.Has("synthetic")) {
    return Status::InvalidArgument("give exactly one of --trace and --synthetic");
  }
  uint32_t tokens = bench::kDefaultSyntheticTokens;
  uint64_t seed = SyntheticTraceOptions{}.seed;
  if (args.Has("synthetic")) {
    ES_ASSIGN_OR_RETURN(int64_t t, args.GetInt("tokens", tokens, 1, bench::kMaxSyntheticTokens));
    ES_ASSIGN_OR_RETURN(int64_t s, args.GetInt("seed", static_cast<int64_t>(seed), 0, INT64_MAX));
    tokens = static_cast<uint32_t>(t);
    seed = static_cast<uint64_t>(s);
  }
  ES_ASSIGN_OR_RETURN(bench::CacheReplayOptions options, CacheReplayFlags(args));

  ES_ASSIGN_OR_RETURN(auto store, OpenForBench(args, IoEngineOptions{}));
  ES_ASSIGN_OR_RETURN(ModelExperts experts, ModelExperts::Load(store->catalog(), model));
  std::vector<TraceStep> steps;
  std::string source;
  if (auto path = args.Get("trace")) {
    source = *path;
    ES_ASSIGN_OR_RETURN(steps, ReadTrace(source));
  } else {
    source = "synthetic";
    ES_ASSIGN_OR_RETURN(steps, bench::SyntheticTraceFor(experts, tokens, seed));
  }
  if (auto out = args.Get("write-trace")) ES_RETURN_IF_ERROR(WriteTrace(*out, steps));
  ES_ASSIGN_OR_RETURN(bench::CacheReplayResult result, bench::ReplayCachePolicies(experts, steps, options, store.get()));

  if (args.global().json) {
    PrintCacheJson(model, source, steps.size(), experts, result);
  } else {
    PrintCacheTable(model, source, steps.size(), experts, result);
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

// "<help> (default <value>)".
std::string WithDefault(std::string_view help, uint64_t value) {
  return std::string(help) + " (default " + std::to_string(value) + ")";
}

}  // namespace

void RegisterBenchCommands(std::vector<Command>& commands) {
  // The defaults shown are the options' own, so the help cannot drift from them.
  const bench::SwapinOptions swapin;
  commands.push_back(Command{
      "bench",
      "bench swapin --model M [--reads N --batches N --repeat N --k K --scratch-dir D --no-prime --queue-depth Q "
      "--request-kb KB --seed S] | bench cache --model M (--trace T.jsonl | --synthetic [--tokens N --seed S]) "
      "(--cache-mb N | --cache-pct P) [--policies lru,lfu,trust,reuse,arc,belady --trust-weights r,c,s,z --write-trace OUT --reader --prefetch]",
      "benchmarks: cold expert swap-in vs raw device, pread and mmap; policy hit rates on a routing trace",
      {
          {"model", true, "model name"},
          {"reads", true, WithDefault("swapin: single-expert reads per repetition", swapin.reads)},
          {"batches", true, WithDefault("swapin: layer batches per repetition", swapin.batches)},
          {"repeat", true, WithDefault("swapin: repetitions; figures are medians over them", swapin.repeat)},
          {"k", true, "swapin: experts per batch (default the model's top-k)"},
          {"scratch-dir", true, "swapin: where the raw-device scratch file goes (default next to the store)"},
          {"show-sweep", false, "swapin: print the raw-device sweep on stderr"},
          {"no-prime", false, "swapin: do not read each range once, untimed, before timing it"},
          {"queue-depth", true, WithDefault("swapin: the store reader's reads in flight", swapin.queue_depth)},
          {"request-kb", true, WithDefault("swapin: the store reader's request size in KiB", swapin.request_kb)},
          {"seed", true, WithDefault("swapin: expert order; cache: synthetic trace seed", swapin.seed)},
          {"trace", true, "cache: routing trace (JSON lines from `expertstore trace`)"},
          {"synthetic", false, "cache: replay a synthetic trace with temporal locality instead"},
          {"tokens", true, WithDefault("cache: tokens of the synthetic trace", bench::kDefaultSyntheticTokens)},
          {"write-trace", true, "cache: also write the trace replayed to this file"},
          {"reader", false, "cache: also replay through a live cache reading the store (hit rates tied to time)"},
          {"prefetch", false, "cache: also replay each policy with the trace's predictions prefetched (a trace "
                              "written with prefetch on)"},
          {"cache-mb", true, "cache: cache size in MiB"},
          {"cache-pct", true, "cache: cache size as a percentage of the model's experts"},
          {"policies", true, "cache: comma-separated policies (default lru,lfu,trust,reuse,arc,belady)"},
          {"trust-weights", true, "cache: trust policy weights recency,convergence,stability,size (default 0.4,0.3,0.2,0.1)"},
      },
      RunBench, /*max_positional=*/1});
}

}  // namespace es::cli
