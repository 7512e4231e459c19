// coordinator.h — the server's event loop: clients in, rounds out.
//
// Binds a ROUTER socket, admits clients (Hello -> Welcome), runs rounds (select, send RoundTask,
// validate and persist each Update before its Ack, aggregate at quorum or deadline, evaluate the
// new global adapter, checkpoint, append metrics) and resumes from its state directory after a
// restart. Nothing a peer sends can crash or stall it: protocol problems become a typed Error to
// that peer, a counter and a log line.
//
// Threading: one thread calls Start() then Run(); it alone owns the socket, the registry, the
// round state and the strategy. Stop() and Wake() are the only methods other threads (or a
// signal handler, for Stop) may call.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/crypto/curve_keys.h"
#include "common/net/zmq_transport.h"
#include "common/ops/prometheus_text.h"
#include "common/status.h"
#include "server/config.h"
#include "server/peft_export.h"  // GlobalPeft, GlobalPeftOf (also used by fedlora-agg).
#include "server/round_metrics.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

// Counters for observability and tests. A snapshot; thread-safe to read.
struct CoordinatorCounters {
  std::uint64_t messages_in = 0;
  std::uint64_t protocol_errors = 0;  // Malformed or unacceptable messages answered with Error.
  std::uint64_t not_authorized = 0;   // CURVE: messages refused for their key (NOT_AUTHORIZED).
  std::uint64_t task_mismatches = 0;  // Results refused for another task's ticket (TASK_MISMATCH).
  std::uint64_t clients_revoked = 0;  // Sessions closed because their key left the enrolment list.
  std::uint64_t uploads_dropped = 0;  // Accepted uploads taken out of aggregation (revoked keys).
  std::uint64_t key_reloads = 0;      // Enrolment list re-read and changed.
  std::uint64_t key_reload_errors = 0;  // Enrolment list unreadable on reload (old list kept).
  std::uint64_t handshakes_denied = 0;  // CURVE handshakes refused (keys not enrolled).
  std::uint64_t updates_accepted = 0;
  std::uint64_t updates_rejected = 0;
  std::uint64_t clients_admitted = 0;
  std::uint64_t clients_expired = 0;
  std::uint64_t chunks_in = 0;         // Chunks of chunked uploads received.
  std::uint64_t transfers_voided = 0;  // Chunked uploads given up part-way (bad chunk, client gone).
  std::uint64_t chunks_discarded = 0;  // Late chunks of a refused or voided transfer, dropped.
  std::uint64_t committed_round = 0;
  bool has_committed = false;
  // Ops (Prometheus /metrics). Live: bytes of every message received and sent, messages refused
  // and tasks clients refused by error code name. Summed at each commit of this process (a
  // resumed run starts from 0): rounds, clients selected, reported and failed, durations.
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::map<std::string, std::uint64_t, std::less<>> refused;
  std::map<std::string, std::uint64_t, std::less<>> tasks_refused;
  std::uint64_t rounds_committed = 0;
  std::uint64_t clients_selected = 0;
  std::uint64_t clients_reported = 0;
  std::uint64_t clients_failed = 0;
  std::optional<double> eval_loss;  // Of the last committed round that had one.
  std::optional<double> train_loss;
  std::optional<double> privacy_epsilon;                       // Spent so far (privacy.enabled)...
  double privacy_target_epsilon = 0;                           // ...of this budget (0: none).
  ops::Histogram round_seconds{ops::DurationBuckets()};        // First task to commit.
  ops::Histogram aggregation_seconds{ops::DurationBuckets()};  // Folding the round's uploads.
};

// Where the coordinator is, for an operator's /status. A snapshot.
struct CoordinatorStatus {
  struct Client {
    std::string id;
    double last_seen_s = 0;  // Since the last message from it.
    // idle | training (task out) | reported (upload accepted) | failed (this round) |
    // evaluating | evaluated
    std::string state;
    std::string device;
  };
  // starting | waiting | init | fit | eval | done | stopped | failed
  std::string phase = "starting";
  std::uint64_t round = 0;   // In progress (init, fit, eval), else the next to run.
  std::uint32_t rounds = 0;  // Configured.
  std::optional<std::uint64_t> committed_round;
  std::uint32_t attempt = 0;         // Of the fit phase.
  std::optional<double> deadline_s;  // Until the fit or eval deadline.
  std::string error;                 // When failed.
  std::vector<Client> clients;       // Live, by id.
};

class Coordinator {
 public:
  // `context` and `clock` must outlive the coordinator.
  Coordinator(CoordinatorConfig config, std::unique_ptr<Strategy> strategy, net::Context& context,
              const Clock& clock);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Opens the state directory (resuming from its newest checkpoint), binds the socket.
  // kFailedPrecondition if the state belongs to another strategy or model, or is locked.
  Status Start();

  // Serves until every configured round is committed (OK), Stop() is called (kCancelled; the
  // state on disk lets a restart resume), or a fatal error (e.g. the configured LoRA targets do
  // not exist in the clients' model; a round failed max_attempts times).
  Status Run();

  // Before Run(): `annotator` adds the "simulation" fields of each committed round's
  // metrics line (round_metrics.h). It runs on the coordinator's thread.
  void SetRoundAnnotator(RoundAnnotator annotator);
  // Before Run(): `gate` decides when the next round may start. It is asked, on the
  // coordinator's thread, before each round (round 0 included) with the names of the live
  // clients, and the round waits (as for round.min_clients) until it answers true. For the
  // simulator, whose virtual clients check in per round (sim/simulator.h, sessions: per_round):
  // the round starts once exactly the checked-in clients are connected.
  using RoundGate = std::function<bool(std::uint64_t round, const std::vector<std::string>& live)>;
  void SetRoundGate(RoundGate gate);
  // Before Run(): `observer` sees every message the coordinator decodes from a client (chunked
  // uploads once assembled), on the coordinator's thread. For audits and tests: e.g. that under
  // secure aggregation no client's own upload ever reaches the coordinator.
  using InboundObserver = std::function<void(std::string_view route, const wire::Envelope&)>;
  void SetInboundObserver(InboundObserver observer);

  void Stop();    // Thread-safe and async-signal-safe.
  void Wake();    // Thread-safe: re-check timers now (tests that drive a FakeClock).
  // Thread-safe and async-signal-safe (SIGHUP): re-read security.authorized_clients now, closing
  // the sessions of keys it no longer enrolls. The file is also re-read when it changes.
  void Reload();

  std::string endpoint() const;  // The bound endpoint (a real port for "tcp://host:*").
  // CURVE: the coordinator's public key (clients pin it); nullopt without CURVE. After Start().
  std::optional<crypto::CurvePublicKey> public_key() const;
  CoordinatorCounters counters() const;
  // Where the round is (as /status shows it): fresh from the loop while Run() runs (a call waits
  // for the loop's next turn, which it wakes), else as the loop left it. Thread-safe.
  CoordinatorStatus status() const;
  // The ops endpoint's URL ("http://127.0.0.1:9464"); empty without ops.listen.
  std::string ops_url() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedlora::server
