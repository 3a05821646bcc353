// The CPU backend: the layer blocks on the CPU kernels (compute/kernels), the reference every other backend is
// tested against.
#include <algorithm>
#include <cmath>

#include "compute/backend.h"
#include "compute/lookahead.h"
#include "compute/moe_routing.h"

namespace es {

namespace {

// The state of one Forward call: the residual stream of its tokens and the blocks that update it.
class ForwardState final : public Model::LayerOps {
 public:
  // `sequences` run together: their rows are concatenated in order, each attends to its own KvCache.
  ForwardState(const Model& model, std::span<const SequenceInput> sequences, size_t rows, ExpertProvider& experts,
               const ForwardOptions& options)
      : m_(model), c_(model.config()), ctx_(model.context()), sequences_(sequences), experts_(experts),
        options_(options), routing_(c_, experts, options), T_(rows), H_(c_.hidden), x_(T_ * H_), h_(T_ * H_),
        positions_(T_) {
    size_t row = 0;
    for (const SequenceInput& s : sequences_) {
      for (size_t t = 0; t < s.tokens.size(); ++t) positions_[row++] = s.kv->length() + t;
    }
  }

  uint32_t layer() const override { return layer_; }
  const ModelConfig& config() const override { return c_; }
  void set_layer(uint32_t l) { layer_ = l; }
  std::vector<float>& residual() { return x_; }

  // ForwardRowsFrom: rows at these positions, each attending only to the cache before it and to itself; the
  // layer `start` skips its attention (the residual given already includes it) and mixes `forced`'s experts.
  void Isolate(std::span<const size_t> positions, uint32_t start, const ForcedRouting* forced) {
    isolated_ = positions;
    positions_.assign(positions.begin(), positions.end());
    start_layer_ = start;
    forced_ = forced;
  }

  Status Attention(const AttentionOptions& o) override {
    if (forced_ != nullptr && layer_ == start_layer_) return Status::Ok();
    const size_t nh = c_.num_heads, nkv = c_.num_kv_heads, hd = c_.head_dim;
    const size_t q_dim = nh * hd, kv_dim = nkv * hd;
    ES_ASSIGN_OR_RETURN(auto in_norm, W().Vector(LayerTensorName(layer_, "input_layernorm.weight")));
    ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x_.data(), T_, in_norm, c_.rms_eps, h_.data()));
    std::vector<float> q(T_ * q_dim), k(T_ * kv_dim), v(T_ * kv_dim);
    ES_RETURN_IF_ERROR(Project("self_attn.q_proj", h_.data(), q.data(), o.qkv_bias));
    ES_RETURN_IF_ERROR(Project("self_attn.k_proj", h_.data(), k.data(), o.qkv_bias));
    ES_RETURN_IF_ERROR(Project("self_attn.v_proj", h_.data(), v.data(), o.qkv_bias));
    if (o.qk_norm != QkNorm::kNone) {
      ES_ASSIGN_OR_RETURN(auto qn, W().Vector(LayerTensorName(layer_, "self_attn.q_norm.weight")));
      ES_ASSIGN_OR_RETURN(auto kn, W().Vector(LayerTensorName(layer_, "self_attn.k_norm.weight")));
      bool per_head = o.qk_norm == QkNorm::kPerHead;
      ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, q.data(), per_head ? T_ * nh : T_, qn, c_.rms_eps, q.data()));
      ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, k.data(), per_head ? T_ * nkv : T_, kn, c_.rms_eps, k.data()));
    }
    std::vector<int32_t> positions(T_);
    for (size_t t = 0; t < T_; ++t) positions[t] = static_cast<int32_t>(positions_[t]);
    ES_RETURN_IF_ERROR(kernels::ApplyRope(q.data(), T_, nh, hd, positions.data(), c_.rope_theta));
    ES_RETURN_IF_ERROR(kernels::ApplyRope(k.data(), T_, nkv, hd, positions.data(), c_.rope_theta));
    std::vector<float> attn(T_ * q_dim);
    kernels::AttentionShape shape{nh, nkv, hd};
    if (!isolated_.empty()) {
      KvCache& kv = *sequences_[0].kv;
      // Each row sees the cache before its position and its own key and value, which stand in for the cached
      // ones at its position during its call only.
      std::vector<float> saved_k(kv_dim), saved_v(kv_dim);
      for (size_t t = 0; t < T_; ++t) {
        float* kc = kv.keys(layer_) + isolated_[t] * kv_dim;
        float* vc = kv.values(layer_) + isolated_[t] * kv_dim;
        std::copy(kc, kc + kv_dim, saved_k.begin());
        std::copy(vc, vc + kv_dim, saved_v.begin());
        std::copy(&k[t * kv_dim], &k[(t + 1) * kv_dim], kc);
        std::copy(&v[t * kv_dim], &v[(t + 1) * kv_dim], vc);
        Status s = kernels::Attention(ctx_, shape, &q[t * q_dim], 1, kv.keys(layer_), kv.values(layer_),
                                      isolated_[t] + 1, &attn[t * q_dim]);
        std::copy(saved_k.begin(), saved_k.end(), kc);
        std::copy(saved_v.begin(), saved_v.end(), vc);
        ES_RETURN_IF_ERROR(s);
      }
      return AddOutputProjection(attn);
    }
    // Each sequence appends its keys and values to its own cache and attends to it alone.
    size_t first = 0;
    for (const SequenceInput& s : sequences_) {
      KvCache& kv = *s.kv;
      const size_t n = s.tokens.size();
      std::copy(&k[first * kv_dim], &k[(first + n) * kv_dim], kv.keys(layer_) + kv.length() * kv_dim);
      std::copy(&v[first * kv_dim], &v[(first + n) * kv_dim], kv.values(layer_) + kv.length() * kv_dim);
      ES_RETURN_IF_ERROR(kernels::Attention(ctx_, shape, &q[first * q_dim], n, kv.keys(layer_), kv.values(layer_),
                                            kv.length() + n, &attn[first * q_dim]));
      first += n;
    }
    return AddOutputProjection(attn);
  }

  Status Moe(bool shared_expert) override {
    const size_t E = c_.num_experts;
    const bool forced = forced_ != nullptr && layer_ == start_layer_;
    const size_t k = forced ? forced_->k : routing_.top_k();
    if (options_.capture_pre_moe != nullptr) {
      if (options_.capture_pre_moe->size() < c_.num_layers) options_.capture_pre_moe->resize(c_.num_layers);
      (*options_.capture_pre_moe)[layer_] = x_;
    }
    ES_ASSIGN_OR_RETURN(auto post_norm, W().Vector(LayerTensorName(layer_, "post_attention_layernorm.weight")));
    ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x_.data(), T_, post_norm, c_.rms_eps, h_.data()));
    ES_RETURN_IF_ERROR(PrefetchAhead());

    // Route.
    ES_ASSIGN_OR_RETURN(auto router, W().Matrix(RouterTensorName(c_, layer_)));
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
      routing_.ApplyPolicy(layer_, logits.data(), T_, k, chosen.data(), weights.data());
    } else {
      ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, h_.data(), T_, router, logits.data()));
      ES_RETURN_IF_ERROR(kernels::RouterTopK(logits.data(), T_, E, k, c_.norm_topk_prob, chosen.data(), weights.data()));
    }

    ES_ASSIGN_OR_RETURN(std::vector<ExpertRows> groups,
                        routing_.Dispatch(layer_, T_, k, chosen, weights, [this](size_t t) { return Position(t); }));
    // Each expert runs on the rows that picked it; rows sum their experts in ascending expert order. A prefill
    // may route to more experts than the cache holds: they are pinned and run in parts, in the same order.
    std::vector<float> moe(T_ * H_, 0.0f);
    std::vector<float> scratch;
    std::vector<uint32_t> ids;
    std::vector<AcquiredExpert> acquired;
    const size_t part = std::max<size_t>(1, experts_.max_batch());
    for (size_t first = 0; first < groups.size(); first += part) {
      const size_t n = std::min(part, groups.size() - first);
      ids.clear();
      for (size_t i = 0; i < n; ++i) ids.push_back(groups[first + i].expert);
      ES_RETURN_IF_ERROR(experts_.Acquire(layer_, ids, acquired));
      for (size_t i = 0; i < n; ++i) {
        const ExpertRows& g = groups[first + i];
        scratch.resize(kernels::ExpertScratchFloats(g.rows.size(), acquired[i].weights.gate.rows));
        ES_RETURN_IF_ERROR(kernels::ExpertAccumulateRows(ctx_, acquired[i].weights, h_.data(), T_, g.rows,
                                                         g.scales.data(), scratch, moe.data()));
      }
      acquired.clear();
    }
    if (shared_expert) ES_RETURN_IF_ERROR(SharedExpert(moe));
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += moe[i];
    return Status::Ok();
  }

  Status DenseMlp() override {
    ES_ASSIGN_OR_RETURN(auto post_norm, W().Vector(LayerTensorName(layer_, "post_attention_layernorm.weight")));
    ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x_.data(), T_, post_norm, c_.rms_eps, h_.data()));
    kernels::ExpertWeights mlp;
    ES_ASSIGN_OR_RETURN(mlp.gate, W().Matrix(LayerTensorName(layer_, "mlp.gate_proj.weight")));
    ES_ASSIGN_OR_RETURN(mlp.up, W().Matrix(LayerTensorName(layer_, "mlp.up_proj.weight")));
    ES_ASSIGN_OR_RETURN(mlp.down, W().Matrix(LayerTensorName(layer_, "mlp.down_proj.weight")));
    std::vector<float> out(T_ * H_), scratch(kernels::ExpertScratchFloats(T_, mlp.gate.rows));
    ES_RETURN_IF_ERROR(kernels::ExpertForward(ctx_, mlp, h_.data(), T_, scratch, out.data()));
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += out[i];
    return Status::Ok();
  }

 private:
  const DenseWeights& W() const { return m_.weights(); }

  size_t Position(size_t t) const { return positions_[t]; }

  Status AddOutputProjection(const std::vector<float>& attn) {
    std::vector<float> out(T_ * H_);
    ES_ASSIGN_OR_RETURN(auto o_proj, W().Matrix(LayerTensorName(layer_, "self_attn.o_proj.weight")));
    ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, attn.data(), T_, o_proj, out.data()));
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += out[i];
    return Status::Ok();
  }

  // y = h W^T (+ b) for a projection of this layer.
  Status Project(const std::string& name, const float* h, float* y, bool bias) {
    ES_ASSIGN_OR_RETURN(auto w, W().Matrix(LayerTensorName(layer_, name + ".weight")));
    ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, h, T_, w, y));
    if (!bias) return Status::Ok();
    ES_ASSIGN_OR_RETURN(auto b, W().Vector(LayerTensorName(layer_, name + ".bias")));
    std::vector<float> bf(b.size);
    ES_RETURN_IF_ERROR(kernels::ConvertToF32(ctx_, b.data, b.dtype, b.size, bf.data()));
    for (size_t t = 0; t < T_; ++t) {
      for (size_t i = 0; i < b.size; ++i) y[t * w.rows + i] += bf[i];
    }
    return Status::Ok();
  }

  // Guesses the experts of the next prefetch_depth MoE layers from the current hidden state, with the fitted
  // lookahead maps where there are some, else with those layers' routers, and asks the provider to read them
  // ahead.
  Status PrefetchAhead() {
    const size_t E = c_.num_experts;
    const size_t k = routing_.top_k();
    for (uint32_t l : routing_.LayersAhead(layer_)) {
      std::vector<float> logits(T_ * E);
      if (options_.lookahead != nullptr && options_.lookahead->Find(layer_, l) != nullptr) {
        ES_RETURN_IF_ERROR(options_.lookahead->Logits(ctx_, layer_, l, x_.data(), T_, c_.rms_eps, logits.data()));
      } else {
        ES_ASSIGN_OR_RETURN(auto norm, W().Vector(LayerTensorName(l, "post_attention_layernorm.weight")));
        ES_ASSIGN_OR_RETURN(auto router, W().Matrix(RouterTensorName(c_, l)));
        std::vector<float> hn(T_ * H_);
        ES_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, x_.data(), T_, norm, c_.rms_eps, hn.data()));
        ES_RETURN_IF_ERROR(kernels::MatMul(ctx_, hn.data(), T_, router, logits.data()));
      }
      std::vector<int32_t> chosen(T_ * k);
      // Not renormalised: the threshold compares each expert's own probability.
      std::vector<float> probability(T_ * k);
      ES_RETURN_IF_ERROR(kernels::RouterTopK(logits.data(), T_, E, k, /*normalize=*/false, chosen.data(),
                                             probability.data()));
      routing_.Predicted(l, chosen, probability);
    }
    return Status::Ok();
  }

  Status SharedExpert(std::vector<float>& moe) {
    kernels::ExpertWeights se;
    ES_ASSIGN_OR_RETURN(se.gate, W().Matrix(LayerTensorName(layer_, "mlp.shared_expert.gate_proj.weight")));
    ES_ASSIGN_OR_RETURN(se.up, W().Matrix(LayerTensorName(layer_, "mlp.shared_expert.up_proj.weight")));
    ES_ASSIGN_OR_RETURN(se.down, W().Matrix(LayerTensorName(layer_, "mlp.shared_expert.down_proj.weight")));
    ES_ASSIGN_OR_RETURN(auto gate, W().Matrix(LayerTensorName(layer_, "mlp.shared_expert_gate.weight")));
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
  std::span<const SequenceInput> sequences_;
  ExpertProvider& experts_;
  const ForwardOptions& options_;
  MoeRouting routing_;
  const size_t T_;
  const size_t H_;
  uint32_t layer_ = 0;
  std::vector<float> x_;  // residual stream [T, H]
  std::vector<float> h_;  // normed input of the current block
  std::vector<size_t> positions_;     // each row's position in its sequence
  std::span<const size_t> isolated_;  // ForwardRowsFrom: each row's position (empty: a normal forward)
  uint32_t start_layer_ = 0;
  const ForcedRouting* forced_ = nullptr;
};


class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  std::string describe() const override { return "cpu"; }

  Status Forward(const Model& model, std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts,
                 const ForwardOptions& options, std::vector<float>& hidden) override {
    const SequenceInput one{tokens, &kv};
    return ForwardBatch(model, {&one, 1}, experts, options, hidden);
  }

  Status ForwardBatch(const Model& model, std::span<const SequenceInput> sequences, ExpertProvider& experts,
                      const ForwardOptions& options, std::vector<float>& hidden) override {
    const ModelConfig& c = model.config();
    ES_ASSIGN_OR_RETURN(const ArchGraph* graph, GraphFor(c.arch));
    size_t rows = 0;
    for (const SequenceInput& s : sequences) rows += s.tokens.size();
    ForwardState state(model, sequences, rows, experts, options);
    std::vector<float>& x = state.residual();
    size_t first = 0;
    for (const SequenceInput& s : sequences) {
      ES_RETURN_IF_ERROR(model.Embed(s.tokens, &x[first * c.hidden]));
      first += s.tokens.size();
    }
    for (uint32_t l = 0; l < c.num_layers; ++l) {
      state.set_layer(l);
      ES_RETURN_IF_ERROR(graph->Layer(state).WithContext("layer " + std::to_string(l)));
    }
    hidden.resize(rows * c.hidden);
    ES_RETURN_IF_ERROR(kernels::RmsNorm(model.context(), x.data(), rows, model.final_norm(), c.rms_eps, hidden.data()));
    for (const SequenceInput& s : sequences) s.kv->Advance(s.tokens.size());
    return Status::Ok();
  }

  Status ForwardRowsFrom(const Model& model, uint32_t layer, std::span<const float> residual,
                         std::span<const size_t> positions, const ForcedRouting& routing, KvCache& kv,
                         ExpertProvider& experts, const ForwardOptions& options, std::vector<float>& hidden) override {
    const ModelConfig& c = model.config();
    const size_t rows = positions.size();
    ES_ASSIGN_OR_RETURN(const ArchGraph* graph, GraphFor(c.arch));
    std::vector<int32_t> unused(rows);  // rows carry no tokens: embedding happened in the earlier Forward
    ForwardOptions o = options;
    o.capture_pre_moe = nullptr;
    const SequenceInput one{unused, &kv};
    ForwardState state(model, {&one, 1}, rows, experts, o);
    state.Isolate(positions, layer, &routing);
    std::copy(residual.begin(), residual.end(), state.residual().begin());
    for (uint32_t l = layer; l < c.num_layers; ++l) {
      state.set_layer(l);
      ES_RETURN_IF_ERROR(graph->Layer(state).WithContext("layer " + std::to_string(l)));
    }
    hidden.resize(rows * c.hidden);
    return kernels::RmsNorm(model.context(), state.residual().data(), rows, model.final_norm(), c.rms_eps,
                            hidden.data());
  }

  Status ComputeLogits(const Model& model, const float* hidden, size_t rows, float* logits) override {
    kernels::WeightMatrix head = model.lm_head();
    head.rows = model.config().vocab;
    return kernels::MatMul(model.context(), hidden, rows, head, logits);
  }
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

}  // namespace es
