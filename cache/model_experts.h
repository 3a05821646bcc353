// ModelExperts: one model's expert records and trust traits loaded from the catalog, indexed by dense key
// (layer * experts_per_layer + expert), the key space shared by the cache, the policies and the simulator.
// Immutable after Load; safe to read from several threads. Pointers it hands out live as long as it does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cache/policy.h"
#include "store/catalog.h"
#include "store/records.h"
#include "store/base/status.h"

namespace es {

// An expert of the model being served.
struct ExpertRef {
  uint32_t layer = 0;
  uint32_t expert = 0;
  bool operator==(const ExpertRef&) const = default;
};

// The dense key space of a model: every (layer, expert) slot the config allows, present in the catalog or not.
struct KeySpace {
  uint32_t layers = 0;
  uint32_t experts_per_layer = 0;

  uint32_t num_keys() const { return layers * experts_per_layer; }
  // nullopt when the reference lies outside the model's shape.
  std::optional<PolicyKey> Key(ExpertRef ref) const {
    if (ref.layer >= layers || ref.expert >= experts_per_layer) return std::nullopt;
    return ref.layer * experts_per_layer + ref.expert;
  }
  ExpertRef Ref(PolicyKey key) const { return {key / experts_per_layer, key % experts_per_layer}; }
};

class ModelExperts {
 public:
  // NotFound when the model is not in the catalog; InvalidArgument when it has no experts (a dense model);
  // Corruption when a record does not decode.
  static Result<ModelExperts> Load(const Catalog& catalog, const std::string& model);

  const ModelInfo& model() const { return model_; }
  const KeySpace& keys() const { return keys_; }
  // The record of a key, or null when the catalog has no such expert (a partial checkpoint).
  const ExpertInfo* Find(PolicyKey key) const {
    int32_t i = index_[key];
    return i < 0 ? nullptr : &experts_[static_cast<size_t>(i)];
  }
  // Every expert the catalog holds, in key order.
  const std::vector<ExpertInfo>& experts() const { return experts_; }

  // The largest record (header + padded payload): what one cache slot must hold.
  uint64_t max_record_bytes() const { return max_record_bytes_; }
  uint64_t max_payload_bytes() const { return max_payload_bytes_; }
  // Sum of the records of every expert: what caching the whole model would take.
  uint64_t total_record_bytes() const { return total_record_bytes_; }

  // The trust policy's inputs, one per key: the trust record's convergence_rate and stability clamped to [0, 1]
  // (kNeutralConvergence / kNeutralStability without a record), size = payload / max_payload_bytes (0 for
  // absent experts, which never become resident).
  std::vector<KeyTraits> Traits() const;
  // How many experts have a trust record.
  size_t trust_records() const { return trust_records_; }

 private:
  ModelInfo model_;
  KeySpace keys_;
  std::vector<ExpertInfo> experts_;
  std::vector<int32_t> index_;  // per key: position in experts_, or -1
  std::vector<std::optional<TrustInfo>> trust_;  // per key
  size_t trust_records_ = 0;
  uint64_t max_record_bytes_ = 0;
  uint64_t max_payload_bytes_ = 0;
  uint64_t total_record_bytes_ = 0;
};

}  // namespace es
