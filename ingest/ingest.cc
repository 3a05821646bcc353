// The ingest pipeline.
#include "ingest/ingest.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <regex>
#include <set>
#include <thread>
#include <variant>

#include "ingest/checkpoint.h"
#include "store/records.h"
#include "store/base/thread_pool.h"

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
        if (w.asset->path.empty()) {  // made from the checkpoint's metadata
          const std::string& bytes = w.asset->contents;
          ok = emit(i, [&](uint64_t off, std::span<std::byte> dst) {
            std::memcpy(dst.data(), bytes.data() + off, dst.size());
            return Status::Ok();
          }, w.payload);
          break;
        }
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
        ok = emit(i, [&](uint64_t off, std::span<std::byte> dst) { return src.Read(off, dst); }, w.payload);
        break;
      }
      case WorkItem::Kind::kExpert:
        for (const auto& p : w.expert->projections) {
          ok = emit(i, [&](uint64_t off, std::span<std::byte> dst) {
            return p.source.Read(p.offset + off, dst);
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

// Wall-clock seconds since `start`, for the result.
double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The model name: the option, or else the last component of the checkpoint directory.
std::string ModelNameFor(const std::string& dir, const IngestOptions& options) {
  if (!options.name.empty()) return options.name;
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  std::string base = d.substr(d.find_last_of('/') == std::string::npos ? 0 : d.find_last_of('/') + 1);
  constexpr std::string_view kGgufSuffix = ".gguf";  // a GGUF file is named after its model
  if (base.size() > kGgufSuffix.size() && base.ends_with(kGgufSuffix)) {
    base.resize(base.size() - kGgufSuffix.size());
    // The first file of a split model (PREFIX-00001-of-0000N) is named after the model too.
    static const std::regex kSplit("(.+)-00001-of-[0-9]{5}");
    std::smatch m;
    if (std::regex_match(base, m, kSplit)) base = m[1].str();
  }
  return base;
}

// The result's description of the model, before anything is written.
IngestResult ResultFor(const ModelInfo& record) {
  IngestResult result;
  result.model = record.name;
  result.arch = record.arch;
  result.layers = record.num_layers;
  result.experts = record.num_experts;
  result.dense_tensors = record.num_dense_tensors;
  result.bytes = record.total_bytes;
  return result;
}

// What an interrupted ingest of the same checkpoint already committed.
struct StoredRecords {
  std::set<std::pair<uint32_t, uint32_t>> experts;  // (layer, expert)
  std::set<std::string> dense;                      // canonical tensor names
  std::set<std::string> assets;
};

// Resuming: the new record keeps the interrupted ingest's creation time and assets, and `stored` lists the
// records it committed.
Status CollectStored(Store& store, const ModelInfo& old, ModelInfo& record, StoredRecords& stored) {
  const std::string prefix = ModelPrefix(record.name);
  record.created_unix = old.created_unix;
  record.assets = old.assets;
  for (const auto& a : old.assets) stored.assets.insert(a.name);
  ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kExperts, prefix, [&](std::string_view key, std::string_view) {
    auto id = ParseExpertKey(key);
    if (id.ok()) stored.experts.insert({id->layer, id->expert});
    return true;
  }));
  return store.catalog().Scan(Cf::kTensors, prefix, [&](std::string_view key, std::string_view) {
    auto k = ParseTensorKey(key);
    if (k.ok()) stored.dense.insert(k->second);
    return true;
  });
}

// The same checkpoint's weights are stored completely. Its assets are not part of the fingerprint (a tokenizer is
// often added to a checkpoint later): those the stored model lacks or holds with other contents are planned, the
// rest counts as stored. Nothing to write: the result is marked unchanged.
Status ReconcileAssets(Store& store, const Checkpoint& checkpoint, const ModelInfo& old, ModelInfo& record,
                       IngestResult& result, StoredRecords& stored) {
  std::vector<std::string> changed;
  for (const AssetSource& a : checkpoint.assets()) {
    auto held = store.ReadAsset(old, a.name);
    if (held.ok()) {
      ES_ASSIGN_OR_RETURN(std::string text, ReadAsset(checkpoint.fs(), a, a.size));
      if (text == *held) continue;
    } else if (!held.status().IsNotFound()) {
      return held.status();
    }
    changed.push_back(a.name);
  }
  if (changed.empty()) {
    result.unchanged = true;
    return Status::Ok();
  }
  ES_RETURN_IF_ERROR(CollectStored(store, old, record, stored));
  // The new versions replace the old records in the model record; the old ones become dead space.
  std::erase_if(record.assets, [&](const AssetInfo& a) {
    return std::find(changed.begin(), changed.end(), a.name) != changed.end();
  });
  for (const std::string& name : changed) stored.assets.erase(name);
  result.assets_updated = std::move(changed);
  return Status::Ok();
}

// Reconciles the new record with a model already stored under its name, before anything is written. The same
// checkpoint, complete: the result is marked unchanged. The same one, interrupted: marked resumed, with what
// is stored in `stored`. A different one: refused unless `replace`, in which case `replacing` is set: the old
// model's entries are deleted in the first transaction of the new one, so that an ingest stopped at any point leaves
// the old model whole or the new one (complete, or incomplete and resumable), never neither.
Status ReconcileWithStored(Store& store, const Checkpoint& checkpoint, const IngestOptions& options,
                           ModelInfo& record, IngestResult& result, StoredRecords& stored, bool& replacing) {
  const std::string& name = record.name;
  auto existing = store.catalog().Get(Cf::kModels, ModelKey(name));
  if (!existing.ok()) return existing.status().IsNotFound() ? Status::Ok() : existing.status();
  ES_ASSIGN_OR_RETURN(ModelInfo old, DecodeModel(*existing));
  if (SameSourceFingerprint(old.source_fingerprint, record.source_fingerprint)) {
    if (old.complete) return ReconcileAssets(store, checkpoint, old, record, result, stored);
    result.resumed = true;
    return CollectStored(store, old, record, stored);
  }
  if (!options.replace) {
    return Status::InvalidArgument("model '" + name + "' already holds a different checkpoint (fingerprint " +
                                   old.source_fingerprint + ", this one " + record.source_fingerprint +
                                   "); set `replace` to replace it, or `name` to ingest it under another name");
  }
  replacing = true;
  return Status::Ok();
}

// The work: everything of the checkpoint not yet stored, sorted into file order so the shards are read front
// to back.
std::vector<WorkItem> PlanWork(const Checkpoint& checkpoint, const StoredRecords& stored) {
  std::vector<WorkItem> items;
  for (const auto& a : checkpoint.assets()) {
    if (!stored.assets.count(a.name)) items.push_back({WorkItem::Kind::kAsset, &a, nullptr, nullptr, a.size, 0, 0});
  }
  std::map<const TensorFile*, size_t> shard_order;
  auto order_of = [&](const TensorFile* f) {
    auto [it, inserted] = shard_order.try_emplace(f, shard_order.size() + 1);
    return it->second;
  };
  for (const auto& d : checkpoint.dense()) {
    if (stored.dense.count(d.canonical)) continue;
    items.push_back({WorkItem::Kind::kDense, nullptr, &d, nullptr, d.source.bytes, order_of(d.source.file),
                     d.source.file_offset});
  }
  for (const auto& e : checkpoint.experts()) {
    if (stored.experts.count({e.layer, e.expert})) continue;
    const auto& first = e.projections.front();
    items.push_back({WorkItem::Kind::kExpert, nullptr, nullptr, &e, e.bytes(), order_of(first.source.file),
                     first.source.file_offset + first.offset});
  }
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) {
    return a.shard_order != b.shard_order ? a.shard_order < b.shard_order : a.file_offset < b.file_offset;
  });
  return items;
}

// IngestWriter::current when no record is open.
constexpr size_t kNoItem = SIZE_MAX;

// The write side of an ingest: the open transaction, the record being streamed into it, and the model record
// committed with every transaction.
struct IngestWriter {
  IngestWriter(Store& store, const IngestOptions& options, ModelInfo& record, IngestResult& result, uint64_t total)
      : store(store), options(options), record(record), result(result), total(total) {}

  Store& store;
  const IngestOptions& options;
  ModelInfo& record;
  IngestResult& result;
  const uint64_t total;  // payload bytes of all the items, for progress
  bool replacing = false;  // the first transaction deletes the model stored under this name
  std::unique_ptr<WriteTxn> txn;
  uint64_t txn_bytes = 0;
  size_t current = kNoItem;  // item whose record is open
  size_t closed = 0;         // items whose records are finished
  uint64_t item_written = 0;
  uint64_t done = 0;
};

// Opens the next transaction.
Status BeginTxn(IngestWriter& w) {
  ES_ASSIGN_OR_RETURN(w.txn, w.store.BeginWrite());
  w.txn_bytes = 0;
  if (w.replacing) {
    // Read under the write lock; the batch's later puts of the same keys win over these deletions.
    ES_RETURN_IF_ERROR(StageModelDeletion(w.store.catalog(), w.record.name, w.txn->batch()));
    w.replacing = false;
  }
  return Status::Ok();
}

// Commits the open transaction together with the model record; the transaction is gone afterwards either way.
Status CommitTxn(IngestWriter& w, bool complete) {
  w.record.complete = complete;
  w.txn->batch().Put(Cf::kModels, ModelKey(w.record.name), EncodeModel(w.record));
  Status s = w.txn->Commit();
  w.txn.reset();
  return s;
}

// The kind of record an item is stored as.
RecordKind RecordKindOf(const WorkItem& item) {
  return item.kind == WorkItem::Kind::kExpert  ? RecordKind::kExpert
         : item.kind == WorkItem::Kind::kAsset ? RecordKind::kAsset
                                               : RecordKind::kTensor;
}

// The key an item's record is written under.
std::string RecordKeyOf(const std::string& model, const WorkItem& item) {
  return item.kind == WorkItem::Kind::kExpert  ? ExpertKey(model, item.expert->layer, item.expert->expert)
         : item.kind == WorkItem::Kind::kAsset ? AssetRecordKey(model, item.asset->name)
                                               : TensorKey(model, item.dense->canonical);
}

// Puts the catalog entry of a finished record: an asset into the model record, a tensor or an expert into the
// transaction's batch.
void StageCatalogEntry(IngestWriter& w, const WorkItem& item, const Extent& extent) {
  const std::string& name = w.record.name;
  switch (item.kind) {
    case WorkItem::Kind::kAsset:
      w.record.assets.push_back({item.asset->name, extent});
      break;
    case WorkItem::Kind::kDense: {
      const TensorSource& t = item.dense->source;
      TensorInfo info{t.name, t.dtype, t.shape, extent, item.dense->component, t.ggml_type};
      w.txn->batch().Put(Cf::kTensors, TensorKey(name, item.dense->canonical), EncodeTensor(info));
      break;
    }
    case WorkItem::Kind::kExpert: {
      ExpertInfo info{item.expert->layer, item.expert->expert, extent, {}};
      uint64_t offset = 0;
      for (const auto& p : item.expert->projections) {
        info.projections.push_back({std::string(ProjectionRoleName(p.role)), p.source_name, p.source.dtype,
                                    p.shape, offset, p.length, p.source.ggml_type});
        offset += p.length;
      }
      w.txn->batch().Put(Cf::kExperts, ExpertKey(name, item.expert->layer, item.expert->expert), EncodeExpert(info));
      break;
    }
  }
}

// The item's payload is all written: finishes its record, stages its catalog entry, and commits (opening the
// next transaction) once the transaction holds commit_bytes.
Status CloseRecord(IngestWriter& w, const WorkItem& item) {
  ES_ASSIGN_OR_RETURN(Extent extent, w.txn->FinishRecord());
  StageCatalogEntry(w, item, extent);
  w.current = kNoItem;
  ++w.closed;
  w.txn_bytes += item.payload;
  w.result.bytes_written += item.payload;
  if (w.txn_bytes < w.options.commit_bytes) return Status::Ok();
  ES_RETURN_IF_ERROR(CommitTxn(w, /*complete=*/false));
  return BeginTxn(w);
}

// Appends one chunk to its item's record, opening the record on the item's first chunk and closing it on its
// last. The chunk's buffer goes back to the pipe once written.
Status WriteChunk(IngestWriter& w, const std::vector<WorkItem>& items, Chunk& chunk, ChunkPipe& pipe) {
  ES_RETURN_IF_ERROR(chunk.status);
  const WorkItem& item = items[chunk.item];
  if (chunk.item != w.current) {
    w.current = chunk.item;
    w.item_written = 0;
    ES_RETURN_IF_ERROR(w.txn->BeginRecord(RecordKindOf(item), RecordKeyOf(w.record.name, item), item.payload));
  }
  Status s = w.txn->WritePayload(chunk.data);
  w.item_written += chunk.data.size();
  w.done += chunk.data.size();
  pipe.Return(std::move(chunk.data));
  ES_RETURN_IF_ERROR(s);
  if (w.options.progress) w.options.progress(w.done, w.total);
  if (w.item_written < item.payload) return Status::Ok();
  return CloseRecord(w, item);
}

// Writes the streamed items into records, in transactions of commit_bytes, the last one marking the model
// complete. On failure the open transaction is rolled back; the pipe may still hold chunks.
Status WriteItems(IngestWriter& w, const std::vector<WorkItem>& items, ChunkPipe& pipe) {
  Status status = BeginTxn(w);
  while (status.ok()) {
    std::optional<Chunk> chunk = pipe.Pop();
    if (!chunk) break;
    status = WriteChunk(w, items, *chunk, pipe);
  }
  if (status.ok() && w.current != kNoItem) status = Status::Corruption("checkpoint stream ended inside a record");
  // A reader that stopped early (refused memory) ends the stream between records: never mark that complete.
  if (status.ok() && w.closed != items.size()) {
    status = Status::ResourceExhausted("out of memory reading the checkpoint (" + std::to_string(w.closed) + " of " +
                                       std::to_string(items.size()) + " records read)");
  }
  if (status.ok()) status = CommitTxn(w, /*complete=*/true);
  if (!status.ok() && w.txn) w.txn->Abort().IgnoreError();
  return status;
}

// Ends the reader thread: unblocks it if it waits for a buffer, drains what it pushed, and joins it.
void StopReader(ChunkPipe& pipe, std::thread& reader) {
  pipe.Stop();
  while (pipe.Pop()) {
  }
  reader.join();
}

// Reads the items on a reader thread while this thread writes them; the reader is stopped and joined on every
// path, after the writer rolled back whatever failed.
Status IngestItems(Store& store, FileSystem& fs, const std::vector<WorkItem>& items, const IngestOptions& options,
                   ModelInfo& record, IngestResult& result, bool replacing) {
  uint64_t total = 0;
  for (const auto& w : items) total += w.payload;
  IngestWriter writer(store, options, record, result, total);
  writer.replacing = replacing;

  ChunkPipe pipe;
  // The reader ends the stream if it is refused memory (an exception must not leave its thread); the writer then
  // finds records missing.
  ES_ASSIGN_OR_RETURN(std::thread reader, StartThread([&] {
    try {
      ReadItems(items, fs, pipe);
    } catch (...) {
      pipe.Finish();
    }
  }, "ingest's reader"));
  // Joins the reader on every way out, an exception (out of memory) included, before `reader` is destroyed.
  struct JoinReader {
    ChunkPipe& pipe;
    std::thread& reader;
    ~JoinReader() {
      if (reader.joinable()) StopReader(pipe, reader);
    }
  } join_reader{pipe, reader};
  return WriteItems(writer, items, pipe);
}

}  // namespace


Result<IngestResult> IngestCheckpoint(Store& store, const std::string& dir, const IngestOptions& options) {
  ES_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir, options.checkpoint_fs));
  return IngestCheckpoint(store, *checkpoint, options);
}

Result<IngestResult> IngestCheckpoint(Store& store, const Checkpoint& checkpoint, const IngestOptions& options) {
  auto start = std::chrono::steady_clock::now();
  std::string name = ModelNameFor(checkpoint.dir(), options);
  ES_RETURN_IF_ERROR(ValidateModelName(name));
  if (store.read_only()) return Status::NotSupported("ingest needs the store open for writing");

  ModelInfo record = BaseModelRecord(name, checkpoint);
  IngestResult result = ResultFor(record);
  StoredRecords stored;
  result.has_tokenizer = std::any_of(checkpoint.assets().begin(), checkpoint.assets().end(),
                                     [](const AssetSource& a) { return a.name == "tokenizer.json"; });
  bool replacing = false;
  ES_RETURN_IF_ERROR(ReconcileWithStored(store, checkpoint, options, record, result, stored, replacing));
  if (!result.unchanged) {
    std::vector<WorkItem> items = PlanWork(checkpoint, stored);
    ES_RETURN_IF_ERROR(IngestItems(store, checkpoint.fs(), items, options, record, result, replacing));
  }
  result.seconds = SecondsSince(start);
  return result;
}

}  // namespace es
