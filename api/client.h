// The client side of the HTTP service: a small HTTP/1.1 GET (with a timeout and a body limit), fetching an
// expert's blob from a remote expertstore, and importing a verified blob into a local store as an expert record
// of a model record it creates or reuses (docs/http.md, "fetch-expert", states the semantics). No Boost type
// appears here.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "api/blob.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es::api {

// http://host[:port][/prefix]. https is NotSupported.
struct HttpUrl {
  std::string host;
  uint16_t port = 80;
  std::string prefix;  // "" or "/prefix" (no trailing slash), put in front of every request path
};
Result<HttpUrl> ParseHttpUrl(std::string_view url);

struct ClientOptions {
  // Each step (resolve and connect, send, receive the whole answer) must finish within this.
  std::chrono::milliseconds timeout{60'000};
  uint64_t max_body_bytes = uint64_t{1} << 30;
};

struct HttpResult {
  int status = 0;
  std::string content_type;
  std::string body;
};

// One GET of `path` (with its query) on `url`. IOError when the server cannot be reached or answers malformed
// HTTP; ResourceExhausted when the body exceeds the limit. Any HTTP status is a successful result.
Result<HttpResult> HttpGet(const HttpUrl& url, std::string_view path, const ClientOptions& options = {});

// GET /v1/models/{model}/experts/{layer}/{expert}/blob, verified (DecodeExpertBlob). An error answer becomes the
// Status it stands for (404 NotFound, 400 InvalidArgument, 501 NotSupported, 503 Busy, others IOError), with the
// server's message.
Result<ExpertBlob> FetchExpertBlob(const HttpUrl& url, const std::string& model, uint32_t layer, uint32_t expert,
                                   const ClientOptions& options = {});

struct ImportOptions {
  std::string as_model;  // the local model name; empty: the remote's
  bool replace = false;  // replace a local expert whose bytes differ
};

struct ImportResult {
  std::string model;
  bool created_model = false;  // the local model record was created by this import
  bool unchanged = false;      // the local store already held these exact bytes: nothing written
  uint64_t bytes = 0;          // payload bytes
  Extent extent;               // where the expert lives locally
};

// Writes the expert into `store` (a writer) in one transaction: the expert record and its catalog entry, and
// the model record, created from the envelope's model summary when absent (complete=false, no dense tensors or
// assets: listing, show, verify and further fetches work, generation does not) or updated when present. A
// present model must have the same arch, shape and source fingerprint (InvalidArgument otherwise: stores never
// mix checkpoints under one name). An expert already present with the same checksum is left alone; with a
// different one, InvalidArgument unless options.replace.
Result<ImportResult> ImportExpert(Store& store, const ExpertBlob& blob, const ImportOptions& options = {});

}  // namespace es::api
