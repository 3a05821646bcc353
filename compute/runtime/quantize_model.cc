// QuantizeModel implementation.
#include "compute/runtime/quantize_model.h"

#include <chrono>
#include <cstring>
#include <set>

#include "compute/kernels/ggml_blocks.h"
#include "compute/kernels/ggml_quantize.h"
#include "store/base/aligned_buffer.h"
#include "store/base/float16.h"
#include "store/records.h"

namespace es {

namespace {

// What a projection or tensor holds: a plain dtype, or a GGML block format.
struct Encoding {
  DType dtype = DType::kUnknown;
  int32_t ggml_type = kNoGgmlType;
};

// The stored form of `type`: F32, F16 and BF16 as plain dtypes (as ingest stores them), the rest as blocks.
Encoding EncodingOf(GgmlType type) {
  switch (type) {
    case GgmlType::kF32: return {DType::kF32, kNoGgmlType};
    case GgmlType::kF16: return {DType::kF16, kNoGgmlType};
    case GgmlType::kBF16: return {DType::kBF16, kNoGgmlType};
    default: return {DType::kUnknown, static_cast<int32_t>(type)};
  }
}

// The GGML type a stored encoding is (plain dtypes as their GGML twins); nullopt for a dtype no block row holds.
std::optional<GgmlType> GgmlTypeOf(DType dtype, int32_t ggml_type) {
  if (ggml_type != kNoGgmlType) return static_cast<GgmlType>(ggml_type);
  switch (dtype) {
    case DType::kF32: return GgmlType::kF32;
    case DType::kF16: return GgmlType::kF16;
    case DType::kBF16: return GgmlType::kBF16;
    default: return std::nullopt;
  }
}

// Re-encodes a [rows, cols] matrix of `from` into `to`, row by row.
Result<std::vector<std::byte>> Reencode(std::span<const std::byte> bytes, GgmlType from, GgmlType to, uint64_t rows,
                                        uint64_t cols, const std::string& what) {
  const std::optional<uint64_t> in_row = GgmlRowBytes(from, cols), out_row = GgmlRowBytes(to, cols);
  if (!in_row || !out_row || *in_row * rows != bytes.size()) {
    return Status::Corruption(what + ": " + std::to_string(bytes.size()) + " bytes are not " + std::to_string(rows) +
                              " rows of " + std::to_string(cols) + " " + std::string(GgmlTypeInfoOf(from).name) +
                              " values");
  }
  std::vector<std::byte> out(*out_row * rows);
  std::vector<float> row(cols);
  for (uint64_t r = 0; r < rows; ++r) {
    ES_RETURN_IF_ERROR(DequantizeGgmlRow(from, bytes.subspan(r * *in_row, *in_row), row).WithContext(what));
    ES_RETURN_IF_ERROR(QuantizeGgmlRow(to, row, std::span(out).subspan(r * *out_row, *out_row)).WithContext(what));
  }
  return out;
}

// A matrix's rows and row length (shapes put the row length last; anything of more dimensions is rows of it).
std::pair<uint64_t, uint64_t> RowsCols(const std::vector<uint64_t>& shape) {
  if (shape.empty()) return {0, 0};
  uint64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  return {rows, shape.back()};
}

std::string FallbackKey(const std::string& role, GgmlType from, GgmlType to) {
  return role + " " + std::string(GgmlTypeInfoOf(from).name) + " -> " + std::string(GgmlTypeInfoOf(to).name);
}

// The fingerprint of a quantized copy: its source's and the settings, so that the same run again is recognised.
std::string FingerprintOf(const ModelInfo& source, const QuantizeOptions& o) {
  return "quantize(" + source.source_fingerprint + ";experts=" + std::string(GgmlTypeInfoOf(o.experts).name) +
         ";dense=" + (o.dense ? std::string(GgmlTypeInfoOf(*o.dense).name) : std::string("keep")) + ")";
}

// One record read whole and verified.
Result<AlignedBuffer> ReadRecord(Store& store, const Extent& extent, std::span<const std::byte>& payload,
                                 const std::string& what) {
  AlignedBuffer buffer(extent.record_length);
  if (buffer.data() == nullptr) return Status::ResourceExhausted("no memory to read " + what);
  ExtentRead read{extent, std::span<std::byte>(buffer.data(), buffer.size())};
  store.reader().ReadBatch(std::span(&read, 1));
  ES_RETURN_IF_ERROR(read.status.WithContext(what));
  payload = read.payload;
  return buffer;
}

// The write side: the open transaction and the model record committed with each one.
struct Writer {
  Store& store;
  const QuantizeOptions& options;
  ModelInfo& record;
  bool replacing = false;
  std::unique_ptr<WriteTxn> txn;
  uint64_t txn_bytes = 0;

  Status Begin() {
    ES_ASSIGN_OR_RETURN(txn, store.BeginWrite());
    txn_bytes = 0;
    if (replacing) {
      ES_RETURN_IF_ERROR(StageModelDeletion(store.catalog(), record.name, txn->batch()));
      replacing = false;
    }
    return Status::Ok();
  }
  Status Commit(bool complete) {
    record.complete = complete;
    txn->batch().Put(Cf::kModels, ModelKey(record.name), EncodeModel(record));
    Status s = txn->Commit();
    txn.reset();
    return s;
  }
  // After a record: commits once the transaction holds commit_bytes.
  Status Wrote(uint64_t bytes) {
    txn_bytes += bytes;
    if (txn_bytes < options.commit_bytes) return Status::Ok();
    ES_RETURN_IF_ERROR(Commit(false));
    return Begin();
  }
};

// What an interrupted run already committed.
struct Stored {
  std::set<std::string> experts, tensors, assets;  // catalog keys (experts, tensors), asset names
};

Status CollectStored(Store& store, const ModelInfo& old, ModelInfo& record, Stored& stored) {
  record.created_unix = old.created_unix;
  record.assets = old.assets;
  for (const AssetInfo& a : old.assets) stored.assets.insert(a.name);
  const std::string prefix = ModelPrefix(record.name);
  ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kExperts, prefix, [&](std::string_view key, std::string_view) {
    stored.experts.insert(std::string(key.substr(prefix.size())));
    return true;
  }));
  return store.catalog().Scan(Cf::kTensors, prefix, [&](std::string_view key, std::string_view) {
    stored.tensors.insert(std::string(key.substr(prefix.size())));
    return true;
  });
}

Status CopyAssets(Writer& w, const ModelInfo& source, const Stored& stored, QuantizeResult& result) {
  for (const AssetInfo& a : source.assets) {
    if (stored.assets.count(a.name)) continue;
    ES_ASSIGN_OR_RETURN(std::string bytes, w.store.ReadAsset(source, a.name));
    ES_ASSIGN_OR_RETURN(Extent extent, w.txn->AppendRecord(RecordKind::kAsset, AssetRecordKey(w.record.name, a.name),
                                                           std::as_bytes(std::span(bytes))));
    w.record.assets.push_back({a.name, extent});
    result.bytes_written += bytes.size();
    ES_RETURN_IF_ERROR(w.Wrote(bytes.size()));
  }
  return Status::Ok();
}

Status CopyTensors(Writer& w, const ModelInfo& source, const Stored& stored, QuantizeResult& result) {
  const std::string prefix = ModelPrefix(source.name);
  std::vector<std::pair<std::string, TensorInfo>> tensors;
  Status bad;
  ES_RETURN_IF_ERROR(w.store.catalog().Scan(Cf::kTensors, prefix, [&](std::string_view key, std::string_view v) {
    auto t = DecodeTensor(v);
    if (!t.ok()) {
      bad = t.status();
      return false;
    }
    tensors.emplace_back(std::string(key.substr(prefix.size())), std::move(t).value());
    return true;
  }));
  ES_RETURN_IF_ERROR(bad);
  for (auto& [name, t] : tensors) {
    ++result.dense_tensors;
    if (stored.tensors.count(name)) continue;
    const std::string what = "tensor " + t.name;
    std::span<const std::byte> payload;
    ES_ASSIGN_OR_RETURN(AlignedBuffer buffer, ReadRecord(w.store, t.extent, payload, what));
    std::vector<std::byte> encoded;
    const std::optional<GgmlType> from = GgmlTypeOf(t.dtype, t.ggml_type);
    // Matrices of the generation model are re-encoded when asked; vectors (norms, biases), components and
    // tensors of other dtypes stay as they are.
    if (w.options.dense && t.component.empty() && t.shape.size() == 2 && from) {
      const auto [rows, cols] = RowsCols(t.shape);
      const GgmlType to = FallbackFormat(*w.options.dense, cols);
      if (to != *w.options.dense) ++result.fallbacks[FallbackKey("dense", *w.options.dense, to)];
      if (to != *from) {
        ES_ASSIGN_OR_RETURN(encoded, Reencode(payload, *from, to, rows, cols, what));
        payload = encoded;
        const Encoding e = EncodingOf(to);
        t.dtype = e.dtype;
        t.ggml_type = e.ggml_type;
      }
    }
    ES_ASSIGN_OR_RETURN(t.extent, w.txn->AppendRecord(RecordKind::kTensor, TensorKey(w.record.name, name), payload));
    w.txn->batch().Put(Cf::kTensors, TensorKey(w.record.name, name), EncodeTensor(t));
    result.bytes_written += payload.size();
    ES_RETURN_IF_ERROR(w.Wrote(payload.size()));
  }
  return Status::Ok();
}

Status QuantizeExperts(Writer& w, const ModelInfo& source, const Stored& stored, QuantizeResult& result) {
  const std::string prefix = ModelPrefix(source.name);
  std::vector<ExpertInfo> experts;
  Status bad;
  ES_RETURN_IF_ERROR(w.store.catalog().Scan(Cf::kExperts, prefix, [&](std::string_view, std::string_view v) {
    auto e = DecodeExpert(v);
    if (!e.ok()) {
      bad = e.status();
      return false;
    }
    experts.push_back(std::move(e).value());
    return true;
  }));
  ES_RETURN_IF_ERROR(bad);
  uint64_t done = 0;
  for (const ExpertInfo& e : experts) {
    const std::string key = ExpertKey(w.record.name, e.layer, e.expert);
    result.source_bytes += e.extent.payload_length;
    ++result.experts;
    if (stored.experts.count(key.substr(ModelPrefix(w.record.name).size()))) {
      if (w.options.progress) w.options.progress(++done, experts.size());
      continue;
    }
    const std::string what = "layer " + std::to_string(e.layer) + " expert " + std::to_string(e.expert);
    std::span<const std::byte> payload;
    ES_ASSIGN_OR_RETURN(AlignedBuffer buffer, ReadRecord(w.store, e.extent, payload, what));
    ExpertInfo out{e.layer, e.expert, {}, {}};
    std::vector<std::byte> bytes;
    for (const ProjectionInfo& p : e.projections) {
      const std::string pwhat = what + " " + p.role;
      if (p.offset > payload.size() || p.length > payload.size() - p.offset) {
        return Status::Corruption(pwhat + " lies outside its record");
      }
      const std::optional<GgmlType> from = GgmlTypeOf(p.dtype, p.ggml_type);
      if (!from) {
        return Status::NotSupported(pwhat + " is " + std::string(ElementTypeName(p.dtype, p.ggml_type)) +
                                    ", which quantize does not read");
      }
      const auto [rows, cols] = RowsCols(p.shape);
      const GgmlType to = FallbackFormat(w.options.experts, cols);
      if (to != w.options.experts) ++result.fallbacks[FallbackKey(p.role, w.options.experts, to)];
      ES_ASSIGN_OR_RETURN(std::vector<std::byte> encoded,
                          Reencode(payload.subspan(p.offset, p.length), *from, to, rows, cols, pwhat));
      const Encoding enc = EncodingOf(to);
      out.projections.push_back({p.role, p.source_name, enc.dtype, p.shape, bytes.size(), encoded.size(), enc.ggml_type});
      bytes.insert(bytes.end(), encoded.begin(), encoded.end());
    }
    ES_ASSIGN_OR_RETURN(out.extent, w.txn->AppendRecord(RecordKind::kExpert, key, bytes));
    w.txn->batch().Put(Cf::kExperts, key, EncodeExpert(out));
    result.bytes_written += bytes.size();
    ES_RETURN_IF_ERROR(w.Wrote(bytes.size()));
    if (w.options.progress) w.options.progress(++done, experts.size());
  }
  return Status::Ok();
}

// The source's usage, trust and profiles under the new name, staged into the last transaction.
Status CarryMetadata(Writer& w, const std::string& source, QuantizeResult& result) {
  const std::string from = ModelPrefix(source), to = ModelPrefix(w.record.name);
  for (Cf cf : {Cf::kUsage, Cf::kTrust, Cf::kProfiles}) {
    ES_RETURN_IF_ERROR(w.store.catalog().Scan(cf, from, [&](std::string_view key, std::string_view value) {
      w.txn->batch().Put(cf, to + std::string(key.substr(from.size())), value);
      ++result.metadata_records;
      return true;
    }));
  }
  return Status::Ok();
}

// The payload bytes of a model's records as committed: experts, tensors and the record's assets.
Result<uint64_t> StoredBytes(Store& store, const ModelInfo& record) {
  uint64_t total = 0;
  const std::string prefix = ModelPrefix(record.name);
  Status bad;
  ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kExperts, prefix, [&](std::string_view, std::string_view v) {
    auto e = DecodeExpert(v);
    if (!e.ok()) bad = e.status();
    total += e.ok() ? e->extent.payload_length : 0;
    return e.ok();
  }));
  ES_RETURN_IF_ERROR(bad);
  ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kTensors, prefix, [&](std::string_view, std::string_view v) {
    auto t = DecodeTensor(v);
    if (!t.ok()) bad = t.status();
    total += t.ok() ? t->extent.payload_length : 0;
    return t.ok();
  }));
  ES_RETURN_IF_ERROR(bad);
  for (const AssetInfo& a : record.assets) total += a.extent.payload_length;
  return total;
}

}  // namespace

GgmlType FallbackFormat(GgmlType wanted, uint64_t cols) {
  auto fits = [cols](GgmlType t) { return GgmlRowBytes(t, cols).has_value(); };
  if (fits(wanted)) return wanted;
  GgmlType next = GgmlType::kF16;
  switch (wanted) {
    case GgmlType::kQ4_K: next = GgmlType::kQ5_0; break;
    case GgmlType::kQ5_K: next = GgmlType::kQ5_1; break;
    case GgmlType::kQ6_K: next = GgmlType::kQ8_0; break;
    case GgmlType::kIQ4_XS: next = GgmlType::kIQ4_NL; break;
    default: break;
  }
  return fits(next) ? next : GgmlType::kF16;
}

Result<QuantizeResult> QuantizeModel(Store& store, const QuantizeOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  ES_RETURN_IF_ERROR(ValidateModelName(o.to).WithContext("`to`"));
  if (o.to == o.model) return Status::InvalidArgument("`to` must name a new model, not the source '" + o.model + "'");
  for (GgmlType t : {o.experts, o.dense.value_or(o.experts)}) {
    if (!CanQuantizeGgml(t)) {
      return Status::InvalidArgument("quantize does not write " + std::string(GgmlTypeInfoOf(t).name) +
                                     " (it writes F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, "
                                     "IQ4_NL, IQ4_XS)");
    }
  }
  if (store.read_only()) return Status::NotSupported("quantize needs the store open for writing");
  auto src = store.catalog().Get(Cf::kModels, ModelKey(o.model));
  if (!src.ok()) {
    return src.status().IsNotFound() ? Status::NotFound("no model '" + o.model + "' in the store") : src.status();
  }
  ES_ASSIGN_OR_RETURN(ModelInfo source, DecodeModel(*src));
  if (!source.complete) return Status::InvalidArgument("model '" + o.model + "' is incomplete (an interrupted ingest)");

  ModelInfo record = source;
  record.name = o.to;
  record.source_fingerprint = FingerprintOf(source, o);
  record.assets.clear();
  record.complete = false;
  record.created_unix = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  QuantizeResult result;
  result.model = o.to;
  Stored stored;
  Writer w{store, o, record};
  if (auto existing = store.catalog().Get(Cf::kModels, ModelKey(o.to)); existing.ok()) {
    ES_ASSIGN_OR_RETURN(ModelInfo old, DecodeModel(*existing));
    if (old.source_fingerprint == record.source_fingerprint) {
      result.resumed = !old.complete;
      result.unchanged = old.complete;
      ES_RETURN_IF_ERROR(CollectStored(store, old, record, stored));
    } else if (!o.replace) {
      return Status::InvalidArgument("model '" + o.to + "' already holds something else (" + old.source_fingerprint +
                                     "); set `replace` to replace it, or `to` to another name");
    } else {
      w.replacing = true;
    }
  } else if (!existing.status().IsNotFound()) {
    return existing.status();
  }

  if (!result.unchanged) {
    // What an interrupted run committed, plus what this one writes: the new model's size for its record.
    uint64_t committed = 0;
    if (result.resumed) {
      ES_ASSIGN_OR_RETURN(committed, StoredBytes(store, record));
    }
    Status s = w.Begin();
    if (s.ok()) s = CopyAssets(w, source, stored, result);
    if (s.ok()) s = CopyTensors(w, source, stored, result);
    if (s.ok()) s = QuantizeExperts(w, source, stored, result);
    if (s.ok()) s = CarryMetadata(w, o.model, result);
    record.total_bytes = committed + result.bytes_written;
    if (s.ok()) s = w.Commit(/*complete=*/true);
    if (!s.ok()) {
      if (w.txn) w.txn->Abort().IgnoreError();
      return s;
    }
  } else {
    // Count what is there for the result.
    ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kExperts, ModelPrefix(o.model), [&](std::string_view, std::string_view v) {
      auto e = DecodeExpert(v);
      if (e.ok()) result.source_bytes += e->extent.payload_length;
      ++result.experts;
      return true;
    }));
    result.dense_tensors = stored.tensors.size();
  }
  ES_ASSIGN_OR_RETURN(result.bytes, StoredBytes(store, record));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace es
