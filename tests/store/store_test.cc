// Store: contents against a std::map reference model, reopen, locking, recovery of torn tails, byte-flip
// corruption caught by reads and verify, the usage merge operator.
#include "store/store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <cstdio>
#include <map>
#include <random>
#include <thread>

#include "tests/store/store_test_util.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::MakePayload;
using testing::PutTensor;
using testing::ReadTensor;
using testing::TempDir;

StoreOptions SmallSegments() {
  StoreOptions o;
  o.max_segment_bytes = 1 << 20;  // force many segment rotations
  return o;
}

std::unique_ptr<Store> OpenOrDie(const std::string& path, StoreOptions options = SmallSegments()) {
  auto s = Store::Open(path, options);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

// XORs the byte at `offset` of the file at `path` with `mask` (twice restores it).
void FlipByte(const std::string& path, uint64_t offset, unsigned char mask) {
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char b;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= mask;
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ::close(fd);
}

void ExpectVerifyClean(Store& store) {
  auto report = store.Verify();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  for (const auto& c : report->corrupt) ADD_FAILURE() << c.what << ": " << c.message;
}

// Thousands of random records over many transactions (some aborted, some overwriting names), checked against a
// std::map after every phase and after reopening.
TEST(Store, MatchesReferenceModel) {
  TempDir dir;
  std::map<std::string, std::pair<uint64_t, size_t>> model;  // name -> (seed, size)
  std::mt19937_64 rng(11);
  auto store = OpenOrDie(dir.path());
  ASSERT_TRUE(store);
  uint64_t seed = 0;
  constexpr int kTxns = 150;
  for (int t = 0; t < kTxns; ++t) {
    auto txn = store->BeginWrite();
    ASSERT_TRUE(txn.ok());
    std::map<std::string, std::pair<uint64_t, size_t>> staged;
    int n = 1 + static_cast<int>(rng() % 30);
    for (int i = 0; i < n; ++i) {
      char name_text[16];
      std::snprintf(name_text, sizeof(name_text), "w%u", static_cast<unsigned>(rng() % 3000));
      std::string name = name_text;  // not "w" + std::to_string(...): GCC 12 warns falsely (-Wrestrict)
      size_t size = rng() % 4 == 0 ? rng() % 200000 : rng() % 9000;
      ++seed;
      auto payload = MakePayload(seed, size);
      ASSERT_TRUE(PutTensor(**txn, name, payload).ok());
      staged[name] = {seed, size};
    }
    if (rng() % 5 == 0) {
      ASSERT_TRUE((*txn)->Abort().ok());
    } else {
      ASSERT_TRUE((*txn)->Commit().ok());
      for (auto& [k, v] : staged) model[k] = v;
    }
  }
  ASSERT_GT(model.size(), 1000u);
  auto check = [&](Store& s) {
    for (const auto& [name, sv] : model) {
      auto got = ReadTensor(s, name);
      ASSERT_TRUE(got.ok()) << name << ": " << got.status().ToString();
      ASSERT_EQ(*got, MakePayload(sv.first, sv.second)) << name;
    }
    size_t count = 0;
    ASSERT_TRUE(s.catalog().Scan(Cf::kTensors, "", [&](std::string_view, std::string_view) { return ++count, true; }).ok());
    EXPECT_EQ(count, model.size());
  };
  check(*store);
  store.reset();
  store = OpenOrDie(dir.path());
  ASSERT_TRUE(store);
  check(*store);
  // Overwritten and aborted records leave dead space, never a verify failure.
  ExpectVerifyClean(*store);
  EXPECT_GT(std::distance(std::filesystem::directory_iterator(dir.Sub("segments")), {}), 3);
}

TEST(Store, SecondWriterIsBusyReadersOpen) {
  TempDir dir;
  auto writer = OpenOrDie(dir.path());
  ASSERT_TRUE(writer);
  auto txn = writer->BeginWrite();
  ASSERT_TRUE(txn.ok());
  ASSERT_TRUE(PutTensor(**txn, "a", MakePayload(1, 100)).ok());
  ASSERT_TRUE((*txn)->Commit().ok());

  auto second = Store::Open(dir.path(), StoreOptions{});
  EXPECT_TRUE(second.status().IsBusy()) << second.status().ToString();

  StoreOptions ro;
  ro.read_only = true;
  auto reader = Store::Open(dir.path(), ro);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto got = ReadTensor(**reader, "a");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, MakePayload(1, 100));
  EXPECT_TRUE((*reader)->BeginWrite().status().IsNotSupported());
}

TEST(Store, ReadOnlyOpenOfMissingStoreIsNotFound) {
  TempDir dir;
  StoreOptions ro;
  ro.read_only = true;
  EXPECT_TRUE(Store::Open(dir.Sub("nothing"), ro).status().IsNotFound());
  StoreOptions no_create;
  no_create.create_if_missing = false;
  EXPECT_TRUE(Store::Open(dir.Sub("nothing"), no_create).status().IsNotFound());
}

TEST(Store, DestroyedTransactionRollsBack) {
  TempDir dir;
  auto store = OpenOrDie(dir.path());
  {
    auto txn = store->BeginWrite();
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(PutTensor(**txn, "gone", MakePayload(2, 50000)).ok());
  }
  EXPECT_TRUE(ReadTensor(*store, "gone").status().IsNotFound());
  // The segment the transaction created held nothing committed, so the rollback removed it.
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("segments/000001.seg")));
  ExpectVerifyClean(*store);
  auto txn = store->BeginWrite();
  ASSERT_TRUE(PutTensor(**txn, "kept", MakePayload(3, 100)).ok());
  ASSERT_TRUE((*txn)->Commit().ok());
  EXPECT_EQ(*ReadTensor(*store, "kept"), MakePayload(3, 100));
  ExpectVerifyClean(*store);
}

TEST(Store, RecoveryTruncatesTornTailAndRemovesTmp) {
  TempDir dir;
  {
    auto store = OpenOrDie(dir.path());
    auto txn = store->BeginWrite();
    ASSERT_TRUE(PutTensor(**txn, "keep", MakePayload(3, 10000)).ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  std::string seg = dir.Sub("segments/000001.seg");
  uint64_t good = std::filesystem::file_size(seg);
  {
    // A torn append: garbage past the last referenced record, and a half-published segment.
    int fd = ::open(seg.c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    std::string junk(10000, 'x');
    ASSERT_EQ(::write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
    ::close(fd);
    int tmp = ::open(dir.Sub("segments/000002.seg.tmp").c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(tmp, 0);
    ::close(tmp);
  }
  auto store = OpenOrDie(dir.path());
  EXPECT_EQ(std::filesystem::file_size(seg), good);
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("segments/000002.seg.tmp")));
  ExpectVerifyClean(*store);
  auto txn = store->BeginWrite();
  ASSERT_TRUE(PutTensor(**txn, "next", MakePayload(4, 3000)).ok());
  ASSERT_TRUE((*txn)->Commit().ok());
  EXPECT_EQ(*ReadTensor(*store, "keep"), MakePayload(3, 10000));
  EXPECT_EQ(*ReadTensor(*store, "next"), MakePayload(4, 3000));
  ExpectVerifyClean(*store);
}

// Flip one byte in each region of a record (header, header padding, payload, tail padding) and in the segment
// header: reads say Corruption, verify names the damage, nothing crashes, other records stay readable.
TEST(Store, ByteFlipsAreCorruption) {
  TempDir dir;
  Extent victim;
  {
    auto store = OpenOrDie(dir.path());
    auto txn = store->BeginWrite();
    ASSERT_TRUE(PutTensor(**txn, "before", MakePayload(5, 7000)).ok());
    auto e = PutTensor(**txn, "victim", MakePayload(6, 5000));  // 5000 bytes: 3192 bytes of tail padding
    ASSERT_TRUE(e.ok());
    victim = *e;
    ASSERT_TRUE(PutTensor(**txn, "after", MakePayload(7, 7000)).ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  std::string seg = dir.Sub("segments/000001.seg");
  struct Case {
    const char* region;
    uint64_t offset;
  };
  const Case cases[] = {
      {"record header", victim.offset + 30},
      {"record key", victim.offset + 50},
      {"header padding", victim.offset + 3000},
      {"payload start", victim.offset + kRecordHeaderSize},
      {"payload end", victim.offset + kRecordHeaderSize + 4999},
      {"tail padding", victim.offset + kRecordHeaderSize + 5000 + 100},
      {"last padding byte", victim.end() - 1},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.region);
    auto flip = [&] { FlipByte(seg, c.offset, 0x40); };
    flip();
    {
      StoreOptions ro;
      ro.read_only = true;
      auto store = Store::Open(dir.path(), ro);
      ASSERT_TRUE(store.ok());
      auto got = ReadTensor(**store, "victim");
      EXPECT_TRUE(got.status().IsCorruption()) << got.status().ToString();
      EXPECT_EQ(*ReadTensor(**store, "before"), MakePayload(5, 7000));
      EXPECT_EQ(*ReadTensor(**store, "after"), MakePayload(7, 7000));
      auto report = (*store)->Verify();
      ASSERT_TRUE(report.ok());
      ASSERT_EQ(report->corrupt.size(), 1u);
      EXPECT_NE(report->corrupt[0].what.find("victim"), std::string::npos);
    }
    flip();  // restore
  }
  // The segment's own header.
  {
    int fd = ::open(seg.c_str(), O_RDWR);
    unsigned char b = 0x55;
    ASSERT_EQ(::pwrite(fd, &b, 1, 200), 1);
    ::close(fd);
    StoreOptions ro;
    ro.read_only = true;
    auto store = Store::Open(dir.path(), ro);
    ASSERT_TRUE(store.ok());
    auto report = (*store)->Verify();
    ASSERT_TRUE(report.ok());
    EXPECT_FALSE(report->ok());
    bool named = false;
    for (const auto& c : report->corrupt) named = named || c.what.find("segment") != std::string::npos;
    EXPECT_TRUE(named);
  }
}

// Records larger than verify's buffer (64 MiB) are checked in pieces: still every byte, with the same verdicts.
TEST(Store, VerifyStreamsRecordsLargerThanItsBuffer) {
  TempDir dir;
  constexpr size_t kLarge = (64u << 20) + 5000;  // two pieces, the second ending in 3192 bytes of padding
  Extent large;
  {
    auto store = OpenOrDie(dir.path(), StoreOptions{});
    auto txn = store->BeginWrite();
    ASSERT_TRUE(PutTensor(**txn, "small", MakePayload(1, 7000)).ok());
    auto e = PutTensor(**txn, "large", MakePayload(2, kLarge));
    ASSERT_TRUE(e.ok());
    large = *e;
    ASSERT_TRUE((*txn)->Commit().ok());
    ExpectVerifyClean(*store);
  }
  std::string seg = dir.Sub("segments/000001.seg");
  const uint64_t cases[] = {large.offset + 40,                                  // header
                            large.offset + kRecordHeaderSize + (40u << 20),     // first piece's payload
                            large.offset + kRecordHeaderSize + kLarge - 1,      // second piece's payload
                            large.offset + kRecordHeaderSize + kLarge + 100};   // tail padding
  for (uint64_t offset : cases) {
    SCOPED_TRACE(offset);
    auto flip = [&] { FlipByte(seg, offset, 0x08); };
    flip();
    {
      StoreOptions ro;
      ro.read_only = true;
      auto store = Store::Open(dir.path(), ro);
      ASSERT_TRUE(store.ok());
      auto report = (*store)->Verify();
      ASSERT_TRUE(report.ok());
      ASSERT_EQ(report->corrupt.size(), 1u);
      EXPECT_NE(report->corrupt[0].what.find("large"), std::string::npos);
      EXPECT_EQ(report->checked, 3u);  // the two tensors and the commit's catalog-log record
    }
    flip();  // restore
  }
}

TEST(Store, VerifyCatchesBadCatalogEntries) {
  TempDir dir;
  auto store = OpenOrDie(dir.path());
  Extent e;
  {
    auto txn = store->BeginWrite();
    auto r = PutTensor(**txn, "real", MakePayload(8, 9000));
    ASSERT_TRUE(r.ok());
    e = *r;
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  ExpectVerifyClean(*store);
  auto put = [&](const std::string& name, Extent x) {
    CatalogBatch b;
    b.Put(Cf::kTensors, TensorKey(testing::kTestModel, name), EncodeTensor(TensorInfo{name, DType::kU8, {1}, x, ""}));
    ASSERT_TRUE(store->catalog().Write(b).ok());
  };
  Extent past_end = e;
  past_end.offset += 1 << 20;
  put("past-end", past_end);
  Extent missing = e;
  missing.segment = 99;
  put("missing-segment", missing);
  Extent overlapping = e;  // the same extent claimed by a second key: its header names the other key
  put("alias", overlapping);
  CatalogBatch b;
  b.Put(Cf::kTensors, TensorKey(testing::kTestModel, "garbage"), "not a flatbuffer");
  ASSERT_TRUE(store->catalog().Write(b).ok());
  auto report = store->Verify();
  ASSERT_TRUE(report.ok());
  std::set<std::string> bad;
  for (const auto& c : report->corrupt) bad.insert(c.what);
  for (const char* name : {"past-end", "missing-segment", "alias", "garbage"}) {
    bool found = false;
    for (const auto& w : bad) found = found || w.find(name) != std::string::npos;
    EXPECT_TRUE(found) << name << " not reported";
  }
}

TEST(Store, UsageMergeNeverLosesCounts) {
  TempDir dir;
  auto store = OpenOrDie(dir.path());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        UsageCounts u;
        u.activation_count = 1;
        u.gate_mass = 0.5;
        u.last_used_unix_ms = static_cast<uint64_t>(t * 1000 + i);
        u.coactivations = {{1, static_cast<uint32_t>(i % 3), 1}};
        CatalogBatch b;
        b.Merge(Cf::kUsage, ExpertKey("m", 0, 7), EncodeUsage(u));
        EXPECT_TRUE(store->catalog().Write(b, /*sync=*/false).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  auto v = store->catalog().Get(Cf::kUsage, ExpertKey("m", 0, 7));
  ASSERT_TRUE(v.ok());
  auto u = DecodeUsage(*v);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->activation_count, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_DOUBLE_EQ(u->gate_mass, 0.5 * kThreads * kPerThread);
  EXPECT_EQ(u->last_used_unix_ms, static_cast<uint64_t>((kThreads - 1) * 1000 + kPerThread - 1));
  uint64_t co = 0;
  for (const auto& c : u->coactivations) co += c.count;
  EXPECT_EQ(co, static_cast<uint64_t>(kThreads * kPerThread));
  // A damaged operand surfaces as Corruption on read, not as silently wrong counts.
  CatalogBatch bad;
  bad.Merge(Cf::kUsage, ExpertKey("m", 0, 7), "junk");
  ASSERT_TRUE(store->catalog().Write(bad).ok());
  EXPECT_TRUE(store->catalog().Get(Cf::kUsage, ExpertKey("m", 0, 7)).status().IsCorruption());
}

TEST(Store, ZeroLengthRecords) {
  TempDir dir;
  auto store = OpenOrDie(dir.path());
  auto txn = store->BeginWrite();
  ASSERT_TRUE(PutTensor(**txn, "empty", {}).ok());
  ASSERT_TRUE((*txn)->Commit().ok());
  auto got = ReadTensor(*store, "empty");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(got->empty());
  ExpectVerifyClean(*store);
}

TEST(Store, StreamedRecordMustMatchDeclaredLength) {
  TempDir dir;
  auto store = OpenOrDie(dir.path());
  auto txn = store->BeginWrite();
  ASSERT_TRUE((*txn)->BeginRecord(RecordKind::kTensor, "k", 100).ok());
  auto payload = MakePayload(9, 60);
  ASSERT_TRUE((*txn)->WritePayload(payload).ok());
  EXPECT_TRUE((*txn)->FinishRecord().status().IsInvalidArgument());
  EXPECT_FALSE((*txn)->Commit().ok());
  ExpectVerifyClean(*store);
}

}  // namespace
}  // namespace es
