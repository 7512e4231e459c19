// composition_log.h — what a sequence of Poisson-subsampled Gaussian steps has spent: runs of
// (sample rate q, noise multiplier σ, steps), composed by the RDP accountant
// (rdp_accountant.h) into (ε, δ). The coordinator's privacy ledger counts released rounds in it
// (server/privacy_ledger.h), a DP-SGD client its local steps (client/train/dp_sgd_budget.h).
// Keeping the runs, not the RDP curve, lets a restart change the parameters and still restore
// the exact spend. Thread-compatible value.
#pragma once

#include <cstdint>
#include <vector>

namespace fedlora::privacy {

class CompositionLog {
 public:
  struct Run {
    double q = 0;
    double sigma = 0;
    std::uint64_t steps = 0;
  };

  // `steps` more steps at (q, σ); merged into the last run when it has the same parameters.
  void Add(double q, double sigma, std::uint64_t steps = 1);
  // ε at `delta` of everything added; 0 when nothing was, +inf when unbounded (σ = 0) or when a
  // run is out of the accountant's range.
  double Epsilon(double delta) const;
  // ε at `delta` if `steps` more steps at (q, σ) were added.
  double EpsilonWith(double q, double sigma, std::uint64_t steps, double delta) const;
  std::uint64_t steps() const;
  const std::vector<Run>& runs() const { return runs_; }

 private:
  std::vector<Run> runs_;
};

}  // namespace fedlora::privacy
