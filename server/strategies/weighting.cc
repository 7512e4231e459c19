#include "server/strategies/weighting.h"

#include <algorithm>

namespace fedlora::server {

Result<Weighting> ParseWeighting(std::string_view name) {
  if (name == "examples") return Weighting::kExamples;
  if (name == "samples") return Weighting::kSamples;
  if (name == "uniform") return Weighting::kUniform;
  return InvalidArgument("unknown weighting '", name, "' (expected examples, samples or uniform)");
}

std::string_view WeightingName(Weighting w) {
  switch (w) {
    case Weighting::kExamples: return "examples";
    case Weighting::kSamples: return "samples";
    case Weighting::kUniform: return "uniform";
  }
  return "?";
}

std::size_t CapShares(std::vector<double>& weights, double max_share) {
  const std::size_t n = weights.size();
  if (n == 0 || !(max_share < 1.0)) return 0;
  if (max_share * static_cast<double>(n) <= 1.0) {
    std::size_t capped = 0;
    for (double& w : weights) {
      if (w > 1.0 / static_cast<double>(n)) ++capped;
      w = 1.0 / static_cast<double>(n);
    }
    return capped;
  }
  // Each pass fixes every weight above the cap at the cap and rescales the free ones to carry
  // the rest; a weight fixed once stays fixed, so at most n passes.
  std::vector<bool> fixed(n, false);
  std::size_t capped = 0;
  for (bool changed = true; changed;) {
    changed = false;
    double free_total = 0, left = 1.0;
    for (std::size_t k = 0; k < n; ++k) {
      if (fixed[k]) {
        left -= max_share;
      } else {
        free_total += weights[k];
      }
    }
    const auto free_count = static_cast<double>(std::count(fixed.begin(), fixed.end(), false));
    for (std::size_t k = 0; k < n; ++k) {
      if (fixed[k]) continue;
      // Free weights that are all zero share what is left equally.
      weights[k] = free_total > 0 ? weights[k] * left / free_total : left / free_count;
      if (weights[k] > max_share) {
        weights[k] = max_share;
        fixed[k] = true;
        ++capped;
        changed = true;
      }
    }
  }
  return capped;
}

Result<double> WeightTotal(const RawWeights& weights, Weighting w) {
  double total = 0;
  for (const auto& [id, x] : weights) total += x;
  if (!(total > 0)) {
    return InvalidArgument("weighting '", WeightingName(w), "': the ", weights.size(),
                           " update(s) report a total count of 0");
  }
  return total;
}

Result<std::vector<double>> ComputeWeights(std::span<const ClientUpdate> updates, Weighting w,
                                           double max_share) {
  std::vector<double> raw;
  raw.reserve(updates.size());
  for (const ClientUpdate& u : updates) {
    switch (w) {
      case Weighting::kExamples: raw.push_back(static_cast<double>(u.num_examples)); break;
      case Weighting::kSamples: raw.push_back(static_cast<double>(u.num_samples)); break;
      case Weighting::kUniform: raw.push_back(1.0); break;
    }
  }
  double total = 0;
  for (double x : raw) total += x;
  if (!(total > 0)) {
    return InvalidArgument("weighting '", WeightingName(w), "': the ", updates.size(),
                           " update(s) report a total count of 0");
  }
  for (double& x : raw) x /= total;
  CapShares(raw, max_share);
  return raw;
}

}  // namespace fedlora::server
