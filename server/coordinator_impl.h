// coordinator_impl.h — private to server/: the coordinator's state, shared by coordinator.cc
// (start-up, event loop, messaging) and coordinator_rounds.cc (the round engine).
//
// Threading: everything here is owned by the thread running Coordinator::Run(), except the
// atomics and the mutex-guarded counters that Stop(), Wake() and counters() touch.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/net/zmq_transport.h"
#include "common/wire/codec.h"
#include "server/checkpoint_store.h"
#include "server/client_registry.h"
#include "server/coordinator.h"
#include "server/transport_security.h"

namespace fedlora::server {

// OK when `update` has exactly the tensors `task` asked for (names, dtypes, shapes), all finite,
// and sane counts: examples processed (numSamples) no more than the task could process, given at
// most `max_examples` held; otherwise kInvalidArgument with the wire::ErrorCode as detail().
Status ValidateUpload(const wire::Update& update, const ClientTask& task,
                      std::uint64_t max_examples);

class Coordinator::Impl {
 public:
  Impl(CoordinatorConfig config, std::unique_ptr<Strategy> strategy, net::Context& context,
       const Clock& clock)
      : config_(std::move(config)), strategy_(std::move(strategy)), context_(context),
        clock_(clock) {
    limits_.max_message_bytes = config_.transport.max_message_bytes;
  }

  Status Start();
  Status Run();
  void Stop() {
    stop_.store(true, std::memory_order_release);
    wake_.Notify();
  }
  void Wake() { wake_.Notify(); }
  void Reload() {
    reload_requested_.store(true, std::memory_order_release);
    wake_.Notify();
  }
  void SetRoundAnnotator(RoundAnnotator annotator) { annotator_ = std::move(annotator); }
  std::string endpoint() const { return endpoint_; }
  std::optional<crypto::CurvePublicKey> public_key() const {
    if (!security_ || !security_->curve()) return std::nullopt;
    return security_->public_key();
  }
  CoordinatorCounters counters() const {
    std::lock_guard<std::mutex> lock(counters_mu_);
    CoordinatorCounters c = counters_;
    if (security_) c.handshakes_denied = security_->handshakes_denied();  // Set before Run().
    return c;
  }

 private:
  enum class Phase { kWaiting, kInit, kFit, kEval, kDone };

  // Everything about the round in progress. Reset when the round commits.
  struct RoundRun {
    std::uint64_t round = 0;
    std::uint32_t attempt = 0;
    std::uint32_t want = 0;           // Updates wanted in total (the quorum: Quorum()).
    bool awaiting_retry = false;
    Clock::TimePoint attempt_started{};
    Clock::TimePoint retry_not_before{};
    Clock::TimePoint started{};
    Clock::TimePoint deadline{};
    // Every client tasked this round: its task without tensors (DeriveTask gives them again),
    // and the ClientInfo it was configured from.
    std::map<std::string, ClientTask, std::less<>> tasks;
    std::map<std::string, ClientInfo, std::less<>> infos;
    std::set<std::string, std::less<>> outstanding;          // Tasked this attempt, no answer yet.
    std::set<std::string, std::less<>> failed;
    // Accepted uploads: counts and metrics only. Their tensors are folded into `accumulator` on
    // arrival and persisted in the store's pending files, never kept here.
    std::map<std::string, ClientUpdate, std::less<>> accepted;
    std::unique_ptr<RoundAccumulator> accumulator;
    // Clients whose declared example count exceeded strategy.max_examples_per_client: declared.
    std::map<std::string, std::uint64_t, std::less<>> examples_capped;
    // The L2 norm of each accepted upload's change (before clipping), and of those clipped to
    // robust.norm_bound or refused for exceeding it.
    std::map<std::string, double, std::less<>> update_norms;
    std::map<std::string, double, std::less<>> norm_clipped;
    std::map<std::string, double, std::less<>> norm_rejected;
    std::map<std::string, std::uint64_t, std::less<>> sent_base;  // Base version of each task.
    std::map<std::string, std::uint64_t, std::less<>> task_sequence;  // Envelope sequence of it.
    // The ticket issued with each client's current task; its Update must carry it.
    std::map<std::string, wire::TaskTicket, std::less<>> tickets;
    std::uint64_t bytes_up = 0, bytes_down = 0, eval_bytes_up = 0, eval_bytes_down = 0;
    std::uint64_t params_up = 0, params_down = 0;
    std::uint64_t correction_params_down = 0, correction_bytes_down = 0;
    // Evaluation of the candidate global state.
    std::optional<GlobalState> candidate;
    AggregateReport report;
    std::set<std::string, std::less<>> eval_outstanding;
    std::map<std::string, wire::EvalResult, std::less<>> eval_results;
    std::map<std::string, std::uint64_t, std::less<>> eval_sent_base;
    std::map<std::string, std::uint64_t, std::less<>> eval_sequence;
    std::map<std::string, std::vector<std::string>, std::less<>> eval_caches;
    std::map<std::string, wire::TaskTicket, std::less<>> eval_tickets;
    Clock::TimePoint eval_deadline{};
  };

  // ---- messaging ----
  void HandleMessage(const net::Message& message);
  void HandleHello(const std::string& route, const std::string& user_id,
                   const wire::Envelope& envelope);
  void HandleUpdate(ClientConnection& client, std::uint64_t sequence, wire::Update update,
                    std::size_t bytes);
  void HandleEvalResult(ClientConnection& client, std::uint64_t sequence, wire::EvalResult result,
                        std::size_t bytes);
  std::size_t Send(ClientConnection& client, wire::Body body);
  void SendError(const std::string& route, std::uint64_t ref_sequence, wire::ErrorCode code,
                 const std::string& message);
  // To a peer without a session (session id 0).
  void SendAnonymous(const std::string& route, wire::Body body);
  void ProtocolError(const std::string& who, const std::string& route, std::uint64_t ref_sequence,
                     wire::ErrorCode code, const std::string& message);

  // ---- timers and membership ----
  void OnTick();
  std::chrono::milliseconds NextWait() const;
  void OnClientGone(const std::string& id, std::string_view why);

  // ---- transport security (coordinator_security.cc) ----
  // CURVE: OK when the connection's key (`user_id`) may speak: a stranger's key is enrolled
  // under some name (Hello checks which), a client's is its session's key (sessions of keys the
  // enrolment list no longer binds to their name are revoked on reload). Otherwise refuses the
  // message (NOT_AUTHORIZED), closes a client's session, and returns false.
  bool CheckSender(const std::string& route, const std::string& user_id, ClientConnection* client,
                   std::uint64_t sequence);
  // Reloads the enrolment list when asked (SIGHUP) or when the file changed, and revokes the
  // sessions whose key it no longer binds to their name.
  void ReloadKeys();
  // Closes `id`'s session and takes its accepted upload of the open round out of aggregation.
  void Revoke(const std::string& id, const std::string& why);
  // Makes a fresh ticket (random nonce) for a task of `attempt`.
  static wire::TaskTicket NewTicket(std::uint32_t attempt);

  // ---- rounds ----
  void Advance();
  std::vector<std::string> Select(std::vector<std::string> candidates, std::size_t want,
                                  std::uint64_t round, std::uint32_t attempt) const;
  std::uint32_t WantedClients(std::size_t live) const;
  bool Eligible(const ClientConnection& client) const;
  // Live eligible clients without an accepted upload this round.
  std::size_t RetryCandidates() const;
  // Updates needed to aggregate, from the clients that can still answer (see CheckFit).
  std::uint32_t Quorum() const;
  void StartInit();
  void CheckInit();
  void StartFit(std::uint64_t round);
  void StartAttempt();
  void CheckFit();
  void Aggregate();
  // The full task of `id` this round (with its tensors), derived again from the state and the
  // ClientInfo it was configured from: Configure is a pure function of them.
  Result<ClientTask> DeriveTask(const std::string& id) const;
  // A fresh accumulator with every accepted upload of the round folded again from the pending
  // files (after a restart, or once an upload was taken out). Fatal on error.
  bool RebuildAccumulator();
  void StartEval(const std::vector<std::string>& clients);
  void CheckEval();
  void Commit();
  // Writes `state` as a PEFT adapter to export.peft_dir when this round is due (export section).
  // Failures are logged; training goes on and the next commit tries again.
  void ExportPeftAdapter(const GlobalState& state, std::uint64_t round);
  void Finish();
  void SendTask(const std::string& id);
  void SendEvalTask(const std::string& id);
  ClientInfo InfoOf(const ClientConnection& client) const;
  // Counts the tensors of an outgoing task (adapter scalars for round tasks; correction scalars
  // and bytes for any) and returns the correction payload bytes.
  std::uint64_t CountDown(const TensorMap& tensors, bool count_adapter);
  void Fatal(Status status) {
    if (fatal_.ok()) fatal_ = std::move(status);
  }
  template <typename F>
  void Count(F&& f) {
    std::lock_guard<std::mutex> lock(counters_mu_);
    f(counters_);
  }

  CoordinatorConfig config_;
  std::unique_ptr<Strategy> strategy_;
  net::Context& context_;
  const Clock& clock_;
  RoundAnnotator annotator_;  // Optional (SetRoundAnnotator).
  bool gathered_ = false;     // round.wait_for_clients was met once.
  wire::DecodeLimits limits_;
  wire::EncodeOptions encode_;  // CURVE: no per-frame SHA-256 (the MAC covers every byte).

  std::unique_ptr<TransportSecurity> security_;
  net::Socket router_;
  net::WakePipe wake_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> reload_requested_{false};
  Clock::TimePoint last_key_check_{};
  Clock::TimePoint caught_up_{};  // When the loop last read every queued message.
  // Counted since the previous commit, for its metrics line (RoundMetrics::refusals & co.).
  std::map<std::string, std::uint32_t, std::less<>> refusals_;
  std::uint32_t revoked_since_commit_ = 0;
  std::uint32_t dropped_since_commit_ = 0;
  std::uint64_t denied_at_commit_ = 0;
  std::string endpoint_;
  Status fatal_;

  std::optional<CheckpointStore> store_;
  ClientRegistry clients_;
  std::optional<ModelLayout> layout_;
  std::optional<GlobalState> state_;
  std::optional<std::uint64_t> committed_;
  Phase phase_ = Phase::kWaiting;
  RoundRun run_;
  std::uint64_t anonymous_sequence_ = 0;
  std::set<std::string, std::less<>> init_failed_;  // Clients whose initialisation failed.
  Clock::TimePoint last_wait_log_{};
  // After the last round: until then (wall time), a client still heard from is sent Bye again, in
  // case the first one was lost with the connection; Run returns earlier once every client has
  // answered with its own Bye. Not a round timer, so not on the injected clock.
  std::chrono::steady_clock::time_point farewell_until_{};

  mutable std::mutex counters_mu_;
  CoordinatorCounters counters_;  // Guarded by counters_mu_.
};

}  // namespace fedlora::server
