#include "common/ops/prometheus_text.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/status.h"

namespace fedlora::ops {

namespace {

bool ValidName(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// HELP text escapes backslash and newline; label values also the double quote.
std::string Escape(std::string_view s, bool quote) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds(std::move(upper_bounds)), counts(bounds.size() + 1, 0) {
  FEDLORA_CHECK_MSG(std::is_sorted(bounds.begin(), bounds.end()), "histogram bounds not ascending");
}

void Histogram::Observe(double value) {
  const auto at = std::lower_bound(bounds.begin(), bounds.end(), value);  // le: value <= bound
  ++counts[static_cast<std::size_t>(at - bounds.begin())];
  sum += value;
  ++count;
}

std::vector<double> DurationBuckets() {
  std::vector<double> b;
  for (double v = 0.01; v < 3000; v *= 4) b.push_back(v);
  return b;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 9.007199254740992e15) {
    return StrCat(static_cast<std::int64_t>(value));
  }
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {  // The shortest that reads back.
    std::snprintf(buf, sizeof buf, "%.*g", precision, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  return buf;
}

void PrometheusText::Family(std::string_view name, std::string_view help, std::string_view type) {
  FEDLORA_CHECK_MSG(ValidName(name), "metric name '", name, "'");
  if (family_ == name) return;
  family_ = std::string(name);
  out_ += StrCat("# HELP ", name, " ", Escape(help, false), "\n# TYPE ", name, " ", type, "\n");
}

void PrometheusText::Sample(std::string_view name, const Labels& labels, double value) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    for (std::size_t i = 0; i < labels.size(); ++i) {
      FEDLORA_CHECK_MSG(ValidName(labels[i].first), "label name '", labels[i].first, "'");
      out_ +=
          StrCat(i == 0 ? "" : ",", labels[i].first, "=\"", Escape(labels[i].second, true), "\"");
    }
    out_ += '}';
  }
  out_ += StrCat(" ", FormatValue(value), "\n");
}

void PrometheusText::Counter(std::string_view name, std::string_view help, double value,
                             const Labels& labels) {
  Family(name, help, "counter");
  Sample(name, labels, value);
}

void PrometheusText::Gauge(std::string_view name, std::string_view help, double value,
                           const Labels& labels) {
  Family(name, help, "gauge");
  Sample(name, labels, value);
}

void PrometheusText::AddHistogram(std::string_view name, std::string_view help,
                                  const Histogram& histogram, const Labels& labels) {
  Family(name, help, "histogram");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i <= histogram.bounds.size(); ++i) {
    cumulative += histogram.counts[i];
    Labels with_le = labels;
    with_le.emplace_back(
        "le", i < histogram.bounds.size() ? FormatValue(histogram.bounds[i]) : std::string("+Inf"));
    Sample(StrCat(name, "_bucket"), with_le, static_cast<double>(cumulative));
  }
  Sample(StrCat(name, "_sum"), labels, histogram.sum);
  Sample(StrCat(name, "_count"), labels, static_cast<double>(histogram.count));
}

}  // namespace fedlora::ops
