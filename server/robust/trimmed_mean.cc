#include "server/robust/trimmed_mean.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace fedlora::server {

std::size_t TrimmedMean::Trimmed(std::size_t n) const {
  const auto b = static_cast<std::size_t>(std::floor(trim_fraction_ * static_cast<double>(n)));
  return std::min(b, (n - 1) / 2);
}

Result<RuleOutcome> TrimmedMean::Combine(std::span<const ClientUpdate> updates,
                                         std::span<const double> weights, DType dtype) const {
  const std::size_t n = updates.size(), b = Trimmed(n);
  const double kept = 1.0 / static_cast<double>(n - 2 * b);
  std::vector<std::size_t> order(n);
  Result<RuleOutcome> out = CombineCoordinates(
      updates, dtype, [&](std::span<const double> values, std::span<double> shares) {
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
          return values[x] < values[y] || (values[x] == values[y] && x < y);
        });
        double sum = 0;  // Summed in sorted order: independent of arrival order.
        for (std::size_t j = b; j < n - b; ++j) {
          sum += values[order[j]];
          shares[order[j]] = kept;
        }
        return sum * kept;
      });
  if (out.ok()) out->metrics["trimmed_mean.trimmed_per_side"] = static_cast<double>(b);
  return out;
}

}  // namespace fedlora::server
