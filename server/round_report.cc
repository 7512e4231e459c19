// round_report.cc — a committed round's metrics record and summary (round_report.h).
#include "server/round_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <vector>

#include "server/rank_policy.h"

namespace fedlora::server {
namespace {

std::string Megabytes(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

std::string Fixed(double v, int digits = 4) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

}  // namespace

RoundMetrics SummariseRound(const RoundRun& run, std::string_view strategy,
                            const std::string& weighting, std::span<const wire::ModuleInfo> modules,
                            Clock::TimePoint now) {
  RoundMetrics m;
  m.round = run.round;
  m.strategy = std::string(strategy);
  m.weighting = weighting;
  m.clients_selected = static_cast<std::uint32_t>(run.tasks.size());
  m.clients_reported = static_cast<std::uint32_t>(run.accepted.size());
  m.clients_failed = static_cast<std::uint32_t>(run.failed.size());
  m.attempts = run.attempt;
  double loss_sum = 0, samples = 0;
  for (const auto& [id, u] : run.accepted) {
    if (const auto it = u.metrics.find("train_loss"); it != u.metrics.end()) {
      loss_sum += it->second * static_cast<double>(u.num_samples);
      samples += static_cast<double>(u.num_samples);
    }
    if (const auto it = u.metrics.find(wire::kDpSgdEpsilonMetric);
        it != u.metrics.end() && std::isfinite(it->second) && it->second >= 0) {
      m.dp_sgd_epsilon[id] = it->second;
    }
  }
  if (samples > 0) m.train_loss = loss_sum / samples;
  double eval_sum = 0, accuracy_sum = 0, accuracy_n = 0, exact_sum = 0, exact_n = 0;
  std::map<std::string, double, std::less<>> class_examples;
  for (const auto& [id, r] : run.eval_results) {
    eval_sum += r.loss * static_cast<double>(r.num_tokens);
    m.eval_tokens += r.num_tokens;
    m.eval_examples += r.num_examples;
    // accuracy and exact_match were checked to lie in [0, 1] on arrival (CheckEvalResult).
    if (const auto it = r.metrics.find("accuracy"); it != r.metrics.end()) {
      accuracy_sum += it->second * static_cast<double>(r.num_examples);
      accuracy_n += static_cast<double>(r.num_examples);
    }
    for (const auto& [name, value] : r.metrics) {  // "class_<c>_examples", checked on arrival.
      if (name.starts_with("class_") && name.ends_with("_examples")) class_examples[name] += value;
    }
    if (const auto it = r.metrics.find("exact_match"); it != r.metrics.end()) {
      exact_sum += it->second;
      exact_n += 1;
    }
  }
  m.eval_clients = static_cast<std::uint32_t>(run.eval_results.size());
  if (m.eval_tokens > 0) m.eval_loss = eval_sum / static_cast<double>(m.eval_tokens);
  if (accuracy_n > 0) m.eval_accuracy = accuracy_sum / accuracy_n;
  double class_total = 0, class_max = 0;
  for (const auto& [name, n] : class_examples) {
    class_total += n;
    class_max = std::max(class_max, n);
  }
  if (accuracy_n > 0 && class_total > 0) m.eval_majority_accuracy = class_max / class_total;
  if (exact_n > 0) m.eval_exact_match = exact_sum / exact_n;
  m.bytes_up = run.bytes_up;
  m.bytes_down = run.bytes_down;
  m.params_up = run.params_up;
  m.params_down = run.params_down;
  m.correction_params_down = run.correction_params_down;
  m.correction_bytes_down = run.correction_bytes_down;
  m.eval_bytes_up = run.eval_bytes_up;
  m.eval_bytes_down = run.eval_bytes_down;
  m.seconds = std::chrono::duration<double>(now - run.started).count();
  m.weights = run.report.weights;
  m.strategy_metrics = run.report.metrics;
  for (const auto& [id, task] : run.tasks) {
    m.ranks[id] = TopRank(task.plan, task.lora);
    m.depths[id] = Depth(task.plan, modules);
  }
  m.base_version = run.candidate->corrections.latest_version();
  m.examples_capped = run.examples_capped;
  std::vector<double> norms;
  for (const auto& [id, n] : run.update_norms) {
    if (run.accepted.contains(id)) norms.push_back(n);  // Not those of revoked clients.
  }
  if (!norms.empty()) {
    std::sort(norms.begin(), norms.end());
    const std::size_t mid = norms.size() / 2;
    m.update_norm_median = norms.size() % 2 == 1 ? norms[mid] : 0.5 * (norms[mid - 1] + norms[mid]);
    m.update_norm_max = norms.back();
  }
  m.norm_clipped = run.norm_clipped;
  m.norm_rejected = run.norm_rejected;
  return m;
}

std::string NormBoundWarning(const RoundMetrics& m, double norm_bound) {
  // Uploads that reached the bound: clipped ones were aggregated, rejected ones were not.
  const std::size_t bounded = m.norm_clipped.size() + m.norm_rejected.size();
  const std::size_t uploads = m.clients_reported + m.norm_rejected.size();
  if (bounded <= 1 || 2 * bounded <= uploads) return std::string();
  return StrCat("round ", m.round, ": ", bounded, " of ", uploads,
                " uploads exceeded robust.norm_bound ", norm_bound, " (median change ",
                m.update_norm_median.value_or(0),
                "): the bound looks too small for this model and training; see update_norm_max in "
                "metrics.jsonl");
}

std::string RoundSummary(const RoundMetrics& m, std::uint64_t rounds) {
  std::string summary = m.round == 0
                            ? std::string("round 0 (initial adapter)")
                            : StrCat("round ", m.round, "/", rounds, ": ", m.clients_reported, "/",
                                     m.clients_selected, " clients reported");
  if (m.train_loss) summary += StrCat(", train_loss ", Fixed(*m.train_loss));
  if (m.eval_loss) {
    summary += StrCat(", eval_loss ", Fixed(*m.eval_loss), " (ppl ",
                      Fixed(std::exp(*m.eval_loss), 2), ", ", m.eval_clients, " clients)");
  }
  if (m.eval_accuracy) summary += StrCat(", accuracy ", Fixed(*m.eval_accuracy));
  if (m.eval_majority_accuracy) {
    summary += StrCat(" (majority class ", Fixed(*m.eval_majority_accuracy), ")");
  }
  if (m.eval_exact_match) summary += StrCat(", exact_match ", Fixed(*m.eval_exact_match));
  summary += StrCat(", ", Fixed(m.seconds, 1), " s, up ", Megabytes(m.bytes_up), ", down ",
                    Megabytes(m.bytes_down));
  return summary;
}

}  // namespace fedlora::server
