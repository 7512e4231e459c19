// trimmed_mean.h — coordinate-wise trimmed mean of the uploads (Yin et al., ICML 2018).
//
// Per scalar coordinate, the b = floor(trim_fraction * n) largest and b smallest values are cut
// and the rest averaged with equal weight; b shrinks when fewer than one value would be left.
// Tolerates up to b hostile uploads per coordinate. The strategy's weights are ignored, as in
// the median (coordinate_median.h). Costs O(n log n) per coordinate.
#pragma once

#include "server/robust/aggregation_rule.h"

namespace fedlora::server {

class TrimmedMean final : public AggregationRule {
 public:
  // 0 <= trim_fraction < 0.5 (ValidateAggregationRule).
  explicit TrimmedMean(double trim_fraction) : trim_fraction_(trim_fraction) {}
  std::string_view name() const override { return "trimmed_mean"; }
  bool coordinate_wise() const override { return true; }
  Result<RuleOutcome> Combine(std::span<const ClientUpdate> updates,
                              std::span<const double> weights, DType dtype) const override;

  // Values cut at each end for `n` uploads.
  std::size_t Trimmed(std::size_t n) const;

 private:
  double trim_fraction_;
};

}  // namespace fedlora::server
