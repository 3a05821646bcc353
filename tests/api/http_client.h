// A deliberately plain HTTP/1.1 client over POSIX sockets for the API tests: it can send anything (malformed
// requests, partial headers, oversized bodies), read responses with Content-Length or chunked bodies, read a
// server-sent-event stream chunk by chunk, and drop the connection abruptly. Independent of Beast, so that the
// tests do not share the server's parser. Every read has a receive timeout, so a hung server fails a test
// instead of hanging it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace es::testing {

struct HttpReply {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;                            // de-chunked
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

class TestConnection {
 public:
  // Connects to 127.0.0.1:port; null when the connection is refused.
  static std::unique_ptr<TestConnection> Connect(uint16_t port, int receive_timeout_ms = 30000);
  ~TestConnection();

  bool Send(std::string_view data);
  // Sends a request with Content-Length (when body is non-empty or the method is POST).
  bool SendRequest(std::string_view method, std::string_view target, std::string_view body = {},
                   const std::vector<std::string>& extra_headers = {});
  // Reads one whole response; nullopt on EOF, timeout or malformed framing.
  std::optional<HttpReply> ReadReply();
  // For a chunked response: the status line and headers (then ReadChunk for each chunk).
  std::optional<HttpReply> ReadHead();
  // The next chunk's data; nullopt at the last chunk, EOF or timeout.
  std::optional<std::string> ReadChunk();
  // True when the server closes the connection (EOF or reset) before the receive timeout, discarding any data.
  bool WaitForClose();
  // Closes with a TCP reset (SO_LINGER 0): an abrupt disconnect.
  void Abort();
  void Close();

 private:
  explicit TestConnection(int fd) : fd_(fd) {}
  // Ensures the buffer holds at least n bytes / a line; false on EOF or timeout.
  bool Fill(size_t n);
  std::optional<std::string> ReadLine();
  int fd_;
  std::string buffer_;
};

// One request on a fresh connection (Connection: close).
std::optional<HttpReply> Fetch(uint16_t port, std::string_view method, std::string_view target,
                               std::string_view body = {}, const std::vector<std::string>& extra_headers = {});

// The JSON payloads of an SSE body ("data: ...\n\n" events), in order, including "[DONE]".
std::vector<std::string> SseData(std::string_view body);

}  // namespace es::testing
