#include "server/strategies/weighting.h"

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

Result<std::vector<double>> ComputeWeights(std::span<const ClientUpdate> updates, Weighting w) {
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
  return raw;
}

}  // namespace fedlora::server
