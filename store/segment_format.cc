// Encoding and checking of segment headers and records. All integers are little-endian.
#include "store/segment_format.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include "store/base/checksum.h"

namespace es {
namespace {

// Field offsets inside a header block (docs/segment_format.md).
constexpr size_t kMagicOffset = 0;
constexpr size_t kHeaderChecksumOffset = 8;
constexpr size_t kChecksummedFrom = 16;  // the header checksum covers [16, 4096)
constexpr size_t kVersionOffset = 16;
constexpr size_t kKindOffset = 20;
constexpr size_t kReservedOffset = 22;
constexpr size_t kPayloadLengthOffset = 24;
constexpr size_t kPayloadChecksumOffset = 32;
constexpr size_t kKeyLengthOffset = 40;
constexpr size_t kReserved2Offset = 44;
constexpr size_t kSegmentIdOffset = 20;
constexpr size_t kCreatedOffset = 24;

void Put16(std::byte* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
void Put32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
void Put64(std::byte* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
uint16_t Get16(const std::byte* p) {
  return static_cast<uint16_t>(std::to_integer<uint16_t>(p[0]) | (std::to_integer<uint16_t>(p[1]) << 8));
}
uint32_t Get32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::to_integer<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t Get64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::to_integer<uint64_t>(p[i]) << (8 * i);
  return v;
}

void SealBlock(std::span<std::byte> block, uint64_t magic) {
  Put64(block.data() + kMagicOffset, magic);
  Put64(block.data() + kHeaderChecksumOffset, Xxh3(block.subspan(kChecksummedFrom, kBlockSize - kChecksummedFrom)));
}

Status CheckBlock(std::span<const std::byte> block, uint64_t magic, std::string_view what) {
  if (block.size() < kBlockSize) return Status::Corruption(std::string(what) + " is shorter than one block");
  if (Get64(block.data() + kMagicOffset) != magic) return Status::Corruption(std::string(what) + ": bad magic");
  uint64_t want = Get64(block.data() + kHeaderChecksumOffset);
  uint64_t got = Xxh3(block.subspan(kChecksummedFrom, kBlockSize - kChecksummedFrom));
  if (want != got) return Status::Corruption(std::string(what) + ": header checksum mismatch");
  uint32_t version = Get32(block.data() + kVersionOffset);
  if (version != kSegmentFormatVersion) {
    return Status::Corruption(std::string(what) + ": unknown format version " + std::to_string(version));
  }
  return Status::Ok();
}

}  // namespace

Status EncodeRecordHeader(const RecordHeader& header, std::span<std::byte> block) {
  if (block.size() < kBlockSize) return Status::InvalidArgument("record header block too small");
  if (header.key.size() > kMaxRecordKeyLength) {
    return Status::InvalidArgument("record key longer than " + std::to_string(kMaxRecordKeyLength) + " bytes");
  }
  std::memset(block.data(), 0, kBlockSize);
  Put32(block.data() + kVersionOffset, kSegmentFormatVersion);
  Put16(block.data() + kKindOffset, static_cast<uint16_t>(header.kind));
  Put64(block.data() + kPayloadLengthOffset, header.payload_length);
  Put64(block.data() + kPayloadChecksumOffset, header.payload_checksum);
  Put32(block.data() + kKeyLengthOffset, static_cast<uint32_t>(header.key.size()));
  std::memcpy(block.data() + kRecordKeyOffset, header.key.data(), header.key.size());
  SealBlock(block.first(kBlockSize), kRecordMagic);
  return Status::Ok();
}

Result<RecordHeader> DecodeRecordHeader(std::span<const std::byte> block) {
  ES_RETURN_IF_ERROR(CheckBlock(block, kRecordMagic, "record header"));
  const std::byte* p = block.data();
  RecordHeader h;
  uint16_t kind = Get16(p + kKindOffset);
  if (kind < static_cast<uint16_t>(RecordKind::kTensor) || kind > static_cast<uint16_t>(RecordKind::kCatalogLog)) {
    return Status::Corruption("record header: unknown record kind " + std::to_string(kind));
  }
  h.kind = static_cast<RecordKind>(kind);
  if (Get16(p + kReservedOffset) != 0 || Get32(p + kReserved2Offset) != 0) {
    return Status::Corruption("record header: reserved field set");
  }
  h.payload_length = Get64(p + kPayloadLengthOffset);
  h.payload_checksum = Get64(p + kPayloadChecksumOffset);
  uint32_t key_length = Get32(p + kKeyLengthOffset);
  if (key_length > kMaxRecordKeyLength) return Status::Corruption("record header: key length out of range");
  h.key.assign(reinterpret_cast<const char*>(p + kRecordKeyOffset), key_length);
  return h;
}

struct RecordVerifier::State {
  Xxh3Stream hash;
};

RecordVerifier::RecordVerifier(std::span<const std::byte> record, const Extent& extent)
    : record_(record), extent_(extent), state_(std::make_unique<State>()) {
  if (record.size() != extent.record_length || extent.record_length != RecordLength(extent.payload_length)) {
    status_ = Status::Corruption("record length " + std::to_string(record.size()) + " does not match its extent");
  }
}

RecordVerifier::RecordVerifier(const Extent& extent) : extent_(extent), state_(std::make_unique<State>()) {
  if (extent.record_length != RecordLength(extent.payload_length)) {
    status_ = Status::Corruption("record length " + std::to_string(extent.record_length) + " does not match its payload");
  }
}

RecordVerifier::~RecordVerifier() = default;

void RecordVerifier::Advance(size_t upto) {
  upto = std::min(upto, record_.size());
  if (upto <= checked_) return;
  if (checked_ < kRecordHeaderSize && upto < kRecordHeaderSize) return;  // wait for the whole header block
  Feed(record_.subspan(checked_, upto - checked_));
}

void RecordVerifier::Feed(std::span<const std::byte> bytes) {
  if (!status_.ok() || bytes.empty()) return;
  if (checked_ < kRecordHeaderSize) {
    if (checked_ != 0 || bytes.size() < kRecordHeaderSize) {
      status_ = Status::InvalidArgument("the first bytes verified must hold the whole record header block");
      return;
    }
    auto header = DecodeRecordHeader(bytes.first(kRecordHeaderSize));
    if (!header.ok()) {
      status_ = header.status();
      return;
    }
    if (header->payload_length != extent_.payload_length) {
      status_ = Status::Corruption("record payload length " + std::to_string(header->payload_length) +
                                   " differs from the catalog's " + std::to_string(extent_.payload_length));
      return;
    }
    if (header->payload_checksum != extent_.checksum) {
      status_ = Status::Corruption("record header checksum field differs from the catalog's");
      return;
    }
    checked_ = kRecordHeaderSize;
    bytes = bytes.subspan(kRecordHeaderSize);
  }
  const size_t payload_end = kRecordHeaderSize + extent_.payload_length;
  if (checked_ < payload_end) {
    size_t n = std::min(bytes.size(), payload_end - checked_);
    state_->hash.Update(bytes.first(n));
    checked_ += n;
    bytes = bytes.subspan(n);
  }
  if (bytes.empty()) return;
  if (checked_ + bytes.size() > extent_.record_length) {
    status_ = Status::InvalidArgument("more bytes verified than the record holds");
    return;
  }
  if (std::any_of(bytes.begin(), bytes.end(), [](std::byte b) { return b != std::byte{0}; })) {
    status_ = Status::Corruption("nonzero record padding");
    return;
  }
  checked_ += bytes.size();
}

Result<std::span<const std::byte>> RecordVerifier::Finish() {
  ES_RETURN_IF_ERROR(status_);
  if (checked_ != extent_.record_length) return Status::Corruption("record verification ended early");
  if (state_->hash.Digest() != extent_.checksum) return Status::Corruption("payload checksum mismatch");
  if (record_.empty()) return std::span<const std::byte>();
  return record_.subspan(kRecordHeaderSize, extent_.payload_length);
}

Result<std::span<const std::byte>> CheckRecord(std::span<const std::byte> record, const Extent& extent) {
  RecordVerifier verifier(record, extent);
  verifier.Advance(record.size());
  return verifier.Finish();
}

Status EncodeSegmentHeader(const SegmentHeader& header, std::span<std::byte> block) {
  if (block.size() < kBlockSize) return Status::InvalidArgument("segment header block too small");
  std::memset(block.data(), 0, kBlockSize);
  Put32(block.data() + kVersionOffset, kSegmentFormatVersion);
  Put32(block.data() + kSegmentIdOffset, header.segment_id);
  Put64(block.data() + kCreatedOffset, header.created_unix_seconds);
  SealBlock(block.first(kBlockSize), kSegmentFileMagic);
  return Status::Ok();
}

Result<SegmentHeader> DecodeSegmentHeader(std::span<const std::byte> block) {
  ES_RETURN_IF_ERROR(CheckBlock(block, kSegmentFileMagic, "segment header"));
  SegmentHeader h;
  h.segment_id = Get32(block.data() + kSegmentIdOffset);
  h.created_unix_seconds = Get64(block.data() + kCreatedOffset);
  return h;
}

std::string SegmentFileName(uint32_t segment_id) {
  std::string digits = std::to_string(segment_id);
  if (digits.size() < 6) digits.insert(0, 6 - digits.size(), '0');
  return digits + ".seg";
}

std::optional<uint32_t> ParseSegmentFileName(std::string_view name) {
  constexpr std::string_view kSuffix = ".seg";
  if (name.size() <= kSuffix.size() || !name.ends_with(kSuffix)) return std::nullopt;
  std::string_view digits = name.substr(0, name.size() - kSuffix.size());
  uint32_t id = 0;
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
  if (ec != std::errc() || ptr != digits.data() + digits.size() || id == 0) return std::nullopt;
  return id;
}

}  // namespace es
