// dp_sgd_budget.h — a DP-SGD client's own accountant: every step it ever took on its data, kept
// in its state directory, so that no restart, new run or new coordinator resets what the data
// owner has spent (docs/privacy.md, "Sample-level DP-SGD").
//
// The steps are runs of (q, σ, steps) (common/privacy/composition_log.h), written atomically to
// one JSON file before the update that spent them leaves the client; a file that cannot be read
// or parsed is an error, never a fresh budget. Torch-free. Thread-compatible.
#pragma once

#include <cstdint>
#include <string>

#include "common/privacy/composition_log.h"
#include "common/status.h"

namespace fedlora::client {

class DpSgdBudget {
 public:
  // The budget kept at `path` (absent: nothing spent yet) for target ε and δ.
  // kDataLoss naming the file when it is damaged; I/O errors name it too.
  static Result<DpSgdBudget> Open(std::string path, double target_epsilon, double delta);

  double target_epsilon() const { return target_epsilon_; }
  double delta() const { return delta_; }
  const std::string& path() const { return path_; }
  std::uint64_t steps() const { return log_.steps(); }
  double EpsilonSpent() const { return log_.Epsilon(delta_); }
  // ε if `steps` more steps at (q, σ) were taken.
  double EpsilonAfter(double q, double sigma, std::uint64_t steps) const {
    return log_.EpsilonWith(q, sigma, steps, delta_);
  }
  // Records `steps` steps at (q, σ) and writes the file; on a write error nothing is recorded.
  Status Record(double q, double sigma, std::uint64_t steps);

 private:
  std::string path_;
  double target_epsilon_ = 0;
  double delta_ = 0;
  privacy::CompositionLog log_;
};

}  // namespace fedlora::client
