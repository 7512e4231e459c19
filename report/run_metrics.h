// run_metrics.h — a run's metrics.jsonl (README.md "Metrics") as per-round series, for reports.
// Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedlora::report {

// One run: the value of every numeric field of every committed round, by field name. Nested
// objects are flattened with a dot ("simulation.virtual_round_s", "privacy.epsilon"); a field a
// round lacks (or has as null) is empty there.
struct RunMetrics {
  std::string label;  // The run directory's name.
  std::string dir;
  std::string strategy;  // Of the last round ("" when absent).
  std::vector<std::uint64_t> rounds;
  std::map<std::string, std::vector<std::optional<double>>> fields;

  // The field's values with their rounds, skipping rounds without one.
  std::vector<std::pair<double, double>> Points(const std::string& field) const;
  // The last round's value of `field`, if it has one.
  std::optional<double> Last(const std::string& field) const;
  // The sum over rounds >= 1 (0 when none).
  double Total(const std::string& field) const;
  bool Has(const std::string& field) const;
};

// Reads `dir`/metrics.jsonl. Errors name the file and line (a line that is not a JSON object
// with a numeric "round"), or the file that cannot be read, or say it has no round.
Result<RunMetrics> LoadRun(const std::string& dir);

}  // namespace fedlora::report
