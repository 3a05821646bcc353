// The pure parts of the API: OpenAI request parsing (one negative case per class of bad input), response and
// chunk shapes, the stop-sequence filter against a brute-force reference, target and URL parsing, the
// Status -> HTTP mapping, the fair queue, and the blob envelope.
#include <gtest/gtest.h>

#include <random>

#include "api/blob.h"
#include "api/client.h"
#include "api/errors.h"
#include "api/fair_queue.h"
#include "api/http_types.h"
#include "api/openai.h"
#include "store/base/checksum.h"
#include "store/base/json.h"

namespace es::api {
namespace {

Result<CompletionRequest> Parse(std::string_view body, bool chat = false) {
  return ParseCompletionRequest(body, chat, CompletionLimits{});
}

// Sampling settings a request leaves out stay unset: the model's generation_config.json decides them, as for the
// CLI (one rule for both front ends).
TEST(OpenAiParseTest, UnsetSamplingLeavesTheModelDefaults) {
  auto r = Parse(R"({"model": "m", "prompt": "hi"})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->model, "m");
  EXPECT_EQ(r->prompt, "hi");
  EXPECT_EQ(r->max_tokens, CompletionLimits{}.default_max_tokens);
  EXPECT_FALSE(r->sampler.temperature.has_value());
  EXPECT_FALSE(r->sampler.top_p.has_value());
  EXPECT_FALSE(r->sampler.seed.has_value());
  SamplerOptions model_defaults;
  model_defaults.temperature = 0.7f;
  model_defaults.top_k = 40;
  EXPECT_FLOAT_EQ(r->sampler.Over(model_defaults).temperature, 0.7f);
  EXPECT_EQ(r->sampler.Over(model_defaults).top_k, 40u);
  EXPECT_FALSE(r->stream);
  EXPECT_TRUE(r->stop.empty());
  auto c = Parse(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}]})", /*chat=*/true);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->max_tokens, CompletionLimits{}.default_chat_max_tokens);
  ASSERT_EQ(c->messages.size(), 1u);
  EXPECT_EQ(c->messages[0].role, "user");
}

TEST(OpenAiParseTest, EveryFieldParses) {
  auto r = Parse(R"({"model": "m", "prompt": "p", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                     "seed": -1, "stop": "END", "stream": true, "stream_options": {"include_usage": true},
                     "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": -0.5, "repeat_penalty": 1.1,
                     "repeat_last_n": 32, "response_format": {"type": "text"}})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->max_tokens, 7u);
  EXPECT_FLOAT_EQ(*r->sampler.temperature, 0.5f);
  EXPECT_FLOAT_EQ(*r->sampler.top_p, 0.9f);
  EXPECT_EQ(*r->sampler.top_k, 40u);
  EXPECT_EQ(*r->sampler.seed, UINT64_MAX);
  EXPECT_FLOAT_EQ(*r->sampler.min_p, 0.05f);
  EXPECT_FLOAT_EQ(*r->sampler.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(*r->sampler.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(*r->sampler.repetition_penalty, 1.1f);
  EXPECT_EQ(*r->sampler.penalty_last_n, 32u);
  EXPECT_EQ(r->stop, std::vector<std::string>{"END"});
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  auto chat = Parse(R"({"model": "m", "max_completion_tokens": 3, "messages": [{"role": "developer", "content": "s"},
                        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})",
                    true);
  ASSERT_TRUE(chat.ok()) << chat.status().ToString();
  EXPECT_EQ(chat->max_tokens, 3u);
  EXPECT_EQ(chat->messages[0].role, "system");
  EXPECT_EQ(chat->messages[1].content, "ab");
  // null means absent.
  auto nulls = Parse(R"({"model": "m", "prompt": "p", "max_tokens": null, "stop": null, "seed": null})");
  ASSERT_TRUE(nulls.ok());
  EXPECT_FALSE(nulls->sampler.seed.has_value());
}

TEST(OpenAiParseTest, EachClassOfBadInputIsRefused) {
  struct Case {
    const char* body;
    bool chat;
    Status::Code code;
  };
  const Case cases[] = {
      {"not json", false, Status::Code::kInvalidArgument},                                      // syntax
      {R"({"model": "m", "prompt": "p", "model": "n"})", false, Status::Code::kInvalidArgument},  // duplicate key
      {R"("a string")", false, Status::Code::kInvalidArgument},                                  // not an object
      {R"({"prompt": "p"})", false, Status::Code::kInvalidArgument},                             // missing field
      {R"({"model": ["m"], "prompt": "p"})", false, Status::Code::kInvalidArgument},             // wrong type
      {R"({"model": "m", "prompt": "p", "max_tokens": -1})", false, Status::Code::kInvalidArgument},  // range
      {R"({"model": "m", "prompt": "p", "max_tokens": 18446744073709551616})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p", "temperature": 1e400})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p", "top_k": -2})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p", "stream_options": true})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p", "user": 1})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": ["a", 1]})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p", "stop": [1]})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": ["a", "b"]})", false, Status::Code::kNotSupported},  // batch
      {R"({"model": "m", "prompt": "p", "best_of": 3})", false, Status::Code::kNotSupported},
      {R"({"model": "m", "prompt": "p", "logit_bias": {"1": 2}})", false, Status::Code::kNotSupported},
      {R"({"model": "m", "prompt": "p", "frequency_penalty": 2.5})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p", "repetition_penalty": 0})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p", "min_p": 1.5})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p", "response_format": {"type": "json_object"}})", false,
       Status::Code::kNotSupported},  // refused, not silently ignored
      {R"({"model": "m", "prompt": "p", "response_format": "json"})", false, Status::Code::kInvalidArgument},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{}]})", true,
       Status::Code::kNotSupported},
      {R"({"model": "m", "messages": [1]})", true, Status::Code::kInvalidArgument},
      {R"({"model": "m", "messages": [{"role": 1, "content": "x"}]})", true, Status::Code::kInvalidArgument},
      {R"({"model": "m", "prompt": "p"})", true, Status::Code::kInvalidArgument},  // chat needs messages
  };
  for (const Case& c : cases) {
    auto r = Parse(c.body, c.chat);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), c.code) << c.body << ": " << r.status().ToString();
  }
  // A stop sequence long enough to make the filter quadratic.
  EXPECT_TRUE(Parse(R"({"model": "m", "prompt": "p", "stop": ")" + std::string(257, 's') + "\"}")
                  .status().IsInvalidArgument());
  EXPECT_TRUE(Parse(R"({"model": "m", "prompt": "p", "stop": ")" + std::string(256, 's') + "\"}").ok());
  // Nesting beyond the JSON limit.
  std::string deep = R"({"model": "m", "prompt": "p", "x": )" + std::string(200, '[') + std::string(200, ']') + "}";
  EXPECT_FALSE(Parse(deep).ok());
}

TEST(OpenAiFormatTest, ShapesParseBack) {
  CompletionRequest req;
  req.model = "m";
  CompletionOutcome o{{{"hé \"quoted\"\n", "stop", {}}}, 3, 4};
  const std::string& text = o.choices[0].text;
  auto doc = ParseJson(FormatCompletion(req, "cmpl-1", 42, o));
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->Find("choices")->array()[0].Find("text")->string_value(), text);
  EXPECT_TRUE(doc->Find("choices")->array()[0].Find("logprobs")->is_null());
  EXPECT_EQ(*doc->Find("usage")->Find("total_tokens")->AsUint64(), 7u);
  EXPECT_EQ(*doc->Find("created")->AsInt64(), 42);
  req.chat = true;
  auto chat = ParseJson(FormatCompletion(req, "chatcmpl-1", 42, o));
  ASSERT_TRUE(chat.ok());
  EXPECT_EQ(chat->Find("object")->string_value(), "chat.completion");
  EXPECT_EQ(chat->Find("choices")->array()[0].Find("message")->Find("content")->string_value(), text);
  auto role = ParseJson(FormatChunk(req, "c", 1, TextDelta{}, std::nullopt, true));
  ASSERT_TRUE(role.ok());
  EXPECT_EQ(role->Find("choices")->array()[0].Find("delta")->Find("role")->string_value(), "assistant");
  auto last = ParseJson(FormatChunk(req, "c", 1, TextDelta{}, std::string_view("length")));
  ASSERT_TRUE(last.ok());
  EXPECT_TRUE(last->Find("choices")->array()[0].Find("delta")->object().empty());
  EXPECT_EQ(last->Find("choices")->array()[0].Find("finish_reason")->string_value(), "length");
  EXPECT_EQ(SseEvent("{}"), "data: {}\n\n");
}

// n and logprobs: parsed with OpenAI's names per endpoint; formatted in each endpoint's shape, a token that ends
// inside a UTF-8 character shown with U+FFFD and its exact bytes.
TEST(OpenAiFormatTest, ChoicesAndLogprobs) {
  CompletionLimits limits;
  auto c = ParseCompletionRequest(R"({"model": "m", "prompt": "p", "n": 3, "logprobs": 2})", false, limits);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->n, 3u);
  EXPECT_TRUE(c->logprobs);
  EXPECT_EQ(c->top_logprobs, 2u);
  auto zero = ParseCompletionRequest(R"({"model": "m", "prompt": "p", "logprobs": 0})", false, limits);
  ASSERT_TRUE(zero.ok());
  EXPECT_TRUE(zero->logprobs);
  EXPECT_EQ(zero->top_logprobs, 0u);
  auto chat = ParseCompletionRequest(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                         "logprobs": true, "top_logprobs": 3})", true, limits);
  ASSERT_TRUE(chat.ok()) << chat.status().ToString();
  EXPECT_TRUE(chat->logprobs);
  EXPECT_EQ(chat->top_logprobs, 3u);
  auto off = ParseCompletionRequest(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                        "logprobs": false})", true, limits);
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->logprobs);

  const std::string euro = "\xE2\x82\xAC";  // one character in three bytes, split over two tokens
  TokenLogprobs first{euro.substr(0, 2), -0.25f, {{euro.substr(0, 2), -0.25f}, {"b", -1.5f}}};
  TokenLogprobs second{euro.substr(2), -0.5f, {{euro.substr(2), -0.5f}, {"c", -2.0f}}};
  CompletionOutcome o{{{euro, "length", {first, second}}}, 1, 2};
  auto text = ParseJson(FormatCompletion(*c, "cmpl", 1, o));
  ASSERT_TRUE(text.ok());
  const JsonValue* lp = text->Find("choices")->array()[0].Find("logprobs");
  ASSERT_NE(lp, nullptr);
  EXPECT_EQ(lp->Find("tokens")->array()[0].string_value(), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_DOUBLE_EQ(*lp->Find("token_logprobs")->array()[1].AsDouble(), -0.5);
  EXPECT_EQ(*lp->Find("text_offset")->array()[1].AsUint64(), 2u);
  EXPECT_DOUBLE_EQ(*lp->Find("top_logprobs")->array()[0].Find("b")->AsDouble(), -1.5);

  auto chat_doc = ParseJson(FormatCompletion(*chat, "chat", 1, o));
  ASSERT_TRUE(chat_doc.ok());
  const auto& content = chat_doc->Find("choices")->array()[0].Find("logprobs")->Find("content")->array();
  ASSERT_EQ(content.size(), 2u);
  const auto& bytes = content[0].Find("bytes")->array();
  ASSERT_EQ(bytes.size(), 2u);
  EXPECT_EQ(*bytes[0].AsUint64(), 0xE2u);
  EXPECT_EQ(*bytes[1].AsUint64(), 0x82u);
  EXPECT_EQ(content[1].Find("top_logprobs")->array()[1].Find("token")->string_value(), "c");
  // A streamed chunk carries its choice's index and the delta's entries.
  auto chunk = ParseJson(FormatChunk(*chat, "chat", 1, TextDelta{2, "x", {second}}, std::nullopt));
  ASSERT_TRUE(chunk.ok());
  const JsonValue& choice = chunk->Find("choices")->array()[0];
  EXPECT_EQ(*choice.Find("index")->AsUint64(), 2u);
  EXPECT_EQ(choice.Find("logprobs")->Find("content")->array().size(), 1u);
}

// The reference: text arrives in pieces; at the first piece after which the text so far contains a stop
// sequence, the answer is the text before the earliest stop sequence in it (as OpenAI-compatible servers check
// after each token); if none ever appears, the whole text.
std::string ReferenceStop(const std::string& text, const std::vector<size_t>& piece_ends,
                          const std::vector<std::string>& stops) {
  for (size_t end : piece_ends) {
    std::string_view seen = std::string_view(text).substr(0, end);
    size_t cut = std::string::npos;
    for (const auto& s : stops) cut = std::min(cut, seen.find(s));
    if (cut != std::string::npos) return text.substr(0, cut);
  }
  return text;
}

TEST(StopFilterTest, MatchesTheReferenceOnRandomPieces) {
  std::mt19937 rng(7);
  const std::string alphabet = "abc";
  for (int trial = 0; trial < 5000; ++trial) {
    std::string text;
    size_t len = rng() % 30;
    for (size_t i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
    std::vector<std::string> stops;
    for (size_t s = rng() % 3 + 1; s > 0; --s) {
      std::string stop;
      for (size_t i = rng() % 4 + 1; i > 0; --i) stop += alphabet[rng() % alphabet.size()];
      stops.push_back(stop);
    }
    std::vector<size_t> piece_ends;
    for (size_t pos = 0; pos < text.size();) {
      pos = std::min(text.size(), pos + rng() % 4 + 1);
      piece_ends.push_back(pos);
    }
    const std::string expected = ReferenceStop(text, piece_ends, stops);
    StopFilter f(stops);
    std::string out;
    size_t pos = 0;
    for (size_t end : piece_ends) {
      out += f.Push(std::string_view(text).substr(pos, end - pos));
      pos = end;
      // What is shown is final: a prefix of the answer, whatever comes later.
      ASSERT_LE(out.size(), expected.size()) << text;
      ASSERT_EQ(expected.substr(0, out.size()), out) << text;
    }
    out += f.Flush();
    ASSERT_EQ(out, expected) << text;
    ASSERT_EQ(f.stopped(), out.size() < text.size()) << text;
  }
}

TEST(TargetTest, SplitsAndDecodes) {
  auto t = ParseTarget("/v1/models/a%2Db/query?domain=c%2B%2B&top=3&flag&x=a+b#frag");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->segments, (std::vector<std::string>{"v1", "models", "a-b", "query"}));
  EXPECT_EQ(t->query.at("domain"), "c++");
  EXPECT_EQ(t->query.at("top"), "3");
  EXPECT_EQ(t->query.at("flag"), "");
  EXPECT_EQ(t->query.at("x"), "a b");
  EXPECT_FALSE(ParseTarget("models").ok());
  EXPECT_FALSE(ParseTarget("/a%2").ok());
  EXPECT_FALSE(ParseTarget("/a?b=%g0").ok());
  EXPECT_TRUE(ParseTarget("/").ok());
  // Decoded text must be UTF-8 (answers echo it into JSON).
  EXPECT_FALSE(ParseTarget("/a%ff").ok());
  EXPECT_FALSE(ParseTarget("/a?d=%c0%af").ok());  // an overlong '/'
  EXPECT_FALSE(ParseTarget("/a?d=%ed%a0%80").ok());  // a surrogate
  EXPECT_TRUE(ParseTarget("/a?d=%e2%82%ac").ok());
  EXPECT_EQ(ToValidUtf8("a\xff\xe2\x82\xac\xc0"), "a\xef\xbf\xbd\xe2\x82\xac\xef\xbf\xbd");
}

TEST(UrlTest, ParsesHttpUrls) {
  auto u = ParseHttpUrl("http://10.0.0.2:8080/prefix/");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "10.0.0.2");
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->prefix, "/prefix");
  auto d = ParseHttpUrl("http://example.org");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->port, 80);
  auto v6 = ParseHttpUrl("http://[::1]:9000");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_TRUE(ParseHttpUrl("https://x").status().IsNotSupported());
  for (const char* bad : {"ftp://x", "http://", "http://x:0", "http://x:99999", "http://x:8a", "http://[::1"}) {
    EXPECT_TRUE(ParseHttpUrl(bad).status().IsInvalidArgument()) << bad;
  }
}

TEST(ErrorsTest, EveryStatusCodeMapsToOneHttpStatus) {
  const std::pair<Status, int> cases[] = {
      {Status::NotFound("x"), 404},         {Status::InvalidArgument("x"), 400}, {Status::NotSupported("x"), 400},
      {Status::ResourceExhausted("x"), 503}, {Status::Busy("x"), 503},           {Status::Corruption("x"), 500},
      {Status::IOError("x"), 500},
  };
  for (const auto& [status, http] : cases) {
    ApiResponse r = ResponseForStatus(status);
    EXPECT_EQ(r.status, http) << status.ToString();
    auto doc = ParseJson(r.body);
    ASSERT_TRUE(doc.ok());
    EXPECT_EQ(doc->Find("error")->Find("message")->string_value(), "x");
  }
  EXPECT_EQ(ResponseForStatus(Status::Ok()).status, 500);
}

TEST(FairQueueTest, RoundRobinAcrossClientsFifoWithin) {
  FairQueue<int> q;
  q.Push("a", 1);
  q.Push("a", 2);
  q.Push("a", 3);
  q.Push("b", 10);
  q.Push("c", 20);
  q.Push("b", 11);
  EXPECT_EQ(q.size(), 6u);
  EXPECT_EQ(q.size_of("a"), 3u);
  std::vector<int> order;
  while (auto v = q.Pop()) order.push_back(*v);
  EXPECT_EQ(order, (std::vector<int>{1, 10, 20, 2, 11, 3}));
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.Pop().has_value());
}

TEST(BlobTest, RoundTripAndEveryDamageIsCaught) {
  ModelInfo model;
  model.name = "m";
  model.arch = "qwen3_moe";
  model.num_layers = 4;
  model.experts_per_layer = 8;
  model.source_fingerprint = "f00d";
  std::vector<std::byte> payload(3000);
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::byte>(i * 7);
  ExpertInfo e;
  e.layer = 2;
  e.expert = 5;
  e.extent.checksum = Xxh3(payload);
  e.projections = {{"gate", "g", DType::kBF16, {10, 50}, 0, 1000},
                   {"up", "u", DType::kBF16, {10, 50}, 1000, 1000},
                   {"down", "d", DType::kBF16, {50, 10}, 2000, 1000}};
  std::string bytes = EncodeExpertBlob(model, e, payload);
  auto blob = DecodeExpertBlob(bytes);
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  EXPECT_EQ(blob->payload, payload);
  EXPECT_EQ(blob->model.source_fingerprint, "f00d");
  EXPECT_EQ(blob->projections[2].shape, (std::vector<uint64_t>{50, 10}));
  // Misaligned input is copied, not misread.
  std::string shifted = "x" + bytes;
  EXPECT_TRUE(DecodeExpertBlob(std::string_view(shifted).substr(1)).ok());
  // Every single-byte flip is either caught or harmless to what a receiver stores: a decoded blob always has
  // a payload that hashes to its checksum and projections inside it.
  for (size_t i = 0; i < bytes.size(); i += 7) {
    std::string damaged = bytes;
    damaged[i] ^= 0x41;
    auto d = DecodeExpertBlob(damaged);
    if (!d.ok()) {
      EXPECT_TRUE(d.status().IsCorruption());
      continue;
    }
    EXPECT_EQ(Xxh3(d->payload), d->checksum);
    for (const auto& p : d->projections) EXPECT_LE(p.offset + p.length, d->payload.size());
  }
  EXPECT_FALSE(DecodeExpertBlob("").ok());
  EXPECT_FALSE(DecodeExpertBlob(bytes.substr(0, bytes.size() / 2)).ok());
  // A projection outside the payload.
  e.projections[2].length = 5000;
  EXPECT_TRUE(DecodeExpertBlob(EncodeExpertBlob(model, e, payload)).status().IsCorruption());
}

}  // namespace
}  // namespace es::api
