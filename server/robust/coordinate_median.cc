#include "server/robust/coordinate_median.h"

#include <algorithm>
#include <numeric>

namespace fedlora::server {

Result<RuleOutcome> CoordinateMedian::Combine(std::span<const ClientUpdate> updates,
                                              std::span<const double> weights, DType dtype) const {
  std::vector<std::size_t> order(updates.size());
  return CombineCoordinates(
      updates, dtype, [&order](std::span<const double> values, std::span<double> shares) {
        // Ties broken by update (client-id) order, so shares are deterministic.
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
          return values[a] < values[b] || (values[a] == values[b] && a < b);
        });
        const std::size_t n = values.size(), mid = n / 2;
        if (n % 2 == 1) {
          shares[order[mid]] = 1.0;
          return values[order[mid]];
        }
        shares[order[mid - 1]] = 0.5;
        shares[order[mid]] = 0.5;
        return 0.5 * (values[order[mid - 1]] + values[order[mid]]);
      });
}

}  // namespace fedlora::server
