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
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  bool linear() const override { return MeanIsLinear(config_); }
  std::optional<SecureSpec> secure_spec() const override { return MeanSecureSpec(config_); }
  Result<AggregateReport> FinishSecure(GlobalState& state, std::uint64_t round,
                                       const secagg::SecureSum& sum) override {
    return FinishMeanSecure(config_, /*merge=*/true, state, sum);
  }
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  FedAvgConfig config_;
};

}  // namespace fedlora::server
