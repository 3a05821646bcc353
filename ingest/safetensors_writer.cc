// SafetensorsWriter implementation.
#include "ingest/safetensors_writer.h"

#include <cstring>
#include <set>

#include "store/base/json.h"

namespace es {

namespace {
constexpr size_t kWriteBuffer = 8u << 20;
constexpr size_t kHeaderAlign = 8;
}  // namespace

uint64_t TensorSpec::byte_size() const {
  uint64_t n = DTypeSize(dtype);
  for (uint64_t d : shape) n *= d;
  return n;
}

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(std::shared_ptr<FileSystem> fs,
                                                                      const std::string& path,
                                                                      std::vector<TensorSpec> tensors,
                                                                      const std::map<std::string, std::string>& metadata) {
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->fs_ = fs ? fs : DefaultFileSystem();
  w->path_ = path;
  w->tmp_path_ = path + ".tmp";
  std::set<std::string> names;
  JsonWriter j;
  j.BeginObject();
  if (!metadata.empty()) {
    j.Key("__metadata__").BeginObject();
    for (const auto& [k, v] : metadata) j.Key(k).String(v);
    j.EndObject();
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      return Status::InvalidArgument("tensor name '" + t.name + "' is empty, reserved or repeated");
    }
    if (DTypeSize(t.dtype) == 0) return Status::InvalidArgument("tensor '" + t.name + "' has no dtype");
    uint64_t size = t.byte_size();
    j.Key(t.name).BeginObject().Key("dtype").String(DTypeName(t.dtype)).Key("shape").BeginArray();
    for (uint64_t d : t.shape) j.Uint(d);
    j.EndArray().Key("data_offsets").BeginArray().Uint(offset).Uint(offset + size).EndArray().EndObject();
    offset += size;
  }
  j.EndObject();
  w->header_ = j.Take();
  w->data_bytes_ = offset;
  std::string padded = w->header_;
  while (padded.size() % kHeaderAlign != 0) padded.push_back(' ');
  ES_ASSIGN_OR_RETURN(w->file_, w->fs_->Open(w->tmp_path_, OpenOptions{.write = true, .create = true}));
  ES_RETURN_IF_ERROR(w->file_->Truncate(0));
  std::byte len[8];
  uint64_t n = padded.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::byte>(n >> (8 * i));
  ES_RETURN_IF_ERROR(w->file_->Write(0, len));
  ES_RETURN_IF_ERROR(w->file_->Write(8, std::as_bytes(std::span(padded.data(), padded.size()))));
  w->data_offset_ = 8 + padded.size();
  w->buffer_.reserve(kWriteBuffer);
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!finished_ && file_) {
    file_.reset();
    fs_->Remove(tmp_path_).IgnoreError();
  }
}

Status SafetensorsWriter::Flush() {
  if (buffer_.empty()) return Status::Ok();
  ES_RETURN_IF_ERROR(file_->Write(data_offset_ + written_ - buffer_.size(), buffer_));
  buffer_.clear();
  return Status::Ok();
}

Status SafetensorsWriter::Write(std::span<const std::byte> data) {
  if (finished_) return Status::InvalidArgument("write after Finish");
  if (data.size() > data_bytes_ - written_) return Status::InvalidArgument("more tensor data than declared");
  while (!data.empty()) {
    size_t n = std::min(data.size(), kWriteBuffer - buffer_.size());
    buffer_.insert(buffer_.end(), data.begin(), data.begin() + static_cast<ptrdiff_t>(n));
    written_ += n;
    data = data.subspan(n);
    if (buffer_.size() == kWriteBuffer) ES_RETURN_IF_ERROR(Flush());
  }
  return Status::Ok();
}

Status SafetensorsWriter::Finish() {
  if (written_ != data_bytes_) {
    return Status::InvalidArgument("tensor data incomplete: " + std::to_string(written_) + " of " +
                                   std::to_string(data_bytes_) + " bytes written");
  }
  ES_RETURN_IF_ERROR(Flush());
  ES_RETURN_IF_ERROR(file_->Sync());
  file_.reset();
  ES_RETURN_IF_ERROR(fs_->Rename(tmp_path_, path_));
  finished_ = true;
  return Status::Ok();
}

}  // namespace es
