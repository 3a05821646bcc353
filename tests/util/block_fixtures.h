// The block-format fixtures of tests/ingest/gguf_fixtures/blocks (made by make_fixtures.sh with llama.cpp's own
// quantizer, gguf-py and ggml's own decoder): for each format, rows as llama.cpp stored them and as gguf-py and
// ggml decode them.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "store/base/ggml_type.h"
#include "store/base/json.h"
#include "tests/util/files.h"
#include "tests/util/test_data.h"

namespace es::testing {

inline std::vector<float> Floats(const std::string& bytes) {
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

// One format of tests/ingest/gguf_fixtures/blocks: the rows llama.cpp quantized, as stored, as gguf-py decodes them
// and as ggml's to_float does, and the error gguf-py measured against the original rows.
struct BlockFormat {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::string blocks;
  std::vector<float> decoded;       // gguf-py's values
  std::vector<float> ggml_decoded;  // ggml's values (libggml-base's to_float)
  size_t row_bytes = 0;
  double rmse = 0;
};
struct BlockFixtures {
  size_t cols = 0;  // values per row
  size_t rows = 0;
  std::vector<float> original;
  std::vector<BlockFormat> formats;
};

inline void LoadBlockFixtures(BlockFixtures* f) {
  const std::string dir = std::string(kGgufFixtures) + "/blocks";
  auto manifest = ParseJson(ReadText(dir + "/manifest.json"));
  ASSERT_TRUE(manifest.ok()) << manifest.status().ToString();
  f->cols = *manifest->Find("row_elements")->AsUint64();
  f->rows = manifest->Find("rows")->array().size();
  f->original = Floats(ReadText(dir + "/original.f32"));
  for (const JsonValue& entry : manifest->Find("types")->array()) {
    BlockFormat b;
    b.name = entry.Find("type")->string_value();
    const std::optional<GgmlType> type = ParseGgmlTypeName(b.name);
    ASSERT_TRUE(type.has_value()) << b.name;
    b.type = *type;
    b.blocks = ReadText(dir + "/" + b.name + ".blocks");
    b.decoded = Floats(ReadText(dir + "/" + b.name + ".f32"));
    b.ggml_decoded = Floats(ReadText(dir + "/" + b.name + ".ggml.f32"));
    b.row_bytes = *entry.Find("row_bytes")->AsUint64();
    b.rmse = *entry.Find("rmse")->AsDouble();
    f->formats.push_back(std::move(b));
  }
}

}  // namespace es::testing
