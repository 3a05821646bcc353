// Fitted lookahead routers: the fit (normal equations accumulated window by window with the matmul kernel,
// solved by Cholesky in double), scoring, and the asset format.
#include "compute/lookahead.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "compute/calibration.h"
#include "store/store.h"

namespace es {

namespace {

constexpr char kMagic[8] = {'E', 'S', 'L', 'O', 'O', 'K', '0', '1'};

// The MoE layers after `from`, at most `depth` of them.
std::vector<uint32_t> MoeLayersAfter(const ModelConfig& c, uint32_t from, uint32_t depth) {
  std::vector<uint32_t> out;
  for (uint32_t l = from + 1; l < c.num_layers && out.size() < depth; ++l) {
    if (c.IsMoeLayer(l)) out.push_back(l);
  }
  return out;
}

// x / sqrt(mean(x^2) + eps) per row: the routers' RMS norm kernel with unit weights (`ones`, one per hidden unit).
Status UnitRms(const kernels::CpuContext& ctx, const float* x, size_t rows, const std::vector<float>& ones, float eps,
               float* out) {
  return kernels::RmsNorm(ctx, x, rows, kernels::WeightVector{ones.data(), DType::kF32, ones.size()}, eps, out);
}

// Router logits [rows, E] of layer `router_layer` applied to the residual stream x [rows, H] (its own
// post-attention norm first): the real routing when x enters that layer's MoE block, the default lookahead when
// it enters an earlier one.
Status RouterLogits(const Model& model, uint32_t router_layer, const float* x, size_t rows, float* logits) {
  const ModelConfig& c = model.config();
  ES_ASSIGN_OR_RETURN(auto norm, model.weights().Vector(LayerTensorName(router_layer, "post_attention_layernorm.weight")));
  ES_ASSIGN_OR_RETURN(auto router, model.weights().Matrix(RouterTensorName(c, router_layer)));
  std::vector<float> h(rows * c.hidden);
  ES_RETURN_IF_ERROR(kernels::RmsNorm(model.context(), x, rows, norm, c.rms_eps, h.data()));
  return kernels::MatMul(model.context(), h.data(), rows, router, logits);
}

// The default lookahead as a map on unit-RMS inputs: W0[e, h] = router[e, h] * norm[h], no bias.
Status PriorWeights(const Model& model, uint32_t layer, std::vector<float>& w0) {
  const ModelConfig& c = model.config();
  const size_t H = c.hidden, E = c.num_experts;
  ES_ASSIGN_OR_RETURN(auto norm, model.weights().Vector(LayerTensorName(layer, "post_attention_layernorm.weight")));
  ES_ASSIGN_OR_RETURN(auto router, model.weights().Matrix(RouterTensorName(c, layer)));
  std::vector<float> nw(H);
  ES_RETURN_IF_ERROR(kernels::ConvertToF32(model.context(), norm.data, norm.dtype, H, nw.data()));
  // The router times the identity gives its transpose in fp32 whatever its storage format.
  std::vector<float> identity(H * H, 0.0f), wt(H * E);
  for (size_t i = 0; i < H; ++i) identity[i * H + i] = 1.0f;
  ES_RETURN_IF_ERROR(kernels::MatMul(model.context(), identity.data(), H, router, wt.data()));
  w0.resize(E * H);
  for (size_t e = 0; e < E; ++e) {
    for (size_t i = 0; i < H; ++i) w0[e * H + i] = wt[i * E + e] * nw[i];
  }
  return Status::Ok();
}

// Solves (A) X = B in place for a symmetric positive definite A [n, n] (lower triangle used) and B [n, m]:
// Cholesky, then two triangular solves per column. InvalidArgument when A is not positive definite.
Status CholeskySolve(std::vector<double>& a, size_t n, std::vector<double>& b, size_t m) {
  for (size_t j = 0; j < n; ++j) {
    double* rj = &a[j * n];
    double d = rj[j];
    for (size_t k = 0; k < j; ++k) d -= rj[k] * rj[k];
    if (!(d > 0)) return Status::InvalidArgument("the lookahead fit's normal equations are not positive definite");
    const double root = std::sqrt(d);
    rj[j] = root;
    for (size_t i = j + 1; i < n; ++i) {
      double* ri = &a[i * n];
      double s = ri[j];
      for (size_t k = 0; k < j; ++k) s -= ri[k] * rj[k];
      ri[j] = s / root;
    }
  }
  std::vector<double> y(n);
  for (size_t col = 0; col < m; ++col) {
    for (size_t i = 0; i < n; ++i) {
      double s = b[i * m + col];
      const double* ri = &a[i * n];
      for (size_t k = 0; k < i; ++k) s -= ri[k] * y[k];
      y[i] = s / ri[i];
    }
    for (size_t i = n; i-- > 0;) {
      double s = y[i];
      for (size_t k = i + 1; k < n; ++k) s -= a[k * n + i] * b[k * m + col];
      b[i * m + col] = s / a[i * n + i];
    }
  }
  return Status::Ok();
}

Status CheckDepth(uint32_t depth) {
  if (depth < 1 || depth > kMaxLookaheadDepth) {
    return Status::InvalidArgument("the lookahead depth must lie in [1, " + std::to_string(kMaxLookaheadDepth) + "]");
  }
  return Status::Ok();
}

// Runs `windows` through the model, each from an empty context, and hands `visit` the residual streams entering each
// MoE block ([layer] = [rows, hidden]). Progress counts from `done` of `total` windows.
Status ForEachWindow(Model& model, ExpertProvider& experts, std::span<const std::vector<int32_t>> sequences,
                     std::span<const TextWindow> windows, const LookaheadFitOptions& options, size_t done, size_t total,
                     const std::function<Status(const std::vector<std::vector<float>>&, size_t rows)>& visit) {
  if (options.window < 2) return Status::InvalidArgument("a lookahead window must hold at least 2 tokens");
  if (windows.empty()) return Status::InvalidArgument("the text has too few tokens for a lookahead fit");
  KvCache kv(model.config(), options.window);
  ForwardOptions forward;
  forward.skip_missing_experts = options.skip_missing_experts;
  std::vector<std::vector<float>> pre_moe;
  forward.capture_pre_moe = &pre_moe;
  std::vector<float> hidden;
  for (const TextWindow& p : windows) {
    kv.Reset();
    pre_moe.clear();
    std::span<const int32_t> ids(sequences[p.sequence]);
    ES_RETURN_IF_ERROR(model.Forward(ids.subspan(p.start, p.length), kv, experts, forward, hidden));
    ES_RETURN_IF_ERROR(visit(pre_moe, p.length));
    if (options.progress) options.progress(++done, total);
  }
  return Status::Ok();
}

// ScoreLookahead over `windows`.
Result<std::vector<LookaheadScore>> ScoreWindows(Model& model, ExpertProvider& experts,
                                                std::span<const std::vector<int32_t>> sequences,
                                                std::span<const TextWindow> windows, const LookaheadFitOptions& options,
                                                size_t done, size_t total, const LookaheadPredictor* predictor,
                                                uint32_t depth, std::span<const double> thresholds) {
  ES_RETURN_IF_ERROR(CheckDepth(depth));
  const ModelConfig& c = model.config();
  const size_t H = c.hidden, E = c.num_experts, k = std::min<size_t>(c.top_k, E);
  std::vector<LookaheadScore> scores;
  for (double t : thresholds) scores.push_back({.threshold = t});
  ES_RETURN_IF_ERROR(ForEachWindow(model, experts, sequences, windows, options, done, total,
                                  [&](const std::vector<std::vector<float>>& pre_moe, size_t rows) -> Status {
    for (uint32_t s = 0; s < c.num_layers; ++s) {
      if (!c.IsMoeLayer(s)) continue;
      const std::vector<uint32_t> after = MoeLayersAfter(c, s, depth);
      if (after.size() < depth) continue;
      const uint32_t t = after.back();
      if (pre_moe.size() <= t || pre_moe[s].size() != rows * H || pre_moe[t].size() != rows * H) {
        return Status::NotSupported("the forward pass did not capture the MoE inputs");
      }
      std::vector<float> real(rows * E), guess(rows * E);
      ES_RETURN_IF_ERROR(RouterLogits(model, t, pre_moe[t].data(), rows, real.data()));
      if (predictor != nullptr) {
        ES_RETURN_IF_ERROR(predictor->Logits(model.context(), s, t, pre_moe[s].data(), rows, c.rms_eps, guess.data()));
      } else {
        ES_RETURN_IF_ERROR(RouterLogits(model, t, pre_moe[s].data(), rows, guess.data()));
      }
      std::vector<int32_t> used(rows * k), chosen(rows * k);
      std::vector<float> used_w(rows * k), prob(rows * k);
      ES_RETURN_IF_ERROR(kernels::RouterTopK(real.data(), rows, E, k, false, used.data(), used_w.data()));
      ES_RETURN_IF_ERROR(kernels::RouterTopK(guess.data(), rows, E, k, false, chosen.data(), prob.data()));
      for (size_t r = 0; r < rows; ++r) {
        const auto row_used = std::span(used).subspan(r * k, k);
        for (LookaheadScore& score : scores) {
          score.used += k;
          for (size_t j = 0; j < k; ++j) {
            if (prob[r * k + j] < score.threshold) continue;
            ++score.predicted;
            score.correct += std::find(row_used.begin(), row_used.end(), chosen[r * k + j]) != row_used.end();
          }
        }
      }
    }
    return Status::Ok();
  }));
  return scores;
}

// x^T y over rows, [xn, yn], added to acc (double): the matmul kernel on the transposed operands.
Status AddCrossProducts(const kernels::CpuContext& ctx, const std::vector<float>& xt, size_t xn,
                        const std::vector<float>& yt, size_t yn, size_t rows, std::vector<double>& acc) {
  std::vector<float> out(xn * yn);
  ES_RETURN_IF_ERROR(kernels::MatMul(ctx, xt.data(), xn, kernels::WeightMatrix(yt.data(), DType::kF32, yn, rows),
                                     out.data()));
  for (size_t i = 0; i < out.size(); ++i) acc[i] += out[i];
  return Status::Ok();
}

// Rows [rows, n] transposed to [n, rows].
std::vector<float> Transposed(const float* m, size_t rows, size_t n) {
  std::vector<float> t(n * rows);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t i = 0; i < n; ++i) t[i * rows + r] = m[r * n + i];
  }
  return t;
}

}  // namespace

const LookaheadMap* LookaheadPredictor::Find(uint32_t from, uint32_t to) const {
  auto it = maps_.find({from, to});
  return it == maps_.end() ? nullptr : &it->second;
}

void LookaheadPredictor::Put(uint32_t from, uint32_t to, uint32_t ahead, LookaheadMap map) {
  maps_[{from, to}] = std::move(map);
  depth_ = std::max(depth_, ahead);
}

Status LookaheadPredictor::Logits(const kernels::CpuContext& ctx, uint32_t from, uint32_t to, const float* x,
                                  size_t rows, float rms_eps, float* logits) const {
  const LookaheadMap* m = Find(from, to);
  if (m == nullptr) {
    return Status::InvalidArgument("no lookahead map from layer " + std::to_string(from) + " to layer " +
                                   std::to_string(to));
  }
  std::vector<float> unit(rows * hidden_);
  ES_RETURN_IF_ERROR(UnitRms(ctx, x, rows, ones_, rms_eps, unit.data()));
  ES_RETURN_IF_ERROR(kernels::MatMul(ctx, unit.data(), rows,
                                     kernels::WeightMatrix(m->weights.data(), DType::kF32, experts_, hidden_), logits));
  for (size_t r = 0; r < rows; ++r) {
    for (size_t e = 0; e < experts_; ++e) logits[r * experts_ + e] += m->bias[e];
  }
  return Status::Ok();
}

std::string LookaheadPredictor::Serialize() const {
  std::string out(kMagic, sizeof(kMagic));
  auto put32 = [&out](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  auto put_floats = [&out](const std::vector<float>& v) {
    out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  };
  put32(hidden_);
  put32(experts_);
  out.append(reinterpret_cast<const char*>(&min_prob_), sizeof(min_prob_));
  put32(static_cast<uint32_t>(maps_.size()));
  for (const auto& [key, m] : maps_) {
    put32(key.first);
    put32(key.second);
    put_floats(m.bias);
    put_floats(m.weights);
  }
  return out;
}

Result<LookaheadPredictor> LookaheadPredictor::Parse(std::string_view bytes, const ModelConfig& c) {
  auto corrupt = [](const std::string& why) { return Status::Corruption("lookahead asset: " + why); };
  size_t at = 0;
  auto take = [&](void* dst, size_t n) {
    if (bytes.size() - at < n) return false;
    std::memcpy(dst, bytes.data() + at, n);
    at += n;
    return true;
  };
  char magic[sizeof(kMagic)];
  if (!take(magic, sizeof(magic)) || std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) return corrupt("bad magic");
  uint32_t hidden = 0, experts = 0, count = 0;
  float min_prob = 0;
  if (!take(&hidden, 4) || !take(&experts, 4) || !take(&min_prob, 4) || !take(&count, 4)) {
    return corrupt("truncated header");
  }
  if (!(min_prob >= 0 && min_prob <= 1)) return corrupt("a threshold outside [0, 1]");
  if (hidden != c.hidden || experts != c.num_experts) {
    return corrupt("fitted for hidden size " + std::to_string(hidden) + " and " + std::to_string(experts) +
                   " experts, the model has " + std::to_string(c.hidden) + " and " + std::to_string(c.num_experts));
  }
  LookaheadPredictor p(hidden, experts);
  p.set_min_prob(min_prob);
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t from = 0, to = 0;
    if (!take(&from, 4) || !take(&to, 4)) return corrupt("truncated map header");
    if (from >= to || to >= c.num_layers || !c.IsMoeLayer(from) || !c.IsMoeLayer(to)) {
      return corrupt("a map from layer " + std::to_string(from) + " to " + std::to_string(to) +
                     " does not join two MoE layers in order");
    }
    const std::vector<uint32_t> after = MoeLayersAfter(c, from, kMaxLookaheadDepth);
    auto pos = std::find(after.begin(), after.end(), to);
    if (pos == after.end()) return corrupt("a map more than " + std::to_string(kMaxLookaheadDepth) + " layers ahead");
    LookaheadMap m;
    m.bias.resize(experts);
    m.weights.resize(static_cast<size_t>(experts) * hidden);
    if (!take(m.bias.data(), m.bias.size() * sizeof(float)) ||
        !take(m.weights.data(), m.weights.size() * sizeof(float))) {
      return corrupt("truncated map");
    }
    auto finite = [](float v) { return std::isfinite(v); };
    if (!std::all_of(m.bias.begin(), m.bias.end(), finite) || !std::all_of(m.weights.begin(), m.weights.end(), finite)) {
      return corrupt("a non-finite value");
    }
    p.Put(from, to, static_cast<uint32_t>(pos - after.begin()) + 1, std::move(m));
  }
  if (at != bytes.size()) return corrupt("trailing bytes");
  return p;
}

Result<LookaheadFitResult> FitLookahead(Model& model, ExpertProvider& experts,
                                        std::span<const std::vector<int32_t>> sequences,
                                        const LookaheadFitOptions& options) {
  ES_RETURN_IF_ERROR(CheckDepth(options.depth));
  if (!(options.ridge > 0) || !std::isfinite(options.ridge)) {
    return Status::InvalidArgument("the lookahead ridge must be a positive number");
  }
  const auto start = std::chrono::steady_clock::now();
  const ModelConfig& c = model.config();
  const size_t H = c.hidden, E = c.num_experts, F = H + 1;
  const std::vector<float> ones(H, 1.0f);
  // Per source layer: the Gram matrix of its features [F, F]; per (source, target): features x logits [F, E].
  std::map<uint32_t, std::vector<double>> gram;
  std::map<std::pair<uint32_t, uint32_t>, std::vector<double>> cross;
  for (uint32_t s = 0; s < c.num_layers; ++s) {
    if (!c.IsMoeLayer(s)) continue;
    const std::vector<uint32_t> targets = MoeLayersAfter(c, s, options.depth);
    if (targets.empty()) continue;
    gram[s].assign(F * F, 0.0);
    for (uint32_t t : targets) cross[{s, t}].assign(F * E, 0.0);
  }
  if (gram.empty()) return Status::InvalidArgument("the model has no two MoE layers to predict one from the other");

  // The last windows (kLookaheadValidationShare of them) are held out to choose the confidence threshold.
  const std::vector<TextWindow> windows = PickTextWindows(sequences, options.window, options.max_tokens);
  const size_t held = windows.size() < 2 ? 0 : std::max<size_t>(1, static_cast<size_t>(
                                                                      static_cast<double>(windows.size()) *
                                                                      kLookaheadValidationShare));
  const std::span<const TextWindow> fit_windows(windows.data(), windows.size() - held);
  const std::span<const TextWindow> check_windows(windows.data() + fit_windows.size(), held);
  LookaheadFitResult result;
  ES_RETURN_IF_ERROR(ForEachWindow(model, experts, sequences, fit_windows, options, 0, windows.size(),
                                  [&](const std::vector<std::vector<float>>& pre_moe, size_t rows) -> Status {
    // Every MoE layer's real logits, as the targets.
    std::map<uint32_t, std::vector<float>> logits_t;
    for (uint32_t l = 0; l < c.num_layers; ++l) {
      if (!c.IsMoeLayer(l) || l >= pre_moe.size() || pre_moe[l].size() != rows * H) continue;
      std::vector<float> lg(rows * E);
      ES_RETURN_IF_ERROR(RouterLogits(model, l, pre_moe[l].data(), rows, lg.data()));
      logits_t[l] = Transposed(lg.data(), rows, E);
    }
    for (auto& [s, g] : gram) {
      if (s >= pre_moe.size() || pre_moe[s].size() != rows * H) {
        return Status::NotSupported("the forward pass did not capture layer " + std::to_string(s) + "'s MoE input");
      }
      std::vector<float> f(rows * F);
      std::vector<float> unit(rows * H);
      ES_RETURN_IF_ERROR(UnitRms(model.context(), pre_moe[s].data(), rows, ones, c.rms_eps, unit.data()));
      for (size_t r = 0; r < rows; ++r) {
        std::copy(&unit[r * H], &unit[(r + 1) * H], &f[r * F]);
        f[r * F + H] = 1.0f;
      }
      const std::vector<float> ft = Transposed(f.data(), rows, F);
      ES_RETURN_IF_ERROR(AddCrossProducts(model.context(), ft, F, ft, F, rows, g));
      for (uint32_t t : MoeLayersAfter(c, s, options.depth)) {
        auto it = logits_t.find(t);
        if (it == logits_t.end()) {
          return Status::NotSupported("the forward pass did not capture layer " + std::to_string(t) + "'s MoE input");
        }
        ES_RETURN_IF_ERROR(AddCrossProducts(model.context(), ft, F, it->second, E, rows, cross[{s, t}]));
      }
    }
    result.tokens += rows;
    return Status::Ok();
  }));

  LookaheadPredictor predictor(static_cast<uint32_t>(H), static_cast<uint32_t>(E));
  for (auto& [s, g] : gram) {
    const std::vector<uint32_t> targets = MoeLayersAfter(c, s, options.depth);
    double mean_diag = 0;
    for (size_t i = 0; i < F; ++i) mean_diag += g[i * F + i];
    mean_diag /= static_cast<double>(F);
    const double lambda = options.ridge * mean_diag;
    for (size_t i = 0; i < F; ++i) g[i * F + i] += lambda;
    // One solve for every target of this source: the right-hand sides side by side, each pulled toward the
    // target's own router (the prior) by lambda.
    const size_t m = targets.size() * E;
    std::vector<double> rhs(F * m, 0.0);
    for (size_t j = 0; j < targets.size(); ++j) {
      const std::vector<double>& xy = cross[{s, targets[j]}];
      std::vector<float> w0;
      ES_RETURN_IF_ERROR(PriorWeights(model, targets[j], w0));
      for (size_t i = 0; i < F; ++i) {
        for (size_t e = 0; e < E; ++e) {
          const double prior = i < H ? static_cast<double>(w0[e * H + i]) : 0.0;
          rhs[i * m + j * E + e] = xy[i * E + e] + lambda * prior;
        }
      }
    }
    ES_RETURN_IF_ERROR(CholeskySolve(g, F, rhs, m));
    std::vector<double>().swap(g);  // the factor is no longer needed
    for (size_t j = 0; j < targets.size(); ++j) {
      LookaheadMap map;
      map.weights.resize(E * H);
      map.bias.resize(E);
      for (size_t e = 0; e < E; ++e) {
        for (size_t i = 0; i < H; ++i) map.weights[e * H + i] = static_cast<float>(rhs[i * m + j * E + e]);
        map.bias[e] = static_cast<float>(rhs[H * m + j * E + e]);
      }
      predictor.Put(s, targets[j], static_cast<uint32_t>(j + 1), std::move(map));
    }
  }
  // The confidence threshold: the lowest of a grid of multiples of chance at which the held-out windows' next-layer
  // predictions are right kLookaheadTargetPrecision of the time (the highest of the grid when none is).
  std::vector<double> grid;
  for (double m = 1.0; m <= kLookaheadMaxThresholdOverChance + 1e-9; m += kLookaheadThresholdStep) {
    grid.push_back(m / static_cast<double>(E));
  }
  predictor.set_min_prob(static_cast<float>(grid.back()));
  if (!check_windows.empty()) {
    ES_ASSIGN_OR_RETURN(result.validation,
                        ScoreWindows(model, experts, sequences, check_windows, options, fit_windows.size(), windows.size(),
                                    &predictor, 1, grid));
    for (const LookaheadScore& score : result.validation) {
      if (score.precision() >= kLookaheadTargetPrecision) {
        predictor.set_min_prob(static_cast<float>(score.threshold));
        break;
      }
    }
    result.validation_tokens = 0;
    for (const TextWindow& p : check_windows) result.validation_tokens += p.length;
  }
  result.predictor = std::move(predictor);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

Result<std::vector<LookaheadScore>> ScoreLookahead(Model& model, ExpertProvider& experts,
                                                   std::span<const std::vector<int32_t>> sequences,
                                                   const LookaheadPredictor* predictor, uint32_t depth,
                                                   std::span<const double> thresholds,
                                                   const LookaheadFitOptions& options) {
  const std::vector<TextWindow> windows = PickTextWindows(sequences, options.window, options.max_tokens);
  if (windows.empty()) return Status::InvalidArgument("the text has too few tokens to score predictions on");
  return ScoreWindows(model, experts, sequences, windows, options, 0, windows.size(), predictor, depth, thresholds);
}

Result<LookaheadPredictor> LoadLookahead(Store& store, const Model& model) {
  ES_ASSIGN_OR_RETURN(std::string bytes, store.ReadAsset(model.info(), kLookaheadAsset));
  return LookaheadPredictor::Parse(bytes, model.config());
}

}  // namespace es
