// fedlora-client — a data owner's training client.
//
//   fedlora-client --config configs/client.yaml [--set key=value ...]
//   fedlora-client --config configs/client.yaml --print-digest
//   fedlora-client generate --model DIR [--adapter DIR] --prompt TEXT [--template alpaca] ...
//   fedlora-client tokenize --tokenizer PATH --text-file FILE [--no-special]
//   fedlora-client logits --model DIR --ids FILE.json [--adapter DIR] --out FILE.safetensors
//   fedlora-client export-merged --model DIR --adapter DIR --out DIR [--dtype bf16]
//   fedlora-client keygen --name NAME [--dir keys] [--force]
//
// Loads the frozen base model and this client's private data, connects to the coordinator and
// trains LoRA adapters round after round until the coordinator says the run is complete.
// Exit status: 0 when training completed or after SIGINT/SIGTERM, 1 on configuration errors
// (including the security section: missing keys, a secret key file others may read) or when the
// coordinator refuses this client (another base model, protocol version, an invalid name), 2 on
// other errors, 3 if the coordinator stayed unreachable for transport.max_connect_attempts, 4 on
// an internal error, 5 when the coordinator refused this client's key (not enrolled, enrolled
// under another name, or revoked), 6 when the coordinator could not be verified (its key is not
// security.coordinator_public_key) or speaks another security mechanism (plaintext vs CURVE).
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "client/client_ops.h"
#include "client/config.h"
#include "client/keygen.h"
#include "client/local_worker.h"
#include "client/session.h"
#include "client/tools.h"
#include "client/train/progress.h"
#include "client/transport_security.h"
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

  // One-shot tools (client/tools.h).
  client::ToolModel tool;
  const auto add_model = [&](CLI::App* sub, bool adapter_required) {
    sub->add_option("--model", tool.model, "Checkpoint: HF directory or llama2.c file")->required();
    sub->add_option("--tokenizer", tool.tokenizer,
                    "Tokenizer file or directory (default: the HF checkpoint's own)");
    CLI::Option* a = sub->add_option(
        "--adapter", tool.adapter,
        "PEFT adapter directory, or safetensors with <module>.lora_A/B.weight");
    if (adapter_required) a->required();
    sub->add_option("--alpha", tool.alpha,
                    "LoRA alpha for a plain safetensors adapter (default: its rank, scale 1)");
    sub->add_option("--device", tool.device, "auto, cpu, cuda, cuda:N")->capture_default_str();
  };
  CLI::App* generate = app.add_subcommand("generate", "Generate text after a prompt");
  add_model(generate, false);
  client::GenerateRequest request;
  generate->add_option("--prompt", request.prompt, "Prompt text")->required();
  generate->add_option("--template", request.prompt_template,
                       "Wrap the prompt in a template: alpaca or chatml (default: raw)");
  generate->add_option("--max-new-tokens", request.max_new_tokens)->capture_default_str();
  generate->add_option("--temperature", request.temperature, "0 = greedy")->capture_default_str();
  generate->add_option("--top-p", request.top_p)->capture_default_str();
  generate->add_option("--seed", request.seed)->capture_default_str();

  CLI::App* tokenize = app.add_subcommand("tokenize", "Print the token ids of a text as JSON");
  std::string tokenizer_path, text_file;
  bool no_special = false;
  tokenize->add_option("--tokenizer", tokenizer_path, "Tokenizer file or HF directory")->required();
  tokenize->add_option("--text-file", text_file, "UTF-8 text to encode")->required();
  tokenize->add_flag("--no-special", no_special, "Do not add BOS/EOS");

  CLI::App* logits = app.add_subcommand("logits", "Write the model's logits for token ids");
  add_model(logits, false);
  std::string ids_file, out_path;
  logits->add_option("--ids", ids_file, "JSON list of equally long lists of ids")->required();
  logits->add_option("--out", out_path, "Output safetensors (tensor 'logits')")->required();

  CLI::App* merged = app.add_subcommand("export-merged",
                                        "Merge an adapter into the base, write an HF checkpoint");
  add_model(merged, true);
  std::string dtype = "f32";
  merged->add_option("--out", out_path, "Output directory (must not exist)")->required();
  merged->add_option("--dtype", dtype, "f32, bf16 or f16")->capture_default_str();
  CLI::App* keygen = app.add_subcommand(
      "keygen", "Create this client's CURVE key pair and print what to send the operator");
  std::string key_name, key_dir = "keys";
  bool force = false;
  keygen->add_option("--name", key_name, "This client's name (as in its config)")->required();
  keygen->add_option("--dir", key_dir, "Directory for the key files")->capture_default_str();
  keygen->add_flag("--force", force, "Replace existing key files (the operator must re-enroll)");
  CLI11_PARSE(app, argc, argv);

  if (app.got_subcommand(keygen)) {
    if (Status s = client::RunClientKeygen(key_dir, key_name, force, std::cout); !s.ok()) {
      std::cerr << "fedlora-client: " << s.ToString() << "\n";
      return 1;
    }
    return 0;
  }
  if (app.got_subcommand(generate) || app.got_subcommand(tokenize) ||
      app.got_subcommand(logits) || app.got_subcommand(merged)) {
    SetLogLevel(LogLevel::kWarn);
    client::ConfigureTorchThreads(0);
    Status s;
    if (app.got_subcommand(generate)) s = client::RunGenerate(tool, request, std::cout);
    if (app.got_subcommand(tokenize)) s = client::RunTokenize(tokenizer_path, text_file, !no_special, std::cout);
    if (app.got_subcommand(logits)) s = client::RunLogits(tool, ids_file, out_path);
    if (app.got_subcommand(merged)) s = client::RunExportMerged(tool, out_path, dtype);
    if (s.ok()) return 0;
    std::cerr << "fedlora-client: " << s.ToString() << "\n";
    return s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kNotFound ? 1 : 2;
  }

  Result<client::ClientConfig> config = client::LoadClientConfig(config_path, overrides);
  if (!config.ok()) {
    std::cerr << "fedlora-client: " << config.status().ToString() << "\n";
    return 1;
  }
  SetLogLevel(ParseLogLevel(config->log_level).value());
  // Before the model loads (which may take minutes): a broken security section fails at once.
  Result<client::ClientTransportSecurity> security = client::ResolveClientSecurity(*config);
  if (!security.ok()) {
    std::cerr << "fedlora-client: " << security.status().ToString() << "\n";
    return 1;
  }
  TuneMallocForTraining();
  client::ConfigureTorchThreads(config->threads);

  Result<std::shared_ptr<const client::ModelAssets>> assets =
      client::LoadModelAssets(config->model, config->device);
  if (!assets.ok()) {
    std::cerr << "fedlora-client: " << assets.status().ToString() << "\n";
    return 1;
  }
  if (print_digest) {
    std::cout << client::BaseModelDigest(**assets) << "\n";
    return 0;
  }
  client::TrainingProgressBoard progress_board;  // The ops endpoint shows the training step.
  Result<std::unique_ptr<client::Worker>> worker =
      client::MakeLocalWorker(*config, *assets, {.progress_board = &progress_board});
  if (!worker.ok()) {
    std::cerr << "fedlora-client: " << worker.status().ToString() << "\n";
    return 1;
  }

  net::Context context;
  SystemClock clock;
  client::ClientSession session(*config, **worker, context, clock);
  std::unique_ptr<ops::OpsServer> ops_endpoint;
  if (!config->ops.listen.empty()) {
    Result<std::unique_ptr<ops::OpsServer>> started =
        client::StartClientOps(*config, session, &progress_board);
    if (!started.ok()) {
      std::cerr << "fedlora-client: " << started.status().ToString() << "\n";
      return 1;
    }
    ops_endpoint = std::move(started).value();
  }
  OnStopSignal([](void* s) { static_cast<client::ClientSession*>(s)->Stop(); }, &session);
  LogInfo("client ", config->name, " starting; coordinator ", config->coordinator);
  client::LogClientSecurity(*config, *security);
  const Status s = session.Run();
  OnStopSignal([](void*) {}, nullptr);  // The session is about to be destroyed.
  if (s.ok() || s.code() == StatusCode::kCancelled) return 0;
  LogError("client stopped: ", s.ToString());
  switch (s.code()) {
    case StatusCode::kFailedPrecondition:
    case StatusCode::kInvalidArgument: return 1;
    case StatusCode::kUnavailable: return 3;
    case StatusCode::kPermissionDenied: return 5;
    case StatusCode::kUnauthenticated: return 6;
    default: return 2;
  }
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
