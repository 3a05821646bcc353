// The expert blob envelope (api/blob.fbs): one expert's payload with its model summary, projections and
// checksum, as GET .../blob serves it and `fetch-expert` receives it. Decoding verifies everything a receiver
// relies on (FlatBuffers structure and identifier, projection bounds, XXH3-64 of the payload), so a decoded
// blob is safe to store.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "store/records.h"
#include "store/base/status.h"

namespace es::api {

inline constexpr std::string_view kBlobContentType = "application/x-flatbuffers";

struct ExpertBlob {
  // name, arch, config_json, the shape fields and source_fingerprint; counters and extents stay zero.
  ModelInfo model;
  uint32_t layer = 0;
  uint32_t expert = 0;
  std::vector<ProjectionInfo> projections;
  uint64_t checksum = 0;  // XXH3-64 of payload
  std::vector<std::byte> payload;
};

// Encodes the envelope of `expert` of `model` with its verified payload (as ExtentReader handed it out).
std::string EncodeExpertBlob(const ModelInfo& model, const ExpertInfo& expert, std::span<const std::byte> payload);

// Verifies and decodes an envelope. Corruption when the bytes are not an ExpertBlob, a projection lies outside
// the payload, or the payload does not hash to the checksum.
Result<ExpertBlob> DecodeExpertBlob(std::string_view bytes);

}  // namespace es::api
