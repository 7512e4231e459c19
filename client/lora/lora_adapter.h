// lora_adapter.h — LoRA (Hu et al. 2021) adapters on a frozen LlamaModel.
//
// For each adapted linear module W [d_out, d_in] the adapter holds A [r, d_in] and B [d_out, r]
// and replaces y = x·Wᵀ by y + s · dropout(x)·Aᵀ·Bᵀ. With the LoraSpec constructor every target
// module has rank r = spec.rank and s = alpha / r, or alpha / √r with rsLoRA (Kalajdzievski
// 2023). The general constructor takes a rank and a scale per module (heterogeneous ranks, LoRA
// depth, FSLoRA sketches; the caller decides the scale, see task_adapter.h) and two variants:
//   - frozen factors (FFA-LoRA freezes A): a frozen factor is not a parameter and gets no grad;
//   - latent (LoRA-SB, ALGORITHMS.md §5): y + s · B·R·A·x with B and A frozen and only the
//     r x r matrix R trainable.
// Initialisation follows PEFT: A ~ kaiming_uniform(a = √5), which is U(−1/√d_in, 1/√d_in), and
// B = 0 (and R = 0), so a fresh adapter leaves the model unchanged.
//
// On the wire the factors are named "<module>.lora_A.weight", "<module>.lora_B.weight" and
// "<module>.lora_R.weight", with <module> the HF module name ("model.layers.0.self_attn.q_proj").
//
// HetLoRA rank self-pruning (ALGORITHMS.md §7d): an optional tail penalty
// λ·Σ_modules ‖B[:, t:]‖_F·‖A[t:, :]‖_F with t = ⌊γ·r⌋ per module (modules with t >= r have no
// tail), which the trainer adds to the loss.
//
// Randomness (initialisation and dropout) comes from the adapter's own at::Generator seeded at
// creation, never from LibTorch's global generator, so results do not depend on what other
// clients in the same process do.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "client/model/llama.h"
#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::client {

// The short module names LoRA may target, in ModuleKind order.
const std::vector<std::string>& LoraTargetNames();

enum class LoraFactor : std::uint8_t { kA, kB, kR };
// "<module>.lora_A.weight", "<module>.lora_B.weight" or "<module>.lora_R.weight".
std::string LoraTensorName(std::string_view module, LoraFactor factor);

// One adapted module of the general constructor.
struct LoraModuleSpec {
  std::string module;     // HF module name; must be one of the model's AdaptableModules().
  std::int64_t rank = 0;  // >= 1.
  double scale = 1.0;     // Multiplies the module's B·A (B·R·A); finite.
};

struct LoraOptions {
  double dropout = 0.0;   // In [0, 1); on the adapter path only, in training mode.
  bool latent = false;    // LoRA-SB: B·R·A, only R trains (train_a/train_b are ignored).
  bool train_a = true;
  bool train_b = true;
};

// What Export writes.
struct LoraExportOptions {
  bool a = true;
  bool b = true;
  bool r = true;  // Only latent adapters have R.
  // Modules exported as a prefix truncation: the first `rank` rows of A and columns of B
  // (1 <= rank <= the module's rank). Absent modules are exported whole.
  std::map<std::string, std::int64_t, std::less<>> ranks;
};

// One client's adapter: a resource owning float32 tensors and a generator.
// Thread-compatible: use from one thread at a time. Holds no reference to the model it was made
// for; it fits any model with the same AdaptableModules() (LlamaModel::Forward with another
// model fails with kInternal).
class LoraAdapter final : public ModuleAdapter {
 public:
  // A fresh adapter for every module of `model` whose short name is in `spec.targets`, at rank
  // spec.rank with scale alpha/r (alpha/√r with rsLoRA), with A drawn from a generator seeded
  // with `seed` (which then drives dropout).
  // kInvalidArgument: rank 0, alpha not finite and > 0, dropout outside [0, 1), no targets,
  // or an unknown target (the message lists the valid names).
  static Result<std::unique_ptr<LoraAdapter>> Create(const LlamaModel& model,
                                                     const wire::LoraSpec& spec,
                                                     std::uint64_t seed);

  // A fresh adapter on `modules` (any order; kept in AdaptableModules() order), A drawn from a
  // generator seeded with `seed` in that order. kInvalidArgument names an unknown or repeated
  // module, a rank < 1, a non-finite scale, or a dropout outside [0, 1).
  static Result<std::unique_ptr<LoraAdapter>> Create(const LlamaModel& model,
                                                     std::span<const LoraModuleSpec> modules,
                                                     const LoraOptions& options,
                                                     std::uint64_t seed);

  LoraAdapter(const LoraAdapter&) = delete;
  LoraAdapter& operator=(const LoraAdapter&) = delete;

  // Overwrites every factor from `tensors` (any wire float dtype; converted to float32).
  // `tensors` must hold exactly this adapter's factors (A and B, and R when latent).
  // kInvalidArgument names the tensor that is unknown, missing, malformed, non-finite or has the
  // wrong shape; on error nothing is changed.
  Status Load(const TensorMap& tensors);

  // Overwrites one factor (copied, converted to float32). kInvalidArgument names the tensor
  // when the module is not adapted, the factor does not exist (R of a non-latent adapter), the
  // shape differs or a value is not finite; nothing is changed then.
  Status SetFactor(std::string_view module, LoraFactor factor, const at::Tensor& value);
  // A detached copy of one factor; undefined when the module or factor does not exist.
  at::Tensor Factor(std::string_view module, LoraFactor factor) const;

  // Every factor, named as on the wire, converted to `dtype`.
  Result<TensorMap> Export(DType dtype) const;
  // The factors `options` selects, converted to `dtype`. kInvalidArgument for a truncation
  // rank outside [1, rank] or of a module that is not adapted.
  Result<TensorMap> Export(DType dtype, const LoraExportOptions& options) const;

  // The trainable tensors, for the optimiser: A and B of each module unless frozen, or R of each
  // module when latent. They alias the adapter.
  std::vector<at::Tensor> Parameters() const;

  // Reseeds the adapter's generator, which drives dropout from now on (e.g. a per-client seed
  // after creating every client's adapter from one shared initialisation seed).
  void SetSeed(std::uint64_t seed);

  // Training mode applies dropout on the adapter path; evaluation mode (the default) does not.
  void SetTraining(bool training) { training_ = training; }
  bool training() const { return training_; }

  // The LoraSpec constructor's scale and rank; for the general constructor, those of the first
  // adapted module (0 when none).
  double scale() const { return scale_; }
  std::uint32_t rank() const { return rank_; }
  bool latent() const { return latent_; }
  // HF names of the adapted modules, in AdaptableModules() order.
  std::vector<std::string> ModuleNames() const;
  // Rank and scale of an adapted module; 0 when it is not adapted.
  std::int64_t ModuleRank(std::string_view module) const;
  double ModuleScale(std::string_view module) const;

  // W + s·B·A (W + s·B·R·A when latent) for an adapted module (HF module name), as a new
  // tensor; W is `base` when defined (a corrected base weight), else the model's frozen weight.
  // Undefined if the module is not adapted. For tests and for exporting merged weights.
  at::Tensor MergedWeight(const LlamaModel& model, std::string_view module,
                          const at::Tensor& base = {}) const;

  // HetLoRA tail penalty: λ·Σ ‖B[:, t:]‖_F·‖A[t:, :]‖_F over modules with t = ⌊γ·r⌋ < r.
  // kInvalidArgument: γ outside [0, 1], λ negative or not finite, or a latent adapter.
  Status SetTailPenalty(double gamma, double lambda);
  // The penalty as a differentiable scalar; undefined when there is none (λ = 0 or no tails).
  at::Tensor Penalty() const;
  // ‖B[:, t:]‖_F·‖A[t:, :]‖_F of every module that has a tail (after SetTailPenalty), by name.
  std::map<std::string, double, std::less<>> TailScores() const;
  // t of a module, or -1 when it has no tail.
  std::int64_t TailStart(std::string_view module) const;

  at::Tensor Adapt(std::size_t module_index, const at::Tensor& x, at::Tensor base) override;

  // Module `module_index`'s factors when Adapt is exactly base + scale·x·Aᵀ·Bᵀ right now: the
  // module is adapted, the adapter is not latent and no dropout is active. The tensors alias the
  // adapter's (autograd included), so a caller may fold several adapters' products into one
  // batched matmul (batched_trainer.cc). Empty otherwise.
  struct PlainFactors {
    at::Tensor a;  // [r, d_in]
    at::Tensor b;  // [d_out, r]
    double scale = 0;
  };
  std::optional<PlainFactors> Plain(std::size_t module_index) const;

  // Module `module_index`'s factors as they are (aliases, autograd included; r only when
  // latent) and scale, for code that applies the adapter in another form: per-example gradients
  // (client/train/per_example.cc). Empty when the module is not adapted.
  struct SlotFactors {
    at::Tensor a;  // [r, d_in]
    at::Tensor b;  // [d_out, r]
    at::Tensor r;  // [r, r], latent adapters only.
    double scale = 0;
  };
  std::optional<SlotFactors> Slot(std::size_t module_index) const;
  std::size_t num_slots() const { return slots_.size(); }
  // `x` with inverted dropout applied, masks from this adapter's generator, in training mode
  // with dropout > 0 (what Adapt feeds the adapter path); `x` itself otherwise.
  at::Tensor AdapterInput(const at::Tensor& x);

 private:
  struct Factors {
    std::string module;  // HF module name.
    std::int64_t rank = 0;
    double scale = 0.0;
    std::int64_t tail = -1;  // HetLoRA tail start; -1 = none.
    at::Tensor a;        // [r, d_in].
    at::Tensor b;        // [d_out, r].
    at::Tensor r;        // [r, r], latent adapters only.
  };

  LoraAdapter() = default;
  const Factors* Find(std::string_view module) const;
  Factors* Find(std::string_view module);
  at::Tensor& FactorRef(Factors& f, LoraFactor factor);

  std::uint32_t rank_ = 0;
  double scale_ = 0.0;
  double dropout_ = 0.0;
  bool latent_ = false;
  double tail_lambda_ = 0.0;
  bool training_ = false;
  std::vector<std::unique_ptr<Factors>> slots_; // By module index; null where not adapted.
  at::Generator generator_;                     // CPU generator owned by this adapter.
};

}  // namespace fedlora::client
