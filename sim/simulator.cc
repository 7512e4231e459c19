// simulator.cc — fedlora-sim's run (simulator.h): assets once, the real coordinator, the virtual
// clients (fleet.h) with the real session code (one process, or worker shards over TCP), progress
// and the summary. The parts with a job of their own have their own files (fleet, check_in,
// fleet_model, adversary, session_limits, shard_keys, the batcher).
#include "sim/simulator.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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
#include "sim/fleet.h"
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

// What a stop signal must reach. Every call in Stop() is async-signal-safe.
struct StopTargets {
  server::Coordinator* coordinator = nullptr;  // Null in workers mode.
  Fleet* fleet = nullptr;
  void Stop() {
    if (coordinator != nullptr) coordinator->Stop();
    fleet->StopFromSignal();
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

  // Seconds from the start of the run to the first clients' sessions (assets, records, the
  // coordinator's start and the first check-in).
  void set_startup_seconds(double s) { startup_s_.store(s); }
  double startup_seconds() const { return startup_s_.load(); }

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
    out.emplace_back("startup_s", startup_s_.load());
    if (fleet_.per_round() > 0) {  // Sessions per round: who checked in, what stays resident.
      const Fleet::CheckInReport check_in = fleet_.LastCheckIn();
      out.emplace_back("checked_in", check_in.checked_in);
      out.emplace_back("checkin_offline", check_in.offline);
      out.emplace_back("clients_tokenized", static_cast<double>(mem.tokenized));
      out.emplace_back("records_mb", static_cast<double>(mem.records_bytes) / (1 << 20));
      out.emplace_back("client_state_mb", static_cast<double>(mem.state_bytes_total) / (1 << 20));
    }
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
  std::atomic<double> startup_s_{0};
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

std::uint32_t ClientsPerRound(const SimConfig& config) {
  const server::RoundConfig& r = config.coordinator.round;
  auto n = static_cast<std::uint32_t>(std::ceil(r.fraction * config.num_clients));
  n = std::max(n, r.min_clients);
  if (r.max_clients != 0) n = std::min(n, r.max_clients);
  return std::clamp<std::uint32_t>(n, 1, config.num_clients);
}

Result<SimConfig> LoadSimConfig(const std::string& path, const std::vector<std::string>& overrides,
                                const std::string& out_dir) {
  FEDLORA_ASSIGN_OR_RETURN(config::ConfigDocument doc, config::ConfigDocument::Load(path, overrides));
  const config::ConfigSection root = doc.Root();
  SimConfig c;
  FEDLORA_RETURN_IF_ERROR(root.Read("num_clients", &c.num_clients));
  FEDLORA_RETURN_IF_ERROR(root.Read("threads", &c.threads));
  FEDLORA_RETURN_IF_ERROR(root.Read("max_sockets", &c.max_sockets));
  std::string sessions = "persistent";
  FEDLORA_RETURN_IF_ERROR(root.Read("sessions", &sessions));
  if (sessions == "per_round") {
    c.sessions = SessionMode::kPerRound;
  } else if (sessions != "persistent") {
    return InvalidArgument(root.PathOf("sessions"), ": '", sessions,
                           "' is not a session mode (expected persistent or per_round)");
  }
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
  if (!c.client.ops.listen.empty()) {
    return InvalidArgument(root.PathOf("client"),
                           ".ops.listen: the simulator's virtual clients "
                           "serve no ops endpoint (the in-process coordinator does: "
                           "coordinator.ops.listen)");
  }
  if (c.sessions == SessionMode::kPerRound && c.coordinator.privacy.enabled) {
    return InvalidArgument(root.PathOf("sessions"),
                           ": per_round does not combine with "
                           "coordinator.privacy: its sampling rate is over every live client, and "
                           "per round only the checked-in clients are live (use persistent)");
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
  if (config.sessions == SessionMode::kPerRound && (workers || placement.shards > 1)) {
    return InvalidArgument(
        "sessions: per_round runs in one process: the in-process coordinator "
        "tells the fleet when a round is over (use persistent with --workers "
        "or shards)");
  }
  if (!workers && placement.shards > 1 && placement.listen.empty()) {
    return InvalidArgument("shards > 1 needs a listen endpoint: the other shards could not reach "
                           "an inproc coordinator");
  }
  return OkStatus();
}

Status RunSimulation(const SimConfig& config, const Placement& placement) {
  const auto began = std::chrono::steady_clock::now();
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
  const bool per_round = config.sessions == SessionMode::kPerRound;
  if (per_round) {
    // Every client that checked in is selected: ClientsPerRound of them, already a sample.
    coordinator_config.round.fraction = 1.0;
    coordinator_config.round.wait_for_clients = ClientsPerRound(config);
  } else if (coordinator_config.round.wait_for_clients == 0) {
    // The first round selects from every virtual client, however fast they connect.
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
  FEDLORA_ASSIGN_OR_RETURN(
      const SessionLimits limits,
      // Per round, the retired clients' sockets may linger (their Bye) while the next open.
      ApplySessionLimits(per_round ? 2 * ClientsPerRound(config) : local_clients,
                         config.max_sockets, context));
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
  const auto annotator =
      std::make_shared<SimAnnotator>(*fleet, VirtualElapsedSoFar(config.out_dir));
  coordinator.SetRoundAnnotator(
      [annotator](const server::RoundMetrics& m) { return (*annotator)(m); });
  if (per_round)
    coordinator.SetRoundGate(
        [f = fleet.get()](std::uint64_t round, const std::vector<std::string>& live) {
          return f->RoundReady(round, live);
        });
  LogInfo("simulating ", fleet->size(),
          placement.shards > 1 ? StrCat(" of ", config.num_clients) : std::string(),
          " clients on one shared base model (", digest.substr(0, 12), "...), output in ",
          config.out_dir);
  if (per_round) {
    LogInfo("sessions per round: ", fleet->per_round(), " clients check in each round (drawn ",
            config.fleet.enabled ? "among those the fleet has online" : "uniformly",
            ") and all of them are selected; the others are records without a session");
  }
  StopTargets targets{&coordinator, fleet.get()};
  OnStopSignal([](void* t) { static_cast<StopTargets*>(t)->Stop(); }, &targets);

  // A session that fails (it could not open its socket, or was refused for good) stops the run:
  // the coordinator would otherwise wait for that client forever.
  const server::CoordinatorCounters resumed = coordinator.counters();
  if (Status started = fleet->Start(resumed.has_committed ? resumed.committed_round + 1 : 0,
                                    [&coordinator] { coordinator.Stop(); });
      !started.ok()) {
    OnStopSignal([](void*) {}, nullptr);
    return started;
  }
  annotator->set_startup_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
  LogInfo("start-up: ", Fixed4(annotator->startup_seconds()), " s to the first clients' sessions");
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
  FEDLORA_RETURN_IF_ERROR(fleet->Start(/*first_round=*/0));
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
