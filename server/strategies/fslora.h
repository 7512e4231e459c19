// fslora.h — FSLoRA: federated sketching LoRA (Fang et al. 2025; ALGORITHMS.md §8).
//
// The global adapter has rank r = lora.rank. Each round, client i gets, per LoRA pair, a fresh
// uniformly random index set I of size k_i (its planned rank, or ceil(sketch_ratio*r)) and
// trains the sub-adapter B[:, I], A[I, :] with scale s*r/k_i, so its local model
// W0 + s*(r/k_i)*B[:,I]*A[I,:] equals W0 + s*B*S_i*A with the unbiased sketch E[S_i] = I. One
// index set per LoRA pair per round (the reference's per-tensor sets contradict B*S*A, §8i.2),
// seeded by (seed, round, client, module) so a restart re-derives it. The coordinator scatters
// the deltas (sent - trained) and takes a server optimiser step with
//   G = sum_i p_i scatter(I_i, delta_i)   (uniform p = 1/M: the reference's division by M);
// SGD with lr 1 is masked FedAvg of deltas. Up and down: k_i*(d_in + d_out) per module.
#pragma once

#include <cstdint>
#include <string>

#include "server/strategies/fedavg.h"

namespace fedlora::server {

// FSLoRA (ALGORITHMS.md §8).
struct FsLoraConfig {
  double sketch_ratio = 0.5;              // k = ceil(ratio * r) for clients without a planned rank.
  std::string server_optimizer = "sgd";   // sgd (lr 1 = masked FedAvg of deltas) or adamw.
  double server_learning_rate = 1.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;              // adamw only (the reference uses 0.01).
};

class FsLora final : public Strategy {
 public:
  FsLora(FedAvgConfig config, FsLoraConfig fs) : config_(std::move(config)), fs_(std::move(fs)) {}
  std::string_view name() const override { return "fslora"; }
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  bool linear() const override { return MeanIsLinear(config_); }
  // Clients sum their deltas (sent - trained), scattered to their sketch indices.
  std::optional<SecureSpec> secure_spec() const override;
  Result<AggregateReport> FinishSecure(GlobalState& state, std::uint64_t round,
                                       const secagg::SecureSum& sum) override;
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  class Accumulator;  // Folds each client's scattered delta as it arrives.
  // With a share cap (the weights need every count): all uploads at once, in client-id order.
  Result<AggregateReport> Combine(GlobalState& state, std::uint64_t round,
                                  std::span<const ClientUpdate> updates,
                                  std::span<const ClientTask> tasks);
  // One server optimiser step on `grads` (the weighted mean of the scattered deltas, per tensor).
  Result<AggregateReport> Step(GlobalState& state, const TensorMap& grads) const;
  FedAvgConfig config_;
  FsLoraConfig fs_;
};

}  // namespace fedlora::server
