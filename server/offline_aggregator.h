// offline_aggregator.h — fedlora-agg: aggregate adapter files by hand with the coordinator's own
// strategies, for operators who merge adapters offline and for conformance tests.
//
// Inputs are safetensors files with "<module>.lora_A.weight" (r x d_in) and
// "<module>.lora_B.weight" (d_out x r) per module (Fed-SB: "<module>.lora_R.weight" (r x r) per
// client plus the shared lora_A / lora_B in any client file or the --global file), in any float
// dtype, computed in fp64; or PEFT LoRA adapter directories (detected by adapter_config.json,
// read with lora::ImportPeft; each client's PEFT scale is kept exactly by folding its ratio to the
// aggregation scale into B). Outputs in the output directory:
//   global.safetensors      the new global factors, same names (f32, or f64 with --fp64)
//   correction.safetensors  for strategies that change base weights (fedex, flora):
//                           "<module>.U" (d_out x K) and "<module>.V" (K x d_in) with the scale
//                           folded in, so W_new = W + U*V
//   summary.json            strategy, weights used, ranks, parameter counts, strategy metrics
// and with --peft-out DIR the result as a PEFT adapter directory, corrections folded in
// (common/lora/peft.h), so W + U V + s B A is served from the pristine base.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedlora::server {

struct OfflineInput {
  std::string path;         // A safetensors file, or a PEFT adapter directory.
  double weight = 1.0;  // Sample count (":WEIGHT"); 1 when not given.
};

struct OfflineOptions {
  std::string strategy;
  std::vector<OfflineInput> clients;
  std::string out_dir;
  std::string global_path;  // The current global adapter (fslora needs it; others may use it).
  std::string peft_out;     // Also write the result as a PEFT adapter here (empty: do not).
  bool fp64 = false;
  // "key=value" settings with the coordinator's YAML names: strategy.<name>.<key>,
  // strategy.weighting, lora.alpha, lora.rank, lora.rslora, fslora sketches as
  // strategy.fslora.sketch.<client index>=[i, j, ...], and for --peft-out
  // export.base_model_name_or_path and export.dtype (f32, bf16, f16, f64; default f32).
  std::vector<std::string> settings;
};

// Parses "FILE[:WEIGHT]". kInvalidArgument for a bad weight.
Result<OfflineInput> ParseClientArgument(const std::string& argument);

// Runs the aggregation and writes the outputs. Errors name the file and tensor at fault.
Status RunOfflineAggregation(const OfflineOptions& options);

// The --help text listing every setting.
std::string OfflineAggregatorHelp();

}  // namespace fedlora::server
