#include "common/privacy/composition_log.h"

#include <cmath>

#include "common/privacy/rdp_accountant.h"

namespace fedlora::privacy {
namespace {

double EpsilonOf(const std::vector<CompositionLog::Run>& runs, double delta) {
  if (runs.empty()) return 0.0;
  RdpAccountant accountant;
  for (const CompositionLog::Run& r : runs) {
    if (!accountant.Compose(r.q, r.sigma, r.steps).ok()) return HUGE_VAL;
  }
  Result<EpsilonAtOrder> eps = accountant.Epsilon(delta);
  return eps.ok() ? eps->epsilon : HUGE_VAL;
}

void Append(std::vector<CompositionLog::Run>& runs, double q, double sigma, std::uint64_t steps) {
  if (!runs.empty() && runs.back().q == q && runs.back().sigma == sigma) {
    runs.back().steps += steps;
  } else {
    runs.push_back({q, sigma, steps});
  }
}

}  // namespace

void CompositionLog::Add(double q, double sigma, std::uint64_t steps) {
  if (steps > 0) Append(runs_, q, sigma, steps);
}

double CompositionLog::Epsilon(double delta) const { return EpsilonOf(runs_, delta); }

double CompositionLog::EpsilonWith(double q, double sigma, std::uint64_t steps,
                                   double delta) const {
  std::vector<Run> next = runs_;
  if (steps > 0) Append(next, q, sigma, steps);
  return EpsilonOf(next, delta);
}

std::uint64_t CompositionLog::steps() const {
  std::uint64_t n = 0;
  for (const Run& r : runs_) n += r.steps;
  return n;
}

}  // namespace fedlora::privacy
