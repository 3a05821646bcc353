// Runtime implementation.
#include "tools/cli_runtime.h"

#include <thread>

#include "cache/model_experts.h"
#include "cache/policy.h"
#include "cache/states.h"
#include "compute/cache_provider.h"

namespace es::cli {

std::vector<FlagSpec> RuntimeFlags() {
  return {
      {"state", true, "wake, focus (default) or crisis: presets of cache size, experts per token and prefetch"},
      {"cache-mb", true, "expert cache size in MiB (overrides the state's)"},
      {"policy", true, "cache eviction policy: lru (default), lfu or trust"},
      {"routing", true, "expert selection: exact (default), trust or cache-aware"},
      {"prefetch", true, "layers to prefetch ahead (overrides the state's; 0 disables)"},
      {"device", true, "cpu (default), cuda or hybrid"},
      {"threads", true, "compute threads (default: all cores)"},
      {"no-cache", false, "read every selected expert from disk for every token (the naive baseline)"},
      {"skip-missing-experts", false, "drop experts a partial checkpoint lacks instead of failing"},
  };
}

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
  std::unique_ptr<Runtime> rt(new Runtime());
  std::string device = args.GetOr("device", "cpu");
  if (device != "cpu") {
    return Status::NotSupported("--device " + device + ": this build runs generation on the CPU only (the CUDA backend "
                                "is not implemented yet)");
  }
  std::string routing = args.GetOr("routing", "exact");
  if (routing != "exact") return Status::NotSupported("--routing " + routing + " is not implemented yet (exact only)");
  ES_ASSIGN_OR_RETURN(rt->store_, OpenStore(args, /*writer=*/false));
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
  if (args.Has("no-cache")) {
    ES_ASSIGN_OR_RETURN(rt->experts_, DirectExpertProvider::Create(*rt->store_, model));
    rt->description_ = "no cache: every selected expert read from disk for every token";
    return rt;
  }
  ES_ASSIGN_OR_RETURN(MetabolicState state, ParseMetabolicState(args.GetOr("state", "focus")));
  if (!IsGenerationState(state)) {
    return Status::InvalidArgument("--state " + std::string(MetabolicStateName(state)) +
                                   " is not a generation state (wake, focus or crisis)");
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
  ES_ASSIGN_OR_RETURN(StateBudget budget, ResolveState(state, sm, overrides));
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
  rt->description_ = rt->state_ + ": cache " + std::to_string(provider->cache().capacity_slots()) + " of " +
                     std::to_string(experts.experts().size()) + " experts (" +
                     HumanBytes(provider->cache().capacity_slots() * provider->cache().slot_bytes()) + ", " +
                     std::string(provider->cache().policy_name()) + "), " + std::to_string(budget.experts_per_token) +
                     " experts per token, prefetch " + std::to_string(budget.prefetch_depth);
  rt->experts_ = std::move(provider);
  return rt;
}

std::string Runtime::describe() const { return description_; }

}  // namespace es::cli
