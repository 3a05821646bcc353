// Tokenizers: each model's tokenizer, loaded from the store once (it is immutable) for the /tokenize and
// /detokenize routes; reloaded when the model's fingerprint changes (a model replaced under its name).
// Thread-safe; a load runs outside the lock.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "compute/tokenizer/tokenizer.h"
#include "store/base/status.h"
#include "store/records.h"
#include "store/store.h"

namespace es::api {

class Tokenizers {
 public:
  // The tokenizer of `model` (as LoadModelTokenizer reads it). NotFound when the model has none.
  Result<std::shared_ptr<const Tokenizer>> Get(Store& store, const ModelInfo& model);

 private:
  struct Entry {
    std::string fingerprint;
    std::shared_ptr<const Tokenizer> tokenizer;
  };
  std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

}  // namespace es::api
