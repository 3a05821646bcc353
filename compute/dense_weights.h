// DenseWeights: the generation model's dense tensors (embeddings, attention, norms, routers, dense MLPs,
// shared experts, lm_head) read once from the store into memory, verified, and looked up by canonical name.
// They are needed for every token, so they stay resident; experts do not (they come through the cache).
// Immutable after Load; safe to read from several threads.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "compute/kernels/cpu_kernels.h"
#include "store/base/aligned_buffer.h"
#include "store/records.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es {

// The kernels' view of a record's ggml_type: the block format, or none for a plain dtype.
std::optional<GgmlType> BlocksOf(int32_t ggml_type);

class DenseWeights {
 public:
  // Reads every tensor of `model` whose component is "" (the generation model).
  static Result<std::unique_ptr<DenseWeights>> Load(Store& store, const std::string& model);

  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }
  // NotFound naming the tensor when absent; InvalidArgument when its rank does not match.
  Result<kernels::WeightMatrix> Matrix(const std::string& name) const;
  Result<kernels::WeightVector> Vector(const std::string& name) const;
  uint64_t bytes() const { return bytes_; }
  // Whether any tensor is in a GGML block format (which the CUDA backend does not take yet).
  bool has_blocks() const { return has_blocks_; }
  // Every tensor's name and bytes (the payload Matrix and Vector view), in name order: what a GPU backend uploads.
  void ForEach(const std::function<void(const std::string& name, std::span<const std::byte> bytes)>& fn) const {
    for (const auto& [name, t] : tensors_) fn(name, {t.data, t.info.extent.payload_length});
  }

 private:
  struct Tensor {
    TensorInfo info;
    std::shared_ptr<AlignedBuffer> buffer;
    const std::byte* data = nullptr;
  };
  std::map<std::string, Tensor> tensors_;
  uint64_t bytes_ = 0;
  bool has_blocks_ = false;
};

}  // namespace es
