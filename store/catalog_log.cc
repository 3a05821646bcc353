// The catalog log's payload codec and its catalog references (store/catalog_log.h).
#include "store/catalog_log.h"

#include <charconv>
#include <cstdio>
#include <cstring>

#include "catalog_generated.h"

namespace es {
namespace {

constexpr char kMagic[8] = {'E', 'S', 'C', 'A', 'T', 'L', 'O', 'G'};
constexpr uint32_t kLogVersion = 1;
constexpr uint32_t kSnapshotFlag = 1;
constexpr size_t kHeaderBytes = 32;       // magic, version, flags, sequence, entry count
constexpr size_t kEntryHeaderBytes = 12;  // op, cf, reserved, key length, value length
constexpr size_t kSequenceDigits = 20;

void PutLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetLe(const std::byte* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

}  // namespace

bool IsRecordCf(Cf cf) { return cf == Cf::kModels || cf == Cf::kTensors || cf == Cf::kExperts; }

std::string EncodeCatalogLog(const CatalogLog& log) {
  size_t size = kHeaderBytes;
  for (const auto& e : log.entries) size += kEntryHeaderBytes + e.key.size() + e.value.size();
  std::string out;
  out.reserve(size);
  out.append(kMagic, sizeof(kMagic));
  PutLe(out, kLogVersion, 4);
  PutLe(out, log.snapshot ? kSnapshotFlag : 0, 4);
  PutLe(out, log.sequence, 8);
  PutLe(out, log.entries.size(), 8);
  for (const auto& e : log.entries) {
    PutLe(out, static_cast<uint8_t>(e.op), 1);
    PutLe(out, static_cast<uint8_t>(e.cf), 1);
    PutLe(out, 0, 2);
    PutLe(out, e.key.size(), 4);
    PutLe(out, e.value.size(), 4);
    out += e.key;
    out += e.value;
  }
  return out;
}

Result<CatalogLog> DecodeCatalogLog(std::span<const std::byte> payload) {
  auto bad = [](const std::string& why) { return Status::Corruption("catalog log record: " + why); };
  if (payload.size() < kHeaderBytes) return bad("shorter than its header");
  if (std::memcmp(payload.data(), kMagic, sizeof(kMagic)) != 0) return bad("bad magic");
  const std::byte* p = payload.data();
  if (GetLe(p + 8, 4) != kLogVersion) return bad("unknown version " + std::to_string(GetLe(p + 8, 4)));
  const uint64_t flags = GetLe(p + 12, 4);
  if ((flags & ~uint64_t{kSnapshotFlag}) != 0) return bad("unknown flags");
  CatalogLog log;
  log.snapshot = (flags & kSnapshotFlag) != 0;
  log.sequence = GetLe(p + 16, 8);
  const uint64_t count = GetLe(p + 24, 8);
  // Every entry takes at least its header: a count the payload cannot hold is damage, not a reason to allocate.
  if (count > (payload.size() - kHeaderBytes) / kEntryHeaderBytes) return bad("entry count past the payload");
  log.entries.reserve(static_cast<size_t>(count));
  size_t at = kHeaderBytes;
  for (uint64_t i = 0; i < count; ++i) {
    if (payload.size() - at < kEntryHeaderBytes) return bad("entry " + std::to_string(i) + " past the payload");
    CatalogLogEntry e;
    const uint64_t op = GetLe(p + at, 1), cf = GetLe(p + at + 1, 1);
    if (op != static_cast<uint8_t>(CatalogLogEntry::Op::kPut) && op != static_cast<uint8_t>(CatalogLogEntry::Op::kDelete)) {
      return bad("entry " + std::to_string(i) + " has unknown operation " + std::to_string(op));
    }
    if (cf >= static_cast<uint64_t>(kNumCfs) || !IsRecordCf(static_cast<Cf>(cf)) || GetLe(p + at + 2, 2) != 0) {
      return bad("entry " + std::to_string(i) + " names column family " + std::to_string(cf));
    }
    e.op = static_cast<CatalogLogEntry::Op>(op);
    e.cf = static_cast<Cf>(cf);
    const uint64_t key_length = GetLe(p + at + 4, 4), value_length = GetLe(p + at + 8, 4);
    at += kEntryHeaderBytes;
    if (key_length > payload.size() - at || value_length > payload.size() - at - key_length) {
      return bad("entry " + std::to_string(i) + " runs past the payload");
    }
    if (e.op == CatalogLogEntry::Op::kDelete && value_length != 0) return bad("a delete with a value");
    e.key.assign(reinterpret_cast<const char*>(p + at), key_length);
    at += key_length;
    e.value.assign(reinterpret_cast<const char*>(p + at), value_length);
    at += value_length;
    log.entries.push_back(std::move(e));
  }
  if (at != payload.size()) return bad("bytes after the last entry");
  return log;
}

std::string CatalogLogKey(uint64_t sequence) {
  char digits[kSequenceDigits + 1];
  std::snprintf(digits, sizeof(digits), "%020llu", static_cast<unsigned long long>(sequence));
  return std::string(kCatalogLogKeyPrefix) + digits;
}

std::optional<uint64_t> ParseCatalogLogKey(std::string_view key) {
  if (!key.starts_with(kCatalogLogKeyPrefix) || key.size() != kCatalogLogKeyPrefix.size() + kSequenceDigits) {
    return std::nullopt;
  }
  uint64_t v = 0;
  const char* first = key.data() + kCatalogLogKeyPrefix.size();
  auto [end, ec] = std::from_chars(first, key.data() + key.size(), v);
  if (ec != std::errc() || end != key.data() + key.size()) return std::nullopt;
  return v;
}

std::string EncodeCatalogLogRef(const Extent& e) {
  flatbuffers::FlatBufferBuilder b;
  fb::Extent fe(e.segment, e.offset, e.record_length, e.payload_length, e.checksum);
  b.Finish(fb::CreateCatalogLogRef(b, &fe));
  return std::string(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
}

Result<Extent> DecodeCatalogLogRef(std::string_view value) {
  // Copied: FlatBuffers reads the struct in place and a value out of a RocksDB block may be misaligned.
  std::vector<uint64_t> storage((value.size() + 7) / 8);
  std::memcpy(storage.data(), value.data(), value.size());
  const auto* bytes = reinterpret_cast<const uint8_t*>(storage.data());
  flatbuffers::Verifier verifier(bytes, value.size());
  if (!verifier.VerifyBuffer<fb::CatalogLogRef>(nullptr)) return Status::Corruption("catalog log reference does not decode");
  const fb::Extent* e = flatbuffers::GetRoot<fb::CatalogLogRef>(bytes)->extent();
  if (e == nullptr) return Status::Corruption("catalog log reference has no extent");
  return Extent{e->segment(), e->offset(), e->record_length(), e->payload_length(), e->checksum()};
}

std::vector<CatalogLogEntry> RecordMutations(const CatalogBatch& batch) {
  std::vector<CatalogLogEntry> out;
  batch.ForEach([&](CatalogBatch::OpKind kind, Cf cf, std::string_view key, std::string_view value) {
    if (!IsRecordCf(cf) || kind == CatalogBatch::OpKind::kMerge) return;
    out.push_back({kind == CatalogBatch::OpKind::kPut ? CatalogLogEntry::Op::kPut : CatalogLogEntry::Op::kDelete, cf,
                   std::string(key), kind == CatalogBatch::OpKind::kPut ? std::string(value) : std::string()});
  });
  return out;
}

}  // namespace es
