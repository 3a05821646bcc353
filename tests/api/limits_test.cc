// The server under bad clients and load: oversized bodies and headers, malformed HTTP, clients that trickle or
// stall, idle keep-alive connections, the connection cap, the per-connection rate limit, clients that vanish
// mid-stream, metadata served while a generation runs, fair queueing, a full queue, and the graceful drain.
// After each misbehaviour the server must still answer a well-formed request.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "api/generation.h"
#include "store/base/json.h"
#include "tests/api/api_test_util.h"
#include "tests/api/http_client.h"

namespace es {
namespace {

using testing::Eventually;
using testing::Fetch;
using testing::SharedStore;
using testing::TestConnection;

// The "still serving" check after each misbehaviour.
void ExpectHealthy(uint16_t port) {
  auto r = Fetch(port, "GET", "/healthz");
  ASSERT_TRUE(r.has_value()) << "the server stopped answering";
  EXPECT_EQ(r->status, 200);
}

double MetricValue(uint16_t port, const std::string& sample) {
  auto m = Fetch(port, "GET", "/metrics");
  if (!m) return -1;
  size_t pos = 0;
  while ((pos = m->body.find(sample + " ", pos)) != std::string::npos) {
    if (pos == 0 || m->body[pos - 1] == '\n') return std::stod(m->body.substr(pos + sample.size() + 1));
    pos += sample.size();
  }
  return -1;
}

TEST(HttpLimitsTest, OversizedBodiesAndHeadersAreRefused) {
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  const uint16_t port = server->port();
  {
    // Declared too large: refused from the headers alone, before the body is read.
    auto c = TestConnection::Connect(port);
    ASSERT_TRUE(c->Send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n{\"model\":"));
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
    EXPECT_NE(r->body.find("\"error\""), std::string::npos);
    EXPECT_TRUE(c->WaitForClose());
  }
  {
    // Actually sent, in full: still 413, and the client is not reset before reading the answer.
    std::string body(200 << 10, 'x');
    auto r = Fetch(port, "POST", "/v1/completions", body);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
  }
  {
    // A client that sends its whole oversized body before reading (as Python's urllib does) still gets the 413:
    // the server drains what follows its answer instead of resetting the connection.
    constexpr size_t kUpload = 64 << 20;
    auto c = TestConnection::Connect(port);
    ASSERT_TRUE(c->Send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(kUpload) +
                        "\r\n\r\n"));
    const std::string piece(1 << 20, 'x');
    for (size_t sent = 0; sent < kUpload; sent += piece.size()) ASSERT_TRUE(c->Send(piece)) << "reset after " << sent;
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
  }
  {
    // Chunked, growing past the limit.
    auto c = TestConnection::Connect(port);
    ASSERT_TRUE(c->Send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"));
    std::string chunk(8192, 'a');
    char size[16];
    std::snprintf(size, sizeof(size), "%zx\r\n", chunk.size());
    for (int i = 0; i < 12; ++i) {
      if (!c->Send(size + chunk + "\r\n")) break;
    }
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
  }
  {
    auto c = TestConnection::Connect(port);
    ASSERT_TRUE(c->Send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(8192, 'h') + "\r\n\r\n"));
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 431);
  }
  {
    // The limit is on the whole header, not on one line: many short lines past it are refused too.
    std::string lines;
    for (int i = 0; lines.size() < 2 * 8192; ++i) lines += "X-Filler-" + std::to_string(i) + ": " + std::string(90, 'a') + "\r\n";
    auto c = TestConnection::Connect(port);
    ASSERT_TRUE(c->Send("GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + "\r\n"));
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 431);
  }
  ExpectHealthy(port);
  // Counted once the answer is written, which may be just after the client read it.
  EXPECT_TRUE(Eventually(
      [&] { return MetricValue(port, R"(expertstore_http_requests_total{route="invalid",code="413"})") >= 3; }));
}

TEST(HttpLimitsTest, MalformedHttpGets400) {
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  const std::vector<std::string> garbage = {
      "GARBAGE\r\n\r\n",
      "GET /healthz HTTP/7.1\r\n\r\n",
      "GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
      "POST /v1/completions HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
      "POST /v1/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
      "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      std::string("GET /\x01\x02 HTTP/1.1\r\n\r\n"),
  };
  for (const std::string& g : garbage) {
    SCOPED_TRACE(g);
    auto c = TestConnection::Connect(server->port());
    ASSERT_TRUE(c->Send(g));
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400);
    EXPECT_TRUE(c->WaitForClose());
  }
  // A request target that is not a path.
  auto r = Fetch(server->port(), "GET", "http://example.com/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  ExpectHealthy(server->port());
}

TEST(HttpLimitsTest, SlowClientsAreCutOffWhileOthersAreServed) {
  api::ServerOptions o = testing::TestServerOptions();
  o.request_timeout = std::chrono::milliseconds(300);
  auto server = testing::StartServer(SharedStore(), o);
  ASSERT_TRUE(server);
  // Headers that never finish.
  auto stalled = TestConnection::Connect(server->port());
  ASSERT_TRUE(stalled->Send("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow:"));
  // Headers trickled a byte at a time: the timeout runs from the first byte, so trickling does not extend it.
  auto trickler = TestConnection::Connect(server->port());
  ASSERT_TRUE(trickler->Send("GET /healthz HTTP/1.1\r\n"));
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    std::string header = "X-Trickle: " + std::string(4000, 't');
    for (size_t i = 0; i < header.size() && !stop; ++i) {
      if (!trickler->Send(header.substr(i, 1))) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  // The others are served meanwhile.
  ExpectHealthy(server->port());
  // Cut off without an answer: the timer that fires closes the socket (as nginx's header timeout does).
  bool stalled_closed = stalled->WaitForClose();
  bool trickler_closed = trickler->WaitForClose();
  stop = true;
  trickle.join();
  EXPECT_TRUE(stalled_closed);
  EXPECT_TRUE(trickler_closed);
  // A client that sends its headers and then only part of its body.
  auto partial = TestConnection::Connect(server->port());
  ASSERT_TRUE(partial->Send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mod"));
  EXPECT_TRUE(partial->WaitForClose());
  EXPECT_TRUE(Eventually([&] {
    return MetricValue(server->port(), R"(expertstore_http_requests_total{route="invalid",code="408"})") >= 3;
  }));
  ExpectHealthy(server->port());
}

TEST(HttpLimitsTest, IdleKeepAliveConnectionsAreClosed) {
  api::ServerOptions o = testing::TestServerOptions();
  o.idle_timeout = std::chrono::milliseconds(200);
  auto server = testing::StartServer(SharedStore(), o);
  ASSERT_TRUE(server);
  auto c = TestConnection::Connect(server->port());
  ASSERT_TRUE(c->SendRequest("GET", "/healthz"));
  auto r = c->ReadReply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(c->WaitForClose());
  // A connection that never sends anything is closed too.
  auto silent = TestConnection::Connect(server->port());
  EXPECT_TRUE(silent->WaitForClose());
  ExpectHealthy(server->port());
}

TEST(HttpLimitsTest, ConnectionCapAnswers503AndRecovers) {
  api::ServerOptions o = testing::TestServerOptions();
  o.max_connections = 2;
  auto server = testing::StartServer(SharedStore(), o);
  ASSERT_TRUE(server);
  auto a = TestConnection::Connect(server->port());
  auto b = TestConnection::Connect(server->port());
  ASSERT_TRUE(a && b);
  // Both admitted (each answers), so the cap is reached.
  for (auto* c : {a.get(), b.get()}) {
    ASSERT_TRUE(c->SendRequest("GET", "/healthz"));
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  auto over = Fetch(server->port(), "GET", "/healthz");
  ASSERT_TRUE(over);
  EXPECT_EQ(over->status, 503);
  EXPECT_EQ(over->header("retry-after"), "1");
  // A freed place is taken again (once the server has seen the close: polled).
  a->Close();
  EXPECT_TRUE(Eventually([&] {
    auto r = Fetch(server->port(), "GET", "/healthz");
    return r && r->status == 200;
  }));
  EXPECT_TRUE(Eventually(
      [&] { return MetricValue(server->port(), "expertstore_http_connections_rejected_total") >= 1; }));
}

TEST(HttpLimitsTest, RequestRatePerConnection) {
  api::ServerOptions o = testing::TestServerOptions();
  o.requests_per_second = 0.5;
  o.request_burst = 3;
  auto server = testing::StartServer(SharedStore(), o);
  ASSERT_TRUE(server);
  auto c = TestConnection::Connect(server->port());
  std::string five;
  for (int i = 0; i < 5; ++i) five += "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(c->Send(five));
  std::vector<int> statuses;
  for (int i = 0; i < 5; ++i) {
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    statuses.push_back(r->status);
  }
  EXPECT_EQ(statuses, (std::vector<int>{200, 200, 200, 429, 429}));
  // Another connection has its own budget.
  ExpectHealthy(server->port());
}

TEST(HttpLimitsTest, Http10ClientsGetAnAnswerAndAClose) {
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  auto c = TestConnection::Connect(server->port());
  ASSERT_TRUE(c->Send("GET /v1/models/m HTTP/1.0\r\n\r\n"));
  auto r = c->ReadReply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(c->WaitForClose());
  // A streamed completion to an HTTP/1.0 client ends with the connection instead of a last chunk.
  auto s = TestConnection::Connect(server->port());
  std::string body = R"({"model":"tiny","prompt":"a","max_tokens":3,"stream":true})";
  ASSERT_TRUE(s->Send("POST /v1/completions HTTP/1.0\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body));
  auto sr = s->ReadReply();
  ASSERT_TRUE(sr);
  EXPECT_EQ(sr->status, 200);
  auto events = testing::SseData(sr->body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST(HttpLimitsTest, AbruptDisconnectMidStreamStopsTheGeneration) {
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  const uint16_t port = server->port();
  for (int round = 0; round < 2; ++round) {
    auto c = TestConnection::Connect(port);
    // Long enough (1000 tokens at ~100 tokens/s) that it cannot end before the disconnect is noticed.
    ASSERT_TRUE(c->SendRequest("POST", "/v1/completions",
                               R"({"model":"tiny","prompt":"def main(","max_tokens":1000,"temperature":0,"stream":true})"));
    auto head = c->ReadHead();
    ASSERT_TRUE(head);
    ASSERT_EQ(head->status, 200);
    auto first = c->ReadChunk();
    ASSERT_TRUE(first);
    EXPECT_EQ(first->rfind("data: {", 0), 0u);
    c->Abort();
    EXPECT_TRUE(Eventually([&] {
      return MetricValue(port, R"(expertstore_generation_cancelled_total{model="tiny"})") == round + 1;
    }));
  }
  EXPECT_LT(MetricValue(port, R"(expertstore_tokens_generated_total{model="tiny"})"), 2000);
  // The worker is free again: a new completion is answered.
  auto r = Fetch(port, "POST", "/v1/completions", R"({"model":"tiny","prompt":"x","max_tokens":2})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  // A client that vanishes right after sending its request (before any answer) is also survived.
  auto gone = TestConnection::Connect(port);
  ASSERT_TRUE(gone->SendRequest("POST", "/v1/completions", R"({"model":"tiny","prompt":"y","max_tokens":5})"));
  gone->Abort();
  auto after = Fetch(port, "POST", "/v1/completions", R"({"model":"tiny","prompt":"z","max_tokens":2})");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200);
}

// A sink the test controls: it blocks the worker inside OnText until released, and records the outcome.
class GateSink final : public api::GenerationSink {
 public:
  explicit GateSink(std::string name, std::vector<std::string>* order = nullptr, std::mutex* order_mu = nullptr)
      : name_(std::move(name)), order_(order), order_mu_(order_mu) {}
  bool Cancelled() const override { return false; }
  void OnText(api::TextDelta) override {
    std::unique_lock lock(mu_);
    started_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  void OnFinish(Result<api::CompletionOutcome> outcome) override {
    if (order_ != nullptr) {
      std::lock_guard lock(*order_mu_);
      order_->push_back(name_);
    }
    std::lock_guard lock(mu_);
    finished_ = true;
    ok_ = outcome.ok();
    cv_.notify_all();
  }
  void WaitStarted() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return started_ || finished_; });
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  bool WaitFinished() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return finished_; });
    return ok_;
  }

 private:
  std::string name_;
  std::vector<std::string>* order_;
  std::mutex* order_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false, open_ = false, finished_ = false, ok_ = false;
};

api::GenerationJob Job(const std::string& client, std::shared_ptr<api::GenerationSink> sink, uint32_t max_tokens = 4) {
  api::CompletionRequest req;
  req.model = "tiny";
  req.prompt = "def main(";
  req.max_tokens = max_tokens;
  req.sampler.temperature = 0;
  return {req, client, std::move(sink)};
}

TEST(HttpLimitsTest, MetadataAndBlobsAreServedWhileAGenerationRuns) {
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  auto gate = std::make_shared<GateSink>("gate");
  ASSERT_TRUE(server->generation->Submit(Job("other", gate)).ok());
  gate->WaitStarted();  // the worker is now inside a generation, blocked
  for (const char* target : {"/v1/models", "/v1/models/m/experts/0/1", "/v1/models/tiny/experts/2/2/blob",
                             "/v1/models/m/query?domain=python"}) {
    auto r = Fetch(server->port(), "GET", target);
    ASSERT_TRUE(r) << target;
    EXPECT_EQ(r->status, 200) << target;
  }
  EXPECT_EQ(MetricValue(server->port(), "expertstore_generation_running"), 1);
  // A completion over HTTP waits its turn, visibly queued.
  std::optional<testing::HttpReply> queued;
  std::thread client([&] {
    queued = Fetch(server->port(), "POST", "/v1/completions", R"({"model":"tiny","prompt":"q","max_tokens":2})");
  });
  EXPECT_TRUE(Eventually([&] { return MetricValue(server->port(), "expertstore_generation_queue_depth") == 1; }));
  gate->Open();
  EXPECT_TRUE(gate->WaitFinished());
  client.join();
  ASSERT_TRUE(queued);
  EXPECT_EQ(queued->status, 200) << queued->body;
}

TEST(HttpLimitsTest, GenerationQueueIsFairAcrossClientsAndBounded) {
  api::GenerationOptions g;
  g.max_queued = 4;
  g.max_queued_per_client = 3;
  auto server = testing::StartServer(SharedStore(), testing::TestServerOptions(), g);
  ASSERT_TRUE(server);
  std::vector<std::string> order;
  std::mutex order_mu;
  auto gate = std::make_shared<GateSink>("a1", &order, &order_mu);
  ASSERT_TRUE(server->generation->Submit(Job("a", gate)).ok());
  gate->WaitStarted();
  std::vector<std::shared_ptr<GateSink>> sinks;
  for (const char* name : {"a2", "a3", "a4", "b1"}) {
    auto s = std::make_shared<GateSink>(name, &order, &order_mu);
    s->Open();
    sinks.push_back(s);
    ASSERT_TRUE(server->generation->Submit(Job(std::string(1, name[0]), s)).ok()) << name;
  }
  // Client a has its three waiting; the queue holds four: both limits answer ResourceExhausted.
  auto a5 = std::make_shared<GateSink>("a5");
  EXPECT_TRUE(server->generation->Submit(Job("a", a5)).IsResourceExhausted());
  auto c1 = std::make_shared<GateSink>("c1");
  EXPECT_TRUE(server->generation->Submit(Job("c", c1)).IsResourceExhausted());
  // Over HTTP a full queue is a 503 with Retry-After.
  auto full = Fetch(server->port(), "POST", "/v1/completions", R"({"model":"tiny","prompt":"q","max_tokens":2})");
  ASSERT_TRUE(full);
  EXPECT_EQ(full->status, 503);
  EXPECT_EQ(full->header("retry-after"), "1");
  gate->Open();
  for (auto& s : sinks) EXPECT_TRUE(s->WaitFinished());
  // Round-robin: b's one request is not stuck behind all of a's.
  EXPECT_EQ(order, (std::vector<std::string>{"a1", "a2", "b1", "a3", "a4"}));
}

TEST(HttpLimitsTest, ShutdownDrainsStreamsInFlight) {
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  const uint16_t port = server->port();
  auto idle = TestConnection::Connect(port);
  ASSERT_TRUE(idle);
  auto c = TestConnection::Connect(port);
  ASSERT_TRUE(c->SendRequest("POST", "/v1/completions",
                             R"({"model":"tiny","prompt":"def main(","max_tokens":30,"temperature":0,"stream":true})"));
  auto head = c->ReadHead();
  ASSERT_TRUE(head);
  ASSERT_EQ(head->status, 200);
  EXPECT_EQ(head->header("connection"), "");  // keep-alive was granted before the drain
  auto first = c->ReadChunk();
  ASSERT_TRUE(first);
  std::thread stopper([&] { server->server->Shutdown(); });
  std::string rest = *first;
  while (auto chunk = c->ReadChunk()) rest += *chunk;
  auto events = testing::SseData(rest);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_TRUE(c->WaitForClose());
  EXPECT_TRUE(idle->WaitForClose());
  stopper.join();
  EXPECT_EQ(TestConnection::Connect(port), nullptr);  // no longer listening
  // A completion submitted after the drain is refused.
  auto late = std::make_shared<GateSink>("late");
  EXPECT_TRUE(server->generation->Submit(Job("a", late)).IsResourceExhausted());
}

}  // namespace
}  // namespace es
