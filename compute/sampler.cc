// Sampler implementation: penalties on the raw logits, then temperature, top-k, top-p and min-p over the sorted
// distribution (the order transformers applies its logits processors and warpers in).
#include "compute/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "store/base/json.h"

namespace es {

SamplerOptions SamplerRequest::Over(const SamplerOptions& defaults) const {
  SamplerOptions o = defaults;
  if (temperature) o.temperature = *temperature;
  if (top_k) o.top_k = *top_k;
  if (top_p) o.top_p = *top_p;
  if (min_p) o.min_p = *min_p;
  if (repetition_penalty) o.repetition_penalty = *repetition_penalty;
  if (presence_penalty) o.presence_penalty = *presence_penalty;
  if (frequency_penalty) o.frequency_penalty = *frequency_penalty;
  if (penalty_last_n) o.penalty_last_n = *penalty_last_n;
  if (seed) o.seed = *seed;
  return o;
}

Result<SamplerOptions> SamplerDefaultsFromGenerationConfig(std::string_view json) {
  SamplerOptions o;
  if (json.empty()) return o;
  ES_ASSIGN_OR_RETURN(JsonValue root, ParseJson(json));
  if (!root.is_object()) return Status::InvalidArgument("generation_config.json is not a JSON object");
  auto number = [&](std::string_view key) -> Result<std::optional<double>> {
    const JsonValue* v = root.Find(key);
    if (v == nullptr || v->is_null()) return std::optional<double>();
    if (!v->is_number()) return Status::InvalidArgument("generation_config.json: " + std::string(key) + " is not a number");
    ES_ASSIGN_OR_RETURN(double d, v->AsDouble());
    return std::optional<double>(d);
  };
  const JsonValue* do_sample = root.Find("do_sample");
  const bool sample = do_sample != nullptr && do_sample->is_bool() && do_sample->bool_value();
  ES_ASSIGN_OR_RETURN(auto repetition, number("repetition_penalty"));
  if (repetition) o.repetition_penalty = static_cast<float>(*repetition);
  if (sample) {
    ES_ASSIGN_OR_RETURN(auto temperature, number("temperature"));
    ES_ASSIGN_OR_RETURN(auto top_p, number("top_p"));
    ES_ASSIGN_OR_RETURN(auto top_k, number("top_k"));
    ES_ASSIGN_OR_RETURN(auto min_p, number("min_p"));
    o.temperature = temperature ? static_cast<float>(*temperature) : 1.0f;
    if (top_p) o.top_p = static_cast<float>(*top_p);
    if (top_k) o.top_k = *top_k > 0 ? static_cast<uint32_t>(*top_k) : 0;
    if (min_p) o.min_p = static_cast<float>(*min_p);
  }
  auto checked = Sampler::Create(o);
  if (!checked.ok()) return checked.status().WithContext("generation_config.json");
  return o;
}

Result<Sampler> Sampler::Create(const SamplerOptions& o) {
  if (!(o.temperature >= 0.0f)) return Status::InvalidArgument("`temperature` must be >= 0");
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) return Status::InvalidArgument("`top_p` must be in (0, 1]");
  if (!(o.min_p >= 0.0f && o.min_p <= 1.0f)) return Status::InvalidArgument("`min_p` must be in [0, 1]");
  if (!(o.repetition_penalty > 0.0f && o.repetition_penalty <= kMaxRepetitionPenalty)) {
    return Status::InvalidArgument("`repetition_penalty` must be in (0, " +
                                   std::to_string(static_cast<int>(kMaxRepetitionPenalty)) + "]");
  }
  for (auto [name, v] : {std::pair{"presence_penalty", o.presence_penalty}, {"frequency_penalty", o.frequency_penalty}}) {
    if (!(std::fabs(v) <= kMaxAbsPenalty)) {
      return Status::InvalidArgument("`" + std::string(name) + "` must be in [-2, 2]");
    }
  }
  return Sampler(o);
}

bool Sampler::penalized() const {
  return options_.penalty_last_n > 0 && (options_.repetition_penalty != 1.0f || options_.presence_penalty != 0.0f ||
                                         options_.frequency_penalty != 0.0f);
}

void Sampler::Accept(int32_t token) {
  if (!penalized()) return;
  window_.push_back(token);
  while (window_.size() > options_.penalty_last_n) window_.pop_front();
}

int32_t Sampler::Sample(std::span<const float> raw) {
  if (raw.empty()) return -1;
  std::span<const float> logits = raw;
  if (penalized() && !window_.empty()) {
    penalized_.assign(raw.begin(), raw.end());
    counts_.clear();
    for (int32_t t : window_) counts_.emplace_back(t, 1);
    std::sort(counts_.begin(), counts_.end());
    for (size_t i = 0; i < counts_.size();) {
      const int32_t id = counts_[i].first;
      uint32_t n = 0;
      while (i < counts_.size() && counts_[i].first == id) n += counts_[i++].second;
      if (id < 0 || static_cast<size_t>(id) >= penalized_.size()) continue;
      float& l = penalized_[static_cast<size_t>(id)];
      l = l > 0 ? l / options_.repetition_penalty : l * options_.repetition_penalty;
      l -= options_.presence_penalty + options_.frequency_penalty * static_cast<float>(n);
    }
    logits = penalized_;
  }
  if (options_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    candidates_.emplace_back(logits[i] / options_.temperature, static_cast<int32_t>(i));
  }
  auto by_logit = [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; };
  size_t keep = candidates_.size();
  if (options_.top_k > 0 && options_.top_k < keep) {
    keep = options_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<ptrdiff_t>(keep), candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);
  float mx = candidates_.front().first;
  double sum = 0;
  std::vector<double> p(keep);
  for (size_t i = 0; i < keep; ++i) sum += (p[i] = std::exp(static_cast<double>(candidates_[i].first - mx)));
  // Nucleus: the smallest prefix whose probability reaches top_p (at least one token).
  size_t n = keep;
  if (options_.top_p < 1.0f) {
    double acc = 0;
    for (size_t i = 0; i < keep; ++i) {
      acc += p[i] / sum;
      if (acc >= options_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  // Min-p: tokens at least min_p times as likely as the first (p[0] = 1 before normalisation).
  if (options_.min_p > 0.0f) {
    size_t m = 1;
    while (m < n && p[m] >= static_cast<double>(options_.min_p)) ++m;
    n = m;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += p[i];
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= p[i];
    if (r <= 0) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace es
