// A store written by format version 1 and committed (tests/store/fixtures/v1_store: a 2-layer, 4-expert random
// Qwen3-MoE checkpoint from make-checkpoint --seed 7, ingested as "fixture"). Today's code must read it as it was
// written: the catalog's keys and FlatBuffers records, the segment and record headers, every checksum. A change to
// an encoder and its decoder together passes the round-trip tests but fails here. A writer upgrades it to version 2
// (a catalog-log snapshot appended) without touching what was there. A store of a newer version is refused, and
// nothing in it is changed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "store/records.h"
#include "store/store.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

namespace fs = std::filesystem;

constexpr char kFixture[] = ES_SOURCE_DIR "/tests/store/fixtures/v1_store";
constexpr char kSegment[] = "/segments/000001.seg";

// A writable copy: a writer's recovery may write, and the committed fixture must stay as it is.
std::string CopyOf(const testing::TempDir& dir) {
  const std::string copy = dir.Sub("store");
  fs::copy(kFixture, copy, fs::copy_options::recursive);
  return copy;
}

TEST(StoreFixtureTest, VersionOneReadsAsWritten) {
  testing::TempDir dir;
  const std::string path = CopyOf(dir);
  const uint64_t segment_bytes = fs::file_size(path + kSegment);
  StoreOptions read_only;
  read_only.read_only = true;
  auto store = Store::Open(path, read_only);
  ASSERT_TRUE(store.ok()) << store.status().ToString();

  auto models = (*store)->ListModels();
  ASSERT_TRUE(models.ok());
  ASSERT_EQ(models->size(), 1u);
  const ModelInfo& m = (*models)[0];
  EXPECT_EQ(m.name, "fixture");
  EXPECT_EQ(m.arch, "qwen3_moe");
  EXPECT_EQ(m.num_layers, 2u);
  EXPECT_EQ(m.experts_per_layer, 4u);
  EXPECT_EQ(m.top_k, 2u);
  EXPECT_EQ(m.hidden_size, 64u);
  EXPECT_EQ(m.moe_intermediate_size, 32u);
  EXPECT_EQ(m.vocab_size, 300u);
  EXPECT_EQ(m.num_experts, 8u);
  EXPECT_EQ(m.num_dense_tensors, 21u);
  EXPECT_EQ(m.total_bytes, 228873u);
  EXPECT_EQ(m.source_fingerprint, "9aad64fb26a8d239");
  EXPECT_TRUE(m.complete);
  ASSERT_EQ(m.assets.size(), 1u);
  EXPECT_EQ(m.assets[0].name, "tokenizer.json");

  auto value = (*store)->catalog().Get(Cf::kExperts, ExpertKey("fixture", 1, 3));
  ASSERT_TRUE(value.ok()) << value.status().ToString();
  auto expert = DecodeExpert(*value);
  ASSERT_TRUE(expert.ok());
  EXPECT_EQ(expert->extent.segment, 1u);
  EXPECT_EQ(expert->extent.offset, 335872u);
  EXPECT_EQ(expert->extent.record_length, 16384u);
  EXPECT_EQ(expert->extent.payload_length, 12288u);
  EXPECT_EQ(expert->extent.checksum, 0xefb39a12446dcdfdull);
  ASSERT_EQ(expert->projections.size(), 3u);
  const char* roles[] = {"gate", "up", "down"};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(expert->projections[i].role, roles[i]);
    EXPECT_EQ(expert->projections[i].dtype, DType::kBF16);
    EXPECT_EQ(expert->projections[i].offset, 4096 * i);
    EXPECT_EQ(expert->projections[i].length, 4096u);
  }
  EXPECT_EQ(expert->projections[0].shape, (std::vector<uint64_t>{32, 64}));
  EXPECT_EQ(expert->projections[2].shape, (std::vector<uint64_t>{64, 32}));

  // Every extent: headers, lengths and payload checksums.
  auto report = (*store)->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  EXPECT_EQ(report->checked, 8u + 21u + 1u);  // experts, dense tensors, the asset
  store->reset();

  // A writer's recovery finds nothing to truncate: the catalog references the whole segment. The writer upgrades
  // the store to version 2: one catalog-log snapshot appended after the version-1 records, which stay as they were.
  std::string before(segment_bytes, '\0');
  std::ifstream(path + kSegment, std::ios::binary).read(before.data(), segment_bytes);
  auto writer = Store::Open(path, StoreOptions{});
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  auto version = (*writer)->catalog().Get(Cf::kMeta, "format_version");
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(*version, "2");
  auto log_records = (*writer)->CatalogLogRecords();
  ASSERT_TRUE(log_records.ok());
  EXPECT_EQ(*log_records, 1u);
  auto upgraded = (*writer)->Verify();
  ASSERT_TRUE(upgraded.ok());
  EXPECT_TRUE(upgraded->ok());
  EXPECT_EQ(upgraded->checked, 8u + 21u + 1u + 1u);  // and the snapshot
  writer->reset();
  std::string after(segment_bytes, '\0');
  std::ifstream(path + kSegment, std::ios::binary).read(after.data(), segment_bytes);
  EXPECT_TRUE(before == after);
  EXPECT_GT(fs::file_size(path + kSegment), segment_bytes);

  // The segment's first bytes are the header as docs/segment_format.md describes it.
  std::ifstream seg(path + kSegment, std::ios::binary);
  char magic[8];
  seg.read(magic, sizeof(magic));
  EXPECT_EQ(std::string(magic, 8), "ESSEGFIL");
  seg.seekg(4096);
  seg.read(magic, sizeof(magic));
  EXPECT_EQ(std::string(magic, 8), "ESSEGREC");
}

TEST(StoreFixtureTest, ANewerFormatIsRefusedAndLeftAlone) {
  testing::TempDir dir;
  const std::string path = CopyOf(dir);
  {
    auto store = Store::Open(path, StoreOptions{});
    ASSERT_TRUE(store.ok());
    CatalogBatch batch;
    batch.Put(Cf::kMeta, "format_version", "3");
    ASSERT_TRUE((*store)->catalog().Write(batch).ok());
  }
  const uint64_t segment_bytes = fs::file_size(path + kSegment);
  for (bool read_only : {true, false}) {
    StoreOptions o;
    o.read_only = read_only;
    auto store = Store::Open(path, o);
    ASSERT_FALSE(store.ok());
    EXPECT_TRUE(store.status().IsNotSupported()) << store.status().ToString();
    EXPECT_NE(store.status().message().find("format version 3; this build reads 1 and 2"), std::string::npos)
        << store.status().ToString();
  }
  EXPECT_EQ(fs::file_size(path + kSegment), segment_bytes);
}

}  // namespace
}  // namespace es
