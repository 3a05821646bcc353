// The swap-in measurement on a small store: option checks naming the fields, the reader settings' defaults
// (those `bench swapin --help` states), the figures' shape, the observer's calls, and no scratch file left.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench/measure/swapin.h"
#include "tests/util/expert_model.h"
#include "tests/util/temp_dir.h"

namespace es::bench {
namespace {

constexpr uint64_t kPayloadBytes = uint64_t{64} << 10;

void ExpectNamesField(const Status& s, const std::string& field) {
  EXPECT_TRUE(s.IsInvalidArgument()) << s.ToString();
  EXPECT_NE(s.message().find("`" + field + "`"), std::string::npos) << s.ToString();
}

TEST(SwapinOptionsTest, DefaultsAreTheIoEnginesAndChecksNameTheFields) {
  const SwapinOptions defaults;
  auto io = SwapinReaderOptions(defaults);
  ASSERT_TRUE(io.ok()) << io.status().ToString();
  EXPECT_EQ(io->queue_depth, IoEngineOptions{}.queue_depth);
  EXPECT_EQ(io->max_request_bytes, IoEngineOptions{}.max_request_bytes);

  SwapinOptions o;
  o.reads = 0;
  ExpectNamesField(ValidateSwapinOptions(o), "reads");
  o = {};
  o.batches = kMaxSwapinSamples + 1;
  ExpectNamesField(ValidateSwapinOptions(o), "batches");
  o = {};
  o.repeat = 0;
  ExpectNamesField(ValidateSwapinOptions(o), "repeat");
  o = {};
  o.queue_depth = 0;
  ExpectNamesField(SwapinReaderOptions(o).status(), "queue_depth");
  o = {};
  o.request_kb = 6;
  ExpectNamesField(SwapinReaderOptions(o).status(), "request_kb");
  o = {};
  o.request_kb = 0;  // no splitting
  EXPECT_TRUE(ValidateSwapinOptions(o).ok());
}

class SwapinTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.Sub("store"), StoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    es::testing::TestModelSpec spec{.name = "m", .layers = 2, .experts = 16, .top_k = 2};
    spec.payload_bytes = [](uint32_t, uint32_t) { return kPayloadBytes; };
    ASSERT_TRUE(es::testing::WriteTestModel(**store, spec).ok());
    store->reset();
    StoreOptions read_only;
    read_only.read_only = true;
    auto reopened = Store::Open(dir_.Sub("store"), read_only);
    ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
    store_ = std::move(reopened).value();
    options_.model = "m";
    options_.reads = 3;
    options_.batches = 2;
    options_.repeat = 2;
    options_.scratch_dir = dir_.path();
  }

  es::testing::TempDir dir_;
  std::unique_ptr<Store> store_;
  SwapinOptions options_;
};

TEST_F(SwapinTest, ReportsEveryMethodInBothModes) {
  std::vector<SweepPoint> sweep;
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  SwapinObserver observer{.on_sweep_point = [&](const SweepPoint& p) { sweep.push_back(p); },
                          .on_progress = [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); }};
  auto r = MeasureSwapin(*store_, options_, observer);
  ASSERT_TRUE(r.ok()) << r.status().ToString();

  EXPECT_EQ(r->model, "m");
  EXPECT_EQ(r->expert_bytes, kPayloadBytes);
  EXPECT_GT(r->record_bytes, kPayloadBytes);
  EXPECT_EQ(r->k, 2u);  // the model's top-k
  EXPECT_EQ(r->repeat, 2u);
  EXPECT_TRUE(r->primed);
  EXPECT_EQ(r->single.samples, 6u);
  EXPECT_EQ(r->batch.samples, 4u);
  EXPECT_EQ(r->single.bytes, r->record_bytes);
  EXPECT_EQ(r->batch.bytes, 2 * r->record_bytes);
  for (const SwapinModeResult* m : {&r->single, &r->batch}) {
    for (const MethodFigures* f : {&m->cache, &m->raw_device, &m->pread, &m->mmap}) {
      EXPECT_GT(f->p50_ms, 0);
      EXPECT_GE(f->p99_ms, f->p50_ms);
      EXPECT_GT(f->gbps, 0);
    }
    EXPECT_FALSE(m->raw_config.engine.empty());
    EXPECT_GT(m->ratio_vs_raw, 0);
    EXPECT_GT(m->fraction_of_raw, 0);
    EXPECT_GT(m->speedup_vs_mmap, 0);
  }
  EXPECT_EQ(r->reader_queue_depth, store_->reader().engine().options().queue_depth);

  // Every engine available here: three request sizes at each of four queue depths; only deep queues time batches.
  ASSERT_FALSE(sweep.empty());
  EXPECT_EQ(sweep.size() % 12, 0u);
  for (const SweepPoint& p : sweep) EXPECT_EQ(p.batch_p50_ms.has_value(), p.queue_depth >= 16) << p.queue_depth;
  // From (0, total) to (total, total), one step at a time.
  const uint64_t total = 2 * (3 + 2);
  ASSERT_EQ(progress.size(), total + 1);
  for (uint64_t i = 0; i <= total; ++i) EXPECT_EQ(progress[i], std::make_pair(i, total));

  auto names = DefaultFileSystem()->ListDir(dir_.path());
  ASSERT_TRUE(names.ok());
  for (const auto& n : *names) EXPECT_EQ(n.find("scratch"), std::string::npos) << n;
}

TEST_F(SwapinTest, WithoutBatchesOnlySinglesAreTimed) {
  options_.batches = 0;
  options_.k = 3;
  options_.prime = false;
  auto r = MeasureSwapin(*store_, options_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->batch.samples, 0u);
  EXPECT_EQ(r->batch.cache.p50_ms, 0);
  EXPECT_EQ(r->k, 3u);
  EXPECT_FALSE(r->primed);
  EXPECT_EQ(r->single.samples, 6u);
}

TEST_F(SwapinTest, RejectsAKLargerThanALayerAndAnUnknownModel) {
  options_.k = 17;
  auto r = MeasureSwapin(*store_, options_);
  ExpectNamesField(r.status(), "k");
  EXPECT_NE(r.status().message().find("between 1 and 16"), std::string::npos) << r.status().ToString();
  options_.k.reset();
  options_.model = "nope";
  EXPECT_TRUE(MeasureSwapin(*store_, options_).status().IsNotFound());
}

}  // namespace
}  // namespace es::bench
