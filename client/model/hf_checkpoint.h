// hf_checkpoint.h — Hugging Face checkpoint directories (config.json + model.safetensors, or
// shards listed in model.safetensors.index.json) for LlamaModel.
//
// Reading is LlamaModel::LoadHf (llama.h), implemented in hf_checkpoint.cc together with the
// config.json translation below; writing is SaveHf, which is how a LoRA-merged model is exported
// for transformers, llama.cpp's converter or vLLM. Knows nothing about LoRA: a merged model is
// just the base model with some module weights replaced.
#pragma once

#include <ATen/core/Tensor.h>

#include <span>
#include <string>

#include "client/model/llama.h"
#include "common/status.h"
#include "common/tensor.h"

namespace fedlora::client {

// Translates the config.json at `path` (see hf_checkpoint.cc for every key read and its default)
// into a LlamaConfig with seq_len = min(max_position_embeddings, options.max_seq_len).
// kNotFound: no file. kDataLoss: not a JSON object. kInvalidArgument: a required key missing, a
// key of the wrong type or an impossible value. kUnimplemented: a model_type other than llama,
// mistral, qwen2; hidden_act other than silu; rope_scaling other than default, linear, llama3;
// quantization; Qwen2's use_sliding_window. Messages name `path` and the key.
Result<LlamaConfig> ReadHfConfig(const std::string& path, const HfLoadOptions& options = {});

// The config.json SaveHf writes for `config` with weights stored as `dtype`: model_type llama
// (attention_bias when q/k/v/o have biases), qwen2 when only q/k/v have biases, mistral when a
// sliding window is set. kUnimplemented for bias layouts no HF model_type expresses.
Result<std::string> HfConfigJson(const LlamaConfig& config, DType dtype);

// Writes `model` as a Hugging Face checkpoint directory `dir`: config.json (HfConfigJson) and
// model.safetensors (HF tensor names, metadata {"format": "pt"}, lm_head.weight only when
// untied), with the weights stored as `dtype` (kF32, kBF16 or kF16, rounded to nearest even).
// `replaced_weights`: empty, or one entry per AdaptableModules() index; a defined entry (any
// floating dtype, CPU or not, [d_out, d_in]) is written instead of that module's frozen weight,
// e.g. W + scale·B·A of a merged LoRA adapter; biases are kept.
// Atomic: everything is written into a staging directory next to `dir`, fsynced and renamed, so
// `dir` either does not exist or is complete. Missing parents of `dir` are created.
// kAlreadyExists: `dir` exists and is not an empty directory. kInvalidArgument: a bad dtype,
// `replaced_weights` of the wrong size, a misshapen or non-finite replacement (named).
// kUnimplemented: as HfConfigJson. I/O errors as fs.h (naming the path). kInternal: LibTorch threw.
Status SaveHf(const LlamaModel& model, const std::string& dir,
              std::span<const at::Tensor> replaced_weights = {}, DType dtype = DType::kF32);

}  // namespace fedlora::client
