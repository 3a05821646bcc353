// Writes a small MoE model straight into a store (model record, one expert record per (layer, expert) with
// gate/up/down projections, optional trust records), with payload bytes that are a pure function of
// (layer, expert, size) so that a test can rebuild the reference bytes of any expert. Header-only so that the
// benchmarks can use it without linking GoogleTest.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "store/records.h"
#include "store/store.h"

namespace es::testing {

struct TestModelSpec {
  std::string name = "m";
  uint32_t layers = 2;
  uint32_t experts = 8;
  uint32_t top_k = 2;
  // Payload bytes of each expert; the default varies sizes (not multiples of 4 KiB) so slots fit the largest.
  std::function<uint64_t(uint32_t layer, uint32_t expert)> payload_bytes = [](uint32_t layer, uint32_t expert) {
    return 12288 + 1000 * ((layer * 7 + expert * 3) % 5);
  };
  std::set<std::pair<uint32_t, uint32_t>> missing = {};  // (layer, expert) pairs not written: a partial checkpoint
  // Trust records for every written expert when set: (convergence_rate, stability) of (layer, expert).
  std::function<std::pair<double, double>(uint32_t layer, uint32_t expert)> trust = {};
  // Experts per write transaction (bounds the memory of large models).
  uint32_t experts_per_commit = 16;
};

inline std::vector<std::byte> TestExpertPayload(uint32_t layer, uint32_t expert, uint64_t size) {
  std::vector<std::byte> out(size);
  std::mt19937_64 rng((static_cast<uint64_t>(layer) << 32 | expert) * 0x9E3779B97F4A7C15ull + size);
  for (uint64_t i = 0; i < size; i += 8) {
    uint64_t v = rng();
    for (uint64_t j = 0; j < 8 && i + j < size; ++j) out[i + j] = static_cast<std::byte>(v >> (8 * j));
  }
  return out;
}

inline Status WriteTestModel(Store& store, const TestModelSpec& spec) {
  ModelInfo model;
  model.name = spec.name;
  model.arch = "test";
  model.num_layers = spec.layers;
  model.experts_per_layer = spec.experts;
  model.top_k = spec.top_k;
  model.complete = true;
  std::unique_ptr<WriteTxn> txn;
  uint32_t in_txn = 0;
  for (uint32_t l = 0; l < spec.layers; ++l) {
    for (uint32_t e = 0; e < spec.experts; ++e) {
      if (spec.missing.count({l, e}) > 0) continue;
      if (!txn) {
        ES_ASSIGN_OR_RETURN(txn, store.BeginWrite());
      }
      const uint64_t size = spec.payload_bytes(l, e);
      std::vector<std::byte> payload = TestExpertPayload(l, e, size);
      const std::string key = ExpertKey(spec.name, l, e);
      ES_ASSIGN_OR_RETURN(Extent extent, txn->AppendRecord(RecordKind::kExpert, key, payload));
      ExpertInfo info;
      info.layer = l;
      info.expert = e;
      info.extent = extent;
      const uint64_t third = size / 3;
      const char* roles[] = {"gate", "up", "down"};
      for (int r = 0; r < 3; ++r) {
        ProjectionInfo p;
        p.role = roles[r];
        p.source_name = "layers." + std::to_string(l) + ".experts." + std::to_string(e) + "." + roles[r];
        p.dtype = DType::kU8;
        p.offset = third * r;
        p.length = r == 2 ? size - 2 * third : third;
        p.shape = {p.length};
        info.projections.push_back(p);
      }
      txn->batch().Put(Cf::kExperts, key, EncodeExpert(info));
      if (spec.trust) {
        TrustInfo t;
        std::tie(t.convergence_rate, t.stability) = spec.trust(l, e);
        txn->batch().Put(Cf::kTrust, key, EncodeTrust(t));
      }
      model.num_experts += 1;
      model.total_bytes += size;
      if (++in_txn == spec.experts_per_commit) {
        ES_RETURN_IF_ERROR(txn->Commit());
        txn.reset();
        in_txn = 0;
      }
    }
  }
  if (!txn) {
    ES_ASSIGN_OR_RETURN(txn, store.BeginWrite());
  }
  txn->batch().Put(Cf::kModels, ModelKey(spec.name), EncodeModel(model));
  return txn->Commit();
}

}  // namespace es::testing
