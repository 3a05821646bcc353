// The backend interface (compute/backend.h) without a GPU: Model dispatches to whichever backend it holds and
// checks arguments before it does; the options and the GPU cache sizing; the hybrid cost model's choices and
// what it learns; and the clear errors a CUDA request meets on a machine (or a build) without CUDA.
#include <gtest/gtest.h>

#include <filesystem>

#include "compute/runtime/backend_choice.h"
#include "compute/cache_provider.h"
#include "compute/cuda/slot_table.h"
#include "compute/generator.h"
#include "compute/runtime/hybrid_cost.h"
#include "compute/runtime/model_runtime.h"
#include "tests/util/model_fixtures.h"
#include "store/base/json.h"
#include "tests/util/run_cli.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kExpert = 9 * kMiB;  // a Qwen3-30B-A3B expert in bf16

bool HaveCudaBackend() {
  auto b = CompiledBackends();
  return std::find(b.begin(), b.end(), "cuda") != b.end();
}

// ---- HybridCostModel ------------------------------------------------------------------------------------------

TEST(HybridCostModel, DecodeGoesToTheFasterOfLinkAndCpuBandwidth) {
  HybridCostOptions o;
  o.h2d_bytes_per_s = 20e9;
  o.gpu_bytes_per_s = 2e12;
  o.cpu_bytes_per_s = 40e9;  // a CPU that streams weights faster than the link copies them
  o.cpu_flops_per_s = 500e9;
  HybridCostModel m(o);
  EXPECT_EQ(m.Choose(kExpert, 2, 1), ExpertPlacement::kCpu);
  o.cpu_bytes_per_s = 10e9;  // slower than the link
  EXPECT_EQ(HybridCostModel(o).Choose(kExpert, 2, 1), ExpertPlacement::kGpu);
}

TEST(HybridCostModel, ManyRowsMakeTheCopyWin) {
  HybridCostOptions o;
  o.h2d_bytes_per_s = 20e9;
  o.cpu_bytes_per_s = 40e9;
  o.cpu_flops_per_s = 500e9;
  HybridCostModel m(o);
  ASSERT_EQ(m.Choose(kExpert, 2, 1), ExpertPlacement::kCpu);
  EXPECT_EQ(m.Choose(kExpert, 2, 512), ExpertPlacement::kGpu);
  // The crossover is monotone in the row count.
  bool seen_gpu = false;
  for (size_t rows = 1; rows <= 512; rows *= 2) {
    bool gpu = m.Choose(kExpert, 2, rows) == ExpertPlacement::kGpu;
    EXPECT_TRUE(gpu || !seen_gpu) << rows;
    seen_gpu = seen_gpu || gpu;
  }
  // Costs: a 9 MiB upload at 20 GB/s is about 0.47 ms; one CPU pass at 40 GB/s about 0.24 ms plus arithmetic.
  EXPECT_NEAR(m.CopySeconds(kExpert), kExpert / 20e9 + kExpert / o.gpu_bytes_per_s, 1e-9);
  EXPECT_NEAR(m.CpuSeconds(kExpert, 2, 1), kExpert / 40e9 + 2.0 * (kExpert / 2.0) / 500e9, 1e-9);
}

TEST(HybridCostModel, CopyBiasFavoursTheGpu) {
  HybridCostOptions o;
  o.h2d_bytes_per_s = 20e9;
  o.cpu_bytes_per_s = 25e9;
  o.cpu_flops_per_s = 1e12;
  ASSERT_EQ(HybridCostModel(o).Choose(kExpert, 2, 1), ExpertPlacement::kCpu);
  o.copy_bias = 2.0;
  EXPECT_EQ(HybridCostModel(o).Choose(kExpert, 2, 1), ExpertPlacement::kGpu);
}

TEST(HybridCostModel, LearnsTheCpuRatesFromObservations) {
  HybridCostOptions o;
  o.cpu_bytes_per_s = 40e9;
  o.cpu_flops_per_s = 500e9;
  o.smoothing = 0.5;
  HybridCostModel m(o);
  // The CPU turns out 4x slower than assumed on single rows: the estimate falls toward it.
  const double slow = m.CpuSeconds(kExpert, 2, 1) * 4;
  for (int i = 0; i < 20; ++i) m.ObserveCpu(kExpert, 2, 1, slow);
  EXPECT_LT(m.rates().cpu_bytes_per_s, 15e9);
  EXPECT_GT(m.rates().cpu_bytes_per_s, 5e9);
  EXPECT_NEAR(m.CpuSeconds(kExpert, 2, 1), slow, slow * 0.35);
  // Many rows slower than the bandwidth term explains: the arithmetic rate falls.
  const double before = m.rates().cpu_flops_per_s;
  m.ObserveCpu(kExpert, 2, 64, m.CpuSeconds(kExpert, 2, 64) * 3);
  EXPECT_LT(m.rates().cpu_flops_per_s, before);
  // Nonsense observations change nothing.
  const HybridCostOptions kept = m.rates();
  m.ObserveCpu(kExpert, 2, 1, 0);
  m.ObserveCpu(0, 2, 1, 1);
  m.ObserveCpu(kExpert, 2, 0, 1);
  EXPECT_EQ(m.rates().cpu_bytes_per_s, kept.cpu_bytes_per_s);
  EXPECT_EQ(m.rates().cpu_flops_per_s, kept.cpu_flops_per_s);
  m.SetH2dBytesPerSecond(-1);
  EXPECT_EQ(m.rates().h2d_bytes_per_s, kept.h2d_bytes_per_s);
  m.SetH2dBytesPerSecond(12e9);
  EXPECT_EQ(m.rates().h2d_bytes_per_s, 12e9);
}

// ---- Options and GPU cache sizing ------------------------------------------------------------------------------

TEST(BackendOptions, NamesAndCombinations) {
  BackendOptions o;
  EXPECT_TRUE(ValidateBackendOptions(o).ok());
  o.device = "gpu";
  EXPECT_TRUE(ValidateBackendOptions(o).IsInvalidArgument());
  o.device = "cpu";
  o.gpu_cache_pct = 50;
  EXPECT_TRUE(ValidateBackendOptions(o).IsInvalidArgument()) << "GPU cache flags need a GPU device";
  o.device = "cuda";
  if (!HaveCudaBackend()) {
    Status s = ValidateBackendOptions(o);
    EXPECT_TRUE(s.IsNotSupported());
    EXPECT_NE(s.message().find("no CUDA backend"), std::string::npos) << s.message();
    return;
  }
  if (CudaDevices().empty()) {
    Status s = ValidateBackendOptions(o);
    EXPECT_TRUE(s.IsNotSupported());
    EXPECT_NE(s.message().find("no CUDA device"), std::string::npos) << s.message();
  } else {
    EXPECT_TRUE(ValidateBackendOptions(o).ok());
    o.device = "hybrid";
    EXPECT_TRUE(ValidateBackendOptions(o).ok());
  }
  o.device = "hybrid";
  o.gpu_cache_mb = 100;
  EXPECT_TRUE(ValidateBackendOptions(o).IsInvalidArgument()) << "both sizes";
  o.gpu_cache_pct.reset();
  o.gpu_cache_mb = 0;
  EXPECT_TRUE(ValidateBackendOptions(o).IsInvalidArgument());
  o.gpu_cache_mb.reset();
  o.gpu_cache_pct = 0;
  EXPECT_TRUE(ValidateBackendOptions(o).IsInvalidArgument());
  o.gpu_cache_pct = 101;
  EXPECT_TRUE(ValidateBackendOptions(o).IsInvalidArgument());
}

TEST(GpuExpertSlots, PercentMegabytesAndWhatFits) {
  const uint64_t free = 80ull << 30;
  BackendOptions o;
  o.device = "cuda";
  o.gpu_cache_pct = 25;
  EXPECT_EQ(*GpuExpertSlots(o, 6144, kExpert, free), 1536u);
  o.gpu_cache_pct = 100;
  EXPECT_EQ(*GpuExpertSlots(o, 6144, kExpert, free), 6144u);
  o.gpu_cache_pct.reset();
  o.gpu_cache_mb = 90;
  EXPECT_EQ(*GpuExpertSlots(o, 6144, kExpert, free), 10u);
  o.gpu_cache_mb = 1;
  EXPECT_TRUE(GpuExpertSlots(o, 6144, kExpert, free).status().IsResourceExhausted()) << "less than one expert";
  o.gpu_cache_mb.reset();
  // Default: what fits in free memory less the reserve (10%, at least 1 GiB), at most every expert.
  auto fit = GpuExpertSlots(o, 100000, kExpert, free);
  ASSERT_TRUE(fit.ok());
  EXPECT_EQ(*fit, static_cast<size_t>((free - free / 10) / kExpert));
  EXPECT_EQ(*GpuExpertSlots(o, 192, kExpert, free), 192u);
  EXPECT_TRUE(GpuExpertSlots(o, 192, kExpert, 512 * kMiB).status().IsResourceExhausted()) << "reserve eats it all";
  o.gpu_cache_pct = 100;
  EXPECT_TRUE(GpuExpertSlots(o, 6144, kExpert, 20ull << 30).status().IsResourceExhausted()) << "more than is free";
}

// ---- Dispatch, on the real tiny model -----------------------------------------------------------------------

// The CPU backend wrapped, counting calls, without ForwardRowsFrom (the base class's NotSupported).
class CountingBackend final : public Backend {
 public:
  std::string name() const override { return "counting"; }
  std::string describe() const override { return "counting"; }
  Status Forward(const Model& model, std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts,
                 const ForwardOptions& options, std::vector<float>& hidden) override {
    ++forwards;
    return cpu_->Forward(model, tokens, kv, experts, options, hidden);
  }
  Status ComputeLogits(const Model& model, const float* hidden, size_t rows, float* logits) override {
    ++logit_calls;
    return cpu_->ComputeLogits(model, hidden, rows, logits);
  }
  int forwards = 0;
  int logit_calls = 0;

 private:
  std::unique_ptr<Backend> cpu_ = MakeCpuBackend();
};

class BackendDispatchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::DataPresent(testing::kTinyModel)) return;
    dir_ = new testing::TempDir();
    auto s = testing::StoreWithModels(dir_->Sub("store"), {{"tiny", testing::kTinyModel}});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = s->release();
  }
  static void TearDownTestSuite() {
    delete store_;
    delete dir_;
  }
  void SetUp() override {
    ES_REQUIRE_DATA(testing::kTinyModel);
    ASSERT_NE(store_, nullptr);
  }
  static testing::TempDir* dir_;
  static Store* store_;
};

testing::TempDir* BackendDispatchTest::dir_ = nullptr;
Store* BackendDispatchTest::store_ = nullptr;

TEST_F(BackendDispatchTest, ModelRunsOnTheBackendItHoldsAfterCheckingArguments) {
  auto model = Model::Load(*store_, "tiny", {});
  ASSERT_TRUE(model.ok());
  EXPECT_EQ((*model)->backend().name(), "cpu");
  auto experts = DirectExpertProvider::Create(*store_, "tiny");
  ASSERT_TRUE(experts.ok());
  const std::vector<int32_t> ids = {970, 11, 1879, 0, 576};
  auto want = LastLogits(**model, **experts, ids, {});
  ASSERT_TRUE(want.ok());

  auto counting = std::make_unique<CountingBackend>();
  CountingBackend* c = counting.get();
  (*model)->SetBackend(std::move(counting));
  EXPECT_EQ((*model)->backend().name(), "counting");
  auto got = LastLogits(**model, **experts, ids, {});
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *want);
  EXPECT_EQ(c->forwards, 1);
  EXPECT_EQ(c->logit_calls, 1);

  // Bad arguments never reach the backend.
  KvCache kv((*model)->config(), 4);
  std::vector<float> hidden;
  const std::vector<int32_t> bad = {1, -5};
  EXPECT_TRUE((*model)->Forward(bad, kv, **experts, {}, hidden).IsInvalidArgument());
  const std::vector<int32_t> many(5, 1);
  EXPECT_TRUE((*model)->Forward(many, kv, **experts, {}, hidden).IsResourceExhausted());
  EXPECT_TRUE((*model)->Forward({}, kv, **experts, {}, hidden).IsInvalidArgument());
  EXPECT_EQ(c->forwards, 1);
  EXPECT_EQ(kv.length(), 0u);

  // A backend that cannot re-run rows says so (calibration runs on the CPU).
  ASSERT_TRUE((*model)->Forward({ids.data(), 2}, kv, **experts, {}, hidden).ok());
  const size_t H = (*model)->config().hidden;
  std::vector<float> residual(H, 0.1f);
  const std::vector<size_t> positions = {1};
  const std::vector<int32_t> fe = {0};
  const std::vector<float> fw = {1.0f};
  Status s = (*model)->ForwardRowsFrom(0, residual, positions, ForcedRouting{1, fe, fw}, kv, **experts, {}, hidden);
  EXPECT_TRUE(s.IsNotSupported()) << s.ToString();
}

// --device cuda and hybrid fail clearly where they cannot run: no CUDA in the build, or no device.
TEST_F(BackendDispatchTest, CudaWithoutADeviceIsAClearError) {
  if (!CudaDevices().empty()) GTEST_SKIP() << "a CUDA device is present (cuda_backend_test covers it)";
  auto model = Model::Load(*store_, "tiny", {});
  ASSERT_TRUE(model.ok());
  for (const char* device : {"cuda", "hybrid"}) {
    BackendOptions o;
    o.device = device;
    auto b = CreateBackend(*store_, **model, o);
    ASSERT_FALSE(b.ok());
    EXPECT_TRUE(b.status().IsNotSupported()) << b.status().ToString();
    const std::string want = HaveCudaBackend() ? "no CUDA device" : "no CUDA backend";
    EXPECT_NE(b.status().message().find(want), std::string::npos) << b.status().message();

    RuntimeConfig rc;
    rc.device = device;
    rc.need_tokenizer = false;
    auto rt = ModelRuntime::Open(*store_, "tiny", rc, nullptr);
    ASSERT_FALSE(rt.ok());
    EXPECT_TRUE(rt.status().IsNotSupported()) << rt.status().ToString();
  }
  RuntimeConfig rc;
  rc.gpu_cache_pct = 50;
  EXPECT_TRUE(ValidateRuntimeConfig(rc).IsInvalidArgument());
}

// The CLI: `info` lists the compiled backends and the GPUs found; `generate --device cuda|hybrid` without a
// device (or without CUDA compiled in) exits 7 (not supported); a bad device name is a usage error (2).
TEST(BackendCli, InfoListsBackendsAndGenerateRefusesMissingGpus) {
  auto info = testing::RunCli("info --json");
  ASSERT_EQ(info.exit_code, 0);
  auto v = ParseJson(info.out);
  ASSERT_TRUE(v.ok()) << info.out;
  ASSERT_NE(v->Find("backends"), nullptr);
  std::vector<std::string> backends;
  for (const auto& b : v->Find("backends")->array()) backends.push_back(b.string_value());
  EXPECT_EQ(backends, CompiledBackends());
  ASSERT_NE(v->Find("devices"), nullptr);
  EXPECT_EQ(v->Find("devices")->array().size(), CudaDevices().size());

  ES_REQUIRE_DATA(testing::kTinyModel);
  testing::TempDir dir;
  const std::string store = "--store " + dir.Sub("store");
  ASSERT_EQ(testing::RunCli("ingest " + std::string(testing::kTinyModel) + " --name tiny --quiet " + store).exit_code, 0);
  const std::string gen = "generate " + store + " --model tiny --prompt hi --max-tokens 2 --quiet";
  EXPECT_EQ(testing::RunCli(gen + " --device gpu").exit_code, 2);
  EXPECT_EQ(testing::RunCli(gen + " --gpu-cache-pct 50").exit_code, 2) << "GPU flags need a GPU device";
  if (CudaDevices().empty()) {
    EXPECT_EQ(testing::RunCli(gen + " --device cuda").exit_code, 7);
    EXPECT_EQ(testing::RunCli(gen + " --device hybrid --gpu-cache-pct 25").exit_code, 7);
  }
  EXPECT_EQ(testing::RunCli(gen).exit_code, 0);
}

// The device expert cache's bookkeeping (shared by device_cache.cu and the emulator): free slots first, then the
// least recently used slot nobody holds, preferring one whose last use has completed; held slots never.
TEST(SlotTable, VictimsHoldersAndCounters) {
  cuda::internal::SlotTable t(3);
  int done_event = 0, busy_event = 0;
  auto use_done = [&](void* e) -> Result<bool> { return e == &done_event; };
  bool pending = true;
  for (uint64_t key = 10; key < 13; ++key) {
    auto v = t.PickVictim(use_done, &pending);
    ASSERT_TRUE(v.ok());
    EXPECT_FALSE(pending);
    t.Vacate(*v, pending);
    t.Fill(*v, key, 100);
  }
  EXPECT_EQ(t.stats().uploads, 3u);
  EXPECT_EQ(t.stats().bytes_uploaded, 300u);
  ASSERT_TRUE(t.Hit(10).has_value());  // 11 is now the least recently used
  EXPECT_FALSE(t.Hit(99).has_value());
  EXPECT_EQ(t.stats().hits, 1u);
  auto v = t.PickVictim(use_done, &pending);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(t[*v].key, 11u);
  // 11 held: 12 goes instead; Touch refreshes without counting a hit.
  const size_t s11 = *v;
  ++t[s11].holders;
  ASSERT_TRUE(t.Touch(12));
  EXPECT_EQ(t.stats().hits, 1u);
  v = t.PickVictim(use_done, &pending);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(t[*v].key, 10u) << "12 was touched, 11 is held";
  // A slot whose last use is still running is taken, with `pending` set, only when nothing else is free.
  EXPECT_TRUE(t.CheckHeld(s11, 11).ok());
  EXPECT_TRUE(t.CheckHeld(s11, 12).IsInvalidArgument());
  t[s11].use_event = &busy_event;
  t.Released(s11);
  for (size_t i = 0; i < t.size(); ++i) {
    if (i != s11) {
      ++t[i].holders;
    }
  }
  v = t.PickVictim(use_done, &pending);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, s11);
  EXPECT_TRUE(pending);
  t.Vacate(*v, pending);
  EXPECT_EQ(t.stats().evictions, 1u);
  EXPECT_EQ(t.stats().ordered_evictions, 1u);
  EXPECT_FALSE(t.Contains(11));
  // Every slot held: no victim.
  t.Fill(s11, 20, 100);
  ++t[s11].holders;
  EXPECT_TRUE(t.PickVictim(use_done, &pending).status().IsResourceExhausted());
  EXPECT_TRUE(t.CheckHeld(7, 20).IsInvalidArgument()) << "no such slot";
}

TEST(KvCache, HostRowsAreAllocatedOnFirstUse) {
  ModelConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  KvCache kv(c, 3);
  EXPECT_EQ(kv.row_floats(), 8u);
  EXPECT_EQ(kv.backend_state(), nullptr);
  float* k0 = kv.keys(0);
  ASSERT_NE(k0, nullptr);
  k0[3 * 8 - 1] = 1.0f;  // the last float of the layer is addressable
  EXPECT_EQ(kv.keys(0), k0) << "allocated once";
  EXPECT_NE(kv.values(1), nullptr);
}

}  // namespace
}  // namespace es
