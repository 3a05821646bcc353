// Helpers shared by the store tests: deterministic payloads and writing/reading tensor records.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "store/base/aligned_buffer.h"
#include "store/records.h"
#include "store/store.h"

namespace es::testing {

inline constexpr char kTestModel[] = "t";

// Payload bytes determined by (seed, size).
inline std::vector<std::byte> MakePayload(uint64_t seed, size_t size) {
  std::vector<std::byte> out(size);
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + size);
  for (size_t i = 0; i < size; i += 8) {
    uint64_t v = rng();
    for (size_t j = 0; j < 8 && i + j < size; ++j) out[i + j] = static_cast<std::byte>(v >> (8 * j));
  }
  return out;
}

// Appends a tensor record and stages its catalog entry in the transaction.
inline Result<Extent> PutTensor(WriteTxn& txn, const std::string& name, std::span<const std::byte> payload) {
  ES_ASSIGN_OR_RETURN(Extent e, txn.AppendRecord(RecordKind::kTensor, TensorKey(kTestModel, name), payload));
  TensorInfo t;
  t.name = name;
  t.dtype = DType::kU8;
  t.shape = {payload.size()};
  t.extent = e;
  txn.batch().Put(Cf::kTensors, TensorKey(kTestModel, name), EncodeTensor(t));
  return e;
}

// Reads a tensor record back through the store's reader (verified).
inline Result<std::vector<std::byte>> ReadTensor(Store& store, const std::string& name) {
  ES_ASSIGN_OR_RETURN(std::string value, store.catalog().Get(Cf::kTensors, TensorKey(kTestModel, name)));
  ES_ASSIGN_OR_RETURN(TensorInfo t, DecodeTensor(value));
  AlignedBuffer buf(t.extent.record_length);
  ExtentRead r{t.extent, buf.span(), Status::Ok(), {}};
  store.reader().ReadBatch({&r, 1});
  ES_RETURN_IF_ERROR(r.status);
  return std::vector<std::byte>(r.payload.begin(), r.payload.end());
}

}  // namespace es::testing
