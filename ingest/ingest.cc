// The ingest pipeline.
#include "ingest/ingest.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <variant>

#include "ingest/checkpoint.h"
#include "store/records.h"

namespace es {

namespace {

constexpr size_t kChunkBytes = 8u << 20;  // one read; also the unit of the buffer pool
constexpr size_t kPoolBuffers = 6;        // chunks in flight between the reader and the writer

// One record to write, produced as a sequence of chunks.
struct WorkItem {
  enum class Kind { kAsset, kDense, kExpert } kind;
  const AssetSource* asset = nullptr;
  const DenseSource* dense = nullptr;
  const ExpertSource* expert = nullptr;
  uint64_t payload = 0;
  // Sort key: file order, so the shards are read front to back.
  size_t shard_order = 0;
  uint64_t file_offset = 0;
};

struct Chunk {
  size_t item = 0;
  std::vector<std::byte> data;  // from the pool; returned after writing
  Status status;                // a read failure ends the stream
};

// A bounded single-producer single-consumer queue of chunks, with a pool of reusable buffers.
class ChunkPipe {
 public:
  ChunkPipe() {
    for (size_t i = 0; i < kPoolBuffers; ++i) free_.emplace_back();
  }
  // Producer: a buffer to fill, or nullopt when the consumer stopped.
  std::optional<std::vector<std::byte>> TakeBuffer() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stopped_ || !free_.empty(); });
    if (stopped_) return std::nullopt;
    auto b = std::move(free_.front());
    free_.pop_front();
    return b;
  }
  void Push(Chunk c) {
    std::lock_guard<std::mutex> lock(mu_);
    full_.push_back(std::move(c));
    cv_.notify_all();
  }
  void Finish() {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    cv_.notify_all();
  }
  // Consumer: next chunk, or nullopt at the end.
  std::optional<Chunk> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ || !full_.empty(); });
    if (full_.empty()) return std::nullopt;
    Chunk c = std::move(full_.front());
    full_.pop_front();
    return c;
  }
  void Return(std::vector<std::byte> b) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(b));
    cv_.notify_all();
  }
  void Stop() {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<std::byte>> free_;
  std::deque<Chunk> full_;
  bool done_ = false;
  bool stopped_ = false;
};

// Streams every item's bytes, in order, into the pipe.
void ReadItems(const std::vector<WorkItem>& items, FileSystem& fs, ChunkPipe& pipe) {
  auto emit = [&](size_t item, auto&& fill, uint64_t length) -> bool {
    for (uint64_t off = 0; off < length || (length == 0 && off == 0); off += kChunkBytes) {
      auto buf = pipe.TakeBuffer();
      if (!buf) return false;
      size_t n = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, length - off));
      buf->resize(n);
      Status s = fill(off, std::span<std::byte>(buf->data(), n));
      pipe.Push(Chunk{item, std::move(*buf), s});
      if (!s.ok()) return false;
      if (length == 0) break;
    }
    return true;
  };
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& w = items[i];
    bool ok = true;
    switch (w.kind) {
      case WorkItem::Kind::kAsset: {
        auto file = fs.Open(w.asset->path, OpenOptions{});
        if (!file.ok()) {
          pipe.Push(Chunk{i, {}, file.status()});
          ok = false;
          break;
        }
        ok = emit(i, [&](uint64_t off, std::span<std::byte> dst) { return ReadFully(**file, off, dst); }, w.payload);
        break;
      }
      case WorkItem::Kind::kDense: {
        const TensorSource& src = w.dense->source;
        ok = emit(i, [&](uint64_t off, std::span<std::byte> dst) { return src.file->ReadTensorRange(*src.tensor, off, dst); },
                  w.payload);
        break;
      }
      case WorkItem::Kind::kExpert:
        for (const auto& p : w.expert->projections) {
          ok = emit(i, [&](uint64_t off, std::span<std::byte> dst) {
            return p.source.file->ReadTensorRange(*p.source.tensor, p.offset + off, dst);
          }, p.length);
          if (!ok) break;
        }
        break;
    }
    if (!ok) break;
  }
  pipe.Finish();
}

ModelInfo BaseModelRecord(const std::string& name, const Checkpoint& c) {
  const ModelShape& s = c.shape();
  ModelInfo m;
  m.name = name;
  m.arch = s.arch;
  m.config_json = c.config_text();
  m.num_layers = s.num_layers;
  m.experts_per_layer = s.num_experts;
  m.top_k = s.top_k;
  m.hidden_size = s.hidden_size;
  m.moe_intermediate_size = s.moe_intermediate_size;
  m.vocab_size = s.vocab_size;
  m.num_experts = c.experts().size();
  m.num_dense_tensors = c.dense().size();
  m.total_bytes = c.total_bytes();
  for (const auto& a : c.assets()) m.total_bytes += a.size;
  m.source_fingerprint = c.fingerprint();
  m.created_unix = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  return m;
}

}  // namespace

Status DeleteModel(Store& store, const std::string& name) {
  CatalogBatch batch;
  std::string prefix = ModelPrefix(name);
  for (Cf cf : {Cf::kTensors, Cf::kExperts, Cf::kUsage, Cf::kTrust, Cf::kProfiles}) {
    ES_RETURN_IF_ERROR(store.catalog().Scan(cf, prefix, [&](std::string_view key, std::string_view) {
      batch.Delete(cf, key);
      return true;
    }));
  }
  batch.Delete(Cf::kModels, ModelKey(name));
  return store.catalog().Write(batch);
}

Result<IngestResult> IngestCheckpoint(Store& store, const std::string& dir, const IngestOptions& options) {
  auto start = std::chrono::steady_clock::now();
  ES_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir, options.checkpoint_fs));
  std::string name = options.name;
  if (name.empty()) {
    std::string d = dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    name = d.substr(d.find_last_of('/') == std::string::npos ? 0 : d.find_last_of('/') + 1);
  }
  ES_RETURN_IF_ERROR(ValidateModelName(name));
  if (store.read_only()) return Status::NotSupported("ingest needs the store open for writing");

  ModelInfo record = BaseModelRecord(name, *checkpoint);
  IngestResult result;
  result.model = name;
  result.arch = record.arch;
  result.layers = record.num_layers;
  result.experts = record.num_experts;
  result.dense_tensors = record.num_dense_tensors;
  result.bytes = record.total_bytes;

  // What is already there.
  std::set<std::pair<uint32_t, uint32_t>> have_experts;
  std::set<std::string> have_dense;
  std::set<std::string> have_assets;
  auto existing = store.catalog().Get(Cf::kModels, ModelKey(name));
  if (existing.ok()) {
    ES_ASSIGN_OR_RETURN(ModelInfo old, DecodeModel(*existing));
    if (old.source_fingerprint == record.source_fingerprint) {
      if (old.complete) {
        result.unchanged = true;
        result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        return result;
      }
      result.resumed = true;
      record.created_unix = old.created_unix;
      record.assets = old.assets;
      for (const auto& a : old.assets) have_assets.insert(a.name);
      ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kExperts, ModelPrefix(name), [&](std::string_view key, std::string_view) {
        auto id = ParseExpertKey(key);
        if (id.ok()) have_experts.insert({id->layer, id->expert});
        return true;
      }));
      ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kTensors, ModelPrefix(name), [&](std::string_view key, std::string_view) {
        auto k = ParseTensorKey(key);
        if (k.ok()) have_dense.insert(k->second);
        return true;
      }));
    } else if (!options.replace) {
      return Status::InvalidArgument("model '" + name + "' already holds a different checkpoint (fingerprint " +
                                     old.source_fingerprint + ", this one " + record.source_fingerprint +
                                     "); pass --replace to replace it or --name to ingest it under another name");
    } else {
      ES_RETURN_IF_ERROR(DeleteModel(store, name));
    }
  } else if (!existing.status().IsNotFound()) {
    return existing.status();
  }

  // The work: everything not yet stored, in file order.
  std::vector<WorkItem> items;
  for (const auto& a : checkpoint->assets()) {
    if (!have_assets.count(a.name)) items.push_back({WorkItem::Kind::kAsset, &a, nullptr, nullptr, a.size, 0, 0});
  }
  std::map<const SafetensorsFile*, size_t> shard_order;
  auto order_of = [&](const SafetensorsFile* f) {
    auto [it, inserted] = shard_order.try_emplace(f, shard_order.size() + 1);
    return it->second;
  };
  for (const auto& d : checkpoint->dense()) {
    if (have_dense.count(d.canonical)) continue;
    items.push_back({WorkItem::Kind::kDense, nullptr, &d, nullptr, d.source.tensor->byte_size(),
                     order_of(d.source.file), d.source.tensor->file_offset});
  }
  for (const auto& e : checkpoint->experts()) {
    if (have_experts.count({e.layer, e.expert})) continue;
    const auto& first = e.projections.front();
    items.push_back({WorkItem::Kind::kExpert, nullptr, nullptr, &e, e.bytes(), order_of(first.source.file),
                     first.source.tensor->file_offset + first.offset});
  }
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) {
    return a.shard_order != b.shard_order ? a.shard_order < b.shard_order : a.file_offset < b.file_offset;
  });
  uint64_t total = 0;
  for (const auto& w : items) total += w.payload;

  ChunkPipe pipe;
  std::shared_ptr<FileSystem> fs = options.checkpoint_fs ? options.checkpoint_fs : DefaultFileSystem();
  std::thread reader([&] { ReadItems(items, *fs, pipe); });
  auto stop_reader = [&] {
    pipe.Stop();
    while (auto c = pipe.Pop()) {
    }
    reader.join();
  };

  Status status;
  uint64_t done = 0;
  std::unique_ptr<WriteTxn> txn;
  uint64_t txn_bytes = 0;
  auto begin = [&]() -> Status {
    ES_ASSIGN_OR_RETURN(txn, store.BeginWrite());
    txn_bytes = 0;
    return Status::Ok();
  };
  auto commit = [&](bool complete) -> Status {
    record.complete = complete;
    txn->batch().Put(Cf::kModels, ModelKey(name), EncodeModel(record));
    Status s = txn->Commit();
    txn.reset();
    return s;
  };
  status = begin();
  size_t current = SIZE_MAX;  // item whose record is open
  uint64_t item_written = 0;
  while (status.ok()) {
    auto chunk = pipe.Pop();
    if (!chunk) break;
    if (!chunk->status.ok()) {
      status = chunk->status;
      break;
    }
    const WorkItem& w = items[chunk->item];
    if (chunk->item != current) {
      current = chunk->item;
      item_written = 0;
      RecordKind kind = w.kind == WorkItem::Kind::kExpert ? RecordKind::kExpert
                        : w.kind == WorkItem::Kind::kAsset ? RecordKind::kAsset
                                                           : RecordKind::kTensor;
      std::string key = w.kind == WorkItem::Kind::kExpert ? ExpertKey(name, w.expert->layer, w.expert->expert)
                        : w.kind == WorkItem::Kind::kAsset ? AssetRecordKey(name, w.asset->name)
                                                           : TensorKey(name, w.dense->canonical);
      status = txn->BeginRecord(kind, key, w.payload);
      if (!status.ok()) break;
    }
    status = txn->WritePayload(chunk->data);
    item_written += chunk->data.size();
    done += chunk->data.size();
    pipe.Return(std::move(chunk->data));
    if (!status.ok()) break;
    if (options.progress) options.progress(done, total);
    if (item_written < w.payload) continue;
    // The record is complete: stage its catalog entry.
    auto extent = txn->FinishRecord();
    if (!extent.ok()) {
      status = extent.status();
      break;
    }
    switch (w.kind) {
      case WorkItem::Kind::kAsset:
        record.assets.push_back({w.asset->name, *extent});
        break;
      case WorkItem::Kind::kDense: {
        const SafetensorsTensor& t = *w.dense->source.tensor;
        TensorInfo info{t.name, t.dtype, t.shape, *extent, w.dense->component};
        txn->batch().Put(Cf::kTensors, TensorKey(name, w.dense->canonical), EncodeTensor(info));
        break;
      }
      case WorkItem::Kind::kExpert: {
        ExpertInfo info{w.expert->layer, w.expert->expert, *extent, {}};
        uint64_t offset = 0;
        for (const auto& p : w.expert->projections) {
          info.projections.push_back({std::string(ProjectionRoleName(p.role)), p.source_name,
                                      p.source.tensor->dtype, p.shape, offset, p.length});
          offset += p.length;
        }
        txn->batch().Put(Cf::kExperts, ExpertKey(name, w.expert->layer, w.expert->expert), EncodeExpert(info));
        break;
      }
    }
    current = SIZE_MAX;
    txn_bytes += w.payload;
    result.bytes_written += w.payload;
    if (txn_bytes >= options.commit_bytes) {
      status = commit(/*complete=*/false);
      if (status.ok()) status = begin();
    }
  }
  if (status.ok() && current != SIZE_MAX) status = Status::Corruption("checkpoint stream ended inside a record");
  if (status.ok()) status = commit(/*complete=*/true);
  if (!status.ok()) {
    if (txn) txn->Abort().IgnoreError();
    stop_reader();
    return status;
  }
  stop_reader();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace es
