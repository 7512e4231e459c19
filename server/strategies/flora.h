// flora.h — FLoRA: stacking heterogeneous-rank client adapters, merged into the base weights,
// fresh adapters every round (Wang et al., NeurIPS 2024; ALGORITHMS.md §3).
//
// Each client trains a fresh PEFT-initialised adapter at its own rank (from the rank policy,
// possibly different per layer: LEGEND-style depth). The coordinator stacks the uploads,
//   W <- W + sum_k p_k s B_k A_k = W + [B_1|...|B_N] [p_1 s A_1; ...; p_N s A_N],
// exactly and in factor form (stacked rank sum_k r_k), and appends that pair to the correction
// log; there is no global adapter. Weights are normalised over every reporting client (a client
// without LoRA on a module contributes a zero update there), and partial participation is just
// fewer blocks (the reference's fixed global-rank assumption, §3i.2, is not needed). All clients
// use the scale s = alpha / lora.rank whatever their rank, so s_k = s_g as in the reference.
#pragma once

#include "server/strategies/fedavg.h"
#include "server/strategies/corrections.h"

namespace fedlora::server {

class Flora final : public Strategy {
 public:
  Flora(FedAvgConfig config, CorrectionConfig corrections)
      : config_(std::move(config)), corrections_(corrections) {}
  std::string_view name() const override { return "flora"; }
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  Status ValidateUpdate(const ClientTask& task, const ClientUpdate& update) const override;
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  class Accumulator;  // Folds each upload's products as it arrives (no share cap).
  // Appends the round's correction entry to next's log, moves next into state, reports.
  Result<AggregateReport> Commit(GlobalState& state, GlobalState next, CorrectionEntry entry,
                                 double stacked_rank, std::size_t dense_modules,
                                 const std::map<std::string, double, std::less<>>& weights,
                                 double total) const;
  // With a share cap (the weights need every count): all uploads at once, in client-id order.
  Result<AggregateReport> Combine(GlobalState& state, std::uint64_t round,
                                  std::span<const ClientUpdate> updates,
                                  std::span<const ClientTask> tasks);
  FedAvgConfig config_;
  CorrectionConfig corrections_;
  std::vector<wire::ModuleInfo> targets_;
};

}  // namespace fedlora::server
