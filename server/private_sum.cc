#include "server/private_sum.h"

#include <cmath>

#include "common/privacy/gaussian_noise.h"
#include "common/privacy/update_change.h"
#include "common/secagg/secure_input.h"

namespace fedlora::server {
namespace {

class PrivateAccumulator final : public RoundAccumulator {
 public:
  PrivateAccumulator(Strategy& strategy, std::uint64_t round, PrivateRoundParams params,
                     PrivateRoundTally* tally)
      : strategy_(strategy), round_(round), params_(std::move(params)), tally_(tally) {
    for (const wire::SecAggSlot& slot : params_.slots) {
      sums_.emplace(slot.name,
                    std::vector<double>(static_cast<std::size_t>(NumElements(slot.shape).value())));
    }
  }

  Status Fold(const ClientUpdate& update, const ClientTask& task) override {
    // The change of every uploaded tensor, then its norm over all of them.
    std::map<std::string, std::vector<double>, std::less<>> changes;
    double squares = 0;
    for (const auto& [name, t] : update.tensors) {
      if (!sums_.contains(name)) {
        return InvalidArgument("tensor '", name, "' is not one this private round releases");
      }
      std::vector<double> change = ToDoubles(t);
      const std::vector<double> start = privacy::ChangeReference(task.tensors, name, t);
      for (std::size_t i = 0; i < change.size(); ++i) {
        change[i] = params_.delta ? start[i] - change[i] : change[i] - start[i];
        squares += change[i] * change[i];
      }
      changes.emplace(name, std::move(change));
    }
    const double norm = std::sqrt(squares);
    const double scale = norm > params_.clip ? params_.clip / norm : 1.0;
    std::map<std::string, std::vector<double>, std::less<>> placed;
    for (const wire::SecAggSlot& slot : params_.slots) {
      const auto it = changes.find(slot.name);
      if (it == changes.end()) continue;
      for (double& v : it->second) v *= scale;
      FEDLORA_ASSIGN_OR_RETURN(
          placed[slot.name],
          secagg::PlaceInSlot(slot, task.plan, update.tensors.at(slot.name).shape, it->second));
    }
    for (auto& [name, values] : placed) {  // Only once every tensor fits: all or nothing.
      std::vector<double>& sum = sums_.at(name);
      for (std::size_t i = 0; i < values.size(); ++i) sum[i] += values[i];
    }
    if (tally_ != nullptr) {
      if (params_.count_noise_stddev > 0) {
        const auto bit = update.metrics.find(wire::kWithinClipMetric);
        tally_->within += bit != update.metrics.end() && bit->second == 1.0 ? 1 : 0;
      }
      ++tally_->folded;
      if (norm >= params_.clip * (1 - 1e-4)) ++tally_->clipped;
    }
    return OkStatus();
  }

  Result<AggregateReport> Finish(GlobalState& state, const UploadSource&) override {
    secagg::SecureSum sum;
    const double stddev = params_.noise_multiplier * params_.clip;
    const double m = params_.denominator;
    for (const wire::SecAggSlot& slot : params_.slots) {
      std::vector<double> values = sums_.at(slot.name);
      privacy::AddGaussianNoise(values, stddev,
                                privacy::DeriveNoiseSeed(params_.noise_seed, slot.name));
      if (!params_.delta) {
        const auto global = state.adapter.find(slot.name);
        if (global == state.adapter.end() || global->second.shape != slot.shape) {
          return Internal("private round: the global adapter has no tensor '", slot.name,
                          "' of shape ", ShapeString(slot.shape));
        }
        const std::vector<double> g = ToDoubles(global->second);
        for (std::size_t i = 0; i < values.size(); ++i) values[i] += m * g[i];
      }
      sum.weighted.emplace(slot.name, MakeF64(slot.shape, values));
      sum.weights[slot.name] = m;
    }
    sum.survivors = tally_ != nullptr ? tally_->folded : 0;
    if (tally_ != nullptr && params_.count_noise_stddev > 0) {
      std::vector<double> count{static_cast<double>(tally_->within)};
      privacy::AddGaussianNoise(count, params_.count_noise_stddev,
                                privacy::DeriveNoiseSeed(params_.noise_seed, "\n(count)"));
      tally_->noised_within = count[0];
    }
    return strategy_.FinishSecure(state, round_, sum);
  }

 private:
  Strategy& strategy_;
  std::uint64_t round_;
  PrivateRoundParams params_;
  PrivateRoundTally* tally_;
  std::map<std::string, std::vector<double>, std::less<>> sums_;
};

}  // namespace

Result<secagg::SecureSum> PrivateReleaseOf(const secagg::SecureSum& sum, const TensorMap& global,
                                           bool delta, double denominator) {
  secagg::SecureSum release = sum;
  for (auto& [name, weighted] : release.weighted) {
    double& weight = release.weights.at(name);
    if (!delta) {
      const auto g = global.find(name);
      if (g == global.end() || g->second.shape != weighted.shape) {
        return Internal("private release: the global adapter has no tensor '", name, "' of shape ",
                        ShapeString(weighted.shape));
      }
      // m G + (Σ x − (Σ w) G) = Σ x + (m − Σ w) G.
      const std::vector<double> gv = ToDoubles(g->second);
      std::vector<double> values = ToDoubles(weighted);
      for (std::size_t i = 0; i < values.size(); ++i) values[i] += (denominator - weight) * gv[i];
      weighted = MakeF64(weighted.shape, values);
    }
    weight = denominator;
  }
  return release;
}

std::unique_ptr<RoundAccumulator> MakePrivateAccumulator(Strategy& strategy, std::uint64_t round,
                                                         PrivateRoundParams params,
                                                         PrivateRoundTally* tally) {
  return std::make_unique<PrivateAccumulator>(strategy, round, std::move(params), tally);
}

}  // namespace fedlora::server
