#include "server/robust/multi_krum.h"

#include <algorithm>
#include <numeric>

#include "server/strategies/fedavg.h"

namespace fedlora::server {

std::vector<double> MultiKrum::Scores(std::span<const ClientUpdate> updates) const {
  const std::size_t n = updates.size();
  // Pairwise squared distances, accumulated tensor by tensor so that only one tensor of every
  // upload is held in double at a time.
  std::vector<double> d2(n * n, 0.0);
  for (const auto& [name, reference] : updates.front().tensors) {
    std::vector<std::vector<double>> values;
    values.reserve(n);
    for (const ClientUpdate& u : updates) values.push_back(ToDoubles(u.tensors.at(name)));
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t j = i + 1; j < n; ++j) {
        double sum = 0;
        for (std::size_t c = 0; c < values[i].size(); ++c) {
          const double diff = values[i][c] - values[j][c];
          sum += diff * diff;
        }
        d2[i * n + j] += sum;
        d2[j * n + i] += sum;
      }
    }
  }
  const std::size_t f = f_;
  const std::size_t neighbours = n >= f + 3 ? n - f - 2 : 1;
  std::vector<double> scores(n, 0.0);
  std::vector<double> row;
  for (std::size_t i = 0; i < n && n > 1; ++i) {
    row.clear();
    for (std::size_t j = 0; j < n; ++j) {
      if (j != i) row.push_back(d2[i * n + j]);
    }
    const std::size_t k = std::min(neighbours, row.size());
    std::partial_sort(row.begin(), row.begin() + static_cast<std::ptrdiff_t>(k), row.end());
    scores[i] = std::accumulate(row.begin(), row.begin() + static_cast<std::ptrdiff_t>(k), 0.0);
  }
  return scores;
}

Result<RuleOutcome> MultiKrum::Combine(std::span<const ClientUpdate> updates,
                                       std::span<const double> weights, DType dtype) const {
  FEDLORA_RETURN_IF_ERROR(CheckUpdatesAlign(updates));
  const std::size_t n = updates.size();
  const std::vector<double> scores = Scores(updates);
  std::size_t m = m_ > 0 ? m_ : (n > f_ ? n - f_ : 1);
  m = std::clamp<std::size_t>(m, 1, n);
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  RuleOutcome out;
  out.shares.assign(n, 0.0);
  double total = 0;
  for (std::size_t j = 0; j < m; ++j) total += weights[order[j]];
  for (std::size_t j = 0; j < m; ++j) {
    // Selected updates with all-zero weights share equally.
    out.shares[order[j]] = total > 0 ? weights[order[j]] / total : 1.0 / static_cast<double>(m);
  }
  FEDLORA_ASSIGN_OR_RETURN(out.combined, WeightedMean(updates, out.shares, dtype));
  out.metrics["multi_krum.selected"] = static_cast<double>(m);
  out.metrics["multi_krum.excluded"] = static_cast<double>(n - m);
  out.metrics["multi_krum.below_guarantee"] = n > 2 * std::size_t{f_} + 2 ? 0.0 : 1.0;
  return out;
}

}  // namespace fedlora::server
