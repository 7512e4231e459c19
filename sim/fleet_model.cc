#include "sim/fleet_model.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <string_view>
#include <vector>

#include "common/seed.h"
#include "common/fs.h"

namespace fedlora::sim {
namespace {

constexpr std::uint64_t kProfileSalt = 0xF1EE7;
constexpr std::uint64_t kTaskSalt = 0x7A5C;
constexpr std::uint64_t kCheckInSalt = 0xC4EC;

// Uniform in [0, 1) from the top 53 bits: the same on every standard library.
double Uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Standard normal by Box–Muller from Uniform01 (std::normal_distribution differs between
// standard libraries, and profiles must be identical wherever a shard runs).
double StandardNormal(std::mt19937_64& rng) {
  const double u1 = 1.0 - Uniform01(rng);  // (0, 1].
  const double u2 = Uniform01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

Status ParseDistribution(const config::ConfigSection& parent, std::string_view key,
                         Distribution* out) {
  if (!parent.Has(key)) return OkStatus();
  const config::ConfigSection s = parent.Section(key);
  std::string kind = "constant";
  FEDLORA_RETURN_IF_ERROR(s.Read("distribution", &kind));
  Distribution d;
  if (kind == "constant") {
    d.kind = Distribution::Kind::kConstant;
    FEDLORA_RETURN_IF_ERROR(s.Read("value", &d.value));
    if (!s.Has("value")) return InvalidArgument(s.PathOf("value"), " is required");
    if (!(d.value >= 0) || !std::isfinite(d.value)) {
      return InvalidArgument(s.PathOf("value"), " must be finite and >= 0");
    }
  } else if (kind == "uniform") {
    d.kind = Distribution::Kind::kUniform;
    FEDLORA_RETURN_IF_ERROR(s.Read("min", &d.min));
    FEDLORA_RETURN_IF_ERROR(s.Read("max", &d.max));
    if (!s.Has("min") || !s.Has("max")) {
      return InvalidArgument(parent.PathOf(key), ": uniform needs min and max");
    }
    if (!(d.min >= 0) || !(d.max >= d.min) || !std::isfinite(d.max)) {
      return InvalidArgument(parent.PathOf(key), ": uniform needs 0 <= min <= max < inf");
    }
  } else if (kind == "lognormal") {
    d.kind = Distribution::Kind::kLogNormal;
    FEDLORA_RETURN_IF_ERROR(s.Read("median", &d.median));
    FEDLORA_RETURN_IF_ERROR(s.Read("sigma", &d.sigma));
    if (!s.Has("median")) return InvalidArgument(s.PathOf("median"), " is required");
    if (!(d.median > 0) || !std::isfinite(d.median)) {
      return InvalidArgument(s.PathOf("median"), " must be finite and > 0");
    }
    if (!(d.sigma >= 0) || d.sigma > 10) {
      return InvalidArgument(s.PathOf("sigma"), " must be in [0, 10]");
    }
  } else {
    return InvalidArgument(s.PathOf("distribution"), ": unknown distribution '", kind,
                           "' (expected: constant, uniform, lognormal)");
  }
  FEDLORA_RETURN_IF_ERROR(s.Finish());
  *out = d;
  return OkStatus();
}

Distribution Constant(double v) { return {.kind = Distribution::Kind::kConstant, .value = v}; }

std::string_view TrimView(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

// The trimmed cells of one CSV line, as views into it (no quoting: the trace has numbers only).
void SplitCsv(std::string_view line, std::vector<std::string_view>& out) {
  out.clear();
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = line.find(',', start);
    out.push_back(
        TrimView(line.substr(start, comma == std::string_view::npos ? comma : comma - start)));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
}

// A finite number filling the whole cell, or nullopt.
std::optional<double> ParseNumber(std::string_view text) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

enum class TraceColumn {
  kClient,
  kTokensPerSecond,
  kDownlink,
  kUplink,
  kLatency,
  kAvailability,
  kDropout
};
constexpr std::string_view kTraceColumns[] = {"client",      "tokens_per_second", "downlink_mbps",
                                              "uplink_mbps", "latency_ms",        "availability",
                                              "dropout"};

// Applies the trace's rows to `profiles`. One pass over the text without allocating per cell
// (a 100,000-row trace loads in a fraction of a second: bench/fleet_trace); messages name the
// file, line and column.
Status ApplyTrace(const std::string& path, std::vector<ClientProfile>* profiles) {
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, fs::ReadFile(path));
  std::vector<TraceColumn> header;
  std::vector<std::string_view> cells;
  std::size_t line_no = 0, start = 0;
  std::vector<bool> seen(profiles->size(), false);
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + start, end - start);
    start = end + 1;
    ++line_no;
    if (TrimView(line).empty() || TrimView(line).front() == '#') continue;
    SplitCsv(line, cells);
    if (header.empty()) {
      for (const std::string_view cell : cells) {
        const auto known = std::find(std::begin(kTraceColumns), std::end(kTraceColumns), cell);
        if (known == std::end(kTraceColumns)) {
          return InvalidArgument(path, ":", line_no, ": unknown column '", cell,
                                 "' (expected: client, tokens_per_second, downlink_mbps, "
                                 "uplink_mbps, latency_ms, availability, dropout)");
        }
        header.push_back(static_cast<TraceColumn>(known - std::begin(kTraceColumns)));
      }
      if (header.front() != TraceColumn::kClient) {
        return InvalidArgument(path, ":", line_no, ": the first column must be 'client'");
      }
      continue;
    }
    if (cells.size() != header.size()) {
      return InvalidArgument(path, ":", line_no, ": ", cells.size(), " cells, the header has ",
                             header.size());
    }
    const auto where = [&](std::size_t c) {
      return StrCat(path, ":", line_no, ": column ",
                    kTraceColumns[static_cast<std::size_t>(header[c])]);
    };
    const std::optional<double> index = ParseNumber(cells[0]);
    if (!index) return InvalidArgument(where(0), ": '", cells[0], "' is not a finite number");
    if (*index < 0 || *index != std::floor(*index) ||
        *index >= static_cast<double>(profiles->size())) {
      return InvalidArgument(where(0), ": client ", cells[0], " is not in [0, ", profiles->size(),
                             ")");
    }
    const auto i = static_cast<std::size_t>(*index);
    if (seen[i]) return InvalidArgument(where(0), ": client ", i, " is listed twice");
    seen[i] = true;
    ClientProfile& p = (*profiles)[i];
    for (std::size_t c = 1; c < cells.size(); ++c) {
      const std::optional<double> parsed = ParseNumber(cells[c]);
      if (!parsed) return InvalidArgument(where(c), ": '", cells[c], "' is not a finite number");
      const double v = *parsed;
      const TraceColumn col = header[c];
      const bool probability = col == TraceColumn::kAvailability || col == TraceColumn::kDropout;
      if (v < 0 || (probability && v > 1)) {
        return InvalidArgument(where(c), ": ", v,
                               probability ? " is not in [0, 1]" : " is negative");
      }
      const bool rate = col == TraceColumn::kTokensPerSecond || col == TraceColumn::kDownlink ||
                        col == TraceColumn::kUplink;
      if (rate && v == 0) return InvalidArgument(where(c), ": must be > 0");
      switch (col) {
        case TraceColumn::kTokensPerSecond:
          p.tokens_per_second = v;
          break;
        case TraceColumn::kDownlink:
          p.downlink_mbps = v;
          break;
        case TraceColumn::kUplink:
          p.uplink_mbps = v;
          break;
        case TraceColumn::kLatency:
          p.latency_ms = v;
          break;
        case TraceColumn::kAvailability:
          p.availability = v;
          break;
        case TraceColumn::kDropout:
          p.dropout = v;
          break;
        case TraceColumn::kClient:
          return InvalidArgument(where(c), ": 'client' appears twice");
      }
    }
  }
  if (header.empty()) return InvalidArgument(path, ": no header line");
  return OkStatus();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  const std::size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  return v[mid];
}

}  // namespace

double Distribution::Draw(std::mt19937_64& rng) const {
  switch (kind) {
    case Kind::kConstant: return value;
    case Kind::kUniform: return min + (max - min) * Uniform01(rng);
    case Kind::kLogNormal: return median * std::exp(sigma * StandardNormal(rng));
  }
  return value;
}

std::string Distribution::ToString() const {
  char buf[96];
  switch (kind) {
    case Kind::kConstant: std::snprintf(buf, sizeof buf, "%g", value); break;
    case Kind::kUniform: std::snprintf(buf, sizeof buf, "uniform(%g, %g)", min, max); break;
    case Kind::kLogNormal:
      std::snprintf(buf, sizeof buf, "lognormal(median %g, sigma %g)", median, sigma);
      break;
  }
  return buf;
}

Status ParseFleetConfig(const config::ConfigSection& section, FleetConfig* out) {
  FleetConfig c;
  c.tokens_per_second = Constant(20000);
  c.downlink_mbps = Constant(100);
  c.uplink_mbps = Constant(20);
  c.latency_ms = Constant(0);
  FEDLORA_RETURN_IF_ERROR(section.Read("seed", &c.seed));
  FEDLORA_RETURN_IF_ERROR(ParseDistribution(section, "tokens_per_second", &c.tokens_per_second));
  FEDLORA_RETURN_IF_ERROR(ParseDistribution(section, "downlink_mbps", &c.downlink_mbps));
  FEDLORA_RETURN_IF_ERROR(ParseDistribution(section, "uplink_mbps", &c.uplink_mbps));
  FEDLORA_RETURN_IF_ERROR(ParseDistribution(section, "latency_ms", &c.latency_ms));
  FEDLORA_RETURN_IF_ERROR(section.Read("availability", &c.availability));
  FEDLORA_RETURN_IF_ERROR(section.Read("dropout", &c.dropout));
  FEDLORA_RETURN_IF_ERROR(section.Read("deadline_s", &c.deadline_s));
  FEDLORA_RETURN_IF_ERROR(section.ReadPath("trace", &c.trace));
  FEDLORA_RETURN_IF_ERROR(section.Finish());
  if (!(c.availability >= 0 && c.availability <= 1)) {
    return InvalidArgument(section.PathOf("availability"), " must be in [0, 1]");
  }
  if (!(c.dropout >= 0 && c.dropout <= 1)) {
    return InvalidArgument(section.PathOf("dropout"), " must be in [0, 1]");
  }
  if (!(c.deadline_s >= 0) || !std::isfinite(c.deadline_s)) {
    return InvalidArgument(section.PathOf("deadline_s"), " must be finite and >= 0");
  }
  for (const auto& [key, d] : {std::pair{"tokens_per_second", c.tokens_per_second},
                               std::pair{"downlink_mbps", c.downlink_mbps},
                               std::pair{"uplink_mbps", c.uplink_mbps}}) {
    const bool can_be_zero = (d.kind == Distribution::Kind::kConstant && d.value == 0) ||
                             (d.kind == Distribution::Kind::kUniform && d.min == 0);
    if (can_be_zero) return InvalidArgument(section.PathOf(key), " must be > 0 for every client");
  }
  c.enabled = true;
  *out = c;
  return OkStatus();
}

Result<std::unique_ptr<FleetModel>> FleetModel::Make(const FleetConfig& config,
                                                     std::uint32_t num_clients) {
  std::unique_ptr<FleetModel> m(new FleetModel());
  m->config_ = config;
  m->profiles_.resize(num_clients);
  for (std::uint32_t i = 0; i < num_clients; ++i) {
    std::mt19937_64 rng(MixSeed(MixSeed(config.seed, kProfileSalt), i));
    ClientProfile& p = m->profiles_[i];
    p.tokens_per_second = config.tokens_per_second.Draw(rng);
    p.downlink_mbps = config.downlink_mbps.Draw(rng);
    p.uplink_mbps = config.uplink_mbps.Draw(rng);
    p.latency_ms = config.latency_ms.Draw(rng);
    p.availability = config.availability;
    p.dropout = config.dropout;
  }
  if (!config.trace.empty()) FEDLORA_RETURN_IF_ERROR(ApplyTrace(config.trace, &m->profiles_));
  std::vector<double> speeds;
  for (const ClientProfile& p : m->profiles_) speeds.push_back(p.tokens_per_second);
  m->median_tokens_per_second_ = Median(std::move(speeds));
  return m;
}

TaskPlan FleetModel::Plan(std::uint32_t client, std::uint64_t round, std::uint64_t nth,
                          std::uint64_t down_bytes, std::uint64_t tokens, std::uint64_t up_bytes,
                          bool checked_in) const {
  const ClientProfile& p = profiles_.at(client);
  std::mt19937_64 rng(MixSeed(
      MixSeed(MixSeed(config_.seed, kTaskSalt), client),
      MixSeed(round, nth)));
  const double u_online = Uniform01(rng);
  const double u_drop = Uniform01(rng);
  TaskPlan plan;
  const auto seconds = [](std::uint64_t bytes, double mbps) {
    return static_cast<double>(bytes) * 8.0 / (mbps * 1e6);
  };
  plan.download_s = p.latency_ms / 1000.0 + seconds(down_bytes, p.downlink_mbps);
  plan.compute_s = static_cast<double>(tokens) / p.tokens_per_second;
  plan.upload_s = seconds(up_bytes, p.uplink_mbps);
  plan.finish_s = plan.download_s + plan.compute_s + plan.upload_s;
  char buf[160];
  if (!checked_in && u_online >= p.availability) {
    plan.outcome = TaskOutcome::kOffline;
    std::snprintf(buf, sizeof buf, "offline in round %llu (availability %.3g)",
                  static_cast<unsigned long long>(round), p.availability);
    plan.reason = buf;
  } else if (u_drop < p.dropout) {
    plan.outcome = TaskOutcome::kDropped;
    std::snprintf(buf, sizeof buf, "dropped out of round %llu (dropout %.3g)",
                  static_cast<unsigned long long>(round), p.dropout);
    plan.reason = buf;
  } else if (config_.deadline_s > 0 && plan.finish_s > config_.deadline_s) {
    plan.outcome = TaskOutcome::kStraggler;
    std::snprintf(buf, sizeof buf,
                  "would finish round %llu at %.1f s (download %.1f, train %.1f, upload %.1f), "
                  "after the %.1f s deadline",
                  static_cast<unsigned long long>(round), plan.finish_s, plan.download_s,
                  plan.compute_s, plan.upload_s, config_.deadline_s);
    plan.reason = buf;
  }
  return plan;
}

bool FleetModel::Online(std::uint32_t client, std::uint64_t round) const {
  std::mt19937_64 rng(MixSeed(MixSeed(config_.seed, kCheckInSalt), MixSeed(client, round)));
  return Uniform01(rng) < profiles_.at(client).availability;
}

void FleetModel::Record(std::uint64_t round, const TaskPlan& plan) {
  std::lock_guard<std::mutex> lock(mu_);
  records_[round].push_back(plan);
}

RoundTiming FleetModel::CloseRound(std::uint64_t round, std::uint32_t attempts) {
  std::vector<TaskPlan> tasks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = records_.find(round); it != records_.end()) {
      tasks = std::move(it->second);
      records_.erase(it);
    }
  }
  RoundTiming t;
  std::vector<double> finishes;
  for (const TaskPlan& p : tasks) {
    switch (p.outcome) {
      case TaskOutcome::kReported:
        ++t.reported;
        finishes.push_back(p.finish_s);
        t.max_finish_s = std::max(t.max_finish_s, p.finish_s);
        break;
      case TaskOutcome::kOffline: ++t.offline; break;
      case TaskOutcome::kDropped: ++t.dropped; break;
      case TaskOutcome::kStraggler: ++t.stragglers; break;
    }
  }
  t.median_finish_s = Median(std::move(finishes));
  const double deadline = config_.deadline_s;
  // A straggler or dropout keeps the coordinator waiting until the deadline (without one, until
  // the slowest task would have finished).
  double last = t.max_finish_s;
  if (t.stragglers + t.dropped > 0) {
    double slowest = t.max_finish_s;
    for (const TaskPlan& p : tasks) {
      if (p.outcome == TaskOutcome::kDropped || p.outcome == TaskOutcome::kStraggler) {
        slowest = std::max(slowest, p.finish_s);
      }
    }
    last = deadline > 0 ? deadline : slowest;
  }
  t.virtual_seconds = (attempts > 1 ? (attempts - 1) * deadline : 0.0) + last;
  return t;
}

}  // namespace fedlora::sim
