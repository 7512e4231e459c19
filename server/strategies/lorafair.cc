#include "server/strategies/lorafair.h"

#include <ATen/ATen.h>

#include "common/lora/adapter_layout.h"
#include "common/lora/factor_math.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {

Result<GlobalState> LoraFair::Initialize(const ModelLayout& layout,
                                         std::optional<GlobalState> restored) {
  return FedAvg(config_).Initialize(layout, std::move(restored));
}

Result<std::vector<ClientTask>> LoraFair::Configure(const GlobalState& state, std::uint64_t round,
                                                    std::span<const ClientInfo> selected) {
  return FedAvg(config_).Configure(state, round, selected);
}

Result<std::unique_ptr<RoundAccumulator>> LoraFair::Begin(const GlobalState& state,
                                                   std::uint64_t round) {
  return MakeGatheringAccumulator(
      [this, round](GlobalState& s, std::span<const ClientUpdate> updates,
                    std::span<const ClientTask> tasks) { return Combine(s, round, updates, tasks); });
}

Result<AggregateReport> LoraFair::Combine(GlobalState& state, std::uint64_t round,
                                            std::span<const ClientUpdate> updates,
                                            std::span<const ClientTask> tasks) try {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(updates, config_));
  TensorMap next;
  double cos_before = 0, cos_after = 0, delta_norm = 0;
  int modules = 0;
  for (const std::string& module : AdapterModules(state.adapter)) {
    const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
    FEDLORA_ASSIGN_OR_RETURN(std::vector<at::Tensor> as, FactorOfAll(updates, a_name));
    FEDLORA_ASSIGN_OR_RETURN(std::vector<at::Tensor> bs, FactorOfAll(updates, b_name));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_bar, lora::WeightedSum(as, weights));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_bar, lora::WeightedSum(bs, weights));
    at::Tensor delta;
    if (fair_.solver == "ridge") {
      FEDLORA_ASSIGN_OR_RETURN(delta,
                               lora::FairRidgeDeltaB(as, bs, weights, b_bar, a_bar, fair_.lambda));
    } else {
      Result<lora::FairCosineResult> r =
          lora::FairCosineDeltaB(as, bs, weights, b_bar, a_bar, fair_.lambda,
                                 static_cast<int>(fair_.iterations), fair_.learning_rate);
      if (!r.ok()) {
        // The cosine is undefined when the ideal update or the product is zero (e.g. every
        // client left B at zero): no correction is the only sensible answer then.
        delta = at::zeros_like(b_bar);
      } else {
        cos_before += r->initial_cosine;
        cos_after += r->final_cosine;
        delta = r->delta_b;
      }
    }
    delta_norm += delta.norm().item<double>();
    ++modules;
    FEDLORA_ASSIGN_OR_RETURN(next[a_name], Store(a_bar, config_.state_dtype));
    FEDLORA_ASSIGN_OR_RETURN(next[b_name], Store(b_bar + delta, config_.state_dtype));
  }
  state.adapter = std::move(next);
  AggregateReport report;
  for (std::size_t k = 0; k < updates.size(); ++k) report.weights[updates[k].client_id] = weights[k];
  if (modules > 0) {
    report.metrics["delta_b_norm_mean"] = delta_norm / modules;
    if (fair_.solver == "cosine") {
      report.metrics["cosine_before_mean"] = cos_before / modules;
      report.metrics["cosine_after_mean"] = cos_after / modules;
    }
  }
  return report;
} catch (const c10::Error& e) {
  return Internal("lorafair aggregation: ", e.what_without_backtrace());
}

EvalSpec LoraFair::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
