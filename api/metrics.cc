// Metrics bookkeeping and the Prometheus exposition.
#include "api/metrics.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <unistd.h>

#include "store/base/heap.h"

namespace es::api {

namespace {

// Label values are route templates and model names; escape what the format requires anyway.
std::string Label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string Num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

void Header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void Sample(std::string& out, std::string_view name, std::string_view labels, std::string_view value) {
  out.append(name);
  if (!labels.empty()) out.append("{").append(labels).append("}");
  out.append(" ").append(value).append("\n");
}

// This process's resident set (/proc/self/statm, in pages); 0 where it cannot be read.
uint64_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const bool read = std::fscanf(f, "%llu %llu", &size, &resident) == 2;
  std::fclose(f);
  return read ? resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

void Sample(std::string& out, std::string_view name, std::string_view labels, uint64_t value) {
  Sample(out, name, labels, std::to_string(value));
}

// A histogram's _bucket, _sum and _count samples; `labels` is empty or ends without a comma.
void Histogram(std::string& out, std::string_view name, const std::string& labels, const LatencyHistogram& h) {
  std::string prefix = labels.empty() ? "" : labels + ",";
  for (size_t i = 0; i < kSwapInBucketBounds.size(); ++i) {
    Sample(out, std::string(name) + "_bucket", prefix + "le=\"" + Num(kSwapInBucketBounds[i]) + "\"", h.Cumulative(i));
  }
  Sample(out, std::string(name) + "_bucket", prefix + "le=\"+Inf\"", h.count);
  Sample(out, std::string(name) + "_sum", labels, Num(h.sum_seconds));
  Sample(out, std::string(name) + "_count", labels, h.count);
}

}  // namespace

void Metrics::RecordRequest(std::string_view route, int status, double seconds) {
  std::lock_guard lock(mu_);
  auto it = routes_.find(route);
  if (it == routes_.end()) it = routes_.emplace(std::string(route), RouteStats{}).first;
  it->second.latency.Observe(seconds);
  ++it->second.by_code[status];
}

void Metrics::ConnectionOpened() {
  std::lock_guard lock(mu_);
  ++connections_open_;
  ++connections_total_;
}

void Metrics::ConnectionClosed() {
  std::lock_guard lock(mu_);
  --connections_open_;
}

void Metrics::ConnectionRejected() {
  std::lock_guard lock(mu_);
  ++connections_rejected_;
}

void Metrics::AddBlobBytes(uint64_t bytes) {
  std::lock_guard lock(mu_);
  blob_bytes_ += bytes;
}

void Metrics::RecordGeneration(std::string_view model, uint64_t prompt_tokens, uint64_t completion_tokens,
                               double prefill_seconds, double decode_seconds) {
  std::lock_guard lock(mu_);
  auto it = generation_.find(model);
  if (it == generation_.end()) it = generation_.emplace(std::string(model), ModelGeneration{}).first;
  ModelGeneration& g = it->second;
  ++g.requests;
  g.prompt_tokens += prompt_tokens;
  g.completion_tokens += completion_tokens;
  g.prefill_seconds += prefill_seconds;
  g.decode_seconds += decode_seconds;
  // The first token comes out of the prefill; decode time covers the rest.
  if (decode_seconds > 0 && completion_tokens > 1) {
    g.last_tokens_per_second = static_cast<double>(completion_tokens - 1) / decode_seconds;
  }
}

void Metrics::RecordCancelled(std::string_view model) {
  std::lock_guard lock(mu_);
  auto it = generation_.find(model);
  if (it == generation_.end()) it = generation_.emplace(std::string(model), ModelGeneration{}).first;
  ++it->second.cancelled;
}

uint64_t Metrics::open_connections() const {
  std::lock_guard lock(mu_);
  return connections_open_;
}

std::string Metrics::Render(const GenerationGauges& gen, const CatalogMemory& catalog) const {
  std::lock_guard lock(mu_);
  std::string out;
  Header(out, "expertstore_http_requests_total", "counter", "HTTP requests answered, by route template and status code.");
  for (const auto& [route, s] : routes_) {
    for (const auto& [code, n] : s.by_code) {
      Sample(out, "expertstore_http_requests_total", "route=\"" + Label(route) + "\",code=\"" + std::to_string(code) + "\"", n);
    }
  }
  Header(out, "expertstore_http_request_duration_seconds", "histogram",
         "Time from a request's last byte to its response's last byte, by route template.");
  for (const auto& [route, s] : routes_) {
    Histogram(out, "expertstore_http_request_duration_seconds", "route=\"" + Label(route) + "\"", s.latency);
  }
  Header(out, "expertstore_http_connections_open", "gauge", "Client connections open now.");
  Sample(out, "expertstore_http_connections_open", "", connections_open_);
  Header(out, "expertstore_http_connections_total", "counter", "Client connections accepted and served.");
  Sample(out, "expertstore_http_connections_total", "", connections_total_);
  Header(out, "expertstore_http_connections_rejected_total", "counter", "Connections refused over the connection cap.");
  Sample(out, "expertstore_http_connections_rejected_total", "", connections_rejected_);
  Header(out, "expertstore_blob_bytes_total", "counter", "Expert payload bytes served by the blob route.");
  Sample(out, "expertstore_blob_bytes_total", "", blob_bytes_);

  Header(out, "expertstore_generation_queue_depth", "gauge", "Generation requests waiting for the model.");
  Sample(out, "expertstore_generation_queue_depth", "", gen.queued);
  Header(out, "expertstore_generation_running", "gauge", "Generation requests running now.");
  Sample(out, "expertstore_generation_running", "", gen.running);
  Header(out, "expertstore_generation_requests_total", "counter", "Generations finished, by model.");
  for (const auto& [m, g] : generation_) Sample(out, "expertstore_generation_requests_total", "model=\"" + Label(m) + "\"", g.requests);
  Header(out, "expertstore_generation_cancelled_total", "counter", "Generations stopped because the client went away, by model.");
  for (const auto& [m, g] : generation_) Sample(out, "expertstore_generation_cancelled_total", "model=\"" + Label(m) + "\"", g.cancelled);
  Header(out, "expertstore_prompt_tokens_total", "counter", "Prompt tokens processed, by model.");
  for (const auto& [m, g] : generation_) Sample(out, "expertstore_prompt_tokens_total", "model=\"" + Label(m) + "\"", g.prompt_tokens);
  Header(out, "expertstore_tokens_generated_total", "counter", "Tokens generated, by model.");
  for (const auto& [m, g] : generation_) Sample(out, "expertstore_tokens_generated_total", "model=\"" + Label(m) + "\"", g.completion_tokens);
  Header(out, "expertstore_prefill_seconds_total", "counter", "Seconds spent in prompt prefill, by model.");
  for (const auto& [m, g] : generation_) Sample(out, "expertstore_prefill_seconds_total", "model=\"" + Label(m) + "\"", Num(g.prefill_seconds));
  Header(out, "expertstore_decode_seconds_total", "counter",
         "Seconds spent decoding, by model (rate(tokens_generated) / rate(decode_seconds) is tokens/s).");
  for (const auto& [m, g] : generation_) Sample(out, "expertstore_decode_seconds_total", "model=\"" + Label(m) + "\"", Num(g.decode_seconds));
  Header(out, "expertstore_tokens_per_second", "gauge", "Decode tokens/s of the last finished generation, by model.");
  for (const auto& [m, g] : generation_) Sample(out, "expertstore_tokens_per_second", "model=\"" + Label(m) + "\"", Num(g.last_tokens_per_second));

  Header(out, "expertstore_cache_hits_total", "counter", "Expert cache demand hits, by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_cache_hits_total", "model=\"" + Label(c.model) + "\"", c.stats.hits);
  Header(out, "expertstore_cache_misses_total", "counter", "Expert cache demand misses, by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_cache_misses_total", "model=\"" + Label(c.model) + "\"", c.stats.misses);
  Header(out, "expertstore_cache_evictions_total", "counter", "Experts evicted from the cache, by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_cache_evictions_total", "model=\"" + Label(c.model) + "\"", c.stats.evictions);
  Header(out, "expertstore_cache_prefetch_hits_total", "counter", "Prefetched experts a demand access found, by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_cache_prefetch_hits_total", "model=\"" + Label(c.model) + "\"", c.stats.prefetch_hits);
  Header(out, "expertstore_cache_bytes_read_total", "counter", "Record bytes the cache read from the store (demand and prefetch), by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_cache_bytes_read_total", "model=\"" + Label(c.model) + "\"", c.stats.bytes_read);
  Header(out, "expertstore_cache_read_errors_total", "counter", "Expert reads that failed (I/O error or corruption), by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_cache_read_errors_total", "model=\"" + Label(c.model) + "\"", c.stats.read_errors);
  Header(out, "expertstore_cache_capacity_experts", "gauge", "Expert slots in the cache, by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_cache_capacity_experts", "model=\"" + Label(c.model) + "\"", c.capacity_slots);
  Header(out, "expertstore_prefetch_predicted_total", "counter",
         "Experts the lookahead router predicted for a layer (distinct per layer step), by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_prefetch_predicted_total", "model=\"" + Label(c.model) + "\"", c.prefetch_predicted);
  Header(out, "expertstore_prefetch_correct_total", "counter", "Predicted experts that their layer then used, by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_prefetch_correct_total", "model=\"" + Label(c.model) + "\"", c.prefetch_correct);
  Header(out, "expertstore_prefetch_used_total", "counter",
         "Experts that layers used where a prediction had been made (recall = correct / used), by model.");
  for (const auto& c : gen.caches) Sample(out, "expertstore_prefetch_used_total", "model=\"" + Label(c.model) + "\"", c.prefetch_used);
  Header(out, "expertstore_prefetch_precision", "gauge", "prefetch_correct / prefetch_predicted so far, by model.");
  for (const auto& c : gen.caches) {
    Sample(out, "expertstore_prefetch_precision", "model=\"" + Label(c.model) + "\"",
           Num(c.prefetch_predicted ? static_cast<double>(c.prefetch_correct) / static_cast<double>(c.prefetch_predicted) : 0));
  }
  Header(out, "expertstore_prefetch_recall", "gauge", "prefetch_correct / prefetch_used so far, by model.");
  for (const auto& c : gen.caches) {
    Sample(out, "expertstore_prefetch_recall", "model=\"" + Label(c.model) + "\"",
           Num(c.prefetch_used ? static_cast<double>(c.prefetch_correct) / static_cast<double>(c.prefetch_used) : 0));
  }
  Header(out, "expertstore_decode_steps_total", "counter",
         "Decode steps, by model and whether the prefetch governor let them prefetch.");
  for (const auto& c : gen.caches) {
    Sample(out, "expertstore_decode_steps_total", "model=\"" + Label(c.model) + "\",prefetch=\"yes\"", c.decode_steps_prefetching);
    Sample(out, "expertstore_decode_steps_total", "model=\"" + Label(c.model) + "\",prefetch=\"no\"", c.decode_steps_not_prefetching);
  }
  Header(out, "expertstore_expert_uses_total", "counter",
         "Expert uses, by model and precision: model (the model's own records) or low_bit (a miss tier's copy).");
  for (const auto& c : gen.caches) {
    Sample(out, "expertstore_expert_uses_total", "model=\"" + Label(c.model) + "\",precision=\"model\"",
           c.expert_uses - std::min(c.expert_uses, c.tier_uses));
    Sample(out, "expertstore_expert_uses_total", "model=\"" + Label(c.model) + "\",precision=\"low_bit\"", c.tier_uses);
  }
  Header(out, "expertstore_miss_tier_promotions_total", "counter",
         "Experts a miss tier served often enough to load at the model's precision, by model.");
  for (const auto& c : gen.caches) {
    Sample(out, "expertstore_miss_tier_promotions_total", "model=\"" + Label(c.model) + "\"", c.tier_promotions);
  }
  Header(out, "expertstore_swapin_seconds", "histogram", "How long an Acquire that missed stalled for its reads, by model.");
  for (const auto& c : gen.caches) Histogram(out, "expertstore_swapin_seconds", "model=\"" + Label(c.model) + "\"", c.stats.swap_in);

  Header(out, "expertstore_catalog_memory_bytes", "gauge",
         "Memory the catalog holds, by part: block_cache (cached table blocks), memtables, table_readers.");
  Sample(out, "expertstore_catalog_memory_bytes", "part=\"block_cache\"", catalog.block_cache);
  Sample(out, "expertstore_catalog_memory_bytes", "part=\"memtables\"", catalog.memtables);
  Sample(out, "expertstore_catalog_memory_bytes", "part=\"table_readers\"", catalog.table_readers);
  Header(out, "process_resident_memory_bytes", "gauge", "Resident memory of the serving process.");
  Sample(out, "process_resident_memory_bytes", "", ResidentBytes());
  // The allocator's own accounting: in use by allocations, and freed but still held (resident) by it.
  const HeapStats heap = ReadHeapStats();
  const std::string allocator = "allocator=\"" + std::string(heap.allocator) + "\",";
  Header(out, "expertstore_heap_bytes", "gauge",
         "The allocator's heap, by state: in_use (allocated), free (freed, still held); the allocator in a label.");
  Sample(out, "expertstore_heap_bytes", allocator + "state=\"in_use\"", heap.in_use);
  Sample(out, "expertstore_heap_bytes", allocator + "state=\"free\"", heap.free);
  return out;
}

}  // namespace es::api
