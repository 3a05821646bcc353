// The segment file format: the one definition of how records sit on disk (docs/segment_format.md explains it).
// A segment is a 4 KiB file header followed by records; a record is a 4 KiB header block followed by the
// payload, zero-padded to a multiple of 4 KiB, so every payload starts aligned and one record is one read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "store/base/status.h"

namespace es {

inline constexpr uint64_t kBlockSize = 4096;
inline constexpr uint64_t kSegmentHeaderSize = kBlockSize;
inline constexpr uint64_t kRecordHeaderSize = kBlockSize;
inline constexpr uint32_t kSegmentFormatVersion = 1;
inline constexpr uint64_t kSegmentFileMagic = 0x4c49464745535345ull;    // "ESSEGFIL" little-endian
inline constexpr uint64_t kRecordMagic = 0x4345524745535345ull;         // "ESSEGREC" little-endian
inline constexpr size_t kRecordKeyOffset = 48;
inline constexpr size_t kMaxRecordKeyLength = kRecordHeaderSize - kRecordKeyOffset;

enum class RecordKind : uint16_t {
  kTensor = 1,  // a dense tensor
  kExpert = 2,  // one expert: its projections back to back
  kAsset = 3,   // a model asset file (tokenizer.json, ...)
  kCatalogLog = 4,  // a commit's changes to the catalog's record entries, or a snapshot of them (store/catalog_log.h)
};

// Where a record lives and what its payload must hash to. This is what the catalog stores.
struct Extent {
  uint32_t segment = 0;         // segment file id
  uint64_t offset = 0;          // of the record header, a multiple of kBlockSize
  uint64_t record_length = 0;   // header + padded payload, a multiple of kBlockSize
  uint64_t payload_length = 0;  // bytes of payload
  uint64_t checksum = 0;        // XXH3-64 of the payload

  uint64_t end() const { return offset + record_length; }
  bool operator==(const Extent&) const = default;
};

// A record of a remote tier (a RADOS pool a model was attached from, remote/): its extent names the tier by its
// segment id (kRemoteSegmentBase + the tier's number in the catalog) and the record within it by its offset
// (RemoteRecordOffset): no local segment holds it, so compaction, recovery and space accounting leave it alone.
// Its record_length, payload_length and checksum are the record's own, verified as a local one's.
inline constexpr uint32_t kRemoteSegmentBase = 0xF0000000u;
// The catalog's record of tier N (where its records are): kMeta, key kTierKeyPrefix + N, written by remote/ when
// a model is attached, removed with the model.
inline constexpr std::string_view kTierKeyPrefix = "tier/";
inline constexpr bool IsRemote(const Extent& e) { return e.segment >= kRemoteSegmentBase; }
inline constexpr uint32_t RemoteTier(const Extent& e) { return e.segment - kRemoteSegmentBase; }
// What a remote record is: an expert (layer, expert), a dense tensor or an asset (its index in the model's list).
enum class RemoteRecordKind : uint8_t { kExpert = 1, kTensor = 2, kAsset = 3 };
struct RemoteRecordId {
  RemoteRecordKind kind = RemoteRecordKind::kExpert;
  uint32_t layer = 0;   // experts
  uint32_t index = 0;   // the expert's number, or the tensor's or asset's index
};
inline constexpr uint64_t RemoteRecordOffset(const RemoteRecordId& id) {
  return (static_cast<uint64_t>(id.kind) << 60) | (static_cast<uint64_t>(id.layer) << 32) | id.index;
}
inline constexpr RemoteRecordId RemoteRecordOf(const Extent& e) {
  return {static_cast<RemoteRecordKind>(e.offset >> 60), static_cast<uint32_t>((e.offset >> 32) & 0x0FFFFFFFu),
          static_cast<uint32_t>(e.offset)};
}

struct RecordHeader {
  RecordKind kind = RecordKind::kTensor;
  uint64_t payload_length = 0;
  uint64_t payload_checksum = 0;
  std::string key;  // the catalog key the record was written for (for recovery and debugging)
};

inline constexpr uint64_t AlignUp(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

// Total on-disk length of a record with this payload.
inline constexpr uint64_t RecordLength(uint64_t payload_length) {
  return kRecordHeaderSize + AlignUp(payload_length, kBlockSize);
}

// Fills one header block. InvalidArgument if the key is too long.
Status EncodeRecordHeader(const RecordHeader& header, std::span<std::byte> block);
// Parses and checks a header block: magic, version, header checksum (which covers the block's padding),
// reserved fields. Corruption on any mismatch.
Result<RecordHeader> DecodeRecordHeader(std::span<const std::byte> block);

// Verifies a record as its bytes arrive, front to back, so that checksumming overlaps the reads still in
// flight: Advance(n) checks the bytes [checked, n) of `record` (which must be present by then); Finish()
// once all are in. Checks: header (magic, version, header checksum), payload length and checksum against the
// catalog's extent (recomputed over the payload), zero padding. Any mismatch is Corruption. Not thread-safe.
// Constructed from the extent alone, it streams: Feed() takes the record's bytes in order, in pieces of any size
// (the first holding the whole header block), so a record larger than any buffer is verified in a bounded one.
class RecordVerifier {
 public:
  RecordVerifier(std::span<const std::byte> record, const Extent& extent);
  explicit RecordVerifier(const Extent& extent);
  // The next bytes of the record (streaming form).
  void Feed(std::span<const std::byte> bytes);
  ~RecordVerifier();
  RecordVerifier(const RecordVerifier&) = delete;
  RecordVerifier& operator=(const RecordVerifier&) = delete;

  void Advance(size_t upto);
  // The payload inside `record` (empty in the streaming form), or the first problem found.
  Result<std::span<const std::byte>> Finish();

 private:
  struct State;
  std::span<const std::byte> record_;
  Extent extent_;
  size_t checked_ = 0;
  Status status_;
  std::unique_ptr<State> state_;
};

// The whole-record form of RecordVerifier: checks a record read from disk against its extent and returns the
// payload inside `record`.
Result<std::span<const std::byte>> CheckRecord(std::span<const std::byte> record, const Extent& extent);

struct SegmentHeader {
  uint32_t segment_id = 0;
  uint64_t created_unix_seconds = 0;
};
Status EncodeSegmentHeader(const SegmentHeader& header, std::span<std::byte> block);
Result<SegmentHeader> DecodeSegmentHeader(std::span<const std::byte> block);

// "000042.seg" for id 42.
std::string SegmentFileName(uint32_t segment_id);
// The id of a segment file name, or nullopt for anything else (including "000042.seg.tmp").
std::optional<uint32_t> ParseSegmentFileName(std::string_view name);

}  // namespace es
