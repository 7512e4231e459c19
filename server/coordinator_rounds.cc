// coordinator_rounds.cc — drives the round state machine (round_state.h) with the coordinator's
// effects: when to start a round (or the strategy's initialisation, or round 0's evaluation),
// whom to select, configuring and sending tasks, aggregating at the quorum, sending evaluation
// tasks, and the commit (metrics from round_report.h, the checkpoint, metrics.jsonl, the PEFT
// export from peft_export.h). Runs on the coordinator's loop thread (see coordinator_impl.h).
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

#include "common/log.h"
#include "common/safetensors.h"
#include "server/coordinator_impl.h"
#include "server/peft_export.h"
#include "server/rank_policy.h"
#include "server/round_report.h"

namespace fedlora::server {

namespace {

// Within a long fit phase, a line on where it stands this often.
constexpr std::chrono::seconds kRoundProgressInterval{10};

using std::chrono::milliseconds;

// The round's accepted uploads as the strategy sees them again at Finish: read back from the
// pending files one at a time, each with its re-derived task.
class PendingUploads final : public UploadSource {
 public:
  using Derive = std::function<Result<ClientTask>(const std::string&)>;
  PendingUploads(const CheckpointStore& store, std::uint64_t round,
                 std::vector<std::string> clients, Derive derive)
      : store_(store), round_(round), clients_(std::move(clients)), derive_(std::move(derive)) {}
  std::size_t size() const override { return clients_.size(); }
  Status ForEach(
      const std::function<Status(const ClientUpdate&, const ClientTask&)>& fn) const override {
    for (const std::string& id : clients_) {
      FEDLORA_ASSIGN_OR_RETURN(PendingUpload p, store_.LoadPendingUpload(round_, id));
      FEDLORA_ASSIGN_OR_RETURN(ClientTask task, derive_(id));
      FEDLORA_RETURN_IF_ERROR(fn(p.update, task));
    }
    return OkStatus();
  }
  // Slices straight from the pending files, mapped once (read-only) and kept for the next slice.
  Status ReadSlices(std::string_view name, std::int64_t begin, std::int64_t count,
                    std::vector<std::vector<double>>& out) const override {
    if (mapped_.empty()) {
      for (const std::string& id : clients_) {
        FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const safetensors::MappedFile> file,
                                 safetensors::MappedFile::Open(store_.PendingPath(round_, id)));
        mapped_.push_back(std::move(file));
      }
    }
    out.resize(clients_.size());
    for (std::size_t k = 0; k < clients_.size(); ++k) {
      const safetensors::TensorView* view = mapped_[k]->Find(name);
      if (view == nullptr) {
        return InvalidArgument("client ", clients_[k], "'s pending upload has no tensor '", name,
                               "'");
      }
      FEDLORA_ASSIGN_OR_RETURN(out[k], SliceAsDoubles(view->dtype, view->data, begin, count,
                                                      StrCat("client ", clients_[k], "'s '",
                                                             name, "'")));
    }
    return OkStatus();
  }

 private:
  const CheckpointStore& store_;
  std::uint64_t round_;
  std::vector<std::string> clients_;
  Derive derive_;
  mutable std::vector<std::shared_ptr<const safetensors::MappedFile>> mapped_;
};

}  // namespace

// ---- selection -----------------------------------------------------------------------------

bool Coordinator::Impl::Eligible(const ClientConnection& client) const {
  // A client that declared a maximum rank below what it would be asked to train cannot help.
  const std::uint32_t max_rank = client.hello.capabilities.max_rank;
  return max_rank == 0 || max_rank >= TopRank(client.plan, config_.lora);
}

std::uint32_t Coordinator::Impl::WantedClients(std::size_t live) const {
  auto want = static_cast<std::uint32_t>(std::ceil(config_.round.fraction * live - 1e-9));
  want = std::max(want, config_.round.min_clients);
  if (config_.round.max_clients > 0) want = std::min(want, config_.round.max_clients);
  // Secure aggregation: never more clients than the modulus holds without wrapping.
  if (SecureOn()) want = std::min(want, config_.secure_aggregation.MaxClients(0));
  return want;
}

std::vector<std::string> Coordinator::Impl::Select(std::vector<std::string> candidates,
                                                   std::size_t want, std::uint64_t round,
                                                   std::uint32_t attempt) const {
  std::sort(candidates.begin(), candidates.end());
  // Deterministic in (seed, round, attempt) and the set of candidates.
  std::seed_seq seq{static_cast<std::uint32_t>(config_.seed), static_cast<std::uint32_t>(
                        config_.seed >> 32), static_cast<std::uint32_t>(round), attempt};
  std::mt19937_64 rng(seq);
  std::shuffle(candidates.begin(), candidates.end(), rng);
  candidates.resize(std::min(want, candidates.size()));
  std::sort(candidates.begin(), candidates.end());
  return candidates;
}

std::size_t Coordinator::Impl::RetryCandidates() const {
  std::size_t n = 0;
  for (const auto& [id, client] : clients_.all()) {
    if (!round_.run().accepted.contains(id) && Eligible(client)) ++n;
  }
  return n;
}

// ---- the phases ----------------------------------------------------------------------------

void Coordinator::Impl::Advance() {
  if (!fatal_.ok()) return;
  const Clock::TimePoint now = clock_.Now();
  switch (round_.phase()) {
    case RoundPhase::kInit: round_.StepInit(now); return;
    case RoundPhase::kFit:
      CheckFit();
      LogRoundProgress(now);
      return;
    case RoundPhase::kEval:
      if (round_.EvalDue(now)) Commit();
      return;
    case RoundPhase::kDone: return;
    case RoundPhase::kWaiting: break;
  }
  // Waiting: initialise, evaluate the initial adapter, or start the next round.
  if (!state_) return;  // The first client's Hello tells us the model (HandleHello).
  const std::uint64_t next = committed_ ? *committed_ + 1 : 0;
  if (next > config_.rounds) {
    Finish();
    return;
  }
  if (ClientInitialization* init = strategy_->client_initialization();
      !committed_ && init != nullptr && init->NeedsClientInit(*state_)) {
    StartInit();
    return;
  }
  if (round_gate_ && !round_gate_(next, clients_.Ids())) {
    if (now - last_wait_log_ > std::chrono::seconds(10)) {
      LogInfo("round ", next, " waits for its clients to check in: ", clients_.size(), " live");
      last_wait_log_ = now;
    }
    return;
  }
  const std::size_t live = clients_.size();
  const bool first = !gathered_;
  const std::uint32_t needed =
      first ? std::max(config_.round.min_clients, config_.round.wait_for_clients)
            : config_.round.min_clients;
  if (live < needed) {
    if (now - last_wait_log_ > std::chrono::seconds(10)) {
      LogInfo("waiting for clients: ", live, " live, ", first && needed > config_.round.min_clients
                                                            ? "round.wait_for_clients = "
                                                            : "round.min_clients = ",
              needed);
      last_wait_log_ = now;
    }
    return;
  }
  gathered_ = true;
  if (next == 0) {
    round_.OpenRoundZero(clock_.Now(), *state_);
    if (config_.eval.enabled && config_.eval.initial) {
      StartEval(Select(clients_.Ids(), WantedClients(live), 0, 0));
    } else {
      Commit();
    }
    return;
  }
  if (PrivacyOn() && !PrivacyAllowsRound(next)) return;
  StartFit(next);
}

void Coordinator::Impl::StartInit() {
  // The designated client, else the first live client that declared data for initialisation.
  const std::string& designated = config_.strategy.fedsb.init_client;
  const ClientConnection* chosen = nullptr;
  for (const auto& [id, client] : clients_.all()) {
    if (round_.InitFailed(id)) continue;
    if (designated.empty() ? client.hello.capabilities.can_initialize : id == designated) {
      chosen = &client;
      break;
    }
  }
  if (chosen == nullptr) {
    const Clock::TimePoint now = clock_.Now();
    if (now - last_wait_log_ > std::chrono::seconds(10)) {
      LogInfo(strategy_->name(), " waits for ",
              designated.empty() ? std::string("a client with capabilities.can_initialize")
                                 : StrCat("client '", designated, "'"),
              " to compute its initial state");
      last_wait_log_ = now;
    }
    return;
  }
  Result<ClientTask> task =
      strategy_->client_initialization()->ConfigureInit(*state_, InfoOf(*chosen));
  if (!task.ok()) {
    Fatal(task.status().WithContext("configuring initialisation"));
    return;
  }
  round_.BeginInit(clock_.Now(), chosen->id, std::move(task).value(), InfoOf(*chosen),
                   NewTicket(0));
  LogInfo(strategy_->name(), ": asking client ", chosen->id, " to compute the initial state");
  SendTask(chosen->id);
}

Result<std::unique_ptr<RoundAccumulator>> Coordinator::Impl::BeginAccumulator(std::uint64_t round) {
  if (!PrivacyOn()) return strategy_->Begin(*state_, round);
  if (private_round_ && private_round_->round == round) return MakePrivateRoundAccumulator(round);
  return BeginPrivateRound(round);  // Samples the round first.
}

void Coordinator::Impl::StartFit(std::uint64_t round) {
  const Clock::TimePoint started = clock_.Now();
  private_round_.reset();
  Result<std::unique_ptr<RoundAccumulator>> accumulator = BeginAccumulator(round);
  // A private round selects its Poisson sample, however many that is.
  const std::uint32_t want = PrivacyOn()
                                 ? static_cast<std::uint32_t>(private_round_->sampled.size())
                                 : WantedClients(clients_.size());
  if (!accumulator.ok()) {
    Fatal(accumulator.status().WithContext(StrCat("starting round ", round)));
    return;
  }
  round_.BeginFit(round, started, want, std::move(accumulator).value());
  if (!RestorePendingUploads()) return;
  StartAttempt();
}

void Coordinator::Impl::StartAttempt() {
  const RoundRun& run = round_.run();
  const std::uint32_t attempt = run.attempt + 1;
  std::vector<std::string> fresh, retried;
  for (const std::string& id : clients_.Ids()) {
    if (run.accepted.contains(id) || !Eligible(*clients_.FindById(id))) continue;
    (run.failed.contains(id) ? retried : fresh).push_back(id);
  }
  const std::size_t need = run.want > run.accepted.size() ? run.want - run.accepted.size() : 0;
  std::vector<std::string> chosen = Select(fresh, need, run.round, attempt);
  if (PrivacyOn()) {  // Exactly the round's sample (a private round has one attempt).
    chosen.clear();
    for (const std::string& id : private_round_->sampled) {
      if (!run.accepted.contains(id) && clients_.FindById(id) != nullptr) chosen.push_back(id);
    }
  } else if (chosen.size() <
             need) {  // Give clients that failed earlier in this round another chance.
    std::vector<std::string> more =
        Select(retried, need - chosen.size(), run.round, attempt + 1000);
    chosen.insert(chosen.end(), more.begin(), more.end());
  }
  // One client at a time (Configure is a pure function of the state, the round and the client;
  // DeriveTask relies on it too): N tasks at once would hold N copies of the adapter.
  round_.BeginAttempt(clock_.Now());
  last_progress_log_ = clock_.Now();
  if (SecureOn() && PrivacyOn() && chosen.size() < NoiseShareClients()) {
    // Too few for the clients' noise shares to make up the round's noise: nobody is tasked and
    // the round releases the global adapter with the whole noise added here (no change folded).
    LogInfo("round ", run.round, "/", config_.rounds, ": private round sampled ", chosen.size(),
            " client(s) of ", private_round_->population, ", fewer than privacy.min_clients ",
            NoiseShareClients(), "; no tasks, the global adapter is released with central noise");
    return;
  }
  if (SecureOn()) {
    StartSecureAttempt(chosen, attempt);
    return;
  }
  for (const std::string& id : chosen) {
    ClientInfo info = InfoOf(*clients_.FindById(id));
    Result<std::vector<ClientTask>> tasks =
        strategy_->Configure(*state_, run.round, std::span<const ClientInfo>(&info, 1));
    if (!tasks.ok() || tasks->size() != 1) {
      Fatal(tasks.ok() ? Internal(strategy_->name(), ": Configure gave no task for ", id)
                       : tasks.status().WithContext("configuring round tasks"));
      return;
    }
    round_.AddTask(id, std::move(tasks->front()), std::move(info), NewTicket(attempt));
    SendTask(id);
  }
  if (PrivacyOn()) {
    LogInfo("round ", run.round, "/", config_.rounds, ": private round, tasks sent to the ",
            chosen.size(), " sampled client(s) of ", private_round_->population,
            "; aggregating what they send by the deadline in ", config_.round.timeout_ms, " ms");
    return;
  }
  LogInfo("round ", run.round, "/", config_.rounds, (attempt > 1 ? " (retry)" : ""),
          ": tasks sent to ", chosen.size(), " client(s); aggregating at ", Quorum(),
          "+ updates, deadline in ", config_.round.timeout_ms, " ms");
}

void Coordinator::Impl::LogRoundProgress(Clock::TimePoint now) {
  if (round_.phase() != RoundPhase::kFit || now - last_progress_log_ < kRoundProgressInterval) {
    return;
  }
  last_progress_log_ = now;
  const RoundRun& run = round_.run();
  const auto left = std::chrono::duration_cast<std::chrono::seconds>(run.deadline - now).count();
  LogInfo("round ", run.round, "/", config_.rounds, ": ", run.accepted.size(), " of ", run.want,
          " updates in, ", run.outstanding.size(), " client(s) training, ", run.failed.size(),
          " failed; ", std::chrono::duration_cast<std::chrono::seconds>(now - run.started).count(),
          " s in, deadline in ", std::max<std::int64_t>(0, left), " s");
}

void Coordinator::Impl::CheckFit() {
  const RoundRun& run = round_.run();
  const Clock::TimePoint now = clock_.Now();
  const std::size_t candidates = RetryCandidates();
  if (secagg_) {
    StepSecAgg();  // The stages run to their end before the round decides anything.
    if (secagg_->active()) return;
  }
  switch (round_.StepFit(now, candidates)) {
    case FitStep::kWait: return;
    case FitStep::kWaitForClients:
      if (now - last_wait_log_ > std::chrono::seconds(10)) {
        LogInfo("round ", run.round, ": ", run.accepted.size(), " of ", round_.Quorum(candidates),
                " required updates and ", candidates,
                " other live client(s): waiting for clients before the next attempt");
        last_wait_log_ = now;
      }
      return;
    case FitStep::kAggregate: Aggregate(); return;
    case FitStep::kRetry: StartAttempt(); return;
    case FitStep::kGiveUp:
      Fatal(Aborted("round ", run.round, " reached only ", run.accepted.size(), " of ",
                    round_.Quorum(candidates), " required updates in ", run.attempt,
                    " attempt(s)"));
      return;
  }
}

std::uint32_t Coordinator::Impl::Quorum() const { return round_.Quorum(RetryCandidates()); }

// ---- tasks ---------------------------------------------------------------------------------

Result<ClientTask> Coordinator::Impl::DeriveTask(const std::string& id) const {
  const ClientInfo& info = round_.run().infos.at(id);
  if (round_.phase() == RoundPhase::kInit) {
    return strategy_->client_initialization()->ConfigureInit(*state_, info);
  }
  FEDLORA_ASSIGN_OR_RETURN(std::vector<ClientTask> tasks,
                           strategy_->Configure(*state_, round_.run().round,
                                                std::span<const ClientInfo>(&info, 1)));
  if (tasks.size() != 1) return Internal(strategy_->name(), ": Configure gave no task for ", id);
  return std::move(tasks.front());
}

void Coordinator::Impl::SendTask(const std::string& id) {
  ClientConnection* client = clients_.FindById(id);
  if (client == nullptr) return;
  Result<ClientTask> derived = DeriveTask(id);
  if (!derived.ok()) {
    Fatal(derived.status().WithContext(StrCat("deriving the task of client ", id)));
    return;
  }
  ClientTask& task = *derived;
  const RoundRun& run = round_.run();
  wire::RoundTask message;
  message.round = run.round;
  message.deadline_ms = static_cast<std::uint64_t>(MillisUntil(clock_.Now(), run.deadline));
  message.lora = task.lora;
  message.train = task.train;
  message.plan = task.plan;
  message.tensors = std::move(task.tensors);
  message.ticket = run.tickets.at(id);
  if (secagg_ && secagg_->active() && secagg_->IsMember(id)) message.secagg = secagg_->params();
  if (PrivacyOn() && round_.phase() == RoundPhase::kFit) message.privacy = PrivacyParamsForTask();
  message.base = state_->corrections.UpdateFor(client->base_version, &message.tensors);
  client->base_version = message.base.to_version;  // Tasks are applied in order.
  const std::uint64_t base_version = message.base.to_version;
  const std::uint64_t sequence = client->next_sequence_out;  // The one Send() is about to use.
  const std::uint64_t corrections = round_.CountDown(message.tensors, /*count_adapter=*/true);
  const std::size_t sent = Send(*client, std::move(message));
  round_.OnTaskSent(id, base_version, sequence, sent, corrections);
}

void Coordinator::Impl::SendEvalTask(const std::string& id) {
  ClientConnection* client = clients_.FindById(id);
  if (client == nullptr) return;
  const RoundRun& run = round_.run();
  EvalSpec spec = strategy_->Evaluation(*run.candidate, InfoOf(*client));
  wire::EvalTask task;
  task.round = run.round;
  task.deadline_ms = static_cast<std::uint64_t>(MillisUntil(clock_.Now(), run.eval_deadline));
  task.max_batches = config_.eval.max_batches;
  task.lora = spec.lora;
  task.train = config_.train;
  task.plan = spec.plan;
  task.tensors = std::move(spec.tensors);
  task.ticket = run.eval_tickets.at(id);
  task.base = run.candidate->corrections.UpdateFor(client->base_version, &task.tensors);
  client->base_version = task.base.to_version;
  const std::uint64_t base_version = task.base.to_version;
  const std::uint64_t sequence = client->next_sequence_out;
  round_.CountDown(task.tensors, /*count_adapter=*/false);
  const std::size_t sent = Send(*client, std::move(task));
  round_.OnEvalTaskSent(id, base_version, std::move(spec.caches), sequence, sent);
}

// ---- aggregation, evaluation, commit -------------------------------------------------------

void Coordinator::Impl::Aggregate() {
  const RoundRun& run = round_.run();
  std::vector<std::string> clients;  // Sorted by client id: std::map order.
  for (const auto& [id, u] : run.accepted) clients.push_back(id);
  const PendingUploads uploads(*store_, run.round, clients,
                               [this](const std::string& id) { return DeriveTask(id); });
  GlobalState candidate = *state_;
  const auto aggregation_began = std::chrono::steady_clock::now();
  Result<AggregateReport> report = AggregateReport{};
  // The strategy sees the sum of the survivors' inputs, and nothing else. A private round
  // without a secure sum (too few sampled, or the protocol failed) folded nothing: its private
  // accumulator releases the global adapter with central noise.
  if (SecureOn() && (secure_sum_ || !PrivacyOn())) {
    report = secure_sum_ ? FinishSecureRound(candidate)
                         : Internal("no secure sum to aggregate in round ", run.round);
  } else {
    if (!round_.has_accumulator() && !RebuildAccumulator()) return;
    // Finish consumes the accumulator; a later re-aggregation (a revoked upload) rebuilds it.
    report = round_.FinishAccumulator(candidate, uploads);
  }
  if (!report.ok()) {
    Fatal(report.status().WithContext(StrCat("aggregating round ", run.round)));
    return;
  }
  Count([&](CoordinatorCounters& c) {
    c.aggregation_seconds.Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - aggregation_began)
            .count());
  });
  candidate.round = run.round;
  // Spent before the aggregate reaches anyone (evaluators first).
  if (PrivacyOn() && !RecordPrivateRelease()) return;
  round_.OnAggregated(std::move(candidate), std::move(report).value());
  for (const auto& [id, w] : run.report.weights) {
    if (w == 0) {  // A robust rule left this upload out (multi-Krum): never silently.
      LogWarn("round ", run.round, ": ", config_.strategy.rule.name,
              " left out the upload of client ", id, " (aggregation weight 0)");
    }
  }
  std::vector<std::string> evaluators;
  for (const auto& [id, u] : run.accepted) {
    if (clients_.FindById(id) != nullptr) evaluators.push_back(id);
  }
  if (config_.eval.enabled && !evaluators.empty()) {
    StartEval(evaluators);
  } else {
    Commit();
  }
}

void Coordinator::Impl::StartEval(const std::vector<std::string>& clients) {
  round_.BeginEval(clock_.Now());
  for (const std::string& id : clients) {
    round_.AddEvalTask(id, NewTicket(0));
    SendEvalTask(id);
  }
}

void Coordinator::Impl::Commit() {
  const RoundRun& run = round_.run();
  const std::uint64_t round = run.round;
  RoundMetrics m = SummariseRound(run, strategy_->name(), config_.strategy.weighting,
                                  layout_->modules, clock_.Now());
  if (const std::string warning = NormBoundWarning(m, config_.robust.norm_bound);
      !warning.empty()) {
    LogWarn(warning);
  }
  m.refusals = std::exchange(refusals_, {});
  m.task_refusals = std::exchange(task_refusals_, {});
  m.clients_revoked = std::exchange(revoked_since_commit_, 0);
  m.uploads_dropped = std::exchange(dropped_since_commit_, 0);
  const std::uint64_t denied = security_->handshakes_denied();
  m.handshakes_denied = denied - std::exchange(denied_at_commit_, denied);
  m.privacy = PrivacyMetrics();
  m.timestamp = UtcTimestamp();
  if (annotator_) m.simulation = annotator_(m);
  const std::string line = ToJsonLine(m);

  Checkpoint checkpoint{round,
                        std::string(strategy_->name()),
                        *layout_,
                        config_.lora,
                        *run.candidate,
                        line,
                        PrivacyOn() ? ledger_->ToJson() : std::string()};
  if (Status s = store_->Commit(checkpoint, config_.keep_checkpoints); !s.ok()) {
    Fatal(s.WithContext(StrCat("committing round ", round)));
    return;
  }
  if (Status s = store_->AppendMetrics(round, line); !s.ok()) {
    Fatal(s.WithContext("appending metrics"));
    return;
  }
  state_ = round_.Close();  // The candidate is the global state now; back to kWaiting.
  secagg_.reset();
  secure_sum_.reset();
  committed_ = round;
  Count([&](CoordinatorCounters& c) {
    c.committed_round = round;
    c.has_committed = true;
    ++c.rounds_committed;
    c.clients_selected += m.clients_selected;
    c.clients_reported += m.clients_reported;
    c.clients_failed += m.clients_failed;
    if (m.eval_loss) c.eval_loss = m.eval_loss;
    if (m.train_loss) c.train_loss = m.train_loss;
    if (m.privacy) {
      c.privacy_epsilon = m.privacy->epsilon;
      c.privacy_target_epsilon = m.privacy->target_epsilon;
    }
    if (round > 0) c.round_seconds.Observe(m.seconds);
  });
  LogInfo(RoundSummary(m, config_.rounds), "; committed to ", store_->CheckpointDir(round));
  ExportPeftAfterCommit(config_.export_config, config_.rounds, config_.state_dir, *strategy_,
                        *state_, round);
}

void Coordinator::Impl::Finish(std::string why) {
  const bool complete = why.empty();
  if (complete) why = StrCat("training complete after ", config_.rounds, " rounds");
  for (auto& [id, client] : clients_.all()) {
    if (Send(client, wire::Bye{why}) == 0) {
      LogWarn("could not send Bye to ", id, " (it will get one if it is heard from again)");
    }
  }
  // In-process peers cannot lose a message; over a network, linger for a couple of heartbeats.
  const bool inproc = config_.transport.bind.starts_with("inproc://");
  farewell_until_ = std::chrono::steady_clock::now() +
                    (inproc ? milliseconds(0)
                            : std::min(milliseconds(2 * config_.transport.heartbeat_interval_ms),
                                       milliseconds(5000)));
  LogInfo(complete ? StrCat("all ", config_.rounds, " rounds committed") : why, "; metrics in ",
          store_->MetricsPath(), ", checkpoints in ", config_.state_dir, "/checkpoints");
  round_.Finish();
}

}  // namespace fedlora::server
