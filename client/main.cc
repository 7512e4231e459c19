// fedlora-client — a data owner's training client.
//
//   fedlora-client --config configs/client.yaml [--set key=value ...]
//   fedlora-client --config configs/client.yaml --print-digest
//
// Loads the frozen base model and this client's private data, connects to the coordinator and
// trains LoRA adapters round after round until the coordinator says the run is complete.
// Exit status: 0 when training completed or after SIGINT/SIGTERM, 1 on configuration errors or
// when the coordinator refuses this client, 2 on other errors, 3 if the coordinator stayed
// unreachable for transport.max_connect_attempts.
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "client/config.h"
#include "client/local_worker.h"
#include "client/session.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/net/zmq_transport.h"
#include "common/process.h"

namespace {

int Main(int argc, char** argv) {
  using namespace fedlora;
  CLI::App app{
      "fedlora-client: fine-tunes LoRA adapters of a frozen Llama model on local data and\n"
      "exchanges them with a fedlora coordinator. Data never leaves this machine; only adapter\n"
      "factors travel. Config keys: README.md#configuration."};
  std::string config_path;
  std::vector<std::string> overrides;
  bool print_digest = false;
  app.add_option("-c,--config", config_path, "YAML configuration file")->check(CLI::ExistingFile);
  app.add_option("--set", overrides, "Override a config key, e.g. --set name=alice (repeatable)")
      ->take_all();
  app.add_flag("--print-digest", print_digest,
               "Print the base model's SHA-256 (for the coordinator's base_model_sha256) and exit");
  CLI11_PARSE(app, argc, argv);

  Result<client::ClientConfig> config = client::LoadClientConfig(config_path, overrides);
  if (!config.ok()) {
    std::cerr << "fedlora-client: " << config.status().ToString() << "\n";
    return 1;
  }
  SetLogLevel(ParseLogLevel(config->log_level).value());
  TuneMallocForTraining();
  client::ConfigureTorchThreads(config->threads);

  Result<std::shared_ptr<const client::ModelAssets>> assets =
      client::LoadModelAssets(config->model);
  if (!assets.ok()) {
    std::cerr << "fedlora-client: " << assets.status().ToString() << "\n";
    return 1;
  }
  if (print_digest) {
    std::cout << client::BaseModelDigest(**assets) << "\n";
    return 0;
  }
  Result<std::unique_ptr<client::Worker>> worker = client::MakeLocalWorker(*config, *assets);
  if (!worker.ok()) {
    std::cerr << "fedlora-client: " << worker.status().ToString() << "\n";
    return 1;
  }

  net::Context context;
  SystemClock clock;
  client::ClientSession session(*config, **worker, context, clock);
  OnStopSignal([](void* s) { static_cast<client::ClientSession*>(s)->Stop(); }, &session);
  LogInfo("client ", config->name, " starting; coordinator ", config->coordinator);
  const Status s = session.Run();
  OnStopSignal([](void*) {}, nullptr);  // The session is about to be destroyed.
  if (s.ok() || s.code() == StatusCode::kCancelled) return 0;
  LogError("client stopped: ", s.ToString());
  if (s.code() == StatusCode::kFailedPrecondition) return 1;
  if (s.code() == StatusCode::kUnavailable) return 3;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {  // Last resort: a bug escaped a door.
    std::cerr << "fedlora-client: unexpected exception: " << e.what() << "\n";
    return 4;
  }
}
