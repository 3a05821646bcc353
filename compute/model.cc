// Model: loading, the shared layer blocks, and the forward pass driver.
#include "compute/model.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace es {

namespace {

std::string LayerName(uint32_t layer, const char* rest) { return "model.layers." + std::to_string(layer) + "." + rest; }

}  // namespace

Result<const ArchGraph*> GraphFor(const std::string& arch) {
  if (arch == "qwen3_moe" || arch == "qwen3_omni_moe") return &Qwen3MoeGraph();
  if (arch == "mixtral") return &MixtralGraph();
  if (arch == "olmoe") return &OlmoeGraph();
  if (arch == "qwen2_moe") return &Qwen2MoeGraph();
  return Status::NotSupported("no forward pass for architecture " + arch);
}

KvCache::KvCache(const ModelConfig& config, size_t capacity)
    : capacity_(capacity), row_(static_cast<size_t>(config.num_kv_heads) * config.head_dim) {
  keys_.resize(config.num_layers);
  values_.resize(config.num_layers);
  for (uint32_t l = 0; l < config.num_layers; ++l) {
    keys_[l].resize(capacity * row_);
    values_[l].resize(capacity * row_);
  }
}

// The state of one Forward call: the residual stream of its tokens and the blocks that update it.
class ForwardState final : public Model::LayerOps {
 public:
  ForwardState(const Model& model, std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts,
               const ForwardOptions& options)
      : m_(model), c_(model.config()), ctx_(model.context()), tokens_(tokens), kv_(kv), experts_(experts),
        options_(options), T_(tokens.size()), H_(c_.hidden), x_(T_ * H_), h_(T_ * H_) {}

  uint32_t layer() const override { return layer_; }
  const ModelConfig& config() const override { return c_; }
  void set_layer(uint32_t l) { layer_ = l; }
  std::vector<float>& residual() { return x_; }

  // ForwardRowsFrom: rows at these positions, each attending only to the cache before it and to itself; the
  // layer `start` skips its attention (the residual given already includes it) and mixes `forced`'s experts.
  void Isolate(std::span<const size_t> positions, uint32_t start, const ForcedRouting* forced) {
    isolated_ = positions;
    start_layer_ = start;
    forced_ = forced;
  }

  Status Attention(const AttentionOptions& o) override {
    if (forced_ != nullptr && layer_ == start_layer_) return Status::Ok();
    const size_t nh = c_.num_heads, nkv = c_.num_kv_heads, hd = c_.head_dim;
    const size_t q_dim = nh * hd, kv_dim = nkv * hd;
    ES_ASSIGN_OR_RETURN(auto in_norm, W().Vector(LayerName(layer_, "input_layernorm.weight")));
    ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x_.data(), T_, in_norm, c_.rms_eps, h_.data()));
    std::vector<float> q(T_ * q_dim), k(T_ * kv_dim), v(T_ * kv_dim);
    ES_RETURN_IF_ERROR(Project("self_attn.q_proj", h_.data(), q.data(), o.qkv_bias));
    ES_RETURN_IF_ERROR(Project("self_attn.k_proj", h_.data(), k.data(), o.qkv_bias));
    ES_RETURN_IF_ERROR(Project("self_attn.v_proj", h_.data(), v.data(), o.qkv_bias));
    if (o.qk_norm != QkNorm::kNone) {
      ES_ASSIGN_OR_RETURN(auto qn, W().Vector(LayerName(layer_, "self_attn.q_norm.weight")));
      ES_ASSIGN_OR_RETURN(auto kn, W().Vector(LayerName(layer_, "self_attn.k_norm.weight")));
      bool per_head = o.qk_norm == QkNorm::kPerHead;
      ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, q.data(), per_head ? T_ * nh : T_, qn, c_.rms_eps, q.data()));
      ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, k.data(), per_head ? T_ * nkv : T_, kn, c_.rms_eps, k.data()));
    }
    std::vector<int32_t> positions(T_);
    for (size_t t = 0; t < T_; ++t) positions[t] = static_cast<int32_t>(Position(t));
    ES_RETURN_IF_ERROR(kernels::ApplyRope(q.data(), T_, nh, hd, positions.data(), c_.rope_theta));
    ES_RETURN_IF_ERROR(kernels::ApplyRope(k.data(), T_, nkv, hd, positions.data(), c_.rope_theta));
    std::vector<float> attn(T_ * q_dim);
    kernels::AttentionShape shape{nh, nkv, hd};
    if (!isolated_.empty()) {
      // Each row sees the cache before its position and its own key and value, which stand in for the cached
      // ones at its position during its call only.
      std::vector<float> saved_k(kv_dim), saved_v(kv_dim);
      for (size_t t = 0; t < T_; ++t) {
        float* kc = kv_.keys(layer_) + isolated_[t] * kv_dim;
        float* vc = kv_.values(layer_) + isolated_[t] * kv_dim;
        std::copy(kc, kc + kv_dim, saved_k.begin());
        std::copy(vc, vc + kv_dim, saved_v.begin());
        std::copy(&k[t * kv_dim], &k[(t + 1) * kv_dim], kc);
        std::copy(&v[t * kv_dim], &v[(t + 1) * kv_dim], vc);
        Status s = kernels::Attention(ctx_, shape, &q[t * q_dim], 1, kv_.keys(layer_), kv_.values(layer_),
                                      isolated_[t] + 1, &attn[t * q_dim]);
        std::copy(saved_k.begin(), saved_k.end(), kc);
        std::copy(saved_v.begin(), saved_v.end(), vc);
        ES_RETURN_IF_ERROR(s);
      }
      return AddOutputProjection(attn);
    }
    float* kc = kv_.keys(layer_) + kv_.length() * kv_dim;
    float* vc = kv_.values(layer_) + kv_.length() * kv_dim;
    std::copy(k.begin(), k.end(), kc);
    std::copy(v.begin(), v.end(), vc);
    ES_RETURN_IF_ERROR(kernels::Attention(ctx_, shape, q.data(), T_, kv_.keys(layer_), kv_.values(layer_),
                                          kv_.length() + T_, attn.data()));
    return AddOutputProjection(attn);
  }

  Status Moe(bool shared_expert) override {
    const size_t E = c_.num_experts;
    const bool forced = forced_ != nullptr && layer_ == start_layer_;
    const size_t k = forced ? forced_->k : std::min<size_t>(options_.top_k == 0 ? c_.top_k : options_.top_k, E);
    if (options_.capture_pre_moe != nullptr) {
      if (options_.capture_pre_moe->size() < c_.num_layers) options_.capture_pre_moe->resize(c_.num_layers);
      (*options_.capture_pre_moe)[layer_] = x_;
    }
    ES_ASSIGN_OR_RETURN(auto post_norm, W().Vector(LayerName(layer_, "post_attention_layernorm.weight")));
    ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x_.data(), T_, post_norm, c_.rms_eps, h_.data()));
    ES_RETURN_IF_ERROR(PrefetchAhead());

    // Route.
    ES_ASSIGN_OR_RETURN(auto router, W().Matrix(RouterName(layer_)));
    std::vector<float> logits(T_ * E);
    std::vector<int32_t> chosen(T_ * k);
    std::vector<float> weights(T_ * k);
    if (forced) {
      if (forced_->experts.size() != T_ * k || forced_->weights.size() != T_ * k) {
        return Status::InvalidArgument("forced routing must hold k experts and weights per row");
      }
      std::copy(forced_->experts.begin(), forced_->experts.end(), chosen.begin());
      std::copy(forced_->weights.begin(), forced_->weights.end(), weights.begin());
    } else if (options_.routing) {
      ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, h_.data(), T_, router, logits.data()));
      std::vector<float> probs(E);
      for (size_t t = 0; t < T_; ++t) {
        Softmax(&logits[t * E], E, probs.data());
        options_.routing(layer_, probs, k, {&chosen[t * k], k}, {&weights[t * k], k});
      }
    } else {
      ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, h_.data(), T_, router, logits.data()));
      ES_RETURN_IF_ERROR(kernels::RouterTopK(logits.data(), T_, E, k, c_.norm_topk_prob, chosen.data(), weights.data()));
    }

    // Experts present in the store; a missing one is an error unless told to skip it.
    std::map<uint32_t, std::vector<std::pair<size_t, float>>> by_expert;  // expert -> (token, weight), sorted
    for (size_t t = 0; t < T_; ++t) {
      ES_RETURN_IF_ERROR(DropMissing(t, k, chosen, weights));
      for (size_t j = 0; j < k; ++j) {
        if (chosen[t * k + j] >= 0 && weights[t * k + j] != 0.0f) {
          by_expert[static_cast<uint32_t>(chosen[t * k + j])].emplace_back(t, weights[t * k + j]);
        }
      }
      if (options_.observer) {
        options_.observer({t, Position(t), layer_, {&chosen[t * k], k}, {&weights[t * k], k}});
      }
    }
    std::vector<uint32_t> ids;
    for (const auto& [e, rows] : by_expert) ids.push_back(e);
    ScorePrediction(ids);
    // Each expert runs on the rows that picked it; rows sum their experts in ascending expert order. A prefill
    // may route to more experts than the cache holds: they are pinned and run in parts, in the same order.
    std::vector<float> moe(T_ * H_, 0.0f);
    std::vector<int32_t> rows;
    std::vector<float> scale, scratch;
    std::vector<AcquiredExpert> acquired;
    const size_t part = std::max<size_t>(1, experts_.max_batch());
    for (size_t first = 0; first < ids.size(); first += part) {
      std::span<const uint32_t> group(ids.data() + first, std::min(part, ids.size() - first));
      ES_RETURN_IF_ERROR(experts_.Acquire(layer_, group, acquired));
      for (size_t i = 0; i < group.size(); ++i) {
        rows.clear();
        scale.clear();
        for (const auto& [t, w] : by_expert[group[i]]) {
          rows.push_back(static_cast<int32_t>(t));
          scale.push_back(w);
        }
        scratch.resize(kernels::ExpertScratchFloats(rows.size(), acquired[i].weights.gate.rows));
        ES_RETURN_IF_ERROR(kernels::ExpertAccumulateRows(ctx_, acquired[i].weights, h_.data(), T_, rows, scale.data(),
                                                         scratch, moe.data()));
      }
      acquired.clear();
    }
    if (shared_expert) ES_RETURN_IF_ERROR(SharedExpert(moe));
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += moe[i];
    return Status::Ok();
  }

  Status DenseMlp() override {
    ES_ASSIGN_OR_RETURN(auto post_norm, W().Vector(LayerName(layer_, "post_attention_layernorm.weight")));
    ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x_.data(), T_, post_norm, c_.rms_eps, h_.data()));
    kernels::ExpertWeights mlp;
    ES_ASSIGN_OR_RETURN(mlp.gate, W().Matrix(LayerName(layer_, "mlp.gate_proj.weight")));
    ES_ASSIGN_OR_RETURN(mlp.up, W().Matrix(LayerName(layer_, "mlp.up_proj.weight")));
    ES_ASSIGN_OR_RETURN(mlp.down, W().Matrix(LayerName(layer_, "mlp.down_proj.weight")));
    std::vector<float> out(T_ * H_), scratch(kernels::ExpertScratchFloats(T_, mlp.gate.rows));
    ES_RETURN_IF_ERROR(kernels::ExpertForward(ctx_, mlp, h_.data(), T_, scratch, out.data()));
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += out[i];
    return Status::Ok();
  }

 private:
  const DenseWeights& W() const { return m_.weights(); }

  size_t Position(size_t t) const { return isolated_.empty() ? kv_.length() + t : isolated_[t]; }

  Status AddOutputProjection(const std::vector<float>& attn) {
    std::vector<float> out(T_ * H_);
    ES_ASSIGN_OR_RETURN(auto o_proj, W().Matrix(LayerName(layer_, "self_attn.o_proj.weight")));
    ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, attn.data(), T_, o_proj, out.data()));
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += out[i];
    return Status::Ok();
  }

  std::string RouterName(uint32_t layer) const {
    return LayerName(layer, c_.arch == "mixtral" ? "block_sparse_moe.gate.weight" : "mlp.gate.weight");
  }

  static void Softmax(const float* logits, size_t n, float* out) {
    float mx = *std::max_element(logits, logits + n);
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += (out[i] = std::exp(logits[i] - mx));
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(out[i] / sum);
  }

  // y = h W^T (+ b) for a projection of this layer.
  Status Project(const std::string& name, const float* h, float* y, bool bias) {
    ES_ASSIGN_OR_RETURN(auto w, W().Matrix(LayerName(layer_, (name + ".weight").c_str())));
    ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, h, T_, w, y));
    if (!bias) return Status::Ok();
    ES_ASSIGN_OR_RETURN(auto b, W().Vector(LayerName(layer_, (name + ".bias").c_str())));
    std::vector<float> bf(b.size);
    ES_RETURN_IF_ERROR(kernels::ConvertToF32(ctx_, b.data, b.dtype, b.size, bf.data()));
    for (size_t t = 0; t < T_; ++t) {
      for (size_t i = 0; i < b.size; ++i) y[t * w.rows + i] += bf[i];
    }
    return Status::Ok();
  }

  // Removes routed experts the store does not hold (skip mode) and renormalises the rest when the model
  // normalises its top-k; otherwise reports the first missing one.
  Status DropMissing(size_t t, size_t k, std::vector<int32_t>& chosen, std::vector<float>& weights) {
    bool dropped = false;
    for (size_t j = 0; j < k; ++j) {
      int32_t e = chosen[t * k + j];
      if (e < 0 || experts_.Has(layer_, static_cast<uint32_t>(e))) continue;
      if (!options_.skip_missing_experts) {
        return Status::NotFound("the router picked expert " + std::to_string(e) + " of layer " + std::to_string(layer_) +
                                ", which this partial checkpoint lacks (use --skip-missing-experts to drop it)");
      }
      chosen[t * k + j] = -1;
      weights[t * k + j] = 0.0f;
      dropped = true;
    }
    if (dropped && c_.norm_topk_prob) {
      float sum = 0;
      for (size_t j = 0; j < k; ++j) sum += weights[t * k + j];
      if (sum > 0) {
        for (size_t j = 0; j < k; ++j) weights[t * k + j] /= sum;
      }
    }
    return Status::Ok();
  }

  // Guesses the experts of the next prefetch_depth MoE layers from the current hidden state with their
  // routers, and asks the provider to read them ahead.
  Status PrefetchAhead() {
    if (options_.prefetch_depth == 0 || !experts_.prefetches()) return Status::Ok();
    const size_t E = c_.num_experts;
    const size_t k = std::min<size_t>(options_.top_k == 0 ? c_.top_k : options_.top_k, E);
    uint32_t ahead = 0;
    for (uint32_t l = layer_ + 1; l < c_.num_layers && ahead < options_.prefetch_depth; ++l) {
      if (!c_.IsMoeLayer(l)) continue;
      ++ahead;
      ES_ASSIGN_OR_RETURN(auto norm, W().Vector(LayerName(l, "post_attention_layernorm.weight")));
      ES_ASSIGN_OR_RETURN(auto router, W().Matrix(RouterName(l)));
      std::vector<float> hn(T_ * H_), logits(T_ * E);
      ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x_.data(), T_, norm, c_.rms_eps, hn.data()));
      ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, hn.data(), T_, router, logits.data()));
      std::vector<int32_t> chosen(T_ * k);
      std::vector<float> weights(T_ * k);
      ES_RETURN_IF_ERROR(kernels::RouterTopK(logits.data(), T_, E, k, c_.norm_topk_prob, chosen.data(), weights.data()));
      std::vector<uint32_t> ids;
      for (int32_t e : chosen) {
        if (e >= 0 && experts_.Has(l, static_cast<uint32_t>(e))) ids.push_back(static_cast<uint32_t>(e));
      }
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      experts_.Prefetch(l, ids);
      if (l >= predicted_.size()) predicted_.resize(l + 1);
      predicted_[l] = std::move(ids);
    }
    return Status::Ok();
  }

  // Compares the experts this layer used with what an earlier layer predicted for it.
  void ScorePrediction(const std::vector<uint32_t>& used) {
    PrefetchAccuracy* acc = options_.prefetch_accuracy;
    if (acc == nullptr || layer_ >= predicted_.size() || predicted_[layer_].empty()) return;
    const auto& guess = predicted_[layer_];
    acc->predicted += guess.size();
    acc->used += used.size();
    for (uint32_t e : used) acc->correct += std::binary_search(guess.begin(), guess.end(), e);
    predicted_[layer_].clear();
  }

  Status SharedExpert(std::vector<float>& moe) {
    kernels::ExpertWeights se;
    ES_ASSIGN_OR_RETURN(se.gate, W().Matrix(LayerName(layer_, "mlp.shared_expert.gate_proj.weight")));
    ES_ASSIGN_OR_RETURN(se.up, W().Matrix(LayerName(layer_, "mlp.shared_expert.up_proj.weight")));
    ES_ASSIGN_OR_RETURN(se.down, W().Matrix(LayerName(layer_, "mlp.shared_expert.down_proj.weight")));
    ES_ASSIGN_OR_RETURN(auto gate, W().Matrix(LayerName(layer_, "mlp.shared_expert_gate.weight")));
    std::vector<float> g(T_ * gate.rows);
    ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, h_.data(), T_, gate, g.data()));
    std::vector<float> scale(T_);
    for (size_t t = 0; t < T_; ++t) scale[t] = 1.0f / (1.0f + std::exp(-g[t * gate.rows]));
    std::vector<float> scratch(kernels::ExpertScratchFloats(T_, se.gate.rows));
    return kernels::ExpertAccumulate(ctx_, se, h_.data(), T_, scale.data(), scratch, moe.data());
  }

  const Model& m_;
  const ModelConfig& c_;
  const kernels::CpuContext& ctx_;
  std::span<const int32_t> tokens_;
  KvCache& kv_;
  ExpertProvider& experts_;
  const ForwardOptions& options_;
  const size_t T_;
  const size_t H_;
  uint32_t layer_ = 0;
  std::vector<float> x_;  // residual stream [T, H]
  std::vector<float> h_;  // normed input of the current block
  std::vector<std::vector<uint32_t>> predicted_;  // per layer: experts predicted for it (sorted), until scored
  std::span<const size_t> isolated_;  // ForwardRowsFrom: each row's position (empty: a normal forward)
  uint32_t start_layer_ = 0;
  const ForcedRouting* forced_ = nullptr;
};

Result<std::unique_ptr<Model>> Model::Load(Store& store, const std::string& name, kernels::CpuContext ctx) {
  std::unique_ptr<Model> m(new Model());
  m->ctx_ = ctx;
  auto value = store.catalog().Get(Cf::kModels, ModelKey(name));
  if (!value.ok()) {
    return value.status().IsNotFound() ? Status::NotFound("no model '" + name + "' in the store") : value.status();
  }
  ES_ASSIGN_OR_RETURN(m->info_, DecodeModel(*value));
  if (!m->info_.complete) {
    return Status::InvalidArgument("model '" + name + "' is incomplete (an ingest was interrupted): run ingest again");
  }
  ES_ASSIGN_OR_RETURN(m->config_, ParseModelConfig(m->info_.arch, m->info_.config_json));
  ES_RETURN_IF_ERROR(GraphFor(m->info_.arch).status());
  ES_ASSIGN_OR_RETURN(m->weights_, DenseWeights::Load(store, name));
  ES_ASSIGN_OR_RETURN(m->embed_, m->weights_->Matrix("model.embed_tokens.weight"));
  ES_ASSIGN_OR_RETURN(m->final_norm_, m->weights_->Vector("model.norm.weight"));
  if (m->weights_->Has("lm_head.weight")) {
    ES_ASSIGN_OR_RETURN(m->lm_head_, m->weights_->Matrix("lm_head.weight"));
  } else if (m->config_.tie_word_embeddings) {
    m->lm_head_ = m->embed_;
  } else {
    return Status::NotFound("model '" + name + "' has no lm_head.weight and does not tie its embeddings");
  }
  const ModelConfig& c = m->config_;
  if (m->embed_.cols != c.hidden || m->embed_.rows < c.vocab || m->lm_head_.cols != c.hidden) {
    return Status::InvalidArgument("model '" + name + "': embedding or lm_head shape disagrees with the config");
  }
  return m;
}

Status Model::Forward(std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts,
                      const ForwardOptions& options, std::vector<float>& hidden) {
  if (tokens.empty()) return Status::InvalidArgument("forward of no tokens");
  if (kv.length() + tokens.size() > kv.capacity()) {
    return Status::ResourceExhausted("sequence of " + std::to_string(kv.length() + tokens.size()) +
                                     " tokens exceeds the context of " + std::to_string(kv.capacity()));
  }
  ES_ASSIGN_OR_RETURN(const ArchGraph* graph, GraphFor(config_.arch));
  ForwardState state(*this, tokens, kv, experts, options);
  const size_t H = config_.hidden;
  const size_t es = DTypeSize(embed_.dtype);
  std::vector<float>& x = state.residual();
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || static_cast<uint32_t>(tokens[t]) >= config_.vocab) {
      return Status::InvalidArgument("token id " + std::to_string(tokens[t]) + " is outside the vocabulary of " +
                                     std::to_string(config_.vocab));
    }
    const auto* row = static_cast<const std::byte*>(embed_.data) + static_cast<size_t>(tokens[t]) * H * es;
    ES_RETURN_IF_ERROR(kernels::ConvertToF32(ctx_, row, embed_.dtype, H, &x[t * H]));
  }
  for (uint32_t l = 0; l < config_.num_layers; ++l) {
    state.set_layer(l);
    ES_RETURN_IF_ERROR(graph->Layer(state).WithContext("layer " + std::to_string(l)));
  }
  hidden.resize(tokens.size() * H);
  ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x.data(), tokens.size(), final_norm_, config_.rms_eps, hidden.data()));
  kv.Advance(tokens.size());
  return Status::Ok();
}

Status Model::ForwardRowsFrom(uint32_t layer, std::span<const float> residual, std::span<const size_t> positions,
                              const ForcedRouting& routing, KvCache& kv, ExpertProvider& experts,
                              const ForwardOptions& options, std::vector<float>& hidden) {
  const size_t rows = positions.size();
  const size_t H = config_.hidden;
  if (rows == 0) return Status::InvalidArgument("ForwardRowsFrom of no rows");
  if (layer >= config_.num_layers || !config_.IsMoeLayer(layer)) {
    return Status::InvalidArgument("ForwardRowsFrom must start at a MoE layer");
  }
  if (residual.size() != rows * H) return Status::InvalidArgument("ForwardRowsFrom: residual must be [rows, hidden]");
  for (size_t p : positions) {
    if (p >= kv.length()) return Status::InvalidArgument("ForwardRowsFrom: a row lies past the cached positions");
  }
  ES_ASSIGN_OR_RETURN(const ArchGraph* graph, GraphFor(config_.arch));
  std::vector<int32_t> unused(rows);  // rows carry no tokens: embedding happened in the earlier Forward
  ForwardOptions o = options;
  o.capture_pre_moe = nullptr;
  ForwardState state(*this, unused, kv, experts, o);
  state.Isolate(positions, layer, &routing);
  std::copy(residual.begin(), residual.end(), state.residual().begin());
  for (uint32_t l = layer; l < config_.num_layers; ++l) {
    state.set_layer(l);
    ES_RETURN_IF_ERROR(graph->Layer(state).WithContext("layer " + std::to_string(l)));
  }
  hidden.resize(rows * H);
  return kernels::RmsNorm(ctx_, state.residual().data(), rows, final_norm_, config_.rms_eps, hidden.data());
}

Status Model::ComputeLogits(const float* hidden, size_t rows, float* logits) const {
  kernels::WeightMatrix head = lm_head_;
  head.rows = config_.vocab;
  return kernels::MatMul(ctx_, hidden, rows, head, logits);
}

}  // namespace es
