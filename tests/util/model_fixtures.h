// Fixtures over real checkpoints: rewriting one into another family's layout (same weights, other names and
// config), stores with models ingested, and reading every expert back from a store.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "compute/kernels/parallel.h"
#include "compute/model.h"
#include "ingest/safetensors.h"
#include "ingest/safetensors_writer.h"
#include "store/base/aligned_buffer.h"
#include "store/base/json.h"
#include "store/records.h"
#include "store/store.h"
#include "tests/util/files.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es::testing {

// Maps a source tensor name to its new name, or nullopt to drop it.
using RenameFn = std::function<std::optional<std::string>(const std::string&)>;

// Writes `dst` as one model.safetensors holding the tensors of the checkpoint in `src` (all shards) under new
// names, plus `config_json` and a copy of tokenizer.json. Extra tensors (name -> bytes, dtype, shape) are
// appended as given.
struct ExtraTensor {
  TensorSpec spec;
  std::vector<std::byte> bytes;
};
Status RewriteCheckpoint(const std::string& src, const std::string& dst, const RenameFn& rename,
                         const std::string& config_json, const std::vector<ExtraTensor>& extra = {});

// Reads every expert payload of `model`, keyed by (layer, expert).
Result<std::map<std::pair<uint32_t, uint32_t>, std::vector<std::byte>>> ReadAllExperts(Store& store,
                                                                                       const std::string& model);

// Counts keys per column family (a store "fingerprint" for checking that nothing changed).
std::vector<size_t> CountKeys(Store& store);

// Rebuilds the tiny model's BF16 GGUF file, as llama.cpp's converter wrote it, from the committed header
// (tests/ingest/gguf_fixtures) and the model's own safetensors weights, into `path`: each tensor's bytes in the
// header's order (1-D norms widened to F32, a layer's expert tensors stacked expert by expert), padded to the
// alignment. Returns the file's XXH3-64 and the one the converter's file has, for the caller to compare.
struct RebuiltGguf {
  uint64_t xxh3 = 0;
  uint64_t expected_xxh3 = 0;
};
Result<RebuiltGguf> WriteTinyGguf(const std::string& path);

// A fresh store in `dir` with each (name, checkpoint directory or GGUF file) ingested.
Result<std::unique_ptr<Store>> StoreWithModels(const std::string& dir,
                                               const std::vector<std::pair<std::string, std::string>>& models);

// A fixture whose suite shares one store of ingested models and a compute pool of every core. SetUpTestSuite calls
// OpenSuiteStore (MakeSuiteDir first when it writes checkpoints of its own under dir_), TearDownTestSuite
// CloseSuiteStore. The members are shared by every suite deriving from it; a binary runs its suites one after
// another, each opening and closing them.
class SuiteStoreTest : public ::testing::Test {
 protected:
  // Creates the suite's temporary directory (once).
  static void MakeSuiteDir();
  // Ingests `models` (as StoreWithModels takes them) into a store in dir_/store and creates the pool.
  static Status OpenSuiteStore(const std::vector<std::pair<std::string, std::string>>& models);
  // Closes the store and removes the directory; the members are null again.
  static void CloseSuiteStore();
  // Model `name` of the suite's store on the CPU backend over the pool (with int8 activations when asked); null,
  // with a test failure, when it does not load.
  static std::unique_ptr<Model> Load(const std::string& name, bool q8_activations = false);

  static inline TempDir* dir_ = nullptr;
  static inline Store* store_ = nullptr;
  static inline kernels::ComputePool* pool_ = nullptr;
};

}  // namespace es::testing
