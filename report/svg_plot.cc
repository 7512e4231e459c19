#include "report/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "common/status.h"

namespace fedlora::report {

namespace {

constexpr double kWidth = 560, kHeight = 300;
constexpr double kLeft = 64, kRight = 16, kTop = 42, kBottom = 44;

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// A tick label: integers plain, else 3 significant digits, big and small numbers compact.
std::string TickLabel(double v) {
  char buf[32];
  const double a = std::fabs(v);
  if (a >= 1e6 || (a > 0 && a < 1e-3)) {
    std::snprintf(buf, sizeof buf, "%.2g", v);
  } else if (v == std::floor(v)) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.3g", v);
  }
  return buf;
}

}  // namespace

std::string XmlEscape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string SeriesColour(std::size_t i) {
  static const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
}

std::vector<double> NiceTicks(double lo, double hi, int count) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, count);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  std::vector<double> ticks;  // k x step, not a running sum: no drift off round numbers.
  const auto first = static_cast<long long>(std::ceil(lo / step - 1e-9));
  const auto last = static_cast<long long>(std::floor(hi / step + 1e-9));
  for (long long k = first; k <= last; ++k) {
    const double t = static_cast<double>(k) * step;
    // Shortest decimal of the tick (0.30000000000000004 -> 0.3).
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.12g", t);
    ticks.push_back(std::strtod(buf, nullptr));
  }
  return ticks;
}

std::string LinePlotSvg(const PlotSpec& spec, const std::vector<Series>& series) {
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
  double y_lo = x_lo, y_hi = -x_lo;
  for (const Series& s : series) {
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
    }
  }
  std::string svg =
      StrCat("<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 ", Num(kWidth),
             " ", Num(kHeight), "\" role=\"img\" aria-label=\"", XmlEscape(spec.title),
             "\">\n<text class=\"title\" x=\"", Num(kLeft), "\" y=\"16\">", XmlEscape(spec.title),
             "</text>\n");
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  svg += StrCat("<rect class=\"frame\" x=\"", Num(kLeft), "\" y=\"", Num(kTop), "\" width=\"",
                Num(plot_w), "\" height=\"", Num(plot_h), "\"/>\n");
  if (!std::isfinite(x_lo)) {
    svg += StrCat("<text class=\"nodata\" x=\"", Num(kLeft + plot_w / 2), "\" y=\"",
                  Num(kTop + plot_h / 2), "\">no data</text>\n</svg>\n");
    return svg;
  }
  if (x_hi == x_lo) x_lo -= 0.5, x_hi += 0.5;
  if (y_hi == y_lo) {
    const double pad = y_lo == 0 ? 1 : std::fabs(y_lo) * 0.05;
    y_lo -= pad, y_hi += pad;
  } else {
    const double pad = (y_hi - y_lo) * 0.05;
    y_lo -= pad, y_hi += pad;
  }
  const auto px = [&](double x) { return kLeft + (x - x_lo) / (x_hi - x_lo) * plot_w; };
  const auto py = [&](double y) { return kTop + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h; };
  for (double t : NiceTicks(y_lo, y_hi, 5)) {
    if (t < y_lo || t > y_hi) continue;
    svg += StrCat("<line class=\"grid\" x1=\"", Num(kLeft), "\" x2=\"", Num(kLeft + plot_w),
                  "\" y1=\"", Num(py(t)), "\" y2=\"", Num(py(t)), "\"/><text class=\"ytick\" x=\"",
                  Num(kLeft - 6), "\" y=\"", Num(py(t) + 4), "\">", TickLabel(t), "</text>\n");
  }
  bool integer_x = true;  // Rounds: no tick between two.
  for (const Series& s : series) {
    for (const auto& [x, y] : s.points) integer_x = integer_x && x == std::floor(x);
  }
  const int x_ticks = integer_x ? static_cast<int>(std::clamp(x_hi - x_lo, 1.0, 8.0)) : 8;
  for (double t : NiceTicks(x_lo, x_hi, x_ticks)) {
    if (t < x_lo || t > x_hi || (integer_x && t != std::floor(t))) continue;
    svg += StrCat("<text class=\"xtick\" x=\"", Num(px(t)), "\" y=\"", Num(kTop + plot_h + 16),
                  "\">", TickLabel(t), "</text>\n");
  }
  svg += StrCat("<text class=\"xlabel\" x=\"", Num(kLeft + plot_w / 2), "\" y=\"", Num(kHeight - 8),
                "\">", XmlEscape(spec.x_label), "</text>\n");
  svg += StrCat("<text class=\"ylabel\" transform=\"translate(14 ", Num(kTop + plot_h / 2),
                ") rotate(-90)\">", XmlEscape(spec.y_label), "</text>\n");
  double legend_x = kLeft + 8;
  for (std::size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    if (s.points.empty()) continue;
    const std::string colour = SeriesColour(i);
    std::string points;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      points += StrCat(points.empty() ? "" : " ", Num(px(x)), ",", Num(py(y)));
    }
    svg += StrCat("<g class=\"series\" data-series=\"", i, "\"><polyline class=\"line\" points=\"",
                  points, "\" stroke=\"", colour, "\"/>");
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      svg += StrCat("<circle cx=\"", Num(px(x)), "\" cy=\"", Num(py(y)), "\" r=\"3\" fill=\"",
                    colour, "\"><title>", XmlEscape(s.label), ", ", XmlEscape(spec.x_label), " ",
                    TickLabel(x), ": ", TickLabel(y), "</title></circle>");
    }
    svg +=
        StrCat("<text class=\"legend\" x=\"", Num(legend_x), "\" y=\"", Num(kTop - 8), "\" fill=\"",
               colour, "\" data-series=\"", i, "\">", XmlEscape(s.label), "</text></g>\n");
    legend_x += 10 + 7.0 * static_cast<double>(s.label.size());
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace fedlora::report
