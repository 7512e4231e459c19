// fedlora-report: one self-contained HTML page over one or more runs (their metrics.jsonl).
//   fedlora-report runs/compare/fedavg runs/compare/ffa --out report.html
#include <CLI/CLI.hpp>

#include <cstdio>

#include "common/fs.h"
#include "report/html_report.h"
#include "report/run_metrics.h"
#include "server/round_metrics.h"

int main(int argc, char** argv) {
  CLI::App app{
      "fedlora-report: an HTML report (tables and per-round charts) of fedlora runs; "
      "each RUN_DIR holds a metrics.jsonl (a coordinator's state_dir, a fedlora-sim --out)"};
  std::vector<std::string> dirs;
  std::string out = "report.html";
  app.add_option("RUN_DIR", dirs, "Run directories (several: the same charts overlaid)")
      ->required();
  app.add_option("-o,--out", out, "The HTML file to write");
  CLI11_PARSE(app, argc, argv);
  std::vector<fedlora::report::RunMetrics> runs;
  for (const std::string& dir : dirs) {
    fedlora::Result<fedlora::report::RunMetrics> run = fedlora::report::LoadRun(dir);
    if (!run.ok()) {
      std::fprintf(stderr, "fedlora-report: %s\n", run.status().ToString().c_str());
      return 1;
    }
    runs.push_back(std::move(run).value());
  }
  const std::string html = fedlora::report::RenderReport(runs, fedlora::server::UtcTimestamp());
  if (const fedlora::Status s = fedlora::fs::WriteFileAtomic(out, html); !s.ok()) {
    std::fprintf(stderr, "fedlora-report: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("report of %zu run(s) written to %s\n", runs.size(), out.c_str());
  return 0;
}
