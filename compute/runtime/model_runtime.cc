// ModelRuntime: a RuntimeConfig made into a model, tokenizer, expert provider, routing policy and recorder.
#include "compute/runtime/model_runtime.h"

#include <algorithm>
#include <cstdio>
#include <optional>

#include "cache/cache_size.h"
#include "cache/model_experts.h"
#include "cache/policy.h"
#include "cache/states.h"
#include "compute/routing_policy.h"
#include "store/base/ggml_type.h"
#include "store/metadata.h"

namespace es {

namespace {

// Bounds of the size options: typo guards, not tuning.
constexpr uint32_t kMaxPrefetchDepth = 64;

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

// Why --activations q8 is not exact, on a model that holds block formats.
constexpr std::string_view kQ8Inexact = "q8 activations: block-format matmuls round activations to 8 bits";

// The reasons a configuration is not exact that do not depend on the model: how experts are selected.
std::vector<std::string> SelectionInexactReasons(const RuntimeConfig& c) {
  std::vector<std::string> reasons;
  if (c.routing != "exact") reasons.push_back("routing " + c.routing + " selects other experts than the router's top-k");
  if (c.skip_missing_experts) reasons.push_back("experts missing from the checkpoint are skipped");
  return reasons;
}

std::string Mib(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return text;
}

// Memory sizes: GiB from 1 GiB up.
std::string MemoryText(uint64_t bytes) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  if (static_cast<double>(bytes) < kGiB) return Mib(bytes);
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f GiB", static_cast<double>(bytes) / kGiB);
  return text;
}

}  // namespace

std::string MissTierModel(const std::string& model, std::string_view format) {
  return model + ".tier-" + std::string(format);
}

MissTierSplit SplitMissTierBudget(uint64_t budget_bytes, double share, uint64_t full_slot_bytes,
                                  uint64_t full_min_slots) {
  const auto full_share = static_cast<uint64_t>((1.0 - std::clamp(share, 0.0, 1.0)) * static_cast<double>(budget_bytes));
  const uint64_t full_slots = std::max(full_min_slots, full_share / std::max<uint64_t>(1, full_slot_bytes));
  MissTierSplit split;
  split.full_bytes = full_slots * full_slot_bytes;
  split.tier_bytes = budget_bytes > split.full_bytes ? budget_bytes - split.full_bytes : 0;
  return split;
}

MissTierPlan PlanMissTier(uint64_t budget_bytes, double share, uint64_t full_slot_bytes, uint64_t num_experts,
                          uint32_t experts_per_token, uint32_t prefetch_depth, PolicyKind policy) {
  const MissTierSplit split = SplitMissTierBudget(budget_bytes, share, full_slot_bytes,
                                                  std::min<uint64_t>(CacheFloorSlots(0, experts_per_token), num_experts));
  MissTierPlan plan;
  plan.full_bytes = split.full_bytes;
  plan.tier.capacity_bytes = split.tier_bytes;
  plan.tier.min_slots = CacheFloorSlots(prefetch_depth, experts_per_token);
  plan.tier.policy = policy;
  plan.tier.experts_per_token = experts_per_token;
  plan.tier.prefetch_depth = prefetch_depth;
  return plan;
}

Result<std::optional<GgmlType>> SmallestMissTier(Store& store, const std::string& model) {
  ES_ASSIGN_OR_RETURN(const std::vector<ModelInfo> models, store.ListModels());
  const std::string prefix = MissTierModel(model, "");
  std::optional<GgmlType> best;
  uint64_t best_bytes = 0;
  for (const ModelInfo& m : models) {
    if (!m.complete || !m.name.starts_with(prefix)) continue;
    const std::optional<GgmlType> format = ParseGgmlTypeName(std::string_view(m.name).substr(prefix.size()));
    if (!format || !GgmlTypeInfoOf(*format).supported) continue;
    if (!best || m.total_bytes < best_bytes) {
      best = format;
      best_bytes = m.total_bytes;
    }
  }
  return best;
}

Result<std::string> AttachMissTier(Store& store, const std::string& model, GgmlType format,
                                   const MissTierOptions& options, CacheExpertProvider& provider) {
  const std::string name(GgmlTypeName(format));
  const std::string tier = MissTierModel(model, name);
  auto tier_experts = ModelExperts::Load(store.catalog(), tier);
  if (!tier_experts.ok()) {
    return tier_experts.status().IsNotFound()
               ? Status::NotFound("`miss_precision` " + name + " needs the model's low-bit copy '" + tier +
                                  "': write it with quantize --model " + model + " --add-tier " + name)
               : tier_experts.status();
  }
  const KeySpace& keys = provider.cache().experts().keys();
  if (tier_experts->keys().layers != keys.layers || tier_experts->keys().experts_per_layer != keys.experts_per_layer) {
    return Status::InvalidArgument("'" + tier + "' does not have the experts of '" + model + "'");
  }
  const uint64_t slot = tier_experts->max_record_bytes();
  ExpertCacheOptions o;
  o.capacity_bytes = std::max(options.capacity_bytes, options.min_slots * slot);
  o.policy = options.policy;
  o.experts_per_token = options.experts_per_token;
  o.prefetch_bytes_in_flight = static_cast<uint64_t>(options.prefetch_depth) * options.experts_per_token * slot;
  ES_ASSIGN_OR_RETURN(auto tier_cache, ExpertCache::Open(store, tier, o));
  ES_RETURN_IF_ERROR(provider.SetMissTier(std::move(tier_cache)));
  return tier;
}

namespace {

// The configuration line's note on a policy that caches only some layers (CachedLayers).
std::string BypassText(const ExpertCache& cache) {
  const uint32_t layers = cache.experts().keys().layers;
  if (cache.cached_layers() >= layers) return "";
  return " caching layers below " + std::to_string(cache.cached_layers()) + " of " + std::to_string(layers) +
         ", one token's experts do not fit";
}

}  // namespace

BackendOptions BackendOptionsOf(const RuntimeConfig& c) {
  BackendOptions o;
  o.device = c.device;
  o.gpu_cache_mb = c.gpu_cache_mb;
  o.gpu_cache_pct = c.gpu_cache_pct;
  return o;
}

Status ValidateRuntimeConfig(const RuntimeConfig& c) {
  if (c.device != "cpu" && c.prefetch_predictor == "fitted") {
    return Status::InvalidArgument("the fitted lookahead runs on the CPU backend only; the " + c.device +
                                   " backend predicts with the routers");
  }
  ES_RETURN_IF_ERROR(ValidateBackendOptions(BackendOptionsOf(c)));
  if (c.activations != "exact" && c.activations != "q8") {
    return Status::InvalidArgument("`activations` must be exact or q8, not '" + c.activations + "'");
  }
  if (c.activations == "q8" && c.device != "cpu") {
    return Status::InvalidArgument("`activations` q8 is a CPU kernel path: use `device` cpu");
  }
  ES_ASSIGN_OR_RETURN(RoutingKind routing, ParseRoutingKind(c.routing));
  if (routing == RoutingKind::kTrust) {
    if (c.routing_weights) ES_RETURN_IF_ERROR(ParseTrustRoutingWeights(*c.routing_weights).status());
  } else if (c.routing_weights || !c.focus_domain.empty()) {
    return Status::InvalidArgument("`routing_weights` and `focus_domain` go with `routing` trust");
  }
  if (routing != RoutingKind::kCacheAware && c.routing_margin) {
    return Status::InvalidArgument("`routing_margin` goes with `routing` cache-aware");
  }
  if (c.routing_margin && !(*c.routing_margin >= 0 && *c.routing_margin <= 1)) {
    return Status::InvalidArgument("`routing_margin` must be in [0, 1]");
  }
  if (c.prefetch_predictor != "auto" && c.prefetch_predictor != "router" && c.prefetch_predictor != "fitted") {
    return Status::InvalidArgument("prefetch predictor '" + c.prefetch_predictor + "': expected auto, router or fitted");
  }
  if (c.prefetch_min_prob && !(*c.prefetch_min_prob >= 0 && *c.prefetch_min_prob <= 1)) {
    return Status::InvalidArgument("`prefetch_min_prob` must be in [0, 1]");
  }
  if (c.miss_precision) {
    const std::optional<GgmlType> t = ParseGgmlTypeName(*c.miss_precision);
    if (!t || !GgmlTypeInfoOf(*t).supported) {
      return Status::InvalidArgument("`miss_precision` must name a GGML format (Q4_K, Q8_0, IQ4_XS, ...), not '" +
                                     *c.miss_precision + "'");
    }
    if (c.no_cache) return Status::InvalidArgument("`miss_precision` serves misses of the cache, which `no_cache` turns off");
  }
  if (c.miss_tier_share) {
    if (!c.miss_precision && c.state != MetabolicStateName(MetabolicState::kCrisis)) {
      return Status::InvalidArgument("`miss_tier_share` goes with `miss_precision` (or the crisis state)");
    }
    if (!(*c.miss_tier_share > 0 && *c.miss_tier_share < 1)) {
      return Status::InvalidArgument("`miss_tier_share` must be in (0, 1)");
    }
  }
  if (c.no_cache) {
    if (routing == RoutingKind::kCacheAware) {
      return Status::InvalidArgument("`routing` cache-aware needs the cache, which `no_cache` turns off");
    }
    return Status::Ok();
  }
  ES_ASSIGN_OR_RETURN(MetabolicState state, ParseMetabolicState(c.state));
  if (!IsGenerationState(state)) {
    return Status::InvalidArgument("`state` " + c.state +
                                   " is not a generation state (wake, focus or crisis): rest recomputes profiles "
                                   "and trust from recorded usage, dream is calibration");
  }
  ES_ASSIGN_OR_RETURN(PolicyKind policy, ParsePolicyKind(c.policy));
  if (policy == PolicyKind::kBelady) {
    return Status::InvalidArgument("`policy` belady needs the future access sequence: it is for replaying a "
                                   "recorded trace, not a live cache");
  }
  ES_RETURN_IF_ERROR(ValidateCacheSize({c.cache_mb, c.cache_pct}, "cache"));
  if (c.prefetch && *c.prefetch > kMaxPrefetchDepth) {
    return Status::InvalidArgument("`prefetch` must be at most " + std::to_string(kMaxPrefetchDepth));
  }
  return Status::Ok();
}

std::vector<std::string> InexactReasonsOf(const RuntimeConfig& c) {
  std::vector<std::string> reasons;
  if (!c.no_cache) {
    auto state = ParseMetabolicState(c.state);
    if (state.ok() && *state == MetabolicState::kWake) reasons.push_back("state wake runs half the model's experts per token");
    if (state.ok() && *state == MetabolicState::kCrisis) reasons.push_back("state crisis runs twice the model's experts per token");
  }
  std::vector<std::string> selection = SelectionInexactReasons(c);
  reasons.insert(reasons.end(), selection.begin(), selection.end());
  if (c.activations == "q8") {
    reasons.push_back(std::string(kQ8Inexact) + " (models with GGML block formats)");
  }
  return reasons;
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

ModelRuntime::~ModelRuntime() = default;

Status ModelRuntime::FinishRecording() {
  if (!recorder_) return Status::Ok();
  return recorder_->Flush().WithContext("recording usage");
}

Result<std::unique_ptr<ModelRuntime>> ModelRuntime::Open(Store& store, const std::string& model,
                                                         const RuntimeConfig& c, kernels::ComputePool* pool) {
  ES_RETURN_IF_ERROR(ValidateRuntimeConfig(c));
  std::unique_ptr<ModelRuntime> rt(new ModelRuntime());
  ES_ASSIGN_OR_RETURN(RoutingKind routing, ParseRoutingKind(c.routing));
  rt->routing_ = std::string(RoutingKindName(routing));
  kernels::CpuContext ctx;
  ctx.pool = pool;
  ctx.q8_activations = c.activations == "q8";
  ES_ASSIGN_OR_RETURN(rt->model_, Model::Load(store, model, ctx));
  if (c.need_tokenizer) {
    ES_ASSIGN_OR_RETURN(Tokenizer tok, LoadModelTokenizer(store, model));
    rt->tokenizer_ = std::make_unique<Tokenizer>(std::move(tok));
  }
  if (auto g = store.ReadAsset(rt->model_->info(), "generation_config.json"); g.ok()) {
    ES_ASSIGN_OR_RETURN(rt->sampler_defaults_, SamplerDefaultsFromGenerationConfig(*g));
  } else if (!g.status().IsNotFound()) {
    return g.status();
  }
  rt->forward_.skip_missing_experts = c.skip_missing_experts;
  const ModelConfig& config = rt->model_->config();
  if (c.record) {
    rt->recorder_ = std::make_unique<UsageRecorder>(store, model, config.num_layers, config.num_experts);
    UsageRecorder* recorder = rt->recorder_.get();
    rt->forward_.observer = [recorder](const RoutingEvent& e) { recorder->Observe(e); };
  }
  if (routing == RoutingKind::kTrust) {
    TrustRoutingWeights weights;
    if (c.routing_weights) {
      ES_ASSIGN_OR_RETURN(weights, ParseTrustRoutingWeights(*c.routing_weights));
    }
    ES_ASSIGN_OR_RETURN(TrustRoutingInputs inputs, LoadTrustRoutingInputs(store, model, config, c.focus_domain));
    rt->forward_.routing = MakeTrustRouting(std::move(inputs), weights);
  }
  rt->inexact_ = SelectionInexactReasons(c);
  if (c.activations == "q8") {
    ES_ASSIGN_OR_RETURN(const bool blocks, HoldsBlockFormats(store, *rt->model_));
    if (blocks) rt->inexact_.emplace_back(kQ8Inexact);
  }
  const std::string recording =
      rt->recorder_ ? (store.journaling() ? ", recording to the journal" : ", recording") : "";
  if (c.no_cache) {
    ES_ASSIGN_OR_RETURN(rt->experts_, DirectExpertProvider::Create(store, model));
    rt->description_ = "no cache: every selected expert read from disk for every token, " + rt->ExactnessText() +
                       recording;
    ES_RETURN_IF_ERROR(rt->UseBackend(store, c));
    return rt;
  }
  ES_ASSIGN_OR_RETURN(MetabolicState state, ParseMetabolicState(c.state));
  ES_ASSIGN_OR_RETURN(ModelExperts experts, ModelExperts::Load(store.catalog(), model));
  for (const ExpertInfo& e : experts.experts()) {
    for (const ProjectionInfo& p : e.projections) ++rt->precision_mix_[std::string(ElementTypeName(p.dtype, p.ggml_type))];
  }
  StateModel sm{config.top_k, config.num_experts, experts.experts().size(), experts.max_record_bytes()};
  StateOverrides overrides;
  if (c.cache_mb) overrides.cache_mb = *c.cache_mb;
  if (c.prefetch) overrides.prefetch_depth = *c.prefetch;
  ES_ASSIGN_OR_RETURN(StateBudget budget, ResolveState(state, sm, overrides));
  std::string size_reason;
  if (c.cache_pct) {
    // A share of the experts, in whole slots; a layer's k experts at least.
    const uint64_t slots = PercentOfSlots(*c.cache_pct, sm.num_experts);
    if (slots < budget.experts_per_token) {
      return Status::InvalidArgument("`cache_pct` " + std::to_string(*c.cache_pct) + " holds " + std::to_string(slots) +
                                     " experts; a layer needs " + std::to_string(budget.experts_per_token) + " at once");
    }
    budget.cache_slots = static_cast<uint32_t>(slots);
    budget.cache_bytes = slots * sm.slot_bytes;
    size_reason = "as asked";
  } else if (c.cache_mb) {
    size_reason = "as asked";
  } else if (c.state_given) {
    size_reason = "the " + std::string(MetabolicStateName(state)) + " state's share";
  } else {
    // No size asked for: as much of the model as memory allows, leaving the margin.
    uint64_t available = 0;
    if (c.available_memory_bytes) {
      available = *c.available_memory_bytes;
    } else {
      ES_ASSIGN_OR_RETURN(available, AvailableMemoryBytes());
    }
    const uint64_t fit = CacheBytesForMemory(available) / sm.slot_bytes;
    // The state's floor (the computing layer, the prefetched ones, a spare) holds even on a machine short of memory.
    const uint64_t floor =
        std::min<uint64_t>(CacheFloorSlots(budget.prefetch_depth, budget.experts_per_token), sm.num_experts);
    const uint64_t slots = std::clamp<uint64_t>(fit, floor, sm.num_experts);
    budget.cache_slots = static_cast<uint32_t>(slots);
    budget.cache_bytes = slots * sm.slot_bytes;
    size_reason = std::string(slots == sm.num_experts ? "all experts fit in" : "what fits in") + " " +
                  MemoryText(CacheBytesForMemory(available)) + " = " + MemoryText(available) +
                  " available less a quarter kept free";
    if (fit < slots) size_reason = "the state's floor; " + MemoryText(available) + " available";
  }
  ExpertCacheOptions co;
  co.capacity_bytes = budget.cache_bytes;
  ES_ASSIGN_OR_RETURN(co.policy, ParsePolicyKind(c.policy));
  co.prefetch_bytes_in_flight = budget.prefetch_bytes_in_flight;
  co.experts_per_token = budget.experts_per_token;
  // The crisis state serves misses from the model's smallest low-bit copy when the store has one.
  std::optional<GgmlType> miss_format;
  if (c.miss_precision) miss_format = *ParseGgmlTypeName(*c.miss_precision);  // ValidateRuntimeConfig checked it
  std::string no_tier_text;
  if (!miss_format && state == MetabolicState::kCrisis) {
    ES_ASSIGN_OR_RETURN(miss_format, SmallestMissTier(store, model));
    if (!miss_format) no_tier_text = ", no low-bit copy for misses (quantize --add-tier Q4_K writes one)";
  }
  MissTierPlan plan;
  if (miss_format) {
    // The budget is shared with the low-bit copies; the full cache keeps a prefetcher for the promotions' loads.
    plan = PlanMissTier(budget.cache_bytes, c.miss_tier_share.value_or(kDefaultMissTierShare), sm.slot_bytes,
                        sm.num_experts, budget.experts_per_token, budget.prefetch_depth, co.policy);
    co.capacity_bytes = plan.full_bytes;
    co.prefetch_bytes_in_flight = std::max<uint64_t>(co.prefetch_bytes_in_flight, sm.slot_bytes);
  }
  ES_ASSIGN_OR_RETURN(auto provider, CacheExpertProvider::Create(store, model, co));
  std::string tier_text;
  if (miss_format) {
    const GgmlType format = *miss_format;
    ES_ASSIGN_OR_RETURN(const std::string tier, AttachMissTier(store, model, format, plan.tier, *provider));
    rt->inexact_.push_back("experts not in the cache run from the " + std::string(GgmlTypeName(format)) + " copy '" +
                           tier + "'");
    const ExpertCache& t = *provider->miss_tier();
    tier_text = " + " + std::to_string(t.capacity_slots()) + " " + std::string(GgmlTypeName(format)) + " copies (" +
                Mib(t.capacity_slots() * t.slot_bytes()) + ")";
  }
  rt->state_ = std::string(MetabolicStateName(state));
  if (budget.experts_per_token != config.top_k) {
    rt->inexact_.insert(rt->inexact_.begin(), "state " + rt->state_ + " runs " +
                                                  std::to_string(budget.experts_per_token) + " experts per token, the "
                                                  "model " + std::to_string(config.top_k));
  }
  rt->forward_.top_k = budget.experts_per_token;
  rt->forward_.prefetch_depth = budget.prefetch_depth;
  rt->forward_.prefetch_min_prob =
      static_cast<float>(c.prefetch_min_prob.value_or(DefaultPrefetchMinProb(config.num_experts)));
  rt->forward_.prefetch_accuracy = rt->accuracy_.get();
  rt->forward_.prefetch_governor = rt->governor_.get();
  std::string predictor_text;
  // The CUDA and hybrid backends predict on the device with the routers.
  if (budget.prefetch_depth > 0 && c.prefetch_predictor != "router" && c.device == "cpu") {
    auto fitted = LoadLookahead(store, *rt->model_);
    if (fitted.ok()) {
      rt->lookahead_ = std::make_unique<LookaheadPredictor>(std::move(fitted).value());
      rt->forward_.lookahead = rt->lookahead_.get();
      if (!c.prefetch_min_prob) rt->forward_.prefetch_min_prob = rt->lookahead_->min_prob();
      char text[64];
      std::snprintf(text, sizeof(text), " (fitted lookahead, min prob %.3g)", rt->forward_.prefetch_min_prob);
      predictor_text = text;
    } else if (!fitted.status().IsNotFound() || c.prefetch_predictor == "fitted") {
      return fitted.status().WithContext("the model's fitted lookahead (the routers predict without it)");
    }
  }
  if (routing == RoutingKind::kCacheAware) {
    ExpertCache* cache = &provider->cache();
    rt->forward_.routing = MakeCacheAwareRouting(
        [cache](uint32_t layer, uint32_t expert) { return cache->IsResident({layer, expert}); }, config.norm_topk_prob,
        c.routing_margin.value_or(kDefaultCacheAwareMargin));
  }
  rt->description_ = rt->state_ + ": cache " + std::to_string(provider->cache().capacity_slots()) + " of " +
                     std::to_string(experts.experts().size()) + " experts (" +
                     Mib(provider->cache().capacity_slots() * provider->cache().slot_bytes()) + tier_text + ", " +
                     std::string(provider->cache().policy_name()) + BypassText(provider->cache()) + "; " +
                     size_reason + "), " +
                     std::to_string(budget.experts_per_token) + " experts per token, prefetch " +
                     std::to_string(budget.prefetch_depth) + predictor_text + ", routing " + rt->routing_ + ", " +
                     rt->ExactnessText() + no_tier_text + recording;
  rt->cache_provider_ = provider.get();
  rt->experts_ = std::move(provider);
  ES_RETURN_IF_ERROR(rt->UseBackend(store, c));
  return rt;
}

std::string ModelRuntime::ExactnessText() const {
  if (inexact_.empty()) return "exact";
  std::string text = "NOT EXACT (";
  for (size_t i = 0; i < inexact_.size(); ++i) text += (i ? "; " : "") + inexact_[i];
  return text + ")";
}

Status ModelRuntime::UseBackend(Store& store, const RuntimeConfig& c) {
  if (c.device == "cpu") return Status::Ok();
  ES_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, CreateBackend(store, *model_, BackendOptionsOf(c)));
  description_ += "; " + backend->describe();
  model_->SetBackend(std::move(backend));
  return Status::Ok();
}

}  // namespace es
