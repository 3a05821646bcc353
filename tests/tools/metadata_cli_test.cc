// The metadata commands through the real CLI on tiny-qwen3-moe and the domain corpus (test_data.h): python's
// top experts by lift are well above 1 and stable across two halves of the data; readers work and recorders
// journal while another process holds the store, and concurrent recorders' totals are exact; calibration
// stores trust components in [0, 1]; profiles survive export and import; every routing policy evaluates.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "store/base/json.h"
#include "store/metadata.h"
#include "store/store.h"
#include "tests/util/run_cli.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

using testing::kCorpus;
constexpr const char* kTiny = testing::kTinyModel;
constexpr char kModel[] = "tiny-qwen3-moe";
// Lines per domain in each half of the profiling test (the corpus has 100 per domain).
constexpr int kLinesPerDomainPerHalf = 20;
constexpr int kTop = 10;
// Characters of text the eval tests score (a few hundred tokens).
constexpr size_t kEvalChars = 800;

using testing::CliResult;
using testing::RunCli;

JsonValue Json(const CliResult& r) {
  EXPECT_EQ(r.exit_code, 0) << r.out;
  auto doc = ParseJson(r.out);
  EXPECT_TRUE(doc.ok()) << r.out;
  return doc.ok() ? std::move(doc).value() : JsonValue();
}

double Num(const JsonValue& v, std::string_view key) {
  const JsonValue* f = v.Find(key);
  EXPECT_NE(f, nullptr) << key;
  return f == nullptr ? NAN : *f->AsDouble();
}

class MetadataCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ES_REQUIRE_DATA(kTiny);
    ES_REQUIRE_DATA(kCorpus);
  }
  // A fresh store holding the tiny model.
  std::string NewStore(const std::string& name) {
    std::string path = dir_.Sub(name);
    CliResult r = RunCli("ingest " + std::string(kTiny) + " --store " + path + " --quiet --json");
    EXPECT_EQ(r.exit_code, 0) << r.out;
    return "--store " + path;
  }
  // Writes every `every`-th line of each domain, starting at `first`, at most `per_domain` per domain.
  std::string Slice(const std::string& name, int first, int every, int per_domain) {
    std::ifstream in(kCorpus);
    std::string path = dir_.Sub(name), line;
    std::ofstream out(path);
    std::map<std::string, int> seen, kept;
    while (std::getline(in, line)) {
      auto doc = ParseJson(line);
      if (!doc.ok()) continue;
      std::string domain = doc->Find("domain")->string_value();
      int i = seen[domain]++;
      if (i % every != first || kept[domain] >= per_domain) continue;
      ++kept[domain];
      out << line << "\n";
    }
    return path;
  }
  // Plain text of the first lines of the corpus, at most `max_chars` characters, for eval.
  std::string Text(const std::string& name, int lines, size_t max_chars) {
    std::ifstream in(kCorpus);
    std::string path = dir_.Sub(name), line, text;
    for (int i = 0; i < lines && std::getline(in, line);) {
      auto doc = ParseJson(line);
      if (!doc.ok()) continue;
      text += doc->Find("text")->string_value() + "\n";
      ++i;
    }
    std::ofstream(path) << text.substr(0, max_chars);
    return path;
  }

  testing::TempDir dir_;
};

// The rows of `query --json` ({"object": "list", ..., "data": [...]}, the HTTP query route's shape).
const JsonValue& Rows(const JsonValue& query) {
  static const JsonValue kNone;
  const JsonValue* data = query.Find("data");
  EXPECT_NE(data, nullptr);
  return data != nullptr ? *data : kNone;
}

std::vector<std::pair<uint32_t, uint32_t>> TopExperts(const JsonValue& query) {
  std::vector<std::pair<uint32_t, uint32_t>> out;
  for (const auto& r : Rows(query).array()) {
    out.push_back({static_cast<uint32_t>(*r.Find("layer")->AsUint64()), static_cast<uint32_t>(*r.Find("expert")->AsUint64())});
  }
  return out;
}

// The must-show property: `query --domain python` ranks first experts whose lift for python is well above 1,
// and two profiles built from disjoint halves of the corpus agree on most of them.
TEST_F(MetadataCliTest, PythonExpertsHaveHighLiftAndAreStableAcrossHalves) {
  std::vector<std::vector<std::pair<uint32_t, uint32_t>>> tops;
  for (int half = 0; half < 2; ++half) {
    SCOPED_TRACE("half " + std::to_string(half));
    std::string store = NewStore("half" + std::to_string(half));
    std::string prompts = Slice("half" + std::to_string(half) + ".jsonl", half, 2, kLinesPerDomainPerHalf);
    JsonValue p = Json(RunCli("profile --model " + std::string(kModel) + " --prompts " + prompts + " " + store +
                              " --cache-pct 100 --json"));
    EXPECT_EQ(Num(p, "experts"), 192);
    EXPECT_EQ(p.Find("domains")->array().size(), 7u);
    JsonValue q = Json(RunCli("query --model " + std::string(kModel) + " --domain python --top " +
                              std::to_string(kTop) + " " + store + " --json"));
    ASSERT_EQ(Rows(q).array().size(), static_cast<size_t>(kTop));
    EXPECT_GT(Num(Rows(q).array()[0], "lift"), 1.8);
    for (const auto& row : Rows(q).array()) {
      EXPECT_GT(Num(row, "lift"), 1.3);
      EXPECT_EQ(row.Find("domain")->string_value(), "python");
      EXPECT_GT(Num(row, "share"), 0.3);
    }
    // Lift order.
    for (size_t i = 1; i < Rows(q).array().size(); ++i) EXPECT_GE(Num(Rows(q).array()[i - 1], "lift"), Num(Rows(q).array()[i], "lift"));
    tops.push_back(TopExperts(q));
  }
  std::set<std::pair<uint32_t, uint32_t>> a(tops[0].begin(), tops[0].end());
  size_t common = 0;
  for (const auto& e : tops[1]) common += a.count(e);
  EXPECT_GE(common, 6u) << "top-" << kTop << " python experts of the two halves share only " << common;
  EXPECT_EQ(tops[0][0], tops[1][0]) << "the most python-specific expert differs between halves";
}

// Readers work while a writer holds the store; recorders journal beside it, and the writer's merge makes the
// totals exact; rest needs the writer. Then two recording evals at once.
TEST_F(MetadataCliTest, ReadersAndRecordersBesideAWriter) {
  std::string store_flag = NewStore("s");
  std::string path = dir_.Sub("s");
  std::string text = Text("t.txt", 2, kEvalChars);
  const std::string m = " --model " + std::string(kModel) + " " + store_flag;
  // Some usage and a profile to read.
  std::string prompts = Slice("p.jsonl", 0, 10, 2);
  ASSERT_EQ(RunCli("profile" + m + " --prompts " + prompts + " --json").exit_code, 0);
  uint64_t before = 0;
  {
    auto writer = Store::Open(path, StoreOptions{});
    ASSERT_TRUE(writer.ok()) << writer.status().ToString();
    auto usage = LoadModelUsage((*writer)->catalog(), kModel);
    ASSERT_TRUE(usage.ok());
    for (const auto& [id, u] : usage->totals) before += u.activation_count;
    EXPECT_GT(before, 0u);

    EXPECT_EQ(RunCli("query" + m + " --domain c --json").exit_code, 0);
    JsonValue t = Json(RunCli("trust" + m + " --layer 1 --expert 2 --json"));
    EXPECT_GT(Num(t, "activations"), 0);
    EXPECT_EQ(RunCli("show" + m + " --layer 1 --expert 2 --json").exit_code, 0);
    EXPECT_EQ(RunCli("experts" + m + " --json").exit_code, 0);
    EXPECT_EQ(RunCli("rest" + m).exit_code, 5);  // Busy: rest needs the writer

    JsonValue e = Json(RunCli("eval" + m + " --text " + text + " --json"));
    EXPECT_EQ(e.Find("usage")->string_value(), "journal");
    uint64_t tokens = static_cast<uint64_t>(Num(e, "tokens"));
    auto merged = (*writer)->MergeJournals();
    ASSERT_TRUE(merged.ok());
    EXPECT_GE(merged->records, 1u);
    usage = LoadModelUsage((*writer)->catalog(), kModel);
    uint64_t after = 0;
    for (const auto& [id, u] : usage->totals) after += u.activation_count;
    // Every token of the text (the scored ones and the first, which is context only) in 6 layers x top-4.
    EXPECT_EQ(after - before, (tokens + 1) * 6 * 4);
    before = after;
  }
  // Two recording evals at once: whichever is the writer, the totals are exact.
  std::string cmd = std::string(testing::kCliPath) + " eval" + m + " --text " + text + " --json --quiet >/dev/null 2>&1";
  FILE* a = ::popen(cmd.c_str(), "r");
  FILE* b = ::popen(cmd.c_str(), "r");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(::pclose(a), 0);
  EXPECT_EQ(::pclose(b), 0);
  JsonValue r = Json(RunCli("rest" + m + " --json"));  // the writer merges on open, then rest
  auto writer = Store::Open(path, StoreOptions{});
  ASSERT_TRUE(writer.ok());
  auto usage = LoadModelUsage((*writer)->catalog(), kModel);
  uint64_t after = 0;
  for (const auto& [id, u] : usage->totals) after += u.activation_count;
  JsonValue once = Json(RunCli("eval" + m + " --text " + text + " --json --no-record"));
  EXPECT_EQ(once.Find("usage")->string_value(), "off");
  EXPECT_EQ(after - before, 2 * (static_cast<uint64_t>(Num(once, "tokens")) + 1) * 6 * 4);
  EXPECT_FALSE(std::filesystem::exists(path + "/journal") && !std::filesystem::is_empty(path + "/journal"));
}

TEST_F(MetadataCliTest, CalibrateStoresTrustComponentsInTheUnitInterval) {
  std::string store = NewStore("s");
  const std::string m = " --model " + std::string(kModel) + " " + store;
  std::string text = Slice("c.jsonl", 0, 5, 3);
  JsonValue c = Json(RunCli("calibrate" + m + " --text " + text + " --max-tokens 400 --json"));
  EXPECT_EQ(Num(c, "experts"), 192);
  EXPECT_GT(Num(c, "tokens"), 300);
  EXPECT_LT(Num(c, "tokens"), 1200);
  // How far the ranking can be trusted: two half-samples compared in every layer.
  const JsonValue& stability = *c.Find("rank_stability");
  EXPECT_EQ(Num(stability, "layers"), 6);
  EXPECT_GE(Num(stability, "spearman"), -1.0);
  EXPECT_LE(Num(stability, "spearman"), 1.0);
  EXPECT_EQ(stability.Find("stable")->bool_value(), Num(stability, "spearman") >= 0.8);
  for (uint32_t layer : {0u, 5u}) {
    for (uint32_t expert : {0u, 13u, 31u}) {
      JsonValue t = Json(RunCli("trust" + m + " --layer " + std::to_string(layer) + " --expert " +
                                std::to_string(expert) + " --json"));
      // `trust --json` holds the trust record as `show --json` does.
      const JsonValue& tr = *t.Find("trust");
      for (const char* f : {"trust", "convergence_rate", "stability", "efficiency"}) {
        EXPECT_GE(Num(tr, f), 0.0) << f;
        EXPECT_LE(Num(tr, f), 1.0) << f;
      }
      EXPECT_NEAR(Num(tr, "trust"),
                  0.5 * Num(tr, "convergence_rate") + 0.25 * Num(tr, "stability") + 0.25 * Num(tr, "efficiency"), 1e-9);
      // Each contribution carries its standard error over its ablations.
      EXPECT_GT(Num(tr, "ablations"), 0);
      EXPECT_GE(Num(tr, "contribution_stderr"), 0);
      JsonValue s = Json(RunCli("show" + m + " --layer " + std::to_string(layer) + " --expert " + std::to_string(expert) +
                                " --json"));
      EXPECT_DOUBLE_EQ(Num(*s.Find("trust"), "trust"), Num(tr, "trust"));
    }
  }
  // Trust ranks; the best expert is fully converged somewhere in the model.
  JsonValue q = Json(RunCli("query" + m + " --order trust --top 192 --json"));
  ASSERT_EQ(Rows(q).array().size(), 192u);
  EXPECT_GE(Num(Rows(q).array()[0], "trust"), Num(Rows(q).array()[191], "trust"));
  EXPECT_EQ(RunCli("calibrate" + m + " --text " + text + " --routing trust").exit_code, 2);
}

TEST_F(MetadataCliTest, FitLookaheadStoresMapsTheRuntimeUses) {
  std::string store = NewStore("la");
  const std::string m = " --model " + std::string(kModel) + " " + store;
  std::string fit = Slice("fit.jsonl", 0, 2, 20);
  std::string held = Slice("held.jsonl", 1, 2, 10);
  std::string prompt = " --prompt 'def main(' --max-tokens 4 --temperature 0 --json";
  // Without a fit the routers predict, and asking for the fitted maps is NotFound.
  JsonValue before = Json(RunCli("generate" + m + prompt));
  EXPECT_EQ(before.Find("configuration")->string_value().find("fitted"), std::string::npos);
  EXPECT_EQ(RunCli("generate" + m + prompt + " --prefetch-predictor fitted").exit_code, 3);
  EXPECT_EQ(RunCli("generate" + m + prompt + " --prefetch-predictor sometimes").exit_code, 2);
  EXPECT_EQ(RunCli("fit-lookahead" + m).exit_code, 2);  // no --text
  EXPECT_EQ(RunCli("fit-lookahead" + m + " --text " + fit + " --depth 5").exit_code, 2);

  JsonValue dry = Json(RunCli("fit-lookahead" + m + " --text " + fit + " --max-tokens 3000 --dry-run --json"));
  EXPECT_FALSE(dry.Find("stored")->bool_value());
  EXPECT_EQ(RunCli("generate" + m + prompt + " --prefetch-predictor fitted").exit_code, 3);

  JsonValue f = Json(RunCli("fit-lookahead" + m + " --text " + fit + " --depth 2 --eval " + held + " --json"));
  EXPECT_TRUE(f.Find("stored")->bool_value());
  EXPECT_EQ(Num(f, "maps"), 5 + 4);  // 6 MoE layers: 5 pairs one ahead, 4 two ahead
  EXPECT_GT(Num(f, "tokens"), 2000);
  EXPECT_GT(Num(f, "validation_tokens"), 0);
  const double min_prob = Num(f, "min_prob");
  EXPECT_GT(min_prob, 1.0 / 32);
  EXPECT_GE(Num(*f.Find("validation"), "precision"), 0.9);
  // The held-out scores: the fit beats the routers at the threshold it chose, one layer ahead.
  bool scored = false;
  for (const JsonValue& row : f.Find("eval")->array()) {
    if (Num(row, "depth") != 1 || Num(row, "threshold") != min_prob) continue;
    scored = true;
    EXPECT_GT(Num(*row.Find("fitted"), "precision"), Num(*row.Find("router"), "precision"));
  }
  EXPECT_TRUE(scored);

  // generate predicts with the stored maps at the fit's threshold, and the output is unchanged.
  JsonValue after = Json(RunCli("generate" + m + prompt));
  EXPECT_NE(after.Find("configuration")->string_value().find("fitted lookahead"), std::string::npos)
      << after.Find("configuration")->string_value();
  EXPECT_EQ(after.Find("text")->string_value(), before.Find("text")->string_value());
  JsonValue router = Json(RunCli("generate" + m + prompt + " --prefetch-predictor router"));
  EXPECT_EQ(router.Find("configuration")->string_value().find("fitted"), std::string::npos);
  JsonValue v = Json(RunCli("verify " + store + " --json"));
  EXPECT_TRUE(v.Find("ok")->bool_value());
}

TEST_F(MetadataCliTest, ProfilesExportAndImport) {
  std::string from = NewStore("from"), to = NewStore("to");
  const std::string model = " --model " + std::string(kModel);
  std::string prompts = Slice("p.jsonl", 0, 10, 2);
  ASSERT_EQ(RunCli("profile" + model + " " + from + " --prompts " + prompts + " --json").exit_code, 0);
  std::string file = dir_.Sub("profiles.json");
  ASSERT_EQ(RunCli("profiles export" + model + " " + from + " --out " + file).exit_code, 0);
  JsonValue imported = Json(RunCli("profiles import " + file + " " + to + " --json"));
  EXPECT_EQ(Num(imported, "experts"), 192);
  CliResult a = RunCli("profiles export" + model + " " + from);
  CliResult b = RunCli("profiles export" + model + " " + to);
  ASSERT_EQ(a.exit_code, 0);
  EXPECT_EQ(a.out, b.out);
  // The imported store ranks the same experts the same way (it has no usage of its own).
  JsonValue qa = Json(RunCli("query" + model + " " + from + " --domain german --json"));
  JsonValue qb = Json(RunCli("query" + model + " " + to + " --domain german --json"));
  EXPECT_EQ(TopExperts(qa), TopExperts(qb));
  for (size_t i = 0; i < Rows(qa).array().size() && i < Rows(qb).array().size(); ++i) {
    EXPECT_DOUBLE_EQ(Num(Rows(qa).array()[i], "lift"), Num(Rows(qb).array()[i], "lift"));
    EXPECT_DOUBLE_EQ(Num(Rows(qb).array()[i], "activations"), 0);
  }
  // Bad input: not an export, a different shape, unknown action.
  std::ofstream(dir_.Sub("bad.json")) << "{\"format\": \"other\"}";
  EXPECT_EQ(RunCli("profiles import " + dir_.Sub("bad.json") + " " + to).exit_code, 2);
  EXPECT_EQ(RunCli("profiles frobnicate " + to).exit_code, 2);
  // An unknown domain is named with the ones the profiles know; domains match whatever their case.
  CliResult unknown = RunCli("query" + model + " " + to + " --domain klingon", /*with_stderr=*/true);
  EXPECT_EQ(unknown.exit_code, 3);
  EXPECT_NE(unknown.out.find("knows domain 'klingon'; its domains are "), std::string::npos) << unknown.out;
  EXPECT_NE(unknown.out.find("german"), std::string::npos) << unknown.out;
  JsonValue upper = Json(RunCli("query" + model + " " + to + " --domain GERMAN --json"));
  EXPECT_EQ(upper.Find("domain")->string_value(), "german");
  EXPECT_EQ(TopExperts(upper), TopExperts(qb));
}

TEST_F(MetadataCliTest, EveryStateAndRoutingPolicyEvaluates) {
  std::string store = NewStore("s");
  const std::string m = " --model " + std::string(kModel) + " " + store;
  std::string text = Text("t.txt", 1, kEvalChars);
  JsonValue exact = Json(RunCli("eval" + m + " --text " + text + " --step 1 --cache-pct 25 --json"));
  for (const char* state : {"wake", "focus", "crisis"}) {
    for (const char* routing : {"exact", "trust", "cache-aware"}) {
      SCOPED_TRACE(std::string(state) + " " + routing);
      JsonValue e = Json(RunCli("eval" + m + " --text " + text + " --step 1 --cache-pct 25 --json --state " + state +
                                " --routing " + routing));
      EXPECT_EQ(e.Find("routing")->string_value(), routing);
      EXPECT_EQ(e.Find("state")->string_value(), state);
      EXPECT_GT(Num(e, "hit_rate"), 0);
      EXPECT_LE(Num(e, "hit_rate"), 1);
      EXPECT_GT(Num(e, "tokens_per_second"), 0);
      // Policies and states change the output, but the model keeps working.
      EXPECT_LT(Num(e, "perplexity"), 2 * Num(exact, "perplexity"));
      if (std::string(state) == "focus" && std::string(routing) == "exact") {
        EXPECT_DOUBLE_EQ(Num(e, "perplexity"), Num(exact, "perplexity"));
      }
      if (std::string(state) == "focus" && std::string(routing) == "cache-aware") {
        EXPECT_GT(Num(e, "hit_rate"), Num(exact, "hit_rate"));
      }
    }
  }
  EXPECT_EQ(RunCli("eval" + m + " --text " + text + " --routing bogus").exit_code, 2);
  EXPECT_EQ(RunCli("eval" + m + " --text " + text + " --routing cache-aware --no-cache").exit_code, 2);
  EXPECT_EQ(RunCli("eval" + m + " --text " + text + " --routing trust --focus-domain python").exit_code, 3);
}

}  // namespace
}  // namespace es
