// llama.h — a frozen Llama-family decoder (Llama 2/3, TinyLlama, SmolLM, Mistral, Qwen2) for
// LoRA fine-tuning on CPU.
//
// Computes what transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM compute:
// RMSNorm (x * rsqrt(mean(x²) + eps) * weight, in float32), rotary embeddings in HF's split-half
// (rotate_half) layout with optional "linear" or "llama3" frequency scaling, grouped-query
// attention written out by hand (LibTorch 1.13 has no scaled_dot_product_attention) with optional
// q/k/v/o biases and an optional sliding window (Mistral), SwiGLU feed-forward, and a classifier
// tied to the embedding or separate. Weights are float32 in nn.Linear layout [out, in] and are
// named as in HF's LlamaForCausalLM ("model.layers.3.mlp.up_proj"). One known difference: the
// RoPE angles are computed in double and rounded once to float32, where transformers multiplies
// in float32; the cos/sin tables differ by at most a few ulp times the position.
//
// Loads llama2.c checkpoints, legacy (v0) and version-1 layouts; llama2.c rotates interleaved
// pairs, so the rows of wq and wk are permuted at load into the HF layout (data README §1c).
// Loads Hugging Face checkpoints (config.json + model.safetensors, or sharded with
// model.safetensors.index.json) with LoadHf; hf_checkpoint.h saves them.
//
// The model knows nothing about LoRA, tokenizers or training: an optional ModuleAdapter sees the
// input and output of every adaptable linear module and may change the output, and an optional
// span of per-module weights replaces the frozen weight of chosen adaptable modules for one call
// (corrected base weights, base_overlay.h; gradients with respect to a base weight). Neither
// mutates the model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::client {

// RoPE frequency scaling (HF config.json "rope_scaling"); see RopeInverseFrequencies.
struct RopeScaling {
  enum class Type : std::uint8_t {
    kNone,    // inv_freq[j] = theta^(-2j/head_size).
    kLinear,  // inv_freq / factor (position interpolation).
    kLlama3,  // Llama 3.1's band-wise scaling (transformers' _compute_llama3_parameters).
  };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                          // kLlama3 only.
  double high_freq_factor = 4.0;                         // kLlama3 only.
  std::int64_t original_max_position_embeddings = 8192;  // kLlama3 only.
};

struct LlamaConfig {
  std::int64_t dim = 0;
  std::int64_t hidden_dim = 0;   // FFN width.
  std::int64_t n_layers = 0;
  std::int64_t n_heads = 0;
  std::int64_t n_kv_heads = 0;   // Query head h reads kv head h / (n_heads / n_kv_heads).
  std::int64_t vocab_size = 0;
  std::int64_t seq_len = 0;      // Longest sequence Forward accepts (RoPE tables are this long).
  bool shared_classifier = true; // lm_head tied to the token embedding.
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  // Per-head width; 0 means dim / n_heads. n_heads * head_dim may differ from dim (q_proj is then
  // [n_heads * head_dim, dim] and o_proj [dim, n_heads * head_dim]).
  std::int64_t head_dim = 0;
  RopeScaling rope_scaling;
  // Biases (each a [d_out] tensor "<module>.bias"): q/k/v (Qwen2, Llama attention_bias), o_proj
  // (Llama attention_bias), gate/up/down (Llama mlp_bias).
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  // > 0: position t attends only to positions t - sliding_window + 1 .. t (Mistral; the same
  // band transformers' sliding_window_overlay draws). 0: full causal attention.
  std::int64_t sliding_window = 0;
  // The checkpoint's own context length (HF max_position_embeddings), kept so that saving a model
  // loaded with a shorter seq_len writes the original value back; 0 means seq_len.
  std::int64_t max_position_embeddings = 0;

  std::int64_t head_size() const { return head_dim > 0 ? head_dim : dim / n_heads; }
  std::int64_t q_dim() const { return n_heads * head_size(); }
  std::int64_t kv_dim() const { return n_kv_heads * head_size(); }
};

// OK when `config` describes a model this class can build: sizes positive and bounded (widths
// <= 2^20, layers <= 2^12), heads dividing dim (unless head_dim is set), an even head size,
// n_kv_heads dividing n_heads, positive finite eps, theta > 1, sane rope scaling, window >= 0.
// kInvalidArgument naming `source` and the field otherwise.
Status ValidateLlamaConfig(const LlamaConfig& config, std::string_view source);

// The head_size / 2 RoPE inverse frequencies the model uses, in double: theta^(-2j/head_size),
// then scaled as config.rope_scaling says. Position p, pair j rotates by p * inv_freq[j].
std::vector<double> RopeInverseFrequencies(const LlamaConfig& config);

// Options of LlamaModel::LoadHf.
struct HfLoadOptions {
  // Longest sequence Forward accepts: seq_len = min(max_position_embeddings, max_seq_len), so that
  // Llama 3's 131072 positions do not allocate huge RoPE tables. Must be >= 1.
  std::int64_t max_seq_len = 4096;
  // Dtype the weights are held and computed in. Only kF32 is implemented (kUnimplemented
  // otherwise); BF16 and F16 files are widened to float32 at load.
  DType compute_dtype = DType::kF32;
};

// The seven linear modules of a layer that LoRA can adapt, in the order AdaptableModules() lists
// them within a layer. Short names are the HF attribute names.
enum class ModuleKind : std::uint8_t { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr std::size_t kModulesPerLayer = 7;
std::string_view ModuleShortName(ModuleKind kind);  // "q_proj", ..., "down_proj"

// Something that changes the output of adaptable linear modules (LoRA). Forward calls Adapt once
// per adaptable module and layer, with the module's position in AdaptableModules(), its input
// `x` [..., d_in] and the frozen output `base` = x·Wᵀ [..., d_out]; the result replaces `base`.
// Used by one thread at a time (it may hold state such as a dropout generator).
class ModuleAdapter {
 public:
  virtual ~ModuleAdapter() = default;
  virtual at::Tensor Adapt(std::size_t module_index, const at::Tensor& x, at::Tensor base) = 0;
};

// Immutable after loading: the base weights never require grad and no method mutates them, so
// one instance (held by shared_ptr<const LlamaModel>) may be used by any number of threads at
// once; each thread brings its own ModuleAdapter. Gradients flow only into adapter tensors.
class LlamaModel {
 public:
  enum class Format { kLlama2cLegacy, kLlama2cV1 };

  // Reads a llama2.c checkpoint, telling the layouts apart by the version-1 magic "ak42".
  // kNotFound: cannot open. kDataLoss: the file is shorter than its header says, or a weight is
  // NaN or infinite.
  // kInvalidArgument: bad magic/version, impossible header values (non-positive sizes, heads
  // not dividing dim, odd head size, ...) or bytes after the last tensor.
  // kUnimplemented: a version-2 (int8-quantized) file. Every message names `path`.
  static Result<std::shared_ptr<const LlamaModel>> LoadLlama2c(const std::string& path);

  // Reads a Hugging Face checkpoint directory: config.json plus model.safetensors, or, when that
  // is absent, model.safetensors.index.json and the shards it names (each opened once). The
  // files are memory-mapped; float32 tensors at 4-byte-aligned offsets are used in place (the
  // mapping lives as long as the model), others are copied, BF16/F16 widened to float32.
  // model_type must be llama, mistral or qwen2 and hidden_act silu; the keys read and their
  // defaults are listed in hf_checkpoint.cc. Tensors named "*.rotary_emb.inv_freq" (old
  // checkpoints) are ignored, as is lm_head.weight when the embeddings are tied.
  // kNotFound: no directory, config.json, weights file or shard; a tensor the config requires,
  // or one the index puts in a shard that lacks it.
  // kInvalidArgument: a config key missing, of the wrong type or impossible; a tensor whose shape
  // disagrees with config.json; an unexpected tensor.
  // kDataLoss: malformed JSON or safetensors (truncated, offsets past the end or overlapping),
  // a NaN or infinite weight. kUnimplemented: another model_type, hidden_act, rope_scaling type,
  // Qwen2's use_sliding_window, a compute dtype other than f32; a dtype the safetensors reader
  // rejects is kInvalidArgument. Every message names the file and the key or tensor.
  static Result<std::shared_ptr<const LlamaModel>> LoadHf(const std::string& dir,
                                                          const HfLoadOptions& options = {});

  // A directory holding config.json is read with LoadHf (default options), anything else with
  // LoadLlama2c. Errors are theirs.
  static Result<std::shared_ptr<const LlamaModel>> Load(const std::string& path);

  // Builds a model from HF-named float tensors (see TensorNames()), e.g. for tests. Copies them.
  // Exactly the tensors `config` implies: lm_head.weight iff !shared_classifier, "<module>.bias"
  // [d_out] for the modules config's *_bias flags name.
  // kInvalidArgument names the missing, unexpected or misshapen tensor; kDataLoss a non-finite one.
  static Result<std::shared_ptr<const LlamaModel>> FromTensors(
      const LlamaConfig& config, const std::map<std::string, at::Tensor>& tensors);

  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const LlamaConfig& config() const { return config_; }

  // A copy of this model on `device` (every tensor copied, aliases kept; same digest). Forward
  // then takes tokens and replacement weights on that device. kInternal when LibTorch cannot
  // (no such device, out of memory).
  Result<std::shared_ptr<const LlamaModel>> To(const at::Device& device) const;
  // Where the weights live.
  at::Device device() const;

  // Logits [B, T, vocab] (float32) for int64 tokens [B, T] at positions 0..T-1, with causal
  // attention. Differentiable with respect to the adapter's tensors (and to `weights` that
  // require grad) when grad mode is on.
  // Tokens live on device(). `weights`: empty, or one entry per AdaptableModules() index; a
  // defined entry (float32 on device(), [d_out, d_in]) is used instead of that module's frozen weight, an undefined one leaves it.
  // kInvalidArgument: tokens not int64 [B, T] with 1 <= T <= seq_len, an id outside the vocab,
  // or `weights` of the wrong size or with a misshapen entry (named).
  // kInternal: LibTorch threw (the message says what).
  Result<at::Tensor> Forward(const at::Tensor& tokens, ModuleAdapter* adapter = nullptr,
                             std::span<const at::Tensor> weights = {}) const;

  // Every adaptable linear module, layer by layer, in ModuleKind order within a layer:
  // index = layer * kModulesPerLayer + kind. Shapes are nn.Linear's [d_out, d_in].
  const std::vector<wire::ModuleInfo>& AdaptableModules() const { return modules_; }
  // Index in AdaptableModules() of the module with HF name `module`, or -1.
  std::ptrdiff_t ModuleIndex(std::string_view module) const;
  // Frozen weight [d_out, d_in] of adaptable module `index` (< AdaptableModules().size()).
  // Shares storage with the model: treat it as read-only (it may be a read-only file mapping).
  const at::Tensor& ModuleWeight(std::size_t index) const { return module_weights_.at(index); }
  // Frozen bias [d_out] of adaptable module `index`, or an undefined tensor when it has none.
  // Forward adds it after any replacement weight, before the ModuleAdapter sees the output.
  const at::Tensor& ModuleBias(std::size_t index) const { return module_biases_.at(index); }

  // Frozen weight of a base tensor by HF name ("model.layers.0.self_attn.q_proj.weight"),
  // or an undefined tensor. Shares storage with the model: treat it as read-only.
  at::Tensor Weight(std::string_view name) const;
  // Every base tensor's HF name, sorted bytewise (the digest's order).
  std::vector<std::string> TensorNames() const;

  // Hex SHA-256 over the base tensors (biases included) in TensorNames() order: for each, the
  // name bytes, a 0 byte, then as int64 little-endian the dtype code (1 = f32), ndim and each
  // dim, then the float32 little-endian data. Layout-independent: legacy and version-1 files of
  // the same weights give the same digest, and so do HF files in any dtype and sharding whose
  // values widen to the same float32 (a bf16 file hashes its widened values, with dtype code 1).
  // Configuration (eps, theta, scaling, window) is not hashed.
  const std::string& Digest() const { return digest_; }

 private:
  struct Layer {
    at::Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
    at::Tensor bq, bk, bv, bo, b_gate, b_up, b_down;  // Undefined when absent.
  };

  LlamaModel() = default;
  // Validates names, shapes and finiteness, then takes `tensors` as they are (no copy).
  // `tensor_files`, when given, names the file each tensor came from, for error messages;
  // `source` is named otherwise (and for missing tensors).
  static Result<std::shared_ptr<const LlamaModel>> Build(
      const LlamaConfig& config, std::map<std::string, at::Tensor> tensors,
      std::string_view source,
      const std::map<std::string, std::string, std::less<>>* tensor_files = nullptr);
  at::Tensor ForwardImpl(const at::Tensor& tokens, ModuleAdapter* adapter,
                         std::span<const at::Tensor> weights) const;

  LlamaConfig config_;
  std::map<std::string, at::Tensor, std::less<>> tensors_;  // HF name -> weight (owns them).
  std::vector<Layer> layers_;                                // Aliases of tensors_ entries.
  at::Tensor embed_, final_norm_, lm_head_;
  at::Tensor rope_cos_, rope_sin_;                           // [seq_len, head_size].
  std::vector<wire::ModuleInfo> modules_;
  std::vector<at::Tensor> module_weights_;                   // By module index (aliases).
  std::vector<at::Tensor> module_biases_;                    // By module index; may be undefined.
  std::map<std::string, std::size_t, std::less<>> module_index_;
  std::string digest_;
};

}  // namespace fedlora::client
