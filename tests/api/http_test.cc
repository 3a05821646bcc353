// Every route through a real socket on loopback, against an in-process server: answers and their shapes,
// OpenAI-compatible completions (whole and streamed) equal to in-process generation, and the server's
// behaviour under bad input and bad clients (malformed JSON, wrong types, unknown models, huge bodies and
// headers, slow and vanishing clients): it answers correctly and keeps serving.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "api/blob.h"
#include "api/generation.h"
#include "compute/generator.h"
#include "store/base/checksum.h"
#include "store/base/json.h"
#include "tests/api/api_test_util.h"
#include "tests/api/http_client.h"
#include "tests/util/expert_model.h"

namespace es {
namespace {

using testing::Fetch;
using testing::HttpReply;
using testing::SharedStore;
using testing::TestConnection;

JsonValue ParseOrDie(const std::string& text) {
  auto v = ParseJson(text);
  EXPECT_TRUE(v.ok()) << text;
  return v.ok() ? std::move(v).value() : JsonValue();
}

// The OpenAI error shape, and the status it came with.
void ExpectError(const std::optional<HttpReply>& r, int status) {
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, status) << r->body;
  EXPECT_EQ(r->header("content-type"), "application/json");
  JsonValue doc = ParseOrDie(r->body);
  const JsonValue* err = doc.Find("error");
  ASSERT_NE(err, nullptr) << r->body;
  ASSERT_NE(err->Find("message"), nullptr);
  EXPECT_TRUE(err->Find("message")->is_string());
  EXPECT_FALSE(err->Find("message")->string_value().empty());
}

// A metric's value in a Prometheus text exposition (the sample line "name{labels} value"), or -1 when absent.
double MetricValue(const std::string& text, const std::string& sample) {
  size_t pos = 0;
  while ((pos = text.find(sample + " ", pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') return std::stod(text.substr(pos + sample.size() + 1));
    pos += sample.size();
  }
  return -1;
}

class HttpApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = testing::StartServer(SharedStore()).release(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  uint16_t port() const { return server_->port(); }
  std::optional<HttpReply> Get(const std::string& target) { return Fetch(port(), "GET", target); }
  std::optional<HttpReply> Post(const std::string& target, const std::string& body) {
    return Fetch(port(), "POST", target, body);
  }
  // Greedy text of `prompt` generated in-process with the server's runtime configuration.
  static std::string ReferenceText(const std::string& prompt, uint32_t max_tokens) {
    auto pool = kernels::ComputePool::Create(0);
    EXPECT_TRUE(pool.ok());
    auto rt = ModelRuntime::Open(SharedStore(), testing::kTiny, RuntimeConfig{}, pool->get());
    EXPECT_TRUE(rt.ok()) << rt.status().ToString();
    GenerateOptions o;
    o.max_tokens = max_tokens;
    o.forward = (*rt)->forward_options();
    auto r = Generate((*rt)->model(), (*rt)->tokenizer(), (*rt)->experts(), prompt, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->text : std::string();
  }

  static testing::TestServer* server_;
};

testing::TestServer* HttpApiTest::server_ = nullptr;

TEST_F(HttpApiTest, HealthAndModelList) {
  auto h = Get("/healthz");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(ParseOrDie(h->body).Find("status")->string_value(), "ok");

  auto r = Get("/v1/models");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  JsonValue doc = ParseOrDie(r->body);
  EXPECT_EQ(doc.Find("object")->string_value(), "list");
  std::map<std::string, const JsonValue*> by_id;
  for (const JsonValue& m : doc.Find("data")->array()) {
    EXPECT_EQ(m.Find("object")->string_value(), "model");
    EXPECT_EQ(m.Find("owned_by")->string_value(), "expertstore");
    by_id[m.Find("id")->string_value()] = &m;
  }
  ASSERT_TRUE(by_id.count(testing::kTiny) && by_id.count(testing::kSynthetic));
  const JsonValue& tiny = *by_id[testing::kTiny];
  EXPECT_EQ(tiny.Find("arch")->string_value(), "qwen3_moe");
  EXPECT_EQ(*tiny.Find("layers")->AsUint64(), 6u);
  EXPECT_EQ(*tiny.Find("experts_per_layer")->AsUint64(), 32u);
  EXPECT_EQ(*tiny.Find("top_k")->AsUint64(), 4u);
  EXPECT_EQ(*tiny.Find("experts")->AsUint64(), 192u);
  EXPECT_TRUE(tiny.Find("complete")->bool_value());
  EXPECT_EQ(*by_id[testing::kSynthetic]->Find("experts")->AsUint64(),
            testing::kSyntheticLayers * testing::kSyntheticExperts - 1);

  auto one = Get("/v1/models/tiny");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->status, 200);
  EXPECT_EQ(ParseOrDie(one->body).Find("id")->string_value(), "tiny");
  // A trailing slash names the same resource.
  auto slash = Get("/v1/models/");
  ASSERT_TRUE(slash);
  EXPECT_EQ(slash->status, 200);
}

TEST_F(HttpApiTest, UnknownModelsRoutesAndMethods) {
  ExpectError(Get("/v1/models/nope"), 404);
  ExpectError(Get("/v1/models/nope/experts"), 404);
  ExpectError(Get("/v1/models/nope/experts/0/0/blob"), 404);
  ExpectError(Get("/v1/models/nope/query?domain=python"), 404);
  ExpectError(Get("/v1/models/bad%20name"), 400);   // not a valid model name
  ExpectError(Get("/v1/models/m/experts/%zz"), 400);  // malformed escape
  ExpectError(Get("/v2/everything"), 404);
  ExpectError(Get("/v\xa1/models"), 400);                  // raw bytes that are not UTF-8
  ExpectError(Get("/v1/models/m/query?domain=%ff"), 400);  // a decoded value that is not UTF-8
  ExpectError(Get("/v1/models/m/experts/0/0/blob/extra"), 404);
  auto post = Post("/v1/models", "{}");
  ExpectError(post, 405);
  EXPECT_EQ(post->header("allow"), "GET");
  auto get = Get("/v1/completions");
  ExpectError(get, 405);
  EXPECT_EQ(get->header("allow"), "POST");
  ExpectError(Fetch(port(), "PUT", "/v1/models/m"), 405);
  ExpectError(Fetch(port(), "DELETE", "/v1/models/m"), 403);  // the service does not allow writes
}

TEST_F(HttpApiTest, ExpertList) {
  auto r = Get("/v1/models/m/experts");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  JsonValue doc = ParseOrDie(r->body);
  const auto& data = doc.Find("data")->array();
  ASSERT_EQ(data.size(), testing::kSyntheticLayers * testing::kSyntheticExperts - 1);
  for (const JsonValue& e : data) {
    uint32_t l = static_cast<uint32_t>(*e.Find("layer")->AsUint64());
    uint32_t x = static_cast<uint32_t>(*e.Find("expert")->AsUint64());
    EXPECT_FALSE(l == testing::kAbsentLayer && x == testing::kAbsentExpert);
    EXPECT_DOUBLE_EQ(*e.Find("trust")->AsDouble(), testing::SyntheticTrust(l, x));
    EXPECT_EQ(*e.Find("activations")->AsUint64(), testing::SyntheticActivations(l, x));
    EXPECT_EQ(e.Find("dtype")->string_value(), "U8");
    EXPECT_EQ(e.Find("checksum")->string_value().size(), 16u);
  }
  auto layer = Get("/v1/models/tiny/experts?layer=3");
  ASSERT_TRUE(layer);
  ASSERT_EQ(layer->status, 200);
  JsonValue ldoc = ParseOrDie(layer->body);
  ASSERT_EQ(ldoc.Find("data")->array().size(), 32u);
  for (const JsonValue& e : ldoc.Find("data")->array()) {
    EXPECT_EQ(*e.Find("layer")->AsUint64(), 3u);
    EXPECT_TRUE(e.Find("trust")->is_null());  // the real model was never calibrated
    EXPECT_EQ(e.Find("dtype")->string_value(), "BF16");
  }
  ExpectError(Get("/v1/models/tiny/experts?layer=6"), 400);
  ExpectError(Get("/v1/models/tiny/experts?layer=-1"), 400);
  ExpectError(Get("/v1/models/tiny/experts?layer=two"), 400);
}

TEST_F(HttpApiTest, ExpertRecordWithTrustProfileAndUsage) {
  auto r = Get("/v1/models/m/experts/1/3");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  JsonValue e = ParseOrDie(r->body);
  EXPECT_EQ(*e.Find("layer")->AsUint64(), 1u);
  EXPECT_EQ(*e.Find("expert")->AsUint64(), 3u);
  auto record = SharedStore().catalog().Get(Cf::kExperts, ExpertKey("m", 1, 3));
  ASSERT_TRUE(record.ok());
  ExpertInfo info = *DecodeExpert(*record);
  char checksum[17];
  std::snprintf(checksum, sizeof(checksum), "%016llx", static_cast<unsigned long long>(info.extent.checksum));
  EXPECT_EQ(e.Find("checksum")->string_value(), checksum);
  EXPECT_EQ(*e.Find("bytes")->AsUint64(), info.extent.payload_length);
  const auto& tensors = e.Find("tensors")->array();
  ASSERT_EQ(tensors.size(), 3u);
  EXPECT_EQ(tensors[0].Find("role")->string_value(), "gate");
  EXPECT_EQ(*tensors[2].Find("offset")->AsUint64(), info.projections[2].offset);
  EXPECT_DOUBLE_EQ(*e.Find("trust")->Find("trust")->AsDouble(), testing::SyntheticTrust(1, 3));
  EXPECT_DOUBLE_EQ(*e.Find("trust")->Find("efficiency")->AsDouble(), 0.75);
  const JsonValue* profile = e.Find("profile");
  ASSERT_TRUE(profile->is_object());
  ASSERT_EQ(profile->Find("domains")->array().size(), 2u);
  EXPECT_DOUBLE_EQ(*profile->Find("domains")->array()[0].Find("lift")->AsDouble(), testing::SyntheticLift(1, 3, "python"));
  EXPECT_EQ(*e.Find("usage")->Find("activation_count")->AsUint64(), testing::SyntheticActivations(1, 3));
  EXPECT_EQ(e.Find("blob")->string_value(), "/v1/models/m/experts/1/3/blob");

  // Without metadata: nulls, not errors.
  auto plain = Get("/v1/models/tiny/experts/0/0");
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200);
  JsonValue p = ParseOrDie(plain->body);
  EXPECT_TRUE(p.Find("trust")->is_null());
  EXPECT_TRUE(p.Find("profile")->is_null());

  ExpectError(Get("/v1/models/m/experts/1/7"), 404);   // absent (a partial checkpoint)
  ExpectError(Get("/v1/models/m/experts/2/0"), 404);   // no such layer
  ExpectError(Get("/v1/models/m/experts/0/99"), 404);  // no such expert
  ExpectError(Get("/v1/models/m/experts/0/x"), 400);
  ExpectError(Get("/v1/models/m/experts/99999999999/0"), 400);  // overflows uint32
}

TEST_F(HttpApiTest, BlobIsAVerifiableEnvelopeOfTheStoredBytes) {
  for (auto [l, x] : {std::pair<uint32_t, uint32_t>{0, 0}, {1, 6}}) {
    auto r = Get("/v1/models/m/experts/" + std::to_string(l) + "/" + std::to_string(x) + "/blob");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(r->header("content-type"), api::kBlobContentType);
    auto blob = api::DecodeExpertBlob(r->body);
    ASSERT_TRUE(blob.ok()) << blob.status().ToString();
    testing::TestModelSpec spec;
    std::vector<std::byte> expected = testing::TestExpertPayload(l, x, spec.payload_bytes(l, x));
    EXPECT_EQ(blob->payload, expected);
    EXPECT_EQ(blob->checksum, Xxh3(expected));
    EXPECT_EQ(blob->layer, l);
    EXPECT_EQ(blob->expert, x);
    EXPECT_EQ(blob->model.name, "m");
    EXPECT_EQ(blob->model.num_layers, testing::kSyntheticLayers);
    ASSERT_EQ(blob->projections.size(), 3u);
    EXPECT_EQ(blob->projections[1].role, "up");
    char checksum[17];
    std::snprintf(checksum, sizeof(checksum), "%016llx", static_cast<unsigned long long>(blob->checksum));
    EXPECT_EQ(r->header("x-expertstore-checksum"), checksum);

    // Any flipped payload byte is caught by the receiver.
    std::string damaged = r->body;
    size_t at = damaged.find(std::string(reinterpret_cast<const char*>(expected.data()), 64));
    ASSERT_NE(at, std::string::npos);
    damaged[at + 17] ^= 0x20;
    auto bad = api::DecodeExpertBlob(damaged);
    ASSERT_FALSE(bad.ok());
    EXPECT_TRUE(bad.status().IsCorruption()) << bad.status().ToString();
  }
  // The real model's blob: bf16 projections with their shapes.
  auto r = Get("/v1/models/tiny/experts/5/31/blob");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  auto blob = api::DecodeExpertBlob(r->body);
  ASSERT_TRUE(blob.ok());
  EXPECT_EQ(blob->projections[0].dtype, DType::kBF16);
  EXPECT_EQ(blob->projections[0].shape, (std::vector<uint64_t>{96, 128}));
  EXPECT_EQ(blob->model.arch, "qwen3_moe");
  EXPECT_FALSE(blob->model.source_fingerprint.empty());
  ExpectError(Get("/v1/models/m/experts/1/7/blob"), 404);
}

// llama-server's /tokenize and /detokenize: the model's own tokenizer (as generation encodes), pieces that
// concatenate to the text, the round trip back, and clear errors; /health as /healthz's alias.
TEST_F(HttpApiTest, TokenizeAndDetokenizeAsLlamaServer) {
  auto tokenizer = LoadModelTokenizer(SharedStore(), testing::kTiny);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  const std::string text = "Hello world, the experts' store <|im_start|> caf\u00e9";
  EncodeOptions o;
  o.add_special_tokens = false;
  auto want = tokenizer->Encode("Hello world, the experts' store <|im_start|> caf\xc3\xa9", o);
  ASSERT_TRUE(want.ok());
  auto r = Post("/tokenize", R"({"model":"tiny","content":")" + text + R"("})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const JsonValue doc = ParseOrDie(r->body);
  const auto& tokens = doc.Find("tokens")->array();
  ASSERT_EQ(tokens.size(), want->size());
  std::string ids;
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_EQ(*tokens[i].AsInt64(), (*want)[i]) << i;
    ids += (i ? "," : "") + std::to_string((*want)[i]);
  }
  auto pieces = Post("/tokenize", R"({"model":"tiny","content":"Hello world","with_pieces":true})");
  ASSERT_TRUE(pieces);
  ASSERT_EQ(pieces->status, 200) << pieces->body;
  std::string joined;
  const JsonValue pieces_doc = ParseOrDie(pieces->body);
  for (const JsonValue& p : pieces_doc.Find("tokens")->array()) {
    ASSERT_TRUE(p.Find("id")->is_integer());
    joined += p.Find("piece")->string_value();
  }
  EXPECT_EQ(joined, "Hello world");
  auto back = Post("/detokenize", R"({"model":"tiny","tokens":[)" + ids + "]}");
  ASSERT_TRUE(back);
  ASSERT_EQ(back->status, 200) << back->body;
  EXPECT_EQ(ParseOrDie(back->body).Find("content")->string_value(),
            "Hello world, the experts' store <|im_start|> caf\xc3\xa9");
  // The shared store holds two models: a body without one is refused, naming them.
  ExpectError(Post("/tokenize", R"({"content":"x"})"), 400);
  ExpectError(Post("/tokenize", R"({"model":"tiny"})"), 400);
  ExpectError(Post("/tokenize", R"({"model":"tiny","content":"x","with_pieces":1})"), 400);
  ExpectError(Post("/tokenize", R"({"model":"nope","content":"x"})"), 404);
  ExpectError(Post("/tokenize", "not json"), 400);
  ExpectError(Post("/detokenize", R"({"model":"tiny","tokens":[-1]})"), 400);
  ExpectError(Post("/detokenize", R"({"model":"tiny","tokens":[1e9]})"), 400);
  ExpectError(Post("/detokenize", R"({"model":"tiny","tokens":"1,2"})"), 400);
  ExpectError(Get("/tokenize"), 405);
  auto health = Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, R"({"status":"ok"})");
}

TEST_F(HttpApiTest, QueryRanksByLiftTrustAndActivations) {
  // Expected order by lift: descending, ties in (layer, expert) order.
  std::vector<std::tuple<double, uint32_t, uint32_t>> all;
  for (uint32_t l = 0; l < testing::kSyntheticLayers; ++l) {
    for (uint32_t x = 0; x < testing::kSyntheticExperts; ++x) {
      if (l == testing::kAbsentLayer && x == testing::kAbsentExpert) continue;
      all.emplace_back(testing::SyntheticLift(l, x, "python"), l, x);
    }
  }
  std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
  auto r = Get("/v1/models/m/query?domain=python&top=5");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  JsonValue doc = ParseOrDie(r->body);
  EXPECT_EQ(doc.Find("order")->string_value(), "lift");
  const auto& data = doc.Find("data")->array();
  ASSERT_EQ(data.size(), 5u);
  for (size_t i = 0; i < data.size(); ++i) {
    EXPECT_EQ(*data[i].Find("layer")->AsUint64(), std::get<1>(all[i])) << i;
    EXPECT_EQ(*data[i].Find("expert")->AsUint64(), std::get<2>(all[i])) << i;
    EXPECT_DOUBLE_EQ(*data[i].Find("lift")->AsDouble(), std::get<0>(all[i]));
    EXPECT_EQ(data[i].Find("domain")->string_value(), "python");
    EXPECT_DOUBLE_EQ(*data[i].Find("share")->AsDouble(), 0.5);
    EXPECT_DOUBLE_EQ(*data[i].Find("trust")->AsDouble(),
                     testing::SyntheticTrust(std::get<1>(all[i]), std::get<2>(all[i])));
  }

  // One layer, all of it.
  auto layer = Get("/v1/models/m/query?domain=german&layer=1&top=100");
  ASSERT_TRUE(layer);
  JsonValue ldoc = ParseOrDie(layer->body);
  ASSERT_EQ(ldoc.Find("data")->array().size(), testing::kSyntheticExperts - 1);
  double previous = 1e9;
  for (const JsonValue& e : ldoc.Find("data")->array()) {
    EXPECT_EQ(*e.Find("layer")->AsUint64(), 1u);
    double lift = *e.Find("lift")->AsDouble();
    EXPECT_LE(lift, previous);
    previous = lift;
  }

  // By trust (no domain: each expert's primary domain comes along), and by recorded activations.
  auto trust = Get("/v1/models/m/query?order=trust&top=3");
  ASSERT_TRUE(trust);
  JsonValue tdoc = ParseOrDie(trust->body);
  EXPECT_TRUE(tdoc.Find("domain")->is_null());
  const auto& tdata = tdoc.Find("data")->array();
  ASSERT_EQ(tdata.size(), 3u);
  EXPECT_DOUBLE_EQ(*tdata[0].Find("trust")->AsDouble(), 15.0 / 16.0);
  uint32_t tl = static_cast<uint32_t>(*tdata[0].Find("layer")->AsUint64());
  uint32_t tx = static_cast<uint32_t>(*tdata[0].Find("expert")->AsUint64());
  EXPECT_EQ(tdata[0].Find("domain")->string_value(),
            testing::SyntheticLift(tl, tx, "python") >= testing::SyntheticLift(tl, tx, "german") ? "python" : "german");
  auto act = Get("/v1/models/m/query?order=activations&top=1");
  ASSERT_TRUE(act);
  uint64_t best = 0;
  for (uint32_t l = 0; l < testing::kSyntheticLayers; ++l) {
    for (uint32_t x = 0; x < testing::kSyntheticExperts; ++x) {
      if (l == testing::kAbsentLayer && x == testing::kAbsentExpert) continue;
      best = std::max(best, testing::SyntheticActivations(l, x));
    }
  }
  EXPECT_EQ(*ParseOrDie(act->body).Find("data")->array()[0].Find("activations")->AsUint64(), best);
  // Ties in the first key are broken by the next: the CLI's order syntax.
  auto mixed = Get("/v1/models/m/query?domain=python&order=trust,lift&top=2");
  ASSERT_TRUE(mixed);
  ASSERT_EQ(mixed->status, 200) << mixed->body;
  // Without a domain, lift is each expert's primary domain's.
  auto primary = Get("/v1/models/m/query?top=1");
  ASSERT_TRUE(primary);
  ASSERT_EQ(primary->status, 200) << primary->body;
  EXPECT_EQ(ParseOrDie(primary->body).Find("data")->array().size(), 1u);

  // A domain nobody profiled: 404, as the query command says.
  ExpectError(Get("/v1/models/m/query?domain=klingon"), 404);
  // Percent-encoded and '+'-encoded parameters decode.
  auto encoded = Get("/v1/models/m/query?domain=pyth%6Fn&top=1");
  ASSERT_TRUE(encoded);
  EXPECT_EQ(ParseOrDie(encoded->body).Find("data")->array().size(), 1u);

  ExpectError(Get("/v1/models/m/query?domain=python&order=size"), 400);
  ExpectError(Get("/v1/models/m/query?domain=python&top=0"), 400);
  ExpectError(Get("/v1/models/m/query?domain=python&top=ten"), 400);
  ExpectError(Get("/v1/models/m/query?domain=python&layer=2"), 400);
}

TEST_F(HttpApiTest, CompletionMatchesInProcessGeneration) {
  const std::string prompt = "def main(";
  const std::string expected = ReferenceText(prompt, 12);
  ASSERT_FALSE(expected.empty());
  auto r = Post("/v1/completions", R"({"model": "tiny", "prompt": "def main(", "max_tokens": 12, "temperature": 0})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  JsonValue doc = ParseOrDie(r->body);
  EXPECT_EQ(doc.Find("object")->string_value(), "text_completion");
  EXPECT_EQ(doc.Find("model")->string_value(), "tiny");
  EXPECT_EQ(doc.Find("id")->string_value().rfind("cmpl-", 0), 0u);
  const JsonValue& choice = doc.Find("choices")->array().at(0);
  EXPECT_EQ(choice.Find("text")->string_value(), expected);
  EXPECT_EQ(choice.Find("finish_reason")->string_value(), "length");
  const JsonValue* usage = doc.Find("usage");
  EXPECT_EQ(*usage->Find("completion_tokens")->AsUint64(), 12u);
  EXPECT_GT(*usage->Find("prompt_tokens")->AsUint64(), 0u);
  EXPECT_EQ(*usage->Find("total_tokens")->AsUint64(),
            *usage->Find("prompt_tokens")->AsUint64() + *usage->Find("completion_tokens")->AsUint64());

  // A one-element prompt array is the same request.
  auto arr = Post("/v1/completions", R"({"model": "tiny", "prompt": ["def main("], "max_tokens": 12, "temperature": 0})");
  ASSERT_TRUE(arr);
  ASSERT_EQ(arr->status, 200);
  EXPECT_EQ(ParseOrDie(arr->body).Find("choices")->array()[0].Find("text")->string_value(), expected);
}

// Continuous batching: a short request sent while a long one decodes joins the batch and finishes first, and
// both get the text each gets alone.
TEST_F(HttpApiTest, ConcurrentCompletionsDecodeTogether) {
  const std::string long_text = ReferenceText("def main(", 1000);
  const std::string short_text = ReferenceText("import os", 3);
  std::optional<HttpReply> long_reply, short_reply;
  std::atomic<bool> long_done{false};
  bool short_first = false;
  std::thread long_client([&] {
    long_reply = Post("/v1/completions", R"({"model": "tiny", "prompt": "def main(", "max_tokens": 1000, "temperature": 0})");
    long_done = true;
  });
  // Once the long request is decoding, the short one.
  ASSERT_TRUE(testing::Eventually([&] {
    auto m = Get("/metrics");
    return m && MetricValue(m->body, "expertstore_generation_running") >= 1;
  }));
  short_reply = Post("/v1/completions", R"({"model": "tiny", "prompt": "import os", "max_tokens": 3, "temperature": 0})");
  short_first = !long_done;
  long_client.join();
  ASSERT_TRUE(long_reply && short_reply);
  ASSERT_EQ(long_reply->status, 200) << long_reply->body;
  ASSERT_EQ(short_reply->status, 200) << short_reply->body;
  EXPECT_TRUE(short_first) << "the short request waited for the long one";
  EXPECT_EQ(ParseOrDie(long_reply->body).Find("choices")->array()[0].Find("text")->string_value(), long_text);
  EXPECT_EQ(ParseOrDie(short_reply->body).Find("choices")->array()[0].Find("text")->string_value(), short_text);
}

// n choices run as n sequences of the batch (choice i seeded seed + i); greedy choices are all the greedy text.
// logprobs give each token's log-probability and the alternatives, most likely first, the greedy token on top.
TEST_F(HttpApiTest, ChoicesAndLogprobs) {
  const std::string greedy = ReferenceText("def main(", 6);
  auto r = Post("/v1/completions", R"({"model": "tiny", "prompt": "def main(", "max_tokens": 6, "temperature": 0,
                                      "n": 3, "logprobs": 2})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  JsonValue doc = ParseOrDie(r->body);
  const auto& choices = doc.Find("choices")->array();
  ASSERT_EQ(choices.size(), 3u);
  EXPECT_EQ(*doc.Find("usage")->Find("completion_tokens")->AsUint64(), 18u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(*choices[i].Find("index")->AsUint64(), i);
    EXPECT_EQ(choices[i].Find("text")->string_value(), greedy);
    const JsonValue* lp = choices[i].Find("logprobs");
    ASSERT_NE(lp, nullptr);
    const auto& tokens = lp->Find("tokens")->array();
    const auto& logprobs = lp->Find("token_logprobs")->array();
    const auto& tops = lp->Find("top_logprobs")->array();
    ASSERT_EQ(tokens.size(), 6u);
    ASSERT_EQ(logprobs.size(), 6u);
    ASSERT_EQ(tops.size(), 6u);
    std::string joined;
    for (size_t t = 0; t < 6; ++t) {
      joined += tokens[t].string_value();
      const double l = *logprobs[t].AsDouble();
      EXPECT_LE(l, 0.0);
      ASSERT_EQ(tops[t].object().size(), 2u);
      // The greedy token is the most likely: its log-probability is the largest of the alternatives.
      double best = -1e30;
      for (const auto& [tok, v] : tops[t].object()) best = std::max(best, *v.AsDouble());
      EXPECT_NEAR(l, best, 1e-6);
    }
    EXPECT_EQ(joined, greedy);
  }
  // Sampled choices differ from each other (seed + i) and repeat under the same seed.
  const std::string sampled = R"({"model": "tiny", "prompt": "Der Hund", "max_tokens": 12, "temperature": 1.5,
                                  "seed": 11, "n": 2})";
  auto a = Post("/v1/completions", sampled), b = Post("/v1/completions", sampled);
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->status, 200) << a->body;
  EXPECT_EQ(a->body.substr(a->body.find("\"choices\"")), b->body.substr(b->body.find("\"choices\"")));
  JsonValue sdoc = ParseOrDie(a->body);
  EXPECT_NE(sdoc.Find("choices")->array()[0].Find("text")->string_value(),
            sdoc.Find("choices")->array()[1].Find("text")->string_value());

  // Streamed: every choice's chunks carry its index and the log-probabilities of their tokens. (The chat shape of
  // logprobs is OpenAiFormatTest's: the tiny model answers a chat with its end token at once.)
  auto c = TestConnection::Connect(port());
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->SendRequest("POST", "/v1/completions",
                             R"({"model": "tiny", "prompt": "def main(", "max_tokens": 6, "temperature": 0, "n": 2,
                                 "logprobs": 1, "stream": true})"));
  auto head = c->ReadHead();
  ASSERT_TRUE(head);
  ASSERT_EQ(head->status, 200);
  std::string body;
  while (auto chunk = c->ReadChunk()) body += *chunk;
  std::map<uint64_t, std::string> text;
  std::map<uint64_t, size_t> entries, finished;
  for (const std::string& ev : testing::SseData(body)) {
    if (ev == "[DONE]") continue;
    JsonValue e = ParseOrDie(ev);
    const JsonValue& choice = e.Find("choices")->array().at(0);
    const uint64_t index = *choice.Find("index")->AsUint64();
    ASSERT_LT(index, 2u);
    text[index] += choice.Find("text")->string_value();
    if (const JsonValue* lp = choice.Find("logprobs"); lp != nullptr && !lp->is_null()) {
      entries[index] += lp->Find("tokens")->array().size();
      EXPECT_EQ(lp->Find("top_logprobs")->array().size(), lp->Find("tokens")->array().size());
    }
    if (!choice.Find("finish_reason")->is_null()) ++finished[index];
  }
  EXPECT_EQ(text[0], greedy);
  EXPECT_EQ(text[0], text[1]);
  EXPECT_EQ(entries[0], 6u);
  EXPECT_EQ(entries[1], 6u);
  EXPECT_EQ(finished[0], 1u);
  EXPECT_EQ(finished[1], 1u);
}

TEST_F(HttpApiTest, StreamedCompletionIsTheSameTextAsServerSentEvents) {
  const std::string expected = ReferenceText("import os", 10);
  auto r = Post("/v1/completions",
                R"({"model": "tiny", "prompt": "import os", "max_tokens": 10, "temperature": 0, "stream": true,
                    "stream_options": {"include_usage": true}})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->header("content-type"), "text/event-stream");
  EXPECT_EQ(r->header("transfer-encoding"), "chunked");
  std::vector<std::string> events = testing::SseData(r->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  bool saw_usage = false;
  std::set<std::string> ids;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    JsonValue chunk = ParseOrDie(events[i]);
    ids.insert(chunk.Find("id")->string_value());
    EXPECT_EQ(chunk.Find("object")->string_value(), "text_completion");
    const auto& choices = chunk.Find("choices")->array();
    if (choices.empty()) {
      saw_usage = true;
      EXPECT_EQ(*chunk.Find("usage")->Find("completion_tokens")->AsUint64(), 10u);
      continue;
    }
    text += choices[0].Find("text")->string_value();
    if (!choices[0].Find("finish_reason")->is_null()) finish = choices[0].Find("finish_reason")->string_value();
  }
  EXPECT_EQ(text, expected);
  EXPECT_EQ(finish, "length");
  EXPECT_TRUE(saw_usage);
  EXPECT_EQ(ids.size(), 1u);
}

TEST_F(HttpApiTest, ChatCompletionWholeAndStreamed) {
  std::vector<ChatMessage> messages = {{"system", "You write code."}, {"user", "def add(a, b):"}};
  auto pool = kernels::ComputePool::Create(0);
  auto rt = ModelRuntime::Open(SharedStore(), testing::kTiny, RuntimeConfig{}, pool->get());
  ASSERT_TRUE(rt.ok());
  GenerateOptions o;
  o.max_tokens = 8;
  o.forward = (*rt)->forward_options();
  auto ref = GenerateChat((*rt)->model(), (*rt)->tokenizer(), (*rt)->experts(), messages, o);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();

  const std::string body = R"({"model": "tiny", "max_tokens": 8, "temperature": 0, "messages": [
      {"role": "system", "content": "You write code."},
      {"role": "user", "content": [{"type": "text", "text": "def add(a, b):"}]}]})";
  auto r = Post("/v1/chat/completions", body);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  JsonValue doc = ParseOrDie(r->body);
  EXPECT_EQ(doc.Find("object")->string_value(), "chat.completion");
  const JsonValue& choice = doc.Find("choices")->array().at(0);
  EXPECT_EQ(choice.Find("message")->Find("role")->string_value(), "assistant");
  EXPECT_EQ(choice.Find("message")->Find("content")->string_value(), ref->text);
  EXPECT_EQ(choice.Find("finish_reason")->string_value(), ref->finish_reason);

  std::string streamed_body = body;
  streamed_body.insert(1, R"("stream": true, )");
  auto s = Post("/v1/chat/completions", streamed_body);
  ASSERT_TRUE(s);
  ASSERT_EQ(s->status, 200);
  std::vector<std::string> events = testing::SseData(s->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  JsonValue first = ParseOrDie(events[0]);
  EXPECT_EQ(first.Find("object")->string_value(), "chat.completion.chunk");
  EXPECT_EQ(first.Find("choices")->array()[0].Find("delta")->Find("role")->string_value(), "assistant");
  std::string text;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    const JsonValue* content = ParseOrDie(events[i]).Find("choices")->array()[0].Find("delta")->Find("content");
    if (content != nullptr) text += content->string_value();
  }
  EXPECT_EQ(text, ref->text);
}

TEST_F(HttpApiTest, StopSequencesCutTheOutput) {
  const std::string full = ReferenceText("def main(", 16);
  ASSERT_GT(full.size(), 6u);
  // A stop sequence taken from the middle of the greedy output: the answer is what precedes it.
  const std::string stop = full.substr(full.size() / 2, 3);
  const std::string before = full.substr(0, full.find(stop));
  JsonWriter w;
  w.BeginObject().Key("model").String("tiny").Key("prompt").String("def main(").Key("max_tokens").Uint(16)
      .Key("temperature").Uint(0).Key("stop").BeginArray().String("never-generated-xyz").String(stop).EndArray()
      .EndObject();
  auto r = Post("/v1/completions", w.str());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  JsonValue doc = ParseOrDie(r->body);
  const JsonValue& choice = doc.Find("choices")->array().at(0);
  EXPECT_EQ(choice.Find("text")->string_value(), before);
  EXPECT_EQ(choice.Find("finish_reason")->string_value(), "stop");

  // Streamed: no event carries any part of the stop sequence.
  std::string streamed = w.str();
  streamed.insert(1, R"("stream": true, )");
  auto s = Post("/v1/completions", streamed);
  ASSERT_TRUE(s);
  std::string text;
  for (const std::string& e : testing::SseData(s->body)) {
    if (e == "[DONE]") break;
    text += ParseOrDie(e).Find("choices")->array()[0].Find("text")->string_value();
  }
  EXPECT_EQ(text, before);
}

TEST_F(HttpApiTest, SeededSamplingIsReproducible) {
  const std::string body = R"({"model": "tiny", "prompt": "Der Hund", "max_tokens": 10, "temperature": 1.2,
                               "top_p": 0.95, "seed": 1234})";
  auto a = Post("/v1/completions", body);
  auto b = Post("/v1/completions", body);
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->status, 200) << a->body;
  EXPECT_EQ(ParseOrDie(a->body).Find("choices")->array()[0].Find("text")->string_value(),
            ParseOrDie(b->body).Find("choices")->array()[0].Find("text")->string_value());
}

TEST_F(HttpApiTest, BadCompletionRequestsGetJsonErrors) {
  const std::vector<std::pair<std::string, int>> cases = {
      {"", 400},
      {"{", 400},
      {R"({"model": "tiny", "prompt": "x",})", 400},
      {"[1, 2]", 400},
      {R"({"prompt": "x"})", 400},
      {R"({"model": 7, "prompt": "x"})", 400},
      {R"({"model": "tiny"})", 400},
      {R"({"model": "tiny", "prompt": 5})", 400},
      {R"({"model": "tiny", "prompt": ""})", 400},
      {R"({"model": "tiny", "prompt": "x", "max_tokens": "ten"})", 400},
      {R"({"model": "tiny", "prompt": "x", "max_tokens": 2.5})", 400},
      {R"({"model": "tiny", "prompt": "x", "max_tokens": 0})", 400},
      {R"({"model": "tiny", "prompt": "x", "max_tokens": 1000000})", 400},
      {R"({"model": "tiny", "prompt": "x", "temperature": "hot"})", 400},
      {R"({"model": "tiny", "prompt": "x", "temperature": 3})", 400},
      {R"({"model": "tiny", "prompt": "x", "top_p": 0})", 400},
      {R"({"model": "tiny", "prompt": "x", "stream": "yes"})", 400},
      {R"({"model": "tiny", "prompt": "x", "stop": 3})", 400},
      {R"({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]})", 400},
      {R"({"model": "tiny", "prompt": "x", "seed": "s"})", 400},
      {R"({"model": "tiny", "prompt": "x", "n": 0})", 400},
      {R"({"model": "tiny", "prompt": "x", "n": 17})", 400},
      {R"({"model": "tiny", "prompt": "x", "logprobs": 21})", 400},
      {R"({"model": "tiny", "prompt": "x", "logprobs": true})", 400},
      {R"({"model": "tiny", "prompt": "x", "top_logprobs": 2})", 400},
      {R"({"model": "tiny", "prompt": "x", "echo": true})", 400},
      {R"({"model": "tiny", "prompt": [1, 2, 3]})", 400},
      {R"({"model": "nope", "prompt": "x"})", 404},
      {"{\"model\": \"tiny\", \"prompt\": \"\xff\xfe\"}", 400},  // invalid UTF-8
  };
  for (const auto& [body, status] : cases) {
    SCOPED_TRACE(body);
    ExpectError(Post("/v1/completions", body), status);
  }
  const std::vector<std::pair<std::string, int>> chat = {
      {R"({"model": "tiny", "messages": "hi"})", 400},
      {R"({"model": "tiny", "messages": []})", 400},
      {R"({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]})", 400},
      {R"({"model": "tiny", "messages": [{"role": "user"}]})", 400},
      {R"({"model": "tiny", "messages": [{"role": "user", "content": 5}]})", 400},
      {R"({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400},
      {R"({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", 400},
      {R"({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": 2})", 400},
  };
  for (const auto& [body, status] : chat) {
    SCOPED_TRACE(body);
    ExpectError(Post("/v1/chat/completions", body), status);
  }
  // A prompt plus max_tokens beyond the model's context (1024 positions) is the client's error.
  JsonWriter w;
  w.BeginObject().Key("model").String("tiny").Key("prompt").String(std::string(3000, 'a') + " b c d e f")
      .Key("max_tokens").Uint(1000).EndObject();
  ExpectError(Post("/v1/completions", w.str()), 400);
  // A model the store holds but cannot run (no forward pass for its architecture, no tokenizer): the load
  // error comes back as the request's answer, and the worker goes on.
  ExpectError(Post("/v1/completions", R"({"model": "m", "prompt": "x"})"), 400);
  // Unknown fields are ignored; neutral values of unsupported features are accepted.
  auto ok = Post("/v1/completions", R"({"model": "tiny", "prompt": "x", "max_tokens": 1, "n": 1, "logprobs": null,
                                        "presence_penalty": 0, "user": "u", "something_new": {"a": 1}})");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

TEST_F(HttpApiTest, MetricsCountRequestsCacheAndTokens) {
  ASSERT_TRUE(Get("/v1/models"));
  ASSERT_TRUE(Get("/v1/models/nope"));
  auto gen = Post("/v1/completions", R"({"model": "tiny", "prompt": "hello", "max_tokens": 3, "temperature": 0})");
  ASSERT_TRUE(gen);
  ASSERT_EQ(gen->status, 200);
  // A request is counted once its answer has been written, which may be just after the client read it: poll
  // until the three are in (a hang guard, not a timing assertion).
  std::optional<HttpReply> m;
  for (int poll = 0; poll < 500; ++poll) {
    m = Get("/metrics");
    ASSERT_TRUE(m);
    if (MetricValue(m->body, R"(expertstore_http_requests_total{route="/v1/completions",code="200"})") >= 1 &&
        MetricValue(m->body, R"(expertstore_http_requests_total{route="/v1/models",code="200"})") >= 1 &&
        MetricValue(m->body, R"(expertstore_http_requests_total{route="/v1/models/{model}",code="404"})") >= 1) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(m->status, 200);
  EXPECT_EQ(m->header("content-type").rfind("text/plain; version=0.0.4", 0), 0u);
  const std::string& t = m->body;
  EXPECT_GE(MetricValue(t, R"(expertstore_http_requests_total{route="/v1/models",code="200"})"), 1);
  EXPECT_GE(MetricValue(t, R"(expertstore_http_requests_total{route="/v1/models/{model}",code="404"})"), 1);
  EXPECT_GE(MetricValue(t, R"(expertstore_http_requests_total{route="/v1/completions",code="200"})"), 1);
  // At least this request's tokens (the model may stop before max_tokens; earlier tests' requests add theirs).
  const JsonValue reply = ParseOrDie(gen->body);
  const double generated = static_cast<double>(*reply.Find("usage")->Find("completion_tokens")->AsUint64());
  EXPECT_GE(generated, 1);
  EXPECT_GE(MetricValue(t, R"(expertstore_tokens_generated_total{model="tiny"})"), generated);
  EXPECT_GT(MetricValue(t, R"(expertstore_cache_misses_total{model="tiny"})"), 0);
  EXPECT_GE(MetricValue(t, R"(expertstore_cache_hits_total{model="tiny"})"), 0);
  EXPECT_GT(MetricValue(t, R"(expertstore_cache_bytes_read_total{model="tiny"})"), 0);
  EXPECT_GT(MetricValue(t, R"(expertstore_swapin_seconds_count{model="tiny"})"), 0);
  EXPECT_EQ(MetricValue(t, R"(expertstore_swapin_seconds_bucket{model="tiny",le="+Inf"})"),
            MetricValue(t, R"(expertstore_swapin_seconds_count{model="tiny"})"));
  EXPECT_GE(MetricValue(t, R"(expertstore_tokens_per_second{model="tiny"})"), 0);
  // The lookahead router's predictions (focus prefetches one layer ahead) and the decode steps the prefetch
  // governor ran, prefetching or not: one for each token after the first.
  const double predicted = MetricValue(t, R"(expertstore_prefetch_predicted_total{model="tiny"})");
  EXPECT_GT(predicted, 0);
  EXPECT_LE(MetricValue(t, R"(expertstore_prefetch_correct_total{model="tiny"})"), predicted);
  EXPECT_NEAR(MetricValue(t, R"(expertstore_prefetch_precision{model="tiny"})"),
              MetricValue(t, R"(expertstore_prefetch_correct_total{model="tiny"})") / predicted, 1e-6);
  EXPECT_GE(MetricValue(t, R"(expertstore_decode_steps_total{model="tiny",prefetch="yes"})") +
                MetricValue(t, R"(expertstore_decode_steps_total{model="tiny",prefetch="no"})"),
            generated - 1);
  // Every expert use ran at the model's own precision: no miss tier.
  EXPECT_GT(MetricValue(t, R"(expertstore_expert_uses_total{model="tiny",precision="model"})"), 0);
  EXPECT_EQ(MetricValue(t, R"(expertstore_expert_uses_total{model="tiny",precision="low_bit"})"), 0);
  EXPECT_EQ(MetricValue(t, R"(expertstore_miss_tier_promotions_total{model="tiny"})"), 0);
  EXPECT_GE(MetricValue(t, R"(expertstore_http_request_duration_seconds_count{route="/v1/models"})"), 1);
  EXPECT_GE(MetricValue(t, "expertstore_http_connections_total"), 3);
  EXPECT_NE(t.find("# TYPE expertstore_swapin_seconds histogram"), std::string::npos);
}

TEST_F(HttpApiTest, KeepAliveServesManyRequestsOnOneConnection) {
  auto c = TestConnection::Connect(port());
  ASSERT_TRUE(c);
  // Pipelined: three requests sent at once, answered in order.
  ASSERT_TRUE(c->Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /v1/models/none HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto a = c->ReadReply();
  auto b = c->ReadReply();
  auto d = c->ReadReply();
  ASSERT_TRUE(a && b && d);
  EXPECT_EQ(a->status, 200);
  EXPECT_EQ(b->status, 200);
  EXPECT_EQ(d->status, 404);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(c->SendRequest("GET", "/v1/models/m/experts/0/" + std::to_string(i % 7)));
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  // A POST completion on the same connection, then more metadata.
  ASSERT_TRUE(c->SendRequest("POST", "/v1/completions", R"({"model":"tiny","prompt":"a","max_tokens":2})"));
  auto g = c->ReadReply();
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 200);
  ASSERT_TRUE(c->SendRequest("GET", "/healthz"));
  auto h = c->ReadReply();
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

TEST_F(HttpApiTest, ExpectContinueIsHonoured) {
  auto c = TestConnection::Connect(port());
  ASSERT_TRUE(c);
  std::string body = R"({"model":"nope","prompt":"x"})";
  ASSERT_TRUE(c->Send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n"));
  auto cont = c->ReadHead();
  ASSERT_TRUE(cont);
  EXPECT_EQ(cont->status, 100);
  ASSERT_TRUE(c->Send(body));
  auto r = c->ReadReply();
  ExpectError(r, 404);
}

}  // namespace
}  // namespace es
