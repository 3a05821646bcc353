// One JSON view per catalog record (a model, an expert, its trust, profile and usage records, a query row),
// written into a JsonWriter: what `serve` answers and what every command prints with --json, so that a record has
// one shape wherever it is shown. The *Fields functions write keys into an object the caller has opened, so that a
// route can add its envelope keys ("object", "id") and a command its own; the *Json functions write a whole value
// (null for an absent record).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string_view>
#include <utility>
#include <string>
#include <vector>

#include "store/base/json.h"
#include "store/metadata.h"
#include "store/records.h"

namespace es {

// A record checksum as the views show it: 16 lowercase hex digits.
std::string ChecksumHex(uint64_t checksum);
// An expert's element type as the views show it: its first projection's ("BF16", "Q4_K"; "UNKNOWN" without
// projections). A GGUF expert may mix formats across its projections; `show` lists each.
std::string_view ExpertTypeName(const ExpertInfo& e);

// name, arch, layers, experts_per_layer, top_k, hidden_size, moe_intermediate_size, vocab_size, experts,
// dense_tensors, bytes, complete, source_fingerprint, assets (names).
void WriteModelFields(JsonWriter& w, const ModelInfo& m);

// layer, expert, bytes (payload), dtype (the first projection's), checksum (16 hex digits).
void WriteExpertFields(JsonWriter& w, const ExpertInfo& e);
// An expert in a list: its fields, trust (the score; null before calibration) and activations.
void WriteExpertRowFields(JsonWriter& w, const ExpertRow& row);
// The whole expert: its fields, tensors, extent, trust, profile and usage (objects, null when absent) and
// activations.
void WriteExpertDetailFields(JsonWriter& w, const ExpertInfo& e, const std::optional<TrustInfo>& trust,
                             const std::optional<ProfileInfo>& profile, const std::optional<UsageCounts>& usage);

// [{role, name, dtype, shape, offset, length}].
void WriteProjectionsJson(JsonWriter& w, const std::vector<ProjectionInfo>& projections);
// {segment, offset, record_length}.
void WriteExtentJson(JsonWriter& w, const Extent& extent);

// trust, convergence_rate, stability, efficiency, raw_contribution, calibration_tokens, updated_unix; every value
// null when the expert was never calibrated.
void WriteTrustFields(JsonWriter& w, const std::optional<TrustInfo>& t);
void WriteTrustJson(JsonWriter& w, const std::optional<TrustInfo>& t);
// primary_domain, domains [{domain, activations, share, lift}], top_coactivated [{layer, expert, count}],
// updated_unix.
void WriteProfileFields(JsonWriter& w, const ProfileInfo& p);
void WriteProfileJson(JsonWriter& w, const std::optional<ProfileInfo>& p);
// activation_count, gate_mass, success_count, last_used_unix_ms (zeros before any use).
void WriteUsageFields(JsonWriter& w, const UsageCounts& u);
void WriteUsageJson(JsonWriter& w, const std::optional<UsageCounts>& u);

// {layer, expert, domain (null without a profile), lift, share, domain_activations, activations, trust (null
// before calibration)}.
void WriteQueryRowJson(JsonWriter& w, const ExpertQueryRow& r);
// A query's result, as `query --json` prints it and the HTTP query route answers: {object: "list", model, domain
// (as the profiles spell it; null for each expert's primary), order (as given), data: [row...]}.
void WriteQueryResultJson(JsonWriter& w, std::string_view model, const ExpertQuery& query, std::string_view order,
                          const std::vector<ExpertQueryRow>& rows);

// ---- the profiles export document (profiles export|import): the profile view, written and read back ----

inline constexpr uint64_t kProfilesFormatVersion = 1;

// {format: "expertstore-profiles", version, model, arch, layers, experts_per_layer, experts: [{layer, expert,
// <profile fields>}]}.
void WriteProfilesDocument(JsonWriter& w, const ModelInfo& model,
                           const std::map<std::pair<uint32_t, uint32_t>, ProfileInfo>& profiles);

struct ProfilesDocument {
  std::string model;  // the model it was exported from ("" when the document names none)
  uint32_t layers = 0;
  uint32_t experts_per_layer = 0;
  std::vector<std::pair<std::pair<uint32_t, uint32_t>, ProfileInfo>> profiles;  // by (layer, expert)
};
// Reads a document WriteProfilesDocument wrote (or another instance's). InvalidArgument naming what is wrong: not
// such a document, a field of the wrong type, a bad domain name, an expert outside layers x experts_per_layer;
// NotSupported for another format version.
Result<ProfilesDocument> ParseProfilesDocument(std::string_view text);

}  // namespace es
