#include "server/rank_policy.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>

#include "common/lora/adapter_layout.h"

namespace fedlora::server {

Status ValidateRankPolicy(const RankPolicyConfig& c) {
  if (c.kind != "uniform" && c.kind != "capability" && c.kind != "legend") {
    return InvalidArgument("rank_policy.kind: unknown policy '", c.kind,
                           "' (expected uniform, capability or legend)");
  }
  if (c.min_rank == 0) return InvalidArgument("rank_policy.min_rank must be >= 1");
  if (c.min_depth == 0) return InvalidArgument("rank_policy.min_depth must be >= 1");
  if (!(c.full_depth_speed > 0)) return InvalidArgument("rank_policy.full_depth_speed must be > 0");
  return OkStatus();
}

int LayerIndex(std::string_view module) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (!module.starts_with(kPrefix)) return -1;
  module.remove_prefix(kPrefix.size());
  int layer = -1;
  const auto [ptr, ec] = std::from_chars(module.data(), module.data() + module.size(), layer);
  if (ec != std::errc() || ptr == module.data() + module.size() || *ptr != '.') return -1;
  return layer;
}

Result<wire::AdapterPlan> PlanForClient(const RankPolicyConfig& config, const wire::LoraSpec& lora,
                                        std::span<const wire::ModuleInfo> modules,
                                        const wire::Capabilities& capabilities) {
  wire::AdapterPlan plan;
  if (config.kind == "uniform") return plan;
  FEDLORA_ASSIGN_OR_RETURN(std::vector<wire::ModuleInfo> targets,
                           lora::SelectTargets(modules, lora));
  const std::uint32_t cap = capabilities.max_rank > 0 ? capabilities.max_rank : lora.rank;
  const std::uint32_t top = std::max(config.min_rank, std::min(lora.rank, cap));
  if (config.kind == "capability") {
    for (const auto& m : targets) plan.modules.push_back({m.name, top, {}});
    return plan;
  }
  // legend: depth from the declared speed; ranks grow toward the output.
  std::set<int> layers;
  for (const auto& m : targets) layers.insert(LayerIndex(m.name));
  const int n = static_cast<int>(layers.size());
  const double share = std::min(1.0, capabilities.relative_speed / config.full_depth_speed);
  const int depth = std::clamp(static_cast<int>(std::ceil(share * n - 1e-9)),
                               static_cast<int>(std::min<std::uint32_t>(config.min_depth, n)), n);
  const std::vector<int> ordered(layers.begin(), layers.end());
  const int first_adapted = n - depth;  // Index into `ordered`.
  const double low = std::max<double>(config.min_rank, std::ceil(top / 2.0));
  for (const auto& m : targets) {
    const int position = static_cast<int>(
        std::lower_bound(ordered.begin(), ordered.end(), LayerIndex(m.name)) - ordered.begin());
    std::uint32_t rank = 0;
    if (position >= first_adapted) {
      const double t = depth > 1 ? double(position - first_adapted) / (depth - 1) : 1.0;
      rank = static_cast<std::uint32_t>(std::lround(low + (top - low) * t));
    }
    plan.modules.push_back({m.name, rank, {}});
  }
  return plan;
}

std::uint32_t PlannedRank(const wire::AdapterPlan& plan, const wire::LoraSpec& lora,
                          std::string_view module) {
  for (const auto& m : plan.modules) {
    if (m.module == module) return m.rank;
  }
  return plan.modules.empty() ? lora.rank : 0;
}

std::uint32_t TopRank(const wire::AdapterPlan& plan, const wire::LoraSpec& lora) {
  if (plan.modules.empty()) return lora.rank;
  std::uint32_t top = 0;
  for (const auto& m : plan.modules) top = std::max(top, m.rank);
  return top;
}

std::uint32_t Depth(const wire::AdapterPlan& plan, std::span<const wire::ModuleInfo> modules) {
  std::set<int> all, adapted;
  for (const auto& m : modules) all.insert(LayerIndex(m.name));
  if (plan.modules.empty()) return static_cast<std::uint32_t>(all.size());
  for (const auto& m : plan.modules) {
    if (m.rank > 0) adapted.insert(LayerIndex(m.module));
  }
  return static_cast<std::uint32_t>(adapted.size());
}

}  // namespace fedlora::server
