// fedex.h — FedEx-LoRA: exact aggregation through a residual folded into the base weights
// (Singhal et al., ACL 2025; ALGORITHMS.md §2).
//
// The new global factors are the weighted means (A_g, B_g), rounded to the state dtype that is
// actually sent, and the base weights absorb everything the product of means misses:
//   W <- W + s * (sum_k p_k B_k A_k - B_g A_g)
// so W + s*B_g*A_g equals W + s*sum_k p_k B_k A_k exactly. The residual travels as low-rank
// factors U, V (rank (N-1)r in the tight form, plus r per rounded global) appended to the
// correction log; the coordinator never forms a d_out x d_in matrix of the base. The residual is
// added in the nn.Linear layout (the reference's transpose bug, §2i.1, is not copied).
#pragma once

#include "server/strategies/fedavg.h"
#include "server/strategies/corrections.h"

namespace fedlora::server {

class FedExLora final : public Strategy {
 public:
  FedExLora(FedAvgConfig config, CorrectionConfig corrections)
      : config_(std::move(config)), corrections_(corrections) {}
  std::string_view name() const override { return "fedex"; }
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  // The round's aggregate from all its uploads at once (sorted by client id, tasks[i] answered by
  // updates[i]); see MakeGatheringAccumulator.
  Result<AggregateReport> Combine(GlobalState& state, std::uint64_t round,
                                  std::span<const ClientUpdate> updates,
                                  std::span<const ClientTask> tasks);
  FedAvgConfig config_;
  CorrectionConfig corrections_;
};

}  // namespace fedlora::server
