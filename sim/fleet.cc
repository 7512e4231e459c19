// fleet.cc — the virtual clients of one process (fleet.h): records, the worker each session
// drives (VirtualClientWorker: the fleet model's virtual clock in front of the real worker), and
// the per-round check-in of sessions.
#include "sim/fleet.h"

#include <algorithm>

#include "common/log.h"
#include "sim/adversary.h"
#include "sim/check_in.h"

namespace fedlora::sim {

namespace {

// Bytes a message's tensors take on the wire (the envelope's few hundred bytes aside).
std::uint64_t TensorBytes(const TensorMap& tensors) {
  std::uint64_t bytes = 0;
  for (const auto& [name, t] : tensors) bytes += t.data.size();
  return bytes;
}

// A Worker that forwards to the real one and plays the client's part in the simulated fleet:
// with a FleetModel, each task is first planned on the virtual clock, and a client that is
// offline, drops out or would miss the virtual deadline declines it (TASK_DECLINED) instead of
// training. Counts what it did in the client's record.
// Describe() runs on the session thread, Train() on the session's job thread: atomics.
class VirtualClientWorker final : public client::Worker {
 public:
  // `on_first_hello` (may be empty) runs on the session thread the first time the session
  // introduces itself. `fleet` may be null (no virtual clock); otherwise it and `record` must
  // outlive the worker. A client that `checked_in` for its round is online (FleetModel::Plan).
  VirtualClientWorker(std::unique_ptr<client::Worker> inner, ClientRecord& record,
                      FleetModel* fleet, bool checked_in, std::function<void()> on_first_hello)
      : inner_(std::move(inner)),
        record_(record),
        fleet_(fleet),
        checked_in_(checked_in),
        on_first_hello_(std::move(on_first_hello)) {}

  wire::Hello Describe() const override {
    wire::Hello hello = inner_->Describe();
    if (!said_hello_.exchange(true) && on_first_hello_) on_first_hello_();
    return hello;
  }

  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override {
    if (fleet_ == nullptr) return Count(inner_->Train(task, std::move(stop)));
    // Planned before training when the task fixes its token count (local_steps), so that
    // clients that would decline do not spend this machine's time; the upload is estimated as
    // the task's adapter tensors and checked again after training.
    const std::uint64_t nth = tasks_.fetch_add(1);
    const std::uint64_t down = TensorBytes(task.tensors);
    std::uint64_t adapter_down = 0;
    for (const auto& [name, t] : task.tensors) {
      if (!name.starts_with("base.")) adapter_down += t.data.size();
    }
    const bool fixed_tokens = task.train.local_epochs == 0;
    const std::uint64_t planned_tokens =
        fixed_tokens
            ? std::uint64_t{task.train.local_steps} * task.train.batch_size * task.train.seq_len
            : 0;
    TaskPlan plan = fleet_->Plan(record_.index, task.round, nth, down, planned_tokens, adapter_down,
                                 checked_in_);
    if (plan.outcome != TaskOutcome::kReported &&
        (fixed_tokens || plan.outcome != TaskOutcome::kStraggler)) {
      return Decline(task.round, std::move(plan));
    }
    Result<wire::Update> update = inner_->Train(task, std::move(stop));
    if (!update.ok()) return update;
    // The exact plan: tokens trained and bytes uploaded.
    const auto tokens = static_cast<std::uint64_t>(update->metrics.count("tokens") != 0
                                                       ? update->metrics.at("tokens")
                                                       : static_cast<double>(planned_tokens));
    plan = fleet_->Plan(record_.index, task.round, nth, down, tokens, TensorBytes(update->tensors),
                        checked_in_);
    if (plan.outcome != TaskOutcome::kReported) return Decline(task.round, std::move(plan));
    fleet_->Record(task.round, plan);
    update->metrics["virtual_finish_s"] = plan.finish_s;
    return Count(std::move(update));
  }

  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token stop) override {
    return inner_->Evaluate(task, std::move(stop));
  }

 private:
  Result<wire::Update> Count(Result<wire::Update> update) {
    if (!update.ok()) return update;
    record_.rounds_trained.fetch_add(1);
    const auto metric = [&](const char* key) {
      const auto it = update->metrics.find(key);
      return it != update->metrics.end() ? static_cast<std::uint64_t>(it->second) : 0;
    };
    record_.state_bytes.store(metric("state_bytes"));
    record_.trainable_params.store(metric("trainable_params"));
    return update;
  }

  Status Decline(std::uint64_t round, TaskPlan plan) {
    std::string reason = plan.reason;
    fleet_->Record(round, std::move(plan));
    return Status(StatusCode::kUnavailable, std::move(reason),
                  static_cast<std::uint32_t>(wire::ErrorCode::kTaskDeclined));
  }

  std::unique_ptr<client::Worker> inner_;
  ClientRecord& record_;
  FleetModel* const fleet_;
  const bool checked_in_;
  std::function<void()> on_first_hello_;
  mutable std::atomic<bool> said_hello_{false};
  std::atomic<std::uint64_t> tasks_{0};
};

constexpr std::size_t kNamesListed = 10;

}  // namespace

// Destroyed in reverse order: the session before the worker it borrows.
struct Fleet::Member {
  std::string name;
  ClientRecord* record = nullptr;
  std::unique_ptr<VirtualClientWorker> worker;
  std::unique_ptr<client::ClientSession> session;
  std::thread thread;
  Status status;  // Written by the member's thread; read after it is joined.
};

Result<std::unique_ptr<Fleet>> Fleet::Build(const SimConfig& config, const Placement& placement,
                                            const std::string& endpoint,
                                            std::shared_ptr<const client::ModelAssets> assets,
                                            net::Context& context, const Clock& clock,
                                            const client::BatchingOptions& batching,
                                            std::function<void(std::size_t)> on_all_introduced) {
  std::unique_ptr<Fleet> fleet(new Fleet());
  fleet->config_ = config;
  fleet->placement_ = placement;
  fleet->endpoint_ = endpoint;
  fleet->assets_ = std::move(assets);
  fleet->context_ = &context;
  fleet->clock_ = &clock;
  fleet->corpus_ = std::make_unique<client::CorpusCache>();
  if (config.fleet.enabled) {
    Result<std::unique_ptr<FleetModel>> model = FleetModel::Make(config.fleet, config.num_clients);
    if (!model.ok()) return model.status().WithContext("fleet");
    fleet->model_ = std::move(model).value();
  }
  // One compute lock per lane: workers take turns within their lock, so evaluations (and
  // task preparation) run up to `lanes` at a time, like the batcher's training groups.
  fleet->compute_locks_ = std::vector<std::mutex>(std::max(1u, batching.lanes));
  if (batching.max_clients > 1 || batching.lanes > 1) {
    fleet->batcher_ =
        client::MakeTrainingBatcher(fleet->assets_, &fleet->compute_locks_.front(), batching);
  }
  std::size_t local = 0;
  for (std::uint32_t i = placement.shard; i < config.num_clients; i += placement.shards) ++local;
  fleet->records_ = std::vector<ClientRecord>(local);
  for (std::size_t k = 0; k < local; ++k) {
    fleet->records_[k].index = static_cast<std::uint32_t>(placement.shard + k * placement.shards);
  }
  if (config.sessions == SessionMode::kPerRound) {
    fleet->per_round_ = ClientsPerRound(config);
    return fleet;
  }
  fleet->on_first_hello_ = [f = fleet.get(), n = local, cb = std::move(on_all_introduced)] {
    if (f->introduced_.fetch_add(1) + 1 == n && cb) cb(n);
  };
  fleet->members_.reserve(local);
  for (ClientRecord& record : fleet->records_) {
    FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<Member> m, fleet->Open(record, /*checked_in=*/false));
    fleet->members_.push_back(std::move(m));
  }
  return fleet;
}

Fleet::~Fleet() {
  Stop();
  Join();
}

client::ClientConfig Fleet::ConfigFor(std::uint32_t i) const {
  client::ClientConfig c = config_.client;
  c.name = ClientName(placement_.client_prefix, i);
  c.coordinator = endpoint_;
  // One key per shard (docs/security.md): "keys/shard-{shard}.key_secret".
  c.security.secret_key_file = ForShard(c.security.secret_key_file, placement_.shard);
  // Global index of num_clients in every placement: the shards together hold exactly the
  // single-process federation's data.
  c.data.partition_index = i;
  c.data.num_partitions = config_.num_clients;
  c.log_progress = false;  // The coordinator reports per-round progress for everyone.
  c.state_dir = StrCat(config_.out_dir, "/clients/", c.name);
  if (!config_.client_max_ranks.empty()) c.capabilities.max_rank = config_.client_max_ranks[i];
  if (!config_.client_relative_speeds.empty()) {
    c.capabilities.relative_speed = config_.client_relative_speeds[i];
  } else if (model_ != nullptr) {  // Rank policies see the simulated hardware.
    c.capabilities.relative_speed =
        model_->profile(i).tokens_per_second / model_->median_tokens_per_second();
  }
  return c;
}

Result<std::unique_ptr<Fleet::Member>> Fleet::Open(ClientRecord& record, bool checked_in) {
  const std::uint32_t i = record.index;
  const client::ClientConfig c = ConfigFor(i);
  if (record.data == nullptr) {
    FEDLORA_ASSIGN_OR_RETURN(record.data, client::LoadClientDataset(c, *assets_, corpus_.get()));
    record.state_bytes.store(client::ClientDatasetBytes(*record.data));
    tokenized_.fetch_add(1);
  }
  // Lanes in turn by the client's place in this process: the same whichever round it is in.
  const auto place = static_cast<std::size_t>(&record - records_.data());
  std::mutex* lock = &compute_locks_[place % compute_locks_.size()];
  Result<std::unique_ptr<client::Worker>> local = client::MakeLocalWorker(
      c, assets_, {.compute_lock = lock, .batcher = batcher_, .dataset = record.data});
  if (!local.ok()) return local.status().WithContext(c.name);
  std::unique_ptr<client::Worker> worker = std::move(local).value();
  const std::vector<std::uint32_t>& hostile = config_.adversary.clients;
  if (std::find(hostile.begin(), hostile.end(), i) != hostile.end()) {
    LogWarn(c.name, " is HOSTILE (adversary.kind ", config_.adversary.kind,
            "): it corrupts "
            "every upload");
    worker = std::make_unique<AdversarialWorker>(std::move(worker), i, config_.adversary);
  }
  auto m = std::make_unique<Member>();
  m->name = c.name;
  m->record = &record;
  m->worker = std::make_unique<VirtualClientWorker>(std::move(worker), record, model_.get(),
                                                    checked_in, on_first_hello_);
  m->session = std::make_unique<client::ClientSession>(c, *m->worker, *context_, *clock_);
  return m;
}

std::string Fleet::names() const {
  std::string out;
  for (std::size_t k = 0; k < records_.size() && k < kNamesListed; ++k) {
    out += StrCat(k == 0 ? "" : ", ", ClientName(placement_.client_prefix, records_[k].index));
  }
  if (records_.size() > kNamesListed)
    out += StrCat(" and ", records_.size() - kNamesListed, " more");
  return out;
}

void Fleet::Launch(Member& m) {
  m.thread = std::thread([this, &m] {
    m.status = m.session->Run();
    if (!m.status.ok() && m.status.code() != StatusCode::kCancelled) {
      LogError(m.name, ": its session failed: ", m.status.ToString());
      if (per_round_ == 0) {
        for (const auto& other : members_) other->session->Stop();
      }
      if (on_failure_) on_failure_();
    }
  });
}

Status Fleet::Start(std::uint64_t first_round, std::function<void()> on_failure) {
  on_failure_ = std::move(on_failure);
  if (per_round_ == 0) {
    for (const auto& m : members_) Launch(*m);
    return OkStatus();
  }
  std::vector<std::unique_ptr<Member>> pool;
  CheckInReport report;
  FEDLORA_RETURN_IF_ERROR(CheckIn(first_round, &pool, &report));
  {
    std::lock_guard<std::mutex> lock(mu_);
    members_ = std::move(pool);
    pool_round_ = first_round;
    last_check_in_ = report;
    pool_names_.clear();
    for (const auto& m : members_) pool_names_.push_back(m->name);
    std::sort(pool_names_.begin(), pool_names_.end());
    for (const auto& m : members_) Launch(*m);
  }
  driver_ = std::thread([this] { Drive(); });
  return OkStatus();
}

Status Fleet::CheckIn(std::uint64_t round, std::vector<std::unique_ptr<Member>>* out,
                      CheckInReport* report) {
  const auto population = static_cast<std::uint32_t>(records_.size());
  Result<CheckIns> drawn_or = DrawCheckIns(population, std::min(per_round_, population),
                                           config_.coordinator.seed, round, model_.get());
  if (!drawn_or.ok()) {
    return drawn_or.status().WithContext(StrCat("checking in the clients of round ", round));
  }
  const CheckIns& drawn = *drawn_or;
  out->clear();
  out->reserve(drawn.clients.size());
  for (std::uint32_t k : drawn.clients) {
    FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<Member> m, Open(records_[k], /*checked_in=*/true));
    out->push_back(std::move(m));
  }
  *report = {round, static_cast<std::uint32_t>(out->size()), drawn.offline};
  LogDebug("round ", round, ": ", out->size(), " of ", population, " clients checked in (",
           drawn.offline, " drawn offline)");
  return OkStatus();
}

bool Fleet::RoundReady(std::uint64_t round, const std::vector<std::string>& live) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_requested_) return false;
  if (pool_round_ != round) {
    if (requested_round_ != round) {
      requested_round_ = round;
      wake_.notify_all();
    }
    return false;
  }
  if (swapping_ || live.size() != pool_names_.size()) return false;
  return std::equal(live.begin(), live.end(), pool_names_.begin());  // Both sorted.
}

void Fleet::Drive() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    wake_.wait(lock, [&] {
      return stop_requested_ || (requested_round_ && requested_round_ != pool_round_);
    });
    if (stop_requested_) break;
    const std::uint64_t round = *requested_round_;
    swapping_ = true;
    std::vector<std::unique_ptr<Member>> old = std::move(members_);
    members_.clear();
    pool_names_.clear();
    lock.unlock();
    Retire(old);  // Each says Bye: the coordinator forgets them before the next round starts.
    std::vector<std::unique_ptr<Member>> pool;
    CheckInReport report;
    const Status opened = CheckIn(round, &pool, &report);
    lock.lock();
    swapping_ = false;
    if (!opened.ok()) {
      failures_.emplace_back("the fleet", opened);
      LogError("the fleet could not check in round ", round, ": ", opened.ToString());
      lock.unlock();
      if (on_failure_) on_failure_();
      lock.lock();
      break;
    }
    if (stop_requested_) {  // Stopped while checking in: nobody connects.
      members_ = std::move(pool);
      break;
    }
    members_ = std::move(pool);
    pool_round_ = round;
    last_check_in_ = report;
    for (const auto& m : members_) pool_names_.push_back(m->name);
    std::sort(pool_names_.begin(), pool_names_.end());
    for (const auto& m : members_) Launch(*m);
  }
  std::vector<std::unique_ptr<Member>> last = std::move(members_);
  members_.clear();
  lock.unlock();
  Retire(last);
}

void Fleet::Retire(std::vector<std::unique_ptr<Member>>& members) {
  for (const auto& m : members) m->session->Stop();
  for (const auto& m : members) {
    if (m->thread.joinable()) m->thread.join();
    RecordFailure(m->name, m->status);
  }
  for (const auto& m : members) {  // What stays resident: the record and its tokens.
    m->record->state_bytes.store(client::ClientDatasetBytes(*m->record->data));
  }
  members.clear();
}

void Fleet::RecordFailure(const std::string& name, const Status& status) {
  if (status.ok() || status.code() == StatusCode::kCancelled) return;
  std::lock_guard<std::mutex> lock(mu_);
  failures_.emplace_back(name, status);
}

void Fleet::Stop() {
  stopped_.store(true);
  if (per_round_ == 0) {
    for (const auto& m : members_) m->session->Stop();
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  stop_requested_ = true;
  for (const auto& m : members_) m->session->Stop();
  wake_.notify_all();
}

void Fleet::StopFromSignal() {
  stopped_.store(true);
  if (per_round_ == 0) {
    for (const auto& m : members_) m->session->Stop();
  }
}

void Fleet::Join() {
  if (per_round_ == 0) {
    for (const auto& m : members_) {
      if (m->thread.joinable()) m->thread.join();
    }
    return;
  }
  if (driver_.joinable()) driver_.join();
}

Status Fleet::FirstFailure() const {
  if (per_round_ == 0) {
    for (const auto& m : members_) {
      if (!m->status.ok() && m->status.code() != StatusCode::kCancelled) {
        return m->status.WithContext(m->name);
      }
    }
    return OkStatus();
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (failures_.empty()) return OkStatus();
  return failures_.front().second.WithContext(failures_.front().first);
}

void Fleet::WarnFailures() const {
  if (per_round_ == 0) {
    for (const auto& m : members_) {
      if (!m->status.ok() && m->status.code() != StatusCode::kCancelled) {
        LogWarn(m->name, " ended with ", m->status.ToString());
      }
    }
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, status] : failures_) LogWarn(name, " ended with ", status.ToString());
}

Fleet::MemoryReport Fleet::Memory() const {
  MemoryReport r;
  for (const ClientRecord& record : records_) {
    r.state_bytes_total += record.state_bytes.load();
    r.max_trainable_params = std::max(r.max_trainable_params, record.trainable_params.load());
  }
  r.records_bytes = records_.capacity() * sizeof(ClientRecord);
  r.tokenized = tokenized_.load();
  return r;
}

Fleet::CheckInReport Fleet::LastCheckIn() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_check_in_;
}

std::string Fleet::RoundsTrained() const {
  std::string out;
  std::size_t listed = 0, more = 0;
  for (const ClientRecord& record : records_) {
    const std::uint32_t n = record.rounds_trained.load();
    if (records_.size() > kNamesListed && n == 0) continue;
    if (listed++ >= kNamesListed && records_.size() > kNamesListed) {
      ++more;
      continue;
    }
    out +=
        StrCat(out.empty() ? "" : " ", ClientName(placement_.client_prefix, record.index), "=", n);
  }
  if (more > 0) out += StrCat(" and ", more, " more");
  return out;
}

}  // namespace fedlora::sim
