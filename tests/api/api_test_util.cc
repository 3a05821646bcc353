// The API tests' shared store and server.
#include "tests/api/api_test_util.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "ingest/ingest.h"
#include "tests/util/expert_model.h"

namespace es::testing {

double SyntheticLift(uint32_t layer, uint32_t expert, const std::string& domain) {
  uint32_t salt = domain == "python" ? 7 : 3;
  return 0.25 + static_cast<double>((layer * 11 + expert * salt) % 13) / 4.0;
}

double SyntheticTrust(uint32_t layer, uint32_t expert) { return static_cast<double>((layer * 5 + expert * 3) % 16) / 16.0; }

uint64_t SyntheticActivations(uint32_t layer, uint32_t expert) { return 100 + (layer * 37 + expert * 13) % 50; }

namespace {

// The shared store and its directory, closed and removed at exit (the store first).
struct SharedFixture {
  TempDir dir;
  std::unique_ptr<Store> store;
};

}  // namespace

Store& SharedStore() {
  static std::unique_ptr<SharedFixture> fixture = [] {
    auto f = std::make_unique<SharedFixture>();
    auto s = Store::Open(f->dir.Sub("store"), StoreOptions{});
    if (!s.ok()) {
      std::fprintf(stderr, "cannot create the test store: %s\n", s.status().ToString().c_str());
      std::abort();
    }
    f->store = std::move(s).value();
    Store* st = f->store.get();
    IngestOptions o;
    o.name = kTiny;
    auto ingested = IngestCheckpoint(*st, kTinyCheckpoint, o);
    TestModelSpec spec{.name = kSynthetic, .layers = kSyntheticLayers, .experts = kSyntheticExperts, .top_k = 2};
    spec.missing = {{kAbsentLayer, kAbsentExpert}};
    Status written = WriteTestModel(*st, spec);
    CatalogBatch batch;
    for (uint32_t l = 0; l < kSyntheticLayers; ++l) {
      for (uint32_t e = 0; e < kSyntheticExperts; ++e) {
        if (l == kAbsentLayer && e == kAbsentExpert) continue;
        std::string key = ExpertKey(kSynthetic, l, e);
        TrustInfo t;
        t.trust = SyntheticTrust(l, e);
        t.convergence_rate = 0.5;
        t.stability = 0.25;
        t.efficiency = 0.75;
        t.calibration_tokens = 1000;
        batch.Put(Cf::kTrust, key, EncodeTrust(t));
        ProfileInfo p;
        for (const char* d : {"python", "german"}) {
          p.domains.push_back({d, SyntheticActivations(l, e) / 2, 0.5, SyntheticLift(l, e, d)});
        }
        p.primary_domain = SyntheticLift(l, e, "python") >= SyntheticLift(l, e, "german") ? "python" : "german";
        p.top_coactivated = {{l, (e + 1) % kSyntheticExperts, 9}};
        batch.Put(Cf::kProfiles, key, EncodeProfile(p));
        UsageCounts u;
        u.activation_count = SyntheticActivations(l, e);
        u.gate_mass = 0.5 * static_cast<double>(u.activation_count);
        batch.Merge(Cf::kUsage, key, EncodeUsage(u));
      }
    }
    Status meta = st->catalog().Write(batch);
    if (!ingested.ok() || !written.ok() || !meta.ok()) {
      std::fprintf(stderr, "cannot fill the test store: %s %s %s\n", ingested.status().ToString().c_str(),
                   written.ToString().c_str(), meta.ToString().c_str());
      std::abort();
    }
    return f;
  }();
  return *fixture->store;
}

TestServer::~TestServer() {
  if (server) server->Shutdown();
  server.reset();
  generation.reset();
}

api::ServerOptions TestServerOptions() {
  api::ServerOptions o;
  o.port = 0;
  o.io_threads = 2;
  o.max_header_bytes = 4096;
  o.max_body_bytes = 64 << 10;
  o.request_timeout = std::chrono::milliseconds(2000);
  o.idle_timeout = std::chrono::milliseconds(5000);
  o.write_timeout = std::chrono::milliseconds(5000);
  o.drain_timeout = std::chrono::milliseconds(10000);
  return o;
}

std::unique_ptr<TestServer> StartServer(Store& store, const api::ServerOptions& options,
                                        const api::GenerationOptions& generation, const api::CompletionLimits& limits) {
  auto s = std::make_unique<TestServer>();
  auto g = api::GenerationService::Create(store, generation, s->metrics);
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  if (!g.ok()) return nullptr;
  s->generation = std::move(g).value();
  s->context = api::ApiContext{&store, &s->metrics, s->generation.get(), limits, false, &s->metadata, &s->tokenizers};
  auto srv = api::HttpServer::Start(s->context, options);
  EXPECT_TRUE(srv.ok()) << srv.status().ToString();
  if (!srv.ok()) return nullptr;
  s->server = std::move(srv).value();
  return s;
}

}  // namespace es::testing
