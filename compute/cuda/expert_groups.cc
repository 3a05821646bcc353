// The host-side pieces of the CUDA expert path: grouping routed tokens by expert for the prefill kernels, and
// moving an expert's weight view from its host extent to the device copy of it. No CUDA calls.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <utility>
#include <vector>

#include "compute/cuda/cuda_kernels.h"

namespace es::cuda {

size_t ExpertScratchFloats(size_t batch, size_t intermediate) { return batch * intermediate; }

kernels::ExpertWeights RebaseExpertWeights(const kernels::ExpertWeights& host, const void* host_base,
                                           const void* device_base) {
  auto rebase = [&](kernels::WeightMatrix m) {
    const auto offset = static_cast<const std::byte*>(m.data) - static_cast<const std::byte*>(host_base);
    m.data = static_cast<const std::byte*>(device_base) + offset;
    return m;
  };
  return kernels::ExpertWeights{rebase(host.gate), rebase(host.up), rebase(host.down)};
}

std::vector<ExpertGroup> GroupTokensByExpert(std::span<const int32_t> experts, std::span<const float> weights,
                                             size_t top_k) {
  std::vector<ExpertGroup> groups;
  if (top_k == 0) return groups;
  // Ordered by expert id, and rows visited in ascending order, so the groups come out sorted both ways.
  std::map<int32_t, size_t> index;
  const size_t tokens = std::min(experts.size(), weights.size()) / top_k;
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t j = 0; j < top_k; ++j) {
      const int32_t e = experts[t * top_k + j];
      if (e < 0) continue;
      auto [it, inserted] = index.emplace(e, 0);
      if (inserted) {
        it->second = groups.size();
        groups.push_back(ExpertGroup{e, {}, {}});
      }
      groups[it->second].rows.push_back(static_cast<int32_t>(t));
      groups[it->second].scales.push_back(weights[t * top_k + j]);
    }
  }
  std::vector<ExpertGroup> sorted;
  sorted.reserve(groups.size());
  for (const auto& [expert, position] : index) sorted.push_back(std::move(groups[position]));
  return sorted;
}

}  // namespace es::cuda
