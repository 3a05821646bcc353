// Catalog records as plain C++ values, their FlatBuffers encodings (store/catalog.fbs) and the big-endian
// key encodings of every column family. Decoding verifies the buffer: a damaged value is Corruption.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/base/dtype.h"
#include "store/base/ggml_type.h"
#include "store/segment_format.h"
#include "store/base/status.h"

namespace es {

// ---- keys -----------------------------------------------------------------------------------------------

// Model names: 1 to 128 characters of [A-Za-z0-9._-], not starting with '.'.
Status ValidateModelName(std::string_view name);

std::string ModelKey(std::string_view model);
// model \0 tensor-name
std::string TensorKey(std::string_view model, std::string_view tensor);
// model \0 be32(layer) be32(expert): the key of experts, usage, trust and profiles.
std::string ExpertKey(std::string_view model, uint32_t layer, uint32_t expert);
// model \0 be32(layer): prefix of a layer's experts.
std::string LayerPrefix(std::string_view model, uint32_t layer);
// model \0: prefix of all of a model's tensors or experts.
std::string ModelPrefix(std::string_view model);

struct ExpertId {
  std::string model;
  uint32_t layer = 0;
  uint32_t expert = 0;
};
Result<ExpertId> ParseExpertKey(std::string_view key);

// Domain labels (profile's {"domain"} field): 1 to 64 characters of [A-Za-z0-9._-].
Status ValidateDomainName(std::string_view domain);
// model \0 be32(layer) be32(expert) domain: an expert's usage recorded under a domain label, in the usage
// column family right after the expert's total (whose key is the plain expert key).
std::string DomainUsageKey(std::string_view model, uint32_t layer, uint32_t expert, std::string_view domain);
// A usage key: the expert and, for a domain-labelled counter, its domain (empty for the expert's total).
struct UsageKeyParts {
  ExpertId id;
  std::string domain;
};
Result<UsageKeyParts> ParseUsageKey(std::string_view key);
// Splits model \0 tensor-name.
Result<std::pair<std::string, std::string>> ParseTensorKey(std::string_view key);

// ---- values ---------------------------------------------------------------------------------------------

// A tensor's bytes are elements of `dtype`, or, when ggml_type is not kNoGgmlType, rows of blocks of that GGML
// format (store/base/ggml_type.h) and dtype is kUnknown.
inline constexpr int32_t kNoGgmlType = -1;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kUnknown;
  std::vector<uint64_t> shape;
  Extent extent;
  std::string component;
  int32_t ggml_type = kNoGgmlType;
};

struct ProjectionInfo {
  std::string role;
  std::string source_name;
  DType dtype = DType::kUnknown;
  std::vector<uint64_t> shape;
  uint64_t offset = 0;
  uint64_t length = 0;
  int32_t ggml_type = kNoGgmlType;
};

// The name of what a tensor holds: the dtype's ("BF16"), or the GGML format's ("Q4_K").
std::string_view ElementTypeName(DType dtype, int32_t ggml_type);

// How elements of a GGML type are stored: F32, F16 and BF16 as plain dtypes, the block formats as ggml_type (dtype
// kUnknown).
struct StoredElements {
  DType dtype = DType::kUnknown;
  int32_t ggml_type = kNoGgmlType;
};
StoredElements StoredElementsOf(GgmlType type);
// The GGML type of stored elements (plain F32, F16 and BF16 as their GGML twins); nullopt for another dtype.
std::optional<GgmlType> GgmlTypeOfStored(DType dtype, int32_t ggml_type);

struct ExpertInfo {
  uint32_t layer = 0;
  uint32_t expert = 0;
  Extent extent;
  std::vector<ProjectionInfo> projections;
};

struct AssetInfo {
  std::string name;
  Extent extent;
};

struct ModelInfo {
  std::string name;
  std::string arch;
  std::string config_json;
  uint32_t num_layers = 0;
  uint32_t experts_per_layer = 0;
  uint32_t top_k = 0;
  uint32_t hidden_size = 0;
  uint32_t moe_intermediate_size = 0;
  uint32_t vocab_size = 0;
  uint64_t num_experts = 0;
  uint64_t num_dense_tensors = 0;
  uint64_t total_bytes = 0;
  std::string source_fingerprint;
  uint64_t created_unix = 0;
  bool complete = false;
  std::vector<AssetInfo> assets;
};

struct CoActivation {
  uint32_t layer = 0;
  uint32_t expert = 0;
  uint64_t count = 0;
  bool operator==(const CoActivation&) const = default;
};

struct UsageCounts {
  uint64_t activation_count = 0;
  double gate_mass = 0;
  double gate_mass_sq = 0;
  uint64_t success_count = 0;
  uint64_t last_used_unix_ms = 0;
  std::vector<CoActivation> coactivations;  // sorted by (layer, expert), unique

  // Adds `other` into this: counters add, last_used takes the max, co-activations add per (layer, expert).
  void MergeFrom(const UsageCounts& other);
};

struct TrustInfo {
  double trust = 0;
  double convergence_rate = 0;
  double stability = 0;
  double efficiency = 0;
  double raw_contribution = 0;
  uint64_t calibration_tokens = 0;
  uint64_t updated_unix = 0;
  double contribution_stderr = 0;  // standard error of raw_contribution (0: one ablation, or an older record)
  uint64_t ablations = 0;          // ablations raw_contribution averages
};

struct DomainShare {
  std::string domain;
  uint64_t activations = 0;
  double share = 0;
  double lift = 0;
};

struct ProfileInfo {
  std::string primary_domain;
  std::vector<DomainShare> domains;
  std::vector<CoActivation> top_coactivated;
  uint64_t updated_unix = 0;
};

// Source fingerprints stored before ingest sampled tensor data are the layout part alone: this many hex digits.
inline constexpr size_t kLayoutFingerprintChars = 16;
// True when two source fingerprints name the same checkpoint. A layout-only fingerprint (from an earlier version)
// is compared with the layout part of the other.
bool SameSourceFingerprint(std::string_view a, std::string_view b);

std::string EncodeTensor(const TensorInfo& v);
Result<TensorInfo> DecodeTensor(std::string_view bytes);
std::string EncodeExpert(const ExpertInfo& v);
Result<ExpertInfo> DecodeExpert(std::string_view bytes);
std::string EncodeModel(const ModelInfo& v);
Result<ModelInfo> DecodeModel(std::string_view bytes);
std::string EncodeUsage(const UsageCounts& v);
Result<UsageCounts> DecodeUsage(std::string_view bytes);
std::string EncodeTrust(const TrustInfo& v);
Result<TrustInfo> DecodeTrust(std::string_view bytes);
std::string EncodeProfile(const ProfileInfo& v);
Result<ProfileInfo> DecodeProfile(std::string_view bytes);

}  // namespace es

namespace es {
// The key written into an asset record's header: model \0 "asset/" name.
std::string AssetRecordKey(std::string_view model, std::string_view asset);
}  // namespace es
