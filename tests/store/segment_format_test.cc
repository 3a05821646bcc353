// Segment format: header round trips, and every flipped byte of a record is caught.
#include "store/segment_format.h"

#include <gtest/gtest.h>

#include <random>

#include "store/base/aligned_buffer.h"
#include "store/base/checksum.h"

namespace es {
namespace {

TEST(SegmentFormat, RecordHeaderRoundTrip) {
  AlignedBuffer block(kRecordHeaderSize);
  RecordHeader h{RecordKind::kExpert, 123456789, 0xdeadbeefcafef00dull, std::string("m\0key", 5)};
  ASSERT_TRUE(EncodeRecordHeader(h, block.span()).ok());
  auto d = DecodeRecordHeader(block.span());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->kind, RecordKind::kExpert);
  EXPECT_EQ(d->payload_length, 123456789u);
  EXPECT_EQ(d->payload_checksum, 0xdeadbeefcafef00dull);
  EXPECT_EQ(d->key, h.key);
}

TEST(SegmentFormat, KeyTooLongRejected) {
  AlignedBuffer block(kRecordHeaderSize);
  RecordHeader h{RecordKind::kTensor, 0, 0, std::string(kMaxRecordKeyLength + 1, 'k')};
  EXPECT_TRUE(EncodeRecordHeader(h, block.span()).IsInvalidArgument());
}

TEST(SegmentFormat, RecordLength) {
  EXPECT_EQ(RecordLength(0), kBlockSize);
  EXPECT_EQ(RecordLength(1), 2 * kBlockSize);
  EXPECT_EQ(RecordLength(kBlockSize), 2 * kBlockSize);
  EXPECT_EQ(RecordLength(kBlockSize + 1), 3 * kBlockSize);
}

// Builds a full record as the writer lays it out.
AlignedBuffer BuildRecord(std::span<const std::byte> payload, Extent& extent) {
  extent = Extent{1, kSegmentHeaderSize, RecordLength(payload.size()), payload.size(), Xxh3(payload)};
  AlignedBuffer rec(extent.record_length);
  RecordHeader h{RecordKind::kTensor, payload.size(), extent.checksum, "key"};
  EXPECT_TRUE(EncodeRecordHeader(h, rec.span()).ok());
  std::memcpy(rec.data() + kRecordHeaderSize, payload.data(), payload.size());
  return rec;
}

TEST(SegmentFormat, CheckRecordAcceptsIntactRecord) {
  std::vector<std::byte> payload(5000, std::byte{7});
  Extent e;
  AlignedBuffer rec = BuildRecord(payload, e);
  auto p = CheckRecord(rec.span(), e);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->size(), payload.size());
  EXPECT_EQ(0, std::memcmp(p->data(), payload.data(), payload.size()));
}

// Flipping any single byte anywhere in the record (header, header padding, payload, tail padding) is Corruption.
TEST(SegmentFormat, EveryByteFlipIsCorruption) {
  std::vector<std::byte> payload(5000);
  std::mt19937 rng(1);
  for (auto& b : payload) b = static_cast<std::byte>(rng());
  Extent e;
  AlignedBuffer rec = BuildRecord(payload, e);
  for (size_t i = 0; i < rec.size(); ++i) {
    rec.data()[i] ^= std::byte{0x01};
    auto p = CheckRecord(rec.span(), e);
    ASSERT_FALSE(p.ok()) << "flip at byte " << i << " went unnoticed";
    ASSERT_TRUE(p.status().IsCorruption()) << p.status().ToString();
    rec.data()[i] ^= std::byte{0x01};
  }
  EXPECT_TRUE(CheckRecord(rec.span(), e).ok());
}

TEST(SegmentFormat, ExtentMismatchIsCorruption) {
  std::vector<std::byte> payload(100, std::byte{1});
  Extent e;
  AlignedBuffer rec = BuildRecord(payload, e);
  Extent wrong_sum = e;
  wrong_sum.checksum ^= 1;
  EXPECT_TRUE(CheckRecord(rec.span(), wrong_sum).status().IsCorruption());
  Extent wrong_len = e;
  wrong_len.payload_length = 99;
  EXPECT_TRUE(CheckRecord(rec.span(), wrong_len).status().IsCorruption());
  EXPECT_TRUE(CheckRecord(rec.span().first(kBlockSize), e).status().IsCorruption());
}

TEST(SegmentFormat, SegmentHeader) {
  AlignedBuffer block(kSegmentHeaderSize);
  ASSERT_TRUE(EncodeSegmentHeader({42, 1700000000}, block.span()).ok());
  auto h = DecodeSegmentHeader(block.span());
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->segment_id, 42u);
  block.data()[100] ^= std::byte{1};
  EXPECT_TRUE(DecodeSegmentHeader(block.span()).status().IsCorruption());
  // A record header is not a segment header.
  AlignedBuffer rec(kRecordHeaderSize);
  ASSERT_TRUE(EncodeRecordHeader({RecordKind::kTensor, 0, 0, ""}, rec.span()).ok());
  EXPECT_TRUE(DecodeSegmentHeader(rec.span()).status().IsCorruption());
}

TEST(SegmentFormat, FileNames) {
  EXPECT_EQ(SegmentFileName(1), "000001.seg");
  EXPECT_EQ(SegmentFileName(1234567), "1234567.seg");
  EXPECT_EQ(ParseSegmentFileName("000042.seg"), 42u);
  EXPECT_EQ(ParseSegmentFileName("000042.seg.tmp"), std::nullopt);
  EXPECT_EQ(ParseSegmentFileName("abc.seg"), std::nullopt);
  EXPECT_EQ(ParseSegmentFileName("000000.seg"), std::nullopt);
  EXPECT_EQ(ParseSegmentFileName(".seg"), std::nullopt);
  EXPECT_EQ(ParseSegmentFileName("99999999999.seg"), std::nullopt);
}

TEST(Checksum, StreamMatchesOneShot) {
  std::vector<std::byte> data(100000);
  std::mt19937 rng(2);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  Xxh3Stream s;
  size_t pos = 0;
  for (size_t step : {1, 7, 64, 1000, 4096, 30000}) {
    s.Update(std::span(data).subspan(pos, step));
    pos += step;
  }
  s.Update(std::span(data).subspan(pos));
  EXPECT_EQ(s.Digest(), Xxh3(data));
  s.Reset();
  EXPECT_EQ(s.Digest(), Xxh3({}));
}

}  // namespace
}  // namespace es
