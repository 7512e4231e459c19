#include "common/privacy/update_change.h"

#include <cmath>

namespace fedlora::privacy {

std::vector<double> ChangeReference(const TensorMap& reference, std::string_view name,
                                    const Tensor& uploaded) {
  const auto count = static_cast<std::size_t>(uploaded.numel());
  const auto it = reference.find(name);
  if (it == reference.end() || it->second.shape.size() != uploaded.shape.size()) {
    return std::vector<double>(count, 0.0);
  }
  const std::vector<std::int64_t>& from = it->second.shape;
  const std::vector<std::int64_t>& to = uploaded.shape;
  for (std::size_t d = 0; d < to.size(); ++d) {
    if (to[d] > from[d]) return std::vector<double>(count, 0.0);
  }
  const std::vector<double> full = ToDoubles(it->second);
  if (from == to) return full;
  // The leading block: walk the upload's indices, map each to the reference's flat offset.
  std::vector<double> out(count);
  std::vector<std::int64_t> index(to.size(), 0);
  for (std::size_t i = 0; i < count; ++i) {
    std::int64_t offset = 0;
    for (std::size_t d = 0; d < to.size(); ++d) offset = offset * from[d] + index[d];
    out[i] = full[static_cast<std::size_t>(offset)];
    for (std::size_t d = to.size(); d-- > 0;) {
      if (++index[d] < to[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

double ChangeNorm(const TensorMap& uploaded, const TensorMap& reference) {
  double sum = 0;
  for (const auto& [name, t] : uploaded) {
    const std::vector<double> values = ToDoubles(t);
    const std::vector<double> start = ChangeReference(reference, name, t);
    for (std::size_t i = 0; i < values.size(); ++i) {
      const double d = values[i] - start[i];
      sum += d * d;
    }
  }
  return std::sqrt(sum);
}

void ScaleChange(TensorMap& uploaded, const TensorMap& reference, double factor) {
  for (auto& [name, t] : uploaded) {
    std::vector<double> values = ToDoubles(t);
    const std::vector<double> start = ChangeReference(reference, name, t);
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] = start[i] + factor * (values[i] - start[i]);
    }
    t = FromDoubles(t.dtype, t.shape, values);
  }
}

ClipOutcome ClipChange(TensorMap& uploaded, const TensorMap& reference, double clip) {
  ClipOutcome outcome{ChangeNorm(uploaded, reference), false};
  if (outcome.norm <= clip) return outcome;
  outcome.clipped = true;
  // Rounding to the dtype can leave the scaled change a hair above the bound: scale the original
  // again, a little further, until it is not (a few tries; zero change in the end is within it).
  const TensorMap original = uploaded;
  double factor = clip / outcome.norm;
  for (int attempt = 0; attempt < 60; ++attempt) {
    uploaded = original;
    ScaleChange(uploaded, reference, factor);
    if (ChangeNorm(uploaded, reference) <= clip) return outcome;
    factor *= attempt < 8 ? 1.0 - 1e-6 * std::pow(4.0, attempt) : 0.5;
  }
  uploaded = original;
  ScaleChange(uploaded, reference, 0.0);
  return outcome;
}

}  // namespace fedlora::privacy
