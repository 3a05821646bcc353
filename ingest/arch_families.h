// The adapters of the supported families, one definition file each (ingest/arch_<family>.cc).
#pragma once

#include "ingest/arch.h"

namespace es {

const ArchAdapter& Qwen3MoeAdapter();
const ArchAdapter& Qwen3OmniMoeAdapter();
const ArchAdapter& MixtralAdapter();
const ArchAdapter& OlmoeAdapter();
const ArchAdapter& Qwen2MoeAdapter();

// Reads the shape fields every family's text config has; families differ only in the names of the expert
// count (num_experts / num_local_experts) and expert FFN size (moe_intermediate_size / intermediate_size).
Result<ModelShape> ParseMoeShape(const JsonValue& text_config, std::string_view arch, std::string_view experts_field,
                                 std::string_view expert_ffn_field);

}  // namespace es
