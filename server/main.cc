// fedlora-coordinator — the coordinator daemon, and the operator's key commands.
//
//   fedlora-coordinator --config configs/coordinator.yaml [--set key=value ...]
//   fedlora-coordinator keygen [--dir keys] [--name coordinator] [--force]
//   fedlora-coordinator clients add NAME (PUBLIC_KEY | --key-file NAME.key) [--replace]
//                                   (--config FILE | --file FILE)
//   fedlora-coordinator clients remove NAME (--config FILE | --file FILE)
//   fedlora-coordinator clients list (--config FILE | --file FILE)
//   fedlora-coordinator verify (--state-dir DIR | --config FILE)
//
// The daemon re-reads security.authorized_clients on SIGHUP and whenever the file changes; the
// sessions of keys it no longer enrolls are closed at once.
// Exit status: 0 when every round is committed or after a graceful stop (SIGINT/SIGTERM; the
// state directory lets a restart resume), 1 on configuration errors (including keys: a missing or
// unreadable key file, a secret key others may read, plaintext on a public address without
// security.allow_insecure), 2 on fatal runtime errors. The key commands exit 0 on success and 1
// on any error. `verify` checks every checkpoint against its manifest and prints one line per
// checkpoint: exit 0 when all verify, 1 when one is damaged or the directory cannot be read.
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "common/clock.h"
#include "common/log.h"
#include "common/net/zmq_transport.h"
#include "common/process.h"
#include "server/checkpoint_store.h"
#include "server/config.h"
#include "server/coordinator.h"
#include "server/key_admin.h"
#include "server/strategies/make_strategy.h"

namespace {

using namespace fedlora;

int RunDaemon(const std::string& config_path, const std::vector<std::string>& overrides) {
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

  // One descriptor per client connection: a soft limit of 1,024 would refuse the 1,000th client.
  const std::uint64_t open_files = RaiseOpenFileLimit();
  LogInfo("open-file limit ", open_files, " (about as many client connections)");
  net::Context context;
  SystemClock clock;
  server::Coordinator coordinator(*config, std::move(strategy).value(), context, clock);
  if (Status s = coordinator.Start(); !s.ok()) {
    LogError("cannot start: ", s.ToString());
    const StatusCode c = s.code();
    const bool configuration = c == StatusCode::kFailedPrecondition ||
                               c == StatusCode::kInvalidArgument || c == StatusCode::kNotFound ||
                               c == StatusCode::kPermissionDenied;
    return configuration ? 1 : 2;
  }
  OnStopSignal([](void* c) { static_cast<server::Coordinator*>(c)->Stop(); }, &coordinator);
  OnReloadSignal([](void* c) { static_cast<server::Coordinator*>(c)->Reload(); }, &coordinator);
  const Status s = coordinator.Run();
  // The coordinator is about to be destroyed (after its sockets linger): no signal may reach it.
  OnStopSignal([](void*) {}, nullptr);
  OnReloadSignal([](void*) {}, nullptr);
  if (s.ok() || s.code() == StatusCode::kCancelled) return 0;
  LogError("coordinator stopped: ", s.ToString());
  return 2;
}

// `verify`: every checkpoint of the state directory, oldest first, then those set aside.
int RunVerify(std::string state_dir, const std::string& config_path,
              const std::vector<std::string>& overrides) {
  if (state_dir.empty()) {
    Result<server::CoordinatorConfig> config =
        server::LoadCoordinatorConfig(config_path, overrides);
    if (!config.ok()) {
      std::cerr << "fedlora-coordinator: " << config.status().ToString() << "\n";
      return 1;
    }
    state_dir = config->state_dir;
  }
  Result<std::vector<server::CheckpointCheck>> checks =
      server::CheckpointStore::VerifyAll(state_dir);
  if (!checks.ok()) {
    std::cerr << "fedlora-coordinator: " << checks.status().ToString() << "\n";
    return 1;
  }
  std::size_t damaged = 0;
  for (const server::CheckpointCheck& c : *checks) {
    if (c.status.ok()) {
      std::cout << "round " << c.round << ": OK " << c.dir << "\n";
    } else {
      ++damaged;
      std::cout << "round " << c.round << ": DAMAGED " << c.status.message() << "\n";
    }
  }
  std::cout << checks->size() - damaged << " of " << checks->size() << " checkpoint(s) verified"
            << (damaged > 0 ? StrCat(", ", damaged, " damaged") : std::string()) << "\n";
  return damaged == 0 ? 0 : 1;
}

int Main(int argc, char** argv) {
  CLI::App app{
      "fedlora-coordinator: aggregates LoRA adapter uploads from fedlora clients over ZeroMQ.\n"
      "Runs the configured rounds, checkpointing every round to state_dir; restarted with the\n"
      "same state_dir it resumes at the next round. Config keys: README.md#configuration.\n"
      "Keys and enrolment: docs/security.md."};
  std::string config_path;
  std::vector<std::string> overrides;
  app.add_option("-c,--config", config_path, "YAML configuration file")->check(CLI::ExistingFile);
  app.add_option("--set", overrides, "Override a config key, e.g. --set rounds=5 (repeatable)")
      ->take_all();

  CLI::App* keygen = app.add_subcommand(
      "keygen", "Create the coordinator's CURVE key pair (secret file mode 0600) and print the "
                "public key clients pin");
  std::string key_dir = "keys", key_name = "coordinator";
  bool force = false;
  keygen->add_option("--dir", key_dir, "Directory for the key files")->capture_default_str();
  keygen->add_option("--name", key_name, "Files are <dir>/<name>.key_secret and <dir>/<name>.key")
      ->capture_default_str();
  keygen->add_flag("--force", force, "Replace existing key files (every client must re-pin)");

  CLI::App* clients = app.add_subcommand(
      "clients", "Edit the authorized-clients file (a running coordinator picks changes up)");
  clients->require_subcommand(1);
  std::string file, name, public_key, key_file;
  const auto add_target = [&](CLI::App* sub) {
    sub->add_option("--file", file, "The authorized-clients file");
    sub->add_option("-c,--config", config_path,
                    "Coordinator config whose security.authorized_clients to edit")
        ->check(CLI::ExistingFile);
    sub->add_option("--set", overrides, "Override a config key (repeatable)")->take_all();
  };
  CLI::App* add = clients->add_subcommand("add", "Enroll a client name with its public key");
  add->add_option("name", name, "Client name ([A-Za-z0-9._-], 1-64 characters)")->required();
  CLI::Option* key_text =
      add->add_option("public_key", public_key, "Its CURVE public key (Z85, 40 characters)");
  add->add_option("--key-file", key_file, "...or its public key file (<name>.key from keygen)")
      ->excludes(key_text);
  bool replace = false;
  add->add_flag("--replace", replace,
                "Give an enrolled name a new key (rotation; its old key's session closes)");
  add_target(add);
  CLI::App* remove = clients->add_subcommand("remove", "Revoke a client name");
  remove->add_option("name", name, "Client name")->required();
  add_target(remove);
  CLI::App* list = clients->add_subcommand("list", "List the enrolled clients");
  add_target(list);
  CLI::App* verify = app.add_subcommand(
      "verify", "Check every checkpoint of a state directory against its manifest (SHA-256 of "
                "each file); exit 1 if any is damaged");
  std::string state_dir;
  CLI::Option* state_dir_option =
      verify->add_option("--state-dir", state_dir, "The coordinator's state_dir");
  verify->add_option("-c,--config", config_path, "...or the config whose state_dir to check")
      ->check(CLI::ExistingFile)
      ->excludes(state_dir_option);
  verify->add_option("--set", overrides, "Override a config key (repeatable)")->take_all();
  CLI11_PARSE(app, argc, argv);

  if (app.got_subcommand(verify)) {
    if (state_dir.empty() && config_path.empty()) {
      std::cerr << "fedlora-coordinator verify: --state-dir DIR or --config FILE is required\n";
      return 1;
    }
    return RunVerify(state_dir, config_path, overrides);
  }

  if (app.got_subcommand(keygen) || app.got_subcommand(clients)) {
    Status s;
    if (app.got_subcommand(keygen)) {
      s = server::RunCoordinatorKeygen(key_dir, key_name, force, std::cout);
    } else {
      Result<std::string> path = server::AuthorizedClientsPath(file, config_path, overrides);
      s = path.status();
      if (path.ok() && clients->got_subcommand(add)) {
        s = server::RunClientsAdd(*path, name, public_key, key_file, replace, std::cout);
      } else if (path.ok() && clients->got_subcommand(remove)) {
        s = server::RunClientsRemove(*path, name, std::cout);
      } else if (path.ok()) {
        s = server::RunClientsList(*path, std::cout);
      }
    }
    if (s.ok()) return 0;
    std::cerr << "fedlora-coordinator: " << s.ToString() << "\n";
    return 1;
  }
  return RunDaemon(config_path, overrides);
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
