// libFuzzer target for the safetensors parser: any input must be rejected cleanly or yield a header whose
// invariants hold (exact tiling, sizes matching dtype and shape, lookups consistent). Built with ES_FUZZ=ON.
//
// Each input is read two ways, so that seeds of either kind reach deep into the validation:
//   1. as a whole file: the 8-byte header length, the header, then the data section;
//   2. as [8-byte little-endian data-section size][header bytes], which lets the fuzzer try any data size.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "ingest/safetensors.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

uint64_t LoadLittleEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < es::kSafetensorsLengthBytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

// The properties every accepted header must have, checked independently of how the parser got there.
void CheckAccepted(const es::SafetensorsHeader& h, std::string_view header, uint64_t data_size) {
  Check(h.data_size() == data_size);
  uint64_t covered = 0;
  for (const es::SafetensorsTensor& t : h.tensors()) {
    Check(!t.name.empty());
    Check(t.data_begin == covered);
    Check(t.data_begin <= t.data_end);
    Check(t.file_offset == es::kSafetensorsLengthBytes + header.size() + t.data_begin);
    unsigned __int128 elements = 1;
    for (uint64_t dim : t.shape) {
      Check(dim <= es::kSafetensorsMaxDimension);
      elements *= dim;
      Check(elements <= UINT64_MAX);
    }
    Check(elements == t.num_elements);
    Check(static_cast<unsigned __int128>(t.num_elements) * es::DTypeSize(t.dtype) == t.byte_size());
    Check(es::DTypeSize(t.dtype) != 0);
    Check(h.Find(t.name) == &t);
    covered = t.data_end;
  }
  Check(covered == data_size);
}

void ParseAsHeader(std::string_view header, uint64_t data_size) {
  es::Result<es::SafetensorsHeader> h = es::ParseSafetensorsHeader(header, data_size);
  if (h.ok()) {
    CheckAccepted(*h, header, data_size);
  } else {
    Check(!h.status().message().empty());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < es::kSafetensorsLengthBytes) return 0;
  auto bytes = std::as_bytes(std::span(data, size));
  std::span<const std::byte, es::kSafetensorsLengthBytes> prefix = bytes.first<es::kSafetensorsLengthBytes>();
  std::string_view rest(reinterpret_cast<const char*>(data) + es::kSafetensorsLengthBytes,
                        size - es::kSafetensorsLengthBytes);

  // 1. The input is a whole file.
  es::Result<uint64_t> header_length = es::ParseSafetensorsHeaderLength(prefix, size);
  if (header_length.ok()) {
    Check(*header_length > 0 && *header_length <= rest.size());
    ParseAsHeader(rest.substr(0, *header_length), rest.size() - *header_length);
  }

  // 2. The input is a data-section size and a header.
  ParseAsHeader(rest, LoadLittleEndian64(data));
  return 0;
}
