// Calibration: clean pass, then per (MoE layer, top-k slot) one batched ablation of the window's positions.
#include "compute/calibration.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "compute/generator.h"

namespace es {

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

struct Window {
  size_t sequence = 0;
  size_t start = 0;
  size_t length = 0;
};

// The windows covering every sequence, or, with a token budget, evenly spaced ones scoring about that many.
std::vector<Window> PickWindows(std::span<const std::vector<int32_t>> sequences, size_t window, uint64_t max_tokens) {
  std::vector<Window> all;
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
  std::vector<Window> picked;
  for (size_t i = 0; i < wanted; ++i) picked.push_back(all[i * all.size() / wanted]);
  return picked;
}

}  // namespace

Result<CalibrationResult> Calibrate(Model& model, ExpertProvider& provider,
                                    std::span<const std::vector<int32_t>> sequences, const CalibrationOptions& options) {
  if (options.window < 2) return Status::InvalidArgument("calibration window must hold at least 2 tokens");
  if (!(options.position_fraction > 0 && options.position_fraction <= 1)) {
    return Status::InvalidArgument("the sampled fraction of positions must lie in (0, 1]");
  }
  const ModelConfig& c = model.config();
  const size_t E = c.num_experts, H = c.hidden;
  const size_t k = std::min<size_t>(options.top_k == 0 ? c.top_k : options.top_k, E);
  auto t0 = std::chrono::steady_clock::now();
  CalibrationResult r;
  r.layers = c.num_layers;
  r.experts_per_layer = static_cast<uint32_t>(E);
  r.experts.resize(static_cast<size_t>(c.num_layers) * E);
  std::mt19937_64 rng(options.seed);
  std::bernoulli_distribution sample(options.position_fraction);

  ForwardOptions clean;
  clean.top_k = static_cast<uint32_t>(k);
  clean.skip_missing_experts = options.skip_missing_experts;
  std::vector<std::vector<float>> pre_moe;
  clean.capture_pre_moe = &pre_moe;
  // routing[layer][t * k + j]: the clean pass's picks and weights.
  std::vector<std::vector<int32_t>> chosen(c.num_layers);
  std::vector<std::vector<float>> chosen_w(c.num_layers);
  clean.observer = [&](const RoutingEvent& e) {
    std::copy(e.experts.begin(), e.experts.end(), chosen[e.layer].begin() + static_cast<std::ptrdiff_t>(e.token * k));
    std::copy(e.weights.begin(), e.weights.end(), chosen_w[e.layer].begin() + static_cast<std::ptrdiff_t>(e.token * k));
  };
  ForwardOptions ablated;
  ablated.top_k = clean.top_k;
  ablated.skip_missing_experts = options.skip_missing_experts;

  std::vector<Window> windows = PickWindows(sequences, options.window, options.max_tokens);
  KvCache kv(c, options.window);
  std::vector<float> hidden;
  std::vector<double> clean_nll, nll;
  for (size_t w = 0; w < windows.size(); ++w) {
    std::span<const int32_t> ids = sequences[windows[w].sequence];
    const size_t start = windows[w].start;
    const size_t len = windows[w].length;
    for (uint32_t l = 0; l < c.num_layers; ++l) {
      chosen[l].assign(len * k, -1);
      chosen_w[l].assign(len * k, 0.0f);
    }
    pre_moe.clear();
    kv.Reset();
    ES_RETURN_IF_ERROR(model.Forward(ids.subspan(start, len), kv, provider, clean, hidden));
    // Positions 0..len-2 predict the next token of the window.
    const size_t scored = len - 1;
    std::vector<int32_t> targets(ids.begin() + static_cast<std::ptrdiff_t>(start + 1),
                                 ids.begin() + static_cast<std::ptrdiff_t>(start + len));
    hidden.resize(scored * H);
    ES_RETURN_IF_ERROR(RowNlls(model, hidden, targets, clean_nll));
    r.tokens += scored;
    for (double x : clean_nll) r.clean_nll += x;
    for (uint32_t l = 0; l < c.num_layers; ++l) {
      for (size_t t = 0; t < scored && !chosen[l].empty(); ++t) {
        for (size_t j = 0; j < k; ++j) {
          int32_t e = chosen[l][t * k + j];
          float wt = chosen_w[l][t * k + j];
          if (e < 0 || !(wt > 0)) continue;
          ExpertContribution& ec = r.experts[l * E + static_cast<size_t>(e)];
          ++ec.activations;
          ec.weight_sum += wt;
          ec.weight_sq_sum += static_cast<double>(wt) * wt;
        }
      }
    }
    std::vector<size_t> rows;
    for (size_t t = 0; t < scored; ++t) {
      if (options.position_fraction >= 1 || sample(rng)) rows.push_back(t);
    }
    r.ablated_positions += rows.size();

    std::vector<size_t> batch_rows;
    std::vector<float> residual;
    std::vector<int32_t> forced_e, batch_targets;
    std::vector<float> forced_w;
    for (uint32_t l = 0; l < c.num_layers; ++l) {
      if (l >= pre_moe.size() || pre_moe[l].empty()) continue;  // a dense layer
      for (size_t j = 0; j < k; ++j) {
        batch_rows.clear();
        residual.clear();
        forced_e.clear();
        forced_w.clear();
        batch_targets.clear();
        for (size_t t : rows) {
          const int32_t* e = &chosen[l][t * k];
          const float* wt = &chosen_w[l][t * k];
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
            forced_e.push_back(keep ? e[i] : -1);
            forced_w.push_back(keep && rest > 0 ? static_cast<float>(wt[i] * total / rest) : 0.0f);
          }
          batch_rows.push_back(t);
          batch_targets.push_back(targets[t]);
          residual.insert(residual.end(), pre_moe[l].begin() + static_cast<std::ptrdiff_t>(t * H),
                          pre_moe[l].begin() + static_cast<std::ptrdiff_t>((t + 1) * H));
        }
        if (batch_rows.empty()) continue;
        ForcedRouting forced{k, forced_e, forced_w};
        ES_RETURN_IF_ERROR(model.ForwardRowsFrom(l, residual, batch_rows, forced, kv, provider, ablated, hidden));
        ES_RETURN_IF_ERROR(RowNlls(model, hidden, batch_targets, nll));
        for (size_t i = 0; i < batch_rows.size(); ++i) {
          size_t t = batch_rows[i];
          ExpertContribution& ec = r.experts[l * E + static_cast<size_t>(chosen[l][t * k + j])];
          ++ec.samples;
          ec.nll_increase_sum += nll[i] - clean_nll[t];
          ++r.ablations;
        }
      }
    }
    if (options.progress) options.progress(w + 1, windows.size());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace es
