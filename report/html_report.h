// html_report.h — one self-contained HTML page over one or more runs' metrics.jsonl: a table
// comparing them and line charts per round (eval and train loss, accuracy and exact match where
// present, bytes up and down, clients reported and failed, round time, the virtual clock of a
// simulation, the privacy budget, memory). Inline CSS and SVG and a few lines of inline script
// (click a legend entry to hide its run); nothing is fetched to view it. Torch-free.
#pragma once

#include <string>
#include <vector>

#include "report/run_metrics.h"

namespace fedlora::report {

// The page. Charts only for fields some run has; runs keep their colour in every chart.
// `generated` is printed in the header (e.g. a UTC timestamp).
std::string RenderReport(const std::vector<RunMetrics>& runs, const std::string& generated);

}  // namespace fedlora::report
