// fedavg.h — Federated Averaging of LoRA factors (McMahan et al. 2017; FedIT baseline).
//
// A_g <- sum_k p_k A_k and B_g <- sum_k p_k B_k, each tensor averaged on its own. Uploads are
// folded as they arrive into exact fixed-point sums (exact_sum.h), so the result is bit-identical
// whatever order they arrived in and the round holds one sum per tensor, whatever N.
// Not exact for LoRA: the global product differs from sum_k p_k B_k A_k by the weighted
// cross-covariance of the factors (ALGORITHMS.md §1f). No server-side optimiser state.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "server/robust/aggregation_rule.h"
#include "server/strategies/strategy.h"
#include "server/strategies/weighting.h"

namespace fedlora::server {

struct FedAvgConfig {
  wire::LoraSpec lora;           // Rank, alpha, targets the clients train.
  wire::TrainSpec train;         // Local-training settings sent in every task.
  Weighting weighting = Weighting::kExamples;
  double max_weight_share = 1.0;  // No client's weight above this share (CapShares); 1 = no cap.
  // How the weighted-average strategies (fedavg, ffa, fedsa, fedsb) combine uploads; null = the
  // weighted mean. Others accept only null (MakeStrategy).
  std::shared_ptr<const AggregationRule> rule;
  std::uint64_t seed = 0;        // Seeds the initial adapter.
  // Coordinate-wise robust rules (median, trimmed mean) read the uploads slice by slice, at most
  // this many values of all uploads together per slice.
  std::int64_t slice_values = std::int64_t{1} << 22;
  DType state_dtype = DType::kF32;
};

// True when the weighted-average family's aggregate is a plain weighted sum: the mean rule and
// no share cap (a cap or a robust rule needs every upload at once).
bool MeanIsLinear(const FedAvgConfig& config);

// What the weighted-average family sums under secure aggregation (its weighting).
std::optional<SecureSpec> MeanSecureSpec(const FedAvgConfig& config);
// The weighted-average family's aggregate from a secure sum: each slot's Σ w·x / Σ w, written
// into state.adapter as MakeMeanAccumulator's Finish would (replacing it, or with `merge` only
// the slots summed). kInvalidArgument naming a slot no survivor weighed.
Result<AggregateReport> FinishMeanSecure(const FedAvgConfig& config, bool merge, GlobalState& state,
                                         const secagg::SecureSum& sum);

class FedAvg final : public Strategy {
 public:
  explicit FedAvg(FedAvgConfig config) : config_(std::move(config)) {}
  std::string_view name() const override { return "fedavg"; }

  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  bool linear() const override { return MeanIsLinear(config_); }
  std::optional<SecureSpec> secure_spec() const override { return MeanSecureSpec(config_); }
  Result<AggregateReport> FinishSecure(GlobalState& state, std::uint64_t round,
                                       const secagg::SecureSum& sum) override {
    return FinishMeanSecure(config_, /*merge=*/false, state, sum);
  }
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

 private:
  FedAvgConfig config_;
};

// Weighted mean of the same-named tensors of `updates` (weights in update order, summing to 1),
// through the exact accumulator and stored as `dtype`. kInvalidArgument naming the client and
// tensor when the updates disagree on names or shapes.
Result<TensorMap> WeightedMean(std::span<const ClientUpdate> updates,
                               std::span<const double> weights, DType dtype = DType::kF32);

// The strategy's weights for `updates` (ComputeWeights with its weighting and share cap).
Result<std::vector<double>> ClientWeights(std::span<const ClientUpdate> updates,
                                          const FedAvgConfig& config);

// The weight one upload carries before normalisation (its example or sample count, or 1).
double RawWeight(const ClientUpdate& update, Weighting weighting);

// The weighted-average family's accumulator (fedavg, ffa, fedsa, fedsb). With the mean and no
// cap each upload is folded into exact sums as it arrives; with a share cap the uploads are read
// again at Finish with their capped weights (two streaming passes, one upload in memory); with a
// robust rule they are gathered at Finish (the rule needs them all). Finish writes the combined
// tensors into state.adapter: replacing it, or, with `merge`, only the tensors uploaded (FFA).
// report.weights holds the share each client actually carried, plus the rule's metrics.
std::unique_ptr<RoundAccumulator> MakeMeanAccumulator(const FedAvgConfig& config, bool merge);

// The standard task every client of a homogeneous strategy gets: `tensors` to start from, and
// an upload of exactly the tensors named in `upload` in the upload dtype, shaped as in `shapes`.
ClientTask StandardTask(const ClientInfo& client, const wire::LoraSpec& lora,
                        const wire::TrainSpec& train, TensorMap tensors, const TensorMap& shapes);

}  // namespace fedlora::server
