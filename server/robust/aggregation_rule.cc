#include "server/robust/aggregation_rule.h"

#include <algorithm>

#include "server/robust/coordinate_median.h"
#include "server/robust/multi_krum.h"
#include "server/robust/trimmed_mean.h"
#include "server/strategies/fedavg.h"

namespace fedlora::server {
namespace {

// The default: the strategy's weighted mean (fedavg.h's WeightedMean).
class WeightedMeanRule final : public AggregationRule {
 public:
  std::string_view name() const override { return "mean"; }
  Result<RuleOutcome> Combine(std::span<const ClientUpdate> updates,
                              std::span<const double> weights, DType dtype) const override {
    RuleOutcome out;
    FEDLORA_ASSIGN_OR_RETURN(out.combined, WeightedMean(updates, weights, dtype));
    out.shares.assign(weights.begin(), weights.end());
    return out;
  }
};

}  // namespace

std::vector<std::string> AggregationRuleNames() {
  return {"mean", "median", "trimmed_mean", "multi_krum"};
}

Status ValidateAggregationRule(const AggregationRuleConfig& c) {
  const std::vector<std::string> names = AggregationRuleNames();
  if (std::find(names.begin(), names.end(), c.name) == names.end()) {
    std::string known;
    for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
    return InvalidArgument("robust.rule: unknown aggregation rule '", c.name, "' (known: ", known,
                           ")");
  }
  if (!(c.trim_fraction >= 0 && c.trim_fraction < 0.5)) {
    return InvalidArgument("robust.trim_fraction must be in [0, 0.5), not ", c.trim_fraction);
  }
  return OkStatus();
}

Result<std::shared_ptr<const AggregationRule>> MakeAggregationRule(
    const AggregationRuleConfig& config) {
  FEDLORA_RETURN_IF_ERROR(ValidateAggregationRule(config));
  std::shared_ptr<const AggregationRule> rule;
  if (config.name == "median") {
    rule = std::make_shared<CoordinateMedian>();
  } else if (config.name == "trimmed_mean") {
    rule = std::make_shared<TrimmedMean>(config.trim_fraction);
  } else if (config.name == "multi_krum") {
    rule = std::make_shared<MultiKrum>(config.krum_byzantine, config.krum_select);
  } else {
    rule = std::make_shared<WeightedMeanRule>();
  }
  return rule;
}

Status CheckUpdatesAlign(std::span<const ClientUpdate> updates) {
  if (updates.empty()) return OkStatus();
  const ClientUpdate& first = updates.front();
  for (const ClientUpdate& u : updates) {
    if (u.tensors.size() != first.tensors.size()) {
      return InvalidArgument("client ", u.client_id, " uploaded ", u.tensors.size(),
                             " tensors but client ", first.client_id, " uploaded ",
                             first.tensors.size(),
                             " (hint: clients trained different LoRA targets)");
    }
    for (const auto& [name, reference] : first.tensors) {
      const auto it = u.tensors.find(name);
      if (it == u.tensors.end()) {
        return InvalidArgument("client ", u.client_id, " did not upload tensor '", name, "'");
      }
      if (it->second.shape != reference.shape) {
        return InvalidArgument("client ", u.client_id, " disagrees on the shape of '", name,
                               "': ", ShapeString(it->second.shape), " vs ",
                               ShapeString(reference.shape),
                               " (hint: clients trained different LoRA ranks)");
      }
    }
  }
  return OkStatus();
}

Result<RuleOutcome> CombineCoordinates(std::span<const ClientUpdate> updates, DType dtype,
                                       const CoordinateReducer& reduce) {
  FEDLORA_CHECK(!updates.empty());
  FEDLORA_RETURN_IF_ERROR(CheckUpdatesAlign(updates));
  const std::size_t n = updates.size();
  RuleOutcome out;
  out.shares.assign(n, 0.0);
  std::vector<double> column(n), shares(n);
  double coordinates = 0;
  for (const auto& [name, reference] : updates.front().tensors) {
    std::vector<std::vector<double>> values;
    values.reserve(n);
    for (const ClientUpdate& u : updates) values.push_back(ToDoubles(u.tensors.at(name)));
    std::vector<double> combined(values.front().size());
    for (std::size_t i = 0; i < combined.size(); ++i) {
      for (std::size_t k = 0; k < n; ++k) column[k] = values[k][i];
      std::fill(shares.begin(), shares.end(), 0.0);
      combined[i] = reduce(column, shares);
      for (std::size_t k = 0; k < n; ++k) out.shares[k] += shares[k];
    }
    coordinates += static_cast<double>(combined.size());
    out.combined.emplace(name, FromDoubles(dtype, reference.shape, combined));
  }
  if (coordinates > 0) {
    for (double& s : out.shares) s /= coordinates;
  }
  return out;
}

}  // namespace fedlora::server
