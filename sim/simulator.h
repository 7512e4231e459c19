// simulator.h — a federation of virtual clients: the real coordinator and N real client sessions.
//
// The coordinator and every client session run the production code, so what is simulated is
// what is deployed. All clients of one process share one read-only copy of the frozen base model
// (ModelAssets); each holds only its data (and private factors) between tasks, and an adapter
// with its optimiser state while it trains. Training goes through one TrainingBatcher
// (client/train/training_batcher.h): batched groups of clients on `batching.lanes` threads.
// Evaluations take turns through one compute lock per lane. With a `fleet` section, a virtual
// clock (fleet_model.h) decides which clients are offline, drop out or miss the deadline, and
// times each round as that fleet would.
//
// Sessions (`sessions`): persistent (every client connected for the whole run) or per_round
// (clients are records; each round the clients that check in get sessions; fleet.h), which is
// what lets one machine hold 10^5 clients.
//
// Two modes:
//   RunSimulation: the whole federation in one process over ZeroMQ inproc (or, with
//     Placement::listen, a coordinator that shards on other machines can join over TCP).
//   RunWorkers: only a shard of the clients, connecting over TCP to a coordinator running
//     elsewhere (fedlora-coordinator, or a fedlora-sim with --listen). The shards together hold
//     exactly the single-process federation's clients and data: client i keeps its global name,
//     its data partition i of num_clients and its per-client capabilities in every placement.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "client/config.h"
#include "common/status.h"
#include "server/config.h"
#include "sim/adversary.h"
#include "sim/fleet_model.h"

namespace fedlora::sim {

// How the virtual clients' training tasks are grouped into batched steps over the shared base
// (client/train/training_batcher.h). The `batching` section.
struct BatchingConfig {
  // K, clients per batched group: 0 = auto: on a CPU as many as fill one pass of max_rows_per_pass
  // rows (1 when a client's own batch fills it), on a GPU a lane's share of the clients a round
  // selects (in workers mode, of the shard's clients); 1 = no batching (each client trains
  // alone).
  std::uint32_t clients = 0;
  // Rows per forward/backward pass: 0 = auto (on a CPU about 1024 tokens' worth, which keeps a
  // core busy and the activations in cache; on a GPU as many as memory_budget_mb holds, or no
  // bound without a budget).
  std::uint32_t max_rows_per_pass = 0;
  // Activation memory a pass may take, in MiB; 0 = no budget on a GPU, a quarter of physical
  // memory (shared by the lanes) on a CPU.
  std::uint64_t memory_budget_mb = 0;
  // Groups trained at once, each on its own thread: 0 = auto (on a CPU one per core, or cores /
  // `threads` when threads is set, each lane with `threads` (default 1) LibTorch threads; on a
  // GPU 1).
  std::uint32_t lanes = 0;
};

// How virtual clients hold their sessions (fleet.h). YAML key `sessions`.
enum class SessionMode {
  kPersistent,  // "persistent": every client connected for the whole run (the default).
  kPerRound,    // "per_round": clients are records; those that check in for a round connect.
};

struct SimConfig {
  std::uint32_t num_clients = 8;
  std::uint32_t threads = 0;          // LibTorch intra-op threads; 0 = all cores (per lane: 1).
  std::string log_level = "info";
  std::string out_dir;                // metrics.jsonl and checkpoints/ go here; clients/<name>/.
  // Per-client declared capabilities, one entry per client (or empty): a heterogeneous fleet
  // for the rank policies (strategy.rank_policy: capability | legend).
  std::vector<std::uint32_t> client_max_ranks;
  std::vector<double> client_relative_speeds;
  // Same keys as configs/coordinator.yaml; transport.bind and state_dir are set by the simulator.
  // Unused by RunWorkers (the remote coordinator has its own configuration).
  server::CoordinatorConfig coordinator;
  // Same keys as configs/client.yaml, shared by all clients; name and data.partition_index /
  // num_partitions are set per client (client-00 gets partition 0, ...). `coordinator` is the
  // endpoint RunWorkers connects to; RunSimulation sets it to its own coordinator.
  client::ClientConfig client;
  BatchingConfig batching;
  // The simulated fleet's speeds, bandwidths and availability, and the virtual clock (the
  // `fleet` section; absent: every client reports and round times are this machine's).
  FleetConfig fleet;
  // Clients that corrupt their uploads (the `adversary` section, adversary.h); none by default.
  AdversaryConfig adversary;
  // ZeroMQ sockets this process may open; 0: what its client sessions need (2 each, plus a
  // margin; session_limits.h). A lower value makes sessions fail to open: for testing that path.
  std::uint32_t max_sockets = 0;
  // per_round: only the clients a round checks in (ClientsPerRound, drawn among those online)
  // have sessions, and the coordinator selects all of them. Single process only (no --workers,
  // no shards), and not with coordinator.privacy (its sampling rate needs the population).
  SessionMode sessions = SessionMode::kPersistent;
};

// Which of the config's clients this process runs and how it is reached. A value.
struct Placement {
  // This process runs clients i (0 <= i < num_clients) with i % shards == shard.
  std::uint32_t shard = 0;
  std::uint32_t shards = 1;
  // Client i is named `<client_prefix><i, two digits at least>` ("client-07").
  std::string client_prefix = "client-";
  // RunSimulation only: where the in-process coordinator binds ("tcp://*:5555"), so that
  // `fedlora-sim --workers` shards can join; empty = a private inproc endpoint.
  std::string listen;
};

// The clients one round selects: coordinator.round.fraction of num_clients, clamped to
// [min_clients, max_clients] and to [1, num_clients].
std::uint32_t ClientsPerRound(const SimConfig& config);

// Client i's name: `prefix` and i with at least two digits ("client-07").
std::string ClientName(const std::string& prefix, std::uint32_t i);
// `path` with every "{shard}" replaced by `shard` (client.security.secret_key_file of shards).
std::string ForShard(std::string path, std::uint32_t shard);

// Loads `path` with `--set` overrides ("coordinator.rounds=3"). `out_dir` empty: runs/<stem of
// the config file>. Errors name the file, line and key.
Result<SimConfig> LoadSimConfig(const std::string& path, const std::vector<std::string>& overrides,
                                const std::string& out_dir);

// kInvalidArgument if `placement` does not fit `config` and the mode (shards == 0, shard >=
// shards, a shard without clients, an empty prefix; `workers` with a listen endpoint, or more
// than one shard in a single process without one).
Status ValidatePlacement(const SimConfig& config, const Placement& placement, bool workers);

// Runs the coordinator and this placement's clients (all of them by default) to completion. OK
// when every round committed; kCancelled if stopped by a signal (the output directory can be
// resumed by running again with the same --out).
Status RunSimulation(const SimConfig& config, const Placement& placement = {});

// Runs this placement's clients against the coordinator at config.client.coordinator until it
// says the run is complete (every session got Bye: OK) or a signal stops them (kCancelled).
// Logs one line when every session has sent its Hello and one with the rounds each client
// trained. Errors: those of loading the model and data; kFailedPrecondition if the coordinator
// refused a client for good (another base model, a duplicate or invalid name); kUnavailable if
// client.transport.max_connect_attempts ran out. The first session to fail stops the others.
Status RunWorkers(const SimConfig& config, const Placement& placement);

}  // namespace fedlora::sim
