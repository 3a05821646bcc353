// QuantizeModel implementation.
#include "compute/runtime/quantize_model.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <set>

#include "cache/model_experts.h"
#include "compute/kernels/ggml_blocks.h"
#include "compute/kernels/ggml_quantize.h"
#include "compute/kernels/parallel.h"
#include "store/base/checksum.h"
#include "store/metadata.h"
#include "store/records.h"

namespace es {

namespace {

// Re-encodes a [rows, cols] matrix of `from` into `to`, rows spread over the pool.
Result<std::vector<std::byte>> Reencode(std::span<const std::byte> bytes, GgmlType from, GgmlType to, uint64_t rows,
                                        uint64_t cols, const std::string& what, kernels::ComputePool* pool) {
  const std::optional<uint64_t> in_row = GgmlRowBytes(from, cols), out_row = GgmlRowBytes(to, cols);
  if (!in_row || !out_row || *in_row * rows != bytes.size()) {
    return Status::Corruption(what + ": " + std::to_string(bytes.size()) + " bytes are not " + std::to_string(rows) +
                              " rows of " + std::to_string(cols) + " " + std::string(GgmlTypeInfoOf(from).name) +
                              " values");
  }
  std::vector<std::byte> out(*out_row * rows);
  std::mutex mu;
  Status failed;  // the first row's error, if any
  kernels::ParallelFor(pool, rows, 8, [&](size_t begin, size_t end) {
    std::vector<float> row(cols);
    for (size_t r = begin; r < end; ++r) {
      Status s = DequantizeGgmlRow(from, bytes.subspan(r * *in_row, *in_row), row);
      if (s.ok()) s = QuantizeGgmlRow(to, row, std::span(out).subspan(r * *out_row, *out_row));
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (failed.ok()) failed = s.WithContext(what + " row " + std::to_string(r));
        return;
      }
    }
  });
  ES_RETURN_IF_ERROR(failed);
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

std::string FormatName(GgmlType t) { return std::string(GgmlTypeInfoOf(t).name); }

// Each expert's format: `o.experts` for all, or what the rule chooses.
using Formats = std::map<std::pair<uint32_t, uint32_t>, GgmlType>;

// The fingerprint of a quantized copy: its source's and the settings (with a rule, the experts it chose), so that
// the same run again is recognised and a run with other settings is not taken for it.
std::string FingerprintOf(const ModelInfo& source, const QuantizeOptions& o, const Formats& formats) {
  std::string experts = FormatName(o.experts);
  if (o.experts_by) {
    std::string chosen;
    for (const auto& [key, type] : formats) {
      chosen += std::to_string(key.first) + ":" + std::to_string(key.second) + "=" + FormatName(type) + ";";
    }
    char digest[17];
    std::snprintf(digest, sizeof(digest), "%016llx",
                  static_cast<unsigned long long>(Xxh3(std::as_bytes(std::span(chosen)))));
    experts = "by:" + std::string(digest);
  }
  return "quantize(" + source.source_fingerprint + ";experts=" + experts +
         ";dense=" + (o.dense ? FormatName(*o.dense) : std::string("keep")) + ")";
}

// Per layer, the experts the rule ranks first get its top format, the rest the other.
Result<Formats> ChooseFormats(Store& store, const ModelInfo& source, const std::vector<ExpertInfo>& experts,
                              const ExpertRule& rule) {
  std::map<uint32_t, std::vector<uint32_t>> by_layer;
  for (const ExpertInfo& e : experts) by_layer[e.layer].push_back(e.expert);
  std::map<std::pair<uint32_t, uint32_t>, double> score;  // higher first
  if (rule.by == ExpertRule::By::kTrust) {
    ES_ASSIGN_OR_RETURN(auto trust, LoadModelTrust(store.catalog(), source.name));
    for (const auto& [key, t] : trust) score[key] = t.trust;
    if (score.empty()) {
      return Status::InvalidArgument("`experts_by` ranks by trust, but model '" + source.name +
                                     "' has no trust records (run calibrate)");
    }
  } else if (rule.by == ExpertRule::By::kUsage) {
    ES_ASSIGN_OR_RETURN(ModelUsage usage, LoadModelUsage(store.catalog(), source.name));
    for (const auto& [key, u] : usage.totals) score[key] = static_cast<double>(u.activation_count);
    if (score.empty()) {
      return Status::InvalidArgument("`experts_by` ranks by usage, but model '" + source.name +
                                     "' has no usage records (run generate or eval)");
    }
  }
  Formats formats;
  std::mt19937_64 rng(rule.seed);
  std::set<std::pair<uint32_t, uint32_t>> listed(rule.list.begin(), rule.list.end());
  for (auto& [layer, ids] : by_layer) {
    std::sort(ids.begin(), ids.end());
    if (rule.by == ExpertRule::By::kRandom) {
      std::shuffle(ids.begin(), ids.end(), rng);
    } else if (rule.by != ExpertRule::By::kList) {
      const uint32_t l = layer;
      std::stable_sort(ids.begin(), ids.end(), [&](uint32_t a, uint32_t b) {
        auto sa = score.find({l, a}), sb = score.find({l, b});
        const double va = sa == score.end() ? -1 : sa->second, vb = sb == score.end() ? -1 : sb->second;
        return va > vb;
      });
    }
    const size_t top = rule.by == ExpertRule::By::kList
                           ? 0
                           : static_cast<size_t>(std::lround(rule.top_fraction * static_cast<double>(ids.size())));
    for (size_t i = 0; i < ids.size(); ++i) {
      const bool first = rule.by == ExpertRule::By::kList ? listed.count({layer, ids[i]}) > 0 : i < top;
      formats[{layer, ids[i]}] = first ? rule.top : rule.rest;
    }
  }
  return formats;
}

// The write side: the open transaction and the model record committed with each one.
struct Writer {
  Store& store;
  const QuantizeOptions& options;
  ModelInfo& record;
  bool replacing = false;
  kernels::ComputePool* pool = nullptr;  // re-encoding's threads
  std::unique_ptr<WriteTxn> txn = nullptr;
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
    auto record = w.store.reader().ReadRecord(t.extent);
    if (!record.ok()) return record.status().WithContext(what);
    std::span<const std::byte> payload = record->payload;
    std::vector<std::byte> encoded;
    const std::optional<GgmlType> from = GgmlTypeOfStored(t.dtype, t.ggml_type);
    // Matrices of the generation model are re-encoded when asked; vectors (norms, biases), components and
    // tensors of other dtypes stay as they are.
    if (w.options.dense && t.component.empty() && t.shape.size() == 2 && from) {
      const auto [rows, cols] = RowsCols(t.shape);
      const GgmlType to = FallbackFormat(*w.options.dense, cols);
      if (to != *w.options.dense) ++result.fallbacks[FallbackKey("dense", *w.options.dense, to)];
      if (to != *from) {
        ES_ASSIGN_OR_RETURN(encoded, Reencode(payload, *from, to, rows, cols, what, w.pool));
        payload = encoded;
        const StoredElements e = StoredElementsOf(to);
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

Status QuantizeExperts(Writer& w, const std::vector<ExpertInfo>& experts, const Formats& formats,
                       const Stored& stored, QuantizeResult& result) {
  uint64_t done = 0;
  for (const ExpertInfo& e : experts) {
    const std::string key = ExpertKey(w.record.name, e.layer, e.expert);
    result.source_bytes += e.extent.payload_length;
    ++result.experts;
    ++result.experts_by_format[FormatName(formats.at({e.layer, e.expert}))];
    if (stored.experts.count(key.substr(ModelPrefix(w.record.name).size()))) {
      if (w.options.progress) w.options.progress(++done, experts.size());
      continue;
    }
    const std::string what = "layer " + std::to_string(e.layer) + " expert " + std::to_string(e.expert);
    auto record = w.store.reader().ReadRecord(e.extent);
    if (!record.ok()) return record.status().WithContext(what);
    const std::span<const std::byte> payload = record->payload;
    ExpertInfo out{e.layer, e.expert, {}, {}};
    std::vector<std::byte> bytes;
    for (const ProjectionInfo& p : e.projections) {
      const std::string pwhat = what + " " + p.role;
      if (p.offset > payload.size() || p.length > payload.size() - p.offset) {
        return Status::Corruption(pwhat + " lies outside its record");
      }
      const std::optional<GgmlType> from = GgmlTypeOfStored(p.dtype, p.ggml_type);
      if (!from) {
        return Status::NotSupported(pwhat + " is " + std::string(ElementTypeName(p.dtype, p.ggml_type)) +
                                    ", which quantize does not read");
      }
      const auto [rows, cols] = RowsCols(p.shape);
      const GgmlType wanted = formats.at({e.layer, e.expert});
      const GgmlType to = FallbackFormat(wanted, cols);
      if (to != wanted) ++result.fallbacks[FallbackKey(p.role, wanted, to)];
      ES_ASSIGN_OR_RETURN(std::vector<std::byte> encoded,
                          Reencode(payload.subspan(p.offset, p.length), *from, to, rows, cols, pwhat, w.pool));
      const StoredElements enc = StoredElementsOf(to);
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
Result<uint64_t> StoredBytes(Store& store, const std::string& model) {
  std::vector<ExtentRef> refs;
  std::vector<CorruptEntry> undecodable;
  ES_RETURN_IF_ERROR(CollectExtents(store.catalog(), model, refs, undecodable));
  if (!undecodable.empty()) return Status::Corruption(undecodable[0].what + ": " + undecodable[0].message);
  uint64_t total = 0;
  for (const ExtentRef& r : refs) total += r.extent.payload_length;
  return total;
}

}  // namespace

Result<ExpertRule> ParseExpertRule(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("`experts_by` " + why + " (got '" + std::string(text) +
                                   "'; e.g. trust:q8_0@25%,q4_k@rest, usage:..., random:...,seed=7, "
                                   "list:q8_0@0:3+5:17,q4_k@rest)");
  };
  auto number = [](std::string_view digits, uint64_t& out) {
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
    return ec == std::errc() && end == digits.data() + digits.size() && !digits.empty();
  };
  ExpertRule rule;
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) return bad("needs a ranking before ':'");
  const std::string_view by = text.substr(0, colon);
  if (by == "trust") rule.by = ExpertRule::By::kTrust;
  else if (by == "usage") rule.by = ExpertRule::By::kUsage;
  else if (by == "random") rule.by = ExpertRule::By::kRandom;
  else if (by == "list") rule.by = ExpertRule::By::kList;
  else return bad("ranks by trust, usage, random or list");
  std::vector<std::string_view> parts;
  for (std::string_view rest = text.substr(colon + 1); !rest.empty();) {
    const size_t comma = rest.find(',');
    parts.push_back(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  bool have_top = false, have_rest = false;
  for (std::string_view part : parts) {
    if (part.starts_with("seed=") && rule.by == ExpertRule::By::kRandom) {
      if (!number(part.substr(5), rule.seed)) return bad("needs a whole number after seed=");
      continue;
    }
    const size_t at = part.find('@');
    if (at == std::string_view::npos) return bad("needs FORMAT@WHICH parts");
    const std::optional<GgmlType> t = ParseQuantizeFormat(part.substr(0, at));
    if (!t) return bad("names a format quantize does not write: '" + std::string(part.substr(0, at)) + "'");
    const std::string_view which = part.substr(at + 1);
    if (which == "rest") {
      if (have_rest) return bad("has two @rest parts");
      rule.rest = *t;
      have_rest = true;
      continue;
    }
    if (have_top) return bad("has two parts besides @rest");
    have_top = true;
    rule.top = *t;
    if (rule.by == ExpertRule::By::kList) {
      for (std::string_view items = which; !items.empty();) {
        const size_t plus = items.find('+');
        const std::string_view item = items.substr(0, plus);
        items = plus == std::string_view::npos ? std::string_view() : items.substr(plus + 1);
        const size_t c = item.find(':');
        uint64_t layer = 0, expert = 0;
        if (c == std::string_view::npos || !number(item.substr(0, c), layer) || !number(item.substr(c + 1), expert) ||
            layer > UINT32_MAX || expert > UINT32_MAX) {
          return bad("lists experts as LAYER:EXPERT joined by '+'");
        }
        rule.list.emplace_back(static_cast<uint32_t>(layer), static_cast<uint32_t>(expert));
      }
      continue;
    }
    if (!which.ends_with('%')) return bad("gives the top share as a percentage, e.g. @25%");
    uint64_t pct = 0;
    if (!number(which.substr(0, which.size() - 1), pct) || pct > 100) return bad("needs a percentage from 0 to 100");
    rule.top_fraction = static_cast<double>(pct) / 100.0;
  }
  if (!have_top || !have_rest) return bad("needs a FORMAT@SHARE (or @LIST) part and a FORMAT@rest part");
  return rule;
}

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
  std::vector<GgmlType> asked = {o.experts, o.dense.value_or(o.experts)};
  if (o.experts_by) {
    asked.push_back(o.experts_by->top);
    asked.push_back(o.experts_by->rest);
  }
  for (GgmlType t : asked) {
    if (!CanQuantizeGgml(t)) {
      return Status::InvalidArgument("quantize does not write " + std::string(GgmlTypeInfoOf(t).name) + " (it writes " +
                                     QuantizeFormatNames() + ")");
    }
  }
  if (store.read_only()) return Status::NotSupported("quantize needs the store open for writing");
  auto src = store.catalog().Get(Cf::kModels, ModelKey(o.model));
  if (!src.ok()) {
    return src.status().IsNotFound() ? Status::NotFound("no model '" + o.model + "' in the store") : src.status();
  }
  ES_ASSIGN_OR_RETURN(ModelInfo source, DecodeModel(*src));
  if (!source.complete) return Status::InvalidArgument("model '" + o.model + "' is incomplete (an interrupted ingest)");

  ES_ASSIGN_OR_RETURN(ModelExperts source_experts, ModelExperts::Load(store.catalog(), o.model));
  const std::vector<ExpertInfo>& experts = source_experts.experts();
  Formats formats;
  if (o.experts_by) {
    ES_ASSIGN_OR_RETURN(formats, ChooseFormats(store, source, experts, *o.experts_by));
  } else {
    for (const ExpertInfo& e : experts) formats[{e.layer, e.expert}] = o.experts;
  }
  ModelInfo record = source;
  record.name = o.to;
  record.source_fingerprint = FingerprintOf(source, o, formats);
  record.assets.clear();
  record.complete = false;
  record.created_unix = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  QuantizeResult result;
  result.model = o.to;
  Stored stored;
  ES_ASSIGN_OR_RETURN(std::unique_ptr<kernels::ComputePool> pool, kernels::ComputePool::Create(o.threads));
  Writer w{store, o, record};
  w.pool = pool.get();
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
      ES_ASSIGN_OR_RETURN(committed, StoredBytes(store, record.name));
    }
    Status s = w.Begin();
    if (s.ok()) s = CopyAssets(w, source, stored, result);
    if (s.ok()) s = CopyTensors(w, source, stored, result);
    if (s.ok()) s = QuantizeExperts(w, experts, formats, stored, result);
    if (s.ok()) s = CarryMetadata(w, o.model, result);
    record.total_bytes = committed + result.bytes_written;
    if (s.ok()) s = w.Commit(/*complete=*/true);
    if (!s.ok()) {
      if (w.txn) w.txn->Abort().IgnoreError();
      return s;
    }
  } else {
    for (const ExpertInfo& e : experts) {  // what is there, for the result
      result.source_bytes += e.extent.payload_length;
      ++result.experts;
      ++result.experts_by_format[FormatName(formats.at({e.layer, e.expert}))];
    }
    result.dense_tensors = stored.tensors.size();
  }
  ES_ASSIGN_OR_RETURN(result.bytes, StoredBytes(store, record.name));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace es
