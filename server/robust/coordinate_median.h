// coordinate_median.h — coordinate-wise median of the uploads (Yin et al., ICML 2018).
//
// Each scalar of the result is the median of that scalar over the round's uploads (the mean of
// the two middle values for an even count). An upload can move a coordinate only as far as the
// honest values around the middle reach, however large it is, as long as fewer than half the
// uploads are hostile. The strategy's weights are ignored: a declared example count must not buy
// a hostile client the median. Costs O(n log n) per coordinate.
#pragma once

#include "server/robust/aggregation_rule.h"

namespace fedlora::server {

class CoordinateMedian final : public AggregationRule {
 public:
  std::string_view name() const override { return "median"; }
  bool coordinate_wise() const override { return true; }
  Result<RuleOutcome> Combine(std::span<const ClientUpdate> updates,
                              std::span<const double> weights, DType dtype) const override;
};

}  // namespace fedlora::server
