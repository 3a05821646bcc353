// Kill -9 during ingest: `expertstore ingest` is SIGKILLed at random moments; after each kill the store opens and
// verifies clean, and running the same command again completes without duplicating or losing anything.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "ingest/ingest.h"
#include "ingest/make_checkpoint.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

constexpr char kCli[] = ES_BINARY_DIR "/expertstore";
constexpr int kKills = 8;

// Runs the CLI; kills it after `kill_after` unless it exits first. Returns the exit status (-1 when killed).
int RunCli(const std::vector<std::string>& args, std::chrono::milliseconds kill_after) {
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(kCli));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(kCli, argv.data());
    ::_exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + kill_after;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(IngestKill, ResumesAfterSigkill) {
  testing::TempDir dir;
  MakeCheckpointOptions o;
  o.arch = "qwen3_moe";
  o.layers = 4;
  o.experts = 32;
  o.hidden = 256;
  o.moe_intermediate = 256;
  o.max_shard_bytes = 16 << 20;
  auto resolved = ResolveMakeCheckpointOptions(o, {"layers", "experts", "hidden", "moe-intermediate"});
  ASSERT_TRUE(resolved.ok());
  std::string ckpt = dir.Sub("ckpt");
  ASSERT_TRUE(MakeCheckpoint(ckpt, *resolved).ok());

  // The reference: an uninterrupted ingest in another store.
  auto ref_store = Store::Open(dir.Sub("ref"), StoreOptions{});
  ASSERT_TRUE(ref_store.ok());
  IngestOptions io;
  io.name = "m";
  ASSERT_TRUE(IngestCheckpoint(**ref_store, ckpt, io).ok());
  auto want = testing::ReadAllExperts(**ref_store, "m");
  ASSERT_TRUE(want.ok());

  // How long an uninterrupted CLI ingest takes here: kills land at random fractions of it, whatever the
  // machine's speed.
  auto timed_cmd = std::vector<std::string>{"ingest", ckpt, "--store", dir.Sub("timed"), "--name", "m", "--quiet"};
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(RunCli(timed_cmd, std::chrono::minutes(5)), 0);
  auto full = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);

  std::string store = dir.Sub("store");
  std::vector<std::string> cmd = {"ingest", ckpt, "--store", store, "--name", "m", "--commit-mb", "2", "--quiet"};
  std::mt19937 rng(99);
  int killed = 0;
  for (int round = 0; round < kKills; ++round) {
    // The first kill lands halfway through a fresh ingest; later ones anywhere in the first 80%.
    double fraction = round == 0 ? 0.5 : 0.05 + 0.75 * std::uniform_real_distribution<double>(0, 1)(rng);
    auto kill_after = std::chrono::duration_cast<std::chrono::milliseconds>(full * fraction);
    int rc = RunCli(cmd, std::max(kill_after, std::chrono::milliseconds(1)));
    if (rc == -1) ++killed;
    auto s = Store::Open(store, StoreOptions{});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    auto report = (*s)->Verify();
    ASSERT_TRUE(report.ok());
    for (const auto& c : report->corrupt) ADD_FAILURE() << "round " << round << ": " << c.what << ": " << c.message;
    if (rc == 0) break;  // finished before the kill
  }
  EXPECT_GT(killed, 0) << "no run was killed mid-ingest; the test proves little";
  ASSERT_EQ(RunCli(cmd, std::chrono::minutes(5)), 0);
  auto s = Store::Open(store, StoreOptions{});
  ASSERT_TRUE(s.ok());
  auto got = testing::ReadAllExperts(**s, "m");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *want);
  auto model = DecodeModel(*(*s)->catalog().Get(Cf::kModels, "m"));
  ASSERT_TRUE(model.ok());
  EXPECT_TRUE(model->complete);
  size_t tensors = 0;
  ASSERT_TRUE((*s)->catalog().Scan(Cf::kTensors, ModelPrefix("m"), [&](auto, auto) { return ++tensors, true; }).ok());
  EXPECT_EQ(tensors, model->num_dense_tensors);
  // Running it once more is a no-op (after this process lets go of the writer lock).
  s->reset();
  ASSERT_EQ(RunCli(cmd, std::chrono::minutes(1)), 0);
}

}  // namespace
}  // namespace es
