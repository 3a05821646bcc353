// Fixtures over real checkpoints.
#include "tests/util/model_fixtures.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "ingest/ingest.h"

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

}  // namespace es::testing
