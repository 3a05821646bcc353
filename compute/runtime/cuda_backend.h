// The CUDA backend (device "cuda") and the hybrid backend (device "hybrid"), behind compute/backend.h. Plain C++:
// the kernels are es_cuda's (compute/cuda/cuda_kernels.h). Compiled on every machine; called only when CUDA is
// compiled in (backend_choice.cc) or by the tests over the emulated device.
//
// cuda: the dense weights (attention, norms, routers, dense MLPs, shared experts, lm_head) are uploaded once; the
// residual stream, the KV cache (a DeviceKvCache per sequence, kept in KvCache::backend_state) and every block
// run on one compute stream. Routed experts come from a DeviceExpertCache of GPU slots: a hit runs in place; a
// miss is acquired from the host provider (the pinned cache, which reads it from disk if needed) and uploaded on
// the cache's copy stream, which the compute stream waits on by event. Router choices come back to the host once
// per MoE layer (the host's cache and prefetcher need them); the next layers' router predictions, computed on the
// device in the same step, prefetch into the host cache and upload experts already in host memory ahead of use.
// hybrid: as cuda, except that a GPU miss whose expert is in host memory goes where HybridCostModel says is
// cheaper: uploaded, or computed on the CPU from the pinned slot while the GPU runs the rest of the layer.
#pragma once

#include <memory>

#include "compute/runtime/backend_choice.h"

namespace es {

Result<std::unique_ptr<Backend>> CreateCudaBackend(Store& store, const Model& model, const BackendOptions& options);

}  // namespace es
