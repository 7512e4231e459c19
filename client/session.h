// session.h — the client's side of the protocol: connect, Hello, serve tasks, reconnect.
//
// Owns one DEALER socket to the coordinator, with CURVE when the security section says so
// (client/transport_security.h). Introduces itself with the Worker's Hello, answers RoundTask
// with an Update (kept until Acked, and resent after a reconnect) and EvalTask with an
// EvalResult, each stamped with its task's ticket, heartbeats both ways, and reconnects with
// exponential backoff when the coordinator goes silent or says it is shutting down. Returns when
// the coordinator says Bye, or at once when a failure is final (a refused key, a coordinator
// that cannot be verified).
//
// Threading: Run() is the session thread; it owns the socket. Work runs on a job thread the
// session owns, so heartbeats keep flowing during long training steps. Stop() may be called from
// any thread or a signal handler.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "client/config.h"
#include "client/worker.h"
#include "common/clock.h"
#include "common/net/zmq_transport.h"
#include "common/status.h"

namespace fedlora::client {

// What a session has done, for the client's ops endpoint (/metrics, /status). A snapshot.
struct ClientSessionCounters {
  bool connected = false;      // Welcomed by the coordinator on the current connection.
  std::uint64_t welcomes = 0;  // Connections the coordinator accepted (1 + reconnects).
  std::uint64_t messages_in = 0;
  std::uint64_t bytes_in = 0;        // Every message received.
  std::uint64_t bytes_out = 0;       // Every message sent (chunks included).
  std::uint64_t tasks_received = 0;  // Round tasks.
  std::uint64_t tasks_refused = 0;   // Refused by this client's privacy policy.
  std::uint64_t updates_sent = 0;    // Trained updates uploaded (first sends).
  std::uint64_t updates_acknowledged = 0;
  std::uint64_t tasks_declined = 0;  // TASK_DECLINED (e.g. a DP-SGD budget that is spent).
  std::uint64_t tasks_failed = 0;    // Training or evaluation errors.
  std::uint64_t evaluations = 0;     // Evaluation results sent.
  std::uint64_t errors_from_coordinator = 0;
  std::uint64_t last_round = 0;           // Of the last task received.
  std::optional<double> last_train_loss;  // Of the last update sent.
};

class ClientSession {
 public:
  // `worker`, `context` and `clock` must outlive the session.
  ClientSession(ClientConfig config, Worker& worker, net::Context& context, const Clock& clock);
  ~ClientSession();  // Cancels and joins any running job.
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;

  // OK: the coordinator said Bye (training complete). kCancelled: Stop() was called.
  // kFailedPrecondition: the coordinator refused this client for good (other base model,
  // protocol version or an invalid name). kUnavailable: transport.max_connect_attempts reached.
  // kInvalidArgument: the security section does not work (missing or unreadable keys, a secret
  // key file others may read, plaintext to a remote coordinator without allow_insecure).
  // kPermissionDenied: the coordinator refused this client's key (not enrolled, enrolled under
  // another name, or revoked). kUnauthenticated: the coordinator could not be verified (its key
  // is not the pinned one) or speaks another security mechanism (plaintext vs CURVE).
  Status Run();

  void Stop();  // Thread-safe and async-signal-safe.
  ClientSessionCounters counters() const;  // Thread-safe.

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedlora::client
