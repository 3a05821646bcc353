// Store::Verify and CollectExtents: the full consistency check behind `expertstore verify`.
#include <algorithm>
#include <map>

#include "store/base/aligned_buffer.h"
#include "store/store.h"

namespace es {

namespace {

// Verify reads extents whole in batches holding at most this many bytes of buffers; a record larger than this
// is read and checked in pieces of this size instead, so that memory stays bounded whatever the largest record
// (the embedding table of a real model is over 600 MB).
constexpr uint64_t kVerifyBatchBytes = 64ull << 20;

std::string Printable(std::string_view key) {
  std::string out;
  for (char c : key) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out.push_back(c);
    } else {
      out += '/';
    }
  }
  return out;
}

// Streams one large record through `piece` (kVerifyBatchBytes, aligned) and a RecordVerifier; also checks that
// its header names `key`. OK, or what is wrong with it.
Status VerifyLargeRecord(ExtentReader& reader, const Extent& e, const std::string& key, std::span<std::byte> piece) {
  ES_ASSIGN_OR_RETURN(File * file, reader.Segment(e.segment));
  RecordVerifier verifier(e);
  for (uint64_t done = 0; done < e.record_length;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(piece.size(), e.record_length - done));
    IoRead io{file, e.offset + done, piece.first(n), Status::Ok()};
    reader.engine().ReadBatch({&io, 1}, nullptr);
    ES_RETURN_IF_ERROR(io.status);
    if (done == 0) {
      auto h = DecodeRecordHeader(piece.first(kRecordHeaderSize));
      if (h.ok() && h->key != key) return Status::Corruption("record header names another key");
    }
    verifier.Feed(piece.first(n));
    done += n;
  }
  return verifier.Finish().status();
}

// Every value of the metadata column families (usage, trust, profiles) must decode; those that do not are
// reported.
Status CheckMetadataValues(const Catalog& catalog, const std::string& model, VerifyReport& report) {
  std::string prefix = model.empty() ? std::string() : ModelPrefix(model);
  struct MetaCf {
    Cf cf;
    const char* name;
    bool (*decodes)(std::string_view);
  };
  const MetaCf metas[] = {
      {Cf::kUsage, "usage", [](std::string_view v) { return DecodeUsage(v).ok(); }},
      {Cf::kTrust, "trust", [](std::string_view v) { return DecodeTrust(v).ok(); }},
      {Cf::kProfiles, "profile", [](std::string_view v) { return DecodeProfile(v).ok(); }},
  };
  for (const auto& m : metas) {
    ES_RETURN_IF_ERROR(catalog.Scan(m.cf, prefix, [&](std::string_view key, std::string_view value) {
      if (!m.decodes(value)) report.corrupt.push_back({std::string(m.name) + " " + Printable(key), "does not decode"});
      return true;
    }));
  }
  return Status::Ok();
}

// Opens a segment, takes its size, and checks that its header decodes and names it. OK, or what is wrong with
// the segment.
Status CheckSegment(ExtentReader& reader, uint32_t segment, AlignedBuffer& header, uint64_t& size) {
  ES_ASSIGN_OR_RETURN(File * file, reader.Segment(segment));
  ES_ASSIGN_OR_RETURN(size, file->Size());
  IoRead io{file, 0, header.span(), Status::Ok()};
  reader.engine().ReadBatch({&io, 1}, nullptr);
  ES_RETURN_IF_ERROR(io.status);
  ES_ASSIGN_OR_RETURN(SegmentHeader h, DecodeSegmentHeader(header.span()));
  if (h.segment_id != segment) return Status::Corruption("segment header names another segment");
  return Status::Ok();
}

// Checks the extents of one readable segment of `size` bytes in offset order: well formed, inside the file, and
// overlapping no earlier one. Those that pass are appended to `readable`, the others reported.
void CheckExtentLayout(std::vector<const ExtentRef*>& list, const std::string& seg_name, uint64_t size,
                       VerifyReport& report, std::vector<const ExtentRef*>& readable) {
  std::sort(list.begin(), list.end(),
            [](const ExtentRef* a, const ExtentRef* b) { return a->extent.offset < b->extent.offset; });
  uint64_t prev_end = kSegmentHeaderSize;
  const ExtentRef* prev = nullptr;
  for (const auto* r : list) {
    const Extent& e = r->extent;
    if (e.offset % kBlockSize != 0 || e.record_length != RecordLength(e.payload_length) ||
        e.offset < kSegmentHeaderSize) {
      report.corrupt.push_back({r->what, "malformed extent"});
      continue;
    }
    if (e.end() > size) {
      report.corrupt.push_back({r->what, "extent ends at " + std::to_string(e.end()) + ", past the end of " +
                                             seg_name + " (" + std::to_string(size) + " bytes)"});
      continue;
    }
    if (e.offset < prev_end && prev != nullptr) {
      report.corrupt.push_back({r->what, "extent overlaps " + prev->what});
      continue;
    }
    prev_end = e.end();
    prev = r;
    readable.push_back(r);
  }
}

// Structure: each extent inside an existing segment with a valid header, no two extents overlapping. Returns
// the extents whose contents can be checked; the others are reported.
Result<std::vector<const ExtentRef*>> CheckStructure(ExtentReader& reader, const std::vector<ExtentRef>& refs,
                                                     VerifyReport& report) {
  std::map<uint32_t, std::vector<const ExtentRef*>> by_segment;
  for (const auto& r : refs) by_segment[r.extent.segment].push_back(&r);
  std::vector<const ExtentRef*> readable;
  AlignedBuffer header(kSegmentHeaderSize);
  if (header.data() == nullptr) return Status::ResourceExhausted("cannot allocate a header buffer");
  for (auto& [segment, list] : by_segment) {
    std::string seg_name = SegmentFileName(segment);
    uint64_t size = 0;
    Status seg_status = CheckSegment(reader, segment, header, size);
    if (!seg_status.ok()) {
      report.corrupt.push_back({"segment " + seg_name, seg_status.message()});
      for (const auto* r : list) report.corrupt.push_back({r->what, "its segment " + seg_name + " is unreadable"});
      continue;
    }
    CheckExtentLayout(list, seg_name, size, report, readable);
  }
  return readable;
}

// Streams one record larger than the batch buffer through it and reports what is wrong with it, if anything.
void CheckLargeRecord(ExtentReader& reader, const ExtentRef& r, AlignedBuffer& buffer, VerifyReport& report) {
  ++report.checked;
  Status s = VerifyLargeRecord(reader, r.extent, r.record_key, buffer.span());
  if (s.ok()) {
    report.bytes += r.extent.payload_length;
  } else {
    report.corrupt.push_back({r.what, s.message()});
  }
}

// Reads readable[first] and the records after it that fit in the buffer beside it in one batch and checks
// each with its header key. Returns the index after the batch. readable[first] must fit in the buffer.
size_t CheckRecordBatch(ExtentReader& reader, const std::vector<const ExtentRef*>& readable, size_t first,
                        AlignedBuffer& buffer, VerifyReport& report) {
  uint64_t batch_bytes = 0;
  size_t end = first;
  while (end < readable.size() && readable[end]->extent.record_length <= kVerifyBatchBytes &&
         batch_bytes + readable[end]->extent.record_length <= kVerifyBatchBytes) {
    batch_bytes += readable[end]->extent.record_length;
    ++end;
  }
  std::vector<ExtentRead> reads;
  uint64_t off = 0;
  for (size_t k = first; k < end; ++k) {
    const Extent& e = readable[k]->extent;
    reads.push_back(ExtentRead{e, {buffer.data() + off, e.record_length}, Status::Ok(), {}});
    off += e.record_length;
  }
  reader.ReadBatch(reads);
  for (size_t k = first; k < end; ++k) {
    const ExtentRead& r = reads[k - first];
    ++report.checked;
    if (!r.status.ok()) {
      report.corrupt.push_back({readable[k]->what, r.status.message()});
      continue;
    }
    auto h = DecodeRecordHeader(r.buffer.first(kRecordHeaderSize));
    if (!h.ok() || h->key != readable[k]->record_key) {
      report.corrupt.push_back({readable[k]->what, "record header names another key"});
      continue;
    }
    report.bytes += r.extent.payload_length;
  }
  return end;
}

// Contents: records up to kVerifyBatchBytes read whole in bounded batches, larger ones streamed; each checked
// fully, with its header key.
Status CheckContents(ExtentReader& reader, const std::vector<const ExtentRef*>& readable, VerifyReport& report) {
  AlignedBuffer buffer(kVerifyBatchBytes);
  if (buffer.data() == nullptr) return Status::ResourceExhausted("cannot allocate verify buffers");
  size_t i = 0;
  while (i < readable.size()) {
    if (readable[i]->extent.record_length > kVerifyBatchBytes) {
      CheckLargeRecord(reader, *readable[i], buffer, report);
      ++i;
    } else {
      i = CheckRecordBatch(reader, readable, i, buffer, report);
    }
  }
  return Status::Ok();
}

}  // namespace

Status CollectExtents(const Catalog& catalog, const std::string& model, std::vector<ExtentRef>& out,
                      std::vector<CorruptEntry>& undecodable, std::vector<ExtentRef>* remote) {
  std::string prefix = model.empty() ? std::string() : ModelPrefix(model);
  // Records of a remote tier are in no local segment: listed apart.
  auto add = [&](ExtentRef ref) {
    if (!IsRemote(ref.extent)) {
      out.push_back(std::move(ref));
    } else if (remote != nullptr) {
      remote->push_back(std::move(ref));
    }
  };
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kTensors, prefix, [&](std::string_view key, std::string_view value) {
    auto t = DecodeTensor(value);
    if (!t.ok()) {
      undecodable.push_back({"tensor " + Printable(key), t.status().message()});
    } else {
      add({"tensor " + Printable(key), std::string(key), t->extent});
    }
    return true;
  }));
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kExperts, prefix, [&](std::string_view key, std::string_view value) {
    auto id = ParseExpertKey(key);
    auto e = DecodeExpert(value);
    std::string what = id.ok() ? "expert " + id->model + "/" + std::to_string(id->layer) + "/" + std::to_string(id->expert)
                               : "expert " + Printable(key);
    if (!id.ok() || !e.ok()) {
      undecodable.push_back({what, !id.ok() ? id.status().message() : e.status().message()});
    } else {
      add({what, std::string(key), e->extent});
    }
    return true;
  }));
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kModels, model, [&](std::string_view key, std::string_view value) {
    if (!model.empty() && key != model) return true;
    auto m = DecodeModel(value);
    if (!m.ok()) {
      undecodable.push_back({"model " + Printable(key), m.status().message()});
      return true;
    }
    for (const auto& a : m->assets) {
      add({"asset " + m->name + "/" + a.name, AssetRecordKey(m->name, a.name), a.extent});
    }
    return true;
  }));
  if (model.empty()) {
    ES_RETURN_IF_ERROR(catalog.Scan(Cf::kMeta, kCatalogLogKeyPrefix, [&](std::string_view key, std::string_view value) {
      auto sequence = ParseCatalogLogKey(key);
      auto e = DecodeCatalogLogRef(value);
      std::string what = "catalog log " + (sequence ? std::to_string(*sequence) : Printable(key));
      if (!sequence || !e.ok()) {
        undecodable.push_back({what, !sequence ? "malformed key" : e.status().message()});
      } else {
        out.push_back({what, std::string(key), *e});
      }
      return true;
    }));
  }
  return Status::Ok();
}

Status CheckExtents(ExtentReader& reader, const std::vector<ExtentRef>& refs, VerifyReport& report) {
  ES_ASSIGN_OR_RETURN(std::vector<const ExtentRef*> readable, CheckStructure(reader, refs, report));
  return CheckContents(reader, readable, report);
}

uint64_t SegmentSpace::record_bytes() const { return file_bytes > kSegmentHeaderSize ? file_bytes - kSegmentHeaderSize : 0; }

Result<std::vector<SegmentSpace>> SegmentSpaces(FileSystem& fs, const std::string& dir, const std::vector<ExtentRef>& refs) {
  std::map<uint32_t, uint64_t> live;
  for (const ExtentRef& r : refs) live[r.extent.segment] += r.extent.record_length;
  ES_ASSIGN_OR_RETURN(auto sizes, SegmentFileSizes(fs, dir));
  std::vector<SegmentSpace> spaces;
  for (const auto& [id, size] : sizes) spaces.push_back({id, size, live[id]});  // in id order
  return spaces;
}

uint64_t SegmentSpace::dead_bytes() const {
  const uint64_t used = kSegmentHeaderSize + live_bytes;
  return file_bytes > used ? file_bytes - used : 0;
}

Result<VerifyReport> Store::Verify(const std::string& model) {
  VerifyReport report;
  std::vector<ExtentRef> refs;
  std::vector<ExtentRef> remote;
  ES_RETURN_IF_ERROR(CollectExtents(*catalog_, model, refs, report.corrupt, &remote));
  report.remote = remote.size();
  if (model.empty()) {
    ES_ASSIGN_OR_RETURN(report.segments, SegmentSpaces(*fs_, segments_dir_, refs));
  }
  ES_RETURN_IF_ERROR(CheckMetadataValues(*catalog_, model, report));
  ES_RETURN_IF_ERROR(CheckExtents(*reader_, refs, report));
  return report;
}

}  // namespace es
