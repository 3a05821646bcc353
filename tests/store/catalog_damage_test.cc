// Damage to the catalog never loses data silently. A byte flipped anywhere in any catalog file (write-ahead log,
// table files, MANIFEST, CURRENT, OPTIONS), of a store closed cleanly or of one whose writer died without closing:
// opening the store either fails with an error and leaves every segment byte in place, or opens with every
// acknowledged record readable and identical. A catalog that is missing entirely is an error too, never a new
// empty store over the old segments. Whatever the damage, `repair` rebuilds the catalog from the segments' catalog
// log with every acknowledged record, keeping the metadata its old catalog still holds.
#include <gtest/gtest.h>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "store/compaction.h"
#include "store/repair.h"
#include "store/store.h"
#include "tests/store/crash_writer_runner.h"
#include "tests/store/store_test_util.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

namespace fs = std::filesystem;
using testing::MakePayload;
using testing::PutTensor;
using testing::ReadTensor;

constexpr int kTransactions = 4;
constexpr int kTensorsPerTransaction = 6;
constexpr size_t kPayloadBytes = 5000;
// How long the crashed store's writer runs after its first acknowledgement.
constexpr std::chrono::milliseconds kCrashWriterRun{150};

// name -> (payload seed, size), as store_crash_writer acknowledges them.
using Records = std::map<std::string, std::pair<uint64_t, size_t>>;

// A store closed cleanly: written here, its Store destroyed normally.
Records MakeClosedStore(const std::string& path) {
  Records records;
  StoreOptions o;
  o.create_if_missing = true;
  auto store = Store::Open(path, o);
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  if (!store.ok()) return records;
  uint64_t seed = 1;
  for (int t = 0; t < kTransactions; ++t) {
    auto txn = (*store)->BeginWrite();
    EXPECT_TRUE(txn.ok());
    if (!txn.ok()) return records;
    Records staged;
    for (int i = 0; i < kTensorsPerTransaction; ++i, ++seed) {
      const std::string name = "k" + std::to_string(seed);
      EXPECT_TRUE(PutTensor(**txn, name, MakePayload(seed, kPayloadBytes)).ok());
      staged[name] = {seed, kPayloadBytes};
    }
    EXPECT_TRUE((*txn)->Commit().ok());
    records.insert(staged.begin(), staged.end());
  }
  return records;
}

// A store whose writer was SIGKILLed mid-stream (store_crash_writer): its catalog is still in the log.
Records MakeCrashedStore(const std::string& path) {
  StoreOptions o;
  o.create_if_missing = true;
  EXPECT_TRUE(Store::Open(path, o).ok());  // the writer opens an existing store
  Records records;
  testing::ParseAcks(testing::RunAndKill(path, /*first_seed=*/1, kCrashWriterRun), records);
  return records;
}

std::map<std::string, uint64_t> SegmentSizes(const std::string& store) {
  std::map<std::string, uint64_t> sizes;
  for (const auto& e : fs::directory_iterator(store + "/segments")) sizes[e.path().filename()] = e.file_size();
  return sizes;
}

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x40);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// Opens the damaged copy as a writer (which runs recovery); checks the outcome. Returns whether it opened. A store
// that fails to open keeps every segment byte; one that opens may only have dropped what recovery drops from the
// undamaged store (`recovered`: the unacknowledged tail a killed writer left).
bool CheckOpen(const std::string& path, const Records& records, const std::map<std::string, uint64_t>& recovered,
               const std::string& what) {
  SCOPED_TRACE(what);
  const auto before = SegmentSizes(path);
  bool opened = false;
  {
    auto store = Store::Open(path, StoreOptions{});
    if (store.ok()) {
      opened = true;
      for (const auto& [name, sv] : records) {
        auto read = ReadTensor(**store, name);
        if (!read.ok()) {
          // A read error names the damage; that is not silent. A missing record is.
          EXPECT_FALSE(read.status().IsNotFound()) << "an acknowledged record vanished: " << read.status().ToString();
          continue;
        }
        EXPECT_EQ(*read, MakePayload(sv.first, sv.second)) << name;
      }
    } else {
      EXPECT_FALSE(store.status().IsNotFound()) << store.status().ToString();
    }
  }
  EXPECT_EQ(SegmentSizes(path), opened ? recovered : before) << "segment data was truncated or removed";
  return opened;
}

// Repairs the store and checks that it opens with every acknowledged record readable and identical, and verifies.
void CheckRepair(const std::string& path, const Records& records, const std::string& what) {
  SCOPED_TRACE(what + ", repaired");
  auto report = RepairStore(path);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  auto store = Store::Open(path, StoreOptions{});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  for (const auto& [name, sv] : records) {
    auto read = ReadTensor(**store, name);
    ASSERT_TRUE(read.ok()) << name << ": " << read.status().ToString();
    EXPECT_EQ(*read, MakePayload(sv.first, sv.second)) << name;
  }
  auto verify = (*store)->Verify();
  ASSERT_TRUE(verify.ok());
  for (const auto& c : verify->corrupt) ADD_FAILURE() << c.what << ": " << c.message;
}

class CatalogDamageTest : public ::testing::TestWithParam<bool> {};

TEST_P(CatalogDamageTest, AFlippedByteInAnyCatalogFileIsAnErrorOrHarmless) {
  const bool crash = GetParam();
  testing::TempDir dir;
  const std::string pristine = dir.Sub("pristine");
  const Records records = crash ? MakeCrashedStore(pristine) : MakeClosedStore(pristine);
  ASSERT_FALSE(records.empty());
  // What recovery makes of the undamaged store.
  fs::copy(pristine, dir.Sub("undamaged"), fs::copy_options::recursive);
  {
    auto store = Store::Open(dir.Sub("undamaged"), StoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    for (const auto& [name, sv] : records) {
      ASSERT_TRUE(ReadTensor(**store, name).ok()) << name;
    }
  }
  const auto recovered = SegmentSizes(dir.Sub("undamaged"));
  std::set<std::string> kinds_damaged;
  int cases = 0, refused = 0, repaired = 0;
  for (const auto& e : fs::directory_iterator(pristine + "/catalog")) {
    const std::string name = e.path().filename();
    if (name == "LOCK" || name.starts_with("LOG") || e.file_size() == 0) continue;
    const uint64_t size = e.file_size();
    for (uint64_t offset : std::set<uint64_t>{0, size / 3, size / 2, size - 1}) {
      const std::string copy = dir.Sub("case" + std::to_string(cases++));
      fs::copy(pristine, copy, fs::copy_options::recursive);
      FlipByte(copy + "/catalog/" + name, offset);
      if (!CheckOpen(copy, records, recovered, name + " @" + std::to_string(offset))) ++refused;
      const bool failed_before = HasFailure();
      CheckRepair(copy, records, name + " @" + std::to_string(offset));
      if (!failed_before && !HasFailure()) ++repaired;
      kinds_damaged.insert(name.substr(name.find_last_of('.') + 1));
      fs::remove_all(copy);
    }
  }
  // The log holds the catalog after a crash; after a clean close it is flushed into table files.
  EXPECT_EQ(kinds_damaged.count("log") > 0, crash);
  if (!crash) {
    EXPECT_GT(kinds_damaged.count("sst"), 0u);
  }
  EXPECT_GT(refused, 0);
  std::printf("%s store: %d damaged copies, %d refused to open, the rest opened intact; repair restored every "
              "acknowledged record in %d\n", crash ? "crashed" : "closed", cases, refused, repaired);
  EXPECT_EQ(repaired, cases);
}

INSTANTIATE_TEST_SUITE_P(ClosedAndCrashed, CatalogDamageTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Crashed" : "Closed"; });

// A writer that closes cleanly leaves the write-ahead log empty: the catalog lives in checksummed table files.
TEST(CatalogDamage, CleanCloseFlushesTheLog) {
  testing::TempDir dir;
  MakeClosedStore(dir.Sub("s"));
  for (const auto& e : fs::directory_iterator(dir.Sub("s/catalog"))) {
    if (e.path().extension() == ".log") {
      EXPECT_EQ(e.file_size(), 0u) << e.path();
    }
  }
}

// A missing catalog (or CURRENT file) beside segments that hold records is an error; nothing is truncated.
TEST(CatalogDamage, ALostCatalogIsAnErrorNotANewStore) {
  testing::TempDir dir;
  MakeClosedStore(dir.Sub("s"));
  const auto before = SegmentSizes(dir.Sub("s"));
  fs::copy(dir.Sub("s"), dir.Sub("no-current"), fs::copy_options::recursive);
  fs::remove(dir.Sub("no-current/catalog/CURRENT"));
  fs::remove_all(dir.Sub("s/catalog"));
  StoreOptions create;
  create.create_if_missing = true;  // as ingest opens it
  for (const char* name : {"s", "no-current"}) {
    SCOPED_TRACE(name);
    auto store = Store::Open(dir.Sub(name), create);
    ASSERT_FALSE(store.ok());
    EXPECT_FALSE(store.status().IsNotFound()) << store.status().ToString();
    EXPECT_EQ(SegmentSizes(dir.Sub(name)), before);
  }
  auto lost = Store::Open(dir.Sub("s"), create);
  EXPECT_TRUE(lost.status().IsCorruption()) << lost.status().ToString();
  EXPECT_NE(lost.status().message().find("the catalog was lost"), std::string::npos);
}

}  // namespace
}  // namespace es
