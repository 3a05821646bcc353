// The ingest pipeline: a validated checkpoint into per-expert records. A reader thread streams tensor bytes
// from the shards in file order through a bounded pool of buffers (memory stays at a few tens of MB whatever
// the checkpoint size) while the calling thread appends records and commits them in transactions of
// `commit_bytes`, so reads and writes overlap and a killed ingest resumes where its last commit ended.
// Idempotent: the same checkpoint again is a no-op; a different one under an existing name is refused unless
// `replace` is set. Validation happens before the first write, so bad input never changes the store.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "store/base/file_system.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es {

class Checkpoint;

struct IngestOptions {
  std::string name;            // model name; empty: the checkpoint directory's name
  bool replace = false;        // replace a model of this name that holds a different checkpoint
  uint64_t commit_bytes = 512ull << 20;
  std::function<void(uint64_t done, uint64_t total)> progress;
  // The file system IngestCheckpoint(store, dir, ...) opens the checkpoint through; null: the real one (tests inject
  // faults here). An opened Checkpoint is read through its own.
  std::shared_ptr<FileSystem> checkpoint_fs;
};

struct IngestResult {
  std::string model;
  std::string arch;
  uint32_t layers = 0;
  uint64_t experts = 0;        // expert records of the model
  uint64_t dense_tensors = 0;  // dense tensor records of the model (generation model and components)
  uint64_t bytes = 0;          // payload bytes of the model
  uint64_t bytes_written = 0;  // payload bytes this run wrote (0 when unchanged)
  double seconds = 0;
  bool unchanged = false;      // the checkpoint was already there: nothing written
  bool resumed = false;        // an interrupted ingest of the same checkpoint was completed
  // Same weights, but assets (tokenizer.json, ...) the stored model lacked or held in another version: only these
  // were written. `unchanged` is false then.
  std::vector<std::string> assets_updated;
  bool has_tokenizer = false;  // the checkpoint has tokenizer.json (generation needs one)
};

Result<IngestResult> IngestCheckpoint(Store& store, const std::string& dir, const IngestOptions& options);
// The same for a checkpoint already opened (and so validated) with Checkpoint::Open, before the store was.
Result<IngestResult> IngestCheckpoint(Store& store, const Checkpoint& checkpoint, const IngestOptions& options);

}  // namespace es
