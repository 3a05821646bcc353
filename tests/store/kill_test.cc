// Kill -9: a child appends records in a loop and is SIGKILLed at random moments, at least 20 times. After each
// kill the store opens, verify is clean, and every record acknowledged before the kill reads back exactly.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <random>
#include <sstream>

#include "store/store.h"
#include "tests/store/store_test_util.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::MakePayload;
using testing::ReadTensor;
using testing::TempDir;

constexpr int kKills = 24;

// How long to wait for the writer's first acknowledgement (slow under sanitizers) before killing it anyway.
constexpr auto kFirstAckTimeout = std::chrono::seconds(60);

// Runs the writer until it has acknowledged a first record and `run_for` more has passed, SIGKILLs it, and
// returns everything it printed. Waiting for a first acknowledgement makes every round kill a writer that is
// mid-stream, whatever the machine's speed.
std::string RunAndKill(const std::string& store, uint64_t first_seed, std::chrono::milliseconds run_for) {
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

TEST(KillTest, AcknowledgedRecordsSurviveSigkill) {
  TempDir dir;
  std::map<std::string, std::pair<uint64_t, size_t>> acked;
  std::mt19937 rng(1234);
  for (int round = 0; round < kKills; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto run_for = std::chrono::milliseconds(20 + rng() % 400);
    std::string out = RunAndKill(dir.path(), static_cast<uint64_t>(round + 1) * 1000000, run_for);
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream f(line);
      std::string tag, name;
      unsigned long long seed = 0;
      size_t size = 0;
      // A line cut off by the kill never finished printing and does not count (its commit did finish, though).
      if (f >> tag >> name >> seed >> size && tag == "ACK") acked[name] = {seed, size};
    }
    auto store = Store::Open(dir.path(), StoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    auto report = (*store)->Verify();
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    for (const auto& c : report->corrupt) ADD_FAILURE() << c.what << ": " << c.message;
    for (const auto& [name, sv] : acked) {
      auto got = ReadTensor(**store, name);
      ASSERT_TRUE(got.ok()) << name << ": " << got.status().ToString();
      ASSERT_EQ(*got, MakePayload(sv.first, sv.second)) << name;
    }
  }
  // Every round waited for an acknowledgement before killing.
  EXPECT_GE(acked.size(), static_cast<size_t>(kKills)) << "the writer barely ran; the test proves little";
}

}  // namespace
}  // namespace es
