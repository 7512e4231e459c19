// task_adapter.h — how one task's LoraSpec and AdapterPlan become a LoraAdapter on this model.
//
// Resolution (ResolvePlan), following common/wire/messages.h and ALGORITHMS.md:
//   - Targets come from lora.targets. An empty plan.modules gives every target module
//     lora.rank; otherwise each listed module gets its rank, and rank 0 or an unlisted module
//     means no LoRA there (not trained, not uploaded).
//   - Scale rule: s = alpha / lora.rank (alpha / √lora.rank with rsLoRA) with the task's
//     NOMINAL rank, whatever a module's planned rank; planned ranks only change factor shapes,
//     so a rank-k truncation of a global adapter contributes exactly its first k components.
//     Sketched (FSLoRA, §8d) modules use s·global_rank/k, k = |sketch| = the planned rank.
//   - LoRA-SB (§5) modules have rank min(planned rank, d_out, d_in), like the Fed-SB server's
//     initialisation.
// BuildTaskAdapter then fills the factors from the task's adapter tensors, a fresh
// initialisation, the client's private B (FedSA-LoRA) or the LoRA-SB cache of frozen factors.
//
// Every inconsistency between a task and this model is kInvalidArgument naming the module or
// tensor at fault; nothing here crashes on a task.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::client {

struct PlannedModule {
  std::size_t index = 0;       // In AdaptableModules().
  std::string name;            // HF module name.
  std::int64_t d_out = 0;
  std::int64_t d_in = 0;
  std::int64_t rank = 0;       // Factor rank (>= 1).
  double scale = 0.0;          // Its LoRA scale.
  std::vector<std::int64_t> sketch;  // Sketched mode: indices into the global rank.
};

struct ResolvedPlan {
  wire::AdapterPlan plan;      // As given, except that evaluation maps init fresh to fromTask.
  double scale = 0.0;          // Nominal s = alpha/r (alpha/√r).
  std::vector<PlannedModule> modules;  // Modules with LoRA, in AdaptableModules() order.
  std::int64_t max_rank = 0;   // Largest factor rank (0 without modules).
  bool pruning() const { return plan.pruning.gamma > 0.0; }
};

enum class TaskPurpose { kTrain, kEvaluate };

// Checks `lora` and `plan` against `model` and resolves modules, ranks and scales.
// kInvalidArgument for: a bad LoraSpec (rank 0, alpha, dropout, targets); an unknown or repeated
// plan module; a planned rank > 0 on a module that is not a target; a rank above
// min(d_out, d_in) (not for LoRA-SB); sketch problems (missing or non-sketched sketches, size ≠
// rank, indices not strictly ascending or >= global_rank, global_rank 0); sketched, LoRA-SB
// or LoRA-SB-init modes with an init other than fromTask; pruning outside standard mode or with
// localB, or with gamma > 1 or a bad lambda; LoRA-SB init without init_samples or a finite
// init_learning_rate > 0; evaluating a LoRA-SB-init plan. For training also: no module with
// LoRA, or a standard plan that trains neither A nor B.
Result<ResolvedPlan> ResolvePlan(const LlamaModel& model, const wire::LoraSpec& lora,
                                 const wire::AdapterPlan& plan, TaskPurpose purpose);

// The task's tensors that are not named by `base` (the base corrections): its adapter tensors.
TensorMap AdapterTensors(const TensorMap& tensors, const wire::BaseUpdate& base);

// LoRA-SB's frozen factors of each module, as the coordinator sent them once per session.
struct LoraSbFrozen {
  at::Tensor b;  // [d_out, r] float32.
  at::Tensor a;  // [r, d_in] float32.
};
using LoraSbCache = std::map<std::string, LoraSbFrozen, std::less<>>;

// Float32 B factor [d_out, rank] of each module, by HF module name (FedSA-LoRA's private B).
using ModuleTensors = std::map<std::string, at::Tensor, std::less<>>;

struct AdapterSources {
  const TensorMap* tensors = nullptr;   // The task's adapter tensors (AdapterTensors).
  std::uint64_t init_seed = 0;          // Seeds A for init fresh, and for fromTask without tensors.
  const ModuleTensors* local_b = nullptr;  // init localB: B of every planned module.
  LoraSbCache* sb_cache = nullptr;      // LoRA-SB: read, and updated when the task carries B, A.
};

// The adapter `plan` describes, with its factors:
//   standard fromTask: A and B of every planned module from the tensors; when the task carries
//     no adapter tensor at all, PEFT init from init_seed (every client draws the same A);
//   standard fresh: PEFT init from init_seed (the task must carry no adapter tensor);
//   standard localB: A from the tensors, B from local_b;
//   sketched: the sub-blocks B[:, I] (d_out x k) and A[I, :] (k x d_in) from the tensors;
//   LoRA-SB: R (r x r) from the tensors; B and A from the tensors when present (then cached in
//     sb_cache), else from sb_cache (kFailedPrecondition when absent there).
// Frozen factors follow train_a / train_b (LoRA-SB: only R trains); dropout is lora.dropout.
// kInvalidArgument names an unknown, missing, misshapen or non-finite tensor; nothing is cached
// then.
Result<std::unique_ptr<LoraAdapter>> BuildTaskAdapter(const LlamaModel& model,
                                                      const wire::LoraSpec& lora,
                                                      const ResolvedPlan& plan,
                                                      const AdapterSources& sources);

// What to upload after training: the factors the plan's upload flags select (LoRA-SB: R only),
// with HetLoRA truncations `pruned_ranks` (module -> rank), converted to `dtype`.
Result<TensorMap> ExportUpload(const LoraAdapter& adapter, const ResolvedPlan& plan, DType dtype,
                               const std::map<std::string, std::int64_t, std::less<>>&
                                   pruned_ranks = {});

// HetLoRA (§7d): the modules whose tail score fell (end < start) and the rank each is truncated
// to, max(min_rank, ⌊γ·r⌋) clamped to [1, r] and kept only when below r.
std::map<std::string, std::int64_t, std::less<>> PrunedRanks(
    const ResolvedPlan& plan, const std::map<std::string, double, std::less<>>& start_scores,
    const std::map<std::string, double, std::less<>>& end_scores);

}  // namespace fedlora::client
