// ffa.h — FFA-LoRA: A frozen at a shared random init, only B trained and averaged.
//
// B_g <- sum_k p_k B_k; A never changes. Exact: sum_k p_k B_k A = B_g A (ALGORITHMS.md §1').
// Up and down: r*d_out per module (plus A once per round in the task).
#pragma once

#include "server/strategies/fedavg.h"

namespace fedlora::server {

class FfaLora final : public Strategy {
 public:
  explicit FfaLora(FedAvgConfig config) : config_(std::move(config)) {}
  std::string_view name() const override { return "ffa"; }
  Result<GlobalState> Initialize(const ModelLayout& layout) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  Result<AggregateReport> Aggregate(GlobalState& state, std::uint64_t round,
                                    std::span<const ClientUpdate> updates,
                                    std::span<const ClientTask> tasks) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  FedAvgConfig config_;
};

}  // namespace fedlora::server
