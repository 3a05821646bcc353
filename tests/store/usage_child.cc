// store_usage_child STORE BATCHES KEYS: records BATCHES batches of usage (one activation, gate mass 0.5 and one
// co-activation per key 0..KEYS-1 of model "m", layer 0) through Store::WriteMetadata, as the writer if it can
// take STORE/LOCK and through the journal otherwise. Prints "MODE writer|journal" first and "ACK i" after each
// batch is durable. The journal tests run several at once, and SIGKILL some.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "store/store.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: store_usage_child STORE BATCHES KEYS\n");
    return 2;
  }
  const int batches = std::atoi(argv[2]);
  const int keys = std::atoi(argv[3]);
  es::StoreOptions writer;
  writer.create_if_missing = false;
  auto store = es::Store::Open(argv[1], writer);
  if (!store.ok() && store.status().IsBusy()) {
    es::StoreOptions reader;
    reader.read_only = true;
    store = es::Store::Open(argv[1], reader);
  }
  if (!store.ok()) {
    std::fprintf(stderr, "open: %s\n", store.status().ToString().c_str());
    return 1;
  }
  std::printf("MODE %s\n", (*store)->journaling() ? "journal" : "writer");
  std::fflush(stdout);
  for (int i = 0; i < batches; ++i) {
    es::CatalogBatch batch;
    for (int k = 0; k < keys; ++k) {
      es::UsageCounts u;
      u.activation_count = 1;
      u.gate_mass = 0.5;
      u.coactivations = {{1, static_cast<uint32_t>(k), 1}};
      batch.Merge(es::Cf::kUsage, es::ExpertKey("m", 0, static_cast<uint32_t>(k)), es::EncodeUsage(u));
    }
    es::Status s = (*store)->WriteMetadata(batch);
    if (!s.ok()) {
      std::fprintf(stderr, "write: %s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("ACK %d\n", i);
    std::fflush(stdout);
  }
  return 0;
}
