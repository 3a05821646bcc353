// Model: loading, argument checks, and dispatch to the backend (the CPU layer blocks are in cpu_backend.cc).
#include "compute/model.h"

#include <chrono>

#include "compute/backend.h"
#include "compute/kernels/ggml_blocks.h"
#include "compute/prefetch_governor.h"

namespace es {

Status CheckTokens(std::span<const int32_t> tokens, uint32_t vocab) {
  for (int32_t t : tokens) {
    if (t < 0 || static_cast<uint32_t>(t) >= vocab) {
      return Status::InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary of " +
                                     std::to_string(vocab));
    }
  }
  return Status::Ok();
}

std::string LayerTensorName(uint32_t layer, std::string_view rest) {
  return "model.layers." + std::to_string(layer) + "." + std::string(rest);
}

std::string RouterTensorName(const ModelConfig& config, uint32_t layer) {
  return LayerTensorName(layer, config.arch == "mixtral" ? "block_sparse_moe.gate.weight" : "mlp.gate.weight");
}

Result<const ArchGraph*> GraphFor(const std::string& arch) {
  if (arch == "qwen3_moe" || arch == "qwen3_omni_moe") return &Qwen3MoeGraph();
  if (arch == "mixtral") return &MixtralGraph();
  if (arch == "olmoe") return &OlmoeGraph();
  if (arch == "qwen2_moe") return &Qwen2MoeGraph();
  return Status::NotSupported("no forward pass for architecture " + arch);
}

KvCache::KvCache(const ModelConfig& config, size_t capacity)
    : capacity_(capacity), row_(static_cast<size_t>(config.num_kv_heads) * config.head_dim),
      layers_(config.num_layers) {}

KvCache::~KvCache() = default;

void KvCache::AllocateHost() {
  if (!keys_.empty()) return;
  keys_.resize(layers_);
  values_.resize(layers_);
  for (size_t l = 0; l < layers_; ++l) {
    keys_[l].resize(capacity_ * row_);
    values_[l].resize(capacity_ * row_);
  }
}

float* KvCache::keys(uint32_t layer) {
  AllocateHost();
  return keys_[layer].data();
}

float* KvCache::values(uint32_t layer) {
  AllocateHost();
  return values_[layer].data();
}

Model::Model() : backend_(MakeCpuBackend()) {}
Model::~Model() = default;

void Model::SetBackend(std::unique_ptr<Backend> backend) { backend_ = std::move(backend); }

Status Model::Embed(std::span<const int32_t> tokens, float* out) const {
  const size_t H = config_.hidden;
  ES_RETURN_IF_ERROR(CheckTokens(tokens, config_.vocab));
  if (embed_.blocks) {  // a GGUF embedding in a block format: decode the token's row
    const size_t row_bytes = *GgmlRowBytes(*embed_.blocks, H);
    for (size_t t = 0; t < tokens.size(); ++t) {
      const auto* row = static_cast<const std::byte*>(embed_.data) + static_cast<size_t>(tokens[t]) * row_bytes;
      ES_RETURN_IF_ERROR(DequantizeGgmlRow(*embed_.blocks, {row, row_bytes}, {&out[t * H], H}));
    }
    return Status::Ok();
  }
  const size_t es = DTypeSize(embed_.dtype);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const auto* row = static_cast<const std::byte*>(embed_.data) + static_cast<size_t>(tokens[t]) * H * es;
    ES_RETURN_IF_ERROR(kernels::ConvertToF32(ctx_, row, embed_.dtype, H, &out[t * H]));
  }
  return Status::Ok();
}

Result<std::unique_ptr<Model>> Model::Load(Store& store, const std::string& name, kernels::CpuContext ctx) {
  std::unique_ptr<Model> m(new Model());
  m->ctx_ = ctx;
  auto value = store.catalog().Get(Cf::kModels, ModelKey(name));
  if (!value.ok()) {
    return value.status().IsNotFound() ? Status::NotFound("no model '" + name + "' in the store") : value.status();
  }
  ES_ASSIGN_OR_RETURN(m->info_, DecodeModel(*value));
  if (!m->info_.complete) {
    if (m->info_.num_dense_tensors == 0) {
      // What fetch-expert builds: single experts copied from another store, without the dense weights.
      return Status::InvalidArgument("model '" + name + "' holds only " + std::to_string(m->info_.num_experts) +
                                     " experts copied one by one (fetch-expert) and none of its dense weights "
                                     "(embeddings, attention, norms): ingest its checkpoint to generate");
    }
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
  const SequenceInput one{tokens, &kv};
  return ForwardBatch({&one, 1}, experts, options, hidden);
}

Status Model::ForwardBatch(std::span<const SequenceInput> sequences, ExpertProvider& experts,
                           const ForwardOptions& options, std::vector<float>& hidden) {
  if (sequences.empty()) return Status::InvalidArgument("forward of no sequences");
  bool decode = true;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const SequenceInput& s = sequences[i];
    if (s.kv == nullptr) return Status::InvalidArgument("forward of a sequence without a KV cache");
    if (s.tokens.empty()) return Status::InvalidArgument("forward of no tokens");
    if (s.kv->length() + s.tokens.size() > s.kv->capacity()) {
      return Status::ResourceExhausted("sequence of " + std::to_string(s.kv->length() + s.tokens.size()) +
                                       " tokens exceeds the context of " + std::to_string(s.kv->capacity()));
    }
    for (size_t j = 0; j < i; ++j) {
      if (sequences[j].kv == s.kv) return Status::InvalidArgument("two sequences of one batch share a KV cache");
    }
    ES_RETURN_IF_ERROR(CheckTokens(s.tokens, config_.vocab));
    decode = decode && s.tokens.size() == 1;
  }
  auto run = [&](const ForwardOptions& o) {
    if (sequences.size() == 1) return backend_->Forward(*this, sequences[0].tokens, *sequences[0].kv, experts, o, hidden);
    return backend_->ForwardBatch(*this, sequences, experts, o, hidden);
  };
  PrefetchGovernor* governor = options.prefetch_governor;
  if (governor == nullptr || !decode || options.prefetch_depth == 0) return run(options);
  const bool prefetch = governor->PrefetchNext();
  ForwardOptions step = options;
  if (!prefetch) step.prefetch_depth = 0;
  const auto start = std::chrono::steady_clock::now();
  Status status = run(step);
  if (status.ok()) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    governor->Observe(prefetch, seconds / static_cast<double>(sequences.size()));
  }
  return status;
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
  return backend_->ForwardRowsFrom(*this, layer, residual, positions, routing, kv, experts, options, hidden);
}

Status Model::ComputeLogits(const float* hidden, size_t rows, float* logits) const {
  if (rows == 0) return Status::Ok();
  return backend_->ComputeLogits(*this, hidden, rows, logits);
}

Status Backend::ForwardBatch(const Model& model, std::span<const SequenceInput> sequences, ExpertProvider& experts,
                             const ForwardOptions& options, std::vector<float>& hidden) {
  const size_t H = model.config().hidden;
  std::vector<float> all, one;
  for (const SequenceInput& s : sequences) {
    ES_RETURN_IF_ERROR(Forward(model, s.tokens, *s.kv, experts, options, one));
    all.insert(all.end(), one.begin(), one.begin() + static_cast<std::ptrdiff_t>(s.tokens.size() * H));
  }
  hidden = std::move(all);
  return Status::Ok();
}

Status Backend::ForwardRowsFrom(const Model&, uint32_t, std::span<const float>, std::span<const size_t>,
                                const ForcedRouting&, KvCache&, ExpertProvider&, const ForwardOptions&,
                                std::vector<float>&) {
  return Status::NotSupported("the " + name() + " backend does not re-run rows (calibration runs on the CPU)");
}

}  // namespace es
