// store_crash_writer STORE FIRST_SEED: appends committed records to STORE forever, printing
// "ACK <name> <seed> <size>" after each commit returns. The kill test SIGKILLs it at random moments.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "store/store.h"
#include "tests/store/store_test_util.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: store_crash_writer STORE FIRST_SEED\n");
    return 2;
  }
  es::StoreOptions options;
  options.max_segment_bytes = 1 << 20;
  auto store = es::Store::Open(argv[1], options);
  if (!store.ok()) {
    std::fprintf(stderr, "open: %s\n", store.status().ToString().c_str());
    return 1;
  }
  uint64_t seed = std::strtoull(argv[2], nullptr, 10);
  std::mt19937_64 rng(seed);
  while (true) {
    auto txn = (*store)->BeginWrite();
    if (!txn.ok()) return 1;
    int n = 1 + static_cast<int>(rng() % 4);
    std::vector<std::pair<std::string, std::pair<uint64_t, size_t>>> staged;
    for (int i = 0; i < n; ++i) {
      size_t size = rng() % 65536;
      std::string name = "k" + std::to_string(seed);
      auto e = es::testing::PutTensor(**txn, name, es::testing::MakePayload(seed, size));
      if (!e.ok()) {
        std::fprintf(stderr, "put: %s\n", e.status().ToString().c_str());
        return 1;
      }
      staged.push_back({name, {seed, size}});
      ++seed;
    }
    es::Status s = (*txn)->Commit();
    if (!s.ok()) {
      std::fprintf(stderr, "commit: %s\n", s.ToString().c_str());
      return 1;
    }
    for (const auto& [name, sv] : staged) {
      std::printf("ACK %s %llu %zu\n", name.c_str(), static_cast<unsigned long long>(sv.first), sv.second);
    }
    std::fflush(stdout);
  }
}
