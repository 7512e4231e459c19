// hetlora.h — HetLoRA: heterogeneous client ranks by truncation and zero-padding, weighted by
// update norm, with rank self-pruning (Cho et al., EMNLP 2024; ALGORITHMS.md §7).
//
// The global adapter has rank r = lora.rank. Client k trains the prefix A_g[:r_k], B_g[:, :r_k]
// at its own rank r_k (from the rank policy, per module with LEGEND depth), with the tail
// regulariser lambda*||B[:, t:]||*||A[t:, :]||, t = floor(gamma*r_k); when the tail score fell
// during the round it uploads the truncation to max(min_rank, floor(gamma*r_k)) and keeps that
// rank. The coordinator pads uploads with zeros to rank r and averages with weights
// p_k ~ ||B_k A_k||_F (over the whole model, or per module), renormalised per module over the
// clients that train it (LEGEND's per-layer rule). All clients use the scale alpha / lora.rank,
// so every truncation is exactly a prefix of the global update. Not exact.
#pragma once

#include <cstdint>
#include <string>

#include "server/strategies/fedavg.h"

namespace fedlora::server {

// HetLoRA (ALGORITHMS.md §7).
struct HetLoraConfig {
  std::string weighting = "sparsity";     // sparsity: p_k ~ ||B_k A_k||_F; or examples, samples,
                                          // uniform (the naive zero-padding baseline).
  std::string sparsity_scope = "model";   // model: one norm over all modules; module: per module.
  double gamma = 0.99;                    // Rank self-pruning decay; 0 disables pruning.
  double lambda = 0.01;                   // Tail regulariser weight.
  std::uint32_t min_rank = 1;
};

class HetLora final : public Strategy {
 public:
  HetLora(FedAvgConfig config, HetLoraConfig het) : config_(std::move(config)), het_(std::move(het)) {}
  std::string_view name() const override { return "hetlora"; }
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  Status ValidateUpdate(const ClientTask& task, const ClientUpdate& update) const override;
  bool linear() const override;
  // Clients pad their pruned ranks to the global rank; a module nobody trained keeps its value.
  std::optional<SecureSpec> secure_spec() const override;
  Result<AggregateReport> FinishSecure(GlobalState& state, std::uint64_t round,
                                       const secagg::SecureSum& sum) override;
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  class Accumulator;  // Folds each padded upload as it arrives.
  // With a share cap on a count weighting (the shares need every count): all uploads at once.
  Result<AggregateReport> Combine(GlobalState& state, std::uint64_t round,
                                  std::span<const ClientUpdate> updates,
                                  std::span<const ClientTask> tasks);
  // The rank client `id` trains `module` with: its last uploaded (possibly pruned) rank, else
  // the rank policy's.
  std::uint32_t RankOf(const GlobalState& state, const ClientInfo& client,
                       const std::string& module) const;

  FedAvgConfig config_;
  HetLoraConfig het_;
};

}  // namespace fedlora::server
