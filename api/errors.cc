// The Status -> HTTP mapping and the JSON error body.
#include "api/errors.h"

#include <string>

#include "store/base/json.h"

namespace es::api {

namespace {

// Seconds a client should wait before retrying an overloaded server.
constexpr std::string_view kRetryAfterSeconds = "1";

// OpenAI's error `type` for an HTTP status.
std::string_view ErrorType(int http_status) {
  switch (http_status) {
    case kHttpNotFound: return "not_found_error";
    case kHttpForbidden: return "permission_error";
    case kHttpTooManyRequests: return "rate_limit_error";
    case kHttpServiceUnavailable: return "overloaded_error";
    default: return http_status >= kHttpInternalError ? "server_error" : "invalid_request_error";
  }
}

std::string_view ProtocolSlug(int http_status) {
  switch (http_status) {
    case kHttpBadRequest: return "bad_request";
    case kHttpForbidden: return "forbidden";
    case kHttpNotFound: return "not_found";
    case kHttpMethodNotAllowed: return "method_not_allowed";
    case kHttpRequestTimeout: return "request_timeout";
    case kHttpPayloadTooLarge: return "payload_too_large";
    case kHttpUnsupportedMediaType: return "unsupported_media_type";
    case kHttpTooManyRequests: return "rate_limited";
    case kHttpHeadersTooLarge: return "headers_too_large";
    case kHttpServiceUnavailable: return "overloaded";
    default: return "error";
  }
}

ApiResponse ErrorBody(int http_status, std::string_view message, std::string_view code) {
  ApiResponse r;
  r.status = http_status;
  JsonWriter w;
  w.BeginObject().Key("error").BeginObject()
      .Key("message").String(ToValidUtf8(message))
      .Key("type").String(ErrorType(http_status))
      .Key("param").Null()
      .Key("code").String(code)
      .EndObject().EndObject();
  r.body = w.Take();
  if (http_status == kHttpServiceUnavailable || http_status == kHttpTooManyRequests) {
    r.headers.emplace_back("Retry-After", std::string(kRetryAfterSeconds));
  }
  return r;
}

}  // namespace

ApiResponse ResponseForStatus(const Status& status) {
  int http = kHttpInternalError;
  switch (status.code()) {
    case Status::Code::kNotFound: http = kHttpNotFound; break;
    case Status::Code::kInvalidArgument: http = kHttpBadRequest; break;
    case Status::Code::kNotSupported: http = kHttpBadRequest; break;  // 5xx would make OpenAI clients retry
    case Status::Code::kResourceExhausted:
    case Status::Code::kBusy: http = kHttpServiceUnavailable; break;
    case Status::Code::kCorruption:
    case Status::Code::kIOError:
    case Status::Code::kOk: http = kHttpInternalError; break;
  }
  std::string message = status.ok() ? "internal error: an OK status reported as an error" : status.message();
  return ErrorBody(http, message, StatusCodeSlug(status.code()));
}

ApiResponse ProtocolError(int http_status, std::string_view message) {
  return ErrorBody(http_status, message, ProtocolSlug(http_status));
}

}  // namespace es::api
