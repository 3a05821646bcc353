// The CUDA and hybrid backends on a GPU: the tiny model's reference logits and greedy continuations through
// Model on the device with the GPU cache at 100% and 25% of the experts, prefill against token-by-token decode,
// agreement with the CPU backend under a host cache too small for one layer's prefill (parts) and with device
// prefetch, the hybrid backend with every miss sent to the CPU and with every miss copied, and the Mixtral
// layout (fp32 weights, tied embeddings). Every test skips without a CUDA device.
//
// Built a second time as cuda_backend_emulated_test (ES_CUDA_EMULATED): the same tests over
// tests/util/cuda_emulator/, where the "device" is host memory running the CPU kernels on deferred streams. That
// build runs everywhere and checks the backend's host logic (buffers, KV positions, routing, parts, leases,
// prefetch, the hybrid split), not the CUDA kernels.
#include <gtest/gtest.h>

#include <filesystem>

#include "cache/model_experts.h"
#include "compute/batch_engine.h"
#include "compute/runtime/backend_choice.h"
#include "compute/cache_provider.h"
#include "compute/runtime/cuda_backend.h"
#include "compute/generator.h"
#include "ingest/ingest.h"
#include "ingest/make_checkpoint.h"
#include "tests/util/reference_cases.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/temp_dir.h"
#include "tests/util/tensors.h"

namespace es {
namespace {

using testing::kAidreams;
constexpr double kMaxRelL2VsCpu = 1e-4;  // against the CPU backend on the same weights
using testing::kTinyEos;

#ifdef ES_CUDA_EMULATED
bool HaveDevice() { return true; }
Result<std::unique_ptr<Backend>> MakeBackend(Store& store, const Model& model, const BackendOptions& o) {
  if (o.device == "cpu") return MakeCpuBackend();
  return CreateCudaBackend(store, model, o);
}
#else
bool HaveDevice() { return !CudaDevices().empty(); }
Result<std::unique_ptr<Backend>> MakeBackend(Store& store, const Model& model, const BackendOptions& o) {
  return CreateBackend(store, model, o);
}
#endif

class CudaBackendTest : public testing::SuiteStoreTest {
 protected:
  static void SetUpTestSuite() {
    if (!HaveDevice() || !testing::DataPresent(testing::kReferenceCases) || !testing::DataPresent(kAidreams)) return;
    Status s = OpenSuiteStore({{"tiny", testing::kTinyModel}, {"aidreams", kAidreams}});
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  static void TearDownTestSuite() { CloseSuiteStore(); }
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
    ES_REQUIRE_DATA(testing::kReferenceCases);
    ES_REQUIRE_DATA(kAidreams);
    ASSERT_NE(store_, nullptr);
  }

  // The model on the CPU (device "cpu") or on a GPU backend with these options.
  std::unique_ptr<Model> Load(const std::string& name, const BackendOptions& o) {
    kernels::CpuContext ctx;
    ctx.pool = pool_;
    auto m = Model::Load(*store_, name, ctx);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    if (!m.ok()) return nullptr;
    auto b = MakeBackend(*store_, **m, o);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    if (!b.ok()) return nullptr;
    (*m)->SetBackend(std::move(b).value());
    return std::move(m).value();
  }

  std::unique_ptr<CacheExpertProvider> Cache(const std::string& name, uint32_t slots, uint32_t prefetch_depth) {
    auto experts = ModelExperts::Load(store_->catalog(), name);
    EXPECT_TRUE(experts.ok());
    if (!experts.ok()) return nullptr;
    ExpertCacheOptions o;
    o.capacity_bytes = slots * experts->max_record_bytes();
    o.prefetch_bytes_in_flight = prefetch_depth * 4 * experts->max_record_bytes();
    auto cache = CacheExpertProvider::Create(*store_, name, o);
    EXPECT_TRUE(cache.ok()) << cache.status().ToString();
    return cache.ok() ? std::move(cache).value() : nullptr;
  }

  void CheckReference(const BackendOptions& o) {
    auto model = Load("tiny", o);
    ASSERT_TRUE(model);
    auto experts = Cache("tiny", 192, 0);
    ASSERT_TRUE(experts);
    testing::ExpectMatchesReference(*model, *experts);
    BackendCounters n = model->backend().counters();
    EXPECT_GT(n.device_uploads, 0u);
    EXPECT_GT(n.device_hits + n.cpu_experts, 0u);
  }

  // `steps` forward passes of `model` and of the CPU `reference` side by side (the prompt, then one token each),
  // with the last position's logits compared after each.
  void ExpectSameLogits(Model& reference, Model& model, ExpertProvider& experts, const std::vector<int32_t>& prompt,
                        int steps, const ForwardOptions& fo) {
    const ModelConfig& c = model.config();
    KvCache want_kv(c, 16), got_kv(c, 16);
    std::vector<float> want_h, got_h, want(c.vocab), got(c.vocab);
    for (int step = 0; step < steps; ++step) {
      std::vector<int32_t> in = step == 0 ? prompt : std::vector<int32_t>{static_cast<int32_t>(step * 11 % c.vocab)};
      Status want_status = reference.Forward(in, want_kv, experts, {}, want_h);
      ASSERT_TRUE(want_status.ok()) << want_status.ToString();
      Status s = model.Forward(in, got_kv, experts, fo, got_h);
      ASSERT_TRUE(s.ok()) << s.ToString();
      const size_t last = (in.size() - 1) * c.hidden;
      ASSERT_TRUE(reference.ComputeLogits(&want_h[last], 1, want.data()).ok());
      ASSERT_TRUE(model.ComputeLogits(&got_h[last], 1, got.data()).ok());
      EXPECT_LT(testing::RelativeL2(got, want), kMaxRelL2VsCpu) << "step " << step;
    }
  }

};

TEST_F(CudaBackendTest, MatchesReferenceWithEveryExpertOnTheGpu) {
  BackendOptions o;
  o.device = "cuda";
  o.gpu_cache_pct = 100;
  CheckReference(o);
}

TEST_F(CudaBackendTest, MatchesReferenceWithAQuarterOfTheExpertsOnTheGpu) {
  BackendOptions o;
  o.device = "cuda";
  o.gpu_cache_pct = 25;
  CheckReference(o);
}

TEST_F(CudaBackendTest, HybridMatchesReferenceWithMissesOnTheCpu) {
  BackendOptions o;
  o.device = "hybrid";
  o.gpu_cache_pct = 25;
  o.hybrid_copy_bias = 1e-6;  // copying looks a million times dearer: every miss runs on the CPU
  auto model = Load("tiny", o);
  ASSERT_TRUE(model);
  auto experts = Cache("tiny", 192, 0);
  const testing::ReferenceCase c = testing::LoadReferenceCases()[4];
  auto logits = LastLogits(*model, *experts, c.ids, {});
  ASSERT_TRUE(logits.ok()) << logits.status().ToString();
  EXPECT_LT(testing::RelativeL2(*logits, c.logits), testing::kMaxReferenceRelL2);
  EXPECT_GT(model->backend().counters().cpu_experts, 0u);
  EXPECT_EQ(model->backend().counters().device_uploads, 0u) << "nothing was worth copying";
}

TEST_F(CudaBackendTest, HybridMatchesReferenceWithMissesCopied) {
  BackendOptions o;
  o.device = "hybrid";
  o.gpu_cache_pct = 25;
  o.hybrid_copy_bias = 1e6;  // copying looks free: the hybrid backend behaves as cuda
  CheckReference(o);
}

TEST_F(CudaBackendTest, PrefillEqualsIncrementalDecode) {
  BackendOptions o;
  o.device = "cuda";
  o.gpu_cache_pct = 50;
  auto model = Load("tiny", o);
  ASSERT_TRUE(model);
  auto experts = Cache("tiny", 192, 0);
  const testing::ReferenceCase c = testing::LoadReferenceCases()[1];
  auto batch = LastLogits(*model, *experts, c.ids, {});
  ASSERT_TRUE(batch.ok());
  KvCache kv(model->config(), c.ids.size());
  std::vector<float> hidden, logits(model->config().vocab);
  for (int32_t id : c.ids) ASSERT_TRUE(model->Forward({&id, 1}, kv, *experts, {}, hidden).ok());
  ASSERT_TRUE(model->ComputeLogits(hidden.data(), 1, logits.data()).ok());
  EXPECT_LT(testing::RelativeL2(logits, *batch), 1e-5);
  // A reset sequence starts again from position 0 on the device too.
  kv.Reset();
  ASSERT_TRUE(model->Forward(c.ids, kv, *experts, {}, hidden).ok());
  ASSERT_TRUE(model->ComputeLogits(&hidden[(c.ids.size() - 1) * model->config().hidden], 1, logits.data()).ok());
  EXPECT_LT(testing::RelativeL2(logits, *batch), 1e-6);
}

// Continuous batching on the GPU backends: BatchEngine's sequences (joining at different steps, prefilled in
// chunks) generate the ids the CPU backend generates for each alone; each sequence keeps its own device KV state.
TEST_F(CudaBackendTest, BatchedSequencesGenerateAsOnTheCpu) {
  auto cpu = Load("tiny", BackendOptions{});
  ASSERT_TRUE(cpu);
  for (const char* device : {"cuda", "hybrid"}) {
    SCOPED_TRACE(device);
    BackendOptions o;
    o.device = device;
    o.gpu_cache_pct = 50;
    auto model = Load("tiny", o);
    ASSERT_TRUE(model);
    auto experts = Cache("tiny", 192, 0);
    ASSERT_TRUE(experts);
    BatchEngineOptions eo;
    eo.max_sequences = 3;
    eo.step_tokens = 5;
    auto engine = BatchEngine::Create(*model, *experts, eo);
    ASSERT_TRUE(engine.ok());
    const auto cases = testing::LoadReferenceCases();
    std::vector<std::optional<Result<SequenceResult>>> results(3);
    for (size_t i = 0; i < 3; ++i) {
      SequenceSpec spec;
      spec.prompt = cases[i % cases.size()].ids;
      spec.max_tokens = 5;
      spec.on_finish = [&results, i](Result<SequenceResult> r) { results[i] = std::move(r); };
      ASSERT_TRUE((*engine)->Add(std::move(spec)).ok());
      ASSERT_TRUE((*engine)->Step().ok());
    }
    while ((*engine)->active() > 0) ASSERT_TRUE((*engine)->Step().ok());
    for (size_t i = 0; i < 3; ++i) {
      ASSERT_TRUE(results[i].has_value() && results[i]->ok());
      auto alone = GenerateIds(*cpu, *experts, cases[i % cases.size()].ids, 5, {}, {}, {});
      ASSERT_TRUE(alone.ok());
      EXPECT_EQ((*results[i])->ids, *alone) << "sequence " << i;
    }
  }
}

// A host cache of 4 slots (one layer's top-4: a prefill is acquired in parts) with device prefetch one layer
// ahead, against the CPU backend on a full cache.
TEST_F(CudaBackendTest, SmallHostCacheAndPrefetchAgreeWithTheCpu) {
  BackendOptions cpu;
  auto reference = Load("tiny", cpu);
  ASSERT_TRUE(reference);
  auto full = Cache("tiny", 192, 0);
  const testing::ReferenceCase c = testing::LoadReferenceCases()[4];
  auto want = LastLogits(*reference, *full, c.ids, {});
  ASSERT_TRUE(want.ok());
  auto want_ids = GenerateIds(*reference, *full, c.ids, 16, {kTinyEos}, SamplerOptions{}, {});
  ASSERT_TRUE(want_ids.ok());

  BackendOptions o;
  o.device = "cuda";
  o.gpu_cache_pct = 25;
  auto model = Load("tiny", o);
  ASSERT_TRUE(model);
  auto small = Cache("tiny", 4, 1);
  ASSERT_TRUE(small);
  ForwardOptions fo;
  fo.prefetch_depth = 1;
  auto got = LastLogits(*model, *small, c.ids, fo);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_LT(testing::RelativeL2(*got, *want), kMaxRelL2VsCpu);
  auto ids = GenerateIds(*model, *small, c.ids, 16, {kTinyEos}, SamplerOptions{}, fo);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(*ids, *want_ids);
}

TEST_F(CudaBackendTest, MixtralLayoutGeneratesTheKnownText) {
  BackendOptions o;
  o.device = "cuda";
  auto model = Load("aidreams", o);
  ASSERT_TRUE(model);
  auto experts = DirectExpertProvider::Create(*store_, "aidreams");
  ASSERT_TRUE(experts.ok());
  testing::ExpectAidreamsKnownText(*model, **experts);
}

// Every architecture's graph on the GPU backend against the CPU backend, on random checkpoints from
// make-checkpoint: Qwen3-MoE (per-head q/k norm), Mixtral (none), OLMoE (whole-vector q/k norm), Qwen2-MoE (q/k/v
// biases, the sigmoid-gated shared expert). A 12-token prefill, then four decode steps of fixed tokens, logits
// compared at every step; cuda with half the experts on the GPU, and hybrid with every miss on the CPU.
TEST_F(CudaBackendTest, EveryFamilyAgreesWithTheCpu) {
  for (const char* arch : {"qwen3_moe", "mixtral", "olmoe", "qwen2_moe"}) {
    SCOPED_TRACE(arch);
    MakeCheckpointOptions mo;
    mo.arch = arch;
    mo.layers = 3;
    mo.seed = 7;
    auto resolved = ResolveMakeCheckpointOptions(mo, {"layers"});
    ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
    ASSERT_TRUE(MakeCheckpoint(dir_->Sub(arch), *resolved).ok());
    IngestOptions io;
    io.name = std::string("m-") + arch;
    ASSERT_TRUE(IngestCheckpoint(*store_, dir_->Sub(arch), io).ok());
    BackendOptions cpu;
    auto reference = Load(io.name, cpu);
    ASSERT_TRUE(reference);
    BackendOptions gpu;
    gpu.device = "cuda";
    gpu.gpu_cache_pct = 50;
    BackendOptions hybrid;
    hybrid.device = "hybrid";
    hybrid.gpu_cache_pct = 25;
    hybrid.hybrid_copy_bias = 1e-6;
    for (const BackendOptions& o : {gpu, hybrid}) {
      SCOPED_TRACE(o.device);
      auto model = Load(io.name, o);
      ASSERT_TRUE(model);
      auto experts = Cache(io.name, 24, 1);
      ASSERT_TRUE(experts);
      std::vector<int32_t> prompt(12);
      for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 37 + 5) % model->config().vocab);
      ForwardOptions fo;
      fo.prefetch_depth = 1;
      ExpectSameLogits(*reference, *model, *experts, prompt, 5, fo);
    }
  }
}

// A quantized GGUF (llama.cpp's Q4_K_M of a one-layer Qwen3-MoE with 256-wide rows: Q4_K and Q6_K blocks in the
// experts, the attention and the lm_head) runs on the device's block kernels and agrees with the CPU's.
TEST_F(CudaBackendTest, QuantizedGgufAgreesWithTheCpu) {
  const std::string gguf = std::string(testing::kGgufFixtures) + "/small-Q4_K_M.gguf";
  ES_REQUIRE_DATA(gguf);
  IngestOptions io;
  io.name = "small-Q4_K_M";
  ASSERT_TRUE(IngestCheckpoint(*store_, gguf, io).ok());
  auto reference = Load(io.name, BackendOptions{});
  ASSERT_TRUE(reference);
  BackendOptions gpu;
  gpu.device = "cuda";
  gpu.gpu_cache_pct = 50;
  BackendOptions hybrid;
  hybrid.device = "hybrid";
  hybrid.gpu_cache_pct = 50;
  hybrid.hybrid_copy_bias = 1e-6;
  for (const BackendOptions& o : {gpu, hybrid}) {
    SCOPED_TRACE(o.device);
    auto model = Load(io.name, o);
    ASSERT_TRUE(model);
    auto experts = Cache(io.name, 2, 1);
    ASSERT_TRUE(experts);
    ExpectSameLogits(*reference, *model, *experts, {1, 7, 3, 12, 5}, 4, {});
    // On cuda the experts ran on the device; on hybrid (copying made dear) the misses ran on the CPU.
    const BackendCounters n = model->backend().counters();
    EXPECT_GT(o.device == "cuda" ? n.device_uploads : n.cpu_experts, 0u);
  }
}

// A KvCache filled on the CPU is not silently reused on the GPU.
TEST_F(CudaBackendTest, ASequenceStaysOnItsBackend) {
  BackendOptions cpu;
  auto on_cpu = Load("tiny", cpu);
  BackendOptions o;
  o.device = "cuda";
  auto on_gpu = Load("tiny", o);
  ASSERT_TRUE(on_cpu && on_gpu);
  auto experts = Cache("tiny", 192, 0);
  KvCache kv(on_cpu->config(), 8);
  std::vector<float> hidden;
  const int32_t id = 970;
  ASSERT_TRUE(on_cpu->Forward({&id, 1}, kv, *experts, {}, hidden).ok());
  EXPECT_TRUE(on_gpu->Forward({&id, 1}, kv, *experts, {}, hidden).IsInvalidArgument());
}

}  // namespace
}  // namespace es
