// Safetensors files from untrusted sources: reads only the length prefix and the JSON header, validates every
// field before anything is trusted, and reads tensor bytes on request. An accepted file's tensors tile its data
// section exactly, in order, with no gap or overlap, and every byte range matches its dtype and shape.
//
// Errors: a file that is not a valid safetensors file is InvalidArgument ("<path>: <reason>"); the caller handed
// us bad input, nothing stored was damaged (that is what Corruption means in this project). I/O failures keep
// their own codes (IOError, NotFound, ...), and a pickle checkpoint is NotSupported. See docs/safetensors.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "store/base/dtype.h"
#include "store/base/file_system.h"
#include "store/base/status.h"

namespace es {

// The little-endian u64 that precedes the header and gives its length in bytes.
inline constexpr size_t kSafetensorsLengthBytes = 8;
// The largest header accepted, as in the reference implementation: real shards have headers of a few MB at most,
// and parsing costs memory proportional to the header.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;
// The largest accepted dimension. Far above any real tensor, low enough that downstream index arithmetic on a
// single dimension has headroom.
inline constexpr uint64_t kSafetensorsMaxDimension = uint64_t{1} << 40;
// The most JSON values (objects, arrays, numbers, strings) a header may hold, counted before parsing: each parsed
// value costs about a hundred bytes, so this bounds the parse tree to a few hundred MB whatever the text holds.
// A real tensor entry is about ten values; the largest real checkpoints hold tens of thousands of tensors.
inline constexpr uint64_t kSafetensorsMaxHeaderValues = uint64_t{1} << 21;

// One tensor of a validated header. Offsets are in bytes.
struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kUnknown;
  std::vector<uint64_t> shape;  // empty for a scalar (rank 0, one element)
  uint64_t num_elements = 0;    // product of `shape`; 0 when any dimension is 0
  uint64_t data_begin = 0;      // relative to the start of the data section
  uint64_t data_end = 0;        // one past the last byte, relative to the data section
  uint64_t file_offset = 0;     // absolute offset of the first byte in the file

  uint64_t byte_size() const { return data_end - data_begin; }
};

// A validated header: tensors and metadata. Immutable once built; safe to read from several threads.
class SafetensorsHeader {
 public:
  // Ordered by data offset (file order); names are unique.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // The "__metadata__" entries (empty if the header has none).
  const std::map<std::string, std::string, std::less<>>& metadata() const { return metadata_; }
  // The tensor named `name`, or null. Points into this header; valid while it lives.
  const SafetensorsTensor* Find(std::string_view name) const;
  // Bytes in the data section, which the tensors cover exactly.
  uint64_t data_size() const { return data_size_; }

 private:
  friend Result<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header, uint64_t data_size);

  std::vector<SafetensorsTensor> tensors_;
  std::vector<uint32_t> by_name_;  // indices into tensors_, sorted by name
  std::map<std::string, std::string, std::less<>> metadata_;
  uint64_t data_size_ = 0;
};

// Decodes and checks the length prefix of a file of `file_size` bytes: the header length must be non-zero, fit
// in the file after the prefix and not exceed kSafetensorsMaxHeaderBytes. Returns the header length.
// Pure; the caller has checked that the file holds at least kSafetensorsLengthBytes.
Result<uint64_t> ParseSafetensorsHeaderLength(std::span<const std::byte, kSafetensorsLengthBytes> prefix,
                                              uint64_t file_size);

// Validates `header` (the bytes after the length prefix, padding included) for a data section of `data_size`
// bytes, and returns the tensors and metadata. Pure: no I/O, no allocation sized by any number in the header.
// Accepted: a JSON object starting with '{', optionally padded with trailing spaces, whose members are
// "__metadata__" (an object of string values) and tensors {"dtype", "shape", "data_offsets"} and nothing else.
Result<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header, uint64_t data_size);

// An open, validated safetensors file. Reads go through the FileSystem it was opened with; they are positional,
// so several threads may read at once. Movable, not copyable.
class SafetensorsFile {
 public:
  // Opens and validates `path`, reading only the length prefix and the header. `fs` null: the real file system.
  static Result<SafetensorsFile> Open(std::shared_ptr<FileSystem> fs, const std::string& path);

  const std::string& path() const { return file_->path(); }
  uint64_t file_size() const { return file_size_; }
  // Absolute offset of the data section (the prefix plus the header).
  uint64_t data_offset() const { return file_size_ - header_.data_size(); }

  const SafetensorsHeader& header() const { return header_; }
  const std::vector<SafetensorsTensor>& tensors() const { return header_.tensors(); }
  const std::map<std::string, std::string, std::less<>>& metadata() const { return header_.metadata(); }
  // The tensor named `name`, or null; valid while this file lives.
  const SafetensorsTensor* Find(std::string_view name) const { return header_.Find(name); }

  // Reads all of `tensor` (one of this file's) into `dst`, which must be exactly tensor.byte_size() bytes.
  Status ReadTensor(const SafetensorsTensor& tensor, std::span<std::byte> dst) const;
  // Reads dst.size() bytes of `tensor` starting `offset` bytes into it, for streaming a large tensor in chunks.
  // The range must lie inside the tensor. `dst` is caller-owned and only written during the call.
  Status ReadTensorRange(const SafetensorsTensor& tensor, uint64_t offset, std::span<std::byte> dst) const;

 private:
  SafetensorsFile(std::shared_ptr<FileSystem> fs, std::unique_ptr<File> file, uint64_t file_size,
                  SafetensorsHeader header);

  std::shared_ptr<FileSystem> fs_;  // kept alive for file_, which a wrapping FileSystem may refer back to
  std::unique_ptr<File> file_;
  uint64_t file_size_ = 0;
  SafetensorsHeader header_;
};

// True when `path`'s file name marks a pickle checkpoint (pytorch_model.bin, *.bin, *.pt, *.pth, *.ckpt, *.pkl,
// *.pickle; case-insensitive).
bool IsPickleCheckpointName(std::string_view path);
// OK for any other name; NotSupported for a pickle checkpoint, saying why it is refused (unpickling runs code
// chosen by whoever wrote the file) and that it must be converted to safetensors first.
Status RefusePickleCheckpoint(std::string_view path);

}  // namespace es
