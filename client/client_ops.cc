#include "client/client_ops.h"

#include <nlohmann/json.hpp>

#include "common/ops/prometheus_text.h"

namespace fedlora::client {

std::string ClientMetricsText(const std::string& name, const ClientSessionCounters& c,
                              const std::optional<TrainingProgressBoard::Entry>& training) {
  ops::PrometheusText t;
  const auto n = [](std::uint64_t v) { return static_cast<double>(v); };
  t.Gauge("fedlora_client_info", "This client (value 1).", 1, {{"name", name}});
  t.Gauge("fedlora_client_connected", "1 while the coordinator has welcomed this connection.",
          c.connected ? 1 : 0);
  t.Counter("fedlora_client_connections_total", "Connections the coordinator accepted.",
            n(c.welcomes));
  t.Gauge("fedlora_client_round", "Round of the last task received.", n(c.last_round));
  t.Counter("fedlora_client_tasks_received_total", "Round tasks received.", n(c.tasks_received));
  t.Counter("fedlora_client_tasks_refused_total",
            "Round tasks refused by this client's privacy policy.", n(c.tasks_refused));
  t.Counter("fedlora_client_tasks_declined_total", "Round tasks declined (TASK_DECLINED).",
            n(c.tasks_declined));
  t.Counter("fedlora_client_tasks_failed_total", "Training or evaluation failures.",
            n(c.tasks_failed));
  t.Counter("fedlora_client_updates_sent_total", "Trained updates uploaded.", n(c.updates_sent));
  t.Counter("fedlora_client_updates_acknowledged_total", "Uploads the coordinator acknowledged.",
            n(c.updates_acknowledged));
  t.Counter("fedlora_client_evaluations_total", "Evaluation results sent.", n(c.evaluations));
  t.Counter("fedlora_client_coordinator_errors_total", "Errors the coordinator sent this client.",
            n(c.errors_from_coordinator));
  t.Counter("fedlora_client_messages_received_total", "Messages received.", n(c.messages_in));
  t.Counter("fedlora_client_received_bytes_total", "Bytes received.", n(c.bytes_in));
  t.Counter("fedlora_client_sent_bytes_total", "Bytes sent.", n(c.bytes_out));
  t.Gauge("fedlora_client_train_loss", "Train loss of the last update sent (NaN: none yet).",
          c.last_train_loss.value_or(std::nan("")));
  if (training) {
    const StepProgress& p = training->step;
    t.Gauge("fedlora_client_training_round", "Round of the latest training.", n(training->round));
    t.Gauge("fedlora_client_training_step", "Steps done in the latest training.", n(p.step));
    t.Gauge("fedlora_client_training_steps", "Steps the latest training takes.", n(p.total_steps));
    t.Gauge("fedlora_client_training_tokens_per_second", "Throughput of the latest training.",
            p.seconds > 0 ? static_cast<double>(p.tokens) / p.seconds : 0);
  }
  return t.str();
}

std::string ClientStatusJson(const ClientConfig& config, const ClientSessionCounters& c,
                             const std::optional<TrainingProgressBoard::Entry>& training) {
  nlohmann::json j;
  j["name"] = config.name;
  j["coordinator"] = config.coordinator;
  j["connected"] = c.connected;
  j["last_round"] = c.last_round;
  j["last_train_loss"] = c.last_train_loss ? nlohmann::json(*c.last_train_loss) : nlohmann::json();
  j["tasks_received"] = c.tasks_received;
  j["updates_sent"] = c.updates_sent;
  j["updates_acknowledged"] = c.updates_acknowledged;
  j["tasks_declined"] = c.tasks_declined;
  j["tasks_failed"] = c.tasks_failed;
  j["tasks_refused"] = c.tasks_refused;
  j["evaluations"] = c.evaluations;
  j["training"] = nullptr;
  if (training) {
    const StepProgress& p = training->step;
    j["training"] = {
        {"round", training->round},
        {"step", p.step},
        {"total_steps", p.total_steps},
        {"loss", p.loss},
        {"tokens_per_s", p.seconds > 0 ? static_cast<double>(p.tokens) / p.seconds : 0},
        {"seconds", p.seconds}};
  }
  return j.dump() + "\n";
}

Result<std::unique_ptr<ops::OpsServer>> StartClientOps(const ClientConfig& config,
                                                       const ClientSession& session,
                                                       const TrainingProgressBoard* board) {
  const auto latest = [board] {
    return board != nullptr ? board->Latest() : std::optional<TrainingProgressBoard::Entry>();
  };
  ops::OpsServer::Handlers h;
  h.metrics = [&session, name = config.name, latest] {
    return ClientMetricsText(name, session.counters(), latest());
  };
  h.status_json = [&session, config, latest] {
    return ClientStatusJson(config, session.counters(), latest());
  };
  h.health = [] { return OkStatus(); };
  h.ready = [&session, coordinator = config.coordinator] {
    return session.counters().connected
               ? OkStatus()
               : Unavailable("not connected to the coordinator at ", coordinator);
  };
  return ops::OpsServer::Start(config.ops, StrCat("client '", config.name, "'"), std::move(h));
}

}  // namespace fedlora::client
