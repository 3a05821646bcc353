// Fills a store's model with synthetic trust and specialisation-profile records (7 domains, deterministic
// pseudo-random lifts and shares per expert), so that bench/http_bench.sh measures the query route over a
// realistic amount of metadata before `profile` / `calibrate` have run. The values mean nothing: benchmarks only.
// Usage: http_bench_fixture STORE MODEL
#include <cstdio>
#include <random>
#include <string>

#include "store/records.h"
#include "store/store.h"

namespace {

constexpr const char* kDomains[] = {"english", "german", "spanish", "russian", "chinese", "python", "c"};
constexpr uint64_t kSeed = 42;
constexpr double kMaxLift = 4.0;
constexpr uint64_t kMaxActivations = 10000;
constexpr uint32_t kCoactivated = 4;

es::Status Fill(const std::string& path, const std::string& model) {
  ES_ASSIGN_OR_RETURN(auto store, es::Store::Open(path, es::StoreOptions{}));
  auto v = store->catalog().Get(es::Cf::kModels, es::ModelKey(model));
  if (!v.ok()) return v.status();
  ES_ASSIGN_OR_RETURN(es::ModelInfo info, es::DecodeModel(*v));
  std::mt19937_64 rng(kSeed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  es::CatalogBatch batch;
  for (uint32_t l = 0; l < info.num_layers; ++l) {
    for (uint32_t e = 0; e < info.experts_per_layer; ++e) {
      std::string key = es::ExpertKey(model, l, e);
      es::TrustInfo t;
      t.convergence_rate = unit(rng);
      t.stability = unit(rng);
      t.efficiency = unit(rng);
      t.trust = (t.convergence_rate + t.stability + t.efficiency) / 3;
      batch.Put(es::Cf::kTrust, key, es::EncodeTrust(t));
      es::ProfileInfo p;
      double best = -1;
      for (const char* d : kDomains) {
        es::DomainShare s{d, static_cast<uint64_t>(unit(rng) * kMaxActivations), unit(rng), unit(rng) * kMaxLift};
        if (s.lift > best) {
          best = s.lift;
          p.primary_domain = d;
        }
        p.domains.push_back(s);
      }
      for (uint32_t c = 1; c <= kCoactivated; ++c) {
        p.top_coactivated.push_back({l, (e + c) % info.experts_per_layer, static_cast<uint64_t>(unit(rng) * 100)});
      }
      batch.Put(es::Cf::kProfiles, key, es::EncodeProfile(p));
    }
  }
  return store->catalog().Write(batch);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: http_bench_fixture STORE MODEL\n");
    return 2;
  }
  es::Status s = Fill(argv[1], argv[2]);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
