// SafetensorsWriter: writes a safetensors file whose tensors are streamed in declaration order, so files
// larger than memory (make-checkpoint's multi-GB test models) cost only a small buffer. The header is written
// first (padded with spaces to a multiple of 8 bytes, as the reference writer does), then the data. The file
// appears under its final name only after Finish() (written as PATH.tmp, fsynced, renamed). Not thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "store/base/dtype.h"
#include "store/base/file_system.h"
#include "store/base/status.h"

namespace es {

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;

  uint64_t byte_size() const;
};

class SafetensorsWriter {
 public:
  // Validates the specs (unique non-empty names, known dtypes) and writes the header.
  static Result<std::unique_ptr<SafetensorsWriter>> Create(std::shared_ptr<FileSystem> fs, const std::string& path,
                                                           std::vector<TensorSpec> tensors,
                                                           const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();

  // Appends bytes of the current tensor; tensors are filled in declaration order, and a call may span
  // several tensors' boundaries.
  Status Write(std::span<const std::byte> data);
  // Checks that every declared byte was written, syncs and publishes the file.
  Status Finish();

  uint64_t data_bytes() const { return data_bytes_; }
  // The header text as written (without padding), for tests.
  const std::string& header_json() const { return header_; }

 private:
  SafetensorsWriter() = default;
  Status Flush();

  std::shared_ptr<FileSystem> fs_;
  std::string path_;
  std::string tmp_path_;
  std::unique_ptr<File> file_;
  std::string header_;
  uint64_t data_offset_ = 0;  // file offset of the data section
  uint64_t data_bytes_ = 0;   // total declared data
  uint64_t written_ = 0;      // data bytes written so far
  std::vector<std::byte> buffer_;
  bool finished_ = false;
};

}  // namespace es
