// Running store_crash_writer (crash_writer.cc) and killing it: the kill test and the catalog damage test make
// stores whose writer died mid-stream this way. A separate process, not a fork of the test, so that no lock held
// by another thread of the test (RocksDB's pools) is inherited.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <utility>

namespace es::testing {

// How long to wait for the writer's first acknowledgement (slow under sanitizers) before killing it anyway.
inline constexpr auto kFirstAckTimeout = std::chrono::seconds(60);

// Runs the writer until it has acknowledged a first record and `run_for` more has passed, SIGKILLs it, and
// returns everything it printed. Waiting for a first acknowledgement makes every round kill a writer that is
// mid-stream, whatever the machine's speed.
inline std::string RunAndKill(const std::string& store, uint64_t first_seed, std::chrono::milliseconds run_for) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return {};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipefd[1], STDOUT_FILENO);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    std::string seed = std::to_string(first_seed);
    ::execl(ES_CRASH_WRITER, ES_CRASH_WRITER, store.c_str(), seed.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(pipefd[1]);
  std::string out;
  char buf[4096];
  auto first_ack_deadline = std::chrono::steady_clock::now() + kFirstAckTimeout;
  while (out.find('\n') == std::string::npos && std::chrono::steady_clock::now() < first_ack_deadline) {
    struct pollfd p{pipefd[0], POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) {
      ssize_t n = ::read(pipefd[0], buf, sizeof(buf));
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
  }
  auto deadline = std::chrono::steady_clock::now() + run_for;
  while (std::chrono::steady_clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    struct pollfd p{pipefd[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(1, left.count()))) > 0) {
      ssize_t n = ::read(pipefd[0], buf, sizeof(buf));
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  // Whatever the child wrote before dying is still in the pipe: it was acknowledged.
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  return out;
}

// Adds the records the writer acknowledged ("ACK <name> <seed> <size>") to `acked`: name -> (seed, size). A line
// cut off by the kill never finished printing and does not count (its commit did finish, though).
inline void ParseAcks(const std::string& out, std::map<std::string, std::pair<uint64_t, size_t>>& acked) {
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream f(line);
    std::string tag, name;
    unsigned long long seed = 0;
    size_t size = 0;
    if (f >> tag >> name >> seed >> size && tag == "ACK") acked[name] = {seed, size};
  }
}

}  // namespace es::testing
