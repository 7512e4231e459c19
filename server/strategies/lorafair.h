// lorafair.h — LoRA-FAIR: FedAvg of the factors plus a server-side correction of B that makes
// the product of means track the ideal update (Bian et al., ICCV 2025; ALGORITHMS.md §6).
//
//   A_g = sum p_k A_k,  B_g = sum p_k B_k + dB,
//   dB = argmin 1 - cos(vec((B_bar+dB) A_bar), vec(dW)) + lambda*||dB||_F^2   (solver: cosine)
//      = (dW - B_bar A_bar) A_bar^T (A_bar A_bar^T + lambda I)^-1               (solver: ridge)
// with dW = sum_k p_k B_k A_k, all from factor products (no d_out x d_in matrix). Not exact by
// design: lambda trades exactness for a stable initialisation of the next round.
#pragma once

#include <cstdint>
#include <string>

#include "server/strategies/fedavg.h"

namespace fedlora::server {

// LoRA-FAIR's server-side correction of B (ALGORITHMS.md §6).
struct LoraFairConfig {
  std::string solver = "cosine";   // cosine: gradient descent on 1 - cos + lambda*||dB||^2;
                                   // ridge: the closed-form least-squares variant.
  double lambda = 0.01;
  std::uint32_t iterations = 1000;  // cosine only.
  double learning_rate = 0.01;      // cosine only.
};

class LoraFair final : public Strategy {
 public:
  LoraFair(FedAvgConfig config, LoraFairConfig fair)
      : config_(std::move(config)), fair_(std::move(fair)) {}
  std::string_view name() const override { return "lorafair"; }
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  class Accumulator;  // Folds each upload as it arrives (no share cap).
  // With a share cap (the weights need every count): all uploads at once, in client-id order.
  Result<AggregateReport> Combine(GlobalState& state, std::uint64_t round,
                                  std::span<const ClientUpdate> updates,
                                  std::span<const ClientTask> tasks);
  FedAvgConfig config_;
  LoraFairConfig fair_;
};

}  // namespace fedlora::server
