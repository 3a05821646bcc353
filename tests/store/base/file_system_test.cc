// The file-system helpers of es_base: ReadFile, the atomically published file (its temporary, its failure paths
// under injected faults), DirName, and the pass-through wrappers' forwarding.
#include "store/base/file_system.h"

#include <errno.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <string>

#include "tests/util/fault_fs.h"
#include "tests/util/files.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

TEST(ReadFileTest, ReadsWholeFileAndReportsMissingAsNotFound) {
  testing::TempDir dir;
  const std::string path = dir.Sub("a.txt");
  std::string big(200000, 'x');
  big[123457] = 'y';
  testing::WriteText(path, big);
  Result<std::string> got = ReadFile(*DefaultFileSystem(), path);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, big);

  Result<std::string> missing = ReadFile(*DefaultFileSystem(), dir.Sub("nope"));
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(missing.status().IsNotFound()) << missing.status().ToString();
}

TEST(DirNameTest, SplitsAtTheLastSlash) {
  EXPECT_EQ(DirName("/a/b/c.txt"), "/a/b");
  EXPECT_EQ(DirName("c.txt"), ".");
  EXPECT_EQ(DirName("/c.txt"), "/");
  EXPECT_EQ(DirName("a/b/"), "a/b");
}

TEST(AtomicFileWriterTest, CommitPublishesEveryAppendAndRemovesTheTemporary) {
  testing::TempDir dir;
  const std::string path = dir.Sub("out.jsonl");
  testing::WriteText(path, "old contents\n");
  auto w = AtomicFileWriter::Create(DefaultFileSystem(), path);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::string want;
  // More than the writer buffers at once, so that some appends reach the temporary before Commit.
  for (int i = 0; i < 20000; ++i) {
    const std::string line = "line " + std::to_string(i) + "\n";
    ASSERT_TRUE((*w)->Append(line).ok());
    want += line;
  }
  EXPECT_EQ(testing::ReadText(path), "old contents\n") << "nothing is visible before Commit";
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(testing::ReadText(path), want);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_TRUE((*w)->Append("late").IsInvalidArgument());
}

TEST(AtomicFileWriterTest, AbandonedWriterLeavesTheOldFileAndNoTemporary) {
  testing::TempDir dir;
  const std::string path = dir.Sub("out.json");
  testing::WriteText(path, "old");
  {
    auto w = AtomicFileWriter::Create(DefaultFileSystem(), path);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append(std::string(100000, 'n')).ok());
  }
  EXPECT_EQ(testing::ReadText(path), "old");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(AtomicFileWriterTest, StaleTemporaryFromAnInterruptedRunStartsOver) {
  testing::TempDir dir;
  const std::string path = dir.Sub("out.json");
  testing::WriteText(path + ".tmp", std::string(5000, 's'));
  ASSERT_TRUE(WriteFileAtomic(DefaultFileSystem(), path, "new").ok());
  EXPECT_EQ(testing::ReadText(path), "new");
}

TEST(AtomicFileWriterTest, FailedWriteSyncOrRenameLeavesTheOldFile) {
  for (testing::FaultOp op : {testing::FaultOp::kWrite, testing::FaultOp::kSync, testing::FaultOp::kRename}) {
    SCOPED_TRACE(static_cast<int>(op));
    testing::TempDir dir;
    const std::string path = dir.Sub("out.json");
    testing::WriteText(path, "old");
    auto fs = std::make_shared<testing::FaultInjectionFileSystem>();
    fs->AddRule({.op = op, .path_contains = ".tmp", .err = op == testing::FaultOp::kWrite ? ENOSPC : EIO});
    Status s = WriteFileAtomic(fs, path, "new contents");
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(fs->fired(), 1);
    if (op == testing::FaultOp::kWrite) {
      EXPECT_TRUE(s.IsResourceExhausted()) << s.ToString();
    }
    EXPECT_EQ(testing::ReadText(path), "old");
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  }
}

// A wrapper that overrides nothing must behave as its target; one that overrides a call sees exactly those calls.
class CountingFileSystem final : public FileSystemWrapper {
 public:
  CountingFileSystem() : FileSystemWrapper(DefaultFileSystem()) {}
  Status Remove(const std::string& path) override {
    ++removes;
    return target().Remove(path);
  }
  std::atomic<int> removes{0};
};

TEST(FileSystemWrapperTest, ForwardsEveryCallToItsTarget) {
  testing::TempDir dir;
  CountingFileSystem fs;
  ASSERT_TRUE(fs.CreateDir(dir.Sub("d")).ok());
  auto f = fs.Open(dir.Sub("d/f"), OpenOptions{.write = true, .create = true});
  ASSERT_TRUE(f.ok());
  const std::string bytes = "hello";
  ASSERT_TRUE((*f)->Write(0, std::as_bytes(std::span<const char>(bytes.data(), bytes.size()))).ok());
  ASSERT_TRUE((*f)->Sync().ok());
  EXPECT_EQ(*(*f)->Size(), bytes.size());
  EXPECT_EQ(*fs.Exists(dir.Sub("d/f")), true);
  ASSERT_TRUE(fs.Rename(dir.Sub("d/f"), dir.Sub("d/g")).ok());
  EXPECT_EQ(*fs.ListDir(dir.Sub("d")), std::vector<std::string>{"g"});
  EXPECT_GT(*fs.FreeSpace(dir.path()), 0u);
  ASSERT_TRUE(fs.Remove(dir.Sub("d/g")).ok());
  EXPECT_EQ(fs.removes.load(), 1);
  EXPECT_EQ(*fs.Exists(dir.Sub("d/g")), false);
}

}  // namespace
}  // namespace es
