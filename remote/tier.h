// The RADOS tier: a model published to a Ceph pool (every record one object, then a manifest) and attached from
// it by other stores, whose catalogs then point at the pool instead of local segments (docs/remote.md).
//
// Objects of model M with source fingerprint F under rados://POOL/PREFIX, with B = PREFIX + M + "@" + F[0..16):
//   B/e/<layer>/<expert>   an expert's record      B/t/<i>   the i-th dense tensor's record (catalog key order)
//   B/a/<i>                the i-th asset's record  PREFIX + M + ".manifest"   the manifest, written last
// A record object holds the record's own bytes (header, payload, padding), exactly as in a segment, with the xattr
// `expertstore.record` = "<checksum hex>:<record length>" set after the bytes: a publish skips an object whose
// xattr matches and rewrites any other, so it is idempotent and resumable. The manifest holds the model's catalog
// entries (its model, tensor and expert records as FlatBuffers, their extents in remote form, and its trust, profile
// and usage records), keys relative to the model, and an XXH3 checksum of itself: a model is visible to others
// once its manifest is written.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "remote/rados.h"
#include "remote/warm_tier.h"
#include "store/catalog.h"
#include "store/store.h"

namespace es::remote {

inline constexpr char kRecordXattr[] = "expertstore.record";
// A record longer than this is split: its first part in the object named above, part i (from 1) in NAME.i, each
// kObjectPartBytes but the last (RADOS writes and objects stay far below the OSDs' limits; an embedding table of
// 600 MB is one record). The xattr goes on the first object once every part is written.
inline constexpr uint64_t kObjectPartBytes = uint64_t{64} << 20;
// The objects of a record of `length` bytes named `name`: (object name, offset in the record, bytes).
struct ObjectPart {
  std::string name;
  uint64_t offset = 0;
  uint64_t length = 0;
};
std::vector<ObjectPart> RecordParts(const std::string& name, uint64_t length);

// A tier this store attached (the catalog's kMeta "tier/<number>"): where its records are.
struct TierInfo {
  uint32_t number = 0;
  std::string pool;
  std::string prefix;
  std::string base;          // PREFIX + M + "@" + F[0..16)
  std::string remote_model;  // M
  CephOptions ceph;          // as given to attach (the conf path, client id, keyring)
};
Result<std::vector<TierInfo>> LoadTiers(const Catalog& catalog);

// The object names of a model's records.
std::string ObjectBase(const RadosLocation& where, const ModelInfo& model);
std::string ManifestName(const RadosLocation& where, const std::string& model);
std::string RecordObjectName(const std::string& base, const Extent& remote_extent);

struct PublishOptions {
  bool metadata_only = false;  // only the manifest again (usage, trust and profiles as they are now)
  size_t batch_records = 16;   // records read and written at once
};
struct PublishReport {
  uint64_t objects = 0;   // record objects of the model
  uint64_t written = 0;   // ... written by this run
  uint64_t skipped = 0;   // ... already there with the right checksum
  uint64_t bytes_written = 0;
  double seconds = 0;
};
// Publishes `model` (complete, in `store`) to `pool` under `where.prefix`. Records are read and verified from the
// store first: a corrupt local record stops the publish before its object is written.
Result<PublishReport> PublishModel(Store& store, const std::string& model, RadosPool& pool,
                                   const RadosLocation& where, const PublishOptions& options = {});

struct AttachReport {
  std::string model;        // the local name
  uint32_t tier = 0;
  uint64_t experts = 0;
  uint64_t tensors = 0;
  uint64_t metadata_records = 0;
  bool already = false;     // the same model was attached under this name already: nothing written
};
// Attaches the published `remote_model` as `local_name` (empty: the same name): one catalog write holding the
// tier's record and the model's entries pointing at the pool. NotFound when nothing is published under that name;
// Corruption for a damaged manifest; AlreadyExists (InvalidArgument) when the store holds another model of that
// name. `ceph` is recorded with the tier, for the commands that read it later.
Result<AttachReport> AttachModel(Store& store, RadosPool& pool, const RadosLocation& where,
                                 const std::string& remote_model, const std::string& local_name,
                                 const CephOptions& ceph);

// The local copies of the attached tiers (<store>/warm/): each read and checked against its catalog entry. A copy
// that fails is listed (and removed when `repair` is set: a copy is only a cache); a copy of no record the catalog
// has (its model removed) likewise.
struct WarmCheck {
  uint64_t copies = 0;
  uint64_t bytes = 0;
  std::vector<CorruptEntry> bad;
};
Result<WarmCheck> CheckWarmCopies(Store& store, bool remove_bad);

// Makes the store's reader fetch each attached tier's records from its pool (connecting on the first read, so an
// unreachable cluster fails only the reads that need it). With `warm_bytes` > 0 each tier keeps local copies of
// what it fetched (WarmTier, <store>/warm/<tier>/), the bytes shared evenly among the tiers; the warm tiers are
// returned (empty without).
Result<std::vector<std::shared_ptr<WarmTier>>> ConnectTiers(Store& store, uint64_t warm_bytes = 0);

}  // namespace es::remote
