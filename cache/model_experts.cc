// ModelExperts: two prefix scans (experts, trust) of one model.
#include "cache/model_experts.h"

#include <algorithm>
#include <cmath>

namespace es {

namespace {
// Far beyond any real model (Qwen3-30B: 6,144 experts) yet small enough that per-key tables stay cheap; a
// catalog claiming more is damaged.
constexpr uint64_t kMaxKeys = 1ull << 24;
}  // namespace

Result<ModelExperts> ModelExperts::Load(const Catalog& catalog, const std::string& model) {
  ModelExperts out;
  auto value = catalog.Get(Cf::kModels, ModelKey(model));
  if (!value.ok()) {
    if (value.status().IsNotFound()) return Status::NotFound("no model '" + model + "' in the store");
    return value.status();
  }
  ES_ASSIGN_OR_RETURN(out.model_, DecodeModel(*value));

  Status decode;
  uint32_t layers = out.model_.num_layers;
  uint32_t per_layer = out.model_.experts_per_layer;
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kExperts, ModelPrefix(model), [&](std::string_view, std::string_view v) {
    auto e = DecodeExpert(v);
    if (!e.ok()) {
      decode = e.status();
      return false;
    }
    layers = std::max(layers, e->layer + 1);
    per_layer = std::max(per_layer, e->expert + 1);
    out.experts_.push_back(std::move(e).value());
    return true;
  }));
  ES_RETURN_IF_ERROR(decode);
  if (out.experts_.empty()) return Status::InvalidArgument("model '" + model + "' has no experts to cache");
  if (static_cast<uint64_t>(layers) * per_layer > kMaxKeys) {
    return Status::Corruption("model '" + model + "' claims " + std::to_string(layers) + " x " +
                              std::to_string(per_layer) + " experts");
  }
  out.keys_ = KeySpace{layers, per_layer};
  // The scan is in key order, which is (layer, expert) order thanks to the big-endian keys.
  out.index_.assign(out.keys_.num_keys(), -1);
  for (size_t i = 0; i < out.experts_.size(); ++i) {
    const ExpertInfo& e = out.experts_[i];
    out.index_[*out.keys_.Key({e.layer, e.expert})] = static_cast<int32_t>(i);
    out.max_record_bytes_ = std::max(out.max_record_bytes_, e.extent.record_length);
    out.max_payload_bytes_ = std::max(out.max_payload_bytes_, e.extent.payload_length);
    out.total_record_bytes_ += e.extent.record_length;
  }

  out.trust_.assign(out.keys_.num_keys(), std::nullopt);
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kTrust, ModelPrefix(model), [&](std::string_view k, std::string_view v) {
    auto id = ParseExpertKey(k);
    if (!id.ok()) {
      decode = id.status();
      return false;
    }
    auto t = DecodeTrust(v);
    if (!t.ok()) {
      decode = t.status();
      return false;
    }
    auto key = out.keys_.Key({id->layer, id->expert});
    if (key) {  // trust of an expert outside the model's shape is ignored: nothing could evict it
      out.trust_[*key] = std::move(t).value();
      ++out.trust_records_;
    }
    return true;
  }));
  ES_RETURN_IF_ERROR(decode);
  return out;
}

std::vector<KeyTraits> ModelExperts::Traits() const {
  std::vector<KeyTraits> traits(keys_.num_keys());
  for (PolicyKey k = 0; k < keys_.num_keys(); ++k) {
    KeyTraits& t = traits[k];
    const ExpertInfo* e = Find(k);
    t.size = e == nullptr || max_payload_bytes_ == 0
                 ? 0
                 : static_cast<double>(e->extent.payload_length) / static_cast<double>(max_payload_bytes_);
    // A missing record, or a value that is not a number (never written by calibrate), is no evidence.
    auto unit_or = [](double v, double neutral) { return std::isfinite(v) ? std::clamp(v, 0.0, 1.0) : neutral; };
    t.convergence = trust_[k] ? unit_or(trust_[k]->convergence_rate, kNeutralConvergence) : kNeutralConvergence;
    t.stability = trust_[k] ? unit_or(trust_[k]->stability, kNeutralStability) : kNeutralStability;
  }
  return traits;
}

}  // namespace es
