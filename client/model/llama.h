// llama.h — a frozen Llama-family decoder (Llama 2 architecture) for LoRA fine-tuning on CPU.
//
// RMSNorm, rotary embeddings in Hugging Face's split-half layout, grouped-query attention written
// out by hand (LibTorch 1.13 has no scaled_dot_product_attention), SwiGLU feed-forward, and a
// classifier tied to the embedding or separate. Weights are float32 in nn.Linear layout
// [out, in] and are named as in Hugging Face's LlamaForCausalLM ("model.layers.3.mlp.up_proj").
//
// Loads llama2.c checkpoints, legacy (v0) and version-1 layouts; llama2.c rotates interleaved
// pairs, so the rows of wq and wk are permuted at load into the HF layout (data README §1c).
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
#include "common/wire/messages.h"

namespace fedlora::client {

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

  std::int64_t head_size() const { return dim / n_heads; }
  std::int64_t kv_dim() const { return n_kv_heads * head_size(); }
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

  // Builds a model from HF-named float tensors (see TensorNames()), e.g. for tests. Copies them.
  // kInvalidArgument names the missing, unexpected or misshapen tensor; kDataLoss a non-finite one.
  static Result<std::shared_ptr<const LlamaModel>> FromTensors(
      const LlamaConfig& config, const std::map<std::string, at::Tensor>& tensors);

  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const LlamaConfig& config() const { return config_; }

  // Logits [B, T, vocab] (float32) for int64 tokens [B, T] at positions 0..T-1, with causal
  // attention. Differentiable with respect to the adapter's tensors (and to `weights` that
  // require grad) when grad mode is on.
  // `weights`: empty, or one entry per AdaptableModules() index; a defined entry (float32 CPU,
  // [d_out, d_in]) is used instead of that module's frozen weight, an undefined one leaves it.
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
  // Shares storage with the model: treat it as read-only.
  const at::Tensor& ModuleWeight(std::size_t index) const { return module_weights_.at(index); }

  // Frozen weight of a base tensor by HF name ("model.layers.0.self_attn.q_proj.weight"),
  // or an undefined tensor. Shares storage with the model: treat it as read-only.
  at::Tensor Weight(std::string_view name) const;
  // Every base tensor's HF name, sorted bytewise (the digest's order).
  std::vector<std::string> TensorNames() const;

  // Hex SHA-256 over the base tensors in TensorNames() order: for each, the name bytes, a 0
  // byte, then as int64 little-endian the dtype code (1 = f32), ndim and each dim, then the
  // float32 little-endian data. Layout-independent: legacy and version-1 files of the same
  // weights give the same digest.
  const std::string& Digest() const { return digest_; }

 private:
  struct Layer {
    at::Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
  };

  LlamaModel() = default;
  static Result<std::shared_ptr<const LlamaModel>> Build(
      const LlamaConfig& config, std::map<std::string, at::Tensor> tensors,
      std::string_view source);
  at::Tensor ForwardImpl(const at::Tensor& tokens, ModuleAdapter* adapter,
                         std::span<const at::Tensor> weights) const;

  LlamaConfig config_;
  std::map<std::string, at::Tensor, std::less<>> tensors_;  // HF name -> weight (owns them).
  std::vector<Layer> layers_;                                // Aliases of tensors_ entries.
  at::Tensor embed_, final_norm_, lm_head_;
  at::Tensor rope_cos_, rope_sin_;                           // [seq_len, head_size].
  std::vector<wire::ModuleInfo> modules_;
  std::vector<at::Tensor> module_weights_;                   // By module index (aliases).
  std::map<std::string, std::size_t, std::less<>> module_index_;
  std::string digest_;
};

}  // namespace fedlora::client
