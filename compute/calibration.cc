// Calibration: clean pass, then per (MoE layer, top-k slot) one batched ablation of the window's positions.
#include "compute/calibration.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "compute/generator.h"

namespace es {

double ExpertContribution::increase_stderr() const {
  if (samples < 2) return 0;
  const double n = static_cast<double>(samples);
  const double mean = nll_increase_sum / n;
  const double variance = std::max(0.0, (nll_increase_sq_sum - n * mean * mean) / (n - 1));
  return std::sqrt(variance / n);
}

namespace {

// Rows of logits computed at once (bounds memory for large vocabularies).
constexpr size_t kLogitRows = 32;

// NLL of each row's target from final-normed hidden states [rows, hidden].
Status RowNlls(const Model& model, const std::vector<float>& hidden, std::span<const int32_t> targets,
               std::vector<double>& out) {
  const size_t V = model.config().vocab, H = model.config().hidden;
  std::vector<float> logits(kLogitRows * V);
  out.resize(targets.size());
  for (size_t row = 0; row < targets.size(); row += kLogitRows) {
    size_t n = std::min(kLogitRows, targets.size() - row);
    ES_RETURN_IF_ERROR(model.ComputeLogits(&hidden[row * H], n, logits.data()));
    for (size_t i = 0; i < n; ++i) out[row + i] = TokenNll(&logits[i * V], V, targets[row + i]);
  }
  return Status::Ok();
}

}  // namespace

std::vector<TextWindow> PickTextWindows(std::span<const std::vector<int32_t>> sequences, size_t window, uint64_t max_tokens) {
  std::vector<TextWindow> all;
  uint64_t scored = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const size_t n = sequences[s].size();
    for (size_t start = 0; start + 1 < n; start += window) {
      size_t len = std::min(window, n - start);
      if (len < 2) continue;
      all.push_back({s, start, len});
      scored += len - 1;
    }
  }
  if (max_tokens == 0 || scored <= max_tokens || all.empty()) return all;
  // Windows have about the same length, so a share of the windows scores about that share of the tokens.
  auto wanted = static_cast<size_t>(static_cast<double>(all.size()) * static_cast<double>(max_tokens) /
                                    static_cast<double>(scored));
  wanted = std::clamp<size_t>(wanted, 1, all.size());
  std::vector<TextWindow> picked;
  for (size_t i = 0; i < wanted; ++i) picked.push_back(all[i * all.size() / wanted]);
  return picked;
}

namespace {

// Refuses options no calibration can run with.
Status CheckOptions(const CalibrationOptions& options) {
  if (options.window < 2) return Status::InvalidArgument("calibration window must hold at least 2 tokens");
  if (!(options.position_fraction > 0 && options.position_fraction <= 1)) {
    return Status::InvalidArgument("the sampled fraction of positions must lie in (0, 1]");
  }
  return Status::Ok();
}

// A result with a zeroed contribution for every expert of the model.
CalibrationResult EmptyResult(const ModelConfig& c) {
  CalibrationResult r;
  r.layers = c.num_layers;
  r.experts_per_layer = static_cast<uint32_t>(c.num_experts);
  r.experts.resize(static_cast<size_t>(c.num_layers) * c.num_experts);
  return r;
}

// One window's clean pass: per layer the residual stream entering its MoE block (empty for a dense layer) and
// the routing, [layer][t * k + j]; then the scored positions' targets and NLLs.
struct CleanPass {
  explicit CleanPass(size_t layers) : chosen(layers), chosen_w(layers) {}

  std::vector<std::vector<float>> pre_moe;
  std::vector<std::vector<int32_t>> chosen;
  std::vector<std::vector<float>> chosen_w;
  std::vector<int32_t> targets;
  std::vector<double> nll;
};

// The clean pass's forward options: the routing and the MoE inputs are captured into `pass`.
ForwardOptions CleanOptions(const CalibrationOptions& options, size_t k, CleanPass& pass) {
  ForwardOptions clean;
  clean.top_k = static_cast<uint32_t>(k);
  clean.skip_missing_experts = options.skip_missing_experts;
  clean.capture_pre_moe = &pass.pre_moe;
  clean.observer = [&pass, k](const RoutingEvent& e) {
    const auto at = static_cast<std::ptrdiff_t>(e.token * k);
    std::copy(e.experts.begin(), e.experts.end(), pass.chosen[e.layer].begin() + at);
    std::copy(e.weights.begin(), e.weights.end(), pass.chosen_w[e.layer].begin() + at);
  };
  return clean;
}

// What the per-window phases share: the model, its experts, the top-k, the KV cache and the scratch outputs.
struct CalibrationRun {
  Model& model;
  ExpertProvider& provider;
  const size_t k;
  KvCache& kv;
  std::vector<float> hidden;
  std::vector<double> nll;  // of the ablation batch being measured
};

// The clean forward pass over one window from an empty context, capturing into `pass` (through `clean`), then
// the NLL of each scored position.
Status RunCleanPass(CalibrationRun& run, const ForwardOptions& clean, std::span<const int32_t> ids,
                    const TextWindow& window, CleanPass& pass) {
  const ModelConfig& c = run.model.config();
  const size_t start = window.start;
  const size_t len = window.length;
  for (uint32_t l = 0; l < c.num_layers; ++l) {
    pass.chosen[l].assign(len * run.k, -1);
    pass.chosen_w[l].assign(len * run.k, 0.0f);
  }
  pass.pre_moe.clear();
  run.kv.Reset();
  ES_RETURN_IF_ERROR(run.model.Forward(ids.subspan(start, len), run.kv, run.provider, clean, run.hidden));
  // Positions 0..len-2 predict the next token of the window.
  const size_t scored = len - 1;
  pass.targets.assign(ids.begin() + static_cast<std::ptrdiff_t>(start + 1),
                      ids.begin() + static_cast<std::ptrdiff_t>(start + len));
  run.hidden.resize(scored * c.hidden);
  return RowNlls(run.model, run.hidden, pass.targets, pass.nll);
}

// Adds the clean pass's scored positions, NLL and expert activations to the result.
void RecordCleanPass(const CleanPass& pass, size_t k, CalibrationResult& r) {
  const size_t E = r.experts_per_layer;
  const size_t scored = pass.targets.size();
  r.tokens += scored;
  for (double x : pass.nll) r.clean_nll += x;
  for (uint32_t l = 0; l < r.layers; ++l) {
    for (size_t t = 0; t < scored && !pass.chosen[l].empty(); ++t) {
      for (size_t j = 0; j < k; ++j) {
        int32_t e = pass.chosen[l][t * k + j];
        float wt = pass.chosen_w[l][t * k + j];
        if (e < 0 || !(wt > 0)) continue;
        ExpertContribution& ec = r.experts[l * E + static_cast<size_t>(e)];
        ++ec.activations;
        ec.weight_sum += wt;
        ec.weight_sq_sum += static_cast<double>(wt) * wt;
      }
    }
  }
}

// The scored positions whose top-k is ablated: all of them, or each with probability position_fraction (the
// generator is drawn only when sampling).
std::vector<size_t> SampleRows(size_t scored, double position_fraction, std::bernoulli_distribution& sample,
                               std::mt19937_64& rng) {
  std::vector<size_t> rows;
  for (size_t t = 0; t < scored; ++t) {
    if (position_fraction >= 1 || sample(rng)) rows.push_back(t);
  }
  return rows;
}

// The ablation of one (layer, slot): the sampled positions that have a pick in the slot, each with the
// routing forced on it (the slot dropped, the others reweighted), its target and its residual stream.
struct AblationBatch {
  std::vector<size_t> rows;
  std::vector<float> residual;
  std::vector<int32_t> forced_e;
  std::vector<float> forced_w;
  std::vector<int32_t> targets;
};

// Fills `b` with the ablation of slot j of layer l over the sampled `rows`.
void BuildAblationBatch(const CleanPass& pass, uint32_t l, size_t j, size_t k, size_t H,
                        const std::vector<size_t>& rows, AblationBatch& b) {
  b.rows.clear();
  b.residual.clear();
  b.forced_e.clear();
  b.forced_w.clear();
  b.targets.clear();
  for (size_t t : rows) {
    const int32_t* e = &pass.chosen[l][t * k];
    const float* wt = &pass.chosen_w[l][t * k];
    if (e[j] < 0 || !(wt[j] > 0)) continue;
    // The others, scaled back to the total weight the slots had.
    double total = 0, rest = 0;
    for (size_t i = 0; i < k; ++i) {
      if (e[i] < 0) continue;
      total += wt[i];
      if (i != j) rest += wt[i];
    }
    for (size_t i = 0; i < k; ++i) {
      bool keep = i != j && e[i] >= 0;
      b.forced_e.push_back(keep ? e[i] : -1);
      b.forced_w.push_back(keep && rest > 0 ? static_cast<float>(wt[i] * total / rest) : 0.0f);
    }
    b.rows.push_back(t);
    b.targets.push_back(pass.targets[t]);
    b.residual.insert(b.residual.end(), pass.pre_moe[l].begin() + static_cast<std::ptrdiff_t>(t * H),
                      pass.pre_moe[l].begin() + static_cast<std::ptrdiff_t>((t + 1) * H));
  }
}

// Re-runs the batch from layer l's MoE block and adds each position's NLL increase to the ablated expert.
Status MeasureAblation(CalibrationRun& run, const ForwardOptions& ablated, const CleanPass& pass, uint32_t l,
                       size_t j, const AblationBatch& b, CalibrationResult& r) {
  const size_t E = r.experts_per_layer;
  ForcedRouting forced{run.k, b.forced_e, b.forced_w};
  ES_RETURN_IF_ERROR(
      run.model.ForwardRowsFrom(l, b.residual, b.rows, forced, run.kv, run.provider, ablated, run.hidden));
  ES_RETURN_IF_ERROR(RowNlls(run.model, run.hidden, b.targets, run.nll));
  for (size_t i = 0; i < b.rows.size(); ++i) {
    size_t t = b.rows[i];
    ExpertContribution& ec = r.experts[l * E + static_cast<size_t>(pass.chosen[l][t * run.k + j])];
    const double increase = run.nll[i] - pass.nll[t];
    ++ec.samples;
    ec.nll_increase_sum += increase;
    ec.nll_increase_sq_sum += increase * increase;
    ++ec.half_samples[t % 2];
    ec.half_sum[t % 2] += increase;
    ++r.ablations;
  }
  return Status::Ok();
}

// Every (MoE layer, top-k slot) ablation of one window, each one batch over the sampled positions.
Status RunAblations(CalibrationRun& run, const ForwardOptions& ablated, const CleanPass& pass,
                    const std::vector<size_t>& rows, CalibrationResult& r) {
  const ModelConfig& c = run.model.config();
  AblationBatch batch;
  for (uint32_t l = 0; l < c.num_layers; ++l) {
    if (l >= pass.pre_moe.size() || pass.pre_moe[l].empty()) continue;  // a dense layer
    for (size_t j = 0; j < run.k; ++j) {
      BuildAblationBatch(pass, l, j, run.k, c.hidden, rows, batch);
      if (batch.rows.empty()) continue;
      ES_RETURN_IF_ERROR(MeasureAblation(run, ablated, pass, l, j, batch, r));
    }
  }
  return Status::Ok();
}

}  // namespace

Result<CalibrationResult> Calibrate(Model& model, ExpertProvider& provider,
                                    std::span<const std::vector<int32_t>> sequences, const CalibrationOptions& options) {
  ES_RETURN_IF_ERROR(CheckOptions(options));
  const ModelConfig& c = model.config();
  const size_t k = std::min<size_t>(options.top_k == 0 ? c.top_k : options.top_k, c.num_experts);
  auto t0 = std::chrono::steady_clock::now();
  CalibrationResult r = EmptyResult(c);
  std::mt19937_64 rng(options.seed);
  std::bernoulli_distribution sample(options.position_fraction);

  CleanPass pass(c.num_layers);
  const ForwardOptions clean = CleanOptions(options, k, pass);
  ForwardOptions ablated;
  ablated.top_k = clean.top_k;
  ablated.skip_missing_experts = options.skip_missing_experts;

  std::vector<TextWindow> windows = PickTextWindows(sequences, options.window, options.max_tokens);
  KvCache kv(c, options.window);
  CalibrationRun run{model, provider, k, kv, {}, {}};
  for (size_t w = 0; w < windows.size(); ++w) {
    ES_RETURN_IF_ERROR(RunCleanPass(run, clean, sequences[windows[w].sequence], windows[w], pass));
    RecordCleanPass(pass, k, r);
    const std::vector<size_t> rows = SampleRows(pass.targets.size(), options.position_fraction, sample, rng);
    r.ablated_positions += rows.size();
    ES_RETURN_IF_ERROR(RunAblations(run, ablated, pass, rows, r));
    if (options.progress) options.progress(w + 1, windows.size());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace es
