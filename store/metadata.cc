// Derived expert metadata: trust, stability, profiles, and the rest state.
#include "store/metadata.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <set>
#include <sstream>

#include "store/store.h"

namespace es {

namespace {

constexpr double kBytesPerMiB = 1024.0 * 1024.0;

using ExpertPair = std::pair<uint32_t, uint32_t>;

}  // namespace

Result<std::vector<double>> ParseWeightList(std::string_view text, size_t count, std::string_view what) {
  const Status bad = Status::InvalidArgument(std::string(what) + ", got '" + std::string(text) + "'");
  std::vector<double> v;
  std::stringstream ss{std::string(text)};
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    double d = std::strtod(item.c_str(), &end);
    if (item.empty() || end != item.c_str() + item.size() || !std::isfinite(d) || d < 0) return bad;
    v.push_back(d);
  }
  if (v.size() != count) return bad;
  return v;
}

Result<TrustScoreWeights> ParseTrustScoreWeights(std::string_view text) {
  constexpr size_t kComponents = 3;
  ES_ASSIGN_OR_RETURN(std::vector<double> v,
                      ParseWeightList(text, kComponents, "trust weights must be three non-negative numbers c,s,e"));
  if (v[0] + v[1] + v[2] <= 0) {
    return Status::InvalidArgument("trust weights must be three non-negative numbers c,s,e, not all zero, got '" +
                                   std::string(text) + "'");
  }
  return TrustScoreWeights{v[0], v[1], v[2]};
}

double CombineTrust(double convergence_rate, double stability, double efficiency, const TrustScoreWeights& w) {
  double total = w.convergence + w.stability + w.efficiency;
  if (!(total > 0)) return 0;
  auto unit = [](double x) { return std::isfinite(x) ? std::clamp(x, 0.0, 1.0) : 0.0; };
  double t = (w.convergence * unit(convergence_rate) + w.stability * unit(stability) + w.efficiency * unit(efficiency)) /
             total;
  return std::clamp(t, 0.0, 1.0);
}

double StabilityFromMoments(uint64_t activations, double weight_sum, double weight_sq_sum) {
  if (activations < kMinStabilityActivations || !(weight_sum > 0)) return 0;
  double n = static_cast<double>(activations);
  double mean = weight_sum / n;
  double var = std::max(0.0, weight_sq_sum / n - mean * mean);
  double cv = std::sqrt(var) / mean;
  return std::isfinite(cv) ? std::clamp(1.0 - cv, 0.0, 1.0) : 0.0;
}

std::vector<std::pair<ExpertPair, TrustInfo>> TrustFromMeasurements(const std::vector<ExpertMeasurement>& m,
                                                                    const TrustScoreWeights& weights, uint64_t tokens,
                                                                    uint64_t now_unix) {
  double reference = 0;
  bool any_well_sampled = false;
  for (const auto& x : m) any_well_sampled = any_well_sampled || x.samples >= kMinReferenceSamples;
  for (const auto& x : m) {
    if (x.samples == 0 || (any_well_sampled && x.samples < kMinReferenceSamples)) continue;
    reference = std::max(reference, x.mean_increase);
  }
  std::map<uint32_t, double> best_per_mib;  // per layer
  auto per_mib = [](const ExpertMeasurement& x) {
    double mib = static_cast<double>(x.payload_bytes) / kBytesPerMiB;
    return x.samples > 0 && mib > 0 ? std::max(0.0, x.mean_increase) / mib : 0.0;
  };
  for (const auto& x : m) best_per_mib[x.layer] = std::max(best_per_mib[x.layer], per_mib(x));
  std::vector<std::pair<ExpertPair, TrustInfo>> out;
  out.reserve(m.size());
  for (const auto& x : m) {
    TrustInfo t;
    t.raw_contribution = x.samples > 0 ? x.mean_increase : 0;
    t.convergence_rate = reference > 0 ? std::clamp(t.raw_contribution / reference, 0.0, 1.0) : 0.0;
    t.stability = StabilityFromMoments(x.activations, x.weight_sum, x.weight_sq_sum);
    double best = best_per_mib[x.layer];
    t.efficiency = best > 0 ? std::clamp(per_mib(x) / best, 0.0, 1.0) : 0.0;
    t.trust = CombineTrust(t.convergence_rate, t.stability, t.efficiency, weights);
    t.calibration_tokens = tokens;
    t.updated_unix = now_unix;
    t.contribution_stderr = x.samples > 1 ? x.increase_stderr : 0;
    t.ablations = x.samples;
    out.push_back({{x.layer, x.expert}, t});
  }
  return out;
}

std::map<ExpertPair, ProfileInfo> ComputeProfiles(const std::vector<DomainActivations>& activations,
                                                  const std::map<ExpertPair, std::vector<CoActivation>>& coactivations,
                                                  size_t top_coactivated, uint64_t now_unix) {
  // Per layer: activations per domain and in all; per expert: per domain.
  std::map<uint32_t, std::map<std::string, uint64_t>> layer_domain;
  std::map<ExpertPair, std::map<std::string, uint64_t>> expert_domain;
  for (const auto& a : activations) {
    if (a.activations == 0) continue;
    layer_domain[a.layer][a.domain] += a.activations;
    expert_domain[{a.layer, a.expert}][a.domain] += a.activations;
  }
  std::map<ExpertPair, ProfileInfo> out;
  for (const auto& [id, by_domain] : expert_domain) {
    const auto& layer_totals = layer_domain[id.first];
    uint64_t layer_all = 0, expert_all = 0;
    for (const auto& [d, n] : layer_totals) layer_all += n;
    for (const auto& [d, n] : by_domain) expert_all += n;
    ProfileInfo p;
    p.updated_unix = now_unix;
    for (const auto& [domain, layer_n] : layer_totals) {
      DomainShare s;
      s.domain = domain;
      auto it = by_domain.find(domain);
      s.activations = it == by_domain.end() ? 0 : it->second;
      s.share = static_cast<double>(s.activations) / static_cast<double>(expert_all);
      double p_domain = static_cast<double>(layer_n) / static_cast<double>(layer_all);
      s.lift = p_domain > 0 ? s.share / p_domain : 0;
      p.domains.push_back(std::move(s));
    }
    const DomainShare* best = nullptr;
    for (const auto& s : p.domains) {
      if (best == nullptr || s.lift > best->lift || (s.lift == best->lift && s.share > best->share)) best = &s;
    }
    if (best != nullptr) p.primary_domain = best->domain;
    auto co = coactivations.find(id);
    if (co != coactivations.end()) {
      p.top_coactivated = co->second;
      std::stable_sort(p.top_coactivated.begin(), p.top_coactivated.end(),
                       [](const CoActivation& a, const CoActivation& b) { return a.count > b.count; });
      if (p.top_coactivated.size() > top_coactivated) p.top_coactivated.resize(top_coactivated);
    }
    out[id] = std::move(p);
  }
  return out;
}

namespace {

// The usage records under `prefix` (a model's or one layer's).
Result<ModelUsage> LoadUsage(const Catalog& catalog, const std::string& prefix) {
  ModelUsage u;
  Status bad;
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kUsage, prefix, [&](std::string_view key, std::string_view value) {
    auto parts = ParseUsageKey(key);
    auto counts = parts.ok() ? DecodeUsage(value) : Result<UsageCounts>(parts.status());
    if (!counts.ok()) {
      bad = counts.status();
      return false;
    }
    if (parts->domain.empty()) {
      u.totals[{parts->id.layer, parts->id.expert}] = std::move(counts).value();
    } else {
      u.domains.push_back({parts->id.layer, parts->id.expert, parts->domain, counts->activation_count});
    }
    return true;
  }));
  ES_RETURN_IF_ERROR(bad);
  return u;
}

}  // namespace

Result<ModelUsage> LoadModelUsage(const Catalog& catalog, const std::string& model) {
  return LoadUsage(catalog, ModelPrefix(model));
}

Result<std::vector<ExpertRow>> LoadExpertRows(const Catalog& catalog, const std::string& prefix) {
  ES_ASSIGN_OR_RETURN(auto experts, LoadExpertRecords<ExpertInfo>(catalog, Cf::kExperts, prefix, DecodeExpert));
  ES_ASSIGN_OR_RETURN(auto trust, LoadExpertRecords<TrustInfo>(catalog, Cf::kTrust, prefix, DecodeTrust));
  ES_ASSIGN_OR_RETURN(ModelUsage usage, LoadUsage(catalog, prefix));
  std::vector<ExpertRow> rows;
  rows.reserve(experts.size());
  for (auto& [id, e] : experts) {
    ExpertRow row{std::move(e), std::nullopt, UsageCounts{}};
    if (auto t = trust.find(id); t != trust.end()) row.trust = t->second;
    if (auto u = usage.totals.find(id); u != usage.totals.end()) row.usage = u->second;
    rows.push_back(std::move(row));
  }
  return rows;
}


Result<ModelInfo> LoadModelInfo(const Catalog& catalog, const std::string& name) {
  auto v = catalog.Get(Cf::kModels, ModelKey(name));
  if (!v.ok()) return v.status().IsNotFound() ? Status::NotFound("no model '" + name + "' in the store") : v.status();
  return DecodeModel(*v);
}

Result<std::map<ExpertPair, TrustInfo>> LoadModelTrust(const Catalog& catalog, const std::string& model) {
  return LoadExpertRecords<TrustInfo>(catalog, Cf::kTrust, ModelPrefix(model), DecodeTrust);
}

Result<std::map<ExpertPair, ProfileInfo>> LoadModelProfiles(const Catalog& catalog, const std::string& model) {
  return LoadExpertRecords<ProfileInfo>(catalog, Cf::kProfiles, ModelPrefix(model), DecodeProfile);
}

Result<std::vector<RankKey>> ParseRankOrder(std::string_view text) {
  std::vector<RankKey> keys;
  std::stringstream ss{std::string(text)};
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item == "lift") {
      keys.push_back(RankKey::kLift);
    } else if (item == "trust") {
      keys.push_back(RankKey::kTrust);
    } else if (item == "activations") {
      keys.push_back(RankKey::kActivations);
    } else {
      return Status::InvalidArgument("order takes lift, trust and activations (comma-separated), not '" + item + "'");
    }
  }
  if (keys.empty()) return Status::InvalidArgument("the order is empty");
  return keys;
}

Result<ModelMetadata> LoadModelMetadata(const Catalog& catalog, const std::string& model, const std::string& prefix) {
  ModelMetadata m;
  m.model = model;
  ES_ASSIGN_OR_RETURN(m.profiles, LoadExpertRecords<ProfileInfo>(catalog, Cf::kProfiles, prefix, DecodeProfile));
  ES_ASSIGN_OR_RETURN(m.trust, LoadExpertRecords<TrustInfo>(catalog, Cf::kTrust, prefix, DecodeTrust));
  ES_ASSIGN_OR_RETURN(m.usage, LoadUsage(catalog, prefix));
  Status bad;
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kExperts, prefix, [&](std::string_view key, std::string_view) {
    auto id = ParseExpertKey(key);
    if (!id.ok()) {
      bad = id.status();
      return false;
    }
    m.experts.emplace_back(id->layer, id->expert);
    return true;
  }));
  ES_RETURN_IF_ERROR(bad);
  m.records.reserve(m.experts.size());
  for (const ExpertPair& p : m.experts) {
    ModelMetadata::Records r;
    if (auto it = m.profiles.find(p); it != m.profiles.end()) r.profile = &it->second;
    if (auto it = m.trust.find(p); it != m.trust.end()) r.trust = &it->second;
    if (auto it = m.usage.totals.find(p); it != m.usage.totals.end()) r.usage = &it->second;
    m.records.push_back(r);
  }
  for (const auto& [id, p] : m.profiles) {
    for (const auto& d : p.domains) {
      m.domains.insert(d.domain);
      m.layer_domains[id.first].insert(d.domain);
    }
  }
  return m;
}

namespace {

// Whether `a` ranks before `b` by `order` (highest first); uncalibrated experts rank after every calibrated one by
// trust (trust lies in [0, 1]).
bool RanksBefore(const ExpertQueryRow& a, const ExpertQueryRow& b, const std::vector<RankKey>& order) {
  constexpr double kNoTrust = -1;
  auto value = [](const ExpertQueryRow& r, RankKey k) {
    switch (k) {
      case RankKey::kLift: return r.lift;
      case RankKey::kTrust: return r.has_trust ? r.trust : kNoTrust;
      case RankKey::kActivations: return static_cast<double>(r.activations);
    }
    return 0.0;
  };
  for (RankKey k : order) {
    const double x = value(a, k), y = value(b, k);
    if (x != y) return x > y;
  }
  return false;
}

}  // namespace

Result<std::vector<ExpertQueryRow>> QueryExperts(const Catalog& catalog, const std::string& model,
                                                 const ExpertQuery& query) {
  // Only the records of the layer asked for: the query command runs this once.
  const std::string prefix = query.has_layer ? LayerPrefix(model, query.layer) : ModelPrefix(model);
  ES_ASSIGN_OR_RETURN(const ModelMetadata metadata, LoadModelMetadata(catalog, model, prefix));
  return QueryExperts(metadata, query);
}

Result<std::vector<ExpertQueryRow>> QueryExperts(const ModelMetadata& metadata, const ExpertQuery& query) {
  const std::string& model = metadata.model;
  if (query.top == 0 || query.top > kMaxQueryTop) {
    return Status::InvalidArgument("`top` must be between 1 and " + std::to_string(kMaxQueryTop));
  }
  ExpertQuery q = query;
  if (!q.domain.empty()) {
    // The domain as the profiles spell it: users type "Code" for "code".
    auto lower = [](std::string s) {
      for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return s;
    };
    static const std::set<std::string> kNone;
    const auto layer = metadata.layer_domains.find(q.layer);
    const std::set<std::string>& known =
        !q.has_layer ? metadata.domains : layer != metadata.layer_domains.end() ? layer->second : kNone;
    auto match = std::find_if(known.begin(), known.end(),
                              [&](const std::string& d) { return lower(d) == lower(q.domain); });
    if (match == known.end()) {
      const std::string where = "model '" + model + "'" +
                                (q.has_layer ? " layer " + std::to_string(q.layer) : std::string());
      if (known.empty()) return Status::NotFound(where + " has no profiles yet (run profile first)");
      std::string names;
      for (const std::string& d : known) names += (names.empty() ? "" : ", ") + d;
      return Status::NotFound("no profile of " + where + " knows domain '" + q.domain + "'; its domains are " + names);
    }
    q.domain = *match;
  }
  std::vector<ExpertQueryRow> rows;
  for (size_t i = 0; i < metadata.experts.size(); ++i) {
    const ExpertPair& p = metadata.experts[i];
    if (query.has_layer && p.first != query.layer) continue;
    const ModelMetadata::Records& rec = metadata.records[i];
    ExpertQueryRow r;
    r.layer = p.first;
    r.expert = p.second;
    if (rec.trust != nullptr) {
      r.has_trust = true;
      r.trust = rec.trust->trust;
    }
    if (rec.usage != nullptr) r.activations = rec.usage->activation_count;
    if (rec.profile != nullptr) {
      const std::string& want = q.domain.empty() ? rec.profile->primary_domain : q.domain;
      for (const auto& d : rec.profile->domains) {
        if (d.domain != want) continue;
        r.domain = d.domain;
        r.lift = d.lift;
        r.share = d.share;
        r.domain_activations = d.activations;
      }
    }
    if (!q.domain.empty()) {
      r.domain = q.domain;
      if (r.domain_activations < q.min_activations) continue;
    }
    rows.push_back(std::move(r));
  }
  std::stable_sort(rows.begin(), rows.end(), [&](const ExpertQueryRow& a, const ExpertQueryRow& b) {
    return RanksBefore(a, b, q.order);
  });
  if (rows.size() > q.top) rows.resize(q.top);
  return rows;
}

Result<std::vector<ModelQueryRow>> QueryExpertsAcrossModels(const Catalog& catalog, const std::vector<std::string>& models,
                                                            const ExpertQuery& query) {
  if (query.domain.empty()) return Status::InvalidArgument("a query over every model needs a domain");
  std::vector<ModelQueryRow> rows;
  std::set<std::string> known;
  bool any = false;
  for (const std::string& model : models) {
    ES_ASSIGN_OR_RETURN(const ModelMetadata metadata, LoadModelMetadata(catalog, model, ModelPrefix(model)));
    auto ranked = QueryExperts(metadata, query);
    if (!ranked.ok()) {
      if (!ranked.status().IsNotFound()) return ranked.status();
      known.insert(metadata.domains.begin(), metadata.domains.end());
      continue;  // this model's profiles do not know the domain
    }
    any = true;
    for (ExpertQueryRow& r : *ranked) rows.push_back({model, std::move(r)});
  }
  if (!any) {
    std::string names;
    for (const std::string& d : known) names += (names.empty() ? "" : ", ") + d;
    return Status::NotFound("no model's profiles know domain '" + query.domain + "'" +
                            (names.empty() ? std::string(" (no model has profiles yet)") : "; they know " + names));
  }
  std::stable_sort(rows.begin(), rows.end(), [&](const ModelQueryRow& a, const ModelQueryRow& b) {
    return RanksBefore(a.row, b.row, query.order);
  });
  if (rows.size() > query.top) rows.resize(query.top);
  return rows;
}

Result<RestReport> Rest(Store& store, const std::string& model, const TrustScoreWeights& weights, size_t top_coactivated,
                        uint64_t now_unix) {
  if (store.read_only()) return Status::NotSupported("rest rewrites and compacts the catalog: it needs the writer");
  RestReport report;
  ES_ASSIGN_OR_RETURN(ModelUsage usage, LoadModelUsage(store.catalog(), model));
  CatalogBatch batch;
  if (!usage.domains.empty()) {
    std::map<ExpertPair, std::vector<CoActivation>> co;
    for (const auto& [id, u] : usage.totals) co[id] = u.coactivations;
    for (const auto& [id, p] : ComputeProfiles(usage.domains, co, top_coactivated, now_unix)) {
      batch.Put(Cf::kProfiles, ExpertKey(model, id.first, id.second), EncodeProfile(p));
      ++report.profiles;
    }
  }
  ES_ASSIGN_OR_RETURN(auto trust, LoadModelTrust(store.catalog(), model));
  for (auto& [id, t] : trust) {
    auto u = usage.totals.find(id);
    if (u != usage.totals.end() && u->second.activation_count >= kMinStabilityActivations) {
      t.stability = StabilityFromMoments(u->second.activation_count, u->second.gate_mass, u->second.gate_mass_sq);
    }
    t.trust = CombineTrust(t.convergence_rate, t.stability, t.efficiency, weights);
    t.updated_unix = now_unix;
    batch.Put(Cf::kTrust, ExpertKey(model, id.first, id.second), EncodeTrust(t));
    ++report.trust_updated;
  }
  ES_RETURN_IF_ERROR(store.catalog().Write(batch, /*sync=*/true));
  auto t0 = std::chrono::steady_clock::now();
  ES_RETURN_IF_ERROR(store.catalog().Compact());
  report.compact_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace es
