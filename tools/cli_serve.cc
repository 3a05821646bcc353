// Service commands: serve (the HTTP API over this store, api/) and fetch-expert (copy one expert from a remote
// expertstore into this store, verified).
#include <signal.h>

#include <cerrno>
#include <chrono>
#include <cstdio>

#include "api/client.h"
#include "api/generation.h"
#include "api/server.h"
#include "store/base/heap.h"
#include "tools/cli.h"
#include "tools/cli_runtime.h"

namespace es::cli {

namespace {

// Flag bounds: typo guards, not tuning.
constexpr int64_t kMaxBytesFlag = int64_t{1} << 32;
constexpr int64_t kMaxMillisFlag = int64_t{24} * 3600 * 1000;
constexpr int64_t kMaxCountFlag = 1 << 20;
constexpr int64_t kMaxPort = 65535;
constexpr int64_t kMaxIoThreads = 256;
constexpr int64_t kMaxComputeThreads = 1024;
// How often the serving process returns freed heap pages to the system (ReleaseFreeHeap).
constexpr std::chrono::seconds kTrimInterval{10};

Result<std::chrono::milliseconds> Millis(const Args& args, std::string_view flag, std::chrono::milliseconds fallback) {
  ES_ASSIGN_OR_RETURN(int64_t v, args.GetInt(flag, fallback.count(), 1, kMaxMillisFlag));
  return std::chrono::milliseconds(v);
}

Result<api::ServerOptions> ServerOptionsFromArgs(const Args& args) {
  api::ServerOptions o;
  o.host = args.GetOr("host", o.host);
  ES_ASSIGN_OR_RETURN(int64_t port, args.GetInt("port", o.port, 0, kMaxPort));
  o.port = static_cast<uint16_t>(port);
  ES_ASSIGN_OR_RETURN(int64_t io, args.GetInt("io-threads", 0, 0, kMaxIoThreads));
  o.io_threads = static_cast<uint32_t>(io);
  ES_ASSIGN_OR_RETURN(int64_t header, args.GetInt("max-header-bytes", static_cast<int64_t>(o.max_header_bytes), 1024, kMaxBytesFlag));
  o.max_header_bytes = static_cast<size_t>(header);
  ES_ASSIGN_OR_RETURN(int64_t body, args.GetInt("max-body-bytes", static_cast<int64_t>(o.max_body_bytes), 1, kMaxBytesFlag));
  o.max_body_bytes = static_cast<size_t>(body);
  ES_ASSIGN_OR_RETURN(o.request_timeout, Millis(args, "request-timeout-ms", o.request_timeout));
  ES_ASSIGN_OR_RETURN(o.idle_timeout, Millis(args, "idle-timeout-ms", o.idle_timeout));
  ES_ASSIGN_OR_RETURN(o.write_timeout, Millis(args, "write-timeout-ms", o.write_timeout));
  ES_ASSIGN_OR_RETURN(o.drain_timeout, Millis(args, "drain-timeout-ms", o.drain_timeout));
  ES_ASSIGN_OR_RETURN(int64_t conns, args.GetInt("max-connections", static_cast<int64_t>(o.max_connections), 1, kMaxCountFlag));
  o.max_connections = static_cast<size_t>(conns);
  ES_ASSIGN_OR_RETURN(o.requests_per_second, args.GetDouble("rate", o.requests_per_second));
  ES_ASSIGN_OR_RETURN(o.request_burst, args.GetDouble("burst", o.request_burst));
  if (o.requests_per_second < 0 || o.request_burst < 1) {
    return Status::InvalidArgument("--rate must be >= 0 (0: no limit) and --burst >= 1");
  }
  return o;
}

Result<api::GenerationOptions> GenerationOptionsFromArgs(const Args& args) {
  api::GenerationOptions g;
  ES_ASSIGN_OR_RETURN(g.runtime, RuntimeConfigFromArgs(args));
  g.runtime.record = !args.Has("no-record");
  ES_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0, 0, kMaxComputeThreads));
  g.compute_threads = static_cast<uint32_t>(threads);
  ES_ASSIGN_OR_RETURN(int64_t queued, args.GetInt("max-queued", static_cast<int64_t>(g.max_queued), 1, kMaxCountFlag));
  g.max_queued = static_cast<size_t>(queued);
  ES_ASSIGN_OR_RETURN(int64_t per_client, args.GetInt("max-queued-per-client", static_cast<int64_t>(g.max_queued_per_client), 1,
                                                      kMaxCountFlag));
  g.max_queued_per_client = static_cast<size_t>(per_client);
  ES_ASSIGN_OR_RETURN(int64_t models, args.GetInt("max-models", static_cast<int64_t>(g.max_loaded_models), 1, kMaxCountFlag));
  g.max_loaded_models = static_cast<size_t>(models);
  ES_ASSIGN_OR_RETURN(int64_t context, args.GetInt("ctx-size", 0, 1, INT32_MAX));
  g.context = static_cast<uint32_t>(context);
  ES_ASSIGN_OR_RETURN(int64_t parallel, args.GetInt("parallel", 0, 0, kMaxCountFlag));
  g.parallel = static_cast<size_t>(parallel);
  ES_ASSIGN_OR_RETURN(int64_t kv_mb, args.GetInt("kv-budget-mb", static_cast<int64_t>(kDefaultKvBudget >> 20), 1,
                                                 INT32_MAX));
  g.kv_budget_bytes = static_cast<size_t>(kv_mb) << 20;
  ES_ASSIGN_OR_RETURN(int64_t batch, args.GetInt("batch-size", static_cast<int64_t>(g.step_tokens), 1, kMaxCountFlag));
  g.step_tokens = static_cast<size_t>(batch);
  return g;
}

Status RunServe(const Args& args) {
  // SIGTERM and SIGINT are taken by sigwait below: block them before any thread starts (RocksDB's, the
  // cache's, the server's), so that every thread inherits the mask and the signal reaches only sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A server outlives the terminal or pipe it was started from: a write to a closed stdout or stderr fails
  // instead of killing it (sockets already write without SIGPIPE).
  ::signal(SIGPIPE, SIG_IGN);

  ES_ASSIGN_OR_RETURN(api::ServerOptions server_options, ServerOptionsFromArgs(args));
  ES_ASSIGN_OR_RETURN(api::GenerationOptions generation_options, GenerationOptionsFromArgs(args));
  api::CompletionLimits limits;
  ES_ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", limits.max_tokens, 1, kMaxCountFlag));
  limits.max_tokens = static_cast<uint32_t>(max_tokens);

  // The serving process is the store's writer (it merges recorders' journals); beside another writer, or on a store
  // it cannot write, it serves read-only.
  const bool writable = StoreWritable(args);
  if (!writable) {
    if (!args.global().quiet && generation_options.runtime.record) {
      std::fprintf(stderr, "note: the store at %s is open read-only: serving it without recording usage\n",
                   args.global().store.c_str());
    }
    generation_options.runtime.record = false;
  }
  auto opened = OpenStore(args, /*writer=*/writable);
  if (!opened.ok() && opened.status().IsBusy()) {
    std::fprintf(stderr, "note: %s; serving it read-only (a snapshot as of now)\n", opened.status().message().c_str());
    opened = OpenStore(args, /*writer=*/false);
  } else if (!opened.ok() && opened.status().IsResourceExhausted() && !generation_options.runtime.record) {
    // A full disk keeps the writer from opening; serving without recording needs no space.
    std::fprintf(stderr, "note: %s; serving it read-only\n", opened.status().message().c_str());
    opened = OpenStore(args, /*writer=*/false);
  }
  if (!opened.ok()) return opened.status();
  std::unique_ptr<Store> store = std::move(opened).value();
  // As the writer, fold in the usage other processes (eval, profile beside it) journal while it serves.
  if (!store->read_only()) ES_RETURN_IF_ERROR(store->StartJournalMerging(kJournalMergeInterval));

  api::Metrics metrics;
  ES_ASSIGN_OR_RETURN(auto generation, api::GenerationService::Create(*store, generation_options, metrics));
  api::MetadataCache metadata;
  api::Tokenizers tokenizers;
  api::ApiContext ctx{store.get(), &metrics, generation.get(), limits, args.Has("allow-writes"), &metadata, &tokenizers};
  ES_ASSIGN_OR_RETURN(auto server, api::HttpServer::Start(ctx, server_options));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("host").String(server_options.host).Key("port").Uint(server->port()).EndObject();
    PrintJson(w);
  }
  if (!args.global().quiet) {
    std::fprintf(stderr, "expertstore: serving %s on http://%s:%u (SIGTERM or Ctrl-C drains and stops)\n",
                 store->path().c_str(), server_options.host.c_str(), server->port());
    for (const std::string& reason : InexactReasonsOf(generation_options.runtime)) {
      std::fprintf(stderr, "expertstore: completions are NOT EXACT: %s\n", reason.c_str());
    }
  }
  // The main thread waits for the signal and meanwhile, every kTrimInterval, hands the heap pages that requests and
  // generations freed back to the system. An allocator keeps freed memory in its arenas, and which of them holds
  // the most varies with how requests land on threads: left alone (glibc's malloc most of all), resident memory
  // creeps up for minutes to the sum of every arena's high-water mark while the memory in use stays flat.
  int signal = 0;
  const timespec trim_interval{kTrimInterval.count(), 0};
  while ((signal = sigtimedwait(&signals, nullptr, &trim_interval)) < 0) {
    if (errno == EAGAIN) ReleaseFreeHeap();
  }
  if (!args.global().quiet) std::fprintf(stderr, "expertstore: %s: draining\n", signal == SIGINT ? "SIGINT" : "SIGTERM");
  server->Shutdown();
  server.reset();
  generation.reset();
  store.reset();  // closes the catalog and releases the writer lock
  if (!args.global().quiet) std::fprintf(stderr, "expertstore: stopped\n");
  return Status::Ok();
}

Status RunFetchExpert(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string from, args.Require("from"));
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  if (!args.Has("layer") || !args.Has("expert")) return Status::InvalidArgument("fetch-expert needs --layer and --expert");
  ES_ASSIGN_OR_RETURN(int64_t layer, args.GetInt("layer", 0, 0, UINT32_MAX));
  ES_ASSIGN_OR_RETURN(int64_t expert, args.GetInt("expert", 0, 0, UINT32_MAX));
  ES_ASSIGN_OR_RETURN(api::HttpUrl url, api::ParseHttpUrl(from));
  api::ClientOptions client;
  ES_ASSIGN_OR_RETURN(int64_t timeout, args.GetInt("timeout-ms", client.timeout.count(), 1, kMaxMillisFlag));
  client.timeout = std::chrono::milliseconds(timeout);
  auto start = std::chrono::steady_clock::now();
  ES_ASSIGN_OR_RETURN(api::ExpertBlob blob, api::FetchExpertBlob(url, model, static_cast<uint32_t>(layer),
                                                                 static_cast<uint32_t>(expert), client));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/true, /*create=*/true));
  api::ImportOptions import;
  import.as_model = args.GetOr("as", "");
  import.replace = args.Has("replace");
  ES_ASSIGN_OR_RETURN(api::ImportResult r, api::ImportExpert(*store, blob, import));
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  char checksum[17];
  std::snprintf(checksum, sizeof(checksum), "%016llx", static_cast<unsigned long long>(blob.checksum));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("model").String(r.model).Key("layer").Uint(blob.layer).Key("expert").Uint(blob.expert)
        .Key("bytes").Uint(r.bytes).Key("checksum").String(checksum).Key("created_model").Bool(r.created_model)
        .Key("unchanged").Bool(r.unchanged).Key("seconds").Double(seconds).EndObject();
    PrintJson(w);
  } else {
    std::printf("%s layer %u expert %u: %s, xxh3 %s verified, %s%s\n", r.model.c_str(), blob.layer, blob.expert,
                HumanBytes(r.bytes).c_str(), checksum, r.unchanged ? "already in the store" : "stored",
                r.created_model ? " (model record created)" : "");
  }
  return Status::Ok();
}

}  // namespace

void RegisterServeCommands(std::vector<Command>& commands) {
  std::vector<FlagSpec> serve_flags = {{"host", true, "address to listen on (default 127.0.0.1)"},
                       {"port", true, "port (default 8080; 0 picks a free one)"},
                       {"io-threads", true, "threads serving connections (default min(cores, 4))"},
                       {"max-connections", true, "open connections at most (default 512); more get 503"},
                       {"max-header-bytes", true, "request header limit (default 16384); more gets 431"},
                       {"max-body-bytes", true, "request body limit (default 1048576); more gets 413"},
                       {"request-timeout-ms", true, "a request must arrive within this from its first byte (default 10000)"},
                       {"idle-timeout-ms", true, "close keep-alive connections idle this long (default 30000)"},
                       {"write-timeout-ms", true, "each write must finish within this (default 30000)"},
                       {"drain-timeout-ms", true, "on SIGTERM, wait this long for requests in flight (default 30000)"},
                       {"rate", true, "requests per second per connection (default 1000; 0: no limit); more gets 429"},
                       {"burst", true, "requests a connection may send at once above the rate (default 2000)"},
                       {"max-tokens", true, "the most tokens one completion may generate (default 4096)"},
                       {"max-queued", true, "generation requests waiting at most (default 64)"},
                       {"max-queued-per-client", true, "generation requests one client address may have waiting (default 8)"},
                       {"max-models", true, "models kept loaded for generation (default 1)"},
                       {"allow-writes", false, "accept DELETE /v1/models/{model} (otherwise the service only reads)"},
                       {"ctx-size", true, "tokens of context per request, prompt included (default and most: the model's)"},
                       {"parallel", true, "requests decoding together at most (default: as many 1024-token KV caches as "
                                          "--kv-budget-mb holds, at most 16)"},
                       {"kv-budget-mb", true, "KV caches of the requests decoding together at most (default 1024); "
                                              "more requests wait"},
                       {"batch-size", true, "forward rows per step (default 512): decode rows, then prompt chunks"}};
  for (FlagSpec& f : RuntimeFlags()) serve_flags.push_back(std::move(f));
  commands.push_back({"serve",
                      "serve [--host 127.0.0.1 --port 8080 --state S --cache-mb N --routing R --max-connections N ...]",
                      "the HTTP service: models, experts, blobs, queries, OpenAI-compatible completions, metrics",
                      std::move(serve_flags), RunServe});
  commands.push_back({"fetch-expert",
                      "fetch-expert --from http://HOST:PORT --model M --layer L --expert E [--as NAME] [--replace]",
                      "copy one expert from a remote expertstore into this store, verifying its checksum",
                      {{"from", true, "the remote server's URL"},
                       {"model", true, "the remote model"},
                       {"layer", true, "layer"},
                       {"expert", true, "expert"},
                       {"as", true, "local model name (default: the remote's)"},
                       {"replace", false, "replace a local expert whose bytes differ"},
                       {"timeout-ms", true, "per-step network timeout (default 60000)"}},
                      RunFetchExpert});
}

}  // namespace es::cli
