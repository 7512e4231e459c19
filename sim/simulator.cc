// simulator.cc — fedlora-sim's run (simulator.h): assets once, the real coordinator, virtual
// clients with the real session code (one process, or worker shards over TCP), progress and the
// summary. Longer than ~600 lines: the orchestration of a run reads top to bottom here; the parts
// with their own job have their own files (fleet_model, adversary, shard_keys, the batcher).
#include "sim/simulator.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stop_token>
#include <thread>

#include "client/local_worker.h"
#include "client/session.h"
#include "client/transport_security.h"
#include "common/clock.h"
#include "common/config/yaml_config.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/net/zmq_transport.h"
#include "common/process.h"
#include "server/coordinator.h"
#include "server/strategies/make_strategy.h"
#include "sim/session_limits.h"

namespace fedlora::sim {

std::string ClientName(const std::string& prefix, std::uint32_t i) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%02u", i);
  return prefix + buf;
}

std::string ForShard(std::string path, std::uint32_t shard) {
  for (std::size_t at = path.find("{shard}"); at != std::string::npos;
       at = path.find("{shard}", at)) {
    path.replace(at, 7, std::to_string(shard));
  }
  return path;
}

namespace {

// Bytes a message's tensors take on the wire (the envelope's few hundred bytes aside).
std::uint64_t TensorBytes(const TensorMap& tensors) {
  std::uint64_t bytes = 0;
  for (const auto& [name, t] : tensors) bytes += t.data.size();
  return bytes;
}

// Memory figures one virtual client reported with its last update.
struct MemberMemory {
  std::atomic<std::uint64_t> state_bytes{0};       // Resident between tasks (data, private B).
  std::atomic<std::uint64_t> trainable_params{0};  // Of its last adapter.
};

// A Worker that forwards to the real one and plays the client's part in the simulated fleet:
// with a FleetModel, each task is first planned on the virtual clock, and a client that is
// offline, drops out or would miss the virtual deadline declines it (TASK_DECLINED) instead of
// training. Counts what it did for the fleet's log lines and metrics.
// Describe() runs on the session thread, Train() on the session's job thread: atomics.
class VirtualClientWorker final : public client::Worker {
 public:
  // `on_first_hello` runs on the session thread the first time the session introduces itself.
  // `fleet` may be null (no virtual clock); otherwise it must outlive the worker.
  VirtualClientWorker(std::unique_ptr<client::Worker> inner, std::uint32_t index,
                      FleetModel* fleet, std::function<void()> on_first_hello)
      : inner_(std::move(inner)), index_(index), fleet_(fleet),
        on_first_hello_(std::move(on_first_hello)) {}

  wire::Hello Describe() const override {
    wire::Hello hello = inner_->Describe();
    if (!said_hello_.exchange(true)) on_first_hello_();
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
    const std::uint64_t planned_tokens = fixed_tokens
        ? std::uint64_t{task.train.local_steps} * task.train.batch_size * task.train.seq_len
        : 0;
    TaskPlan plan = fleet_->Plan(index_, task.round, nth, down, planned_tokens, adapter_down);
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
    plan = fleet_->Plan(index_, task.round, nth, down, tokens, TensorBytes(update->tensors));
    if (plan.outcome != TaskOutcome::kReported) return Decline(task.round, std::move(plan));
    fleet_->Record(task.round, plan);
    update->metrics["virtual_finish_s"] = plan.finish_s;
    return Count(std::move(update));
  }

  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token stop) override {
    return inner_->Evaluate(task, std::move(stop));
  }

  std::uint32_t rounds_trained() const { return rounds_trained_.load(); }
  const MemberMemory& memory() const { return memory_; }
  void set_state_bytes(std::uint64_t bytes) { memory_.state_bytes.store(bytes); }

 private:
  Result<wire::Update> Count(Result<wire::Update> update) {
    if (!update.ok()) return update;
    rounds_trained_.fetch_add(1);
    const auto metric = [&](const char* key) {
      const auto it = update->metrics.find(key);
      return it != update->metrics.end() ? static_cast<std::uint64_t>(it->second) : 0;
    };
    memory_.state_bytes.store(metric("state_bytes"));
    memory_.trainable_params.store(metric("trainable_params"));
    return update;
  }

  Status Decline(std::uint64_t round, TaskPlan plan) {
    std::string reason = plan.reason;
    fleet_->Record(round, std::move(plan));
    return Status(StatusCode::kUnavailable, std::move(reason),
                  static_cast<std::uint32_t>(wire::ErrorCode::kTaskDeclined));
  }

  std::unique_ptr<client::Worker> inner_;
  const std::uint32_t index_;
  FleetModel* const fleet_;
  std::function<void()> on_first_hello_;
  mutable std::atomic<bool> said_hello_{false};
  std::atomic<std::uint64_t> tasks_{0};
  std::atomic<std::uint32_t> rounds_trained_{0};
  MemberMemory memory_;
};

// The virtual clients of one process — a worker and a session each, all on one shared base
// model and one compute lock — built the same way in both modes.
//
// Thread-compatible, except Stop() (any thread, async-signal-safe). Start() once, then Join().
class Fleet {
 public:
  // Builds the clients `placement` assigns to this process, all connecting to `endpoint`.
  // `on_all_introduced` (may be empty) runs once, on a session thread, with the number of
  // sessions when every one of them has sent its first Hello. `context` and `clock` must outlive
  // the fleet. Errors: those of MakeLocalWorker, prefixed with the client's name.
  static Result<std::unique_ptr<Fleet>> Build(
      const SimConfig& config, const Placement& placement, const std::string& endpoint,
      const std::shared_ptr<const client::ModelAssets>& assets, net::Context& context,
      const Clock& clock, const client::BatchingOptions& batching,
      std::function<void(std::size_t)> on_all_introduced) {
    std::unique_ptr<Fleet> fleet(new Fleet());
    std::vector<std::uint32_t> indices;
    for (std::uint32_t i = placement.shard; i < config.num_clients; i += placement.shards) {
      indices.push_back(i);
    }
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
          client::MakeTrainingBatcher(assets, &fleet->compute_locks_.front(), batching);
    }
    fleet->members_.reserve(indices.size());
    const auto on_first_hello = [f = fleet.get(), n = indices.size(),
                                 cb = std::move(on_all_introduced)] {
      if (f->introduced_.fetch_add(1) + 1 == n && cb) cb(n);
    };
    for (std::uint32_t i : indices) {
      client::ClientConfig c = config.client;
      c.name = ClientName(placement.client_prefix, i);
      c.coordinator = endpoint;
      // One key per shard (docs/security.md): "keys/shard-{shard}.key_secret".
      c.security.secret_key_file = ForShard(c.security.secret_key_file, placement.shard);
      // Global index of num_clients in every placement: the shards together hold exactly the
      // single-process federation's data.
      c.data.partition_index = i;
      c.data.num_partitions = config.num_clients;
      c.log_progress = false;  // The coordinator reports per-round progress for everyone.
      c.state_dir = StrCat(config.out_dir, "/clients/", c.name);
      if (!config.client_max_ranks.empty()) c.capabilities.max_rank = config.client_max_ranks[i];
      if (!config.client_relative_speeds.empty()) {
        c.capabilities.relative_speed = config.client_relative_speeds[i];
      } else if (fleet->model_ != nullptr) {  // Rank policies see the simulated hardware.
        c.capabilities.relative_speed = fleet->model_->profile(i).tokens_per_second /
                                        fleet->model_->median_tokens_per_second();
      }
      Result<std::unique_ptr<client::Worker>> local = client::MakeLocalWorker(
          c, assets,
          {.compute_lock = &fleet->compute_locks_[fleet->members_.size() % fleet->compute_locks_.size()],
           .batcher = fleet->batcher_});
      if (!local.ok()) return local.status().WithContext(c.name);
      const std::uint64_t state_bytes = client::LocalWorkerStateBytes(**local);
      std::unique_ptr<client::Worker> worker = std::move(local).value();
      const std::vector<std::uint32_t>& hostile = config.adversary.clients;
      if (std::find(hostile.begin(), hostile.end(), i) != hostile.end()) {
        LogWarn(c.name, " is HOSTILE (adversary.kind ", config.adversary.kind, "): it corrupts "
                "every upload");
        worker = std::make_unique<AdversarialWorker>(std::move(worker), i, config.adversary);
      }
      Member& m = fleet->members_.emplace_back();
      m.name = c.name;
      m.worker = std::make_unique<VirtualClientWorker>(std::move(worker), i, fleet->model_.get(),
                                                       on_first_hello);
      m.worker->set_state_bytes(state_bytes);
      m.session = std::make_unique<client::ClientSession>(c, *m.worker, context, clock);
    }
    return fleet;
  }

  ~Fleet() {
    Stop();
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  std::size_t size() const { return members_.size(); }
  std::string names() const {
    std::string out;
    for (const Member& m : members_) out += (out.empty() ? "" : ", ") + m.name;
    return out;
  }

  // Runs every session on a thread of its own. The first session that fails (any status but OK
  // and kCancelled) stops the others, so the process can report it, and calls `on_failure`
  // (which must be thread-safe; e.g. stopping the in-process coordinator, which would otherwise
  // wait for the missing client).
  void Start(std::function<void()> on_failure = {}) {
    for (Member& m : members_) {
      threads_.emplace_back([this, &m, on_failure] {
        m.status = m.session->Run();
        if (!m.status.ok() && m.status.code() != StatusCode::kCancelled) {
          LogError(m.name, ": its session failed: ", m.status.ToString());
          StopSessions();
          if (on_failure) on_failure();
        }
      });
    }
  }

  // Asks every session to end; records that the fleet was stopped from outside.
  void Stop() {
    stopped_.store(true);
    StopSessions();
  }
  bool stopped() const { return stopped_.load(); }

  // Waits for every session. Then: the statuses, names and counters below are final.
  void Join() {
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

  // After Join(): the first failure in client order (not OK, not kCancelled), or OK.
  Status FirstFailure() const {
    for (const Member& m : members_) {
      if (!m.status.ok() && m.status.code() != StatusCode::kCancelled) {
        return m.status.WithContext(m.name);
      }
    }
    return OkStatus();
  }
  // After Join(): a warning per session that ended in failure.
  void WarnFailures() const {
    for (const Member& m : members_) {
      if (!m.status.ok() && m.status.code() != StatusCode::kCancelled) {
        LogWarn(m.name, " ended with ", m.status.ToString());
      }
    }
  }
  FleetModel* model() const { return model_.get(); }
  const client::TrainingBatcher* batcher() const { return batcher_.get(); }

  // Memory the clients hold, from their last reports (thread-safe).
  struct MemoryReport {
    std::uint64_t state_bytes_total = 0;     // Resident client state (data, private factors).
    std::uint64_t max_trainable_params = 0;  // Largest adapter trained so far.
  };
  MemoryReport Memory() const {
    MemoryReport r;
    for (const Member& m : members_) {
      r.state_bytes_total += m.worker->memory().state_bytes.load();
      r.max_trainable_params =
          std::max(r.max_trainable_params, m.worker->memory().trainable_params.load());
    }
    return r;
  }

  // "client-00=2 client-02=2": rounds each client trained (updates it produced).
  std::string RoundsTrained() const {
    std::string out;
    for (const Member& m : members_) {
      out += StrCat(out.empty() ? "" : " ", m.name, "=", m.worker->rounds_trained());
    }
    return out;
  }

 private:
  // Destroyed in reverse order: the session before the worker it borrows.
  struct Member {
    std::string name;
    std::unique_ptr<VirtualClientWorker> worker;
    std::unique_ptr<client::ClientSession> session;
    Status status;  // Written by the member's thread; read after Join().
  };

  Fleet() = default;

  void StopSessions() {  // Async-signal-safe: members_ is not resized after Build.
    for (Member& m : members_) m.session->Stop();
  }

  // Outlive the batcher and the workers (declared first); never resized after Build.
  std::vector<std::mutex> compute_locks_;
  std::unique_ptr<FleetModel> model_;                // Null without a `fleet` section.
  std::shared_ptr<client::TrainingBatcher> batcher_; // Null with one lane and K = 1.
  std::atomic<std::size_t> introduced_{0};
  std::atomic<bool> stopped_{false};
  std::vector<Member> members_;
  std::vector<std::thread> threads_;
};

// What a stop signal must reach. Every call in Stop() is async-signal-safe.
struct StopTargets {
  server::Coordinator* coordinator = nullptr;  // Null in workers mode.
  Fleet* fleet = nullptr;
  void Stop() {
    if (coordinator != nullptr) coordinator->Stop();
    fleet->Stop();
  }
};

// Process setup shared by both modes; returns the one base model every client of it shares.
Result<std::shared_ptr<const client::ModelAssets>> Prepare(const SimConfig& config) {
  SetLogLevel(ParseLogLevel(config.log_level).value());
  TuneMallocForTraining();
  client::ConfigureTorchThreads(config.threads);
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(config.out_dir));
  return client::LoadModelAssets(config.client.model, config.client.device);
}

// An endpoint local clients can connect to for a coordinator bound to `bound` (a wildcard
// address such as tcp://0.0.0.0:5555 becomes loopback).
std::string LocalEndpoint(const std::string& bound) {
  static const char* const kWildcards[][2] = {{"tcp://0.0.0.0:", "tcp://127.0.0.1:"},
                                              {"tcp://[::]:", "tcp://[::1]:"}};
  for (const auto& [any, loopback] : kWildcards) {
    const std::string prefix = any;
    if (bound.rfind(prefix, 0) == 0) return loopback + bound.substr(prefix.size());
  }
  return bound;
}

std::string ShardLabel(const Placement& p) { return StrCat("shard ", p.shard, "/", p.shards); }

std::string Fixed4(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4f", v);
  return buf;
}

// The JSON objects of `out_dir`/metrics.jsonl, in order (unreadable lines skipped; none when
// the file does not exist yet).
std::vector<nlohmann::json> MetricsLines(const std::string& out_dir) {
  std::vector<nlohmann::json> lines;
  Result<std::string> text = fs::ReadFile(out_dir + "/metrics.jsonl");
  if (!text.ok()) return lines;
  std::size_t start = 0;
  while (start < text->size()) {
    std::size_t end = text->find('\n', start);
    if (end == std::string::npos) end = text->size();
    nlohmann::json j = nlohmann::json::parse(text->substr(start, end - start), nullptr, false);
    start = end + 1;
    if (j.is_object()) lines.push_back(std::move(j));
  }
  return lines;
}

// Prints the per-round table from metrics.jsonl once the run is over.
void PrintSummary(const std::string& out_dir) {
  const std::vector<nlohmann::json> lines = MetricsLines(out_dir);
  if (lines.empty()) return;
  std::printf("\n%-6s %-9s %-11s %-11s %-12s %-12s %-8s\n", "round", "clients", "train_loss",
              "eval_loss", "bytes_up", "bytes_down", "seconds");
  double first_eval = NAN, last_eval = NAN;
  for (const nlohmann::json& j : lines) {
    const auto num = [&](const char* key) {
      return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
    };
    const double eval = num("eval_loss");
    if (std::isnan(first_eval)) first_eval = eval;
    last_eval = eval;
    const std::string clients = StrCat(j.value("clients_reported", 0), "/",
                                       j.value("clients_selected", 0));
    const auto loss = [](double v) { return std::isnan(v) ? std::string("-") : Fixed4(v); };
    std::printf("%-6llu %-9s %-11s %-11s %-12llu %-12llu %-8.1f\n",
                static_cast<unsigned long long>(j.value("round", 0ull)), clients.c_str(),
                loss(num("train_loss")).c_str(), loss(eval).c_str(),
                static_cast<unsigned long long>(j.value("bytes_up", 0ull)),
                static_cast<unsigned long long>(j.value("bytes_down", 0ull)), num("seconds"));
  }
  if (!std::isnan(first_eval) && !std::isnan(last_eval)) {
    std::printf("\neval_loss %.4f -> %.4f nats/token (perplexity %.1f -> %.1f)\n", first_eval,
                last_eval, std::exp(first_eval), std::exp(last_eval));
  }
  std::printf("metrics:     %s/metrics.jsonl\ncheckpoints: %s/checkpoints/\n", out_dir.c_str(),
              out_dir.c_str());
  std::fflush(stdout);
}

// The clients one round selects (RoundConfig: fraction of the live clients, clamped to
// [min_clients, max_clients]).
std::uint32_t ClientsPerRound(const SimConfig& config) {
  const server::RoundConfig& r = config.coordinator.round;
  auto n = static_cast<std::uint32_t>(std::ceil(r.fraction * config.num_clients));
  n = std::max(n, r.min_clients);
  if (r.max_clients != 0) n = std::min(n, r.max_clients);
  return std::clamp<std::uint32_t>(n, 1, config.num_clients);
}

// Tokens per forward/backward pass at which one CPU core runs stories260K's training step as fast
// per token as it gets (bench/sim_throughput, one thread: batch 8 x 128 tokens alone matched any
// batched group; batch 1 x 64 gained 1.9-2.4x from groups of 16).
constexpr std::uint32_t kCpuTokensPerPass = 1024;

// K, lanes and rows per pass for this process: the `batching` section, its zeros resolved. Sets
// LibTorch's threads per lane when there is more than one lane.
client::BatchingOptions ResolveBatching(const SimConfig& config, const client::ModelAssets& assets,
                                        std::uint32_t local_clients, bool workers) {
  client::BatchingOptions b;
  const bool cpu = client::ModelDevice(assets) == "cpu";
  const std::uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  b.lanes = config.batching.lanes != 0 ? config.batching.lanes
            : !cpu                     ? 1
                                       : std::max(1u, cores / std::max(1u, config.threads));
  if (b.lanes > 1) client::ConfigureTorchThreads(config.threads != 0 ? config.threads : 1);
  const wire::TrainSpec& train = config.coordinator.train;
  std::uint64_t budget = config.batching.memory_budget_mb << 20;
  if (budget == 0 && cpu) budget = PhysicalMemoryBytes() / 4 / b.lanes;
  const std::uint64_t per_row = client::ActivationBytesPerRow(assets, train.seq_len);
  const std::uint64_t fits =
      budget > 0 && per_row > 0 ? std::max<std::uint64_t>(1, budget / per_row) : 0;
  if (config.batching.max_rows_per_pass != 0) {
    b.max_rows_per_pass = config.batching.max_rows_per_pass;
  } else if (cpu) {
    // About kCpuTokensPerPass tokens a pass: what one core needs to run at full speed.
    const std::uint64_t rows = std::max<std::uint64_t>(1, kCpuTokensPerPass / std::max(1u, train.seq_len));
    b.max_rows_per_pass = static_cast<std::uint32_t>(std::min(rows, fits));
  } else {
    b.max_rows_per_pass = static_cast<std::uint32_t>(std::min<std::uint64_t>(fits, UINT32_MAX));
  }
  // K: a lane's share of the round's clients; on a CPU no more than one pass holds (a client
  // whose own batch fills a pass gains nothing from company: K = 1).
  const std::uint32_t per_round =
      workers ? local_clients : std::min(local_clients, ClientsPerRound(config));
  std::uint32_t k = (per_round + b.lanes - 1) / b.lanes;
  if (cpu && b.max_rows_per_pass > 0) {
    k = std::min(k, (b.max_rows_per_pass + train.batch_size - 1) / std::max(1u, train.batch_size));
  }
  b.max_clients = config.batching.clients != 0 ? config.batching.clients : std::max(1u, k);
  LogInfo("batching: ", b.lanes, " lane(s) of up to ", b.max_clients, " clients per group, ",
          b.max_rows_per_pass == 0 ? std::string("all their rows in one pass")
                                   : StrCat(b.max_rows_per_pass, " rows per pass"),
          " (~", per_row >> 10, " KiB of activations per row of ",
          config.coordinator.train.seq_len, " tokens",
          budget > 0 ? StrCat(", budget ", budget >> 20, " MiB per lane") : std::string(), ")");
  return b;
}

// The "simulation" fields of each round's metrics line: the virtual clock, memory and batching.
class SimAnnotator {
 public:
  SimAnnotator(const Fleet& fleet, double elapsed_before) : fleet_(fleet), elapsed_(elapsed_before) {}

  std::vector<std::pair<std::string, double>> operator()(const server::RoundMetrics& m) {
    std::vector<std::pair<std::string, double>> out;
    if (FleetModel* model = fleet_.model(); model != nullptr && m.clients_selected > 0) {
      const RoundTiming t = model->CloseRound(m.round, m.attempts);
      elapsed_ += t.virtual_seconds;
      out.emplace_back("virtual_round_s", t.virtual_seconds);
      out.emplace_back("virtual_elapsed_s", elapsed_);
      out.emplace_back("median_client_s", t.median_finish_s);
      out.emplace_back("slowest_reporter_s", t.max_finish_s);
      out.emplace_back("declined_offline", t.offline);
      out.emplace_back("declined_dropout", t.dropped);
      out.emplace_back("declined_straggler", t.stragglers);
    }
    const Fleet::MemoryReport mem = fleet_.Memory();
    out.emplace_back("clients", static_cast<double>(fleet_.size()));
    out.emplace_back("peak_rss_mb", static_cast<double>(PeakRssBytes()) / (1 << 20));
    out.emplace_back("rss_mb", static_cast<double>(CurrentRssBytes()) / (1 << 20));
    out.emplace_back("client_state_bytes_mean",
                     static_cast<double>(mem.state_bytes_total) / std::max<std::size_t>(1, fleet_.size()));
    // Adapter, gradient and AdamW's two moments, float32: what a client holds while training.
    out.emplace_back("train_state_bytes_per_client", static_cast<double>(mem.max_trainable_params) * 16);
    if (const client::TrainingBatcher* b = fleet_.batcher(); b != nullptr) {
      const client::BatcherStats stats = client::GetBatcherStats(*b);
      out.emplace_back("batched_groups", static_cast<double>(stats.groups - last_.groups));
      out.emplace_back("batched_clients", static_cast<double>(stats.clients - last_.clients));
      out.emplace_back("largest_group", stats.largest_group);
      last_ = stats;
    }
    return out;
  }

 private:
  const Fleet& fleet_;
  double elapsed_;
  client::BatcherStats last_;
};

// virtual_elapsed_s of the last line of `out_dir`/metrics.jsonl (a resumed run goes on from it).
double VirtualElapsedSoFar(const std::string& out_dir) {
  double elapsed = 0;
  for (const nlohmann::json& j : MetricsLines(out_dir)) {
    const auto sim = j.find("simulation");
    if (sim == j.end() || !sim->is_object()) continue;
    const auto v = sim->find("virtual_elapsed_s");
    if (v != sim->end() && v->is_number()) elapsed = v->get<double>();
  }
  return elapsed;
}

}  // namespace

Result<SimConfig> LoadSimConfig(const std::string& path, const std::vector<std::string>& overrides,
                                const std::string& out_dir) {
  FEDLORA_ASSIGN_OR_RETURN(config::ConfigDocument doc, config::ConfigDocument::Load(path, overrides));
  const config::ConfigSection root = doc.Root();
  SimConfig c;
  FEDLORA_RETURN_IF_ERROR(root.Read("num_clients", &c.num_clients));
  FEDLORA_RETURN_IF_ERROR(root.Read("threads", &c.threads));
  FEDLORA_RETURN_IF_ERROR(root.Read("max_sockets", &c.max_sockets));
  FEDLORA_RETURN_IF_ERROR(root.Read("log_level", &c.log_level));
  FEDLORA_RETURN_IF_ERROR(root.Read("client_max_ranks", &c.client_max_ranks));
  FEDLORA_RETURN_IF_ERROR(root.Read("client_relative_speeds", &c.client_relative_speeds));
  FEDLORA_RETURN_IF_ERROR(server::ParseCoordinatorConfig(root.Section("coordinator"), &c.coordinator));
  FEDLORA_RETURN_IF_ERROR(client::ParseClientConfig(root.Section("client"), &c.client));
  if (root.Has("batching")) {
    const config::ConfigSection b = root.Section("batching");
    FEDLORA_RETURN_IF_ERROR(b.Read("clients", &c.batching.clients));
    FEDLORA_RETURN_IF_ERROR(b.Read("max_rows_per_pass", &c.batching.max_rows_per_pass));
    FEDLORA_RETURN_IF_ERROR(b.Read("memory_budget_mb", &c.batching.memory_budget_mb));
    FEDLORA_RETURN_IF_ERROR(b.Read("lanes", &c.batching.lanes));
    FEDLORA_RETURN_IF_ERROR(b.Finish());
  }
  if (root.Has("fleet")) FEDLORA_RETURN_IF_ERROR(ParseFleetConfig(root.Section("fleet"), &c.fleet));
  if (root.Has("adversary")) {
    FEDLORA_RETURN_IF_ERROR(ParseAdversaryConfig(root.Section("adversary"), &c.adversary));
  }
  FEDLORA_RETURN_IF_ERROR(root.Finish());
  if (c.num_clients == 0) return InvalidArgument(root.PathOf("num_clients"), " must be >= 1");
  if (!c.client_max_ranks.empty() && c.client_max_ranks.size() != c.num_clients) {
    return InvalidArgument("client_max_ranks has ", c.client_max_ranks.size(),
                           " entries for num_clients = ", c.num_clients);
  }
  if (!c.client_relative_speeds.empty() && c.client_relative_speeds.size() != c.num_clients) {
    return InvalidArgument("client_relative_speeds has ", c.client_relative_speeds.size(),
                           " entries for num_clients = ", c.num_clients);
  }
  for (std::uint32_t i : c.adversary.clients) {
    if (i >= c.num_clients) {
      return InvalidArgument("adversary.clients: client ", i, " is not below num_clients (",
                             c.num_clients, ")");
    }
  }
  for (double speed : c.client_relative_speeds) {
    if (!(speed > 0)) return InvalidArgument("client_relative_speeds must be > 0");
  }
  if (c.coordinator.round.min_clients > c.num_clients) {
    return InvalidArgument("coordinator.round.min_clients (", c.coordinator.round.min_clients,
                           ") exceeds num_clients (", c.num_clients, ")");
  }
  FEDLORA_RETURN_IF_ERROR(ParseLogLevel(c.log_level).status().WithContext("log_level"));
  c.out_dir = out_dir;
  if (c.out_dir.empty()) {
    const std::string stem = path.empty() ? "sim" : std::filesystem::path(path).stem().string();
    c.out_dir = "runs/" + stem;
  }
  return c;
}

Status ValidatePlacement(const SimConfig& config, const Placement& placement, bool workers) {
  if (placement.shards == 0) return InvalidArgument("shards must be >= 1");
  if (placement.shard >= placement.shards) {
    return InvalidArgument("shard ", placement.shard, " is not below shards (", placement.shards,
                           ")");
  }
  if (placement.shard >= config.num_clients) {
    return InvalidArgument("shard ", placement.shard, " of ", placement.shards,
                           " holds no client: num_clients is ", config.num_clients);
  }
  if (placement.client_prefix.empty()) return InvalidArgument("client prefix must not be empty");
  if (workers && !placement.listen.empty()) {
    return InvalidArgument("workers connect to a coordinator; they do not listen");
  }
  if (!workers && placement.shards > 1 && placement.listen.empty()) {
    return InvalidArgument("shards > 1 needs a listen endpoint: the other shards could not reach "
                           "an inproc coordinator");
  }
  return OkStatus();
}

Status RunSimulation(const SimConfig& config, const Placement& placement) {
  FEDLORA_RETURN_IF_ERROR(ValidatePlacement(config, placement, /*workers=*/false));
  FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const client::ModelAssets> assets, Prepare(config));
  const std::string digest = client::BaseModelDigest(*assets);
  server::CoordinatorConfig coordinator_config = config.coordinator;
  coordinator_config.state_dir = config.out_dir;
  coordinator_config.transport.bind = placement.listen.empty()
                                          ? StrCat("inproc://fedlora-sim-", getpid())
                                          : placement.listen;
  if (coordinator_config.base_model_sha256.empty()) {
    coordinator_config.base_model_sha256 = digest;
  }
  // The first round selects from every virtual client, however fast they connect.
  if (coordinator_config.round.wait_for_clients == 0) {
    coordinator_config.round.wait_for_clients = config.num_clients;
  }
  FEDLORA_ASSIGN_OR_RETURN(
      std::unique_ptr<server::Strategy> strategy,
      server::MakeStrategy(coordinator_config.strategy, {.lora = coordinator_config.lora,
                                                         .train = coordinator_config.train,
                                                         .seed = coordinator_config.seed}));

  const auto local_clients = static_cast<std::uint32_t>(
      (config.num_clients - placement.shard + placement.shards - 1) / placement.shards);
  net::Context context;
  FEDLORA_ASSIGN_OR_RETURN(const SessionLimits limits,
                           ApplySessionLimits(local_clients, config.max_sockets, context));
  SystemClock clock;
  server::Coordinator coordinator(coordinator_config, std::move(strategy), context, clock);
  FEDLORA_RETURN_IF_ERROR(coordinator.Start());
  SimConfig local = config;
  // With CURVE (a --listen endpoint) this process's own clients pin the key it just loaded.
  if (const auto key = coordinator.public_key();
      key && local.client.security.coordinator_public_key.empty()) {
    local.client.security.coordinator_public_key = key->Z85();
  }

  FEDLORA_ASSIGN_OR_RETURN(
      std::unique_ptr<Fleet> fleet,
      Fleet::Build(local, placement, LocalEndpoint(coordinator.endpoint()), assets, context,
                   clock, ResolveBatching(config, *assets, local_clients, /*workers=*/false),
                   /*on_all_introduced=*/{}));
  coordinator.SetRoundAnnotator(
      [annotator = std::make_shared<SimAnnotator>(*fleet, VirtualElapsedSoFar(config.out_dir))](
          const server::RoundMetrics& m) { return (*annotator)(m); });
  LogInfo("simulating ", fleet->size(),
          placement.shards > 1 ? StrCat(" of ", config.num_clients) : std::string(),
          " clients on one shared base model (", digest.substr(0, 12), "...), output in ",
          config.out_dir);
  StopTargets targets{&coordinator, fleet.get()};
  OnStopSignal([](void* t) { static_cast<StopTargets*>(t)->Stop(); }, &targets);

  // A session that fails (it could not open its socket, or was refused for good) stops the run:
  // the coordinator would otherwise wait for that client forever.
  fleet->Start([&coordinator] { coordinator.Stop(); });
  const Status result = coordinator.Run();
  // Clients leave on the coordinator's Bye. Those that never got one (the run was already
  // complete when they connected, or it ended in an error or a stop) are told directly; a session
  // that already returned ignores this.
  fleet->Stop();
  fleet->Join();
  OnStopSignal([](void*) {}, nullptr);
  fleet->WarnFailures();
  if (const Status failure = fleet->FirstFailure(); !failure.ok()) {
    return failure.WithContext(StrCat("the run was stopped because a client session failed (",
                                      DescribeLimits(limits), ")"));
  }
  if (result.ok()) PrintSummary(config.out_dir);
  return result;
}

Status RunWorkers(const SimConfig& config, const Placement& placement) {
  FEDLORA_RETURN_IF_ERROR(ValidatePlacement(config, placement, /*workers=*/true));
  const std::string& endpoint = config.client.coordinator;
  if (endpoint.empty() || endpoint.rfind("inproc://", 0) == 0) {
    return InvalidArgument("workers need the coordinator's network endpoint (client.coordinator "
                           "or --coordinator, e.g. tcp://host:5555), not '", endpoint, "'");
  }
  {  // Before the model loads: a security section that cannot work fails at once.
    client::ClientConfig probe = config.client;
    probe.security.secret_key_file = ForShard(probe.security.secret_key_file, placement.shard);
    FEDLORA_ASSIGN_OR_RETURN(client::ClientTransportSecurity security,
                             client::ResolveClientSecurity(probe));
    client::LogClientSecurity(probe, security);
  }
  FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const client::ModelAssets> assets, Prepare(config));
  const std::string label = ShardLabel(placement);
  const auto local_clients = static_cast<std::uint32_t>(
      (config.num_clients - placement.shard + placement.shards - 1) / placement.shards);
  net::Context context;
  FEDLORA_ASSIGN_OR_RETURN(const SessionLimits limits,
                           ApplySessionLimits(local_clients, config.max_sockets, context));
  SystemClock clock;
  FEDLORA_ASSIGN_OR_RETURN(
      std::unique_ptr<Fleet> fleet,
      Fleet::Build(config, placement, endpoint, assets, context, clock,
                   ResolveBatching(config, *assets, local_clients, /*workers=*/true),
                   [&label, &endpoint](std::size_t n) {
                     LogInfo(label, ": all ", n, " sessions connecting to ", endpoint,
                             " (Hello sent)");
                   }));
  // The coordinator admits only clients whose Hello carries its base model's digest: every shard
  // loads client.model from the same configuration, so they all send this one.
  LogInfo(label, ": ", fleet->size(), " of ", config.num_clients, " clients (", fleet->names(),
          ") on one shared base model ", client::BaseModelDigest(*assets).substr(0, 12),
          "..., coordinator ", endpoint, ", client state in ", config.out_dir, "/clients/");
  StopTargets targets{nullptr, fleet.get()};
  OnStopSignal([](void* t) { static_cast<StopTargets*>(t)->Stop(); }, &targets);
  fleet->Start();
  fleet->Join();
  OnStopSignal([](void*) {}, nullptr);

  const Status failure = fleet->FirstFailure();
  const char* how = !failure.ok() ? "failed" : fleet->stopped() ? "stopped" : "run complete";
  LogInfo(label, ": ", how, "; rounds trained: ", fleet->RoundsTrained());
  fleet->WarnFailures();
  if (!failure.ok()) return failure.WithContext(DescribeLimits(limits));
  if (fleet->stopped()) return MakeStatus(StatusCode::kCancelled, label, " stopped by a signal");
  return OkStatus();
}

}  // namespace fedlora::sim
