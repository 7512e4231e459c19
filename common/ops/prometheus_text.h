// prometheus_text.h — metrics in the Prometheus text exposition format (version 0.0.4), as an
// ops endpoint's /metrics serves them. prometheus-cpp is not packaged for Debian 12, so this
// writes the format directly: one family (# HELP, # TYPE) per metric name, label values escaped,
// histograms as cumulative _bucket{le=...} series with _sum and _count. Checked against
// python3-prometheus-client's parser in the tests.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fedlora::ops {

using Labels = std::vector<std::pair<std::string, std::string>>;

// A histogram with fixed upper bounds (ascending; +Inf is implicit). A value.
struct Histogram {
  std::vector<double> bounds;
  std::vector<std::uint64_t> counts;  // Per bucket, not cumulative; bounds.size() + 1 (the last
                                      // is above every bound).
  double sum = 0;
  std::uint64_t count = 0;

  explicit Histogram(std::vector<double> upper_bounds = {});
  void Observe(double value);
};

// Upper bounds for durations in seconds: 0.01 s to ~41 min, each 4x the last.
std::vector<double> DurationBuckets();

// Writes families in the order they are added; samples of one family must be added together.
// Metric and label names must match [a-zA-Z_:][a-zA-Z0-9_:]* (checked).
class PrometheusText {
 public:
  void Counter(std::string_view name, std::string_view help, double value,
               const Labels& labels = {});
  void Gauge(std::string_view name, std::string_view help, double value, const Labels& labels = {});
  void AddHistogram(std::string_view name, std::string_view help, const Histogram& histogram,
                    const Labels& labels = {});
  // A counter family without samples yet (a labelled counter before its first label value), so
  // scrapers and dashboards see that it exists.
  void DeclareCounter(std::string_view name, std::string_view help) {
    Family(name, help, "counter");
  }

  const std::string& str() const { return out_; }

 private:
  void Family(std::string_view name, std::string_view help, std::string_view type);
  void Sample(std::string_view name, const Labels& labels, double value);

  std::string out_;
  std::string family_;  // The family being written.
};

// A number as the format writes it: integers without a fraction, "+Inf", "-Inf", "NaN".
std::string FormatValue(double value);

}  // namespace fedlora::ops
