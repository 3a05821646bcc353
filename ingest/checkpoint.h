// Checkpoint: a Hugging Face checkpoint directory opened and validated before anything is written: config.json
// (strict JSON) and its architecture adapter, one model.safetensors or shards cross-checked against
// model.safetensors.index.json, every tensor classified, every expert complete with the shapes and dtypes the
// config implies, and the model assets present. Or a GGUF file, whose metadata gives the config and the tokenizer
// (ingest/gguf_model.h) and whose 3-D expert tensors are cut into experts. Only headers are read; tensor data is
// read later, on demand.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ingest/arch.h"
#include "ingest/gguf.h"
#include "ingest/safetensors.h"
#include "store/base/file_system.h"
#include "store/base/json.h"
#include "store/base/status.h"
#include "store/records.h"

namespace es {

struct TensorSource;

// A file of the checkpoint that tensors are read from: a safetensors shard or a GGUF file. Reads are positional,
// so several threads may read at once.
class TensorFile {
 public:
  virtual ~TensorFile() = default;
  virtual const std::string& path() const = 0;
  // dst.size() bytes of `tensor` (one of this file's) from `offset` bytes into it.
  virtual Status ReadTensor(const TensorSource& tensor, uint64_t offset, std::span<std::byte> dst) const = 0;
};

// Where one tensor's bytes are, and what they hold.
struct TensorSource {
  const TensorFile* file = nullptr;
  std::string name;             // in the checkpoint
  DType dtype = DType::kUnknown;
  std::vector<uint64_t> shape;  // Hugging Face order: [rows, cols] for a matrix
  uint64_t file_offset = 0;     // of the first byte
  uint64_t bytes = 0;
  int32_t ggml_type = kNoGgmlType;  // a GGUF tensor's block format (dtype is kUnknown then)
  // Non-zero for a q or k projection whose rows llama's GGUF converter reordered within each of this many heads
  // (GgufPermutedHeads): Read returns the rows in the original order.
  uint32_t permuted_heads = 0;

  // dst.size() bytes from `offset` bytes into the tensor, in the original row order.
  Status Read(uint64_t offset, std::span<std::byte> dst) const;
};

// One projection of an expert: a whole tensor, or a slice of a fused tensor.
struct ProjectionSource {
  ProjectionRole role = ProjectionRole::kGate;
  TensorSource source;
  uint64_t offset = 0;  // bytes into the tensor
  uint64_t length = 0;
  std::vector<uint64_t> shape;
  std::string source_name;
};

struct ExpertSource {
  uint32_t layer = 0;
  uint32_t expert = 0;
  std::vector<ProjectionSource> projections;  // gate, up, down
  uint64_t bytes() const;
};

struct DenseSource {
  std::string canonical;  // catalog name
  std::string component;
  TensorSource source;
};

struct AssetSource {
  std::string name;  // "tokenizer.json", ...
  std::string path;  // empty when the asset was made from the checkpoint's metadata (a GGUF file's tokenizer)
  uint64_t size = 0;
  std::string contents;  // the made asset's bytes
};

// An asset's bytes: read from its file (at most `max_bytes`), or the ones made for it.
Result<std::string> ReadAsset(FileSystem& fs, const AssetSource& asset, uint64_t max_bytes);

// Bytes of each tensor's data the fingerprint hashes.
inline constexpr size_t kFingerprintSampleBytes = 4096;
class Checkpoint {
 public:
  // The model assets copied into the store when present.
  static const std::vector<std::string>& AssetNames();

  // `dir` is a Hugging Face checkpoint directory, or a GGUF file (*.gguf) of a supported architecture.
  static Result<std::unique_ptr<Checkpoint>> Open(const std::string& dir, std::shared_ptr<FileSystem> fs = nullptr);

  const std::string& dir() const { return dir_; }
  // The file system the checkpoint is read through (the one Open was given, or the real one).
  FileSystem& fs() const { return *fs_; }
  const std::string& config_text() const { return config_text_; }
  const JsonValue& config() const { return config_; }
  const ArchAdapter& adapter() const { return *adapter_; }
  const ModelShape& shape() const { return shape_; }
  const std::vector<ExpertSource>& experts() const { return experts_; }    // by (layer, expert)
  const std::vector<DenseSource>& dense() const { return dense_; }         // in file order
  const std::vector<AssetSource>& assets() const { return assets_; }
  // Identifies the checkpoint: XXH3 over config.json, the index, each shard's size and its validated header
  // (names, dtypes, shapes, offsets). Tensor data is not hashed (that would read the whole checkpoint).
  // 32 hex digits: XXH3 of the layout (config.json, the index, each shard's size and header), then XXH3 of a
  // 4 KiB sample from the middle of every tensor's data.
  const std::string& fingerprint() const { return fingerprint_; }
  uint64_t total_bytes() const { return total_bytes_; }
  // Experts stored per layer (fewer than the config's count for a partial checkpoint).
  const std::vector<uint32_t>& experts_per_layer() const { return experts_per_layer_; }

 private:
  Checkpoint() = default;
  Status LoadShards();
  Status Classify();
  Status IndexShardTensors();
  Status FinishClassify();
  Status OpenGguf();
  Status OpenGgufSplits();
  Status ClassifyGguf();
  Status ComputeFingerprint();

  std::shared_ptr<FileSystem> fs_;
  std::string dir_;
  std::string config_text_;
  JsonValue config_;
  const ArchAdapter* adapter_ = nullptr;
  ModelShape shape_;
  std::string index_text_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::vector<std::unique_ptr<GgufFile>> ggufs_;  // a GGUF model's files: one, or its splits in order
  std::vector<std::unique_ptr<TensorFile>> files_;  // one per shard, or the GGUF file
  std::vector<TensorSource> all_tensors_;            // every tensor of every file, in file order
  std::vector<ExpertSource> experts_;
  std::vector<DenseSource> dense_;
  std::vector<AssetSource> assets_;
  std::vector<uint32_t> experts_per_layer_;
  std::string fingerprint_;
  uint64_t total_bytes_ = 0;
};

// Reads a whole small file (config.json, index, tokenizer.json) with a size cap. InvalidArgument beyond it.
Result<std::string> ReadSmallFile(FileSystem& fs, const std::string& path, uint64_t max_bytes);

}  // namespace es
