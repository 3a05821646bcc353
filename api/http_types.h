// The HTTP request and response as the API's pure handlers see them: plain values, no Boost types, so that
// handlers, tests and the fuzz target share one definition and the transport (api/server.cc) stays swappable.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store/base/status.h"

namespace es::api {

struct ApiRequest {
  std::string method;        // "GET", "POST", ...
  std::string target;        // the request target as sent: "/v1/models/m/query?domain=code"
  std::string content_type;  // the Content-Type header, empty when absent
  std::string body;
  std::string client;        // the peer's address: the fairness key of the generation queue
};

struct ApiResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  // The route template that answered ("/v1/models/{model}"), the label of the request metrics.
  std::string route = "unmatched";
};

// A request target split into its decoded path segments and query parameters.
struct Target {
  std::vector<std::string> segments;           // "/v1/models/m" -> {"v1", "models", "m"}
  std::map<std::string, std::string> query;    // last value wins for a repeated key
};

// Splits and percent-decodes a target ('+' in the query is a space). InvalidArgument for a target that is not
// an absolute path, has a malformed escape, or decodes to invalid UTF-8 (answers echo segments and values, and
// JSON holds only UTF-8).
Result<Target> ParseTarget(std::string_view target);

// `text` with every byte that is not part of a valid UTF-8 sequence replaced by U+FFFD: for echoing raw
// request bytes (a target, a method) into a JSON message.
std::string ToValidUtf8(std::string_view text);

}  // namespace es::api
