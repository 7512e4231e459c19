// round_state.h — the round in progress as a state machine: its phase, whom it tasked and who
// answered, the running aggregate of the accepted uploads, and the transitions between phases.
//
//   kWaiting --BeginInit--> kInit --Reset (delivered) | StepInit (given up)--> kWaiting
//   kWaiting --BeginFit--> kFit --OnAggregated, BeginEval--> kEval --Close--> kWaiting
//                          kFit --OnAggregated, Close (no evaluation)-------> kWaiting
//                          kFit <--ReopenFit (an accepted upload was revoked)-- kEval
//   kWaiting --OpenRoundZero, BeginEval--> kEval (or Close at once);  kWaiting --Finish--> kDone
//
// Knows nothing of sockets, the strategy or the state directory. The coordinator performs the
// effects (configuring and sending tasks, validating, persisting, aggregating, committing) and
// tells this class what happened through the On* events and the transitions; StepFit, StepInit
// and EvalDue say what the round needs next. Time comes in as arguments (tests pass a FakeClock's
// Now()); the durations are the round and eval sections of the configuration.
//
// Invariants: tasks are kept without their tensors (the coordinator derives them again: Configure
// is a pure function of the state, the round and the client), accepted uploads without theirs
// (they are folded into the accumulator on acceptance and persisted in the state directory).
//
// Thread-compatible: owned by the coordinator's loop thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "common/wire/messages.h"
#include "server/config.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

enum class RoundPhase {
  kWaiting,  // No round open: waiting for clients, or for the next round to start.
  kInit,     // One client computes the strategy's initial state (ClientInitialization).
  kFit,      // Tasks are out; uploads are folded as they arrive, until a quorum at the deadline.
  kEval,     // The aggregated candidate is evaluated on the reporters' held-out data.
  kDone,     // Every configured round is committed.
};

// Everything about the round in progress, as a record: what metrics.jsonl reports of it
// (round_report.h) and what the coordinator reads to send tasks. Reset when the round commits.
struct RoundRun {
  std::uint64_t round = 0;
  std::uint32_t attempt = 0;
  std::uint32_t want = 0;  // Updates wanted in total (the quorum: RoundState::Quorum).
  bool awaiting_retry = false;
  Clock::TimePoint attempt_started{};
  Clock::TimePoint retry_not_before{};
  Clock::TimePoint started{};
  Clock::TimePoint deadline{};
  // Every client tasked this round: its task without tensors (the coordinator derives them
  // again), and the ClientInfo it was configured from.
  std::map<std::string, ClientTask, std::less<>> tasks;
  std::map<std::string, ClientInfo, std::less<>> infos;
  std::set<std::string, std::less<>> outstanding;  // Tasked this attempt, no answer yet.
  std::set<std::string, std::less<>> failed;
  // Accepted uploads: counts and metrics only. Their tensors are folded into the accumulator on
  // arrival and persisted in the store's pending files, never kept here.
  std::map<std::string, ClientUpdate, std::less<>> accepted;
  // Clients whose declared example count exceeded strategy.max_examples_per_client: declared.
  std::map<std::string, std::uint64_t, std::less<>> examples_capped;
  // The L2 norm of each accepted upload's change (before clipping), and of those clipped to
  // robust.norm_bound or refused for exceeding it.
  std::map<std::string, double, std::less<>> update_norms;
  std::map<std::string, double, std::less<>> norm_clipped;
  std::map<std::string, double, std::less<>> norm_rejected;
  std::map<std::string, std::uint64_t, std::less<>> sent_base;      // Base version of each task.
  std::map<std::string, std::uint64_t, std::less<>> task_sequence;  // Envelope sequence of it.
  // The ticket issued with each client's current task; its Update must carry it.
  std::map<std::string, wire::TaskTicket, std::less<>> tickets;
  std::uint64_t bytes_up = 0, bytes_down = 0, eval_bytes_up = 0, eval_bytes_down = 0;
  std::uint64_t params_up = 0, params_down = 0;
  std::uint64_t secagg_bytes = 0;  // Secure-aggregation stage messages, both ways.
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

// What the fit phase needs next (RoundState::StepFit).
enum class FitStep {
  kWait,            // Uploads are still due before the deadline, or the retry delay runs.
  kWaitForClients,  // A retry is due, but the live clients cannot reach the quorum yet.
  kAggregate,       // Enough uploads: aggregate them.
  kRetry,           // Start another attempt: task more clients.
  kGiveUp,          // round.max_attempts attempts missed the quorum.
};

// An upload that passed the round's gate (RoundState::AdmitUpload).
enum class UploadGate {
  kNew,     // Check, fold, persist and acknowledge it.
  kResend,  // Already accepted (a resend after a lost Ack): acknowledge it again.
};

// What a client admitted (again) is owed from before its Hello (RoundState::OnAdmitted).
enum class Owed { kNothing, kTask, kEvalTask };

class RoundState {
 public:
  // `round` gives the upload deadline, the retry delay and the quorum; `eval_timeout` the
  // evaluation deadline.
  RoundState(RoundConfig round, std::chrono::milliseconds eval_timeout)
      : rules_(round), eval_timeout_(eval_timeout) {}
  RoundState(const RoundState&) = delete;
  RoundState& operator=(const RoundState&) = delete;

  RoundPhase phase() const { return phase_; }
  const RoundRun& run() const { return run_; }
  // True once `id` failed to deliver an initialisation (it is not asked again).
  bool InitFailed(std::string_view id) const { return init_failed_.contains(id); }

  // ---- transitions ----
  // Any phase -> kWaiting; the round and its accumulator are forgotten (not which clients failed
  // an initialisation).
  void Reset();
  // kWaiting -> kInit: `id` is asked to compute the strategy's initial state within
  // round.timeout_ms.
  void BeginInit(Clock::TimePoint now, const std::string& id, ClientTask task, ClientInfo info,
                 wire::TaskTicket ticket);
  // Round 0 (no training): the initial state is the candidate, evaluated (BeginEval) or
  // committed at once. The phase stays kWaiting until then.
  void OpenRoundZero(Clock::TimePoint now, GlobalState initial);
  // kWaiting -> kFit: round `round`, wanting `want` updates, folded into `accumulator`.
  void BeginFit(std::uint64_t round, Clock::TimePoint now, std::uint32_t want,
                std::unique_ptr<RoundAccumulator> accumulator);
  // An upload accepted before a restart (already folded again by the caller): counted as
  // accepted, its client not asked again.
  void RestoreUpload(ClientTask task, ClientInfo info, ClientUpdate upload, double norm);
  // A new selection attempt of the fit phase: its deadline is round.timeout_ms from `now`. The
  // attempt's tasks follow (AddTask); run().attempt + 1 is its number until then.
  void BeginAttempt(Clock::TimePoint now);
  // `id` is tasked (its tensors are dropped: derived again when sent) and owes an upload.
  void AddTask(const std::string& id, ClientTask task, ClientInfo info, wire::TaskTicket ticket);
  // The accepted uploads aggregated into `candidate`.
  void OnAggregated(GlobalState candidate, AggregateReport report);
  // -> kEval: the candidate's evaluation is due eval_timeout from `now`; AddEvalTask for each
  // evaluator follows.
  void BeginEval(Clock::TimePoint now);
  void AddEvalTask(const std::string& id, wire::TaskTicket ticket);
  // kEval -> kFit: the candidate included an upload taken out (DropUpload); forget it and its
  // evaluation, and aggregate again (or retry below the quorum) as soon as StepFit runs.
  void ReopenFit(Clock::TimePoint now);
  // After the round is committed: its candidate, the new global state; -> kWaiting.
  std::optional<GlobalState> Close();
  // kWaiting -> kDone: every configured round is committed.
  void Finish() { phase_ = RoundPhase::kDone; }

  // ---- events ----
  // Counts the tensors of an outgoing task (adapter scalars for round tasks; correction scalars
  // and bytes for any) and returns the correction payload bytes.
  std::uint64_t CountDown(const TensorMap& tensors, bool count_adapter);
  // `id`'s task went out as message `sequence`, moving the client to base `base_version`;
  // `bytes` were sent (0: the send failed), `correction_bytes` of them corrections.
  void OnTaskSent(const std::string& id, std::uint64_t base_version, std::uint64_t sequence,
                  std::size_t bytes, std::uint64_t correction_bytes);
  void OnEvalTaskSent(const std::string& id, std::uint64_t base_version,
                      std::vector<std::string> caches, std::uint64_t sequence, std::size_t bytes);

  // Whether `id` may upload for `round` with `ticket` now. Refusals (admission.h's form):
  // STALE_ROUND (no fit or init phase of that round), NOT_SELECTED (not tasked this round),
  // TASK_MISMATCH (not the ticket of its current task: a replay of an earlier attempt's, or a
  // forgery).
  Result<UploadGate> AdmitUpload(std::string_view id, std::uint64_t round,
                                 const wire::TaskTicket& ticket) const;
  // The uploads of the fit phase, as they pass the coordinator's checks. The first three record
  // what metrics.jsonl reports even when the upload is refused afterwards.
  void OnExamplesCapped(const std::string& id, std::uint64_t declared);
  void OnNormRejected(const std::string& id, double norm);
  void OnNormClipped(const std::string& id, double norm);
  // Folds a checked upload into the round's accumulator; the accumulator's refusal otherwise
  // (nothing of the upload stays). Only in kFit.
  Status Fold(const ClientUpdate& upload, const ClientTask& task);
  // `id`'s upload was refused: its task counts as failed.
  void OnUploadRefused(const std::string& id);
  // `upload` was folded and persisted: counted as accepted (its tensors counted, then dropped),
  // `bytes` on the wire, `norm` its change before clipping.
  void OnUploadAccepted(ClientUpdate upload, double norm, std::uint64_t bytes);
  // `id`'s initialisation was refused: it is not asked again.
  void OnInitFailed(const std::string& id) { init_failed_.insert(id); }

  // Whether `id` may return an evaluation of `round` with `ticket` now: STALE_ROUND,
  // UNEXPECTED_MESSAGE (not asked, or already answered), TASK_MISMATCH otherwise.
  Status AdmitEvalResult(std::string_view id, std::uint64_t round,
                         const wire::TaskTicket& ticket) const;
  // `id` answered its evaluation task (whether or not the answer is used).
  void OnEvalAnswered(const std::string& id) { run_.eval_outstanding.erase(id); }
  void OnEvalResult(const std::string& id, wire::EvalResult result, std::uint64_t bytes);

  // `id` refused the message `ref_sequence` (an Error naming it): its round task fails, or its
  // evaluation task is no longer awaited.
  void OnTaskRefused(const std::string& id, std::uint64_t ref_sequence);
  void OnSecAggBytes(std::uint64_t bytes) { run_.secagg_bytes += bytes; }
  // `id` left (bye, silence, revocation): what it owed fails or is no longer awaited.
  void OnClientGone(const std::string& id);
  // `id` was admitted (a Hello). If it was tasked and still owes its answer (a reconnect), it
  // gets that task again; in kFit this includes a tasked client whose task failed because it was
  // dropped or restarted, unless a retry is pending. Says which task to send it, if any.
  Owed OnAdmitted(const std::string& id);
  // Takes `id`'s accepted upload out of the round (its key was revoked): true when there was one
  // in kFit or kEval. The caller rebuilds the accumulator (ReplaceAccumulator) and, in kEval,
  // reopens the fit (ReopenFit).
  bool DropUpload(const std::string& id);

  bool has_accumulator() const { return accumulator_ != nullptr; }
  void ReplaceAccumulator(std::unique_ptr<RoundAccumulator> accumulator) {
    accumulator_ = std::move(accumulator);
  }
  // Finishes the aggregation into `candidate` (RoundAccumulator::Finish), consuming the
  // accumulator: a later aggregation of this round rebuilds it.
  Result<AggregateReport> FinishAccumulator(GlobalState& candidate, const UploadSource& uploads);

  // ---- timers and decisions ----
  // Updates needed to aggregate: round.quorum, and round.quorum_fraction of the updates wanted
  // from the clients that can still answer: accepted uploads, and `retry_candidates` (live
  // eligible clients without one). Clients that left no longer inflate the share.
  std::uint32_t Quorum(std::size_t retry_candidates) const;
  // kFit: at the deadline the clients still owing an upload fail; then aggregate at the quorum,
  // give up after round.max_attempts, or schedule a retry round.retry_delay_ms after the
  // attempt started. A scheduled retry starts once the live clients could reach the quorum.
  FitStep StepFit(Clock::TimePoint now, std::size_t retry_candidates);
  // kInit: at the deadline (or once nobody owes the initial state) the clients asked are not
  // asked again and the phase goes back to kWaiting; true then.
  bool StepInit(Clock::TimePoint now);
  // kEval: true at the deadline, or once every evaluator answered (the late ones are logged and
  // forgotten): the round can commit.
  bool EvalDue(Clock::TimePoint now);
  // The earlier of `next` and this phase's next timer.
  Clock::TimePoint NextTimer(Clock::TimePoint now, Clock::TimePoint next) const;

 private:
  RoundConfig rules_;
  std::chrono::milliseconds eval_timeout_;
  RoundPhase phase_ = RoundPhase::kWaiting;
  RoundRun run_;
  std::unique_ptr<RoundAccumulator> accumulator_;   // kFit; consumed by FinishAccumulator.
  std::set<std::string, std::less<>> init_failed_;  // Clients whose initialisation failed.
};

}  // namespace fedlora::server
