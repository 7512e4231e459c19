// fedlora-coordinator — the coordinator daemon.
//
//   fedlora-coordinator --config configs/coordinator.yaml [--set key=value ...]
//
// Exit status: 0 when every round is committed or after a graceful stop (SIGINT/SIGTERM; the
// state directory lets a restart resume), 1 on configuration errors, 2 on fatal runtime errors.
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "common/clock.h"
#include "common/log.h"
#include "common/net/zmq_transport.h"
#include "common/process.h"
#include "server/config.h"
#include "server/coordinator.h"
#include "server/strategies/make_strategy.h"

namespace {

int Main(int argc, char** argv) {
  using namespace fedlora;
  CLI::App app{
      "fedlora-coordinator: aggregates LoRA adapter uploads from fedlora clients over ZeroMQ.\n"
      "Runs the configured rounds, checkpointing every round to state_dir; restarted with the\n"
      "same state_dir it resumes at the next round. Config keys: README.md#configuration."};
  std::string config_path;
  std::vector<std::string> overrides;
  app.add_option("-c,--config", config_path, "YAML configuration file")->check(CLI::ExistingFile);
  app.add_option("--set", overrides, "Override a config key, e.g. --set rounds=5 (repeatable)")
      ->take_all();
  CLI11_PARSE(app, argc, argv);

  Result<server::CoordinatorConfig> config = server::LoadCoordinatorConfig(config_path, overrides);
  if (!config.ok()) {
    std::cerr << "fedlora-coordinator: " << config.status().ToString() << "\n";
    return 1;
  }
  SetLogLevel(ParseLogLevel(config->log_level).value());
  Result<std::unique_ptr<server::Strategy>> strategy = server::MakeStrategy(
      config->strategy, {.lora = config->lora, .train = config->train, .seed = config->seed});
  if (!strategy.ok()) {
    std::cerr << "fedlora-coordinator: " << strategy.status().ToString() << "\n";
    return 1;
  }

  net::Context context;
  SystemClock clock;
  server::Coordinator coordinator(*config, std::move(strategy).value(), context, clock);
  if (Status s = coordinator.Start(); !s.ok()) {
    LogError("cannot start: ", s.ToString());
    return s.code() == StatusCode::kFailedPrecondition ? 1 : 2;
  }
  OnStopSignal([](void* c) { static_cast<server::Coordinator*>(c)->Stop(); }, &coordinator);
  const Status s = coordinator.Run();
  // The coordinator is about to be destroyed (after its sockets linger): no signal may reach it.
  OnStopSignal([](void*) {}, nullptr);
  if (s.ok() || s.code() == StatusCode::kCancelled) return 0;
  LogError("coordinator stopped: ", s.ToString());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {  // Last resort: a bug escaped a door.
    std::cerr << "fedlora-coordinator: unexpected exception: " << e.what() << "\n";
    return 3;
  }
}
