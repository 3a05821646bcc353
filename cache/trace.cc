// Trace parsing and writing through store/base/json.h and the FileSystem, and the synthetic generator.
#include "cache/trace.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <unordered_set>

#include "store/base/file_system.h"
#include "store/base/json.h"

namespace es {

namespace {

Status LineError(size_t line, std::string_view what) {
  return Status::InvalidArgument("trace line " + std::to_string(line) + ": " + std::string(what));
}

Result<TraceStep> ParseStep(std::string_view text, size_t line) {
  auto doc = ParseJson(text);
  if (!doc.ok()) return LineError(line, doc.status().message());
  if (!doc->is_object()) return LineError(line, "not a JSON object");
  TraceStep step;
  const JsonValue* token = doc->Find("token");
  const JsonValue* layer = doc->Find("layer");
  const JsonValue* experts = doc->Find("experts");
  if (token == nullptr || layer == nullptr || experts == nullptr) {
    return LineError(line, "needs the fields token, layer and experts");
  }
  auto t = token->AsUint64();
  if (!token->is_integer() || !t.ok()) return LineError(line, "token must be a non-negative integer");
  step.token = *t;
  auto l = layer->AsUint64();
  if (!layer->is_integer() || !l.ok() || *l > UINT32_MAX) return LineError(line, "layer must be a 32-bit unsigned integer");
  step.layer = static_cast<uint32_t>(*l);
  if (!experts->is_array() || experts->array().empty()) return LineError(line, "experts must be a non-empty array");
  std::unordered_set<uint32_t> seen;
  for (const JsonValue& e : experts->array()) {
    auto v = e.AsUint64();
    if (!e.is_integer() || !v.ok() || *v > UINT32_MAX) return LineError(line, "experts must be 32-bit unsigned integers");
    if (!seen.insert(static_cast<uint32_t>(*v)).second) {
      return LineError(line, "expert " + std::to_string(*v) + " appears twice");
    }
    step.experts.push_back(static_cast<uint32_t>(*v));
  }
  if (const JsonValue* predicted = doc->Find("predicted"); predicted != nullptr && !predicted->is_null()) {
    if (!predicted->is_array()) return LineError(line, "predicted must be an array");
    std::unordered_set<uint32_t> guessed;
    step.predicted.emplace();
    for (const JsonValue& e : predicted->array()) {
      auto v = e.AsUint64();
      if (!e.is_integer() || !v.ok() || *v > UINT32_MAX) {
        return LineError(line, "predicted must hold 32-bit unsigned integers");
      }
      if (!guessed.insert(static_cast<uint32_t>(*v)).second) {
        return LineError(line, "predicted expert " + std::to_string(*v) + " appears twice");
      }
      step.predicted->push_back(static_cast<uint32_t>(*v));
    }
  }
  if (const JsonValue* weights = doc->Find("weights"); weights != nullptr && !weights->is_null()) {
    if (!weights->is_array() || weights->array().size() != step.experts.size()) {
      return LineError(line, "weights must be an array as long as experts");
    }
    for (const JsonValue& w : weights->array()) {
      auto v = w.AsDouble();
      if (!w.is_number() || !v.ok() || !std::isfinite(*v)) return LineError(line, "weights must be finite numbers");
      step.weights.push_back(*v);
    }
  }
  return step;
}

}  // namespace

Result<std::vector<TraceStep>> ParseTrace(std::string_view text) {
  std::vector<TraceStep> steps;
  size_t line = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view s = text.substr(pos, end - pos);
    pos = end + 1;
    ++line;
    if (s.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    ES_ASSIGN_OR_RETURN(TraceStep step, ParseStep(s, line));
    steps.push_back(std::move(step));
  }
  return steps;
}

Result<std::vector<TraceStep>> ReadTrace(const std::string& path) {
  auto fs = DefaultFileSystem();
  ES_ASSIGN_OR_RETURN(auto file, fs->Open(path, OpenOptions{}));
  ES_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  std::string text(size, '\0');
  ES_RETURN_IF_ERROR(ReadFully(*file, 0, std::as_writable_bytes(std::span<char>(text.data(), text.size()))));
  auto steps = ParseTrace(text);
  if (!steps.ok()) return steps.status().WithContext(path);
  return steps;
}

std::string FormatTraceLine(const TraceStep& step) {
  JsonWriter w;
  w.BeginObject().Key("token").Uint(step.token).Key("layer").Uint(step.layer).Key("experts").BeginArray();
  for (uint32_t e : step.experts) w.Uint(e);
  w.EndArray();
  // No weights is no key: the parser holds a weights array to the length of experts, so [] would not read back.
  if (!step.weights.empty()) {
    w.Key("weights").BeginArray();
    for (double v : step.weights) w.Double(v);
    w.EndArray();
  }
  if (step.predicted) {
    w.Key("predicted").BeginArray();
    for (uint32_t e : *step.predicted) w.Uint(e);
    w.EndArray();
  }
  w.EndObject();
  return w.Take();
}

Status WriteTrace(const std::string& path, const std::vector<TraceStep>& steps) {
  std::string text;
  for (const TraceStep& s : steps) {
    text += FormatTraceLine(s);
    text += '\n';
  }
  return WriteFileAtomic(DefaultFileSystem(), path, text);
}

namespace {
// Draws of an already-taken expert tolerated before a pick falls back to the most popular free expert.
constexpr uint32_t kMaxRejectsPerPick = 64;
// Keeps every synthetic routing weight strictly positive, as a softmax's are.
constexpr double kMinRawWeight = 1e-3;
}  // namespace

Result<std::vector<TraceStep>> MakeSyntheticTrace(const SyntheticTraceOptions& o) {
  if (o.layers == 0 || o.experts_per_layer == 0 || o.top_k == 0 || o.top_k > o.experts_per_layer || o.topics == 0 ||
      o.topic_tokens == 0) {
    return Status::InvalidArgument("synthetic trace: layers, experts, top-k, topics and topic length must be positive, "
                                   "and top-k at most the experts per layer");
  }
  if (!(o.repeat >= 0 && o.repeat <= 1) || !(o.zipf_s >= 0)) {
    return Status::InvalidArgument("synthetic trace: repeat must be in [0, 1] and zipf_s non-negative");
  }
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);

  // Popularity by rank, shared by every topic and layer; each (layer, topic) maps ranks to its own experts.
  std::vector<double> cdf(o.experts_per_layer);
  double total = 0;
  for (uint32_t r = 0; r < o.experts_per_layer; ++r) {
    total += 1.0 / std::pow(static_cast<double>(r + 1), o.zipf_s);
    cdf[r] = total;
  }
  for (double& c : cdf) c /= total;
  std::vector<std::vector<std::vector<uint32_t>>> rank_to_expert(o.layers);
  for (auto& layer : rank_to_expert) {
    layer.resize(o.topics);
    for (auto& perm : layer) {
      perm.resize(o.experts_per_layer);
      std::iota(perm.begin(), perm.end(), 0u);
      std::shuffle(perm.begin(), perm.end(), rng);
    }
  }

  std::vector<TraceStep> steps;
  steps.reserve(static_cast<size_t>(o.tokens) * o.layers);
  std::vector<std::vector<uint32_t>> previous(o.layers);
  uint32_t topic = 0;
  const double switch_chance = 1.0 / o.topic_tokens;
  for (uint32_t t = 0; t < o.tokens; ++t) {
    if (t > 0 && unit(rng) < switch_chance) topic = static_cast<uint32_t>(rng() % o.topics);
    for (uint32_t l = 0; l < o.layers; ++l) {
      TraceStep step;
      step.token = t;
      step.layer = l;
      std::vector<bool> taken(o.experts_per_layer, false);
      uint32_t rejects = 0;
      while (step.experts.size() < o.top_k) {
        uint32_t e;
        if (rejects > kMaxRejectsPerPick) {
          // A very skewed popularity keeps drawing taken experts: take the most popular free one instead.
          const auto& perm = rank_to_expert[l][topic];
          e = *std::find_if(perm.begin(), perm.end(), [&](uint32_t x) { return !taken[x]; });
        } else if (!previous[l].empty() && unit(rng) < o.repeat) {
          e = previous[l][rng() % previous[l].size()];
        } else {
          size_t rank = static_cast<size_t>(std::lower_bound(cdf.begin(), cdf.end(), unit(rng)) - cdf.begin());
          e = rank_to_expert[l][topic][std::min<size_t>(rank, o.experts_per_layer - 1)];
        }
        if (taken[e]) {
          ++rejects;
          continue;
        }
        rejects = 0;
        taken[e] = true;
        step.experts.push_back(e);
      }
      // Router-like weights: positive, descending, summing to 1 (norm_topk_prob).
      double sum = 0;
      for (size_t i = 0; i < step.experts.size(); ++i) {
        step.weights.push_back(unit(rng) + kMinRawWeight);
        sum += step.weights.back();
      }
      std::sort(step.weights.rbegin(), step.weights.rend());
      for (double& w : step.weights) w /= sum;
      previous[l] = step.experts;
      steps.push_back(std::move(step));
    }
  }
  return steps;
}

}  // namespace es
