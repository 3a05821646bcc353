// The one way a CUDA runtime call becomes a Status: ES_CUDA_RETURN_IF_ERROR(cudaFoo(...)).
// Include only from sources compiled with ES_HAVE_CUDA; nothing CUDA leaks into public headers.
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "store/base/status.h"

namespace es {

// No device and no driver are "not supported here", not I/O failures: callers fall back to host paths.
inline Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return Status::Ok();
  std::string msg = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNotSupported: return Status::NotSupported(msg);
    case cudaErrorMemoryAllocation: return Status::ResourceExhausted(msg);
    case cudaErrorInvalidValue: return Status::InvalidArgument(msg);
    default: return Status::IOError(msg);
  }
}

}  // namespace es

#define ES_CUDA_RETURN_IF_ERROR(expr) ES_RETURN_IF_ERROR(::es::CudaStatus((expr), #expr))
