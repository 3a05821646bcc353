// The CLI's one error path: exit codes, and library errors that name option fields (`cache_pct`) printed as the
// flags that set them (--cache-pct), through the real binary.
#include <gtest/gtest.h>

#include <string>

#include "tests/util/run_cli.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

using testing::CliResult;
using testing::RunCli;

// Runs `args` with stderr captured; expects exit code `code` and one error line holding `want`, with no field
// left in backquotes.
void ExpectError(const std::string& args, int code, const std::string& want) {
  SCOPED_TRACE(args);
  CliResult r = RunCli(args, /*with_stderr=*/true);
  EXPECT_EQ(r.exit_code, code) << r.out;
  EXPECT_NE(r.out.find("error: " + want), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('`'), std::string::npos) << "a field name was not translated: " << r.out;
}

TEST(CliErrorsTest, RuntimeValidationNamesTheFlags) {
  testing::TempDir dir;
  const std::string gen = "generate --store " + dir.Sub("store") + " --model m --prompt x";
  ExpectError(gen + " --cache-pct 150", 2, "--cache-pct must be in (0, 100]");
  ExpectError(gen + " --cache-mb 5 --cache-pct 5", 2, "give --cache-mb or --cache-pct, not both");
  ExpectError(gen + " --device gpu", 2, "--device must be cpu, cuda or hybrid, not 'gpu'");
  ExpectError(gen + " --routing-margin 0.1", 2, "--routing-margin goes with --routing cache-aware");
  ExpectError(gen + " --routing trust --no-cache --routing-margin 0.1", 2,
              "--routing-margin goes with --routing cache-aware");
  ExpectError(gen + " --routing cache-aware --no-cache", 2, "--routing cache-aware needs the cache, which --no-cache");
  ExpectError(gen + " --policy belady", 2, "--policy belady needs the future access sequence");
  ExpectError(gen + " --state rest", 2, "--state rest is not a generation state");
}

TEST(CliErrorsTest, CheckpointOptionsNameTheFlags) {
  testing::TempDir dir;
  ExpectError("make-checkpoint " + dir.Sub("c") + " --arch nope", 2, "unknown --arch 'nope'");
  ExpectError("make-checkpoint " + dir.Sub("c") + " --arch mixtral --experts 4 --top-k 5", 2,
              "--top-k must be in [1, --experts]");
  ExpectError("make-checkpoint " + dir.Sub("c") + " --arch mixtral --heads 6 --kv-heads 4", 2,
              "--heads must be a multiple of --kv-heads");
}

TEST(CliErrorsTest, ModelDependentLimitsNameTheFlags) {
  ES_REQUIRE_DATA(testing::kTinyModel);
  testing::TempDir dir;
  const std::string store = " --store " + dir.Sub("store");
  ASSERT_EQ(RunCli("ingest " + std::string(testing::kTinyModel) + " --name tiny --quiet" + store).exit_code, 0);
  ExpectError("generate --model tiny --prompt x --no-record --cache-pct 1" + store, 2, "--cache-pct 1.000000 holds 1");
  ExpectError("generate --model tiny --prompt x --no-record --cache-mb 0" + store, 2, "--cache-mb must be between 1");
  ExpectError("bench cache --model tiny --synthetic" + store, 2, "give one of --cache-mb and --cache-pct");
  ExpectError("bench cache --model tiny --synthetic --cache-pct 0" + store, 2, "--cache-pct must be in (0, 100]");
  ExpectError("generate --model tiny --prompt x --no-record --prefetch-min-prob 1.5" + store, 2,
              "--prefetch-min-prob must be in [0, 1]");
  ExpectError("quantize --model tiny --to t2" + store, 2, "give exactly one of --experts (one format) and --experts-by");
  ExpectError("quantize --model tiny --to t2 --experts q2_k" + store, 2, "--experts must be one of F32");
  ExpectError("quantize --model tiny --to t2 --experts q8_0 --dense q3_k" + store, 2, "--dense must be one of F32");
  ExpectError("quantize --model tiny --to t2 --experts-by speed:q8_0@25%,q4_k@rest" + store, 2,
              "--experts-by ranks by trust, usage, random or list");
  ExpectError("quantize --model tiny --to t2 --experts-by trust:q8_0@25%,q4_k@rest" + store, 2,
              "--experts-by ranks by trust, but model 'tiny' has no trust records");
  ExpectError("quantize --model tiny --to tiny --experts q8_0" + store, 2, "--to must name a new model");
  ExpectError("quantize --model none --to t2 --experts q8_0" + store, 3, "no model 'none'");
  ExpectError("quantize --model tiny --add-tier q4_k --to t2" + store, 2, "--add-tier names the copy and its format");
  ExpectError("generate --model tiny --prompt x --no-record --miss-precision q9" + store, 2,
              "--miss-precision must name a GGML format");
  ExpectError("generate --model tiny --prompt x --no-record --miss-precision q4_k" + store, 3,
              "--miss-precision Q4_K needs the model's low-bit copy 'tiny.tier-Q4_K'");
}

}  // namespace
}  // namespace es
