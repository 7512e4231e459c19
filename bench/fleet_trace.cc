// bench/fleet_trace — loading a virtual fleet's trace file at cross-device scale (issue 15: a
// 100,000-row fleet.trace loads in under a second).
//
// Writes a trace of `--rows` clients (every column), then times FleetModel::Make with it — the
// distributions drawn for every client, the file read, every cell checked and applied — against
// a baseline measured in the same run: reading the same file and converting every cell with
// strtod, nothing checked. Prints one line:
//   rows=<n> bytes=<b> load_s=<x> baseline_s=<y> ratio=<x/y>
#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/fs.h"
#include "common/status.h"
#include "sim/fleet_model.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Sum of every number in the CSV (so the work cannot be optimised away).
double ParseAll(const std::string& text) {
  double sum = 0;
  const char* p = text.c_str();
  const char* end = p + text.size();
  p = static_cast<const char*>(std::memchr(p, '\n', text.size())) + 1;  // Past the header.
  while (p < end) {
    char* next = nullptr;
    sum += std::strtod(p, &next);
    p = next + 1;  // Past ',' or '\n'.
  }
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace fedlora;
  std::uint32_t rows = 100000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--rows") rows = static_cast<std::uint32_t>(std::atol(argv[i + 1]));
  }
  const std::string path = StrCat("/tmp/fedlora_bench_trace_", getpid(), ".csv");
  std::string text =
      "client,tokens_per_second,downlink_mbps,uplink_mbps,latency_ms,availability,dropout\n";
  for (std::uint32_t i = 0; i < rows; ++i) {
    text += StrCat(i, ",", 200 + i % 400, ".5,", 5 + i % 50, ".25,", 1 + i % 20, ".5,",
                   20 + i % 180, ",0.", 5 + i % 5, ",0.0", i % 10, "\n");
  }
  if (Status s = fs::WriteFileAtomic(path, text); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  sim::FleetConfig config;
  config.enabled = true;
  config.trace = path;
  const Clock::time_point a = Clock::now();
  Result<std::unique_ptr<sim::FleetModel>> model = sim::FleetModel::Make(config, rows);
  const Clock::time_point b = Clock::now();
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  Result<std::string> read = fs::ReadFile(path);
  const double checksum = read.ok() ? ParseAll(*read) : 0;
  const Clock::time_point c = Clock::now();
  std::remove(path.c_str());
  const double load = Seconds(a, b), baseline = Seconds(b, c);
  std::printf("rows=%u bytes=%zu load_s=%.3f baseline_s=%.3f ratio=%.2f (checksum %.0f)\n", rows,
              text.size(), load, baseline, load / baseline, checksum);
  return 0;
}
