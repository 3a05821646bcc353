// Runtime implementation.
#include "tools/cli_runtime.h"

#include <cstdio>
#include <optional>
#include <thread>

#include "cache/model_experts.h"
#include "cache/policy.h"
#include "cache/states.h"
#include "compute/cache_provider.h"
#include "compute/routing_policy.h"
#include "store/metadata.h"

namespace es::cli {

std::vector<FlagSpec> RuntimeFlags() {
  return {
      {"state", true, "wake, focus (default) or crisis: presets of cache size, experts per token and prefetch"},
      {"cache-mb", true, "expert cache size in MiB (overrides the state's)"},
      {"cache-pct", true, "expert cache size as a percentage of the model's experts (overrides the state's)"},
      {"policy", true, "cache eviction policy: lru (default), lfu or trust"},
      {"routing", true, "expert selection: exact (default), trust or cache-aware"},
      {"routing-weights", true, "trust routing weights r,x,w,f (default 0.5,0.2,0.2,0.1)"},
      {"routing-margin", true, "cache-aware routing: router probability given up per swap at most (default 0.05)"},
      {"focus-domain", true, "trust routing: focus on the experts with the highest lift for this profiled domain"},
      {"prefetch", true, "layers to prefetch ahead (overrides the state's; 0 disables)"},
      {"device", true, "cpu (default), cuda or hybrid"},
      {"threads", true, "compute threads (default: all cores)"},
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

namespace {

// The trust policy's inputs from the catalog: trust records, usage totals, and a focus domain's lifts.
Result<TrustRoutingInputs> LoadTrustRoutingInputs(Store& store, const std::string& model, const ModelConfig& c,
                                                  const std::string& focus_domain) {
  TrustRoutingInputs in;
  in.layers = c.num_layers;
  in.experts_per_layer = c.num_experts;
  in.normalize = c.norm_topk_prob;
  const size_t keys = static_cast<size_t>(c.num_layers) * c.num_experts;
  auto key = [&](const std::pair<uint32_t, uint32_t>& id) -> std::optional<size_t> {
    if (id.first >= c.num_layers || id.second >= c.num_experts) return std::nullopt;
    return static_cast<size_t>(id.first) * c.num_experts + id.second;
  };
  ES_ASSIGN_OR_RETURN(auto trust, LoadModelTrust(store.catalog(), model));
  if (!trust.empty()) in.trust.assign(keys, kNeutralEvidence);
  for (const auto& [id, t] : trust) {
    if (auto k = key(id)) in.trust[*k] = t.trust;
  }
  ES_ASSIGN_OR_RETURN(ModelUsage usage, LoadModelUsage(store.catalog(), model));
  in.activations.assign(keys, 0);
  in.success_rate.assign(keys, kNeutralEvidence);
  for (const auto& [id, u] : usage.totals) {
    auto k = key(id);
    if (!k) continue;
    in.activations[*k] = u.activation_count;
    if (u.activation_count > 0) {
      in.success_rate[*k] = static_cast<double>(u.success_count) / static_cast<double>(u.activation_count);
    }
  }
  if (!focus_domain.empty()) {
    ES_ASSIGN_OR_RETURN(auto profiles, LoadModelProfiles(store.catalog(), model));
    in.domain_lift.assign(keys, 0);
    bool seen = false;
    for (const auto& [id, p] : profiles) {
      auto k = key(id);
      if (!k) continue;
      for (const auto& d : p.domains) {
        if (d.domain == focus_domain) {
          in.domain_lift[*k] = d.lift;
          seen = true;
        }
      }
    }
    if (!seen) {
      return Status::NotFound("no profile of model '" + model + "' knows domain '" + focus_domain +
                              "' (run profile first)");
    }
  }
  return in;
}

}  // namespace

Result<SamplerOptions> SamplerFromArgs(const Args& args) {
  SamplerOptions s;
  ES_ASSIGN_OR_RETURN(double t, args.GetDouble("temperature", 0.0));
  ES_ASSIGN_OR_RETURN(double p, args.GetDouble("top-p", 1.0));
  ES_ASSIGN_OR_RETURN(int64_t k, args.GetInt("top-k", 0, 0, INT32_MAX));
  ES_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0, 0, INT64_MAX));
  s.temperature = static_cast<float>(t);
  s.top_p = static_cast<float>(p);
  s.top_k = static_cast<uint32_t>(k);
  s.seed = static_cast<uint64_t>(seed);
  ES_RETURN_IF_ERROR(Sampler::Create(s).status());
  return s;
}

Result<Tokenizer> LoadModelTokenizer(Store& store, const std::string& model) {
  auto value = store.catalog().Get(Cf::kModels, ModelKey(model));
  if (!value.ok()) return value.status().IsNotFound() ? Status::NotFound("no model '" + model + "' in the store") : value.status();
  ES_ASSIGN_OR_RETURN(ModelInfo info, DecodeModel(*value));
  auto json = store.ReadAsset(info, "tokenizer.json");
  if (!json.ok()) {
    return json.status().IsNotFound() ? Status::NotFound("model '" + model + "' was ingested without a tokenizer.json")
                                      : json.status();
  }
  std::string config;
  if (auto c = store.ReadAsset(info, "tokenizer_config.json"); c.ok()) config = std::move(c).value();
  return Tokenizer::FromJson(*json, config);
}

Runtime::~Runtime() = default;

Result<std::unique_ptr<Runtime>> Runtime::Open(const Args& args, const std::string& model, bool need_tokenizer) {
  return Open(args, model, RuntimeOptions{.need_tokenizer = need_tokenizer});
}

Status Runtime::FinishRecording() {
  if (!recorder_) return Status::Ok();
  return recorder_->Flush().WithContext("recording usage");
}

Result<std::unique_ptr<Runtime>> Runtime::Open(const Args& args, const std::string& model,
                                               const RuntimeOptions& options) {
  const bool need_tokenizer = options.need_tokenizer;
  std::unique_ptr<Runtime> rt(new Runtime());
  std::string device = args.GetOr("device", "cpu");
  if (device != "cpu") {
    return Status::NotSupported("--device " + device + ": this build runs generation on the CPU only (the CUDA backend "
                                "is not implemented yet)");
  }
  ES_ASSIGN_OR_RETURN(RoutingKind routing, ParseRoutingKind(args.GetOr("routing", "exact")));
  rt->routing_ = std::string(RoutingKindName(routing));
  const bool record = options.record && !args.Has("no-record");
  if (record || options.writes_metadata) {
    ES_ASSIGN_OR_RETURN(rt->store_, OpenStoreForMetadata(args));
  } else {
    ES_ASSIGN_OR_RETURN(rt->store_, OpenStore(args, /*writer=*/false));
  }
  ES_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0, 0, 1024));
  ES_ASSIGN_OR_RETURN(rt->pool_, kernels::ComputePool::Create(static_cast<size_t>(threads)));
  kernels::CpuContext ctx;
  ctx.pool = rt->pool_.get();
  ES_ASSIGN_OR_RETURN(rt->model_, Model::Load(*rt->store_, model, ctx));
  if (need_tokenizer) {
    ES_ASSIGN_OR_RETURN(Tokenizer tok, LoadModelTokenizer(*rt->store_, model));
    rt->tokenizer_ = std::make_unique<Tokenizer>(std::move(tok));
  }
  rt->forward_.skip_missing_experts = args.Has("skip-missing-experts");
  const ModelConfig& config = rt->model_->config();
  if (record) {
    rt->recorder_ = std::make_unique<UsageRecorder>(*rt->store_, model, config.num_layers, config.num_experts);
    UsageRecorder* recorder = rt->recorder_.get();
    rt->forward_.observer = [recorder](const RoutingEvent& e) { recorder->Observe(e); };
  }
  if (routing == RoutingKind::kTrust) {
    TrustRoutingWeights weights;
    if (auto w = args.Get("routing-weights")) {
      ES_ASSIGN_OR_RETURN(weights, ParseTrustRoutingWeights(*w));
    }
    ES_ASSIGN_OR_RETURN(TrustRoutingInputs inputs,
                        LoadTrustRoutingInputs(*rt->store_, model, config, args.GetOr("focus-domain", "")));
    rt->forward_.routing = MakeTrustRouting(std::move(inputs), weights);
  } else if (args.Has("routing-weights") || args.Has("focus-domain")) {
    return Status::InvalidArgument("--routing-weights and --focus-domain go with --routing trust");
  }
  if (routing != RoutingKind::kCacheAware && args.Has("routing-margin")) {
    return Status::InvalidArgument("--routing-margin goes with --routing cache-aware");
  }
  if (args.Has("no-cache")) {
    if (routing == RoutingKind::kCacheAware) {
      return Status::InvalidArgument("--routing cache-aware needs the cache (drop --no-cache)");
    }
    ES_ASSIGN_OR_RETURN(rt->experts_, DirectExpertProvider::Create(*rt->store_, model));
    rt->description_ = "no cache: every selected expert read from disk for every token";
    return rt;
  }
  ES_ASSIGN_OR_RETURN(MetabolicState state, ParseMetabolicState(args.GetOr("state", "focus")));
  if (!IsGenerationState(state)) {
    return Status::InvalidArgument("--state " + std::string(MetabolicStateName(state)) +
                                   " is not a generation state (wake, focus or crisis); the rest state is "
                                   "`expertstore rest`, the dream state `expertstore calibrate`");
  }
  ES_ASSIGN_OR_RETURN(ModelExperts experts, ModelExperts::Load(rt->store_->catalog(), model));
  StateModel sm{rt->model_->config().top_k, rt->model_->config().num_experts, experts.experts().size(),
                experts.max_record_bytes()};
  StateOverrides overrides;
  if (args.Has("cache-mb")) {
    ES_ASSIGN_OR_RETURN(int64_t mb, args.GetInt("cache-mb", 0, 1, int64_t{1} << 30));
    overrides.cache_mb = static_cast<uint64_t>(mb);
  }
  if (args.Has("prefetch")) {
    ES_ASSIGN_OR_RETURN(int64_t depth, args.GetInt("prefetch", 0, 0, 64));
    overrides.prefetch_depth = static_cast<uint32_t>(depth);
  }
  if (args.Has("cache-mb") && args.Has("cache-pct")) return Status::InvalidArgument("give --cache-mb or --cache-pct, not both");
  ES_ASSIGN_OR_RETURN(StateBudget budget, ResolveState(state, sm, overrides));
  if (args.Has("cache-pct")) {
    constexpr double kPercent = 100;
    ES_ASSIGN_OR_RETURN(double pct, args.GetDouble("cache-pct", 0));
    if (!(pct > 0 && pct <= kPercent)) return Status::InvalidArgument("--cache-pct must be in (0, 100]");
    // A share of the experts, in whole slots; a layer's k experts at least.
    auto slots = static_cast<uint64_t>(pct / kPercent * static_cast<double>(sm.num_experts));
    if (slots < budget.experts_per_token) {
      return Status::InvalidArgument("--cache-pct " + std::to_string(pct) + " holds " + std::to_string(slots) +
                                     " experts; a layer needs " + std::to_string(budget.experts_per_token) + " at once");
    }
    budget.cache_slots = static_cast<uint32_t>(slots);
    budget.cache_bytes = slots * sm.slot_bytes;
  } else if (!args.Has("cache-mb") && !args.Has("state") && options.preferred_cache_bytes > 0 &&
             experts.total_record_bytes() <= options.preferred_cache_bytes) {
    budget.cache_slots = static_cast<uint32_t>(sm.num_experts);
    budget.cache_bytes = experts.total_record_bytes();
  }
  ExpertCacheOptions co;
  co.capacity_bytes = budget.cache_bytes;
  ES_ASSIGN_OR_RETURN(co.policy, ParsePolicyKind(args.GetOr("policy", "lru")));
  if (co.policy == PolicyKind::kBelady) {
    return Status::InvalidArgument("--policy belady needs the future: it exists only in `bench cache`");
  }
  co.prefetch_bytes_in_flight = budget.prefetch_bytes_in_flight;
  ES_ASSIGN_OR_RETURN(auto provider, CacheExpertProvider::Create(*rt->store_, model, co));
  rt->state_ = std::string(MetabolicStateName(state));
  rt->forward_.top_k = budget.experts_per_token;
  rt->forward_.prefetch_depth = budget.prefetch_depth;
  rt->forward_.prefetch_accuracy = rt->accuracy_.get();
  if (routing == RoutingKind::kCacheAware) {
    ES_ASSIGN_OR_RETURN(double margin, args.GetDouble("routing-margin", kDefaultCacheAwareMargin));
    if (!(margin >= 0 && margin <= 1)) return Status::InvalidArgument("--routing-margin must be in [0, 1]");
    ExpertCache* cache = &provider->cache();
    rt->forward_.routing = MakeCacheAwareRouting(
        [cache](uint32_t layer, uint32_t expert) { return cache->IsResident({layer, expert}); }, config.norm_topk_prob,
        margin);
  }
  rt->description_ = rt->state_ + ": cache " + std::to_string(provider->cache().capacity_slots()) + " of " +
                     std::to_string(experts.experts().size()) + " experts (" +
                     HumanBytes(provider->cache().capacity_slots() * provider->cache().slot_bytes()) + ", " +
                     std::string(provider->cache().policy_name()) + "), " + std::to_string(budget.experts_per_token) +
                     " experts per token, prefetch " + std::to_string(budget.prefetch_depth) + ", routing " +
                     rt->routing_ + (rt->recorder_ ? (rt->store_->journaling() ? ", recording to the journal" : ", recording")
                                                    : "");
  rt->experts_ = std::move(provider);
  return rt;
}

std::string Runtime::describe() const { return description_; }

}  // namespace es::cli
