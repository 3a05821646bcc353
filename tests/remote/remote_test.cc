// The RADOS tier against a real single-node Ceph cluster (tools/ceph-cluster.sh: one monitor, one memstore OSD,
// auth none), started for the suite and stopped after it: publish then attach then generate gives the local
// store's logits bit for bit; a publish interrupted midway resumes and writes only what is missing, and a model is
// invisible until its manifest is written; an object damaged in the pool is Corruption naming the object; a
// stopped OSD is an error within the timeout, and reads work again once it runs; two attached stores read at once;
// the prefetcher reads from the pool as well.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "cache/model_experts.h"
#include "compute/cache_provider.h"
#include "compute/generator.h"
#include "compute/model.h"
#include "remote/rados.h"
#include "remote/tier.h"
#include "store/base/aligned_buffer.h"
#include "store/metadata.h"
#include "tests/util/files.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/reference_cases.h"
#include "tests/util/run_cli.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es::remote {
namespace {

constexpr char kPool[] = "es";
const std::string kScript = std::string(ES_SOURCE_DIR) + "/tools/ceph-cluster.sh";

class RemoteTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists("/usr/bin/ceph-mon") || !testing::DataPresent(testing::kReferenceCases)) return;
    dir_ = new testing::TempDir();
    const auto started = testing::RunCommand("bash " + kScript + " start " + dir_->Sub("ceph") + " --pool " + kPool +
                                             " 2>&1");
    if (started.exit_code != 0) {
      std::fprintf(stderr, "the test cluster did not start: %s\n", started.out.c_str());
      return;
    }
    ceph_.conf = dir_->Sub("ceph") + "/ceph.conf";
    ceph_.timeout_seconds = 4;
    auto s = testing::StoreWithModels(dir_->Sub("local"), {{"tiny", testing::kTinyModel}});
    if (!s.ok()) return;
    local_ = s->release();
    // A trust record, to travel with the model.
    CatalogBatch batch;
    TrustInfo t;
    t.trust = 0.625;
    t.calibration_tokens = 99;
    batch.Put(Cf::kTrust, ExpertKey("tiny", 1, 2), EncodeTrust(t));
    if (!local_->catalog().Write(batch).ok()) return;
    pool_ = RadosPool::Connect(ceph_, kPool)->release();
    cluster_up_ = true;
  }
  static void TearDownTestSuite() {
    delete pool_;
    delete local_;
    if (dir_ != nullptr) testing::RunCommand("bash " + kScript + " stop " + dir_->Sub("ceph") + " 2>&1");
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!std::filesystem::exists("/usr/bin/ceph-mon")) {
      if (testing::InCi()) FAIL() << "Ceph is not installed (tools/setup.sh installs ceph-mon and ceph-osd)";
      GTEST_SKIP() << "Ceph is not installed (a failure under CI=true)";
    }
    ES_REQUIRE_DATA(testing::kReferenceCases);
    ASSERT_TRUE(cluster_up_) << "the test cluster did not start (its logs: " << dir_->Sub("ceph/log") << ")";
  }

  // A fresh store in the test directory with `model` attached from `where`, its tiers connected.
  std::unique_ptr<Store> Attached(const std::string& name, const RadosLocation& where, const std::string& model,
                                  const std::string& as = "") {
    StoreOptions o;
    o.create_if_missing = true;
    auto s = Store::Open(dir_->Sub(name), o);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!s.ok()) return nullptr;
    auto r = AttachModel(**s, *pool_, where, model, as, ceph_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(ConnectTiers(**s).ok());
    return std::move(s).value();
  }

  static std::vector<float> Logits(Store& store, const std::string& model) {
    kernels::CpuContext ctx;
    auto m = Model::Load(store, model, ctx);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    if (!m.ok()) return {};
    auto experts = DirectExpertProvider::Create(store, model);
    EXPECT_TRUE(experts.ok());
    auto logits = LastLogits(**m, **experts, testing::LoadReferenceCases()[0].ids, {});
    EXPECT_TRUE(logits.ok()) << logits.status().ToString();
    return logits.ok() ? *logits : std::vector<float>{};
  }

  static Status Publish(const RadosLocation& where, PublishReport* report = nullptr) {
    auto r = PublishModel(*local_, "tiny", *pool_, where);
    if (r.ok() && report != nullptr) *report = *r;
    return r.status();
  }

  static testing::TempDir* dir_;
  static Store* local_;
  static RadosPool* pool_;
  static CephOptions ceph_;
  static bool cluster_up_;
};

testing::TempDir* RemoteTest::dir_ = nullptr;
Store* RemoteTest::local_ = nullptr;
RadosPool* RemoteTest::pool_ = nullptr;
CephOptions RemoteTest::ceph_;
bool RemoteTest::cluster_up_ = false;

TEST_F(RemoteTest, PublishAttachGenerateGivesTheLocalLogits) {
  const RadosLocation where{kPool, "same/"};
  PublishReport first, again;
  ASSERT_TRUE(Publish(where, &first).ok());
  const ModelInfo info = *LoadModelInfo(local_->catalog(), "tiny");
  EXPECT_EQ(first.objects, info.num_experts + info.num_dense_tensors + info.assets.size());
  EXPECT_EQ(first.written, first.objects);
  ASSERT_TRUE(Publish(where, &again).ok());
  EXPECT_EQ(again.written, 0u);
  EXPECT_EQ(again.skipped, first.objects);

  auto b = Attached("same-b", where, "tiny", "t2");
  ASSERT_TRUE(b);
  auto attached = LoadModelInfo(b->catalog(), "t2");
  ASSERT_TRUE(attached.ok());
  EXPECT_EQ(attached->num_experts, info.num_experts);
  EXPECT_EQ(attached->source_fingerprint, info.source_fingerprint);
  // Its metadata came along.
  auto trust = b->catalog().Get(Cf::kTrust, ExpertKey("t2", 1, 2));
  ASSERT_TRUE(trust.ok());
  EXPECT_DOUBLE_EQ(DecodeTrust(*trust)->trust, 0.625);
  // Bit for bit the local model's logits.
  const std::vector<float> want = Logits(*local_, "tiny");
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(Logits(*b, "t2"), want);
  // Through a small cache prefetching a layer ahead: the prefetcher reads from the pool too, and the logits stay.
  {
    kernels::CpuContext ctx;
    auto m = Model::Load(*b, "t2", ctx);
    ASSERT_TRUE(m.ok());
    auto experts = ModelExperts::Load(b->catalog(), "t2");
    ASSERT_TRUE(experts.ok());
    ExpertCacheOptions co;
    co.capacity_bytes = 8 * experts->max_record_bytes();
    co.prefetch_bytes_in_flight = 4 * experts->max_record_bytes();
    auto cache = CacheExpertProvider::Create(*b, "t2", co);
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    ForwardOptions fo;
    fo.prefetch_depth = 1;
    auto logits = LastLogits(**m, **cache, testing::LoadReferenceCases()[0].ids, fo);
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    EXPECT_EQ(*logits, want);
    EXPECT_GT((*cache)->counters().prefetch_bytes_read, 0u);
  }
  // verify passes and counts the remote records without reading them; nothing local is referenced.
  auto report = b->Verify("");
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  EXPECT_EQ(report->remote, first.objects);
  // Attaching again is a no-op; another model under the same name is refused.
  auto same = AttachModel(*b, *pool_, where, "tiny", "t2", ceph_);
  ASSERT_TRUE(same.ok());
  EXPECT_TRUE(same->already);
  EXPECT_TRUE(AttachModel(*b, *pool_, RadosLocation{kPool, "nothing/"}, "tiny", "t2", ceph_).status().IsNotFound());
}

TEST_F(RemoteTest, InterruptedPublishResumesAndStaysInvisibleUntilItsManifest) {
  const RadosLocation where{kPool, "resume/"};
  ASSERT_TRUE(Publish(where).ok());
  const ModelInfo info = *LoadModelInfo(local_->catalog(), "tiny");
  const std::string base = ObjectBase(where, info);
  // As a publish killed midway leaves it: no manifest, five records never written, one written without its xattr
  // (killed between the bytes and the mark).
  ASSERT_TRUE(pool_->Remove(ManifestName(where, "tiny")).ok());
  for (uint32_t e = 0; e < 5; ++e) {
    ASSERT_TRUE(pool_->Remove(base + "/e/0/" + std::to_string(e)).ok());
  }
  const std::string half = base + "/e/1/0";
  auto bytes = pool_->ReadAll(half, 1 << 30);
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(pool_->Remove(half).ok());
  ASSERT_TRUE(pool_->WriteFull(half, std::as_bytes(std::span(bytes->data(), bytes->size() / 2))).ok());

  StoreOptions o;
  o.create_if_missing = true;
  auto early = Store::Open(dir_->Sub("resume-early"), o);
  ASSERT_TRUE(early.ok());
  EXPECT_TRUE(AttachModel(**early, *pool_, where, "tiny", "", ceph_).status().IsNotFound());

  PublishReport resumed;
  ASSERT_TRUE(Publish(where, &resumed).ok());
  EXPECT_EQ(resumed.written, 6u);
  EXPECT_EQ(resumed.skipped, resumed.objects - 6);
  auto b = Attached("resume-b", where, "tiny");
  ASSERT_TRUE(b);
  EXPECT_EQ(Logits(*b, "tiny"), Logits(*local_, "tiny"));
}

TEST_F(RemoteTest, DamagedObjectIsCorruptionNamingIt) {
  const RadosLocation where{kPool, "damaged/"};
  ASSERT_TRUE(Publish(where).ok());
  auto b = Attached("damaged-b", where, "tiny");
  ASSERT_TRUE(b);
  const std::string name = ObjectBase(where, *LoadModelInfo(local_->catalog(), "tiny")) + "/e/2/3";
  auto bytes = pool_->ReadAll(name, 1 << 30);
  ASSERT_TRUE(bytes.ok());
  std::string damaged = *bytes;
  damaged[4096 + 100] ^= 0x40;  // a payload byte
  ASSERT_TRUE(pool_->WriteFull(name, std::as_bytes(std::span(damaged))).ok());
  auto experts = DirectExpertProvider::Create(*b, "tiny");
  ASSERT_TRUE(experts.ok());
  std::vector<AcquiredExpert> out;
  const uint32_t id = 3;
  Status s = (*experts)->Acquire(2, {&id, 1}, out);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find(name), std::string::npos) << s.ToString();
  // Another expert reads fine.
  const uint32_t other = 4;
  EXPECT_TRUE((*experts)->Acquire(2, {&other, 1}, out).ok());
}

TEST_F(RemoteTest, StoppedOsdIsAnErrorWithinTheTimeoutAndReadsResume) {
  const RadosLocation where{kPool, "osd/"};
  ASSERT_TRUE(Publish(where).ok());
  auto b = Attached("osd-b", where, "tiny");
  ASSERT_TRUE(b);
  auto experts = DirectExpertProvider::Create(*b, "tiny");
  ASSERT_TRUE(experts.ok());
  std::vector<AcquiredExpert> out;
  const uint32_t id = 1;
  ASSERT_TRUE((*experts)->Acquire(0, {&id, 1}, out).ok());  // connected
  ASSERT_EQ(testing::RunCommand("bash " + kScript + " pause-osd " + dir_->Sub("ceph")).exit_code, 0);
  const auto start = std::chrono::steady_clock::now();
  const uint32_t next = 2;
  Status s = (*experts)->Acquire(0, {&next, 1}, out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(testing::RunCommand("bash " + kScript + " resume-osd " + dir_->Sub("ceph")).exit_code, 0);
  EXPECT_TRUE(s.IsIOError()) << s.ToString();
  EXPECT_NE(s.message().find("timed out"), std::string::npos) << s.ToString();
  EXPECT_LT(seconds, 3.0 * ceph_.timeout_seconds);
  // Running again: the same read succeeds (the OSD may take a moment to answer).
  Status again;
  for (int i = 0; i < 10; ++i) {
    again = (*experts)->Acquire(0, {&next, 1}, out);
    if (again.ok()) break;
  }
  EXPECT_TRUE(again.ok()) << again.ToString();
}

TEST_F(RemoteTest, TwoAttachedStoresReadAtOnce) {
  const RadosLocation where{kPool, "two/"};
  ASSERT_TRUE(Publish(where).ok());
  auto c = Attached("two-c", where, "tiny");
  auto d = Attached("two-d", where, "tiny", "other");
  ASSERT_TRUE(c && d);
  const std::vector<float> want = Logits(*local_, "tiny");
  std::vector<float> from_c, from_d;
  std::thread tc([&] { from_c = Logits(*c, "tiny"); });
  std::thread td([&] { from_d = Logits(*d, "other"); });
  tc.join();
  td.join();
  EXPECT_EQ(from_c, want);
  EXPECT_EQ(from_d, want);
  // Removing an attached model removes its tier's record with it; the objects stay in the pool for the others.
  ASSERT_TRUE(DeleteModel(*d, "other").ok());
  auto tiers = LoadTiers(d->catalog());
  ASSERT_TRUE(tiers.ok());
  EXPECT_TRUE(tiers->empty());
  auto verified = d->Verify("");
  ASSERT_TRUE(verified.ok());
  EXPECT_TRUE(verified->ok());
  EXPECT_EQ(verified->remote, 0u);
  EXPECT_EQ(Logits(*c, "tiny"), want);
}

// --local-cache-gb: what the pool served is kept locally (written in the background, verified), read from there
// again even while the OSD is stopped, a damaged copy is refetched, the copies stay within their capacity, and a
// reopened tier finds its copies and drops unfinished ones.
TEST_F(RemoteTest, WarmTierKeepsWhatThePoolServed) {
  const RadosLocation where{kPool, "warm/"};
  ASSERT_TRUE(Publish(where).ok());
  auto e = Attached("warm-e", where, "tiny");
  ASSERT_TRUE(e);
  auto warm = ConnectTiers(*e, uint64_t{1} << 30);
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  ASSERT_EQ(warm->size(), 1u);
  WarmTier& copies = *(*warm)[0];
  const std::vector<float> want = Logits(*local_, "tiny");
  EXPECT_EQ(Logits(*e, "tiny"), want);
  copies.Flush();
  const WarmTierStats first = copies.stats();
  EXPECT_GT(first.written, 0u);
  EXPECT_EQ(first.files, first.written);
  EXPECT_EQ(first.hits, 0u);

  // With the OSD stopped every read is a local copy's.
  ASSERT_EQ(testing::RunCommand("bash " + kScript + " pause-osd " + dir_->Sub("ceph")).exit_code, 0);
  const std::vector<float> offline = Logits(*e, "tiny");
  ASSERT_EQ(testing::RunCommand("bash " + kScript + " resume-osd " + dir_->Sub("ceph")).exit_code, 0);
  EXPECT_EQ(offline, want);
  EXPECT_GT(copies.stats().hits, 0u);

  // A damaged copy is noticed, removed, and the record comes from the pool again.
  // (an expert the reference case routed to: the first copy of an expert found)
  std::string victim;
  uint32_t layer = 0, expert = 0;
  for (const auto& entry : std::filesystem::directory_iterator(copies.dir())) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("e.") && std::sscanf(name.c_str(), "e.%u.%u", &layer, &expert) == 2) {
      victim = entry.path().string();
      break;
    }
  }
  ASSERT_FALSE(victim.empty());
  const uint64_t record = std::filesystem::file_size(victim);
  {
    std::string bytes = testing::ReadText(victim);
    bytes[4096 + 7] ^= 0x10;
    testing::WriteText(victim, bytes);
  }
  auto provider = DirectExpertProvider::Create(*e, "tiny");
  ASSERT_TRUE(provider.ok());
  std::vector<AcquiredExpert> out;
  EXPECT_TRUE((*provider)->Acquire(layer, {&expert, 1}, out).ok());
  EXPECT_EQ(copies.stats().damaged, 1u);
  out.clear();

  // A small tier keeps within its bytes, evicting the least recently used.
  auto small = WarmTier::Open(dir_->Sub("small-warm"), 5 * record);
  ASSERT_TRUE(small.ok());
  AlignedBuffer aligned_buffer(record);
  std::span<std::byte> buffer = aligned_buffer.span();
  std::vector<ExpertInfo> experts;
  ASSERT_TRUE(e->catalog().Scan(Cf::kExperts, ModelPrefix("tiny"), [&](std::string_view, std::string_view v) {
    experts.push_back(*DecodeExpert(v));
    return experts.size() < 12;
  }).ok());
  for (const ExpertInfo& x : experts) {
    ExtentRead read{x.extent, {}, {}, {}};
    AlignedBuffer aligned(x.extent.record_length);
    read.buffer = aligned.span();
    e->reader().ReadRaw({&read, 1});
    ASSERT_TRUE(read.status.ok()) << read.status.ToString();
    (*small)->Offer(x.extent, aligned.span().first(x.extent.record_length));
  }
  (*small)->Flush();
  EXPECT_LE((*small)->stats().bytes, 5 * record);
  EXPECT_EQ((*small)->stats().files, 5u);
  EXPECT_EQ((*small)->stats().evicted, experts.size() - 5);
  EXPECT_TRUE((*small)->Read(experts.back().extent, buffer));   // the most recent stay
  EXPECT_FALSE((*small)->Read(experts.front().extent, buffer));  // the oldest went
  small->reset();
  testing::WriteText(dir_->Sub("small-warm") + "/e.9.9.tmp", "unfinished");
  auto reopened = WarmTier::Open(dir_->Sub("small-warm"), 5 * record);
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ((*reopened)->stats().files, 5u);
  EXPECT_FALSE(std::filesystem::exists(dir_->Sub("small-warm") + "/e.9.9.tmp"));
  EXPECT_TRUE((*reopened)->Read(experts.back().extent, buffer));

  // verify counts and checks the copies: all good, then one damaged (reported, not fatal: a cache entry).
  copies.Flush();
  auto checked = CheckWarmCopies(*e, /*remove_bad=*/false);
  ASSERT_TRUE(checked.ok()) << checked.status().ToString();
  EXPECT_EQ(checked->copies, copies.stats().files);
  EXPECT_TRUE(checked->bad.empty());
  {
    std::string bytes = testing::ReadText(victim);
    bytes[4096 + 9] ^= 0x01;
    testing::WriteText(victim, bytes);
  }
  checked = CheckWarmCopies(*e, /*remove_bad=*/true);
  ASSERT_TRUE(checked.ok());
  ASSERT_EQ(checked->bad.size(), 1u);
  EXPECT_EQ(checked->copies, copies.stats().files - 1);
  EXPECT_FALSE(std::filesystem::exists(victim));
}

// The commands: publish and attach by URL with the cluster's ceph.conf, then the attached model generates the
// local text and `experts` lists it.
TEST_F(RemoteTest, CommandsPublishAttachAndGenerate) {
  testing::TempDir dir;
  const std::string a = " --store " + dir.Sub("a"), b = " --store " + dir.Sub("b"), conf = " --ceph-conf " + ceph_.conf;
  ASSERT_EQ(testing::RunCli("ingest " + std::string(testing::kTinyModel) + " --name tiny --quiet" + a).exit_code, 0);
  auto pub = testing::RunCli("publish --model tiny --to rados://es/cli --json" + conf + a, true);
  ASSERT_EQ(pub.exit_code, 0) << pub.out;
  auto att = testing::RunCli("attach --from rados://es/cli --model tiny --json" + conf + b, true);
  ASSERT_EQ(att.exit_code, 0) << att.out;
  const std::string gen = "generate --model tiny --prompt 'def main(' --max-tokens 8 --temperature 0 --no-record --quiet";
  const auto want = testing::RunCli(gen + a), got = testing::RunCli(gen + b, true);
  EXPECT_EQ(got.exit_code, 0) << got.out;
  EXPECT_EQ(got.out, want.out);
  EXPECT_EQ(testing::RunCli("experts --model tiny" + b).out, testing::RunCli("experts --model tiny" + a).out);
  auto bad = testing::RunCli("attach --from rados://es/cli --model nope" + conf + b, true);
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.out.find("no model 'nope' is published"), std::string::npos) << bad.out;
}

}  // namespace
}  // namespace es::remote
