// fedsa.h — FedSA-LoRA: share A, keep B local (Guo et al., ICLR 2025; ALGORITHMS.md §4).
//
// Clients train A and their own B (kept on the client's disk across rounds and restarts) and
// upload only A; A_g <- sum_k p_k A_k. Client k's personal model is W0 + s*B_k*A_g, and that is
// what it evaluates. Implements the paper's semantics (a true per-client B), not the reference
// simulation's shared model object (§4i.1). Up and down: r*d_in per module.
#pragma once

#include "server/strategies/fedavg.h"

namespace fedlora::server {

class FedSaLora final : public Strategy {
 public:
  explicit FedSaLora(FedAvgConfig config) : config_(std::move(config)) {}
  std::string_view name() const override { return "fedsa"; }
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  bool linear() const override { return MeanIsLinear(config_); }
  std::optional<SecureSpec> secure_spec() const override { return MeanSecureSpec(config_); }
  Result<AggregateReport> FinishSecure(GlobalState& state, std::uint64_t round,
                                       const secagg::SecureSum& sum) override {
    return FinishMeanSecure(config_, /*merge=*/false, state, sum);
  }
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  FedAvgConfig config_;
};

}  // namespace fedlora::server
