// Tokenizer encode/decode MB/s on the corpus and Qwen3 reference, Qwen3 load time, and the split pattern on our
// matcher vs ICU regex (the naive baseline) in the same run. Data found through ES_SOURCE_DIR.
#include <benchmark/benchmark.h>
#include <unicode/uregex.h>
#include <unicode/utext.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "compute/tokenizer/split_regex.h"
#include "compute/tokenizer/tokenizer.h"
#include "store/base/file_system.h"
#include "store/base/json.h"

namespace es {
namespace {

const std::string kShared = std::string(ES_SOURCE_DIR) + "/../shared";

// The file's bytes, or "" (the benchmark then reports no texts) when it cannot be read.
std::string ReadText(const std::string& path) {
  Result<std::string> text = ReadFile(*DefaultFileSystem(), path);
  return text.ok() ? std::move(text).value() : std::string();
}

std::vector<std::string> Texts(const std::string& jsonl) {
  std::vector<std::string> texts;
  std::istringstream in(ReadText(jsonl));
  std::string line;
  while (std::getline(in, line)) {
    auto doc = ParseJson(line);
    if (doc.ok() && doc->Find("text") != nullptr) texts.push_back(doc->Find("text")->string_value());
  }
  return texts;
}

const std::vector<std::string>& Corpus() {
  static const auto* texts = new std::vector<std::string>(Texts(kShared + "/corpus/domains.jsonl"));
  return *texts;
}

const std::vector<std::string>& Reference() {
  static const auto* texts = new std::vector<std::string>(Texts(kShared + "/tokenizers/qwen3/reference.jsonl"));
  return *texts;
}

int64_t TotalBytes(const std::vector<std::string>& texts) {
  int64_t total = 0;
  for (const auto& t : texts) total += static_cast<int64_t>(t.size());
  return total;
}

const Tokenizer& Load(const std::string& path) {
  static std::vector<std::pair<std::string, const Tokenizer*>> loaded;
  for (const auto& [p, t] : loaded) {
    if (p == path) return *t;
  }
  auto t = Tokenizer::FromFile(path);
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
    std::abort();
  }
  loaded.emplace_back(path, new Tokenizer(std::move(t).value()));
  return *loaded.back().second;
}

const Tokenizer& Qwen3() { return Load(kShared + "/tokenizers/qwen3/tokenizer.json"); }
const Tokenizer& TinyQwen() { return Load(kShared + "/models/tiny-qwen3-moe/tokenizer.json"); }
const Tokenizer& Mixtral() { return Load(kShared + "/models/aidreams-mixtral/tokenizer.json"); }

void ReportMegabytes(benchmark::State& state, int64_t bytes_per_iteration) {
  state.SetBytesProcessed(bytes_per_iteration * state.iterations());
}

void EncodeAll(benchmark::State& state, const Tokenizer& tokenizer, const std::vector<std::string>& texts) {
  int64_t tokens = 0;
  for (auto _ : state) {
    for (const auto& text : texts) {
      auto ids = tokenizer.Encode(text);
      benchmark::DoNotOptimize(ids);
      tokens += static_cast<int64_t>(ids->size());
    }
  }
  ReportMegabytes(state, TotalBytes(texts));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void BM_LoadQwen3(benchmark::State& state) {
  const std::string json = ReadText(kShared + "/tokenizers/qwen3/tokenizer.json");
  for (auto _ : state) {
    auto t = Tokenizer::FromJson(json);
    if (!t.ok()) state.SkipWithError(t.status().ToString().c_str());
    benchmark::DoNotOptimize(t);
  }
  ReportMegabytes(state, static_cast<int64_t>(json.size()));
}
BENCHMARK(BM_LoadQwen3)->Unit(benchmark::kMillisecond)->Iterations(5);

void BM_EncodeQwen3Corpus(benchmark::State& state) { EncodeAll(state, Qwen3(), Corpus()); }
BENCHMARK(BM_EncodeQwen3Corpus)->Unit(benchmark::kMillisecond);

void BM_EncodeQwen3Reference(benchmark::State& state) { EncodeAll(state, Qwen3(), Reference()); }
BENCHMARK(BM_EncodeQwen3Reference)->Unit(benchmark::kMillisecond);

void BM_EncodeTinyQwenCorpus(benchmark::State& state) { EncodeAll(state, TinyQwen(), Corpus()); }
BENCHMARK(BM_EncodeTinyQwenCorpus)->Unit(benchmark::kMillisecond);

void BM_EncodeMixtralCorpus(benchmark::State& state) { EncodeAll(state, Mixtral(), Corpus()); }
BENCHMARK(BM_EncodeMixtralCorpus)->Unit(benchmark::kMillisecond);

// One long document, so that per-call overhead does not count and long-word merging does.
void BM_EncodeQwen3OneDocument(benchmark::State& state) {
  std::string doc;
  for (const auto& t : Corpus()) doc += t;
  EncodeAll(state, Qwen3(), {doc});
}
BENCHMARK(BM_EncodeQwen3OneDocument)->Unit(benchmark::kMillisecond);

void BM_DecodeQwen3Corpus(benchmark::State& state) {
  std::vector<std::vector<TokenId>> encoded;
  for (const auto& t : Corpus()) encoded.push_back(*Qwen3().Encode(t));
  for (auto _ : state) {
    for (const auto& ids : encoded) {
      auto text = Qwen3().Decode(ids);
      benchmark::DoNotOptimize(text);
    }
  }
  ReportMegabytes(state, TotalBytes(Corpus()));
}
BENCHMARK(BM_DecodeQwen3Corpus)->Unit(benchmark::kMillisecond);

// The pre-tokenizer split alone: our matcher against ICU's regex engine on Qwen's pattern.
constexpr std::string_view kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

void BM_SplitQwenPatternOurs(benchmark::State& state) {
  auto regex = SplitRegex::Compile(kQwenPattern);
  MatchScratch scratch;
  std::vector<std::pair<size_t, size_t>> matches;
  for (auto _ : state) {
    for (const auto& text : Corpus()) {
      matches.clear();
      if (!regex->FindAll(text, scratch, matches).ok()) state.SkipWithError("split failed");
      benchmark::DoNotOptimize(matches.data());
    }
  }
  ReportMegabytes(state, TotalBytes(Corpus()));
}
BENCHMARK(BM_SplitQwenPatternOurs)->Unit(benchmark::kMillisecond);

void BM_SplitQwenPatternIcuBaseline(benchmark::State& state) {
  UErrorCode error = U_ZERO_ERROR;
  UParseError parse_error;
  UText* pattern = utext_openUTF8(nullptr, kQwenPattern.data(), static_cast<int64_t>(kQwenPattern.size()), &error);
  URegularExpression* re = uregex_openUText(pattern, 0, &parse_error, &error);
  std::vector<std::pair<int64_t, int64_t>> matches;
  for (auto _ : state) {
    for (const auto& text : Corpus()) {
      UText* subject = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &error);
      uregex_setUText(re, subject, &error);
      matches.clear();
      while (uregex_findNext(re, &error)) matches.emplace_back(uregex_start64(re, 0, &error), uregex_end64(re, 0, &error));
      benchmark::DoNotOptimize(matches.data());
      utext_close(subject);
    }
  }
  if (U_FAILURE(error)) state.SkipWithError(u_errorName(error));
  uregex_close(re);
  utext_close(pattern);
  ReportMegabytes(state, TotalBytes(Corpus()));
}
BENCHMARK(BM_SplitQwenPatternIcuBaseline)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace es

BENCHMARK_MAIN();
