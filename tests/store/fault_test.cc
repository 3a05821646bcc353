// Fault injection on the write path: ENOSPC, failing fsync, failing publication, lost unsynced data. After each,
// no catalog entry references data that was not durably written, and the store reopens and verifies clean.
#include <errno.h>
#include <gtest/gtest.h>

#include "store/metadata.h"
#include "store/store.h"
#include "tests/util/expert_model.h"
#include "tests/store/store_test_util.h"
#include "tests/util/fault_fs.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::FaultInjectionFileSystem;
using testing::FaultOp;
using testing::FaultRule;
using testing::MakePayload;
using testing::PutTensor;
using testing::ReadTensor;
using testing::TempDir;

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs_ = std::make_shared<FaultInjectionFileSystem>();
    Reopen();
    auto txn = store_->BeginWrite();
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(PutTensor(**txn, "base", MakePayload(1, 20000)).ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }

  void Reopen() {
    store_.reset();
    StoreOptions o;
    o.fs = fs_;
    o.max_segment_bytes = 256 * 1024;
    auto s = Store::Open(dir_.path(), o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
  }

  // The invariant after any failure: verify is clean, "base" reads back, and `absent` names nothing.
  void ExpectConsistent(const std::vector<std::string>& absent) {
    auto report = store_->Verify();
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    for (const auto& c : report->corrupt) ADD_FAILURE() << c.what << ": " << c.message;
    auto base = ReadTensor(*store_, "base");
    ASSERT_TRUE(base.ok()) << base.status().ToString();
    EXPECT_EQ(*base, MakePayload(1, 20000));
    for (const auto& name : absent) EXPECT_TRUE(ReadTensor(*store_, name).status().IsNotFound()) << name;
  }

  Status WriteTxnOf(const std::vector<std::string>& names, size_t size) {
    auto txn = store_->BeginWrite();
    if (!txn.ok()) return txn.status();
    uint64_t seed = 100;
    for (const auto& n : names) {
      auto e = PutTensor(**txn, n, MakePayload(seed++, size));
      if (!e.ok()) return e.status();
    }
    return (*txn)->Commit();
  }

  TempDir dir_;
  std::shared_ptr<FaultInjectionFileSystem> fs_;
  std::unique_ptr<Store> store_;
};

TEST_F(FaultTest, EnospcMidWriteLeavesNothingBehind) {
  fs_->AddRule({FaultOp::kWrite, ".seg", ENOSPC, /*short_io=*/true, /*skip=*/3, 1});
  Status s = WriteTxnOf({"a", "b", "c", "d", "e"}, 100000);
  EXPECT_TRUE(s.IsResourceExhausted()) << s.ToString();
  EXPECT_EQ(fs_->fired(), 1);
  ExpectConsistent({"a", "b", "c", "d", "e"});
  // The writer survived (its rollback worked): the next transaction goes through.
  ASSERT_TRUE(WriteTxnOf({"later"}, 5000).ok());
  Reopen();
  ExpectConsistent({"a", "b", "c", "d", "e"});
  EXPECT_TRUE(ReadTensor(*store_, "later").ok());
}

TEST_F(FaultTest, FailedFsyncKillsTheWriter) {
  fs_->AddRule({FaultOp::kSync, ".seg", EIO, false, 0, 1});
  Status s = WriteTxnOf({"a", "b"}, 30000);
  EXPECT_TRUE(s.IsIOError()) << s.ToString();
  EXPECT_TRUE(store_->writer_dead());
  // Never retried: further writes are refused until the store is reopened.
  EXPECT_TRUE(store_->BeginWrite().status().IsIOError());
  ExpectConsistent({"a", "b"});
  Reopen();
  ExpectConsistent({"a", "b"});
  ASSERT_TRUE(WriteTxnOf({"c"}, 1000).ok());
}

TEST_F(FaultTest, FailedSegmentPublicationIsRolledBack) {
  // Enough data to rotate segments; the rename of the new segment fails.
  fs_->AddRule({FaultOp::kRename, ".seg.tmp", EIO, false, 0, 1});
  Status s = WriteTxnOf({"a", "b", "c", "d", "e", "f"}, 100000);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(fs_->fired(), 1);
  ExpectConsistent({"a", "b", "c", "d", "e", "f"});
  Reopen();
  ExpectConsistent({"a", "b", "c", "d", "e", "f"});
  ASSERT_TRUE(WriteTxnOf({"g", "h", "i"}, 100000).ok());
}

TEST_F(FaultTest, FailedDirectorySyncKillsTheWriter) {
  fs_->AddRule({FaultOp::kSyncDir, "segments", EIO, false, 0, 1});
  Status s = WriteTxnOf({"a", "b", "c", "d", "e", "f"}, 100000);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(store_->writer_dead());
  ExpectConsistent({"a", "b", "c", "d", "e", "f"});
  Reopen();
  ExpectConsistent({"a", "b", "c", "d", "e", "f"});
}

TEST_F(FaultTest, FailedRollbackKillsWriterAndReopenRecovers) {
  fs_->AddRule({FaultOp::kWrite, ".seg", ENOSPC, false, 2, 1});
  fs_->AddRule({FaultOp::kTruncate, ".seg", EIO, false, 0, 1});
  Status s = WriteTxnOf({"a", "b", "c"}, 50000);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(store_->writer_dead());
  Reopen();  // recovery truncates the unreferenced tail the failed rollback left
  ExpectConsistent({"a", "b", "c"});
  ASSERT_TRUE(WriteTxnOf({"d"}, 5000).ok());
}

TEST_F(FaultTest, AnAssetWriteOnAFullDiskKeepsTheOldAsset) {
  ASSERT_TRUE(testing::WriteTestModel(*store_, {.name = "m", .layers = 1, .experts = 2}).ok());
  const std::string old_bytes(50000, 'a'), new_bytes(60000, 'b');
  ASSERT_TRUE(store_->PutAsset("m", "fit", old_bytes).ok());
  auto asset = [&]() -> Result<std::string> {
    ES_ASSIGN_OR_RETURN(ModelInfo info, LoadModelInfo(store_->catalog(), "m"));
    return store_->ReadAsset(info, "fit");
  };
  fs_->AddRule({FaultOp::kWrite, ".seg", ENOSPC, /*short_io=*/true, 0, 1});
  Status s = store_->PutAsset("m", "fit", new_bytes);
  EXPECT_TRUE(s.IsResourceExhausted()) << s.ToString();
  EXPECT_EQ(fs_->fired(), 1);
  ExpectConsistent({});
  ASSERT_TRUE(asset().ok());
  EXPECT_EQ(*asset(), old_bytes);
  Reopen();
  ExpectConsistent({});
  EXPECT_EQ(*asset(), old_bytes);
  // With room again the refit replaces it.
  ASSERT_TRUE(store_->PutAsset("m", "fit", new_bytes).ok());
  EXPECT_EQ(*asset(), new_bytes);
  Reopen();
  ExpectConsistent({});
  EXPECT_EQ(*asset(), new_bytes);
}

TEST_F(FaultTest, CrashLosesOnlyUncommittedData) {
  ASSERT_TRUE(WriteTxnOf({"committed"}, 40000).ok());
  {
    auto txn = store_->BeginWrite();
    ASSERT_TRUE(txn.ok());
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(PutTensor(**txn, "pending" + std::to_string(i), MakePayload(i, 60000)).ok());
    fs_->Crash();  // power loss with the transaction's data written but never synced
  }
  store_.reset();
  fs_->Restart();
  Reopen();
  std::vector<std::string> absent;
  for (int i = 0; i < 8; ++i) absent.push_back("pending" + std::to_string(i));
  ExpectConsistent(absent);
  auto c = ReadTensor(*store_, "committed");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(*c, MakePayload(100, 40000));
}

TEST_F(FaultTest, ReadErrorsAreReportedPerRecord) {
  ASSERT_TRUE(WriteTxnOf({"x"}, 10000).ok());
  fs_->AddRule({FaultOp::kRead, ".seg", EIO, false, 0, -1});
  fs_->AddRule({FaultOp::kAsyncRead, ".seg", EIO, false, 0, -1});
  auto got = ReadTensor(*store_, "x");
  EXPECT_TRUE(got.status().IsIOError()) << got.status().ToString();
  auto report = store_->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_FALSE(report->ok());
  fs_->ClearRules();
  ExpectConsistent({});
}

}  // namespace
}  // namespace es
