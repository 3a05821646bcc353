// DenseWeights implementation.
#include "compute/dense_weights.h"

namespace es {

namespace {
// Dense tensors are read in batches of at most this many bytes of buffers in flight.
constexpr uint64_t kBatchBytes = 256ull << 20;
}  // namespace

std::optional<GgmlType> BlocksOf(int32_t ggml_type) {
  if (ggml_type == kNoGgmlType) return std::nullopt;
  return static_cast<GgmlType>(ggml_type);
}

Result<std::unique_ptr<DenseWeights>> DenseWeights::Load(Store& store, const std::string& model) {
  auto w = std::make_unique<DenseWeights>();
  std::vector<std::pair<std::string, TensorInfo>> todo;
  Status bad;
  ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kTensors, ModelPrefix(model), [&](std::string_view key, std::string_view v) {
    auto t = DecodeTensor(v);
    auto k = ParseTensorKey(key);
    if (!t.ok() || !k.ok()) {
      bad = !t.ok() ? t.status() : k.status();
      return false;
    }
    if (!t->component.empty()) return true;
    if (t->ggml_type != kNoGgmlType) w->has_blocks_ = true;
    todo.emplace_back(k->second, std::move(t).value());
    return true;
  }));
  ES_RETURN_IF_ERROR(bad);
  size_t i = 0;
  while (i < todo.size()) {
    std::vector<ExtentRead> reads;
    std::vector<std::shared_ptr<AlignedBuffer>> buffers;
    uint64_t batch = 0;
    size_t j = i;
    for (; j < todo.size() && (j == i || batch + todo[j].second.extent.record_length <= kBatchBytes); ++j) {
      const Extent& e = todo[j].second.extent;
      batch += e.record_length;
      buffers.push_back(std::make_shared<AlignedBuffer>(e.record_length));
      if (buffers.back()->data() == nullptr) return Status::ResourceExhausted("cannot allocate dense weight memory");
      reads.push_back(ExtentRead{e, buffers.back()->span(), Status::Ok(), {}});
    }
    store.reader().ReadBatch(reads);
    for (size_t k = i; k < j; ++k) {
      const ExtentRead& r = reads[k - i];
      if (!r.status.ok()) return r.status.WithContext("tensor " + todo[k].first);
      w->bytes_ += r.extent.payload_length;
      w->tensors_[todo[k].first] = Tensor{std::move(todo[k].second), buffers[k - i], r.payload.data()};
    }
    i = j;
  }
  return w;
}

Result<kernels::WeightMatrix> DenseWeights::Matrix(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return Status::NotFound("the model has no tensor " + name);
  const TensorInfo& t = it->second.info;
  if (t.shape.size() != 2) return Status::InvalidArgument("tensor " + name + " is not a matrix");
  return kernels::WeightMatrix{it->second.data, t.dtype, static_cast<size_t>(t.shape[0]),
                               static_cast<size_t>(t.shape[1]), BlocksOf(t.ggml_type)};
}

Result<kernels::WeightVector> DenseWeights::Vector(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return Status::NotFound("the model has no tensor " + name);
  const TensorInfo& t = it->second.info;
  if (t.shape.size() != 1) return Status::InvalidArgument("tensor " + name + " is not a vector");
  if (t.ggml_type != kNoGgmlType) {
    return Status::NotSupported("tensor " + name + " is a vector in the block format " +
                                std::string(ElementTypeName(t.dtype, t.ggml_type)) + " (only matrices may be)");
  }
  return kernels::WeightVector{it->second.data, t.dtype, static_cast<size_t>(t.shape[0])};
}

}  // namespace es
