// adapter_layout.h — which modules a LoRA adapter covers, its tensor names, and its first values.
//
// Pure functions over wire values, without LibTorch, so the coordinator can create and check
// adapters without linking a tensor library. Names follow PEFT: module
// "model.layers.0.self_attn.q_proj" has "<module>.lora_A.weight" (r x d_in) and
// "<module>.lora_B.weight" (d_out x r).
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

// "q_proj" for "model.layers.0.self_attn.q_proj".
std::string_view ShortName(std::string_view module);
std::string LoraAName(std::string_view module);  // "<module>.lora_A.weight"
std::string LoraBName(std::string_view module);  // "<module>.lora_B.weight"

// The modules of `available` whose short name is in `spec.targets`, in the given order.
// kInvalidArgument when a target matches no module (naming it and the valid short names) or
// when targets or rank are empty/zero.
Result<std::vector<wire::ModuleInfo>> SelectTargets(std::span<const wire::ModuleInfo> available,
                                                    const wire::LoraSpec& spec);

// Dtype and shape of every tensor of a rank-`rank` adapter on `modules`.
std::map<std::string, TensorSpec, std::less<>> AdapterSpecs(
    std::span<const wire::ModuleInfo> modules, std::uint32_t rank, DType dtype = DType::kF32);

// PEFT's default initialisation in f32: A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (kaiming_uniform with
// a = sqrt(5)), B = 0, so the fresh adapter leaves the model unchanged. Deterministic in `seed`
// and independent of module order (each module's stream is seeded from `seed` and its name).
TensorMap InitAdapter(std::span<const wire::ModuleInfo> modules, std::uint32_t rank,
                      std::uint64_t seed);

// LoRA scale s: alpha / r, or alpha / sqrt(r) with rsLoRA.
double Scale(const wire::LoraSpec& spec);

}  // namespace fedlora::lora
