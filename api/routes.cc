// Route matching and the handler of each route.
#include "api/routes.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <functional>
#include <map>

#include "api/blob.h"
#include "api/dashboard.h"
#include "api/errors.h"
#include "compute/runtime/model_runtime.h"
#include "store/base/aligned_buffer.h"
#include "store/base/json.h"
#include "store/metadata.h"
#include "store/record_json.h"

namespace es::api {

namespace {

constexpr std::string_view kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

ApiResponse Json(std::string body) {
  ApiResponse r;
  r.body = std::move(body);
  return r;
}

// A decimal uint32 path segment or query value. InvalidArgument naming `what` otherwise.
Result<uint32_t> ParseU32(std::string_view text, std::string_view what) {
  uint32_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) {
    return Status::InvalidArgument(std::string(what) + " must be a non-negative integer, not '" + std::string(text) + "'");
  }
  return v;
}

Result<ModelInfo> LoadModel(Store& store, const std::string& name) {
  ES_RETURN_IF_ERROR(ValidateModelName(name));
  return LoadModelInfo(store.catalog(), name);
}

// The OpenAI model object: its envelope (id, object, created, owned_by), then the model record's view.
void WriteModel(JsonWriter& w, const ModelInfo& m) {
  w.BeginObject()
      .Key("id").String(m.name)
      .Key("object").String("model")
      .Key("created").Uint(m.created_unix)
      .Key("owned_by").String("expertstore");
  WriteModelFields(w, m);
  w.EndObject();
}

// ---- routes ---------------------------------------------------------------------------------------------------

Result<ApiResponse> Models(const ApiContext& ctx) {
  ES_ASSIGN_OR_RETURN(auto models, ctx.store->ListModels());
  JsonWriter w;
  w.BeginObject().Key("object").String("list").Key("data").BeginArray();
  for (const auto& m : models) WriteModel(w, m);
  w.EndArray().EndObject();
  return Json(w.Take());
}

Result<ApiResponse> GetModel(const ApiContext& ctx, const std::string& name) {
  ES_ASSIGN_OR_RETURN(ModelInfo m, LoadModel(*ctx.store, name));
  JsonWriter w;
  WriteModel(w, m);
  return Json(w.Take());
}

// ?layer=L: the one layer a list or query is restricted to, if any (InvalidArgument beyond the model's layers).
Result<std::optional<uint32_t>> LayerOf(const ModelInfo& m, const Target& t) {
  auto it = t.query.find("layer");
  if (it == t.query.end()) return std::optional<uint32_t>();
  ES_ASSIGN_OR_RETURN(uint32_t layer, ParseU32(it->second, "layer"));
  if (layer >= m.num_layers) {
    return Status::InvalidArgument("layer " + std::to_string(layer) + " is out of range: the model has " +
                                   std::to_string(m.num_layers) + " layers");
  }
  return std::optional<uint32_t>(layer);
}

Result<ApiResponse> Experts(const ApiContext& ctx, const std::string& name, const Target& t) {
  ES_ASSIGN_OR_RETURN(ModelInfo m, LoadModel(*ctx.store, name));
  ES_ASSIGN_OR_RETURN(const std::optional<uint32_t> layer, LayerOf(m, t));
  std::shared_ptr<const std::vector<ExpertRow>> rows;  // from memory: the whole model's, filtered below
  if (ctx.metadata != nullptr) {
    ES_ASSIGN_OR_RETURN(rows, ctx.metadata->ExpertRows(ctx.store->catalog(), m.name));
  } else {
    ES_ASSIGN_OR_RETURN(auto loaded, LoadExpertRows(ctx.store->catalog(),
                                                    layer ? LayerPrefix(m.name, *layer) : ModelPrefix(m.name)));
    rows = std::make_shared<const std::vector<ExpertRow>>(std::move(loaded));
  }
  JsonWriter w;
  w.BeginObject().Key("object").String("list").Key("model").String(m.name).Key("data").BeginArray();
  for (const ExpertRow& row : *rows) {
    if (layer && row.expert.layer != *layer) continue;
    w.BeginObject();
    WriteExpertRowFields(w, row);
    w.EndObject();
  }
  w.EndArray().EndObject();
  return Json(w.Take());
}

struct ExpertPath {
  ModelInfo model;
  ExpertInfo expert;
  std::string key;
};

Result<ExpertPath> ResolveExpert(const ApiContext& ctx, const std::vector<std::string>& seg) {
  ExpertPath p;
  ES_ASSIGN_OR_RETURN(p.model, LoadModel(*ctx.store, seg[2]));
  ES_ASSIGN_OR_RETURN(uint32_t layer, ParseU32(seg[4], "layer"));
  ES_ASSIGN_OR_RETURN(uint32_t expert, ParseU32(seg[5], "expert"));
  if (layer >= p.model.num_layers || expert >= p.model.experts_per_layer) {
    return Status::NotFound("model '" + p.model.name + "' has " + std::to_string(p.model.num_layers) + " layers of " +
                            std::to_string(p.model.experts_per_layer) + " experts: no layer " + std::to_string(layer) +
                            " expert " + std::to_string(expert));
  }
  p.key = ExpertKey(p.model.name, layer, expert);
  auto v = ctx.store->catalog().Get(Cf::kExperts, p.key);
  if (v.status().IsNotFound()) {
    return Status::NotFound("model '" + p.model.name + "' has no expert " + std::to_string(expert) + " in layer " +
                            std::to_string(layer) + " (a partial checkpoint)");
  }
  if (!v.ok()) return v.status();
  ES_ASSIGN_OR_RETURN(p.expert, DecodeExpert(*v));
  return p;
}

Result<ApiResponse> Expert(const ApiContext& ctx, const Target& t) {
  ES_ASSIGN_OR_RETURN(ExpertPath p, ResolveExpert(ctx, t.segments));
  ES_ASSIGN_OR_RETURN(auto trust, LoadOptionalRecord<TrustInfo>(ctx.store->catalog(), Cf::kTrust, p.key, DecodeTrust));
  ES_ASSIGN_OR_RETURN(auto profile, LoadOptionalRecord<ProfileInfo>(ctx.store->catalog(), Cf::kProfiles, p.key, DecodeProfile));
  ES_ASSIGN_OR_RETURN(auto usage, LoadOptionalRecord<UsageCounts>(ctx.store->catalog(), Cf::kUsage, p.key, DecodeUsage));
  const ExpertInfo& e = p.expert;
  JsonWriter w;
  w.BeginObject().Key("object").String("expert").Key("model").String(p.model.name);
  WriteExpertDetailFields(w, e, trust, profile, usage);
  w.Key("blob").String("/v1/models/" + p.model.name + "/experts/" + std::to_string(e.layer) + "/" +
                       std::to_string(e.expert) + "/blob");
  w.EndObject();
  return Json(w.Take());
}

Result<ApiResponse> Blob(const ApiContext& ctx, const Target& t) {
  ES_ASSIGN_OR_RETURN(ExpertPath p, ResolveExpert(ctx, t.segments));
  ES_ASSIGN_OR_RETURN(ExtentReader::Record read, ctx.store->reader().ReadRecord(p.expert.extent));
  ApiResponse r;
  r.content_type = std::string(kBlobContentType);
  r.body = EncodeExpertBlob(p.model, p.expert, read.payload);
  const std::string checksum = ChecksumHex(p.expert.extent.checksum);
  r.headers.emplace_back("X-Expertstore-Checksum", checksum);
  std::string etag;
  etag.append("\"").append(checksum).append("\"");  // not "\"" + ...: GCC 12 warns falsely (-Wrestrict)
  r.headers.emplace_back("ETag", std::move(etag));
  if (ctx.metrics != nullptr) ctx.metrics->AddBlobBytes(read.payload.size());
  return r;
}

// The query command's ranking (store/metadata.h QueryExperts) over HTTP: the same parameters, the same order.
Result<ApiResponse> Query(const ApiContext& ctx, const std::string& name, const Target& t) {
  ES_ASSIGN_OR_RETURN(ModelInfo m, LoadModel(*ctx.store, name));
  ExpertQuery q;
  ES_ASSIGN_OR_RETURN(const std::optional<uint32_t> layer, LayerOf(m, t));
  if (layer) {
    q.layer = *layer;
    q.has_layer = true;
  }
  if (auto it = t.query.find("domain"); it != t.query.end()) q.domain = it->second;
  std::string order = "lift";
  if (auto it = t.query.find("order"); it != t.query.end()) order = it->second;
  ES_ASSIGN_OR_RETURN(q.order, ParseRankOrder(order));
  if (auto it = t.query.find("top"); it != t.query.end()) {
    ES_ASSIGN_OR_RETURN(uint32_t v, ParseU32(it->second, "top"));
    q.top = v;  // QueryExperts checks the range
  }
  if (auto it = t.query.find("min_activations"); it != t.query.end()) {
    ES_ASSIGN_OR_RETURN(q.min_activations, ParseU32(it->second, "min_activations"));
  }
  std::vector<ExpertQueryRow> rows;
  if (ctx.metadata != nullptr) {
    ES_ASSIGN_OR_RETURN(auto metadata, ctx.metadata->Get(ctx.store->catalog(), m.name));
    ES_ASSIGN_OR_RETURN(rows, QueryExperts(*metadata, q));
  } else {
    ES_ASSIGN_OR_RETURN(rows, QueryExperts(ctx.store->catalog(), m.name, q));
  }
  JsonWriter w;
  WriteQueryResultJson(w, m.name, q, order, rows);
  return Json(w.Take());
}

// Per layer and expert: activations, trust and the lift in every profiled domain, as [layer][expert] arrays (null
// where the catalog has no such expert or no such record): what the dashboard's heatmaps draw.
Result<ApiResponse> Heatmap(const ApiContext& ctx, const std::string& name) {
  ES_ASSIGN_OR_RETURN(ModelInfo m, LoadModel(*ctx.store, name));
  std::shared_ptr<const ModelMetadata> metadata;
  if (ctx.metadata != nullptr) {
    ES_ASSIGN_OR_RETURN(metadata, ctx.metadata->Get(ctx.store->catalog(), m.name));
  } else {
    ES_ASSIGN_OR_RETURN(ModelMetadata loaded, LoadModelMetadata(ctx.store->catalog(), m.name, ModelPrefix(m.name)));
    metadata = std::make_shared<const ModelMetadata>(std::move(loaded));
  }
  const size_t L = m.num_layers, E = m.experts_per_layer;
  std::vector<const ModelMetadata::Records*> at(L * E, nullptr);
  for (size_t i = 0; i < metadata->experts.size(); ++i) {
    const auto [layer, expert] = metadata->experts[i];
    if (layer < L && expert < E) at[layer * E + expert] = &metadata->records[i];
  }
  // One [layer][expert] array of `value(records)`, null where it gives none.
  auto grid = [&](JsonWriter& w, const std::function<std::optional<double>(const ModelMetadata::Records&)>& value) {
    w.BeginArray();
    for (size_t l = 0; l < L; ++l) {
      w.BeginArray();
      for (size_t e = 0; e < E; ++e) {
        const std::optional<double> v = at[l * E + e] != nullptr ? value(*at[l * E + e]) : std::nullopt;
        if (v) {
          w.Double(*v);
        } else {
          w.Null();
        }
      }
      w.EndArray();
    }
    w.EndArray();
  };
  JsonWriter w;
  w.BeginObject().Key("model").String(m.name).Key("layers").Uint(L).Key("experts").Uint(E).Key("domains").BeginArray();
  for (const std::string& d : metadata->domains) w.String(d);
  w.EndArray().Key("activations");
  grid(w, [](const ModelMetadata::Records& r) -> std::optional<double> {
    return r.usage != nullptr ? static_cast<double>(r.usage->activation_count) : 0.0;
  });
  w.Key("trust");
  grid(w, [](const ModelMetadata::Records& r) -> std::optional<double> {
    return r.trust != nullptr ? std::optional<double>(r.trust->trust) : std::nullopt;
  });
  w.Key("lift").BeginObject();
  for (const std::string& d : metadata->domains) {
    w.Key(d);
    grid(w, [&d](const ModelMetadata::Records& r) -> std::optional<double> {
      if (r.profile == nullptr) return std::nullopt;
      for (const DomainShare& s : r.profile->domains) {
        if (s.domain == d) return s.lift;
      }
      return std::nullopt;
    });
  }
  w.EndObject().EndObject();
  return Json(w.Take());
}

Reply Completions(const ApiContext& ctx, const ApiRequest& req, bool chat) {
  Reply reply;
  auto parsed = ParseCompletionRequest(req.body, chat, ctx.completion_limits);
  if (!parsed.ok()) {
    reply.response = ResponseForStatus(parsed.status());
    return reply;
  }
  auto model = LoadModel(*ctx.store, parsed->model);
  if (!model.ok()) {
    reply.response = ResponseForStatus(model.status());
    return reply;
  }
  if (ctx.generation == nullptr) {
    reply.response = ResponseForStatus(Status::NotSupported("this server does not generate text"));
    return reply;
  }
  reply.generation = std::move(parsed).value();
  return reply;
}

// DELETE /v1/models/{model}: the model's catalog entries and metadata in one atomic commit (DeleteModel), answered
// in OpenAI's shape. Only where the service allows writes.
Result<ApiResponse> RemoveModel(const ApiContext& ctx, const std::string& name) {
  if (!ctx.allow_writes) {
    return ProtocolError(kHttpForbidden, "this service does not change the store (`allow_writes` is off)");
  }
  ES_ASSIGN_OR_RETURN(ModelInfo m, LoadModel(*ctx.store, name));
  ES_RETURN_IF_ERROR(DeleteModel(*ctx.store, m.name));
  JsonWriter w;
  w.BeginObject().Key("id").String(m.name).Key("object").String("model").Key("deleted").Bool(true).EndObject();
  return Json(w.Take());
}

// The model a /tokenize or /detokenize body names ("model"), or the store's only model when it names none.
Result<ModelInfo> TokenizerModel(const ApiContext& ctx, const JsonValue& root) {
  if (const JsonValue* model = root.Find("model"); model != nullptr) {
    if (!model->is_string()) return Status::InvalidArgument("'model' must be a string");
    return LoadModel(*ctx.store, model->string_value());
  }
  ES_ASSIGN_OR_RETURN(std::vector<ModelInfo> models, ctx.store->ListModels());
  if (models.size() == 1) return models[0];
  std::string names;
  for (const ModelInfo& m : models) names += (names.empty() ? "" : ", ") + m.name;
  return Status::InvalidArgument("the store holds " + std::to_string(models.size()) + " models: name one with 'model'" +
                                 (names.empty() ? std::string() : " (" + names + ")"));
}

// llama-server's POST /tokenize {"content", "add_special" (false), "parse_special" (true), "with_pieces" (false),
// "model"} -> {"tokens": [ids]} (or [{"id", "piece"}]), and POST /detokenize {"tokens", "model"} -> {"content"}.
Result<ApiResponse> Tokenize(const ApiContext& ctx, const ApiRequest& req, bool detokenize) {
  auto parsed = ParseJson(req.body);
  if (!parsed.ok()) return Status::InvalidArgument("the request body is not valid JSON: " + parsed.status().message());
  const JsonValue& root = *parsed;
  if (!root.is_object()) return Status::InvalidArgument("the request body must be a JSON object");
  ES_ASSIGN_OR_RETURN(ModelInfo m, TokenizerModel(ctx, root));
  std::shared_ptr<const Tokenizer> tokenizer;
  if (ctx.tokenizers != nullptr) {
    ES_ASSIGN_OR_RETURN(tokenizer, ctx.tokenizers->Get(*ctx.store, m));
  } else {
    ES_ASSIGN_OR_RETURN(Tokenizer loaded, LoadModelTokenizer(*ctx.store, m.name));
    tokenizer = std::make_shared<const Tokenizer>(std::move(loaded));
  }
  auto flag = [&](std::string_view name, bool fallback) -> Result<bool> {
    const JsonValue* v = root.Find(name);
    if (v == nullptr) return fallback;
    if (!v->is_bool()) return Status::InvalidArgument("'" + std::string(name) + "' must be true or false");
    return v->bool_value();
  };
  JsonWriter w;
  if (detokenize) {
    const JsonValue* tokens = root.Find("tokens");
    if (tokens == nullptr || !tokens->is_array()) return Status::InvalidArgument("'tokens' must be an array of token ids");
    std::vector<TokenId> ids;
    for (const JsonValue& t : tokens->array()) {
      auto id = t.is_integer() ? t.AsInt64() : Result<int64_t>(Status::InvalidArgument(""));
      if (!id.ok() || *id < 0 || *id >= static_cast<int64_t>(tokenizer->vocab_size())) {
        return Status::InvalidArgument("'tokens' must hold token ids from 0 to " +
                                       std::to_string(tokenizer->vocab_size() - 1));
      }
      ids.push_back(static_cast<TokenId>(*id));
    }
    ES_ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(ids));
    w.BeginObject().Key("content").String(text).EndObject();
    return Json(w.Take());
  }
  const JsonValue* content = root.Find("content");
  if (content == nullptr || !content->is_string()) return Status::InvalidArgument("'content' must be a string");
  EncodeOptions o;
  ES_ASSIGN_OR_RETURN(o.add_special_tokens, flag("add_special", false));
  ES_ASSIGN_OR_RETURN(o.parse_special_tokens, flag("parse_special", true));
  ES_ASSIGN_OR_RETURN(const bool with_pieces, flag("with_pieces", false));
  ES_ASSIGN_OR_RETURN(std::vector<TokenId> ids, tokenizer->Encode(content->string_value(), o));
  w.BeginObject().Key("tokens").BeginArray();
  for (TokenId id : ids) {
    if (!with_pieces) {
      w.Int(id);
      continue;
    }
    // A piece that is part of a UTF-8 sequence decodes to U+FFFD on its own.
    ES_ASSIGN_OR_RETURN(std::string piece, tokenizer->Decode(std::span<const TokenId>(&id, 1)));
    w.BeginObject().Key("id").Int(id).Key("piece").String(piece).EndObject();
  }
  w.EndArray().EndObject();
  return Json(w.Take());
}

// The route a path names, and the methods it takes.
struct Match {
  std::string_view route = kRouteUnmatched;
  std::string_view method;  // the one method the route answers
};

Match MatchRoute(const std::vector<std::string>& s) {
  const size_t n = s.size();
  if (n == 0) return {kRouteDashboard, "GET"};
  if (n == 1 && s[0] == "healthz") return {kRouteHealth, "GET"};
  if (n == 1 && s[0] == "health") return {kRouteHealthAlias, "GET"};
  if (n == 1 && s[0] == "tokenize") return {kRouteTokenize, "POST"};
  if (n == 1 && s[0] == "detokenize") return {kRouteDetokenize, "POST"};
  if (n == 1 && s[0] == "metrics") return {kRouteMetrics, "GET"};
  if (n < 2 || s[0] != "v1") return {};
  if (n == 2 && s[1] == "completions") return {kRouteCompletions, "POST"};
  if (n == 3 && s[1] == "chat" && s[2] == "completions") return {kRouteChatCompletions, "POST"};
  if (s[1] != "models") return {};
  if (n == 2) return {kRouteModels, "GET"};
  if (n == 3) return {kRouteModel, "GET"};
  if (n == 4 && s[3] == "experts") return {kRouteExperts, "GET"};
  if (n == 4 && s[3] == "query") return {kRouteQuery, "GET"};
  if (n == 4 && s[3] == "heatmap") return {kRouteHeatmap, "GET"};
  if (n == 6 && s[3] == "experts") return {kRouteExpert, "GET"};
  if (n == 7 && s[3] == "experts" && s[6] == "blob") return {kRouteBlob, "GET"};
  return {};
}

ApiResponse Unwrap(Result<ApiResponse> r) { return r.ok() ? std::move(r).value() : ResponseForStatus(r.status()); }

}  // namespace

Reply HandleRequest(const ApiContext& ctx, const ApiRequest& req) {
  Reply reply;
  auto target = ParseTarget(req.target);
  if (!target.ok()) {
    reply.response = ResponseForStatus(target.status());
    return reply;
  }
  Match m = MatchRoute(target->segments);
  if (m.route == kRouteUnmatched) {
    reply.response = ProtocolError(kHttpNotFound, "no route for " + req.method + " " + req.target);
  } else if (m.route == kRouteModel && req.method == "DELETE") {
    reply.response = Unwrap(RemoveModel(ctx, target->segments[2]));
  } else if (req.method != m.method) {
    const std::string allowed = m.route == kRouteModel ? "GET, DELETE" : std::string(m.method);
    reply.response = ProtocolError(kHttpMethodNotAllowed, std::string(m.route) + " answers " + allowed +
                                                              ", not " + req.method);
    reply.response.headers.emplace_back("Allow", allowed);
  } else if (m.route == kRouteDashboard) {
    reply.response.content_type = "text/html; charset=utf-8";
    reply.response.body = std::string(DashboardPage());
    reply.response.headers.emplace_back("Cache-Control", "no-cache");
  } else if (m.route == kRouteHeatmap) {
    reply.response = Unwrap(Heatmap(ctx, target->segments[2]));
  } else if (m.route == kRouteHealth || m.route == kRouteHealthAlias) {
    reply.response = Json(R"({"status":"ok"})");
  } else if (m.route == kRouteTokenize || m.route == kRouteDetokenize) {
    reply.response = Unwrap(Tokenize(ctx, req, m.route == kRouteDetokenize));
  } else if (m.route == kRouteMetrics) {
    reply.response.content_type = std::string(kPrometheusContentType);
    if (ctx.metrics != nullptr) {
      reply.response.body = ctx.metrics->Render(ctx.generation ? ctx.generation->gauges() : GenerationGauges{},
                                                ctx.store != nullptr ? ctx.store->catalog().Memory() : CatalogMemory{});
    }
  } else if (m.route == kRouteModels) {
    reply.response = Unwrap(Models(ctx));
  } else if (m.route == kRouteModel) {
    reply.response = Unwrap(GetModel(ctx, target->segments[2]));
  } else if (m.route == kRouteExperts) {
    reply.response = Unwrap(Experts(ctx, target->segments[2], *target));
  } else if (m.route == kRouteExpert) {
    reply.response = Unwrap(Expert(ctx, *target));
  } else if (m.route == kRouteBlob) {
    reply.response = Unwrap(Blob(ctx, *target));
  } else if (m.route == kRouteQuery) {
    reply.response = Unwrap(Query(ctx, target->segments[2], *target));
  } else {
    reply = Completions(ctx, req, m.route == kRouteChatCompletions);
  }
  reply.response.route = std::string(m.route);
  return reply;
}

}  // namespace es::api
