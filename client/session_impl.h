// session_impl.h — private to client/session*.cc: the session's state, shared by session.cc
// (the job thread, the connection loop, reconnects and job completions) and session_messages.cc
// (what the coordinator sends, and sending: whole messages and chunked uploads).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <variant>

#include "client/session.h"
#include "client/transport_security.h"
#include "common/log.h"
#include "common/secagg/client_protocol.h"
#include "common/wire/chunk_assembler.h"
#include "common/wire/codec.h"

namespace fedlora::client {
namespace session_internal {

// A unit of work for the job thread and what became of it.
using Job = std::variant<wire::RoundTask, wire::EvalTask>;
struct JobKey {
  bool fit = true;
  std::uint64_t round = 0;
  wire::TaskTicket ticket;  // A retry of the round (a new attempt) is another task.
  friend bool operator==(const JobKey&, const JobKey&) = default;
};
inline JobKey KeyOf(const Job& job) {
  if (const auto* t = std::get_if<wire::RoundTask>(&job)) return {true, t->round, t->ticket};
  const auto& e = std::get<wire::EvalTask>(job);
  return {false, e.round, e.ticket};
}
struct JobDone {
  JobKey key;
  std::uint64_t task_sequence = 0;  // The coordinator's sequence number of the task message.
  Result<wire::Body> result;        // Update or EvalResult.
};

// A queued task with the sequence number of the message that carried it.
struct QueuedJob {
  Job job;
  std::uint64_t sequence = 0;
};

// Why one connection ended.
enum class Outcome { kBye, kReconnect, kStop, kFatal };

// How often one upload is sent again after the coordinator found its chunks out of order or
// corrupted, before it is given up (the round then goes on without it).
constexpr std::uint32_t kMaxUploadResends = 3;

// A chunked message on its way out: the envelope owns the tensors its chunks borrow.
struct Outbound {
  std::unique_ptr<wire::Envelope> envelope;
  wire::EncodedMessage head;
  std::uint32_t next = 0;       // Chunks sent so far.
  bool swap_first_two = false;  // faults.swap_upload_chunks.
};

// The secure-aggregation side of the round task in hand (session_secagg.cc).
struct SecureRound {
  std::uint64_t round = 0;
  wire::TaskTicket ticket;
  std::uint64_t task_sequence = 0;
  wire::SecAggParams params;
  wire::AdapterPlan plan;
  TensorMap sent;  // The task's tensors, kept only when the sum is of deltas.
  // Distributed DP: this client's share of the round's noise, (sigma C) / sqrt(t); 0: none.
  double noise_stddev = 0;
  secagg::ClientProtocol protocol;
  std::optional<wire::Update> trained;  // Waiting for the neighbours' shares.
};

}  // namespace session_internal

class ClientSession::Impl {
  using Job = session_internal::Job;
  using JobKey = session_internal::JobKey;
  using JobDone = session_internal::JobDone;
  using QueuedJob = session_internal::QueuedJob;
  using Outcome = session_internal::Outcome;
  using Outbound = session_internal::Outbound;
  using milliseconds = std::chrono::milliseconds;

 public:
  Impl(ClientConfig config, Worker& worker, net::Context& context, const Clock& clock)
      : config_(std::move(config)), worker_(worker), context_(context), clock_(clock) {}

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      shutting_down_ = true;
      jobs_.clear();
      if (current_stop_) current_stop_->request_stop();
    }
    cv_.notify_all();
    // Started by the first Enqueue, on the session thread, which has returned by now.
    if (job_thread_.joinable()) job_thread_.join();
  }

  Status Run();
  Status Connect();  // Opens socket_ (monitored, except over inproc) and connects.
  ClientSessionCounters counters() const {
    std::lock_guard<std::mutex> lock(counters_mu_);
    return counters_;
  }
  void Stop() {
    stop_.store(true, std::memory_order_release);
    wake_.Notify();
  }

 private:
  // Progress messages: info for a standalone client, debug inside the simulator.
  template <typename... Args>
  void Progress(const Args&... args) const {
    if (config_.log_progress) {
      LogInfo(args...);
    } else {
      LogDebug(args...);
    }
  }

  // ---- job thread ----
  void JobLoop();
  // False if the same job is already queued or running.
  bool Enqueue(Job job, std::uint64_t sequence);
  void CancelJobs();

  // ---- session thread ----
  Outcome Serve();
  // Handles one message; returns how the connection ends, if this message ends it.
  std::optional<Outcome> HandleEnvelope(wire::Envelope envelope);
  // A chunked task's head or chunk; the whole task is dispatched once its last chunk arrived.
  std::optional<Outcome> HandleChunked(wire::Envelope envelope);
  // Acts on one complete message of this session.
  std::optional<Outcome> Dispatch(wire::Envelope envelope);
  // Reads the socket monitor's pending events; kFatal when a handshake failure is final.
  std::optional<Outcome> ReadMonitor();
  void HandleDone(JobDone done);
  void Send(wire::Body body);
  void SendChunked(wire::Body body);
  void PumpOutbound();  // Sends the outbound transfer's chunks while the socket takes them.
  void ResendPendingUpload();
  // Sends `update` and keeps it until the coordinator acknowledges or refuses it.
  void SendPendingUpdate(wire::Update update);
  // Scales the change of `update` against `task`'s tensors down to the task's privacy clip (on
  // the job thread, before the update reaches the session).
  static void ClipForPrivacy(const wire::RoundTask& task, wire::Update& update);
  // ---- secure aggregation (session_secagg.cc) ----
  // A round task with secure aggregation: opens its attempt and sends the keys. False when the
  // task's parameters are unusable (refused with an Error).
  bool BeginSecureRound(const wire::RoundTask& task, std::uint64_t sequence);
  // A roster, the routed shares or an unmask for the attempt in hand.
  void HandleSecAgg(const wire::SecAgg& message, std::uint64_t sequence);
  // Sends `trained` as a masked vector once the shares are in; until then it waits.
  void UploadSecure(wire::Update trained);
  // The masked Update, made and sent (the pending upload, resent like any other).
  void SendMasked(const wire::Update& trained);
  bool WaitBackoff(milliseconds delay);  // False if stopped meanwhile.

  ClientConfig config_;
  Worker& worker_;
  net::Context& context_;
  const Clock& clock_;
  net::WakePipe wake_;  // Stop() and job completions wake the session thread.
  std::atomic<bool> stop_{false};

  // Connection state, session thread only.
  ClientTransportSecurity security_;
  std::optional<HandshakeWatch> handshakes_;
  net::Socket socket_;  // With a monitor of its handshakes (except over inproc).
  bool welcomed_ = false;
  std::uint64_t session_id_ = 0;
  std::uint64_t sequence_out_ = 0;
  std::uint64_t last_sequence_in_ = 0;
  Clock::TimePoint last_heard_{}, last_sent_{}, hello_deadline_{};
  milliseconds interval_{1000};
  std::uint32_t liveness_ = 5;
  Status fatal_;
  bool reachable_ = false;  // The coordinator answered this connection (if only to refuse it).
  // The last Update, kept until the coordinator acknowledges or refuses it.
  std::optional<wire::Update> pending_update_;
  std::uint64_t pending_sequence_ = 0;
  std::uint32_t pending_resends_ = 0;            // Times the pending upload was sent again.
  std::optional<Outbound> outbound_;             // A chunked upload still being sent.
  std::optional<wire::ChunkAssembler> inbound_;  // A chunked task still arriving.
  std::uint32_t chunk_swaps_left_ = 0;           // faults.swap_upload_chunks still to inject.
  std::deque<JobDone> unsent_;                   // Completions waiting for a Welcome.
  std::optional<session_internal::SecureRound> secure_;  // The secure round task in hand.
  // Nonces of the recent tasks that asked for secure aggregation: their trained updates never
  // travel in clear, even once their attempt is over (a job that finished despite being
  // superseded). Bounded: the oldest are forgotten.
  std::deque<std::array<std::uint8_t, 16>> secure_nonces_;

  // For the ops endpoint (counters()); written on the session thread.
  template <typename F>
  void Count(F&& f) {
    std::lock_guard<std::mutex> lock(counters_mu_);
    f(counters_);
  }
  mutable std::mutex counters_mu_;
  ClientSessionCounters counters_;

  // Shared with the job thread.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<QueuedJob> jobs_;                    // Guarded by mu_.
  std::optional<JobKey> running_;                 // Guarded by mu_.
  std::optional<std::stop_source> current_stop_;  // Guarded by mu_.
  std::deque<JobDone> done_;                      // Guarded by mu_.
  bool shutting_down_ = false;                    // Guarded by mu_.
  std::thread job_thread_;                        // Started by Enqueue (under mu_).
};

}  // namespace fedlora::client
