// libFuzzer target for the HTTP front end: the input is a raw request, parsed by Beast's request parser with
// the server's header and body limits (as a session does), then answered by the pure HandleRequest over a small
// store; the input is also parsed directly as a completion request body. Besides ASan/UBSan it checks that every
// answer has a valid status, that 4xx/5xx answers carry a JSON error, that JSON answers are valid JSON, and that a
// parsed completion request formats into valid JSON. Build with -DES_FUZZ=ON and clang; seeds in http_fuzz_corpus/.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include <boost/beast/core/error.hpp>
#include <boost/beast/http.hpp>

#include "api/errors.h"
#include "api/openai.h"
#include "api/routes.h"
#include "store/base/json.h"
#include "store/store.h"
#include "tests/util/expert_model.h"

namespace {

namespace http = boost::beast::http;

// The server's defaults (api/server.h), so that the parser sees what a session would.
constexpr uint32_t kHeaderLimit = 16 << 10;
constexpr uint64_t kBodyLimit = 1 << 20;

es::api::ApiContext* g_ctx = nullptr;
es::api::Metrics* g_metrics = nullptr;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "http_fuzz: invariant violated: %s\n", what);
    std::abort();
  }
}

void CheckResponse(const es::api::ApiResponse& r) {
  Check(r.status >= 200 && r.status <= 599, "status in range");
  if (r.content_type == "application/json") {
    auto doc = es::ParseJson(r.body);
    Check(doc.ok(), "JSON answers are valid JSON");
    if (r.status >= 400) {
      const es::JsonValue* err = doc->Find("error");
      Check(err != nullptr && err->Find("message") != nullptr, "errors carry error.message");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // A store of one small synthetic model with metadata, in a fresh directory removed at exit.
  static char tmpl[] = "/tmp/es-http-fuzz-XXXXXX";
  char* dir = ::mkdtemp(tmpl);
  Check(dir != nullptr, "temp dir");
  std::atexit([] { std::filesystem::remove_all(tmpl); });
  auto store = es::Store::Open(std::string(dir) + "/store", es::StoreOptions{});
  Check(store.ok(), "store opens");
  es::testing::TestModelSpec spec{.name = "m", .layers = 2, .experts = 4, .top_k = 2};
  spec.missing = {{1, 3}};
  spec.trust = [](uint32_t l, uint32_t e) { return std::make_pair(0.1 * l, 0.2 * e); };
  Check(es::testing::WriteTestModel(**store, spec).ok(), "model written");
  es::CatalogBatch batch;
  es::ProfileInfo p;
  p.primary_domain = "python";
  p.domains = {{"python", 3, 0.5, 2.0}, {"c", 1, 0.1, 0.5}};
  batch.Put(es::Cf::kProfiles, es::ExpertKey("m", 0, 1), es::EncodeProfile(p));
  Check((*store)->catalog().Write(batch).ok(), "profiles written");
  g_metrics = new es::api::Metrics();
  g_ctx = new es::api::ApiContext{store->release(), g_metrics, nullptr, {}};
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);

  http::request_parser<http::string_body> parser;
  parser.header_limit(kHeaderLimit);
  parser.body_limit(kBodyLimit);
  parser.eager(true);
  boost::beast::error_code ec;
  size_t used = 0;
  while (!ec && used < input.size() && !parser.is_done()) {
    size_t n = parser.put(boost::asio::buffer(input.data() + used, input.size() - used), ec);
    if (ec == http::error::need_more) break;
    if (n == 0) break;
    used += n;
  }
  if (!parser.is_done() && (!ec || ec == http::error::need_more)) {
    ec = {};
    parser.put_eof(ec);
  }
  if (!ec && parser.is_done()) {
    auto& msg = parser.get();
    es::api::ApiRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.content_type = std::string(msg[http::field::content_type]);
    req.body = msg.body();
    req.client = "fuzz";
    es::api::Reply reply = es::api::HandleRequest(*g_ctx, req);
    CheckResponse(reply.response);
    Check(!reply.generation.has_value(), "no generation without a generation service");
  }

  for (bool chat : {false, true}) {
    auto c = es::api::ParseCompletionRequest(input, chat, es::api::CompletionLimits{});
    if (!c.ok()) {
      CheckResponse(es::api::ResponseForStatus(c.status()));
      continue;
    }
    Check(c->max_tokens >= 1 && c->max_tokens <= es::api::CompletionLimits{}.max_tokens, "max_tokens bounded");
    const std::string text = c->chat ? "x" : c->prompt;
    // Log-probabilities of made-up tokens, the request's bytes among them (not necessarily UTF-8).
    std::vector<es::api::TokenLogprobs> lp = {{text, -0.5f, {{text, -0.5f}, {"\xff", -2.0f}}}};
    es::api::CompletionOutcome o{{{text, "stop", lp}}, 1, 2};
    Check(es::ParseJson(es::api::FormatCompletion(*c, "id", 0, o)).ok(), "completion JSON");
    Check(es::ParseJson(es::api::FormatChunk(*c, "id", 0, es::api::TextDelta{0, text, lp}, std::nullopt)).ok(),
          "chunk JSON");
    es::StopFilter f(c->stop);
    std::string shown = f.Push(text);
    shown += f.Flush();
    Check(shown.size() <= text.size() && text.compare(0, shown.size(), shown) == 0, "stop filter shows a prefix");
  }
  return 0;
}
