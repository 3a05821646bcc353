// Runtime implementation.
#include "tools/cli_runtime.h"

#include <cstdio>
#include <random>

namespace es::cli {

std::vector<FlagSpec> RuntimeFlags() {
  return {
      {"state", true, "wake, focus or crisis: presets of cache size, experts per token and prefetch (default: focus's, "
                      "with the cache sized from the memory available)"},
      {"cache-mb", true, "expert cache size in MiB (overrides the state's)"},
      {"cache-pct", true, "expert cache size as a percentage of the model's experts (overrides the state's)"},
      {"policy", true, "cache eviction policy: lru (default), lfu, trust, reuse (layer-cyclic reuse distance) or arc"},
      {"routing", true, "expert selection: exact (default), trust or cache-aware"},
      {"routing-weights", true, "trust routing weights r,x,w,f (default 0.5,0.2,0.2,0.1)"},
      {"routing-margin", true, "cache-aware routing: router probability given up per swap at most (default 0.05)"},
      {"focus-domain", true, "trust routing: focus on the experts with the highest lift for this profiled domain"},
      {"prefetch", true, "layers to prefetch ahead (overrides the state's; 0 disables)"},
      {"prefetch-min-prob", true, "prefetch a predicted expert only when the lookahead router gives it at least this "
                                  "probability (default: 2 / experts per layer, twice chance)"},
      {"prefetch-predictor", true, "what predicts the experts to prefetch: auto (default: the maps fit-lookahead "
                                   "stored, else the next layers' routers), router or fitted"},
      {"miss-precision", true, "serve experts not in the cache from the model's low-bit copy in this format (quantize "
                               "--add-tier), loading the often used ones at full precision behind: NOT EXACT"},
      {"miss-tier-share", true, "with --miss-precision: the share of the cache's memory for the low-bit copies "
                                "(default 0.9)"},
      {"device", true, "cpu (default), cuda or hybrid (CPU and GPU share the experts by a cost model)"},
      {"gpu-cache-mb", true, "cuda/hybrid: GPU memory for experts in MiB (default: what fits)"},
      {"gpu-cache-pct", true, "cuda/hybrid: GPU expert cache as a percentage of the model's experts"},
      {"threads", true, "compute threads (default: all cores)"},
      {"activations", true, "exact (default) or q8: quantized (GGUF) weights multiply activations rounded to 8 bits "
                            "with integer dot products, as llama.cpp does: faster, NOT exact"},
      {"no-cache", false, "read every selected expert from disk for every token (the naive baseline)"},
      {"skip-missing-experts", false, "drop experts a partial checkpoint lacks instead of failing"},
      {"no-record", false, "do not record expert usage"},
  };
}

Result<std::unique_ptr<Store>> OpenStoreForMetadata(const Args& args) {
  auto store = OpenStore(args, /*writer=*/true);
  if (!store.ok() && store.status().IsBusy()) {
    // Another process (serve, another eval) is the writer: read beside it and journal what we record.
    if (!args.global().quiet) {
      std::fprintf(stderr, "note: %s; recording to its journal, merged by that writer\n", store.status().message().c_str());
    }
    return OpenStore(args, /*writer=*/false);
  }
  if (store.ok()) ES_RETURN_IF_ERROR((*store)->StartJournalMerging(kJournalMergeInterval));
  return store;
}

std::vector<FlagSpec> DecodeFlags() {
  return {
      {"max-tokens", true, "most tokens to generate (default 64)"},
      {"ctx-size", true, "tokens of context, prompt included (default and most: the model's)"},
      {"temperature", true, "0 is greedy (default: the model's generation_config.json; greedy without one)"},
      {"top-k", true, "sample among the k most likely tokens (0: all; default: the model's)"},
      {"top-p", true, "nucleus sampling threshold (default: the model's, else 1)"},
      {"min-p", true, "drop tokens less likely than this times the most likely (default: the model's, else 0)"},
      {"repeat-penalty", true, "penalise tokens of the last --repeat-last-n (1: off; default: the model's, else 1)"},
      {"repeat-last-n", true, "tokens the penalties look back over, prompt included (default 64)"},
      {"presence-penalty", true, "subtracted from each token seen in the window (default 0)"},
      {"frequency-penalty", true, "subtracted per occurrence in the window (default 0)"},
      {"seed", true, "sampling seed (default: a fresh one, reported in --json)"},
      {"stop", true, "end generation where this text appears, leaving it out (repeatable)"},
  };
}

Result<SamplerRequest> SamplerFromArgs(const Args& args) {
  SamplerRequest s;
  auto real = [&](std::string_view flag, std::optional<float>& out) -> Status {
    if (!args.Has(flag)) return Status::Ok();
    ES_ASSIGN_OR_RETURN(double v, args.GetDouble(flag, 0));
    out = static_cast<float>(v);
    return Status::Ok();
  };
  ES_RETURN_IF_ERROR(real("temperature", s.temperature));
  ES_RETURN_IF_ERROR(real("top-p", s.top_p));
  ES_RETURN_IF_ERROR(real("min-p", s.min_p));
  ES_RETURN_IF_ERROR(real("repeat-penalty", s.repetition_penalty));
  ES_RETURN_IF_ERROR(real("presence-penalty", s.presence_penalty));
  ES_RETURN_IF_ERROR(real("frequency-penalty", s.frequency_penalty));
  if (args.Has("top-k")) {
    ES_ASSIGN_OR_RETURN(int64_t k, args.GetInt("top-k", 0, 0, INT32_MAX));
    s.top_k = static_cast<uint32_t>(k);
  }
  if (args.Has("repeat-last-n")) {
    ES_ASSIGN_OR_RETURN(int64_t n, args.GetInt("repeat-last-n", 0, 0, INT32_MAX));
    s.penalty_last_n = static_cast<uint32_t>(n);
  }
  if (args.Has("seed")) {
    ES_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0, 0, INT64_MAX));
    s.seed = static_cast<uint64_t>(seed);
  }
  return s;
}

Result<DecodeSettings> DecodeSettingsFromArgs(const Args& args, const Runtime& rt) {
  DecodeSettings d;
  ES_ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 64, 1, 1 << 20));
  d.options.max_tokens = static_cast<uint32_t>(max_tokens);
  const int64_t model_context = rt.runtime().model().config().max_positions;
  ES_ASSIGN_OR_RETURN(int64_t context, args.GetInt("ctx-size", model_context, 1, model_context));
  d.options.context = static_cast<uint32_t>(context);
  ES_ASSIGN_OR_RETURN(SamplerRequest request, SamplerFromArgs(args));
  if (!request.seed) request.seed = std::random_device{}();
  d.options.sampler = request.Over(rt.runtime().sampler_defaults());
  ES_RETURN_IF_ERROR(Sampler::Create(d.options.sampler).status());
  d.options.forward = rt.forward_options();
  for (const std::string& s : args.GetAll("stop")) {
    if (!s.empty()) d.stop.push_back(s);
  }
  return d;
}

Result<RuntimeConfig> RuntimeConfigFromArgs(const Args& args) {
  RuntimeConfig c;
  c.device = args.GetOr("device", c.device);
  ES_ASSIGN_OR_RETURN(const CacheSize gpu_cache, CacheSizeFromFlags(args, "gpu-cache"));
  c.gpu_cache_mb = gpu_cache.mb;
  c.gpu_cache_pct = gpu_cache.pct;
  c.state = args.GetOr("state", c.state);
  c.state_given = args.Has("state");
  ES_ASSIGN_OR_RETURN(const CacheSize cache, CacheSizeFromFlags(args, "cache"));
  c.cache_mb = cache.mb;
  c.cache_pct = cache.pct;
  c.policy = args.GetOr("policy", c.policy);
  c.routing = args.GetOr("routing", c.routing);
  c.activations = args.GetOr("activations", c.activations);
  if (auto w = args.Get("routing-weights")) c.routing_weights = std::string(*w);
  if (args.Has("routing-margin")) {
    ES_ASSIGN_OR_RETURN(c.routing_margin, args.GetDouble("routing-margin", 0));
  }
  c.focus_domain = args.GetOr("focus-domain", "");
  if (args.Has("prefetch")) {
    ES_ASSIGN_OR_RETURN(int64_t depth, args.GetInt("prefetch", 0, 0, 64));
    c.prefetch = static_cast<uint32_t>(depth);
  }
  if (args.Has("prefetch-min-prob")) {
    ES_ASSIGN_OR_RETURN(c.prefetch_min_prob, args.GetDouble("prefetch-min-prob", 0));
  }
  c.prefetch_predictor = args.GetOr("prefetch-predictor", c.prefetch_predictor);
  if (auto tier = args.Get("miss-precision")) c.miss_precision = std::string(*tier);
  if (args.Has("miss-tier-share")) {
    ES_ASSIGN_OR_RETURN(c.miss_tier_share, args.GetDouble("miss-tier-share", 0));
  }
  c.no_cache = args.Has("no-cache");
  c.skip_missing_experts = args.Has("skip-missing-experts");
  ES_RETURN_IF_ERROR(ValidateRuntimeConfig(c));
  return c;
}

Runtime::~Runtime() = default;  // members go in reverse order: the runtime, the pool, the store

Result<std::unique_ptr<Runtime>> Runtime::Open(const Args& args, const std::string& model, bool need_tokenizer) {
  return Open(args, model, RuntimeOptions{.need_tokenizer = need_tokenizer});
}

Result<std::unique_ptr<Runtime>> Runtime::Open(const Args& args, const std::string& model,
                                               const RuntimeOptions& options) {
  ES_ASSIGN_OR_RETURN(RuntimeConfig config, RuntimeConfigFromArgs(args));
  if (options.exact_reference) {
    RuntimeConfig exact;
    exact.device = config.device;
    exact.gpu_cache_mb = config.gpu_cache_mb;
    exact.gpu_cache_pct = config.gpu_cache_pct;
    exact.skip_missing_experts = config.skip_missing_experts;
    config = exact;
  }
  config.need_tokenizer = options.need_tokenizer;
  config.record = options.record && !args.Has("no-record");
  if (config.record && !options.writes_metadata && !StoreWritable(args)) {
    // Reading a read-only store is fine; recording usage would need its journal.
    if (!args.global().quiet) {
      std::fprintf(stderr, "note: the store at %s is open read-only: expert usage is not recorded\n",
                   args.global().store.c_str());
    }
    config.record = false;
  }
  std::unique_ptr<Runtime> rt(new Runtime());
  if (config.record || options.writes_metadata) {
    ES_ASSIGN_OR_RETURN(rt->store_, OpenStoreForMetadata(args));
  } else {
    ES_ASSIGN_OR_RETURN(rt->store_, OpenStore(args, /*writer=*/false));
  }
  ES_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0, 0, 1024));
  ES_ASSIGN_OR_RETURN(rt->pool_, kernels::ComputePool::Create(static_cast<size_t>(threads)));
  ES_ASSIGN_OR_RETURN(rt->rt_, ModelRuntime::Open(*rt->store_, model, config, rt->pool_.get()));
  if (options.announce && !args.global().quiet && !args.global().json) {
    std::fprintf(stderr, "[%s]\n", rt->describe().c_str());
  }
  return rt;
}

}  // namespace es::cli
