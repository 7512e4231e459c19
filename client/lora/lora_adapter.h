// lora_adapter.h — LoRA (Hu et al. 2021) adapters on a frozen LlamaModel.
//
// For each targeted linear module W [d_out, d_in] the adapter holds A [r, d_in] and B [d_out, r]
// and replaces y = x·Wᵀ by y + s · dropout(x)·Aᵀ·Bᵀ, with s = alpha / r, or alpha / √r with
// rsLoRA (Kalajdzievski 2023). Initialisation follows PEFT: A ~ kaiming_uniform(a = √5), which
// is U(−1/√d_in, 1/√d_in), and B = 0, so a fresh adapter leaves the model unchanged.
//
// On the wire the factors are named "<module>.lora_A.weight" and "<module>.lora_B.weight", with
// <module> the HF module name ("model.layers.0.self_attn.q_proj").
//
// Randomness (initialisation and dropout) comes from the adapter's own at::Generator seeded at
// creation, never from LibTorch's global generator, so results do not depend on what other
// clients in the same process do.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "client/model/llama.h"
#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::client {

// The short module names LoRA may target, in ModuleKind order.
const std::vector<std::string>& LoraTargetNames();

// One client's adapter: a resource owning trainable float32 tensors and a generator.
// Thread-compatible: use from one thread at a time. Holds no reference to the model it was made
// for; it fits any model with the same AdaptableModules() (LlamaModel::Forward with another
// model fails with kInternal).
class LoraAdapter final : public ModuleAdapter {
 public:
  // A fresh adapter for every module of `model` whose short name is in `spec.targets`, with A
  // drawn from a generator seeded with `seed` (which then drives dropout).
  // kInvalidArgument: rank 0, alpha not finite and > 0, dropout outside [0, 1), no targets,
  // or an unknown target (the message lists the valid names).
  static Result<std::unique_ptr<LoraAdapter>> Create(const LlamaModel& model,
                                                     const wire::LoraSpec& spec,
                                                     std::uint64_t seed);

  LoraAdapter(const LoraAdapter&) = delete;
  LoraAdapter& operator=(const LoraAdapter&) = delete;

  // Overwrites every factor from `tensors` (any wire float dtype; converted to float32).
  // `tensors` must hold exactly this adapter's factors. kInvalidArgument names the tensor that
  // is unknown, missing, malformed or has the wrong shape; on error nothing is changed.
  Status Load(const TensorMap& tensors);

  // Every factor, named as on the wire, converted to `dtype`.
  Result<TensorMap> Export(DType dtype) const;

  // The trainable tensors (A and B of each module), for the optimiser. They alias the adapter.
  std::vector<at::Tensor> Parameters() const;

  // Reseeds the adapter's generator, which drives dropout from now on (e.g. a per-client seed
  // after creating every client's adapter from one shared initialisation seed).
  void SetSeed(std::uint64_t seed);

  // Training mode applies dropout on the adapter path; evaluation mode (the default) does not.
  void SetTraining(bool training) { training_ = training; }
  bool training() const { return training_; }

  double scale() const { return scale_; }
  std::uint32_t rank() const { return rank_; }
  // HF names of the adapted modules, in AdaptableModules() order.
  std::vector<std::string> ModuleNames() const;

  // W + s·B·A for an adapted module (HF module name), as a new tensor; undefined if the module is
  // not adapted. For tests and for exporting merged weights.
  at::Tensor MergedWeight(const LlamaModel& model, std::string_view module) const;

  at::Tensor Adapt(std::size_t module_index, const at::Tensor& x, at::Tensor base) override;

 private:
  struct Factors {
    std::string module;  // HF module name.
    at::Tensor a;        // [r, d_in], requires grad.
    at::Tensor b;        // [d_out, r], requires grad.
  };

  LoraAdapter() = default;
  const Factors* Find(std::string_view module) const;

  std::uint32_t rank_ = 0;
  double scale_ = 0.0;
  double dropout_ = 0.0;
  bool training_ = false;
  std::vector<std::unique_ptr<Factors>> slots_; // By module index; null where not adapted.
  at::Generator generator_;                     // CPU generator owned by this adapter.
};

}  // namespace fedlora::client
