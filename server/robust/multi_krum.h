// multi_krum.h — multi-Krum (Blanchard et al., NeurIPS 2017): average only the uploads that sit
// closest to the others.
//
// With n uploads of which at most f are assumed hostile, each upload i is scored by the sum of
// its squared L2 distances (over all its tensors as one vector) to its n - f - 2 nearest other
// uploads; the m best-scored are averaged with the strategy's weights renormalised over them,
// the rest get weight 0 (the coordinator logs each one left out). Krum's guarantee needs
// n > 2f + 2; smaller rounds are still aggregated (over at least one neighbour) and say so in
// the metrics (multi_krum.below_guarantee). Costs O(n^2) distances over the whole upload.
#pragma once

#include <cstdint>

#include "server/robust/aggregation_rule.h"

namespace fedlora::server {

class MultiKrum final : public AggregationRule {
 public:
  // `select` = m, 0 = n - f (at least 1).
  MultiKrum(std::uint32_t byzantine, std::uint32_t select) : f_(byzantine), m_(select) {}
  std::string_view name() const override { return "multi_krum"; }
  Result<RuleOutcome> Combine(std::span<const ClientUpdate> updates,
                              std::span<const double> weights, DType dtype) const override;

  // Krum scores of `updates` (update order): the sum of squared distances to the n - f - 2
  // (at least 1) nearest others; 0 for a single update. Requires aligned updates.
  std::vector<double> Scores(std::span<const ClientUpdate> updates) const;

 private:
  std::uint32_t f_;
  std::uint32_t m_;
};

}  // namespace fedlora::server
