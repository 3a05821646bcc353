// The metadata jobs' input readers: {"domain","text"} JSONL lines with one negative case per bad-input class, and
// texts from a .jsonl file or a plain one. (Profiling and trust calibration themselves run end to end in
// tests/tools/metadata_cli_test.cc.)
#include "compute/runtime/metadata_jobs.h"

#include <gtest/gtest.h>

#include "compute/calibration.h"

#include "tests/util/files.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

class LabelledTextsTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = dir_.Sub(name);
    testing::WriteText(path, text);
    return path;
  }
  void ExpectRejected(const std::string& text, bool need_domain, const std::string& reason) {
    SCOPED_TRACE(text);
    const std::string path = Write("bad.jsonl", text);
    auto r = ReadLabelledTexts(path, need_domain);
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(r.status().IsInvalidArgument()) << r.status().ToString();
    EXPECT_NE(r.status().message().find(reason), std::string::npos) << r.status().message();
  }
  testing::TempDir dir_;
};

TEST_F(LabelledTextsTest, ReadsLinesAndSkipsBlankOnes) {
  const std::string path =
      Write("ok.jsonl", "{\"domain\":\"python\",\"text\":\"def f():\"}\n\n  \n{\"domain\":\"de\",\"text\":\"Hund\"}\n");
  auto r = ReadLabelledTexts(path, /*need_domain=*/true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].domain, "python");
  EXPECT_EQ((*r)[0].text, "def f():");
  EXPECT_EQ((*r)[1].domain, "de");
  auto texts = ReadTexts(path);
  ASSERT_TRUE(texts.ok());
  EXPECT_EQ(*texts, (std::vector<std::string>{"def f():", "Hund"}));
  const std::string plain = Write("plain.txt", "one text\n{\"not\": \"parsed\"}\n");
  auto whole = ReadTexts(plain);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(*whole, std::vector<std::string>{"one text\n{\"not\": \"parsed\"}\n"});
}

TEST_F(LabelledTextsTest, EachBadLineIsNamed) {
  ExpectRejected("{\"domain\":\"a\",\"text\":\"x\"}\n{not json\n", true, "bad.jsonl:2: ");
  ExpectRejected("{\"domain\":\"a\"}\n", true, "bad.jsonl:1: needs a string \"text\"");
  ExpectRejected("{\"domain\":\"a\",\"text\":3}\n", true, "needs a string \"text\"");
  ExpectRejected("{\"text\":\"x\"}\n", true, "bad.jsonl:1: needs a string \"domain\"");
  ExpectRejected("{\"domain\":7,\"text\":\"x\"}\n", false, "\"domain\" must be a string");
  ExpectRejected("{\"domain\":\"no spaces\",\"text\":\"x\"}\n", true, "bad.jsonl:1: ");
  ExpectRejected("\n\n", true, "holds no lines");
  auto missing = ReadLabelledTexts(dir_.Sub("none.jsonl"), true);
  EXPECT_TRUE(missing.status().IsNotFound()) << missing.status().ToString();
}

TEST_F(LabelledTextsTest, DomainIsOptionalWhenNotNeeded) {
  auto r = ReadLabelledTexts(Write("t.jsonl", "{\"text\":\"x\"}\n"), /*need_domain=*/false);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].domain, "");
}

// Two half-samples that rank a layer's experts identically are stable; reversed ones are not.
TEST(RankStabilityTest, AgreeingHalvesAreStableAndReversedOnesAreNot) {
  CalibrationResult run;
  run.layers = 1;
  run.experts_per_layer = 8;
  run.experts.resize(8);
  for (size_t e = 0; e < 8; ++e) {
    ExpertContribution& c = run.experts[e];
    c.half_samples = {10, 10};
    c.half_sum = {10.0 * static_cast<double>(e), 10.0 * static_cast<double>(e) + 1};
  }
  RankStability same = RankStabilityOf(run);
  EXPECT_EQ(same.layers, 1u);
  EXPECT_NEAR(same.spearman, 1.0, 1e-12);
  EXPECT_NEAR(same.top5_overlap, 5.0, 1e-12);
  for (size_t e = 0; e < 8; ++e) run.experts[e].half_sum[1] = 10.0 * static_cast<double>(8 - e);
  RankStability reversed = RankStabilityOf(run);
  EXPECT_NEAR(reversed.spearman, -1.0, 1e-12);
  EXPECT_LT(reversed.spearman, kStableRankSpearman);
  // An expert seen in one half only is left out; below 3 compared experts a layer is not compared at all.
  for (size_t e = 2; e < 8; ++e) run.experts[e].half_samples[1] = 0;
  EXPECT_EQ(RankStabilityOf(run).layers, 0u);
}

}  // namespace
}  // namespace es
