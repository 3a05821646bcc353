// HttpServer: the HTTP/1.1 transport of the API (Boost.Beast on Boost.Asio, one C++20 coroutine per
// connection). It enforces the limits (header and body size, request and idle timeouts, write timeout,
// connection cap, request rate per connection), hands each request to the pure HandleRequest, queues
// completions with the generation service and streams them as server-sent events, and drains on Shutdown.
// No Boost type appears here. Thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "api/routes.h"
#include "store/base/status.h"

namespace es::api {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;          // 0: any free port (see HttpServer::port)
  uint32_t io_threads = 0;       // threads serving connections; 0: min(hardware threads, kDefaultIoThreads)
  size_t max_header_bytes = 16 << 10;
  size_t max_body_bytes = 1 << 20;
  // From a request's first byte to its last: a client that trickles its headers is cut off after this.
  std::chrono::milliseconds request_timeout{10'000};
  // A keep-alive connection with no request in progress is closed after this.
  std::chrono::milliseconds idle_timeout{30'000};
  // Each write (a whole response, or one streamed chunk) must finish within this.
  std::chrono::milliseconds write_timeout{30'000};
  size_t max_connections = 512;
  // Per connection: a token bucket refilled at this rate, holding at most `request_burst` requests. 0: no limit.
  double requests_per_second = 1000;
  double request_burst = 2000;
  // Shutdown waits this long for in-flight requests (generation included) before cutting them off.
  std::chrono::milliseconds drain_timeout{30'000};
};

inline constexpr uint32_t kDefaultIoThreads = 4;

class HttpServer {
 public:
  // Binds, listens and starts the I/O threads. `context` (and what it points to) must outlive the server.
  // IOError when the address cannot be bound.
  static Result<std::unique_ptr<HttpServer>> Start(const ApiContext& context, const ServerOptions& options);
  // Shuts down (if not yet) and joins the threads.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port (the one chosen by the system when options.port was 0).
  uint16_t port() const;

  // Graceful stop: no new connections; idle connections close; requests in progress (queued and running
  // generations included) finish and are answered with `Connection: close`; new completions are refused.
  // After drain_timeout, generation is cancelled and remaining connections are cut. Blocks until every thread
  // has stopped. Idempotent; callable from any thread but not from a handler.
  void Shutdown();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace es::api
