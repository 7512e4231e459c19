// simulator.h — a whole federation in one process: the real coordinator and N real clients.
//
// The coordinator and every client session run the production code over ZeroMQ's inproc
// transport, so what is simulated is what is deployed. All clients share one read-only copy of
// the frozen base model (ModelAssets); each holds only its own data, adapter and optimiser
// state. Training takes turns on the cores through one compute lock.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "client/config.h"
#include "common/status.h"
#include "server/config.h"

namespace fedlora::sim {

struct SimConfig {
  std::uint32_t num_clients = 8;
  std::uint32_t threads = 0;          // LibTorch intra-op threads; 0 = all cores.
  std::string log_level = "info";
  std::string out_dir;                // metrics.jsonl and checkpoints/ go here.
  // Per-client declared capabilities, one entry per client (or empty): a heterogeneous fleet
  // for the rank policies (strategy.rank_policy: capability | legend).
  std::vector<std::uint32_t> client_max_ranks;
  std::vector<double> client_relative_speeds;
  // Same keys as configs/coordinator.yaml; transport.bind and state_dir are set by the simulator.
  server::CoordinatorConfig coordinator;
  // Same keys as configs/client.yaml, shared by all clients; name, coordinator and
  // data.partition_index / num_partitions are set per client (client-00 gets partition 0, ...).
  client::ClientConfig client;
};

// Loads `path` with `--set` overrides ("coordinator.rounds=3"). `out_dir` empty: runs/<stem of
// the config file>. Errors name the file, line and key.
Result<SimConfig> LoadSimConfig(const std::string& path, const std::vector<std::string>& overrides,
                                const std::string& out_dir);

// Runs the simulation to completion. OK when every round committed; kCancelled if stopped by a
// signal (the output directory can be resumed by running again with the same --out).
Status RunSimulation(const SimConfig& config);

}  // namespace fedlora::sim
