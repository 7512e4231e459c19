// aggregation_rule.h — how the weighted-average strategies combine the uploads of one round.
//
// fedavg, ffa, fedsa and fedsb each reduce to "combine the same-named tensors of the uploads";
// the rule says how: the weighted mean (the default), or a rule that one poisoned upload cannot
// drag far — coordinate-wise median (coordinate_median.h), trimmed mean (trimmed_mean.h) or
// multi-Krum (multi_krum.h). A rule knows tensors and weights; nothing about LoRA, clients'
// sessions or the wire. Strategies whose aggregate is not a weighted average (fedex, flora,
// lorafair, hetlora, fslora) accept only the mean: MakeStrategy refuses other rules for them.
//
// The robust rules need every upload at once and see each one in the clear, so they do not
// compose with secure aggregation (docs/security.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

// The `robust` section's rule keys (README.md, docs/security.md).
struct AggregationRuleConfig {
  std::string name = "mean";   // mean | median | trimmed_mean | multi_krum
  double trim_fraction = 0.1;  // trimmed_mean: share of values cut at each end, per coordinate.
  std::uint32_t krum_byzantine = 1;  // multi_krum: f, the uploads assumed hostile.
  std::uint32_t krum_select = 0;     // multi_krum: m, uploads averaged; 0 = n - f.
};

struct RuleOutcome {
  TensorMap combined;
  // The share of the result each update carried, in update order, summing to 1: the strategy's
  // weight for the mean; for the coordinate-wise rules the fraction of coordinates where the
  // update's value was used (weighted by how much); 0 for an update left out.
  std::vector<double> shares;
  wire::Metrics metrics;  // Rule-specific figures, prefixed with the rule's name.
};

// Thread-compatible; stateless between rounds, so a restart changes nothing.
class AggregationRule {
 public:
  virtual ~AggregationRule() = default;
  virtual std::string_view name() const = 0;
  // True when each coordinate of the result depends only on that coordinate of the uploads
  // (median, trimmed mean): the strategy may then combine slice by slice.
  virtual bool coordinate_wise() const { return false; }

  // Combines the same-named tensors of `updates` (sorted by client id, never empty) into tensors
  // of `dtype`; `weights` are the strategy's (update order, summing to 1). The result must not
  // depend on arrival order. kInvalidArgument naming the client and tensor when the updates
  // disagree on names or shapes.
  virtual Result<RuleOutcome> Combine(std::span<const ClientUpdate> updates,
                                      std::span<const double> weights, DType dtype) const = 0;
};

std::vector<std::string> AggregationRuleNames();  // mean, median, trimmed_mean, multi_krum

// kInvalidArgument for an unknown name (listing the known ones) or out-of-range settings, naming
// the `robust.*` key.
Status ValidateAggregationRule(const AggregationRuleConfig& config);
Result<std::shared_ptr<const AggregationRule>> MakeAggregationRule(
    const AggregationRuleConfig& config);

// OK when every update has the same tensor names and shapes as the first; otherwise
// kInvalidArgument naming the client and tensor (with a hint about ranks or targets).
Status CheckUpdatesAlign(std::span<const ClientUpdate> updates);

// For rules that decide each coordinate on its own: calls `reduce` once per scalar coordinate of
// every tensor with the n values of that coordinate (update order) and an n-element `shares`
// span to fill with each value's weight in the result (summing to 1); `reduce` returns the
// combined value. The outcome's shares are the per-coordinate shares averaged over all
// coordinates. Checks alignment first (CheckUpdatesAlign).
using CoordinateReducer =
    std::function<double(std::span<const double> values, std::span<double> shares)>;
Result<RuleOutcome> CombineCoordinates(std::span<const ClientUpdate> updates, DType dtype,
                                       const CoordinateReducer& reduce);

}  // namespace fedlora::server
