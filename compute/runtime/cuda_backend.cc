// The CUDA and hybrid backends: the layer blocks on es_cuda's kernels, experts through a DeviceExpertCache fed
// from the host provider. See cuda_backend.h for the data flow.
#include "compute/runtime/cuda_backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "compute/cuda/cuda_kernels.h"
#include "compute/cuda/device_cache.h"
#include "compute/runtime/hybrid_cost.h"
#include "compute/moe_routing.h"

namespace es {

namespace {

using cuda::CudaStream;
using cuda::DeviceBuffer;
using cuda::PinnedHostBuffer;

// Device buffers are allocated in multiples of this, so that small growth does not reallocate every call.
constexpr size_t kGrowBytes = size_t{1} << 20;
// Dense tensors start at this alignment in the one device allocation that holds them (the kernels' vector loads
// need 16 bytes; cudaMalloc itself gives 256).
constexpr size_t kDenseAlign = 256;
// Rows of logits computed per lm_head call (bounds the logits staging buffer: 64 x 152k x 4 B = 39 MB).
constexpr size_t kLogitRowsPerCall = 64;
// Uploads timed at start-up to measure the host-to-device rate for the hybrid cost model.
constexpr int kH2dProbes = 5;
// Share of the host cache's slots that device prefetch may hold while its uploads run.
constexpr size_t kPrefetchLeaseShare = 4;

uint64_t ExpertKey(uint32_t layer, uint32_t expert) { return (static_cast<uint64_t>(layer) << 32) | expert; }

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// An expert's weight bytes per parameter over its three matrices (GGML block formats included), for the hybrid
// cost model.
double BytesPerWeight(const kernels::ExpertWeights& e) {
  double bytes = 0, parameters = 0;
  for (const kernels::WeightMatrix* w : {&e.gate, &e.up, &e.down}) {
    const double n = static_cast<double>(w->rows) * static_cast<double>(w->cols);
    parameters += n;
    bytes += w->blocks ? static_cast<double>(GgmlRowBytes(*w->blocks, w->cols).value_or(0)) * static_cast<double>(w->rows)
                       : n * static_cast<double>(DTypeSize(w->dtype));
  }
  return parameters > 0 ? bytes / parameters : 0;
}

double Seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string Mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

// A buffer that grows to the largest size asked of it: DeviceBuffer (device scratch) or PinnedHostBuffer (host
// staging). Growing a device buffer frees the old memory, which synchronises the device (cudaFree), so no kernel
// in flight still reads it. Callers rewrite a staging buffer only after a stream synchronisation that follows its
// last copy (every MoE layer synchronises once), so a copy never reads bytes changed under it.
template <typename Buffer>
class Growing {
 public:
  Result<void*> Ensure(size_t bytes) {
    if (bytes > buffer_.size()) {
      buffer_ = Buffer();
      ES_ASSIGN_OR_RETURN(buffer_, Buffer::Allocate(RoundUp(std::max<size_t>(bytes, 1), kGrowBytes)));
    }
    return buffer_.data();
  }
  template <typename T>
  T* As() const {
    return static_cast<T*>(buffer_.data());
  }

 private:
  Buffer buffer_;
};
using DeviceScratch = Growing<DeviceBuffer>;
using HostStaging = Growing<PinnedHostBuffer>;

// A sequence's keys and values on the device.
class CudaKvState final : public BackendKvState {
 public:
  CudaKvState(const void* owner, cuda::DeviceKvCache cache) : owner(owner), cache(std::move(cache)) {}
  const void* owner;
  cuda::DeviceKvCache cache;
};

class CudaBackend;

// One Forward on the device: the blocks of LayerOps over the backend's workspace.
class CudaLayerOps final : public Model::LayerOps {
 public:
  CudaLayerOps(CudaBackend& b, const Model& model, cuda::DeviceKvCache& kv, ExpertProvider& experts,
               const ForwardOptions& options, size_t tokens, size_t first_position)
      : b_(b), model_(model), c_(model.config()), kv_(kv), experts_(experts), options_(options),
        routing_(c_, experts, options), T_(tokens), H_(c_.hidden), first_position_(first_position) {}
  // Host leases are dropped only once the device is past every copy from them.
  ~CudaLayerOps() override;

  uint32_t layer() const override { return layer_; }
  const ModelConfig& config() const override { return c_; }
  void set_layer(uint32_t l) { layer_ = l; }

  Status Attention(const AttentionOptions& o) override;
  Status Moe(bool shared_expert) override;
  Status DenseMlp() override;

  // Waits for the stream, then lets go of every host lease held for uploads.
  Status Drain();

 private:
  // y = h W^T (+ b) for a projection of this layer, on the device.
  Status Project(const std::string& name, const float* h, float* y, bool bias);
  // Runs the routed experts of this layer into the moe buffer, then adds it (and the shared expert) to x.
  Status RunExperts(const std::vector<ExpertRows>& groups, bool shared_expert);
  // Uploads predicted experts of `layer` that sit in host memory and not yet on the device.
  Status PrefetchToDevice(uint32_t layer, const std::vector<uint32_t>& experts);
  Status LaunchExpert(const ExpertRows& g, size_t offset, const AcquiredExpert* host);

  // The misses of one RunExperts call, acquired from the host provider a part at a time into part_.
  struct MissParts {
    size_t part = 1;                  // most experts acquired at once (the provider's max_batch)
    std::vector<size_t> groups;       // the groups part_ holds, parallel to it
    std::vector<size_t> cpu_pending;  // indices into part_ of this part's CPU experts
    bool any_cpu = false;             // some expert was summed on the host into cpu_moe_host_
  };
  // Uploads every group's rows and weights, concatenated, in one copy each; offsets[i] is where group i starts.
  Status UploadRows(const std::vector<ExpertRows>& groups, std::vector<size_t>& offsets);
  // Runs group i, whose expert is not on the GPU, from its host lease: summed on the CPU (hybrid, when the cost
  // model says so, deferred to the end of the part) or uploaded and run on the GPU. Starts the next part first
  // when the current one does not hold it.
  Status RunMiss(const std::vector<ExpertRows>& groups, size_t i, size_t offset, MissParts& parts);
  // Acquires the next part: group `from` and the following groups not on the GPU, up to `part` of them. The
  // previous part's CPU experts run first; its leases go once the copy stream is past its uploads.
  Status StartPart(const std::vector<ExpertRows>& groups, size_t from, MissParts& parts);
  // Sums the part's pending CPU experts into cpu_moe_host_, feeding the cost model their timings.
  Status RunCpuPending(const std::vector<ExpertRows>& groups, MissParts& parts);
  // Adds the experts summed on the host to the GPU's sum.
  Status AddCpuSum(float* moe);
  // Adds the sigmoid-gated shared expert to the routed experts' sum.
  Status AddSharedExpert(float* moe);

  size_t Position(size_t t) const { return first_position_ + t; }

  CudaBackend& b_;
  const Model& model_;
  const ModelConfig& c_;
  cuda::DeviceKvCache& kv_;
  ExpertProvider& experts_;
  const ForwardOptions& options_;
  MoeRouting routing_;
  const size_t T_;
  const size_t H_;
  const size_t first_position_;
  uint32_t layer_ = 0;
  // Host leases whose uploads may still be queued. Members, so that on every exit (an error included) the
  // destructor's synchronisation comes before they go.
  std::vector<AcquiredExpert> part_;             // the misses of the part being run (RunExperts)
  std::vector<AcquiredExpert> upload_leases_;    // the last part's, released at the next synchronisation
  std::vector<AcquiredExpert> prefetch_leases_;  // uploads ahead of use, released at the next MoE layer
};

class CudaBackend final : public Backend {
 public:
  static Result<std::unique_ptr<CudaBackend>> Create(Store& store, const Model& model, const BackendOptions& options);

  std::string name() const override { return hybrid_ ? "hybrid" : "cuda"; }
  std::string describe() const override { return description_; }
  Status Forward(const Model& model, std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts,
                 const ForwardOptions& options, std::vector<float>& hidden) override;
  Status ComputeLogits(const Model& model, const float* hidden, size_t rows, float* logits) override;
  BackendCounters counters() const override {
    BackendCounters c = counters_;
    cuda::DeviceCacheStats s = cache_->stats();
    c.device_uploads = s.uploads;
    c.bytes_uploaded = s.bytes_uploaded;
    return c;
  }

 private:
  friend class CudaLayerOps;
  CudaBackend(const Model& model, bool hybrid) : model_(model), hybrid_(hybrid) {}

  // The device view of a dense tensor (the host view with its data moved to the device copy).
  Result<kernels::WeightMatrix> Matrix(const std::string& name) const;
  Result<kernels::WeightVector> Vector(const std::string& name) const;
  Result<const void*> DevicePointer(const std::string& name) const;
  // The device view of expert (layer, expert) held in `slot`.
  Result<kernels::ExpertWeights> SlotView(uint32_t layer, uint32_t expert, const cuda::DeviceSlot& slot) const;
  // The sequence's device KV cache, created on its first Forward, rewound when the host KvCache was.
  Result<cuda::DeviceKvCache*> SequenceCache(const Model& model, KvCache& kv);
  Status MeasureRates(const Model& model, const cuda::DeviceInfo& info, double copy_bias);

  const Model& model_;  // owns this backend
  const bool hybrid_;
  std::string description_;
  CudaStream stream_;
  DeviceBuffer dense_;
  std::unordered_map<std::string, const void*> dense_ptr_;
  std::string lm_head_name_;
  std::vector<std::vector<std::optional<ExpertInfo>>> catalog_;  // [layer][expert]
  std::unique_ptr<cuda::DeviceExpertCache> cache_;
  HybridCostModel cost_;
  BackendCounters counters_;

  // Workspace, grown to the largest Forward so far.
  DeviceScratch x_, h_, q_, k_, v_, attn_, out_, moe_, logits_, chosen_, weights_, positions_, scratch_;
  DeviceScratch rows_, scales_, pred_h_, pred_logits_, pred_chosen_, pred_weights_, cpu_moe_, gate_;
  HostStaging stage_in_, stage_positions_, stage_chosen_, stage_weights_, stage_logits_, stage_pred_, stage_pred_prob_;
  HostStaging stage_h_, stage_rows_, stage_scales_, stage_cpu_, stage_out_;
  std::vector<float> cpu_moe_host_, cpu_scratch_;
};

// ---- CudaBackend ----------------------------------------------------------------------------------------------

Result<std::unique_ptr<CudaBackend>> CudaBackend::Create(Store& store, const Model& model,
                                                         const BackendOptions& options) {
  if (!cuda::DeviceAvailable()) {
    return Status::NotSupported("`device` " + options.device + ": no CUDA device found (the CUDA runtime reports none)");
  }
  const ModelConfig& c = model.config();
  if (c.num_experts > kernels::kMaxRouterExperts) {
    return Status::NotSupported("the CUDA router handles at most " + std::to_string(kernels::kMaxRouterExperts) +
                                " experts per layer");
  }
  std::unique_ptr<CudaBackend> b(new CudaBackend(model, options.device == "hybrid"));
  ES_ASSIGN_OR_RETURN(b->stream_, CudaStream::Create());
  ES_ASSIGN_OR_RETURN(cuda::DeviceInfo info, cuda::GetDeviceInfo(0));

  // Dense weights: one allocation, every tensor but the embeddings (looked up on the host) unless lm_head is tied.
  b->lm_head_name_ = model.weights().Has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
  const std::string embed_name = "model.embed_tokens.weight";
  auto wanted = [&](const std::string& name) { return name != embed_name || b->lm_head_name_ == embed_name; };
  size_t dense_bytes = 0;
  model.weights().ForEach([&](const std::string& name, std::span<const std::byte> bytes) {
    if (wanted(name)) dense_bytes += RoundUp(bytes.size(), kDenseAlign);
  });
  ES_ASSIGN_OR_RETURN(b->dense_, DeviceBuffer::Allocate(std::max<size_t>(dense_bytes, kDenseAlign)));
  size_t offset = 0;
  Status upload;
  model.weights().ForEach([&](const std::string& name, std::span<const std::byte> bytes) {
    if (!upload.ok() || !wanted(name)) return;
    upload = b->dense_.CopyFromHost(bytes.data(), bytes.size(), offset);
    b->dense_ptr_[name] = b->dense_.As<std::byte>() + offset;
    offset += RoundUp(bytes.size(), kDenseAlign);
  });
  ES_RETURN_IF_ERROR(upload.WithContext("uploading the dense weights"));

  // The expert catalog (for slot views) and the GPU slots.
  ES_ASSIGN_OR_RETURN(b->catalog_, LoadExpertCatalog(store, model.info().name, c.num_layers, c.num_experts));
  size_t total = 0;
  uint64_t slot_bytes = 0;
  for (const auto& layer : b->catalog_) {
    for (const auto& e : layer) {
      if (!e) continue;
      ++total;
      slot_bytes = std::max(slot_bytes, e->extent.payload_length);
    }
  }
  if (total == 0) return Status::NotFound("model '" + model.info().name + "' has no experts in the store");
  ES_ASSIGN_OR_RETURN(size_t free_bytes, cuda::FreeDeviceMemory());
  ES_ASSIGN_OR_RETURN(size_t slots, GpuExpertSlots(options, total, RoundUp(slot_bytes, kDenseAlign), free_bytes));
  ES_ASSIGN_OR_RETURN(b->cache_, cuda::DeviceExpertCache::Create({slots, slot_bytes}));

  b->description_ = b->name() + ": " + info.name + ", " + std::to_string(slots) + " of " + std::to_string(total) +
                    " experts in GPU memory (" + Mib(static_cast<uint64_t>(slots) * slot_bytes) +
                    "), dense weights " + Mib(dense_bytes);
  if (b->hybrid_) ES_RETURN_IF_ERROR(b->MeasureRates(model, info, options.hybrid_copy_bias));
  return b;
}

// The hybrid cost model's rates on this machine: host-to-device uploads of one expert's bytes from pinned memory
// (the median of a few), the CPU expert kernel on one row (bandwidth) and on 32 (arithmetic) over an expert of
// the model's shapes, and the device's memory bandwidth from its datasheet.
Status CudaBackend::MeasureRates(const Model& model, const cuda::DeviceInfo& info, double copy_bias) {
  const size_t bytes = cache_->slot_bytes();
  ES_ASSIGN_OR_RETURN(PinnedHostBuffer host, PinnedHostBuffer::Allocate(bytes));
  std::memset(host.data(), 0, bytes);
  ES_ASSIGN_OR_RETURN(DeviceBuffer device, DeviceBuffer::Allocate(bytes));
  std::vector<double> rates;
  for (int i = 0; i < kH2dProbes; ++i) {
    auto start = std::chrono::steady_clock::now();
    ES_RETURN_IF_ERROR(device.CopyFromHostAsync(host.data(), bytes, stream_));
    ES_RETURN_IF_ERROR(stream_.Synchronize());
    rates.push_back(static_cast<double>(bytes) / Seconds(std::chrono::steady_clock::now() - start));
  }
  std::sort(rates.begin(), rates.end());
  cost_.SetH2dBytesPerSecond(rates[rates.size() / 2]);
  HybridCostOptions o = cost_.rates();
  o.copy_bias = copy_bias;
  if (info.peak_memory_gbps > 0) o.gpu_bytes_per_s = info.peak_memory_gbps * 1e9;

  // One expert of the model's shapes over the zeroed pinned bytes (timing does not depend on the values).
  const ExpertInfo* sample = nullptr;
  for (const auto& layer : catalog_) {
    for (const auto& e : layer) {
      if (e && sample == nullptr) sample = &*e;
    }
  }
  ES_ASSIGN_OR_RETURN(kernels::ExpertWeights w,
                      ExpertWeightsFromPayload(*sample, {static_cast<const std::byte*>(host.data()), bytes}));
  const double weight_bytes = BytesPerWeight(w);
  auto time_rows = [&](size_t rows) -> Result<double> {
    std::vector<float> x(rows * w.gate.cols, 0.01f), out(rows * w.down.rows);
    std::vector<float> scratch(kernels::ExpertScratchFloats(rows, w.gate.rows));
    std::vector<double> t;
    for (int i = 0; i < kH2dProbes; ++i) {
      auto start = std::chrono::steady_clock::now();
      ES_RETURN_IF_ERROR(kernels::ExpertForward(model.context(), w, x.data(), rows, scratch, out.data()));
      t.push_back(Seconds(std::chrono::steady_clock::now() - start));
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  constexpr size_t kArithmeticRows = 32;
  ES_ASSIGN_OR_RETURN(double one, time_rows(1));
  ES_ASSIGN_OR_RETURN(double many, time_rows(kArithmeticRows));
  o.cpu_bytes_per_s = static_cast<double>(bytes) / one;
  const double parameters = static_cast<double>(bytes) / static_cast<double>(weight_bytes);
  if (many > one) o.cpu_flops_per_s = 2.0 * parameters * static_cast<double>(kArithmeticRows - 1) / (many - one);
  cost_ = HybridCostModel(o);
  char line[200];
  std::snprintf(line, sizeof(line), "; measured: host-to-device %.1f GB/s, CPU expert %.1f GB/s and %.0f GFLOP/s",
                o.h2d_bytes_per_s / 1e9, o.cpu_bytes_per_s / 1e9, o.cpu_flops_per_s / 1e9);
  description_ += line;
  return Status::Ok();
}

Result<const void*> CudaBackend::DevicePointer(const std::string& name) const {
  auto it = dense_ptr_.find(name);
  if (it == dense_ptr_.end()) return Status::NotFound("the model has no tensor " + name + " on the device");
  return it->second;
}

Result<kernels::WeightMatrix> CudaBackend::Matrix(const std::string& name) const {
  ES_ASSIGN_OR_RETURN(kernels::WeightMatrix m, model_.weights().Matrix(name));
  ES_ASSIGN_OR_RETURN(m.data, DevicePointer(name));
  return m;
}

Result<kernels::WeightVector> CudaBackend::Vector(const std::string& name) const {
  ES_ASSIGN_OR_RETURN(kernels::WeightVector v, model_.weights().Vector(name));
  ES_ASSIGN_OR_RETURN(v.data, DevicePointer(name));
  return v;
}

Result<kernels::ExpertWeights> CudaBackend::SlotView(uint32_t layer, uint32_t expert,
                                                     const cuda::DeviceSlot& slot) const {
  if (layer >= catalog_.size() || expert >= catalog_[layer].size() || !catalog_[layer][expert]) {
    return Status::NotFound("expert " + std::to_string(expert) + " of layer " + std::to_string(layer) +
                            " is not in the store");
  }
  return ExpertWeightsFromPayload(*catalog_[layer][expert], {static_cast<const std::byte*>(slot.data), slot.bytes});
}

Result<cuda::DeviceKvCache*> CudaBackend::SequenceCache(const Model& model, KvCache& kv) {
  auto* state = dynamic_cast<CudaKvState*>(kv.backend_state());
  if (state == nullptr || state->owner != this) {
    if (kv.length() > 0) {
      return Status::InvalidArgument("this sequence's KV cache was filled by another backend; start it again");
    }
    const ModelConfig& c = model.config();
    ES_ASSIGN_OR_RETURN(cuda::DeviceKvCache cache,
                        cuda::DeviceKvCache::Create(c.num_layers, kv.capacity(), c.num_kv_heads, c.head_dim));
    auto fresh = std::make_unique<CudaKvState>(this, std::move(cache));
    state = fresh.get();
    kv.set_backend_state(std::move(fresh));
  }
  if (state->cache.length() < kv.length()) {
    return Status::InvalidArgument("the device KV cache holds fewer positions than the sequence; start it again");
  }
  ES_RETURN_IF_ERROR(state->cache.Truncate(kv.length()));
  return &state->cache;
}

Status CudaBackend::Forward(const Model& model, std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts,
                            const ForwardOptions& options, std::vector<float>& hidden) {
  const ModelConfig& c = model.config();
  const size_t T = tokens.size();
  const size_t H = c.hidden;
  ES_ASSIGN_OR_RETURN(const ArchGraph* graph, GraphFor(c.arch));
  ES_ASSIGN_OR_RETURN(cuda::DeviceKvCache* dkv, SequenceCache(model, kv));

  // Embeddings on the host (the table stays there), positions, both uploaded.
  ES_ASSIGN_OR_RETURN(void* in, stage_in_.Ensure(T * H * sizeof(float)));
  ES_RETURN_IF_ERROR(model.Embed(tokens, static_cast<float*>(in)));
  ES_ASSIGN_OR_RETURN(void* x, x_.Ensure(T * H * sizeof(float)));
  ES_RETURN_IF_ERROR(cuda::CopyHostToDeviceAsync(x, in, T * H * sizeof(float), stream_));
  ES_ASSIGN_OR_RETURN(void* pos, stage_positions_.Ensure(T * sizeof(int32_t)));
  for (size_t t = 0; t < T; ++t) static_cast<int32_t*>(pos)[t] = static_cast<int32_t>(kv.length() + t);
  ES_ASSIGN_OR_RETURN(void* dpos, positions_.Ensure(T * sizeof(int32_t)));
  ES_RETURN_IF_ERROR(cuda::CopyHostToDeviceAsync(dpos, pos, T * sizeof(int32_t), stream_));

  {
    CudaLayerOps ops(*this, model, *dkv, experts, options, T, kv.length());
    for (uint32_t l = 0; l < c.num_layers; ++l) {
      ops.set_layer(l);
      ES_RETURN_IF_ERROR(graph->Layer(ops).WithContext("layer " + std::to_string(l)));
    }
    ES_ASSIGN_OR_RETURN(auto norm, Vector("model.norm.weight"));
    ES_ASSIGN_OR_RETURN(void* h, h_.Ensure(T * H * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::RmsNorm(stream_, x_.As<float>(), T, norm, c.rms_eps, static_cast<float*>(h)));
    ES_ASSIGN_OR_RETURN(void* out, stage_out_.Ensure(T * H * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHostAsync(out, h, T * H * sizeof(float), stream_));
    ES_RETURN_IF_ERROR(ops.Drain());
    hidden.assign(static_cast<const float*>(out), static_cast<const float*>(out) + T * H);
  }
  ES_RETURN_IF_ERROR(dkv->Advance(T));
  kv.Advance(T);
  return Status::Ok();
}

Status CudaBackend::ComputeLogits(const Model& model, const float* hidden, size_t rows, float* logits) {
  const ModelConfig& c = model.config();
  ES_ASSIGN_OR_RETURN(kernels::WeightMatrix head, Matrix(lm_head_name_));
  head.rows = c.vocab;
  const size_t H = c.hidden;
  for (size_t first = 0; first < rows; first += kLogitRowsPerCall) {
    const size_t n = std::min(kLogitRowsPerCall, rows - first);
    ES_ASSIGN_OR_RETURN(void* in, stage_in_.Ensure(n * H * sizeof(float)));
    std::memcpy(in, hidden + first * H, n * H * sizeof(float));
    ES_ASSIGN_OR_RETURN(void* dh, h_.Ensure(n * H * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::CopyHostToDeviceAsync(dh, in, n * H * sizeof(float), stream_));
    ES_ASSIGN_OR_RETURN(void* dl, logits_.Ensure(n * c.vocab * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::MatMul(stream_, static_cast<const float*>(dh), n, head, static_cast<float*>(dl)));
    ES_ASSIGN_OR_RETURN(void* out, stage_out_.Ensure(n * c.vocab * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHostAsync(out, dl, n * c.vocab * sizeof(float), stream_));
    ES_RETURN_IF_ERROR(stream_.Synchronize());
    std::memcpy(logits + first * c.vocab, out, n * c.vocab * sizeof(float));
  }
  return Status::Ok();
}

// ---- CudaLayerOps ---------------------------------------------------------------------------------------------

CudaLayerOps::~CudaLayerOps() {
  // On an error path kernels and copies may still be queued: wait before the leases (and so the host memory the
  // copies read) go. The status is the error already being returned, or a fault reported there.
  (void)b_.stream_.Synchronize();
  (void)b_.cache_->Synchronize();
}

Status CudaLayerOps::Drain() {
  ES_RETURN_IF_ERROR(b_.stream_.Synchronize());
  ES_RETURN_IF_ERROR(b_.cache_->Synchronize());
  part_.clear();
  upload_leases_.clear();
  prefetch_leases_.clear();
  return Status::Ok();
}

Status CudaLayerOps::Project(const std::string& name, const float* h, float* y, bool bias) {
  ES_ASSIGN_OR_RETURN(auto w, b_.Matrix(LayerTensorName(layer_, name + ".weight")));
  ES_RETURN_IF_ERROR(cuda::MatMul(b_.stream_, h, T_, w, y));
  if (!bias) return Status::Ok();
  ES_ASSIGN_OR_RETURN(auto bv, b_.Vector(LayerTensorName(layer_, name + ".bias")));
  return cuda::AddBias(b_.stream_, y, T_, bv);
}

Status CudaLayerOps::Attention(const AttentionOptions& o) {
  const CudaStream& s = b_.stream_;
  const size_t nh = c_.num_heads, nkv = c_.num_kv_heads, hd = c_.head_dim;
  const size_t q_dim = nh * hd, kv_dim = nkv * hd;
  ES_ASSIGN_OR_RETURN(auto in_norm, b_.Vector(LayerTensorName(layer_, "input_layernorm.weight")));
  ES_ASSIGN_OR_RETURN(void* hp, b_.h_.Ensure(T_ * H_ * sizeof(float)));
  ES_ASSIGN_OR_RETURN(void* qp, b_.q_.Ensure(T_ * q_dim * sizeof(float)));
  ES_ASSIGN_OR_RETURN(void* kp, b_.k_.Ensure(T_ * kv_dim * sizeof(float)));
  ES_ASSIGN_OR_RETURN(void* vp, b_.v_.Ensure(T_ * kv_dim * sizeof(float)));
  ES_ASSIGN_OR_RETURN(void* ap, b_.attn_.Ensure(T_ * q_dim * sizeof(float)));
  ES_ASSIGN_OR_RETURN(void* op, b_.out_.Ensure(T_ * H_ * sizeof(float)));
  auto* x = b_.x_.As<float>();
  auto* h = static_cast<float*>(hp);
  auto* q = static_cast<float*>(qp);
  auto* k = static_cast<float*>(kp);
  auto* v = static_cast<float*>(vp);
  ES_RETURN_IF_ERROR(cuda::RmsNorm(s, x, T_, in_norm, c_.rms_eps, h));
  ES_RETURN_IF_ERROR(Project("self_attn.q_proj", h, q, o.qkv_bias));
  ES_RETURN_IF_ERROR(Project("self_attn.k_proj", h, k, o.qkv_bias));
  ES_RETURN_IF_ERROR(Project("self_attn.v_proj", h, v, o.qkv_bias));
  kernels::AttentionShape shape{nh, nkv, hd};
  kernels::WeightVector qn, kn;  // null: no norm inside QkNormRope
  if (o.qk_norm != QkNorm::kNone) {
    ES_ASSIGN_OR_RETURN(qn, b_.Vector(LayerTensorName(layer_, "self_attn.q_norm.weight")));
    ES_ASSIGN_OR_RETURN(kn, b_.Vector(LayerTensorName(layer_, "self_attn.k_norm.weight")));
    if (o.qk_norm == QkNorm::kFull) {
      // OLMoE: one norm over all heads of a token, then RoPE alone.
      ES_RETURN_IF_ERROR(cuda::RmsNorm(s, q, T_, qn, c_.rms_eps, q));
      ES_RETURN_IF_ERROR(cuda::RmsNorm(s, k, T_, kn, c_.rms_eps, k));
      qn = {};
      kn = {};
    }
  }
  ES_RETURN_IF_ERROR(cuda::QkNormRope(s, shape, q, k, T_, qn, kn, c_.rms_eps, b_.positions_.As<int32_t>(),
                                      c_.rope_theta));
  ES_RETURN_IF_ERROR(kv_.Write(s, layer_, k, v, T_));
  ES_RETURN_IF_ERROR(cuda::Attention(s, shape, q, T_, kv_.keys(layer_), kv_.values(layer_), kv_.length() + T_,
                                     static_cast<float*>(ap)));
  ES_ASSIGN_OR_RETURN(auto o_proj, b_.Matrix(LayerTensorName(layer_, "self_attn.o_proj.weight")));
  ES_RETURN_IF_ERROR(cuda::MatMul(s, static_cast<const float*>(ap), T_, o_proj, static_cast<float*>(op)));
  return cuda::AddInPlace(s, x, static_cast<const float*>(op), T_ * H_);
}

Status CudaLayerOps::DenseMlp() {
  const CudaStream& s = b_.stream_;
  ES_ASSIGN_OR_RETURN(auto post_norm, b_.Vector(LayerTensorName(layer_, "post_attention_layernorm.weight")));
  ES_ASSIGN_OR_RETURN(void* hp, b_.h_.Ensure(T_ * H_ * sizeof(float)));
  ES_ASSIGN_OR_RETURN(void* op, b_.out_.Ensure(T_ * H_ * sizeof(float)));
  ES_RETURN_IF_ERROR(cuda::RmsNorm(s, b_.x_.As<float>(), T_, post_norm, c_.rms_eps, static_cast<float*>(hp)));
  kernels::ExpertWeights mlp;
  ES_ASSIGN_OR_RETURN(mlp.gate, b_.Matrix(LayerTensorName(layer_, "mlp.gate_proj.weight")));
  ES_ASSIGN_OR_RETURN(mlp.up, b_.Matrix(LayerTensorName(layer_, "mlp.up_proj.weight")));
  ES_ASSIGN_OR_RETURN(mlp.down, b_.Matrix(LayerTensorName(layer_, "mlp.down_proj.weight")));
  ES_ASSIGN_OR_RETURN(void* scratch, b_.scratch_.Ensure(cuda::ExpertScratchFloats(T_, mlp.gate.rows) * sizeof(float)));
  ES_RETURN_IF_ERROR(cuda::ExpertSwiGLU(s, mlp, static_cast<const float*>(hp), T_, static_cast<float*>(scratch),
                                        static_cast<float*>(op)));
  return cuda::AddInPlace(s, b_.x_.As<float>(), static_cast<const float*>(op), T_ * H_);
}

Status CudaLayerOps::Moe(bool shared_expert) {
  const CudaStream& s = b_.stream_;
  const size_t E = c_.num_experts;
  const size_t k = routing_.top_k();
  auto* x = b_.x_.As<float>();
  if (options_.capture_pre_moe != nullptr) {
    if (options_.capture_pre_moe->size() < c_.num_layers) options_.capture_pre_moe->resize(c_.num_layers);
    auto& dst = (*options_.capture_pre_moe)[layer_];
    dst.resize(T_ * H_);
    ES_RETURN_IF_ERROR(s.Synchronize());
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHost(dst.data(), x, T_ * H_ * sizeof(float)));
  }
  ES_ASSIGN_OR_RETURN(auto post_norm, b_.Vector(LayerTensorName(layer_, "post_attention_layernorm.weight")));
  ES_ASSIGN_OR_RETURN(void* hp, b_.h_.Ensure(T_ * H_ * sizeof(float)));
  auto* h = static_cast<float*>(hp);
  ES_RETURN_IF_ERROR(cuda::RmsNorm(s, x, T_, post_norm, c_.rms_eps, h));

  // The next layers' predictions, from the residual stream as it enters this MoE block (as on the CPU).
  const std::vector<uint32_t> ahead = routing_.LayersAhead(layer_);
  const size_t pred = ahead.size() * T_ * k;
  if (!ahead.empty()) {
    ES_ASSIGN_OR_RETURN(void* hn, b_.pred_h_.Ensure(T_ * H_ * sizeof(float)));
    ES_ASSIGN_OR_RETURN(void* pl, b_.pred_logits_.Ensure(T_ * E * sizeof(float)));
    ES_ASSIGN_OR_RETURN(void* pc, b_.pred_chosen_.Ensure(pred * sizeof(int32_t)));
    ES_ASSIGN_OR_RETURN(void* pw, b_.pred_weights_.Ensure(pred * sizeof(float)));
    for (size_t i = 0; i < ahead.size(); ++i) {
      ES_ASSIGN_OR_RETURN(auto norm, b_.Vector(LayerTensorName(ahead[i], "post_attention_layernorm.weight")));
      ES_ASSIGN_OR_RETURN(auto router, b_.Matrix(RouterTensorName(c_, ahead[i])));
      ES_RETURN_IF_ERROR(cuda::RmsNorm(s, x, T_, norm, c_.rms_eps, static_cast<float*>(hn)));
      ES_RETURN_IF_ERROR(cuda::MatMul(s, static_cast<const float*>(hn), T_, router, static_cast<float*>(pl)));
      // Not renormalised: the prefetch threshold compares each expert's own probability.
      ES_RETURN_IF_ERROR(cuda::RouterTopK(s, static_cast<const float*>(pl), T_, E, k, /*normalize=*/false,
                                          static_cast<int32_t*>(pc) + i * T_ * k,
                                          static_cast<float*>(pw) + i * T_ * k));
    }
    ES_ASSIGN_OR_RETURN(void* stage, b_.stage_pred_.Ensure(pred * sizeof(int32_t)));
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHostAsync(stage, pc, pred * sizeof(int32_t), s));
    ES_ASSIGN_OR_RETURN(void* stage_p, b_.stage_pred_prob_.Ensure(pred * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHostAsync(stage_p, pw, pred * sizeof(float), s));
  }

  // This layer's router.
  ES_ASSIGN_OR_RETURN(auto router, b_.Matrix(RouterTensorName(c_, layer_)));
  ES_ASSIGN_OR_RETURN(void* lp, b_.logits_.Ensure(T_ * E * sizeof(float)));
  ES_RETURN_IF_ERROR(cuda::MatMul(s, h, T_, router, static_cast<float*>(lp)));
  std::vector<int32_t> chosen(T_ * k);
  std::vector<float> weights(T_ * k);
  if (options_.routing) {
    ES_ASSIGN_OR_RETURN(void* stage, b_.stage_logits_.Ensure(T_ * E * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHostAsync(stage, lp, T_ * E * sizeof(float), s));
  } else {
    ES_ASSIGN_OR_RETURN(void* cp, b_.chosen_.Ensure(T_ * k * sizeof(int32_t)));
    ES_ASSIGN_OR_RETURN(void* wp, b_.weights_.Ensure(T_ * k * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::RouterTopK(s, static_cast<const float*>(lp), T_, E, k, c_.norm_topk_prob,
                                        static_cast<int32_t*>(cp), static_cast<float*>(wp)));
    ES_ASSIGN_OR_RETURN(void* sc, b_.stage_chosen_.Ensure(T_ * k * sizeof(int32_t)));
    ES_ASSIGN_OR_RETURN(void* sw, b_.stage_weights_.Ensure(T_ * k * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHostAsync(sc, cp, T_ * k * sizeof(int32_t), s));
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHostAsync(sw, wp, T_ * k * sizeof(float), s));
  }
  if (b_.hybrid_) {
    // The CPU may take some of this layer's experts: it needs h.
    ES_ASSIGN_OR_RETURN(void* sh, b_.stage_h_.Ensure(T_ * H_ * sizeof(float)));
    ES_RETURN_IF_ERROR(cuda::CopyDeviceToHostAsync(sh, h, T_ * H_ * sizeof(float), s));
  }
  // The one synchronisation of the layer: the previous layer's kernels and copies have run, so its upload leases
  // (and the prefetch leases of earlier layers, once the copy stream is past them) can go.
  ES_RETURN_IF_ERROR(s.Synchronize());
  upload_leases_.clear();
  if (!prefetch_leases_.empty()) {
    ES_RETURN_IF_ERROR(b_.cache_->Synchronize());
    prefetch_leases_.clear();
  }
  if (options_.routing) {
    routing_.ApplyPolicy(layer_, b_.stage_logits_.As<float>(), T_, k, chosen.data(), weights.data());
  } else {
    std::memcpy(chosen.data(), b_.stage_chosen_.As<int32_t>(), T_ * k * sizeof(int32_t));
    std::memcpy(weights.data(), b_.stage_weights_.As<float>(), T_ * k * sizeof(float));
  }
  // The host prefetcher hears of the predictions before this layer's misses are read, as on the CPU.
  std::vector<std::vector<uint32_t>> predicted(ahead.size());
  for (size_t i = 0; i < ahead.size(); ++i) {
    predicted[i] = routing_.Predicted(ahead[i], {b_.stage_pred_.As<int32_t>() + i * T_ * k, T_ * k},
                                      {b_.stage_pred_prob_.As<float>() + i * T_ * k, T_ * k});
  }
  ES_ASSIGN_OR_RETURN(std::vector<ExpertRows> groups,
                      routing_.Dispatch(layer_, T_, k, chosen, weights, [this](size_t t) { return Position(t); }));
  ES_RETURN_IF_ERROR(RunExperts(groups, shared_expert));
  // Then predicted experts already in host memory go up to the GPU behind this layer's own uploads.
  for (size_t i = 0; i < ahead.size(); ++i) ES_RETURN_IF_ERROR(PrefetchToDevice(ahead[i], predicted[i]));
  return Status::Ok();
}

Status CudaLayerOps::PrefetchToDevice(uint32_t layer, const std::vector<uint32_t>& experts) {
  const size_t budget = std::max<size_t>(1, std::min<size_t>(experts_.max_batch(), SIZE_MAX / 2) / kPrefetchLeaseShare);
  std::vector<uint32_t> ids;
  for (uint32_t e : experts) {
    if (prefetch_leases_.size() + ids.size() >= budget) break;
    if (!b_.cache_->Contains(ExpertKey(layer, e))) ids.push_back(e);
  }
  if (ids.empty()) return Status::Ok();
  // Only what is in host memory already: no read, no access counted, nothing evicted on the host.
  std::vector<AcquiredExpert> resident;
  experts_.AcquireResident(layer, ids, resident);
  for (AcquiredExpert& a : resident) {
    // Held before the upload is queued; a failed upload is a skipped hint, never a failed forward pass.
    prefetch_leases_.push_back(std::move(a));
    const AcquiredExpert& held = prefetch_leases_.back();
    if (!b_.cache_->Upload(ExpertKey(layer, held.expert), held.payload.data(), held.payload.size()).ok()) break;
  }
  return Status::Ok();
}

Status CudaLayerOps::LaunchExpert(const ExpertRows& g, size_t offset, const AcquiredExpert* host) {
  const CudaStream& s = b_.stream_;
  const uint64_t key = ExpertKey(layer_, g.expert);
  const void* src = host != nullptr ? static_cast<const void*>(host->payload.data()) : nullptr;
  const size_t bytes = host != nullptr ? host->payload.size() : 0;
  ES_ASSIGN_OR_RETURN(cuda::DeviceSlot slot, b_.cache_->Acquire(key, src, bytes, s));
  // Between Acquire and Release nothing returns early: the slot is released on every path.
  Result<kernels::ExpertWeights> view = b_.SlotView(layer_, g.expert, slot);
  Status run = view.status();
  Result<void*> scratch = run.ok() ? b_.scratch_.Ensure(cuda::ExpertScratchFloats(g.rows.size(), view->gate.rows) *
                                                        sizeof(float))
                                   : Result<void*>(run);
  if (run.ok()) run = scratch.status();
  if (run.ok()) {
    run = cuda::ExpertSwiGLURows(s, *view, b_.h_.As<float>(), T_, b_.rows_.As<int32_t>() + offset,
                                 b_.scales_.As<float>() + offset, g.rows.size(), static_cast<float*>(*scratch),
                                 b_.moe_.As<float>());
  }
  Status released = b_.cache_->Release(slot, s);
  ES_RETURN_IF_ERROR(run);
  return released;
}

Status CudaLayerOps::UploadRows(const std::vector<ExpertRows>& groups, std::vector<size_t>& offsets) {
  const CudaStream& s = b_.stream_;
  offsets.assign(groups.size(), 0);
  size_t total = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    offsets[i] = total;
    total += groups[i].rows.size();
  }
  if (total == 0) return Status::Ok();
  ES_ASSIGN_OR_RETURN(void* hr, b_.stage_rows_.Ensure(total * sizeof(int32_t)));
  ES_ASSIGN_OR_RETURN(void* hs, b_.stage_scales_.Ensure(total * sizeof(float)));
  for (size_t i = 0; i < groups.size(); ++i) {
    std::copy(groups[i].rows.begin(), groups[i].rows.end(), static_cast<int32_t*>(hr) + offsets[i]);
    std::copy(groups[i].scales.begin(), groups[i].scales.end(), static_cast<float*>(hs) + offsets[i]);
  }
  ES_ASSIGN_OR_RETURN(void* dr, b_.rows_.Ensure(total * sizeof(int32_t)));
  ES_ASSIGN_OR_RETURN(void* ds, b_.scales_.Ensure(total * sizeof(float)));
  ES_RETURN_IF_ERROR(cuda::CopyHostToDeviceAsync(dr, hr, total * sizeof(int32_t), s));
  return cuda::CopyHostToDeviceAsync(ds, hs, total * sizeof(float), s);
}

Status CudaLayerOps::RunCpuPending(const std::vector<ExpertRows>& groups, MissParts& parts) {
  for (size_t j : parts.cpu_pending) {
    const AcquiredExpert& host = part_[j];
    const ExpertRows& g = groups[parts.groups[j]];
    const double weight_bytes = BytesPerWeight(host.weights);
    auto start = std::chrono::steady_clock::now();
    b_.cpu_scratch_.resize(kernels::ExpertScratchFloats(g.rows.size(), host.weights.gate.rows));
    ES_RETURN_IF_ERROR(kernels::ExpertAccumulateRows(model_.context(), host.weights, b_.stage_h_.As<float>(), T_,
                                                     g.rows, g.scales.data(), b_.cpu_scratch_,
                                                     b_.cpu_moe_host_.data()));
    b_.cost_.ObserveCpu(host.payload.size(), weight_bytes, g.rows.size(),
                        Seconds(std::chrono::steady_clock::now() - start));
    ++b_.counters_.cpu_experts;
    parts.any_cpu = true;
  }
  parts.cpu_pending.clear();
  return Status::Ok();
}

Status CudaLayerOps::StartPart(const std::vector<ExpertRows>& groups, size_t from, MissParts& parts) {
  ES_RETURN_IF_ERROR(RunCpuPending(groups, parts));
  if (!part_.empty()) ES_RETURN_IF_ERROR(b_.cache_->Synchronize());
  part_.clear();
  parts.groups.clear();
  std::vector<uint32_t> ids;
  for (size_t i = from; i < groups.size() && ids.size() < parts.part; ++i) {
    if (i == from || !b_.cache_->Contains(ExpertKey(layer_, groups[i].expert))) {
      ids.push_back(groups[i].expert);
      parts.groups.push_back(i);
    }
  }
  return experts_.Acquire(layer_, ids, part_);
}

Status CudaLayerOps::RunMiss(const std::vector<ExpertRows>& groups, size_t i, size_t offset, MissParts& parts) {
  const ExpertRows& g = groups[i];
  auto held = std::find(parts.groups.begin(), parts.groups.end(), i);
  if (held == parts.groups.end()) {
    ES_RETURN_IF_ERROR(StartPart(groups, i, parts));
    held = std::find(parts.groups.begin(), parts.groups.end(), i);
    if (held == parts.groups.end()) {
      return Status::InvalidArgument("internal: an expert missing on the GPU was not acquired");
    }
  }
  const size_t j = static_cast<size_t>(held - parts.groups.begin());
  const AcquiredExpert& host = part_[j];
  if (b_.hybrid_ && b_.cost_.Choose(host.payload.size(), BytesPerWeight(host.weights), g.rows.size()) ==
                        ExpertPlacement::kCpu) {
    parts.cpu_pending.push_back(j);
    return Status::Ok();
  }
  return LaunchExpert(g, offset, &host);
}

Status CudaLayerOps::AddCpuSum(float* moe) {
  const CudaStream& s = b_.stream_;
  ES_ASSIGN_OR_RETURN(void* hc, b_.stage_cpu_.Ensure(T_ * H_ * sizeof(float)));
  std::memcpy(hc, b_.cpu_moe_host_.data(), T_ * H_ * sizeof(float));
  ES_ASSIGN_OR_RETURN(void* dc, b_.cpu_moe_.Ensure(T_ * H_ * sizeof(float)));
  ES_RETURN_IF_ERROR(cuda::CopyHostToDeviceAsync(dc, hc, T_ * H_ * sizeof(float), s));
  return cuda::AddInPlace(s, moe, static_cast<const float*>(dc), T_ * H_);
}

Status CudaLayerOps::AddSharedExpert(float* moe) {
  const CudaStream& s = b_.stream_;
  kernels::ExpertWeights se;
  ES_ASSIGN_OR_RETURN(se.gate, b_.Matrix(LayerTensorName(layer_, "mlp.shared_expert.gate_proj.weight")));
  ES_ASSIGN_OR_RETURN(se.up, b_.Matrix(LayerTensorName(layer_, "mlp.shared_expert.up_proj.weight")));
  ES_ASSIGN_OR_RETURN(se.down, b_.Matrix(LayerTensorName(layer_, "mlp.shared_expert.down_proj.weight")));
  ES_ASSIGN_OR_RETURN(auto gate, b_.Matrix(LayerTensorName(layer_, "mlp.shared_expert_gate.weight")));
  ES_ASSIGN_OR_RETURN(void* op, b_.out_.Ensure(T_ * H_ * sizeof(float)));
  ES_ASSIGN_OR_RETURN(void* gp, b_.gate_.Ensure(T_ * gate.rows * sizeof(float)));
  ES_ASSIGN_OR_RETURN(void* scratch, b_.scratch_.Ensure(cuda::ExpertScratchFloats(T_, se.gate.rows) * sizeof(float)));
  ES_RETURN_IF_ERROR(cuda::ExpertSwiGLU(s, se, b_.h_.As<float>(), T_, static_cast<float*>(scratch),
                                        static_cast<float*>(op)));
  ES_RETURN_IF_ERROR(cuda::MatMul(s, b_.h_.As<float>(), T_, gate, static_cast<float*>(gp)));
  return cuda::AddSigmoidGated(s, moe, static_cast<const float*>(gp), gate.rows, static_cast<const float*>(op),
                               T_, H_);
}

Status CudaLayerOps::RunExperts(const std::vector<ExpertRows>& groups, bool shared_expert) {
  const CudaStream& s = b_.stream_;
  ES_ASSIGN_OR_RETURN(void* moe, b_.moe_.Ensure(T_ * H_ * sizeof(float)));
  ES_RETURN_IF_ERROR(cuda::ZeroAsync(moe, T_ * H_ * sizeof(float), s));
  std::vector<size_t> offsets;
  ES_RETURN_IF_ERROR(UploadRows(groups, offsets));

  // Resident experts count as just used, so that this layer's uploads evict others first.
  std::vector<bool> resident(groups.size());
  for (size_t i = 0; i < groups.size(); ++i) resident[i] = b_.cache_->Touch(ExpertKey(layer_, groups[i].expert));

  // On the GPU in ascending expert order (the CPU's summation order): a resident expert runs in place; the
  // misses are acquired from the host provider in parts of at most its max_batch. In hybrid mode the misses
  // the cost model gives the CPU are summed on the host once the part's GPU work is queued (so the GPU is busy
  // meanwhile) and added to the GPU's sum afterwards: the same terms in another order, so hybrid results match
  // the CPU's to rounding, not bit for bit.
  MissParts parts;
  parts.part = std::max<size_t>(1, experts_.max_batch());
  if (b_.hybrid_) b_.cpu_moe_host_.assign(T_ * H_, 0.0f);
  for (size_t i = 0; i < groups.size(); ++i) {
    if (resident[i] && b_.cache_->Contains(ExpertKey(layer_, groups[i].expert))) {
      ++b_.counters_.device_hits;
      ES_RETURN_IF_ERROR(LaunchExpert(groups[i], offsets[i], nullptr));
      continue;
    }
    ES_RETURN_IF_ERROR(RunMiss(groups, i, offsets[i], parts));
  }
  ES_RETURN_IF_ERROR(RunCpuPending(groups, parts));
  // The last part's uploads may still be running: its leases go at the next synchronisation (the next MoE
  // layer's, or the end of Forward).
  for (AcquiredExpert& a : part_) upload_leases_.push_back(std::move(a));
  part_.clear();

  if (parts.any_cpu) ES_RETURN_IF_ERROR(AddCpuSum(static_cast<float*>(moe)));
  if (shared_expert) ES_RETURN_IF_ERROR(AddSharedExpert(static_cast<float*>(moe)));
  return cuda::AddInPlace(s, b_.x_.As<float>(), static_cast<const float*>(moe), T_ * H_);
}

}  // namespace

Result<std::unique_ptr<Backend>> CreateCudaBackend(Store& store, const Model& model, const BackendOptions& options) {
  ES_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> b, CudaBackend::Create(store, model, options));
  return std::unique_ptr<Backend>(std::move(b));
}

}  // namespace es
