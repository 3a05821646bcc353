// Ingest commands: ingest (a checkpoint into the store), quantize (a stored model re-encoded into a new one) and
// make-checkpoint (random weights in a family's layout).
#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>

#include "ingest/checkpoint.h"
#include "ingest/ingest.h"
#include "ingest/make_checkpoint.h"
#include "compute/kernels/ggml_quantize.h"
#include "compute/runtime/model_runtime.h"
#include "compute/runtime/quantize_model.h"
#include "tools/cli.h"

namespace es::cli {

namespace {

// Ctrl-C or SIGTERM during ingest: say so and how to go on, then exit as the signal would. Stopping anywhere is
// safe (each transaction commits atomically, as after kill -9), so the handler only has to speak.
extern "C" void OnIngestInterrupted(int sig) {
  static constexpr char kMessage[] =
      "\ningest interrupted: what was committed is kept; run the same command again to resume\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
  ::_exit(128 + sig);
}

void SayWhenInterrupted() {
  struct sigaction action {};
  action.sa_handler = OnIngestInterrupted;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
}

Status RunIngest(const Args& args) {
  if (args.positional().size() != 1) return Status::InvalidArgument("usage: expertstore ingest DIR [--name N] [--replace]");
  // The checkpoint is checked before the store is opened, so that a wrong path leaves no empty store behind.
  ES_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(args.positional()[0]));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/true, /*create=*/true));
  SayWhenInterrupted();
  IngestOptions options;
  options.name = args.GetOr("name", "");
  options.replace = args.Has("replace");
  if (args.Has("commit-mb")) {
    ES_ASSIGN_OR_RETURN(int64_t mb, args.GetInt("commit-mb", 0, 1, 1 << 20));
    options.commit_bytes = static_cast<uint64_t>(mb) << 20;
  }
  ProgressBar bar(args, "ingest");
  options.progress = [&](uint64_t done, uint64_t total) { bar.Update(done, total); };
  ES_ASSIGN_OR_RETURN(IngestResult r, IngestCheckpoint(*store, *checkpoint, options));
  bar.Finish();
  uint64_t rss = PeakRssBytes();
  if (!r.has_tokenizer) {
    std::fprintf(stderr,
                 "warning: %s has no tokenizer.json: generate, chat, eval and serve need one. Put it beside config.json "
                 "and run ingest again; that adds only the missing files\n",
                 args.positional()[0].c_str());
  }
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject()
        .Key("model").String(r.model)
        .Key("arch").String(r.arch)
        .Key("layers").Uint(r.layers)
        .Key("experts").Uint(r.experts)
        .Key("dense_tensors").Uint(r.dense_tensors)
        .Key("bytes").Uint(r.bytes)
        .Key("bytes_written").Uint(r.bytes_written)
        .Key("seconds").Double(r.seconds)
        .Key("unchanged").Bool(r.unchanged)
        .Key("resumed").Bool(r.resumed)
        .Key("has_tokenizer").Bool(r.has_tokenizer)
        .Key("assets_updated").BeginArray();
    for (const auto& a : r.assets_updated) w.String(a);
    w.EndArray()
        .Key("peak_rss_bytes").Uint(rss)
        .EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  if (args.global().quiet) return Status::Ok();
  if (r.unchanged) {
    std::printf("%s: already ingested from this checkpoint; nothing to do\n", r.model.c_str());
    return Status::Ok();
  }
  if (!r.assets_updated.empty()) {
    std::string names;
    for (const auto& a : r.assets_updated) names += (names.empty() ? "" : ", ") + a;
    std::printf("%s: weights already ingested from this checkpoint; wrote %s\n", r.model.c_str(), names.c_str());
    return Status::Ok();
  }
  double rate = r.seconds > 0 ? static_cast<double>(r.bytes_written) / r.seconds : 0;
  std::printf("%s%s: %s, %u layers, %llu experts, %llu dense tensors, %s in %.1f s (%s/s), peak RSS %s\n",
              r.model.c_str(), r.resumed ? " (resumed)" : "", r.arch.c_str(), r.layers,
              static_cast<unsigned long long>(r.experts), static_cast<unsigned long long>(r.dense_tensors),
              HumanBytes(r.bytes_written).c_str(), r.seconds, HumanBytes(static_cast<uint64_t>(rate)).c_str(),
              HumanBytes(rss).c_str());
  return Status::Ok();
}

// A block format by name, any case ("q4_k", "Q4_K"), for the flag setting `field`.
Result<GgmlType> ParseFormat(const std::string& text, std::string_view field) {
  const std::optional<GgmlType> type = ParseQuantizeFormat(text);
  if (!type) {
    return Status::InvalidArgument("`" + std::string(field) + "` must be one of " + QuantizeFormatNames() + " (got '" +
                                   text + "')");
  }
  return *type;
}

Status RunQuantize(const Args& args) {
  QuantizeOptions o;
  ES_ASSIGN_OR_RETURN(o.model, args.Require("model"));
  if (auto tier = args.Get("add-tier")) {
    // The low-bit copy that --miss-precision reads: every expert in one format, under the name it looks for.
    if (args.Has("to") || args.Has("experts") || args.Has("experts-by") || args.Has("dense")) {
      return Status::InvalidArgument("`add_tier` names the copy and its format itself: drop `to`, `experts`, "
                                     "`experts_by` and `dense`");
    }
    ES_ASSIGN_OR_RETURN(o.experts, ParseFormat(*tier, "add_tier"));
    o.to = MissTierModel(o.model, GgmlTypeInfoOf(o.experts).name);
  } else {
    ES_ASSIGN_OR_RETURN(o.to, args.Require("to"));
    if (args.Has("experts") == args.Has("experts-by")) {
      return Status::InvalidArgument("give exactly one of `experts` (one format) and `experts_by` (a rule)");
    }
    if (auto experts = args.Get("experts")) {
      ES_ASSIGN_OR_RETURN(o.experts, ParseFormat(*experts, "experts"));
    } else {
      ES_ASSIGN_OR_RETURN(o.experts_by, ParseExpertRule(*args.Get("experts-by")));
    }
  }
  if (auto dense = args.Get("dense")) {
    ES_ASSIGN_OR_RETURN(o.dense, ParseFormat(*dense, "dense"));
  }
  o.replace = args.Has("replace");
  if (args.Has("commit-mb")) {
    ES_ASSIGN_OR_RETURN(int64_t mb, args.GetInt("commit-mb", 0, 1, 1 << 20));
    o.commit_bytes = static_cast<uint64_t>(mb) << 20;
  }
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/true, /*create=*/false));
  SayWhenInterrupted();
  ProgressBar bar(args, "quantize");
  o.progress = [&](uint64_t done, uint64_t total) { bar.Update(done, total); };
  ES_ASSIGN_OR_RETURN(QuantizeResult r, QuantizeModel(*store, o));
  bar.Finish();
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject()
        .Key("model").String(r.model)
        .Key("experts").Uint(r.experts)
        .Key("dense_tensors").Uint(r.dense_tensors)
        .Key("source_expert_bytes").Uint(r.source_bytes)
        .Key("bytes").Uint(r.bytes)
        .Key("bytes_written").Uint(r.bytes_written)
        .Key("metadata_records").Uint(r.metadata_records)
        .Key("seconds").Double(r.seconds)
        .Key("unchanged").Bool(r.unchanged)
        .Key("resumed").Bool(r.resumed)
        .Key("fallbacks").BeginObject();
    for (const auto& [what, count] : r.fallbacks) w.Key(what).Uint(count);
    w.EndObject().Key("experts_by_format").BeginObject();
    for (const auto& [format, count] : r.experts_by_format) w.Key(format).Uint(count);
    w.EndObject().EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  if (args.global().quiet) return Status::Ok();
  if (r.unchanged) {
    std::printf("%s: already quantized from %s with these settings; nothing to do\n", r.model.c_str(), o.model.c_str());
    return Status::Ok();
  }
  std::printf("%s%s: %llu experts, %llu dense tensors, %s (the source's experts: %s), %llu metadata records carried "
              "over, %.1f s\n",
              r.model.c_str(), r.resumed ? " (resumed)" : "", static_cast<unsigned long long>(r.experts),
              static_cast<unsigned long long>(r.dense_tensors), HumanBytes(r.bytes).c_str(),
              HumanBytes(r.source_bytes).c_str(), static_cast<unsigned long long>(r.metadata_records), r.seconds);
  std::string mix;
  for (const auto& [format, count] : r.experts_by_format) {
    mix += (mix.empty() ? "" : ", ") + format + " " + std::to_string(count);
  }
  std::printf("  experts: %s\n", mix.c_str());
  for (const auto& [what, count] : r.fallbacks) {
    std::printf("  fallback: %s (%llu, rows not whole blocks)\n", what.c_str(), static_cast<unsigned long long>(count));
  }
  return Status::Ok();
}

Result<std::vector<std::pair<uint32_t, uint32_t>>> ParseMissing(const std::string& text) {
  std::vector<std::pair<uint32_t, uint32_t>> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t colon = item.find(':');
    uint32_t l = 0, e = 0;
    bool ok = colon != std::string::npos;
    if (ok) {
      auto r1 = std::from_chars(item.data(), item.data() + colon, l);
      auto r2 = std::from_chars(item.data() + colon + 1, item.data() + item.size(), e);
      ok = r1.ec == std::errc() && r1.ptr == item.data() + colon && r2.ec == std::errc() &&
           r2.ptr == item.data() + item.size();
    }
    if (!ok) return Status::InvalidArgument("--missing expects LAYER:EXPERT pairs separated by commas, got '" + item + "'");
    out.emplace_back(l, e);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

Status RunMakeCheckpoint(const Args& args) {
  if (args.positional().size() != 1) return Status::InvalidArgument("usage: expertstore make-checkpoint OUT --arch A ...");
  MakeCheckpointOptions o;
  ES_ASSIGN_OR_RETURN(o.arch, args.Require("arch"));
  o.preset = args.GetOr("preset", "");
  std::vector<std::string> explicit_fields;
  struct U32Flag {
    const char* name;  // the flag; the option's field is its name with '_' for '-'
    uint32_t* dst;
  };
  const U32Flag flags[] = {{"layers", &o.layers},   {"experts", &o.experts}, {"top-k", &o.top_k},
                           {"hidden", &o.hidden},   {"moe-intermediate", &o.moe_intermediate},
                           {"heads", &o.heads},     {"kv-heads", &o.kv_heads}, {"vocab", &o.vocab}};
  constexpr int64_t kMaxDim = 1 << 24;
  for (const auto& f : flags) {
    if (!args.Has(f.name)) continue;
    ES_ASSIGN_OR_RETURN(int64_t v, args.GetInt(f.name, 0, 1, kMaxDim));
    *f.dst = static_cast<uint32_t>(v);
    explicit_fields.push_back(FieldOfFlag(f.name));
  }
  ES_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0, 0, INT64_MAX));
  o.seed = static_cast<uint64_t>(seed);
  std::string dtype = args.GetOr("dtype", "bf16");
  if (dtype == "bf16") {
    o.dtype = DType::kBF16;
  } else if (dtype == "f16") {
    o.dtype = DType::kF16;
  } else if (dtype == "f32") {
    o.dtype = DType::kF32;
  } else {
    return Status::InvalidArgument("--dtype must be bf16, f16 or f32");
  }
  if (args.Has("missing")) {
    ES_ASSIGN_OR_RETURN(o.missing, ParseMissing(*args.Get("missing")));
  }
  o.fused_experts = args.Has("fused");
  if (args.Has("shard-mb")) {
    ES_ASSIGN_OR_RETURN(int64_t mb, args.GetInt("shard-mb", 0, 1, 1 << 20));
    o.max_shard_bytes = static_cast<uint64_t>(mb) << 20;
  }
  ES_ASSIGN_OR_RETURN(o, ResolveMakeCheckpointOptions(o, explicit_fields));
  ProgressBar bar(args, "make-checkpoint");
  ES_ASSIGN_OR_RETURN(auto r, MakeCheckpoint(args.positional()[0], o, [&](uint64_t d, uint64_t t) { bar.Update(d, t); }));
  bar.Finish();
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("files").BeginArray();
    for (const auto& f : r.files) w.String(f);
    w.EndArray().Key("bytes").Uint(r.bytes).EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("wrote %zu files (%s of tensors) to %s\n", r.files.size(), HumanBytes(r.bytes).c_str(),
              args.positional()[0].c_str());
  return Status::Ok();
}

}  // namespace

void RegisterIngestCommands(std::vector<Command>& commands) {
  commands.push_back({"ingest", "ingest DIR [--name N] [--replace]",
                      "ingest a Hugging Face checkpoint; re-running is a no-op, an interrupted run resumes",
                      {{"name", true, "model name (default: the directory's name)"},
                       {"replace", false, "replace a model of that name that holds a different checkpoint"},
                       {"commit-mb", true, "data per transaction, the unit an interrupted ingest resumes from (default 512)"}},
                      RunIngest, /*max_positional=*/1});
  commands.push_back({"quantize",
                      "quantize --model M (--to NAME (--experts TYPE | --experts-by RULE) [--dense TYPE] | --add-tier TYPE) "
                      "[--replace]",
                      "write a copy of a model with its experts (and dense matrices) in another GGML format; re-running "
                      "is a no-op, an interrupted run resumes",
                      {{"model", true, "the source model"},
                       {"to", true, "the new model's name"},
                       {"experts", true, "the experts' format: Q8_0, Q4_K, Q6_K, IQ4_XS, Q5_K, Q4_0, ..., F16, BF16"},
                       {"experts-by", true, "per layer, the top share by trust, usage or at random (or a list) in one "
                                            "format, the rest in another: trust:q8_0@25%,q4_k@rest"},
                       {"dense", true, "the dense matrices' format (default: kept as they are)"},
                       {"add-tier", true, "write the model's low-bit copy that --miss-precision TYPE serves misses from "
                                          "(MODEL.tier-TYPE)"},
                       {"replace", false, "replace a model of that name that holds something else"},
                       {"commit-mb", true, "data per transaction, the unit an interrupted run resumes from (default 256)"}},
                      RunQuantize});
  commands.push_back({"make-checkpoint",
                      "make-checkpoint OUT --arch A [--preset qwen3-30b-a3b] [--layers --experts --top-k --hidden "
                      "--moe-intermediate --heads --kv-heads --vocab --dtype --seed --missing L:E,.. --fused --shard-mb]",
                      "write a random-weight checkpoint in a family's exact layout (tests, benchmarks)",
                      {{"arch", true, "qwen3_moe, qwen3_omni_moe, mixtral, olmoe or qwen2_moe"},
                       {"preset", true, "qwen3-30b-a3b: the real model's shapes (choose --layers)"},
                       {"layers", true, "decoder layers"},
                       {"experts", true, "experts per layer"},
                       {"top-k", true, "experts per token"},
                       {"hidden", true, "hidden size"},
                       {"moe-intermediate", true, "expert FFN size"},
                       {"heads", true, "attention heads"},
                       {"kv-heads", true, "key/value heads"},
                       {"vocab", true, "vocabulary size (> 256)"},
                       {"dtype", true, "bf16 (default), f16 or f32"},
                       {"seed", true, "random seed"},
                       {"missing", true, "experts to leave out, LAYER:EXPERT,..."},
                       {"fused", false, "fused experts.gate_up_proj / experts.down_proj tensors"},
                       {"shard-mb", true, "largest shard in MiB (default 4096)"}},
                      RunMakeCheckpoint, /*max_positional=*/1});
}

}  // namespace es::cli
