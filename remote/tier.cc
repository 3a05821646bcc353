// Publish, attach and the tier's record source.
#include "remote/tier.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>

#include "store/base/aligned_buffer.h"
#include "store/base/checksum.h"
#include "store/base/file_system.h"
#include "store/base/json.h"
#include "store/extent_reader.h"
#include "store/metadata.h"
#include "store/record_json.h"
#include "store/records.h"

namespace es::remote {

namespace {

constexpr char kManifestMagic[] = "ESMANIF1";  // 8 bytes
constexpr uint64_t kMaxManifestBytes = uint64_t{1} << 30;

// The catalog entries a manifest carries: column family, key relative to the model, value.
struct Entry {
  Cf cf;
  std::string key;
  std::string value;
};

void PutU32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }

std::string EncodeManifest(const std::vector<Entry>& entries) {
  std::string out(kManifestMagic, 8);
  PutU32(out, static_cast<uint32_t>(entries.size()));
  for (const Entry& e : entries) {
    out.push_back(static_cast<char>(e.cf));
    PutU32(out, static_cast<uint32_t>(e.key.size()));
    out += e.key;
    PutU32(out, static_cast<uint32_t>(e.value.size()));
    out += e.value;
  }
  const uint64_t sum = Xxh3(std::as_bytes(std::span(out)));
  out.append(reinterpret_cast<const char*>(&sum), sizeof sum);
  return out;
}

Result<std::vector<Entry>> DecodeManifest(std::string_view bytes, const std::string& name) {
  auto bad = [&](const std::string& why) { return Status::Corruption("the manifest " + name + " is damaged: " + why); };
  if (bytes.size() < 8 + 4 + 8 || bytes.substr(0, 8) != std::string_view(kManifestMagic, 8)) return bad("no manifest header");
  uint64_t sum = 0;
  std::memcpy(&sum, bytes.data() + bytes.size() - 8, 8);
  const std::string_view body = bytes.substr(0, bytes.size() - 8);
  if (Xxh3(std::as_bytes(std::span(body.data(), body.size()))) != sum) return bad("checksum mismatch");
  size_t pos = 8;
  auto u32 = [&](uint32_t& v) {
    if (pos + 4 > body.size()) return false;
    std::memcpy(&v, body.data() + pos, 4);
    pos += 4;
    return true;
  };
  uint32_t count = 0;
  if (!u32(count)) return bad("truncated");
  std::vector<Entry> entries;
  for (uint32_t i = 0; i < count; ++i) {
    if (pos >= body.size()) return bad("truncated");
    const auto cf = static_cast<uint8_t>(body[pos++]);
    uint32_t klen = 0, vlen = 0;
    if (cf >= kNumCfs || !u32(klen) || pos + klen > body.size()) return bad("truncated entry");
    std::string key(body.substr(pos, klen));
    pos += klen;
    if (!u32(vlen) || pos + vlen > body.size()) return bad("truncated entry");
    entries.push_back({static_cast<Cf>(cf), std::move(key), std::string(body.substr(pos, vlen))});
    pos += vlen;
  }
  if (pos != body.size()) return bad("trailing bytes");
  return entries;
}

std::string RecordXattrValue(const Extent& e) { return ChecksumHex(e.checksum) + ":" + std::to_string(e.record_length); }

Extent RemoteExtent(const Extent& local, RemoteRecordId id, uint32_t tier) {
  Extent e = local;
  e.segment = kRemoteSegmentBase + tier;
  e.offset = RemoteRecordOffset(id);
  return e;
}

// A record to publish: its local extent, and the same record's extent in the manifest (tier 0).
struct Published {
  Extent local;
  Extent remote;
};

// The model's catalog entries with their extents in remote form (tier 0), and its records.
struct ModelEntries {
  ModelInfo info;
  std::vector<Entry> entries;
  std::vector<Published> records;
};

Result<ModelEntries> CollectModel(const Catalog& catalog, const std::string& model) {
  ModelEntries m;
  ES_ASSIGN_OR_RETURN(m.info, LoadModelInfo(catalog, model));
  if (!m.info.complete) return Status::InvalidArgument("model '" + model + "' is incomplete: finish its ingest first");
  const std::string prefix = ModelPrefix(model);
  ModelInfo remote_info = m.info;
  for (size_t i = 0; i < remote_info.assets.size(); ++i) {
    Extent& e = remote_info.assets[i].extent;
    const Extent r = RemoteExtent(e, {RemoteRecordKind::kAsset, 0, static_cast<uint32_t>(i)}, 0);
    m.records.push_back({e, r});
    e = r;
  }
  m.entries.push_back({Cf::kModels, "", EncodeModel(remote_info)});
  Status failed;
  uint32_t index = 0;
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kTensors, prefix, [&](std::string_view key, std::string_view value) {
    auto t = DecodeTensor(value);
    if (!t.ok()) {
      failed = t.status();
      return false;
    }
    const Extent r = RemoteExtent(t->extent, {RemoteRecordKind::kTensor, 0, index++}, 0);
    m.records.push_back({t->extent, r});
    t->extent = r;
    m.entries.push_back({Cf::kTensors, std::string(key.substr(prefix.size())), EncodeTensor(*t)});
    return true;
  }));
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kExperts, prefix, [&](std::string_view key, std::string_view value) {
    auto e = DecodeExpert(value);
    if (!e.ok()) {
      failed = e.status();
      return false;
    }
    const Extent r = RemoteExtent(e->extent, {RemoteRecordKind::kExpert, e->layer, e->expert}, 0);
    m.records.push_back({e->extent, r});
    e->extent = r;
    m.entries.push_back({Cf::kExperts, std::string(key.substr(prefix.size())), EncodeExpert(*e)});
    return true;
  }));
  ES_RETURN_IF_ERROR(failed);
  return m;
}

// The model's usage, trust and profile records, keys relative to the model.
Status CollectMetadata(const Catalog& catalog, const std::string& model, std::vector<Entry>& out) {
  const std::string prefix = ModelPrefix(model);
  for (Cf cf : {Cf::kUsage, Cf::kTrust, Cf::kProfiles}) {
    ES_RETURN_IF_ERROR(catalog.Scan(cf, prefix, [&](std::string_view key, std::string_view value) {
      out.push_back({cf, std::string(key.substr(prefix.size())), std::string(value)});
      return true;
    }));
  }
  return Status::Ok();
}

// Reads an attached tier's records from its pool, connecting on the first fetch.
constexpr size_t kReadsInFlight = 32;
class RadosRecordSource final : public RecordSource {
 public:
  RadosRecordSource(TierInfo tier, std::shared_ptr<WarmTier> warm) : tier_(std::move(tier)), warm_(std::move(warm)) {}

  void FetchRecords(std::span<Fetch> fetches, const std::function<void(size_t)>& on_fetched) override {
    // Local copies first; the rest from the pool.
    std::vector<size_t> missing;
    std::vector<bool> local(fetches.size(), false);
    if (warm_) {
      std::vector<WarmTier::Wanted> wanted;
      for (const Fetch& f : fetches) wanted.push_back({f.extent, f.record});
      local = warm_->ReadBatch(wanted);
    }
    for (size_t i = 0; i < fetches.size(); ++i) {
      fetches[i].status = Status::Ok();
      if (local[i]) {
        if (on_fetched) on_fetched(i);
      } else {
        missing.push_back(i);
      }
    }
    if (missing.empty()) return;
    Result<RadosPool*> pool = Pool();
    if (!pool.ok()) {
      for (size_t i : missing) {
        fetches[i].status = pool.status().WithContext("remote tier " + std::to_string(tier_.number));
        if (on_fetched) on_fetched(i);
      }
      return;
    }
    std::vector<RadosPool::Read> reads;
    std::vector<size_t> owner;  // read -> fetch; a fetch's parts are consecutive
    for (size_t i : missing) {
      Fetch& f = fetches[i];
      for (const ObjectPart& p : RecordParts(RecordObjectName(tier_.base, f.extent), f.record.size())) {
        reads.push_back({p.name, f.record.subspan(p.offset, p.length), {}});
        owner.push_back(i);
      }
    }
    (*pool)->ReadBatch(reads, kReadsInFlight, [&](size_t k) {
      Fetch& f = fetches[owner[k]];
      if (!reads[k].status.ok() && f.status.ok()) f.status = reads[k].status;
      const bool last_part = k + 1 == reads.size() || owner[k + 1] != owner[k];
      if (!last_part) return;
      if (warm_ && f.status.ok()) warm_->Offer(f.extent, f.record);
      if (on_fetched) on_fetched(owner[k]);
    });
  }

  std::string Describe(const Extent& extent) const override {
    return "object " + tier_.pool + "/" + RecordObjectName(tier_.base, extent);
  }

 private:
  Result<RadosPool*> Pool() {
    std::lock_guard lock(mu_);
    if (!pool_) {
      ES_ASSIGN_OR_RETURN(pool_, RadosPool::Connect(tier_.ceph, tier_.pool));
    }
    return pool_.get();
  }

  TierInfo tier_;
  std::shared_ptr<WarmTier> warm_;  // null: no local copies
  std::mutex mu_;
  std::unique_ptr<RadosPool> pool_;
};

}  // namespace

std::vector<ObjectPart> RecordParts(const std::string& name, uint64_t length) {
  std::vector<ObjectPart> parts;
  for (uint64_t off = 0, i = 0; off < length || i == 0; off += kObjectPartBytes, ++i) {
    parts.push_back({i == 0 ? name : name + "." + std::to_string(i), off, std::min(kObjectPartBytes, length - off)});
  }
  return parts;
}

std::string ObjectBase(const RadosLocation& where, const ModelInfo& model) {
  return where.prefix + model.name + "@" + model.source_fingerprint.substr(0, 16);
}

std::string ManifestName(const RadosLocation& where, const std::string& model) {
  return where.prefix + model + ".manifest";
}

std::string RecordObjectName(const std::string& base, const Extent& remote_extent) {
  const RemoteRecordId id = RemoteRecordOf(remote_extent);
  switch (id.kind) {
    case RemoteRecordKind::kExpert: return base + "/e/" + std::to_string(id.layer) + "/" + std::to_string(id.index);
    case RemoteRecordKind::kTensor: return base + "/t/" + std::to_string(id.index);
    case RemoteRecordKind::kAsset: return base + "/a/" + std::to_string(id.index);
  }
  return base + "/unknown/" + std::to_string(remote_extent.offset);
}

Result<std::vector<TierInfo>> LoadTiers(const Catalog& catalog) {
  std::vector<TierInfo> tiers;
  Status failed;
  ES_RETURN_IF_ERROR(catalog.Scan(Cf::kMeta, kTierKeyPrefix, [&](std::string_view key, std::string_view value) {
    auto doc = ParseJson(value);
    TierInfo t;
    const std::string number(key.substr(kTierKeyPrefix.size()));
    auto str = [&](const char* field) -> std::string {
      const JsonValue* v = doc.ok() ? doc->Find(field) : nullptr;
      return v != nullptr && v->is_string() ? v->string_value() : std::string();
    };
    t.pool = str("pool");
    t.prefix = str("prefix");
    t.base = str("base");
    t.remote_model = str("model");
    t.ceph.conf = str("ceph_conf");
    t.ceph.id = str("ceph_id");
    t.ceph.keyring = str("ceph_keyring");
    if (const JsonValue* v = doc.ok() ? doc->Find("ceph_timeout") : nullptr; v != nullptr && v->is_integer()) {
      t.ceph.timeout_seconds = static_cast<uint32_t>(std::max<int64_t>(1, *v->AsInt64()));
    }
    try {
      t.number = static_cast<uint32_t>(std::stoul(number));
    } catch (...) {
      failed = Status::Corruption("catalog entry " + std::string(key) + " does not name a tier");
      return false;
    }
    if (!doc.ok() || t.pool.empty() || t.base.empty()) {
      failed = Status::Corruption("catalog entry " + std::string(key) + " is not a tier record");
      return false;
    }
    tiers.push_back(std::move(t));
    return true;
  }));
  ES_RETURN_IF_ERROR(failed);
  return tiers;
}

Result<PublishReport> PublishModel(Store& store, const std::string& model, RadosPool& pool,
                                   const RadosLocation& where, const PublishOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  ES_ASSIGN_OR_RETURN(ModelEntries m, CollectModel(store.catalog(), model));
  const std::string base = ObjectBase(where, m.info);
  PublishReport report;
  report.objects = m.records.size();
  if (!options.metadata_only) {
    // What is there already with the right bytes is kept.
    std::vector<const Published*> todo;
    for (const Published& p : m.records) {
      auto x = pool.GetXattr(RecordObjectName(base, p.remote), kRecordXattr);
      if (x.ok() && *x == RecordXattrValue(p.local)) {
        ++report.skipped;
        continue;
      }
      if (!x.ok() && !x.status().IsNotFound()) return x.status();
      todo.push_back(&p);
    }
    const size_t batch = std::max<size_t>(1, options.batch_records);
    for (size_t first = 0; first < todo.size(); first += batch) {
      const size_t n = std::min(batch, todo.size() - first);
      std::vector<AlignedBuffer> buffers;
      std::vector<ExtentRead> reads;
      for (size_t i = 0; i < n; ++i) {
        buffers.emplace_back(todo[first + i]->local.record_length);
        if (buffers.back().data() == nullptr) return Status::ResourceExhausted("cannot allocate a record buffer");
      }
      for (size_t i = 0; i < n; ++i) reads.push_back({todo[first + i]->local, buffers[i].span(), {}, {}});
      store.reader().ReadBatch(reads);  // verified: a damaged local record is never published
      std::vector<RadosPool::Write> writes;
      for (size_t i = 0; i < n; ++i) {
        ES_RETURN_IF_ERROR(reads[i].status.WithContext("publishing " + model));
        writes.push_back({RecordObjectName(base, todo[first + i]->remote),
                          std::span<const std::byte>(buffers[i].data(), todo[first + i]->local.record_length), {}});
      }
      std::vector<RadosPool::Write> parts;
      for (const RadosPool::Write& w : writes) {
        for (const ObjectPart& p : RecordParts(w.name, w.data.size())) {
          parts.push_back({p.name, w.data.subspan(p.offset, p.length), {}});
        }
      }
      pool.WriteBatch(parts);
      for (const RadosPool::Write& w : parts) ES_RETURN_IF_ERROR(w.status);
      for (size_t i = 0; i < n; ++i) {
        // The xattr marks the record complete: set after all its bytes.
        ES_RETURN_IF_ERROR(pool.SetXattr(writes[i].name, kRecordXattr, RecordXattrValue(todo[first + i]->local)));
        ++report.written;
        report.bytes_written += writes[i].data.size();
      }
    }
  } else {
    // Only the metadata: the records must be there already.
    auto manifest = pool.Size(ManifestName(where, model));
    if (!manifest.ok()) {
      return manifest.status().IsNotFound()
                 ? Status::NotFound("model '" + model + "' was never published to " + where.ToString() +
                                    ": publish it whole first")
                 : manifest.status();
    }
  }
  std::vector<Entry> entries = std::move(m.entries);
  ES_RETURN_IF_ERROR(CollectMetadata(store.catalog(), model, entries));
  // The model's object base travels in the manifest, so that an attach finds the records whatever it is named.
  entries.push_back({Cf::kMeta, "base", base});
  const std::string manifest = EncodeManifest(entries);
  ES_RETURN_IF_ERROR(pool.WriteFull(ManifestName(where, model), std::as_bytes(std::span(manifest))));
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

Result<AttachReport> AttachModel(Store& store, RadosPool& pool, const RadosLocation& where,
                                 const std::string& remote_model, const std::string& local_name,
                                 const CephOptions& ceph) {
  const std::string name = local_name.empty() ? remote_model : local_name;
  const std::string manifest_name = ManifestName(where, remote_model);
  auto bytes = pool.ReadAll(manifest_name, kMaxManifestBytes);
  if (!bytes.ok()) {
    return bytes.status().IsNotFound() ? Status::NotFound("no model '" + remote_model + "' is published at " +
                                                          where.ToString() + " (no " + manifest_name + ")")
                                       : bytes.status();
  }
  ES_ASSIGN_OR_RETURN(std::vector<Entry> entries, DecodeManifest(*bytes, pool.pool() + "/" + manifest_name));
  std::string base;
  ModelInfo info;
  bool have_model = false;
  for (const Entry& e : entries) {
    if (e.cf == Cf::kMeta && e.key == "base") base = e.value;
    if (e.cf == Cf::kModels) {
      ES_ASSIGN_OR_RETURN(info, DecodeModel(e.value));
      have_model = true;
    }
  }
  if (!have_model || base.empty()) return Status::Corruption("the manifest " + manifest_name + " holds no model record");

  // Already attached under this name (same checkpoint, same objects): nothing to do.
  ES_ASSIGN_OR_RETURN(std::vector<TierInfo> tiers, LoadTiers(store.catalog()));
  auto existing = LoadModelInfo(store.catalog(), name);
  if (existing.ok()) {
    for (const TierInfo& t : tiers) {
      if (t.base == base && t.pool == pool.pool() && existing->source_fingerprint == info.source_fingerprint) {
        AttachReport r;
        r.model = name;
        r.tier = t.number;
        r.already = true;
        return r;
      }
    }
    return Status::InvalidArgument("the store already holds a model named '" + name + "': attach it under another "
                                   "name (--name) or remove it first");
  }
  if (!existing.status().IsNotFound()) return existing.status();

  uint32_t number = 0;
  for (const TierInfo& t : tiers) number = std::max(number, t.number + 1);
  AttachReport report;
  report.model = name;
  report.tier = number;
  // A manifest's extent, moved to this store's tier number; a local one would point into this store's segments.
  auto to_tier = [&](Extent& e) -> Status {
    if (!IsRemote(e)) return Status::Corruption("the manifest " + manifest_name + " holds a local extent");
    e.segment = kRemoteSegmentBase + number;
    return Status::Ok();
  };
  const std::string prefix = ModelPrefix(name);
  CatalogBatch batch;
  // A tensor or expert entry, its extent moved to the tier.
  auto put_record = [&](const Entry& e, auto decode, auto encode, uint64_t& count) -> Status {
    ES_ASSIGN_OR_RETURN(auto record, decode(e.value));
    ES_RETURN_IF_ERROR(to_tier(record.extent));
    batch.Put(e.cf, prefix + e.key, encode(record));
    ++count;
    return Status::Ok();
  };
  for (const Entry& e : entries) {
    switch (e.cf) {
      case Cf::kModels: {
        ModelInfo m = info;
        m.name = name;
        for (AssetInfo& a : m.assets) ES_RETURN_IF_ERROR(to_tier(a.extent));
        batch.Put(Cf::kModels, ModelKey(name), EncodeModel(m));
        break;
      }
      case Cf::kTensors:
        ES_RETURN_IF_ERROR(put_record(e, DecodeTensor, EncodeTensor, report.tensors));
        break;
      case Cf::kExperts:
        ES_RETURN_IF_ERROR(put_record(e, DecodeExpert, EncodeExpert, report.experts));
        break;
      case Cf::kUsage:
      case Cf::kTrust:
      case Cf::kProfiles:
        batch.Put(e.cf, prefix + e.key, e.value);
        ++report.metadata_records;
        break;
      default:
        break;
    }
  }
  JsonWriter w;
  w.BeginObject().Key("pool").String(pool.pool()).Key("prefix").String(where.prefix).Key("base").String(base)
      .Key("model").String(remote_model).Key("ceph_conf").String(ceph.conf).Key("ceph_id").String(ceph.id)
      .Key("ceph_keyring").String(ceph.keyring).Key("ceph_timeout").Uint(ceph.timeout_seconds).EndObject();
  batch.Put(Cf::kMeta, std::string(kTierKeyPrefix) + std::to_string(number), w.Take());
  ES_RETURN_IF_ERROR(store.catalog().Write(batch));
  return report;
}

Result<WarmCheck> CheckWarmCopies(Store& store, bool remove_bad) {
  WarmCheck check;
  auto fs = DefaultFileSystem();
  const std::string root = JoinPath(store.path(), "warm");
  ES_ASSIGN_OR_RETURN(bool exists, fs->Exists(root));
  if (!exists) return check;
  // Every remote extent the catalog holds, by tier and copy name.
  std::vector<ExtentRef> local, remote;
  std::vector<CorruptEntry> undecodable;  // verify itself reports these
  ES_RETURN_IF_ERROR(CollectExtents(store.catalog(), "", local, undecodable, &remote));
  std::map<std::pair<uint32_t, std::string>, Extent> extents;
  for (const ExtentRef& r : remote) extents[{RemoteTier(r.extent), WarmTier::KeyOf(r.extent)}] = r.extent;
  ES_ASSIGN_OR_RETURN(std::vector<std::string> tiers, fs->ListDir(root));
  for (const std::string& tier : tiers) {
    const std::string dir = JoinPath(root, tier);
    auto names = fs->ListDir(dir);
    if (!names.ok()) continue;
    for (const std::string& name : *names) {
      const std::string path = JoinPath(dir, name);
      const std::string what = "warm copy " + tier + "/" + name;
      uint32_t number = 0;
      try {
        number = static_cast<uint32_t>(std::stoul(tier));
      } catch (...) {
        check.bad.push_back({what, "not in a tier's directory"});
        continue;
      }
      auto it = extents.find({number, name});
      Status status;
      if (it == extents.end()) {
        status = Status::NotFound("no attached model has this record (its model was removed)");
      } else {
        AlignedBuffer buffer(it->second.record_length);
        auto file = fs->Open(path, OpenOptions{});
        status = file.ok() ? ReadFully(**file, 0, buffer.span()) : file.status();
        if (status.ok()) {
          ES_ASSIGN_OR_RETURN(uint64_t size, (*file)->Size());
          if (size != it->second.record_length) status = Status::Corruption("holds " + std::to_string(size) + " bytes");
        }
        if (status.ok()) status = CheckRecord(buffer.span(), it->second).status();
        if (status.ok()) {
          ++check.copies;
          check.bytes += it->second.record_length;
          continue;
        }
      }
      check.bad.push_back({what, status.message()});
      if (remove_bad) fs->Remove(path).IgnoreError();
    }
  }
  return check;
}

Result<std::vector<std::shared_ptr<WarmTier>>> ConnectTiers(Store& store, uint64_t warm_bytes) {
  ES_ASSIGN_OR_RETURN(std::vector<TierInfo> tiers, LoadTiers(store.catalog()));
  std::vector<std::shared_ptr<WarmTier>> warm;
  for (TierInfo& t : tiers) {
    const uint32_t number = t.number;
    std::shared_ptr<WarmTier> copies;
    if (warm_bytes > 0) {
      ES_ASSIGN_OR_RETURN(copies, WarmTier::Open(JoinPath(JoinPath(store.path(), "warm"), std::to_string(number)),
                                                 warm_bytes / tiers.size()));
      warm.push_back(copies);
    }
    store.reader().SetRecordSource(number, std::make_shared<RadosRecordSource>(std::move(t), std::move(copies)));
  }
  return warm;
}

}  // namespace es::remote
