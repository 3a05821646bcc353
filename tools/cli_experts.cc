// Expert commands: experts (list a model's experts) and show (one expert: tensors, checksum, trust, profile).
#include <cstdio>
#include <optional>

#include "store/metadata.h"
#include "store/record_json.h"
#include "tools/cli.h"

namespace es::cli {

namespace {

std::string ShapeText(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Status RunExperts(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  ES_ASSIGN_OR_RETURN(ModelInfo info, LoadModelInfo(store->catalog(), model));
  std::string prefix = ModelPrefix(model);
  if (args.Has("layer")) {
    ES_ASSIGN_OR_RETURN(int64_t layer, args.GetInt("layer", 0, 0, static_cast<int64_t>(info.num_layers) - 1));
    prefix = LayerPrefix(model, static_cast<uint32_t>(layer));
  }
  ES_ASSIGN_OR_RETURN(auto rows, LoadExpertRows(store->catalog(), prefix));
  if (args.global().json) {
    JsonWriter w;
    w.BeginArray();
    for (const ExpertRow& row : rows) {
      w.BeginObject();
      WriteExpertRowFields(w, row);
      w.EndObject();
    }
    w.EndArray();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("%5s %6s %12s %6s %8s %12s\n", "LAYER", "EXPERT", "BYTES", "DTYPE", "TRUST", "ACTIVATIONS");
  for (const ExpertRow& row : rows) {
    const ExpertInfo& e = row.expert;
    std::string t = row.trust ? std::to_string(row.trust->trust).substr(0, 6) : "-";
    std::printf("%5u %6u %12llu %6s %8s %12llu\n", e.layer, e.expert,
                static_cast<unsigned long long>(e.extent.payload_length), std::string(ExpertTypeName(e)).c_str(),
                t.c_str(), static_cast<unsigned long long>(row.usage.activation_count));
  }
  return Status::Ok();
}

Status RunShow(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  ES_ASSIGN_OR_RETURN(ModelInfo info, LoadModelInfo(store->catalog(), model));
  if (!args.Has("layer") || !args.Has("expert")) return Status::InvalidArgument("show needs --layer and --expert");
  ES_ASSIGN_OR_RETURN(int64_t layer, args.GetInt("layer", 0, 0, static_cast<int64_t>(info.num_layers) - 1));
  ES_ASSIGN_OR_RETURN(int64_t expert, args.GetInt("expert", 0, 0, static_cast<int64_t>(info.experts_per_layer) - 1));
  std::string key = ExpertKey(model, static_cast<uint32_t>(layer), static_cast<uint32_t>(expert));
  auto v = store->catalog().Get(Cf::kExperts, key);
  if (v.status().IsNotFound()) {
    return Status::NotFound("model '" + model + "' has no expert " + std::to_string(expert) + " in layer " +
                            std::to_string(layer) + " (a partial checkpoint)");
  }
  if (!v.ok()) return v.status();
  ES_ASSIGN_OR_RETURN(ExpertInfo e, DecodeExpert(*v));
  ES_ASSIGN_OR_RETURN(auto trust, LoadOptionalRecord<TrustInfo>(store->catalog(), Cf::kTrust, key, DecodeTrust));
  ES_ASSIGN_OR_RETURN(auto profile, LoadOptionalRecord<ProfileInfo>(store->catalog(), Cf::kProfiles, key, DecodeProfile));
  ES_ASSIGN_OR_RETURN(auto usage, LoadOptionalRecord<UsageCounts>(store->catalog(), Cf::kUsage, key, DecodeUsage));
  const std::string checksum = ChecksumHex(e.extent.checksum);
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("model").String(model);
    WriteExpertDetailFields(w, e, trust, profile, usage);
    w.EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("model %s, layer %u, expert %u: %s, xxh3 %s, segment %u offset %llu\n", model.c_str(), e.layer, e.expert,
              HumanBytes(e.extent.payload_length).c_str(), checksum.c_str(), e.extent.segment,
              static_cast<unsigned long long>(e.extent.offset));
  for (const auto& p : e.projections) {
    std::printf("  %-5s %-6s %-14s %s\n", p.role.c_str(), std::string(ElementTypeName(p.dtype, p.ggml_type)).c_str(),
                ShapeText(p.shape).c_str(), p.source_name.c_str());
  }
  if (trust) {
    std::printf("  trust %.4f (convergence %.4f, stability %.4f, efficiency %.4f)\n", trust->trust,
                trust->convergence_rate, trust->stability, trust->efficiency);
  } else {
    std::printf("  trust: not calibrated\n");
  }
  std::printf("  activations %llu\n", static_cast<unsigned long long>(usage ? usage->activation_count : 0));
  if (profile) std::printf("  primary domain %s\n", profile->primary_domain.c_str());
  return Status::Ok();
}

}  // namespace

void RegisterExpertCommands(std::vector<Command>& commands) {
  commands.push_back({"experts", "experts --model M [--layer L]", "list a model's experts",
                      {{"model", true, "model name"}, {"layer", true, "only this layer"}}, RunExperts});
  commands.push_back({"show", "show --model M --layer L --expert E",
                      "one expert: tensors, checksum, trust record, profile",
                      {{"model", true, "model name"}, {"layer", true, "layer"}, {"expert", true, "expert"}}, RunShow});
}

}  // namespace es::cli
