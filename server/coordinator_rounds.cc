// coordinator_rounds.cc — the round engine: select, task, wait for quorum or deadline,
// aggregate, evaluate, commit, export as PEFT. Runs on the coordinator's loop thread (see
// coordinator_impl.h).
#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "common/log.h"
#include "server/coordinator_impl.h"
#include "server/robust/update_norm.h"
#include "server/rank_policy.h"
#include "server/round_metrics.h"

namespace fedlora::server {
namespace {

using std::chrono::milliseconds;

std::string Megabytes(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

std::string Fixed(double v, int digits = 4) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

// Every correction of every module in log order (snapshot first), stacked into one pair.
Result<lora::PeftCorrections> CumulativeCorrections(const CorrectionLog& log) {
  std::map<std::string, std::vector<lora::PeftCorrection>, std::less<>> parts;
  const auto add = [&](const CorrectionEntry& e) -> Status {
    for (const auto& [module, c] : e.modules) {
      if (c.is_dense()) {
        FEDLORA_ASSIGN_OR_RETURN(lora::PeftCorrection pair, lora::DenseAsFactors(c.dense));
        parts[module].push_back(std::move(pair));
      } else {
        parts[module].push_back({c.u, c.v});
      }
    }
    return OkStatus();
  };
  if (log.snapshot()) FEDLORA_RETURN_IF_ERROR(add(*log.snapshot()));
  for (const CorrectionEntry& e : log.entries()) FEDLORA_RETURN_IF_ERROR(add(e));
  lora::PeftCorrections out;
  for (auto& [module, list] : parts) {
    if (list.size() == 1) {
      out.emplace(module, std::move(list.front()));
    } else {
      FEDLORA_ASSIGN_OR_RETURN(out[module], lora::StackCorrections(list, module));
    }
  }
  return out;
}

}  // namespace

Result<GlobalPeft> GlobalPeftOf(const Strategy& strategy, const GlobalState& state,
                                const std::string& base_model_name_or_path) {
  GlobalPeft out;
  // What a client that holds nothing yet would evaluate: the whole global model.
  const EvalSpec spec = strategy.Evaluation(state, ClientInfo{});
  if (spec.plan.init == wire::AdapterInit::kLocalB) {
    out.skip_reason = StrCat(strategy.name(), " has no global model (each client keeps its own B)");
    return out;
  }
  if (spec.plan.mode != wire::AdapterMode::kStandard &&
      spec.plan.mode != wire::AdapterMode::kLoraSb) {
    out.skip_reason = StrCat(strategy.name(), " evaluates in mode ",
                             wire::AdapterModeName(spec.plan.mode), ", which has no PEFT form");
    return out;
  }
  FEDLORA_ASSIGN_OR_RETURN(out.corrections, CumulativeCorrections(state.corrections));
  if (spec.tensors.empty()) {
    if (out.corrections.empty()) out.skip_reason = "nothing trained yet";
    out.adapter.r = spec.lora.rank;
    out.adapter.lora_alpha = spec.lora.alpha;
    out.adapter.use_rslora = spec.lora.rslora;
    out.adapter.lora_dropout = spec.lora.dropout;
    out.adapter.target_modules = spec.lora.targets;
    std::sort(out.adapter.target_modules.begin(), out.adapter.target_modules.end());
    out.adapter.base_model_name_or_path = base_model_name_or_path;
    return out;
  }
  FEDLORA_ASSIGN_OR_RETURN(out.adapter, lora::PeftFromAdapter(spec.tensors, spec.lora,
                                                             base_model_name_or_path, DType::kF64));
  return out;
}

// ---- rounds --------------------------------------------------------------------------------

bool Coordinator::Impl::Eligible(const ClientConnection& client) const {
  // A client that declared a maximum rank below what it would be asked to train cannot help.
  const std::uint32_t max_rank = client.hello.capabilities.max_rank;
  return max_rank == 0 || max_rank >= TopRank(client.plan, config_.lora);
}

std::uint32_t Coordinator::Impl::WantedClients(std::size_t live) const {
  auto want = static_cast<std::uint32_t>(std::ceil(config_.round.fraction * live - 1e-9));
  want = std::max(want, config_.round.min_clients);
  if (config_.round.max_clients > 0) want = std::min(want, config_.round.max_clients);
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

void Coordinator::Impl::Advance() {
  if (!fatal_.ok() || phase_ == Phase::kDone) return;
  switch (phase_) {
    case Phase::kInit: CheckInit(); return;
    case Phase::kFit: CheckFit(); return;
    case Phase::kEval: CheckEval(); return;
    case Phase::kWaiting:
    case Phase::kDone: break;
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
  const std::size_t live = clients_.size();
  const bool first = !gathered_;
  const std::uint32_t needed =
      first ? std::max(config_.round.min_clients, config_.round.wait_for_clients)
            : config_.round.min_clients;
  if (live < needed) {
    const Clock::TimePoint now = clock_.Now();
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
    run_ = RoundRun{};
    run_.round = 0;
    run_.started = clock_.Now();
    run_.candidate = *state_;
    if (config_.eval.enabled && config_.eval.initial) {
      StartEval(Select(clients_.Ids(), WantedClients(live), 0, 0));
    } else {
      Commit();
    }
    return;
  }
  StartFit(next);
}

void Coordinator::Impl::StartInit() {
  // The designated client, else the first live client that declared data for initialisation.
  const std::string& designated = config_.strategy.fedsb.init_client;
  const ClientConnection* chosen = nullptr;
  for (const auto& [id, client] : clients_.all()) {
    if (init_failed_.contains(id)) continue;
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
  run_ = RoundRun{};
  run_.round = 0;
  run_.started = clock_.Now();
  run_.deadline = run_.started + milliseconds(config_.round.timeout_ms);
  task->tensors.clear();  // DeriveTask gives them again.
  run_.tasks[chosen->id] = std::move(task).value();
  run_.infos[chosen->id] = InfoOf(*chosen);
  run_.tickets[chosen->id] = NewTicket(0);
  run_.outstanding.insert(chosen->id);
  phase_ = Phase::kInit;
  LogInfo(strategy_->name(), ": asking client ", chosen->id, " to compute the initial state");
  SendTask(chosen->id);
}

void Coordinator::Impl::CheckInit() {
  if (!run_.outstanding.empty() && clock_.Now() < run_.deadline) return;
  for (const std::string& id : run_.outstanding) {
    LogWarn("client ", id, " did not deliver the initialisation; asking another client");
    init_failed_.insert(id);
  }
  for (const std::string& id : run_.failed) init_failed_.insert(id);
  run_ = RoundRun{};
  phase_ = Phase::kWaiting;
}

void Coordinator::Impl::StartFit(std::uint64_t round) {
  run_ = RoundRun{};
  run_.round = round;
  run_.started = clock_.Now();
  phase_ = Phase::kFit;
  run_.want = WantedClients(clients_.size());

  Result<std::unique_ptr<RoundAccumulator>> accumulator = strategy_->Begin(*state_, round);
  if (!accumulator.ok()) {
    Fatal(accumulator.status().WithContext(StrCat("starting round ", round)));
    return;
  }
  run_.accumulator = std::move(accumulator).value();

  // Uploads accepted before a restart count: their clients are not asked again. Their tasks are
  // re-derived (Configure is a pure function of the state, the round and the client) and they
  // are folded again, one file at a time; the exact accumulator makes the order irrelevant.
  Result<std::vector<std::string>> pending = store_->PendingClients(round);
  if (!pending.ok()) {
    Fatal(pending.status());
    return;
  }
  for (const std::string& id : *pending) {
    Result<PendingUpload> p = store_->LoadPendingUpload(round, id);
    if (!p.ok()) {
      LogWarn("round ", round, ": ignoring a restored upload (its client is asked again): ",
              p.status().message());
      continue;
    }
    ClientUpdate& u = p->update;
    const ClientInfo info{u.client_id, p->capabilities, p->plan, {}};
    Result<std::vector<ClientTask>> tasks =
        strategy_->Configure(*state_, round, std::span<const ClientInfo>(&info, 1));
    if (!tasks.ok()) {
      Fatal(tasks.status());
      return;
    }
    wire::Update as_wire;
    as_wire.round = round;
    as_wire.num_samples = u.num_samples;
    as_wire.num_examples = u.num_examples;
    as_wire.metrics = u.metrics;
    as_wire.tensors = u.tensors;
    Status valid =
        ValidateUpload(as_wire, tasks->front(), config_.strategy.max_examples_per_client);
    if (valid.ok()) valid = strategy_->ValidateUpdate(tasks->front(), u);
    if (valid.ok()) valid = run_.accumulator->Fold(u, tasks->front());
    if (!valid.ok()) {
      LogWarn("round ", round, ": dropping restored upload of ", u.client_id, ": ",
              valid.message());
      continue;
    }
    // Clipped (if at all) before it was persisted; its norm is recorded for the metrics.
    run_.update_norms[u.client_id] = UpdateNorm(u, tasks->front());
    tasks->front().tensors.clear();
    run_.tasks[u.client_id] = std::move(tasks->front());
    run_.infos[u.client_id] = info;
    u.tensors.clear();
    run_.accepted.emplace(u.client_id, std::move(u));
  }
  if (!run_.accepted.empty()) {
    LogInfo("round ", round, ": restored ", run_.accepted.size(),
            " accepted upload(s) persisted before the restart");
  }
  StartAttempt();
}

void Coordinator::Impl::StartAttempt() {
  ++run_.attempt;
  run_.awaiting_retry = false;
  std::vector<std::string> fresh, retried;
  for (const std::string& id : clients_.Ids()) {
    if (run_.accepted.contains(id) || !Eligible(*clients_.FindById(id))) continue;
    (run_.failed.contains(id) ? retried : fresh).push_back(id);
  }
  const std::size_t need =
      run_.want > run_.accepted.size() ? run_.want - run_.accepted.size() : 0;
  std::vector<std::string> chosen = Select(fresh, need, run_.round, run_.attempt);
  if (chosen.size() < need) {  // Give clients that failed earlier in this round another chance.
    std::vector<std::string> more =
        Select(retried, need - chosen.size(), run_.round, run_.attempt + 1000);
    chosen.insert(chosen.end(), more.begin(), more.end());
  }
  std::vector<ClientInfo> infos;
  for (const std::string& id : chosen) infos.push_back(InfoOf(*clients_.FindById(id)));
  Result<std::vector<ClientTask>> tasks = strategy_->Configure(*state_, run_.round, infos);
  if (!tasks.ok()) {
    Fatal(tasks.status().WithContext("configuring round tasks"));
    return;
  }
  run_.attempt_started = clock_.Now();
  run_.deadline = run_.attempt_started + milliseconds(config_.round.timeout_ms);
  for (std::size_t i = 0; i < tasks->size(); ++i) {
    ClientTask& task = (*tasks)[i];
    const std::string id = task.client_id;
    task.tensors.clear();  // N copies of the global adapter would grow with N; DeriveTask.
    run_.tasks[id] = std::move(task);
    run_.infos[id] = std::move(infos[i]);
    run_.tickets[id] = NewTicket(run_.attempt);  // A retried client's old upload is refused.
    run_.failed.erase(id);
    run_.outstanding.insert(id);
    SendTask(id);
  }
  LogInfo("round ", run_.round, "/", config_.rounds, (run_.attempt > 1 ? " (retry)" : ""),
          ": tasks sent to ", chosen.size(), " client(s); aggregating at ", Quorum(),
          "+ updates, deadline in ", config_.round.timeout_ms, " ms");
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
  wire::RoundTask message;
  message.round = run_.round;
  message.deadline_ms = static_cast<std::uint64_t>(MillisUntil(clock_.Now(), run_.deadline));
  message.lora = task.lora;
  message.train = task.train;
  message.plan = task.plan;
  message.tensors = std::move(task.tensors);
  message.ticket = run_.tickets.at(id);
  message.base = state_->corrections.UpdateFor(client->base_version, &message.tensors);
  client->base_version = message.base.to_version;  // Tasks are applied in order.
  run_.sent_base[id] = message.base.to_version;
  run_.task_sequence[id] = client->next_sequence_out;  // The sequence Send() is about to use.
  const std::uint64_t corrections = CountDown(message.tensors, /*count_adapter=*/true);
  const std::size_t sent = Send(*client, std::move(message));
  if (sent > 0) run_.bytes_down += sent - corrections;  // Corrections: correction_bytes_down.
}

std::uint64_t Coordinator::Impl::CountDown(const TensorMap& tensors, bool count_adapter) {
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

std::size_t Coordinator::Impl::RetryCandidates() const {
  std::size_t n = 0;
  for (const auto& [id, client] : clients_.all()) {
    if (!run_.accepted.contains(id) && Eligible(client)) ++n;
  }
  return n;
}

std::uint32_t Coordinator::Impl::Quorum() const {
  // Clients that can still answer: accepted uploads, and live eligible clients without one
  // (working on their task, or available to a retry). Clients that left (sybils that said Hello
  // and vanished) no longer inflate the share a retry must reach.
  const std::size_t reachable = run_.accepted.size() + RetryCandidates();
  const double base = static_cast<double>(std::min<std::size_t>(run_.want, reachable));
  return std::max<std::uint32_t>(
      config_.round.quorum,
      static_cast<std::uint32_t>(std::ceil(config_.round.quorum_fraction * base - 1e-9)));
}

void Coordinator::Impl::CheckFit() {
  const Clock::TimePoint now = clock_.Now();
  const std::uint32_t quorum = Quorum();
  if (run_.awaiting_retry) {
    // Late uploads, or clients that left, may have met the quorum meanwhile.
    if (run_.accepted.size() >= quorum) {
      Aggregate();
      return;
    }
    if (now < run_.retry_not_before) return;
    // Another attempt only when it could reach the quorum; otherwise wait for clients to
    // connect, as the first round does, instead of spinning through attempts.
    const std::size_t candidates = RetryCandidates();
    if (candidates == 0 || run_.accepted.size() + candidates < quorum) {
      if (now - last_wait_log_ > std::chrono::seconds(10)) {
        LogInfo("round ", run_.round, ": ", run_.accepted.size(), " of ", quorum,
                " required updates and ", candidates,
                " other live client(s): waiting for clients before the next attempt");
        last_wait_log_ = now;
      }
      return;
    }
    StartAttempt();
    return;
  }
  if (!run_.outstanding.empty() && now < run_.deadline) return;
  for (const std::string& id : run_.outstanding) {
    LogWarn("round ", run_.round, ": client ", id, " missed the deadline");
    run_.failed.insert(id);
  }
  run_.outstanding.clear();
  if (run_.accepted.size() >= Quorum()) {
    Aggregate();
    return;
  }
  if (config_.round.max_attempts > 0 && run_.attempt >= config_.round.max_attempts) {
    Fatal(Aborted("round ", run_.round, " reached only ", run_.accepted.size(), " of ", Quorum(),
                  " required updates in ", run_.attempt, " attempt(s)"));
    return;
  }
  // Attempts start at least round.retry_delay_ms apart: clients that refuse every task at once
  // cannot spin the coordinator through attempts.
  run_.awaiting_retry = true;
  run_.retry_not_before =
      std::max(now, run_.attempt_started + milliseconds(config_.round.retry_delay_ms));
  LogWarn("round ", run_.round, ": ", run_.accepted.size(), " of ", Quorum(),
          " required updates; selecting more clients",
          run_.retry_not_before > now
              ? StrCat(" in ", MillisUntil(now, run_.retry_not_before), " ms")
              : std::string());
}

Result<ClientTask> Coordinator::Impl::DeriveTask(const std::string& id) const {
  const ClientInfo& info = run_.infos.at(id);
  if (phase_ == Phase::kInit) {
    return strategy_->client_initialization()->ConfigureInit(*state_, info);
  }
  FEDLORA_ASSIGN_OR_RETURN(std::vector<ClientTask> tasks,
                           strategy_->Configure(*state_, run_.round,
                                                std::span<const ClientInfo>(&info, 1)));
  if (tasks.size() != 1) return Internal(strategy_->name(), ": Configure gave no task for ", id);
  return std::move(tasks.front());
}

namespace {

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

 private:
  const CheckpointStore& store_;
  std::uint64_t round_;
  std::vector<std::string> clients_;
  Derive derive_;
};

}  // namespace

bool Coordinator::Impl::RebuildAccumulator() {
  Result<std::unique_ptr<RoundAccumulator>> fresh = strategy_->Begin(*state_, run_.round);
  Status s = fresh.status();
  for (const auto& [id, counts] : run_.accepted) {
    if (!s.ok()) break;
    Result<PendingUpload> p = store_->LoadPendingUpload(run_.round, id);
    Result<ClientTask> task = DeriveTask(id);
    s = !p.ok() ? p.status() : !task.ok() ? task.status() : (*fresh)->Fold(p->update, *task);
  }
  if (!s.ok()) {
    Fatal(s.WithContext(StrCat("folding the accepted uploads of round ", run_.round, " again")));
    return false;
  }
  run_.accumulator = std::move(fresh).value();
  return true;
}

void Coordinator::Impl::Aggregate() {
  std::vector<std::string> clients;  // Sorted by client id: std::map order.
  for (const auto& [id, u] : run_.accepted) clients.push_back(id);
  const PendingUploads uploads(*store_, run_.round, clients,
                               [this](const std::string& id) { return DeriveTask(id); });
  if (!run_.accumulator && !RebuildAccumulator()) return;
  GlobalState candidate = *state_;
  // Finish consumes the accumulator; a later re-aggregation (a revoked upload) rebuilds it.
  Result<AggregateReport> report = run_.accumulator->Finish(candidate, uploads);
  run_.accumulator.reset();
  if (!report.ok()) {
    Fatal(report.status().WithContext(StrCat("aggregating round ", run_.round)));
    return;
  }
  candidate.round = run_.round;
  run_.candidate = std::move(candidate);
  run_.report = std::move(report).value();
  for (const auto& [id, w] : run_.report.weights) {
    if (w == 0) {  // A robust rule left this upload out (multi-Krum): never silently.
      LogWarn("round ", run_.round, ": ", config_.strategy.rule.name, " left out the upload of client ",
              id, " (aggregation weight 0)");
    }
  }
  std::vector<std::string> evaluators;
  for (const auto& [id, u] : run_.accepted) {
    if (clients_.FindById(id) != nullptr) evaluators.push_back(id);
  }
  if (config_.eval.enabled && !evaluators.empty()) {
    StartEval(evaluators);
  } else {
    Commit();
  }
}

void Coordinator::Impl::StartEval(const std::vector<std::string>& clients) {
  phase_ = Phase::kEval;
  run_.eval_deadline = clock_.Now() + milliseconds(config_.eval.timeout_ms);
  for (const std::string& id : clients) {
    run_.eval_outstanding.insert(id);
    run_.eval_tickets[id] = NewTicket(0);
    SendEvalTask(id);
  }
}

void Coordinator::Impl::SendEvalTask(const std::string& id) {
  ClientConnection* client = clients_.FindById(id);
  if (client == nullptr) return;
  EvalSpec spec = strategy_->Evaluation(*run_.candidate, InfoOf(*client));
  wire::EvalTask task;
  task.round = run_.round;
  task.deadline_ms = static_cast<std::uint64_t>(MillisUntil(clock_.Now(), run_.eval_deadline));
  task.max_batches = config_.eval.max_batches;
  task.lora = spec.lora;
  task.train = config_.train;
  task.plan = spec.plan;
  task.tensors = std::move(spec.tensors);
  task.ticket = run_.eval_tickets.at(id);
  task.base = run_.candidate->corrections.UpdateFor(client->base_version, &task.tensors);
  client->base_version = task.base.to_version;
  run_.eval_sent_base[id] = task.base.to_version;
  run_.eval_caches[id] = std::move(spec.caches);
  run_.eval_sequence[id] = client->next_sequence_out;
  CountDown(task.tensors, /*count_adapter=*/false);
  run_.eval_bytes_down += Send(*client, std::move(task));
}

void Coordinator::Impl::CheckEval() {
  if (!run_.eval_outstanding.empty() && clock_.Now() < run_.eval_deadline) return;
  for (const std::string& id : run_.eval_outstanding) {
    LogWarn("round ", run_.round, ": client ", id, " did not return its evaluation in time");
  }
  run_.eval_outstanding.clear();
  Commit();
}

void Coordinator::Impl::Commit() {
  RoundMetrics m;
  m.round = run_.round;
  m.strategy = std::string(strategy_->name());
  m.weighting = config_.strategy.weighting;
  m.clients_selected = static_cast<std::uint32_t>(run_.tasks.size());
  m.clients_reported = static_cast<std::uint32_t>(run_.accepted.size());
  m.clients_failed = static_cast<std::uint32_t>(run_.failed.size());
  m.attempts = run_.attempt;
  double loss_sum = 0, samples = 0;
  for (const auto& [id, u] : run_.accepted) {
    if (const auto it = u.metrics.find("train_loss"); it != u.metrics.end()) {
      loss_sum += it->second * static_cast<double>(u.num_samples);
      samples += static_cast<double>(u.num_samples);
    }
  }
  if (samples > 0) m.train_loss = loss_sum / samples;
  double eval_sum = 0, accuracy_sum = 0, accuracy_n = 0, exact_sum = 0, exact_n = 0;
  std::map<std::string, double, std::less<>> class_examples;
  for (const auto& [id, r] : run_.eval_results) {
    eval_sum += r.loss * static_cast<double>(r.num_tokens);
    m.eval_tokens += r.num_tokens;
    m.eval_examples += r.num_examples;
    // accuracy and exact_match were checked to lie in [0, 1] on arrival (HandleEvalResult).
    if (const auto it = r.metrics.find("accuracy"); it != r.metrics.end()) {
      accuracy_sum += it->second * static_cast<double>(r.num_examples);
      accuracy_n += static_cast<double>(r.num_examples);
    }
    for (const auto& [name, value] : r.metrics) {  // "class_<c>_examples", checked on arrival.
      if (name.starts_with("class_") && name.ends_with("_examples")) class_examples[name] += value;
    }
    if (const auto it = r.metrics.find("exact_match"); it != r.metrics.end()) {
      exact_sum += it->second;
      exact_n += 1;
    }
  }
  m.eval_clients = static_cast<std::uint32_t>(run_.eval_results.size());
  if (m.eval_tokens > 0) m.eval_loss = eval_sum / static_cast<double>(m.eval_tokens);
  if (accuracy_n > 0) m.eval_accuracy = accuracy_sum / accuracy_n;
  double class_total = 0, class_max = 0;
  for (const auto& [name, n] : class_examples) {
    class_total += n;
    class_max = std::max(class_max, n);
  }
  if (accuracy_n > 0 && class_total > 0) m.eval_majority_accuracy = class_max / class_total;
  if (exact_n > 0) m.eval_exact_match = exact_sum / exact_n;
  m.bytes_up = run_.bytes_up;
  m.bytes_down = run_.bytes_down;
  m.params_up = run_.params_up;
  m.params_down = run_.params_down;
  m.correction_params_down = run_.correction_params_down;
  m.correction_bytes_down = run_.correction_bytes_down;
  m.eval_bytes_up = run_.eval_bytes_up;
  m.eval_bytes_down = run_.eval_bytes_down;
  m.seconds = std::chrono::duration<double>(clock_.Now() - run_.started).count();
  m.weights = run_.report.weights;
  m.strategy_metrics = run_.report.metrics;
  for (const auto& [id, task] : run_.tasks) {
    m.ranks[id] = TopRank(task.plan, task.lora);
    m.depths[id] = Depth(task.plan, layout_->modules);
  }
  m.base_version = run_.candidate->corrections.latest_version();
  m.examples_capped = run_.examples_capped;
  std::vector<double> norms;
  for (const auto& [id, n] : run_.update_norms) {
    if (run_.accepted.contains(id)) norms.push_back(n);  // Not those of revoked clients.
  }
  if (!norms.empty()) {
    std::sort(norms.begin(), norms.end());
    const std::size_t mid = norms.size() / 2;
    m.update_norm_median =
        norms.size() % 2 == 1 ? norms[mid] : 0.5 * (norms[mid - 1] + norms[mid]);
    m.update_norm_max = norms.back();
  }
  m.norm_clipped = run_.norm_clipped;
  m.norm_rejected = run_.norm_rejected;
  if (const std::size_t bounded = m.norm_clipped.size() + m.norm_rejected.size();
      bounded > 1 && 2 * bounded > run_.accepted.size() + m.norm_rejected.size()) {
    // Most uploads hit the bound: it is cutting honest learning, not just outliers.
    LogWarn("round ", run_.round, ": ", bounded, " of ",
            run_.accepted.size() + m.norm_rejected.size(), " uploads exceeded robust.norm_bound ",
            config_.robust.norm_bound, " (median change ", m.update_norm_median.value_or(0),
            "): the bound looks too small for this model and training; see update_norm_max in "
            "metrics.jsonl");
  }
  m.refusals = std::exchange(refusals_, {});
  m.clients_revoked = std::exchange(revoked_since_commit_, 0);
  m.uploads_dropped = std::exchange(dropped_since_commit_, 0);
  const std::uint64_t denied = security_->handshakes_denied();
  m.handshakes_denied = denied - std::exchange(denied_at_commit_, denied);
  m.timestamp = UtcTimestamp();
  if (annotator_) m.simulation = annotator_(m);
  const std::string line = ToJsonLine(m);

  Checkpoint checkpoint{run_.round, std::string(strategy_->name()), *layout_, config_.lora,
                        *run_.candidate, line};
  if (Status s = store_->Commit(checkpoint, config_.keep_checkpoints); !s.ok()) {
    Fatal(s.WithContext(StrCat("committing round ", run_.round)));
    return;
  }
  if (Status s = store_->AppendMetrics(run_.round, line); !s.ok()) {
    Fatal(s.WithContext("appending metrics"));
    return;
  }
  state_ = std::move(run_.candidate);
  committed_ = run_.round;
  Count([&](CoordinatorCounters& c) {
    c.committed_round = run_.round;
    c.has_committed = true;
  });
  std::string summary =
      run_.round == 0
          ? std::string("round 0 (initial adapter)")
          : StrCat("round ", run_.round, "/", config_.rounds, ": ", m.clients_reported, "/",
                   m.clients_selected, " clients reported");
  if (m.train_loss) summary += StrCat(", train_loss ", Fixed(*m.train_loss));
  if (m.eval_loss) {
    summary += StrCat(", eval_loss ", Fixed(*m.eval_loss), " (ppl ",
                      Fixed(std::exp(*m.eval_loss), 2), ", ", m.eval_clients, " clients)");
  }
  if (m.eval_accuracy) summary += StrCat(", accuracy ", Fixed(*m.eval_accuracy));
  if (m.eval_majority_accuracy) {
    summary += StrCat(" (majority class ", Fixed(*m.eval_majority_accuracy), ")");
  }
  if (m.eval_exact_match) summary += StrCat(", exact_match ", Fixed(*m.eval_exact_match));
  summary += StrCat(", ", Fixed(m.seconds, 1), " s, up ", Megabytes(m.bytes_up), ", down ",
                    Megabytes(m.bytes_down));
  LogInfo(summary, "; committed to ", store_->CheckpointDir(run_.round));
  ExportPeftAdapter(*state_, run_.round);
  run_ = RoundRun{};
  phase_ = Phase::kWaiting;
}

void Coordinator::Impl::ExportPeftAdapter(const GlobalState& state, std::uint64_t round) {
  const ExportConfig& e = config_.export_config;
  if (!e.peft_every_round && round < config_.rounds) return;
  const std::string dir = e.peft_dir.empty() ? config_.state_dir + "/peft" : e.peft_dir;
  Result<GlobalPeft> global = GlobalPeftOf(*strategy_, state, e.base_model_name_or_path);
  Status s = global.status();
  if (s.ok() && !global->skip_reason.empty()) {
    LogInfo("round ", round, ": no PEFT adapter written: ", global->skip_reason);
    return;
  }
  if (s.ok()) {
    lora::PeftExportOptions options;
    options.dtype = e.dtype;
    options.corrections = std::move(global->corrections);
    options.metadata = {{"fedlora.round", std::to_string(round)},
                        {"fedlora.strategy", std::string(strategy_->name())}};
    s = lora::ExportPeft(dir, global->adapter, options);
  }
  if (!s.ok()) {
    LogWarn("round ", round, ": writing the PEFT adapter failed (training goes on; the next "
            "round tries again): ", s.ToString());
    return;
  }
  LogInfo("round ", round, ": PEFT adapter (", DTypeName(e.dtype), ") written to ", dir);
}

void Coordinator::Impl::Finish() {
  for (auto& [id, client] : clients_.all()) {
    if (Send(client, wire::Bye{StrCat("training complete after ", config_.rounds, " rounds")}) ==
        0) {
      LogWarn("could not send Bye to ", id, " (it will get one if it is heard from again)");
    }
  }
  // In-process peers cannot lose a message; over a network, linger for a couple of heartbeats.
  const bool inproc = config_.transport.bind.starts_with("inproc://");
  farewell_until_ = std::chrono::steady_clock::now() +
                    (inproc ? milliseconds(0)
                            : std::min(milliseconds(2 * config_.transport.heartbeat_interval_ms),
                                       milliseconds(5000)));
  LogInfo("all ", config_.rounds, " rounds committed; metrics in ", store_->MetricsPath(),
          ", checkpoints in ", config_.state_dir, "/checkpoints");
  phase_ = Phase::kDone;
}

}  // namespace fedlora::server
