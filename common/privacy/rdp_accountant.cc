#include "common/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace fedlora::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kMaxSeriesTerms = 1000;
constexpr double kNumericalSlack = 1e-6;

// log(e^a + e^b), without overflow.
double LogAdd(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  const double hi = std::max(a, b), lo = std::min(a, b);
  return hi + std::log1p(std::exp(lo - hi));
}
// log(erfc(x)), accurate where erfc underflows (x large: its asymptotic expansion).
double LogErfc(double x) {
  if (x < 25) return std::log(std::erfc(x));
  const double x2 = x * x, inv = 1.0 / (2.0 * x2);
  // erfc(x) = e^{-x²} / (x √π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) + …)
  const double series = 1.0 - inv + 3.0 * inv * inv - 15.0 * inv * inv * inv;
  return -x2 - std::log(x) - 0.5 * std::log(M_PI) + std::log(series);
}

// log C(n, k) for integer n >= k >= 0.
double LogBinomial(double n, double k) {
  return std::lgamma(n + 1) - std::lgamma(k + 1) - std::lgamma(n - k + 1);
}

double LogAInteger(double q, double sigma, int alpha) {
  double log_a = -kInf;
  const double log_q = std::log(q), log_1q = std::log1p(-q);
  for (int k = 0; k <= alpha; ++k) {
    const double term = LogBinomial(alpha, k) + k * log_q + (alpha - k) * log_1q +
                        (static_cast<double>(k) * k - k) / (2 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return log_a;
}

// Mironov et al. 2019, Theorem 11: A_α = A₀ + A₁, each a series over k of the generalised
// binomial coefficients C(α, k) (alternating in sign once k > α), split at
// z₀ = σ² log(1/q − 1) + 1/2. Summed in magnitude: by the triangle inequality the result bounds
// A_α from above, so cancellation (and rounding in it) can never make ε smaller than it is.
// Stops once both terms fall and are below e^-30 of the total; NaN when that does not happen
// within kMaxSeriesTerms (the order is then left out).
double LogAFractional(double q, double sigma, double alpha) {
  const double log_q = std::log(q), log_1q = std::log1p(-q);
  const double z0 = sigma * sigma * std::log(1 / q - 1) + 0.5;
  const double s2 = 2 * sigma * sigma, root2_sigma = std::sqrt(2.0) * sigma;
  double log_a0 = -kInf, log_a1 = -kInf, last_s0 = -kInf, last_s1 = -kInf;
  for (int k = 0; k < kMaxSeriesTerms; ++k) {
    const double log_coef = std::lgamma(alpha + 1) - std::lgamma(k + 1.0) -
                            std::lgamma(alpha - k + 1);  // log |C(α, k)|.
    const double j = alpha - k;
    const double log_t0 = log_coef + k * log_q + j * log_1q;
    const double log_t1 = log_coef + j * log_q + k * log_1q;
    const double log_e0 = std::log(0.5) + LogErfc((k - z0) / root2_sigma);
    const double log_e1 = std::log(0.5) + LogErfc((z0 - j) / root2_sigma);
    const double log_s0 = log_t0 + (static_cast<double>(k) * k - k) / s2 + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / s2 + log_e1;
    log_a0 = LogAdd(log_a0, log_s0);
    log_a1 = LogAdd(log_a1, log_s1);
    const double total = LogAdd(log_a0, log_a1);
    if (log_s0 < last_s0 && log_s1 < last_s1 && std::max(log_s0, log_s1) < total - 30) {
      return total;
    }
    last_s0 = log_s0;
    last_s1 = log_s1;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

double RdpAt(double q, double sigma, double alpha) {
  if (q == 0) return 0;
  if (sigma == 0) return kInf;
  if (q == 1) return alpha / (2 * sigma * sigma);
  if (std::isinf(alpha)) return kInf;
  const double log_a = alpha == std::floor(alpha) && alpha < 1e6
                           ? LogAInteger(q, sigma, static_cast<int>(alpha))
                           : LogAFractional(q, sigma, alpha);
  if (std::isnan(log_a)) return kInf;  // Not settled: this order bounds nothing.
  return std::max(0.0, log_a / (alpha - 1));
}

}  // namespace

std::vector<double> DefaultOrders() {
  std::vector<double> orders;
  for (int x = 1; x < 100; ++x) orders.push_back(1 + x / 10.0);
  for (int a = 11; a < 64; ++a) orders.push_back(a);
  for (double a : {128.0, 256.0, 512.0, 1024.0}) orders.push_back(a);
  return orders;
}

std::vector<double> SubsampledGaussianRdp(double q, double sigma,
                                          const std::vector<double>& orders) {
  std::vector<double> out;
  out.reserve(orders.size());
  for (double alpha : orders) out.push_back(RdpAt(q, sigma, alpha));
  return out;
}

Result<EpsilonAtOrder> RdpToEpsilon(const std::vector<double>& orders,
                                    const std::vector<double>& rdp, double delta) {
  if (!(delta > 0 && delta < 1)) return InvalidArgument("delta must be in (0, 1), not ", delta);
  if (orders.size() != rdp.size() || orders.empty()) {
    return InvalidArgument(orders.size(), " orders but ", rdp.size(), " RDP values");
  }
  EpsilonAtOrder best{kInf, 0};
  for (std::size_t i = 0; i < orders.size(); ++i) {
    const double a = orders[i];
    if (!(a > 1)) return InvalidArgument("RDP order ", a, " is not above 1");
    if (!(rdp[i] >= 0)) return InvalidArgument("RDP value ", rdp[i], " at order ", a);
    const double eps = rdp[i] + std::log((a - 1) / a) - (std::log(delta) + std::log(a)) / (a - 1);
    if (eps < best.epsilon) best = {eps, a};
  }
  // Rounded up by kNumericalSlack for the floating-point evaluation: a larger ε is always a valid
  // guarantee, a smaller one never.
  best.epsilon = std::max(0.0, best.epsilon) * (1 + kNumericalSlack);
  return best;
}

Result<double> NoiseForBudget(double q, std::uint64_t steps, double target_epsilon, double delta) {
  if (!(q > 0 && q <= 1) || steps == 0 || !(target_epsilon > 0) || std::isinf(target_epsilon)) {
    return InvalidArgument("solving the noise: need q in (0, 1] (", q, "), steps >= 1 (", steps,
                           ") and a finite target epsilon > 0 (", target_epsilon, ")");
  }
  const auto spent = [&](double sigma) -> Result<double> {
    RdpAccountant a;
    FEDLORA_RETURN_IF_ERROR(a.Compose(q, sigma, steps));
    FEDLORA_ASSIGN_OR_RETURN(const EpsilonAtOrder e, a.Epsilon(delta));
    return e.epsilon;
  };
  double lo = 1e-3, hi = 1e4;
  FEDLORA_ASSIGN_OR_RETURN(const double at_hi, spent(hi));
  if (at_hi > target_epsilon) {
    return Status(StatusCode::kFailedPrecondition,
                  StrCat("no noise multiplier up to ", hi, " keeps ", steps, " steps at rate ", q,
                         " within epsilon ", target_epsilon, " (delta ", delta, ")"));
  }
  // ε falls as σ grows: bisect (geometrically) for the smallest σ that meets the target.
  while (hi / lo > 1 + 1e-4) {
    const double mid = std::sqrt(lo * hi);
    FEDLORA_ASSIGN_OR_RETURN(const double eps, spent(mid));
    (eps <= target_epsilon ? hi : lo) = mid;
  }
  return hi;
}

RdpAccountant::RdpAccountant(std::vector<double> orders)
    : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

Status RdpAccountant::Compose(double q, double sigma, std::uint64_t steps) {
  if (!(q >= 0 && q <= 1)) return InvalidArgument("sampling rate ", q, " is not in [0, 1]");
  if (!(sigma >= 0) || std::isinf(sigma)) {
    return InvalidArgument("noise multiplier ", sigma, " is not finite and >= 0");
  }
  const std::vector<double> step = SubsampledGaussianRdp(q, sigma, orders_);
  for (std::size_t i = 0; i < rdp_.size(); ++i) rdp_[i] += static_cast<double>(steps) * step[i];
  return OkStatus();
}

Result<EpsilonAtOrder> RdpAccountant::Epsilon(double delta) const {
  return RdpToEpsilon(orders_, rdp_, delta);
}

Status RdpAccountant::Restore(std::vector<double> rdp) {
  if (rdp.size() != orders_.size()) {
    return InvalidArgument("restored RDP has ", rdp.size(), " values for ", orders_.size(),
                           " orders");
  }
  for (double v : rdp) {
    if (!(v >= 0)) return InvalidArgument("restored RDP value ", v, " is not >= 0");
  }
  rdp_ = std::move(rdp);
  return OkStatus();
}

}  // namespace fedlora::privacy
