#include "server/round_metrics.h"

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>

namespace fedlora::server {

std::string ToJsonLine(const RoundMetrics& m) {
  nlohmann::ordered_json j;
  const auto opt = [](const std::optional<double>& v) {
    return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
  };
  j["round"] = m.round;
  j["strategy"] = m.strategy;
  j["weighting"] = m.weighting;
  j["clients_selected"] = m.clients_selected;
  j["clients_reported"] = m.clients_reported;
  j["clients_failed"] = m.clients_failed;
  j["attempts"] = m.attempts;
  j["train_loss"] = opt(m.train_loss);
  j["eval_loss"] = opt(m.eval_loss);
  j["eval_clients"] = m.eval_clients;
  j["eval_tokens"] = m.eval_tokens;
  j["eval_examples"] = m.eval_examples;
  j["eval_accuracy"] = opt(m.eval_accuracy);
  j["eval_majority_accuracy"] = opt(m.eval_majority_accuracy);
  j["eval_exact_match"] = opt(m.eval_exact_match);
  j["bytes_up"] = m.bytes_up;
  j["bytes_down"] = m.bytes_down;
  j["params_up"] = m.params_up;
  j["params_down"] = m.params_down;
  j["correction_params_down"] = m.correction_params_down;
  j["correction_bytes_down"] = m.correction_bytes_down;
  j["eval_bytes_up"] = m.eval_bytes_up;
  j["eval_bytes_down"] = m.eval_bytes_down;
  j["seconds"] = m.seconds;
  j["weights"] = nlohmann::ordered_json::object();
  for (const auto& [id, w] : m.weights) j["weights"][id] = w;
  j["examples_capped"] = nlohmann::ordered_json::object();
  for (const auto& [id, n] : m.examples_capped) j["examples_capped"][id] = n;
  j["update_norm_median"] = opt(m.update_norm_median);
  j["update_norm_max"] = opt(m.update_norm_max);
  j["norm_clipped"] = nlohmann::ordered_json::object();
  for (const auto& [id, n] : m.norm_clipped) j["norm_clipped"][id] = n;
  j["norm_rejected"] = nlohmann::ordered_json::object();
  for (const auto& [id, n] : m.norm_rejected) j["norm_rejected"][id] = n;
  j["dp_sgd_epsilon"] = nlohmann::ordered_json::object();
  for (const auto& [id, e] : m.dp_sgd_epsilon) j["dp_sgd_epsilon"][id] = e;
  j["ranks"] = nlohmann::ordered_json::object();
  for (const auto& [id, r] : m.ranks) j["ranks"][id] = r;
  j["depths"] = nlohmann::ordered_json::object();
  for (const auto& [id, d] : m.depths) j["depths"][id] = d;
  j["base_version"] = m.base_version;
  j["refusals"] = nlohmann::ordered_json::object();
  for (const auto& [code, n] : m.refusals) j["refusals"][code] = n;
  j["task_refusals"] = nlohmann::ordered_json::object();
  for (const auto& [code, n] : m.task_refusals) j["task_refusals"][code] = n;
  j["clients_revoked"] = m.clients_revoked;
  j["uploads_dropped"] = m.uploads_dropped;
  j["handshakes_denied"] = m.handshakes_denied;
  j["strategy_metrics"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : m.strategy_metrics) j["strategy_metrics"][k] = v;
  if (const std::optional<RoundPrivacy>& p = m.privacy) {
    j["privacy"] = {
        {"epsilon", p->epsilon},
        {"delta", p->delta},
        {"target_epsilon", p->target_epsilon},
        {"noise_multiplier", p->noise_multiplier},
        {"update_noise_multiplier", p->update_noise_multiplier},
        {"clip", p->clip},
        {"clip_next", p->clip_next},
        {"within_clip", p->within_clip ? nlohmann::ordered_json(*p->within_clip)
                                       : nlohmann::ordered_json(nullptr)},
        {"sample_rate", p->sample_rate},
        {"sampled", p->sampled},
        {"population", p->population},
        {"denominator", p->denominator},
        {"clipped", p->clipped},
        {"uploads", p->uploads},
        {"noise_share_clients", p->noise_share_clients},
        {"clipped_fraction", p->uploads > 0 ? static_cast<double>(p->clipped) / p->uploads : 0.0}};
  } else {
    j["privacy"] = nullptr;
  }
  j["timestamp"] = m.timestamp;
  if (!m.simulation.empty()) {
    j["simulation"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : m.simulation) j["simulation"][k] = v;
  }
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string UtcTimestamp() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace fedlora::server
