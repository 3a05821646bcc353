// ModelRuntime: everything one model needs to generate, built from a RuntimeConfig: the model (dense weights),
// its tokenizer, the expert provider (the cache with a policy, state and prefetch, or direct reads), the routing
// policy, the usage recorder, and the forward options they imply. The generation commands (tools/cli_runtime.h)
// and the HTTP service's generation worker (api/generation.h) both build their models here, so that a flag
// means the same thing in `generate` and in `serve`.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "compute/runtime/backend_choice.h"
#include "compute/cache_provider.h"
#include "compute/expert_provider.h"
#include "compute/lookahead.h"
#include "compute/kernels/parallel.h"
#include "compute/model.h"
#include "compute/prefetch_governor.h"
#include "compute/sampler.h"
#include "compute/tokenizer/tokenizer.h"
#include "compute/usage_recorder.h"
#include "store/base/ggml_type.h"
#include "store/store.h"

namespace es {

// The name of a model's low-bit copy in `format` ("Q4_K"): MODEL.tier-Q4_K.
std::string MissTierModel(const std::string& model, std::string_view format);
// The share of the cache's bytes a miss tier's low-bit copies get by default (RuntimeConfig::miss_tier_share).
// Measured on a Qwen3-30B-A3B-shaped store (docs/quantize.md): at half, a cache of 25% of the experts' bytes
// decodes about as fast as with full-precision misses (1.03x); at 90% it is 1.18x there and 1.72x at 10%, for a
// KL that stays below the all-low-bit model's. A smaller share keeps more experts exact.
inline constexpr double kDefaultMissTierShare = 0.9;
// A cache budget split between the full-precision experts and a miss tier's low-bit copies: the full cache gets
// (1 - share) of `budget_bytes` in whole slots of `full_slot_bytes`, at least `full_min_slots`; the tier the rest.
struct MissTierSplit {
  uint64_t full_bytes = 0;
  uint64_t tier_bytes = 0;
};
MissTierSplit SplitMissTierBudget(uint64_t budget_bytes, double share, uint64_t full_slot_bytes,
                                  uint64_t full_min_slots);
// The miss tier's cache: its bytes (whole slots of the copy's largest record, at least `min_slots`), policy and
// experts per token as the full cache's, and prefetch of `prefetch_depth` layers of `experts_per_token`.
struct MissTierOptions {
  uint64_t capacity_bytes = 0;
  uint64_t min_slots = 0;
  PolicyKind policy = PolicyKind::kLru;
  uint32_t experts_per_token = 0;
  uint32_t prefetch_depth = 0;
};
// A cache budget shared with a miss tier as the runtime shares it: SplitMissTierBudget with the full cache keeping at
// least two layers' experts (at most the model's), and the copies' cache at least the state's floor of slots
// (CacheFloorSlots: the computing layer, the prefetched ones, a spare), with the full cache's policy, experts per
// token and prefetch depth.
struct MissTierPlan {
  uint64_t full_bytes = 0;
  MissTierOptions tier;
};
MissTierPlan PlanMissTier(uint64_t budget_bytes, double share, uint64_t full_slot_bytes, uint64_t num_experts,
                          uint32_t experts_per_token, uint32_t prefetch_depth, PolicyKind policy);
// The format of the smallest complete low-bit copy of `model` in the store (MissTierModel), if any: the crisis
// state's miss tier.
Result<std::optional<GgmlType>> SmallestMissTier(Store& store, const std::string& model);
// Serves the misses of `provider` (a cache of `model`'s experts) from the model's low-bit copy in `format`
// (CacheExpertProvider::SetMissTier) through a cache of its own; returns the copy's name. NotFound naming the
// quantize command that writes the copy when the store lacks it; InvalidArgument when its experts are not the
// model's.
Result<std::string> AttachMissTier(Store& store, const std::string& model, GgmlType format,
                                   const MissTierOptions& options, CacheExpertProvider& provider);

// Without RuntimeConfig::prefetch_min_prob, a predicted expert is prefetched when the lookahead router gives it at
// least this many times the chance probability 1 / num_experts. On the tiny model (32 experts: 0.0625) that keeps
// predictions right about 4 times in 5 where all top-k are right 3 times in 4 (docs/cache.md); on a model whose
// routers barely prefer any expert (random weights) it prefetches almost nothing, since those guesses are
// mostly wasted reads.
inline constexpr double kPrefetchMinProbOverChance = 2.0;
// That default for a model with `num_experts` experts per layer.
inline double DefaultPrefetchMinProb(uint32_t num_experts) {
  return kPrefetchMinProbOverChance / static_cast<double>(num_experts == 0 ? 1 : num_experts);
}

// How a model runs: the generation flags (--state, --cache-mb, --policy, --routing, ...) as values. Unset
// optionals take the state's preset.
struct RuntimeConfig {
  std::string device = "cpu";              // cpu, cuda or hybrid (backend_choice.h)
  std::optional<uint64_t> gpu_cache_mb;    // cuda/hybrid: GPU memory for experts, in MiB
  std::optional<double> gpu_cache_pct;     // ... or as a percentage of the model's experts
  std::string state = "focus";             // wake, focus or crisis
  bool state_given = false;                // the state was chosen explicitly: its preset sizes the cache
  std::optional<uint64_t> cache_mb;        // the cache size in MiB
  std::optional<double> cache_pct;         // the cache size as a percentage of the model's experts
  std::string policy = "lru";              // lru, lfu or trust
  std::string routing = "exact";           // exact, trust or cache-aware
  // exact: GGML block weights are decoded and multiplied in fp32. q8: their matmuls round the activations to
  // int8 (per 32 values) and take integer dot products, as llama.cpp does; faster, and NOT exact.
  std::string activations = "exact";
  std::optional<std::string> routing_weights;  // trust routing: "r,x,w,f"
  std::optional<double> routing_margin;    // cache-aware routing: probability given up per swap at most
  std::string focus_domain;                // trust routing: favour this profiled domain's experts
  std::optional<uint32_t> prefetch;        // layers prefetched ahead
  std::optional<double> prefetch_min_prob;  // lookahead router probability a prediction needs (ForwardOptions)
  // What predicts the experts to prefetch: "auto" (the model's fitted lookahead maps when `fit-lookahead` stored
  // some and the device is the CPU, else the next layers' routers applied early), "router" or "fitted" (NotFound
  // without a fit; refused on cuda or hybrid).
  std::string prefetch_predictor = "auto";
  // Serve the experts not resident in the cache from the model's low-bit copy in this format (the model
  // "MODEL.tier-FORMAT" that `quantize --add-tier FORMAT` writes), loading their full precision in the background:
  // NOT EXACT. Unset: every expert at the model's own precision.
  std::optional<std::string> miss_precision;
  // With miss_precision: the share of the cache's bytes for the low-bit copies (kDefaultMissTierShare); the
  // full-precision experts get the rest.
  std::optional<double> miss_tier_share;
  bool no_cache = false;                   // every selected expert read from disk for every token
  bool skip_missing_experts = false;       // drop experts a partial checkpoint lacks instead of failing
  bool need_tokenizer = true;
  // Record usage into `store` (its catalog as the writer, its journal when read-only).
  bool record = false;
  // Without cache_mb, cache_pct or an explicit state the cache is sized from the memory available
  // (CacheBytesForMemory): every expert when they fit. This overrides the memory measured (tests); unset: measured
  // when the model is opened.
  std::optional<uint64_t> available_memory_bytes;
};

// The backend part of a RuntimeConfig.
BackendOptions BackendOptionsOf(const RuntimeConfig& config);

// Checks what can be checked without a model (names of the device, state, policy and routing; combinations):
// `serve` fails at start rather than at its first request.
Status ValidateRuntimeConfig(const RuntimeConfig& config);

// Why a configuration's output differs from the model's own, as far as the configuration alone tells (a state
// whose experts per token differ from the model's, a routing policy other than exact, skipped experts); empty:
// exact. ModelRuntime::inexact_reasons() says the same with the model's numbers.
std::vector<std::string> InexactReasonsOf(const RuntimeConfig& config);

// The tokenizer stored with a model (tokenizer.json, and tokenizer_config.json when present). NotFound when the
// model was ingested without one.
Result<Tokenizer> LoadModelTokenizer(Store& store, const std::string& model);

class ModelRuntime {
 public:
  // `store` and `pool` must outlive the runtime.
  static Result<std::unique_ptr<ModelRuntime>> Open(Store& store, const std::string& model, const RuntimeConfig& config,
                                                    kernels::ComputePool* pool);
  ~ModelRuntime();

  Model& model() { return *model_; }
  const Model& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  ExpertProvider& experts() { return *experts_; }
  const ExpertProvider& experts() const { return *experts_; }
  // The cache behind experts(); null with no_cache.
  CacheExpertProvider* cache_provider() { return cache_provider_; }
  const CacheExpertProvider* cache_provider() const { return cache_provider_; }
  const ForwardOptions& forward_options() const { return forward_; }
  const std::string& state_name() const { return state_; }
  const std::string& routing_name() const { return routing_; }
  // The model's sampling defaults (its generation_config.json; greedy without one): what `generate`, `chat` and
  // the HTTP completions use for every setting the user leaves out.
  const SamplerOptions& sampler_defaults() const { return sampler_defaults_; }
  const PrefetchAccuracy& prefetch_accuracy() const { return *accuracy_; }
  // Whether decode steps prefetch: measured per runtime, across its requests (forward_options() carry it).
  const PrefetchGovernor& prefetch_governor() const { return *governor_; }
  // The usage recorder (null when not recording); forward_options() feed it.
  UsageRecorder* recorder() { return recorder_.get(); }
  // Flushes the recorder (OK when not recording).
  Status FinishRecording();
  // One line on the configuration in force ("focus: cache 48 of 192 experts (4.3 MiB, lru; the state's 15%), 4
  // experts per token, prefetch 1, routing exact, exact, recording"), then the backend unless it is the CPU
  // ("; cuda: ..."). It says why the cache has its size, and "NOT EXACT" with the reasons when the output differs
  // from the model's own.
  const std::string& describe() const { return description_; }
  // Why this configuration's output differs from the model's own (a state that changes the experts per token, a
  // routing policy other than exact, dropped experts); empty when it is exact.
  const std::vector<std::string>& inexact_reasons() const { return inexact_; }
  bool exact() const { return inexact_.empty(); }
  // The formats the model's expert projections are stored in, with how many projections each holds ("Q4_K" ->
  // 480, "Q6_K" -> 96): the precision a run computes with (eval prints it).
  const std::map<std::string, uint64_t>& precision_mix() const { return precision_mix_; }

 private:
  ModelRuntime() = default;
  // "exact", or "NOT EXACT (reasons)".
  std::string ExactnessText() const;
  // Moves the model to the configured backend (a no-op for cpu).
  Status UseBackend(Store& store, const RuntimeConfig& config);
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ExpertProvider> experts_;
  CacheExpertProvider* cache_provider_ = nullptr;
  ForwardOptions forward_;
  std::unique_ptr<PrefetchAccuracy> accuracy_ = std::make_unique<PrefetchAccuracy>();
  std::unique_ptr<PrefetchGovernor> governor_ = std::make_unique<PrefetchGovernor>();
  std::unique_ptr<LookaheadPredictor> lookahead_;  // the fitted maps forward_ predicts with, when loaded
  std::map<std::string, uint64_t> precision_mix_;
  std::unique_ptr<UsageRecorder> recorder_;
  std::string state_ = "focus";
  std::string routing_ = "exact";
  std::string description_;
  std::vector<std::string> inexact_;
  SamplerOptions sampler_defaults_;
};

}  // namespace es
