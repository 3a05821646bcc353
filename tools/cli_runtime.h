// Runtime: what the generation commands share: the store, the model, its tokenizer, the compute pool, the
// expert provider chosen by the flags (cache, policy, state, prefetch), and the forward options they imply.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/kernels/parallel.h"
#include "compute/model.h"
#include "compute/sampler.h"
#include "compute/tokenizer.h"
#include "store/store.h"
#include "tools/cli.h"

namespace es::cli {

// Flags every generation command takes: --state, --cache-mb, --policy, --routing, --prefetch, --device,
// --threads, --no-cache, --skip-missing-experts.
std::vector<FlagSpec> RuntimeFlags();

Result<SamplerOptions> SamplerFromArgs(const Args& args);

// The tokenizer stored with a model (tokenizer.json, and tokenizer_config.json when present).
Result<Tokenizer> LoadModelTokenizer(Store& store, const std::string& model);

class Runtime {
 public:
  static Result<std::unique_ptr<Runtime>> Open(const Args& args, const std::string& model, bool need_tokenizer);
  ~Runtime();

  Model& model() { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  ExpertProvider& experts() { return *experts_; }
  const ExpertProvider& experts() const { return *experts_; }
  Store& store() { return *store_; }
  const ForwardOptions& forward_options() const { return forward_; }
  const std::string& state_name() const { return state_; }
  const PrefetchAccuracy& prefetch_accuracy() const { return *accuracy_; }
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
  std::string description_;
};

}  // namespace es::cli
