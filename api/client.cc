// The HTTP GET client (Beast, one coroutine on a private io_context) and the import of a fetched expert.
#include "api/client.h"

#include <charconv>
#include <ctime>
#include <optional>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "api/errors.h"
#include "store/base/json.h"

namespace es::api {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kUse = asio::as_tuple(asio::use_awaitable);
constexpr std::string_view kUserAgent = "expertstore-client/" ES_PROJECT_VERSION;
constexpr uint16_t kDefaultHttpPort = 80;
// Beast's encoding of HTTP/1.1 in a message's version field.
constexpr unsigned kHttp11 = 11;
constexpr uint32_t kMaxResponseHeaderBytes = 64 << 10;

asio::awaitable<void> Get(const HttpUrl& url, std::string target, ClientOptions options, Result<HttpResult>& out) {
  auto executor = co_await asio::this_coro::executor;
  tcp::resolver resolver(executor);
  beast::tcp_stream stream(executor);
  std::string where = url.host + ":" + std::to_string(url.port);
  stream.expires_after(options.timeout);
  auto [rec, results] = co_await resolver.async_resolve(url.host, std::to_string(url.port), kUse);
  if (rec) {
    out = Status::IOError("cannot resolve " + url.host + ": " + rec.message());
    co_return;
  }
  auto [cec, endpoint] = co_await stream.async_connect(results, kUse);
  if (cec) {
    out = Status::IOError("cannot connect to " + where + ": " + cec.message());
    co_return;
  }
  http::request<http::empty_body> req{http::verb::get, target, kHttp11};
  req.set(http::field::host, where);
  req.set(http::field::user_agent, kUserAgent);
  req.set(http::field::connection, "close");
  stream.expires_after(options.timeout);
  auto [wec, wn] = co_await http::async_write(stream, req, kUse);
  if (wec) {
    out = Status::IOError("cannot send the request to " + where + ": " + wec.message());
    co_return;
  }
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.header_limit(kMaxResponseHeaderBytes);
  parser.body_limit(options.max_body_bytes);
  stream.expires_after(options.timeout);
  auto [rdec, rn] = co_await http::async_read(stream, buffer, parser, kUse);
  if (rdec == http::error::body_limit) {
    out = Status::ResourceExhausted("the answer from " + where + " exceeds " + std::to_string(options.max_body_bytes) + " bytes");
    co_return;
  }
  if (rdec) {
    out = Status::IOError("cannot read the answer from " + where + ": " + rdec.message());
    co_return;
  }
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  HttpResult r;
  r.status = static_cast<int>(parser.get().result_int());
  r.content_type = std::string(parser.get()[http::field::content_type]);
  r.body = std::move(parser.get().body());
  out = std::move(r);
}

// The Status an error answer stands for: the inverse of ResponseForStatus, with the server's message.
Status StatusForAnswer(const HttpResult& r, std::string_view what) {
  std::string message = "HTTP " + std::to_string(r.status);
  if (auto doc = ParseJson(r.body); doc.ok() && doc->is_object()) {
    const JsonValue* err = doc->Find("error");
    const JsonValue* msg = err != nullptr ? err->Find("message") : nullptr;
    if (msg != nullptr && msg->is_string()) message += ": " + msg->string_value();
  }
  message = std::string(what) + ": " + message;
  switch (r.status) {
    case kHttpNotFound: return Status::NotFound(message);
    case kHttpBadRequest: return Status::InvalidArgument(message);
    case kHttpNotImplemented: return Status::NotSupported(message);
    case kHttpTooManyRequests:
    case kHttpServiceUnavailable: return Status::Busy(message);
    default: return Status::IOError(message);
  }
}

bool SameShape(const ModelInfo& a, const ModelInfo& b) {
  return a.arch == b.arch && a.num_layers == b.num_layers && a.experts_per_layer == b.experts_per_layer &&
         a.hidden_size == b.hidden_size && a.moe_intermediate_size == b.moe_intermediate_size;
}

}  // namespace

Result<HttpUrl> ParseHttpUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, 8) == "https://") return Status::NotSupported("https is not supported; use http://");
  if (url.substr(0, kScheme.size()) != kScheme) return Status::InvalidArgument("expected an http:// URL, got '" + std::string(url) + "'");
  std::string_view rest = url.substr(kScheme.size());
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  HttpUrl u;
  u.port = kDefaultHttpPort;
  if (slash != std::string_view::npos) {
    std::string_view prefix = rest.substr(slash);
    while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
    u.prefix = std::string(prefix);
  }
  std::string_view host = authority;
  if (!authority.empty() && authority.front() == '[') {  // [v6 address]:port
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return Status::InvalidArgument("malformed IPv6 address in '" + std::string(url) + "'");
    host = authority.substr(1, close - 1);
    authority.remove_prefix(close + 1);
    if (!authority.empty() && authority.front() != ':') return Status::InvalidArgument("malformed URL '" + std::string(url) + "'");
  } else {
    size_t colon = authority.rfind(':');
    host = authority.substr(0, colon);
    authority = colon == std::string_view::npos ? std::string_view() : authority.substr(colon);
  }
  if (!authority.empty()) {
    std::string_view port = authority.substr(1);
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), u.port);
    if (port.empty() || ec != std::errc() || ptr != port.data() + port.size() || u.port == 0) {
      return Status::InvalidArgument("bad port in '" + std::string(url) + "'");
    }
  }
  if (host.empty()) return Status::InvalidArgument("no host in '" + std::string(url) + "'");
  u.host = std::string(host);
  return u;
}

Result<HttpResult> HttpGet(const HttpUrl& url, std::string_view path, const ClientOptions& options) {
  asio::io_context ioc;
  Result<HttpResult> out = Status::IOError("the request did not complete");
  std::string target = url.prefix + std::string(path);
  asio::co_spawn(ioc, Get(url, target, options, out), [&out](std::exception_ptr e) {
    if (e) out = Status::IOError("the HTTP client failed unexpectedly");
  });
  // Asio reports failures through error codes here; an exception would only be out of memory.
  try {
    ioc.run();
  } catch (const std::exception& e) {
    return Status::ResourceExhausted(std::string("the HTTP client failed: ") + e.what());
  }
  return out;
}

Result<ExpertBlob> FetchExpertBlob(const HttpUrl& url, const std::string& model, uint32_t layer, uint32_t expert,
                                   const ClientOptions& options) {
  ES_RETURN_IF_ERROR(ValidateModelName(model));
  std::string path = "/v1/models/" + model + "/experts/" + std::to_string(layer) + "/" + std::to_string(expert) + "/blob";
  ES_ASSIGN_OR_RETURN(HttpResult r, HttpGet(url, path, options));
  if (r.status != kHttpOk) return StatusForAnswer(r, "GET " + path);
  if (r.content_type != kBlobContentType) {
    return Status::Corruption("GET " + path + " answered " + r.content_type + ", not " + std::string(kBlobContentType));
  }
  ES_ASSIGN_OR_RETURN(ExpertBlob blob, DecodeExpertBlob(r.body));
  if (blob.model.name != model || blob.layer != layer || blob.expert != expert) {
    return Status::Corruption("GET " + path + " answered with another expert (" + blob.model.name + " layer " +
                              std::to_string(blob.layer) + " expert " + std::to_string(blob.expert) + ")");
  }
  return blob;
}

Result<ImportResult> ImportExpert(Store& store, const ExpertBlob& blob, const ImportOptions& options) {
  ImportResult result;
  result.model = options.as_model.empty() ? blob.model.name : options.as_model;
  result.bytes = blob.payload.size();
  ES_RETURN_IF_ERROR(ValidateModelName(result.model));
  if (blob.layer >= blob.model.num_layers || blob.expert >= blob.model.experts_per_layer) {
    return Status::Corruption("the blob's expert (layer " + std::to_string(blob.layer) + ", expert " +
                              std::to_string(blob.expert) + ") lies outside its model's shape");
  }
  // The transaction holds the store's write lock, so the model record's read-modify-write below is not raced by
  // another writer of this process (and other processes cannot write at all).
  ES_ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  ModelInfo model;
  auto existing = store.catalog().Get(Cf::kModels, ModelKey(result.model));
  if (existing.ok()) {
    ES_ASSIGN_OR_RETURN(model, DecodeModel(*existing));
    if (!SameShape(model, blob.model) || !SameSourceFingerprint(model.source_fingerprint, blob.model.source_fingerprint)) {
      return Status::InvalidArgument("the local model '" + result.model + "' holds a different checkpoint (arch " +
                                     model.arch + ", fingerprint " + model.source_fingerprint +
                                     ") than the remote one (arch " + blob.model.arch + ", fingerprint " +
                                     blob.model.source_fingerprint + "); fetch it under another name");
    }
  } else if (existing.status().IsNotFound()) {
    model = blob.model;
    model.name = result.model;
    model.num_experts = 0;
    model.num_dense_tensors = 0;
    model.total_bytes = 0;
    model.created_unix = static_cast<uint64_t>(std::time(nullptr));
    model.complete = false;
    model.assets.clear();
    result.created_model = true;
  } else {
    return existing.status();
  }

  const std::string key = ExpertKey(result.model, blob.layer, blob.expert);
  auto old = store.catalog().Get(Cf::kExperts, key);
  if (old.ok()) {
    ES_ASSIGN_OR_RETURN(ExpertInfo prev, DecodeExpert(*old));
    if (prev.extent.checksum == blob.checksum && prev.extent.payload_length == blob.payload.size()) {
      ES_RETURN_IF_ERROR(txn->Abort());
      result.unchanged = true;
      result.extent = prev.extent;
      return result;
    }
    if (!options.replace) {
      return Status::InvalidArgument("the local store already holds a different expert " + std::to_string(blob.expert) +
                                     " of layer " + std::to_string(blob.layer) + " in '" + result.model +
                                     "'; set `replace` to replace it");
    }
    model.num_experts -= 1;
    model.total_bytes -= prev.extent.payload_length;
  } else if (!old.status().IsNotFound()) {
    return old.status();
  }

  ES_ASSIGN_OR_RETURN(result.extent, txn->AppendRecord(RecordKind::kExpert, key, blob.payload));
  if (result.extent.checksum != blob.checksum) {
    return Status::Corruption("the stored expert hashes differently from the verified blob");
  }
  ExpertInfo info;
  info.layer = blob.layer;
  info.expert = blob.expert;
  info.extent = result.extent;
  info.projections = blob.projections;
  txn->batch().Put(Cf::kExperts, key, EncodeExpert(info));
  model.num_experts += 1;
  model.total_bytes += blob.payload.size();
  txn->batch().Put(Cf::kModels, ModelKey(result.model), EncodeModel(model));
  ES_RETURN_IF_ERROR(txn->Commit());
  return result;
}

}  // namespace es::api
