// config.h — the client's configuration: typed structs with documented defaults.
//
// configs/client.yaml is the worked example; every key is documented in README.md. The coordinator
// decides the LoRA and training hyper-parameters (they arrive in each RoundTask); the client's own
// file says where its model and data are and how to reach the coordinator.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "client/privacy_policy.h"
#include "common/config/yaml_config.h"
#include "common/ops/ops_server.h"
#include "common/status.h"

namespace fedlora::client {

struct ModelConfig {
  // A llama2.c checkpoint file (legacy or version-1 layout), or a Hugging Face checkpoint
  // directory (config.json + model.safetensors or sharded with model.safetensors.index.json).
  std::string path;
  // llama2.c tokenizer .bin, HF tokenizer.json, SentencePiece .model, or a directory holding
  // tokenizer.json / tokenizer.model. Empty: the HF checkpoint directory's own tokenizer
  // (required for llama2.c checkpoints).
  std::string tokenizer;
  // auto: a directory with config.json is an HF checkpoint, anything else llama2.c. Or hf,
  // llama2c to insist.
  std::string format = "auto";
};

// How the corpus becomes this client's private data. `format` picks one of two pipelines:
// text (a plain corpus cut into token windows: client/data/text_dataset.h) or a record format
// (supervised examples with a prompt/response loss mask: client/data/examples.h).
struct DataConfig {
  std::string path;                   // The client's data file (plain or gzip-compressed).
  // text: UTF-8 plain text. alpaca: JSON Lines {instruction, input?, output}. chat: JSON Lines
  // {messages: [{role: system|user|assistant, content}]}, trained on the assistant turns.
  // gsm8k: JSON Lines {question, answer} (exact match on the number after "####").
  // sst2: TSV "sentence\tlabel" (0/1). spamassassin: JSON Lines {group, label: ham|spam, id,
  // text}, usually .jsonl.gz.
  std::string format = "text";
  // Record formats only: alpaca | chatml | plain | classify; empty = the format's default
  // (alpaca/gsm8k -> alpaca, chat -> chatml, sst2/spamassassin -> classify). Exact strings in
  // client/data/prompt_template.h. YAML key "template".
  std::string template_name;
  // text: none (the whole file), iid (paragraphs dealt at random), contiguous (equal
  // consecutive parts), speaker (tinyshakespeare turns grouped by character; natural non-IID),
  // sample (each client draws sample_paragraphs paragraphs at random: shares overlap when
  // num_partitions x sample_paragraphs exceeds the corpus, so any number of clients gets text).
  // Record formats: none, iid, dirichlet (label skew, per-class proportions ~ Dir(alpha); for
  // unlabeled records over their groups), group (natural groups, e.g. SpamAssassin's, never
  // split), quantity (sizes ~ Dir(alpha), every client at least one record).
  std::string partition = "none";
  std::uint32_t num_partitions = 1;
  std::uint32_t partition_index = 0;
  std::uint64_t partition_seed = 0;   // Must be equal on every client of one federation.
  double dirichlet_alpha = 0.5;       // Concentration of dirichlet/quantity; smaller = more skew.
  std::uint32_t sample_paragraphs = 0;  // partition: sample (text): paragraphs per client, >= 1.
  // Share of this client's paragraphs (text) or records held out for evaluation. With eval_path
  // set it is ignored (and may be 0): the client trains on its whole partition.
  double heldout_fraction = 0.1;
  std::uint32_t max_eval_windows = 0; // Cap on held-out windows (or examples) evaluated; 0 = all.
  // Record formats: a separate evaluation file of the same format (e.g. SST-2's test.tsv), used
  // whole by every client instead of a held-out share of its partition. Empty = held-out split.
  std::string eval_path;
  // Record formats: longest example in tokens (BOS + prompt + response + EOS); longer prompts
  // lose tokens from their left, examples whose response alone does not fit are dropped.
  // 0 = no limit.
  std::uint32_t max_tokens = 512;
  // Record formats: use a seeded sample of at most this many records of `path` (the same on
  // every client; before partitioning), for quick runs. 0 = all.
  std::uint64_t max_records = 0;
  // Classification formats: the verbalised labels, index = class, leading space included;
  // empty = sst2 [" negative", " positive"], spamassassin [" ham", " spam"]. Their first tokens
  // must differ.
  std::vector<std::string> label_words;
  // Classification formats: texts (SST-2 sentence, e-mail reduced to its Subject and body) are
  // cut to this many Unicode code points before templating; 0 = no limit.
  std::uint32_t max_text_chars = 600;
  // Data this client declares for strategy initialisation (Fed-SB's gradient estimate, which
  // is not private): a separate corpus, or (init_from_train) its own training split.
  std::string init_path;
  bool init_from_train = false;
  // Formats with reference answers (gsm8k): the held-out examples evaluated by exact match of
  // the final answer in a greedy generation, at most this many (0 = off), each at most
  // max_new_tokens long.
  std::uint32_t max_eval_generations = 16;
  std::uint32_t max_new_tokens = 256;
};

struct ClientTransportConfig {
  std::uint32_t heartbeat_interval_ms = 1000;  // Until the Welcome says otherwise.
  std::uint32_t heartbeat_liveness = 5;        // Silent intervals before reconnecting.
  std::uint32_t reconnect_min_ms = 100;        // Backoff doubles from here...
  std::uint32_t reconnect_max_ms = 5000;       // ...up to here.
  std::uint32_t hello_timeout_ms = 5000;       // No Welcome by then: reconnect.
  std::uint64_t max_message_bytes = 256ull << 20;  // Larger messages are refused or dropped.
  // Uploads with more tensor bytes travel in chunks of this size (docs/protocol.md). Must leave
  // room for a chunk's envelope below max_message_bytes, here and at the coordinator.
  std::uint64_t chunk_bytes = 8ull << 20;
  std::uint32_t max_connect_attempts = 0;      // 0 = retry forever.
};

// Transport security (docs/security.md): CURVE encrypts the connection, proves to the
// coordinator that this client holds its enrolled key, and proves to this client that it talks
// to the coordinator whose public key it pinned.
struct ClientSecurityConfig {
  // auto: curve when `coordinator` is not on this machine (anything but loopback, ipc:// or
  // inproc://) or a coordinator_public_key is set; none otherwise. curve | none to insist.
  std::string mode = "auto";
  std::string coordinator_public_key;  // Z85, 40 characters (`fedlora-coordinator keygen`)...
  std::string coordinator_public_key_file;  // ...or the public key file it wrote (.key).
  // This client's key pair (`fedlora-client keygen`); "{name}" is replaced by the client's name.
  std::string secret_key_file;
  // Required to talk plaintext to a coordinator on another machine; logged at every start.
  bool allow_insecure = false;
};

struct CapabilityConfig {
  std::uint64_t memory_bytes = 0;   // 0 = detect (physical memory).
  std::uint32_t max_rank = 0;       // 0 = no limit.
  double relative_speed = 1.0;
};

// Deliberate faults, for tests of the coordinator's failure handling. Never set in production.
struct FaultConfig {
  bool hold_update = false;  // Train, then never upload (simulates a client that hangs).
  // The first N chunked uploads go out with chunks 0 and 1 swapped (a reordering network): the
  // coordinator must refuse each and this client must send it again.
  std::uint32_t swap_upload_chunks = 0;
};

struct ClientConfig {
  std::string name;                                   // Default: "<hostname>-<pid>".
  std::string coordinator = "tcp://127.0.0.1:5555";   // ZeroMQ endpoint of the coordinator.
  std::uint32_t threads = 0;                          // LibTorch intra-op threads; 0 = all cores.
  // auto (a CUDA GPU when this LibTorch has CUDA and one is visible, else the cpu), cpu, cuda,
  // cuda:N. docs/gpu.md.
  std::string device = "auto";
  std::string log_level = "info";
  // Where the client keeps state across rounds and restarts (FedSA-LoRA's private B). Empty:
  // "fedlora-client-<name>" in the working directory.
  std::string state_dir;
  ops::OpsConfig
      ops;  // /metrics, /status and probes of this client (client_ops.h); off by default.
  bool log_progress = true;  // Log each task, upload and acknowledgement at info level (else debug).
  // Keep private per-client factors (FedSA-LoRA's B) only in state_dir between tasks, reading
  // them back when tasked: for simulations of many clients, whose idle state then is their data.
  bool spill_state = false;
  ModelConfig model;
  DataConfig data;
  ClientTransportConfig transport;
  ClientSecurityConfig security;
  CapabilityConfig capabilities;
  ClientPrivacyConfig privacy;  // privacy_policy.h
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
