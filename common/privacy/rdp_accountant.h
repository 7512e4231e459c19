// rdp_accountant.h — Rényi-DP accounting of the Poisson-subsampled Gaussian mechanism (issue 14):
// what a run of DP-FedAvg rounds (clients sampled with rate q, Gaussian noise of multiplier σ)
// or DP-SGD steps has spent, as (ε, δ).
//
// RDP of one step at order α (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the
// Sampled Gaussian Mechanism", §3.3): ε(α) = log A_α / (α − 1) with
//   integer α:    A_α = Σ_{k=0..α} C(α,k) (1−q)^{α−k} q^k exp((k² − k) / (2σ²));
//   fractional α: the two-sided series of their Theorem 11 (terms with the Gaussian tail erfc),
//                 summed in magnitude (an upper bound on A_α) until its terms fall below e^-30 of
//                 the total; an order whose series does not settle within 1000 terms is left out
//                 (leaving an order out can only raise ε: the conversion takes the minimum).
// RDP composes by addition over steps; (ε, δ) comes from the tight conversion of Balle et al.
// 2020 (Canonne, Kamath, Steinke 2020, Prop. 12 form):
//   ε = min_α  ε(α) + log((α − 1)/α) − (log δ + log α)/(α − 1).
// ε is rounded up by a relative 1e-6 (floating-point slack; never below the exact bound).
// Checked against Google's dp-accounting (scripts/dp_vectors.py -> tests/common/privacy/).
// Everything in log space; no allocation per step. Thread-compatible value.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace fedlora::privacy {

// The orders dp-accounting's RdpAccountant uses by default: 1.1, 1.2, ..., 10.9, 11..63, 128,
// 256, 512, 1024.
std::vector<double> DefaultOrders();

// RDP ε(α) of one step of the Poisson-subsampled Gaussian with sampling rate q in [0, 1] and noise
// multiplier σ >= 0, at each of `orders` (each > 1). +inf where unbounded (σ = 0 with q > 0) or
// where a fractional order's series does not settle (see above).
std::vector<double> SubsampledGaussianRdp(double q, double sigma,
                                          const std::vector<double>& orders);

struct EpsilonAtOrder {
  double epsilon = 0;  // +inf when no order bounds it.
  double order = 0;
};

// The tight RDP -> (ε, δ) conversion over `orders` with RDP values `rdp`. kInvalidArgument for
// δ outside (0, 1), mismatched lengths, an order <= 1 or a negative RDP value.
Result<EpsilonAtOrder> RdpToEpsilon(const std::vector<double>& orders,
                                    const std::vector<double>& rdp, double delta);

// The smallest noise multiplier σ (to a relative 1e-4, rounded up) with which `steps` steps of
// the subsampled Gaussian at rate q stay within (target_epsilon, delta): for
// privacy.noise_multiplier solved from the budget and the planned rounds. kInvalidArgument for
// arguments out of range; kFailedPrecondition when even σ = 1e4 does not meet the target.
Result<double> NoiseForBudget(double q, std::uint64_t steps, double target_epsilon, double delta);

class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = DefaultOrders());
  // `steps` more steps of the subsampled Gaussian (q, σ). kInvalidArgument for q outside [0, 1]
  // or σ < 0 (naming which); nothing is added then.
  Status Compose(double q, double sigma, std::uint64_t steps = 1);
  Result<EpsilonAtOrder> Epsilon(double delta) const;
  const std::vector<double>& orders() const { return orders_; }
  const std::vector<double>& rdp() const { return rdp_; }
  // The spent RDP, for a checkpoint; kInvalidArgument when it does not match the orders.
  Status Restore(std::vector<double> rdp);

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
};

}  // namespace fedlora::privacy
