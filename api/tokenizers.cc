// Tokenizers implementation.
#include "api/tokenizers.h"

#include "compute/runtime/model_runtime.h"

namespace es::api {

Result<std::shared_ptr<const Tokenizer>> Tokenizers::Get(Store& store, const ModelInfo& model) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = entries_.find(model.name); it != entries_.end() && it->second.fingerprint == model.source_fingerprint) {
      return it->second.tokenizer;
    }
  }
  ES_ASSIGN_OR_RETURN(Tokenizer loaded, LoadModelTokenizer(store, model.name));
  auto tokenizer = std::make_shared<const Tokenizer>(std::move(loaded));
  std::lock_guard<std::mutex> lock(mu_);
  entries_[model.name] = Entry{model.source_fingerprint, tokenizer};
  return tokenizer;
}

}  // namespace es::api
