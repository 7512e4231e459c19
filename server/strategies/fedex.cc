#include "server/strategies/fedex.h"

#include <ATen/ATen.h>

#include "common/lora/adapter_layout.h"
#include "common/lora/factor_math.h"
#include "common/lora/tensor_bridge.h"
#include "server/strategies/corrections.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {

Result<GlobalState> FedExLora::Initialize(const ModelLayout& layout,
                                          std::optional<GlobalState> restored) {
  return FedAvg(config_).Initialize(layout, std::move(restored));
}

Result<std::vector<ClientTask>> FedExLora::Configure(const GlobalState& state, std::uint64_t round,
                                                     std::span<const ClientInfo> selected) {
  return FedAvg(config_).Configure(state, round, selected);
}

Result<std::unique_ptr<RoundAccumulator>> FedExLora::Begin(const GlobalState& state,
                                                   std::uint64_t round) {
  return MakeGatheringAccumulator(
      [this, round](GlobalState& s, std::span<const ClientUpdate> updates,
                    std::span<const ClientTask> tasks) { return Combine(s, round, updates, tasks); });
}

Result<AggregateReport> FedExLora::Combine(GlobalState& state, std::uint64_t round,
                                             std::span<const ClientUpdate> updates,
                                             std::span<const ClientTask> tasks) try {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(updates, config_));
  const double scale = lora::Scale(config_.lora);
  GlobalState next = state;
  CorrectionEntry entry;
  entry.version = round;
  std::int64_t residual_rank = 0;
  for (const std::string& module : AdapterModules(state.adapter)) {
    const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
    FEDLORA_ASSIGN_OR_RETURN(std::vector<at::Tensor> as, FactorOfAll(updates, a_name));
    FEDLORA_ASSIGN_OR_RETURN(std::vector<at::Tensor> bs, FactorOfAll(updates, b_name));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_mean, lora::WeightedSum(as, weights));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_mean, lora::WeightedSum(bs, weights));
    // The globals exactly as clients will receive them; the residual absorbs the rounding.
    FEDLORA_ASSIGN_OR_RETURN(Tensor a_global, Store(a_mean, config_.state_dtype));
    FEDLORA_ASSIGN_OR_RETURN(Tensor b_global, Store(b_mean, config_.state_dtype));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_sent, lora::FromWireAs(a_global, at::kDouble));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_sent, lora::FromWireAs(b_global, at::kDouble));
    FEDLORA_ASSIGN_OR_RETURN(lora::FactorPair residual,
                             lora::FedExResidual(as, bs, weights, scale, a_sent, b_sent));
    next.adapter[a_name] = std::move(a_global);
    next.adapter[b_name] = std::move(b_global);
    if (residual.B.size(1) == 0) continue;
    residual_rank = std::max<std::int64_t>(residual_rank, residual.B.size(1));
    ModuleCorrection c;
    FEDLORA_ASSIGN_OR_RETURN(c.u, Store(residual.B, config_.state_dtype));
    FEDLORA_ASSIGN_OR_RETURN(c.v, Store(residual.A, config_.state_dtype));
    entry.modules.emplace(module, std::move(c));
  }
  const std::size_t entry_bytes = entry.bytes();
  if (!entry.modules.empty()) {
    FEDLORA_RETURN_IF_ERROR(
        AppendCorrection(next.corrections, std::move(entry), corrections_, config_.state_dtype));
  }
  state = std::move(next);
  AggregateReport report;
  for (std::size_t k = 0; k < updates.size(); ++k) report.weights[updates[k].client_id] = weights[k];
  report.metrics["residual_rank"] = static_cast<double>(residual_rank);
  report.metrics["correction_bytes"] = static_cast<double>(entry_bytes);
  report.metrics["correction_log_bytes"] =
      static_cast<double>(state.corrections.ReplayBytes() +
                          (state.corrections.snapshot() ? state.corrections.snapshot()->bytes() : 0));
  return report;
} catch (const c10::Error& e) {
  return Internal("fedex aggregation: ", e.what_without_backtrace());
}

EvalSpec FedExLora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
