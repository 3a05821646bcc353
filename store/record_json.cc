// The JSON views of catalog records.
#include "store/record_json.h"

#include <cstdio>
#include <string>

namespace es {

namespace {

void OptionalDouble(JsonWriter& w, bool present, double v) {
  if (present) {
    w.Double(v);
  } else {
    w.Null();
  }
}

constexpr char kProfilesFormat[] = "expertstore-profiles";

}  // namespace

std::string ChecksumHex(uint64_t checksum) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(checksum));
  return buf;
}

void WriteModelFields(JsonWriter& w, const ModelInfo& m) {
  w.Key("name").String(m.name)
      .Key("arch").String(m.arch)
      .Key("layers").Uint(m.num_layers)
      .Key("experts_per_layer").Uint(m.experts_per_layer)
      .Key("top_k").Uint(m.top_k)
      .Key("hidden_size").Uint(m.hidden_size)
      .Key("moe_intermediate_size").Uint(m.moe_intermediate_size)
      .Key("vocab_size").Uint(m.vocab_size)
      .Key("experts").Uint(m.num_experts)
      .Key("dense_tensors").Uint(m.num_dense_tensors)
      .Key("bytes").Uint(m.total_bytes)
      .Key("complete").Bool(m.complete)
      .Key("source_fingerprint").String(m.source_fingerprint)
      .Key("assets").BeginArray();
  for (const auto& a : m.assets) w.String(a.name);
  w.EndArray();
}

std::string_view ExpertTypeName(const ExpertInfo& e) {
  return e.projections.empty() ? DTypeName(DType::kUnknown)
                               : ElementTypeName(e.projections[0].dtype, e.projections[0].ggml_type);
}

void WriteExpertFields(JsonWriter& w, const ExpertInfo& e) {
  w.Key("layer").Uint(e.layer).Key("expert").Uint(e.expert).Key("bytes").Uint(e.extent.payload_length)
      .Key("dtype").String(ExpertTypeName(e)).Key("checksum").String(ChecksumHex(e.extent.checksum));
}

void WriteExpertRowFields(JsonWriter& w, const ExpertRow& row) {
  WriteExpertFields(w, row.expert);
  w.Key("trust");
  OptionalDouble(w, row.trust.has_value(), row.trust ? row.trust->trust : 0);
  w.Key("activations").Uint(row.usage.activation_count);
}

void WriteExpertDetailFields(JsonWriter& w, const ExpertInfo& e, const std::optional<TrustInfo>& trust,
                             const std::optional<ProfileInfo>& profile, const std::optional<UsageCounts>& usage) {
  WriteExpertFields(w, e);
  w.Key("tensors");
  WriteProjectionsJson(w, e.projections);
  w.Key("extent");
  WriteExtentJson(w, e.extent);
  w.Key("trust");
  WriteTrustJson(w, trust);
  w.Key("profile");
  WriteProfileJson(w, profile);
  w.Key("usage");
  WriteUsageJson(w, usage);
  w.Key("activations").Uint(usage ? usage->activation_count : 0);
}

void WriteProjectionsJson(JsonWriter& w, const std::vector<ProjectionInfo>& projections) {
  w.BeginArray();
  for (const auto& p : projections) {
    w.BeginObject().Key("role").String(p.role).Key("name").String(p.source_name).Key("dtype").String(ElementTypeName(p.dtype, p.ggml_type))
        .Key("shape").BeginArray();
    for (uint64_t d : p.shape) w.Uint(d);
    w.EndArray().Key("offset").Uint(p.offset).Key("length").Uint(p.length).EndObject();
  }
  w.EndArray();
}

void WriteExtentJson(JsonWriter& w, const Extent& extent) {
  w.BeginObject().Key("segment").Uint(extent.segment).Key("offset").Uint(extent.offset)
      .Key("record_length").Uint(extent.record_length).EndObject();
}

void WriteTrustFields(JsonWriter& w, const std::optional<TrustInfo>& t) {
  const bool has = t.has_value();
  w.Key("trust");
  OptionalDouble(w, has, has ? t->trust : 0);
  w.Key("convergence_rate");
  OptionalDouble(w, has, has ? t->convergence_rate : 0);
  w.Key("stability");
  OptionalDouble(w, has, has ? t->stability : 0);
  w.Key("efficiency");
  OptionalDouble(w, has, has ? t->efficiency : 0);
  w.Key("raw_contribution");
  OptionalDouble(w, has, has ? t->raw_contribution : 0);
  w.Key("contribution_stderr");
  OptionalDouble(w, has, has ? t->contribution_stderr : 0);
  w.Key("ablations");
  if (has) {
    w.Uint(t->ablations);
  } else {
    w.Null();
  }
  w.Key("calibration_tokens");
  if (has) {
    w.Uint(t->calibration_tokens);
  } else {
    w.Null();
  }
  w.Key("updated_unix");
  if (has) {
    w.Uint(t->updated_unix);
  } else {
    w.Null();
  }
}

void WriteTrustJson(JsonWriter& w, const std::optional<TrustInfo>& t) {
  if (!t) {
    w.Null();
    return;
  }
  w.BeginObject();
  WriteTrustFields(w, t);
  w.EndObject();
}

void WriteProfileFields(JsonWriter& w, const ProfileInfo& p) {
  w.Key("primary_domain").String(p.primary_domain).Key("domains").BeginArray();
  for (const auto& d : p.domains) {
    w.BeginObject().Key("domain").String(d.domain).Key("activations").Uint(d.activations).Key("share").Double(d.share)
        .Key("lift").Double(d.lift).EndObject();
  }
  w.EndArray().Key("top_coactivated").BeginArray();
  for (const auto& c : p.top_coactivated) {
    w.BeginObject().Key("layer").Uint(c.layer).Key("expert").Uint(c.expert).Key("count").Uint(c.count).EndObject();
  }
  w.EndArray().Key("updated_unix").Uint(p.updated_unix);
}

void WriteProfileJson(JsonWriter& w, const std::optional<ProfileInfo>& p) {
  if (!p) {
    w.Null();
    return;
  }
  w.BeginObject();
  WriteProfileFields(w, *p);
  w.EndObject();
}

void WriteUsageFields(JsonWriter& w, const UsageCounts& u) {
  w.Key("activation_count").Uint(u.activation_count)
      .Key("gate_mass").Double(u.gate_mass)
      .Key("success_count").Uint(u.success_count)
      .Key("last_used_unix_ms").Uint(u.last_used_unix_ms);
}

void WriteUsageJson(JsonWriter& w, const std::optional<UsageCounts>& u) {
  if (!u) {
    w.Null();
    return;
  }
  w.BeginObject();
  WriteUsageFields(w, *u);
  w.EndObject();
}

void WriteQueryRowJson(JsonWriter& w, const ExpertQueryRow& r) {
  w.BeginObject().Key("layer").Uint(r.layer).Key("expert").Uint(r.expert).Key("domain");
  if (r.domain.empty()) {
    w.Null();  // no profile
  } else {
    w.String(r.domain);
  }
  w.Key("lift").Double(r.lift).Key("share").Double(r.share).Key("domain_activations").Uint(r.domain_activations)
      .Key("activations").Uint(r.activations).Key("trust");
  OptionalDouble(w, r.has_trust, r.trust);
  w.EndObject();
}

void WriteQueryResultJson(JsonWriter& w, std::string_view model, const ExpertQuery& query, std::string_view order,
                          const std::vector<ExpertQueryRow>& rows) {
  w.BeginObject().Key("object").String("list").Key("model").String(model).Key("domain");
  if (query.domain.empty()) {
    w.Null();
  } else {
    w.String(rows.empty() ? query.domain : rows.front().domain);  // rows carry the domain as the profiles spell it
  }
  w.Key("order").String(order).Key("data").BeginArray();
  for (const ExpertQueryRow& r : rows) WriteQueryRowJson(w, r);
  w.EndArray().EndObject();
}

void WriteProfilesDocument(JsonWriter& w, const ModelInfo& model,
                           const std::map<std::pair<uint32_t, uint32_t>, ProfileInfo>& profiles) {
  w.BeginObject().Key("format").String(kProfilesFormat).Key("version").Uint(kProfilesFormatVersion)
      .Key("model").String(model.name).Key("arch").String(model.arch).Key("layers").Uint(model.num_layers)
      .Key("experts_per_layer").Uint(model.experts_per_layer).Key("experts").BeginArray();
  for (const auto& [id, p] : profiles) {
    w.BeginObject().Key("layer").Uint(id.first).Key("expert").Uint(id.second);
    WriteProfileFields(w, p);
    w.EndObject();
  }
  w.EndArray().EndObject();
}

namespace {

Result<uint64_t> U64(const JsonValue* v, std::string_view what) {
  if (v == nullptr || !v->is_integer() || !v->AsUint64().ok()) {
    return Status::InvalidArgument(std::string(what) + " must be a non-negative integer");
  }
  return *v->AsUint64();
}

Result<uint32_t> U32(const JsonValue* v, std::string_view what) {
  ES_ASSIGN_OR_RETURN(uint64_t x, U64(v, what));
  if (x > UINT32_MAX) return Status::InvalidArgument(std::string(what) + " is out of range");
  return static_cast<uint32_t>(x);
}

Result<double> Number(const JsonValue* v, std::string_view what) {
  if (v == nullptr || !v->is_number()) return Status::InvalidArgument(std::string(what) + " must be a number");
  return v->AsDouble();
}

Result<std::string> String(const JsonValue* v, std::string_view what) {
  if (v == nullptr || !v->is_string()) return Status::InvalidArgument(std::string(what) + " must be a string");
  return v->string_value();
}

// The profile fields of one exported expert (WriteProfileFields' keys).
Result<ProfileInfo> ParseProfileFields(const JsonValue& e) {
  ProfileInfo p;
  ES_ASSIGN_OR_RETURN(p.primary_domain, String(e.Find("primary_domain"), "primary_domain"));
  if (const JsonValue* u = e.Find("updated_unix"); u != nullptr) {
    ES_ASSIGN_OR_RETURN(p.updated_unix, U64(u, "updated_unix"));
  }
  const JsonValue* domains = e.Find("domains");
  if (domains == nullptr || !domains->is_array()) return Status::InvalidArgument("domains must be an array");
  for (const JsonValue& d : domains->array()) {
    DomainShare s;
    ES_ASSIGN_OR_RETURN(s.domain, String(d.Find("domain"), "domain"));
    ES_RETURN_IF_ERROR(ValidateDomainName(s.domain));
    ES_ASSIGN_OR_RETURN(s.activations, U64(d.Find("activations"), "activations"));
    ES_ASSIGN_OR_RETURN(s.share, Number(d.Find("share"), "share"));
    ES_ASSIGN_OR_RETURN(s.lift, Number(d.Find("lift"), "lift"));
    p.domains.push_back(std::move(s));
  }
  const JsonValue* co = e.Find("top_coactivated");
  if (co != nullptr && co->is_array()) {
    for (const JsonValue& c : co->array()) {
      CoActivation a;
      ES_ASSIGN_OR_RETURN(a.layer, U32(c.Find("layer"), "top_coactivated.layer"));
      ES_ASSIGN_OR_RETURN(a.expert, U32(c.Find("expert"), "top_coactivated.expert"));
      ES_ASSIGN_OR_RETURN(a.count, U64(c.Find("count"), "top_coactivated.count"));
      p.top_coactivated.push_back(a);
    }
  }
  return p;
}

Result<ProfilesDocument> ParseProfilesDocumentBody(const JsonValue& doc) {
  const JsonValue* format = doc.Find("format");
  if (format == nullptr || !format->is_string() || format->string_value() != kProfilesFormat) {
    return Status::InvalidArgument("not an expertstore profiles export");
  }
  ES_ASSIGN_OR_RETURN(uint32_t version, U32(doc.Find("version"), "version"));
  if (version != kProfilesFormatVersion) {
    return Status::NotSupported("profiles format version " + std::to_string(version) + " (this build reads " +
                                std::to_string(kProfilesFormatVersion) + ")");
  }
  ProfilesDocument out;
  if (const JsonValue* m = doc.Find("model"); m != nullptr && m->is_string()) out.model = m->string_value();
  ES_ASSIGN_OR_RETURN(out.layers, U32(doc.Find("layers"), "layers"));
  ES_ASSIGN_OR_RETURN(out.experts_per_layer, U32(doc.Find("experts_per_layer"), "experts_per_layer"));
  const JsonValue* experts = doc.Find("experts");
  if (experts == nullptr || !experts->is_array()) return Status::InvalidArgument("\"experts\" must be an array");
  for (const JsonValue& e : experts->array()) {
    ES_ASSIGN_OR_RETURN(uint32_t layer, U32(e.Find("layer"), "layer"));
    ES_ASSIGN_OR_RETURN(uint32_t expert, U32(e.Find("expert"), "expert"));
    if (layer >= out.layers || expert >= out.experts_per_layer) {
      return Status::InvalidArgument("an expert lies outside the model");
    }
    ES_ASSIGN_OR_RETURN(ProfileInfo p, ParseProfileFields(e));
    out.profiles.push_back({{layer, expert}, std::move(p)});
  }
  return out;
}

}  // namespace

Result<ProfilesDocument> ParseProfilesDocument(std::string_view text) {
  ES_ASSIGN_OR_RETURN(JsonValue doc, ParseJson(text));
  return ParseProfilesDocumentBody(doc);
}

}  // namespace es
