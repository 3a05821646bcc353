// Expert providers.
#include "compute/expert_provider.h"

#include "compute/dense_weights.h"
#include "store/base/aligned_buffer.h"

namespace es {

Result<kernels::ExpertWeights> ExpertWeightsFromPayload(const ExpertInfo& info, std::span<const std::byte> payload) {
  kernels::ExpertWeights w;
  bool have[3] = {false, false, false};
  for (const auto& p : info.projections) {
    if (p.shape.size() != 2 || p.offset + p.length > payload.size()) {
      return Status::Corruption("expert " + std::to_string(info.layer) + "/" + std::to_string(info.expert) +
                                ": projection " + p.role + " does not fit its payload");
    }
    kernels::WeightMatrix m{payload.data() + p.offset, p.dtype, static_cast<size_t>(p.shape[0]),
                            static_cast<size_t>(p.shape[1]), BlocksOf(p.ggml_type)};
    if (p.role == "gate") {
      w.gate = m;
      have[0] = true;
    } else if (p.role == "up") {
      w.up = m;
      have[1] = true;
    } else if (p.role == "down") {
      w.down = m;
      have[2] = true;
    }
  }
  if (!have[0] || !have[1] || !have[2]) {
    return Status::Corruption("expert " + std::to_string(info.layer) + "/" + std::to_string(info.expert) +
                              " lacks a gate, up or down projection");
  }
  return w;
}

Result<std::vector<std::vector<std::optional<ExpertInfo>>>> LoadExpertCatalog(Store& store, const std::string& model,
                                                                               uint32_t layers, uint32_t experts) {
  std::vector<std::vector<std::optional<ExpertInfo>>> out(layers, std::vector<std::optional<ExpertInfo>>(experts));
  Status bad;
  ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kExperts, ModelPrefix(model), [&](std::string_view, std::string_view v) {
    auto e = DecodeExpert(v);
    if (!e.ok()) {
      bad = e.status();
      return false;
    }
    if (e->layer >= layers || e->expert >= experts) {
      bad = Status::Corruption("catalog holds expert " + std::to_string(e->layer) + "/" + std::to_string(e->expert) +
                               " beyond the model's shape");
      return false;
    }
    out[e->layer][e->expert] = std::move(e).value();
    return true;
  }));
  ES_RETURN_IF_ERROR(bad);
  return out;
}

Result<std::unique_ptr<DirectExpertProvider>> DirectExpertProvider::Create(Store& store, const std::string& model) {
  ES_ASSIGN_OR_RETURN(std::string value, store.catalog().Get(Cf::kModels, ModelKey(model)));
  ES_ASSIGN_OR_RETURN(ModelInfo info, DecodeModel(value));
  std::unique_ptr<DirectExpertProvider> p(new DirectExpertProvider(store, model));
  ES_ASSIGN_OR_RETURN(p->experts_, LoadExpertCatalog(store, model, info.num_layers, info.experts_per_layer));
  return p;
}

Status DirectExpertProvider::Acquire(uint32_t layer, std::span<const uint32_t> experts, std::vector<AcquiredExpert>& out) {
  out.clear();
  if (layer >= experts_.size()) return Status::InvalidArgument("layer out of range");
  std::vector<std::shared_ptr<AlignedBuffer>> buffers;
  std::vector<ExtentRead> reads;
  for (uint32_t e : experts) {
    if (e >= experts_[layer].size() || !experts_[layer][e]) {
      return Status::NotFound("expert " + std::to_string(e) + " of layer " + std::to_string(layer) +
                              " is not in the store (a partial checkpoint)");
    }
    const Extent& x = experts_[layer][e]->extent;
    buffers.push_back(std::make_shared<AlignedBuffer>(x.record_length));
    if (buffers.back()->data() == nullptr) return Status::ResourceExhausted("cannot allocate an expert buffer");
    reads.push_back(ExtentRead{x, buffers.back()->span(), Status::Ok(), {}});
  }
  store_.reader().ReadBatch(reads);
  for (size_t i = 0; i < reads.size(); ++i) {
    ES_RETURN_IF_ERROR(reads[i].status);
    ++counters_.misses;
    counters_.bytes_read += reads[i].extent.record_length;
    ES_ASSIGN_OR_RETURN(auto w, ExpertWeightsFromPayload(*experts_[layer][experts[i]], reads[i].payload));
    out.push_back({experts[i], w, buffers[i], reads[i].payload});
  }
  return Status::Ok();
}

}  // namespace es
