// Where the tests' data lives, in one place: the tiny model (with its reference logits) inside the repository
// under models/, where the demo needs it; the aidreams-mixtral model, the Qwen3 tokenizer and the domain corpus
// in ../shared beside the checkout. ES_REQUIRE_DATA skips a test whose data is missing, except under CI
// (CI=true), where missing data is a failure: a green run there has run every test.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace es::testing {

inline constexpr char kTinyModel[] = ES_SOURCE_DIR "/models/tiny-qwen3-moe";
inline constexpr char kReferenceCases[] = ES_SOURCE_DIR "/models/tiny-qwen3-moe/reference/cases.jsonl";
inline constexpr char kShared[] = ES_SOURCE_DIR "/../shared";
inline constexpr char kAidreams[] = ES_SOURCE_DIR "/../shared/models/aidreams-mixtral";
inline constexpr char kQwen3TokenizerDir[] = ES_SOURCE_DIR "/../shared/tokenizers/qwen3";
inline constexpr char kCorpus[] = ES_SOURCE_DIR "/../shared/corpus/domains.jsonl";
// GGUF files and block samples written by llama.cpp (tests/ingest/gguf_fixtures/make_fixtures.sh), committed.
inline constexpr char kGgufFixtures[] = ES_SOURCE_DIR "/tests/ingest/gguf_fixtures";

// True under CI: the CI variable set to anything but "" or "false" (GitHub Actions, GitLab and most runners set
// CI=true).
inline bool InCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string_view(ci) != "" && std::string_view(ci) != "false";
}

inline bool DataPresent(const std::string& path) { return std::filesystem::exists(path); }

}  // namespace es::testing

// In a test body, SetUp or SetUpTestSuite: returns from it when `path` is missing, skipping the test, or failing
// it under CI.
#define ES_REQUIRE_DATA(path)                                                                       \
  do {                                                                                              \
    const std::string es_data_path_ = (path);                                                       \
    if (!::es::testing::DataPresent(es_data_path_)) {                                               \
      if (::es::testing::InCi()) {                                                                  \
        FAIL() << "test data missing under CI: " << es_data_path_;                                  \
      } else {                                                                                      \
        GTEST_SKIP() << "test data missing: " << es_data_path_ << " (a failure under CI=true)";     \
      }                                                                                             \
    }                                                                                               \
  } while (0)
