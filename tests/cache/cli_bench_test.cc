// `expertstore bench cache` and `bench swapin` through the real CLI on a small store: exactly one JSON document
// on stdout with the contract's fields, belady on top, a written trace replaying identically, and clean errors.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "store/base/json.h"
#include "tests/util/expert_model.h"
#include "tests/util/run_cli.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {


using testing::CliResult;
using testing::RunCli;

class CliBenchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.Sub("store"), StoreOptions{});
    ASSERT_TRUE(store.ok());
    testing::TestModelSpec spec{.name = "m", .layers = 2, .experts = 16, .top_k = 2};
    spec.payload_bytes = [](uint32_t, uint32_t) { return uint64_t{64} << 10; };
    ASSERT_TRUE(testing::WriteTestModel(**store, spec).ok());
  }
  std::string Store() const { return "--store " + dir_.Sub("store"); }

  testing::TempDir dir_;
};

TEST_F(CliBenchTest, CachePrintsEveryPolicyWithBeladyOnTop) {
  CliResult r = RunCli("bench cache " + Store() + " --model m --synthetic --tokens 300 --cache-pct 25 --json --write-trace " +
                       dir_.Sub("t.jsonl"));
  ASSERT_EQ(r.exit_code, 0);
  auto doc = ParseJson(r.out);
  ASSERT_TRUE(doc.ok()) << r.out;
  EXPECT_EQ(*doc->Find("capacity_experts")->AsUint64(), 8u);  // 25% of 32
  EXPECT_EQ(*doc->Find("accesses")->AsUint64(), 300u * 2 * 2);
  const JsonValue* policies = doc->Find("policies");
  ASSERT_NE(policies, nullptr);
  double belady = *policies->Find("belady")->Find("hit_rate")->AsDouble();
  for (const char* p : {"lru", "lfu", "trust"}) {
    ASSERT_NE(policies->Find(p), nullptr) << p;
    double h = *policies->Find(p)->Find("hit_rate")->AsDouble();
    const uint64_t hits = *policies->Find(p)->Find("hits")->AsUint64();
    const uint64_t misses = *policies->Find(p)->Find("misses")->AsUint64();
    EXPECT_EQ(hits + misses, 300u * 2 * 2) << p;
    EXPECT_DOUBLE_EQ(h, static_cast<double>(hits) / static_cast<double>(hits + misses)) << p;
    EXPECT_GT(hits, 0u) << p << ": a trace with temporal locality hits under every policy";
    EXPECT_LE(h, belady) << p;
  }
  EXPECT_GT(belady, 0.25);

  // The written trace replays to the same numbers.
  CliResult again = RunCli("bench cache " + Store() + " --model m --trace " + dir_.Sub("t.jsonl") + " --cache-pct 25 --json");
  ASSERT_EQ(again.exit_code, 0);
  auto doc2 = ParseJson(again.out);
  ASSERT_TRUE(doc2.ok());
  JsonWriter a, b;
  a.Value(*policies);
  b.Value(*doc2->Find("policies"));
  EXPECT_EQ(a.str(), b.str());
}

TEST_F(CliBenchTest, CacheReplaysATracesPredictions) {
  // Two layers; each step predicted right (its own experts), so prefetch turns the misses of cold experts into hits.
  std::string text;
  for (int token = 0; token < 40; ++token) {
    for (int layer = 0; layer < 2; ++layer) {
      const int a = (token * 3 + layer) % 16, b = (token * 5 + 7 + layer) % 16;
      if (a == b) continue;
      text += "{\"token\":" + std::to_string(token) + ",\"layer\":" + std::to_string(layer) + ",\"experts\":[" +
              std::to_string(a) + "," + std::to_string(b) + "],\"predicted\":[" + std::to_string(a) + "," +
              std::to_string(b) + "]}\n";
    }
  }
  std::FILE* f = std::fopen(dir_.Sub("p.jsonl").c_str(), "w");
  std::fputs(text.c_str(), f);
  std::fclose(f);
  CliResult r = RunCli("bench cache " + Store() + " --model m --trace " + dir_.Sub("p.jsonl") +
                       " --cache-pct 25 --prefetch --policies lru,reuse,belady --json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto doc = ParseJson(r.out);
  ASSERT_TRUE(doc.ok()) << r.out;
  const JsonValue* policies = doc->Find("policies");
  EXPECT_EQ(policies->Find("belady")->Find("prefetch"), nullptr);
  const double belady_reads =
      static_cast<double>(*policies->Find("belady")->Find("misses")->AsUint64()) / *doc->Find("accesses")->AsDouble();
  for (const char* p : {"lru", "reuse"}) {
    const JsonValue* pf = policies->Find(p)->Find("prefetch");
    ASSERT_NE(pf, nullptr) << p;
    EXPECT_GT(*pf->Find("hit_rate")->AsDouble(), *policies->Find(p)->Find("hit_rate")->AsDouble()) << p;
    EXPECT_GT(*pf->Find("prefetch_hits")->AsUint64(), 0u) << p;
    EXPECT_GE(*pf->Find("reads_per_access")->AsDouble(), belady_reads) << p;
  }
  // A trace without predictions cannot be replayed with prefetch.
  EXPECT_EQ(RunCli("bench cache " + Store() + " --model m --synthetic --cache-pct 25 --prefetch").exit_code, 2);
}

TEST_F(CliBenchTest, CacheRejectsBadInvocations) {
  EXPECT_EQ(RunCli("bench cache " + Store() + " --model m --cache-pct 25").exit_code, 2);  // no trace
  EXPECT_EQ(RunCli("bench cache " + Store() + " --model m --synthetic").exit_code, 2);     // no size
  EXPECT_EQ(RunCli("bench cache " + Store() + " --model m --synthetic --cache-pct 25 --policies lru,mru").exit_code, 2);
  EXPECT_EQ(RunCli("bench cache " + Store() + " --model nope --synthetic --cache-pct 25").exit_code, 3);
  EXPECT_EQ(RunCli("bench teleport " + Store() + " --model m").exit_code, 2);
  std::FILE* f = std::fopen(dir_.Sub("bad.jsonl").c_str(), "w");
  std::fputs("{\"token\":0,\"layer\":5,\"experts\":[1]}\n", f);  // layer outside the model
  std::fclose(f);
  CliResult r = RunCli("bench cache " + Store() + " --model m --trace " + dir_.Sub("bad.jsonl") + " --cache-mb 1 --json");
  EXPECT_EQ(r.exit_code, 2);
  // On failure --json prints one error document on stdout, nothing else.
  auto doc = ParseJson(r.out);
  ASSERT_TRUE(doc.ok()) << r.out;
  ASSERT_NE(doc->Find("error"), nullptr) << r.out;
  EXPECT_EQ(doc->Find("error")->Find("code")->string_value(), "invalid_argument");
}

TEST_F(CliBenchTest, SwapinReportsTheContractFields) {
  CliResult r = RunCli("bench swapin " + Store() + " --model m --reads 3 --batches 2 --repeat 1 --json --scratch-dir " +
                       dir_.path());
  ASSERT_EQ(r.exit_code, 0);
  auto doc = ParseJson(r.out);
  ASSERT_TRUE(doc.ok()) << r.out;
  EXPECT_EQ(*doc->Find("expert_bytes")->AsUint64(), 64u << 10);
  EXPECT_EQ(*doc->Find("reads")->AsUint64(), 3u);
  for (const char* f : {"p50_ms", "p99_ms", "gbps", "raw_device_gbps", "pread_gbps", "mmap_gbps", "ratio_vs_raw",
                        "speedup_vs_mmap"}) {
    ASSERT_NE(doc->Find(f), nullptr) << f;
    EXPECT_GT(*doc->Find(f)->AsDouble(), 0) << f;
  }
  const JsonValue* batch = doc->Find("batch");
  ASSERT_NE(batch, nullptr);
  EXPECT_EQ(*batch->Find("k")->AsUint64(), 2u);
  EXPECT_EQ(*batch->Find("batches")->AsUint64(), 2u);
  EXPECT_GT(*batch->Find("gbps")->AsDouble(), 0);
  EXPECT_GT(*batch->Find("raw_device_gbps")->AsDouble(), 0);
  // The scratch file is gone.
  auto names = DefaultFileSystem()->ListDir(dir_.path());
  ASSERT_TRUE(names.ok());
  for (const auto& n : *names) EXPECT_EQ(n.find("scratch"), std::string::npos) << n;
}

}  // namespace
}  // namespace es
