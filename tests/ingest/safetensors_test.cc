// Tests for the safetensors parser: one negative test per bad-input class (each checks the status code, the file
// name and the reason in the message), round trips of hand-built files, I/O faults, a byte-flip sweep, and the
// real tiny-qwen3-moe checkpoint.
#include "ingest/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/util/files.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

using ::testing::HasSubstr;

const std::string kRealShard = std::string(testing::kTinyModel) + "/model-00001-of-00002.safetensors";
// Writers align the data section to this many bytes by padding the header with spaces.
constexpr size_t kHeaderAlignment = 8;

std::string LengthPrefix(uint64_t n) {
  std::string out(kSafetensorsLengthBytes, '\0');
  for (size_t i = 0; i < kSafetensorsLengthBytes; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A whole file: the length prefix, `header` padded with spaces to a multiple of `align`, then `data`.
std::string FileBytes(std::string_view header, std::string_view data = {}, size_t align = 1) {
  std::string h(header);
  while (h.size() % align != 0) h += ' ';
  return LengthPrefix(h.size()) + h + std::string(data);
}

void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::vector<std::byte> ToBytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());  // memcpy from a null pointer is UB even for 0 bytes
  return out;
}

// Forwards to the real file system, counting the bytes read and optionally failing or shortening reads.
struct FaultConfig {
  std::atomic<uint64_t> bytes_read{0};
  bool fail_reads = false;        // every Read returns EIO
  size_t max_read_bytes = 0;      // non-zero: each Read returns at most this many bytes
};

class FaultFile final : public FileWrapper {
 public:
  FaultFile(std::unique_ptr<File> target, FaultConfig* config) : FileWrapper(std::move(target)), config_(config) {}
  Result<size_t> Read(uint64_t offset, std::span<std::byte> dst) override {
    if (config_->fail_reads) return ErrnoStatus(EIO, "read " + path());
    if (config_->max_read_bytes != 0 && dst.size() > config_->max_read_bytes) {
      dst = dst.first(config_->max_read_bytes);
    }
    Result<size_t> n = target().Read(offset, dst);
    if (n.ok()) config_->bytes_read += *n;
    return n;
  }

 private:
  FaultConfig* config_;
};

class FaultFileSystem final : public FileSystemWrapper {
 public:
  FaultConfig config;

  FaultFileSystem() : FileSystemWrapper(DefaultFileSystem()) {}
  Result<std::unique_ptr<File>> Open(const std::string& path, const OpenOptions& options) override {
    ES_ASSIGN_OR_RETURN(std::unique_ptr<File> f, target().Open(path, options));
    return std::unique_ptr<File>(new FaultFile(std::move(f), &config));
  }
};

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed"; }

  std::string Write(std::string_view bytes, std::string_view name = "model.safetensors") {
    std::string path = dir_.path() + "/" + std::string(name);
    WriteFile(path, bytes);
    return path;
  }

  // Writes `bytes` to a file and expects Open to reject it as InvalidArgument, naming the file and `reason`.
  void ExpectRejected(std::string_view bytes, std::string_view reason) {
    std::string path = Write(bytes);
    Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, path);
    ASSERT_FALSE(f.ok()) << "accepted: " << bytes.substr(kSafetensorsLengthBytes);
    EXPECT_TRUE(f.status().IsInvalidArgument()) << f.status().ToString();
    EXPECT_THAT(f.status().message(), HasSubstr(path));
    EXPECT_THAT(f.status().message(), HasSubstr(std::string(reason)));
  }

  // The same for a header over a data section of `data_size` zero bytes.
  void ExpectHeaderRejected(std::string_view header, uint64_t data_size, std::string_view reason) {
    ExpectRejected(FileBytes(header, std::string(data_size, '\0')), reason);
  }

  testing::TempDir dir_;
};

// A one-tensor header {"t": {<fields>}}.
std::string OneTensor(std::string_view fields) { return "{\"t\":{" + std::string(fields) + "}}"; }

// ---------------------------------------------------------------------------------------------------------------
// The length prefix.

TEST_F(SafetensorsTest, RejectsFileShorterThanLengthPrefix) {
  ExpectRejected("", "too short");
  ExpectRejected("1234567", "too short");
}

TEST_F(SafetensorsTest, RejectsZeroHeaderLength) { ExpectRejected(LengthPrefix(0) + "{}", "header length is 0"); }

TEST_F(SafetensorsTest, RejectsHeaderLengthBeyondFile) {
  ExpectRejected(LengthPrefix(3) + "{}", "beyond the end of the file");
  ExpectRejected(LengthPrefix(1), "beyond the end of the file");
}

TEST_F(SafetensorsTest, RejectsOverflowingHeaderLength) {
  // 8 + length wraps around 2^64 for these: the check must not add before comparing.
  for (uint64_t n : {UINT64_MAX, UINT64_MAX - 7, UINT64_MAX - 6, uint64_t{1} << 63}) {
    ExpectRejected(LengthPrefix(n) + "{}", "beyond the end of the file");
  }
}

TEST_F(SafetensorsTest, RejectsHeaderAboveCapWithoutReadingIt) {
  // A sparse file as long as the declared header: only the cap can reject it, and it must do so before reading.
  uint64_t length = kSafetensorsMaxHeaderBytes + 1;
  std::string path = Write(LengthPrefix(length));
  std::filesystem::resize_file(path, kSafetensorsLengthBytes + length);
  auto fs = std::make_shared<FaultFileSystem>();
  Result<SafetensorsFile> f = SafetensorsFile::Open(fs, path);
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(f.status().IsInvalidArgument()) << f.status().ToString();
  EXPECT_THAT(f.status().message(), HasSubstr(path));
  EXPECT_THAT(f.status().message(), HasSubstr("exceeds the limit of 100000000 bytes"));
  EXPECT_EQ(fs->config.bytes_read.load(), kSafetensorsLengthBytes);
}

TEST(SafetensorsLengthTest, PureLengthChecks) {
  auto parse = [](uint64_t n, uint64_t file_size) {
    std::string p = LengthPrefix(n);
    std::array<std::byte, kSafetensorsLengthBytes> prefix;
    std::memcpy(prefix.data(), p.data(), p.size());
    return ParseSafetensorsHeaderLength(prefix, file_size);
  };
  EXPECT_EQ(*parse(2, 10), 2u);
  EXPECT_EQ(*parse(kSafetensorsMaxHeaderBytes, kSafetensorsMaxHeaderBytes + 8), kSafetensorsMaxHeaderBytes);
  EXPECT_FALSE(parse(3, 10).ok());
  EXPECT_FALSE(parse(0, 10).ok());
  EXPECT_FALSE(parse(UINT64_MAX, UINT64_MAX).ok());
  EXPECT_FALSE(parse(kSafetensorsMaxHeaderBytes + 1, UINT64_MAX).ok());
  // Little-endian: 0x0102 is 258.
  EXPECT_EQ(*parse(0x0102, 300), 0x0102u);
}

// ---------------------------------------------------------------------------------------------------------------
// The header text.

TEST_F(SafetensorsTest, RejectsHeaderNotUtf8) {
  ExpectHeaderRejected("{\"t\xff\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, "UTF-8");
  ExpectHeaderRejected("{\"__metadata__\":{\"k\":\"\xc3\x28\"}}", 0, "UTF-8");
  // An overlong encoding of '/' and an encoded surrogate are not UTF-8 either.
  ExpectHeaderRejected("{\"__metadata__\":{\"k\":\"\xc0\xaf\"}}", 0, "UTF-8");
  ExpectHeaderRejected("{\"__metadata__\":{\"k\":\"\xed\xa0\x80\"}}", 0, "UTF-8");
}

TEST_F(SafetensorsTest, RejectsHeaderNotJsonObject) {
  ExpectHeaderRejected("[]", 0, "not a JSON object");
  ExpectHeaderRejected("\"str\"", 0, "not a JSON object");
  ExpectHeaderRejected("42", 0, "not a JSON object");
  ExpectHeaderRejected(" {}", 0, "not a JSON object");  // the spec requires '{' first
  ExpectHeaderRejected("{", 0, "not a JSON object");
  ExpectHeaderRejected("{} x", 0, "not a JSON object");
  ExpectHeaderRejected(std::string("{}\0\0", 4), 0, "not a JSON object");  // NUL padding is not allowed
  ExpectHeaderRejected("{}\n", 0, "not a JSON object");                    // only spaces pad
  ExpectHeaderRejected("{\"a\":}", 0, "invalid JSON");
  ExpectHeaderRejected("{} {}", 0, "invalid JSON");
  ExpectHeaderRejected("{\"t\":{\"dtype\":\"F32\",}}", 0, "invalid JSON");
}

TEST_F(SafetensorsTest, RejectsTooDeepHeader) {
  ExpectHeaderRejected("{\"__metadata__\":" + std::string(100, '[') + std::string(100, ']') + "}", 0,
                       "invalid JSON");
}

TEST_F(SafetensorsTest, RejectsHeaderWithTooManyValues) {
  // Each "0," would become a parsed value; the count is refused before the parse tree is built.
  std::string shape;
  for (uint64_t i = 0; i <= kSafetensorsMaxHeaderValues; ++i) shape += i == 0 ? "0" : ",0";
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[" + shape + "],\"data_offsets\":[0,0]"), 0,
                       "JSON values");
}

TEST_F(SafetensorsTest, RejectsDuplicateKeys) {
  std::string entry = "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}";
  ExpectHeaderRejected("{\"t\":" + entry + ",\"t\":" + entry + "}", 1, "duplicate key \"t\"");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]"), 1,
                       "duplicate key \"dtype\"");
  ExpectHeaderRejected("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate key \"__metadata__\"");
  ExpectHeaderRejected("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "duplicate key \"k\"");
}

TEST_F(SafetensorsTest, RejectsMetadataNotStringMap) {
  ExpectHeaderRejected("{\"__metadata__\":\"pt\"}", 0, "__metadata__ is not an object");
  ExpectHeaderRejected("{\"__metadata__\":[\"a\"]}", 0, "__metadata__ is not an object");
  ExpectHeaderRejected("{\"__metadata__\":null}", 0, "__metadata__ is not an object");
  ExpectHeaderRejected("{\"__metadata__\":{\"format\":1}}", 0, "value for key \"format\" is not a string");
  ExpectHeaderRejected("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, "value for key \"a\" is not a string");
  ExpectHeaderRejected("{\"__metadata__\":{\"a\":null}}", 0, "value for key \"a\" is not a string");
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor entries.

TEST_F(SafetensorsTest, RejectsEntryNotObject) {
  ExpectHeaderRejected("{\"t\":[\"F32\",[1],[0,4]]}", 4, "tensor \"t\": entry is not an object");
  ExpectHeaderRejected("{\"t\":\"F32\"}", 4, "entry is not an object");
}

TEST_F(SafetensorsTest, RejectsUnknownDtype) {
  for (std::string_view dtype : {"F128", "bf16", "", "C64", "F8_E8M0"}) {
    ExpectHeaderRejected(OneTensor("\"dtype\":\"" + std::string(dtype) + "\",\"shape\":[1],\"data_offsets\":[0,1]"),
                         1, "unsupported dtype \"" + std::string(dtype) + "\"");
  }
  ExpectHeaderRejected(OneTensor("\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]"), 4, "dtype is not a string");
}

TEST_F(SafetensorsTest, RejectsMissingField) {
  ExpectHeaderRejected(OneTensor("\"shape\":[1],\"data_offsets\":[0,4]"), 4, "missing field \"dtype\"");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"data_offsets\":[0,4]"), 4, "missing field \"shape\"");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[1]"), 4, "missing field \"data_offsets\"");
  ExpectHeaderRejected(OneTensor(""), 0, "missing field");
}

TEST_F(SafetensorsTest, RejectsExtraField) {
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"offset\":0"), 4,
                       "unexpected field \"offset\"");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"Shape\":[1],\"data_offsets\":[0,4]"), 4,
                       "unexpected field \"Shape\"");
}

TEST_F(SafetensorsTest, RejectsShapeNotArray) {
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]"), 4,
                       "shape is not an array");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]"), 4,
                       "shape is not an array");
}

TEST_F(SafetensorsTest, RejectsNegativeShape) {
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,0]"), 0,
                       "shape[1] is negative");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[-9223372036854775808],\"data_offsets\":[0,0]"), 0,
                       "shape[0] is negative");
}

TEST_F(SafetensorsTest, RejectsNonIntegerShape) {
  for (std::string_view dim : {"1.5", "2.0", "1e3", "\"4\"", "null", "true", "[1]"}) {
    ExpectHeaderRejected(OneTensor("\"dtype\":\"U8\",\"shape\":[" + std::string(dim) + "],\"data_offsets\":[0,4]"),
                         4, "shape[0] is not an integer");
  }
}

TEST_F(SafetensorsTest, RejectsHugeShapeValue) {
  ExpectHeaderRejected(OneTensor("\"dtype\":\"U8\",\"shape\":[1099511627777],\"data_offsets\":[0,0]"), 0,
                       "shape[0] = 1099511627777 exceeds the limit of 1099511627776");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"U8\",\"shape\":[1,18446744073709551615],\"data_offsets\":[0,0]"), 0,
                       "shape[1] = 18446744073709551615 exceeds the limit");
  // Beyond 2^64 the literal is not an integer any JSON reader here can hold: rejected all the same.
  std::string path = Write(FileBytes(OneTensor("\"dtype\":\"U8\",\"shape\":[100000000000000000000],"
                                               "\"data_offsets\":[0,0]")));
  Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, path);
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(f.status().IsInvalidArgument()) << f.status().ToString();
}

TEST_F(SafetensorsTest, RejectsShapeProductOverflow) {
  // 2^40 * 2^40 = 2^80.
  ExpectHeaderRejected(OneTensor("\"dtype\":\"U8\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,0]"),
                       0, "shape product overflows 64 bits");
  // A zero dimension does not excuse an overflowing product of the others.
  ExpectHeaderRejected(
      OneTensor("\"dtype\":\"U8\",\"shape\":[1099511627776,0,1099511627776],\"data_offsets\":[0,0]"), 0,
      "shape product overflows 64 bits");
  // 2^40 * 2^23 = 2^63 elements fit, but not as 4-byte floats.
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[1099511627776,8388608],\"data_offsets\":[0,0]"), 0,
                       "times the dtype size overflows 64 bits");
}

TEST_F(SafetensorsTest, RejectsMalformedDataOffsets) {
  for (std::string_view offsets : {"4", "[]", "[0]", "[0,4,8]", "{\"0\":4}", "null"}) {
    ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":" + std::string(offsets)), 4,
                         "data_offsets is not an array of exactly two integers");
  }
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]"), 4,
                       "data_offsets[1] is not an integer");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]"), 4,
                       "data_offsets[0] is not an integer");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-4,0]"), 4,
                       "data_offsets[0] is negative");
}

TEST_F(SafetensorsTest, RejectsBeginAfterEnd) {
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]"), 8,
                       "data_offsets begin 8 is after end 4");
}

TEST_F(SafetensorsTest, RejectsOffsetsPastEndOfData) {
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"), 4,
                       "data_offsets end 8 is past the end of the data section (4 bytes)");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[18446744073709551615,"
                                 "18446744073709551615]"),
                       4, "past the end of the data section");
}

TEST_F(SafetensorsTest, RejectsByteLengthMismatch) {
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]"), 4,
                       "data_offsets span 4 bytes but dtype and shape need 8");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]"), 4,
                       "span 4 bytes but dtype and shape need 2");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[0,4]"), 4,
                       "span 4 bytes but dtype and shape need 0");
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectHeaderRejected(
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
      "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
      6, "tensor \"b\" at data offsets [2, 6) overlaps tensor \"a\" ending at 4");
  // Two tensors on the same bytes.
  ExpectHeaderRejected(
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
      "\"b\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
      4, "overlaps");
  // A zero-size tensor strictly inside another one.
  ExpectHeaderRejected(
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
      "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}",
      4, "tensor \"z\" at data offsets [2, 2) overlaps tensor \"a\"");
}

TEST_F(SafetensorsTest, RejectsGapBetweenTensors) {
  ExpectHeaderRejected(
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
      "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}",
      10, "gap of 2 bytes in the data section before tensor \"b\" at data offset 6");
  ExpectHeaderRejected(OneTensor("\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[1,5]"), 5,
                       "gap of 1 bytes in the data section before tensor \"t\"");
}

TEST_F(SafetensorsTest, RejectsDataNotEndingAtLastTensor) {
  ExpectHeaderRejected(OneTensor("\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]"), 7,
                       "data section holds 3 bytes after the last tensor");
  ExpectHeaderRejected("{}", 1, "header lists no tensors but the data section holds 1 bytes");
  ExpectHeaderRejected("{\"__metadata__\":{\"a\":\"b\"}}", 16, "no tensors");
}

TEST_F(SafetensorsTest, RejectsBadNames) {
  ExpectHeaderRejected("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "empty tensor name");
  for (std::string_view name : {"a\\u0000b", "a\\nb", "\\u001b[31m", "tab\\t", "del\\u007f", "c1\\u009b"}) {
    ExpectHeaderRejected("{\"" + std::string(name) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                         1, "name contains a control character");
  }
}

TEST_F(SafetensorsTest, MessagesEscapeAndCutHostileNames) {
  // A rejected name is echoed escaped (no raw escape sequence reaches a terminal) and cut short.
  std::string name = "\\u001b[2J" + std::string(1000, 'x');
  std::string path = Write(FileBytes("{\"" + name + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                                     std::string(1, '\0')));
  Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, path);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), HasSubstr("\\u001b[2Jxxx"));
  EXPECT_EQ(f.status().message().find('\x1b'), std::string::npos);
  EXPECT_LT(f.status().message().size(), path.size() + 400);

  // C1 controls (here CSI, U+009B) are escaped too.
  f = SafetensorsFile::Open(
      nullptr, Write(FileBytes("{\"a\\u009b2J\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                               std::string(1, '\0'))));
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), HasSubstr("tensor \"a\\u009b2J\""));
  EXPECT_EQ(f.status().message().find("\xc2\x9b"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------------
// Valid files.

// A file with several dtypes, zero-size and rank-0 tensors, metadata and a padded header, listed out of order.
struct ValidFile {
  std::string header;
  std::string data;
};

ValidFile MakeValidFile() {
  ValidFile v;
  // Data layout (offsets into the data section):
  //   [0,0)    empty_first  F32 [0]
  //   [0,24)   weight       F32 [2,3]
  //   [24,24)  empty_mid    BF16 [4,0,2]   (shares offset 24 with both neighbours)
  //   [24,26)  scalar       BF16 []
  //   [26,42)  ids          I64 [2]
  //   [42,45)  flags        BOOL [3]
  //   [45,47)  fp8          F8_E4M3 [1,2]
  //   [47,55)  dbl          F64 [1]
  //   [55,55)  empty_last   U8 [0]
  v.header =
      "{\"scalar\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[24,26]},"
      "\"__metadata__\":{\"format\":\"pt\",\"note\":\"h\\u00e9llo \\\"x\\\"\"},"
      "\"weight\":{\"shape\":[2,3],\"data_offsets\":[0,24],\"dtype\":\"F32\"},"
      "\"empty_last\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[55,55]},"
      "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[26,42]},"
      "\"empty_mid\":{\"dtype\":\"BF16\",\"shape\":[4,0,2],\"data_offsets\":[24,24]},"
      "\"flags\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[42,45]},"
      "\"model.layers.0.\\u00fcnicode\":{\"dtype\":\"F8_E4M3\",\"shape\":[1,2],\"data_offsets\":[45,47]},"
      "\"dbl\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[47,55]},"
      "\"empty_first\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}";
  for (int i = 0; i < 55; ++i) v.data.push_back(static_cast<char>(i * 7 + 1));
  return v;
}

TEST_F(SafetensorsTest, RoundTripsValidFile) {
  ValidFile v = MakeValidFile();
  std::string bytes = FileBytes(v.header, v.data, kHeaderAlignment);
  size_t padded = bytes.size() - kSafetensorsLengthBytes - v.data.size();
  ASSERT_GT(padded, v.header.size()) << "the test wants a padded header";
  std::string path = Write(bytes);

  Result<SafetensorsFile> opened = SafetensorsFile::Open(nullptr, path);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  const SafetensorsFile& f = *opened;
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.file_size(), bytes.size());
  EXPECT_EQ(f.data_offset(), kSafetensorsLengthBytes + padded);
  EXPECT_EQ(f.data_offset() % kHeaderAlignment, 0u);
  EXPECT_EQ(f.header().data_size(), v.data.size());

  struct Expected {
    std::string name;
    DType dtype;
    std::vector<uint64_t> shape;
    uint64_t elements, begin, end;
  };
  std::vector<Expected> expected = {
      {"empty_first", DType::kF32, {0}, 0, 0, 0},
      {"weight", DType::kF32, {2, 3}, 6, 0, 24},
      {"empty_mid", DType::kBF16, {4, 0, 2}, 0, 24, 24},
      {"scalar", DType::kBF16, {}, 1, 24, 26},
      {"ids", DType::kI64, {2}, 2, 26, 42},
      {"flags", DType::kBool, {3}, 3, 42, 45},
      {"model.layers.0.\xc3\xbcnicode", DType::kF8E4M3, {1, 2}, 2, 45, 47},
      {"dbl", DType::kF64, {1}, 1, 47, 55},
      {"empty_last", DType::kU8, {0}, 0, 55, 55},
  };
  ASSERT_EQ(f.tensors().size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const SafetensorsTensor& t = f.tensors()[i];
    SCOPED_TRACE(expected[i].name);
    EXPECT_EQ(t.name, expected[i].name);
    EXPECT_EQ(t.dtype, expected[i].dtype);
    EXPECT_EQ(t.shape, expected[i].shape);
    EXPECT_EQ(t.num_elements, expected[i].elements);
    EXPECT_EQ(t.data_begin, expected[i].begin);
    EXPECT_EQ(t.data_end, expected[i].end);
    EXPECT_EQ(t.file_offset, f.data_offset() + expected[i].begin);
    EXPECT_EQ(f.Find(expected[i].name), &t);

    std::vector<std::byte> buf(t.byte_size());
    ASSERT_TRUE(f.ReadTensor(t, buf).ok());
    EXPECT_EQ(buf, ToBytes(std::string_view(v.data).substr(t.data_begin, t.byte_size())));
  }
  EXPECT_EQ(f.Find("missing"), nullptr);
  EXPECT_EQ(f.Find(""), nullptr);
  EXPECT_EQ(f.Find("__metadata__"), nullptr);

  ASSERT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "h\xc3\xa9llo \"x\"");
}

TEST_F(SafetensorsTest, ReadsTensorInChunks) {
  ValidFile v = MakeValidFile();
  std::string path = Write(FileBytes(v.header, v.data));
  Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const SafetensorsTensor* t = f->Find("weight");
  ASSERT_NE(t, nullptr);
  constexpr size_t kChunk = 5;  // does not divide the 24 bytes: the last chunk is short
  std::vector<std::byte> got;
  for (uint64_t off = 0; off < t->byte_size(); off += kChunk) {
    std::vector<std::byte> chunk(std::min<uint64_t>(kChunk, t->byte_size() - off));
    ASSERT_TRUE(f->ReadTensorRange(*t, off, chunk).ok());
    got.insert(got.end(), chunk.begin(), chunk.end());
  }
  EXPECT_EQ(got, ToBytes(std::string_view(v.data).substr(0, 24)));

  std::vector<std::byte> buf(8);
  EXPECT_TRUE(f->ReadTensorRange(*t, 24, std::span(buf).first(0)).ok());
  EXPECT_TRUE(f->ReadTensorRange(*t, 20, buf).IsInvalidArgument());
  EXPECT_TRUE(f->ReadTensorRange(*t, 25, std::span(buf).first(0)).IsInvalidArgument());
  EXPECT_TRUE(f->ReadTensorRange(*t, UINT64_MAX, buf).IsInvalidArgument());
  Status wrong_size = f->ReadTensor(*t, buf);
  EXPECT_TRUE(wrong_size.IsInvalidArgument());
  EXPECT_THAT(wrong_size.message(), HasSubstr("holds 24 bytes"));

  // A SafetensorsTensor that does not describe this file is refused rather than read from wherever it points.
  SafetensorsTensor forged = *t;
  forged.data_end = f->header().data_size() + 8;
  EXPECT_TRUE(f->ReadTensorRange(forged, 0, buf).IsInvalidArgument());
  forged = *t;
  forged.file_offset = 0;
  EXPECT_TRUE(f->ReadTensorRange(forged, 0, buf).IsInvalidArgument());
}

TEST_F(SafetensorsTest, AcceptsEmptyFileAndMetadataOnly) {
  for (std::string_view header : {"{}", "{\"__metadata__\":{}}", "{\"__metadata__\":{\"a\":\"b\"}}     "}) {
    Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, Write(FileBytes(header)));
    ASSERT_TRUE(f.ok()) << header << ": " << f.status().ToString();
    EXPECT_TRUE(f->tensors().empty());
    EXPECT_EQ(f->data_offset(), f->file_size());
  }
}

TEST_F(SafetensorsTest, AcceptsSeveralZeroSizeTensorsAtOneOffset) {
  std::string header =
      "{\"z2\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
      "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
      "\"z1\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
      "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
      "\"z0\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}";
  Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, Write(FileBytes(header, "abcdefgh")));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::vector<std::string> names;
  for (const SafetensorsTensor& t : f->tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"z0", "a", "z1", "z2", "b"}));
}

TEST(SafetensorsHeaderTest, PureParseComputesFileOffsets) {
  std::string header = OneTensor("\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]") + "   ";
  Result<SafetensorsHeader> h = ParseSafetensorsHeader(header, 16);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors().size(), 1u);
  EXPECT_EQ(h->tensors()[0].file_offset, kSafetensorsLengthBytes + header.size());
  EXPECT_EQ(h->data_size(), 16u);
  // The same header against a data section of another size is refused.
  EXPECT_TRUE(ParseSafetensorsHeader(header, 15).status().IsInvalidArgument());
  EXPECT_TRUE(ParseSafetensorsHeader(header, 17).status().IsInvalidArgument());
  EXPECT_TRUE(ParseSafetensorsHeader("", 0).status().IsInvalidArgument());
  EXPECT_TRUE(ParseSafetensorsHeader("   ", 0).status().IsInvalidArgument());
}

// ---------------------------------------------------------------------------------------------------------------
// I/O.

TEST_F(SafetensorsTest, ReadsOnlyTheLengthAndTheHeader) {
  // The valid file plus one more tensor of 1 MiB, none of which Open may read.
  ValidFile v = MakeValidFile();
  std::string header = v.header;
  header.pop_back();
  header += ",\"big\":{\"dtype\":\"U8\",\"shape\":[1048576],\"data_offsets\":[55,1048631]}}";
  std::string bytes = FileBytes(header, v.data + std::string(1 << 20, '\0'));
  auto fs = std::make_shared<FaultFileSystem>();
  Result<SafetensorsFile> f = SafetensorsFile::Open(fs, Write(bytes));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(fs->config.bytes_read.load(), kSafetensorsLengthBytes + header.size());
}

TEST_F(SafetensorsTest, SurvivesShortReads) {
  ValidFile v = MakeValidFile();
  auto fs = std::make_shared<FaultFileSystem>();
  fs->config.max_read_bytes = 1;
  Result<SafetensorsFile> f = SafetensorsFile::Open(fs, Write(FileBytes(v.header, v.data)));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const SafetensorsTensor* t = f->Find("ids");
  ASSERT_NE(t, nullptr);
  std::vector<std::byte> buf(t->byte_size());
  ASSERT_TRUE(f->ReadTensor(*t, buf).ok());
  EXPECT_EQ(buf, ToBytes(std::string_view(v.data).substr(26, 16)));
}

TEST_F(SafetensorsTest, PropagatesReadErrors) {
  ValidFile v = MakeValidFile();
  std::string path = Write(FileBytes(v.header, v.data));
  auto fs = std::make_shared<FaultFileSystem>();
  fs->config.fail_reads = true;
  Result<SafetensorsFile> failed = SafetensorsFile::Open(fs, path);
  ASSERT_FALSE(failed.ok());
  EXPECT_TRUE(failed.status().IsIOError()) << failed.status().ToString();

  fs->config.fail_reads = false;
  Result<SafetensorsFile> f = SafetensorsFile::Open(fs, path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  fs->config.fail_reads = true;
  std::vector<std::byte> buf(24);
  EXPECT_TRUE(f->ReadTensor(*f->Find("weight"), buf).IsIOError());

  Result<SafetensorsFile> missing = SafetensorsFile::Open(nullptr, dir_.path() + "/absent.safetensors");
  EXPECT_TRUE(missing.status().IsNotFound()) << missing.status().ToString();
}

TEST_F(SafetensorsTest, FileTruncatedAfterOpenIsCorruptionOnRead) {
  ValidFile v = MakeValidFile();
  std::string path = Write(FileBytes(v.header, v.data));
  Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::filesystem::resize_file(path, f->data_offset() + 30);
  std::vector<std::byte> buf(16);
  Status s = f->ReadTensor(*f->Find("ids"), buf);  // bytes [26, 42) of the data: cut at 30
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
}

TEST_F(SafetensorsTest, EveryTruncationAndByteFlipIsRejectedOrConsistent) {
  // LevelDB-style: damage the file everywhere; Open must fail cleanly or return a header that still tiles the
  // file exactly (a flip inside the data section, or one that yields another valid header).
  ValidFile v = MakeValidFile();
  std::string good = FileBytes(v.header, v.data, kHeaderAlignment);
  auto check = [&](const std::string& bytes) {
    Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, Write(bytes, "damaged.safetensors"));
    if (!f.ok()) {
      EXPECT_FALSE(f.status().message().empty());
      return;
    }
    uint64_t covered = f->data_offset();
    for (const SafetensorsTensor& t : f->tensors()) {
      EXPECT_EQ(t.file_offset, covered);
      EXPECT_EQ(t.byte_size(), t.num_elements * DTypeSize(t.dtype));
      covered += t.byte_size();
    }
    EXPECT_EQ(covered, f->file_size());
  };
  for (size_t len = 0; len < good.size(); ++len) {
    Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, Write(good.substr(0, len), "cut.safetensors"));
    EXPECT_FALSE(f.ok()) << "truncated to " << len << " bytes";
  }
  for (size_t i = 0; i < good.size(); ++i) {
    for (unsigned char x : {0x01, 0x20, 0x80, 0xff}) {
      std::string bytes = good;
      bytes[i] = static_cast<char>(bytes[i] ^ x);
      check(bytes);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Pickle checkpoints.

TEST(PickleTest, RecognisesPickleCheckpointNames) {
  for (std::string_view name : {"pytorch_model.bin", "/ckpt/pytorch_model-00001-of-00002.bin", "model.pt",
                                "weights.PTH", "last.ckpt", "state.pkl", "x/y.pickle", "training_args.bin"}) {
    EXPECT_TRUE(IsPickleCheckpointName(name)) << name;
    Status s = RefusePickleCheckpoint(name);
    EXPECT_TRUE(s.IsNotSupported()) << name;
    EXPECT_THAT(s.message(), HasSubstr(std::string(name)));
    EXPECT_THAT(s.message(), HasSubstr("execute arbitrary code"));
    EXPECT_THAT(s.message(), HasSubstr("convert it to safetensors"));
  }
  for (std::string_view name : {"model.safetensors", "model.safetensors.index.json", "config.json", "bin",
                                "/a.bin/model.safetensors", ".bin", "model.binary"}) {
    EXPECT_FALSE(IsPickleCheckpointName(name)) << name;
    EXPECT_TRUE(RefusePickleCheckpoint(name).ok()) << name;
  }
}

TEST_F(SafetensorsTest, ExplainsPickleContentOpenedAsSafetensors) {
  // A pickle stream (PROTO 2) and a PyTorch zip archive, renamed: the length check fails and says what it saw.
  ExpectRejected(std::string("\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00", 11), "pickle");
  ExpectRejected(std::string("PK\x03\x04\x14\x00\x00\x00\x08\x00", 10), "convert it to safetensors");
}

// ---------------------------------------------------------------------------------------------------------------
// The real checkpoint.

TEST(RealCheckpointTest, ParsesTinyQwen3MoeShard) {
  ES_REQUIRE_DATA(kRealShard);
  Result<SafetensorsFile> f = SafetensorsFile::Open(nullptr, kRealShard);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->file_size(), std::filesystem::file_size(kRealShard));
  // Shard 1 of 2 of a 6-layer, 32-expert model: hundreds of tensors, all bfloat16.
  EXPECT_GT(f->tensors().size(), 100u);
  EXPECT_LT(f->tensors().size(), 2000u);
  for (const SafetensorsTensor& t : f->tensors()) EXPECT_EQ(t.dtype, DType::kBF16) << t.name;
  EXPECT_EQ(f->metadata().count("format"), 1u);

  const SafetensorsTensor* embed = f->Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->shape, (std::vector<uint64_t>{4096, 128}));  // vocab x hidden, per the model's README
  const SafetensorsTensor* expert = f->Find("model.layers.0.mlp.experts.0.gate_proj.weight");
  ASSERT_NE(expert, nullptr);
  EXPECT_EQ(expert->shape, (std::vector<uint64_t>{96, 128}));  // expert FFN x hidden

  // The parser's bytes equal the file's bytes at the offset read independently, and decode to sane weights.
  std::vector<std::byte> got(expert->byte_size());
  ASSERT_TRUE(f->ReadTensor(*expert, got).ok());
  std::string whole = testing::ReadText(kRealShard);
  ASSERT_EQ(whole.size(), f->file_size());
  EXPECT_EQ(got, ToBytes(std::string_view(whole).substr(expert->file_offset, expert->byte_size())));
  size_t nonzero = 0;
  for (size_t i = 0; i + 1 < got.size(); i += 2) {
    uint32_t bits = (static_cast<uint32_t>(got[i + 1]) << 24) | (static_cast<uint32_t>(got[i]) << 16);
    float x;
    std::memcpy(&x, &bits, sizeof(x));
    ASSERT_TRUE(std::isfinite(x)) << "element " << i / 2;
    EXPECT_LT(std::fabs(x), 100.0f);
    nonzero += x != 0.0f;
  }
  EXPECT_GT(nonzero, got.size() / 4);
}

}  // namespace
}  // namespace es
