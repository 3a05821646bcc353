// The Beast transport: an accept loop and one coroutine per connection (read a request under the limits, hand
// it to HandleRequest, write the answer, repeat while keep-alive), generation through a sink that wakes the
// connection's coroutine, and the graceful drain. Every asynchronous operation completes with an error code
// (as_tuple), never an exception; a connection's coroutine runs on its own strand.
#include "api/server.h"

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "api/errors.h"
#include "api/openai.h"
#include "store/base/thread_pool.h"

namespace es::api {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kUse = asio::as_tuple(asio::use_awaitable);
// Beast's encoding of HTTP/1.1 in a message's version field.
constexpr unsigned kHttp11 = 11;
constexpr std::string_view kServerName = "expertstore/" ES_PROJECT_VERSION;
// Bytes asked of the socket when waiting for the start of a request.
constexpr size_t kReadChunk = 16 << 10;
// Closing after an error answer (413 for a body too large, say), as nginx's lingering close does: read and drop
// what the client still sends until it pauses this long, for this long at most in all (or this many bytes), so
// that a client still uploading is not reset before it reads the answer (a reset makes it report a broken pipe).
constexpr std::chrono::milliseconds kLingerIdle{2000};
constexpr std::chrono::milliseconds kLingerTotal{30000};
constexpr size_t kLingerMaxBytes = size_t{1} << 30;
constexpr size_t kLingerChunk = 64 << 10;
// Connections past the cap get a 503 from a short-lived coroutine; past this many of those, they are closed.
constexpr size_t kMaxRejecting = 64;
// After the drain deadline, how long remaining connections get to notice their sockets were closed.
constexpr std::chrono::milliseconds kForcedCloseGrace{2000};
// The back-off after a failed accept (out of file descriptors, say).
constexpr std::chrono::milliseconds kAcceptRetry{50};
// The metrics route label of a request that never reached the router.
constexpr std::string_view kRouteInvalid = "invalid";
constexpr std::string_view kRouteRateLimited = "rate_limited";
constexpr std::string_view kRouteOverCapacity = "over_capacity";

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

// Requests allowed per connection: refilled continuously, capped at the burst.
class TokenBucket {
 public:
  TokenBucket(double rate, double burst) : rate_(rate), burst_(burst), tokens_(burst), last_(Clock::now()) {}
  bool Take() {
    if (rate_ <= 0) return true;
    Clock::time_point now = Clock::now();
    tokens_ = std::min(burst_, tokens_ + rate_ * std::chrono::duration<double>(now - last_).count());
    last_ = now;
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
  }

 private:
  double rate_, burst_, tokens_;
  Clock::time_point last_;
};

struct Conn {
  explicit Conn(tcp::socket socket) : stream(std::move(socket)) {}
  beast::tcp_stream stream;
  std::string peer;               // remote address: the generation queue's fairness key
  std::atomic<bool> idle{true};   // waiting for a request (a drain may close it)
};

// What the generation worker produced for one request, in order.
struct SinkEvent {
  TextDelta delta;
  std::optional<Result<CompletionOutcome>> finish;
};

// The bridge from the generation worker to a connection's coroutine: events are queued under a lock, and each
// push posts a wake-up (cancelling the timer the coroutine waits on) to the connection's strand. The coroutine
// checks the queue and starts its wait within one strand turn, so no wake-up is lost.
class Sink final : public GenerationSink, public std::enable_shared_from_this<Sink> {
 public:
  explicit Sink(asio::any_io_executor executor) : executor_(executor), timer_(executor) {}
  bool Cancelled() const override { return cancelled_.load(); }
  void Cancel() { cancelled_ = true; }
  void OnText(TextDelta delta) override { Push({std::move(delta), std::nullopt}); }
  void OnFinish(Result<CompletionOutcome> outcome) override { Push({TextDelta{}, std::move(outcome)}); }
  std::deque<SinkEvent> Take() {
    std::lock_guard lock(mu_);
    return std::exchange(events_, {});
  }
  asio::steady_timer& timer() { return timer_; }

 private:
  void Push(SinkEvent event) {
    {
      std::lock_guard lock(mu_);
      events_.push_back(std::move(event));
    }
    asio::post(executor_, [self = shared_from_this()] { self->timer_.cancel(); });
  }

  asio::any_io_executor executor_;
  asio::steady_timer timer_;  // used on the strand only
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::deque<SinkEvent> events_;
};

void ReportFailure(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "expertstore serve: a connection handler failed: %s\n", ex.what());
  } catch (...) {
    std::fprintf(stderr, "expertstore serve: a connection handler failed\n");
  }
}

}  // namespace

struct HttpServer::Impl {
  Impl(const ApiContext& c, const ServerOptions& o)
      : ctx(c), opts(o), ioc(static_cast<int>(IoThreads(o))), acceptor(asio::make_strand(ioc)) {
    std::random_device rd;
    id_base = (static_cast<uint64_t>(rd()) << 32) | rd();
  }

  static uint32_t IoThreads(const ServerOptions& o) {
    if (o.io_threads > 0) return o.io_threads;
    return std::max(1u, std::min(std::thread::hardware_concurrency(), kDefaultIoThreads));
  }

  Status Listen();
  asio::awaitable<void> AcceptLoop();
  asio::awaitable<void> Session(std::shared_ptr<Conn> conn);
  asio::awaitable<void> Reject(std::shared_ptr<Conn> conn);
  asio::awaitable<bool> Write(Conn& conn, ApiResponse response, unsigned version, bool keep_alive);
  asio::awaitable<bool> WriteData(Conn& conn, std::string_view data, bool chunked);
  asio::awaitable<bool> Generate(std::shared_ptr<Conn> conn, CompletionRequest request, std::string route,
                                 unsigned version, bool& keep_alive, Clock::time_point start);
  asio::awaitable<void> Linger(Conn& conn);
  void Record(std::string_view route, int status, Clock::time_point start) {
    if (ctx.metrics != nullptr) ctx.metrics->RecordRequest(route, status, Seconds(start));
  }
  std::string NewId(bool chat) {
    char buf[40];
    uint64_t n = id_base ^ (next_id.fetch_add(1) * 0x9E3779B97F4A7C15ull);
    std::snprintf(buf, sizeof(buf), "%s-%016llx", chat ? "chatcmpl" : "cmpl", static_cast<unsigned long long>(n));
    return buf;
  }
  void EndSession(uint64_t id) {
    {
      std::lock_guard lock(mu);
      conns.erase(id);
    }
    if (ctx.metrics != nullptr) ctx.metrics->ConnectionClosed();
    cv.notify_all();
  }
  void DoShutdown();

  ApiContext ctx;
  ServerOptions opts;
  asio::io_context ioc;
  tcp::acceptor acceptor;
  uint16_t port = 0;
  std::vector<std::thread> threads;
  std::atomic<bool> draining{false};
  std::once_flag shutdown_once;
  uint64_t id_base = 0;
  std::atomic<uint64_t> next_id{0};

  std::mutex mu;
  std::condition_variable cv;  // a connection ended
  std::map<uint64_t, std::weak_ptr<Conn>> conns;
  uint64_t next_conn = 0;
  size_t rejecting = 0;
};

Status HttpServer::Impl::Listen() {
  beast::error_code ec;
  asio::ip::address address = asio::ip::make_address(opts.host, ec);
  if (ec) {
    tcp::resolver resolver(ioc);
    auto results = resolver.resolve(opts.host, std::to_string(opts.port), ec);
    if (ec || results.empty()) return Status::InvalidArgument("cannot resolve host '" + opts.host + "': " + ec.message());
    address = results.begin()->endpoint().address();
  }
  tcp::endpoint endpoint(address, opts.port);
  std::string where = opts.host + ":" + std::to_string(opts.port);
  if (acceptor.open(endpoint.protocol(), ec); ec) return Status::IOError("cannot open a socket for " + where + ": " + ec.message());
  if (acceptor.set_option(asio::socket_base::reuse_address(true), ec); ec) {
    return Status::IOError("cannot set SO_REUSEADDR: " + ec.message());
  }
  if (acceptor.bind(endpoint, ec); ec) return Status::IOError("cannot bind " + where + ": " + ec.message());
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) {
    return Status::IOError("cannot listen on " + where + ": " + ec.message());
  }
  tcp::endpoint local = acceptor.local_endpoint(ec);
  if (ec) return Status::IOError("cannot read the bound address: " + ec.message());
  port = local.port();
  return Status::Ok();
}

asio::awaitable<void> HttpServer::Impl::AcceptLoop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(ioc), kUse);
    if (ec) {
      if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
      asio::steady_timer backoff(acceptor.get_executor(), kAcceptRetry);
      co_await backoff.async_wait(kUse);
      continue;
    }
    if (draining) {
      beast::error_code ignored;
      socket.close(ignored);
      continue;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    auto conn = std::make_shared<Conn>(std::move(socket));
    tcp::endpoint peer = conn->stream.socket().remote_endpoint(ignored);
    conn->peer = ignored ? std::string("unknown") : peer.address().to_string();
    bool admit = false, reject = false;
    uint64_t id = 0;
    {
      std::lock_guard lock(mu);
      if (conns.size() < opts.max_connections) {
        admit = true;
        id = next_conn++;
        conns.emplace(id, conn);
      } else if (rejecting < kMaxRejecting) {
        reject = true;
        ++rejecting;
      }
    }
    if (admit) {
      if (ctx.metrics != nullptr) ctx.metrics->ConnectionOpened();
      asio::co_spawn(conn->stream.get_executor(),
                     [this, conn, id]() -> asio::awaitable<void> {
                       co_await Session(conn);
                       EndSession(id);
                     },
                     ReportFailure);
      continue;
    }
    if (ctx.metrics != nullptr) ctx.metrics->ConnectionRejected();
    if (reject) {
      asio::co_spawn(conn->stream.get_executor(), Reject(conn), ReportFailure);
    } else {
      conn->stream.socket().close(ignored);
    }
  }
}

asio::awaitable<void> HttpServer::Impl::Reject(std::shared_ptr<Conn> conn) {
  Clock::time_point start = Clock::now();
  ApiResponse r = ProtocolError(kHttpServiceUnavailable, "the server is at its connection limit; retry later");
  int status = r.status;
  co_await Write(*conn, std::move(r), kHttp11, /*keep_alive=*/false);
  Record(kRouteOverCapacity, status, start);
  co_await Linger(*conn);
  {
    std::lock_guard lock(mu);
    --rejecting;
  }
  cv.notify_all();
}

asio::awaitable<void> HttpServer::Impl::Linger(Conn& conn) {
  beast::error_code ec;
  conn.stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  const Clock::time_point deadline = Clock::now() + kLingerTotal;
  std::vector<char> buf(kLingerChunk);
  size_t total = 0;
  while (!ec && total < kLingerMaxBytes && Clock::now() < deadline) {
    conn.stream.expires_after(std::min<Clock::duration>(kLingerIdle, deadline - Clock::now()));
    auto [read_ec, n] = co_await conn.stream.async_read_some(asio::buffer(buf), kUse);
    ec = read_ec;
    total += n;
  }
  conn.stream.socket().close(ec);
}

asio::awaitable<bool> HttpServer::Impl::Write(Conn& conn, ApiResponse r, unsigned version, bool keep_alive) {
  http::response<http::string_body> res{static_cast<http::status>(r.status), version};
  res.set(http::field::server, kServerName);
  res.set(http::field::content_type, r.content_type);
  for (const auto& [name, value] : r.headers) res.set(name, value);
  res.keep_alive(keep_alive);
  res.body() = std::move(r.body);
  res.prepare_payload();
  conn.stream.expires_after(opts.write_timeout);
  auto [ec, n] = co_await http::async_write(conn.stream, res, kUse);
  co_return !ec;
}

asio::awaitable<bool> HttpServer::Impl::WriteData(Conn& conn, std::string_view data, bool chunked) {
  conn.stream.expires_after(opts.write_timeout);
  if (chunked) {
    auto [ec, n] = co_await asio::async_write(conn.stream, http::make_chunk(asio::buffer(data)), kUse);
    co_return !ec;
  }
  auto [ec, n] = co_await asio::async_write(conn.stream, asio::buffer(data), kUse);
  co_return !ec;
}

namespace {

// The size of a request's header as it came on the wire (request line, fields, their separators).
std::size_t HeaderBytes(const http::request<http::string_body>& msg) {
  constexpr std::size_t kLineOverhead = 4;  // ": " and CRLF, or the request line's spaces and CRLF
  std::size_t bytes = msg.method_string().size() + msg.target().size() + sizeof("HTTP/1.1") + kLineOverhead;
  for (const auto& field : msg) bytes += field.name_string().size() + field.value().size() + kLineOverhead;
  return bytes;
}

}  // namespace

asio::awaitable<void> HttpServer::Impl::Session(std::shared_ptr<Conn> conn) {
  beast::tcp_stream& stream = conn->stream;
  beast::flat_buffer buffer;
  TokenBucket bucket(opts.requests_per_second, opts.request_burst);
  bool lingering_close = false;
  for (;;) {
    // Between requests: the idle timeout, and a drain may cancel the wait.
    if (buffer.size() == 0) {
      conn->idle = true;
      if (draining) break;
      stream.expires_after(opts.idle_timeout);
      auto [ec, n] = co_await stream.async_read_some(buffer.prepare(kReadChunk), kUse);
      if (ec) break;
      buffer.commit(n);
    }
    conn->idle = false;
    // The request, headers and body, must arrive within one request timeout from its first byte.
    Clock::time_point start = Clock::now();
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(opts.max_header_bytes));
    parser.body_limit(opts.max_body_bytes);
    stream.expires_after(opts.request_timeout);
    // The header is read piece by piece so that its whole size is bounded: Beast's header_limit applies to what
    // one parse call sees, and a client sending many short lines passes it line by line.
    beast::error_code ec;
    std::size_t n = 0;
    while (!ec && !parser.is_header_done()) {
      std::tie(ec, n) = co_await http::async_read_some(stream, buffer, parser, kUse);
      if (!ec && HeaderBytes(parser.get()) > opts.max_header_bytes) ec = http::error::header_limit;
    }
    if (!ec && !parser.is_done()) {
      if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        auto [wec, wn] = co_await asio::async_write(stream, asio::buffer(kContinue), kUse);
        ec = wec;
      }
      if (!ec) std::tie(ec, n) = co_await http::async_read(stream, buffer, parser, kUse);
    }
    if (ec) {
      int status = 0;
      std::string why;
      if (ec == http::error::header_limit) {
        status = kHttpHeadersTooLarge;
        why = "the request headers exceed " + std::to_string(opts.max_header_bytes) + " bytes";
      } else if (ec == http::error::body_limit) {
        status = kHttpPayloadTooLarge;
        why = "the request body exceeds " + std::to_string(opts.max_body_bytes) + " bytes";
      } else if (ec == beast::error::timeout) {
        // The stream closed the socket when its timer fired: nothing can be answered (nginx does the same).
        Record(kRouteInvalid, kHttpRequestTimeout, start);
        break;
      } else if (ec.category() == http::make_error_code(http::error::bad_target).category() && ec != http::error::end_of_stream &&
                 ec != http::error::partial_message) {
        status = kHttpBadRequest;
        why = "malformed HTTP request: " + ec.message();
      }
      if (status != 0) {
        co_await Write(*conn, ProtocolError(status, why), kHttp11, /*keep_alive=*/false);
        Record(kRouteInvalid, status, start);
        lingering_close = true;
      }
      break;
    }

    http::request<http::string_body>& msg = parser.get();
    const unsigned version = msg.version();
    bool keep_alive = msg.keep_alive() && !draining;
    Reply reply;
    if (!bucket.Take()) {
      reply.response = ProtocolError(kHttpTooManyRequests, "too many requests on this connection; slow down");
      reply.response.route = std::string(kRouteRateLimited);
    } else {
      ApiRequest req;
      req.method = std::string(msg.method_string());
      req.target = std::string(msg.target());
      req.content_type = std::string(msg[http::field::content_type]);
      req.body = std::move(msg.body());
      req.client = conn->peer;
      reply = HandleRequest(ctx, req);
    }
    bool ok = false;
    if (reply.generation) {
      ok = co_await Generate(conn, std::move(*reply.generation), reply.response.route, version, keep_alive, start);
    } else {
      int status = reply.response.status;
      std::string route = std::move(reply.response.route);
      ok = co_await Write(*conn, std::move(reply.response), version, keep_alive && !draining);
      Record(route, status, start);
    }
    if (!ok || !keep_alive || draining) break;
  }
  if (lingering_close) {
    co_await Linger(*conn);
  } else {
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.socket().close(ignored);
  }
}

asio::awaitable<bool> HttpServer::Impl::Generate(std::shared_ptr<Conn> conn, CompletionRequest request,
                                                 std::string route, unsigned version, bool& keep_alive,
                                                 Clock::time_point start) {
  auto sink = std::make_shared<Sink>(conn->stream.get_executor());
  // What formatting needs; the prompt goes to the worker.
  CompletionRequest shape;
  shape.chat = request.chat;
  shape.model = request.model;
  shape.n = request.n;
  shape.logprobs = request.logprobs;
  const bool streaming = request.stream;
  const bool include_usage = request.include_usage;
  GenerationJob job{std::move(request), conn->peer, sink};
  if (Status s = ctx.generation->Submit(std::move(job)); !s.ok()) {
    ApiResponse r = ResponseForStatus(s);
    int status = r.status;
    bool ok = co_await Write(*conn, std::move(r), version, keep_alive && !draining);
    Record(route, status, start);
    co_return ok;
  }
  const std::string id = NewId(shape.chat);
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  // Streams to HTTP/1.0 clients are not chunked: the end of the connection ends them.
  const bool chunked = version >= kHttp11;
  if (streaming && !chunked) keep_alive = false;
  bool headers_sent = false;
  int status = kHttpOk;
  bool ok = true;
  bool finished = false;
  while (!finished) {
    std::deque<SinkEvent> events = sink->Take();
    if (events.empty()) {
      sink->timer().expires_at(Clock::time_point::max());
      co_await sink->timer().async_wait(kUse);
      continue;
    }
    std::string data;
    for (SinkEvent& ev : events) {
      if (!ev.finish) {
        if (streaming) data += SseEvent(FormatChunk(shape, id, created, ev.delta, std::nullopt));
        continue;
      }
      finished = true;
      Result<CompletionOutcome>& outcome = *ev.finish;
      if (!streaming || (!headers_sent && data.empty() && !outcome.ok())) {
        // A whole answer: the completion, or an error with its own status (nothing was streamed yet).
        ApiResponse r;
        if (outcome.ok()) {
          r.body = FormatCompletion(shape, id, created, *outcome);
        } else {
          r = ResponseForStatus(outcome.status());
        }
        status = r.status;
        ok = co_await Write(*conn, std::move(r), version, keep_alive && !draining);
        Record(route, status, start);
        co_return ok;
      }
      if (outcome.ok()) {
        for (size_t i = 0; i < outcome->choices.size(); ++i) {
          data += SseEvent(FormatChunk(shape, id, created, TextDelta{i, {}, {}}, outcome->choices[i].finish_reason));
        }
        if (include_usage) data += SseEvent(FormatUsageChunk(shape, id, created, *outcome));
      } else {
        // Mid-stream failure: OpenAI clients raise on an event carrying "error".
        data += SseEvent(ResponseForStatus(outcome.status()).body);
      }
      data += kSseDone;
    }
    if (!streaming) continue;  // a whole answer waits for the outcome
    if (!headers_sent) {
      http::response<http::empty_body> res{http::status::ok, version};
      res.set(http::field::server, kServerName);
      res.set(http::field::content_type, kSseContentType);
      res.set(http::field::cache_control, "no-cache");
      if (chunked) res.chunked(true);
      res.keep_alive(keep_alive && !draining);
      http::response_serializer<http::empty_body> sr{res};
      conn->stream.expires_after(opts.write_timeout);
      auto [ec, n] = co_await http::async_write_header(conn->stream, sr, kUse);
      headers_sent = true;
      ok = !ec;
      if (ok && shape.chat) {
        std::string roles;
        for (size_t i = 0; i < shape.n; ++i) {
          roles += SseEvent(FormatChunk(shape, id, created, TextDelta{i, {}, {}}, std::nullopt, /*role_only=*/true));
        }
        data = roles + data;
      }
    }
    if (ok && !data.empty()) ok = co_await WriteData(*conn, data, chunked);
    if (ok && finished && chunked) {
      conn->stream.expires_after(opts.write_timeout);
      auto [ec, n] = co_await asio::async_write(conn->stream, http::make_chunk_last(), kUse);
      ok = !ec;
    }
    if (!ok) {
      // The client is gone or stopped reading: stop generating for it.
      sink->Cancel();
      break;
    }
  }
  Record(route, status, start);
  co_return ok;
}

void HttpServer::Impl::DoShutdown() {
  draining = true;
  asio::post(acceptor.get_executor(), [this] {
    beast::error_code ignored;
    acceptor.close(ignored);
  });
  // Idle connections close now; busy ones finish their request and then close.
  std::vector<std::shared_ptr<Conn>> live;
  {
    std::lock_guard lock(mu);
    for (auto& [id, weak] : conns) {
      if (auto c = weak.lock()) live.push_back(std::move(c));
    }
  }
  for (auto& c : live) {
    asio::post(c->stream.get_executor(), [c] {
      if (c->idle) c->stream.cancel();
    });
  }
  live.clear();
  Clock::time_point deadline = Clock::now() + opts.drain_timeout;
  if (ctx.generation != nullptr) ctx.generation->Drain(deadline);
  {
    std::unique_lock lock(mu);
    bool drained = cv.wait_until(lock, deadline + opts.write_timeout, [&] { return conns.empty() && rejecting == 0; });
    if (!drained) {
      for (auto& [id, weak] : conns) {
        if (auto c = weak.lock()) live.push_back(std::move(c));
      }
    }
  }
  for (auto& c : live) {
    asio::post(c->stream.get_executor(), [c] {
      beast::error_code ignored;
      c->stream.socket().close(ignored);
    });
  }
  if (!live.empty()) {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, kForcedCloseGrace, [&] { return conns.empty() && rejecting == 0; })) ioc.stop();
  }
  live.clear();
  for (auto& t : threads) t.join();
  threads.clear();
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Shutdown(); }

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const ApiContext& context, const ServerOptions& options) {
  if (context.store == nullptr) return Status::InvalidArgument("the HTTP server needs a store");
  auto impl = std::make_unique<Impl>(context, options);
  ES_RETURN_IF_ERROR(impl->Listen());
  Impl* p = impl.get();
  asio::co_spawn(p->acceptor.get_executor(), p->AcceptLoop(), ReportFailure);
  const uint32_t n = Impl::IoThreads(options);
  for (uint32_t i = 0; i < n; ++i) {
    auto thread = StartThread([p] {
      // A handler that throws (Beast or Asio out of memory) ends only itself; the thread keeps serving.
      for (;;) {
        try {
          p->ioc.run();
          return;
        } catch (const std::exception& e) {
          std::fprintf(stderr, "expertstore serve: an I/O handler failed: %s\n", e.what());
        }
      }
    }, "the HTTP server");
    if (!thread.ok()) {
      p->ioc.stop();
      for (auto& t : p->threads) t.join();
      return thread.status();
    }
    p->threads.push_back(std::move(thread).value());
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

uint16_t HttpServer::port() const { return impl_->port; }

void HttpServer::Shutdown() {
  std::call_once(impl_->shutdown_once, [this] { impl_->DoShutdown(); });
}

}  // namespace es::api
