// Fixtures over real checkpoints.
#include "tests/util/model_fixtures.h"

#include <array>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ingest/gguf.h"
#include "ingest/gguf_model.h"
#include "ingest/ingest.h"
#include "store/base/checksum.h"

namespace es::testing {

Status RewriteCheckpoint(const std::string& src, const std::string& dst, const RenameFn& rename,
                         const std::string& config_json, const std::vector<ExtraTensor>& extra) {
  std::filesystem::create_directories(dst);
  std::vector<SafetensorsFile> files;
  for (const auto& entry : std::filesystem::directory_iterator(src)) {
    if (entry.path().extension() != ".safetensors") continue;
    ES_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(nullptr, entry.path().string()));
    files.push_back(std::move(f));
  }
  std::vector<TensorSpec> specs;
  std::vector<std::pair<const SafetensorsFile*, const SafetensorsTensor*>> sources;
  for (const auto& f : files) {
    for (const auto& t : f.tensors()) {
      auto name = rename(t.name);
      if (!name) continue;
      specs.push_back({*name, t.dtype, t.shape});
      sources.push_back({&f, &t});
    }
  }
  for (const auto& e : extra) specs.push_back(e.spec);
  ES_ASSIGN_OR_RETURN(auto writer, SafetensorsWriter::Create(nullptr, dst + "/model.safetensors", specs));
  for (auto [f, t] : sources) {
    std::vector<std::byte> bytes(t->byte_size());
    ES_RETURN_IF_ERROR(f->ReadTensor(*t, bytes));
    ES_RETURN_IF_ERROR(writer->Write(bytes));
  }
  for (const auto& e : extra) ES_RETURN_IF_ERROR(writer->Write(e.bytes));
  ES_RETURN_IF_ERROR(writer->Finish());
  WriteText(dst + "/config.json", config_json);
  std::filesystem::copy_file(src + "/tokenizer.json", dst + "/tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing);
  return Status::Ok();
}

Result<std::map<std::pair<uint32_t, uint32_t>, std::vector<std::byte>>> ReadAllExperts(Store& store,
                                                                                       const std::string& model) {
  std::vector<ExpertInfo> experts;
  Status decode;
  ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kExperts, ModelPrefix(model), [&](std::string_view, std::string_view v) {
    auto e = DecodeExpert(v);
    if (!e.ok()) decode = e.status();
    if (e.ok()) experts.push_back(std::move(e).value());
    return e.ok();
  }));
  ES_RETURN_IF_ERROR(decode);
  std::map<std::pair<uint32_t, uint32_t>, std::vector<std::byte>> out;
  for (const auto& e : experts) {
    AlignedBuffer buf(e.extent.record_length);
    ExtentRead r{e.extent, buf.span(), Status::Ok(), {}};
    store.reader().ReadBatch({&r, 1});
    ES_RETURN_IF_ERROR(r.status);
    out[{e.layer, e.expert}] = std::vector<std::byte>(r.payload.begin(), r.payload.end());
  }
  return out;
}

std::vector<size_t> CountKeys(Store& store) {
  std::vector<size_t> counts;
  for (int cf = 0; cf < kNumCfs; ++cf) {
    size_t n = 0;
    store.catalog().Scan(static_cast<Cf>(cf), "", [&](std::string_view, std::string_view) { return ++n, true; }).IgnoreError();
    counts.push_back(n);
  }
  return counts;
}

Result<RebuiltGguf> WriteTinyGguf(const std::string& path) {
  const std::string fixtures = kGgufFixtures;
  ES_ASSIGN_OR_RETURN(JsonValue meta, ParseJson(ReadText(fixtures + "/tiny-qwen3-moe.json")));
  const std::string header_bytes = ReadText(fixtures + "/" + meta.Find("file")->string_value());
  ES_ASSIGN_OR_RETURN(uint64_t file_size, meta.Find("file_size")->AsUint64());
  ES_ASSIGN_OR_RETURN(GgufHeader header, ParseGgufHeader(header_bytes, file_size));
  RebuiltGguf result;
  result.expected_xxh3 = std::stoull(meta.Find("xxh3")->string_value(), nullptr, 16);
  // The model's tensors by name.
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsTensor*>> by_name;
  for (const auto& entry : std::filesystem::directory_iterator(kTinyModel)) {
    if (entry.path().extension() != ".safetensors") continue;
    ES_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(nullptr, entry.path().string()));
    shards.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
    for (const auto& t : shards.back()->tensors()) by_name[t.name] = {shards.back().get(), &t};
  }
  auto bytes_of = [&](const std::string& name) -> Result<std::vector<std::byte>> {
    auto it = by_name.find(name);
    if (it == by_name.end()) return Status::NotFound("the tiny model has no tensor " + name);
    std::vector<std::byte> bytes(it->second.second->byte_size());
    ES_RETURN_IF_ERROR(it->second.first->ReadTensor(*it->second.second, bytes));
    return bytes;
  };
  std::string out = header_bytes;
  const std::array<std::string_view, 3> kExperts = {"gate", "up", "down"};
  for (const GgufTensorInfo& t : header.tensors()) {
    out.resize(header.data_offset() + t.offset, '\0');
    std::vector<std::string> sources;
    for (size_t p = 0; p < kExperts.size(); ++p) {
      const std::string suffix = ".ffn_" + std::string(kExperts[p]) + "_exps.weight";
      if (!t.name.ends_with(suffix)) continue;
      const std::string layer = t.name.substr(4, t.name.size() - 4 - suffix.size());
      for (uint64_t e = 0; e < t.dims.back(); ++e) {
        sources.push_back("model.layers." + layer + ".mlp.experts." + std::to_string(e) + "." +
                          std::string(kExperts[p]) + "_proj.weight");
      }
    }
    if (sources.empty()) {
      ES_ASSIGN_OR_RETURN(std::string hf, GgufDenseTensorHfName("qwen3moe", t.name));
      sources.push_back(hf);
    }
    for (const std::string& name : sources) {
      ES_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, bytes_of(name));
      if (t.type == GgmlType::kF32) {  // bf16 widened: its bits are the top half of the f32
        for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
          const char f32[4] = {0, 0, static_cast<char>(bytes[i]), static_cast<char>(bytes[i + 1])};
          out.append(f32, 4);
        }
      } else {
        out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      }
    }
  }
  out.resize(file_size, '\0');
  result.xxh3 = Xxh3(std::as_bytes(std::span(out)));
  WriteText(path, out);
  return result;
}

Result<std::unique_ptr<Store>> StoreWithModels(const std::string& dir,
                                               const std::vector<std::pair<std::string, std::string>>& models) {
  ES_ASSIGN_OR_RETURN(std::unique_ptr<Store> store, Store::Open(dir, StoreOptions{}));
  for (const auto& [name, checkpoint] : models) {
    IngestOptions o;
    o.name = name;
    ES_RETURN_IF_ERROR(IngestCheckpoint(*store, checkpoint, o).status());
  }
  return store;
}

void SuiteStoreTest::MakeSuiteDir() {
  if (dir_ == nullptr) dir_ = new TempDir();
}

Status SuiteStoreTest::OpenSuiteStore(const std::vector<std::pair<std::string, std::string>>& models) {
  MakeSuiteDir();
  ES_ASSIGN_OR_RETURN(std::unique_ptr<Store> store, StoreWithModels(dir_->Sub("store"), models));
  ES_ASSIGN_OR_RETURN(std::unique_ptr<kernels::ComputePool> pool, kernels::ComputePool::Create(0));
  store_ = store.release();
  pool_ = pool.release();
  return Status::Ok();
}

std::unique_ptr<Model> SuiteStoreTest::Load(const std::string& name, bool q8_activations) {
  kernels::CpuContext ctx;
  ctx.pool = pool_;
  ctx.q8_activations = q8_activations;
  auto m = Model::Load(*store_, name, ctx);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::move(m).value() : nullptr;
}

void SuiteStoreTest::CloseSuiteStore() {
  delete store_;
  delete pool_;
  delete dir_;
  store_ = nullptr;
  pool_ = nullptr;
  dir_ = nullptr;
}

}  // namespace es::testing
