// make-checkpoint: writes a random-weight checkpoint in a family's exact Hugging Face layout (tensor names,
// shapes, config.json, sharding with model.safetensors.index.json, a byte-level tokenizer.json), streaming,
// so that multi-GB test and benchmark models cost a small buffer. Deterministic for a given seed.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "store/base/dtype.h"
#include "store/base/file_system.h"
#include "store/base/status.h"

namespace es {

struct MakeCheckpointOptions {
  std::string arch = "qwen3_moe";  // qwen3_moe, qwen3_omni_moe, mixtral, olmoe, qwen2_moe
  // "qwen3-30b-a3b": Qwen3-30B-A3B / Qwen3-Omni thinker shapes (hidden 2048, 32/4 heads of 128, 128 experts,
  // top-8, expert FFN 768, vocab 151936 or 152064 for the Omni thinker); explicit fields below override it.
  std::string preset;
  uint32_t layers = 2;
  uint32_t experts = 8;
  uint32_t top_k = 2;
  uint32_t hidden = 64;
  uint32_t moe_intermediate = 32;
  uint32_t heads = 4;
  uint32_t kv_heads = 2;
  uint32_t head_dim = 0;  // 0: hidden / heads
  uint32_t vocab = 512;
  uint32_t shared_intermediate = 0;  // qwen2_moe shared expert FFN (0: 2 x moe_intermediate)
  DType dtype = DType::kBF16;
  uint64_t seed = 0;
  bool fused_experts = false;  // experts.gate_up_proj [E, 2I, H] / experts.down_proj [E, H, I] per layer
  std::vector<std::pair<uint32_t, uint32_t>> missing;  // (layer, expert) pairs left out (a partial checkpoint)
  uint64_t max_shard_bytes = 4ull << 30;
};

// Applies the preset, then the fields the caller set explicitly (named in `explicit_fields`), and checks the
// result. `explicit_fields` holds field names: "layers", "experts", "top_k", "hidden", "moe_intermediate",
// "heads", "kv_heads", "vocab". Errors name fields in backquotes (`top_k`).
Result<MakeCheckpointOptions> ResolveMakeCheckpointOptions(MakeCheckpointOptions options,
                                                           const std::vector<std::string>& explicit_fields);

struct MakeCheckpointResult {
  std::vector<std::string> files;
  uint64_t bytes = 0;
};

Result<MakeCheckpointResult> MakeCheckpoint(const std::string& out_dir, const MakeCheckpointOptions& options,
                                            const std::function<void(uint64_t done, uint64_t total)>& progress = {});

}  // namespace es
