// Compaction (store/compaction.h).
#include "store/compaction.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>

#include "store/base/aligned_buffer.h"

namespace es {
namespace {

// Record bytes read and written per step of a copy.
constexpr size_t kCopyChunk = 4u << 20;
// Past this many catalog-log records, compaction writes a snapshot even when it moves nothing.
constexpr uint64_t kMaxLogRecordsUnsnapshotted = 64;

// One catalog reference to a record in a segment being compacted.
struct Move {
  enum class Kind { kTensor, kExpert, kAsset } kind;
  std::string key;    // the catalog key (tensor or expert key; the model name for an asset)
  std::string asset;  // asset name
  Extent extent;      // where it lives now
};

// Calls fn(key, value) for every entry of a column family, decoded; the first value that does not decode stops it.
template <typename Decode, typename Fn>
Status ScanDecoded(const Catalog& catalog, Cf cf, Decode decode, Fn fn) {
  Status bad;
  ES_RETURN_IF_ERROR(catalog.Scan(cf, "", [&](std::string_view key, std::string_view value) {
    auto v = decode(value);
    if (!v.ok()) {
      bad = v.status();
      return false;
    }
    fn(key, *v);
    return true;
  }));
  return bad;
}

// Stages the catalog entry `key` of `cf` (a tensor or an expert) with its extent replaced by `to`.
template <typename Decode, typename Encode>
Status SwitchExtent(const Catalog& catalog, WriteTxn& txn, Cf cf, const std::string& key, Decode decode, Encode encode,
                    const Extent& to) {
  ES_ASSIGN_OR_RETURN(std::string value, catalog.Get(cf, key));
  ES_ASSIGN_OR_RETURN(auto info, decode(value));
  info.extent = to;
  txn.batch().Put(cf, key, encode(info));
  return Status::Ok();
}

Result<std::vector<Move>> CollectMoves(const Catalog& catalog, const std::set<uint32_t>& segments) {
  std::vector<Move> moves;
  ES_RETURN_IF_ERROR(ScanDecoded(catalog, Cf::kTensors, DecodeTensor, [&](std::string_view key, const TensorInfo& t) {
    if (segments.contains(t.extent.segment)) moves.push_back({Move::Kind::kTensor, std::string(key), "", t.extent});
  }));
  ES_RETURN_IF_ERROR(ScanDecoded(catalog, Cf::kExperts, DecodeExpert, [&](std::string_view key, const ExpertInfo& e) {
    if (segments.contains(e.extent.segment)) moves.push_back({Move::Kind::kExpert, std::string(key), "", e.extent});
  }));
  ES_RETURN_IF_ERROR(ScanDecoded(catalog, Cf::kModels, DecodeModel, [&](std::string_view key, const ModelInfo& m) {
    for (const AssetInfo& a : m.assets) {
      if (segments.contains(a.extent.segment)) moves.push_back({Move::Kind::kAsset, std::string(key), a.name, a.extent});
    }
  }));
  // In file order: the copy reads each segment front to back.
  std::sort(moves.begin(), moves.end(), [](const Move& a, const Move& b) {
    return std::tie(a.extent.segment, a.extent.offset) < std::tie(b.extent.segment, b.extent.offset);
  });
  return moves;
}

// Copies the record at `from` into the transaction, verifying it on the way (header, length, checksum, padding).
Result<Extent> CopyRecord(Store& store, WriteTxn& txn, const Extent& from, AlignedBuffer& buffer) {
  ES_ASSIGN_OR_RETURN(File * file, store.reader().Segment(from.segment));
  const std::string what = "the record at " + SegmentFileName(from.segment) + ":" + std::to_string(from.offset);
  std::span<std::byte> header = buffer.span().first(kRecordHeaderSize);
  ES_RETURN_IF_ERROR(ReadFully(*file, from.offset, header));
  auto decoded = DecodeRecordHeader(header);
  if (!decoded.ok()) return Status::Corruption(what + ": " + decoded.status().message());
  RecordVerifier verifier(from);
  verifier.Feed(header);
  ES_RETURN_IF_ERROR(txn.BeginRecord(decoded->kind, decoded->key, decoded->payload_length));
  uint64_t payload_left = decoded->payload_length;
  for (uint64_t at = kRecordHeaderSize; at < from.record_length;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), from.record_length - at));
    std::span<std::byte> chunk = buffer.span().first(n);
    ES_RETURN_IF_ERROR(ReadFully(*file, from.offset + at, chunk));
    verifier.Feed(chunk);
    const size_t payload = static_cast<size_t>(std::min<uint64_t>(n, payload_left));
    ES_RETURN_IF_ERROR(txn.WritePayload(chunk.first(payload)));
    payload_left -= payload;
    at += n;
  }
  auto checked = verifier.Finish();
  if (!checked.ok()) return Status::Corruption(what + ": " + checked.status().message());
  ES_ASSIGN_OR_RETURN(Extent to, txn.FinishRecord());
  if (to.checksum != from.checksum || to.payload_length != from.payload_length) {
    return Status::Corruption(what + ": the copy does not hash to the catalog's checksum");
  }
  return to;
}

}  // namespace

Result<CompactStats> Compact(Store& store, const CompactOptions& options) {
  if (store.read_only()) return Status::NotSupported("compaction needs the store open for writing");
  if (!(options.max_dead_fraction >= 0 && options.max_dead_fraction < 1)) {
    return Status::InvalidArgument("the dead fraction must be at least 0 and below 1");
  }
  CompactStats stats;
  AlignedBuffer buffer(kCopyChunk);
  if (buffer.data() == nullptr) return Status::ResourceExhausted("cannot allocate the compaction buffer");

  // Which segments: their dead share, from the file sizes and what the catalog references. The first transaction
  // holds the write lock while they are chosen and while the catalog is read.
  ES_ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  std::vector<ExtentRef> refs;
  std::vector<CorruptEntry> undecodable;
  ES_RETURN_IF_ERROR(CollectExtents(store.catalog(), "", refs, undecodable));
  if (!undecodable.empty()) {
    return Status::Corruption("the catalog holds entries that do not decode (" + undecodable.front().what + ": " +
                              undecodable.front().message + "); run verify; nothing was compacted");
  }
  ES_ASSIGN_OR_RETURN(std::vector<SegmentSpace> spaces, SegmentSpaces(store.fs(), store.segments_dir(), refs));
  std::set<uint32_t> chosen;
  for (const SegmentSpace& space : spaces) {
    ++stats.segments_before;
    stats.file_bytes_before += space.file_bytes;
    stats.dead_bytes_before += space.dead_bytes();
    if (space.dead_bytes() > 0 && static_cast<double>(space.dead_bytes()) >
                                      options.max_dead_fraction * static_cast<double>(space.record_bytes())) {
      chosen.insert(space.segment);
    }
  }
  stats.compacted.assign(chosen.begin(), chosen.end());
  // Nothing more goes into a segment that is being emptied.
  if (chosen.contains(txn->position().segment)) ES_RETURN_IF_ERROR(txn->SealSegment());
  ES_ASSIGN_OR_RETURN(std::vector<Move> moves, CollectMoves(store.catalog(), chosen));

  // The catalog log's records are not moved: compaction's last commit writes a snapshot of the catalog, which
  // replaces them all, so the emptied segments hold nothing live. A long log is folded the same way when there is
  // nothing to move.
  ES_ASSIGN_OR_RETURN(const uint64_t log_records, store.CatalogLogRecords());
  const bool snapshot = !chosen.empty() || log_records > kMaxLogRecordsUnsnapshotted;

  // Copies in batches; each commit switches its entries. Models whose asset extents changed in this batch.
  std::map<std::string, ModelInfo> models;
  uint64_t batch_bytes = 0;
  auto commit = [&](bool last) -> Status {
    for (auto& [name, info] : models) txn->batch().Put(Cf::kModels, ModelKey(name), EncodeModel(info));
    models.clear();
    if (last && snapshot) {
      ES_RETURN_IF_ERROR(txn->CommitWithSnapshot());
      stats.log_snapshot = true;
    } else {
      ES_RETURN_IF_ERROR(txn->Commit());
    }
    ++stats.commits;
    batch_bytes = 0;
    return Status::Ok();
  };
  for (const Move& m : moves) {
    if (!txn) {
      ES_ASSIGN_OR_RETURN(txn, store.BeginWrite());
    }
    ES_ASSIGN_OR_RETURN(Extent to, CopyRecord(store, *txn, m.extent, buffer));
    switch (m.kind) {
      case Move::Kind::kTensor:
        ES_RETURN_IF_ERROR(SwitchExtent(store.catalog(), *txn, Cf::kTensors, m.key, DecodeTensor, EncodeTensor, to));
        break;
      case Move::Kind::kExpert:
        ES_RETURN_IF_ERROR(SwitchExtent(store.catalog(), *txn, Cf::kExperts, m.key, DecodeExpert, EncodeExpert, to));
        break;
      case Move::Kind::kAsset: {
        auto it = models.find(m.key);
        if (it == models.end()) {
          ES_ASSIGN_OR_RETURN(std::string v, store.catalog().Get(Cf::kModels, m.key));
          ES_ASSIGN_OR_RETURN(ModelInfo info, DecodeModel(v));
          it = models.emplace(m.key, std::move(info)).first;
        }
        for (AssetInfo& a : it->second.assets) {
          if (a.name == m.asset && a.extent == m.extent) a.extent = to;
        }
        break;
      }
    }
    ++stats.records_moved;
    stats.bytes_moved += m.extent.record_length;
    batch_bytes += m.extent.record_length;
    if (batch_bytes >= options.batch_bytes) {
      ES_RETURN_IF_ERROR(commit(/*last=*/false));
      txn.reset();
    }
  }
  if (!txn) {
    ES_ASSIGN_OR_RETURN(txn, store.BeginWrite());
  }
  ES_RETURN_IF_ERROR(commit(/*last=*/true));
  txn.reset();
  ES_ASSIGN_OR_RETURN(stats.removal, store.RemoveDeadSegments());
  return stats;
}

}  // namespace es
