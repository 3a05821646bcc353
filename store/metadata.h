// Derived expert metadata (docs/metadata.md): trust from its three components, stability
// from usage counters, specialization profiles (share, lift, primary domain, top co-activations) from
// domain-labelled usage, and the `rest` state that recomputes them from what was recorded and compacts the
// catalog. Pure functions over catalog records plus loaders for one model; nothing here knows about models'
// tensors or the forward pass. Thread-compatible (no shared state).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store/catalog.h"
#include "store/base/json.h"
#include "store/records.h"
#include "store/base/status.h"

namespace es {

class Store;

// ---- trust ----------------------------------------------------------------------------------------------

// trust = (c * convergence_rate + s * stability + e * efficiency) / (c + s + e).
struct TrustScoreWeights {
  double convergence = 0.5;
  double stability = 0.25;
  double efficiency = 0.25;
};
// A comma-separated list of exactly `count` finite non-negative numbers (a weights flag). InvalidArgument
// "<what>, got '<text>'" otherwise.
Result<std::vector<double>> ParseWeightList(std::string_view text, size_t count, std::string_view what);

// "c,s,e": three non-negative numbers, not all zero.
Result<TrustScoreWeights> ParseTrustScoreWeights(std::string_view text);
// The weighted mean of the components (each clamped to [0, 1]), so the result lies in [0, 1].
double CombineTrust(double convergence_rate, double stability, double efficiency, const TrustScoreWeights& weights);

// Below this many activations a coefficient of variation says nothing: stability is 0 (no evidence).
inline constexpr uint64_t kMinStabilityActivations = 2;
// 1 - std/mean of an expert's routing weight over its activations (population std), clamped to [0, 1];
// 0 with fewer than kMinStabilityActivations activations.
double StabilityFromMoments(uint64_t activations, double weight_sum, double weight_sq_sum);

// Experts measured with fewer ablations than this do not set the model's reference contribution.
inline constexpr uint64_t kMinReferenceSamples = 20;

// One expert's calibration measurements (compute/calibration.h) and its size.
struct ExpertMeasurement {
  uint32_t layer = 0;
  uint32_t expert = 0;
  uint64_t samples = 0;          // ablations
  double mean_increase = 0;      // mean NLL increase when removed, nats
  uint64_t activations = 0;      // clean-pass activations
  double weight_sum = 0;
  double weight_sq_sum = 0;
  uint64_t payload_bytes = 0;
  double increase_stderr = 0;    // the standard error of mean_increase
};

// Trust records from calibration measurements of one model:
//   raw_contribution = mean_increase (nats; may be negative: removing the expert helped);
//   convergence_rate = clamp(raw / reference, 0, 1), reference = the largest raw contribution among experts with
//                      at least kMinReferenceSamples ablations (any expert when none has that many);
//   stability        = StabilityFromMoments over the clean pass's activations;
//   efficiency       = (max(raw, 0) / payload MiB) / the largest such value in the expert's layer;
//   trust            = CombineTrust(...).
// Experts never selected get zeros. `tokens` and `now_unix` are stored as calibration_tokens / updated_unix.
std::vector<std::pair<std::pair<uint32_t, uint32_t>, TrustInfo>> TrustFromMeasurements(
    const std::vector<ExpertMeasurement>& measurements, const TrustScoreWeights& weights, uint64_t tokens,
    uint64_t now_unix);

// ---- profiles -------------------------------------------------------------------------------------------

// One expert's activations under one domain label.
struct DomainActivations {
  uint32_t layer = 0;
  uint32_t expert = 0;
  std::string domain;
  uint64_t activations = 0;
};

inline constexpr size_t kDefaultTopCoactivated = 8;

// Profiles from domain-labelled activations. Per layer L, with A(e,d) an expert's activations under domain d:
//   share(e,d) = A(e,d) / sum_d A(e,d)                       (P(d | e): where the expert's work came from)
//   lift(e,d)  = [A(e,d) / sum_e' A(e',d)] / [sum_d A(e,d) / sum_e',d A(e',d)]  = P(e | d) / P(e)
//   primary    = the domain of highest lift (ties: higher share, then name).
// Every domain seen in the layer is listed for every expert (activations 0, lift 0 where it never fired).
// `coactivations` (the usage records' co-activation lists, by (layer, expert)) give the top `top_coactivated`
// partners by count.
std::map<std::pair<uint32_t, uint32_t>, ProfileInfo> ComputeProfiles(
    const std::vector<DomainActivations>& activations,
    const std::map<std::pair<uint32_t, uint32_t>, std::vector<CoActivation>>& coactivations, size_t top_coactivated,
    uint64_t now_unix);

// ---- loading one model's records ------------------------------------------------------------------------

struct ModelUsage {
  std::map<std::pair<uint32_t, uint32_t>, UsageCounts> totals;  // plain expert keys
  std::vector<DomainActivations> domains;                       // domain-labelled keys
};
// A model's record; NotFound ("no model 'x' in the store") when there is none.
Result<ModelInfo> LoadModelInfo(const Catalog& catalog, const std::string& name);

// One per-expert metadata record (trust, profile, usage): nullopt until it was written.
template <typename T>
Result<std::optional<T>> LoadOptionalRecord(const Catalog& catalog, Cf cf, const std::string& key,
                                            Result<T> (*decode)(std::string_view)) {
  auto v = catalog.Get(cf, key);
  if (v.status().IsNotFound()) return std::optional<T>();
  if (!v.ok()) return v.status();
  ES_ASSIGN_OR_RETURN(T t, decode(*v));
  return std::optional<T>(std::move(t));
}

// Every record of column family `cf` under `prefix` (ModelPrefix or LayerPrefix) whose key is an expert key,
// decoded, by (layer, expert). Corruption from the first key or value that does not decode.
template <typename T>
Result<std::map<std::pair<uint32_t, uint32_t>, T>> LoadExpertRecords(const Catalog& catalog, Cf cf,
                                                                     const std::string& prefix,
                                                                     Result<T> (*decode)(std::string_view)) {
  std::map<std::pair<uint32_t, uint32_t>, T> out;
  Status bad;
  ES_RETURN_IF_ERROR(catalog.Scan(cf, prefix, [&](std::string_view key, std::string_view value) {
    auto id = ParseExpertKey(key);
    auto v = id.ok() ? decode(value) : Result<T>(id.status());
    if (!v.ok()) {
      bad = v.status();
      return false;
    }
    out[{id->layer, id->expert}] = std::move(v).value();
    return true;
  }));
  ES_RETURN_IF_ERROR(bad);
  return out;
}

// An expert as a list shows it: its catalog record, its trust record (nullopt before calibration) and its usage
// totals (zeros before any use).
struct ExpertRow {
  ExpertInfo expert;
  std::optional<TrustInfo> trust;
  UsageCounts usage;
};
// The experts under `prefix` (a model's or one layer's: ModelPrefix, LayerPrefix), in key order, with one ordered
// scan per column family. Per-domain usage keys (written by profiling) are not totals and are skipped.
Result<std::vector<ExpertRow>> LoadExpertRows(const Catalog& catalog, const std::string& prefix);

Result<ModelUsage> LoadModelUsage(const Catalog& catalog, const std::string& model);
Result<std::map<std::pair<uint32_t, uint32_t>, TrustInfo>> LoadModelTrust(const Catalog& catalog, const std::string& model);
Result<std::map<std::pair<uint32_t, uint32_t>, ProfileInfo>> LoadModelProfiles(const Catalog& catalog,
                                                                               const std::string& model);

// ---- queries --------------------------------------------------------------------------------------------

enum class RankKey : uint8_t { kLift, kTrust, kActivations };
// "lift,trust,activations" in any order and subset: the first key sorts first, later ones break ties.
Result<std::vector<RankKey>> ParseRankOrder(std::string_view text);

// Rows a query returns unless it says otherwise, and the most it may ask for (the CLI and HTTP alike).
inline constexpr size_t kDefaultQueryTop = 10;
inline constexpr size_t kMaxQueryTop = 100000;

struct ExpertQuery {
  std::string domain;            // rank for this domain (matched case-insensitively); empty: each expert's primary
  bool has_layer = false;        // only `layer`
  uint32_t layer = 0;
  size_t top = kDefaultQueryTop; // rows at most, in [1, kMaxQueryTop]
  std::vector<RankKey> order = {RankKey::kLift};
  uint64_t min_activations = 0;  // with a domain: skip experts with fewer activations in it
};

struct ExpertQueryRow {
  uint32_t layer = 0;
  uint32_t expert = 0;
  std::string domain;               // the domain lift and share are for ("" without a profile)
  double lift = 0;
  double share = 0;
  uint64_t domain_activations = 0;
  bool has_trust = false;           // calibrated
  double trust = 0;
  uint64_t activations = 0;         // recorded activations in all
};

// A model's experts with their profile, trust and usage records, in memory: what a query ranks. The HTTP
// service keeps one per model (api/metadata_cache.h) so that queries do not re-read the catalog.
struct ModelMetadata {
  std::string model;
  std::vector<std::pair<uint32_t, uint32_t>> experts;  // every expert of the catalog, in key order
  std::map<std::pair<uint32_t, uint32_t>, ProfileInfo> profiles;
  std::map<std::pair<uint32_t, uint32_t>, TrustInfo> trust;
  ModelUsage usage;
  // Joined once at load: per entry of `experts`, its records (null where none), and the domains the profiles
  // know, of every layer and per layer.
  struct Records {
    const ProfileInfo* profile = nullptr;
    const TrustInfo* trust = nullptr;
    const UsageCounts* usage = nullptr;
  };
  std::vector<Records> records;
  std::set<std::string> domains;
  std::map<uint32_t, std::set<std::string>> layer_domains;

  ModelMetadata() = default;
  ModelMetadata(ModelMetadata&&) = default;  // the maps' nodes, which `records` points to, move with them
  ModelMetadata& operator=(ModelMetadata&&) = default;
  ModelMetadata(const ModelMetadata&) = delete;
  ModelMetadata& operator=(const ModelMetadata&) = delete;
};
// The records of `model` under `prefix` (ModelPrefix, or LayerPrefix for one layer). Corruption from a record
// that does not decode.
Result<ModelMetadata> LoadModelMetadata(const Catalog& catalog, const std::string& model, const std::string& prefix);

// Ranks a model's experts (every expert in the catalog, of one layer or all) by the query's order, highest
// first (uncalibrated experts after calibrated ones by trust). NotFound when no profile knows the domain (the
// message lists the domains the profiles know); InvalidArgument for `top` out of range.
// The `query` command and the HTTP query endpoint share this.
Result<std::vector<ExpertQueryRow>> QueryExperts(const Catalog& catalog, const std::string& model,
                                                 const ExpertQuery& query);
// The same over records already in memory (of the whole model, or at least of the layer asked for).
Result<std::vector<ExpertQueryRow>> QueryExperts(const ModelMetadata& metadata, const ExpertQuery& query);

// One row of a query over several models: the model and its expert's row.
struct ModelQueryRow {
  std::string model;
  ExpertQueryRow row;
};
// `query` (which must name a domain) over every one of `models` whose profiles know the domain, ranked together by
// the query's order, `top` rows at most: which experts, of which models, handle the domain (models attached from a
// pool included: their metadata is in the catalog). NotFound when no model's profiles know it (the message lists
// the domains they do know).
Result<std::vector<ModelQueryRow>> QueryExpertsAcrossModels(const Catalog& catalog, const std::vector<std::string>& models,
                                                            const ExpertQuery& query);

// ---- the rest state -------------------------------------------------------------------------------------

struct RestReport {
  uint64_t profiles = 0;       // profile records rewritten from domain usage
  uint64_t trust_updated = 0;  // trust records whose stability and trust were recomputed from usage
  double compact_seconds = 0;
};

// `rest`: rewrites the model's profiles from its domain-labelled usage (when there is any; imported profiles of
// a model without local domain usage are kept), recomputes each calibrated expert's stability from all its
// recorded usage (when it has at least kMinStabilityActivations activations) and its trust with `weights`
// (convergence_rate and efficiency stay as calibration measured them), then compacts the catalog. Needs the
// writer.
Result<RestReport> Rest(Store& store, const std::string& model, const TrustScoreWeights& weights, size_t top_coactivated,
                        uint64_t now_unix);

}  // namespace es
