// Runtime: what the generation commands share: the store, the model, its tokenizer, the compute pool, the
// expert provider chosen by the flags (cache, policy, state, prefetch), the routing policy, the usage recorder,
// and the forward options they imply.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/kernels/parallel.h"
#include "compute/model.h"
#include "compute/sampler.h"
#include "compute/tokenizer.h"
#include "compute/usage_recorder.h"
#include "store/store.h"
#include "tools/cli.h"

namespace es::cli {

// Flags every generation command takes: --state, --cache-mb, --cache-pct, --policy, --routing,
// --routing-weights, --routing-margin, --focus-domain, --prefetch, --device, --threads, --no-cache,
// --skip-missing-experts, --no-record.
std::vector<FlagSpec> RuntimeFlags();

// How often a recording writer merges the journals of concurrent read-only recorders while it runs.
inline constexpr std::chrono::seconds kJournalMergeInterval{10};

struct RuntimeOptions {
  bool need_tokenizer = true;
  // Record usage (unless --no-record): open the store as its writer, or, when another process holds it,
  // read-only with usage going to the journal.
  bool record = false;
  // The metadata commands that write trust or profiles open the store the same way without recording.
  bool writes_metadata = false;
  // The cache size when neither --cache-mb nor --cache-pct is given and the state is the default, if the model's
  // experts fit in it (calibration keeps the whole tiny model resident); 0: the state's.
  uint64_t preferred_cache_bytes = 0;
};

Result<SamplerOptions> SamplerFromArgs(const Args& args);

// The tokenizer stored with a model (tokenizer.json, and tokenizer_config.json when present).
Result<Tokenizer> LoadModelTokenizer(Store& store, const std::string& model);

class Runtime {
 public:
  static Result<std::unique_ptr<Runtime>> Open(const Args& args, const std::string& model, bool need_tokenizer);
  static Result<std::unique_ptr<Runtime>> Open(const Args& args, const std::string& model,
                                               const RuntimeOptions& options);
  ~Runtime();

  Model& model() { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  ExpertProvider& experts() { return *experts_; }
  const ExpertProvider& experts() const { return *experts_; }
  Store& store() { return *store_; }
  const ForwardOptions& forward_options() const { return forward_; }
  const std::string& state_name() const { return state_; }
  const PrefetchAccuracy& prefetch_accuracy() const { return *accuracy_; }
  const std::string& routing_name() const { return routing_; }
  // The usage recorder (null when not recording); forward_options() feed it.
  UsageRecorder* recorder() { return recorder_.get(); }
  // Flushes the recorder (OK when not recording).
  Status FinishRecording();
  // One line on the configuration in force ("cache 12.0 MiB of 72.0 MiB (lru), prefetch 1, k 4").
  std::string describe() const;

 private:
  Runtime() = default;
  std::unique_ptr<Store> store_;
  std::unique_ptr<kernels::ComputePool> pool_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ExpertProvider> experts_;
  ForwardOptions forward_;
  std::unique_ptr<PrefetchAccuracy> accuracy_ = std::make_unique<PrefetchAccuracy>();
  std::string state_ = "focus";
  std::string routing_ = "exact";
  std::string description_;
  std::unique_ptr<UsageRecorder> recorder_;
};

// Opens the store for a command that writes metadata: as the writer when possible (merging journals
// periodically while it runs), else read-only with metadata going to the journal.
Result<std::unique_ptr<Store>> OpenStoreForMetadata(const Args& args);

}  // namespace es::cli
