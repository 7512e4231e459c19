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

#include <ATen/core/Tensor.h>

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
  class Accumulator;  // Folds each upload as it arrives (no share cap).
  // What one round adds: the next state (new globals) and its correction entry.
  struct Residuals {
    GlobalState next;
    CorrectionEntry entry;
    std::int64_t residual_rank = 0;
  };
  // The means of one module's client factors (weights p, normalised) as the new globals, and the
  // tight residual against them in factor form (ALGORITHMS.md §2), into `out`.
  Status AddResidual(const std::string& module, std::span<const at::Tensor> as,
                     std::span<const at::Tensor> bs, std::span<const double> weights,
                     Residuals& out) const;
  // Appends out.entry to the log (unless empty), moves out.next into state, reports metrics.
  Result<AggregateReport> Commit(GlobalState& state, Residuals out) const;
  // With a share cap (the weights need every count): all uploads at once, in client-id order.
  Result<AggregateReport> Combine(GlobalState& state, std::uint64_t round,
                                  std::span<const ClientUpdate> updates,
                                  std::span<const ClientTask> tasks);
  FedAvgConfig config_;
  CorrectionConfig corrections_;
};

}  // namespace fedlora::server
