// config.h — the client's configuration: typed structs with documented defaults.
//
// configs/client.yaml is the worked example; every key is documented in README.md. The coordinator
// decides the LoRA and training hyper-parameters (they arrive in each RoundTask); the client's own
// file says where its model and data are and how to reach the coordinator.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/config/yaml_config.h"
#include "common/status.h"

namespace fedlora::client {

struct ModelConfig {
  std::string path;               // llama2.c checkpoint (legacy or version-1 layout).
  std::string tokenizer;          // llama2.c tokenizer .bin.
  std::string format = "llama2c";
};

// How the corpus becomes this client's private data.
struct DataConfig {
  std::string path;                   // UTF-8 plain-text corpus.
  std::string format = "text";
  // none: the whole file is this client's data. iid: paragraphs dealt at random.
  // contiguous: the corpus cut into equal consecutive parts. speaker: tinyshakespeare speaker
  // turns grouped by speaking character, characters spread over the partitions (natural non-IID).
  std::string partition = "none";
  std::uint32_t num_partitions = 1;
  std::uint32_t partition_index = 0;
  std::uint64_t partition_seed = 0;   // Must be equal on every client of one federation.
  double heldout_fraction = 0.1;      // Share of this client's paragraphs kept for evaluation.
  std::uint32_t max_eval_windows = 0; // Cap on held-out windows evaluated; 0 = all.
  // Data this client declares for strategy initialisation (Fed-SB's gradient estimate, which
  // is not private): a separate corpus, or (init_from_train) its own training split.
  std::string init_path;
  bool init_from_train = false;
};

struct ClientTransportConfig {
  std::uint32_t heartbeat_interval_ms = 1000;  // Until the Welcome says otherwise.
  std::uint32_t heartbeat_liveness = 5;        // Silent intervals before reconnecting.
  std::uint32_t reconnect_min_ms = 100;        // Backoff doubles from here...
  std::uint32_t reconnect_max_ms = 5000;       // ...up to here.
  std::uint32_t hello_timeout_ms = 5000;       // No Welcome by then: reconnect.
  std::uint64_t max_message_bytes = 256ull << 20;
  std::uint32_t max_connect_attempts = 0;      // 0 = retry forever.
};

struct CapabilityConfig {
  std::uint64_t memory_bytes = 0;   // 0 = detect (physical memory).
  std::uint32_t max_rank = 0;       // 0 = no limit.
  double relative_speed = 1.0;
};

// Deliberate faults, for tests of the coordinator's failure handling. Never set in production.
struct FaultConfig {
  bool hold_update = false;  // Train, then never upload (simulates a client that hangs).
};

struct ClientConfig {
  std::string name;                                   // Default: "<hostname>-<pid>".
  std::string coordinator = "tcp://127.0.0.1:5555";   // ZeroMQ endpoint of the coordinator.
  std::uint32_t threads = 0;                          // LibTorch intra-op threads; 0 = all cores.
  std::string device = "cpu";
  std::string log_level = "info";
  // Where the client keeps state across rounds and restarts (FedSA-LoRA's private B). Empty:
  // "fedlora-client-<name>" in the working directory.
  std::string state_dir;
  bool log_progress = true;  // Log each task, upload and acknowledgement at info level (else debug).
  ModelConfig model;
  DataConfig data;
  ClientTransportConfig transport;
  CapabilityConfig capabilities;
  FaultConfig faults;
};

// Reads the client keys of `section` into `config` (absent keys keep their defaults), fills in
// the default name and validates. Errors name the file, line and key.
Status ParseClientConfig(const config::ConfigSection& section, ClientConfig* config);

// Reads `path` (may be empty for all defaults) and applies `overrides` ("key.sub=value").
// Unknown keys and wrong types are kInvalidArgument naming the file, line and key.
Result<ClientConfig> LoadClientConfig(const std::string& path,
                                      const std::vector<std::string>& overrides);

}  // namespace fedlora::client
