// The API's request handler: one pure function from a request (plus the store and the service state it reads)
// to a response, with a handler per route. It performs no network I/O and never blocks on generation: a valid
// completion request comes back parsed, for the transport to queue (api/generation_queue.h). docs/http.md describes
// every route.
#pragma once

#include <optional>
#include <string>

#include "api/generation_queue.h"
#include "api/http_types.h"
#include "api/metadata_cache.h"
#include "api/metrics.h"
#include "api/openai.h"
#include "api/tokenizers.h"
#include "store/store.h"

namespace es::api {

// What the handler reads. The pointers must outlive every call; `generation` may be null (completions then
// answer 503).
struct ApiContext {
  Store* store = nullptr;
  Metrics* metrics = nullptr;
  GenerationQueue* generation = nullptr;
  CompletionLimits completion_limits;
  bool allow_writes = false;  // DELETE /v1/models/{model}; otherwise the service only reads (and records usage)
  // The models' metadata in memory for the query route; null: each query reads the catalog.
  MetadataCache* metadata = nullptr;
  // The models' tokenizers for /tokenize and /detokenize; null: loaded from the store per request.
  Tokenizers* tokenizers = nullptr;
};

struct Reply {
  // The answer, unless `generation` is set.
  ApiResponse response;
  // A validated completion request for a model the store has: the transport queues it and answers from its
  // outcome. response.route names the route either way.
  std::optional<CompletionRequest> generation;
};

// Thread-safe (the store, metrics and service are).
Reply HandleRequest(const ApiContext& ctx, const ApiRequest& request);

// Route templates, the `route` label of the request metrics.
inline constexpr std::string_view kRouteUnmatched = "unmatched";
inline constexpr std::string_view kRouteHealth = "/healthz";
inline constexpr std::string_view kRouteHealthAlias = "/health";  // llama-server's name for /healthz
inline constexpr std::string_view kRouteMetrics = "/metrics";
inline constexpr std::string_view kRouteTokenize = "/tokenize";
inline constexpr std::string_view kRouteDetokenize = "/detokenize";
inline constexpr std::string_view kRouteModels = "/v1/models";
inline constexpr std::string_view kRouteModel = "/v1/models/{model}";
inline constexpr std::string_view kRouteExperts = "/v1/models/{model}/experts";
inline constexpr std::string_view kRouteExpert = "/v1/models/{model}/experts/{layer}/{expert}";
inline constexpr std::string_view kRouteBlob = "/v1/models/{model}/experts/{layer}/{expert}/blob";
inline constexpr std::string_view kRouteQuery = "/v1/models/{model}/query";
inline constexpr std::string_view kRouteHeatmap = "/v1/models/{model}/heatmap";
inline constexpr std::string_view kRouteDashboard = "/";
inline constexpr std::string_view kRouteCompletions = "/v1/completions";
inline constexpr std::string_view kRouteChatCompletions = "/v1/chat/completions";

}  // namespace es::api
