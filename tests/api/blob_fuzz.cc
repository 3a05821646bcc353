// libFuzzer target for the expert blob envelope decoder (api/blob.h): any input must be rejected with Corruption or
// decode to a blob a receiver can store as it is: the ESXB identifier in place, a payload that hashes to its checksum,
// every projection inside the payload, dtypes known (or kUnknown), the model's counters zero. A decoded blob must
// survive the encoder: re-encoding decodes to the same values, re-encodes to the same bytes, and places a non-empty
// payload on the envelope's 64-byte boundary. The input is also decoded from a misaligned copy, which must give the
// same answer. Built with ES_FUZZ=ON; seeds in blob_fuzz_corpus/.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "api/blob.h"
#include "blob_generated.h"
#include "store/base/checksum.h"
#include "store/base/dtype.h"
#include "store/records.h"

namespace {

constexpr std::string_view kIdentifier = "ESXB";
constexpr size_t kIdentifierOffset = 4;        // after the root offset
constexpr size_t kPayloadAlignment = 64;       // api/blob.fbs, force_align
constexpr size_t kMisalignment = 1;

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

bool SameProjection(const es::ProjectionInfo& a, const es::ProjectionInfo& b) {
  return a.role == b.role && a.source_name == b.source_name && a.dtype == b.dtype && a.shape == b.shape &&
         a.offset == b.offset && a.length == b.length;
}

bool SameModel(const es::ModelInfo& a, const es::ModelInfo& b) {
  return a.name == b.name && a.arch == b.arch && a.config_json == b.config_json && a.num_layers == b.num_layers &&
         a.experts_per_layer == b.experts_per_layer && a.top_k == b.top_k && a.hidden_size == b.hidden_size &&
         a.moe_intermediate_size == b.moe_intermediate_size && a.vocab_size == b.vocab_size &&
         a.source_fingerprint == b.source_fingerprint;
}

bool SameBlob(const es::api::ExpertBlob& a, const es::api::ExpertBlob& b) {
  if (!SameModel(a.model, b.model) || a.layer != b.layer || a.expert != b.expert || a.checksum != b.checksum ||
      a.payload != b.payload || a.projections.size() != b.projections.size()) {
    return false;
  }
  for (size_t i = 0; i < a.projections.size(); ++i) {
    if (!SameProjection(a.projections[i], b.projections[i])) return false;
  }
  return true;
}

// XXH3 of the payload through the streaming interface, in two pieces: a second path to the decoder's one-shot hash.
uint64_t StreamedHash(std::span<const std::byte> payload) {
  es::Xxh3Stream h;
  const size_t half = payload.size() / 2;
  h.Update(payload.first(half));
  h.Update(payload.subspan(half));
  return h.Digest();
}

void CheckAccepted(const es::api::ExpertBlob& b, std::string_view input) {
  Check(input.size() >= kIdentifierOffset + kIdentifier.size());
  Check(input.substr(kIdentifierOffset, kIdentifier.size()) == kIdentifier);
  Check(StreamedHash(b.payload) == b.checksum);
  const uint64_t size = b.payload.size();
  for (const es::ProjectionInfo& p : b.projections) {
    Check(p.offset <= size && p.length <= size - p.offset);
    Check(static_cast<uint8_t>(p.dtype) <= static_cast<uint8_t>(es::DType::kBool));
  }
  // Only the fields the envelope carries are set.
  Check(b.model.num_experts == 0 && b.model.num_dense_tensors == 0 && b.model.total_bytes == 0);
  Check(b.model.created_unix == 0 && !b.model.complete && b.model.assets.empty());
}

std::string Reencode(const es::api::ExpertBlob& b) {
  es::ExpertInfo info;
  info.layer = b.layer;
  info.expert = b.expert;
  info.extent.checksum = b.checksum;
  info.projections = b.projections;
  return es::api::EncodeExpertBlob(b.model, info, b.payload);
}

// The payload's offset inside an envelope the encoder wrote, read with the generated accessors on aligned storage.
size_t PayloadOffset(const std::string& envelope) {
  std::vector<uint64_t> storage((envelope.size() + sizeof(uint64_t) - 1) / sizeof(uint64_t));
  std::memcpy(storage.data(), envelope.data(), envelope.size());
  const auto* base = reinterpret_cast<const uint8_t*>(storage.data());
  const auto* payload = es::api::fb::GetExpertBlob(base)->payload();
  Check(payload != nullptr);
  return static_cast<size_t>(payload->data() - base);
}

void CheckRoundTrip(const es::api::ExpertBlob& b) {
  const std::string once = Reencode(b);
  es::Result<es::api::ExpertBlob> again = es::api::DecodeExpertBlob(once);
  Check(again.ok());
  Check(SameBlob(b, *again));
  Check(Reencode(*again) == once);
  if (!b.payload.empty()) Check(PayloadOffset(once) % kPayloadAlignment == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  es::Result<es::api::ExpertBlob> blob = es::api::DecodeExpertBlob(input);

  // The same bytes one byte past an 8-byte boundary, which the decoder copies before reading.
  std::vector<uint64_t> storage((size + kMisalignment + sizeof(uint64_t) - 1) / sizeof(uint64_t) + 1);
  char* shifted = reinterpret_cast<char*>(storage.data()) + kMisalignment;
  if (size > 0) std::memcpy(shifted, data, size);
  es::Result<es::api::ExpertBlob> misaligned = es::api::DecodeExpertBlob(std::string_view(shifted, size));

  Check(blob.ok() == misaligned.ok());
  if (!blob.ok()) {
    Check(blob.status().IsCorruption() && !blob.status().message().empty());
    Check(misaligned.status().message() == blob.status().message());
    return 0;
  }
  Check(SameBlob(*blob, *misaligned));
  CheckAccepted(*blob, input);
  CheckRoundTrip(*blob);
  return 0;
}
