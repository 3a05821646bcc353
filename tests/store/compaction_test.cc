// Compaction and the I/O-fault sweep. Compaction: dead space is reclaimed, every live record reads back the same,
// a reader that had the store open keeps reading the segments it knew until it closes, the writer's own earlier
// extents stay readable. The sweep: for compaction, ingest, rm and journalled metadata writes, the k-th call of
// each kind of file-system operation fails, for every k in turn, followed by a power loss; the store then reopens,
// verifies clean, and holds everything acknowledged before the fault.
#include <errno.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>

#include "ingest/ingest.h"
#include "ingest/make_checkpoint.h"
#include "store/compaction.h"
#include "store/metadata.h"
#include "store/store.h"
#include "tests/store/store_test_util.h"
#include "tests/util/fault_fs.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::FaultInjectionFileSystem;
using testing::FaultOp;
using testing::MakePayload;
using testing::PutTensor;
using testing::ReadTensor;
using testing::TempDir;

constexpr uint64_t kSegmentBytes = 256 * 1024;
constexpr size_t kTensors = 24;
constexpr size_t kTensorBytes = 30000;

std::string Name(size_t i) { return "w" + std::to_string(i); }

Result<std::unique_ptr<Store>> OpenWith(const std::string& dir, std::shared_ptr<FileSystem> fs, bool read_only = false) {
  StoreOptions o;
  o.fs = std::move(fs);
  o.max_segment_bytes = kSegmentBytes;
  o.read_only = read_only;
  return Store::Open(dir, o);
}

// kTensors tensors over several segments, then every even one removed: about half of each segment is dead.
void WriteHalfDeadStore(const std::string& dir) {
  auto store = OpenWith(dir, DefaultFileSystem());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  {
    auto txn = (*store)->BeginWrite();
    ASSERT_TRUE(txn.ok());
    for (size_t i = 0; i < kTensors; ++i) ASSERT_TRUE(PutTensor(**txn, Name(i), MakePayload(i, kTensorBytes)).ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  auto txn = (*store)->BeginWrite();
  ASSERT_TRUE(txn.ok());
  for (size_t i = 0; i < kTensors; i += 2) (*txn)->batch().Delete(Cf::kTensors, TensorKey(testing::kTestModel, Name(i)));
  ASSERT_TRUE((*txn)->Commit().ok());
}

// Every odd tensor reads back as written, every even one is gone, and verify is clean.
void ExpectLiveTensors(Store& store) {
  auto report = store.Verify();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  for (const auto& c : report->corrupt) ADD_FAILURE() << c.what << ": " << c.message;
  for (size_t i = 0; i < kTensors; ++i) {
    auto t = ReadTensor(store, Name(i));
    if (i % 2 == 0) {
      EXPECT_TRUE(t.status().IsNotFound()) << Name(i) << ": " << t.status().ToString();
    } else {
      ASSERT_TRUE(t.ok()) << Name(i) << ": " << t.status().ToString();
      EXPECT_EQ(*t, MakePayload(i, kTensorBytes)) << Name(i);
    }
  }
}

uint64_t SegmentBytes(Store& store) {
  auto sizes = SegmentFileSizes(store.fs(), store.segments_dir());
  uint64_t total = 0;
  for (const auto& [id, size] : *sizes) total += size;
  return total;
}

TEST(CompactionTest, ReclaimsDeadSpaceAndKeepsEveryLiveRecord) {
  TempDir dir;
  WriteHalfDeadStore(dir.path());
  auto store = OpenWith(dir.path(), DefaultFileSystem());
  ASSERT_TRUE(store.ok());
  const uint64_t before = SegmentBytes(**store);
  auto stats = Compact(**store, CompactOptions{});
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_GE(stats->segments_before, 3u);
  EXPECT_EQ(stats->records_moved, kTensors / 2);
  EXPECT_EQ(stats->compacted.size(), stats->segments_before);  // every segment was about half dead
  EXPECT_EQ(stats->removal.removed, stats->compacted);
  EXPECT_TRUE(stats->removal.kept_for_readers.empty());
  const uint64_t after = SegmentBytes(**store);
  EXPECT_LT(after, before * 6 / 10);
  ExpectLiveTensors(**store);
  auto report = (*store)->Verify();
  for (const SegmentSpace& s : report->segments) EXPECT_EQ(s.dead_bytes(), 0u) << "segment " << s.segment;
  // Nothing more to do: a second run moves nothing.
  auto again = Compact(**store, CompactOptions{});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->records_moved, 0u);
  EXPECT_TRUE(again->compacted.empty());
  store->reset();
  store = OpenWith(dir.path(), DefaultFileSystem());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ExpectLiveTensors(**store);
  EXPECT_EQ(SegmentBytes(**store), after);
  // New writes go on after the compacted segments.
  auto txn = (*store)->BeginWrite();
  ASSERT_TRUE(txn.ok());
  ASSERT_TRUE(PutTensor(**txn, "later", MakePayload(99, 5000)).ok());
  ASSERT_TRUE((*txn)->Commit().ok());
  EXPECT_EQ(*ReadTensor(**store, "later"), MakePayload(99, 5000));
}

TEST(CompactionTest, ThresholdLeavesSegmentsWithLittleDeadSpace) {
  TempDir dir;
  WriteHalfDeadStore(dir.path());
  auto store = OpenWith(dir.path(), DefaultFileSystem());
  ASSERT_TRUE(store.ok());
  auto stats = Compact(**store, CompactOptions{.max_dead_fraction = 0.9});
  ASSERT_TRUE(stats.ok());
  EXPECT_TRUE(stats->compacted.empty());
  EXPECT_EQ(stats->records_moved, 0u);
  EXPECT_TRUE(Compact(**store, CompactOptions{.max_dead_fraction = 1.0}).status().IsInvalidArgument());
  EXPECT_TRUE(Compact(**store, CompactOptions{.max_dead_fraction = -0.1}).status().IsInvalidArgument());
}

TEST(CompactionTest, ReaderThatHadTheStoreOpenKeepsReadingUntilItCloses) {
  TempDir dir;
  WriteHalfDeadStore(dir.path());
  auto writer = OpenWith(dir.path(), DefaultFileSystem());
  ASSERT_TRUE(writer.ok());
  // A reader (as another process would be) reads the catalog before the compaction and the data after it.
  auto reader = OpenWith(dir.path(), DefaultFileSystem(), /*read_only=*/true);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_TRUE((*writer)->ReadersPresent());
  std::map<size_t, TensorInfo> before;
  for (size_t i = 1; i < kTensors; i += 2) {
    auto v = (*reader)->catalog().Get(Cf::kTensors, TensorKey(testing::kTestModel, Name(i)));
    ASSERT_TRUE(v.ok());
    before[i] = *DecodeTensor(*v);
  }
  auto stats = Compact(**writer, CompactOptions{});
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->records_moved, kTensors / 2);
  EXPECT_TRUE(stats->removal.removed.empty());
  EXPECT_EQ(stats->removal.kept_for_readers, stats->compacted);
  ExpectLiveTensors(**writer);
  for (const auto& [i, t] : before) {
    AlignedBuffer buf(t.extent.record_length);
    ExtentRead r{t.extent, buf.span(), Status::Ok(), {}};
    (*reader)->reader().ReadBatch({&r, 1});
    ASSERT_TRUE(r.status.ok()) << Name(i) << ": " << r.status.ToString();
    EXPECT_TRUE(std::equal(r.payload.begin(), r.payload.end(), MakePayload(i, kTensorBytes).begin()));
  }
  // Once the reader has gone, the dead segments go too.
  reader->reset();
  EXPECT_FALSE((*writer)->ReadersPresent());
  auto removal = (*writer)->RemoveDeadSegments();
  ASSERT_TRUE(removal.ok());
  EXPECT_EQ(removal->removed, stats->compacted);
  ExpectLiveTensors(**writer);
}

TEST(CompactionTest, WritersOwnEarlierExtentsStayReadable) {
  TempDir dir;
  WriteHalfDeadStore(dir.path());
  auto store = OpenWith(dir.path(), DefaultFileSystem());
  ASSERT_TRUE(store.ok());
  auto v = (*store)->catalog().Get(Cf::kTensors, TensorKey(testing::kTestModel, Name(1)));
  ASSERT_TRUE(v.ok());
  TensorInfo old = *DecodeTensor(*v);
  auto stats = Compact(**store, CompactOptions{});
  ASSERT_TRUE(stats.ok());
  ASSERT_FALSE(stats->removal.removed.empty());
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("segments/" + SegmentFileName(old.extent.segment))));
  AlignedBuffer buf(old.extent.record_length);
  ExtentRead r{old.extent, buf.span(), Status::Ok(), {}};
  (*store)->reader().ReadBatch({&r, 1});
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(std::equal(r.payload.begin(), r.payload.end(), MakePayload(1, kTensorBytes).begin()));
}

TEST(CompactionTest, CatalogBehindTheSegmentsIsCorruptionAndChangesNothing) {
  TempDir dir;
  WriteHalfDeadStore(dir.path());
  // The segment the last commit wrote to loses its tail: committed data is gone.
  std::string last;
  for (const auto& e : std::filesystem::directory_iterator(dir.Sub("segments"))) last = std::max(last, e.path().string());
  const auto size = std::filesystem::file_size(last);
  std::filesystem::resize_file(last, size - 4096);
  auto store = OpenWith(dir.path(), DefaultFileSystem());
  ASSERT_TRUE(store.status().IsCorruption()) << store.status().ToString();
  EXPECT_NE(store.status().message().find("committed data was lost"), std::string::npos) << store.status().ToString();
  EXPECT_EQ(std::filesystem::file_size(last), size - 4096);
}

// ---- the I/O-fault sweep ----------------------------------------------------------------------------------

constexpr FaultOp kSweptOps[] = {FaultOp::kOpen,   FaultOp::kWrite,   FaultOp::kSync,  FaultOp::kTruncate,
                                 FaultOp::kRename, FaultOp::kRemove, FaultOp::kSyncDir};

const char* OpName(FaultOp op) {
  switch (op) {
    case FaultOp::kOpen: return "open";
    case FaultOp::kWrite: return "write";
    case FaultOp::kSync: return "fsync";
    case FaultOp::kTruncate: return "truncate";
    case FaultOp::kRename: return "rename";
    case FaultOp::kRemove: return "remove";
    case FaultOp::kSyncDir: return "fsync-dir";
    default: return "other";
  }
}

void CopyTree(const std::string& from, const std::string& to) {
  std::filesystem::remove_all(to);
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
}

// For each kind of operation and every k: copies the template store, runs `op` on it with the k-th call of that
// kind failing (EIO), then cuts every file back to what was synced (power loss), reopens without faults and calls
// `check`. Stops a kind when a run completes without reaching its k-th call. Returns the fault points per kind.
std::map<std::string, int> Sweep(const std::string& template_dir, const std::string& work_dir,
                                 const std::function<Status(const std::string& dir, std::shared_ptr<FileSystem> fs)>& op,
                                 const std::function<void(Store& store, const Status& op_status)>& check) {
  std::map<std::string, int> points;
  for (FaultOp kind : kSweptOps) {
    for (int k = 0;; ++k) {
      SCOPED_TRACE(std::string(OpName(kind)) + " #" + std::to_string(k));
      CopyTree(template_dir, work_dir);
      auto fs = std::make_shared<FaultInjectionFileSystem>();
      fs->AddRule({kind, "", EIO, false, k, 1});
      Status s = op(work_dir, fs);
      const bool fired = fs->fired() > 0;
      fs->Crash();
      fs->Restart();
      fs->ClearRules();
      auto store = OpenWith(work_dir, fs);
      if (!store.ok()) {
        ADD_FAILURE() << "reopen after the fault: " << store.status().ToString() << " (the operation said "
                      << s.ToString() << ")";
        return points;
      }
      check(**store, s);
      if (::testing::Test::HasFailure()) return points;
      if (!fired) break;
      ++points[OpName(kind)];
    }
  }
  return points;
}

std::string Describe(const std::map<std::string, int>& points) {
  std::string out;
  int total = 0;
  for (const auto& [name, n] : points) {
    out += (out.empty() ? "" : ", ") + name + " " + std::to_string(n);
    total += n;
  }
  return std::to_string(total) + " fault points (" + out + ")";
}

TEST(FaultSweepTest, Compaction) {
  TempDir dir;
  WriteHalfDeadStore(dir.Sub("template"));
  auto points = Sweep(
      dir.Sub("template"), dir.Sub("work"),
      [](const std::string& d, std::shared_ptr<FileSystem> fs) -> Status {
        ES_ASSIGN_OR_RETURN(auto store, OpenWith(d, fs));
        return Compact(*store, CompactOptions{}).status();
      },
      [](Store& store, const Status&) {
        ExpectLiveTensors(store);
        // What the fault interrupted, a second compaction finishes.
        auto stats = Compact(store, CompactOptions{});
        ASSERT_TRUE(stats.ok()) << stats.status().ToString();
        ExpectLiveTensors(store);
        auto report = store.Verify();
        for (const SegmentSpace& s : report->segments) EXPECT_EQ(s.dead_bytes(), 0u) << "segment " << s.segment;
      });
  EXPECT_GT(points["write"], 0);
  EXPECT_GT(points["remove"], 0);
  std::printf("compaction: %s\n", Describe(points).c_str());
  RecordProperty("fault_points", Describe(points));
}

// A small two-model store: "base" (kept) and "gone" (removed by the rm sweep), from one generated checkpoint.
class ModelSweepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeCheckpointOptions o;  // 2 layers of 8 experts, hidden 64
    auto made = MakeCheckpoint(dir_.Sub("ckpt"), o);
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    auto store = OpenWith(dir_.Sub("template"), DefaultFileSystem());
    ASSERT_TRUE(store.ok());
    for (const char* name : {"base", "gone"}) {
      IngestOptions io;
      io.name = name;
      ASSERT_TRUE(IngestCheckpoint(**store, dir_.Sub("ckpt"), io).ok());
    }
    auto experts = testing::ReadAllExperts(**store, "base");
    ASSERT_TRUE(experts.ok());
    experts_ = std::move(experts).value();
  }

  void ExpectModel(Store& store, const std::string& name) {
    auto info = LoadModelInfo(store.catalog(), name);
    ASSERT_TRUE(info.ok()) << name << ": " << info.status().ToString();
    EXPECT_TRUE(info->complete) << name;
    auto experts = testing::ReadAllExperts(store, name);
    ASSERT_TRUE(experts.ok()) << name << ": " << experts.status().ToString();
    EXPECT_TRUE(*experts == experts_) << name;
  }

  void ExpectClean(Store& store) {
    auto report = store.Verify();
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    for (const auto& c : report->corrupt) ADD_FAILURE() << c.what << ": " << c.message;
  }

  TempDir dir_;
  std::map<std::pair<uint32_t, uint32_t>, std::vector<std::byte>> experts_;
};

TEST_F(ModelSweepTest, Remove) {
  auto points = Sweep(
      dir_.Sub("template"), dir_.Sub("work"),
      [](const std::string& d, std::shared_ptr<FileSystem> fs) -> Status {
        ES_ASSIGN_OR_RETURN(auto store, OpenWith(d, fs));
        return DeleteModel(*store, "gone");
      },
      [&](Store& store, const Status& s) {
        ExpectClean(store);
        ExpectModel(store, "base");
        // Acknowledged: gone. Not acknowledged: all there or all gone, never half.
        auto gone = LoadModelInfo(store.catalog(), "gone");
        if (s.ok()) {
          EXPECT_TRUE(gone.status().IsNotFound()) << gone.status().ToString();
        }
        if (gone.ok()) ExpectModel(store, "gone");
        if (!gone.ok()) {
          std::vector<ExtentRef> refs;
          std::vector<CorruptEntry> bad;
          ASSERT_TRUE(CollectExtents(store.catalog(), "gone", refs, bad).ok());
          EXPECT_TRUE(refs.empty());
        }
      });
  std::printf("rm: %s\n", Describe(points).c_str());
  RecordProperty("fault_points", Describe(points));
}

TEST_F(ModelSweepTest, Ingest) {
  auto points = Sweep(
      dir_.Sub("template"), dir_.Sub("work"),
      [&](const std::string& d, std::shared_ptr<FileSystem> fs) -> Status {
        ES_ASSIGN_OR_RETURN(auto store, OpenWith(d, fs));
        IngestOptions io;
        io.name = "new";
        io.commit_bytes = 16 * 1024;  // several commits, so that a fault can fall between them
        return IngestCheckpoint(*store, dir_.Sub("ckpt"), io).status();
      },
      [&](Store& store, const Status& s) {
        ExpectClean(store);
        ExpectModel(store, "base");
        if (s.ok()) ExpectModel(store, "new");
        // Whatever the fault left, ingesting again completes the model (resumed or from scratch).
        IngestOptions io;
        io.name = "new";
        auto again = IngestCheckpoint(store, dir_.Sub("ckpt"), io);
        ASSERT_TRUE(again.ok()) << again.status().ToString();
        ExpectModel(store, "new");
        ExpectClean(store);
      });
  EXPECT_GT(points["write"], 0);
  std::printf("ingest: %s\n", Describe(points).c_str());
  RecordProperty("fault_points", Describe(points));
}

TEST_F(ModelSweepTest, JournalledMetadata) {
  // A read-only process records usage into its journal; the writer that opens next merges it.
  CatalogBatch batch;
  UsageCounts counts;
  counts.activation_count = 5;
  counts.gate_mass = 1.5;
  batch.Merge(Cf::kUsage, ExpertKey("base", 1, 3), EncodeUsage(counts));
  auto points = Sweep(
      dir_.Sub("template"), dir_.Sub("work"),
      [&](const std::string& d, std::shared_ptr<FileSystem> fs) -> Status {
        ES_ASSIGN_OR_RETURN(auto store, OpenWith(d, fs, /*read_only=*/true));
        ES_RETURN_IF_ERROR(store->WriteMetadata(batch));
        return store->WriteMetadata(batch);
      },
      [&](Store& store, const Status& s) {
        ExpectClean(store);
        ExpectModel(store, "base");
        auto v = store.catalog().Get(Cf::kUsage, ExpertKey("base", 1, 3));
        uint64_t n = 0;
        if (v.ok()) n = DecodeUsage(*v)->activation_count;
        // Whole batches only, and every acknowledged one.
        EXPECT_EQ(n % 5, 0u) << n;
        EXPECT_LE(n, 10u);
        if (s.ok()) {
          EXPECT_EQ(n, 10u);
        }
      });
  EXPECT_GT(points["write"] + points["fsync"], 0);
  std::printf("journalled metadata: %s\n", Describe(points).c_str());
  RecordProperty("fault_points", Describe(points));
}

}  // namespace
}  // namespace es
