// SegmentWriter implementation. Payload bytes go through an aligned staging buffer in large pwrites; the
// record header is written last, once the payload checksum is known. Every write is block-aligned in offset,
// length and memory, so segment files are written with O_DIRECT (where the file system allows it): the bytes go
// from the staging buffer to the device without a page-cache copy and without competing writeback, which
// roughly halved ingest's system time; Sync() is then a device cache flush plus the file's metadata.
#include "store/segment_writer.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace es {
namespace {

constexpr size_t kStagingBytes = 4u << 20;
// How segment files are opened for appending (see the top of the file).
constexpr OpenOptions kAppendOptions{.write = true, .direct = true};

uint64_t NowUnixSeconds() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

}  // namespace

SegmentWriter::SegmentWriter(std::shared_ptr<FileSystem> fs, std::string segments_dir, uint64_t max_segment_bytes)
    : fs_(std::move(fs)), dir_(std::move(segments_dir)), max_segment_bytes_(max_segment_bytes),
      staging_(kStagingBytes) {}

SegmentWriter::~SegmentWriter() = default;

Status SegmentWriter::CheckAlive() const {
  if (dead()) return Status::IOError("segment writer is read-only after an earlier failure: " + dead_reason_.ToString());
  return Status::Ok();
}

Status SegmentWriter::Kill(Status why) {
  if (dead_reason_.ok()) dead_reason_ = why;
  in_record_ = false;
  return why;
}

Status SegmentWriter::Open(uint32_t last_segment, uint64_t last_segment_size) {
  if (staging_.data() == nullptr) return Status::ResourceExhausted("cannot allocate the segment staging buffer");
  active_id_ = last_segment;
  // A published segment always holds its header; a shorter one was damaged: leave it, start the next one.
  if (last_segment == 0 || last_segment_size < kSegmentHeaderSize || last_segment_size >= max_segment_bytes_) {
    return Status::Ok();
  }
  ES_ASSIGN_OR_RETURN(active_, fs_->Open(JoinPath(dir_, SegmentFileName(last_segment)), kAppendOptions));
  tail_ = last_segment_size;
  return Status::Ok();
}

Status SegmentWriter::StartSegment(uint32_t id) {
  std::string final_path = JoinPath(dir_, SegmentFileName(id));
  std::string tmp_path = final_path + ".tmp";
  {
    ES_ASSIGN_OR_RETURN(auto tmp, fs_->Open(tmp_path, OpenOptions{.write = true, .create = true, .exclusive = true}));
    AlignedBuffer header(kSegmentHeaderSize);
    if (header.data() == nullptr) return Status::ResourceExhausted("cannot allocate a segment header");
    ES_RETURN_IF_ERROR(EncodeSegmentHeader({id, NowUnixSeconds()}, header.span()));
    Status s = tmp->Write(0, header.span());
    if (s.ok()) s = tmp->Sync();
    if (!s.ok()) {
      tmp.reset();
      fs_->Remove(tmp_path).IgnoreError();
      return s;
    }
  }
  ES_RETURN_IF_ERROR(fs_->Rename(tmp_path, final_path));
  Status s = fs_->SyncDir(dir_);
  if (!s.ok()) return Kill(s);  // the rename may or may not survive a crash: stop writing
  if (active_ && active_dirty_) unsynced_sealed_.push_back(std::move(active_));
  ES_ASSIGN_OR_RETURN(active_, fs_->Open(final_path, kAppendOptions));
  active_id_ = id;
  tail_ = kSegmentHeaderSize;
  active_dirty_ = false;
  created_since_sync_.push_back(id);
  return Status::Ok();
}

Status SegmentWriter::Seal() {
  ES_RETURN_IF_ERROR(CheckAlive());
  if (in_record_) return Status::InvalidArgument("Seal while a record is open");
  return StartSegment(active_id_ + 1);
}

Status SegmentWriter::BeginRecord(RecordKind kind, std::string key, uint64_t payload_length) {
  ES_RETURN_IF_ERROR(CheckAlive());
  if (in_record_) return Status::InvalidArgument("BeginRecord while another record is open");
  if (key.size() > kMaxRecordKeyLength) return Status::InvalidArgument("record key too long");
  uint64_t length = RecordLength(payload_length);
  if (!active_ || (tail_ > kSegmentHeaderSize && tail_ + length > max_segment_bytes_)) {
    ES_RETURN_IF_ERROR(StartSegment(active_id_ + 1));
  }
  header_ = RecordHeader{kind, payload_length, 0, std::move(key)};
  record_offset_ = tail_;
  payload_written_ = 0;
  staged_from_ = record_offset_ + kRecordHeaderSize;
  staged_ = 0;
  hash_.Reset();
  in_record_ = true;
  active_dirty_ = true;
  return Status::Ok();
}

Status SegmentWriter::FlushStaging() {
  if (staged_ == 0) return Status::Ok();
  Status s = active_->Write(staged_from_, {staging_.data(), staged_});
  if (!s.ok()) {
    in_record_ = false;  // the caller rolls the transaction back
    return s;
  }
  staged_from_ += staged_;
  staged_ = 0;
  return Status::Ok();
}

Status SegmentWriter::WritePayload(std::span<const std::byte> data) {
  ES_RETURN_IF_ERROR(CheckAlive());
  if (!in_record_) return Status::InvalidArgument("WritePayload without an open record");
  if (data.size() > header_.payload_length - payload_written_) {
    in_record_ = false;
    return Status::InvalidArgument("record payload longer than declared");
  }
  hash_.Update(data);
  payload_written_ += data.size();
  while (!data.empty()) {
    size_t n = std::min(data.size(), staging_.size() - staged_);
    std::memcpy(staging_.data() + staged_, data.data(), n);
    staged_ += n;
    data = data.subspan(n);
    if (staged_ == staging_.size()) ES_RETURN_IF_ERROR(FlushStaging());
  }
  return Status::Ok();
}

Result<Extent> SegmentWriter::FinishRecord() {
  ES_RETURN_IF_ERROR(CheckAlive());
  if (!in_record_) return Status::InvalidArgument("FinishRecord without an open record");
  if (payload_written_ != header_.payload_length) {
    in_record_ = false;
    return Status::InvalidArgument("record payload shorter than declared");
  }
  // Zero padding up to the block boundary; staging_.size() is a multiple of the block size, so it fits.
  size_t padded = static_cast<size_t>(AlignUp(staged_, kBlockSize));
  std::memset(staging_.data() + staged_, 0, padded - staged_);
  staged_ = padded;
  ES_RETURN_IF_ERROR(FlushStaging());
  header_.payload_checksum = hash_.Digest();
  AlignedBuffer block(kRecordHeaderSize);
  if (block.data() == nullptr) return Status::ResourceExhausted("cannot allocate a record header");
  ES_RETURN_IF_ERROR(EncodeRecordHeader(header_, block.span()));
  Status s = active_->Write(record_offset_, block.span());
  in_record_ = false;
  if (!s.ok()) return s;
  Extent e{active_id_, record_offset_, RecordLength(header_.payload_length), header_.payload_length,
           header_.payload_checksum};
  tail_ = e.end();
  return e;
}

Status SegmentWriter::Sync() {
  ES_RETURN_IF_ERROR(CheckAlive());
  for (auto& f : unsynced_sealed_) {
    Status s = f->DataSync();
    if (!s.ok()) return Kill(s);
  }
  unsynced_sealed_.clear();
  if (active_ && active_dirty_) {
    Status s = active_->DataSync();
    if (!s.ok()) return Kill(s);
    active_dirty_ = false;
  }
  created_since_sync_.clear();
  return Status::Ok();
}

Status SegmentWriter::RollbackTo(Position pos) {
  ES_RETURN_IF_ERROR(CheckAlive());
  in_record_ = false;
  unsynced_sealed_.clear();
  // Segments created after `pos` hold nothing the catalog references.
  bool removed = false;
  for (uint32_t id : created_since_sync_) {
    if (id <= pos.segment) continue;
    if (active_id_ == id) active_.reset();
    Status s = fs_->Remove(JoinPath(dir_, SegmentFileName(id)));
    if (!s.ok()) return Kill(s);
    removed = true;
  }
  std::erase_if(created_since_sync_, [&](uint32_t id) { return id > pos.segment; });
  if (removed) {
    Status s = fs_->SyncDir(dir_);
    if (!s.ok()) return Kill(s);
  }
  if (pos.offset == 0) {
    // No segment was open for appending at `pos`: the next record starts segment pos.segment + 1.
    active_.reset();
    active_id_ = pos.segment;
    tail_ = 0;
    active_dirty_ = false;
    return Status::Ok();
  }
  if (active_id_ != pos.segment || !active_) {
    auto f = fs_->Open(JoinPath(dir_, SegmentFileName(pos.segment)), kAppendOptions);
    if (!f.ok()) return Kill(f.status());
    active_ = std::move(f).value();
    active_id_ = pos.segment;
  }
  Status s = active_->Truncate(pos.offset);
  if (s.ok()) s = active_->Sync();
  if (!s.ok()) return Kill(s);
  tail_ = pos.offset;
  active_dirty_ = false;
  return Status::Ok();
}

}  // namespace es
