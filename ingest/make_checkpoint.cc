// make-checkpoint implementation: tensor lists per family, config.json, a byte-level tokenizer, random data.
#include "ingest/make_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "ingest/safetensors_writer.h"
#include "store/base/checksum.h"
#include "store/base/float16.h"
#include "store/base/json.h"

namespace es {

namespace {

constexpr uint32_t kPresetHidden = 2048;
constexpr uint32_t kPresetHeads = 32;
constexpr uint32_t kPresetKvHeads = 4;
constexpr uint32_t kPresetHeadDim = 128;
constexpr uint32_t kPresetExperts = 128;
constexpr uint32_t kPresetTopK = 8;
constexpr uint32_t kPresetMoeIntermediate = 768;
constexpr uint32_t kPresetVocab = 151936;
constexpr uint32_t kPresetOmniVocab = 152064;
constexpr uint32_t kPresetLayers = 48;
constexpr uint32_t kByteTokens = 256;
constexpr double kWeightStd = 0.02;
constexpr size_t kChunk = 4u << 20;

struct Tensor {
  TensorSpec spec;
  enum class Fill { kRandom, kOnes, kZeros } fill = Fill::kRandom;
};

std::string FamilyPrefix(const std::string& arch) { return arch == "qwen3_omni_moe" ? "thinker.model." : "model."; }

// The generation model's tensors in the family's own order and names.
std::vector<Tensor> BuildTensors(const MakeCheckpointOptions& o) {
  const bool mixtral = o.arch == "mixtral";
  const bool olmoe = o.arch == "olmoe";
  const bool qwen2 = o.arch == "qwen2_moe";
  const bool qwen3 = o.arch == "qwen3_moe" || o.arch == "qwen3_omni_moe";
  const uint64_t H = o.hidden, I = o.moe_intermediate, E = o.experts, V = o.vocab;
  const uint64_t hd = o.head_dim, q = o.heads * hd, kv = o.kv_heads * hd;
  const std::string p = FamilyPrefix(o.arch);
  std::set<std::pair<uint32_t, uint32_t>> missing(o.missing.begin(), o.missing.end());
  std::vector<Tensor> t;
  auto add = [&](std::string name, std::vector<uint64_t> shape, Tensor::Fill fill = Tensor::Fill::kRandom) {
    t.push_back({{std::move(name), o.dtype, std::move(shape)}, fill});
  };
  add(p + "embed_tokens.weight", {V, H});
  for (uint32_t l = 0; l < o.layers; ++l) {
    std::string lp = p + "layers." + std::to_string(l) + ".";
    add(lp + "input_layernorm.weight", {H}, Tensor::Fill::kOnes);
    add(lp + "self_attn.q_proj.weight", {q, H});
    if (qwen2) add(lp + "self_attn.q_proj.bias", {q}, Tensor::Fill::kZeros);
    add(lp + "self_attn.k_proj.weight", {kv, H});
    if (qwen2) add(lp + "self_attn.k_proj.bias", {kv}, Tensor::Fill::kZeros);
    add(lp + "self_attn.v_proj.weight", {kv, H});
    if (qwen2) add(lp + "self_attn.v_proj.bias", {kv}, Tensor::Fill::kZeros);
    add(lp + "self_attn.o_proj.weight", {H, q});
    if (qwen3) {
      add(lp + "self_attn.q_norm.weight", {hd}, Tensor::Fill::kOnes);
      add(lp + "self_attn.k_norm.weight", {hd}, Tensor::Fill::kOnes);
    }
    if (olmoe) {
      add(lp + "self_attn.q_norm.weight", {q}, Tensor::Fill::kOnes);
      add(lp + "self_attn.k_norm.weight", {kv}, Tensor::Fill::kOnes);
    }
    add(lp + "post_attention_layernorm.weight", {H}, Tensor::Fill::kOnes);
    std::string mlp = lp + (mixtral ? "block_sparse_moe." : "mlp.");
    add(mlp + "gate.weight", {E, H});
    if (o.fused_experts) {
      add(mlp + "experts.gate_up_proj", {E, 2 * I, H});
      add(mlp + "experts.down_proj", {E, H, I});
    } else {
      for (uint32_t e = 0; e < o.experts; ++e) {
        if (missing.count({l, e})) continue;
        std::string ep = mlp + "experts." + std::to_string(e) + ".";
        if (mixtral) {
          add(ep + "w1.weight", {I, H});
          add(ep + "w2.weight", {H, I});
          add(ep + "w3.weight", {I, H});
        } else {
          add(ep + "gate_proj.weight", {I, H});
          add(ep + "up_proj.weight", {I, H});
          add(ep + "down_proj.weight", {H, I});
        }
      }
    }
    if (qwen2) {
      uint64_t S = o.shared_intermediate;
      add(mlp + "shared_expert.gate_proj.weight", {S, H});
      add(mlp + "shared_expert.up_proj.weight", {S, H});
      add(mlp + "shared_expert.down_proj.weight", {H, S});
      add(mlp + "shared_expert_gate.weight", {1, H});
    }
  }
  add(p + "norm.weight", {H}, Tensor::Fill::kOnes);
  add(o.arch == "qwen3_omni_moe" ? "thinker.lm_head.weight" : "lm_head.weight", {V, H});
  return t;
}

void TextConfig(JsonWriter& j, const MakeCheckpointOptions& o) {
  const bool mixtral = o.arch == "mixtral";
  const bool olmoe = o.arch == "olmoe";
  j.Key("vocab_size").Uint(o.vocab);
  j.Key("hidden_size").Uint(o.hidden);
  j.Key("num_hidden_layers").Uint(o.layers);
  j.Key("num_attention_heads").Uint(o.heads);
  j.Key("num_key_value_heads").Uint(o.kv_heads);
  j.Key("head_dim").Uint(o.head_dim);
  j.Key(mixtral ? "num_local_experts" : "num_experts").Uint(o.experts);
  j.Key("num_experts_per_tok").Uint(o.top_k);
  if (mixtral || olmoe) {
    j.Key("intermediate_size").Uint(o.moe_intermediate);
  } else {
    j.Key("moe_intermediate_size").Uint(o.moe_intermediate);
    j.Key("intermediate_size").Uint(o.moe_intermediate * 4);
    j.Key("decoder_sparse_step").Uint(1);
    j.Key("mlp_only_layers").BeginArray().EndArray();
    j.Key("norm_topk_prob").Bool(o.arch != "qwen2_moe");
  }
  if (o.arch == "qwen2_moe") j.Key("shared_expert_intermediate_size").Uint(o.shared_intermediate);
  if (olmoe) j.Key("norm_topk_prob").Bool(false);
  j.Key("rms_norm_eps").Double(olmoe ? 1e-5 : 1e-6);  // OLMoE-1B-7B's own; llama.cpp writes 1e-5 for every OLMoE
  j.Key("rope_theta").Double(mixtral ? 1e6 : 1e6);
  j.Key("max_position_embeddings").Uint(32768);
  j.Key("tie_word_embeddings").Bool(false);
  j.Key("hidden_act").String("silu");
  j.Key("torch_dtype").String(o.dtype == DType::kBF16 ? "bfloat16" : o.dtype == DType::kF16 ? "float16" : "float32");
}

std::string ConfigJson(const MakeCheckpointOptions& o) {
  JsonWriter j;
  j.BeginObject();
  if (o.arch == "qwen3_omni_moe") {
    j.Key("architectures").BeginArray().String("Qwen3OmniMoeForConditionalGeneration").EndArray();
    j.Key("model_type").String("qwen3_omni_moe");
    j.Key("thinker_config").BeginObject().Key("model_type").String("qwen3_omni_moe_thinker");
    j.Key("text_config").BeginObject().Key("model_type").String("qwen3_omni_moe_text");
    TextConfig(j, o);
    j.EndObject().EndObject();
  } else {
    static const std::map<std::string, std::string> kArchitectures = {
        {"qwen3_moe", "Qwen3MoeForCausalLM"}, {"mixtral", "MixtralForCausalLM"},
        {"olmoe", "OlmoeForCausalLM"},        {"qwen2_moe", "Qwen2MoeForCausalLM"}};
    j.Key("architectures").BeginArray().String(kArchitectures.at(o.arch)).EndArray();
    j.Key("model_type").String(o.arch);
    TextConfig(j, o);
  }
  j.Key("bos_token_id").Uint(kByteTokens);
  j.Key("eos_token_id").Uint(kByteTokens);
  j.EndObject();
  return j.Take();
}

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 upwards.
std::string ByteToken(uint32_t b) {
  uint32_t cp = b;
  bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  if (!printable) {
    uint32_t n = 0;
    for (uint32_t x = 0; x < b; ++x) {
      bool px = (x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff);
      if (!px) ++n;
    }
    cp = 0x100 + n;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
  return out;
}

// A byte-level BPE tokenizer with the 256 byte tokens and no merges, plus <|endoftext|> at id 256.
std::string TokenizerJson() {
  JsonWriter j;
  j.BeginObject().Key("version").String("1.0").Key("truncation").Null().Key("padding").Null();
  j.Key("added_tokens").BeginArray().BeginObject()
      .Key("id").Uint(kByteTokens).Key("content").String("<|endoftext|>").Key("single_word").Bool(false)
      .Key("lstrip").Bool(false).Key("rstrip").Bool(false).Key("normalized").Bool(false).Key("special").Bool(true)
      .EndObject().EndArray();
  j.Key("normalizer").Null();
  j.Key("pre_tokenizer").BeginObject().Key("type").String("ByteLevel").Key("add_prefix_space").Bool(false)
      .Key("trim_offsets").Bool(true).Key("use_regex").Bool(true).EndObject();
  j.Key("post_processor").Null();
  j.Key("decoder").BeginObject().Key("type").String("ByteLevel").Key("add_prefix_space").Bool(false)
      .Key("trim_offsets").Bool(true).Key("use_regex").Bool(true).EndObject();
  j.Key("model").BeginObject().Key("type").String("BPE").Key("dropout").Null().Key("unk_token").Null()
      .Key("continuing_subword_prefix").Null().Key("end_of_word_suffix").Null().Key("fuse_unk").Bool(false)
      .Key("byte_fallback").Bool(false).Key("vocab").BeginObject();
  for (uint32_t b = 0; b < kByteTokens; ++b) j.Key(ByteToken(b)).Uint(b);
  j.EndObject().Key("merges").BeginArray().EndArray().EndObject();
  j.EndObject();
  return j.Take();
}

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void StoreValue(float v, DType dtype, std::byte* out) {
  switch (dtype) {
    case DType::kF32: std::memcpy(out, &v, 4); return;
    case DType::kBF16: {
      const uint16_t h = F32ToBf16(v);
      std::memcpy(out, &h, 2);
      return;
    }
    case DType::kF16: {
      const uint16_t h = F32ToF16(v);
      std::memcpy(out, &h, 2);
      return;
    }
    default: return;
  }
}

// Fills `out` with the tensor's values: uniform with standard deviation kWeightStd (scaled for fan-in so that
// activations stay in range through deep stacks), or constants for norms and biases.
void FillChunk(const Tensor& t, uint64_t& rng, std::span<std::byte> out) {
  size_t esize = DTypeSize(t.spec.dtype);
  float one = t.fill == Tensor::Fill::kOnes ? 1.0f : 0.0f;
  double fan_in = t.spec.shape.empty() ? 1.0 : static_cast<double>(t.spec.shape.back());
  float scale = static_cast<float>(std::sqrt(3.0) * std::min(kWeightStd, 1.0 / std::sqrt(fan_in)));
  for (size_t i = 0; i + esize <= out.size(); i += esize) {
    float v = one;
    if (t.fill == Tensor::Fill::kRandom) {
      uint64_t r = SplitMix(rng);
      v = (static_cast<float>(r >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale;
    }
    StoreValue(v, t.spec.dtype, out.data() + i);
  }
}

// Hugging Face's shard names: model-00001-of-00003.safetensors.
std::string ShardName(size_t index, size_t count) {
  auto pad = [](size_t n) {
    std::string digits = std::to_string(n);
    return std::string(digits.size() < 5 ? 5 - digits.size() : 0, '0') + digits;
  };
  return "model-" + pad(index) + "-of-" + pad(count) + ".safetensors";
}

}  // namespace

Result<MakeCheckpointOptions> ResolveMakeCheckpointOptions(MakeCheckpointOptions o,
                                                           const std::vector<std::string>& explicit_fields) {
  static const std::set<std::string> kArchs = {"qwen3_moe", "qwen3_omni_moe", "mixtral", "olmoe", "qwen2_moe"};
  if (!kArchs.count(o.arch)) {
    return Status::InvalidArgument("unknown `arch` '" + o.arch +
                                   "' (qwen3_moe, qwen3_omni_moe, mixtral, olmoe, qwen2_moe)");
  }
  if (!o.preset.empty()) {
    if (o.preset != "qwen3-30b-a3b") {
      return Status::InvalidArgument("unknown `preset` '" + o.preset + "' (qwen3-30b-a3b)");
    }
    auto set = [&](const char* field, uint32_t& dst, uint32_t v) {
      if (std::find(explicit_fields.begin(), explicit_fields.end(), field) == explicit_fields.end()) dst = v;
    };
    set("layers", o.layers, kPresetLayers);
    set("experts", o.experts, kPresetExperts);
    set("top_k", o.top_k, kPresetTopK);
    set("hidden", o.hidden, kPresetHidden);
    set("moe_intermediate", o.moe_intermediate, kPresetMoeIntermediate);
    set("heads", o.heads, kPresetHeads);
    set("kv_heads", o.kv_heads, kPresetKvHeads);
    set("vocab", o.vocab, o.arch == "qwen3_omni_moe" ? kPresetOmniVocab : kPresetVocab);
    if (o.head_dim == 0) o.head_dim = kPresetHeadDim;
  }
  if (o.head_dim == 0 && o.heads != 0) o.head_dim = o.hidden / o.heads;
  if (o.shared_intermediate == 0) o.shared_intermediate = 2 * o.moe_intermediate;
  if (o.layers == 0 || o.experts == 0 || o.hidden == 0 || o.moe_intermediate == 0 || o.heads == 0 ||
      o.kv_heads == 0 || o.head_dim == 0) {
    return Status::InvalidArgument("every size of a checkpoint must be positive");
  }
  if (o.top_k == 0 || o.top_k > o.experts) return Status::InvalidArgument("`top_k` must be in [1, `experts`]");
  if (o.heads % o.kv_heads != 0) return Status::InvalidArgument("`heads` must be a multiple of `kv_heads`");
  if (o.vocab <= kByteTokens) {
    return Status::InvalidArgument("`vocab` must exceed 256 (byte tokens plus <|endoftext|>)");
  }
  if (o.dtype != DType::kBF16 && o.dtype != DType::kF16 && o.dtype != DType::kF32) {
    return Status::InvalidArgument("`dtype` must be bf16, f16 or f32");
  }
  for (auto [l, e] : o.missing) {
    if (l >= o.layers || e >= o.experts) return Status::InvalidArgument("`missing` names a nonexistent expert");
  }
  if (o.fused_experts && !o.missing.empty()) {
    return Status::InvalidArgument("fused expert tensors cannot leave experts out (`missing`)");
  }
  return o;
}

Result<MakeCheckpointResult> MakeCheckpoint(const std::string& out_dir, const MakeCheckpointOptions& o,
                                            const std::function<void(uint64_t, uint64_t)>& progress) {
  auto fs = DefaultFileSystem();
  ES_RETURN_IF_ERROR(CreateDirs(*fs, out_dir));
  std::vector<Tensor> tensors = BuildTensors(o);
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.spec.byte_size();

  // Shards: consecutive tensors up to max_shard_bytes each.
  std::vector<std::vector<const Tensor*>> shards(1);
  uint64_t in_shard = 0;
  for (const auto& t : tensors) {
    if (in_shard > 0 && in_shard + t.spec.byte_size() > o.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&t);
    in_shard += t.spec.byte_size();
  }
  MakeCheckpointResult result;
  std::vector<std::byte> chunk(kChunk);
  uint64_t done = 0;
  JsonWriter index;
  index.BeginObject().Key("metadata").BeginObject().Key("total_size").Uint(total).EndObject();
  index.Key("weight_map").BeginObject();
  for (size_t s = 0; s < shards.size(); ++s) {
    std::string name = shards.size() == 1 ? "model.safetensors" : ShardName(s + 1, shards.size());
    std::vector<TensorSpec> specs;
    for (const Tensor* t : shards[s]) {
      specs.push_back(t->spec);
      index.Key(t->spec.name).String(name);
    }
    ES_ASSIGN_OR_RETURN(auto writer, SafetensorsWriter::Create(fs, JoinPath(out_dir, name), specs, {{"format", "pt"}}));
    for (const Tensor* t : shards[s]) {
      uint64_t rng = o.seed ^ Xxh3(std::as_bytes(std::span(t->spec.name.data(), t->spec.name.size())));
      uint64_t size = t->spec.byte_size();
      for (uint64_t off = 0; off < size; off += kChunk) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, size - off));
        FillChunk(*t, rng, {chunk.data(), n});
        ES_RETURN_IF_ERROR(writer->Write({chunk.data(), n}));
        done += n;
        if (progress) progress(done, total);
      }
    }
    ES_RETURN_IF_ERROR(writer->Finish());
    result.files.push_back(name);
  }
  index.EndObject().EndObject();
  if (shards.size() > 1) {
    ES_RETURN_IF_ERROR(WriteFileAtomic(fs, JoinPath(out_dir, "model.safetensors.index.json"), index.str()));
    result.files.push_back("model.safetensors.index.json");
  }
  ES_RETURN_IF_ERROR(WriteFileAtomic(fs, JoinPath(out_dir, "config.json"), ConfigJson(o)));
  ES_RETURN_IF_ERROR(WriteFileAtomic(fs, JoinPath(out_dir, "tokenizer.json"), TokenizerJson()));
  result.files.push_back("config.json");
  result.files.push_back("tokenizer.json");
  ES_RETURN_IF_ERROR(fs->SyncDir(out_dir));
  result.bytes = total;
  return result;
}

}  // namespace es
