// Store-level commands: verify, models, rm, compact, repair, info.
#include <chrono>
#include <cstdio>

#include "compute/kernels/cpu_kernels.h"
#include "compute/runtime/backend_choice.h"
#include "remote/tier.h"
#include "store/compaction.h"
#include "store/io_engine.h"
#include "store/metadata.h"
#include "store/record_json.h"
#include "store/repair.h"
#include "tools/cli.h"

namespace es::cli {

namespace {


Status RunVerify(const Args& args) {
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  std::string model = args.GetOr("model", "");
  if (!model.empty()) ES_RETURN_IF_ERROR(LoadModelInfo(store->catalog(), model).status());
  ES_ASSIGN_OR_RETURN(VerifyReport report, store->Verify(model));
  // Local copies of attached models' records (--local-cache-gb): checked and counted; a damaged one is a cache
  // entry the next read replaces, so it is reported without failing the store.
  ES_ASSIGN_OR_RETURN(remote::WarmCheck warm, remote::CheckWarmCopies(*store, /*remove_bad=*/false));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("checked").Uint(report.checked).Key("bytes").Uint(report.bytes).Key("corrupt").BeginArray();
    for (const auto& c : report.corrupt) w.BeginObject().Key("what").String(c.what).Key("message").String(c.message).EndObject();
    w.EndArray().Key("segments").BeginArray();
    for (const SegmentSpace& s : report.segments) {
      w.BeginObject().Key("segment").Uint(s.segment).Key("file_bytes").Uint(s.file_bytes)
          .Key("live_bytes").Uint(s.live_bytes).Key("dead_bytes").Uint(s.dead_bytes()).EndObject();
    }
    w.EndArray().Key("remote_records").Uint(report.remote).Key("warm_copies").Uint(warm.copies)
        .Key("warm_bytes").Uint(warm.bytes).Key("warm_bad").BeginArray();
    for (const auto& c : warm.bad) w.BeginObject().Key("what").String(c.what).Key("message").String(c.message).EndObject();
    w.EndArray().Key("ok").Bool(report.ok()).EndObject();
    PrintJson(w);
  } else {
    std::printf("checked %llu extents (%.1f MiB)\n", static_cast<unsigned long long>(report.checked),
                static_cast<double>(report.bytes) / (1 << 20));
    uint64_t live = 0, dead = 0;
    for (const SegmentSpace& s : report.segments) {
      live += s.live_bytes;
      dead += s.dead_bytes();
    }
    if (!report.segments.empty()) {
      std::printf("%zu segments: %s live, %s dead (records no model references)\n", report.segments.size(),
                  HumanBytes(live).c_str(), HumanBytes(dead).c_str());
    }
    if (report.remote > 0) {
      std::printf("%llu records of attached models live in their RADOS pools (checked by their publisher's store, "
                  "verified on every read here)\n", static_cast<unsigned long long>(report.remote));
    }
    if (warm.copies > 0 || !warm.bad.empty()) {
      std::printf("%llu local copies of attached models' records (%s) checked\n",
                  static_cast<unsigned long long>(warm.copies), HumanBytes(warm.bytes).c_str());
    }
    for (const auto& c : warm.bad) {
      std::printf("damaged or stray (a cache entry; the next read replaces it): %s: %s\n", c.what.c_str(),
                  c.message.c_str());
    }
    for (const auto& c : report.corrupt) std::printf("corrupt: %s: %s\n", c.what.c_str(), c.message.c_str());
    std::printf("%s\n", report.ok() ? "ok" : "CORRUPT");
  }
  if (!report.ok()) {
    return Status::Corruption(std::to_string(report.corrupt.size()) + " corrupt entries in " + args.global().store);
  }
  return Status::Ok();
}

// What a model's records hold now, by its catalog entries: for an incomplete model the record's own counts are
// what the ingest planned, not what is there.
struct RecordBytes {
  uint64_t payload = 0;  // the data
  uint64_t records = 0;  // headers and padding included: the segment space they take
};
Result<RecordBytes> ModelRecordBytes(Store& store, const std::string& model) {
  std::vector<ExtentRef> extents;
  std::vector<CorruptEntry> undecodable;
  ES_RETURN_IF_ERROR(CollectExtents(store.catalog(), model, extents, undecodable));
  RecordBytes bytes;
  for (const ExtentRef& e : extents) {
    bytes.payload += e.extent.payload_length;
    bytes.records += e.extent.record_length;
  }
  return bytes;
}

// rm MODEL: the model's catalog entries and metadata in one atomic commit; its records become dead space.
Status RunRemove(const Args& args) {
  if (args.positional().size() != 1) return Status::InvalidArgument("usage: expertstore rm MODEL");
  const std::string& name = args.positional()[0];
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/true));
  ES_ASSIGN_OR_RETURN(ModelInfo model, LoadModelInfo(store->catalog(), name));
  ES_ASSIGN_OR_RETURN(RecordBytes bytes, ModelRecordBytes(*store, name));
  const uint64_t dead = bytes.records;
  ES_RETURN_IF_ERROR(DeleteModel(*store, name));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("model").String(name).Key("experts").Uint(model.num_experts)
        .Key("dense_tensors").Uint(model.num_dense_tensors).Key("dead_bytes").Uint(dead).EndObject();
    PrintJson(w);
  } else if (!args.global().quiet) {
    std::printf("removed %s: %s of records are now dead space in the segments\n", name.c_str(), HumanBytes(dead).c_str());
  }
  return Status::Ok();
}

// compact [--max-dead-fraction F]: moves the live records out of segments with more dead space than F, then
// removes the emptied segments (or leaves them for a later writer while readers have the store open).
Status RunCompact(const Args& args) {
  CompactOptions options;
  ES_ASSIGN_OR_RETURN(options.max_dead_fraction, args.GetDouble("max-dead-fraction", options.max_dead_fraction));
  if (!(options.max_dead_fraction >= 0 && options.max_dead_fraction < 1)) {
    return Status::InvalidArgument("--max-dead-fraction must be at least 0 and below 1");
  }
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/true));
  const auto start = std::chrono::steady_clock::now();
  ES_ASSIGN_OR_RETURN(CompactStats stats, Compact(*store, options));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ES_ASSIGN_OR_RETURN(auto sizes, SegmentFileSizes(store->fs(), store->segments_dir()));
  uint64_t file_bytes_after = 0;
  for (const auto& [id, size] : sizes) file_bytes_after += size;
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("segments_before").Uint(stats.segments_before).Key("segments_after").Uint(sizes.size())
        .Key("file_bytes_before").Uint(stats.file_bytes_before).Key("file_bytes_after").Uint(file_bytes_after)
        .Key("dead_bytes_before").Uint(stats.dead_bytes_before).Key("compacted").BeginArray();
    for (uint32_t id : stats.compacted) w.Uint(id);
    w.EndArray().Key("records_moved").Uint(stats.records_moved).Key("bytes_moved").Uint(stats.bytes_moved)
        .Key("commits").Uint(stats.commits).Key("removed").BeginArray();
    for (uint32_t id : stats.removal.removed) w.Uint(id);
    w.EndArray().Key("bytes_freed").Uint(stats.removal.bytes_freed).Key("kept_for_readers").BeginArray();
    for (uint32_t id : stats.removal.kept_for_readers) w.Uint(id);
    w.EndArray().Key("seconds").Double(seconds).EndObject();
    PrintJson(w);
  } else if (!args.global().quiet) {
    std::printf("compacted %zu of %u segments: moved %llu records (%s) in %.2f s; removed %zu segments (%s freed)\n",
                stats.compacted.size(), stats.segments_before, static_cast<unsigned long long>(stats.records_moved),
                HumanBytes(stats.bytes_moved).c_str(), seconds, stats.removal.removed.size(),
                HumanBytes(stats.removal.bytes_freed).c_str());
    if (!stats.removal.kept_for_readers.empty()) {
      std::printf("%zu emptied segments stay while other processes have the store open; the next writer to open it "
                  "removes them\n", stats.removal.kept_for_readers.size());
    }
    std::printf("segments: %s before, %s now\n", HumanBytes(stats.file_bytes_before).c_str(),
                HumanBytes(file_bytes_after).c_str());
  }
  return Status::Ok();
}

// repair: rebuilds the catalog from the segments' catalog log, keeps the old catalog beside it, then opens the store
// as a writer (its recovery) and verifies it.
Status RunRepair(const Args& args) {
  const std::string& path = args.global().store;
  const auto start = std::chrono::steady_clock::now();
  ES_ASSIGN_OR_RETURN(RepairReport report, RepairStore(path));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/true));
  ES_ASSIGN_OR_RETURN(VerifyReport verify, store->Verify());
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("segments").Uint(report.segments).Key("records").Uint(report.records)
        .Key("damaged_bytes").Uint(report.damaged_bytes).Key("log_records").Uint(report.log_records)
        .Key("snapshot_sequence").Uint(report.snapshot_sequence).Key("last_sequence").Uint(report.last_sequence)
        .Key("models").BeginArray();
    for (const RepairedModel& m : report.models) {
      w.BeginObject().Key("name").String(m.name).Key("experts").Uint(m.experts).Key("dense_tensors").Uint(m.tensors)
          .Key("assets").Uint(m.assets).Key("complete").Bool(m.complete).Key("dropped").BeginArray();
      for (const auto& d : m.dropped) w.String(d);
      w.EndArray().EndObject();
    }
    w.EndArray().Key("problems").BeginArray();
    for (const auto& p : report.problems) w.String(p);
    w.EndArray().Key("metadata_entries").Uint(report.metadata_entries).Key("metadata_error").String(report.metadata_error)
        .Key("old_catalog").String(report.old_catalog).Key("verify_ok").Bool(verify.ok())
        .Key("seconds").Double(seconds).EndObject();
    PrintJson(w);
  } else if (!args.global().quiet) {
    std::printf("scanned %u segments: %llu intact records, %s without an intact record header\n", report.segments,
                static_cast<unsigned long long>(report.records), HumanBytes(report.damaged_bytes).c_str());
    std::printf("replayed %llu catalog-log records (%s through commit %llu)\n",
                static_cast<unsigned long long>(report.log_records),
                report.snapshot_sequence == 0 ? "from the first commit"
                                              : ("from the snapshot at commit " + std::to_string(report.snapshot_sequence)).c_str(),
                static_cast<unsigned long long>(report.last_sequence));
    for (const RepairedModel& m : report.models) {
      std::printf("model %s: %llu experts, %llu dense tensors, %llu assets%s\n", m.name.c_str(),
                  static_cast<unsigned long long>(m.experts), static_cast<unsigned long long>(m.tensors),
                  static_cast<unsigned long long>(m.assets), m.complete ? "" : " (incomplete: ingest it again to finish)");
      for (const auto& d : m.dropped) std::printf("  dropped %s\n", d.c_str());
    }
    for (const auto& p : report.problems) std::printf("problem: %s\n", p.c_str());
    if (report.metadata_error.empty()) {
      std::printf("metadata: %llu usage, trust and profile entries kept from the old catalog\n",
                  static_cast<unsigned long long>(report.metadata_entries));
    } else {
      std::printf("metadata: none kept (%s)\n", report.metadata_error.c_str());
    }
    if (!report.old_catalog.empty()) std::printf("the old catalog is kept at %s\n", report.old_catalog.c_str());
    std::printf("verify: %s (%.2f s)\n", verify.ok() ? "ok" : "CORRUPT", seconds);
  }
  if (!verify.ok()) {
    return Status::Corruption("the repaired store does not verify: " + verify.corrupt.front().what + ": " +
                              verify.corrupt.front().message);
  }
  return Status::Ok();
}

Status RunModels(const Args& args) {
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  ES_ASSIGN_OR_RETURN(auto models, store->ListModels());
  std::vector<uint64_t> stored(models.size());
  for (size_t i = 0; i < models.size(); ++i) {
    if (models[i].complete) {
      stored[i] = models[i].total_bytes;
    } else {
      ES_ASSIGN_OR_RETURN(RecordBytes bytes, ModelRecordBytes(*store, models[i].name));
      stored[i] = bytes.payload;
    }
  }
  if (args.global().json) {
    JsonWriter w;
    w.BeginArray();
    for (size_t i = 0; i < models.size(); ++i) {
      w.BeginObject();
      WriteModelFields(w, models[i]);
      w.EndObject();
    }
    w.EndArray();
    PrintJson(w);
    return Status::Ok();
  }
  if (models.empty()) {
    std::printf("no models in %s\n", args.global().store.c_str());
    return Status::Ok();
  }
  // Column names are the JSON fields': EXPERTS counts all experts, PER-LAYER those of one layer.
  std::printf("%-32s %-16s %6s %8s %9s %5s %12s\n", "NAME", "ARCH", "LAYERS", "EXPERTS", "PER-LAYER", "TOPK",
              "BYTES");
  for (size_t i = 0; i < models.size(); ++i) {
    const ModelInfo& m = models[i];
    std::string note;
    if (!m.complete) note = "  (incomplete: " + HumanBytes(stored[i]) + " of " + HumanBytes(m.total_bytes) + " stored)";
    std::printf("%-32s %-16s %6u %8llu %9u %5u %12llu%s\n", m.name.c_str(), m.arch.c_str(), m.num_layers,
                static_cast<unsigned long long>(m.num_experts), m.experts_per_layer, m.top_k,
                static_cast<unsigned long long>(stored[i]), note.c_str());
  }
  return Status::Ok();
}

Status RunInfo(const Args& args) {
  ES_ASSIGN_OR_RETURN(IoEngineKind kind, ParseIoEngineKind(args.global().io_engine));
  ES_ASSIGN_OR_RETURN(auto engine, CreateIoEngine(kind, IoEngineOptions{}));
  const std::vector<std::string> features = kernels::CpuFeatures();
  const std::vector<std::string> backends = CompiledBackends();
  const std::vector<std::string> devices = CudaDevices();
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("version").String(kVersion).Key("backends").BeginArray();
    for (const auto& b : backends) w.String(b);
    w.EndArray().Key("io_engine").String(engine->name()).Key("cpu_features").BeginArray();
    for (const auto& f : features) w.String(f);
    w.EndArray().Key("devices").BeginArray();
    for (const auto& d : devices) w.String(d);
    w.EndArray().EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("expertstore %s\nbackends:", std::string(kVersion).c_str());
  for (const auto& b : backends) std::printf(" %s", b.c_str());
  std::printf("\nio engine: %s\ncpu features:", std::string(engine->name()).c_str());
  for (const auto& f : features) std::printf(" %s", f.c_str());
  std::printf("\ndevices:");
  for (const auto& d : devices) std::printf(" %s;", d.c_str());
  std::printf("%s\n", devices.empty() ? " none (no CUDA device found)" : "");
  return Status::Ok();
}

}  // namespace

void RegisterStoreCommands(std::vector<Command>& commands) {
  commands.push_back({"verify", "verify [--model M]",
                      "re-read every extent and check checksums, headers and catalog consistency",
                      {{"model", true, "only this model"}},
                      RunVerify});
  commands.push_back({"models", "models", "list the models in the store", {}, RunModels});
  commands.push_back({"rm", "rm MODEL",
                      "remove a model: its catalog entries and metadata in one atomic commit (its records become "
                      "dead space)",
                      {}, RunRemove, /*max_positional=*/1});
  commands.push_back({"compact", "compact [--max-dead-fraction F]",
                      "reclaim dead space: move the live records of segments more than F dead (default 0.25) into "
                      "new segments, then remove the old ones",
                      {{"max-dead-fraction", true, "compact segments whose dead share is above this (0 to <1)"}},
                      RunCompact});
  commands.push_back({"repair", "repair",
                      "rebuild a lost or damaged catalog from the segments (their catalog log), keeping the old one "
                      "beside it as catalog.damaged-TIME",
                      {}, RunRepair});
  commands.push_back({"info", "info", "version, compiled backends, I/O engine, CPU features and GPUs found", {}, RunInfo});
}

}  // namespace es::cli
