// FlatBuffers encoding of catalog records and key encodings.
#include "store/records.h"

#include <algorithm>
#include <cstring>

#include "store/base/ggml_type.h"

#include "catalog_generated.h"

namespace es {
namespace {

void PutBe32(std::string& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetBe32(std::string_view s) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s[i]);
  return v;
}

fb::Extent ToFb(const Extent& e) { return fb::Extent(e.segment, e.offset, e.record_length, e.payload_length, e.checksum); }
Extent FromFb(const fb::Extent* e) {
  if (e == nullptr) return Extent{};
  return Extent{e->segment(), e->offset(), e->record_length(), e->payload_length(), e->checksum()};
}

std::string Finish(flatbuffers::FlatBufferBuilder& b) {
  return std::string(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
}

// FlatBuffers reads scalars in place and needs them aligned; a value straight out of a RocksDB block may not
// be, so such values are first copied into `storage` (8-byte aligned).
template <typename T>
const T* Verified(std::string_view bytes, std::string_view what, Status& status, std::vector<uint64_t>& storage) {
  constexpr size_t kAlign = alignof(uint64_t);
  if (reinterpret_cast<uintptr_t>(bytes.data()) % kAlign != 0) {
    storage.resize((bytes.size() + kAlign - 1) / kAlign);
    std::memcpy(storage.data(), bytes.data(), bytes.size());
    bytes = std::string_view(reinterpret_cast<const char*>(storage.data()), bytes.size());
  }
  flatbuffers::Verifier verifier(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  if (!verifier.VerifyBuffer<T>(nullptr)) {
    status = Status::Corruption("catalog " + std::string(what) + " record does not decode");
    return nullptr;
  }
  return flatbuffers::GetRoot<T>(bytes.data());
}

std::string Str(const flatbuffers::String* s) { return s == nullptr ? std::string() : s->str(); }

// Copied bytewise: the verifier checks the alignment of a vector's length, not of its 64-bit elements, and a
// damaged value may hold them misaligned.
std::vector<uint64_t> Shape(const flatbuffers::Vector<uint64_t>* v) {
  std::vector<uint64_t> out;
  if (v == nullptr) return out;
  out.resize(v->size());
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t x = 0;
    std::memcpy(&x, v->Data() + i * sizeof(uint64_t), sizeof(x));
    out[i] = flatbuffers::EndianScalar(x);
  }
  return out;
}

DType FromFbDType(fb::DType d) {
  auto v = static_cast<uint8_t>(d);
  return v <= static_cast<uint8_t>(DType::kBool) ? static_cast<DType>(v) : DType::kUnknown;
}
fb::DType ToFbDType(DType d) { return static_cast<fb::DType>(static_cast<uint8_t>(d)); }

std::vector<CoActivation> CoActs(const flatbuffers::Vector<flatbuffers::Offset<fb::CoActivation>>* v) {
  std::vector<CoActivation> out;
  if (v == nullptr) return out;
  for (const auto* c : *v) out.push_back({c->layer(), c->expert(), c->count()});
  return out;
}

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<fb::CoActivation>>> CoActs(
    flatbuffers::FlatBufferBuilder& b, const std::vector<CoActivation>& v) {
  std::vector<flatbuffers::Offset<fb::CoActivation>> items;
  for (const auto& c : v) items.push_back(fb::CreateCoActivation(b, c.layer, c.expert, c.count));
  return b.CreateVector(items);
}

}  // namespace

Status ValidateModelName(std::string_view name) {
  constexpr size_t kMaxModelName = 128;
  if (name.empty() || name.size() > kMaxModelName) {
    return Status::InvalidArgument("model name must be 1 to 128 characters");
  }
  if (name.front() == '.') return Status::InvalidArgument("model name must not start with '.'");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return Status::InvalidArgument("model name '" + std::string(name) + "' may hold only A-Z a-z 0-9 . _ -");
  }
  return Status::Ok();
}

std::string ModelKey(std::string_view model) { return std::string(model); }

std::string ModelPrefix(std::string_view model) {
  std::string k(model);
  k.push_back('\0');
  return k;
}

std::string TensorKey(std::string_view model, std::string_view tensor) {
  std::string k = ModelPrefix(model);
  k.append(tensor);
  return k;
}

std::string LayerPrefix(std::string_view model, uint32_t layer) {
  std::string k = ModelPrefix(model);
  PutBe32(k, layer);
  return k;
}

std::string ExpertKey(std::string_view model, uint32_t layer, uint32_t expert) {
  std::string k = LayerPrefix(model, layer);
  PutBe32(k, expert);
  return k;
}

Result<ExpertId> ParseExpertKey(std::string_view key) {
  size_t nul = key.find('\0');
  if (nul == std::string_view::npos || key.size() != nul + 9) return Status::Corruption("malformed expert key");
  ExpertId id;
  id.model = std::string(key.substr(0, nul));
  id.layer = GetBe32(key.substr(nul + 1, 4));
  id.expert = GetBe32(key.substr(nul + 5, 4));
  return id;
}

Status ValidateDomainName(std::string_view domain) {
  constexpr size_t kMaxDomainName = 64;
  if (domain.empty() || domain.size() > kMaxDomainName) {
    return Status::InvalidArgument("domain name must be 1 to 64 characters");
  }
  for (char c : domain) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return Status::InvalidArgument("domain '" + std::string(domain) + "' may hold only A-Z a-z 0-9 . _ -");
  }
  return Status::Ok();
}

std::string DomainUsageKey(std::string_view model, uint32_t layer, uint32_t expert, std::string_view domain) {
  std::string k = ExpertKey(model, layer, expert);
  k.append(domain);
  return k;
}

Result<UsageKeyParts> ParseUsageKey(std::string_view key) {
  constexpr size_t kExpertSuffix = 9;  // \0 be32 be32
  size_t nul = key.find('\0');
  if (nul == std::string_view::npos || key.size() < nul + kExpertSuffix) return Status::Corruption("malformed usage key");
  UsageKeyParts parts;
  ES_ASSIGN_OR_RETURN(parts.id, ParseExpertKey(key.substr(0, nul + kExpertSuffix)));
  parts.domain = std::string(key.substr(nul + kExpertSuffix));
  if (!parts.domain.empty() && !ValidateDomainName(parts.domain).ok()) return Status::Corruption("malformed usage key");
  return parts;
}

Result<std::pair<std::string, std::string>> ParseTensorKey(std::string_view key) {
  size_t nul = key.find('\0');
  if (nul == std::string_view::npos) return Status::Corruption("malformed tensor key");
  return std::make_pair(std::string(key.substr(0, nul)), std::string(key.substr(nul + 1)));
}

void UsageCounts::MergeFrom(const UsageCounts& other) {
  activation_count += other.activation_count;
  gate_mass += other.gate_mass;
  gate_mass_sq += other.gate_mass_sq;
  success_count += other.success_count;
  last_used_unix_ms = std::max(last_used_unix_ms, other.last_used_unix_ms);
  if (other.coactivations.empty()) return;
  std::vector<CoActivation> merged;
  merged.reserve(coactivations.size() + other.coactivations.size());
  auto a = coactivations.begin();
  auto b = other.coactivations.begin();
  auto less = [](const CoActivation& x, const CoActivation& y) {
    return x.layer != y.layer ? x.layer < y.layer : x.expert < y.expert;
  };
  while (a != coactivations.end() || b != other.coactivations.end()) {
    if (b == other.coactivations.end() || (a != coactivations.end() && less(*a, *b))) {
      merged.push_back(*a++);
    } else if (a == coactivations.end() || less(*b, *a)) {
      merged.push_back(*b++);
    } else {
      CoActivation c = *a++;
      c.count += (b++)->count;
      merged.push_back(c);
    }
  }
  coactivations = std::move(merged);
}

std::string_view ElementTypeName(DType dtype, int32_t ggml_type) {
  if (ggml_type == kNoGgmlType) return DTypeName(dtype);
  const std::optional<GgmlTypeInfo> info = GgmlTypeById(static_cast<uint32_t>(ggml_type));
  return info ? info->name : "UNKNOWN";
}

StoredElements StoredElementsOf(GgmlType type) {
  switch (type) {
    case GgmlType::kF32: return {DType::kF32, kNoGgmlType};
    case GgmlType::kF16: return {DType::kF16, kNoGgmlType};
    case GgmlType::kBF16: return {DType::kBF16, kNoGgmlType};
    default: return {DType::kUnknown, static_cast<int32_t>(type)};
  }
}

std::optional<GgmlType> GgmlTypeOfStored(DType dtype, int32_t ggml_type) {
  if (ggml_type != kNoGgmlType) return static_cast<GgmlType>(ggml_type);
  switch (dtype) {
    case DType::kF32: return GgmlType::kF32;
    case DType::kF16: return GgmlType::kF16;
    case DType::kBF16: return GgmlType::kBF16;
    default: return std::nullopt;
  }
}

std::string EncodeTensor(const TensorInfo& v) {
  flatbuffers::FlatBufferBuilder b;
  fb::Extent e = ToFb(v.extent);
  auto rec = fb::CreateTensorRecordDirect(b, v.name.c_str(), ToFbDType(v.dtype), &v.shape, &e, v.component.c_str(),
                                          v.ggml_type);
  b.Finish(rec);
  return Finish(b);
}

Result<TensorInfo> DecodeTensor(std::string_view bytes) {
  Status s;
  std::vector<uint64_t> storage;
  const auto* r = Verified<fb::TensorRecord>(bytes, "tensor", s, storage);
  if (r == nullptr) return s;
  TensorInfo v;
  v.name = Str(r->name());
  v.dtype = FromFbDType(r->dtype());
  v.shape = Shape(r->shape());
  v.extent = FromFb(r->extent());
  v.component = Str(r->component());
  v.ggml_type = r->ggml_type();
  return v;
}

std::string EncodeExpert(const ExpertInfo& v) {
  flatbuffers::FlatBufferBuilder b;
  std::vector<flatbuffers::Offset<fb::Projection>> projections;
  for (const auto& p : v.projections) {
    projections.push_back(fb::CreateProjectionDirect(b, p.role.c_str(), p.source_name.c_str(), ToFbDType(p.dtype),
                                                     &p.shape, p.offset, p.length, p.ggml_type));
  }
  fb::Extent e = ToFb(v.extent);
  b.Finish(fb::CreateExpertRecordDirect(b, v.layer, v.expert, &e, &projections));
  return Finish(b);
}

Result<ExpertInfo> DecodeExpert(std::string_view bytes) {
  Status s;
  std::vector<uint64_t> storage;
  const auto* r = Verified<fb::ExpertRecord>(bytes, "expert", s, storage);
  if (r == nullptr) return s;
  ExpertInfo v;
  v.layer = r->layer();
  v.expert = r->expert();
  v.extent = FromFb(r->extent());
  if (r->projections() != nullptr) {
    for (const auto* p : *r->projections()) {
      v.projections.push_back({Str(p->role()), Str(p->source_name()), FromFbDType(p->dtype()), Shape(p->shape()),
                               p->offset(), p->length(), p->ggml_type()});
    }
  }
  return v;
}

std::string EncodeModel(const ModelInfo& v) {
  flatbuffers::FlatBufferBuilder b;
  std::vector<flatbuffers::Offset<fb::Asset>> assets;
  for (const auto& a : v.assets) {
    fb::Extent e = ToFb(a.extent);
    assets.push_back(fb::CreateAssetDirect(b, a.name.c_str(), &e));
  }
  b.Finish(fb::CreateModelRecordDirect(b, v.name.c_str(), v.arch.c_str(), v.config_json.c_str(), v.num_layers,
                                       v.experts_per_layer, v.top_k, v.hidden_size, v.moe_intermediate_size,
                                       v.vocab_size, v.num_experts, v.num_dense_tensors, v.total_bytes,
                                       v.source_fingerprint.c_str(), v.created_unix, v.complete, &assets));
  return Finish(b);
}

Result<ModelInfo> DecodeModel(std::string_view bytes) {
  Status s;
  std::vector<uint64_t> storage;
  const auto* r = Verified<fb::ModelRecord>(bytes, "model", s, storage);
  if (r == nullptr) return s;
  ModelInfo v;
  v.name = Str(r->name());
  v.arch = Str(r->arch());
  v.config_json = Str(r->config_json());
  v.num_layers = r->num_layers();
  v.experts_per_layer = r->experts_per_layer();
  v.top_k = r->top_k();
  v.hidden_size = r->hidden_size();
  v.moe_intermediate_size = r->moe_intermediate_size();
  v.vocab_size = r->vocab_size();
  v.num_experts = r->num_experts();
  v.num_dense_tensors = r->num_dense_tensors();
  v.total_bytes = r->total_bytes();
  v.source_fingerprint = Str(r->source_fingerprint());
  v.created_unix = r->created_unix();
  v.complete = r->complete();
  if (r->assets() != nullptr) {
    for (const auto* a : *r->assets()) v.assets.push_back({Str(a->name()), FromFb(a->extent())});
  }
  return v;
}

std::string EncodeUsage(const UsageCounts& v) {
  flatbuffers::FlatBufferBuilder b;
  auto co = CoActs(b, v.coactivations);
  b.Finish(fb::CreateUsageRecord(b, v.activation_count, v.gate_mass, v.gate_mass_sq, v.success_count,
                                 v.last_used_unix_ms, co));
  return Finish(b);
}

Result<UsageCounts> DecodeUsage(std::string_view bytes) {
  Status s;
  std::vector<uint64_t> storage;
  const auto* r = Verified<fb::UsageRecord>(bytes, "usage", s, storage);
  if (r == nullptr) return s;
  UsageCounts v;
  v.activation_count = r->activation_count();
  v.gate_mass = r->gate_mass();
  v.gate_mass_sq = r->gate_mass_sq();
  v.success_count = r->success_count();
  v.last_used_unix_ms = r->last_used_unix_ms();
  v.coactivations = CoActs(r->coactivations());
  auto less = [](const CoActivation& x, const CoActivation& y) {
    return x.layer != y.layer ? x.layer < y.layer : x.expert < y.expert;
  };
  for (size_t i = 1; i < v.coactivations.size(); ++i) {
    if (!less(v.coactivations[i - 1], v.coactivations[i])) {
      return Status::Corruption("usage record co-activations are not sorted and unique");
    }
  }
  return v;
}

std::string EncodeTrust(const TrustInfo& v) {
  flatbuffers::FlatBufferBuilder b;
  b.Finish(fb::CreateTrustRecord(b, v.trust, v.convergence_rate, v.stability, v.efficiency, v.raw_contribution,
                                 v.calibration_tokens, v.updated_unix, v.contribution_stderr, v.ablations));
  return Finish(b);
}

Result<TrustInfo> DecodeTrust(std::string_view bytes) {
  Status s;
  std::vector<uint64_t> storage;
  const auto* r = Verified<fb::TrustRecord>(bytes, "trust", s, storage);
  if (r == nullptr) return s;
  return TrustInfo{r->trust(),           r->convergence_rate(),   r->stability(),
                   r->efficiency(),      r->raw_contribution(),   r->calibration_tokens(),
                   r->updated_unix(),    r->contribution_stderr(), r->ablations()};
}

std::string EncodeProfile(const ProfileInfo& v) {
  flatbuffers::FlatBufferBuilder b;
  std::vector<flatbuffers::Offset<fb::DomainShare>> domains;
  for (const auto& d : v.domains) {
    domains.push_back(fb::CreateDomainShareDirect(b, d.domain.c_str(), d.activations, d.share, d.lift));
  }
  auto co = CoActs(b, v.top_coactivated);
  auto primary = b.CreateString(v.primary_domain);
  auto dv = b.CreateVector(domains);
  b.Finish(fb::CreateProfileRecord(b, primary, dv, co, v.updated_unix));
  return Finish(b);
}

Result<ProfileInfo> DecodeProfile(std::string_view bytes) {
  Status s;
  std::vector<uint64_t> storage;
  const auto* r = Verified<fb::ProfileRecord>(bytes, "profile", s, storage);
  if (r == nullptr) return s;
  ProfileInfo v;
  v.primary_domain = Str(r->primary_domain());
  if (r->domains() != nullptr) {
    for (const auto* d : *r->domains()) v.domains.push_back({Str(d->domain()), d->activations(), d->share(), d->lift()});
  }
  v.top_coactivated = CoActs(r->top_coactivated());
  v.updated_unix = r->updated_unix();
  return v;
}

}  // namespace es

namespace es {
std::string AssetRecordKey(std::string_view model, std::string_view asset) {
  std::string k = ModelPrefix(model);
  k += "asset/";
  k.append(asset);
  return k;
}
}  // namespace es

namespace es {

bool SameSourceFingerprint(std::string_view a, std::string_view b) {
  if (a.size() == kLayoutFingerprintChars) return b.substr(0, kLayoutFingerprintChars) == a;
  if (b.size() == kLayoutFingerprintChars) return a.substr(0, kLayoutFingerprintChars) == b;
  return a == b;
}

}  // namespace es
