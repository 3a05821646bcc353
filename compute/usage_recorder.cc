// UsageRecorder implementation.
#include "compute/usage_recorder.h"

#include <algorithm>
#include <chrono>

namespace es {

namespace {

uint64_t NowUnixMs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

constexpr int kKeyShift = 32;

}  // namespace

UsageRecorder::UsageRecorder(Store& store, std::string model, uint32_t layers, uint32_t experts_per_layer,
                             UsageRecorderOptions options)
    : store_(store), model_(std::move(model)), layers_(layers), experts_per_layer_(experts_per_layer),
      options_(options), pending_(static_cast<size_t>(layers) * experts_per_layer) {}

Status UsageRecorder::SetDomain(std::string_view domain) {
  if (!domain.empty()) ES_RETURN_IF_ERROR(ValidateDomainName(domain));
  domain_ = std::string(domain);
  return Status::Ok();
}

void UsageRecorder::StartForward() {
  tokens_.clear();
  now_ms_ = NowUnixMs();
}

void UsageRecorder::Observe(const RoutingEvent& e) {
  if (e.layer >= layers_) return;
  const auto layer = static_cast<int64_t>(e.layer);
  if (last_event_layer_ < 0 || layer < last_event_layer_ || (layer == last_event_layer_ && e.token <= last_event_token_)) {
    StartForward();
  }
  last_event_layer_ = layer;
  last_event_token_ = e.token;
  if (tokens_.size() <= e.token) tokens_.resize(e.token + 1);
  TokenState& tok = tokens_[e.token];
  tok.position = e.position;

  std::vector<uint32_t> keys;
  keys.reserve(e.experts.size());
  std::vector<UsageCounts>* domain = nullptr;
  std::vector<uint64_t>* domain_total = nullptr;
  if (!domain_.empty()) {
    auto& d = domain_pending_[domain_];
    if (d.empty()) d.resize(pending_.size());
    domain = &d;
    auto& t = domain_totals_[domain_];
    if (t.empty()) t.resize(pending_.size());
    domain_total = &t;
  }
  for (size_t j = 0; j < e.experts.size(); ++j) {
    int32_t x = e.experts[j];
    float w = e.weights[j];
    if (x < 0 || static_cast<uint32_t>(x) >= experts_per_layer_ || !(w > 0.0f)) continue;
    uint32_t key = Key(e.layer, static_cast<uint32_t>(x));
    keys.push_back(key);
    for (UsageCounts* u : {&pending_[key], domain ? &(*domain)[key] : nullptr}) {
      if (u == nullptr) continue;
      ++u->activation_count;
      u->gate_mass += w;
      u->gate_mass_sq += static_cast<double>(w) * w;
      u->last_used_unix_ms = std::max(u->last_used_unix_ms, now_ms_);
    }
    if (domain_total) ++(*domain_total)[key];
  }
  // Same layer: every ordered pair of distinct experts. Next layer: the previous MoE layer's experts of this
  // token with each of these.
  for (uint32_t a : keys) {
    for (uint32_t b : keys) {
      if (a != b) ++co_pending_[(static_cast<uint64_t>(a) << kKeyShift) | b];
    }
  }
  if (tok.last_layer >= 0 && tok.last_layer < layer) {
    for (uint32_t a : tok.last_keys) {
      for (uint32_t b : keys) ++co_pending_[(static_cast<uint64_t>(a) << kKeyShift) | b];
    }
  }
  tok.last_layer = layer;
  tok.all_keys.insert(tok.all_keys.end(), keys.begin(), keys.end());
  tok.last_keys = std::move(keys);
  ++events_;
  if (options_.flush_events > 0 && ++events_since_flush_ >= options_.flush_events) {
    // A failure keeps the counts pending; the next flush (automatic or the caller's) tries again.
    Flush().IgnoreError();
    events_since_flush_ = 0;
  }
}

void UsageRecorder::RecordOutcome(size_t position, bool correct) {
  if (!correct || tokens_.empty() || position < tokens_[0].position) return;
  // A Forward call's tokens sit at consecutive positions.
  size_t index = position - tokens_[0].position;
  if (index >= tokens_.size() || tokens_[index].position != position) return;
  for (uint32_t key : tokens_[index].all_keys) {
    ++pending_[key].success_count;
    if (!domain_.empty()) {
      auto& d = domain_pending_[domain_];
      if (d.empty()) d.resize(pending_.size());
      ++d[key].success_count;
    }
  }
}

Status UsageRecorder::Flush() {
  // Co-activations grouped by key, sorted by (layer, expert) as the record requires (dense keys sort so).
  std::vector<std::pair<uint64_t, uint64_t>> co(co_pending_.begin(), co_pending_.end());
  std::sort(co.begin(), co.end());
  CatalogBatch batch;
  size_t ci = 0;
  for (uint32_t key = 0; key < pending_.size(); ++key) {
    UsageCounts u = pending_[key];
    for (; ci < co.size() && (co[ci].first >> kKeyShift) == key; ++ci) {
      auto other = static_cast<uint32_t>(co[ci].first & 0xffffffffu);
      u.coactivations.push_back({other / experts_per_layer_, other % experts_per_layer_, co[ci].second});
    }
    if (u.activation_count == 0 && u.success_count == 0 && u.coactivations.empty()) continue;
    batch.Merge(Cf::kUsage, ExpertKey(model_, key / experts_per_layer_, key % experts_per_layer_), EncodeUsage(u));
  }
  for (const auto& [domain, counts] : domain_pending_) {
    for (uint32_t key = 0; key < counts.size(); ++key) {
      if (counts[key].activation_count == 0 && counts[key].success_count == 0) continue;
      batch.Merge(Cf::kUsage, DomainUsageKey(model_, key / experts_per_layer_, key % experts_per_layer_, domain),
                  EncodeUsage(counts[key]));
    }
  }
  ES_RETURN_IF_ERROR(store_.WriteMetadata(batch));
  for (auto& u : pending_) u = UsageCounts{};
  co_pending_.clear();
  domain_pending_.clear();
  events_since_flush_ = 0;
  return Status::Ok();
}

}  // namespace es
