// ExtentReader implementation: checks each request's shape, reads through the engine, verifies on
// completion so that checksumming overlaps the reads still in flight.
#include "store/extent_reader.h"

#include <algorithm>
#include <mutex>
#include <optional>
#include <vector>

namespace es {

ExtentReader::ExtentReader(std::shared_ptr<FileSystem> fs, std::string segments_dir, std::unique_ptr<IoEngine> engine)
    : fs_(std::move(fs)), dir_(std::move(segments_dir)), engine_(std::move(engine)) {}

ExtentReader::~ExtentReader() = default;

Result<File*> ExtentReader::Segment(uint32_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = segments_.find(id);
  if (it != segments_.end()) return it->second.get();
  auto f = fs_->Open(JoinPath(dir_, SegmentFileName(id)), OpenOptions{.direct = true});
  if (!f.ok()) {
    if (f.status().IsNotFound()) return Status::Corruption("segment " + SegmentFileName(id) + " is missing");
    return f.status();
  }
  File* raw = f->get();
  segments_.emplace(id, std::move(f).value());
  return raw;
}

namespace {

// Hands out a read whose bytes are in: the I/O's error, or the payload (unverified for raw reads), or the
// verifier's verdict with where the record is (`where()`, built only for a failure).
template <typename Where>
void Complete(ExtentRead& r, const Status& io, RecordVerifier* verifier, const Where& where) {
  if (!io.ok()) {
    r.status = io;
    return;
  }
  if (verifier == nullptr) {
    r.payload = r.buffer.subspan(kRecordHeaderSize, r.extent.payload_length);
    return;
  }
  auto payload = verifier->Finish();
  if (!payload.ok()) {
    r.status = payload.status().WithContext(where());
    return;
  }
  r.payload = *payload;
}

}  // namespace

void ExtentReader::SetRecordSource(uint32_t tier, std::shared_ptr<RecordSource> source) {
  std::lock_guard<std::mutex> lock(mu_);
  if (source) {
    sources_[tier] = std::move(source);
  } else {
    sources_.erase(tier);
  }
}

void ExtentReader::ReadRemote(std::span<ExtentRead> reads, const std::vector<size_t>& remote, bool verify) {
  std::map<uint32_t, std::vector<size_t>> by_tier;
  for (size_t i : remote) by_tier[RemoteTier(reads[i].extent)].push_back(i);
  for (auto& [tier, indices] : by_tier) {
    std::shared_ptr<RecordSource> source;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = sources_.find(tier); it != sources_.end()) source = it->second;
    }
    if (!source) {
      for (size_t i : indices) {
        reads[i].status = Status::IOError("the record lives in remote tier " + std::to_string(tier) +
                                              ", which is not connected (its Ceph cluster is unreachable or not "
                                              "configured: CEPH_CONF)");
      }
      continue;
    }
    std::vector<RecordSource::Fetch> fetches;
    for (size_t i : indices) fetches.push_back({reads[i].extent, reads[i].buffer.first(reads[i].extent.record_length), {}});
    source->FetchRecords(fetches, [&](size_t k) {
      ExtentRead& r = reads[indices[k]];
      std::optional<RecordVerifier> verifier;
      if (verify && fetches[k].status.ok()) {
        verifier.emplace(fetches[k].record, r.extent);
        verifier->Advance(r.extent.record_length);
      }
      Complete(r, fetches[k].status, verifier ? &*verifier : nullptr, [&] { return source->Describe(r.extent); });
    });
  }
}

void ExtentReader::ReadBatch(std::span<ExtentRead> reads) { Read(reads, /*verify=*/true); }
void ExtentReader::ReadRaw(std::span<ExtentRead> reads) { Read(reads, /*verify=*/false); }

Result<ExtentReader::Record> ExtentReader::ReadRecord(const Extent& extent) {
  Record record{AlignedBuffer(extent.record_length), {}};
  if (record.buffer.data() == nullptr) {
    return Status::ResourceExhausted("cannot allocate a buffer of " + std::to_string(extent.record_length) +
                                     " bytes to read a record");
  }
  ExtentRead read{extent, record.buffer.span(), Status::Ok(), {}};
  ReadBatch({&read, 1});
  ES_RETURN_IF_ERROR(read.status);
  record.payload = read.payload;
  return record;
}

namespace {

// Per-extent verification state. Pieces complete in any order (and, under the pread engine, on several
// threads); whichever thread completes the next piece in record order verifies forward as far as the
// completed pieces reach, so checksumming overlaps the reads still in flight.
struct ExtentProgress {
  std::mutex mu;
  std::vector<bool> done;          // per piece
  std::vector<size_t> piece_end;   // record offset where each piece ends
  size_t next = 0;                 // first piece not yet verified
  bool verifying = false;          // a thread is verifying; others just mark their piece done
  Status io_status;
  std::unique_ptr<RecordVerifier> verifier;
};

}  // namespace

void ExtentReader::Read(std::span<ExtentRead> reads, bool verify) {
  const uint64_t piece_bytes = engine_->options().max_request_bytes;
  std::vector<IoRead> io;
  std::vector<std::pair<size_t, size_t>> owner;  // io index -> (reads index, piece index)
  std::vector<ExtentProgress> progress(reads.size());
  std::vector<size_t> remote;
  for (size_t i = 0; i < reads.size(); ++i) {
    ExtentRead& r = reads[i];
    r.payload = {};
    r.status = Status::Ok();
    const Extent& e = r.extent;
    if (IsRemote(e)) {
      if (e.record_length != RecordLength(e.payload_length)) {
        r.status = Status::Corruption("malformed remote extent of tier " + std::to_string(RemoteTier(e)));
      } else if (r.buffer.size() < e.record_length) {
        r.status = Status::InvalidArgument("read buffer too small");
      } else {
        remote.push_back(i);
      }
      continue;
    }
    if (e.offset % kBlockSize != 0 || e.offset < kSegmentHeaderSize || e.record_length != RecordLength(e.payload_length)) {
      r.status = Status::Corruption("malformed extent in segment " + std::to_string(e.segment) + " at offset " +
                                    std::to_string(e.offset));
      continue;
    }
    if (r.buffer.size() < e.record_length || reinterpret_cast<uintptr_t>(r.buffer.data()) % kDirectIoAlignment != 0) {
      r.status = Status::InvalidArgument("read buffer too small or not 4 KiB aligned");
      continue;
    }
    Result<File*> file = Segment(e.segment);
    if (!file.ok()) {
      r.status = file.status();
      continue;
    }
    std::span<std::byte> record = r.buffer.first(e.record_length);
    ExtentProgress& p = progress[i];
    if (verify) p.verifier = std::make_unique<RecordVerifier>(record, e);
    uint64_t step = piece_bytes == 0 ? e.record_length : piece_bytes;
    for (uint64_t off = 0; off < e.record_length; off += step) {
      uint64_t len = std::min(step, e.record_length - off);
      owner.emplace_back(i, p.done.size());
      p.done.push_back(false);
      p.piece_end.push_back(off + len);
      io.push_back(IoRead{*file, e.offset + off, record.subspan(off, len), Status::Ok()});
    }
  }
  auto finish = [&](size_t i) {
    ExtentRead& r = reads[i];
    ExtentProgress& p = progress[i];
    Complete(r, p.io_status, verify ? p.verifier.get() : nullptr, [&] {
      return "segment " + std::to_string(r.extent.segment) + " offset " + std::to_string(r.extent.offset);
    });
  };
  if (!remote.empty()) ReadRemote(reads, remote, verify);
  if (io.empty()) return;
  engine_->ReadBatch(io, [&](size_t k) {
    auto [i, piece] = owner[k];
    ExtentProgress& p = progress[i];
    std::unique_lock<std::mutex> lock(p.mu);
    p.done[piece] = true;
    if (!io[k].status.ok() && p.io_status.ok()) p.io_status = io[k].status;
    if (p.verifying) return;
    p.verifying = true;
    while (p.next < p.done.size() && p.done[p.next]) {
      size_t end = p.piece_end[p.next];
      bool intact = p.io_status.ok();
      lock.unlock();
      if (p.verifier && intact) p.verifier->Advance(end);
      lock.lock();
      ++p.next;
    }
    p.verifying = false;
    if (p.next == p.done.size()) {
      lock.unlock();
      finish(i);
    }
  });
}

}  // namespace es
