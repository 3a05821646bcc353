// libFuzzer target for the catalog log's payload decoder (store/catalog_log.h), which `repair` runs on whatever a
// segment holds. Any input either decodes or is Corruption; a payload that decodes re-encodes to exactly the same
// bytes (the format has one encoding), and its entries name only the record column families. Built with ES_FUZZ=ON;
// seeds in catalog_log_fuzz_corpus/ (encoder output, damaged copies), replayed in every test run.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "store/catalog_log.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = std::as_bytes(std::span(data, size));
  auto log = es::DecodeCatalogLog(bytes);
  if (!log.ok()) {
    Check(log.status().IsCorruption());
    return 0;
  }
  for (const auto& e : log->entries) {
    Check(es::IsRecordCf(e.cf));
    Check(e.op == es::CatalogLogEntry::Op::kPut || e.value.empty());
  }
  const std::string again = es::EncodeCatalogLog(*log);
  Check(again == std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
