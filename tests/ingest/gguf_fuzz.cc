// libFuzzer target for the GGUF parser: any input must be rejected cleanly or yield a header whose invariants
// hold (tensors in order at aligned offsets inside the file, sizes matching type and dimensions, lookups
// consistent), and whose config and tokenizer in Hugging Face form are an error or valid JSON. Each input is
// parsed whole and, when it fails for want of bytes, that must only happen for a prefix.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ingest/gguf.h"
#include "ingest/gguf_model.h"
#include "store/base/json.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

void CheckAccepted(const es::GgufHeader& h, uint64_t file_size) {
  Check(h.alignment() > 0 && (h.alignment() & (h.alignment() - 1)) == 0);
  Check(h.data_offset() % h.alignment() == 0 && h.data_offset() <= file_size);
  uint64_t expected = 0;
  for (const es::GgufTensorInfo& t : h.tensors()) {
    Check(!t.name.empty() && t.name.size() < es::kGgufMaxNameBytes);
    Check(h.FindTensor(t.name) == &t);
    Check(!t.dims.empty() && t.dims.size() <= es::kGgufMaxDims);
    unsigned __int128 elements = 1;
    for (uint64_t d : t.dims) elements *= d;
    Check(elements == t.elements);
    const auto row = es::GgmlRowBytes(t.type, t.dims[0]);
    Check(row.has_value());
    Check(static_cast<unsigned __int128>(*row) * (t.elements / t.dims[0]) == t.bytes);
    Check(t.offset == expected && t.offset % h.alignment() == 0);
    Check(t.file_offset == h.data_offset() + t.offset && t.file_offset + t.bytes <= file_size);
    expected = (t.offset + t.bytes + h.alignment() - 1) / h.alignment() * h.alignment();
  }
  for (const auto& [key, value] : h.metadata()) {
    Check(h.Find(key) == &value);
    // Typed reads never crash, whatever the value's type.
    (void)h.GetString(key);
    (void)h.GetUint(key);
    (void)h.GetU32(key);
    (void)h.GetFloat(key);
    (void)h.GetBool(key);
  }
  // The model the header describes, in Hugging Face form: an error or valid JSON, whatever the keys say (the
  // SentencePiece merges, the architecture table, the q/k row reordering).
  for (const auto& made : {es::GgufConfigJson(h), es::GgufTokenizerJson(h), es::GgufTokenizerConfigJson(h)}) {
    if (made.ok()) Check(es::ParseJson(*made).ok());
  }
  for (const es::GgufTensorInfo& t : h.tensors()) (void)es::GgufPermutedHeads(h, t.name);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  bool too_short = false;
  auto whole = es::ParseGgufHeader(bytes, size, &too_short);
  Check(!too_short);  // the whole file was given
  if (whole.ok()) CheckAccepted(*whole, size);
  // The first half of the bytes as the prefix of the whole: a header, a final error, or a failure that asks for
  // more bytes.
  auto half = es::ParseGgufHeader(bytes.substr(0, size / 2), size, &too_short);
  if (half.ok()) CheckAccepted(*half, size);
  if (too_short) Check(!half.ok());
  return 0;
}
