// fedavg.h — Federated Averaging of LoRA factors (McMahan et al. 2017; FedIT baseline).
//
// A_g <- sum_k p_k A_k and B_g <- sum_k p_k B_k, each tensor averaged on its own, accumulated
// in double in client-id order so the result is bit-identical whatever order uploads arrived in.
// Not exact for LoRA: the global product differs from sum_k p_k B_k A_k by the weighted
// cross-covariance of the factors (ALGORITHMS.md §1f). No server-side optimiser state.
#pragma once

#include <cstdint>

#include "server/strategies/strategy.h"
#include "server/strategies/weighting.h"

namespace fedlora::server {

struct FedAvgConfig {
  wire::LoraSpec lora;           // Rank, alpha, targets the clients train.
  wire::TrainSpec train;         // Local-training settings sent in every task.
  Weighting weighting = Weighting::kExamples;
  std::uint64_t seed = 0;        // Seeds the initial adapter.
};

class FedAvg final : public Strategy {
 public:
  explicit FedAvg(FedAvgConfig config) : config_(std::move(config)) {}
  std::string_view name() const override { return "fedavg"; }

  Result<GlobalState> Initialize(const ModelLayout& layout) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state,
                                            std::span<const ClientInfo> selected) override;
  Result<AggregateReport> Aggregate(GlobalState& state,
                                    std::span<const ClientUpdate> updates) override;
  wire::LoraSpec EvalLora(const ClientInfo&) const override { return config_.lora; }

 private:
  FedAvgConfig config_;
};

// Sample-weighted mean of the same-named tensors of `updates` (weights in update order, summing
// to 1), computed in double and stored as f32. kInvalidArgument naming the client and tensor
// when the updates disagree on names or shapes.
Result<TensorMap> WeightedMean(std::span<const ClientUpdate> updates,
                               std::span<const double> weights);

}  // namespace fedlora::server
