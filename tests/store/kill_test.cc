// Kill -9: a child appends records in a loop and is SIGKILLed at random moments, at least 20 times. After each
// kill the store opens, verify is clean, and every record acknowledged before the kill reads back exactly.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "store/store.h"
#include "tests/store/crash_writer_runner.h"
#include "tests/store/store_test_util.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::MakePayload;
using testing::ReadTensor;
using testing::TempDir;

constexpr int kKills = 24;

TEST(KillTest, AcknowledgedRecordsSurviveSigkill) {
  TempDir dir;
  std::map<std::string, std::pair<uint64_t, size_t>> acked;
  std::mt19937 rng(1234);
  for (int round = 0; round < kKills; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto run_for = std::chrono::milliseconds(20 + rng() % 400);
    testing::ParseAcks(testing::RunAndKill(dir.path(), static_cast<uint64_t>(round + 1) * 1000000, run_for), acked);
    auto store = Store::Open(dir.path(), StoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    auto report = (*store)->Verify();
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    for (const auto& c : report->corrupt) ADD_FAILURE() << c.what << ": " << c.message;
    for (const auto& [name, sv] : acked) {
      auto got = ReadTensor(**store, name);
      ASSERT_TRUE(got.ok()) << name << ": " << got.status().ToString();
      ASSERT_EQ(*got, MakePayload(sv.first, sv.second)) << name;
    }
  }
  // Every round waited for an acknowledgement before killing.
  EXPECT_GE(acked.size(), static_cast<size_t>(kKills)) << "the writer barely ran; the test proves little";
}

}  // namespace
}  // namespace es
