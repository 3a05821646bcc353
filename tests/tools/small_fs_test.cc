// The CLI on real file systems that say no: a small tmpfs filled up (ENOSPC from the kernel, RocksDB's writes
// included) and a read-only bind mount. Every command fails with exit 6 and a message, or works; none aborts;
// the store passes verify once space is back. Needs mount(2) (root with CAP_SYS_ADMIN); skipped without it.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "store/base/json.h"
#include "tests/util/files.h"
#include "tests/util/run_cli.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

namespace fs = std::filesystem;
using testing::CliResult;
using testing::RunCli;

// Room for the tiny model (16 MiB of records) and its catalog, with a little to spare.
constexpr char kSmallFsOptions[] = "size=40m";

// A mount made for one test and undone after it.
class Mount {
 public:
  ~Mount() {
    if (!target_.empty()) ::umount2(target_.c_str(), MNT_DETACH);
  }
  // errno of a failed mount (EPERM without the privilege), 0 on success.
  int Tmpfs(const std::string& target, const char* options) {
    fs::create_directories(target);
    if (::mount("tmpfs", target.c_str(), "tmpfs", 0, options) != 0) return errno;
    target_ = target;
    return 0;
  }
  int ReadOnlyBind(const std::string& source, const std::string& target) {
    fs::create_directories(target);
    if (::mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) return errno;
    target_ = target;
    if (::mount(nullptr, target.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) != 0) return errno;
    return 0;
  }

 private:
  std::string target_;
};

// Writes zeros into `path` until the file system has `leave_bytes` free (0: until it is full).
void FillUp(const std::string& path, uint64_t leave_bytes = 0) {
  const uint64_t available = fs::space(fs::path(path).parent_path()).available;
  uint64_t left = leave_bytes == 0 ? UINT64_MAX : (available > leave_bytes ? available - leave_bytes : 0);
  std::FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::vector<char> block(1 << 16, 0);
  while (left > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(block.size(), left));
    if (std::fwrite(block.data(), 1, n, f) != n) break;
    left -= n;
  }
  std::fclose(f);
}

void ExpectRefusedForSpace(const CliResult& r) {
  EXPECT_EQ(r.exit_code, 6) << r.out;  // not 134: no assertion inside RocksDB
  EXPECT_NE(r.out.find("error: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << r.out;
}

#define ES_MOUNT_OR_SKIP(call)                                                              \
  do {                                                                                      \
    const int err = (call);                                                                 \
    if (err == EPERM || err == EACCES) GTEST_SKIP() << "mount(2) is not permitted here";    \
    ASSERT_EQ(err, 0) << std::strerror(err);                                                \
  } while (0)

TEST(SmallFsTest, FullDiskFailsEveryWriterWithExit6AndLosesNothing) {
  ES_REQUIRE_DATA(testing::kTinyModel);
  testing::TempDir dir;
  Mount small;
  ES_MOUNT_OR_SKIP(small.Tmpfs(dir.Sub("small"), kSmallFsOptions));
  const std::string store = " --store " + dir.Sub("small/s");
  ASSERT_EQ(RunCli("ingest " + std::string(testing::kTinyModel) + " --name tiny --quiet" + store).exit_code, 0);
  FillUp(dir.Sub("small/fill"));

  // A recording generate opens the catalog as its writer: the full disk is an error, not an abort.
  CliResult gen = RunCli("generate --model tiny --prompt hi --max-tokens 2 --temperature 0" + store, true);
  ExpectRefusedForSpace(gen);
  ExpectRefusedForSpace(RunCli("ingest " + std::string(testing::kTinyModel) + " --name again --quiet" + store, true));
  // Readers do not need space, nor does a server that records nothing.
  EXPECT_EQ(RunCli("generate --model tiny --prompt hi --max-tokens 2 --temperature 0 --no-record" + store).exit_code, 0);
  EXPECT_EQ(RunCli("models" + store).exit_code, 0);
  // (Bounded: were it to start, the TERM stops it and the exit code says 0.)
  ExpectRefusedForSpace(RunCli("serve --port 0" + store + " 2>&1 & pid=$!; sleep 2; kill -TERM $pid 2>/dev/null; wait $pid", true));
  CliResult serve =
      RunCli("serve --port 0 --json --no-record" + store + " 2>&1 & pid=$!; sleep 1; kill -TERM $pid; wait $pid", true);
  EXPECT_EQ(serve.exit_code, 0) << serve.out;
  EXPECT_NE(serve.out.find("serving it read-only"), std::string::npos) << serve.out;

  // Space back: nothing was lost, and the refused work runs.
  fs::remove(dir.Sub("small/fill"));
  EXPECT_EQ(RunCli("verify" + store).exit_code, 0);
  EXPECT_EQ(RunCli("generate --model tiny --prompt hi --max-tokens 2 --temperature 0" + store).exit_code, 0);
  EXPECT_EQ(RunCli("verify" + store).exit_code, 0);
}

// The disk fills at different points of each writer's work (its open, its commits, the catalog's flush): every
// command either works or exits 6, never aborts, and the store passes verify.
TEST(SmallFsTest, EveryWriterAtEveryFillLevelWorksOrExits6) {
  ES_REQUIRE_DATA(testing::kTinyModel);
  testing::TempDir dir;
  testing::WriteText(dir.Sub("text.txt"), std::string(2000, 'a') + " def main(): return 0\n");
  testing::WriteText(dir.Sub("prompts.jsonl"), "{\"domain\": \"c\", \"text\": \"int main() { return 0; }\"}\n");
  for (uint64_t free_kb : {0, 96, 160, 256, 1024}) {
    SCOPED_TRACE(free_kb);
    Mount small;
    ES_MOUNT_OR_SKIP(small.Tmpfs(dir.Sub("small"), kSmallFsOptions));
    const std::string store = " --store " + dir.Sub("small/s");
    ASSERT_EQ(RunCli("ingest " + std::string(testing::kTinyModel) + " --name tiny --quiet" + store).exit_code, 0);
    FillUp(dir.Sub("small/fill"), free_kb * 1024);
    for (const std::string& command :
         {std::string("generate --model tiny --prompt hi --max-tokens 4 --temperature 0"), "eval --model tiny --text " +
          dir.Sub("text.txt"), "profile --model tiny --prompts " + dir.Sub("prompts.jsonl"),
          "calibrate --model tiny --max-tokens 200 --text " + dir.Sub("text.txt"), std::string("rest --model tiny"),
          "fit-lookahead --model tiny --window 64 --text " + dir.Sub("text.txt")}) {
      CliResult r = RunCli(command + store, true);
      EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 6) << command << ": " << r.out;
      if (r.exit_code == 6) {
        EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << r.out;
      }
    }
    fs::remove(dir.Sub("small/fill"));
    EXPECT_EQ(RunCli("verify" + store).exit_code, 0);
  }
}

TEST(SmallFsTest, IngestThatRunsOutOfSpaceMidwayResumesOnceThereIsRoom) {
  ES_REQUIRE_DATA(testing::kTinyModel);
  testing::TempDir dir;
  Mount small;
  ES_MOUNT_OR_SKIP(small.Tmpfs(dir.Sub("small"), "size=12m"));  // less than the model
  const std::string store = " --store " + dir.Sub("small/s");
  const std::string ingest = "ingest " + std::string(testing::kTinyModel) + " --name tiny --commit-mb 1 --quiet";
  ExpectRefusedForSpace(RunCli(ingest + store, true));
  EXPECT_EQ(RunCli("verify" + store).exit_code, 0);
  // Move the store to a file system with room: the committed part is kept and the ingest completes.
  fs::copy(dir.Sub("small/s"), dir.Sub("big"), fs::copy_options::recursive);
  CliResult resumed = RunCli(ingest + " --json --store " + dir.Sub("big"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out;
  auto doc = ParseJson(resumed.out);
  ASSERT_TRUE(doc.ok()) << resumed.out;
  EXPECT_TRUE(doc->Find("resumed")->bool_value());
  EXPECT_EQ(RunCli("verify --store " + dir.Sub("big")).exit_code, 0);
}

TEST(SmallFsTest, ReadOnlyStoreServesEveryReadCommand) {
  ES_REQUIRE_DATA(testing::kTinyModel);
  testing::TempDir dir;
  ASSERT_EQ(RunCli("ingest " + std::string(testing::kTinyModel) + " --name tiny --quiet --store " + dir.Sub("rw/s"))
                .exit_code,
            0);
  Mount ro;
  ES_MOUNT_OR_SKIP(ro.ReadOnlyBind(dir.Sub("rw"), dir.Sub("ro")));
  const std::string store = " --store " + dir.Sub("ro/s");
  CliResult gen = RunCli("generate --model tiny --prompt hi --max-tokens 2 --temperature 0 --json" + store);
  ASSERT_EQ(gen.exit_code, 0) << gen.out;
  auto doc = ParseJson(gen.out);
  ASSERT_TRUE(doc.ok()) << gen.out;
  EXPECT_EQ(doc->Find("usage")->string_value(), "off");  // recording needs a writable store
  for (const char* read : {"models", "info", "verify", "experts --model tiny", "show --model tiny --layer 0 --expert 0",
                           "tokenize --model tiny --text hi", "query --model tiny"}) {
    CliResult r = RunCli(std::string(read) + store, true);
    EXPECT_EQ(r.exit_code, 0) << read << ": " << r.out;
  }
  // serve starts, answers nothing here, and drains on SIGTERM with exit 0.
  CliResult serve = RunCli("serve --port 0 --json" + store + " 2>&1 & pid=$!; sleep 1; kill -TERM $pid; wait $pid", true);
  EXPECT_EQ(serve.exit_code, 0) << serve.out;
  EXPECT_NE(serve.out.find("\"port\""), std::string::npos) << serve.out;
  // Writers are refused with the reason.
  CliResult ingest = RunCli("ingest " + std::string(testing::kTinyModel) + " --name other" + store, true);
  EXPECT_EQ(ingest.exit_code, 7) << ingest.out;
  EXPECT_NE(ingest.out.find("is read-only"), std::string::npos) << ingest.out;
}

}  // namespace
}  // namespace es
