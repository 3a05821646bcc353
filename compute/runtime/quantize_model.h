// QuantizeModel: a stored model re-encoded into a new model of the same store, expert by expert: each projection
// decoded to fp32 (from its dtype or block format) and encoded again in the chosen GGML format
// (compute/kernels/ggml_quantize.h), dense matrices likewise when asked, norms, assets and components copied as
// they are, and the source's usage, trust and profile records carried over. Streaming (one expert in memory at a
// time), committed in transactions like ingest, so a killed run resumes where its last commit ended;
// idempotent (the same source and settings again is a no-op); a target of another source or other settings is
// refused unless `replace`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "store/base/ggml_type.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es {

// Mixed precision: in each layer, the experts a rule ranks first get `top`, the others `rest`.
struct ExpertRule {
  enum class By : uint8_t {
    kTrust,   // by trust record (TrustInfo::trust), highest first; experts without one last
    kUsage,   // by recorded activations, most first
    kRandom,  // a seeded shuffle: the control that shows whether trust or usage choose better than chance
    kList,    // the experts of `list`
  };
  By by = By::kTrust;
  GgmlType top = GgmlType::kQ8_0;
  double top_fraction = 0.25;  // of each layer's experts, rounded to the nearest whole expert
  GgmlType rest = GgmlType::kQ4_K;
  std::vector<std::pair<uint32_t, uint32_t>> list;  // kList: (layer, expert)
  uint64_t seed = 1;                                // kRandom
};
// "trust:q8_0@25%,q4_k@rest", "usage:...", "random:...[,seed=N]", "list:q8_0@0:3+5:17,q4_k@rest" (formats in any
// case). InvalidArgument naming `experts_by` otherwise.
Result<ExpertRule> ParseExpertRule(std::string_view text);

struct QuantizeOptions {
  std::string model;                // the source
  std::string to;                   // the new model's name
  GgmlType experts = GgmlType::kQ8_0;  // every expert projection's format (F32, F16 and BF16 store plain dtypes)
  std::optional<ExpertRule> experts_by = std::nullopt;  // when set, the formats come from the rule, not `experts`
  std::optional<GgmlType> dense = std::nullopt;  // the dense matrices' format (2-D tensors); unset: copied as is
  bool replace = false;
  uint64_t commit_bytes = 256ull << 20;
  size_t threads = 0;  // re-encoding threads, the caller's included; 0: one per hardware thread
  std::function<void(uint64_t done, uint64_t total)> progress = {};  // experts written of the source's
};

struct QuantizeResult {
  std::string model;
  uint64_t experts = 0;
  uint64_t dense_tensors = 0;
  uint64_t source_bytes = 0;  // payload bytes of the source's experts
  uint64_t bytes = 0;         // ... of the new model's
  uint64_t bytes_written = 0; // payload bytes this run wrote
  double seconds = 0;
  bool unchanged = false;     // already there: nothing written
  bool resumed = false;       // an interrupted run with the same settings was completed
  // Projections whose rows are not whole blocks of the format asked for, by "ROLE FROM -> TO": llama.cpp's
  // fallbacks (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, IQ4_XS to IQ4_NL; F16 where a row is not whole 32-value
  // blocks either), counted over experts (or dense tensors, role "dense").
  std::map<std::string, uint64_t> fallbacks;
  uint64_t metadata_records = 0;  // usage, trust and profile records carried over
  std::map<std::string, uint64_t> experts_by_format;  // experts per format asked for (before fallbacks)
};

// The format a row of `cols` values gets when `wanted` is asked for: `wanted` when the row is whole blocks of it,
// else llama.cpp's fallback (above), else F16.
GgmlType FallbackFormat(GgmlType wanted, uint64_t cols);

// InvalidArgument for a bad name, the target equal to the source or holding something else (without `replace`),
// or a format QuantizeGgmlRow does not write; NotFound for no such source; NotSupported in a read-only store.
Result<QuantizeResult> QuantizeModel(Store& store, const QuantizeOptions& options);

}  // namespace es
