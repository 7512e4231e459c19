// config.h — the coordinator's configuration: typed structs with documented defaults.
//
// configs/coordinator.yaml is the worked example and README.md documents every key. The
// coordinator is the source of truth for the LoRA and local-training hyper-parameters: they are
// sent to clients in every RoundTask.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/config/yaml_config.h"
#include "common/ops/ops_server.h"
#include "common/status.h"
#include "common/wire/messages.h"
#include "server/strategies/make_strategy.h"

namespace fedlora::server {

struct CoordinatorTransportConfig {
  std::string bind = "tcp://*:5555";             // ZeroMQ ROUTER endpoint; "tcp://127.0.0.1:*"
                                                 // picks a free port (logged at start).
  std::uint32_t heartbeat_interval_ms = 1000;    // Sent to clients in the Welcome.
  std::uint32_t heartbeat_liveness = 5;          // Silent intervals before a client is dropped.
  std::uint64_t max_message_bytes = 256ull << 20;  // Larger messages get MESSAGE_TOO_LARGE.
  // Tasks with more tensor bytes travel in chunks of this size, and uploads may (docs/protocol.md).
  // Must leave room for a chunk's envelope below max_message_bytes, here and at every client.
  std::uint64_t chunk_bytes = 8ull << 20;
};

// Transport security (docs/security.md). CURVE encrypts and authenticates every connection and
// admits only enrolled client keys, each bound to its client name.
struct SecurityConfig {
  // auto: curve when transport.bind reaches beyond this machine (anything but loopback, ipc://
  // or inproc://) or a secret_key_file is set; none otherwise. curve | none to insist.
  std::string mode = "auto";
  std::string secret_key_file;     // The coordinator's key pair (`fedlora-coordinator keygen`).
  std::string authorized_clients;  // `NAME PUBLIC_KEY` lines (server/authorized_clients.h).
  // Required to run without CURVE on a non-local bind; logged as a warning at every start.
  bool allow_insecure = false;
};

struct RoundConfig {
  double fraction = 1.0;           // Share of live clients selected each round...
  std::uint32_t min_clients = 1;   // ...but at least this many (the round waits for them)...
  std::uint32_t max_clients = 0;   // ...and at most this many (0 = no cap).
  std::uint32_t quorum = 1;        // Updates needed to aggregate at the deadline...
  double quorum_fraction = 0.0;    // ...and at least this share of the selected clients.
  std::uint64_t timeout_ms = 600000;  // Deadline for uploads, from when tasks are sent.
  std::uint32_t max_attempts = 0;  // Attempts of a round below quorum before giving up; 0 = never.
  // Attempts of one round start at least this far apart (a retry is also held back until enough
  // clients are live to reach the quorum).
  std::uint64_t retry_delay_ms = 5000;
  // The first round this process runs waits until this many clients are live (0: min_clients),
  // so that it selects from the whole expected federation (fedlora-sim: num_clients).
  std::uint32_t wait_for_clients = 0;
};

struct EvalConfig {
  bool enabled = true;             // Evaluate every new global adapter on the reporters' data.
  bool initial = true;             // Also evaluate the initial adapter (round 0).
  std::uint32_t max_batches = 0;   // Per client; 0 = the whole held-out split.
  std::uint64_t timeout_ms = 120000;
};

// Writing the global model as a PEFT LoRA adapter (common/lora/peft.h) after round commits, so
// PEFT / transformers / vLLM can serve it. Never needs the base weights: base corrections
// (fedex, flora) are folded into the adapter.
struct ExportConfig {
  std::string peft_dir;                  // Empty: <state_dir>/peft. Replaced atomically.
  bool peft_every_round = true;          // false: only after the last round.
  std::string base_model_name_or_path;   // Written to adapter_config.json (empty: null).
  DType dtype = DType::kF32;             // f32, bf16 or f16.
};

// Bounded influence of one upload (docs/security.md). The aggregation rule keys of the same
// `robust` section (rule, trim_fraction, krum_*) are read into StrategyConfig::rule.
struct RobustConfig {
  // The L2 norm, over all tensors of an upload as one vector, of the change it makes to what its
  // task sent (server/robust/update_norm.h); 0 = unbounded. The default is far above what honest
  // clients of the shipped configurations reach (docs/security.md says how it was chosen).
  double norm_bound = 100.0;
  std::string norm_action = "clip";  // clip: scale the change down to the bound; reject: refuse.
};

// Secure aggregation (SecAgg+; docs/security.md, "Secure aggregation"): the coordinator learns only
// the sum of the round's uploads. Needs a linear strategy (checked at start).
struct SecureAggregationConfig {
  bool enabled = false;
  double clip = 0;  // Weighted values are clipped to [-clip, clip]; 0: the strategy's.
  std::uint32_t levels_bits = 20;   // q: values are quantised to 2^q - 1 levels...
  std::uint32_t modulus_bits = 32;  // ...and summed mod 2^m: at most (2^m - 1) / (2^q - 1) clients.
  std::uint32_t threshold = 0;      // Shares to rebuild a secret; 0: a majority of its holders.
  std::uint32_t degree = 0;         // Neighbours per client; 0: all up to 16, then ~3 log2 n.
  std::uint64_t stage_timeout_ms =
      30000;  // Keys, shares and unmask stages (input: round.timeout_ms).
  // The most clients a round may select: round.max_clients, capped by what the modulus holds.
  std::uint32_t MaxClients(std::uint32_t configured_max) const;
};

// Client-level differential privacy, DP-FedAvg with a central (trusted-coordinator) Gaussian
// (docs/privacy.md). Each round samples every live client with probability sample_rate
// (Poisson), each client clips its upload's change to L2 norm `clip`, and the coordinator adds
// N(0, (noise_multiplier x clip)^2) to the sum of the changes before the strategy sees their
// mean over sample_rate x live clients. An RDP accountant (common/privacy) tracks (epsilon,
// delta); the run stops before a round that would take epsilon past target_epsilon.
struct PrivacyConfig {
  bool enabled = false;
  double clip = 0;              // C; required (> 0) when enabled.
  double noise_multiplier = 0;  // sigma; 0: the smallest that fits target_epsilon in `rounds`.
  double target_epsilon = 0;    // The budget; 0: none (then noise_multiplier is required).
  double delta = 1e-5;
  double sample_rate = 1.0;  // q: each live client's chance to be in a round.
  // Adaptive clipping (Andrew et al. 2021): after each round C <- C exp(-eta (b - gamma)), b the
  // noised share of the round's clients whose change was within C, so that C tracks the gamma
  // quantile of the change norms. `clip` is then the first round's C.
  double target_quantile = 0;       // gamma in (0, 1); 0: a fixed clip.
  double clip_learning_rate = 0.2;  // eta.
  // sigma_b: the count of clients within the clip gets N(0, sigma_b^2). The update's noise
  // multiplier becomes (sigma^-2 - (2 sigma_b)^-2)^-1/2, so that both together spend what sigma
  // alone would; needs 2 sigma_b > sigma.
  double count_noise_multiplier = 0;
  // With secure_aggregation (distributed DP): the noise is added by the clients, each a share of
  // variance (sigma C)^2 / min_clients, and a round's secure sum is released only when at least
  // this many inputs survive; otherwise the round releases the global adapter with the whole
  // noise added here (docs/privacy.md). Required (>= 2) with secure aggregation.
  std::uint32_t min_clients = 0;
};

struct CoordinatorConfig {
  std::string state_dir = "state";   // Checkpoints, pending uploads and metrics.jsonl.
  std::uint32_t rounds = 10;
  std::uint64_t seed = 0;            // Client selection, adapter init, local-training seeds.
  // Hex SHA-256 every client's base model must have (fedlora-client --print-digest prints it).
  // Empty: pin the first client's digest and require it of all others.
  std::string base_model_sha256;
  std::uint32_t keep_checkpoints = 0;  // Keep the newest N round checkpoints; 0 = all.
  std::string log_level = "info";
  CoordinatorTransportConfig transport;
  SecurityConfig security;
  RoundConfig round;
  EvalConfig eval;
  StrategyConfig strategy;
  RobustConfig robust;
  SecureAggregationConfig secure_aggregation;
  PrivacyConfig privacy;
  ExportConfig export_config;        // The `export` section.
  ops::OpsConfig ops;                // /metrics, /status and probes (common/ops/ops_server.h).
  wire::LoraSpec lora{.rank = 8, .alpha = 16.0, .dropout = 0.0, .rslora = false,
                      .targets = {"q_proj", "v_proj"}};
  wire::TrainSpec train;
};

// Reads a `strategy` section (name, weighting, per-strategy settings, rank policy) and checks
// it; shared by the coordinator and fedlora-agg.
Status ParseStrategyConfig(const config::ConfigSection& section, StrategyConfig* config);
Status ValidateStrategyConfig(const StrategyConfig& config);

// Reads the coordinator keys of `section` into `config` (keys absent keep their defaults) and
// validates ranges. Errors name the file, line and key.
Status ParseCoordinatorConfig(const config::ConfigSection& section, CoordinatorConfig* config);

// Loads `path` (empty = defaults) with `--set` overrides.
Result<CoordinatorConfig> LoadCoordinatorConfig(const std::string& path,
                                                const std::vector<std::string>& overrides);

}  // namespace fedlora::server
