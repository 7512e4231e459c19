// tools.h — fedlora-client's one-shot subcommands, for a quick look at a model and for
// interoperability checks (scripts/interop.sh). Torch-free header; tools.cc is in
// fedlora_client_ml.
//
//   tokenize       token ids (and their decoding) of a text, as JSON
//   logits         the model's logits for given token ids, with or without an adapter, as
//                  safetensors ("logits": f32 [B, T, vocab])
//   generate       text after a prompt (greedy or temperature/top-p sampling), optionally through
//                  a prompt template and with an adapter
//   export-merged  base + adapter merged (W + s·B·A) and written as an HF checkpoint directory
//
// Adapters are PEFT directories (adapter_config.json + adapter_model.safetensors), e.g. what the
// coordinator exports, or fedlora safetensors files with "<module>.lora_A/B.weight" tensors
// (rank from the shapes; --alpha, default = rank, i.e. scale 1).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>

#include "common/status.h"

namespace fedlora::client {

struct ToolModel {
  std::string model;      // Checkpoint file or HF directory.
  std::string tokenizer;  // Empty: the HF directory's own.
  std::string adapter;    // Empty: no adapter.
  double alpha = 0.0;     // For plain safetensors adapters: LoRA alpha (0 = rank).
  std::string device = "cpu";
};

// {"ids": [...], "decoded": "..."} on one line. `special`: add BOS/EOS as the tokenizer's
// post-processor would (transformers' add_special_tokens=True).
Status RunTokenize(const std::string& tokenizer, const std::string& text_file, bool special,
                   std::ostream& out);

// Reads `ids_file` (JSON: a list of equally long lists of token ids) and writes the logits to
// `out_file`.
Status RunLogits(const ToolModel& m, const std::string& ids_file, const std::string& out_file);

struct GenerateRequest {
  std::string prompt;
  std::string prompt_template;  // "" (raw prompt), alpaca, chatml.
  std::uint32_t max_new_tokens = 128;
  double temperature = 0.0;
  double top_p = 1.0;
  std::uint64_t seed = 0;
};
// Prints the generated text (not the prompt) to `out`.
Status RunGenerate(const ToolModel& m, const GenerateRequest& request, std::ostream& out);

// dtype: f32, bf16, f16.
Status RunExportMerged(const ToolModel& m, const std::string& out_dir, const std::string& dtype);

}  // namespace fedlora::client
