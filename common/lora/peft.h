// peft.h — LoRA adapters in Hugging Face PEFT's directory format, read and written without the
// base model and without LibTorch, so PEFT, transformers and vLLM can serve what we trained.
//
// A PEFT LoRA adapter directory, as PeftModel.save_pretrained (PEFT 0.x) writes it:
//   adapter_config.json        LoraConfig.to_dict(), json.dumps(indent=2, sort_keys=True)
//   adapter_model.safetensors  "base_model.model.<module>.lora_A.weight" (r_m x d_in) and
//                              "base_model.model.<module>.lora_B.weight" (d_out x r_m), metadata
//                              {"format": "pt"}; <module> is the HF module name we use
//                              ("model.layers.0.self_attn.q_proj"). save_and_load.py drops the
//                              adapter name; files that kept it (".lora_A.default.weight") are
//                              read.
// PEFT computes W x + s_m B A x with s_m = alpha_m / r_m (alpha_m / sqrt(r_m) with use_rslora),
// r_m = rank_pattern[module] or r, alpha_m = alpha_pattern[module] or lora_alpha.
//
// Exactness when the base changed. FedEx-LoRA and FLoRA fold updates into the frozen weights
// (W_new = W + U V, U d_out x K, V K x d_in, the scale folded in), which a plain adapter cannot
// carry. FoldCorrections (and ExportPeft with corrections) writes instead, per module, the adapter
// B' = [s_m B | U], A' = [A ; V] of rank r_m + K with scale 1, so PEFT computes exactly
// W + U V + s_m B A on the pristine base. Fed-SB's W + s B R A becomes B' = B R, A' = A.
//
// Limits, by design: no pickles (adapter_model.bin: loading one runs arbitrary code), and only
// plain LoRA on linear layers: DoRA, bias training, modules_to_save, fan_in_fan_out, aLoRA,
// QA-LoRA, parameter targets and inits that change the base (PiSSA, OLoRA, CorDA, LoftQ) are
// kUnimplemented, naming the key.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::lora {

inline constexpr std::string_view kPeftConfigFile = "adapter_config.json";
inline constexpr std::string_view kPeftWeightsFile = "adapter_model.safetensors";
inline constexpr std::string_view kPeftPickleFile = "adapter_model.bin";

// One module's LoRA factors.
struct PeftFactors {
  Tensor a;  // r_m x d_in
  Tensor b;  // d_out x r_m
  friend bool operator==(const PeftFactors&, const PeftFactors&) = default;
};

// A PEFT LoRA adapter as values. Factors are f32 (f64 where built or read as f64, for exactness
// checks). Invariants (checked by ExportPeft, established by ImportPeft): every module's A rows
// and B columns equal RankOf(module); the patterns are keyed by full module name and list only
// modules that differ from r / lora_alpha.
struct PeftAdapter {
  std::map<std::string, PeftFactors, std::less<>> modules;  // By our HF module name.
  std::uint32_t r = 8;
  double lora_alpha = 8.0;
  std::map<std::string, std::uint32_t, std::less<>> rank_pattern;
  std::map<std::string, double, std::less<>> alpha_pattern;
  bool use_rslora = false;
  double lora_dropout = 0.0;
  std::vector<std::string> target_modules;  // Short names ("q_proj"), sorted and unique.
  std::string base_model_name_or_path;      // Empty: null in the config.

  std::uint32_t RankOf(std::string_view module) const;
  double AlphaOf(std::string_view module) const;
  double ScaleOf(std::string_view module) const;  // What PEFT multiplies B A by.
  friend bool operator==(const PeftAdapter&, const PeftAdapter&) = default;
};

// One module's base-weight change W_new = W + u v, the scale folded in (the convention of
// fedlora-agg's correction.safetensors and of the coordinator's correction log).
struct PeftCorrection {
  Tensor u;  // d_out x K
  Tensor v;  // K x d_in
  friend bool operator==(const PeftCorrection&, const PeftCorrection&) = default;
};
using PeftCorrections = std::map<std::string, PeftCorrection, std::less<>>;

// A dense delta D (d_out x d_in) as exact factors of rank min(d_out, d_in): (I, D) when
// d_out <= d_in, else (D, I). kInvalidArgument unless D is a matrix.
Result<PeftCorrection> DenseAsFactors(const Tensor& dense);

// Changes applied in turn as one pair: U = [U_1 | U_2 | ...], V = [V_1 ; V_2 ; ...] (exact; the
// rank is the sum). Values keep their precision (computed in f64, written in f64).
// kInvalidArgument, naming `module`, when the shapes disagree.
Result<PeftCorrection> StackCorrections(std::span<const PeftCorrection> parts,
                                        std::string_view module);

// Our adapter representation -> PEFT. `adapter` holds "<module>.lora_A.weight" (r_m x d_in) and
// "<module>.lora_B.weight" (d_out x r_m), and for Fed-SB also "<module>.lora_R.weight"
// (r_m x r_m; exported as B R, the product in f64). Every module is scaled by Scale(spec), as our
// clients do: a module whose rank differs from spec.rank gets rank_pattern r_m and alpha_pattern
// s r_m (s sqrt(r_m) with rsLoRA). Factors are written in `dtype` (f32 or f64).
// kInvalidArgument naming the tensor for a factor without its partner or inconsistent shapes.
Result<PeftAdapter> PeftFromAdapter(const TensorMap& adapter, const wire::LoraSpec& spec,
                                    const std::string& base_model_name_or_path = "",
                                    DType dtype = DType::kF32);

// PEFT -> our representation: spec.rank = r, spec.alpha = lora_alpha, spec.rslora, dropout and
// targets from the config. A module whose PEFT scale differs from Scale(spec) by more than
// rounding (relative 1e-12) gets that ratio folded into its B, so the model is the same.
struct LoraAdapterValue {
  TensorMap tensors;
  wire::LoraSpec spec;
};
Result<LoraAdapterValue> AdapterFromPeft(const PeftAdapter& peft);

// The adapter with `corrections` folded in (see the top of this file): modules with a correction
// get rank r_m + K and scale 1 (lora_alpha = rank, or sqrt(rank) with use_rslora; per module
// through rank_pattern / alpha_pattern where ranks differ); modules without one get s_m folded
// into B as well, so the whole adapter has scale 1. Computed in f64, written in `dtype` (f32, or
// f64 to keep every product exact). kInvalidArgument naming the module when U or V do not fit.
Result<PeftAdapter> FoldCorrections(const PeftAdapter& adapter, const PeftCorrections& corrections,
                                    DType dtype = DType::kF32);

struct PeftExportOptions {
  DType dtype = DType::kF32;    // Of the safetensors file: f32, bf16, f16 (or f64).
  PeftCorrections corrections;  // Folded in with FoldCorrections when not empty.
  std::map<std::string, std::string, std::less<>> metadata;  // Added to {"format": "pt"}.
};

// Writes `dir` (created with its parents) atomically: both files go to a staging directory next
// to it, are fsynced, and the staging directory replaces `dir` in one rename (RENAME_EXCHANGE
// when `dir` exists), so a reader sees the old adapter or the new one, never a mix.
// kInvalidArgument for an adapter that breaks its invariants (naming the module);
// kFailedPrecondition when `dir` exists and is neither empty nor a PEFT adapter directory (it is
// never clobbered); I/O errors as fs.h.
Status ExportPeft(const std::string& dir, const PeftAdapter& adapter,
                  const PeftExportOptions& options = {});

// Reads `dir`. F16, BF16 and F32 factors become f32 (F64 stays f64). Errors name the file and the
// key or tensor at fault: kNotFound (no adapter_config.json, or no weights at all);
// kUnimplemented (only adapter_model.bin; peft_type other than LORA; a feature listed at the top);
// kInvalidArgument (malformed JSON or values, unexpected tensors, an A without its B, shapes or
// ranks that disagree with r / rank_pattern, non-finite values); kDataLoss (corrupt safetensors).
Result<PeftAdapter> ImportPeft(const std::string& dir);

// True when `path` is a directory holding adapter_config.json.
bool IsPeftDirectory(const std::string& path);

// What ExportPeft writes, for tools and tests: the config text and the tensors by PEFT key.
std::string PeftConfigJson(const PeftAdapter& adapter);
TensorMap PeftTensors(const PeftAdapter& adapter, DType dtype = DType::kF32);

}  // namespace fedlora::lora
