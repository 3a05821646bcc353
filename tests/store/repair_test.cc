// repair rebuilds the catalog from the segments' catalog log: the models, dense tensors and experts exactly as the
// catalog held them after removals, replacements and compaction; the metadata the old catalog still holds; and a
// record that fails its checks drops its entry and marks its model incomplete. A store without a catalog log is
// refused and left as it was.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "store/compaction.h"
#include "store/repair.h"
#include "store/store.h"
#include "tests/store/store_test_util.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

namespace fs = std::filesystem;
using testing::MakePayload;

constexpr size_t kPayloadBytes = 6000;

// Writes (or rewrites) model `name`: a model record, two dense tensors, `experts` experts of layer 0, one asset, and a
// usage count for each expert.
void WriteModel(Store& store, const std::string& name, uint32_t experts, uint64_t seed) {
  auto txn = store.BeginWrite();
  ASSERT_TRUE(txn.ok());
  ModelInfo model;
  model.name = name;
  model.arch = "test";
  model.num_layers = 1;
  model.experts_per_layer = experts;
  model.num_experts = experts;
  model.num_dense_tensors = 2;
  model.complete = true;
  for (int t = 0; t < 2; ++t) {
    const std::string tensor = "dense." + std::to_string(t);
    auto payload = MakePayload(seed + t, kPayloadBytes);
    auto e = (*txn)->AppendRecord(RecordKind::kTensor, TensorKey(name, tensor), payload);
    ASSERT_TRUE(e.ok());
    TensorInfo info{tensor, DType::kU8, {kPayloadBytes}, *e, ""};
    (*txn)->batch().Put(Cf::kTensors, TensorKey(name, tensor), EncodeTensor(info));
  }
  for (uint32_t x = 0; x < experts; ++x) {
    auto payload = MakePayload(seed + 100 + x, kPayloadBytes);
    auto e = (*txn)->AppendRecord(RecordKind::kExpert, ExpertKey(name, 0, x), payload);
    ASSERT_TRUE(e.ok());
    ExpertInfo info;
    info.layer = 0;
    info.expert = x;
    info.extent = *e;
    info.projections.push_back({"gate", "w", DType::kU8, {kPayloadBytes}, 0, kPayloadBytes});
    (*txn)->batch().Put(Cf::kExperts, ExpertKey(name, 0, x), EncodeExpert(info));
  }
  const std::string text = "{\"model\": \"" + name + "\"}";
  auto asset = (*txn)->AppendRecord(RecordKind::kAsset, AssetRecordKey(name, "config.json"),
                                    std::as_bytes(std::span(text)));
  ASSERT_TRUE(asset.ok());
  model.assets.push_back({"config.json", *asset});
  (*txn)->batch().Put(Cf::kModels, ModelKey(name), EncodeModel(model));
  ASSERT_TRUE((*txn)->Commit().ok());
  CatalogBatch usage;
  for (uint32_t x = 0; x < experts; ++x) {
    UsageCounts u;
    u.activation_count = seed + x;
    usage.Merge(Cf::kUsage, ExpertKey(name, 0, x), EncodeUsage(u));
  }
  ASSERT_TRUE(store.WriteMetadata(usage).ok());
}

using Dump = std::map<std::string, std::map<std::string, std::string>>;  // column family -> key -> value

Dump DumpCatalog(const std::string& path) {
  Dump dump;
  StoreOptions ro;
  ro.read_only = true;
  auto store = Store::Open(path, ro);
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  if (!store.ok()) return dump;
  for (Cf cf : {Cf::kModels, Cf::kTensors, Cf::kExperts, Cf::kUsage}) {
    EXPECT_TRUE((*store)->catalog().Scan(cf, "", [&](std::string_view k, std::string_view v) {
      dump[std::string(CfName(cf))][std::string(k)] = v;
      return true;
    }).ok());
  }
  return dump;
}

// A store with a history: model a removed, model b written twice (replaced), compaction, then model c.
void MakeStore(const std::string& path) {
  auto store = Store::Open(path, StoreOptions{});
  ASSERT_TRUE(store.ok());
  WriteModel(**store, "a", 4, 10);
  WriteModel(**store, "b", 3, 20);
  ASSERT_TRUE(DeleteModel(**store, "a").ok());
  {
    auto txn = (*store)->BeginWrite();
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(StageModelDeletion((*store)->catalog(), "b", (*txn)->batch()).ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  WriteModel(**store, "b", 5, 30);
  CompactOptions all;
  all.max_dead_fraction = 0;
  auto compacted = Compact(**store, all);
  ASSERT_TRUE(compacted.ok()) << compacted.status().ToString();
  EXPECT_TRUE(compacted->log_snapshot);
  WriteModel(**store, "c", 2, 40);
}

// Overwrites one byte of the segment file holding `e`, `at` bytes into its record.
void PokeByte(const std::string& path, const Extent& e, uint64_t at, char byte) {
  std::fstream f(path + "/segments/" + SegmentFileName(e.segment), std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(e.offset + at));
  f.put(byte);
}

// The store opens as a writer (its recovery) and verifies clean.
void ExpectOpensAndVerifies(const std::string& path) {
  auto store = Store::Open(path, StoreOptions{});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto verify = (*store)->Verify();
  ASSERT_TRUE(verify.ok());
  EXPECT_TRUE(verify->ok());
}

TEST(RepairTest, RebuildsTheCatalogAsItWasAndKeepsItsMetadata) {
  testing::TempDir dir;
  const std::string path = dir.Sub("s");
  MakeStore(path);
  const Dump before = DumpCatalog(path);
  ASSERT_EQ(before.at("models").size(), 2u);  // b and c
  ASSERT_EQ(before.at("experts").size(), 7u);

  auto report = RepairStore(path);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->problems.empty()) << report->problems.front();
  EXPECT_GT(report->snapshot_sequence, 0u);  // compaction's snapshot, then c's commit
  EXPECT_EQ(report->log_records, 2u);
  ASSERT_EQ(report->models.size(), 2u);
  EXPECT_EQ(report->models[0].name, "b");
  EXPECT_EQ(report->models[0].experts, 5u);
  EXPECT_TRUE(report->models[1].complete);
  EXPECT_TRUE(report->metadata_error.empty()) << report->metadata_error;
  EXPECT_EQ(report->metadata_entries, 7u);
  EXPECT_TRUE(fs::exists(report->old_catalog));
  EXPECT_TRUE(DumpCatalog(path) == before);
  {
    auto store = Store::Open(path, StoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    auto verify = (*store)->Verify();
    ASSERT_TRUE(verify.ok());
    EXPECT_TRUE(verify->ok());
    // Writing goes on after a repair, and a second repair finds the same history.
    WriteModel(**store, "d", 1, 50);
  }
  const Dump later = DumpCatalog(path);
  ASSERT_TRUE(RepairStore(path).ok());
  EXPECT_TRUE(DumpCatalog(path) == later);
}

TEST(RepairTest, ALostCatalogComesBackWithoutItsMetadata) {
  testing::TempDir dir;
  const std::string path = dir.Sub("s");
  MakeStore(path);
  Dump before = DumpCatalog(path);
  fs::remove_all(path + "/catalog");
  auto report = RepairStore(path);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_FALSE(report->metadata_error.empty());
  EXPECT_TRUE(report->old_catalog.empty());
  before.erase("usage");
  Dump after = DumpCatalog(path);
  after.erase("usage");
  EXPECT_TRUE(after == before);
}

TEST(RepairTest, ADamagedRecordDropsItsEntryAndMarksTheModelIncomplete) {
  testing::TempDir dir;
  const std::string path = dir.Sub("s");
  MakeStore(path);
  Dump before = DumpCatalog(path);
  auto c1 = DecodeExpert(before["experts"].at(ExpertKey("c", 0, 1)));
  ASSERT_TRUE(c1.ok());
  PokeByte(path, c1->extent, kRecordHeaderSize + 17, '\x7f');
  fs::remove_all(path + "/catalog");
  auto report = RepairStore(path);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->models.size(), 2u);
  const RepairedModel& b = report->models[0];
  const RepairedModel& c = report->models[1];
  EXPECT_TRUE(b.complete);
  EXPECT_TRUE(b.dropped.empty());
  EXPECT_FALSE(c.complete);
  EXPECT_EQ(c.experts, 1u);
  ASSERT_EQ(c.dropped.size(), 1u);
  EXPECT_NE(c.dropped[0].find("expert c/0/1"), std::string::npos) << c.dropped[0];
  Dump after = DumpCatalog(path);
  EXPECT_FALSE(after["experts"].contains(ExpertKey("c", 0, 1)));
  EXPECT_EQ(after["experts"].size(), before["experts"].size() - 1);
  auto model = DecodeModel(after["models"].at("c"));
  ASSERT_TRUE(model.ok());
  EXPECT_FALSE(model->complete);
  ExpectOpensAndVerifies(path);
}

TEST(RepairTest, ADamagedHeaderIsSkippedOver) {
  testing::TempDir dir;
  const std::string path = dir.Sub("s");
  MakeStore(path);
  Dump before = DumpCatalog(path);
  // The header of c's first dense tensor: the scan resynchronises at the next record.
  auto dense = DecodeTensor(before["tensors"].at(TensorKey("c", "dense.0")));
  ASSERT_TRUE(dense.ok());
  PokeByte(path, dense->extent, 100, '\x01');
  auto report = RepairStore(path);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->damaged_bytes, dense->extent.record_length);
  ASSERT_EQ(report->models.size(), 2u);
  EXPECT_EQ(report->models[1].tensors, 1u);
  EXPECT_EQ(report->models[1].experts, 2u);  // the records after the damaged one were found
  EXPECT_TRUE(report->models[0].complete);
}

// The commit whose catalog-log record is damaged is lost, and said so; the commits before it are intact.
TEST(RepairTest, ADamagedLogRecordLosesItsCommitAndSaysSo) {
  testing::TempDir dir;
  const std::string path = dir.Sub("s");
  MakeStore(path);
  Extent last;
  {
    StoreOptions ro;
    ro.read_only = true;
    auto store = Store::Open(path, ro);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->catalog().Scan(Cf::kMeta, kCatalogLogKeyPrefix, [&](std::string_view, std::string_view v) {
      last = *DecodeCatalogLogRef(v);
      return true;
    }).ok());
  }
  PokeByte(path, last, kRecordHeaderSize + 40, '\x55');  // c's commit, the last: a byte of its payload
  fs::remove_all(path + "/catalog");
  auto report = RepairStore(path);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_FALSE(report->problems.empty());
  EXPECT_NE(report->problems[0].find("is damaged"), std::string::npos) << report->problems[0];
  ASSERT_EQ(report->models.size(), 1u);
  EXPECT_EQ(report->models[0].name, "b");
  EXPECT_TRUE(report->models[0].complete);
  ExpectOpensAndVerifies(path);
}

// A repair killed between moving the old catalog aside and moving the new one in: the next repair finishes the move
// first, so the metadata the new catalog carries is kept.
TEST(RepairTest, ARepairKilledBetweenItsRenamesIsFinishedByTheNext) {
  testing::TempDir dir;
  const std::string path = dir.Sub("s");
  MakeStore(path);
  const Dump before = DumpCatalog(path);
  ASSERT_TRUE(RepairStore(path).ok());
  fs::rename(path + "/catalog", path + "/catalog.repair");
  std::ofstream(path + "/catalog.repair/REPAIR-DONE").close();
  auto report = RepairStore(path);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->metadata_error.empty()) << report->metadata_error;
  EXPECT_EQ(report->metadata_entries, 7u);
  EXPECT_TRUE(DumpCatalog(path) == before);
  EXPECT_FALSE(fs::exists(path + "/catalog/REPAIR-DONE"));
}

TEST(RepairTest, AStoreWithoutACatalogLogIsRefusedAndLeftAlone) {
  testing::TempDir dir;
  const std::string path = dir.Sub("v1");
  fs::copy(ES_SOURCE_DIR "/tests/store/fixtures/v1_store", path, fs::copy_options::recursive);
  fs::remove_all(path + "/catalog");
  const auto size = fs::file_size(path + "/segments/000001.seg");
  auto report = RepairStore(path);
  ASSERT_FALSE(report.ok());
  EXPECT_TRUE(report.status().IsNotSupported()) << report.status().ToString();
  EXPECT_EQ(fs::file_size(path + "/segments/000001.seg"), size);
  EXPECT_FALSE(fs::exists(path + "/catalog"));
}

TEST(RepairTest, RefusedWhileAWriterHasTheStore) {
  testing::TempDir dir;
  const std::string path = dir.Sub("s");
  auto store = Store::Open(path, StoreOptions{});
  ASSERT_TRUE(store.ok());
  WriteModel(**store, "a", 1, 1);
  auto report = RepairStore(path);
  ASSERT_FALSE(report.ok());
  EXPECT_TRUE(report.status().IsBusy()) << report.status().ToString();
}

}  // namespace
}  // namespace es
