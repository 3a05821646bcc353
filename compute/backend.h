// Backend: where a Model's forward pass runs, as ggml separates its backends. The model (config, dense weights on
// the host, the layer graph of its architecture) and the expert provider (the pinned host cache) are shared; a
// backend runs the graph's blocks with its own kernels and keeps whatever per-sequence state it needs beside the
// KvCache. The CPU backend (MakeCpuBackend) is the reference; choosing a backend, and the CUDA and hybrid backends,
// are compute/runtime/'s (backend_choice.h, cuda_backend.h).
//
// Model::Forward and Model::ComputeLogits check their arguments and call the backend; callers never call a
// backend directly. One Forward at a time per backend.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/model.h"
#include "store/base/status.h"

namespace es {

// What a backend did so far (summed over its calls); the CPU backend reports zeros.
struct BackendCounters {
  uint64_t device_hits = 0;      // routed experts found in GPU memory
  uint64_t device_uploads = 0;   // experts copied host -> GPU
  uint64_t bytes_uploaded = 0;
  uint64_t cpu_experts = 0;      // hybrid: routed experts computed on the CPU instead of copied
};

class Backend {
 public:
  virtual ~Backend() = default;
  // "cpu", "cuda" or "hybrid".
  virtual std::string name() const = 0;
  // One line on the backend ("cuda: NVIDIA H100, 96 of 192 experts in GPU memory (..)").
  virtual std::string describe() const = 0;

  // Model::Forward's work, its arguments already checked (tokens in the vocabulary, room in kv).
  virtual Status Forward(const Model& model, std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts,
                         const ForwardOptions& options, std::vector<float>& hidden) = 0;
  // Model::ForwardBatch's work, its arguments already checked. Default: each sequence by Forward in turn, so a
  // backend without a batched pass is correct but reads each sequence's experts separately.
  virtual Status ForwardBatch(const Model& model, std::span<const SequenceInput> sequences, ExpertProvider& experts,
                              const ForwardOptions& options, std::vector<float>& hidden);
  // Model::ForwardRowsFrom's (calibration's ablations); arguments checked. Default: NotSupported.
  virtual Status ForwardRowsFrom(const Model& model, uint32_t layer, std::span<const float> residual,
                                 std::span<const size_t> positions, const ForcedRouting& routing, KvCache& kv,
                                 ExpertProvider& experts, const ForwardOptions& options, std::vector<float>& hidden);
  // logits [rows, vocab] (host) from final-normed hidden states [rows, hidden] (host).
  virtual Status ComputeLogits(const Model& model, const float* hidden, size_t rows, float* logits) = 0;
  virtual BackendCounters counters() const { return {}; }
};

// The reference backend: the CPU kernels (compute/kernels), multithreaded through the model's CpuContext.
std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace es
