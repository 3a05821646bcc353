// Profiling and trust calibration over a ModelRuntime.
#include "compute/runtime/metadata_jobs.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "compute/generator.h"
#include "store/base/file_system.h"
#include "store/base/json.h"

namespace es {

namespace {

using ExpertPair = std::pair<uint32_t, uint32_t>;

// The domain counts that profiles are built from: as merged in the catalog (the writer), or the snapshot this
// reader opened plus its own counts, which sit in the journal until the writer merges them (`rest` recomputes
// exactly from the merged counts).
Result<ModelUsage> DomainEvidence(Store& store, const std::string& model, const UsageRecorder& recorder,
                                  uint32_t num_experts) {
  ES_ASSIGN_OR_RETURN(ModelUsage usage, LoadModelUsage(store.catalog(), model));
  if (!store.journaling()) return usage;
  for (const auto& [domain, counts] : recorder.domain_activations()) {
    for (size_t key = 0; key < counts.size(); ++key) {
      if (counts[key] == 0) continue;
      usage.domains.push_back(
          {static_cast<uint32_t>(key / num_experts), static_cast<uint32_t>(key % num_experts), domain, counts[key]});
    }
  }
  return usage;
}

Status DropDomainCounts(Store& store, const std::string& model) {
  if (store.journaling()) {
    return Status::InvalidArgument("`fresh` deletes earlier domain counts and needs the writer; another process holds "
                                   "the store");
  }
  ES_ASSIGN_OR_RETURN(ModelUsage old, LoadModelUsage(store.catalog(), model));
  CatalogBatch drop;
  for (const auto& d : old.domains) drop.Delete(Cf::kUsage, DomainUsageKey(model, d.layer, d.expert, d.domain));
  return store.catalog().Write(drop);
}

// Each expert's payload size, for efficiency (per MiB).
Result<std::map<ExpertPair, uint64_t>> ExpertSizes(const Catalog& catalog, const std::string& model) {
  ES_ASSIGN_OR_RETURN(auto experts, LoadExpertRecords<ExpertInfo>(catalog, Cf::kExperts, ModelPrefix(model), DecodeExpert));
  std::map<ExpertPair, uint64_t> bytes;
  for (const auto& [id, e] : experts) bytes[id] = e.extent.payload_length;
  return bytes;
}

}  // namespace

Result<std::vector<LabelledText>> ReadLabelledTexts(const std::string& path, bool need_domain) {
  ES_ASSIGN_OR_RETURN(std::string body, ReadFile(*DefaultFileSystem(), path));
  std::vector<LabelledText> out;
  std::stringstream ss(body);
  std::string line;
  size_t number = 0;
  while (std::getline(ss, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    auto doc = ParseJson(line);
    if (!doc.ok()) return Status::InvalidArgument(where + ": " + doc.status().message());
    const JsonValue* text = doc->Find("text");
    const JsonValue* domain = doc->Find("domain");
    if (text == nullptr || !text->is_string()) return Status::InvalidArgument(where + ": needs a string \"text\"");
    LabelledText item{"", text->string_value()};
    if (domain != nullptr) {
      if (!domain->is_string()) return Status::InvalidArgument(where + ": \"domain\" must be a string");
      item.domain = domain->string_value();
      ES_RETURN_IF_ERROR(ValidateDomainName(item.domain).WithContext(where));
    } else if (need_domain) {
      return Status::InvalidArgument(where + ": needs a string \"domain\"");
    }
    out.push_back(std::move(item));
  }
  if (out.empty()) return Status::InvalidArgument(path + " holds no lines");
  return out;
}

Result<std::vector<std::string>> ReadTexts(const std::string& path) {
  std::vector<std::string> texts;
  if (path.ends_with(".jsonl")) {
    ES_ASSIGN_OR_RETURN(auto lines, ReadLabelledTexts(path, /*need_domain=*/false));
    for (auto& l : lines) texts.push_back(std::move(l.text));
  } else {
    ES_ASSIGN_OR_RETURN(std::string text, ReadFile(*DefaultFileSystem(), path));
    texts.push_back(std::move(text));
  }
  return texts;
}

Result<ProfilingResult> ProfileModel(ModelRuntime& rt, Store& store, const std::string& model,
                                     std::span<const LabelledText> prompts, const ProfilingOptions& options) {
  UsageRecorder* recorder = rt.recorder();
  if (recorder == nullptr) return Status::InvalidArgument("profiling works by recording usage, and this runtime does not");
  if (options.window < 2) return Status::InvalidArgument("`window` must be at least 2");
  if (options.fresh) ES_RETURN_IF_ERROR(DropDomainCounts(store, model));
  // The predicting token sat at KV position (index - 1) % window (EvaluateNll's windows).
  const size_t window = options.window;
  std::function<void(size_t, bool)> on_position = [recorder, window](size_t index, bool correct) {
    recorder->RecordOutcome((index - 1) % window, correct);
  };
  ProfilingResult result;
  result.prompts = prompts.size();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ES_RETURN_IF_ERROR(recorder->SetDomain(prompts[i].domain));
    result.domains.insert(prompts[i].domain);
    ES_ASSIGN_OR_RETURN(auto ids, EncodeText(rt.tokenizer(), prompts[i].text));
    if (ids.size() < 2) continue;
    ES_ASSIGN_OR_RETURN(EvalResult r, EvaluateNll(rt.model(), rt.experts(), ids, window, rt.forward_options(), on_position));
    result.tokens += r.tokens;
    if (options.progress) options.progress(i + 1, prompts.size());
  }
  ES_RETURN_IF_ERROR(rt.FinishRecording());

  ES_ASSIGN_OR_RETURN(ModelUsage usage, DomainEvidence(store, model, *recorder, rt.model().config().num_experts));
  std::map<ExpertPair, std::vector<CoActivation>> co;
  for (const auto& [id, u] : usage.totals) co[id] = u.coactivations;
  auto profiles = ComputeProfiles(usage.domains, co, options.top_coactivated, options.now_unix);
  CatalogBatch batch;
  for (const auto& [id, p] : profiles) batch.Put(Cf::kProfiles, ExpertKey(model, id.first, id.second), EncodeProfile(p));
  ES_RETURN_IF_ERROR(store.WriteMetadata(batch));
  result.profiles = profiles.size();
  return result;
}

Result<std::vector<std::vector<int32_t>>> EncodeTexts(const Tokenizer& tokenizer, std::span<const std::string> texts,
                                                      size_t min_tokens) {
  std::vector<std::vector<int32_t>> sequences;
  for (const auto& t : texts) {
    ES_ASSIGN_OR_RETURN(auto ids, EncodeText(tokenizer, t));
    if (ids.size() >= min_tokens) sequences.push_back(std::move(ids));
  }
  return sequences;
}

Result<TrustCalibrationResult> CalibrateTrust(ModelRuntime& rt, Store& store, const std::string& model,
                                              std::span<const std::string> texts, CalibrationOptions options,
                                              const TrustScoreWeights& weights, uint64_t now_unix) {
  options.top_k = rt.forward_options().top_k;
  options.skip_missing_experts = rt.forward_options().skip_missing_experts;
  ES_ASSIGN_OR_RETURN(auto sequences, EncodeTexts(rt.tokenizer(), texts, 2));
  if (sequences.empty()) return Status::InvalidArgument("none of the texts holds the 2 tokens calibration needs");
  TrustCalibrationResult result;
  ES_ASSIGN_OR_RETURN(result.run, Calibrate(rt.model(), rt.experts(), sequences, options));
  const CalibrationResult& run = result.run;

  ES_ASSIGN_OR_RETURN(auto bytes, ExpertSizes(store.catalog(), model));
  std::vector<ExpertMeasurement> measurements;
  for (uint32_t l = 0; l < run.layers; ++l) {
    for (uint32_t e = 0; e < run.experts_per_layer; ++e) {
      auto it = bytes.find({l, e});
      if (it == bytes.end()) continue;  // absent from a partial checkpoint
      const ExpertContribution& c = run.experts[static_cast<size_t>(l) * run.experts_per_layer + e];
      measurements.push_back({l, e, c.samples, c.mean_increase(), c.activations, c.weight_sum, c.weight_sq_sum,
                              it->second, c.increase_stderr()});
    }
  }
  auto records = TrustFromMeasurements(measurements, weights, run.tokens, now_unix);
  CatalogBatch batch;
  for (const auto& [id, t] : records) {
    batch.Put(Cf::kTrust, ExpertKey(model, id.first, id.second), EncodeTrust(t));
    result.mean_trust += t.trust;
  }
  if (!records.empty()) result.mean_trust /= static_cast<double>(records.size());
  ES_RETURN_IF_ERROR(store.WriteMetadata(batch));
  result.records = records.size();
  result.mean_nll = run.tokens ? run.clean_nll / static_cast<double>(run.tokens) : 0;
  result.stability = RankStabilityOf(run);
  return result;
}

namespace {

// Ranks (0 = largest), ties sharing their mean rank.
std::vector<double> Ranks(const std::vector<double>& values) {
  std::vector<size_t> order(values.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] > values[b]; });
  std::vector<double> ranks(values.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && values[order[j + 1]] == values[order[i]]) ++j;
    for (size_t k = i; k <= j; ++k) ranks[order[k]] = 0.5 * static_cast<double>(i + j);
    i = j + 1;
  }
  return ranks;
}

double Pearson(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += x[i] / n, my += y[i] / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0;
}

constexpr size_t kTopShared = 5;
constexpr size_t kMinComparedExperts = 3;

}  // namespace

RankStability RankStabilityOf(const CalibrationResult& run) {
  RankStability s;
  for (uint32_t l = 0; l < run.layers; ++l) {
    std::vector<double> a, b;
    for (uint32_t e = 0; e < run.experts_per_layer; ++e) {
      const ExpertContribution& c = run.experts[static_cast<size_t>(l) * run.experts_per_layer + e];
      if (c.half_samples[0] == 0 || c.half_samples[1] == 0) continue;
      a.push_back(c.half_sum[0] / static_cast<double>(c.half_samples[0]));
      b.push_back(c.half_sum[1] / static_cast<double>(c.half_samples[1]));
    }
    if (a.size() < kMinComparedExperts) continue;
    const std::vector<double> ra = Ranks(a), rb = Ranks(b);
    s.spearman += Pearson(ra, rb);
    const double top = static_cast<double>(std::min(kTopShared, a.size()));
    size_t shared = 0;
    for (size_t i = 0; i < ra.size(); ++i) shared += ra[i] < top && rb[i] < top;
    s.top5_overlap += static_cast<double>(shared);
    ++s.layers;
  }
  if (s.layers > 0) {
    s.spearman /= s.layers;
    s.top5_overlap /= s.layers;
  }
  return s;
}

}  // namespace es
