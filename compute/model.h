// Model: the forward pass of a stored MoE model, on the backend it was given (the CPU by default). Dense weights are resident (DenseWeights); experts
// come through an ExpertProvider (the cache), so only the experts the router picks are read. The layer graph
// of each architecture is defined in its own file under compute/models/ from the blocks LayerOps offers
// (attention, MoE, dense MLP, shared expert), as llama.cpp does per architecture.
// A Model is immutable after Load; one Forward at a time per KvCache (the kernels share one ComputePool).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <string>
#include <vector>

#include "compute/dense_weights.h"
#include "compute/expert_provider.h"
#include "compute/kernels/cpu_kernels.h"
#include "compute/model_config.h"
#include "store/records.h"
#include "store/store.h"

namespace es {

// Per-sequence state a non-CPU backend keeps beside a KvCache (the CUDA backend's device KV cache).
class BackendKvState {
 public:
  virtual ~BackendKvState() = default;
};

// Keys and values of every layer for the positions processed so far: one sequence. The CPU backend keeps them
// in host memory, allocated on first use; another backend keeps its own copy in backend_state() (created on its
// first Forward of this sequence), so a sequence runs on one backend. Not thread-safe.
class KvCache {
 public:
  KvCache(const ModelConfig& config, size_t capacity);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;
  size_t length() const { return length_; }
  size_t capacity() const { return capacity_; }
  void Reset() { length_ = 0; }
  // The host rows of `layer` ([capacity, kv_heads * head_dim]), allocated on first use.
  float* keys(uint32_t layer);
  float* values(uint32_t layer);
  void Advance(size_t n) { length_ += n; }
  size_t row_floats() const { return row_; }
  size_t layers() const { return layers_; }

  BackendKvState* backend_state() const { return backend_state_.get(); }
  void set_backend_state(std::unique_ptr<BackendKvState> state) { backend_state_ = std::move(state); }

 private:
  void AllocateHost();
  size_t capacity_;
  size_t row_;  // kv_heads * head_dim
  size_t layers_;
  size_t length_ = 0;
  std::vector<std::vector<float>> keys_;
  std::vector<std::vector<float>> values_;
  std::unique_ptr<BackendKvState> backend_state_;
};

// One routing decision, reported to observers (trace, usage recording).
struct RoutingEvent {
  size_t token = 0;       // index within this Forward call
  size_t position = 0;    // position in the sequence
  uint32_t layer = 0;
  std::span<const int32_t> experts;  // selected, in router order
  std::span<const float> weights;    // their routing weights (after any renormalisation)
  // The experts predicted for this layer before it ran (sorted; the union over the Forward's rows), or null when
  // no prediction was made for it.
  const std::vector<uint32_t>* predicted = nullptr;
};

// Picks experts from router probabilities when a policy other than the model's own router is in force
// (compute/routing_policy.h). Given the full softmax row [num_experts], writes top_k experts and weights.
using RoutingPolicyFn = std::function<void(uint32_t layer, std::span<const float> probs, size_t top_k,
                                           std::span<int32_t> experts, std::span<float> weights)>;

// How well next-layer router predictions matched the experts later routed to (summed over calls).
struct PrefetchAccuracy {
  uint64_t predicted = 0;  // distinct experts predicted for a layer
  uint64_t correct = 0;    // ... that the layer then used
  uint64_t used = 0;       // distinct experts used by the layers a prediction was made for (even an empty one)
  double precision() const { return predicted ? static_cast<double>(correct) / static_cast<double>(predicted) : 0; }
  double recall() const { return used ? static_cast<double>(correct) / static_cast<double>(used) : 0; }
};

class PrefetchGovernor;
class LookaheadPredictor;

struct ForwardOptions {
  uint32_t top_k = 0;                 // experts per token; 0: the model's
  bool skip_missing_experts = false;  // drop a routed expert the store lacks instead of failing
  uint32_t prefetch_depth = 0;        // predict and prefetch this many layers ahead (0: none)
  // A predicted expert is prefetched only when the lookahead router gives it at least this probability (its
  // softmax over all experts, before any top-k renormalisation): higher is fewer, surer predictions.
  float prefetch_min_prob = 0.0f;
  std::function<void(const RoutingEvent&)> observer;
  RoutingPolicyFn routing;            // empty: exact (the model's router)
  PrefetchAccuracy* prefetch_accuracy = nullptr;  // when set, predictions are scored against the routing
  // When set (and prefetch_depth > 0), it decides step by step whether a single-token forward predicts and
  // prefetches, from the step times it is told (compute/prefetch_governor.h); prefill always prefetches.
  PrefetchGovernor* prefetch_governor = nullptr;
  // When set, predictions come from its fitted maps (compute/lookahead.h) where it has one for the pair of
  // layers, instead of the target layer's router applied early. Never changes the output.
  const LookaheadPredictor* lookahead = nullptr;
  // When set, Forward stores the residual stream entering each MoE block here: [layer] = [tokens, hidden]
  // (empty for dense layers). Calibration restarts ablated rows from these (Model::ForwardRowsFrom).
  std::vector<std::vector<float>>* capture_pre_moe = nullptr;
};

// The routing of the first MoE block ForwardRowsFrom runs: per row, k experts (-1: none) and their weights.
struct ForcedRouting {
  size_t k = 0;
  std::span<const int32_t> experts;  // [rows, k]
  std::span<const float> weights;    // [rows, k]
};

class Backend;

// One sequence's part of a batched forward pass (Model::ForwardBatch): its next tokens and its KV cache.
struct SequenceInput {
  std::span<const int32_t> tokens;
  KvCache* kv = nullptr;
};

class Model {
 public:
  // Loads the model with the CPU backend; SetBackend moves it elsewhere.
  static Result<std::unique_ptr<Model>> Load(Store& store, const std::string& name, kernels::CpuContext ctx);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ModelInfo& info() const { return info_; }
  const kernels::CpuContext& context() const { return ctx_; }
  const DenseWeights& weights() const { return *weights_; }
  const kernels::WeightMatrix& embeddings() const { return embed_; }
  const kernels::WeightMatrix& lm_head() const { return lm_head_; }  // rows >= config().vocab
  const kernels::WeightVector& final_norm() const { return final_norm_; }
  // Where Forward and ComputeLogits run (compute/backend.h). A KvCache filled on one backend is not read by
  // another.
  Backend& backend() const { return *backend_; }
  void SetBackend(std::unique_ptr<Backend> backend);
  // Embedding rows of `tokens` as fp32 [tokens, hidden]; InvalidArgument for an id outside the vocabulary.
  Status Embed(std::span<const int32_t> tokens, float* out) const;

  // Runs `tokens` at positions kv.length() onward, appending to `kv`. Writes the final-normed hidden states of
  // every token to `hidden` ([tokens, hidden_size]) for ComputeLogits.
  Status Forward(std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts, const ForwardOptions& options,
                 std::vector<float>& hidden);
  // Runs several sequences in one pass: each sequence's tokens at its own positions, attending to its own KvCache
  // (distinct caches), while every other block runs over all rows together, so that each expert routed by any
  // row is acquired once per layer and runs over all its rows (continuous batching). Writes the final-normed
  // hidden states of every row, the sequences' rows in order ([total tokens, hidden_size]). The result of each
  // sequence is what Forward gives for it alone, up to float rounding. With a PrefetchGovernor, a step where
  // every sequence gives one token is a decode step: governed and timed per row.
  Status ForwardBatch(std::span<const SequenceInput> sequences, ExpertProvider& experts, const ForwardOptions& options,
                      std::vector<float>& hidden);
  // Re-runs rows of an earlier Forward from the MoE block of `layer` onward, each row on its own (the
  // calibration's ablations). Row i sits at sequence position positions[i] < kv.length(); `residual`
  // [rows, hidden] is its residual stream entering the MoE block of `layer` (ForwardOptions::capture_pre_moe),
  // and that block mixes `routing`'s experts instead of asking its router. In later layers each row attends to
  // the positions before it as `kv` holds them and to itself, never to the other rows, so rows can be changed
  // independently in one batch. kv ends as it was. Writes final-normed hidden states [rows, hidden].
  Status ForwardRowsFrom(uint32_t layer, std::span<const float> residual, std::span<const size_t> positions,
                         const ForcedRouting& routing, KvCache& kv, ExpertProvider& experts,
                         const ForwardOptions& options, std::vector<float>& hidden);
  // logits [rows, vocab] from final-normed hidden states [rows, hidden_size].
  Status ComputeLogits(const float* hidden, size_t rows, float* logits) const;

  // Used by the per-architecture graphs.
  class LayerOps;

 private:
  Model();

  kernels::CpuContext ctx_;
  std::unique_ptr<Backend> backend_;
  ModelConfig config_;
  ModelInfo info_;
  std::unique_ptr<DenseWeights> weights_;
  kernels::WeightMatrix embed_;
  kernels::WeightMatrix lm_head_;
  kernels::WeightVector final_norm_;
};

// InvalidArgument naming the first id outside [0, vocab).
Status CheckTokens(std::span<const int32_t> tokens, uint32_t vocab);

// The canonical name of a per-layer tensor: "model.layers.<layer>.<rest>".
std::string LayerTensorName(uint32_t layer, std::string_view rest);
// The router's weight of `layer` (mixtral names it block_sparse_moe.gate).
std::string RouterTensorName(const ModelConfig& config, uint32_t layer);

// The layer graph of one architecture, in terms of the blocks below. A backend runs it with its own LayerOps.
class ArchGraph {
 public:
  virtual ~ArchGraph() = default;
  virtual Status Layer(Model::LayerOps& ops) const = 0;
};

// The blocks a layer is built from. Each reads and updates the residual stream in place.
class Model::LayerOps {
 public:
  struct AttentionOptions {
    QkNorm qk_norm = QkNorm::kNone;
    bool qkv_bias = false;
  };
  // x += o_proj(attention(rope(q_norm(q_proj(h))), rope(k_norm(k_proj(h))), v_proj(h))), h = input_layernorm(x).
  virtual Status Attention(const AttentionOptions& options) = 0;
  // x += sum_j w_j expert_j(h), h = post_attention_layernorm(x), experts from the router (or the routing policy).
  // With a shared expert (Qwen2-MoE): + sigmoid(shared_expert_gate h) shared_expert(h).
  virtual Status Moe(bool shared_expert) = 0;
  // x += mlp(h), h = post_attention_layernorm(x): the dense layers of a model with mlp_only_layers.
  virtual Status DenseMlp() = 0;
  virtual uint32_t layer() const = 0;
  virtual const ModelConfig& config() const = 0;
  virtual ~LayerOps() = default;
};

const ArchGraph& Qwen3MoeGraph();
const ArchGraph& MixtralGraph();
const ArchGraph& OlmoeGraph();
const ArchGraph& Qwen2MoeGraph();
Result<const ArchGraph*> GraphFor(const std::string& arch);

}  // namespace es
