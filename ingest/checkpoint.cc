// Checkpoint: opening, cross-checking and classifying a checkpoint directory.
#include "ingest/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "ingest/gguf_model.h"
#include "store/base/checksum.h"

namespace es {

namespace {

constexpr std::string_view kConfig = "config.json";
constexpr std::string_view kIndex = "model.safetensors.index.json";
constexpr std::string_view kSingle = "model.safetensors";
constexpr std::string_view kSafetensorsSuffix = ".safetensors";
constexpr uint64_t kMaxConfigBytes = 16ull << 20;
constexpr uint64_t kMaxIndexBytes = 64ull << 20;
constexpr uint64_t kMaxAssetBytes = 64ull << 20;

std::string ShapeString(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool IsFloat(DType d) {
  return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16 || d == DType::kF8E4M3 || d == DType::kF8E5M2;
}

void HashString(Xxh3Stream& h, std::string_view s) {
  uint64_t n = s.size();
  h.Update(std::as_bytes(std::span(&n, 1)));
  h.Update(std::as_bytes(std::span(s.data(), s.size())));
}

void HashU64(Xxh3Stream& h, uint64_t v) { h.Update(std::as_bytes(std::span(&v, 1))); }

class SafetensorsTensorFile final : public TensorFile {
 public:
  explicit SafetensorsTensorFile(const SafetensorsFile& file) : file_(file) {}
  const std::string& path() const override { return file_.path(); }
  Status ReadTensor(const TensorSource& tensor, uint64_t offset, std::span<std::byte> dst) const override {
    const SafetensorsTensor* own = file_.Find(tensor.name);
    if (own == nullptr) return Status::InvalidArgument(path() + " has no tensor " + tensor.name);
    return file_.ReadTensorRange(*own, offset, dst);
  }

 private:
  const SafetensorsFile& file_;
};

class GgufTensorFile final : public TensorFile {
 public:
  explicit GgufTensorFile(const GgufFile& file) : file_(file) {}
  const std::string& path() const override { return file_.path(); }
  Status ReadTensor(const TensorSource& tensor, uint64_t offset, std::span<std::byte> dst) const override {
    const GgufTensorInfo* own = file_.header().FindTensor(tensor.name);
    if (own == nullptr) return Status::InvalidArgument(path() + " has no tensor " + tensor.name);
    return file_.ReadTensorRange(*own, offset, dst);
  }

 private:
  const GgufFile& file_;
};

TensorSource SourceOf(const TensorFile& file, const SafetensorsTensor& t) {
  return TensorSource{&file, t.name, t.dtype, t.shape, t.file_offset, t.byte_size()};
}

}  // namespace

Result<std::string> ReadAsset(FileSystem& fs, const AssetSource& asset, uint64_t max_bytes) {
  if (asset.path.empty()) return asset.contents;
  return ReadSmallFile(fs, asset.path, max_bytes);
}

Status TensorSource::Read(uint64_t offset, std::span<std::byte> dst) const {
  if (permuted_heads == 0) return file->ReadTensor(*this, offset, dst);
  // Original row r = h*D + s*D/2 + i is stored as row h*D + 2i + s: read row by row (Checkpoint::ClassifyGguf
  // checked that the rows divide into heads of even size and the bytes into rows).
  const uint64_t rows = shape[0], row_bytes = bytes / rows, head_rows = rows / permuted_heads, half = head_rows / 2;
  if (offset + dst.size() > bytes) return Status::InvalidArgument("read past the end of tensor " + name);
  size_t done = 0;
  while (done < dst.size()) {
    const uint64_t at = offset + done, r = at / row_bytes, within = at % row_bytes;
    const uint64_t h = r / head_rows, j = r % head_rows;
    const uint64_t stored = h * head_rows + 2 * (j % half) + j / half;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(row_bytes - within, dst.size() - done));
    ES_RETURN_IF_ERROR(file->ReadTensor(*this, stored * row_bytes + within, dst.subspan(done, n)));
    done += n;
  }
  return Status::Ok();
}

uint64_t ExpertSource::bytes() const {
  uint64_t n = 0;
  for (const auto& p : projections) n += p.length;
  return n;
}

const std::vector<std::string>& Checkpoint::AssetNames() {
  static const std::vector<std::string> names = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
  return names;
}

Result<std::string> ReadSmallFile(FileSystem& fs, const std::string& path, uint64_t max_bytes) {
  ES_ASSIGN_OR_RETURN(auto file, fs.Open(path, OpenOptions{}));
  ES_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (size > max_bytes) {
    return Status::InvalidArgument(path + " is " + std::to_string(size) + " bytes, more than the " +
                                   std::to_string(max_bytes) + " allowed");
  }
  std::string text(size, '\0');
  ES_RETURN_IF_ERROR(ReadFully(*file, 0, std::as_writable_bytes(std::span(text.data(), text.size()))));
  return text;
}

Result<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir, std::shared_ptr<FileSystem> fs) {
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  c->fs_ = fs ? fs : DefaultFileSystem();
  c->dir_ = dir;
  ES_ASSIGN_OR_RETURN(bool exists, c->fs_->Exists(dir));
  if (!exists) return Status::NotFound("no checkpoint directory " + dir);
  if (!c->fs_->ListDir(dir).ok()) {
    // A file: users of llama.cpp hand over the weights file itself.
    if (dir.ends_with(".gguf")) {
      ES_RETURN_IF_ERROR(c->OpenGguf());
      return c;
    }
    return Status::InvalidArgument(dir + " is not a directory: ingest takes the checkpoint directory that holds "
                                   "config.json and the *.safetensors shards (" + DirName(dir) + ")");
  }
  std::string config_path = JoinPath(dir, kConfig);
  ES_ASSIGN_OR_RETURN(bool has_config, c->fs_->Exists(config_path));
  if (!has_config) return Status::InvalidArgument(dir + " has no config.json: not a Hugging Face checkpoint");
  ES_ASSIGN_OR_RETURN(c->config_text_, ReadSmallFile(*c->fs_, config_path, kMaxConfigBytes));
  auto config = ParseJson(c->config_text_);
  if (!config.ok()) return config.status().WithContext(config_path);
  c->config_ = std::move(config).value();
  ES_ASSIGN_OR_RETURN(c->adapter_, AdapterForConfig(c->config_));
  auto shape = c->adapter_->ParseConfig(c->config_);
  if (!shape.ok()) return shape.status().WithContext(config_path);
  c->shape_ = std::move(shape).value();
  ES_RETURN_IF_ERROR(c->LoadShards());
  ES_RETURN_IF_ERROR(c->Classify());

  for (const auto& name : AssetNames()) {
    std::string path = JoinPath(dir, name);
    ES_ASSIGN_OR_RETURN(bool present, c->fs_->Exists(path));
    if (!present) continue;
    // Assets are small JSON files; they must parse (strictly) so a damaged one is refused now, not at generate.
    ES_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(*c->fs_, path, kMaxAssetBytes));
    auto parsed = ParseJson(text);
    if (!parsed.ok()) return parsed.status().WithContext(path);
    c->assets_.push_back({name, path, text.size(), ""});
  }

  ES_RETURN_IF_ERROR(c->ComputeFingerprint());
  return c;
}

Status Checkpoint::ComputeFingerprint() {
  Checkpoint* c = this;
  Xxh3Stream h;
  HashString(h, c->config_text_);
  HashString(h, c->index_text_);
  for (const auto& shard : c->shards_) {
    HashU64(h, shard->file_size());
    for (const auto& t : shard->tensors()) {
      HashString(h, t.name);
      HashU64(h, static_cast<uint64_t>(t.dtype));
      for (uint64_t d : t.shape) HashU64(h, d);
      HashU64(h, t.data_begin);
      HashU64(h, t.data_end);
    }
  }
  // The weights, sampled: a block from the middle of every tensor (all of a smaller one). Two checkpoints of one
  // layout, a model and its fine-tune say, differ there; hashing all of the data would read the whole checkpoint.
  Xxh3Stream data;
  std::vector<std::byte> sample(kFingerprintSampleBytes);
  for (const auto& shard : c->shards_) {
    for (const auto& t : shard->tensors()) {
      const uint64_t size = t.data_end - t.data_begin;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(size, sample.size()));
      if (n == 0) continue;
      std::span<std::byte> part(sample.data(), n);
      ES_RETURN_IF_ERROR(shard->ReadTensorRange(t, (size - n) / 2, part));
      data.Update(part);
    }
  }
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(h.Digest()),
                static_cast<unsigned long long>(data.Digest()));
  c->fingerprint_ = hex;
  return Status::Ok();
}

Status Checkpoint::LoadShards() {
  ES_ASSIGN_OR_RETURN(auto names, fs_->ListDir(dir_));
  std::sort(names.begin(), names.end());
  bool has_index = std::find(names.begin(), names.end(), kIndex) != names.end();
  bool has_single = std::find(names.begin(), names.end(), kSingle) != names.end();
  if (!has_index && !has_single) {
    for (const auto& n : names) ES_RETURN_IF_ERROR(RefusePickleCheckpoint(JoinPath(dir_, n)));
    for (const auto& n : names) {
      if (n.ends_with(kSafetensorsSuffix)) {
        return Status::InvalidArgument(dir_ + " has .safetensors shards but no model.safetensors.index.json");
      }
    }
    return Status::InvalidArgument(dir_ + " holds no model.safetensors and no model.safetensors.index.json");
  }
  if (!has_index) {
    ES_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(fs_, JoinPath(dir_, kSingle)));
    shards_.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
    return IndexShardTensors();
  }
  std::string index_path = JoinPath(dir_, kIndex);
  ES_ASSIGN_OR_RETURN(index_text_, ReadSmallFile(*fs_, index_path, kMaxIndexBytes));
  auto index = ParseJson(index_text_);
  if (!index.ok()) return index.status().WithContext(index_path);
  const JsonValue* map = index->Find("weight_map");
  if (map == nullptr || !map->is_object()) return Status::InvalidArgument(index_path + ": no weight_map object");
  std::map<std::string, std::string> tensor_to_shard;
  std::set<std::string> shard_names;
  for (const auto& [tensor, shard] : map->object()) {
    if (!shard.is_string()) return Status::InvalidArgument(index_path + ": weight_map value for " + tensor + " is not a string");
    const std::string& s = shard.string_value();
    if (s.empty() || s.find('/') != std::string::npos || s == "." || s == ".." || !s.ends_with(kSafetensorsSuffix)) {
      return Status::InvalidArgument(index_path + ": shard name '" + s + "' is not a .safetensors file in the directory");
    }
    tensor_to_shard[tensor] = s;
    shard_names.insert(s);
  }
  if (shard_names.empty()) return Status::InvalidArgument(index_path + ": weight_map is empty");
  for (const auto& s : shard_names) {
    std::string path = JoinPath(dir_, s);
    ES_ASSIGN_OR_RETURN(bool present, fs_->Exists(path));
    if (!present) return Status::InvalidArgument(index_path + " names shard " + s + ", which is missing");
    ES_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(fs_, path));
    // Every tensor in the shard must be indexed to this shard.
    for (const auto& t : f.tensors()) {
      auto it = tensor_to_shard.find(t.name);
      if (it == tensor_to_shard.end()) {
        return Status::InvalidArgument("tensor " + t.name + " in " + s + " is not in " + std::string(kIndex));
      }
      if (it->second != s) {
        return Status::InvalidArgument(std::string(kIndex) + " puts tensor " + t.name + " in " + it->second +
                                       ", but it is in " + s);
      }
    }
    shards_.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
  }
  // And every indexed tensor must be in its shard.
  for (const auto& [tensor, shard] : tensor_to_shard) {
    bool found = false;
    for (const auto& f : shards_) {
      if (JoinPath(dir_, shard) == f->path() && f->Find(tensor) != nullptr) found = true;
    }
    if (!found) return Status::InvalidArgument(std::string(kIndex) + " lists tensor " + tensor + " in " + shard + ", which lacks it");
  }
  return IndexShardTensors();
}

Status Checkpoint::IndexShardTensors() {
  for (const auto& shard : shards_) {
    files_.push_back(std::make_unique<SafetensorsTensorFile>(*shard));
    for (const auto& t : shard->tensors()) all_tensors_.push_back(SourceOf(*files_.back(), t));
  }
  return Status::Ok();
}

Status Checkpoint::Classify() {
  const uint64_t H = shape_.hidden_size, I = shape_.moe_intermediate_size, E = shape_.num_experts;
  struct Pending {
    TensorSource proj[3];
    bool have[3] = {false, false, false};
  };
  std::map<std::pair<uint32_t, uint32_t>, Pending> per_expert;
  std::map<uint32_t, std::pair<TensorSource, TensorSource>> fused;  // layer -> (gate_up, down)
  for (const TensorSource& src : all_tensors_) {
    total_bytes_ += src.bytes;
    ES_ASSIGN_OR_RETURN(TensorRole role, adapter_->Classify(src.name, shape_));
    switch (role.kind) {
      case TensorRole::Kind::kExpert: {
        Pending& p = per_expert[{role.layer, role.expert}];
        int i = static_cast<int>(role.projection);
        if (p.have[i]) return Status::InvalidArgument("tensor " + src.name + " repeats an expert projection");
        p.proj[i] = src;
        p.have[i] = true;
        break;
      }
      case TensorRole::Kind::kFusedGateUp:
      case TensorRole::Kind::kFusedDown: {
        auto& f = fused[role.layer];
        TensorSource& slot = role.kind == TensorRole::Kind::kFusedGateUp ? f.first : f.second;
        if (slot.file != nullptr) return Status::InvalidArgument("tensor " + src.name + " repeats a fused expert tensor");
        slot = src;
        break;
      }
      case TensorRole::Kind::kDense:
      case TensorRole::Kind::kComponent:
        dense_.push_back({role.canonical, role.component, src});
        break;
    }
  }
  experts_per_layer_.assign(shape_.num_layers, 0);
  auto check = [&](const TensorSource& t, std::vector<uint64_t> want) -> Status {
    if (!IsFloat(t.dtype)) {
      return Status::InvalidArgument("expert tensor " + t.name + " has dtype " + std::string(DTypeName(t.dtype)) +
                                     "; expected a floating-point type");
    }
    if (t.shape != want) {
      return Status::InvalidArgument("expert tensor " + t.name + " has shape " + ShapeString(t.shape) +
                                     "; the config implies " + ShapeString(want));
    }
    return Status::Ok();
  };
  for (auto& [key, p] : per_expert) {
    auto [layer, expert] = key;
    if (fused.count(layer)) {
      return Status::InvalidArgument("layer " + std::to_string(layer) + " has both fused and per-expert tensors");
    }
    for (int i = 0; i < 3; ++i) {
      if (!p.have[i]) {
        return Status::InvalidArgument("expert " + std::to_string(expert) + " of layer " + std::to_string(layer) +
                                       " has no " + std::string(ProjectionRoleName(static_cast<ProjectionRole>(i))) +
                                       " projection");
      }
    }
    ES_RETURN_IF_ERROR(check(p.proj[0], {I, H}));
    ES_RETURN_IF_ERROR(check(p.proj[1], {I, H}));
    ES_RETURN_IF_ERROR(check(p.proj[2], {H, I}));
    if (p.proj[0].dtype != p.proj[1].dtype || p.proj[0].dtype != p.proj[2].dtype) {
      return Status::InvalidArgument("expert " + std::to_string(expert) + " of layer " + std::to_string(layer) +
                                     " mixes dtypes across its projections");
    }
    ExpertSource e{layer, expert, {}};
    for (int i = 0; i < 3; ++i) {
      const TensorSource& t = p.proj[i];
      e.projections.push_back({static_cast<ProjectionRole>(i), t, 0, t.bytes, t.shape, t.name});
    }
    experts_.push_back(std::move(e));
    ++experts_per_layer_[layer];
  }
  for (auto& [layer, f] : fused) {
    if (f.first.file == nullptr || f.second.file == nullptr) {
      return Status::InvalidArgument("layer " + std::to_string(layer) + " has only one of experts.gate_up_proj and experts.down_proj");
    }
    ES_RETURN_IF_ERROR(check(f.first, {E, 2 * I, H}));
    ES_RETURN_IF_ERROR(check(f.second, {E, H, I}));
    if (f.first.dtype != f.second.dtype) {
      return Status::InvalidArgument("layer " + std::to_string(layer) + " fused expert tensors mix dtypes");
    }
    uint64_t es = DTypeSize(f.first.dtype);
    uint64_t proj = I * H * es;
    for (uint32_t e = 0; e < E; ++e) {
      ExpertSource x{layer, e, {}};
      x.projections.push_back({ProjectionRole::kGate, f.first, e * 2 * proj, proj, {I, H}, f.first.name});
      x.projections.push_back({ProjectionRole::kUp, f.first, e * 2 * proj + proj, proj, {I, H}, f.first.name});
      x.projections.push_back({ProjectionRole::kDown, f.second, e * proj, proj, {H, I}, f.second.name});
      experts_.push_back(std::move(x));
      ++experts_per_layer_[layer];
    }
  }
  return FinishClassify();
}

Status Checkpoint::FinishClassify() {
  std::sort(experts_.begin(), experts_.end(), [](const ExpertSource& a, const ExpertSource& b) {
    return a.layer != b.layer ? a.layer < b.layer : a.expert < b.expert;
  });
  std::set<std::string> canon;
  for (const auto& d : dense_) {
    if (!canon.insert(d.canonical).second) {
      return Status::InvalidArgument("two tensors map to the same name " + d.canonical);
    }
  }
  if (experts_.empty()) return Status::InvalidArgument(dir_ + " holds no expert tensors: not a mixture-of-experts checkpoint");
  return Status::Ok();
}

// A GGUF file: the config and tokenizer come from its metadata (ingest/gguf_model.h), the tensors keep their
// bytes, and each expert is one slab of the layer's 3-D expert tensors. A split model (llama.cpp's
// PREFIX-0000i-of-0000n.gguf, given its first file) is read from all of its files.
Status Checkpoint::OpenGguf() {
  ES_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(fs_, dir_));
  ggufs_.push_back(std::make_unique<GgufFile>(std::move(file)));
  ES_RETURN_IF_ERROR(OpenGgufSplits());
  const GgufHeader& header = ggufs_.front()->header();
  auto config_text = GgufConfigJson(header);
  if (!config_text.ok()) return config_text.status().WithContext(dir_);
  config_text_ = std::move(config_text).value();
  ES_ASSIGN_OR_RETURN(config_, ParseJson(config_text_));
  ES_ASSIGN_OR_RETURN(adapter_, AdapterForConfig(config_));
  auto shape = adapter_->ParseConfig(config_);
  if (!shape.ok()) return shape.status().WithContext(dir_);
  shape_ = std::move(shape).value();
  for (const auto& g : ggufs_) files_.push_back(std::make_unique<GgufTensorFile>(*g));
  ES_RETURN_IF_ERROR(ClassifyGguf());
  // The tokenizer the metadata describes; a file without one (or of an unsupported kind) is ingested without it,
  // as a safetensors checkpoint without tokenizer.json is.
  auto tokenizer = GgufTokenizerJson(header);
  auto tokenizer_config = GgufTokenizerConfigJson(header);
  if (tokenizer.ok() && tokenizer_config.ok()) {
    assets_.push_back({"tokenizer.json", "", tokenizer->size(), *tokenizer});
    assets_.push_back({"tokenizer_config.json", "", tokenizer_config->size(), *tokenizer_config});
  } else if (!tokenizer.ok() && !tokenizer.status().IsNotSupported() && !tokenizer.status().IsNotFound()) {
    return tokenizer.status().WithContext(dir_);
  }
  // The layout (each file's header bytes, which hold every key and tensor info, and size) and a sample of every
  // tensor's data.
  Xxh3Stream layout;
  for (const auto& g : ggufs_) {
    std::string header_bytes(g->header().data_offset(), '\0');
    ES_ASSIGN_OR_RETURN(auto raw, fs_->Open(g->path(), OpenOptions{}));
    ES_RETURN_IF_ERROR(ReadFully(*raw, 0, std::as_writable_bytes(std::span(header_bytes))));
    HashString(layout, header_bytes);
    HashU64(layout, g->file_size());
  }
  Xxh3Stream data;
  std::vector<std::byte> sample(kFingerprintSampleBytes);
  for (const TensorSource& t : all_tensors_) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(t.bytes, sample.size()));
    if (n == 0) continue;
    std::span<std::byte> part(sample.data(), n);
    ES_RETURN_IF_ERROR(t.Read((t.bytes - n) / 2, part));
    data.Update(part);
  }
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(layout.Digest()),
                static_cast<unsigned long long>(data.Digest()));
  fingerprint_ = hex;
  return Status::Ok();
}

// With `split.count` above 1 in the first file's metadata, opens the other files of the split beside it: the first
// must be PREFIX-00001-of-0000n.gguf (split.no 0), file i is PREFIX-0000i-of-0000n.gguf with split.no i - 1, each
// says the same count, and together they hold the split.tensors.count tensors the first announces.
Status Checkpoint::OpenGgufSplits() {
  const GgufHeader& first = ggufs_.front()->header();
  if (first.Find("split.count") == nullptr) return Status::Ok();
  auto fail = [&](const std::string& why) { return Status::InvalidArgument(dir_ + ": " + why); };
  ES_ASSIGN_OR_RETURN(uint64_t count, first.GetUint("split.count"));
  auto no = first.GetUint("split.no");
  if (!no.ok()) return no.status().WithContext(dir_);
  if (count <= 1) {
    if (*no != 0) return fail("split.no " + std::to_string(*no) + " of split.count " + std::to_string(count));
    return Status::Ok();
  }
  if (count > 99999) return fail("split.count " + std::to_string(count) + " is more than a split file name can number");
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "-%05d-of-%05d.gguf", 1, static_cast<int>(count));
  if (*no != 0) {
    return fail("is file " + std::to_string(*no + 1) + " of a split of " + std::to_string(count) + ": give the first (" +
                suffix + ")");
  }
  if (!dir_.ends_with(suffix)) {
    return fail(std::string("is the first of ") + std::to_string(count) + " split files, so its name must end in " +
                suffix + " (llama.cpp's naming), by which the others are found");
  }
  const std::string prefix = dir_.substr(0, dir_.size() - std::strlen(suffix));
  uint64_t tensors = first.tensors().size();
  for (uint64_t i = 1; i < count; ++i) {
    std::snprintf(suffix, sizeof(suffix), "-%05d-of-%05d.gguf", static_cast<int>(i + 1), static_cast<int>(count));
    const std::string path = prefix + suffix;
    ES_ASSIGN_OR_RETURN(bool exists, fs_->Exists(path));
    if (!exists) return Status::NotFound(dir_ + " is split into " + std::to_string(count) + " files, and " + path + " is missing");
    ES_ASSIGN_OR_RETURN(GgufFile part, GgufFile::Open(fs_, path));
    auto part_no = part.header().GetUint("split.no");
    auto part_count = part.header().GetUint("split.count");
    if (!part_no.ok() || !part_count.ok() || *part_no != i || *part_count != count) {
      return Status::InvalidArgument(path + ": not file " + std::to_string(i + 1) + " of the " + std::to_string(count) +
                                     " that " + dir_ + " begins (its split.no and split.count say otherwise)");
    }
    tensors += part.header().tensors().size();
    ggufs_.push_back(std::make_unique<GgufFile>(std::move(part)));
  }
  auto announced = first.GetUint("split.tensors.count");
  if (!announced.ok()) return announced.status().WithContext(dir_);
  if (*announced != tensors) {
    return fail("split.tensors.count says " + std::to_string(*announced) + " tensors, the " + std::to_string(count) +
                " files hold " + std::to_string(tensors));
  }
  return Status::Ok();
}

Status Checkpoint::ClassifyGguf() {
  ES_ASSIGN_OR_RETURN(const std::string arch, ggufs_.front()->header().GetString("general.architecture"));
  const uint64_t H = shape_.hidden_size, I = shape_.moe_intermediate_size, E = shape_.num_experts;
  // layer -> gate, up, down 3-D tensors
  std::map<uint32_t, std::array<TensorSource, 3>> experts;
  std::set<std::string_view> names;
  for (size_t f = 0; f < ggufs_.size(); ++f) {
    const TensorFile& file = *files_[f];
    for (const GgufTensorInfo& t : ggufs_[f]->header().tensors()) {
      if (!names.insert(t.name).second) {
        return Status::InvalidArgument(dir_ + ": tensor " + t.name + " appears in two of its split files");
      }
      total_bytes_ += t.bytes;
      const GgmlTypeInfo type = GgmlTypeInfoOf(t.type);
      if (!type.supported) {
        return Status::NotSupported(dir_ + ": tensor " + t.name + " is " + std::string(type.name) +
                                    "; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, "
                                    "IQ4_XS");
      }
      // Plain types keep their dtype; block formats are stored verbatim with their GGML type.
      const auto [dtype, ggml_type] = StoredElementsOf(t.type);
      // GGUF lists dimensions row length first; Hugging Face shapes put it last.
      std::vector<uint64_t> shape(t.dims.rbegin(), t.dims.rend());
      TensorSource src{&file, t.name, dtype, shape, t.file_offset, t.bytes, ggml_type};
      all_tensors_.push_back(src);
      constexpr std::array<std::string_view, 3> kExpertSuffixes = {".ffn_gate_exps.weight", ".ffn_up_exps.weight",
                                                                   ".ffn_down_exps.weight"};
      bool is_expert = false;
      for (size_t role = 0; role < kExpertSuffixes.size(); ++role) {
        if (!t.name.starts_with("blk.") || !t.name.ends_with(kExpertSuffixes[role])) continue;
        std::string_view digits = std::string_view(t.name).substr(4, t.name.size() - 4 - kExpertSuffixes[role].size());
        ES_ASSIGN_OR_RETURN(uint32_t layer, ParseNameIndex(digits, shape_.num_layers, "layer", t.name));
        if (!digits.empty()) return Status::InvalidArgument(dir_ + ": tensor " + t.name + ": malformed name");
        TensorSource& slot = experts[layer][role];
        if (slot.file != nullptr) return Status::InvalidArgument(dir_ + ": tensor " + t.name + " appears twice");
        slot = src;
        is_expert = true;
      }
      if (is_expert) continue;
      auto hf = GgufDenseTensorHfName(arch, t.name);
      if (!hf.ok()) return hf.status().WithContext(dir_);
      auto heads = GgufPermutedHeads(ggufs_.front()->header(), t.name);  // split files hold no metadata
      if (!heads.ok()) return heads.status().WithContext(dir_);
      if (*heads != 0) {
        const uint64_t rows = src.shape.empty() ? 0 : src.shape[0];
        if (rows == 0 || rows % *heads != 0 || (rows / *heads) % 2 != 0 || src.bytes % rows != 0) {
          return Status::InvalidArgument(dir_ + ": tensor " + t.name + " has " + std::to_string(rows) +
                                         " rows, not an even number per each of its " + std::to_string(*heads) +
                                         " heads");
        }
        src.permuted_heads = *heads;
      }
      ES_ASSIGN_OR_RETURN(TensorRole role, adapter_->Classify(*hf, shape_));
      if (role.kind != TensorRole::Kind::kDense) {
        return Status::InvalidArgument(dir_ + ": tensor " + t.name + " maps to " + *hf + ", which is not a dense tensor");
      }
      dense_.push_back({role.canonical, role.component, src});
    }
  }
  experts_per_layer_.assign(shape_.num_layers, 0);
  for (const auto& [layer, t] : experts) {
    const std::array<std::vector<uint64_t>, 3> want = {{{E, I, H}, {E, I, H}, {E, H, I}}};
    for (size_t role = 0; role < 3; ++role) {
      if (t[role].file == nullptr) {
        return Status::InvalidArgument(dir_ + ": layer " + std::to_string(layer) + " has no " +
                                       std::string(ProjectionRoleName(static_cast<ProjectionRole>(role))) +
                                       " expert tensor");
      }
      if (t[role].shape != want[role]) {
        return Status::InvalidArgument(dir_ + ": expert tensor " + t[role].name + " has shape " +
                                       ShapeString(t[role].shape) + "; the metadata implies " + ShapeString(want[role]));
      }
    }
    // The three may differ in format (Q4_K_M files keep down_proj in Q6_K): each projection says its own.
    for (uint32_t e = 0; e < E; ++e) {
      ExpertSource x{layer, e, {}};
      for (size_t role = 0; role < 3; ++role) {
        const uint64_t slab = t[role].bytes / E;
        std::vector<uint64_t> shape(t[role].shape.begin() + 1, t[role].shape.end());
        x.projections.push_back({static_cast<ProjectionRole>(role), t[role], e * slab, slab, shape, t[role].name});
      }
      experts_.push_back(std::move(x));
      ++experts_per_layer_[layer];
    }
  }
  return FinishClassify();
}

}  // namespace es
