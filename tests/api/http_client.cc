// The test HTTP client.
#include "tests/api/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

namespace es::testing {
namespace {

// recv and send, retried when a signal interrupts them. With SO_RCVTIMEO/SO_SNDTIMEO set, Linux does not restart
// them even under SA_RESTART, and a process that is paused and resumed (a VM or cgroup freezer) sees EINTR too.
ssize_t Recv(int fd, char* buf, size_t size) {
  for (;;) {
    ssize_t got = ::recv(fd, buf, size, 0);
    if (got >= 0 || errno != EINTR) return got;
  }
}

ssize_t SendSome(int fd, const char* data, size_t size) {
  for (;;) {
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n >= 0 || errno != EINTR) return n;
  }
}

}  // namespace

std::unique_ptr<TestConnection> TestConnection::Connect(uint16_t port, int receive_timeout_ms) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return nullptr;
  timeval tv{receive_timeout_ms / 1000, (receive_timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  if (rc != 0 && errno == EINTR) {
    // The connection goes on in the background; wait until it is writable, then read its outcome.
    pollfd p{fd, POLLOUT, 0};
    while (::poll(&p, 1, receive_timeout_ms) < 0 && errno == EINTR) {
    }
    int err = 0;
    socklen_t len = sizeof(err);
    rc = (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0 && (p.revents & POLLOUT) != 0) ? 0 : -1;
  }
  if (rc != 0) {
    ::close(fd);
    return nullptr;
  }
  return std::unique_ptr<TestConnection>(new TestConnection(fd));
}

TestConnection::~TestConnection() { Close(); }

void TestConnection::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void TestConnection::Abort() {
  if (fd_ < 0) return;
  linger l{1, 0};
  ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  Close();
}

bool TestConnection::Send(std::string_view data) {
  while (!data.empty()) {
    ssize_t n = SendSome(fd_, data.data(), data.size());
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool TestConnection::SendRequest(std::string_view method, std::string_view target, std::string_view body,
                                 const std::vector<std::string>& extra_headers) {
  std::string req = std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (const auto& h : extra_headers) req += h + "\r\n";
  if (!body.empty() || method == "POST") {
    req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n";
  req += body;
  return Send(req);
}

bool TestConnection::Fill(size_t n) {
  char buf[16384];
  while (buffer_.size() < n) {
    ssize_t got = Recv(fd_, buf, sizeof(buf));
    if (got <= 0) return false;
    buffer_.append(buf, static_cast<size_t>(got));
  }
  return true;
}

std::optional<std::string> TestConnection::ReadLine() {
  char buf[16384];
  for (;;) {
    size_t pos = buffer_.find("\r\n");
    if (pos != std::string::npos) {
      std::string line = buffer_.substr(0, pos);
      buffer_.erase(0, pos + 2);
      return line;
    }
    ssize_t got = Recv(fd_, buf, sizeof(buf));
    if (got <= 0) return std::nullopt;
    buffer_.append(buf, static_cast<size_t>(got));
  }
}

std::optional<HttpReply> TestConnection::ReadHead() {
  auto status = ReadLine();
  if (!status || status->rfind("HTTP/1.", 0) != 0 || status->size() < 12) return std::nullopt;
  HttpReply r;
  r.status = std::atoi(status->c_str() + 9);
  for (;;) {
    auto line = ReadLine();
    if (!line) return std::nullopt;
    if (line->empty()) break;
    size_t colon = line->find(':');
    if (colon == std::string::npos) return std::nullopt;
    std::string name = line->substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string value = line->substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    r.headers[name] = value;
  }
  return r;
}

std::optional<std::string> TestConnection::ReadChunk() {
  auto size_line = ReadLine();
  if (!size_line) return std::nullopt;
  size_t size = std::strtoul(size_line->c_str(), nullptr, 16);
  if (size == 0) {
    ReadLine();  // the empty line after the last chunk
    return std::nullopt;
  }
  if (!Fill(size + 2)) return std::nullopt;
  std::string data = buffer_.substr(0, size);
  buffer_.erase(0, size + 2);
  return data;
}

std::optional<HttpReply> TestConnection::ReadReply() {
  auto r = ReadHead();
  if (!r) return std::nullopt;
  if (r->header("transfer-encoding") == "chunked") {
    for (;;) {
      auto size_line = ReadLine();
      if (!size_line) return std::nullopt;
      size_t size = std::strtoul(size_line->c_str(), nullptr, 16);
      if (size == 0) {
        ReadLine();
        return r;
      }
      if (!Fill(size + 2)) return std::nullopt;
      r->body += buffer_.substr(0, size);
      buffer_.erase(0, size + 2);
    }
  }
  std::string length = r->header("content-length");
  if (length.empty()) {
    // Until the end of the connection.
    char buf[16384];
    for (;;) {
      ssize_t got = Recv(fd_, buf, sizeof(buf));
      if (got <= 0) break;
      buffer_.append(buf, static_cast<size_t>(got));
    }
    r->body = std::move(buffer_);
    buffer_.clear();
    return r;
  }
  size_t n = std::strtoul(length.c_str(), nullptr, 10);
  if (!Fill(n)) return std::nullopt;
  r->body = buffer_.substr(0, n);
  buffer_.erase(0, n);
  return r;
}

bool TestConnection::WaitForClose() {
  char buf[16384];
  for (;;) {
    ssize_t got = Recv(fd_, buf, sizeof(buf));
    if (got == 0) return true;
    if (got < 0) return errno == ECONNRESET;
  }
}

std::optional<HttpReply> Fetch(uint16_t port, std::string_view method, std::string_view target, std::string_view body,
                               const std::vector<std::string>& extra_headers) {
  auto c = TestConnection::Connect(port);
  if (!c) return std::nullopt;
  std::vector<std::string> headers = extra_headers;
  headers.push_back("Connection: close");
  if (!c->SendRequest(method, target, body, headers)) return std::nullopt;
  return c->ReadReply();
}

std::vector<std::string> SseData(std::string_view body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string_view::npos) break;
    std::string_view event = body.substr(pos, end - pos);
    if (event.rfind("data: ", 0) == 0) out.emplace_back(event.substr(6));
    pos = end + 2;
  }
  return out;
}

}  // namespace es::testing
