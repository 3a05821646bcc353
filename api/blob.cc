// Expert blob envelope encoding and verification.
#include "api/blob.h"

#include <cstdio>
#include <cstring>

#include "blob_generated.h"
#include "store/base/checksum.h"

namespace es::api {

namespace {

// The payload vector's alignment inside the envelope (api/blob.fbs, force_align): cache lines, so that a
// receiver that keeps the envelope can use the tensors in place.
constexpr size_t kPayloadAlignment = 64;
// Room for everything but the payload when sizing the builder up front.
constexpr size_t kEnvelopeOverhead = 16 << 10;

es::fb::DType ToFbDType(DType d) { return static_cast<es::fb::DType>(static_cast<uint8_t>(d)); }
DType FromFbDType(es::fb::DType d) {
  auto v = static_cast<uint8_t>(d);
  return v <= static_cast<uint8_t>(DType::kBool) ? static_cast<DType>(v) : DType::kUnknown;
}

std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

}  // namespace

std::string EncodeExpertBlob(const ModelInfo& model, const ExpertInfo& expert, std::span<const std::byte> payload) {
  flatbuffers::FlatBufferBuilder b(payload.size() + kEnvelopeOverhead);
  b.ForceVectorAlignment(payload.size(), sizeof(uint8_t), kPayloadAlignment);
  auto payload_vec = b.CreateVector(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  // Strings go in with their lengths, not as c_str(): DecodeExpertBlob keeps a NUL inside a string, so the encoder
  // must not cut one short there.
  std::vector<flatbuffers::Offset<es::fb::Projection>> projections;
  for (const auto& p : expert.projections) {
    auto role = b.CreateString(p.role);
    auto source_name = b.CreateString(p.source_name);
    auto shape = b.CreateVector(p.shape);
    projections.push_back(
        es::fb::CreateProjection(b, role, source_name, ToFbDType(p.dtype), shape, p.offset, p.length, p.ggml_type));
  }
  auto projections_vec = b.CreateVector(projections);
  auto name = b.CreateString(model.name);
  auto arch = b.CreateString(model.arch);
  auto config_json = b.CreateString(model.config_json);
  auto source_fingerprint = b.CreateString(model.source_fingerprint);
  auto blob_model = fb::CreateBlobModel(b, name, arch, config_json, model.num_layers, model.experts_per_layer,
                                        model.top_k, model.hidden_size, model.moe_intermediate_size, model.vocab_size,
                                        source_fingerprint);
  fb::ExpertBlobBuilder eb(b);
  eb.add_model(blob_model);
  eb.add_layer(expert.layer);
  eb.add_expert(expert.expert);
  eb.add_projections(projections_vec);
  eb.add_checksum(expert.extent.checksum);
  eb.add_payload(payload_vec);
  fb::FinishExpertBlobBuffer(b, eb.Finish());
  return std::string(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
}

Result<ExpertBlob> DecodeExpertBlob(std::string_view bytes) {
  // The root offset and the file identifier come first; nothing shorter can be an envelope. Checked before the
  // copy below, which must not copy an empty view (memcpy into an empty vector's null data is undefined).
  constexpr size_t kPrefixBytes = sizeof(flatbuffers::uoffset_t) + flatbuffers::kFileIdentifierLength;
  if (bytes.size() < kPrefixBytes) return Status::Corruption("not an expert blob envelope (no ESXB identifier)");
  // FlatBuffers reads scalars in place: an unaligned buffer is first copied to aligned storage.
  std::vector<uint64_t> storage;
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(uint64_t) != 0) {
    storage.resize((bytes.size() + sizeof(uint64_t) - 1) / sizeof(uint64_t));
    std::memcpy(storage.data(), bytes.data(), bytes.size());
    bytes = std::string_view(reinterpret_cast<const char*>(storage.data()), bytes.size());
  }
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  if (!fb::ExpertBlobBufferHasIdentifier(data)) {
    return Status::Corruption("not an expert blob envelope (no ESXB identifier)");
  }
  flatbuffers::Verifier verifier(data, bytes.size());
  if (!fb::VerifyExpertBlobBuffer(verifier)) return Status::Corruption("expert blob envelope fails verification");
  const fb::ExpertBlob* r = fb::GetExpertBlob(data);
  if (r->model() == nullptr || r->payload() == nullptr || r->projections() == nullptr) {
    return Status::Corruption("expert blob envelope lacks its model, projections or payload");
  }
  ExpertBlob blob;
  const fb::BlobModel* m = r->model();
  blob.model.name = Str(m->name());
  blob.model.arch = Str(m->arch());
  blob.model.config_json = Str(m->config_json());
  blob.model.num_layers = m->num_layers();
  blob.model.experts_per_layer = m->experts_per_layer();
  blob.model.top_k = m->top_k();
  blob.model.hidden_size = m->hidden_size();
  blob.model.moe_intermediate_size = m->moe_intermediate_size();
  blob.model.vocab_size = m->vocab_size();
  blob.model.source_fingerprint = Str(m->source_fingerprint());
  blob.layer = r->layer();
  blob.expert = r->expert();
  blob.checksum = r->checksum();
  const uint64_t payload_size = r->payload()->size();
  for (const es::fb::Projection* p : *r->projections()) {
    ProjectionInfo info;
    info.role = Str(p->role());
    info.source_name = Str(p->source_name());
    info.dtype = FromFbDType(p->dtype());
    info.ggml_type = p->ggml_type();
    if (const auto* shape = p->shape(); shape != nullptr) {
      // The verifier checks the alignment of a vector's length, not of its 64-bit elements. A builder aligns them,
      // so a misaligned shape is damage, and reading it in place would be a misaligned load.
      if (shape->size() > 0 && reinterpret_cast<uintptr_t>(shape->data()) % alignof(uint64_t) != 0) {
        return Status::Corruption("expert blob: projection '" + info.role + "' has a misaligned shape");
      }
      info.shape.assign(shape->begin(), shape->end());
    }
    info.offset = p->offset();
    info.length = p->length();
    if (info.offset > payload_size || info.length > payload_size - info.offset) {
      return Status::Corruption("expert blob: projection '" + info.role + "' lies outside the payload");
    }
    blob.projections.push_back(std::move(info));
  }
  const auto* payload = reinterpret_cast<const std::byte*>(r->payload()->data());
  blob.payload.assign(payload, payload + payload_size);
  uint64_t actual = Xxh3(blob.payload);
  if (actual != blob.checksum) {
    char msg[96];
    std::snprintf(msg, sizeof(msg), "expert blob: payload hashes to %016llx, the envelope says %016llx",
                  static_cast<unsigned long long>(actual), static_cast<unsigned long long>(blob.checksum));
    return Status::Corruption(msg);
  }
  return blob;
}

}  // namespace es::api
