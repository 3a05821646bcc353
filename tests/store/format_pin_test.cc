// The on-disk formats pinned against their documentation (docs/segment_format.md, docs/catalog_schema.md), not
// against the code that writes them: header blocks and keys are built here byte by byte from the documented
// layout, with the checksum computed by libxxhash directly, and the encoders must produce exactly those bytes and
// the decoders accept them. A change made consistently to an encoder and its decoder fails here.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <string>
#include <vector>

#include "store/base/aligned_buffer.h"
#include "store/base/checksum.h"
#include "store/records.h"
#include "store/segment_format.h"

namespace es {
namespace {

constexpr size_t kBlock = 4096;

void PutLe(std::vector<uint8_t>& b, size_t at, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

// The documented header block: magic at 0 as ASCII, XXH3-64 (seed 0) of [16, 4096) at 8, version 1 at 16.
std::vector<uint8_t> HeaderBlock(const char (&magic)[9], const std::vector<std::pair<size_t, std::pair<uint64_t, size_t>>>& fields,
                                 const std::string& key_at_48 = "") {
  std::vector<uint8_t> b(kBlock, 0);
  std::memcpy(b.data(), magic, 8);
  PutLe(b, 16, 1, 4);
  for (const auto& [at, value] : fields) PutLe(b, at, value.first, value.second);
  std::memcpy(b.data() + 48, key_at_48.data(), key_at_48.size());
  PutLe(b, 8, XXH3_64bits(b.data() + 16, kBlock - 16), 8);
  return b;
}

std::vector<uint8_t> Bytes(std::span<const std::byte> s) {
  std::vector<uint8_t> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

TEST(FormatPinTest, ChecksumIsXxh3SeedZero) {
  // The published XXH3-64 of the empty input, and of "a", with seed 0.
  EXPECT_EQ(Xxh3({}), 0x2D06800538D394C2ull);
  const std::byte a[] = {std::byte{'a'}};
  EXPECT_EQ(Xxh3(a), XXH3_64bits("a", 1));
}

TEST(FormatPinTest, RecordHeaderBlockIsTheDocumentedLayout) {
  const std::string key("m\0\0\0\0\1\0\0\0\2", 10);
  const uint64_t payload_length = 0x0102030405060708ull, checksum = 0xdeadbeefcafef00dull;
  std::vector<uint8_t> want = HeaderBlock("ESSEGREC",
                                          {{20, {2, 2}},  // kind: expert
                                           {24, {payload_length, 8}},
                                           {32, {checksum, 8}},
                                           {40, {key.size(), 4}}},
                                          key);
  AlignedBuffer block(kRecordHeaderSize);
  ASSERT_TRUE(EncodeRecordHeader({RecordKind::kExpert, payload_length, checksum, key}, block.span()).ok());
  EXPECT_EQ(Bytes(block.span()), want);

  std::vector<std::byte> doc(kBlock);
  std::memcpy(doc.data(), want.data(), kBlock);
  auto h = DecodeRecordHeader(doc);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->kind, RecordKind::kExpert);
  EXPECT_EQ(h->payload_length, payload_length);
  EXPECT_EQ(h->payload_checksum, checksum);
  EXPECT_EQ(h->key, key);
  // The kinds' numbers.
  EXPECT_EQ(static_cast<int>(RecordKind::kTensor), 1);
  EXPECT_EQ(static_cast<int>(RecordKind::kAsset), 3);
}

TEST(FormatPinTest, SegmentHeaderBlockIsTheDocumentedLayout) {
  std::vector<uint8_t> want = HeaderBlock("ESSEGFIL", {{20, {42, 4}}, {24, {1700000000, 8}}});
  AlignedBuffer block(kSegmentHeaderSize);
  ASSERT_TRUE(EncodeSegmentHeader({42, 1700000000}, block.span()).ok());
  EXPECT_EQ(Bytes(block.span()), want);
  std::vector<std::byte> doc(kBlock);
  std::memcpy(doc.data(), want.data(), kBlock);
  auto h = DecodeSegmentHeader(doc);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->segment_id, 42u);
  EXPECT_EQ(h->created_unix_seconds, 1700000000u);
}

TEST(FormatPinTest, SizesAndNamesAreTheDocumentedOnes) {
  EXPECT_EQ(kBlockSize, kBlock);
  EXPECT_EQ(kSegmentFormatVersion, 1u);
  EXPECT_EQ(kMaxRecordKeyLength, 4048u);
  EXPECT_EQ(RecordLength(0), kBlock);
  EXPECT_EQ(RecordLength(5000), 3 * kBlock);
  EXPECT_EQ(SegmentFileName(42), "000042.seg");
}

TEST(FormatPinTest, CatalogKeysAreTheDocumentedBytes) {
  EXPECT_EQ(ModelKey("tiny"), "tiny");
  EXPECT_EQ(ExpertKey("tiny", 1, 258), std::string("tiny\0\0\0\0\1\0\0\1\2", 13));
  EXPECT_EQ(LayerPrefix("tiny", 3), std::string("tiny\0\0\0\0\3", 9));
  EXPECT_EQ(DomainUsageKey("tiny", 0, 1, "python"), std::string("tiny\0\0\0\0\0\0\0\0\1python", 19));
}

ExpertInfo GoldenExpert() {
  ExpertInfo e;
  e.layer = 3;
  e.expert = 17;
  e.extent = Extent{2, 8192, 16384, 12288, 0x1122334455667788ull};
  e.projections = {{"gate", "model.layers.3.mlp.experts.17.gate_proj.weight", DType::kBF16, {96, 128}, 0, 4096},
                   {"down", "d", DType::kF32, {128, 96}, 4096, 8192}};
  return e;
}

// GoldenExpert() as EncodeExpert wrote it when this test was made (FlatBuffers, store/catalog.fbs). Stores hold
// such bytes: whatever the schema becomes, they must still decode to the same record.
const std::string kGoldenExpertRecord(
      "\x14\x00\x00\x00\x00\x00\x00\x00\x0c\x00\x3c\x00\x04\x00\x08\x00\x0c\x00\x38\x00\x0c\x00\x00\x00"
      "\x03\x00\x00\x00\x11\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00\x00\x00\x00"
      "\x00\x40\x00\x00\x00\x00\x00\x00\x00\x30\x00\x00\x00\x00\x00\x00\x88\x77\x66\x55\x44\x33\x22\x11"
      "\x00\x00\x00\x00\x04\x00\x00\x00\x02\x00\x00\x00\x78\x00\x00\x00\x14\x00\x00\x00\x10\x00\x28\x00"
      "\x08\x00\x0c\x00\x07\x00\x10\x00\x14\x00\x1c\x00\x10\x00\x00\x00\x00\x00\x00\x02\x3c\x00\x00\x00"
      "\x30\x00\x00\x00\x18\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00\x00\x00\x00"
      "\x00\x00\x00\x00\x02\x00\x00\x00\x80\x00\x00\x00\x00\x00\x00\x00\x60\x00\x00\x00\x00\x00\x00\x00"
      "\x01\x00\x00\x00\x64\x00\x00\x00\x04\x00\x00\x00\x64\x6f\x77\x6e\x00\x00\x00\x00\x10\x00\x20\x00"
      "\x08\x00\x0c\x00\x07\x00\x10\x00\x00\x00\x14\x00\x10\x00\x00\x00\x00\x00\x00\x04\x60\x00\x00\x00"
      "\x28\x00\x00\x00\x10\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00"
      "\x60\x00\x00\x00\x00\x00\x00\x00\x80\x00\x00\x00\x00\x00\x00\x00\x2e\x00\x00\x00\x6d\x6f\x64\x65"
      "\x6c\x2e\x6c\x61\x79\x65\x72\x73\x2e\x33\x2e\x6d\x6c\x70\x2e\x65\x78\x70\x65\x72\x74\x73\x2e\x31"
      "\x37\x2e\x67\x61\x74\x65\x5f\x70\x72\x6f\x6a\x2e\x77\x65\x69\x67\x68\x74\x00\x00\x04\x00\x00\x00"
      "\x67\x61\x74\x65\x00\x00\x00\x00",
    320);

TEST(FormatPinTest, ExpertRecordValueDecodesFromRecordedBytes) {
  auto e = DecodeExpert(kGoldenExpertRecord);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  const ExpertInfo want = GoldenExpert();
  EXPECT_EQ(e->layer, want.layer);
  EXPECT_EQ(e->expert, want.expert);
  EXPECT_EQ(e->extent, want.extent);
  ASSERT_EQ(e->projections.size(), want.projections.size());
  for (size_t i = 0; i < want.projections.size(); ++i) {
    const ProjectionInfo& got = e->projections[i];
    const ProjectionInfo& p = want.projections[i];
    EXPECT_EQ(got.role, p.role);
    EXPECT_EQ(got.source_name, p.source_name);
    EXPECT_EQ(got.dtype, p.dtype);
    EXPECT_EQ(got.shape, p.shape);
    EXPECT_EQ(got.offset, p.offset);
    EXPECT_EQ(got.length, p.length);
  }
  // What the encoder writes today decodes to the same record (the bytes may differ with the FlatBuffers version).
  auto again = DecodeExpert(EncodeExpert(want));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->extent, want.extent);
}

}  // namespace
}  // namespace es
