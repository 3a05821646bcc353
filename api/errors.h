// HTTP errors: the one function that turns a Status into an HTTP status, and the JSON error body every 4xx/5xx
// answer carries (OpenAI's shape, so that OpenAI clients report it: {"error": {"message", "type", "code"}}).
#pragma once

#include <string_view>

#include "api/http_types.h"
#include "store/base/status.h"

namespace es::api {

// HTTP statuses the transport itself produces (they come from the protocol, not from a Status).
inline constexpr int kHttpOk = 200;
inline constexpr int kHttpBadRequest = 400;
inline constexpr int kHttpForbidden = 403;
inline constexpr int kHttpNotFound = 404;
inline constexpr int kHttpMethodNotAllowed = 405;
inline constexpr int kHttpRequestTimeout = 408;
inline constexpr int kHttpPayloadTooLarge = 413;
inline constexpr int kHttpUnsupportedMediaType = 415;
inline constexpr int kHttpTooManyRequests = 429;
inline constexpr int kHttpHeadersTooLarge = 431;
inline constexpr int kHttpInternalError = 500;
inline constexpr int kHttpNotImplemented = 501;
inline constexpr int kHttpServiceUnavailable = 503;

// The single Status -> HTTP mapping: NotFound 404, InvalidArgument 400, NotSupported 501, ResourceExhausted and
// Busy 503 (with Retry-After), Corruption and IOError 500. Must not be called with an OK status (it answers 500).
ApiResponse ResponseForStatus(const Status& status);

// An error the HTTP layer detects before any handler runs (malformed HTTP, limits, unknown route or method):
// the same JSON body, with the given HTTP status.
ApiResponse ProtocolError(int http_status, std::string_view message);

}  // namespace es::api
