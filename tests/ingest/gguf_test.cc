// The GGUF parser: files written here byte by byte (one negative test per class of bad input), and files that
// llama.cpp itself wrote (tests/ingest/gguf_fixtures, made by its converter and quantizer).
#include "ingest/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "store/base/json.h"
#include "tests/util/files.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

// Writes a GGUF file's bytes in the order the format lays them out.
class GgufBuilder {
 public:
  explicit GgufBuilder(uint32_t version = 3) { U32(kGgufMagic).U32(version); }

  GgufBuilder& U8(uint8_t v) { return Raw(&v, 1); }
  GgufBuilder& U32(uint32_t v) { return Raw(&v, 4); }
  GgufBuilder& U64(uint64_t v) { return Raw(&v, 8); }
  GgufBuilder& F32(float v) { return Raw(&v, 4); }
  GgufBuilder& Str(std::string_view s) {
    U64(s.size());
    bytes_.append(s);
    return *this;
  }
  GgufBuilder& Raw(const void* p, size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  GgufBuilder& Counts(uint64_t tensors, uint64_t kvs) { return U64(tensors).U64(kvs); }
  GgufBuilder& KeyU32(std::string_view key, uint32_t v) { return Str(key).U32(4).U32(v); }
  GgufBuilder& KeyStr(std::string_view key, std::string_view v) { return Str(key).U32(8).Str(v); }
  GgufBuilder& Tensor(std::string_view name, std::vector<uint64_t> dims, GgmlType type, uint64_t offset) {
    Str(name).U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) U64(d);
    return U32(static_cast<uint32_t>(type)).U64(offset);
  }
  GgufBuilder& Align(size_t alignment = kGgufDefaultAlignment) {
    while (bytes_.size() % alignment != 0) bytes_.push_back('\0');
    return *this;
  }
  GgufBuilder& Zeros(size_t n) {
    bytes_.append(n, '\0');
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

Result<GgufHeader> Parse(const std::string& bytes) { return ParseGgufHeader(bytes, bytes.size()); }

void ExpectInvalid(const std::string& bytes, std::string_view needle) {
  auto h = Parse(bytes);
  ASSERT_FALSE(h.ok());
  EXPECT_TRUE(h.status().IsInvalidArgument()) << h.status().ToString();
  EXPECT_NE(h.status().message().find(needle), std::string::npos) << h.status().ToString();
}

// Two tensors: an F32 vector of 8 and a Q8_0 matrix of 2 rows of 64 (2 x 2 blocks of 34 bytes).
std::string ValidFile() {
  GgufBuilder b;
  b.Counts(2, 3).KeyStr("general.architecture", "qwen3moe").KeyU32("qwen3moe.block_count", 2);
  b.Str("tokenizer.ggml.tokens").U32(9).U32(8).U64(2).Str("a").Str("bc");
  b.Tensor("norm.weight", {8}, GgmlType::kF32, 0).Tensor("blk.0.w", {64, 2}, GgmlType::kQ8_0, 32);
  b.Align().Zeros(32 + 4 * 34);
  return b.bytes();
}

TEST(GgufTest, ParsesAValidFile) {
  const std::string bytes = ValidFile();
  auto h = Parse(bytes);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->version(), 3u);
  EXPECT_EQ(h->alignment(), 32u);
  EXPECT_EQ(*h->GetString("general.architecture"), "qwen3moe");
  EXPECT_EQ(*h->GetU32("qwen3moe.block_count"), 2u);
  EXPECT_TRUE(h->GetString("qwen3moe.block_count").status().IsInvalidArgument());
  EXPECT_TRUE(h->GetU32("missing").status().IsNotFound());
  EXPECT_EQ(h->Find("tokenizer.ggml.tokens")->strings, (std::vector<std::string>{"a", "bc"}));
  ASSERT_EQ(h->tensors().size(), 2u);
  const GgufTensorInfo* w = h->FindTensor("blk.0.w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->type, GgmlType::kQ8_0);
  EXPECT_EQ(w->bytes, 4u * 34);
  EXPECT_EQ(w->slice_bytes(), 2u * 34);
  EXPECT_EQ(w->file_offset, h->data_offset() + 32);
  EXPECT_EQ(h->data_offset() % 32, 0u);
}

TEST(GgufTest, RefusesEachKindOfBadHeader) {
  std::string not_gguf = ValidFile();
  not_gguf[0] = 'X';
  ExpectInvalid(not_gguf, "not a GGUF file");
  ExpectInvalid(GgufBuilder(7).Counts(0, 0).bytes(), "version 7 is unknown");
  EXPECT_TRUE(Parse(GgufBuilder(1).Counts(0, 0).bytes()).status().IsNotSupported());
  EXPECT_TRUE(Parse(GgufBuilder(0x03000000).Counts(0, 0).bytes()).status().IsNotSupported());  // big-endian
  ExpectInvalid(GgufBuilder().Counts(1'000'000, 0).bytes(), "tensor count");
  ExpectInvalid(GgufBuilder().Counts(0, 1'000'000).bytes(), "metadata count");
  ExpectInvalid(GgufBuilder().Counts(0, 1).U64(1'000'000).Zeros(8).bytes(), "longer than the rest of the file");
  ExpectInvalid(GgufBuilder().Counts(0, 2).KeyU32("k", 1).KeyU32("k", 2).bytes(), "appears twice");
  ExpectInvalid(GgufBuilder().Counts(0, 1).Str("k").U32(13).U32(0).bytes(), "unknown value type 13");
  ExpectInvalid(GgufBuilder().Counts(0, 1).Str("k").U32(9).U32(9).U64(1).U32(4).U64(0).bytes(), "unsupported element");
  ExpectInvalid(GgufBuilder().Counts(0, 1).Str("k").U32(9).U32(4).U64(1'000'000).bytes(), "longer than the rest");
  ExpectInvalid(GgufBuilder().Counts(0, 1).Str("k").U32(7).U8(2).bytes(), "not 0 or 1");
  ExpectInvalid(GgufBuilder().Counts(0, 1).Str("").U32(4).U32(1).bytes(), "empty");
  ExpectInvalid(GgufBuilder().Counts(0, 1).KeyU32("general.alignment", 48).bytes(), "power of two");
  ExpectInvalid(GgufBuilder().Counts(0, 1).KeyStr("general.alignment", "32").bytes(), "must be a u32");
  ExpectInvalid(GgufBuilder().Counts(0, 1).Str("k").U32(4).bytes(), "ends inside the header");
}

TEST(GgufTest, RefusesEachKindOfBadTensorInfo) {
  auto one = [](std::string_view name, std::vector<uint64_t> dims, GgmlType type, uint64_t offset, size_t data) {
    GgufBuilder b;
    b.Counts(1, 0).Tensor(name, std::move(dims), type, offset).Align().Zeros(data);
    return b.bytes();
  };
  ExpectInvalid(one("", {32}, GgmlType::kF32, 0, 128), "has the name ''");
  ExpectInvalid(one(std::string(64, 'n'), {32}, GgmlType::kF32, 0, 128), "names are 1 to 63 bytes");
  ExpectInvalid(one("t", {}, GgmlType::kF32, 0, 128), "0 dimensions");
  ExpectInvalid(one("t", {1, 1, 1, 1, 1}, GgmlType::kF32, 0, 128), "5 dimensions");
  ExpectInvalid(one("t", {32, 0}, GgmlType::kF32, 0, 128), "dimension of 0");
  ExpectInvalid(one("t", {uint64_t{1} << 40, uint64_t{1} << 40}, GgmlType::kF32, 0, 128), "overflows");
  ExpectInvalid(one("t", {32}, static_cast<GgmlType>(4), 0, 128), "unknown ggml type 4");
  ExpectInvalid(one("t", {48}, GgmlType::kQ8_0, 0, 128), "not a whole number of 32-value blocks");
  ExpectInvalid(one("t", {300}, GgmlType::kQ4_K, 0, 4096), "256-value blocks");
  ExpectInvalid(one("t", {32}, GgmlType::kF32, 32, 256), "expected 0");  // a gap
  ExpectInvalid(one("t", {32}, GgmlType::kF32, 0, 100), "runs past the end of the file");
  // Two tensors that overlap, or whose second one is not at the first one's aligned end.
  GgufBuilder overlap;
  overlap.Counts(2, 0).Tensor("a", {32}, GgmlType::kF32, 0).Tensor("b", {32}, GgmlType::kF32, 64).Align().Zeros(256);
  ExpectInvalid(overlap.bytes(), "expected 128");
  GgufBuilder twice;
  twice.Counts(2, 0).Tensor("a", {8}, GgmlType::kF32, 0).Tensor("a", {8}, GgmlType::kF32, 32).Align().Zeros(64);
  ExpectInvalid(twice.bytes(), "appears twice");
}

TEST(GgufTest, AlignmentFromTheHeaderPlacesTheData) {
  GgufBuilder b;
  b.Counts(2, 1).KeyU32("general.alignment", 64);
  b.Tensor("a", {8}, GgmlType::kF32, 0).Tensor("b", {32}, GgmlType::kF16, 64).Align(64).Zeros(128);
  auto h = Parse(b.bytes());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->alignment(), 64u);
  EXPECT_EQ(h->data_offset() % 64, 0u);
  EXPECT_EQ(h->FindTensor("b")->file_offset, h->data_offset() + 64);
}

TEST(GgufTest, APrefixAsksForMoreBytesAndOpenReadsThem) {
  // A header larger than Open's first read: a 300k-entry string array.
  GgufBuilder b;
  b.Counts(1, 1).Str("tokenizer.ggml.tokens").U32(9).U32(8).U64(300'000);
  for (int i = 0; i < 300'000; ++i) b.Str("token" + std::to_string(i));
  b.Tensor("t", {8}, GgmlType::kF32, 0).Align().Zeros(32);
  const std::string& bytes = b.bytes();
  ASSERT_GT(bytes.size(), size_t{2} << 20);
  bool too_short = false;
  auto partial = ParseGgufHeader(std::string_view(bytes).substr(0, 1 << 20), bytes.size(), &too_short);
  EXPECT_FALSE(partial.ok());
  EXPECT_TRUE(too_short);
  // Truncating the file itself is a final error instead.
  auto truncated = ParseGgufHeader(std::string_view(bytes).substr(0, 1 << 20), 1 << 20, &too_short);
  EXPECT_FALSE(truncated.ok());
  EXPECT_FALSE(too_short);

  testing::TempDir dir;
  const std::string path = dir.path() + "/big.gguf";
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto file = GgufFile::Open(nullptr, path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->header().Find("tokenizer.ggml.tokens")->strings.size(), 300'000u);
  EXPECT_EQ(file->header().Find("tokenizer.ggml.tokens")->strings.back(), "token299999");
  std::vector<std::byte> data(32);
  const GgufTensorInfo& t = file->header().tensors()[0];
  EXPECT_TRUE(file->ReadTensorRange(t, 0, data).ok());
  EXPECT_TRUE(file->ReadTensorRange(t, 1, data).IsInvalidArgument());
  GgufTensorInfo foreign = t;
  foreign.file_offset = 0;
  EXPECT_TRUE(file->ReadTensorRange(foreign, 0, data).IsInvalidArgument());
}

// A file llama.cpp wrote (converted, then quantized to Q4_K_M) reads as gguf-py reads it: version, alignment,
// data offset, keys, and every tensor's name, type, dimensions, offset and size.
TEST(GgufTest, ReadsAFileLlamaCppWrote) {
  const std::string dir = testing::kGgufFixtures;
  auto expected = ParseJson(testing::ReadText(dir + "/header.json"));
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  auto file = GgufFile::Open(nullptr, dir + "/" + expected->Find("file")->string_value());
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const GgufHeader& h = file->header();
  EXPECT_EQ(h.version(), *expected->Find("version")->AsUint64());
  EXPECT_EQ(h.alignment(), *expected->Find("alignment")->AsUint64());
  EXPECT_EQ(h.data_offset(), *expected->Find("data_offset")->AsUint64());
  EXPECT_EQ(h.metadata().size(), *expected->Find("key_count")->AsUint64());
  EXPECT_EQ(h.Find("tokenizer.ggml.tokens")->array_size(), *expected->Find("token_count")->AsUint64());
  for (const auto& [key, value] : expected->Find("keys")->object()) {
    if (value.is_string()) {
      EXPECT_EQ(*h.GetString(key), value.string_value()) << key;
    } else {
      EXPECT_EQ(*h.GetUint(key), *value.AsUint64()) << key;
    }
  }
  const auto& tensors = expected->Find("tensors")->array();
  ASSERT_EQ(h.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const GgufTensorInfo& t = h.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, tensors[i].Find("name")->string_value());
    EXPECT_EQ(GgmlTypeName(t.type), tensors[i].Find("type")->string_value());
    std::vector<uint64_t> dims;
    for (const JsonValue& d : tensors[i].Find("dims")->array()) dims.push_back(*d.AsUint64());
    EXPECT_EQ(t.dims, dims);
    EXPECT_EQ(t.offset, *tensors[i].Find("offset")->AsUint64());
    EXPECT_EQ(t.bytes, *tensors[i].Find("bytes")->AsUint64());
  }
  // Experts are the slabs of the 3-D expert tensors.
  const GgufTensorInfo* gate = h.FindTensor("blk.0.ffn_gate_exps.weight");
  ASSERT_NE(gate, nullptr);
  EXPECT_EQ(gate->dims, (std::vector<uint64_t>{256, 256, 2}));
  EXPECT_EQ(gate->slice_bytes(), 256u * 144);  // 256 rows of one Q4_K block
}

}  // namespace
}  // namespace es
