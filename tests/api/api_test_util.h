// Shared fixture of the API tests: one store holding the tiny Qwen3-MoE demo model ("tiny", real weights and
// tokenizer, for completions) and a synthetic model ("m": 2 layers x 8 experts, one absent, with trust, usage and
// profile records whose values are pure functions of (layer, expert), for the metadata routes), and a server
// started in-process on a free loopback port with its own metrics and generation service.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "api/generation.h"
#include "api/metrics.h"
#include "api/server.h"
#include "store/store.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_data.h"

namespace es::testing {

inline constexpr const char* kTinyCheckpoint = kTinyModel;
inline constexpr char kTiny[] = "tiny";
inline constexpr char kSynthetic[] = "m";
inline constexpr uint32_t kSyntheticLayers = 2;
inline constexpr uint32_t kSyntheticExperts = 8;
inline constexpr uint32_t kAbsentLayer = 1;
inline constexpr uint32_t kAbsentExpert = 7;

// The synthetic model's metadata, as written.
double SyntheticLift(uint32_t layer, uint32_t expert, const std::string& domain);
double SyntheticTrust(uint32_t layer, uint32_t expert);
uint64_t SyntheticActivations(uint32_t layer, uint32_t expert);

// Creates the store (once per process) and returns it; the directory lives until exit.
Store& SharedStore();

struct TestServer {
  api::Metrics metrics;
  std::unique_ptr<api::GenerationService> generation;
  api::MetadataCache metadata;
  api::Tokenizers tokenizers;
  api::ApiContext context;
  std::unique_ptr<api::HttpServer> server;
  uint16_t port() const { return server->port(); }
  ~TestServer();
};

// Options the tests start from: short timeouts, so that limit tests finish quickly.
api::ServerOptions TestServerOptions();
std::unique_ptr<TestServer> StartServer(Store& store, const api::ServerOptions& options = TestServerOptions(),
                                        const api::GenerationOptions& generation = {},
                                        const api::CompletionLimits& limits = {});

// Polls a condition on the server's state (a hang guard, not a timing assertion).
template <typename Fn>
bool Eventually(Fn&& fn) {
  constexpr int kPolls = 1000;
  constexpr auto kPollInterval = std::chrono::milliseconds(20);
  for (int i = 0; i < kPolls; ++i) {
    if (fn()) return true;
    std::this_thread::sleep_for(kPollInterval);
  }
  return false;
}

}  // namespace es::testing
