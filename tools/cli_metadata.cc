// Metadata commands (docs/metadata.md): profile (specialization by domain), calibrate (the
// dream state: contributions and trust), query (rank experts), trust (one expert's record), profiles
// export/import (JSON), rest (recompute from recorded usage and compact). Readers open the store read-only and
// work beside a running writer; writers of metadata journal when another process holds the store.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>

#include "compute/lookahead.h"
#include "compute/runtime/metadata_jobs.h"
#include "store/compaction.h"
#include "store/metadata.h"
#include "store/record_json.h"
#include "tools/cli.h"
#include "tools/cli_runtime.h"

namespace es::cli {

namespace {

// Tokens per window of profile's teacher-forced passes, as eval's default (capped by the model's context).
constexpr int64_t kDefaultWindow = 1024;
// The most co-activated partners a profile keeps.
constexpr int64_t kMaxTopCoactivated = 1 << 16;

uint64_t NowUnix() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

// A count-based progress line on stderr (the shared ProgressBar counts bytes).
class CountProgress {
 public:
  CountProgress(const Args& args, std::string label) : enabled_(ShowProgress(args)), label_(std::move(label)) {}
  ~CountProgress() { Finish(); }
  void Update(uint64_t done, uint64_t total) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (drawn_ && now - last_ < kRedraw && done < total) return;
    last_ = now;
    double elapsed = std::chrono::duration<double>(now - start_).count();
    double eta = done > 0 ? elapsed * static_cast<double>(total - done) / static_cast<double>(done) : 0;
    std::fprintf(stderr, "\r%s %llu/%llu  %.0fs elapsed, ETA %.0fs  ", label_.c_str(),
                 static_cast<unsigned long long>(done), static_cast<unsigned long long>(total), elapsed, eta);
    std::fflush(stderr);
    drawn_ = true;
  }
  void Finish() {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  static constexpr std::chrono::milliseconds kRedraw{200};
  bool enabled_;
  std::string label_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_;
  bool drawn_ = false;
};

// ---- profile --------------------------------------------------------------------------------------------

Status RunProfile(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string prompts_path, args.Require("prompts"));
  ES_ASSIGN_OR_RETURN(auto prompts, ReadLabelledTexts(prompts_path, /*need_domain=*/true));
  ES_ASSIGN_OR_RETURN(int64_t top_co, args.GetInt("top-coactivated", kDefaultTopCoactivated, 0, kMaxTopCoactivated));
  if (args.Has("no-record")) return Status::InvalidArgument("profile works by recording usage: --no-record makes no sense");
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model, RuntimeOptions{.need_tokenizer = true, .record = true}));
  const ModelConfig& config = rt->model().config();
  ES_ASSIGN_OR_RETURN(int64_t window, args.GetInt("window", std::min<int64_t>(config.max_positions, kDefaultWindow), 2,
                                                  config.max_positions));
  ProfilingOptions o;
  o.window = static_cast<size_t>(window);
  o.top_coactivated = static_cast<size_t>(top_co);
  o.fresh = args.Has("fresh");
  o.now_unix = NowUnix();
  CountProgress progress(args, "profile");
  o.progress = [&](uint64_t done, uint64_t total) { progress.Update(done, total); };
  auto t0 = std::chrono::steady_clock::now();
  ES_ASSIGN_OR_RETURN(ProfilingResult r, ProfileModel(rt->runtime(), rt->store(), model, prompts, o));
  progress.Finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const bool journaled = rt->store().journaling();
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("experts").Uint(r.profiles).Key("domains").BeginArray();
    for (const auto& d : r.domains) w.String(d);
    w.EndArray().Key("prompts").Uint(r.prompts).Key("tokens").Uint(r.tokens).Key("seconds").Double(seconds)
        .Key("usage").String(journaled ? "journal" : "catalog").EndObject();
    PrintJson(w);
  } else {
    std::printf("profiled %zu experts over %zu domains from %zu prompts (%llu tokens) in %.1f s%s\n", r.profiles,
                r.domains.size(), r.prompts, static_cast<unsigned long long>(r.tokens), seconds,
                journaled ? "; written to the journal" : "");
  }
  return Status::Ok();
}

// ---- calibrate ------------------------------------------------------------------------------------------

Status RunCalibrate(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string path, args.Require("text"));
  ES_ASSIGN_OR_RETURN(auto texts, ReadTexts(path));
  TrustScoreWeights weights;
  if (auto m = args.Get("trust-mix")) {
    ES_ASSIGN_OR_RETURN(weights, ParseTrustScoreWeights(*m));
  }
  if (args.Has("routing") && args.GetOr("routing", "exact") != "exact") {
    return Status::InvalidArgument("calibrate measures the model's own routing: --routing must be exact");
  }
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model, RuntimeOptions{.need_tokenizer = true,
                                                                          .writes_metadata = true}));
  const ModelConfig& config = rt->model().config();
  CalibrationOptions o;
  ES_ASSIGN_OR_RETURN(int64_t window, args.GetInt("window", std::min<int64_t>(config.max_positions, kDefaultCalibrationWindow),
                                                  2, config.max_positions));
  ES_ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 0, 0, INT64_MAX));
  ES_ASSIGN_OR_RETURN(double fraction, args.GetDouble("sample", 1.0));
  ES_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0, 0, INT64_MAX));
  o.window = static_cast<size_t>(window);
  o.position_fraction = fraction;
  o.seed = static_cast<uint64_t>(seed);
  o.max_tokens = static_cast<uint64_t>(max_tokens);
  CountProgress progress(args, "calibrate (dream)");
  o.progress = [&](uint64_t done, uint64_t total) { progress.Update(done, total); };
  ES_ASSIGN_OR_RETURN(TrustCalibrationResult r,
                      CalibrateTrust(rt->runtime(), rt->store(), model, texts, o, weights, NowUnix()));
  progress.Finish();
  const bool journaled = rt->store().journaling();
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("experts").Uint(r.records).Key("tokens").Uint(r.run.tokens)
        .Key("ablated_positions").Uint(r.run.ablated_positions).Key("ablations").Uint(r.run.ablations)
        .Key("mean_nll").Double(r.mean_nll).Key("mean_trust").Double(r.mean_trust).Key("seconds").Double(r.run.seconds)
        .Key("window").Uint(o.window).Key("usage").String(journaled ? "journal" : "catalog")
        .Key("rank_stability").BeginObject().Key("spearman").Double(r.stability.spearman)
        .Key("top5_overlap").Double(r.stability.top5_overlap).Key("layers").Uint(r.stability.layers)
        .Key("stable").Bool(r.stability.spearman >= kStableRankSpearman).EndObject()
        .EndObject();
    PrintJson(w);
  } else {
    std::printf("calibrated %zu experts on %llu tokens (%llu ablations, mean NLL %.4f) in %.1f s; mean trust %.3f%s\n",
                r.records, static_cast<unsigned long long>(r.run.tokens),
                static_cast<unsigned long long>(r.run.ablations), r.mean_nll, r.run.seconds, r.mean_trust,
                journaled ? "; written to the journal" : "");
    std::printf("rank stability over two half-samples: Spearman %.2f, top-5 overlap %.1f of 5 per layer (%u layers)\n",
                r.stability.spearman, r.stability.top5_overlap, r.stability.layers);
  }
  if (r.stability.spearman < kStableRankSpearman && !args.global().quiet) {
    std::fprintf(stderr,
                 "warning: the trust ranking is not stable at this sample size (Spearman %.2f < %.1f between two "
                 "half-samples): another --seed may rank experts differently; calibrate on more text or a larger "
                 "--sample. `trust` shows each contribution's standard error.\n",
                 r.stability.spearman, kStableRankSpearman);
  }
  return Status::Ok();
}

// ---- fit-lookahead --------------------------------------------------------------------------------------

// The texts of a --text or --eval file as token sequences (a window predicts from 2 tokens on).
Result<std::vector<std::vector<int32_t>>> EncodeTextFile(const Tokenizer& tokenizer, const std::string& path) {
  ES_ASSIGN_OR_RETURN(auto texts, ReadTexts(path));
  return EncodeTexts(tokenizer, texts, 2);
}

// The probability thresholds fit-lookahead scores at: 0 (every top-k guess), multiples of chance, and the fit's
// own, in order.
std::vector<double> LookaheadThresholds(uint32_t experts, double fitted) {
  std::vector<double> out{0.0, fitted};
  for (double m : {1.0, 2.0, 3.0, 4.0, 6.0, 8.0}) out.push_back(m / experts);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Status RunFitLookahead(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string path, args.Require("text"));
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model, RuntimeOptions{.need_tokenizer = true,
                                                                          .writes_metadata = true}));
  const ModelConfig& config = rt->model().config();
  LookaheadFitOptions o;
  ES_ASSIGN_OR_RETURN(int64_t depth, args.GetInt("depth", kDefaultLookaheadDepth, 1, kMaxLookaheadDepth));
  ES_ASSIGN_OR_RETURN(o.ridge, args.GetDouble("ridge", kDefaultLookaheadRidge));
  ES_ASSIGN_OR_RETURN(int64_t window, args.GetInt("window", std::min<int64_t>(config.max_positions, 512), 2,
                                                  config.max_positions));
  ES_ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 0, 0, INT64_MAX));
  o.depth = static_cast<uint32_t>(depth);
  o.window = static_cast<size_t>(window);
  o.max_tokens = static_cast<uint64_t>(max_tokens);
  o.skip_missing_experts = args.Has("skip-missing-experts");
  ES_ASSIGN_OR_RETURN(auto sequences, EncodeTextFile(rt->tokenizer(), path));
  CountProgress progress(args, "fit-lookahead");
  o.progress = [&](uint64_t done, uint64_t total) { progress.Update(done, total); };
  ES_ASSIGN_OR_RETURN(LookaheadFitResult fit, FitLookahead(rt->model(), rt->runtime().experts(), sequences, o));
  progress.Finish();
  // The held-back windows' score at the threshold the fit chose.
  LookaheadScore chosen;
  for (const LookaheadScore& v : fit.validation) {
    if (static_cast<float>(v.threshold) == fit.predictor.min_prob()) chosen = v;
  }
  const bool dry_run = args.Has("dry-run");
  const std::string bytes = fit.predictor.Serialize();
  if (!dry_run) ES_RETURN_IF_ERROR(rt->store().PutAsset(model, kLookaheadAsset, bytes));

  // Held-out scores, the routers' and the fit's, at each threshold and depth.
  struct Row {
    uint32_t depth;
    LookaheadScore router, fitted;
  };
  std::vector<Row> rows;
  if (auto eval = args.Get("eval")) {
    ES_ASSIGN_OR_RETURN(auto held_out, EncodeTextFile(rt->tokenizer(), std::string(*eval)));
    const std::vector<double> thresholds =
        LookaheadThresholds(static_cast<uint32_t>(config.num_experts), fit.predictor.min_prob());
    LookaheadFitOptions eo = o;
    eo.progress = nullptr;
    for (uint32_t d = 1; d <= o.depth; ++d) {
      ES_ASSIGN_OR_RETURN(auto router, ScoreLookahead(rt->model(), rt->runtime().experts(), held_out, nullptr, d,
                                                      thresholds, eo));
      ES_ASSIGN_OR_RETURN(auto fitted, ScoreLookahead(rt->model(), rt->runtime().experts(), held_out, &fit.predictor,
                                                      d, thresholds, eo));
      for (size_t i = 0; i < thresholds.size(); ++i) rows.push_back({d, router[i], fitted[i]});
    }
  }
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("model").String(model).Key("tokens").Uint(fit.tokens).Key("depth").Uint(o.depth)
        .Key("ridge").Double(o.ridge).Key("maps").Uint(fit.predictor.size()).Key("bytes").Uint(bytes.size())
        .Key("stored").Bool(!dry_run).Key("seconds").Double(fit.seconds)
        .Key("min_prob").Double(fit.predictor.min_prob()).Key("validation_tokens").Uint(fit.validation_tokens)
        .Key("validation").BeginObject().Key("precision").Double(chosen.precision())
        .Key("recall").Double(chosen.recall()).EndObject().Key("eval").BeginArray();
    for (const Row& r : rows) {
      w.BeginObject().Key("depth").Uint(r.depth).Key("threshold").Double(r.router.threshold);
      for (const auto& [name, sc] : {std::pair{"router", &r.router}, std::pair{"fitted", &r.fitted}}) {
        w.Key(name).BeginObject().Key("precision").Double(sc->precision()).Key("recall").Double(sc->recall())
            .Key("predicted").Uint(sc->predicted).Key("correct").Uint(sc->correct).Key("used").Uint(sc->used)
            .EndObject();
      }
      w.EndObject();
    }
    w.EndArray().EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("fitted %zu lookahead maps (depth %u) on %llu tokens in %.1f s, %s%s\n", fit.predictor.size(), o.depth,
              static_cast<unsigned long long>(fit.tokens), fit.seconds, HumanBytes(bytes.size()).c_str(),
              dry_run ? "; not stored (--dry-run)" : "; stored as the model's asset expertstore.lookahead");
  std::printf("prefetch threshold %.4g: next-layer precision %.3f, recall %.3f on %llu held-back tokens of the text\n",
              fit.predictor.min_prob(), chosen.precision(), chosen.recall(),
              static_cast<unsigned long long>(fit.validation_tokens));
  if (!rows.empty()) {
    std::printf("held-out: depth threshold | router precision recall | fitted precision recall\n");
    for (const Row& r : rows) {
      std::printf("%u %.4f | %.3f %.3f | %.3f %.3f\n", r.depth, r.router.threshold, r.router.precision(),
                  r.router.recall(), r.fitted.precision(), r.fitted.recall());
    }
  }
  return Status::Ok();
}

// ---- trust ----------------------------------------------------------------------------------------------

Status RunTrust(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  ES_ASSIGN_OR_RETURN(ModelInfo info, LoadModelInfo(store->catalog(), model));
  if (!args.Has("layer") || !args.Has("expert")) return Status::InvalidArgument("trust needs --layer and --expert");
  ES_ASSIGN_OR_RETURN(int64_t layer, args.GetInt("layer", 0, 0, static_cast<int64_t>(info.num_layers) - 1));
  ES_ASSIGN_OR_RETURN(int64_t expert, args.GetInt("expert", 0, 0, static_cast<int64_t>(info.experts_per_layer) - 1));
  std::string key = ExpertKey(model, static_cast<uint32_t>(layer), static_cast<uint32_t>(expert));
  auto exists = store->catalog().Get(Cf::kExperts, key);
  if (exists.status().IsNotFound()) {
    return Status::NotFound("model '" + model + "' has no expert " + std::to_string(expert) + " in layer " +
                            std::to_string(layer));
  }
  ES_RETURN_IF_ERROR(exists.status());
  std::optional<TrustInfo> trust;
  if (auto v = store->catalog().Get(Cf::kTrust, key); v.ok()) {
    ES_ASSIGN_OR_RETURN(trust, DecodeTrust(*v));
  } else if (!v.status().IsNotFound()) {
    return v.status();
  }
  std::optional<UsageCounts> recorded;
  if (auto v = store->catalog().Get(Cf::kUsage, key); v.ok()) {
    ES_ASSIGN_OR_RETURN(recorded, DecodeUsage(*v));
  } else if (!v.status().IsNotFound()) {
    return v.status();
  }
  const UsageCounts usage = recorded.value_or(UsageCounts{});
  if (args.global().json) {
    // The trust and usage views `show --json` has, under the same names.
    JsonWriter w;
    w.BeginObject().Key("layer").Uint(static_cast<uint64_t>(layer)).Key("expert").Uint(static_cast<uint64_t>(expert));
    w.Key("trust");
    WriteTrustJson(w, trust);
    w.Key("usage");
    WriteUsageJson(w, recorded);
    w.Key("activations").Uint(usage.activation_count);
    w.EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("model %s, layer %lld, expert %lld\n", model.c_str(), static_cast<long long>(layer),
              static_cast<long long>(expert));
  if (trust) {
    // The interval: 1.96 standard errors either side (95% under a normal approximation).
    constexpr double kZ95 = 1.96;
    std::printf("  trust             %.4f\n  convergence_rate  %.4f  (mean NLL increase when removed: %+.5f nats, "
                "95%% interval +-%.5f over %llu ablations)\n"
                "  stability         %.4f\n  efficiency        %.4f\n  calibrated on     %llu tokens, %s\n",
                trust->trust, trust->convergence_rate, trust->raw_contribution, kZ95 * trust->contribution_stderr,
                static_cast<unsigned long long>(trust->ablations), trust->stability, trust->efficiency,
                static_cast<unsigned long long>(trust->calibration_tokens), UtcTime(trust->updated_unix).c_str());
  } else {
    std::printf("  not calibrated (run calibrate)\n");
  }
  std::printf("  activations       %llu\n  successes         %llu\n  last used         %s\n",
              static_cast<unsigned long long>(usage.activation_count), static_cast<unsigned long long>(usage.success_count),
              usage.last_used_unix_ms ? UtcTime(usage.last_used_unix_ms / 1000).c_str() : "never");
  return Status::Ok();
}

// ---- query ----------------------------------------------------------------------------------------------

// query --domain D --all-models: every model of the store (attached ones included), ranked together.
Status RunQueryAllModels(const Args& args) {
  if (args.Has("model") || args.Has("layer")) return Status::InvalidArgument("--all-models takes neither --model nor --layer");
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  ExpertQuery q;
  ES_ASSIGN_OR_RETURN(q.domain, args.Require("domain"));
  ES_ASSIGN_OR_RETURN(int64_t top, args.GetInt("top", static_cast<int64_t>(q.top), 1, kMaxQueryTop));
  ES_ASSIGN_OR_RETURN(int64_t min_activations, args.GetInt("min-activations", 0, 0, INT64_MAX));
  q.top = static_cast<size_t>(top);
  q.min_activations = static_cast<uint64_t>(min_activations);
  if (auto order = args.Get("order")) {
    ES_ASSIGN_OR_RETURN(q.order, ParseRankOrder(*order));
  }
  ES_ASSIGN_OR_RETURN(std::vector<ModelInfo> infos, store->ListModels());
  std::vector<std::string> models;
  for (const ModelInfo& m : infos) models.push_back(m.name);
  ES_ASSIGN_OR_RETURN(auto rows, QueryExpertsAcrossModels(store->catalog(), models, q));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("domain").String(q.domain).Key("order").String(args.GetOr("order", "lift")).Key("rows").BeginArray();
    for (const ModelQueryRow& r : rows) {
      w.BeginObject().Key("model").String(r.model).Key("layer").Uint(r.row.layer).Key("expert").Uint(r.row.expert)
          .Key("lift").Double(r.row.lift).Key("share").Double(r.row.share)
          .Key("domain_activations").Uint(r.row.domain_activations).Key("trust");
      if (r.row.has_trust) {
        w.Double(r.row.trust);
      } else {
        w.Null();
      }
      w.Key("activations").Uint(r.row.activations).EndObject();
    }
    w.EndArray().EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("%-24s %5s %6s %7s %7s %7s %11s\n", "MODEL", "LAYER", "EXPERT", "LIFT", "SHARE", "TRUST", "ACTIVATIONS");
  for (const ModelQueryRow& m : rows) {
    const ExpertQueryRow& r = m.row;
    std::string t = r.has_trust ? std::to_string(r.trust).substr(0, 5) : "-";
    std::printf("%-24s %5u %6u %7.3f %7.3f %7s %11llu\n", m.model.c_str(), r.layer, r.expert, r.lift, r.share,
                t.c_str(), static_cast<unsigned long long>(r.activations));
  }
  return Status::Ok();
}

Status RunQuery(const Args& args) {
  if (args.Has("all-models")) return RunQueryAllModels(args);
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  ES_ASSIGN_OR_RETURN(ModelInfo info, LoadModelInfo(store->catalog(), model));
  ExpertQuery q;
  if (args.Has("layer")) {
    ES_ASSIGN_OR_RETURN(int64_t l, args.GetInt("layer", 0, 0, static_cast<int64_t>(info.num_layers) - 1));
    q.has_layer = true;
    q.layer = static_cast<uint32_t>(l);
  }
  ES_ASSIGN_OR_RETURN(int64_t top, args.GetInt("top", static_cast<int64_t>(q.top), 1, kMaxQueryTop));
  ES_ASSIGN_OR_RETURN(int64_t min_activations, args.GetInt("min-activations", 0, 0, INT64_MAX));
  q.top = static_cast<size_t>(top);
  q.min_activations = static_cast<uint64_t>(min_activations);
  q.domain = args.GetOr("domain", "");
  if (auto order = args.Get("order")) {
    ES_ASSIGN_OR_RETURN(q.order, ParseRankOrder(*order));
  }
  ES_ASSIGN_OR_RETURN(auto rows, QueryExperts(store->catalog(), model, q));
  if (args.global().json) {
    JsonWriter w;
    WriteQueryResultJson(w, model, q, args.GetOr("order", "lift"), rows);
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("%5s %6s %-12s %7s %7s %7s %11s\n", "LAYER", "EXPERT", "DOMAIN", "LIFT", "SHARE", "TRUST", "ACTIVATIONS");
  for (const auto& r : rows) {
    std::string t = r.has_trust ? std::to_string(r.trust).substr(0, 5) : "-";
    std::printf("%5u %6u %-12s %7.3f %7.3f %7s %11llu\n", r.layer, r.expert, r.domain.c_str(), r.lift, r.share,
                t.c_str(), static_cast<unsigned long long>(r.activations));
  }
  return Status::Ok();
}

// ---- profiles export / import ---------------------------------------------------------------------------

Status ExportProfiles(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  ES_ASSIGN_OR_RETURN(ModelInfo info, LoadModelInfo(store->catalog(), model));
  ES_ASSIGN_OR_RETURN(auto profiles, LoadModelProfiles(store->catalog(), model));
  JsonWriter w;
  WriteProfilesDocument(w, info, profiles);
  if (auto out = args.Get("out")) {
    ES_RETURN_IF_ERROR(WriteFileAtomic(DefaultFileSystem(), *out, w.str() + "\n"));
    if (!args.global().quiet) std::fprintf(stderr, "exported %zu profiles to %s\n", profiles.size(), out->c_str());
    return Status::Ok();
  }
  PrintJson(w);
  return Status::Ok();
}

Status ImportProfiles(const Args& args) {
  if (args.positional().size() != 2) return Status::InvalidArgument("usage: profiles import FILE [--model M]");
  const std::string& path = args.positional()[1];
  ES_ASSIGN_OR_RETURN(std::string text, ReadFile(*DefaultFileSystem(), path));
  Result<ProfilesDocument> doc = ParseProfilesDocument(text);
  if (!doc.ok()) return doc.status().WithContext(path);
  const std::string model = args.GetOr("model", doc->model);
  ES_RETURN_IF_ERROR(ValidateModelName(model));
  ES_ASSIGN_OR_RETURN(auto store, OpenStoreForMetadata(args));
  ES_ASSIGN_OR_RETURN(ModelInfo info, LoadModelInfo(store->catalog(), model));
  if (doc->layers != info.num_layers || doc->experts_per_layer != info.experts_per_layer) {
    return Status::InvalidArgument(path + " describes " + std::to_string(doc->layers) + " layers x " +
                                   std::to_string(doc->experts_per_layer) + " experts; model '" + model + "' has " +
                                   std::to_string(info.num_layers) + " x " + std::to_string(info.experts_per_layer));
  }
  CatalogBatch batch;
  for (const auto& [id, p] : doc->profiles) batch.Put(Cf::kProfiles, ExpertKey(model, id.first, id.second), EncodeProfile(p));
  ES_RETURN_IF_ERROR(store->WriteMetadata(batch));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("model").String(model).Key("experts").Uint(batch.size())
        .Key("usage").String(store->journaling() ? "journal" : "catalog").EndObject();
    PrintJson(w);
  } else {
    std::printf("imported %zu profiles into model %s%s\n", batch.size(), model.c_str(),
                store->journaling() ? " (journaled: the writer merges them)" : "");
  }
  return Status::Ok();
}

Status RunProfiles(const Args& args) {
  std::string action = args.positional().empty() ? "" : args.positional()[0];
  if (action == "export") {
    if (args.positional().size() != 1) return Status::InvalidArgument("usage: profiles export --model M [--out FILE]");
    return ExportProfiles(args);
  }
  if (action == "import") return ImportProfiles(args);
  return Status::InvalidArgument("usage: profiles export --model M [--out FILE] | profiles import FILE [--model M]");
}

// ---- rest -----------------------------------------------------------------------------------------------

Status RunRest(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  TrustScoreWeights weights;
  if (auto m = args.Get("trust-mix")) {
    ES_ASSIGN_OR_RETURN(weights, ParseTrustScoreWeights(*m));
  }
  ES_ASSIGN_OR_RETURN(int64_t top_co, args.GetInt("top-coactivated", kDefaultTopCoactivated, 0, kMaxTopCoactivated));
  auto opened = OpenStore(args, /*writer=*/true);
  if (!opened.ok() && opened.status().IsBusy()) {
    return Status::Busy(opened.status().message() + ": rest rewrites and compacts the catalog, which only the writer may");
  }
  ES_ASSIGN_OR_RETURN(auto store, std::move(opened));
  ES_RETURN_IF_ERROR(LoadModelInfo(store->catalog(), model).status());
  const JournalMergeStats& merged = store->open_merge_stats();
  ES_ASSIGN_OR_RETURN(RestReport r, Rest(*store, model, weights, static_cast<size_t>(top_co), NowUnix()));
  // Then the segments: reclaims dead space where a segment is more than the default share dead (compact's rule).
  ES_ASSIGN_OR_RETURN(CompactStats segments, Compact(*store, CompactOptions{}));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("profiles").Uint(r.profiles).Key("trust_updated").Uint(r.trust_updated)
        .Key("journal_records_merged").Uint(merged.records).Key("compact_seconds").Double(r.compact_seconds)
        .Key("segments_compacted").Uint(segments.compacted.size()).Key("segment_bytes_freed")
        .Uint(segments.removal.bytes_freed).EndObject();
    PrintJson(w);
  } else {
    std::printf("rest: merged %llu journal records, recomputed %llu profiles and %llu trust records, compacted the "
                "catalog in %.2f s; compacted %zu segments (%s freed)\n",
                static_cast<unsigned long long>(merged.records), static_cast<unsigned long long>(r.profiles),
                static_cast<unsigned long long>(r.trust_updated), r.compact_seconds, segments.compacted.size(),
                HumanBytes(segments.removal.bytes_freed).c_str());
  }
  return Status::Ok();
}

}  // namespace

void RegisterMetadataCommands(std::vector<Command>& commands) {
  std::vector<FlagSpec> runtime = RuntimeFlags();
  auto with = [&](std::vector<FlagSpec> own) {
    own.insert(own.end(), runtime.begin(), runtime.end());
    return own;
  };
  commands.push_back({"profile", "profile --model M --prompts FILE.jsonl [--fresh] [--window N] [--top-coactivated N]",
                      "record domain-labelled usage from {\"domain\",\"text\"} lines and build specialization profiles",
                      with({{"model", true, "model name"},
                            {"prompts", true, "JSONL file of {\"domain\", \"text\"} lines"},
                            {"fresh", false, "forget earlier domain counts of this model first (needs the writer)"},
                            {"window", true, "tokens per window (default min(context, 1024))"},
                            {"top-coactivated", true, "co-activated experts kept per profile (default 8)"}}),
                      RunProfile});
  commands.push_back({"calibrate",
                      "calibrate --model M --text FILE [--window N] [--max-tokens N] [--sample F] [--seed S] "
                      "[--trust-mix c,s,e]",
                      "the dream state: measure each expert's contribution and store trust records",
                      with({{"model", true, "model name"},
                            {"text", true, "text file (a .jsonl file: one sequence per {\"text\"} line)"},
                            {"window", true, "tokens per window (default min(context, 1024))"},
                            {"max-tokens", true, "measure at most this many positions, from evenly spaced windows"},
                            {"sample", true, "fraction of each window's positions to ablate (default 1)"},
                            {"seed", true, "sampling seed"},
                            {"trust-mix", true, "trust weights of convergence, stability, efficiency (default 0.5,0.25,0.25)"}}),
                      RunCalibrate});
  commands.push_back({"fit-lookahead",
                      "fit-lookahead --model M --text FILE [--depth D] [--ridge R] [--window N] [--max-tokens N] "
                      "[--eval FILE] [--dry-run]",
                      "fit the prefetcher's lookahead maps (residual stream to the next layers' router logits) on a "
                      "text and store them with the model",
                      with({{"model", true, "model name"},
                            {"text", true, "text file to fit on (a .jsonl file: one sequence per {\"text\"} line)"},
                            {"depth", true, "MoE layers ahead to fit maps for (default 1, at most 4)"},
                            {"ridge", true, "pull toward the layers' own routers, as a share of the inputs' mean "
                                            "square (default 0.01)"},
                            {"window", true, "tokens per forward pass (default min(context, 512))"},
                            {"max-tokens", true, "fit on about this many tokens, from windows spread evenly over the text"},
                            {"eval", true, "score the routers' and the fitted predictions on this held-out text"},
                            {"dry-run", false, "fit (and score) without storing"}}),
                      RunFitLookahead});
  commands.push_back({"query", "query (--model M | --domain D --all-models) [--domain D] [--layer L] [--top N] [--order lift,trust,activations]",
                      "rank experts by lift for a domain, trust or activations",
                      {{"model", true, "model name"},
                       {"domain", true, "rank for this domain (default: each expert's primary domain)"},
                       {"layer", true, "only this layer"},
                       {"top", true, "rows (default 10, at most 100000)"},
                       {"order", true, "sort keys, first first (default lift)"},
                       {"min-activations", true, "with --domain: skip experts with fewer activations in it"},
                       {"all-models", false, "with --domain: every model of the store (attached ones included), "
                                             "ranked together"}},
                      RunQuery});
  commands.push_back({"trust", "trust --model M --layer L --expert E", "one expert's trust record and usage",
                      {{"model", true, "model name"}, {"layer", true, "layer"}, {"expert", true, "expert"}}, RunTrust});
  commands.push_back({"profiles", "profiles export --model M [--out FILE] | profiles import FILE [--model M]",
                      "share specialization profiles between stores as JSON",
                      {{"model", true, "model name"}, {"out", true, "write to this file instead of stdout"}},
                      RunProfiles, /*max_positional=*/2});
  commands.push_back({"rest", "rest --model M [--trust-mix c,s,e] [--top-coactivated N]",
                      "the rest state: recompute profiles and trust from recorded usage, compact the catalog",
                      {{"model", true, "model name"},
                       {"trust-mix", true, "trust weights of convergence, stability, efficiency (default 0.5,0.25,0.25)"},
                       {"top-coactivated", true, "co-activated experts kept per profile (default 8)"}},
                      RunRest});
}

}  // namespace es::cli
