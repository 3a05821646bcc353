// The jobs that turn a model's runs into metadata records, over a ModelRuntime: profiling (domain-labelled
// teacher-forced passes whose usage, recorded by domain, becomes specialization profiles) and trust calibration
// (calibration's measured contributions, with each expert's size, become trust records), and the readers of
// their text inputs. Each writes through Store::WriteMetadata: into the catalog in the writer, into the journal
// beside another writer. Not thread-safe: one job at a time per runtime.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "compute/calibration.h"
#include "compute/runtime/model_runtime.h"
#include "store/metadata.h"
#include "store/store.h"

namespace es {

// One line of a {"domain": D, "text": T} JSONL file.
struct LabelledText {
  std::string domain;
  std::string text;
};
// The lines of a JSONL file (blank lines skipped), each needing a string "text" and, with `need_domain`, a valid
// "domain". InvalidArgument naming the line at fault, or when there is none.
Result<std::vector<LabelledText>> ReadLabelledTexts(const std::string& path, bool need_domain);
// Texts to score: a .jsonl file is one sequence per line ({"text"}), anything else one sequence.
Result<std::vector<std::string>> ReadTexts(const std::string& path);
// The texts as token sequences (no special tokens parsed), leaving out those shorter than `min_tokens`.
Result<std::vector<std::vector<int32_t>>> EncodeTexts(const Tokenizer& tokenizer, std::span<const std::string> texts,
                                                      size_t min_tokens);

// Reports progress as (done, total) in the job's own units (prompts, windows).
using JobProgress = std::function<void(uint64_t done, uint64_t total)>;

struct ProfilingOptions {
  size_t window = 0;            // tokens per teacher-forced window (at least 2, at most the model's context)
  size_t top_coactivated = kDefaultTopCoactivated;
  bool fresh = false;           // delete the model's earlier domain counts first (the writer only)
  uint64_t now_unix = 0;        // the profiles' update time
  JobProgress progress;         // in prompts
};

struct ProfilingResult {
  size_t profiles = 0;          // experts given a profile
  std::set<std::string> domains;
  size_t prompts = 0;
  uint64_t tokens = 0;          // positions scored
};

// Runs every prompt under its domain label with `rt`'s recorder (rt must record usage), then builds every expert's
// profile from the domain counts (the catalog's, plus, beside another writer, this run's own counts still in the
// journal) and writes them. InvalidArgument when `fresh` is asked beside another writer.
Result<ProfilingResult> ProfileModel(ModelRuntime& rt, Store& store, const std::string& model,
                                     std::span<const LabelledText> prompts, const ProfilingOptions& options);

// How far a calibration's ranking can be trusted: the experts' contributions measured on two half-samples (the
// positions of even and of odd index), compared per layer over the experts ablated in both halves.
struct RankStability {
  double spearman = 0;       // Spearman rank correlation of the two halves, averaged over layers (1: same order)
  double top5_overlap = 0;   // experts the two halves' top 5 share, averaged over layers (of at most 5)
  uint32_t layers = 0;       // layers compared (at least 3 experts ablated in both halves)
};
// Below this Spearman correlation calibrate warns that its ranking is not stable at this sample size.
inline constexpr double kStableRankSpearman = 0.8;

RankStability RankStabilityOf(const CalibrationResult& run);

struct TrustCalibrationResult {
  CalibrationResult run;        // the measurements
  size_t records = 0;           // trust records written
  double mean_trust = 0;
  double mean_nll = 0;          // of the clean pass, per scored position
  RankStability stability;
};

// Calibrates on `texts` (each encoded as plain text, sequences shorter than 2 tokens left out) and writes a trust
// record for every expert the catalog holds. `options.top_k` and `skip_missing_experts` are taken from `rt`.
// InvalidArgument when no text has 2 tokens.
Result<TrustCalibrationResult> CalibrateTrust(ModelRuntime& rt, Store& store, const std::string& model,
                                              std::span<const std::string> texts, CalibrationOptions options,
                                              const TrustScoreWeights& weights, uint64_t now_unix);

}  // namespace es
