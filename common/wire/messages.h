// messages.h — the protocol's messages as plain C++ values.
//
// proto/fedlora.capnp defines the bytes; this header defines what the rest of the program sees.
// Only common/wire/codec.cc translates between the two, so no other file includes generated
// Cap'n Proto code. Every struct here is a value: copyable, comparable, no aliasing.
//
// Tensors travel as ZeroMQ frames after the envelope (see codec.h); here they are TensorMaps.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/tensor.h"

namespace fedlora::wire {

// Bumped on any incompatible change to proto/fedlora.capnp. Peers with another version are
// answered with kVersionMismatch and not served.
inline constexpr std::uint16_t kProtocolVersion = 1;

// Protocol error codes, mirrored one-to-one by proto/fedlora.capnp's ErrorCode enum. Each
// malformed-input case has its own code so a peer (and a test) can tell exactly what was wrong.
enum class ErrorCode : std::uint16_t {
  kUnspecified = 0,
  kMalformedEnvelope = 1,      // Frame 0 is not a readable Cap'n Proto Envelope (truncated...).
  kVersionMismatch = 2,        // protocolVersion differs from kProtocolVersion.
  kUnknownMessageKind = 3,     // The union holds a kind this build does not know.
  kFrameCountMismatch = 4,     // Tensor refs and tensor frames do not pair up one-to-one.
  kTensorFrameMismatch = 5,    // A frame's length disagrees with its ref or its dtype and shape.
  kDigestMismatch = 6,         // A tensor frame's SHA-256 differs from its ref.
  kTensorDtypeMismatch = 7,    // A tensor has a dtype other than the one the task asked for.
  kTensorShapeMismatch = 8,    // A tensor has another shape, or a name the task did not ask for.
  kBaseModelMismatch = 9,      // Hello's base-model digest or module layout differs from ours.
  kMessageTooLarge = 10,       // The whole message exceeds max_message_bytes.
  kUnexpectedMessage = 11,     // A valid message that makes no sense now (Update before Hello).
  kSessionMismatch = 12,       // Wrong session id for this connection.
  kSequenceReplay = 13,        // Sequence number not greater than the last one seen.
  kStaleRound = 14,            // Update or result for a round that is not open.
  kNotSelected = 15,           // Update from a client not selected for this round.
  kNonFiniteTensor = 16,       // NaN or infinity in an uploaded tensor.
  kInvalidField = 17,          // A field is out of range (zero rank, empty name, ...).
  kDuplicateClient = 18,       // Another live connection already uses this client name.
  kShuttingDown = 19,          // The coordinator is stopping; reconnect later.
  kInternal = 20,              // The peer hit a bug; nothing the sender can fix.
};
std::string_view ErrorCodeName(ErrorCode code);  // "DIGEST_MISMATCH"

// The linear modules a client's model offers for LoRA, named as in Hugging Face
// ("model.layers.3.self_attn.q_proj"), with the nn.Linear shape of their weight.
struct ModuleInfo {
  std::string name;
  std::int64_t d_out = 0;
  std::int64_t d_in = 0;
  friend bool operator==(const ModuleInfo&, const ModuleInfo&) = default;
};

struct Capabilities {
  std::string device;              // "cpu", "cuda:0", ...
  std::uint64_t memory_bytes = 0;  // Memory the client may use for training.
  std::uint32_t max_rank = 0;      // Largest LoRA rank it accepts; 0 = no limit.
  std::uint64_t num_examples = 0;  // Training examples (token windows) it holds.
  double relative_speed = 1.0;     // Throughput relative to a reference client.
  friend bool operator==(const Capabilities&, const Capabilities&) = default;
};

// Scalar metrics keyed by name ("train_loss", "tokens", ...); std::map for a stable order.
using Metrics = std::map<std::string, double, std::less<>>;

// LoRA hyper-parameters the coordinator asks a client to train with.
struct LoraSpec {
  std::uint32_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  bool rslora = false;                // Scale alpha/sqrt(r) instead of alpha/r.
  std::vector<std::string> targets;   // Short module names: "q_proj", "v_proj", ...
  friend bool operator==(const LoraSpec&, const LoraSpec&) = default;
};

// Local training settings for one round.
struct TrainSpec {
  double learning_rate = 1e-3;
  std::uint32_t warmup_steps = 0;
  std::uint32_t local_steps = 20;   // Used when local_epochs == 0.
  std::uint32_t local_epochs = 0;   // When > 0, overrides local_steps.
  std::uint32_t batch_size = 8;
  std::uint32_t seq_len = 128;
  double grad_clip = 1.0;           // Max global L2 norm of adapter gradients; 0 = off.
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  std::uint64_t seed = 0;           // Mixed with the client name and round by the client.
  DType upload_dtype = DType::kF32;
  friend bool operator==(const TrainSpec&, const TrainSpec&) = default;
};

struct Hello {
  std::string client_name;          // Stable across reconnects; unique among live clients.
  std::string software_version;
  std::string base_model_sha256;    // Hex digest of the base weights (see client model digest).
  Capabilities capabilities;
  std::vector<ModuleInfo> modules;  // Every LoRA-adaptable module of the client's model.
  friend bool operator==(const Hello&, const Hello&) = default;
};

struct Welcome {
  std::string client_id;                 // The name the coordinator knows this client by.
  std::uint32_t heartbeat_interval_ms = 1000;
  std::uint32_t heartbeat_liveness = 5;  // Missed intervals before a peer counts as gone.
  std::uint64_t current_round = 0;
  std::string strategy;
  friend bool operator==(const Welcome&, const Welcome&) = default;
};

struct RoundTask {
  std::uint64_t round = 0;
  std::uint64_t deadline_ms = 0;  // Milliseconds the client has, from receipt, to upload.
  LoraSpec lora;
  TrainSpec train;
  TensorMap tensors;              // Global adapter (and strategy extras) to start from.
  friend bool operator==(const RoundTask&, const RoundTask&) = default;
};

struct Update {
  std::uint64_t round = 0;
  std::uint64_t num_samples = 0;   // Training examples processed this round (steps x batch).
  std::uint64_t num_examples = 0;  // Training examples the client holds.
  Metrics metrics;                 // At least "train_loss".
  TensorMap tensors;               // The trained adapter factors.
  friend bool operator==(const Update&, const Update&) = default;
};

struct Ack {
  std::uint64_t round = 0;
  std::uint64_t acked_sequence = 0;  // Sequence number of the message acknowledged.
  friend bool operator==(const Ack&, const Ack&) = default;
};

struct Heartbeat {
  friend bool operator==(const Heartbeat&, const Heartbeat&) = default;
};

struct EvalTask {
  std::uint64_t round = 0;
  std::uint64_t deadline_ms = 0;
  std::uint32_t max_batches = 0;  // 0 = the whole held-out split.
  LoraSpec lora;
  TrainSpec train;                // batch_size and seq_len are used.
  TensorMap tensors;              // The adapter to evaluate.
  friend bool operator==(const EvalTask&, const EvalTask&) = default;
};

struct EvalResult {
  std::uint64_t round = 0;
  double loss = 0.0;               // Mean negative log-likelihood per predicted token (nats).
  std::uint64_t num_tokens = 0;    // Predicted tokens the mean is over.
  std::uint64_t num_examples = 0;  // Held-out windows evaluated.
  Metrics metrics;
  friend bool operator==(const EvalResult&, const EvalResult&) = default;
};

struct Error {
  ErrorCode code = ErrorCode::kUnspecified;
  std::string message;
  std::uint64_t ref_sequence = 0;  // Sequence number of the offending message, 0 if unknown.
  friend bool operator==(const Error&, const Error&) = default;
};

struct Bye {
  std::string reason;
  friend bool operator==(const Bye&, const Bye&) = default;
};

using Body = std::variant<Hello, Welcome, RoundTask, Update, Ack, Heartbeat, EvalTask, EvalResult,
                          Error, Bye>;
std::string_view BodyName(const Body& body);  // "hello", "roundTask", ...

struct Envelope {
  std::uint16_t protocol_version = kProtocolVersion;
  std::uint64_t session_id = 0;  // 0 in Hello; the Welcome's value afterwards, both ways.
  std::uint64_t sequence = 0;    // Per sender, strictly increasing within a session.
  Body body;
  friend bool operator==(const Envelope&, const Envelope&) = default;
};

// The tensors a message carries, or nullptr for kinds without tensors.
const TensorMap* TensorsOf(const Body& body);

}  // namespace fedlora::wire
