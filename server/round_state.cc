// round_state.cc — the round state machine (round_state.h).
#include "server/round_state.h"

#include <algorithm>
#include <cmath>

#include "common/log.h"
#include "server/admission.h"

namespace fedlora::server {
namespace {

using std::chrono::milliseconds;
using wire::ErrorCode;

}  // namespace

// ---- transitions -----------------------------------------------------------------------------

void RoundState::Reset() {
  run_ = RoundRun{};
  accumulator_.reset();
  phase_ = RoundPhase::kWaiting;
}

void RoundState::BeginInit(Clock::TimePoint now, const std::string& id, ClientTask task,
                           ClientInfo info, wire::TaskTicket ticket) {
  Reset();
  run_.round = 0;
  run_.started = now;
  run_.deadline = now + milliseconds(rules_.timeout_ms);
  task.tensors.clear();  // Derived again when sent.
  run_.tasks[id] = std::move(task);
  run_.infos[id] = std::move(info);
  run_.tickets[id] = ticket;
  run_.outstanding.insert(id);
  phase_ = RoundPhase::kInit;
}

void RoundState::OpenRoundZero(Clock::TimePoint now, GlobalState initial) {
  Reset();
  run_.round = 0;
  run_.started = now;
  run_.candidate = std::move(initial);
}

void RoundState::BeginFit(std::uint64_t round, Clock::TimePoint now, std::uint32_t want,
                          std::unique_ptr<RoundAccumulator> accumulator) {
  Reset();
  run_.round = round;
  run_.started = now;
  run_.want = want;
  accumulator_ = std::move(accumulator);
  phase_ = RoundPhase::kFit;
}

void RoundState::RestoreUpload(ClientTask task, ClientInfo info, ClientUpdate upload, double norm) {
  const std::string id = upload.client_id;
  run_.update_norms[id] = norm;
  task.tensors.clear();
  run_.tasks[id] = std::move(task);
  run_.infos[id] = std::move(info);
  upload.tensors.clear();
  run_.accepted.emplace(id, std::move(upload));
}

void RoundState::BeginAttempt(Clock::TimePoint now) {
  ++run_.attempt;
  run_.awaiting_retry = false;
  run_.attempt_started = now;
  run_.deadline = now + milliseconds(rules_.timeout_ms);
}

void RoundState::AddTask(const std::string& id, ClientTask task, ClientInfo info,
                         wire::TaskTicket ticket) {
  task.tensors.clear();  // N copies of the global adapter would grow with N: derived again.
  run_.tasks[id] = std::move(task);
  run_.infos[id] = std::move(info);
  run_.tickets[id] = ticket;  // A retried client's old upload is refused.
  run_.failed.erase(id);
  run_.outstanding.insert(id);
}

void RoundState::OnAggregated(GlobalState candidate, AggregateReport report) {
  run_.candidate = std::move(candidate);
  run_.report = std::move(report);
}

void RoundState::BeginEval(Clock::TimePoint now) {
  phase_ = RoundPhase::kEval;
  run_.eval_deadline = now + eval_timeout_;
}

void RoundState::AddEvalTask(const std::string& id, wire::TaskTicket ticket) {
  run_.eval_outstanding.insert(id);
  run_.eval_tickets[id] = ticket;
}

void RoundState::ReopenFit(Clock::TimePoint now) {
  FEDLORA_CHECK(phase_ == RoundPhase::kEval);
  run_.eval_outstanding.clear();
  run_.eval_results.clear();
  run_.eval_tickets.clear();
  run_.candidate.reset();
  phase_ = RoundPhase::kFit;
  run_.awaiting_retry = true;
  run_.retry_not_before = now;
}

std::optional<GlobalState> RoundState::Close() {
  std::optional<GlobalState> state = std::move(run_.candidate);
  Reset();
  return state;
}

// ---- events ----------------------------------------------------------------------------------

std::uint64_t RoundState::CountDown(const TensorMap& tensors, bool count_adapter) {
  std::uint64_t correction_bytes = 0;
  for (const auto& [name, t] : tensors) {
    if (name.starts_with("base.")) {  // CorrectionLog's tensor names.
      run_.correction_params_down += static_cast<std::uint64_t>(t.numel());
      correction_bytes += t.data.size();
    } else if (count_adapter) {
      run_.params_down += static_cast<std::uint64_t>(t.numel());
    }
  }
  run_.correction_bytes_down += correction_bytes;
  return correction_bytes;
}

void RoundState::OnTaskSent(const std::string& id, std::uint64_t base_version,
                            std::uint64_t sequence, std::size_t bytes,
                            std::uint64_t correction_bytes) {
  run_.sent_base[id] = base_version;
  run_.task_sequence[id] = sequence;
  if (bytes > 0) run_.bytes_down += bytes - correction_bytes;  // Corrections: their own count.
}

void RoundState::OnEvalTaskSent(const std::string& id, std::uint64_t base_version,
                                std::vector<std::string> caches, std::uint64_t sequence,
                                std::size_t bytes) {
  run_.eval_sent_base[id] = base_version;
  run_.eval_caches[id] = std::move(caches);
  run_.eval_sequence[id] = sequence;
  run_.eval_bytes_down += bytes;
}

Result<UploadGate> RoundState::AdmitUpload(std::string_view id, std::uint64_t round,
                                           const wire::TaskTicket& ticket) const {
  const bool open =
      (phase_ == RoundPhase::kFit || phase_ == RoundPhase::kInit) && round == run_.round;
  if (!open) return Refusal(ErrorCode::kStaleRound, "round ", round, " is not open for uploads");
  if (!run_.tasks.contains(id)) {
    return Refusal(ErrorCode::kNotSelected, "client was not selected for round ", run_.round);
  }
  const auto held = run_.tickets.find(id);
  const bool ticket_ok = held != run_.tickets.end() && held->second == ticket;
  if (run_.accepted.contains(id) && (ticket_ok || held == run_.tickets.end())) {
    // A resend after a lost Ack (or, after a restart, of an upload restored from disk, whose
    // ticket died with the old process): acknowledge again.
    return UploadGate::kResend;
  }
  if (!ticket_ok) {
    // Not the task this client holds: a replay from an earlier attempt, or a forgery with a
    // ticket that is not this client's. Nothing is accepted; the client's real task stands.
    return Refusal(ErrorCode::kTaskMismatch, "round ", round,
                   " update carries the ticket of attempt ", ticket.attempt,
                   ", which is not the ticket of this client's task",
                   held != run_.tickets.end() ? StrCat(" (attempt ", held->second.attempt, ")")
                                              : std::string());
  }
  return UploadGate::kNew;
}

void RoundState::OnExamplesCapped(const std::string& id, std::uint64_t declared) {
  run_.examples_capped[id] = declared;
}

void RoundState::OnNormRejected(const std::string& id, double norm) {
  run_.norm_rejected[id] = norm;
}

void RoundState::OnNormClipped(const std::string& id, double norm) { run_.norm_clipped[id] = norm; }

Status RoundState::Fold(const ClientUpdate& upload, const ClientTask& task) {
  FEDLORA_CHECK(accumulator_ != nullptr);
  return accumulator_->Fold(upload, task);
}

void RoundState::OnUploadRefused(const std::string& id) {
  if (run_.outstanding.erase(id) > 0) run_.failed.insert(id);
}

void RoundState::OnUploadAccepted(ClientUpdate upload, double norm, std::uint64_t bytes) {
  const std::string id = upload.client_id;
  run_.update_norms[id] = norm;
  for (const auto& [name, t] : upload.tensors) {
    run_.params_up += static_cast<std::uint64_t>(t.numel());
  }
  upload.tensors.clear();  // Folded and persisted: the round keeps only the counts.
  run_.accepted.emplace(id, std::move(upload));
  run_.outstanding.erase(id);
  run_.failed.erase(id);
  run_.bytes_up += bytes;
}

Status RoundState::AdmitEvalResult(std::string_view id, std::uint64_t round,
                                   const wire::TaskTicket& ticket) const {
  if (phase_ != RoundPhase::kEval || round != run_.round) {
    return Refusal(ErrorCode::kStaleRound, "no evaluation of round ", round, " is open");
  }
  if (!run_.eval_outstanding.contains(id)) {
    return Refusal(ErrorCode::kUnexpectedMessage,
                   "this client was not asked to evaluate (or already answered)");
  }
  if (const auto held = run_.eval_tickets.find(id);
      held == run_.eval_tickets.end() || held->second != ticket) {
    return Refusal(ErrorCode::kTaskMismatch,
                   "the result does not carry the ticket of this client's evaluation task");
  }
  return OkStatus();
}

void RoundState::OnEvalResult(const std::string& id, wire::EvalResult result, std::uint64_t bytes) {
  run_.eval_bytes_up += bytes;
  run_.eval_results.emplace(id, std::move(result));
}

void RoundState::OnTaskRefused(const std::string& id, std::uint64_t ref_sequence) {
  if (ref_sequence == 0) return;
  if (const auto task = run_.task_sequence.find(id); task != run_.task_sequence.end() &&
                                                     task->second == ref_sequence &&
                                                     run_.outstanding.erase(id) > 0) {
    run_.failed.insert(id);
    if (phase_ == RoundPhase::kInit) init_failed_.insert(id);
  }
  if (const auto eval = run_.eval_sequence.find(id);
      eval != run_.eval_sequence.end() && eval->second == ref_sequence) {
    run_.eval_outstanding.erase(id);
  }
}

void RoundState::OnClientGone(const std::string& id) {
  if (run_.outstanding.erase(id) > 0) run_.failed.insert(id);
  run_.eval_outstanding.erase(id);
}

Owed RoundState::OnAdmitted(const std::string& id) {
  // A client that reconnects while it owes us work gets its task again; a client that kept
  // training across the reconnect ignores the duplicate, one that restarted starts over.
  // A selected client that was dropped (e.g. restarted, slow to load its model) and came back
  // before the round gave up on it gets its task again rather than idling to the deadline.
  if (phase_ == RoundPhase::kFit && !run_.awaiting_retry && run_.tasks.contains(id) &&
      !run_.accepted.contains(id) && run_.failed.erase(id) > 0) {
    run_.outstanding.insert(id);
  }
  if ((phase_ == RoundPhase::kFit || phase_ == RoundPhase::kInit) &&
      run_.outstanding.contains(id)) {
    return Owed::kTask;
  }
  if (phase_ == RoundPhase::kEval && run_.eval_outstanding.contains(id)) return Owed::kEvalTask;
  return Owed::kNothing;
}

bool RoundState::DropUpload(const std::string& id) {
  const bool open = phase_ == RoundPhase::kFit || phase_ == RoundPhase::kEval;
  return open && run_.accepted.erase(id) > 0;
}

Result<AggregateReport> RoundState::FinishAccumulator(GlobalState& candidate,
                                                      const UploadSource& uploads) {
  FEDLORA_CHECK(accumulator_ != nullptr);
  Result<AggregateReport> report = accumulator_->Finish(candidate, uploads);
  accumulator_.reset();
  return report;
}

// ---- timers and decisions --------------------------------------------------------------------

std::uint32_t RoundState::Quorum(std::size_t retry_candidates) const {
  const std::size_t reachable = run_.accepted.size() + retry_candidates;
  const double base = static_cast<double>(std::min<std::size_t>(run_.want, reachable));
  return std::max<std::uint32_t>(
      rules_.quorum, static_cast<std::uint32_t>(std::ceil(rules_.quorum_fraction * base - 1e-9)));
}

FitStep RoundState::StepFit(Clock::TimePoint now, std::size_t retry_candidates) {
  const std::uint32_t quorum = Quorum(retry_candidates);
  if (run_.awaiting_retry) {
    // Late uploads, or clients that left, may have met the quorum meanwhile.
    if (run_.accepted.size() >= quorum) return FitStep::kAggregate;
    if (now < run_.retry_not_before) return FitStep::kWait;
    // Another attempt only when it could reach the quorum; otherwise wait for clients to
    // connect, as the first round does, instead of spinning through attempts.
    if (retry_candidates == 0 || run_.accepted.size() + retry_candidates < quorum) {
      return FitStep::kWaitForClients;
    }
    return FitStep::kRetry;
  }
  if (!run_.outstanding.empty() && now < run_.deadline) return FitStep::kWait;
  for (const std::string& id : run_.outstanding) {
    LogWarn("round ", run_.round, ": client ", id, " missed the deadline");
    run_.failed.insert(id);
  }
  run_.outstanding.clear();
  if (run_.accepted.size() >= quorum) return FitStep::kAggregate;
  if (rules_.max_attempts > 0 && run_.attempt >= rules_.max_attempts) return FitStep::kGiveUp;
  // Attempts start at least round.retry_delay_ms apart: clients that refuse every task at once
  // cannot spin the coordinator through attempts.
  run_.awaiting_retry = true;
  run_.retry_not_before = std::max(now, run_.attempt_started + milliseconds(rules_.retry_delay_ms));
  LogWarn("round ", run_.round, ": ", run_.accepted.size(), " of ", quorum,
          " required updates; selecting more clients",
          run_.retry_not_before > now
              ? StrCat(" in ", MillisUntil(now, run_.retry_not_before), " ms")
              : std::string());
  return FitStep::kWait;
}

bool RoundState::StepInit(Clock::TimePoint now) {
  if (!run_.outstanding.empty() && now < run_.deadline) return false;
  for (const std::string& id : run_.outstanding) {
    LogWarn("client ", id, " did not deliver the initialisation; asking another client");
    init_failed_.insert(id);
  }
  for (const std::string& id : run_.failed) init_failed_.insert(id);
  Reset();
  return true;
}

bool RoundState::EvalDue(Clock::TimePoint now) {
  if (!run_.eval_outstanding.empty() && now < run_.eval_deadline) return false;
  for (const std::string& id : run_.eval_outstanding) {
    LogWarn("round ", run_.round, ": client ", id, " did not return its evaluation in time");
  }
  run_.eval_outstanding.clear();
  return true;
}

Clock::TimePoint RoundState::NextTimer(Clock::TimePoint now, Clock::TimePoint next) const {
  if (phase_ == RoundPhase::kFit) {
    // A retry that is due but waits for clients is woken by their messages, not by a timer.
    if (!run_.awaiting_retry) next = std::min(next, run_.deadline);
    if (run_.awaiting_retry && run_.retry_not_before > now) {
      next = std::min(next, run_.retry_not_before);
    }
  }
  if (phase_ == RoundPhase::kInit) next = std::min(next, run_.deadline);
  if (phase_ == RoundPhase::kEval) next = std::min(next, run_.eval_deadline);
  return next;
}

}  // namespace fedlora::server
