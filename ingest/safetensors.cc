// Safetensors validation. Every number in the header is checked against the bytes actually present before it
// is used, every multiplication is overflow-checked, and nothing is allocated from a declared size: the only
// allocation sized by the file is the header buffer, after its length was checked against the file size and a cap.
#include "ingest/safetensors.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <utility>

#include "store/base/json.h"

namespace es {
namespace {

// The header is a JSON object and must start with its opening brace (the spec forbids leading whitespace).
constexpr char kHeaderOpen = '{';
constexpr char kHeaderClose = '}';
// Writers pad the header with spaces so that the data section starts aligned; nothing else may follow the JSON.
constexpr char kHeaderPadding = ' ';
// A valid header nests three deep (root, tensor entry, shape array). A little more lets a wrongly nested entry
// reach the field checks and get a precise message instead of a parser depth error.
constexpr size_t kMaxHeaderDepth = 8;
// Names and keys echoed in error messages are cut to this many bytes: a header may hold a 100 MB name.
constexpr size_t kMaxQuotedBytes = 120;
constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::string_view kDTypeKey = "dtype";
constexpr std::string_view kShapeKey = "shape";
constexpr std::string_view kOffsetsKey = "data_offsets";
// A tensor entry's data_offsets is [begin, end).
constexpr size_t kOffsetsCount = 2;
// Control characters: C0 (below the space), DEL, and C1 (U+0080..U+009F, UTF-8 0xC2 0x80..0x9F).
constexpr unsigned char kFirstPrintable = 0x20;
constexpr unsigned char kDelete = 0x7f;
constexpr unsigned char kC1Lead = 0xC2;
constexpr unsigned char kC1First = 0x80;
constexpr unsigned char kC1Last = 0x9F;
constexpr unsigned char kUtf8ContinuationMask = 0xC0;
constexpr unsigned char kUtf8Continuation = 0x80;
// Pickle streams start with the PROTO opcode and a protocol number (2..5 in the wild); PyTorch's default format
// since 1.6 is a zip archive. Used only to explain why a file failed, never to accept one.
constexpr unsigned char kPickleProto = 0x80;
constexpr unsigned char kPickleMinProtocol = 2;
constexpr unsigned char kPickleMaxProtocol = 5;
constexpr std::array<unsigned char, 4> kZipMagic = {'P', 'K', 0x03, 0x04};
constexpr std::array<std::string_view, 6> kPickleSuffixes = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"};
constexpr std::string_view kPickleExplanation =
    "loading a pickle file (PyTorch .bin, .pt, .pth, .ckpt) can execute arbitrary code chosen by whoever wrote it, "
    "so expertstore never opens one; convert it to safetensors first, in a sandbox (for example with transformers: "
    "from_pretrained, then save_pretrained(dir, safe_serialization=True))";

Status Invalid(std::string_view msg) { return Status::InvalidArgument(msg); }

bool IsC1Control(std::string_view s, size_t i) {
  return static_cast<unsigned char>(s[i]) == kC1Lead && i + 1 < s.size() &&
         static_cast<unsigned char>(s[i + 1]) >= kC1First && static_cast<unsigned char>(s[i + 1]) <= kC1Last;
}

// `s` as a JSON string literal for an error message: cut (on a UTF-8 boundary) to kMaxQuotedBytes, and with every
// control character escaped, C1 included (AppendJsonString leaves those raw), so no escape sequence reaches a
// terminal or a log.
std::string Quote(std::string_view s) {
  bool cut = s.size() > kMaxQuotedBytes;
  if (cut) {
    size_t n = kMaxQuotedBytes;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & kUtf8ContinuationMask) == kUtf8Continuation) --n;
    s = s.substr(0, n);
  }
  std::string out;
  AppendJsonString(out, s);
  // The quoted text keeps C1 characters as their two UTF-8 bytes: spell them as \u0080..\u009f instead.
  static constexpr char kHex[] = "0123456789abcdef";
  std::string escaped;
  for (size_t i = 0; i < out.size(); ++i) {
    if (IsC1Control(out, i)) {
      auto c = static_cast<unsigned char>(out[i + 1]);
      escaped += "\\u00";
      escaped.push_back(kHex[c >> 4]);
      escaped.push_back(kHex[c & 0xf]);
      ++i;
    } else {
      escaped.push_back(out[i]);
    }
  }
  if (cut) escaped += "...";
  return escaped;
}

std::string TensorContext(std::string_view name) { return "tensor " + Quote(name); }

// An upper bound on the number of values ParseJson would build from `text`, stopping once past `limit`: every
// value but the root follows a '{', '[' or ',' outside a string. Malformed text is left to the parser.
uint64_t CountJsonValuesUpTo(std::string_view text, uint64_t limit) {
  uint64_t count = 1;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[' || c == ',') {
      if (++count > limit) return count;
    }
  }
  return count;
}

// Empty names cannot be looked up; control characters would corrupt logs, terminals and catalog keys.
Status CheckName(std::string_view name) {
  if (name.empty()) return Invalid("empty tensor name");
  for (size_t i = 0; i < name.size(); ++i) {
    auto c = static_cast<unsigned char>(name[i]);
    if (c < kFirstPrintable || c == kDelete || IsC1Control(name, i)) {
      return Invalid(TensorContext(name) + ": name contains a control character at byte " + std::to_string(i));
    }
  }
  return Status::Ok();
}

Status ParseMetadata(const JsonValue& value, std::map<std::string, std::string, std::less<>>& out) {
  if (!value.is_object()) return Invalid("__metadata__ is not an object of strings");
  for (const auto& [key, item] : value.object()) {
    if (!item.is_string()) return Invalid("__metadata__ value for key " + Quote(key) + " is not a string");
    out.emplace(key, item.string_value());
  }
  return Status::Ok();
}

// A non-negative integer no larger than `max`; `what` names it in messages ("shape[1]").
Result<uint64_t> ParseCount(const JsonValue& value, const std::string& what, uint64_t max) {
  if (!value.is_integer()) return Invalid(what + " is not an integer");
  Result<uint64_t> n = value.AsUint64();
  if (!n.ok()) return Invalid(what + " is negative");
  if (*n > max) return Invalid(what + " = " + std::to_string(*n) + " exceeds the limit of " + std::to_string(max));
  return *n;
}

Status ParseShape(const JsonValue& value, DType dtype, SafetensorsTensor& t) {
  if (!value.is_array()) return Invalid("shape is not an array");
  // Dimensions of 0 make the tensor empty, but the product of the others must still fit: code that computes
  // strides or sizes from a subset of the dimensions must never overflow either.
  uint64_t nonzero_product = 1;
  bool has_zero = false;
  t.shape.reserve(value.array().size());
  for (size_t i = 0; i < value.array().size(); ++i) {
    ES_ASSIGN_OR_RETURN(uint64_t dim,
                        ParseCount(value.array()[i], "shape[" + std::to_string(i) + "]", kSafetensorsMaxDimension));
    t.shape.push_back(dim);
    if (dim == 0) {
      has_zero = true;
    } else if (__builtin_mul_overflow(nonzero_product, dim, &nonzero_product)) {
      return Invalid("shape product overflows 64 bits");
    }
  }
  uint64_t max_bytes = 0;
  if (__builtin_mul_overflow(nonzero_product, static_cast<uint64_t>(DTypeSize(dtype)), &max_bytes)) {
    return Invalid("shape product times the dtype size overflows 64 bits");
  }
  t.num_elements = has_zero ? 0 : nonzero_product;
  return Status::Ok();
}

Status ParseOffsets(const JsonValue& value, uint64_t data_size, SafetensorsTensor& t) {
  if (!value.is_array() || value.array().size() != kOffsetsCount) {
    return Invalid("data_offsets is not an array of exactly two integers");
  }
  // Offsets are byte positions inside the data section, so the data size bounds them.
  ES_ASSIGN_OR_RETURN(t.data_begin, ParseCount(value.array()[0], "data_offsets[0]", UINT64_MAX));
  ES_ASSIGN_OR_RETURN(t.data_end, ParseCount(value.array()[1], "data_offsets[1]", UINT64_MAX));
  if (t.data_begin > t.data_end) {
    return Invalid("data_offsets begin " + std::to_string(t.data_begin) + " is after end " +
                   std::to_string(t.data_end));
  }
  if (t.data_end > data_size) {
    return Invalid("data_offsets end " + std::to_string(t.data_end) + " is past the end of the data section (" +
                   std::to_string(data_size) + " bytes)");
  }
  return Status::Ok();
}

Status ParseTensor(const JsonValue& entry, uint64_t data_size, SafetensorsTensor& t) {
  if (!entry.is_object()) return Invalid("entry is not an object");
  const JsonValue* dtype = nullptr;
  const JsonValue* shape = nullptr;
  const JsonValue* offsets = nullptr;
  for (const auto& [key, value] : entry.object()) {
    if (key == kDTypeKey) {
      dtype = &value;
    } else if (key == kShapeKey) {
      shape = &value;
    } else if (key == kOffsetsKey) {
      offsets = &value;
    } else {
      return Invalid("unexpected field " + Quote(key) + " (an entry holds exactly dtype, shape and data_offsets)");
    }
  }
  if (dtype == nullptr) return Invalid("missing field \"dtype\"");
  if (shape == nullptr) return Invalid("missing field \"shape\"");
  if (offsets == nullptr) return Invalid("missing field \"data_offsets\"");

  if (!dtype->is_string()) return Invalid("dtype is not a string");
  std::optional<DType> parsed = ParseDType(dtype->string_value());
  if (!parsed) return Invalid("unsupported dtype " + Quote(dtype->string_value()));
  t.dtype = *parsed;
  ES_RETURN_IF_ERROR(ParseShape(*shape, t.dtype, t));
  ES_RETURN_IF_ERROR(ParseOffsets(*offsets, data_size, t));
  // Cannot overflow: ParseShape checked the product of the non-zero dimensions times the dtype size.
  uint64_t expected = t.num_elements * DTypeSize(t.dtype);
  if (t.byte_size() != expected) {
    return Invalid("data_offsets span " + std::to_string(t.byte_size()) + " bytes but dtype and shape need " +
                   std::to_string(expected));
  }
  return Status::Ok();
}

// The tensors, sorted by offset, must tile [0, data_size) exactly: no byte is shared by two tensors, none is
// left unaccounted for (hidden payloads), and zero-size tensors sit on a boundary, never inside another tensor.
Status CheckTiling(const std::vector<SafetensorsTensor>& sorted, uint64_t data_size) {
  uint64_t covered = 0;  // end of the tensors checked so far
  const SafetensorsTensor* previous = nullptr;
  for (const SafetensorsTensor& t : sorted) {
    if (t.data_begin < covered) {
      return Invalid(TensorContext(t.name) + " at data offsets [" + std::to_string(t.data_begin) + ", " +
                     std::to_string(t.data_end) + ") overlaps " + TensorContext(previous->name) + " ending at " +
                     std::to_string(covered));
    }
    if (t.data_begin > covered) {
      return Invalid("gap of " + std::to_string(t.data_begin - covered) + " bytes in the data section before " +
                     TensorContext(t.name) + " at data offset " + std::to_string(t.data_begin));
    }
    covered = t.data_end;
    previous = &t;
  }
  if (covered != data_size) {
    if (sorted.empty()) {
      return Invalid("header lists no tensors but the data section holds " + std::to_string(data_size) + " bytes");
    }
    return Invalid("data section holds " + std::to_string(data_size - covered) +
                   " bytes after the last tensor; the last tensor must end at the end of the file");
  }
  return Status::Ok();
}

bool LooksLikePickle(std::span<const std::byte, kSafetensorsLengthBytes> prefix) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(prefix[i]); };
  if (byte(0) == kPickleProto && byte(1) >= kPickleMinProtocol && byte(1) <= kPickleMaxProtocol) return true;
  for (size_t i = 0; i < kZipMagic.size(); ++i) {
    if (byte(i) != kZipMagic[i]) return false;
  }
  return true;
}

}  // namespace

const SafetensorsTensor* SafetensorsHeader::Find(std::string_view name) const {
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                             [&](uint32_t index, std::string_view key) { return tensors_[index].name < key; });
  if (it == by_name_.end() || tensors_[*it].name != name) return nullptr;
  return &tensors_[*it];
}

Result<uint64_t> ParseSafetensorsHeaderLength(std::span<const std::byte, kSafetensorsLengthBytes> prefix,
                                              uint64_t file_size) {
  uint64_t length = 0;
  for (size_t i = 0; i < kSafetensorsLengthBytes; ++i) {
    length |= static_cast<uint64_t>(prefix[i]) << (8 * i);
  }
  if (length == 0) return Invalid("header length is 0");
  // Compared without adding to `length`, which may be near 2^64.
  uint64_t available = file_size - kSafetensorsLengthBytes;
  if (length > available) {
    return Invalid("header length " + std::to_string(length) + " is beyond the end of the file (" +
                   std::to_string(available) + " bytes follow the length)");
  }
  if (length > kSafetensorsMaxHeaderBytes) {
    return Invalid("header length " + std::to_string(length) + " exceeds the limit of " +
                   std::to_string(kSafetensorsMaxHeaderBytes) + " bytes");
  }
  return length;
}

Result<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header, uint64_t data_size) {
  if (header.size() > kSafetensorsMaxHeaderBytes) {
    return Invalid("header of " + std::to_string(header.size()) + " bytes exceeds the limit of " +
                   std::to_string(kSafetensorsMaxHeaderBytes) + " bytes");
  }
  size_t end = header.find_last_not_of(kHeaderPadding);
  if (header.empty() || header.front() != kHeaderOpen || end == std::string_view::npos ||
      header[end] != kHeaderClose) {
    return Invalid("header is not a JSON object (it must start with '{' and end with '}' plus optional spaces)");
  }
  std::string_view json = header.substr(0, end + 1);
  if (CountJsonValuesUpTo(json, kSafetensorsMaxHeaderValues) > kSafetensorsMaxHeaderValues) {
    return Invalid("header holds more than " + std::to_string(kSafetensorsMaxHeaderValues) + " JSON values");
  }
  JsonLimits limits;
  limits.max_depth = kMaxHeaderDepth;
  limits.max_bytes = kSafetensorsMaxHeaderBytes;
  Result<JsonValue> root = ParseJson(json, limits);
  if (!root.ok()) return root.status().WithContext("header");
  if (!root->is_object()) return Invalid("header is not a JSON object");

  SafetensorsHeader out;
  out.data_size_ = data_size;
  out.tensors_.reserve(root->object().size());
  for (const auto& [key, value] : root->object()) {
    if (key == kMetadataKey) {
      ES_RETURN_IF_ERROR(ParseMetadata(value, out.metadata_));
      continue;
    }
    ES_RETURN_IF_ERROR(CheckName(key));
    SafetensorsTensor t;
    t.name = key;
    ES_RETURN_IF_ERROR(ParseTensor(value, data_size, t).WithContext(TensorContext(key)));
    out.tensors_.push_back(std::move(t));
  }

  std::sort(out.tensors_.begin(), out.tensors_.end(), [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
    if (a.data_begin != b.data_begin) return a.data_begin < b.data_begin;
    if (a.data_end != b.data_end) return a.data_end < b.data_end;  // zero-size first at a shared offset
    return a.name < b.name;
  });
  ES_RETURN_IF_ERROR(CheckTiling(out.tensors_, data_size));

  // The data section starts right after the prefix and the header, padding included.
  uint64_t data_start = kSafetensorsLengthBytes + header.size();
  out.by_name_.reserve(out.tensors_.size());
  for (size_t i = 0; i < out.tensors_.size(); ++i) {
    out.tensors_[i].file_offset = data_start + out.tensors_[i].data_begin;
    out.by_name_.push_back(static_cast<uint32_t>(i));
  }
  std::sort(out.by_name_.begin(), out.by_name_.end(),
            [&](uint32_t a, uint32_t b) { return out.tensors_[a].name < out.tensors_[b].name; });
  return out;
}

SafetensorsFile::SafetensorsFile(std::shared_ptr<FileSystem> fs, std::unique_ptr<File> file, uint64_t file_size,
                                 SafetensorsHeader header)
    : fs_(std::move(fs)), file_(std::move(file)), file_size_(file_size), header_(std::move(header)) {}

Result<SafetensorsFile> SafetensorsFile::Open(std::shared_ptr<FileSystem> fs, const std::string& path) {
  if (fs == nullptr) fs = DefaultFileSystem();
  ES_ASSIGN_OR_RETURN(std::unique_ptr<File> file, fs->Open(path, OpenOptions{}));
  ES_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
  if (file_size < kSafetensorsLengthBytes) {
    return Invalid(path + ": file is " + std::to_string(file_size) + " bytes, too short for the " +
                   std::to_string(kSafetensorsLengthBytes) + "-byte header length");
  }
  std::array<std::byte, kSafetensorsLengthBytes> prefix;
  ES_RETURN_IF_ERROR(ReadFully(*file, 0, prefix));
  Result<uint64_t> header_length = ParseSafetensorsHeaderLength(prefix, file_size);
  if (!header_length.ok()) {
    Status s = header_length.status().WithContext(path);
    if (!LooksLikePickle(prefix)) return s;
    return Invalid(s.message() + " (the file starts like a PyTorch pickle or zip checkpoint: " +
                   std::string(kPickleExplanation) + ")");
  }
  // Bounded by the checks above: at most kSafetensorsMaxHeaderBytes and no more than the file holds.
  std::string header(*header_length, '\0');
  ES_RETURN_IF_ERROR(ReadFully(*file, kSafetensorsLengthBytes, std::as_writable_bytes(std::span(header))));
  uint64_t data_size = file_size - kSafetensorsLengthBytes - *header_length;
  Result<SafetensorsHeader> parsed = ParseSafetensorsHeader(header, data_size);
  if (!parsed.ok()) return parsed.status().WithContext(path);
  return SafetensorsFile(std::move(fs), std::move(file), file_size, std::move(parsed).value());
}

Status SafetensorsFile::ReadTensor(const SafetensorsTensor& tensor, std::span<std::byte> dst) const {
  if (dst.size() != tensor.byte_size()) {
    return Invalid(path() + ": " + TensorContext(tensor.name) + " holds " + std::to_string(tensor.byte_size()) +
                   " bytes, the buffer " + std::to_string(dst.size()));
  }
  return ReadTensorRange(tensor, 0, dst);
}

Status SafetensorsFile::ReadTensorRange(const SafetensorsTensor& tensor, uint64_t offset, std::span<std::byte> dst) const {
  // A SafetensorsTensor from another file (or altered by the caller) must not turn into a read outside this data section.
  if (tensor.data_begin > tensor.data_end || tensor.data_end > header_.data_size() ||
      tensor.file_offset != data_offset() + tensor.data_begin) {
    return Invalid(path() + ": " + TensorContext(tensor.name) + " is not a tensor of this file");
  }
  if (offset > tensor.byte_size() || dst.size() > tensor.byte_size() - offset) {
    return Invalid(path() + ": read of " + std::to_string(dst.size()) + " bytes at offset " +
                   std::to_string(offset) + " is outside " + TensorContext(tensor.name) + " (" +
                   std::to_string(tensor.byte_size()) + " bytes)");
  }
  if (dst.empty()) return Status::Ok();
  return ReadFully(*file_, tensor.file_offset + offset, dst);
}

bool IsPickleCheckpointName(std::string_view path) {
  std::string name(path.substr(path.find_last_of('/') + 1));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (std::string_view suffix : kPickleSuffixes) {
    if (name.size() > suffix.size() && name.ends_with(suffix)) return true;
  }
  return false;
}

Status RefusePickleCheckpoint(std::string_view path) {
  if (!IsPickleCheckpointName(path)) return Status::Ok();
  return Status::NotSupported(std::string(path) + ": refusing a pickle checkpoint: " +
                              std::string(kPickleExplanation));
}

}  // namespace es
