// UsageRecorder: turns the forward pass's routing events, and under teacher forcing whether the model's top-1
// prediction was right, into per-expert usage counters (docs/metadata.md), batched in memory and written as
// usage merges through Store::WriteMetadata: into the catalog in the writer, into the journal elsewhere, so
// concurrent recorders never lose or double count. Not thread-safe: one generation feeds it at a time.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "compute/model.h"
#include "store/records.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es {

// Routed (token, layer) events between automatic flushes: one synced catalog write or journal append per
// this many (about every 700 tokens of a 6-layer model, 90 of a 48-layer one).
inline constexpr uint64_t kDefaultUsageFlushEvents = 4096;

struct UsageRecorderOptions {
  uint64_t flush_events = kDefaultUsageFlushEvents;  // 0: only explicit Flush() calls write
};

class UsageRecorder {
 public:
  // `model` names the keys; layers x experts_per_layer is the model's shape. The store must outlive this.
  UsageRecorder(Store& store, std::string model, uint32_t layers, uint32_t experts_per_layer,
                UsageRecorderOptions options = {});

  // Feeds one routing event (ForwardOptions::observer). Per selected expert (id >= 0, weight > 0): one
  // activation, the weight into gate mass (and its square), last used = now; a co-activation with every other
  // expert the token selected in the same layer, and with every expert it selects in its next MoE layer.
  // A new Forward call is recognised by its events restarting (a lower layer, or the same layer again from a
  // token index not above the last).
  void Observe(const RoutingEvent& event);
  // Under teacher forcing: the token of the latest Forward call at KV position `position` predicted the next
  // token correctly (`correct`) or not. Correct predictions add one success to every expert that token used.
  void RecordOutcome(size_t position, bool correct);
  // Later activations also count under this domain label (profile); empty: none. InvalidArgument for a name
  // ValidateDomainName rejects.
  Status SetDomain(std::string_view domain);

  // Writes everything pending as one batch of merges. A failed flush (automatic or not) drops nothing: the
  // counts stay pending for the next. Counts not flushed when the recorder is destroyed are lost, so callers
  // flush at the end and report its status.
  Status Flush();

  uint64_t events() const { return events_; }
  // Activations per domain label since construction, [domain][layer * experts_per_layer + expert] (the
  // profile command's own counts; unaffected by flushing).
  const std::map<std::string, std::vector<uint64_t>>& domain_activations() const { return domain_totals_; }

 private:
  uint32_t Key(uint32_t layer, uint32_t expert) const { return layer * experts_per_layer_ + expert; }
  void StartForward();

  Store& store_;
  std::string model_;
  uint32_t layers_;
  uint32_t experts_per_layer_;
  UsageRecorderOptions options_;

  // Pending increments, per dense key: counters (coactivations kept apart), co-activations by
  // (key << 32 | other key), and per domain.
  std::vector<UsageCounts> pending_;
  std::unordered_map<uint64_t, uint64_t> co_pending_;
  std::map<std::string, std::vector<UsageCounts>> domain_pending_;
  std::map<std::string, std::vector<uint64_t>> domain_totals_;
  std::string domain_;
  uint64_t events_ = 0;
  uint64_t events_since_flush_ = 0;

  // The latest Forward call: per token index, its position, the layer of its last event and the keys it used
  // there, and every key it used (for success counts).
  struct TokenState {
    size_t position = 0;
    int64_t last_layer = -1;
    std::vector<uint32_t> last_keys;
    std::vector<uint32_t> all_keys;
  };
  std::vector<TokenState> tokens_;
  int64_t last_event_layer_ = -1;
  size_t last_event_token_ = 0;
  uint64_t now_ms_ = 0;
};

}  // namespace es
