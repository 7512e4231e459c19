// messages.h — the protocol's messages as plain C++ values.
//
// proto/fedlora.capnp defines the bytes; this header defines what the rest of the program sees.
// Only common/wire/codec.cc translates between the two, so no other file includes generated
// Cap'n Proto code. Every struct here is a value: copyable, comparable, no aliasing.
//
// Tensors travel as ZeroMQ frames after the envelope (see codec.h); here they are TensorMaps.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/tensor.h"

namespace fedlora::wire {

// Bumped on any incompatible change to proto/fedlora.capnp. Peers with another version are
// answered with kVersionMismatch and not served. Version 2: results carry their task's ticket.
// Version 3: chunked transfer (ChunkedHead, Chunk, CHUNK_MISMATCH). Version 4: secure
// aggregation (RoundTask.secagg, SecAgg, u32 tensors, SECAGG_MISMATCH). Version 5: differential
// privacy (RoundTask.privacy, PRIVACY_MISMATCH). Version 6: distributed noise
// (PrivacyParams.noiseShareClients): a version-5 client would ignore it and upload no noise.
inline constexpr std::uint16_t kProtocolVersion = 6;

// Protocol error codes, mirrored one-to-one by proto/fedlora.capnp's ErrorCode enum. Each
// malformed-input case has its own code so a peer (and a test) can tell exactly what was wrong.
enum class ErrorCode : std::uint16_t {
  kUnspecified = 0,
  kMalformedEnvelope = 1,     // Frame 0 is not a readable Cap'n Proto Envelope (truncated...).
  kVersionMismatch = 2,       // protocolVersion differs from kProtocolVersion.
  kUnknownMessageKind = 3,    // The union holds a kind this build does not know.
  kFrameCountMismatch = 4,    // Tensor refs and tensor frames do not pair up one-to-one.
  kTensorFrameMismatch = 5,   // A frame's length disagrees with its ref or its dtype and shape.
  kDigestMismatch = 6,        // A tensor frame's SHA-256 differs from its ref.
  kTensorDtypeMismatch = 7,   // A tensor has a dtype other than the one the task asked for.
  kTensorShapeMismatch = 8,   // A tensor has another shape, or a name the task did not ask for.
  kBaseModelMismatch = 9,     // Hello's base-model digest or module layout differs from ours.
  kMessageTooLarge = 10,      // The whole message exceeds max_message_bytes.
  kUnexpectedMessage = 11,    // A valid message that makes no sense now (Update before Hello).
  kSessionMismatch = 12,      // Wrong session id for this connection.
  kSequenceReplay = 13,       // Sequence number not greater than the last one seen.
  kStaleRound = 14,           // Update or result for a round that is not open.
  kNotSelected = 15,          // Update from a client not selected for this round.
  kNonFiniteTensor = 16,      // NaN or infinity in an uploaded tensor.
  kInvalidField = 17,         // A field is out of range (zero rank, empty name, ...).
  kDuplicateClient = 18,      // Another live connection already uses this client name.
  kShuttingDown = 19,         // The coordinator is stopping; reconnect later.
  kInternal = 20,             // The peer hit a bug; nothing the sender can fix.
  kBaseVersionMismatch = 21,  // A BaseUpdate starts at a version the client is not at.
  kTaskDeclined = 22,   // The client will not do the task (offline, or too slow for the deadline).
  kNotAuthorized = 23,  // The CURVE key is not enrolled for this client name, or was revoked.
  kTaskMismatch = 24,   // A result's round, attempt or task nonce is not its task's.
  kUpdateNormExceeded = 25,  // The upload moves the model further than robust.norm_bound.
  kChunkMismatch = 26,       // A chunk out of order, missing or misfit: resend the message.
  kSecAggMismatch = 27,   // A secure-aggregation message out of stage, misfit, or naming strangers.
  kPrivacyMismatch = 28,  // A task or upload short of the differential privacy one side requires.
};
inline constexpr ErrorCode kLastErrorCode = ErrorCode::kPrivacyMismatch;
std::string_view ErrorCodeName(ErrorCode code);  // "DIGEST_MISMATCH"

// Client names travel in Hello, become file names in the state directory and keys of the
// authorized-clients file: 1-64 characters of [A-Za-z0-9._-], not starting with '.'.
bool ValidClientName(std::string_view name);

// Binds a result (Update, EvalResult) to the task it answers: the coordinator issues a fresh
// random nonce with every task, and refuses a result whose ticket is not its task's.
struct TaskTicket {
  std::uint32_t attempt = 0;             // The round's selection attempt; 0 for evaluations.
  std::array<std::uint8_t, 16> nonce{};  // All zero: none (never issued).
  friend bool operator==(const TaskTicket&, const TaskTicket&) = default;
};

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
  bool can_initialize = false;     // Holds data declared for strategy initialisation (Fed-SB).
  friend bool operator==(const Capabilities&, const Capabilities&) = default;
};

// Scalar metrics keyed by name ("train_loss", "tokens", ...); std::map for a stable order.
using Metrics = std::map<std::string, double, std::less<>>;

// LoRA hyper-parameters the coordinator asks a client to train with.
struct LoraSpec {
  std::uint32_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  bool rslora = false;               // Scale alpha/sqrt(r) instead of alpha/r.
  std::vector<std::string> targets;  // Short module names: "q_proj", "v_proj", ...
  friend bool operator==(const LoraSpec&, const LoraSpec&) = default;
};

// Local training settings for one round.
struct TrainSpec {
  double learning_rate = 1e-3;
  std::uint32_t warmup_steps = 0;
  std::uint32_t local_steps = 20;  // Used when local_epochs == 0.
  std::uint32_t local_epochs = 0;  // When > 0, overrides local_steps.
  std::uint32_t batch_size = 8;
  std::uint32_t seq_len = 128;
  double grad_clip = 1.0;  // Max global L2 norm of adapter gradients; 0 = off.
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  std::uint64_t seed = 0;  // Mixed with the client name and round by the client.
  DType upload_dtype = DType::kF32;
  friend bool operator==(const TrainSpec&, const TrainSpec&) = default;
};

// ---- Adapter plans: how a client builds, trains and uploads its adapter this round ----------

enum class AdapterMode : std::uint8_t {
  kStandard = 0,    // A (r x d_in) and B (d_out x r) per module, scale s = alpha/r.
  kSketched = 1,    // FSLoRA: sub-blocks B[:, I], A[I, :] of a rank-`global_rank` adapter,
                    // trained with scale s * global_rank / k (k = |I|).
  kLoraSb = 2,      // LoRA-SB: W + s*B*R*A with B and A frozen, only R (r x r) trains.
  kLoraSbInit = 3,  // LoRA-SB initialisation: estimate the first update from gradients and
                    // upload its rank-r SVD as B, R and A (no training).
};
std::string_view AdapterModeName(AdapterMode mode);

enum class AdapterInit : std::uint8_t {
  kFromTask = 0,  // Start from the task's tensors.
  kFresh = 1,     // PEFT default init (A Kaiming-uniform, B zero), seeded per client and round.
  kLocalB = 2,    // A from the task, B from the client's own store (zero the first time).
};

// Per-module deviations from the task's LoraSpec (heterogeneous ranks, LoRA depth, sketches).
struct ModulePlan {
  std::string module;                 // "model.layers.4.self_attn.q_proj".
  std::uint32_t rank = 0;             // This client's rank here; 0 = no LoRA on this module.
  std::vector<std::uint32_t> sketch;  // kSketched: indices I into the global rank (sorted).
  friend bool operator==(const ModulePlan&, const ModulePlan&) = default;
};

// HetLoRA rank self-pruning: regulariser lambda*||B[:, t:]||*||A[t:, :]||, t = floor(gamma*r);
// if the tail score fell during the round the client uploads rank max(min_rank, floor(gamma*r)).
struct RankPruning {
  double gamma = 0.0;  // 0 = no pruning.
  double lambda = 0.0;
  std::uint32_t min_rank = 1;
  friend bool operator==(const RankPruning&, const RankPruning&) = default;
};

struct AdapterPlan {
  AdapterMode mode = AdapterMode::kStandard;
  AdapterInit init = AdapterInit::kFromTask;
  bool train_a = true;
  bool train_b = true;
  bool upload_a = true;
  bool upload_b = true;
  std::uint32_t global_rank = 0;    // kSketched: rank r of the global adapter.
  std::vector<ModulePlan> modules;  // Empty: every target module at lora.rank.
  RankPruning pruning;
  std::uint32_t init_samples = 0;   // kLoraSbInit: examples for the gradient estimate.
  double init_learning_rate = 0.0;  // kLoraSbInit: eta of the one-step update -eta*sign(G).
  friend bool operator==(const AdapterPlan&, const AdapterPlan&) = default;
};

// ---- Base-weight corrections (FedEx-LoRA, FLoRA) ---------------------------------------------

// One correction of one module's frozen weight: W += U*V (scale folded into the factors), or
// W += D for a dense delta. Its tensors travel with the message under the names given here.
struct CorrectionRef {
  std::uint64_t version = 0;  // Log version (the round that produced it).
  std::string module;
  std::string u;  // Tensor names (U: d_out x K, V: K x d_in), or...
  std::string v;
  std::string dense;  // ...a dense d_out x d_in delta.
  friend bool operator==(const CorrectionRef&, const CorrectionRef&) = default;
};

// Brings a client's base from `from_version` to `to_version`. With `rebase` the client first
// restores the pristine base weights (from_version is then 0). Entries are applied in order, in
// fp32 with a fixed summation order, so every replica gets bit-identical weights.
struct BaseUpdate {
  bool rebase = false;
  std::uint64_t from_version = 0;
  std::uint64_t to_version = 0;
  std::vector<CorrectionRef> entries;
  bool empty() const { return !rebase && entries.empty() && from_version == to_version; }
  friend bool operator==(const BaseUpdate&, const BaseUpdate&) = default;
};

struct Hello {
  std::string client_name;  // Stable across reconnects; unique among live clients.
  std::string software_version;
  std::string base_model_sha256;  // Hex digest of the base weights (see client model digest).
  Capabilities capabilities;
  std::vector<ModuleInfo> modules;  // Every LoRA-adaptable module of the client's model.
  std::uint64_t base_version = 0;   // Base-correction version the client's weights are at.
  friend bool operator==(const Hello&, const Hello&) = default;
};

struct Welcome {
  std::string client_id;  // The name the coordinator knows this client by.
  std::uint32_t heartbeat_interval_ms = 1000;
  std::uint32_t heartbeat_liveness = 5;  // Missed intervals before a peer counts as gone.
  std::uint64_t current_round = 0;
  std::string strategy;
  AdapterPlan plan;  // This client's LoRA depth and ranks (rank policy).
  friend bool operator==(const Welcome&, const Welcome&) = default;
};

// ---- Secure aggregation (proto/fedlora.capnp, "Secure aggregation"; docs/protocol.md) -------

// Which count a client's weight is, under secure aggregation (the strategy's weighting).
enum class SecAggWeighting : std::uint8_t { kExamples = 1, kSamples = 2, kUniform = 3 };

// One tensor of the summed vector: the client places its upload (padded, or scattered by its
// sketch) into this full shape.
struct SecAggSlot {
  std::string name;
  std::vector<std::int64_t> shape;
  friend bool operator==(const SecAggSlot&, const SecAggSlot&) = default;
};

// In a RoundTask: the upload is a masked vector (common/secagg/secure_input.h says how it is
// made). Absent: a plain Update.
struct SecAggParams {
  double clip = 1.0;                // Each weighted value is clipped to [-clip, clip].
  std::uint32_t levels_bits = 16;   // q: 2^q - 1 quantisation levels.
  std::uint32_t modulus_bits = 32;  // m: sums are taken mod 2^m.
  SecAggWeighting weighting = SecAggWeighting::kExamples;
  double weight_scale = 1.0;       // The weight is min(count / weight_scale, 1).
  bool delta = false;              // Sum (task tensor - trained tensor) (FSLoRA).
  std::vector<SecAggSlot> layout;  // The summed tensors, in order.
  friend bool operator==(const SecAggParams&, const SecAggParams&) = default;
};

// In a RoundTask: the round is differentially private (docs/privacy.md). The client clips the
// change of its upload to L2 norm `clip` before it leaves; the coordinator adds Gaussian noise of
// standard deviation noise_multiplier x clip to the sum of the changes. Absent: no DP.
struct PrivacyParams {
  double clip = 0;              // C: the bound on each upload's change (L2, all tensors).
  double noise_multiplier = 0;  // sigma: the sum's noise is N(0, (sigma C)^2) per element.
  double sample_rate = 1;       // q: each client's chance to be in a round (Poisson).
  double delta = 0;             // The run's delta...
  double epsilon_spent = 0;     // ...and the epsilon its released rounds have spent so far...
  double target_epsilon = 0;    // ...of this budget (0: none).
  // Adaptive clipping: the client reports whether its change was within `clip` before clipping,
  // as metric kWithinClipMetric (1 or 0); the coordinator moves the clip toward a quantile.
  bool adaptive_clip = false;
  // Distributed DP (with secure aggregation): > 0 = the client adds N(0, (sigma C)^2 / this) to
  // every value of its clipped input before masking, and the round is released only if at least
  // this many inputs survive, so the sum's noise is at least N(0, (sigma C)^2). 0: central noise.
  std::uint32_t noise_share_clients = 0;
  friend bool operator==(const PrivacyParams&, const PrivacyParams&) = default;
};

inline constexpr std::string_view kWithinClipMetric = "dp_within_clip";
// A DP-SGD client (client config privacy.dp_sgd) reports the ε its own accountant has spent on
// its data over every round so far, in its Update's metrics.
inline constexpr std::string_view kDpSgdEpsilonMetric = "dp_sgd_epsilon";

struct RoundTask {
  std::uint64_t round = 0;
  std::uint64_t deadline_ms = 0;  // Milliseconds the client has, from receipt, to upload.
  LoraSpec lora;
  TrainSpec train;
  AdapterPlan plan;
  BaseUpdate base;    // Corrections to apply to the frozen base first.
  TensorMap tensors;  // Adapter tensors to start from, and correction tensors.
  TaskTicket ticket;  // To be echoed in the Update.
  std::optional<SecAggParams> secagg;  // Set: upload a masked vector (SecAgg stages).
  std::optional<PrivacyParams> privacy;  // Set: clip the upload's change (see PrivacyParams).
  friend bool operator==(const RoundTask&, const RoundTask&) = default;
};

struct Update {
  std::uint64_t round = 0;
  std::uint64_t num_samples = 0;   // Training examples processed this round (steps x batch).
  std::uint64_t num_examples = 0;  // Training examples the client holds.
  Metrics metrics;                 // At least "train_loss".
  std::uint64_t base_version = 0;  // Base-correction version the client trained on.
  TensorMap tensors;               // The trained adapter factors.
  TaskTicket ticket;               // The RoundTask's (set by the client session).
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
  TrainSpec train;  // batch_size and seq_len are used.
  AdapterPlan plan;
  BaseUpdate base;    // Corrections to apply to the frozen base first.
  TensorMap tensors;  // The adapter to evaluate, and correction tensors.
  TaskTicket ticket;  // To be echoed in the EvalResult.
  friend bool operator==(const EvalTask&, const EvalTask&) = default;
};

struct EvalResult {
  std::uint64_t round = 0;
  double loss = 0.0;               // Mean negative log-likelihood per predicted token (nats).
  std::uint64_t num_tokens = 0;    // Predicted tokens the mean is over.
  std::uint64_t num_examples = 0;  // Held-out windows evaluated.
  Metrics metrics;
  std::uint64_t base_version = 0;  // Base-correction version the client evaluated on.
  TaskTicket ticket;               // The EvalTask's (set by the client session).
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

// ---- Chunked transfer (proto/fedlora.capnp, "Chunked transfer") ----------------------------

// A tensor as a message's head describes it, before its bytes arrived.
struct TensorRef {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::uint64_t byte_length = 0;  // elements x dtype width (checked by Decode).
  std::vector<std::byte> sha256;  // 32 bytes, or empty where the transport authenticates.
  friend bool operator==(const TensorRef&, const TensorRef&) = default;
};

// Set in the Envelope of a chunked message's head. The body's TensorMap is then empty and
// `tensors` lists what the chunks will carry, in the order their bytes follow.
struct ChunkedHead {
  std::uint64_t total_bytes = 0;
  std::uint64_t chunk_bytes = 0;
  std::uint32_t chunk_count = 0;
  std::vector<TensorRef> tensors;  // Filled by Decode; Encode takes them from the body.
  friend bool operator==(const ChunkedHead&, const ChunkedHead&) = default;
};

// One piece of a chunked message: bytes [offset, offset + data.size()) of its tensors' bytes.
struct Chunk {
  std::uint64_t transfer = 0;  // The head's sequence number.
  std::uint32_t index = 0;
  std::uint64_t offset = 0;
  std::vector<std::byte> data;  // Decoded: the chunk's frames, concatenated.
  friend bool operator==(const Chunk&, const Chunk&) = default;
};

// ---- The secure-aggregation stages (SecAgg+, Bell et al. 2020) -------------------------------

using PublicKey = std::array<std::uint8_t, 32>;

// Stage 1, client -> coordinator: the client's two X25519 public keys for this attempt (c: the
// key its shares are encrypted to; s: the key its pairwise masks are agreed with) and the
// SHA-256 of its self-mask seed, against which the coordinator checks the seed it rebuilds.
struct SecAggKeys {
  PublicKey c_public{};
  PublicKey s_public{};
  std::array<std::uint8_t, 32> seed_digest{};
  friend bool operator==(const SecAggKeys&, const SecAggKeys&) = default;
};

struct SecAggMember {
  std::uint32_t index = 0;  // 1..n: the Shamir x of this member's shares.
  std::string client_id;
  PublicKey c_public{};
  PublicKey s_public{};
  friend bool operator==(const SecAggMember&, const SecAggMember&) = default;
};

// Stage 1 answer, coordinator -> client: its index, the threshold, and its neighbours' keys (and
// its own, which it checks).
struct SecAggRoster {
  std::uint32_t own_index = 0;
  std::uint32_t threshold = 0;
  std::vector<SecAggMember> members;  // Sorted by index; the client itself included.
  friend bool operator==(const SecAggRoster&, const SecAggRoster&) = default;
};

// One Shamir share pair (of the sender's masking key and self-mask seed) sealed to one member.
struct SecAggSealed {
  std::uint32_t from = 0;
  std::uint32_t to = 0;
  std::vector<std::uint8_t> sealed;  // ChaCha20-Poly1305, nonce first (crypto/aead.h).
  friend bool operator==(const SecAggSealed&, const SecAggSealed&) = default;
};

// Stage 2, both ways: a client sends one sealed share pair per neighbour; the coordinator routes
// to each client those addressed to it, from the neighbours that shared (they mask with it).
struct SecAggShares {
  std::vector<SecAggSealed> shares;
  friend bool operator==(const SecAggShares&, const SecAggShares&) = default;
};

// Stage 4, coordinator -> client: who sent masked inputs, and who shared keys but did not.
struct SecAggUnmask {
  std::vector<std::uint32_t> survivors;
  std::vector<std::uint32_t> dropped;
  friend bool operator==(const SecAggUnmask&, const SecAggUnmask&) = default;
};

// One revealed share: of `owner`'s self-mask seed (a survivor) or masking key (dropped).
struct SecAggShare {
  std::uint32_t owner = 0;
  std::uint32_t x = 0;
  std::array<std::uint8_t, 33> y{};
  friend bool operator==(const SecAggShare&, const SecAggShare&) = default;
};

// Stage 4 answer, client -> coordinator.
struct SecAggReveal {
  std::vector<SecAggShare> shares;
  friend bool operator==(const SecAggReveal&, const SecAggReveal&) = default;
};

// A secure-aggregation message of round `round`; the ticket is that of the client's RoundTask,
// both ways. (Stage 3, the masked input, is an Update carrying one u32 tensor.)
struct SecAgg {
  std::uint64_t round = 0;
  TaskTicket ticket;
  std::variant<SecAggKeys, SecAggRoster, SecAggShares, SecAggUnmask, SecAggReveal> stage;
  friend bool operator==(const SecAgg&, const SecAgg&) = default;
};
std::string_view SecAggStageName(const SecAgg& message);  // "keys", "roster", ...

using Body = std::variant<Hello, Welcome, RoundTask, Update, Ack, Heartbeat, EvalTask, EvalResult,
                          Error, Bye, Chunk, SecAgg>;
std::string_view BodyName(const Body& body);  // "hello", "roundTask", ...

struct Envelope {
  std::uint16_t protocol_version = kProtocolVersion;
  std::uint64_t session_id = 0;  // 0 in Hello; the Welcome's value afterwards, both ways.
  std::uint64_t sequence = 0;    // Per sender, strictly increasing within a session.
  Body body;
  std::optional<ChunkedHead> chunked;  // Set: the head of a chunked message (tensors follow).
  friend bool operator==(const Envelope&, const Envelope&) = default;
};

// The tensors a message carries, or nullptr for kinds without tensors.
const TensorMap* TensorsOf(const Body& body);
TensorMap* TensorsOf(Body& body);

}  // namespace fedlora::wire
