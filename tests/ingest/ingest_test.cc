// The ingest pipeline on real checkpoints: the tiny Qwen3-MoE model ingests to 6 x 32 experts byte-identical to
// its shards; the same weights laid out as qwen3_omni_moe, mixtral and fused experts ingest to the same expert
// bytes; re-ingest is a no-op; a different checkpoint is refused unless replaced; interrupted ingests resume;
// every bad-input class leaves the store exactly as it was.
#include "ingest/gguf.h"
#include "ingest/ingest.h"

#include <errno.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <regex>

#include "ingest/checkpoint.h"
#include "ingest/make_checkpoint.h"
#include "tests/util/model_fixtures.h"
#include "tests/util/fault_fs.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::CountKeys;
using testing::FaultInjectionFileSystem;
using testing::FaultOp;
using testing::kTinyModel;
using testing::ReadAllExperts;
namespace fs = std::filesystem;
using testing::ReadText;
using testing::RewriteCheckpoint;
using testing::TempDir;
using testing::WriteText;

constexpr uint32_t kTinyLayers = 6;
constexpr uint32_t kTinyExperts = 32;

std::unique_ptr<Store> OpenStore(const std::string& path) {
  auto s = Store::Open(path, StoreOptions{});
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

void ExpectVerifyClean(Store& store) {
  auto report = store.Verify();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  for (const auto& c : report->corrupt) ADD_FAILURE() << c.what << ": " << c.message;
}

// A config.json text with fields replaced, added or removed.
std::string EditConfig(const std::string& text, const std::map<std::string, std::string>& set_raw,
                       const std::vector<std::string>& drop = {}) {
  auto v = ParseJson(text);
  EXPECT_TRUE(v.ok());
  JsonWriter w;
  w.BeginObject();
  for (const auto& [k, item] : v->object()) {
    if (set_raw.count(k) || std::find(drop.begin(), drop.end(), k) != drop.end()) continue;
    w.Key(k).Value(item);
  }
  for (const auto& [k, raw] : set_raw) w.Key(k).Raw(raw);
  w.EndObject();
  return w.Take();
}

// The source bytes of every expert of the tiny model, read independently of the ingest code.
std::map<std::pair<uint32_t, uint32_t>, std::vector<std::byte>> TinyExpertsFromShards() {
  std::vector<SafetensorsFile> files;
  for (const char* shard : {"/model-00001-of-00002.safetensors", "/model-00002-of-00002.safetensors"}) {
    auto f = SafetensorsFile::Open(nullptr, std::string(kTinyModel) + shard);
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    files.push_back(std::move(f).value());
  }
  std::map<std::pair<uint32_t, uint32_t>, std::vector<std::byte>> out;
  for (uint32_t l = 0; l < kTinyLayers; ++l) {
    for (uint32_t e = 0; e < kTinyExperts; ++e) {
      std::vector<std::byte>& bytes = out[{l, e}];
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
        std::string name = "model.layers." + std::to_string(l) + ".mlp.experts." + std::to_string(e) + "." + proj + ".weight";
        for (const auto& f : files) {
          if (const auto* t = f.Find(name)) {
            std::vector<std::byte> b(t->byte_size());
            EXPECT_TRUE(f.ReadTensor(*t, b).ok());
            bytes.insert(bytes.end(), b.begin(), b.end());
          }
        }
      }
    }
  }
  return out;
}

class IngestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ES_REQUIRE_DATA(kTinyModel);
    store_ = OpenStore(dir_.Sub("store"));
  }
  Result<IngestResult> Ingest(const std::string& src, const std::string& name, bool replace = false) {
    IngestOptions o;
    o.name = name;
    o.replace = replace;
    return IngestCheckpoint(*store_, src, o);
  }
  // Two generated checkpoints of one layout with different weights (a model and its fine-tune), under dir_.
  void MakeTwoOfOneLayout(const std::string& a, const std::string& b) {
    MakeCheckpointOptions o;
    o.seed = 1;
    ASSERT_TRUE(MakeCheckpoint(dir_.Sub(a), o).ok());
    o.seed = 2;
    ASSERT_TRUE(MakeCheckpoint(dir_.Sub(b), o).ok());
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(IngestTest, TinyModelExpertsAreByteIdentical) {
  auto r = Ingest(kTinyModel, "tiny");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->arch, "qwen3_moe");
  EXPECT_EQ(r->layers, kTinyLayers);
  EXPECT_EQ(r->experts, kTinyLayers * kTinyExperts);
  auto got = ReadAllExperts(*store_, "tiny");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto want = TinyExpertsFromShards();
  ASSERT_EQ(got->size(), want.size());
  for (const auto& [key, bytes] : want) {
    ASSERT_EQ(got->at(key), bytes) << "layer " << key.first << " expert " << key.second;
  }
  // Dense tensors are kept, under canonical names, and the tokenizer as an asset.
  EXPECT_TRUE(store_->catalog().Get(Cf::kTensors, TensorKey("tiny", "model.embed_tokens.weight")).ok());
  EXPECT_TRUE(store_->catalog().Get(Cf::kTensors, TensorKey("tiny", "model.layers.5.mlp.gate.weight")).ok());
  EXPECT_TRUE(store_->catalog().Get(Cf::kTensors, TensorKey("tiny", "lm_head.weight")).ok());
  auto model = DecodeModel(*store_->catalog().Get(Cf::kModels, "tiny"));
  ASSERT_TRUE(model.ok());
  EXPECT_TRUE(model->complete);
  EXPECT_EQ(model->top_k, 4u);
  bool has_tokenizer = false;
  for (const auto& a : model->assets) has_tokenizer = has_tokenizer || a.name == "tokenizer.json";
  EXPECT_TRUE(has_tokenizer);
  ExpectVerifyClean(*store_);
}

// A GGUF file that llama.cpp quantized (Q4_K_M: Q4_K with Q6_K for some tensors): every tensor is stored as its
// blocks, verbatim, with its GGML type; each expert is its slab of the three 3-D expert tensors, read here
// independently of the ingest code.
TEST_F(IngestTest, QuantizedGgufIsStoredVerbatim) {
  const std::string path = std::string(testing::kGgufFixtures) + "/small-Q4_K_M.gguf";
  auto r = Ingest(path, "q4");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->experts, 2u);
  auto file = GgufFile::Open(nullptr, path);
  ASSERT_TRUE(file.ok());
  auto got = ReadAllExperts(*store_, "q4");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  for (uint32_t e = 0; e < 2; ++e) {
    std::vector<std::byte> want;
    for (const char* proj : {"gate", "up", "down"}) {
      const GgufTensorInfo* t = file->header().FindTensor(std::string("blk.0.ffn_") + proj + "_exps.weight");
      ASSERT_NE(t, nullptr);
      std::vector<std::byte> slab(t->slice_bytes());
      ASSERT_TRUE(file->ReadTensorRange(*t, e * t->slice_bytes(), slab).ok());
      want.insert(want.end(), slab.begin(), slab.end());
    }
    EXPECT_EQ(got->at({0, e}), want) << "expert " << e;
  }
  auto expert = DecodeExpert(*store_->catalog().Get(Cf::kExperts, ExpertKey("q4", 0, 1)));
  ASSERT_TRUE(expert.ok());
  ASSERT_EQ(expert->projections.size(), 3u);
  EXPECT_EQ(ElementTypeName(expert->projections[0].dtype, expert->projections[0].ggml_type), "Q4_K");
  EXPECT_EQ(ElementTypeName(expert->projections[2].dtype, expert->projections[2].ggml_type), "Q6_K");
  EXPECT_EQ(expert->projections[0].shape, (std::vector<uint64_t>{256, 256}));
  EXPECT_EQ(expert->projections[0].length, 256u * 144);
  auto embed = DecodeTensor(*store_->catalog().Get(Cf::kTensors, TensorKey("q4", "model.embed_tokens.weight")));
  ASSERT_TRUE(embed.ok());
  EXPECT_EQ(ElementTypeName(embed->dtype, embed->ggml_type), "Q4_K");
  auto norm = DecodeTensor(*store_->catalog().Get(Cf::kTensors, TensorKey("q4", "model.norm.weight")));
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->dtype, DType::kF32);
  EXPECT_EQ(norm->ggml_type, kNoGgmlType);
  ExpectVerifyClean(*store_);
  // Ingesting the same file again changes nothing.
  auto again = Ingest(path, "q4");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->unchanged);
}

// The same file split by gguf-py's own writer (two files, every key in the first; tests/ingest/gguf_fixtures/
// split.py), given by its first file, is the same model: the same expert bytes and the same dense tensors. A split
// given by another file, with a file missing, or not named as llama.cpp names splits is refused, naming why.
TEST_F(IngestTest, SplitGgufIsTheSameModel) {
  const std::string fixtures = testing::kGgufFixtures;
  ASSERT_TRUE(Ingest(fixtures + "/small-Q4_K_M.gguf", "one").ok());
  auto r = Ingest(fixtures + "/small-Q4_K_M-00001-of-00002.gguf", "two");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->experts, 2u);
  auto one = ReadAllExperts(*store_, "one");
  auto two = ReadAllExperts(*store_, "two");
  ASSERT_TRUE(one.ok() && two.ok());
  EXPECT_EQ(*one, *two);
  auto dense = [&](const std::string& model) {
    std::map<std::string, std::pair<uint64_t, uint64_t>> out;  // name -> (payload length, checksum)
    EXPECT_TRUE(store_->catalog()
                    .Scan(Cf::kTensors, ModelPrefix(model),
                          [&](std::string_view, std::string_view value) {
                            auto t = DecodeTensor(value);
                            EXPECT_TRUE(t.ok());
                            if (t.ok()) out[t->name] = {t->extent.payload_length, t->extent.checksum};
                            return true;
                          })
                    .ok());
    return out;
  };
  const auto dense_one = dense("one");
  EXPECT_EQ(dense_one.size(), 12u);
  EXPECT_EQ(dense_one, dense("two"));
  ExpectVerifyClean(*store_);

  const std::string split = dir_.Sub("split");
  fs::create_directories(split);
  for (const char* part : {"-00001-of-00002.gguf", "-00002-of-00002.gguf"}) {
    fs::copy_file(fixtures + "/small-Q4_K_M" + part, split + "/m" + part);
  }
  // Unnamed, the model takes the split's prefix as its name.
  IngestOptions unnamed;
  auto named = IngestCheckpoint(*store_, split + "/m-00001-of-00002.gguf", unnamed);
  ASSERT_TRUE(named.ok()) << named.status().ToString();
  EXPECT_EQ(named->model, "m");
  auto second = Ingest(split + "/m-00002-of-00002.gguf", "x");
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(second.status().IsInvalidArgument()) << second.status().ToString();
  EXPECT_NE(second.status().message().find("give the first (-00001-of-00002.gguf)"), std::string::npos)
      << second.status().ToString();
  fs::copy_file(split + "/m-00001-of-00002.gguf", split + "/renamed.gguf");
  auto renamed = Ingest(split + "/renamed.gguf", "x");
  ASSERT_FALSE(renamed.ok());
  EXPECT_NE(renamed.status().message().find("its name must end in -00001-of-00002.gguf"), std::string::npos)
      << renamed.status().ToString();
  fs::remove(split + "/m-00002-of-00002.gguf");
  auto missing = Ingest(split + "/m-00001-of-00002.gguf", "x");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(missing.status().IsNotFound()) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("m-00002-of-00002.gguf is missing"), std::string::npos)
      << missing.status().ToString();
  ExpectVerifyClean(*store_);
}

TEST_F(IngestTest, ReingestIsANoOpAndDifferentCheckpointIsRefused) {
  ASSERT_TRUE(Ingest(kTinyModel, "tiny").ok());
  auto keys = CountKeys(*store_);
  auto again = Ingest(kTinyModel, "tiny");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->unchanged);
  EXPECT_EQ(again->bytes_written, 0u);
  EXPECT_EQ(CountKeys(*store_), keys);

  MakeCheckpointOptions o;
  o.arch = "qwen3_moe";
  auto resolved = ResolveMakeCheckpointOptions(o, {});
  ASSERT_TRUE(resolved.ok());
  ASSERT_TRUE(MakeCheckpoint(dir_.Sub("other"), *resolved).ok());
  auto refused = Ingest(dir_.Sub("other"), "tiny");
  EXPECT_TRUE(refused.status().IsInvalidArgument());
  EXPECT_NE(refused.status().message().find("`replace`"), std::string::npos);
  EXPECT_EQ(CountKeys(*store_), keys);

  auto replaced = Ingest(dir_.Sub("other"), "tiny", /*replace=*/true);
  ASSERT_TRUE(replaced.ok()) << replaced.status().ToString();
  EXPECT_EQ(replaced->experts, 2u * 8u);
  auto experts = ReadAllExperts(*store_, "tiny");
  ASSERT_TRUE(experts.ok());
  EXPECT_EQ(experts->size(), 16u);
  ExpectVerifyClean(*store_);
}

// A checkpoint of the same layout with other weights (a fine-tune) is a different checkpoint: refused without
// replace, written with it. A model stored with a layout-only fingerprint (as earlier versions wrote) still counts as
// the same checkpoint when the layouts agree.
TEST_F(IngestTest, SameLayoutWithOtherWeightsIsADifferentCheckpoint) {
  ASSERT_NO_FATAL_FAILURE(MakeTwoOfOneLayout("base", "tuned"));
  auto base = Ingest(dir_.Sub("base"), "m");
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  auto before = ReadAllExperts(*store_, "m");
  EXPECT_TRUE(Ingest(dir_.Sub("tuned"), "m").status().IsInvalidArgument());
  auto replaced = Ingest(dir_.Sub("tuned"), "m", /*replace=*/true);
  ASSERT_TRUE(replaced.ok()) << replaced.status().ToString();
  EXPECT_FALSE(replaced->unchanged);
  EXPECT_EQ(replaced->bytes_written, replaced->bytes);
  auto after = ReadAllExperts(*store_, "m");
  ASSERT_TRUE(after.ok() && before.ok());
  EXPECT_NE(*after, *before);
  // The layout-only fingerprint of earlier versions.
  auto record = DecodeModel(*store_->catalog().Get(Cf::kModels, "m"));
  ASSERT_TRUE(record.ok());
  ASSERT_EQ(record->source_fingerprint.size(), 32u);
  record->source_fingerprint.resize(kLayoutFingerprintChars);
  CatalogBatch batch;
  batch.Put(Cf::kModels, ModelKey("m"), EncodeModel(*record));
  ASSERT_TRUE(store_->catalog().Write(batch).ok());
  auto again = Ingest(dir_.Sub("tuned"), "m");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(again->unchanged);
  EXPECT_TRUE(SameSourceFingerprint("0123456789abcdef", "0123456789abcdeffedcba9876543210"));
  EXPECT_FALSE(SameSourceFingerprint("0123456789abcdef0000000000000000", "0123456789abcdeffedcba9876543210"));
  EXPECT_FALSE(SameSourceFingerprint("1123456789abcdef", "0123456789abcdeffedcba9876543210"));
}

// A replace that stops before its first commit leaves the old model whole; one that stops later leaves the new one,
// incomplete and resumable. Never neither.
TEST_F(IngestTest, StoppedReplaceLeavesTheOldModelOrTheNewOne) {
  ASSERT_NO_FATAL_FAILURE(MakeTwoOfOneLayout("old", "new"));
  ASSERT_TRUE(Ingest(dir_.Sub("old"), "m").ok());
  auto old_experts = ReadAllExperts(*store_, "m");
  ASSERT_TRUE(old_experts.ok());
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  auto checkpoint = Checkpoint::Open(dir_.Sub("new"), fs);
  ASSERT_TRUE(checkpoint.ok());
  IngestOptions io;
  io.name = "m";
  io.replace = true;
  io.commit_bytes = 16 * 1024;
  // The first read of the new weights fails: nothing was committed.
  fs->AddRule({FaultOp::kRead, "", EIO, false, 0, 1});
  EXPECT_TRUE(IngestCheckpoint(*store_, **checkpoint, io).status().IsIOError());
  auto stored = store_->catalog().Get(Cf::kModels, "m");
  ASSERT_TRUE(stored.ok()) << "the old model is gone: " << stored.status().ToString();
  auto model = DecodeModel(*stored);
  ASSERT_TRUE(model.ok());
  EXPECT_TRUE(model->complete);
  EXPECT_EQ(*ReadAllExperts(*store_, "m"), *old_experts);
  ExpectVerifyClean(*store_);
  // A later read fails: the new model is there, incomplete, with none of the old one's entries.
  fs->AddRule({FaultOp::kRead, "", EIO, false, 8, 1});
  EXPECT_TRUE(IngestCheckpoint(*store_, **checkpoint, io).status().IsIOError());
  stored = store_->catalog().Get(Cf::kModels, "m");
  ASSERT_TRUE(stored.ok()) << "neither model is there: " << stored.status().ToString();
  model = DecodeModel(*stored);
  ASSERT_TRUE(model.ok());
  EXPECT_FALSE(model->complete);
  EXPECT_EQ(model->source_fingerprint, (*checkpoint)->fingerprint());
  auto partial = ReadAllExperts(*store_, "m");
  ASSERT_TRUE(partial.ok());
  EXPECT_LT(partial->size(), old_experts->size());
  for (const auto& [id, bytes] : *partial) EXPECT_NE(bytes, old_experts->at(id));
  ExpectVerifyClean(*store_);
  io.replace = false;
  auto resumed = IngestCheckpoint(*store_, **checkpoint, io);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_TRUE(resumed->resumed);
  EXPECT_EQ(ReadAllExperts(*store_, "m")->size(), old_experts->size());
}

// The tiny model's weights in other families' layouts must give the same expert bytes.
TEST_F(IngestTest, OtherLayoutsGiveTheSameExperts) {
  std::string config = ReadText(std::string(kTinyModel) + "/config.json");
  // qwen3_omni_moe: the text model under thinker., config under thinker_config.text_config, and components.
  std::string omni_config = "{\"model_type\":\"qwen3_omni_moe\",\"architectures\":[\"Qwen3OmniMoeForConditionalGeneration\"],"
                            "\"thinker_config\":{\"text_config\":" + config + "}}";
  std::vector<testing::ExtraTensor> components = {
      {{"talker.model.embed_tokens.weight", DType::kBF16, {4, 8}}, std::vector<std::byte>(64, std::byte{1})},
      {{"thinker.visual.patch_embed.proj.weight", DType::kF32, {2, 2}}, std::vector<std::byte>(16, std::byte{2})},
      {{"thinker.audio_tower.conv1.weight", DType::kF32, {3}}, std::vector<std::byte>(12, std::byte{3})},
  };
  ASSERT_TRUE(RewriteCheckpoint(kTinyModel, dir_.Sub("omni"), [](const std::string& n) -> std::optional<std::string> {
                return n == "lm_head.weight" ? "thinker.lm_head.weight" : "thinker." + n;
              }, omni_config, components).ok());
  // mixtral: block_sparse_moe, w1 = gate, w3 = up, w2 = down; expert count and FFN size under Mixtral's names.
  std::string mixtral_config = EditConfig(config, {{"model_type", "\"mixtral\""}, {"num_local_experts", "32"},
                                                    {"intermediate_size", "96"}},
                                          {"num_experts", "moe_intermediate_size"});
  ASSERT_TRUE(RewriteCheckpoint(kTinyModel, dir_.Sub("mixtral"), [](const std::string& n) -> std::optional<std::string> {
                std::string s = std::regex_replace(n, std::regex("\\.mlp\\."), ".block_sparse_moe.");
                s = std::regex_replace(s, std::regex("gate_proj\\.weight$"), "w1.weight");
                s = std::regex_replace(s, std::regex("up_proj\\.weight$"), "w3.weight");
                s = std::regex_replace(s, std::regex("down_proj\\.weight$"), "w2.weight");
                return s;
              }, mixtral_config).ok());

  ASSERT_TRUE(Ingest(kTinyModel, "base").ok());
  auto omni = Ingest(dir_.Sub("omni"), "omni");
  ASSERT_TRUE(omni.ok()) << omni.status().ToString();
  EXPECT_EQ(omni->arch, "qwen3_omni_moe");
  auto mixtral = Ingest(dir_.Sub("mixtral"), "mixtral");
  ASSERT_TRUE(mixtral.ok()) << mixtral.status().ToString();
  EXPECT_EQ(mixtral->arch, "mixtral");

  auto base = ReadAllExperts(*store_, "base");
  ASSERT_TRUE(base.ok());
  for (const char* name : {"omni", "mixtral"}) {
    auto other = ReadAllExperts(*store_, name);
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(*other, *base) << name;
  }
  // The Omni thinker's dense tensors land under the same canonical names; the other parts are components.
  EXPECT_TRUE(store_->catalog().Get(Cf::kTensors, TensorKey("omni", "model.embed_tokens.weight")).ok());
  EXPECT_TRUE(store_->catalog().Get(Cf::kTensors, TensorKey("omni", "lm_head.weight")).ok());
  auto talker = store_->catalog().Get(Cf::kTensors, TensorKey("omni", "talker.model.embed_tokens.weight"));
  ASSERT_TRUE(talker.ok());
  EXPECT_EQ(DecodeTensor(*talker)->component, "talker");
  EXPECT_EQ(DecodeTensor(*store_->catalog().Get(Cf::kTensors, TensorKey("omni", "thinker.visual.patch_embed.proj.weight")))
                ->component, "vision");
  ExpectVerifyClean(*store_);
}

TEST_F(IngestTest, FusedExpertTensorsAreSplit) {
  MakeCheckpointOptions o;
  o.arch = "qwen3_moe";
  o.seed = 7;
  auto per_expert = ResolveMakeCheckpointOptions(o, {});
  ASSERT_TRUE(per_expert.ok());
  ASSERT_TRUE(MakeCheckpoint(dir_.Sub("plain"), *per_expert).ok());
  ASSERT_TRUE(Ingest(dir_.Sub("plain"), "plain").ok());
  auto plain = ReadAllExperts(*store_, "plain");
  ASSERT_TRUE(plain.ok());
  // Build the fused layout from the per-expert one: gate_up [E, 2I, H] = per expert gate rows then up rows.
  auto ck = Checkpoint::Open(dir_.Sub("plain"));
  ASSERT_TRUE(ck.ok());
  const uint32_t E = (*ck)->shape().num_experts, L = (*ck)->shape().num_layers;
  const uint64_t I = (*ck)->shape().moe_intermediate_size, H = (*ck)->shape().hidden_size;
  std::vector<testing::ExtraTensor> fused;
  for (uint32_t l = 0; l < L; ++l) {
    testing::ExtraTensor gu{{"model.layers." + std::to_string(l) + ".mlp.experts.gate_up_proj", DType::kBF16, {E, 2 * I, H}}, {}};
    testing::ExtraTensor down{{"model.layers." + std::to_string(l) + ".mlp.experts.down_proj", DType::kBF16, {E, H, I}}, {}};
    for (uint32_t e = 0; e < E; ++e) {
      const auto& b = plain->at({l, e});
      size_t proj = b.size() / 3;
      gu.bytes.insert(gu.bytes.end(), b.begin(), b.begin() + static_cast<ptrdiff_t>(2 * proj));
      down.bytes.insert(down.bytes.end(), b.begin() + static_cast<ptrdiff_t>(2 * proj), b.end());
    }
    fused.push_back(std::move(gu));
    fused.push_back(std::move(down));
  }
  ASSERT_TRUE(RewriteCheckpoint(dir_.Sub("plain"), dir_.Sub("fused"), [](const std::string& n) -> std::optional<std::string> {
                if (n.find(".experts.") != std::string::npos) return std::nullopt;
                return n;
              }, ReadText(dir_.Sub("plain") + "/config.json"), fused).ok());
  auto r = Ingest(dir_.Sub("fused"), "fused");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto got = ReadAllExperts(*store_, "fused");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *plain);
}

TEST_F(IngestTest, PartialCheckpointRecordsWhatIsThere) {
  MakeCheckpointOptions o;
  o.arch = "mixtral";
  o.missing = {{0, 3}, {1, 0}, {1, 7}};
  auto resolved = ResolveMakeCheckpointOptions(o, {});
  ASSERT_TRUE(resolved.ok());
  ASSERT_TRUE(MakeCheckpoint(dir_.Sub("partial"), *resolved).ok());
  auto r = Ingest(dir_.Sub("partial"), "partial");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->experts, 2u * 8u - 3u);
  EXPECT_TRUE(store_->catalog().Get(Cf::kExperts, ExpertKey("partial", 0, 3)).status().IsNotFound());
  EXPECT_TRUE(store_->catalog().Get(Cf::kExperts, ExpertKey("partial", 0, 4)).ok());
}

TEST_F(IngestTest, EveryFamilyFromMakeCheckpoint) {
  for (const char* arch : {"qwen3_moe", "qwen3_omni_moe", "mixtral", "olmoe", "qwen2_moe"}) {
    SCOPED_TRACE(arch);
    MakeCheckpointOptions o;
    o.arch = arch;
    o.layers = 3;
    o.max_shard_bytes = 200 * 1024;  // several shards and an index
    auto resolved = ResolveMakeCheckpointOptions(o, {"layers"});
    ASSERT_TRUE(resolved.ok());
    auto made = MakeCheckpoint(dir_.Sub(arch), *resolved);
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    EXPECT_TRUE(std::filesystem::exists(dir_.Sub(arch) + "/model.safetensors.index.json"));
    auto r = Ingest(dir_.Sub(arch), std::string("m-") + arch);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->arch, arch);
    EXPECT_EQ(r->experts, 3u * 8u);
  }
  ExpectVerifyClean(*store_);
}

// A read error mid-ingest (with small commits) leaves a clean store with an incomplete model; running again
// resumes and completes without duplicates.
TEST_F(IngestTest, InterruptedIngestResumes) {
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  IngestOptions o;
  o.name = "tiny";
  o.commit_bytes = 512 * 1024;
  o.checkpoint_fs = fs;
  // Opened (and fingerprinted) first; then a read of the second shard's data fails part-way through the ingest.
  auto checkpoint = Checkpoint::Open(kTinyModel, fs);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  fs->AddRule({FaultOp::kRead, "model-00002", EIO, false, /*skip=*/20, 1});
  auto failed = IngestCheckpoint(*store_, **checkpoint, o);
  ASSERT_FALSE(failed.ok());
  EXPECT_TRUE(failed.status().IsIOError()) << failed.status().ToString();
  ExpectVerifyClean(*store_);
  auto stored = store_->catalog().Get(Cf::kModels, "tiny");
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  auto model = DecodeModel(*stored);
  ASSERT_TRUE(model.ok());
  EXPECT_FALSE(model->complete);
  size_t partial = ReadAllExperts(*store_, "tiny")->size();
  EXPECT_GT(partial, 0u);
  EXPECT_LT(partial, kTinyLayers * kTinyExperts);

  fs->ClearRules();
  auto resumed = IngestCheckpoint(*store_, kTinyModel, o);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_TRUE(resumed->resumed);
  EXPECT_LT(resumed->bytes_written, resumed->bytes);
  auto got = ReadAllExperts(*store_, "tiny");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, TinyExpertsFromShards());
  EXPECT_TRUE(DecodeModel(*store_->catalog().Get(Cf::kModels, "tiny"))->complete);
  ExpectVerifyClean(*store_);
}

// Each bad-input class: a clear error, and the store exactly as it was (models, keys, verify).
TEST_F(IngestTest, BadInputsLeaveTheStoreUnchanged) {
  ASSERT_TRUE(Ingest(kTinyModel, "tiny").ok());
  auto keys = CountKeys(*store_);
  const std::string src = kTinyModel;
  const std::string config = ReadText(src + "/config.json");
  const std::string index = ReadText(src + "/model.safetensors.index.json");
  auto copy = [&](const std::string& name) {
    std::string d = dir_.Sub(name);
    std::filesystem::create_directories(d);
    for (const auto& e : std::filesystem::directory_iterator(src)) {
      if (e.is_regular_file()) std::filesystem::copy_file(e.path(), d + "/" + e.path().filename().string());
    }
    for (const auto& e : std::filesystem::directory_iterator(d)) std::filesystem::permissions(e.path(), std::filesystem::perms::owner_all);
    return d;
  };
  struct Case {
    std::string name;
    std::function<std::string()> make;  // returns the checkpoint dir
    std::string expect_in_message;
  };
  std::vector<Case> cases = {
      {"missing directory", [&] { return dir_.Sub("nope"); }, "no checkpoint"},
      {"no config", [&] { auto d = copy("noconfig"); std::filesystem::remove(d + "/config.json"); return d; }, "config.json"},
      {"config not json", [&] { auto d = copy("badjson"); WriteText(d + "/config.json", "{\"model_type\":"); return d; }, "JSON"},
      {"unknown arch", [&] { auto d = copy("arch"); WriteText(d + "/config.json", EditConfig(config, {{"model_type", "\"llama\""}})); return d; }, "supported"},
      {"config missing field", [&] { auto d = copy("field"); WriteText(d + "/config.json", EditConfig(config, {}, {"num_experts"})); return d; }, "num_experts"},
      {"fewer experts in config", [&] { auto d = copy("few"); WriteText(d + "/config.json", EditConfig(config, {{"num_experts", "16"}})); return d; }, "beyond"},
      {"wrong expert size", [&] { auto d = copy("ffn"); WriteText(d + "/config.json", EditConfig(config, {{"moe_intermediate_size", "64"}})); return d; }, "shape"},
      {"truncated shard", [&] {
         auto d = copy("trunc");
         std::filesystem::resize_file(d + "/model-00002-of-00002.safetensors", 4000000);
         return d; }, "model-00002"},
      {"missing shard", [&] { auto d = copy("noshard"); std::filesystem::remove(d + "/model-00002-of-00002.safetensors"); return d; }, "missing"},
      {"tensor in the wrong shard", [&] {
         auto d = copy("wrongshard");
         // Point the index at the shard that does not hold the embedding.
         std::smatch m;
         EXPECT_TRUE(std::regex_search(index, m, std::regex("\"model.embed_tokens.weight\": *\"(model-0000[12])")));
         std::string other = m[1] == "model-00001" ? "model-00002" : "model-00001";
         WriteText(d + "/model.safetensors.index.json",
                   std::regex_replace(index, std::regex("(\"model.embed_tokens.weight\": *\")model-0000[12]"), "$1" + other));
         return d; }, "index"},
      {"index not json", [&] { auto d = copy("badindex"); WriteText(d + "/model.safetensors.index.json", "[1,"); return d; }, "JSON"},
      {"index without weight_map", [&] { auto d = copy("nomap"); WriteText(d + "/model.safetensors.index.json", "{}"); return d; }, "weight_map"},
      {"shard path escapes the directory", [&] {
         auto d = copy("escape");
         WriteText(d + "/model.safetensors.index.json", std::regex_replace(index, std::regex("model-00001-of-00002"), "../x/model-00001-of-00002"));
         return d; }, "shard name"},
      {"damaged tokenizer", [&] { auto d = copy("tok"); WriteText(d + "/tokenizer.json", "{\"a\":1,\"a\":2}"); return d; }, "duplicate"},
      {"pickle checkpoint", [&] {
         std::string d = dir_.Sub("pickle");
         std::filesystem::create_directories(d);
         WriteText(d + "/config.json", config);
         WriteText(d + "/pytorch_model.bin", "PK\x03\x04");
         return d; }, "pickle"},
      {"overflowing layer index", [&] {
         std::string d = dir_.Sub("overflow");
         EXPECT_TRUE(RewriteCheckpoint(src, d, [](const std::string& n) -> std::optional<std::string> {
           return std::regex_replace(n, std::regex("^model\\.layers\\.5\\."), "model.layers.99999999999999999999.");
         }, config).ok());
         return d; }, "overflows"},
      {"missing projection", [&] {
         std::string d = dir_.Sub("noproj");
         EXPECT_TRUE(RewriteCheckpoint(src, d, [](const std::string& n) -> std::optional<std::string> {
           if (n == "model.layers.2.mlp.experts.9.down_proj.weight") return std::nullopt;
           return n;
         }, config).ok());
         return d; }, "down"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string d = c.make();
    auto r = Ingest(d, "victim");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(c.expect_in_message), std::string::npos) << r.status().ToString();
    EXPECT_EQ(CountKeys(*store_), keys);
    auto models = store_->ListModels();
    ASSERT_TRUE(models.ok());
    EXPECT_EQ(models->size(), 1u);
    ExpectVerifyClean(*store_);
  }
}

TEST(Adapters, NamesAreClassifiedAndChecked) {
  auto adapter = AdapterByName("qwen3_moe");
  ASSERT_TRUE(adapter.ok());
  ModelShape shape;
  shape.num_layers = 48;
  shape.num_experts = 128;
  auto r = (*adapter)->Classify("model.layers.47.mlp.experts.127.down_proj.weight", shape);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, TensorRole::Kind::kExpert);
  EXPECT_EQ(r->layer, 47u);
  EXPECT_EQ(r->expert, 127u);
  EXPECT_EQ(r->projection, ProjectionRole::kDown);
  EXPECT_EQ((*adapter)->Classify("model.layers.3.mlp.gate.weight", shape)->kind, TensorRole::Kind::kDense);
  EXPECT_TRUE((*adapter)->Classify("model.layers.48.mlp.gate.weight", shape).status().IsInvalidArgument());
  EXPECT_TRUE((*adapter)->Classify("model.layers.3.mlp.experts.128.up_proj.weight", shape).status().IsInvalidArgument());
  EXPECT_TRUE((*adapter)->Classify("model.layers.4294967296.mlp.gate.weight", shape).status().IsInvalidArgument());
  EXPECT_TRUE((*adapter)->Classify("model.layers.03.mlp.gate.weight", shape).status().IsInvalidArgument());
  EXPECT_TRUE((*adapter)->Classify("model.layers.3.mlp.experts.1.fc.weight", shape).status().IsInvalidArgument());
  EXPECT_TRUE((*adapter)->Classify("other.weight", shape).status().IsInvalidArgument());
  EXPECT_TRUE(AdapterByName("llama").status().IsNotSupported());
  EXPECT_NE(AdapterByName("llama").status().message().find("qwen3_omni_moe"), std::string::npos);
}

}  // namespace
}  // namespace es
