// fedlora-sim — simulate a federation of many clients with the real coordinator and client code.
//
//   fedlora-sim --config configs/sim/shakespeare-fedavg.yaml [--out DIR] [--set key=value ...]
//       The whole federation in one process. Prints per-round progress, then a table; writes
//       DIR/metrics.jsonl and DIR/checkpoints/. Running again with the same --out resumes after
//       the last committed round. With --listen tcp://*:5555 --shards S it runs the coordinator
//       and shard 0 (or --shard I), and the other shards join as workers.
//
//   fedlora-sim --workers --coordinator tcp://host:5555 --shard I --shards S --config FILE
//       Only clients i with i % S == I, connecting to a coordinator that runs elsewhere. The
//       shard defaults to $FEDLORA_SHARD, else $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job),
//       else 0. Exit status: 0 when the coordinator said the run is complete or after
//       SIGINT/SIGTERM; 1 on configuration errors or when the coordinator refused a client
//       (another base model, a duplicate name); 2 on other runtime errors; 3 when
//       client.transport.max_connect_attempts ran out; 5 when the coordinator refused the
//       shard's key; 6 when the coordinator could not be verified (fedlora-client's codes).
//
//   fedlora-sim keygen --config FILE --shards S [--dir keys] [--force]
//       One CURVE key pair per shard and the authorized-clients file enrolling every virtual
//       client under its shard's key (docs/security.md).
#include <CLI/CLI.hpp>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <optional>

#include "common/log.h"
#include "sim/shard_keys.h"
#include "sim/simulator.h"

namespace {

// The default of --shard: $FEDLORA_SHARD, else $JOB_COMPLETION_INDEX, else 0. nullopt (after
// printing why) if the variable that is set is not a number.
std::optional<std::uint32_t> ShardFromEnvironment() {
  for (const char* name : {"FEDLORA_SHARD", "JOB_COMPLETION_INDEX"}) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') continue;
    std::uint32_t shard = 0;
    const char* end = value + std::strlen(value);
    const auto [ptr, ec] = std::from_chars(value, end, shard);
    if (ec != std::errc() || ptr != end) {
      std::cerr << "fedlora-sim: " << name << "='" << value << "' is not a shard index\n";
      return std::nullopt;
    }
    return shard;
  }
  return 0u;
}

int Main(int argc, char** argv) {
  using namespace fedlora;
  CLI::App app{
      "fedlora-sim: runs a federation of virtual clients (real coordinator, real clients, one\n"
      "shared frozen base model per process): all in one process over ZeroMQ inproc, or with\n"
      "--workers a shard of the clients against a remote coordinator over TCP.\n"
      "Config keys: README.md#configuration."};
  std::string config_path;
  std::string out_dir;
  std::vector<std::string> overrides;
  bool workers = false;
  std::string coordinator;
  sim::Placement placement;
  app.add_option("-c,--config", config_path, "Simulation YAML (configs/sim/*.yaml)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("-o,--out", out_dir,
                 "Output directory (default: runs/<config name>); with --workers only the "
                 "clients' state (DIR/clients/<name>/)");
  app.add_option("--set", overrides,
                 "Override a config key, e.g. --set coordinator.rounds=3 (repeatable)")
      ->take_all();
  CLI::Option* workers_flag = app.add_flag(
      "--workers", workers,
      "Run only this shard's clients, connecting over TCP to a coordinator running elsewhere "
      "(fedlora-coordinator, or fedlora-sim --listen)");
  app.add_option("--coordinator", coordinator,
                 "With --workers: the coordinator's endpoint, e.g. tcp://host:5555 (default: "
                 "client.coordinator of the config)")
      ->needs(workers_flag);
  CLI::Option* shard_option =
      app.add_option("--shard", placement.shard,
                     "Run clients i with i % shards == shard (default: $FEDLORA_SHARD, else "
                     "$JOB_COMPLETION_INDEX, else 0)");
  app.add_option("--shards", placement.shards, "Number of shards the clients are split into")
      ->capture_default_str();
  app.add_option("--client-prefix", placement.client_prefix,
                 "Client i is named <prefix><i> with at least two digits")
      ->capture_default_str();
  app.add_option("--listen", placement.listen,
                 "Without --workers: bind the in-process coordinator here (e.g. tcp://*:5555) "
                 "instead of inproc, so --workers shards can join")
      ->excludes(workers_flag);
  CLI::App* keygen = app.add_subcommand(
      "keygen", "Write one CURVE key pair per shard and enroll every virtual client under its "
                "shard's key (takes --config, --shards and --client-prefix)");
  keygen->fallthrough();
  std::string key_dir = "keys";
  bool force = false;
  keygen->add_option("--dir", key_dir, "Directory for the keys and authorized_clients")
      ->capture_default_str();
  keygen->add_flag("--force", force, "Replace existing shard keys and enrolments");
  CLI11_PARSE(app, argc, argv);

  if (app.got_subcommand(keygen)) {
    Result<sim::SimConfig> config = sim::LoadSimConfig(config_path, overrides, out_dir);
    const Status s = config.ok() ? sim::RunShardKeygen(*config, placement, key_dir, force, std::cout)
                                 : config.status();
    if (s.ok()) return 0;
    std::cerr << "fedlora-sim: " << s.ToString() << "\n";
    return 1;
  }

  if (shard_option->count() == 0) {
    const std::optional<std::uint32_t> shard = ShardFromEnvironment();
    if (!shard) return 1;
    placement.shard = *shard;
  }
  if (!coordinator.empty()) overrides.push_back("client.coordinator=" + coordinator);
  Result<sim::SimConfig> config = sim::LoadSimConfig(config_path, overrides, out_dir);
  const Status placed =
      config.ok() ? sim::ValidatePlacement(*config, placement, workers) : config.status();
  if (!placed.ok()) {
    std::cerr << "fedlora-sim: " << placed.ToString() << "\n";
    return 1;
  }

  if (workers) {
    const Status s = sim::RunWorkers(*config, placement);
    if (s.ok() || s.code() == StatusCode::kCancelled) return 0;
    std::cerr << "fedlora-sim: " << s.ToString() << "\n";
    if (s.code() == StatusCode::kFailedPrecondition || s.code() == StatusCode::kInvalidArgument ||
        s.code() == StatusCode::kNotFound) {
      return 1;
    }
    if (s.code() == StatusCode::kPermissionDenied) return 5;
    if (s.code() == StatusCode::kUnauthenticated) return 6;
    return s.code() == StatusCode::kUnavailable ? 3 : 2;
  }
  const Status s = sim::RunSimulation(*config, placement);
  if (s.ok()) return 0;
  if (s.code() == StatusCode::kCancelled) return 130;
  std::cerr << "fedlora-sim: " << s.ToString() << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {  // Last resort: a bug escaped a door.
    std::cerr << "fedlora-sim: unexpected exception: " << e.what() << "\n";
    return 3;
  }
}
