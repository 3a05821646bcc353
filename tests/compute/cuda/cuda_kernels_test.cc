// Tests es_cuda: every CUDA kernel against the CPU kernels of compute/kernels/cpu_kernels.h (the reference
// semantics) on fresh random inputs at a few shapes, Qwen3-30B-A3B's among them and odd ones that leave tails,
// by relative L2 error with a tolerance per weight dtype; device outputs are poisoned with NaN first (and a
// guard after them), so an unwritten element or a write past the end fails, and any NaN fails. Also the
// DeviceExpertCache's upload / hit / eviction behaviour. Tests that need a device skip when cudaGetDeviceCount
// finds none; the host-side pieces (argument checks, the no-device statuses, prefill grouping) run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "compute/cuda/cuda_kernels.h"
#include "compute/cuda/device_cache.h"
#include "compute/kernels/cpu_kernels.h"
#include "store/base/float16.h"
#include "tests/util/block_fixtures.h"
#include "tests/util/tensors.h"

namespace es::cuda {
namespace {

using ::es::testing::RandomFloats;
using ::es::testing::RelativeL2;

constexpr DType kWeightDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
// Every byte of a poisoned output: 0xFFFFFFFF is a NaN.
constexpr uint8_t kPoisonByte = 0xFF;
constexpr uint32_t kPoisonBits = 0xFFFFFFFFu;
// Extra floats after each device output, which must still hold the poison afterwards.
constexpr size_t kGuard = 19;

// Relative L2 error allowed against the CPU kernels. Both sides read the very same weight values (16-bit weights
// widen exactly), so what differs is fp32 summation order and fused multiply-adds, ~sqrt(n) * 2^-24 relative:
// about 1e-6 expected at these sizes. The bounds (fp32 1e-5; 16-bit weights with fp32 accumulation 1e-3) leave
// room above that; tighten them once a GPU run has shown the real errors.
double WeightTolerance(DType dtype) { return dtype == DType::kF32 ? 1e-5 : 1e-3; }
constexpr double kFp32Tolerance = 1e-5;  // kernels with fp32 inputs only: norms, RoPE, attention, router weights

#define ASSERT_OK(expr)                                 \
  do {                                                  \
    const ::es::Status assert_status_ = (expr);         \
    ASSERT_TRUE(assert_status_.ok()) << assert_status_.ToString(); \
  } while (0)

#define SKIP_WITHOUT_DEVICE() \
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device: the CUDA kernels are compiled but not exercised here"

std::string Name(DType dtype) { return std::string(DTypeName(dtype)); }

// A weight tensor in its storage dtype (bytes) for both sides.
struct TestWeights {
  std::vector<uint8_t> bytes;
  DType dtype = DType::kUnknown;
};

// Normal(offset, scale) values rounded to dtype.
TestWeights MakeWeights(std::mt19937& rng, size_t n, DType dtype, float scale, float offset = 0.0f) {
  std::vector<float> f = RandomFloats(rng, n, scale);
  TestWeights w{std::vector<uint8_t>(n * DTypeSize(dtype)), dtype};
  for (size_t i = 0; i < n; ++i) {
    const float value = f[i] + offset;
    if (dtype == DType::kF32) {
      std::memcpy(w.bytes.data() + 4 * i, &value, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(value) : F32ToF16(value);
      std::memcpy(w.bytes.data() + 2 * i, &h, 2);
    }
  }
  return w;
}

// A device copy of host data (allocation failures are reported, and the empty buffer fails the kernel call).
template <typename T>
DeviceBuffer ToDevice(const std::vector<T>& host) {
  Result<DeviceBuffer> buffer = DeviceBuffer::Allocate(std::max<size_t>(1, host.size() * sizeof(T)));
  if (!buffer.ok()) {
    ADD_FAILURE() << buffer.status().ToString();
    return DeviceBuffer();
  }
  if (!host.empty()) {
    const Status s = buffer->CopyFromHost(host.data(), host.size() * sizeof(T));
    if (!s.ok()) ADD_FAILURE() << s.ToString();
  }
  return std::move(buffer).value();
}

class CudaKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_DEVICE();
    Result<CudaStream> stream = CudaStream::Create();
    ASSERT_TRUE(stream.ok()) << stream.status().ToString();
    stream_ = std::move(stream).value();
  }

  // n floats of output plus the guard, every byte poisoned.
  DeviceBuffer Poisoned(size_t n) {
    Result<DeviceBuffer> buffer = DeviceBuffer::Allocate((n + kGuard) * sizeof(float));
    if (!buffer.ok()) {
      ADD_FAILURE() << buffer.status().ToString();
      return DeviceBuffer();
    }
    const Status s = buffer->Fill(kPoisonByte, stream_);
    if (!s.ok()) ADD_FAILURE() << s.ToString();
    return std::move(buffer).value();
  }

  // The first n floats after the stream has run; fails on NaN, infinity or a touched guard.
  std::vector<float> Read(const DeviceBuffer& buffer, size_t n, const std::string& what, bool guarded = true) {
    const Status sync = stream_.Synchronize();
    EXPECT_TRUE(sync.ok()) << what << ": " << sync.ToString();
    std::vector<float> host(buffer.size() / sizeof(float));
    const Status copy = buffer.CopyToHost(host.data(), host.size() * sizeof(float));
    EXPECT_TRUE(copy.ok()) << what << ": " << copy.ToString();
    for (size_t i = 0; i < n && i < host.size(); ++i) {
      if (!std::isfinite(host[i])) {
        ADD_FAILURE() << what << ": element " << i << " is " << host[i] << " (unwritten or computed)";
        break;
      }
    }
    if (guarded) {
      for (size_t i = n; i < host.size(); ++i) {
        if (std::bit_cast<uint32_t>(host[i]) != kPoisonBits) {
          ADD_FAILURE() << what << ": wrote past the end at " << i;
          break;
        }
      }
    }
    host.resize(n);
    return host;
  }

  void ExpectClose(const std::vector<float>& actual, const std::vector<float>& expected, double tolerance,
                   const std::string& what) {
    ASSERT_EQ(actual.size(), expected.size()) << what;
    const double err = RelativeL2(actual, expected);
    EXPECT_LE(err, tolerance) << what << ": relative L2 error " << err;
  }

  CudaStream stream_;
  kernels::CpuContext cpu_;
};

// ---- Host-side behaviour: runs with or without a device -----------------------------------------------------

TEST(CudaHostTest, WithoutADeviceEverythingIsNotSupported) {
  if (DeviceAvailable()) GTEST_SKIP() << "a device is present: this checks the no-device statuses";
  EXPECT_TRUE(DeviceBuffer::Allocate(1024).status().IsNotSupported());
  EXPECT_TRUE(PinnedHostBuffer::Allocate(1024).status().IsNotSupported());
  EXPECT_TRUE(CudaStream::Create().status().IsNotSupported());
  EXPECT_TRUE(GetDeviceInfo().status().IsNotSupported());
  EXPECT_TRUE(DeviceKvCache::Create(2, 16, 4, 128).status().IsNotSupported());
  EXPECT_TRUE(DeviceExpertCache::Create({.slots = 4, .slot_bytes = 4096}).status().IsNotSupported());
}

TEST(CudaHostTest, KernelsRejectBadArgumentsBeforeTouchingTheDevice) {
  CudaStream none;  // no stream: every call must say so, not launch
  float dummy = 0;
  const kernels::WeightVector vec{&dummy, DType::kF32, 1};
  const kernels::WeightMatrix mat{&dummy, DType::kF32, 1, 1};
  EXPECT_TRUE(RmsNorm(none, &dummy, 1, vec, 1e-6f, &dummy).IsInvalidArgument());
  EXPECT_TRUE(MatMul(none, &dummy, 1, mat, &dummy).IsInvalidArgument());
  EXPECT_TRUE(Attention(none, {1, 1, 2}, &dummy, 1, &dummy, &dummy, 1, &dummy).IsInvalidArgument());
  EXPECT_TRUE(SampleGreedy(none, &dummy, 1, 1, nullptr).IsInvalidArgument());
  if (!DeviceAvailable()) return;  // the checks below need a valid stream
  Result<CudaStream> stream = CudaStream::Create();
  ASSERT_TRUE(stream.ok());
  const CudaStream& s = *stream;
  EXPECT_TRUE(RmsNorm(s, &dummy, 1, {&dummy, DType::kI32, 1}, 1e-6f, &dummy).IsInvalidArgument());
  EXPECT_TRUE(MatMul(s, &dummy, 1, {&dummy, DType::kF8E4M3, 1, 1}, &dummy).IsInvalidArgument());
  EXPECT_TRUE(Attention(s, {3, 2, 2}, &dummy, 1, &dummy, &dummy, 1, &dummy).IsInvalidArgument());
  EXPECT_TRUE(Attention(s, {1, 1, kernels::kMaxHeadDim + 1}, &dummy, 1, &dummy, &dummy, 1, &dummy).IsInvalidArgument());
  EXPECT_TRUE(Attention(s, {1, 1, 2}, &dummy, 2, &dummy, &dummy, 1, &dummy).IsInvalidArgument());
  int32_t ids = 0;
  EXPECT_TRUE(RouterTopK(s, &dummy, 1, 4, 5, true, &ids, &dummy).IsInvalidArgument());
  EXPECT_TRUE(RouterTopK(s, &dummy, 1, kernels::kMaxRouterExperts + 1, 1, true, &ids, &dummy).IsInvalidArgument());
  const kernels::ExpertWeights mismatched{{&dummy, DType::kBF16, 4, 8}, {&dummy, DType::kBF16, 4, 8},
                                          {&dummy, DType::kBF16, 4, 8}};
  EXPECT_TRUE(ExpertSwiGLU(s, mismatched, &dummy, 1, &dummy, &dummy).IsInvalidArgument());
  EXPECT_TRUE(Sample(s, &dummy, 1, 1, {.temperature = 1.0f, .top_p = 0.0f}, &ids).IsInvalidArgument());
  EXPECT_TRUE(QkNormRope(s, {1, 1, 3}, &dummy, &dummy, 1, {}, {}, 1e-6f, &ids, 1e4f).IsInvalidArgument());
}

TEST(CudaHostTest, GroupTokensByExpertSortsExpertsAndRows) {
  // 4 tokens, top 2; expert 5 is picked by tokens 0, 2 and 3, a negative id is skipped.
  const std::vector<int32_t> experts = {5, 1, 2, 5, 5, -1, 1, 5};
  const std::vector<float> weights = {0.6f, 0.4f, 0.7f, 0.3f, 0.9f, 0.1f, 0.2f, 0.8f};
  const std::vector<ExpertGroup> groups = GroupTokensByExpert(experts, weights, 2);
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].expert, 1);
  EXPECT_EQ(groups[0].rows, (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(groups[0].scales, (std::vector<float>{0.4f, 0.2f}));
  EXPECT_EQ(groups[1].expert, 2);
  EXPECT_EQ(groups[1].rows, (std::vector<int32_t>{1}));
  EXPECT_EQ(groups[2].expert, 5);
  EXPECT_EQ(groups[2].rows, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(groups[2].scales, (std::vector<float>{0.6f, 0.3f, 0.9f, 0.8f}));
  size_t total = 0;
  for (const ExpertGroup& g : groups) total += g.rows.size();
  EXPECT_EQ(total, 7u);
}

TEST(CudaHostTest, RebaseMovesEveryMatrixByTheSameOffset) {
  std::vector<uint8_t> extent(300);
  const kernels::ExpertWeights host{{extent.data(), DType::kBF16, 2, 4},
                                    {extent.data() + 16, DType::kBF16, 2, 4},
                                    {extent.data() + 32, DType::kBF16, 4, 2}};
  uint8_t device_stand_in[300];
  const kernels::ExpertWeights moved = RebaseExpertWeights(host, extent.data(), device_stand_in);
  EXPECT_EQ(moved.gate.data, device_stand_in);
  EXPECT_EQ(moved.up.data, device_stand_in + 16);
  EXPECT_EQ(moved.down.data, device_stand_in + 32);
  EXPECT_EQ(moved.down.rows, 4u);
  EXPECT_EQ(moved.up.dtype, DType::kBF16);
}

TEST_F(CudaKernelsTest, DeviceBufferCopiesRoundTripAndCheckRanges) {
  std::vector<uint8_t> bytes(1000);
  std::iota(bytes.begin(), bytes.end(), 0);
  Result<DeviceBuffer> buffer = DeviceBuffer::Allocate(1024);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  ASSERT_OK(buffer->CopyFromHost(bytes.data(), bytes.size(), 24));
  std::vector<uint8_t> back(bytes.size());
  ASSERT_OK(buffer->CopyToHost(back.data(), back.size(), 24));
  EXPECT_EQ(back, bytes);
  ASSERT_OK(buffer->CopyToHostAsync(back.data(), 10, stream_, 1014));
  ASSERT_OK(stream_.Synchronize());
  EXPECT_TRUE(buffer->CopyFromHost(bytes.data(), bytes.size(), 25).IsInvalidArgument());
  EXPECT_TRUE(buffer->CopyToHost(back.data(), 1, 1024).IsInvalidArgument());
  EXPECT_TRUE(buffer->CopyFromHostAsync(bytes.data(), 2000, stream_).IsInvalidArgument());
  EXPECT_TRUE(DeviceBuffer::Allocate(0).status().IsInvalidArgument());
  DeviceBuffer moved = std::move(buffer).value();
  EXPECT_EQ(moved.size(), 1024u);
}

// ---- RMSNorm and q/k norm + RoPE ------------------------------------------------------------------------------

TEST_F(CudaKernelsTest, RmsNormMatchesCpu) {
  std::mt19937 rng(11);
  const std::pair<size_t, size_t> shapes[] = {{1, 2048}, {7, 2048}, {5, 128}, {3, 1001}, {9, 33}};
  for (DType dtype : kWeightDTypes) {
    for (auto [rows, dim] : shapes) {
      const std::string what = "RmsNorm " + Name(dtype) + " " + std::to_string(rows) + "x" + std::to_string(dim);
      const std::vector<float> x = RandomFloats(rng, rows * dim, 3.0f);
      const TestWeights w = MakeWeights(rng, dim, dtype, 0.1f, 1.0f);
      std::vector<float> expected(rows * dim);
      ASSERT_OK(kernels::RmsNorm(cpu_, x.data(), rows, {w.bytes.data(), dtype, dim}, 1e-6f, expected.data()));

      DeviceBuffer dx = ToDevice(x);
      DeviceBuffer dw = ToDevice(w.bytes);
      DeviceBuffer dy = Poisoned(rows * dim);
      ASSERT_OK(RmsNorm(stream_, dx.As<float>(), rows, {dw.data(), dtype, dim}, 1e-6f, dy.As<float>()));
      ExpectClose(Read(dy, rows * dim, what), expected, kFp32Tolerance, what);
      // In place, as the forward pass uses it for the per-head q/k norm.
      ASSERT_OK(RmsNorm(stream_, dx.As<float>(), rows, {dw.data(), dtype, dim}, 1e-6f, dx.As<float>()));
      ExpectClose(Read(dx, rows * dim, what + " in place", /*guarded=*/false), expected, kFp32Tolerance,
                  what + " in place");
    }
  }
}

struct QkShape {
  size_t tokens, heads, kv_heads, head_dim;
};

TEST_F(CudaKernelsTest, QkNormRopeMatchesCpuOrder) {
  std::mt19937 rng(12);
  const QkShape shapes[] = {{1, 32, 4, 128}, {9, 4, 2, 64}, {5, 6, 3, 30}, {3, 2, 1, 256}};
  const float theta = 1e6f;
  const float eps = 1e-6f;
  for (DType dtype : kWeightDTypes) {
    for (const QkShape& s : shapes) {
      for (bool with_norm : {true, false}) {
        const std::string what = "QkNormRope " + Name(dtype) + " T" + std::to_string(s.tokens) + " h" +
                                 std::to_string(s.heads) + "/" + std::to_string(s.kv_heads) + " d" +
                                 std::to_string(s.head_dim) + (with_norm ? "" : " (no norm)");
        const size_t q_n = s.tokens * s.heads * s.head_dim;
        const size_t k_n = s.tokens * s.kv_heads * s.head_dim;
        std::vector<float> q = RandomFloats(rng, q_n, 2.0f);
        std::vector<float> k = RandomFloats(rng, k_n, 2.0f);
        const TestWeights qn = MakeWeights(rng, s.head_dim, dtype, 0.2f, 1.0f);
        const TestWeights kn = MakeWeights(rng, s.head_dim, dtype, 0.2f, 1.0f);
        std::vector<int32_t> positions(s.tokens);
        std::uniform_int_distribution<int32_t> pos(0, 40000);
        for (int32_t& p : positions) p = pos(rng);

        DeviceBuffer dq = ToDevice(q);
        DeviceBuffer dk = ToDevice(k);
        DeviceBuffer dqn = ToDevice(qn.bytes);
        DeviceBuffer dkn = ToDevice(kn.bytes);
        DeviceBuffer dpos = ToDevice(positions);

        const kernels::WeightVector q_norm{qn.bytes.data(), dtype, s.head_dim};
        const kernels::WeightVector k_norm{kn.bytes.data(), dtype, s.head_dim};
        if (with_norm) {
          ASSERT_OK(kernels::RmsNorm(cpu_, q.data(), s.tokens * s.heads, q_norm, eps, q.data()));
          ASSERT_OK(kernels::RmsNorm(cpu_, k.data(), s.tokens * s.kv_heads, k_norm, eps, k.data()));
        }
        ASSERT_OK(kernels::ApplyRope(q.data(), s.tokens, s.heads, s.head_dim, positions.data(), theta));
        ASSERT_OK(kernels::ApplyRope(k.data(), s.tokens, s.kv_heads, s.head_dim, positions.data(), theta));

        const kernels::WeightVector dq_norm{with_norm ? dqn.data() : nullptr, dtype, s.head_dim};
        const kernels::WeightVector dk_norm{with_norm ? dkn.data() : nullptr, dtype, s.head_dim};
        ASSERT_OK(QkNormRope(stream_, {s.heads, s.kv_heads, s.head_dim}, dq.As<float>(), dk.As<float>(), s.tokens,
                             dq_norm, dk_norm, eps, dpos.As<int32_t>(), theta));
        ExpectClose(Read(dq, q_n, what + " q", false), q, kFp32Tolerance, what + " q");
        ExpectClose(Read(dk, k_n, what + " k", false), k, kFp32Tolerance, what + " k");
      }
    }
  }
}

// ---- Attention ------------------------------------------------------------------------------------------------

struct AttentionCase {
  size_t heads, kv_heads, head_dim, queries, keys;
};

TEST_F(CudaKernelsTest, AttentionMatchesCpu) {
  std::mt19937 rng(13);
  const AttentionCase cases[] = {
      {32, 4, 128, 1, 300},  // Qwen3-30B-A3B decode
      {32, 4, 128, 17, 17},  // its prefill
      {8, 2, 64, 37, 37},   {4, 4, 96, 5, 130},  // a prefill chunk after 125 cached positions
      {2, 1, 256, 3, 200},  {6, 3, 30, 1, 1},   // odd head_dim, a single key
      {4, 2, 512, 2, 129},  // kMaxHeadDim
  };
  for (const AttentionCase& c : cases) {
    const std::string what = "Attention h" + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " d" +
                             std::to_string(c.head_dim) + " q" + std::to_string(c.queries) + " k" +
                             std::to_string(c.keys);
    const std::vector<float> q = RandomFloats(rng, c.queries * c.heads * c.head_dim);
    const std::vector<float> k = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim);
    const std::vector<float> v = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim);
    const kernels::AttentionShape shape{c.heads, c.kv_heads, c.head_dim};
    const size_t out_n = c.queries * c.heads * c.head_dim;
    std::vector<float> expected(out_n);
    ASSERT_OK(kernels::Attention(cpu_, shape, q.data(), c.queries, k.data(), v.data(), c.keys, expected.data()));
    DeviceBuffer dq = ToDevice(q);
    DeviceBuffer dk = ToDevice(k);
    DeviceBuffer dv = ToDevice(v);
    DeviceBuffer dout = Poisoned(out_n);
    ASSERT_OK(Attention(stream_, shape, dq.As<float>(), c.queries, dk.As<float>(), dv.As<float>(), c.keys,
                        dout.As<float>()));
    ExpectClose(Read(dout, out_n, what), expected, kFp32Tolerance, what);
  }
}

TEST_F(CudaKernelsTest, AttentionIsStableForLargeScores) {
  // Scores in the hundreds overflow exp without the running maximum. The inputs are those of the CPU kernels'
  // own stability test (same seed, shape and draws), where the softmax is close to one-hot: with near-ties
  // at this scale, fp32 rounding of the scores alone would move the result by more than the tolerance.
  std::mt19937 rng(41);
  const AttentionCase c{2, 1, 4, 1, 150};
  const std::vector<float> q = RandomFloats(rng, c.queries * c.heads * c.head_dim, 30.0f);
  const std::vector<float> k = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim, 30.0f);
  const std::vector<float> v = RandomFloats(rng, c.keys * c.kv_heads * c.head_dim);
  const kernels::AttentionShape shape{c.heads, c.kv_heads, c.head_dim};
  const size_t out_n = c.queries * c.heads * c.head_dim;
  std::vector<float> expected(out_n);
  ASSERT_OK(kernels::Attention(cpu_, shape, q.data(), c.queries, k.data(), v.data(), c.keys, expected.data()));
  DeviceBuffer dq = ToDevice(q);
  DeviceBuffer dk = ToDevice(k);
  DeviceBuffer dv = ToDevice(v);
  DeviceBuffer dout = Poisoned(out_n);
  ASSERT_OK(Attention(stream_, shape, dq.As<float>(), c.queries, dk.As<float>(), dv.As<float>(), c.keys,
                      dout.As<float>()));
  ExpectClose(Read(dout, out_n, "large scores"), expected, kFp32Tolerance, "large scores");
}

// A prefill of 20 tokens, then 3 decode steps, through DeviceKvCache on two layers, against the CPU on the same
// growing K/V arrays.
TEST_F(CudaKernelsTest, AttentionWithDeviceKvCachePrefillThenDecode) {
  std::mt19937 rng(15);
  const kernels::AttentionShape shape{8, 2, 64};
  const size_t layers = 2;
  const size_t kv_row = shape.num_kv_heads * shape.head_dim;
  const size_t q_row = shape.num_heads * shape.head_dim;
  Result<DeviceKvCache> cache = DeviceKvCache::Create(layers, 64, shape.num_kv_heads, shape.head_dim);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  std::vector<std::vector<float>> cpu_k(layers), cpu_v(layers);
  const size_t steps[] = {20, 1, 1, 1};
  for (size_t step_tokens : steps) {
    for (size_t layer = 0; layer < layers; ++layer) {
      const std::string what = "KV step at " + std::to_string(cache->length()) + " layer " + std::to_string(layer);
      const std::vector<float> q = RandomFloats(rng, step_tokens * q_row);
      const std::vector<float> k = RandomFloats(rng, step_tokens * kv_row);
      const std::vector<float> v = RandomFloats(rng, step_tokens * kv_row);
      cpu_k[layer].insert(cpu_k[layer].end(), k.begin(), k.end());
      cpu_v[layer].insert(cpu_v[layer].end(), v.begin(), v.end());
      const size_t keys = cache->length() + step_tokens;
      std::vector<float> expected(step_tokens * q_row);
      ASSERT_OK(kernels::Attention(cpu_, shape, q.data(), step_tokens, cpu_k[layer].data(), cpu_v[layer].data(), keys,
                                   expected.data()));
      DeviceBuffer dq = ToDevice(q);
      DeviceBuffer dk = ToDevice(k);
      DeviceBuffer dv = ToDevice(v);
      ASSERT_OK(cache->Write(stream_, layer, dk.As<float>(), dv.As<float>(), step_tokens));
      DeviceBuffer dout = Poisoned(step_tokens * q_row);
      ASSERT_OK(Attention(stream_, shape, dq.As<float>(), step_tokens, cache->keys(layer), cache->values(layer), keys,
                          dout.As<float>()));
      ExpectClose(Read(dout, step_tokens * q_row, what), expected, kFp32Tolerance, what);
    }
    ASSERT_OK(cache->Advance(step_tokens));
  }
  EXPECT_EQ(cache->length(), 23u);
  DeviceBuffer big = ToDevice(std::vector<float>(50 * kv_row));
  EXPECT_TRUE(cache->Write(stream_, 0, big.As<float>(), big.As<float>(), 50).IsResourceExhausted());
}

// ---- Router ---------------------------------------------------------------------------------------------------

struct RouterCase {
  size_t batch, experts, top_k;
  bool normalize;
};

TEST_F(CudaKernelsTest, RouterTopKMatchesCpu) {
  std::mt19937 rng(16);
  const RouterCase cases[] = {{1, 128, 8, true},   {5, 128, 8, false}, {3, 60, 4, true},
                              {2, 4096, 16, true}, {4, 33, 33, true},  {6, 7, 1, false}};
  for (const RouterCase& c : cases) {
    const std::string what = "RouterTopK b" + std::to_string(c.batch) + " E" + std::to_string(c.experts) + " k" +
                             std::to_string(c.top_k) + (c.normalize ? " norm" : "");
    const std::vector<float> logits = RandomFloats(rng, c.batch * c.experts, 2.0f);
    std::vector<int32_t> expected_ids(c.batch * c.top_k);
    std::vector<float> expected_weights(c.batch * c.top_k);
    ASSERT_OK(kernels::RouterTopK(logits.data(), c.batch, c.experts, c.top_k, c.normalize, expected_ids.data(),
                                  expected_weights.data()));
    DeviceBuffer dlogits = ToDevice(logits);
    DeviceBuffer dids = Poisoned(c.batch * c.top_k);
    DeviceBuffer dweights = Poisoned(c.batch * c.top_k);
    ASSERT_OK(RouterTopK(stream_, dlogits.As<float>(), c.batch, c.experts, c.top_k, c.normalize, dids.As<int32_t>(),
                         dweights.As<float>()));
    ExpectClose(Read(dweights, c.batch * c.top_k, what), expected_weights, kFp32Tolerance, what);
    std::vector<int32_t> ids(c.batch * c.top_k);
    ASSERT_OK(dids.CopyToHost(ids.data(), ids.size() * sizeof(int32_t)));
    EXPECT_EQ(ids, expected_ids) << what;
  }
}

TEST_F(CudaKernelsTest, RouterTiesGoToTheLowerIndexAndNaNIsNeverPreferred) {
  // Row 0: all equal, so the lowest ids win with equal weights. Row 1: a NaN logit makes every probability NaN
  // (on the CPU too); the choice must still be the CPU's: NaN rows pick the lowest ids, never skipping ahead.
  const size_t experts = 16, top_k = 4;
  std::vector<float> logits(2 * experts, 0.5f);
  logits[experts + 3] = std::numeric_limits<float>::quiet_NaN();
  logits[experts + 9] = 2.0f;
  std::vector<int32_t> expected(2 * top_k);
  std::vector<float> expected_weights(2 * top_k);
  ASSERT_OK(kernels::RouterTopK(logits.data(), 2, experts, top_k, true, expected.data(), expected_weights.data()));
  DeviceBuffer dlogits = ToDevice(logits);
  DeviceBuffer dids = Poisoned(2 * top_k);
  DeviceBuffer dweights = Poisoned(2 * top_k);
  ASSERT_OK(RouterTopK(stream_, dlogits.As<float>(), 2, experts, top_k, true, dids.As<int32_t>(),
                       dweights.As<float>()));
  ASSERT_OK(stream_.Synchronize());
  std::vector<int32_t> ids(2 * top_k);
  ASSERT_OK(dids.CopyToHost(ids.data(), ids.size() * sizeof(int32_t)));
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + top_k), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(ids, expected);
  std::vector<float> weights(top_k);
  ASSERT_OK(dweights.CopyToHost(weights.data(), top_k * sizeof(float)));
  for (float w : weights) EXPECT_FLOAT_EQ(w, 0.25f);
}

// ---- MatMul ---------------------------------------------------------------------------------------------------

struct MatMulCase {
  size_t batch, rows, cols;
};

TEST_F(CudaKernelsTest, MatMulMatchesCpu) {
  std::mt19937 rng(17);
  const MatMulCase cases[] = {
      {1, 768, 2048},   // an expert's gate as a GEMV
      {1, 4099, 2048},  // lm_head-like: many rows, an odd count
      {16, 300, 2048},  // prefill tiles, exactly two
      {13, 37, 100},    // odd everything: a partial tile, a vector-loop tail (100 = 12 * 8 + 4)
      {3, 64, 7},       // fewer columns than one vector load
      {9, 17, 1001},    // odd columns: no vector path
  };
  for (DType dtype : kWeightDTypes) {
    for (const MatMulCase& c : cases) {
      const std::string what = "MatMul " + Name(dtype) + " " + std::to_string(c.batch) + "x" + std::to_string(c.rows) +
                               "x" + std::to_string(c.cols);
      const std::vector<float> x = RandomFloats(rng, c.batch * c.cols);
      const TestWeights w = MakeWeights(rng, c.rows * c.cols, dtype, 1.0f / std::sqrt(static_cast<float>(c.cols)));
      std::vector<float> expected(c.batch * c.rows);
      ASSERT_OK(kernels::MatMul(cpu_, x.data(), c.batch, {w.bytes.data(), dtype, c.rows, c.cols}, expected.data()));
      DeviceBuffer dx = ToDevice(x);
      DeviceBuffer dw = ToDevice(w.bytes);
      DeviceBuffer dy = Poisoned(c.batch * c.rows);
      ASSERT_OK(MatMul(stream_, dx.As<float>(), c.batch, {dw.data(), dtype, c.rows, c.cols}, dy.As<float>()));
      ExpectClose(Read(dy, c.batch * c.rows, what), expected, WeightTolerance(dtype), what);
    }
  }
}

// Every block format llama.cpp wrote (tests/ingest/gguf_fixtures/blocks), as a matrix of its rows repeated, on
// the device against the CPU's MatMul on the same blocks: the device decodes each value as the CPU does
// (ggml_blocks.cuh), so only the summation order differs. A GEMV and a batch of nine (a full and a partial tile).
TEST_F(CudaKernelsTest, MatMulOnBlocksMatchesCpu) {
  testing::BlockFixtures f;
  ASSERT_NO_FATAL_FAILURE(testing::LoadBlockFixtures(&f));
  std::mt19937 rng(23);
  constexpr size_t kRows = 67;
  size_t formats = 0;
  for (const testing::BlockFormat& format : f.formats) {
    if (format.type == GgmlType::kF32 || format.type == GgmlType::kF16 ||
        format.type == GgmlType::kBF16) {
      continue;
    }
    ++formats;
    std::vector<std::byte> bytes(kRows * format.row_bytes);
    for (size_t r = 0; r < kRows; ++r) {
      std::memcpy(bytes.data() + r * format.row_bytes, format.blocks.data() + (r % f.rows) * format.row_bytes,
                  format.row_bytes);
    }
    for (size_t batch : {size_t{1}, size_t{9}}) {
      const std::string what = "MatMul " + format.name + " batch " + std::to_string(batch);
      const std::vector<float> x = RandomFloats(rng, batch * f.cols);
      std::vector<float> expected(batch * kRows);
      const kernels::WeightMatrix host{bytes.data(), DType::kUnknown, kRows, f.cols, format.type};
      ASSERT_OK(kernels::MatMul(cpu_, x.data(), batch, host, expected.data()));
      DeviceBuffer dx = ToDevice(x);
      DeviceBuffer dw = ToDevice(bytes);
      DeviceBuffer dy = Poisoned(batch * kRows);
      ASSERT_OK(MatMul(stream_, dx.As<float>(), batch, {dw.data(), DType::kUnknown, kRows, f.cols, format.type},
                       dy.As<float>()));
      ExpectClose(Read(dy, batch * kRows, what), expected, 1e-5, what);
    }
  }
  EXPECT_GE(formats, 10u);
}

TEST_F(CudaKernelsTest, MatMulScalarPathForMisalignedActivations) {
  // x one float past an aligned address: the kernel must fall back to element loads, not fault or misread.
  std::mt19937 rng(18);
  const size_t batch = 3, rows = 40, cols = 256;
  for (DType dtype : kWeightDTypes) {
    const std::vector<float> x = RandomFloats(rng, batch * cols);
    std::vector<float> shifted(1 + x.size());
    std::copy(x.begin(), x.end(), shifted.begin() + 1);
    const TestWeights w = MakeWeights(rng, rows * cols, dtype, 0.06f);
    std::vector<float> expected(batch * rows);
    ASSERT_OK(kernels::MatMul(cpu_, x.data(), batch, {w.bytes.data(), dtype, rows, cols}, expected.data()));
    DeviceBuffer dx = ToDevice(shifted);
    DeviceBuffer dw = ToDevice(w.bytes);
    DeviceBuffer dy = Poisoned(batch * rows);
    ASSERT_OK(MatMul(stream_, dx.As<float>() + 1, batch, {dw.data(), dtype, rows, cols}, dy.As<float>()));
    ExpectClose(Read(dy, batch * rows, "misaligned " + Name(dtype)), expected, WeightTolerance(dtype),
                "misaligned " + Name(dtype));
  }
}

// ---- Experts --------------------------------------------------------------------------------------------------

struct ExpertCase {
  size_t batch, hidden, inter;
};

// gate | up | down in one extent, as the store packs an expert, and the view over it.
struct TestExpert {
  std::vector<uint8_t> extent;
  kernels::ExpertWeights view;  // over `extent`
};

TestExpert MakeExpert(std::mt19937& rng, size_t hidden, size_t inter, DType dtype) {
  const TestWeights gate = MakeWeights(rng, inter * hidden, dtype, 1.0f / std::sqrt(static_cast<float>(hidden)));
  const TestWeights up = MakeWeights(rng, inter * hidden, dtype, 1.0f / std::sqrt(static_cast<float>(hidden)));
  const TestWeights down = MakeWeights(rng, hidden * inter, dtype, 1.0f / std::sqrt(static_cast<float>(inter)));
  TestExpert e;
  e.extent.insert(e.extent.end(), gate.bytes.begin(), gate.bytes.end());
  e.extent.insert(e.extent.end(), up.bytes.begin(), up.bytes.end());
  e.extent.insert(e.extent.end(), down.bytes.begin(), down.bytes.end());
  const uint8_t* base = e.extent.data();
  e.view = {{base, dtype, inter, hidden},
            {base + gate.bytes.size(), dtype, inter, hidden},
            {base + gate.bytes.size() + up.bytes.size(), dtype, hidden, inter}};
  return e;
}

TEST_F(CudaKernelsTest, ExpertSwiGLUMatchesCpu) {
  std::mt19937 rng(19);
  const ExpertCase cases[] = {
      {1, 2048, 768},  // Qwen3-30B-A3B decode: the GEMV path
      {5, 2048, 768},  // its prefill tile path, a partial tile
      {1, 100, 37},    // odd shapes: vector tails and no vector path for down
      {13, 136, 72},
  };
  for (DType dtype : kWeightDTypes) {
    for (const ExpertCase& c : cases) {
      const std::string what = "ExpertSwiGLU " + Name(dtype) + " b" + std::to_string(c.batch) + " H" +
                               std::to_string(c.hidden) + " I" + std::to_string(c.inter);
      const TestExpert e = MakeExpert(rng, c.hidden, c.inter, dtype);
      const std::vector<float> x = RandomFloats(rng, c.batch * c.hidden);
      std::vector<float> scratch(kernels::ExpertScratchFloats(c.batch, c.inter));
      std::vector<float> expected(c.batch * c.hidden);
      ASSERT_OK(kernels::ExpertForward(cpu_, e.view, x.data(), c.batch, scratch, expected.data()));

      DeviceBuffer dextent = ToDevice(e.extent);
      const kernels::ExpertWeights dview = RebaseExpertWeights(e.view, e.extent.data(), dextent.data());
      DeviceBuffer dx = ToDevice(x);
      DeviceBuffer dscratch = Poisoned(ExpertScratchFloats(c.batch, c.inter));
      DeviceBuffer dout = Poisoned(c.batch * c.hidden);
      ASSERT_OK(ExpertSwiGLU(stream_, dview, dx.As<float>(), c.batch, dscratch.As<float>(), dout.As<float>()));
      ExpectClose(Read(dout, c.batch * c.hidden, what), expected, WeightTolerance(dtype), what);
    }
  }
}

TEST_F(CudaKernelsTest, ExpertSwiGLURowsMatchesCpuWithRepeatedRows) {
  std::mt19937 rng(20);
  const ExpertCase shapes[] = {{11, 2048, 768}, {11, 72, 40}};
  // Row 3 three times (contributions add in order), rows 1, 2, 4, 6, 8, 9 never.
  const std::vector<int32_t> rows = {3, 0, 3, 7, 10, 5, 3, 0, 7};
  for (DType dtype : kWeightDTypes) {
    for (const ExpertCase& c : shapes) {
      const std::string what = "ExpertSwiGLURows " + Name(dtype) + " H" + std::to_string(c.hidden);
      const size_t tokens = c.batch;
      const TestExpert e = MakeExpert(rng, c.hidden, c.inter, dtype);
      const std::vector<float> x = RandomFloats(rng, tokens * c.hidden);
      std::vector<float> scale = RandomFloats(rng, rows.size(), 0.5f);
      std::vector<float> expected = RandomFloats(rng, tokens * c.hidden);  // the residual being added to
      const std::vector<float> initial = expected;
      std::vector<float> scratch(kernels::ExpertScratchFloats(rows.size(), c.inter));
      ASSERT_OK(kernels::ExpertAccumulateRows(cpu_, e.view, x.data(), tokens, rows, scale.data(), scratch,
                                              expected.data()));

      DeviceBuffer dextent = ToDevice(e.extent);
      const kernels::ExpertWeights dview = RebaseExpertWeights(e.view, e.extent.data(), dextent.data());
      DeviceBuffer dx = ToDevice(x);
      DeviceBuffer drows = ToDevice(rows);
      DeviceBuffer dscale = ToDevice(scale);
      DeviceBuffer dscratch = Poisoned(ExpertScratchFloats(rows.size(), c.inter));
      DeviceBuffer dout = ToDevice(initial);
      ASSERT_OK(ExpertSwiGLURows(stream_, dview, dx.As<float>(), tokens, drows.As<int32_t>(), dscale.As<float>(),
                                 rows.size(), dscratch.As<float>(), dout.As<float>()));
      const std::vector<float> got = Read(dout, tokens * c.hidden, what, /*guarded=*/false);
      // Compare the update, not the residual it was added to, so the tolerance applies to the expert's output.
      std::vector<float> got_delta(got.size()), expected_delta(got.size());
      for (size_t i = 0; i < got.size(); ++i) {
        got_delta[i] = got[i] - initial[i];
        expected_delta[i] = expected[i] - initial[i];
      }
      ExpectClose(got_delta, expected_delta, WeightTolerance(dtype), what);
      // Rows nobody routed are untouched, bit for bit.
      for (size_t row : {1, 2, 4, 6, 8, 9}) {
        for (size_t j = 0; j < c.hidden; ++j) {
          ASSERT_EQ(std::bit_cast<uint32_t>(got[row * c.hidden + j]),
                    std::bit_cast<uint32_t>(initial[row * c.hidden + j]))
              << what << ": row " << row << " changed";
        }
      }
    }
  }
}

// A whole MoE block of a prefill on the device (router, grouping, one ExpertSwiGLURows per selected expert)
// against the CPU doing the same with its kernels.
TEST_F(CudaKernelsTest, PrefillMoeBlockMatchesCpu) {
  std::mt19937 rng(21);
  const size_t tokens = 24, hidden = 128, inter = 48, num_experts = 8, top_k = 2;
  const DType dtype = DType::kBF16;
  std::vector<TestExpert> experts;
  for (size_t e = 0; e < num_experts; ++e) experts.push_back(MakeExpert(rng, hidden, inter, dtype));
  const TestWeights router = MakeWeights(rng, num_experts * hidden, dtype, 0.3f);
  const std::vector<float> x = RandomFloats(rng, tokens * hidden);

  // CPU.
  std::vector<float> logits(tokens * num_experts);
  ASSERT_OK(kernels::MatMul(cpu_, x.data(), tokens, {router.bytes.data(), dtype, num_experts, hidden}, logits.data()));
  std::vector<int32_t> ids(tokens * top_k);
  std::vector<float> weights(tokens * top_k);
  ASSERT_OK(kernels::RouterTopK(logits.data(), tokens, num_experts, top_k, true, ids.data(), weights.data()));
  std::vector<float> expected(tokens * hidden, 0.0f);
  for (const ExpertGroup& g : GroupTokensByExpert(ids, weights, top_k)) {
    std::vector<float> scratch(kernels::ExpertScratchFloats(g.rows.size(), inter));
    ASSERT_OK(kernels::ExpertAccumulateRows(cpu_, experts[g.expert].view, x.data(), tokens, g.rows, g.scales.data(),
                                            scratch, expected.data()));
  }

  // Device: the router on the GPU, its choices back to the host for grouping.
  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer drouter = ToDevice(router.bytes);
  DeviceBuffer dlogits = Poisoned(tokens * num_experts);
  DeviceBuffer dids = Poisoned(tokens * top_k);
  DeviceBuffer dweights = Poisoned(tokens * top_k);
  ASSERT_OK(MatMul(stream_, dx.As<float>(), tokens, {drouter.data(), dtype, num_experts, hidden}, dlogits.As<float>()));
  ASSERT_OK(RouterTopK(stream_, dlogits.As<float>(), tokens, num_experts, top_k, true, dids.As<int32_t>(),
                       dweights.As<float>()));
  ASSERT_OK(stream_.Synchronize());
  std::vector<int32_t> device_ids(tokens * top_k);
  std::vector<float> device_weights(tokens * top_k);
  ASSERT_OK(dids.CopyToHost(device_ids.data(), device_ids.size() * sizeof(int32_t)));
  ASSERT_OK(dweights.CopyToHost(device_weights.data(), device_weights.size() * sizeof(float)));
  ASSERT_EQ(device_ids, ids) << "the device router chose differently";
  DeviceBuffer dout = ToDevice(std::vector<float>(tokens * hidden, 0.0f));
  std::vector<DeviceBuffer> keep_alive;
  for (const ExpertGroup& g : GroupTokensByExpert(device_ids, device_weights, top_k)) {
    const TestExpert& e = experts[g.expert];
    keep_alive.push_back(ToDevice(e.extent));
    const kernels::ExpertWeights view = RebaseExpertWeights(e.view, e.extent.data(), keep_alive.back().data());
    keep_alive.push_back(ToDevice(g.rows));
    const int32_t* rows = keep_alive.back().As<int32_t>();
    keep_alive.push_back(ToDevice(g.scales));
    const float* scales = keep_alive.back().As<float>();
    keep_alive.push_back(Poisoned(ExpertScratchFloats(g.rows.size(), inter)));
    ASSERT_OK(ExpertSwiGLURows(stream_, view, dx.As<float>(), tokens, rows, scales, g.rows.size(),
                               keep_alive.back().As<float>(), dout.As<float>()));
  }
  ExpectClose(Read(dout, tokens * hidden, "MoE block", false), expected, WeightTolerance(dtype), "MoE block");
}

// ---- Sampling -------------------------------------------------------------------------------------------------

// The CPU Sampler's candidate set for the given parameters: top_k by logit (ties to the lower id), then the
// nucleus prefix reaching top_p.
std::set<int32_t> CandidateSet(const std::vector<float>& logits, float temperature, uint32_t top_k, float top_p) {
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  size_t keep = top_k > 0 && top_k < order.size() ? top_k : order.size();
  order.resize(keep);
  const double max_scaled = logits[order[0]] / temperature;
  double sum = 0;
  for (int32_t i : order) sum += std::exp(logits[i] / temperature - max_scaled);
  size_t n = keep;
  if (top_p < 1.0f) {
    double acc = 0;
    for (size_t i = 0; i < keep; ++i) {
      acc += std::exp(logits[order[i]] / temperature - max_scaled) / sum;
      if (acc >= top_p) {
        n = i + 1;
        break;
      }
    }
  }
  return std::set<int32_t>(order.begin(), order.begin() + static_cast<ptrdiff_t>(n));
}

TEST_F(CudaKernelsTest, GreedyMatchesArgmax) {
  std::mt19937 rng(22);
  const size_t vocab = 151936, batch = 3;
  std::vector<float> logits = RandomFloats(rng, batch * vocab, 4.0f);
  // Row 2: the maximum twice; the lower id wins.
  logits[2 * vocab + 9] = 100.0f;
  logits[2 * vocab + 5000] = 100.0f;
  DeviceBuffer dlogits = ToDevice(logits);
  DeviceBuffer dtokens = Poisoned(batch);
  ASSERT_OK(SampleGreedy(stream_, dlogits.As<float>(), batch, vocab, dtokens.As<int32_t>()));
  ASSERT_OK(stream_.Synchronize());
  std::vector<int32_t> tokens(batch);
  ASSERT_OK(dtokens.CopyToHost(tokens.data(), batch * sizeof(int32_t)));
  for (size_t b = 0; b < batch; ++b) {
    const auto row = logits.begin() + static_cast<ptrdiff_t>(b * vocab);
    EXPECT_EQ(tokens[b], std::max_element(row, row + static_cast<ptrdiff_t>(vocab)) - row) << "row " << b;
  }
  EXPECT_EQ(tokens[2], 9);
}

TEST_F(CudaKernelsTest, SampleStaysInsideTheCpuCandidateSetAndIsSeeded) {
  std::mt19937 rng(23);
  const size_t vocab = 5003;
  const size_t draws = 512;  // one row per draw: each row is its own draw of the seeded generator
  const std::vector<float> row = RandomFloats(rng, vocab, 3.0f);
  std::vector<float> logits;
  for (size_t d = 0; d < draws; ++d) logits.insert(logits.end(), row.begin(), row.end());
  DeviceBuffer dlogits = ToDevice(logits);
  struct Params {
    float temperature;
    uint32_t top_k;
    float top_p;
  };
  const Params params[] = {{1.0f, 10, 1.0f}, {0.7f, 0, 0.5f}, {1.3f, 40, 0.9f}, {1.0f, 1, 1.0f}, {2.0f, 0, 1.0f}};
  for (const Params& p : params) {
    // Appended piecewise: GCC 12 warns (-Wrestrict, a false positive) on "literal" + std::string&& here.
    std::string what = "temperature ";
    what += std::to_string(p.temperature) + " top_k " + std::to_string(p.top_k) + " top_p " + std::to_string(p.top_p);
    const std::set<int32_t> allowed = CandidateSet(row, p.temperature, p.top_k, p.top_p);
    DeviceBuffer first = Poisoned(draws);
    DeviceBuffer second = Poisoned(draws);
    const SamplingParams sp{p.temperature, p.top_k, p.top_p, 1234};
    ASSERT_OK(Sample(stream_, dlogits.As<float>(), draws, vocab, sp, first.As<int32_t>()));
    ASSERT_OK(Sample(stream_, dlogits.As<float>(), draws, vocab, sp, second.As<int32_t>()));
    ASSERT_OK(stream_.Synchronize());
    std::vector<int32_t> a(draws), b(draws);
    ASSERT_OK(first.CopyToHost(a.data(), draws * sizeof(int32_t)));
    ASSERT_OK(second.CopyToHost(b.data(), draws * sizeof(int32_t)));
    EXPECT_EQ(a, b) << what << ": the same seed must give the same tokens";
    std::set<int32_t> seen;
    for (int32_t t : a) {
      ASSERT_TRUE(allowed.count(t) == 1) << what << ": token " << t << " is outside the candidate set";
      seen.insert(t);
    }
    if (allowed.size() > 1) {
      EXPECT_GT(seen.size(), 1u) << what << ": every draw gave the same token";
    }
  }
}

TEST_F(CudaKernelsTest, SampleFollowsTheSoftmaxDistribution) {
  // 8 tokens, 20000 draws: each frequency within 5 standard deviations of exp(l / T) / sum.
  const std::vector<float> row = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f, 1.5f, -3.0f, 0.25f};
  const float temperature = 0.8f;
  const size_t draws = 20000;
  std::vector<float> logits;
  for (size_t d = 0; d < draws; ++d) logits.insert(logits.end(), row.begin(), row.end());
  DeviceBuffer dlogits = ToDevice(logits);
  DeviceBuffer dtokens = Poisoned(draws);
  ASSERT_OK(Sample(stream_, dlogits.As<float>(), draws, row.size(), {temperature, 0, 1.0f, 99}, dtokens.As<int32_t>()));
  ASSERT_OK(stream_.Synchronize());
  std::vector<int32_t> tokens(draws);
  ASSERT_OK(dtokens.CopyToHost(tokens.data(), draws * sizeof(int32_t)));
  std::vector<double> counts(row.size(), 0.0);
  for (int32_t t : tokens) {
    ASSERT_GE(t, 0);
    ASSERT_LT(t, static_cast<int32_t>(row.size()));
    counts[t] += 1;
  }
  double sum = 0;
  for (float l : row) sum += std::exp(l / temperature);
  for (size_t i = 0; i < row.size(); ++i) {
    const double p = std::exp(row[i] / temperature) / sum;
    const double sigma = std::sqrt(draws * p * (1 - p));
    EXPECT_NEAR(counts[i], draws * p, 5 * sigma + 1) << "token " << i;
  }
}

// ---- DeviceExpertCache ----------------------------------------------------------------------------------------

class DeviceCacheTest : public CudaKernelsTest {
 protected:
  // `count` experts of `bytes` random bytes each, in pinned memory.
  void MakeHostExperts(size_t count, size_t bytes) {
    Result<PinnedHostBuffer> pinned = PinnedHostBuffer::Allocate(count * bytes);
    ASSERT_TRUE(pinned.ok()) << pinned.status().ToString();
    host_ = std::move(pinned).value();
    std::mt19937 rng(24);
    auto* p = static_cast<uint8_t*>(host_.data());
    for (size_t i = 0; i < count * bytes; ++i) p[i] = static_cast<uint8_t>(rng());
    expert_bytes_ = bytes;
  }
  const void* Expert(size_t i) const { return static_cast<const uint8_t*>(host_.data()) + i * expert_bytes_; }

  // Acquires, reads the slot back and compares it with the host expert, releases.
  void ExpectResidentBytes(DeviceExpertCache& cache, uint64_t key, size_t expert) {
    Result<DeviceSlot> slot = cache.Acquire(key, Expert(expert), expert_bytes_, stream_);
    ASSERT_TRUE(slot.ok()) << slot.status().ToString();
    ASSERT_OK(stream_.Synchronize());
    std::vector<uint8_t> back(expert_bytes_);
    ASSERT_OK(CopyDeviceToHost(back.data(), slot->data, expert_bytes_));
    EXPECT_EQ(std::memcmp(back.data(), Expert(expert), expert_bytes_), 0) << "key " << key;
    ASSERT_OK(cache.Release(*slot, stream_));
  }

  PinnedHostBuffer host_;
  size_t expert_bytes_ = 0;
};

TEST_F(DeviceCacheTest, UploadHitAndLeastRecentlyUsedEviction) {
  MakeHostExperts(4, 4096 + 100);  // not a multiple of the slot alignment
  Result<std::unique_ptr<DeviceExpertCache>> created =
      DeviceExpertCache::Create({.slots = 3, .slot_bytes = expert_bytes_});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  DeviceExpertCache& cache = **created;
  for (uint64_t key = 0; key < 3; ++key) ASSERT_OK(cache.Upload(key, Expert(key), expert_bytes_));
  EXPECT_EQ(cache.stats().uploads, 3u);
  EXPECT_EQ(cache.stats().bytes_uploaded, 3 * expert_bytes_);
  ASSERT_OK(cache.Upload(0, Expert(0), expert_bytes_));  // a hit: key 0 becomes the most recent
  EXPECT_EQ(cache.stats().hits, 1u);
  EXPECT_EQ(cache.stats().uploads, 3u);
  ASSERT_OK(cache.Upload(3, Expert(3), expert_bytes_));  // evicts key 1, the least recently used
  EXPECT_TRUE(cache.Contains(0));
  EXPECT_FALSE(cache.Contains(1));
  EXPECT_TRUE(cache.Contains(2));
  EXPECT_TRUE(cache.Contains(3));
  EXPECT_EQ(cache.stats().evictions, 1u);
  for (uint64_t key : {0, 2, 3}) ExpectResidentBytes(cache, key, key);
  EXPECT_EQ(cache.stats().uploads, 4u);
  EXPECT_EQ(cache.stats().hits, 4u);  // the one above and the three reads
}

TEST_F(DeviceCacheTest, HeldSlotsAreNeverEvicted) {
  MakeHostExperts(3, 8192);
  Result<std::unique_ptr<DeviceExpertCache>> created = DeviceExpertCache::Create({.slots = 2, .slot_bytes = 8192});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  DeviceExpertCache& cache = **created;
  Result<DeviceSlot> a = cache.Acquire(10, Expert(0), 8192, stream_);
  Result<DeviceSlot> b = cache.Acquire(11, Expert(1), 8192, stream_);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(cache.Upload(12, Expert(2), 8192).IsResourceExhausted());
  EXPECT_TRUE(cache.Contains(10));
  EXPECT_TRUE(cache.Contains(11));
  ASSERT_OK(cache.Release(*a, stream_));
  EXPECT_TRUE(cache.Release(*a, stream_).IsInvalidArgument()) << "released twice";
  ASSERT_OK(cache.Upload(12, Expert(2), 8192));  // takes 10's slot: 11 is still held
  EXPECT_FALSE(cache.Contains(10));
  EXPECT_TRUE(cache.Contains(11));
  ASSERT_OK(cache.Release(*b, stream_));
  ExpectResidentBytes(cache, 11, 1);
  ExpectResidentBytes(cache, 12, 2);
  EXPECT_TRUE(cache.Upload(13, Expert(0), 8193).IsInvalidArgument()) << "larger than a slot";
}

// One slot: a new expert must replace the one a queue of kernels is still reading; their results must be the
// old expert's (the copy waited for the last use), and the slot then holds the new one.
TEST_F(DeviceCacheTest, OverwriteWaitsForTheLastUse) {
  std::mt19937 rng(25);
  const size_t hidden = 2048, inter = 768;
  const TestExpert first = MakeExpert(rng, hidden, inter, DType::kBF16);
  const TestExpert second = MakeExpert(rng, hidden, inter, DType::kBF16);
  const size_t bytes = first.extent.size();
  MakeHostExperts(2, bytes);
  std::memcpy(static_cast<uint8_t*>(host_.data()), first.extent.data(), bytes);
  std::memcpy(static_cast<uint8_t*>(host_.data()) + bytes, second.extent.data(), bytes);
  Result<std::unique_ptr<DeviceExpertCache>> created = DeviceExpertCache::Create({.slots = 1, .slot_bytes = bytes});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  DeviceExpertCache& cache = **created;

  const std::vector<float> x = RandomFloats(rng, hidden);
  std::vector<float> scratch(kernels::ExpertScratchFloats(1, inter));
  std::vector<float> expected(hidden);
  ASSERT_OK(kernels::ExpertForward(cpu_, first.view, x.data(), 1, scratch, expected.data()));

  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer dscratch = Poisoned(ExpertScratchFloats(1, inter));
  DeviceBuffer dout = Poisoned(hidden);
  Result<DeviceSlot> slot = cache.Acquire(1, Expert(0), bytes, stream_);
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  const kernels::ExpertWeights view = RebaseExpertWeights(first.view, first.extent.data(), slot->data);
  constexpr int kRepeats = 200;  // keeps the compute stream busy while the host moves on
  for (int i = 0; i < kRepeats; ++i) {
    ASSERT_OK(ExpertSwiGLU(stream_, view, dx.As<float>(), 1, dscratch.As<float>(), dout.As<float>()));
  }
  ASSERT_OK(cache.Release(*slot, stream_));
  ASSERT_OK(cache.Upload(2, Expert(1), bytes));
  EXPECT_EQ(cache.stats().evictions, 1u);
  ExpectClose(Read(dout, hidden, "output computed before the overwrite"), expected, WeightTolerance(DType::kBF16),
              "output computed before the overwrite");
  ExpectResidentBytes(cache, 2, 1);
}

}  // namespace
}  // namespace es::cuda
