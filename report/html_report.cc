#include "report/html_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/status.h"
#include "report/svg_plot.h"

namespace fedlora::report {

namespace {

struct Chart {
  const char* field;
  const char* title;
  const char* y_label;
  double scale = 1;           // Values are multiplied by this (bytes -> MB).
  bool from_round_1 = false;  // Round 0 (the initial adapter) has nothing to show.
};

constexpr Chart kCharts[] = {
    {"eval_loss", "Eval loss (nats/token)", "loss"},
    {"train_loss", "Train loss (reporters' mean)", "loss", 1, true},
    {"eval_accuracy", "Eval accuracy", "accuracy"},
    {"eval_exact_match", "Exact match", "exact match"},
    {"bytes_up", "Bytes up per round (MB)", "MB", 1e-6, true},
    {"bytes_down", "Bytes down per round (MB)", "MB", 1e-6, true},
    {"clients_reported", "Clients reported", "clients", 1, true},
    {"clients_failed", "Clients failed", "clients", 1, true},
    {"seconds", "Round time (s, this machine)", "seconds", 1, true},
    {"simulation.virtual_round_s", "Virtual round time (s, simulated fleet)", "seconds", 1, true},
    {"simulation.virtual_elapsed_s", "Virtual time elapsed (s)", "seconds", 1, true},
    {"privacy.epsilon", "Privacy budget spent (epsilon)", "epsilon", 1, true},
    {"simulation.peak_rss_mb", "Peak memory (MB)", "MB", 1, true},
};

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string Cell(const std::optional<double>& v, int digits) {
  return v && std::isfinite(*v) ? Fixed(*v, digits) : std::string("&ndash;");
}

std::string Table(const std::vector<RunMetrics>& runs) {
  std::string html =
      "<table class=\"runs\">\n<thead><tr><th>run</th><th>strategy</th><th>rounds</th>"
      "<th>eval loss, round 0</th><th>final eval loss</th><th>final perplexity</th>"
      "<th>best eval loss</th><th>final accuracy</th><th>MB up</th><th>MB down</th>"
      "<th>s / round</th><th>reported / selected</th></tr></thead>\n<tbody>\n";
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const RunMetrics& r = runs[i];
    const std::vector<std::pair<double, double>> eval = r.Points("eval_loss");
    std::optional<double> first, final, best;
    if (!eval.empty()) {
      first = eval.front().second, final = eval.back().second;
      best = std::min_element(eval.begin(), eval.end(), [](const auto& a, const auto& b) {
               return a.second < b.second;
             })->second;
    }
    const std::size_t trained = static_cast<std::size_t>(
        std::count_if(r.rounds.begin(), r.rounds.end(), [](std::uint64_t x) { return x >= 1; }));
    const double per_round = trained > 0 ? r.Total("seconds") / static_cast<double>(trained) : NAN;
    std::optional<double> accuracy;
    if (const auto points = r.Points("eval_accuracy"); !points.empty()) {
      accuracy = points.back().second;
    }
    html += StrCat(
        "<tr><td><span class=\"swatch\" style=\"background:", SeriesColour(i), "\"></span>",
        XmlEscape(r.label), "</td><td>", XmlEscape(r.strategy), "</td><td>", trained, "</td><td>",
        Cell(first, 4), "</td><td>", Cell(final, 4), "</td><td>",
        final ? Fixed(std::exp(*final), 1) : std::string("&ndash;"), "</td><td>", Cell(best, 4),
        "</td><td>", Cell(accuracy, 3), "</td><td>", Fixed(r.Total("bytes_up") / 1e6, 2),
        "</td><td>", Fixed(r.Total("bytes_down") / 1e6, 2), "</td><td>",
        Cell(std::isfinite(per_round) ? std::optional<double>(per_round) : std::optional<double>(),
             1),
        "</td><td>", static_cast<std::uint64_t>(r.Total("clients_reported")), " / ",
        static_cast<std::uint64_t>(r.Total("clients_selected")), "</td></tr>\n");
  }
  return html + "</tbody></table>\n";
}

constexpr const char* kStyle = R"(
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; }
.meta { color: #666; margin-bottom: 16px; }
table.runs { border-collapse: collapse; margin-bottom: 20px; }
table.runs th, table.runs td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
table.runs th:first-child, table.runs td:first-child, table.runs td:nth-child(2) { text-align: left; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
svg.plot { width: 100%; height: auto; background: #fff; border: 1px solid #eee; }
svg .title { font-size: 14px; font-weight: 600; }
svg .frame { fill: none; stroke: #999; }
svg .grid { stroke: #eee; }
svg .ytick { font-size: 11px; text-anchor: end; fill: #555; }
svg .xtick, svg .xlabel, svg .nodata { font-size: 11px; text-anchor: middle; fill: #555; }
svg .ylabel { font-size: 11px; text-anchor: middle; fill: #555; }
svg .line { fill: none; stroke-width: 2; }
svg .legend { font-size: 11px; cursor: pointer; }
svg .hidden .line, svg .hidden circle { display: none; }
svg .hidden .legend { opacity: 0.4; }
)";

// Clicking a run's legend entry hides (or shows) it in every chart; the flag on <body> tells a
// headless check that the script ran to its end.
constexpr const char* kScript = R"(
document.querySelectorAll('svg .legend').forEach(function (label) {
  label.addEventListener('click', function () {
    var id = label.getAttribute('data-series');
    document.querySelectorAll('svg g.series[data-series="' + id + '"]').forEach(function (g) {
      g.classList.toggle('hidden');
    });
  });
});
document.body.setAttribute('data-ready', String(document.querySelectorAll('svg.plot').length));
)";

}  // namespace

std::string RenderReport(const std::vector<RunMetrics>& runs, const std::string& generated) {
  std::string names;
  for (const RunMetrics& r : runs) names += StrCat(names.empty() ? "" : ", ", r.dir);
  std::string html = StrCat(
      "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>fedlora "
      "report: ",
      XmlEscape(runs.size() == 1 ? runs.front().label : StrCat(runs.size(), " runs")),
      "</title>\n<style>", kStyle,
      "</style>\n</head>\n<body>\n<h1>fedlora report</h1>\n"
      "<div class=\"meta\">",
      XmlEscape(names), " &middot; generated ", XmlEscape(generated), "</div>\n");
  html += Table(runs);
  html += "<div class=\"charts\">\n";
  for (const Chart& chart : kCharts) {
    std::vector<Series> series;
    bool any = false;
    for (const RunMetrics& r : runs) {
      Series s{r.label, {}};
      for (const auto& [x, y] : r.Points(chart.field)) {
        if (chart.from_round_1 && x < 1) continue;
        s.points.emplace_back(x, y * chart.scale);
      }
      any = any || !s.points.empty();
      series.push_back(std::move(s));
    }
    if (!any) continue;
    html += StrCat("<figure data-field=\"", chart.field, "\">",
                   LinePlotSvg({chart.title, "round", chart.y_label}, series), "</figure>\n");
  }
  html += StrCat("</div>\n<script>", kScript, "</script>\n</body>\n</html>\n");
  return html;
}

}  // namespace fedlora::report
