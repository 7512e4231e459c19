// coordinator_ops.cc — the coordinator's ops endpoint (common/ops/ops_server.h): Prometheus
// metrics from CoordinatorCounters, /status from the status the loop publishes, and the probes.
// The endpoint's threads read only what counters_mu_ guards and the loop's atomics.
#include <nlohmann/json.hpp>

#include "common/log.h"
#include "server/coordinator_impl.h"

namespace fedlora::server {

namespace {

using std::chrono::steady_clock;

// /healthz fails when the loop has not turned for this long (it wakes at least every second).
constexpr std::chrono::seconds kStuckAfter{60};
// An ops thread waits this long at most for the loop to publish a fresh status.
constexpr std::chrono::seconds kStatusWait{2};

const char* PhaseName(RoundPhase phase) {
  switch (phase) {
    case RoundPhase::kWaiting:
      return "waiting";
    case RoundPhase::kInit:
      return "init";
    case RoundPhase::kFit:
      return "fit";
    case RoundPhase::kEval:
      return "eval";
    case RoundPhase::kDone:
      return "done";
  }
  return "unknown";
}

constexpr const char* kPhases[] = {"starting", "waiting", "init",    "fit",
                                   "eval",     "done",    "stopped", "failed"};

double Seconds(steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

Status Coordinator::Impl::StartOps() {
  PublishStatus();  // "starting", with the round to resume at.
  if (config_.ops.listen.empty()) return OkStatus();
  ops::OpsServer::Handlers handlers;
  handlers.metrics = [this] { return MetricsText(); };
  handlers.status_json = [this] { return StatusJson(); };
  handlers.health = [this] { return Healthy(); };
  handlers.ready = [this] { return Ready(); };
  Result<std::unique_ptr<ops::OpsServer>> server =
      ops::OpsServer::Start(config_.ops, "coordinator", std::move(handlers));
  if (!server.ok()) return server.status();
  ops_ = std::move(server).value();
  return OkStatus();
}

CoordinatorStatus Coordinator::Impl::status() {
  std::unique_lock<std::mutex> lock(counters_mu_);
  if (!running_.load()) return status_;
  const std::uint64_t generation = status_generation_;
  status_wanted_.store(true);
  wake_.Notify();
  status_published_.wait_for(lock, kStatusWait,
                             [&] { return status_generation_ != generation || !running_.load(); });
  return status_;
}

void Coordinator::Impl::PublishStatus() {
  CoordinatorStatus s;
  s.rounds = config_.rounds;
  if (committed_) s.committed_round = *committed_;
  const RoundRun& run = round_.run();
  const RoundPhase phase = round_.phase();
  if (!fatal_.ok()) {
    s.phase = "failed";
    s.error = fatal_.ToString();
  } else if (!running_.load() && phase != RoundPhase::kDone) {
    s.phase = loop_turned_ns_.load() == 0 ? "starting" : "stopped";
  } else {
    s.phase = PhaseName(phase);
  }
  const Clock::TimePoint clock_now = clock_.Now();
  const bool in_round =
      phase == RoundPhase::kInit || phase == RoundPhase::kFit || phase == RoundPhase::kEval;
  s.round = in_round ? run.round : committed_ ? *committed_ + 1 : 0;
  if (phase == RoundPhase::kFit || phase == RoundPhase::kInit) {
    s.attempt = run.attempt;
    s.deadline_s = std::max(0.0, Seconds(run.deadline - clock_now));
  } else if (phase == RoundPhase::kEval) {
    s.deadline_s = std::max(0.0, Seconds(run.eval_deadline - clock_now));
  }
  s.clients.reserve(clients_.size());
  for (const auto& [id, client] : clients_.all()) {
    CoordinatorStatus::Client c;
    c.id = id;
    c.last_seen_s = std::max(0.0, Seconds(clock_now - client.last_heard));
    c.device = client.hello.capabilities.device;
    c.state = !in_round                           ? "idle"
              : run.eval_outstanding.contains(id) ? "evaluating"
              : run.eval_results.contains(id)     ? "evaluated"
              : run.accepted.contains(id)         ? "reported"
              : run.outstanding.contains(id)      ? "training"
              : run.failed.contains(id)           ? "failed"
                                                  : "idle";
    s.clients.push_back(std::move(c));
  }
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    status_ = std::move(s);
    ++status_generation_;
  }
  status_published_.notify_all();
}

Status Coordinator::Impl::Healthy() const {
  const std::int64_t turned = loop_turned_ns_.load();
  if (turned == 0 || !running_.load()) return OkStatus();  // Starting, or finishing.
  const auto since = steady_clock::now().time_since_epoch() - steady_clock::duration(turned);
  if (since > kStuckAfter) {
    return Unavailable("the coordinator's loop has not turned for ",
                       std::chrono::duration_cast<std::chrono::seconds>(since).count(), " s");
  }
  return OkStatus();
}

Status Coordinator::Impl::Ready() {
  const CoordinatorStatus s = status();
  if (s.phase == "starting") return Unavailable("starting");
  if (s.phase == "failed") return Unavailable("failed: ", s.error);
  if (s.phase == "stopped") return Unavailable("stopped");
  if (s.phase == "done") return Unavailable("run complete: all ", s.rounds, " rounds committed");
  return OkStatus();
}

std::string Coordinator::Impl::MetricsText() {
  const CoordinatorCounters c = counters();
  const CoordinatorStatus s = status();
  ops::PrometheusText t;
  t.Gauge("fedlora_coordinator_info", "The coordinator's strategy (value 1).", 1,
          {{"strategy", std::string(strategy_->name())}});
  t.Gauge("fedlora_rounds_configured", "Rounds the run is configured for.", s.rounds);
  t.Counter("fedlora_rounds_committed_total", "Rounds committed by this process.",
            static_cast<double>(c.rounds_committed));
  t.Gauge("fedlora_committed_round", "The last committed round (-1: none yet).",
          c.has_committed ? static_cast<double>(c.committed_round) : -1.0);
  t.Gauge("fedlora_round", "The round in progress, else the next to run.",
          static_cast<double>(s.round));
  for (const char* phase : kPhases) {
    t.Gauge("fedlora_round_phase", "1 for the coordinator's current phase.",
            s.phase == phase ? 1 : 0, {{"phase", phase}});
  }
  t.Gauge("fedlora_round_attempt", "Selection attempt of the round's fit phase.", s.attempt);
  t.Gauge("fedlora_round_deadline_seconds", "Seconds until the current phase's deadline.",
          s.deadline_s.value_or(0));
  t.Gauge("fedlora_clients_connected", "Live client sessions.",
          static_cast<double>(s.clients.size()));
  t.Counter("fedlora_clients_selected_total", "Clients sent a round task, over committed rounds.",
            static_cast<double>(c.clients_selected));
  t.Counter("fedlora_clients_reported_total", "Accepted updates aggregated, over committed rounds.",
            static_cast<double>(c.clients_reported));
  t.Counter("fedlora_clients_failed_total",
            "Selected clients that dropped, erred or timed out, over committed rounds.",
            static_cast<double>(c.clients_failed));
  t.Counter("fedlora_clients_admitted_total", "Hellos accepted.",
            static_cast<double>(c.clients_admitted));
  t.Counter("fedlora_clients_expired_total", "Sessions dropped for silence.",
            static_cast<double>(c.clients_expired));
  t.Counter("fedlora_clients_revoked_total", "Sessions closed because their key was revoked.",
            static_cast<double>(c.clients_revoked));
  t.Counter("fedlora_uploads_accepted_total", "Updates accepted into a round.",
            static_cast<double>(c.updates_accepted));
  t.Counter("fedlora_uploads_rejected_total", "Updates refused (any reason).",
            static_cast<double>(c.updates_rejected));
  t.Counter("fedlora_uploads_dropped_total", "Accepted updates taken out (revoked keys).",
            static_cast<double>(c.uploads_dropped));
  t.DeclareCounter("fedlora_messages_refused_total",
                   "Messages refused with a typed error, by code.");
  for (const auto& [code, n] : c.refused) {
    t.Counter("fedlora_messages_refused_total", "Messages refused with a typed error, by code.",
              static_cast<double>(n), {{"code", code}});
  }
  t.DeclareCounter("fedlora_tasks_refused_total", "Tasks clients refused, by the code they gave.");
  for (const auto& [code, n] : c.tasks_refused) {
    t.Counter("fedlora_tasks_refused_total", "Tasks clients refused, by the code they gave.",
              static_cast<double>(n), {{"code", code}});
  }
  t.Counter("fedlora_messages_received_total", "Messages received.",
            static_cast<double>(c.messages_in));
  t.Counter("fedlora_protocol_errors_total", "Malformed or unacceptable messages.",
            static_cast<double>(c.protocol_errors));
  t.Counter("fedlora_handshakes_denied_total", "CURVE handshakes refused (keys not enrolled).",
            static_cast<double>(c.handshakes_denied));
  t.Counter("fedlora_received_bytes_total", "Bytes of every message received.",
            static_cast<double>(c.bytes_in));
  t.Counter("fedlora_sent_bytes_total", "Bytes of every message sent.",
            static_cast<double>(c.bytes_out));
  t.AddHistogram("fedlora_round_duration_seconds", "From a round's first task to its commit.",
                 c.round_seconds);
  t.AddHistogram("fedlora_aggregation_duration_seconds", "Folding a round's uploads.",
                 c.aggregation_seconds);
  t.Gauge("fedlora_eval_loss", "Per-token eval loss of the last committed round (NaN: none).",
          c.eval_loss.value_or(std::nan("")));
  t.Gauge("fedlora_train_loss", "Mean train loss of the last committed round (NaN: none).",
          c.train_loss.value_or(std::nan("")));
  if (c.privacy_epsilon) {
    t.Gauge("fedlora_privacy_epsilon_spent", "Differential privacy: epsilon spent so far.",
            *c.privacy_epsilon);
    t.Gauge("fedlora_privacy_epsilon_target", "Differential privacy: the budget (0: none).",
            c.privacy_target_epsilon);
  }
  t.Counter("fedlora_key_reloads_total", "Enrolment list re-read and changed.",
            static_cast<double>(c.key_reloads));
  return t.str();
}

std::string Coordinator::Impl::StatusJson() {
  const CoordinatorStatus s = status();
  nlohmann::json j;
  j["phase"] = s.phase;
  j["round"] = s.round;
  j["rounds"] = s.rounds;
  j["committed_round"] = s.committed_round ? nlohmann::json(*s.committed_round) : nlohmann::json();
  j["attempt"] = s.attempt;
  j["deadline_s"] = s.deadline_s ? nlohmann::json(*s.deadline_s) : nlohmann::json();
  if (!s.error.empty()) j["error"] = s.error;
  j["clients_connected"] = s.clients.size();
  nlohmann::json clients = nlohmann::json::array();
  for (const CoordinatorStatus::Client& c : s.clients) {
    clients.push_back(
        {{"id", c.id}, {"state", c.state}, {"last_seen_s", c.last_seen_s}, {"device", c.device}});
  }
  j["clients"] = std::move(clients);
  return j.dump() + "\n";
}

}  // namespace fedlora::server
