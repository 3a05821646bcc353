// GGUF files (llama.cpp's model format) from untrusted sources: the header (metadata key/values and tensor
// infos) is read and validated before anything is trusted; tensor bytes are read on request. An accepted file's
// tensors lie in its data section in the order listed, each at the previous one's end rounded up to the
// alignment (what llama.cpp's loader requires), with a whole number of blocks per row of their type.
//
// Errors: a file that is not a valid GGUF file is InvalidArgument ("<path>: <reason>"); a valid file this build
// cannot read (version 1, big-endian) is NotSupported. I/O failures keep their own codes. See docs/gguf.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "store/base/file_system.h"
#include "store/base/ggml_type.h"
#include "store/base/status.h"

namespace es {

inline constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
inline constexpr uint32_t kGgufDefaultAlignment = 32;
// Bounds that keep a hostile header from costing more than its bytes: every count is also checked against the
// bytes left in the file before anything is allocated for it.
inline constexpr uint64_t kGgufMaxTensors = uint64_t{1} << 20;
inline constexpr uint64_t kGgufMaxKeyValues = uint64_t{1} << 20;
inline constexpr uint64_t kGgufMaxHeaderBytes = uint64_t{1} << 30;
inline constexpr uint32_t kGgufMaxDims = 4;           // GGML_MAX_DIMS
inline constexpr uint64_t kGgufMaxNameBytes = 64;     // GGML_MAX_NAME, terminator included in ggml: 63 bytes
inline constexpr uint32_t kGgufMaxAlignment = 1 << 16;

// GGUF metadata value types, as numbered in the file.
enum class GgufValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9,
  kU64 = 10, kI64 = 11, kF64 = 12,
};
std::string_view GgufValueTypeName(GgufValueType type);

// One metadata value. Integers of every width are held as int64 or uint64 (with their file type kept), so that a
// reader asks for the meaning (GetUint) rather than the width a converter happened to write. An array holds its
// element type and its elements in one of three vectors (nested arrays are refused: no model key uses them).
struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  GgufValueType element_type = GgufValueType::kU8;  // kArray only
  std::variant<uint64_t, int64_t, double, bool, std::string> scalar;
  std::vector<std::string> strings;  // array of strings
  std::vector<int64_t> integers;     // array of integers or bools (a u64 above 2^63 keeps its bits)
  std::vector<double> floats;        // array of f32 or f64

  uint64_t array_size() const { return strings.size() + integers.size() + floats.size(); }
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the row length (the contiguous one)
  uint64_t elements = 0;
  uint64_t offset = 0;         // relative to the data section
  uint64_t bytes = 0;
  uint64_t file_offset = 0;    // absolute

  // Bytes of one slice along the last dimension (an expert of a 3-D expert tensor).
  uint64_t slice_bytes() const { return dims.empty() ? bytes : bytes / dims.back(); }
};

// A validated header. Immutable once built; safe to read from several threads.
class GgufHeader {
 public:
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // file order
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  const GgufValue* Find(std::string_view key) const;

  // Typed reads of a metadata key. NotFound when absent; InvalidArgument naming the key when of another kind
  // (a string asked as a number, a negative value asked as unsigned, a number too large for uint32).
  Result<std::string> GetString(std::string_view key) const;
  Result<uint64_t> GetUint(std::string_view key) const;
  Result<uint32_t> GetU32(std::string_view key) const;
  Result<double> GetFloat(std::string_view key) const;
  Result<bool> GetBool(std::string_view key) const;

 private:
  friend class GgufParser;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// Parses a header from the first bytes of a file of `file_size` bytes. When `prefix` ends before the header does,
// fails with *prefix_too_short set (the caller reads more and retries); every other failure is final. Pure: no
// I/O, and no allocation sized by a number in the file beyond what the bytes present can hold.
Result<GgufHeader> ParseGgufHeader(std::string_view prefix, uint64_t file_size, bool* prefix_too_short = nullptr);

// An open, validated GGUF file. Reads are positional, so several threads may read at once. Movable.
class GgufFile {
 public:
  // Opens and validates `path`, reading only the header. `fs` null: the real file system.
  static Result<GgufFile> Open(std::shared_ptr<FileSystem> fs, const std::string& path);

  const std::string& path() const { return file_->path(); }
  uint64_t file_size() const { return file_size_; }
  const GgufHeader& header() const { return header_; }

  // Reads dst.size() bytes of `tensor` (one of this file's) from `offset` bytes into it.
  Status ReadTensorRange(const GgufTensorInfo& tensor, uint64_t offset, std::span<std::byte> dst) const;

 private:
  GgufFile(std::shared_ptr<FileSystem> fs, std::unique_ptr<File> file, uint64_t file_size, GgufHeader header);

  std::shared_ptr<FileSystem> fs_;
  std::unique_ptr<File> file_;
  uint64_t file_size_ = 0;
  GgufHeader header_;
};

}  // namespace es
