#include "sim/simulator.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
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

// What a stop signal must reach. Every call in Stop() is async-signal-safe.
struct StopTargets {
  server::Coordinator* coordinator = nullptr;
  std::vector<client::ClientSession*> sessions;
  void Stop() {
    coordinator->Stop();
    for (client::ClientSession* s : sessions) s->Stop();
  }
};

std::string ClientName(std::uint32_t i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "client-%02u", i);
  return buf;
}

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

Status RunSimulation(const SimConfig& config) {
  SetLogLevel(ParseLogLevel(config.log_level).value());
  TuneMallocForTraining();
  client::ConfigureTorchThreads(config.threads);
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(config.out_dir));

  // One frozen base model for every client.
  FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const client::ModelAssets> assets,
                           client::LoadModelAssets(config.client.model, config.client.device));
  server::CoordinatorConfig coordinator_config = config.coordinator;
  coordinator_config.state_dir = config.out_dir;
  coordinator_config.transport.bind = StrCat("inproc://fedlora-sim-", getpid());
  if (coordinator_config.base_model_sha256.empty()) {
    coordinator_config.base_model_sha256 = client::BaseModelDigest(*assets);
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

  std::mutex compute_lock;
  std::vector<std::unique_ptr<client::Worker>> workers;
  std::vector<std::unique_ptr<client::ClientSession>> sessions;
  StopTargets targets{&coordinator, {}};
  for (std::uint32_t i = 0; i < config.num_clients; ++i) {
    client::ClientConfig c = config.client;
    c.name = ClientName(i);
    c.coordinator = coordinator.endpoint();
    c.data.partition_index = i;
    c.data.num_partitions = config.num_clients;
    c.log_progress = false;  // The coordinator reports per-round progress for everyone.
    c.state_dir = StrCat(config.out_dir, "/clients/", c.name);
    if (!config.client_max_ranks.empty()) c.capabilities.max_rank = config.client_max_ranks[i];
    if (!config.client_relative_speeds.empty()) {
      c.capabilities.relative_speed = config.client_relative_speeds[i];
    }
    FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<client::Worker> worker,
                             client::MakeLocalWorker(c, assets, {.compute_lock = &compute_lock}));
    workers.push_back(std::move(worker));
    sessions.push_back(
        std::make_unique<client::ClientSession>(c, *workers.back(), context, clock));
    targets.sessions.push_back(sessions.back().get());
  }
  LogInfo("simulating ", config.num_clients, " clients on one shared base model (",
          client::BaseModelDigest(*assets).substr(0, 12), "...), output in ", config.out_dir);
  OnStopSignal([](void* t) { static_cast<StopTargets*>(t)->Stop(); }, &targets);

  std::vector<Status> client_status(sessions.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < sessions.size(); ++i) {
    threads.emplace_back([&, i] { client_status[i] = sessions[i]->Run(); });
  }
  const Status result = coordinator.Run();
  // Clients leave on the coordinator's Bye. Those that never got one (the run was already
  // complete when they connected, or it ended in an error or a stop) are told directly; a session
  // that already returned ignores this.
  for (auto& s : sessions) s->Stop();
  for (std::thread& t : threads) t.join();
  OnStopSignal([](void*) {}, nullptr);
  for (std::size_t i = 0; i < client_status.size(); ++i) {
    if (!client_status[i].ok() && client_status[i].code() != StatusCode::kCancelled) {
      LogWarn(ClientName(static_cast<std::uint32_t>(i)), " ended with ",
              client_status[i].ToString());
    }
  }
  if (result.ok()) PrintSummary(config.out_dir);
  return result;
}

}  // namespace fedlora::sim
