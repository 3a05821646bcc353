// Runtime: what the generation commands share: the store opened as their recording needs, the compute pool, and
// the model runtime (compute/runtime/model_runtime.h) their flags describe.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/generator.h"
#include "compute/kernels/parallel.h"
#include "compute/model.h"
#include "compute/runtime/model_runtime.h"
#include "compute/sampler.h"
#include "compute/tokenizer/tokenizer.h"
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
  // Print the configuration in force (describe(): the cache size and why, exact or NOT EXACT) as the first line
  // on stderr, unless --quiet or --json. The demo prints it in its own words.
  bool announce = true;
  // The model's own output, as a reference to compare a run against (eval --reference): exact routing and
  // activations, the default state with the cache sized from memory and no miss tier, whatever the command's
  // flags say; the store, device and threads are the command's.
  bool exact_reference = false;
};

class Runtime;

// The flags of the commands that decode (generate, chat): llama.cpp's sampling names (--temperature, --top-k,
// --top-p, --min-p, --repeat-penalty, --repeat-last-n, --presence-penalty, --frequency-penalty, --seed), --stop
// (repeatable), --max-tokens and --ctx-size. The HTTP completions take the same settings under OpenAI's names.
std::vector<FlagSpec> DecodeFlags();

// The sampling flags given; each left out takes the model's default (its generation_config.json).
Result<SamplerRequest> SamplerFromArgs(const Args& args);

// What DecodeFlags() describe, over the model's defaults: max tokens, context, sampler (a fresh seed unless
// --seed), and the stop strings.
struct DecodeSettings {
  GenerateOptions options;
  std::vector<std::string> stop;
};
Result<DecodeSettings> DecodeSettingsFromArgs(const Args& args, const Runtime& rt);

// The RuntimeFlags() of `args` as a runtime configuration (validated). `serve` builds its models from it too.
Result<RuntimeConfig> RuntimeConfigFromArgs(const Args& args);

// A command's store, compute pool and model runtime (compute/runtime/model_runtime.h), opened from its flags.
class Runtime {
 public:
  static Result<std::unique_ptr<Runtime>> Open(const Args& args, const std::string& model, bool need_tokenizer);
  static Result<std::unique_ptr<Runtime>> Open(const Args& args, const std::string& model,
                                               const RuntimeOptions& options);
  ~Runtime();

  ModelRuntime& runtime() { return *rt_; }
  const ModelRuntime& runtime() const { return *rt_; }
  Model& model() { return rt_->model(); }
  const Tokenizer& tokenizer() const { return rt_->tokenizer(); }
  ExpertProvider& experts() { return rt_->experts(); }
  const ExpertProvider& experts() const { return rt_->experts(); }
  Store& store() { return *store_; }
  const ForwardOptions& forward_options() const { return rt_->forward_options(); }
  const std::string& state_name() const { return rt_->state_name(); }
  const PrefetchAccuracy& prefetch_accuracy() const { return rt_->prefetch_accuracy(); }
  const PrefetchGovernor& prefetch_governor() const { return rt_->prefetch_governor(); }
  const std::string& routing_name() const { return rt_->routing_name(); }
  // The usage recorder (null when not recording); forward_options() feed it.
  UsageRecorder* recorder() { return rt_->recorder(); }
  // Flushes the recorder (OK when not recording).
  Status FinishRecording() { return rt_->FinishRecording(); }
  // One line on the configuration in force ("focus: cache 48 of 192 experts (4.3 MiB, lru), ...").
  const std::string& describe() const { return rt_->describe(); }
  const std::map<std::string, uint64_t>& precision_mix() const { return rt_->precision_mix(); }

 private:
  Runtime() = default;
  std::unique_ptr<Store> store_;
  std::unique_ptr<kernels::ComputePool> pool_;
  std::unique_ptr<ModelRuntime> rt_;  // last: it refers to the pool and the store
};

// Opens the store for a command that writes metadata: as the writer when possible (merging journals
// periodically while it runs), else read-only with metadata going to the journal.
Result<std::unique_ptr<Store>> OpenStoreForMetadata(const Args& args);

}  // namespace es::cli
