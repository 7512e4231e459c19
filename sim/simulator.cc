#include "sim/simulator.h"

#include <unistd.h>

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
#include "common/clock.h"
#include "common/config/yaml_config.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/net/zmq_transport.h"
#include "common/process.h"
#include "server/coordinator.h"
#include "server/strategies/make_strategy.h"

namespace fedlora::sim {
namespace {

std::string ClientName(const std::string& prefix, std::uint32_t i) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%02u", i);
  return prefix + buf;
}

// A Worker that forwards to the real one and counts what it did, for the fleet's log lines.
// Describe() runs on the session thread, Train() on the session's job thread: atomics.
class CountingWorker final : public client::Worker {
 public:
  // `on_first_hello` runs on the session thread the first time the session introduces itself.
  CountingWorker(std::unique_ptr<client::Worker> inner, std::function<void()> on_first_hello)
      : inner_(std::move(inner)), on_first_hello_(std::move(on_first_hello)) {}

  wire::Hello Describe() const override {
    wire::Hello hello = inner_->Describe();
    if (!said_hello_.exchange(true)) on_first_hello_();
    return hello;
  }
  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override {
    Result<wire::Update> update = inner_->Train(task, std::move(stop));
    if (update.ok()) rounds_trained_.fetch_add(1);
    return update;
  }
  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token stop) override {
    return inner_->Evaluate(task, std::move(stop));
  }

  std::uint32_t rounds_trained() const { return rounds_trained_.load(); }

 private:
  std::unique_ptr<client::Worker> inner_;
  std::function<void()> on_first_hello_;
  mutable std::atomic<bool> said_hello_{false};
  std::atomic<std::uint32_t> rounds_trained_{0};
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
      const Clock& clock, std::function<void(std::size_t)> on_all_introduced) {
    std::unique_ptr<Fleet> fleet(new Fleet());
    std::vector<std::uint32_t> indices;
    for (std::uint32_t i = placement.shard; i < config.num_clients; i += placement.shards) {
      indices.push_back(i);
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
      // Global index of num_clients in every placement: the shards together hold exactly the
      // single-process federation's data.
      c.data.partition_index = i;
      c.data.num_partitions = config.num_clients;
      c.log_progress = false;  // The coordinator reports per-round progress for everyone.
      c.state_dir = StrCat(config.out_dir, "/clients/", c.name);
      if (!config.client_max_ranks.empty()) c.capabilities.max_rank = config.client_max_ranks[i];
      if (!config.client_relative_speeds.empty()) {
        c.capabilities.relative_speed = config.client_relative_speeds[i];
      }
      Result<std::unique_ptr<client::Worker>> local =
          client::MakeLocalWorker(c, assets, {.compute_lock = &fleet->compute_lock_});
      if (!local.ok()) return local.status().WithContext(c.name);
      Member& m = fleet->members_.emplace_back();
      m.name = c.name;
      m.worker = std::make_unique<CountingWorker>(std::move(local).value(), on_first_hello);
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

  // Runs every session on a thread of its own. With `stop_all_on_error`, the first session that
  // fails (any status but OK and kCancelled) stops the others, so the process can report it.
  void Start(bool stop_all_on_error) {
    for (Member& m : members_) {
      threads_.emplace_back([this, &m, stop_all_on_error] {
        m.status = m.session->Run();
        if (stop_all_on_error && !m.status.ok() && m.status.code() != StatusCode::kCancelled) {
          StopSessions();
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
    std::unique_ptr<CountingWorker> worker;
    std::unique_ptr<client::ClientSession> session;
    Status status;  // Written by the member's thread; read after Join().
  };

  Fleet() = default;

  void StopSessions() {  // Async-signal-safe: members_ is not resized after Build.
    for (Member& m : members_) m.session->Stop();
  }

  std::mutex compute_lock_;        // Outlives the workers (declared before members_).
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

// Prints the per-round table from metrics.jsonl once the run is over.
void PrintSummary(const std::string& out_dir) {
  Result<std::string> text = fs::ReadFile(out_dir + "/metrics.jsonl");
  if (!text.ok()) return;
  std::printf("\n%-6s %-9s %-11s %-11s %-12s %-12s %-8s\n", "round", "clients", "train_loss",
              "eval_loss", "bytes_up", "bytes_down", "seconds");
  std::size_t start = 0;
  double first_eval = NAN, last_eval = NAN;
  while (start < text->size()) {
    std::size_t end = text->find('\n', start);
    if (end == std::string::npos) end = text->size();
    const std::string line = text->substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
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

}  // namespace

Result<SimConfig> LoadSimConfig(const std::string& path, const std::vector<std::string>& overrides,
                                const std::string& out_dir) {
  FEDLORA_ASSIGN_OR_RETURN(config::ConfigDocument doc, config::ConfigDocument::Load(path, overrides));
  const config::ConfigSection root = doc.Root();
  SimConfig c;
  FEDLORA_RETURN_IF_ERROR(root.Read("num_clients", &c.num_clients));
  FEDLORA_RETURN_IF_ERROR(root.Read("threads", &c.threads));
  FEDLORA_RETURN_IF_ERROR(root.Read("log_level", &c.log_level));
  FEDLORA_RETURN_IF_ERROR(root.Read("client_max_ranks", &c.client_max_ranks));
  FEDLORA_RETURN_IF_ERROR(root.Read("client_relative_speeds", &c.client_relative_speeds));
  FEDLORA_RETURN_IF_ERROR(server::ParseCoordinatorConfig(root.Section("coordinator"), &c.coordinator));
  FEDLORA_RETURN_IF_ERROR(client::ParseClientConfig(root.Section("client"), &c.client));
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
  FEDLORA_ASSIGN_OR_RETURN(
      std::unique_ptr<server::Strategy> strategy,
      server::MakeStrategy(coordinator_config.strategy, {.lora = coordinator_config.lora,
                                                         .train = coordinator_config.train,
                                                         .seed = coordinator_config.seed}));

  net::Context context;
  SystemClock clock;
  server::Coordinator coordinator(coordinator_config, std::move(strategy), context, clock);
  FEDLORA_RETURN_IF_ERROR(coordinator.Start());

  FEDLORA_ASSIGN_OR_RETURN(
      std::unique_ptr<Fleet> fleet,
      Fleet::Build(config, placement, LocalEndpoint(coordinator.endpoint()), assets, context,
                   clock, /*on_all_introduced=*/{}));
  LogInfo("simulating ", fleet->size(),
          placement.shards > 1 ? StrCat(" of ", config.num_clients) : std::string(),
          " clients on one shared base model (", digest.substr(0, 12), "...), output in ",
          config.out_dir);
  StopTargets targets{&coordinator, fleet.get()};
  OnStopSignal([](void* t) { static_cast<StopTargets*>(t)->Stop(); }, &targets);

  fleet->Start(/*stop_all_on_error=*/false);
  const Status result = coordinator.Run();
  // Clients leave on the coordinator's Bye. Those that never got one (the run was already
  // complete when they connected, or it ended in an error or a stop) are told directly; a session
  // that already returned ignores this.
  fleet->Stop();
  fleet->Join();
  OnStopSignal([](void*) {}, nullptr);
  fleet->WarnFailures();
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
  FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const client::ModelAssets> assets, Prepare(config));
  const std::string label = ShardLabel(placement);
  net::Context context;
  SystemClock clock;
  FEDLORA_ASSIGN_OR_RETURN(
      std::unique_ptr<Fleet> fleet,
      Fleet::Build(config, placement, endpoint, assets, context, clock,
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
  fleet->Start(/*stop_all_on_error=*/true);
  fleet->Join();
  OnStopSignal([](void*) {}, nullptr);

  const Status failure = fleet->FirstFailure();
  const char* how = !failure.ok() ? "failed" : fleet->stopped() ? "stopped" : "run complete";
  LogInfo(label, ": ", how, "; rounds trained: ", fleet->RoundsTrained());
  fleet->WarnFailures();
  if (!failure.ok()) return failure;
  if (fleet->stopped()) return MakeStatus(StatusCode::kCancelled, label, " stopped by a signal");
  return OkStatus();
}

}  // namespace fedlora::sim
