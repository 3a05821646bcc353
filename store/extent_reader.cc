// ExtentReader implementation: checks each request's shape, reads through the engine, verifies on
// completion so that checksumming overlaps the reads still in flight.
#include "store/extent_reader.h"

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

void ExtentReader::ReadBatch(std::span<ExtentRead> reads) { Read(reads, /*verify=*/true); }
void ExtentReader::ReadRaw(std::span<ExtentRead> reads) { Read(reads, /*verify=*/false); }

void ExtentReader::Read(std::span<ExtentRead> reads, bool verify) {
  std::vector<IoRead> io;
  std::vector<size_t> owner;  // io index -> reads index
  io.reserve(reads.size());
  for (size_t i = 0; i < reads.size(); ++i) {
    ExtentRead& r = reads[i];
    r.payload = {};
    r.status = Status::Ok();
    const Extent& e = r.extent;
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
    io.push_back(IoRead{*file, e.offset, r.buffer.first(e.record_length), Status::Ok()});
    owner.push_back(i);
  }
  engine_->ReadBatch(io, [&](size_t k) {
    ExtentRead& r = reads[owner[k]];
    if (!io[k].status.ok()) {
      r.status = io[k].status;
      return;
    }
    if (!verify) {
      r.payload = r.buffer.subspan(kRecordHeaderSize, r.extent.payload_length);
      return;
    }
    auto payload = CheckRecord(io[k].dst, r.extent);
    if (!payload.ok()) {
      r.status = payload.status().WithContext("segment " + std::to_string(r.extent.segment) + " offset " +
                                              std::to_string(r.extent.offset));
      return;
    }
    r.payload = *payload;
  });
}

}  // namespace es
