// session.h — the client's side of the protocol: connect, Hello, serve tasks, reconnect.
//
// Owns one DEALER socket to the coordinator. Introduces itself with the Worker's Hello, answers
// RoundTask with an Update (kept until Acked, and resent after a reconnect) and EvalTask with an
// EvalResult, heartbeats both ways, and reconnects with exponential backoff when the coordinator
// goes silent or says it is shutting down. Returns when the coordinator says Bye.
//
// Threading: Run() is the session thread; it owns the socket. Work runs on a job thread the
// session owns, so heartbeats keep flowing during long training steps. Stop() may be called from
// any thread or a signal handler.
#pragma once

#include <memory>

#include "client/config.h"
#include "client/worker.h"
#include "common/clock.h"
#include "common/net/zmq_transport.h"
#include "common/status.h"

namespace fedlora::client {

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
  Status Run();

  void Stop();  // Thread-safe and async-signal-safe.

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedlora::client
