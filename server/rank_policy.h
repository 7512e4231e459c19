// rank_policy.h — which LoRA depth and ranks each client trains, from what it declared.
//
// In the spirit of LEGEND (ALGORITHMS.md §9): a client's declared capability (relative speed,
// maximum rank) decides how many layers, counted from the output, carry LoRA on it (its depth)
// and the rank of each of those layers, growing toward the output. The plan is computed when
// the client says Hello, sent to it in the Welcome, used by the rank-heterogeneous strategies
// (hetlora, flora, fslora) and recorded in metrics.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::server {

struct RankPolicyConfig {
  // uniform:    every client trains every target module at lora.rank.
  // capability: rank min(lora.rank, capabilities.max_rank) on every target module (HetLoRA).
  // legend:     depth ceil(n_layers * min(1, relative_speed / full_depth_speed)) from the
  //             output (at least min_depth), ranks growing linearly from half the client's top
  //             rank at the lowest adapted layer to its top rank at the output layer.
  std::string kind = "uniform";
  std::uint32_t min_rank = 1;
  std::uint32_t min_depth = 1;
  double full_depth_speed = 1.0;
};

Status ValidateRankPolicy(const RankPolicyConfig& config);

// The plan for one client. `modules` are all adaptable modules of the model; the plan lists
// every target module with its rank (0 below the client's depth), or nothing for "uniform".
Result<wire::AdapterPlan> PlanForClient(const RankPolicyConfig& config, const wire::LoraSpec& lora,
                                        std::span<const wire::ModuleInfo> modules,
                                        const wire::Capabilities& capabilities);

// The rank `plan` gives `module`: lora.rank for an empty (uniform) plan, 0 for a module a
// non-empty plan does not list.
std::uint32_t PlannedRank(const wire::AdapterPlan& plan, const wire::LoraSpec& lora,
                          std::string_view module);
// Summaries for metrics: the largest planned rank, and the number of layers with LoRA.
std::uint32_t TopRank(const wire::AdapterPlan& plan, const wire::LoraSpec& lora);
std::uint32_t Depth(const wire::AdapterPlan& plan, std::span<const wire::ModuleInfo> modules);

// The decoder layer of "model.layers.<i>....", or -1.
int LayerIndex(std::string_view module);

}  // namespace fedlora::server
