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

}  // namespace

Status CollectExtents(const Catalog& catalog, const std::string& model, std::vector<ExtentRef>& out,
                      std::vector<CorruptEntry>& undecodable) {
  std::string prefix = model.empty() ? std::string() : ModelPrefix(model);
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kTensors, prefix, [&](std::string_view key, std::string_view value) {
    auto t = DecodeTensor(value);
    if (!t.ok()) {
      undecodable.push_back({"tensor " + Printable(key), t.status().message()});
    } else {
      out.push_back({"tensor " + Printable(key), std::string(key), t->extent});
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
      out.push_back({what, std::string(key), e->extent});
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
      out.push_back({"asset " + m->name + "/" + a.name, AssetRecordKey(m->name, a.name), a.extent});
    }
    return true;
  }));
  return Status::Ok();
}

Result<VerifyReport> Store::Verify(const std::string& model) {
  VerifyReport report;
  std::vector<ExtentRef> refs;
  ES_RETURN_IF_ERROR(CollectExtents(*catalog_, model, refs, report.corrupt));
  // Values of the metadata column families must decode too.
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
    ES_RETURN_IF_ERROR(catalog_->Scan(m.cf, prefix, [&](std::string_view key, std::string_view value) {
      if (!m.decodes(value)) report.corrupt.push_back({std::string(m.name) + " " + Printable(key), "does not decode"});
      return true;
    }));
  }

  // Structure: each extent inside an existing segment with a valid header, no two extents overlapping.
  std::map<uint32_t, std::vector<const ExtentRef*>> by_segment;
  for (const auto& r : refs) by_segment[r.extent.segment].push_back(&r);
  std::vector<const ExtentRef*> readable;
  AlignedBuffer header(kSegmentHeaderSize);
  if (header.data() == nullptr) return Status::ResourceExhausted("cannot allocate a header buffer");
  for (auto& [segment, list] : by_segment) {
    std::string seg_name = SegmentFileName(segment);
    Result<File*> file = reader_->Segment(segment);
    Status seg_status = file.status();
    uint64_t size = 0;
    if (seg_status.ok()) {
      auto sz = (*file)->Size();
      seg_status = sz.status();
      if (sz.ok()) size = *sz;
    }
    if (seg_status.ok()) {
      IoRead io{*file, 0, header.span(), Status::Ok()};
      reader_->engine().ReadBatch({&io, 1}, nullptr);
      seg_status = io.status;
      if (seg_status.ok()) {
        auto h = DecodeSegmentHeader(header.span());
        seg_status = h.status();
        if (h.ok() && h->segment_id != segment) seg_status = Status::Corruption("segment header names another segment");
      }
    }
    if (!seg_status.ok()) {
      report.corrupt.push_back({"segment " + seg_name, seg_status.message()});
      for (const auto* r : list) report.corrupt.push_back({r->what, "its segment " + seg_name + " is unreadable"});
      continue;
    }
    std::sort(list.begin(), list.end(), [](const ExtentRef* a, const ExtentRef* b) { return a->extent.offset < b->extent.offset; });
    uint64_t prev_end = kSegmentHeaderSize;
    const ExtentRef* prev = nullptr;
    for (const auto* r : list) {
      const Extent& e = r->extent;
      if (e.offset % kBlockSize != 0 || e.record_length != RecordLength(e.payload_length) || e.offset < kSegmentHeaderSize) {
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

  // Contents: records up to kVerifyBatchBytes read whole in bounded batches, larger ones streamed; each checked
  // fully, with its header key.
  AlignedBuffer buffer(kVerifyBatchBytes);
  if (buffer.data() == nullptr) return Status::ResourceExhausted("cannot allocate verify buffers");
  size_t i = 0;
  while (i < readable.size()) {
    if (readable[i]->extent.record_length > kVerifyBatchBytes) {
      const ExtentRef& r = *readable[i];
      ++report.checked;
      Status s = VerifyLargeRecord(*reader_, r.extent, r.record_key, buffer.span());
      if (s.ok()) {
        report.bytes += r.extent.payload_length;
      } else {
        report.corrupt.push_back({r.what, s.message()});
      }
      ++i;
      continue;
    }
    uint64_t batch_bytes = 0;
    size_t j = i;
    while (j < readable.size() && readable[j]->extent.record_length <= kVerifyBatchBytes &&
           batch_bytes + readable[j]->extent.record_length <= kVerifyBatchBytes) {
      batch_bytes += readable[j]->extent.record_length;
      ++j;
    }
    std::vector<ExtentRead> reads;
    uint64_t off = 0;
    for (size_t k = i; k < j; ++k) {
      const Extent& e = readable[k]->extent;
      reads.push_back(ExtentRead{e, {buffer.data() + off, e.record_length}, Status::Ok(), {}});
      off += e.record_length;
    }
    reader_->ReadBatch(reads);
    for (size_t k = i; k < j; ++k) {
      const ExtentRead& r = reads[k - i];
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
    i = j;
  }
  return report;
}

}  // namespace es
