// GGUF validation. Every count and length is checked against the bytes left before it is used, every product is
// overflow-checked, and the only allocations are for values whose bytes are present in the prefix.
#include "ingest/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "store/base/utf8.h"

namespace es {
namespace {

constexpr uint32_t kMinVersion = 2;
constexpr uint32_t kMaxVersion = 3;
constexpr std::string_view kAlignmentKey = "general.alignment";
// Bytes a metadata value of each element type takes at least: bounds an array's count by the bytes left.
constexpr uint64_t kStringLengthBytes = 8;
// The smallest tensor info: an empty name's length, n_dims, one dimension, the type and the offset.
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
// The smallest key/value: an empty key's length, the value type and a one-byte value.
constexpr uint64_t kMinKeyValueBytes = 8 + 4 + 1;
// Names echoed in error messages are cut to this many bytes.
constexpr size_t kMaxQuotedBytes = 80;
// First bytes read by Open; the buffer doubles while the header runs past it.
constexpr uint64_t kFirstReadBytes = uint64_t{1} << 20;

Status Invalid(std::string_view msg) { return Status::InvalidArgument(msg); }

std::string Quote(std::string_view s) {
  std::string out = "'";
  for (char c : s.substr(0, kMaxQuotedBytes)) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? '?' : c);
  }
  if (s.size() > kMaxQuotedBytes) out += "...";
  return out + "'";
}

uint64_t ScalarBytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: case GgufValueType::kI8: case GgufValueType::kBool: return 1;
    case GgufValueType::kU16: case GgufValueType::kI16: return 2;
    case GgufValueType::kU32: case GgufValueType::kI32: case GgufValueType::kF32: return 4;
    case GgufValueType::kU64: case GgufValueType::kI64: case GgufValueType::kF64: return 8;
    case GgufValueType::kString: return kStringLengthBytes;  // at least its length
    case GgufValueType::kArray: return 4 + 8;               // at least its element type and count
  }
  return 1;
}

bool IsKnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kF64); }

}  // namespace

std::string_view GgufValueTypeName(GgufValueType type) {
  static constexpr std::string_view kNames[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                                "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(type);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

// Reads the header front to back from a bounded prefix.
class GgufParser {
 public:
  GgufParser(std::string_view bytes, uint64_t file_size) : bytes_(bytes), file_size_(file_size) {}
  bool prefix_too_short() const { return prefix_too_short_; }

  Result<GgufHeader> Parse() {
    GgufHeader h;
    ES_ASSIGN_OR_RETURN(uint32_t magic, U32("magic"));
    if (magic != kGgufMagic) {
      return Invalid("not a GGUF file (it does not start with the bytes 'GGUF')");
    }
    ES_ASSIGN_OR_RETURN(h.version_, U32("version"));
    if (h.version_ == 1) {
      return Status::NotSupported("GGUF version 1 (2023, 32-bit counts) is not supported; convert the model again");
    }
    if (h.version_ > 0xffff && (h.version_ >> 24) >= kMinVersion && (h.version_ >> 24) <= kMaxVersion) {
      return Status::NotSupported("a big-endian GGUF file; only little-endian files are supported");
    }
    if (h.version_ < kMinVersion || h.version_ > kMaxVersion) {
      return Invalid("GGUF version " + std::to_string(h.version_) + " is unknown (this build reads 2 and 3)");
    }
    ES_ASSIGN_OR_RETURN(uint64_t tensor_count, U64("tensor count"));
    ES_ASSIGN_OR_RETURN(uint64_t kv_count, U64("metadata count"));
    if (tensor_count > kGgufMaxTensors || tensor_count > (file_size_ - pos_) / kMinTensorInfoBytes) {
      return Invalid("tensor count " + std::to_string(tensor_count) + " is more than the file can hold");
    }
    if (kv_count > kGgufMaxKeyValues || kv_count > (file_size_ - pos_) / kMinKeyValueBytes) {
      return Invalid("metadata count " + std::to_string(kv_count) + " is more than the file can hold");
    }
    for (uint64_t i = 0; i < kv_count; ++i) {
      ES_ASSIGN_OR_RETURN(std::string key, String("metadata key"));
      if (key.empty() || !IsValidUtf8(key)) return Invalid("metadata key #" + std::to_string(i) + " is empty or not UTF-8");
      if (h.metadata_.count(key) != 0) return Invalid("metadata key " + Quote(key) + " appears twice");
      ES_ASSIGN_OR_RETURN(uint32_t type, U32("metadata value type"));
      if (!IsKnownValueType(type)) {
        return Invalid("metadata key " + Quote(key) + " has unknown value type " + std::to_string(type));
      }
      Result<GgufValue> value = Value(static_cast<GgufValueType>(type), /*in_array=*/false);
      if (!value.ok()) return value.status().WithContext("metadata key " + Quote(key));
      h.metadata_.emplace(std::move(key), std::move(value).value());
    }
    if (const GgufValue* a = h.Find(kAlignmentKey)) {
      if (a->type != GgufValueType::kU32) {
        return Invalid(std::string(kAlignmentKey) + " must be a u32, not " + std::string(GgufValueTypeName(a->type)));
      }
      const uint64_t alignment = std::get<uint64_t>(a->scalar);
      if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > kGgufMaxAlignment) {
        return Invalid(std::string(kAlignmentKey) + " is " + std::to_string(alignment) +
                       ", not a power of two up to " + std::to_string(kGgufMaxAlignment));
      }
      h.alignment_ = static_cast<uint32_t>(alignment);
    }
    h.tensors_.reserve(tensor_count);
    for (uint64_t i = 0; i < tensor_count; ++i) {
      ES_ASSIGN_OR_RETURN(GgufTensorInfo t, TensorInfo(i));
      if (!h.by_name_.emplace(t.name, h.tensors_.size()).second) {
        return Invalid("tensor " + Quote(t.name) + " appears twice");
      }
      h.tensors_.push_back(std::move(t));
    }
    // The data section starts at the header's end rounded up to the alignment; each tensor at the previous one's
    // end, rounded up likewise.
    uint64_t data_offset = 0;
    if (!AlignUp(pos_, h.alignment_, data_offset) || data_offset > file_size_) {
      return Invalid("the file ends before its data section (header of " + std::to_string(pos_) + " bytes, file of " +
                     std::to_string(file_size_) + ")");
    }
    h.data_offset_ = data_offset;
    const uint64_t data_size = file_size_ - data_offset;
    uint64_t expected = 0;
    for (GgufTensorInfo& t : h.tensors_) {
      if (t.offset != expected) {
        return Invalid("tensor " + Quote(t.name) + " is at data offset " + std::to_string(t.offset) + ", expected " +
                       std::to_string(expected) + " (tensors must follow each other in order, aligned to " +
                       std::to_string(h.alignment_) + " bytes)");
      }
      if (t.bytes > data_size || t.offset > data_size - t.bytes) {
        return Invalid("tensor " + Quote(t.name) + " (" + std::to_string(t.bytes) + " bytes at data offset " +
                       std::to_string(t.offset) + ") runs past the end of the file: the data section holds " +
                       std::to_string(data_size) + " bytes (truncated download?)");
      }
      t.file_offset = data_offset + t.offset;
      if (!AlignUp(t.offset + t.bytes, h.alignment_, expected)) return Invalid("tensor offsets overflow");
    }
    return h;
  }

 private:
  uint64_t Left() const { return bytes_.size() - pos_; }

  // While the file holds more than the prefix, running out of bytes sets prefix_too_short_: the caller reads
  // further and parses again.
  Status Need(uint64_t n, std::string_view what) {
    if (n <= Left()) return Status::Ok();
    if (pos_ + n <= file_size_ && bytes_.size() < file_size_) {
      prefix_too_short_ = true;
      return Invalid("the header continues past the bytes read");
    }
    return Invalid("the file ends inside the header (reading the " + std::string(what) + " at byte " +
                   std::to_string(pos_) + " of " + std::to_string(file_size_) + ")");
  }

  template <typename T>
  Result<T> Fixed(std::string_view what) {
    ES_RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  Result<uint32_t> U32(std::string_view what) { return Fixed<uint32_t>(what); }
  Result<uint64_t> U64(std::string_view what) { return Fixed<uint64_t>(what); }

  Result<std::string> String(std::string_view what) {
    ES_ASSIGN_OR_RETURN(uint64_t length, U64(what));
    if (length > file_size_ - pos_) {
      return Invalid(std::string(what) + " of " + std::to_string(length) + " bytes is longer than the rest of the file");
    }
    ES_RETURN_IF_ERROR(Need(length, what));
    std::string s(bytes_.substr(pos_, length));
    pos_ += length;
    return s;
  }

  Result<GgufValue> Value(GgufValueType type, bool in_array) {
    GgufValue v;
    v.type = type;
    switch (type) {
      case GgufValueType::kU8: {
        ES_ASSIGN_OR_RETURN(uint8_t x, Fixed<uint8_t>("value"));
        v.scalar = uint64_t{x};
        break;
      }
      case GgufValueType::kU16: {
        ES_ASSIGN_OR_RETURN(uint16_t x, Fixed<uint16_t>("value"));
        v.scalar = uint64_t{x};
        break;
      }
      case GgufValueType::kU32: {
        ES_ASSIGN_OR_RETURN(uint32_t x, Fixed<uint32_t>("value"));
        v.scalar = uint64_t{x};
        break;
      }
      case GgufValueType::kU64: {
        ES_ASSIGN_OR_RETURN(uint64_t x, Fixed<uint64_t>("value"));
        v.scalar = x;
        break;
      }
      case GgufValueType::kI8: {
        ES_ASSIGN_OR_RETURN(int8_t x, Fixed<int8_t>("value"));
        v.scalar = int64_t{x};
        break;
      }
      case GgufValueType::kI16: {
        ES_ASSIGN_OR_RETURN(int16_t x, Fixed<int16_t>("value"));
        v.scalar = int64_t{x};
        break;
      }
      case GgufValueType::kI32: {
        ES_ASSIGN_OR_RETURN(int32_t x, Fixed<int32_t>("value"));
        v.scalar = int64_t{x};
        break;
      }
      case GgufValueType::kI64: {
        ES_ASSIGN_OR_RETURN(int64_t x, Fixed<int64_t>("value"));
        v.scalar = x;
        break;
      }
      case GgufValueType::kF32: {
        ES_ASSIGN_OR_RETURN(float x, Fixed<float>("value"));
        v.scalar = double{x};
        break;
      }
      case GgufValueType::kF64: {
        ES_ASSIGN_OR_RETURN(double x, Fixed<double>("value"));
        v.scalar = x;
        break;
      }
      case GgufValueType::kBool: {
        ES_ASSIGN_OR_RETURN(uint8_t x, Fixed<uint8_t>("value"));
        if (x > 1) return Invalid("a bool is " + std::to_string(x) + ", not 0 or 1");
        v.scalar = x == 1;
        break;
      }
      case GgufValueType::kString: {
        ES_ASSIGN_OR_RETURN(std::string s, String("string"));
        v.scalar = std::move(s);
        break;
      }
      case GgufValueType::kArray: {
        if (in_array) return Invalid("nested arrays are not supported");
        ES_ASSIGN_OR_RETURN(uint32_t element, U32("array element type"));
        if (!IsKnownValueType(element) || element == static_cast<uint32_t>(GgufValueType::kArray)) {
          return Invalid("array of unsupported element type " + std::to_string(element));
        }
        v.element_type = static_cast<GgufValueType>(element);
        ES_ASSIGN_OR_RETURN(uint64_t count, U64("array length"));
        if (count > (file_size_ - pos_) / ScalarBytes(v.element_type)) {
          return Invalid("array of " + std::to_string(count) + " elements is longer than the rest of the file");
        }
        // Reserved only for what the prefix holds: a longer array grows as its elements arrive.
        const uint64_t present = std::min(count, Left() / ScalarBytes(v.element_type));
        if (v.element_type == GgufValueType::kString) v.strings.reserve(present);
        for (uint64_t i = 0; i < count; ++i) {
          ES_ASSIGN_OR_RETURN(GgufValue e, Value(v.element_type, /*in_array=*/true));
          if (auto* s = std::get_if<std::string>(&e.scalar)) {
            v.strings.push_back(std::move(*s));
          } else if (auto* d = std::get_if<double>(&e.scalar)) {
            v.floats.push_back(*d);
          } else if (auto* u = std::get_if<uint64_t>(&e.scalar)) {
            v.integers.push_back(static_cast<int64_t>(*u));
          } else if (auto* n = std::get_if<int64_t>(&e.scalar)) {
            v.integers.push_back(*n);
          } else {
            v.integers.push_back(std::get<bool>(e.scalar) ? 1 : 0);
          }
        }
        break;
      }
    }
    return v;
  }

  Result<GgufTensorInfo> TensorInfo(uint64_t index) {
    GgufTensorInfo t;
    ES_ASSIGN_OR_RETURN(t.name, String("tensor name"));
    if (t.name.empty() || t.name.size() >= kGgufMaxNameBytes || !IsValidUtf8(t.name)) {
      return Invalid("tensor #" + std::to_string(index) + " has the name " + Quote(t.name) +
                     " (names are 1 to " + std::to_string(kGgufMaxNameBytes - 1) + " bytes of UTF-8)");
    }
    ES_ASSIGN_OR_RETURN(uint32_t n_dims, U32("tensor dimension count"));
    if (n_dims == 0 || n_dims > kGgufMaxDims) {
      return Invalid("tensor " + Quote(t.name) + " has " + std::to_string(n_dims) + " dimensions (1 to " +
                     std::to_string(kGgufMaxDims) + ")");
    }
    t.elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ES_ASSIGN_OR_RETURN(uint64_t dim, U64("tensor dimension"));
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(t.elements, dim, &t.elements) ||
          t.elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid("tensor " + Quote(t.name) + " has a dimension of " + std::to_string(dim) +
                       " (zero, or a size that overflows)");
      }
      t.dims.push_back(dim);
    }
    ES_ASSIGN_OR_RETURN(uint32_t type_id, U32("tensor type"));
    const std::optional<GgmlTypeInfo> info = GgmlTypeById(type_id);
    if (!info) {
      return Invalid("tensor " + Quote(t.name) + " has unknown ggml type " + std::to_string(type_id));
    }
    t.type = info->type;
    const std::optional<uint64_t> row_bytes = GgmlRowBytes(t.type, t.dims[0]);
    if (!row_bytes) {
      return Invalid("tensor " + Quote(t.name) + " of type " + std::string(info->name) + " has rows of " +
                     std::to_string(t.dims[0]) + " values, not a whole number of " +
                     std::to_string(info->block_elements) + "-value blocks");
    }
    if (__builtin_mul_overflow(*row_bytes, t.elements / t.dims[0], &t.bytes)) {
      return Invalid("tensor " + Quote(t.name) + " is too large");
    }
    ES_ASSIGN_OR_RETURN(t.offset, U64("tensor offset"));
    return t;
  }

  static bool AlignUp(uint64_t x, uint64_t alignment, uint64_t& out) {
    if (x > std::numeric_limits<uint64_t>::max() - (alignment - 1)) return false;
    out = (x + alignment - 1) / alignment * alignment;
    return true;
  }

  std::string_view bytes_;
  uint64_t file_size_;
  uint64_t pos_ = 0;
  bool prefix_too_short_ = false;
};

const GgufTensorInfo* GgufHeader::FindTensor(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue* GgufHeader::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

Result<std::string> GgufHeader::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("GGUF key " + std::string(key) + " is missing");
  if (const auto* s = std::get_if<std::string>(&v->scalar); s != nullptr && v->type == GgufValueType::kString) {
    return *s;
  }
  return Invalid("GGUF key " + std::string(key) + " is a " + std::string(GgufValueTypeName(v->type)) + ", not a string");
}

Result<uint64_t> GgufHeader::GetUint(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("GGUF key " + std::string(key) + " is missing");
  if (v->type != GgufValueType::kArray) {
    if (const auto* u = std::get_if<uint64_t>(&v->scalar)) return *u;
    if (const auto* i = std::get_if<int64_t>(&v->scalar); i != nullptr && *i >= 0) return static_cast<uint64_t>(*i);
  }
  return Invalid("GGUF key " + std::string(key) + " is a " + std::string(GgufValueTypeName(v->type)) +
                 ", not a non-negative integer");
}

Result<uint32_t> GgufHeader::GetU32(std::string_view key) const {
  ES_ASSIGN_OR_RETURN(uint64_t v, GetUint(key));
  if (v > std::numeric_limits<uint32_t>::max()) {
    return Invalid("GGUF key " + std::string(key) + " is " + std::to_string(v) + ", too large");
  }
  return static_cast<uint32_t>(v);
}

Result<double> GgufHeader::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("GGUF key " + std::string(key) + " is missing");
  if (v->type != GgufValueType::kArray) {
    if (const auto* d = std::get_if<double>(&v->scalar)) return *d;
    if (const auto* u = std::get_if<uint64_t>(&v->scalar)) return static_cast<double>(*u);
    if (const auto* i = std::get_if<int64_t>(&v->scalar)) return static_cast<double>(*i);
  }
  return Invalid("GGUF key " + std::string(key) + " is a " + std::string(GgufValueTypeName(v->type)) + ", not a number");
}

Result<bool> GgufHeader::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("GGUF key " + std::string(key) + " is missing");
  if (const auto* b = std::get_if<bool>(&v->scalar); b != nullptr && v->type == GgufValueType::kBool) return *b;
  return Invalid("GGUF key " + std::string(key) + " is a " + std::string(GgufValueTypeName(v->type)) + ", not a bool");
}

Result<GgufHeader> ParseGgufHeader(std::string_view prefix, uint64_t file_size, bool* prefix_too_short) {
  if (prefix_too_short != nullptr) *prefix_too_short = false;
  if (prefix.size() > file_size) return Invalid("the prefix is longer than the file");
  GgufParser parser(prefix, file_size);
  Result<GgufHeader> header = parser.Parse();
  if (prefix_too_short != nullptr) *prefix_too_short = !header.ok() && parser.prefix_too_short();
  return header;
}

GgufFile::GgufFile(std::shared_ptr<FileSystem> fs, std::unique_ptr<File> file, uint64_t file_size, GgufHeader header)
    : fs_(std::move(fs)), file_(std::move(file)), file_size_(file_size), header_(std::move(header)) {}

Result<GgufFile> GgufFile::Open(std::shared_ptr<FileSystem> fs, const std::string& path) {
  if (fs == nullptr) fs = DefaultFileSystem();
  ES_ASSIGN_OR_RETURN(std::unique_ptr<File> file, fs->Open(path, OpenOptions{}));
  ES_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
  uint64_t want = std::min(file_size, kFirstReadBytes);
  std::string prefix;
  while (true) {
    prefix.resize(want);
    ES_RETURN_IF_ERROR(ReadFully(*file, 0, std::as_writable_bytes(std::span(prefix))));
    bool prefix_too_short = false;
    Result<GgufHeader> header = ParseGgufHeader(prefix, file_size, &prefix_too_short);
    if (header.ok()) return GgufFile(std::move(fs), std::move(file), file_size, std::move(header).value());
    if (!prefix_too_short) return header.status().WithContext(path);
    if (want >= kGgufMaxHeaderBytes) {
      return Invalid(path + ": the GGUF header is larger than " + std::to_string(kGgufMaxHeaderBytes) + " bytes");
    }
    want = std::min({file_size, want * 2, kGgufMaxHeaderBytes});
  }
}

Status GgufFile::ReadTensorRange(const GgufTensorInfo& tensor, uint64_t offset, std::span<std::byte> dst) const {
  const GgufTensorInfo* own = header_.FindTensor(tensor.name);
  if (own == nullptr || own->file_offset != tensor.file_offset || own->bytes != tensor.bytes) {
    return Invalid(path() + ": " + Quote(tensor.name) + " is not a tensor of this file");
  }
  if (offset > tensor.bytes || dst.size() > tensor.bytes - offset) {
    return Invalid(path() + ": read of " + std::to_string(dst.size()) + " bytes at offset " + std::to_string(offset) +
                   " is outside tensor " + Quote(tensor.name) + " (" + std::to_string(tensor.bytes) + " bytes)");
  }
  if (dst.empty()) return Status::Ok();
  Status s = ReadFully(*file_, tensor.file_offset + offset, dst);
  return s.ok() ? s : s.WithContext(path());
}

}  // namespace es
