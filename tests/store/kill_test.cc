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

// Runs the writer until `run_for` has passed, SIGKILLs it, and returns everything it printed.
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
  EXPECT_GT(acked.size(), 50u) << "the writer barely ran; the test proves little";
}

}  // namespace
}  // namespace es
