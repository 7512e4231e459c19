// svg_plot.h — line charts as inline SVG: self-contained (no script, font or network needed to
// view them), each point with a tooltip. Torch-free.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace fedlora::report {

struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending.
};

struct PlotSpec {
  std::string title;
  std::string x_label = "round";
  std::string y_label;
};

// Escapes &, <, >, " and ' for XML and HTML text and attributes.
std::string XmlEscape(const std::string& s);

// A chart of every series with points (colour i of a fixed palette for series i, so the same run
// has the same colour in every chart), with axes, "nice" ticks and a legend. Each series is one
// <polyline class="series" data-series="i"> plus a circle per point. Without any point: a chart
// frame saying "no data".
std::string LinePlotSvg(const PlotSpec& spec, const std::vector<Series>& series);

// The palette colour of series i ("#1f77b4", ...).
std::string SeriesColour(std::size_t i);

// About `count` round numbers covering [lo, hi] (1, 2 or 5 times a power of ten apart).
std::vector<double> NiceTicks(double lo, double hi, int count);

}  // namespace fedlora::report
