@0x9bcddffb25cad903;
# fedlora wire protocol: the messages exchanged between the coordinator and training clients.
#
# Framing. Every message is one ZeroMQ multipart message:
#   frame 0       an Envelope, serialized unpacked (capnp::messageToFlatArray), 8-byte words;
#   frames 1..n   raw little-endian tensor bytes, one tensor per frame, each described by exactly
#                 one TensorRef inside the envelope (TensorRef.frame = its frame index).
# Tensor bytes never sit inside the Cap'n Proto message, so an adapter upload is copied at most
# once on each side. The coordinator binds a ROUTER socket; clients connect DEALER sockets (the
# ROUTER prepends the peer's routing id, which is not part of this protocol).
#
# Limits. Readers bound Cap'n Proto's traversal by the configured max_message_bytes, reject a
# message whose frames together exceed it (MESSAGE_TOO_LARGE), and check every TensorRef against
# its frame: length (TENSOR_FRAME_MISMATCH), SHA-256 (DIGEST_MISMATCH), one ref per frame
# (FRAME_COUNT_MISMATCH). Zero-valued enums ("unspecified") are always rejected, never guessed.
#
# Chunked transfer. A message whose tensor bytes exceed the sender's transport.chunk_bytes travels
# in pieces: first its head, the Envelope with `chunked` set, every TensorRef (frame = the tensor's
# position, 1..n, in the order its bytes follow) and no tensor frames; then chunkCount Chunk
# messages, in order. Chunk i carries bytes [i * chunkBytes, min((i + 1) * chunkBytes, totalBytes))
# of the tensors' bytes laid end to end in frame order, in one or more frames. The receiver checks
# each chunk's index, offset and length (CHUNK_MISMATCH, naming the tensor and offset) and every
# tensor's SHA-256 once its last byte arrived; a failed transfer is void and is sent again whole.
# max_message_bytes bounds each message, so a chunk, not the transfer.
#
# Compatibility. protocolVersion is checked first; a peer with another version gets
# VERSION_MISMATCH. A union member this build does not know gets UNKNOWN_MESSAGE_KIND, so an old
# peer degrades with a clear error instead of hanging. Field ordinals are never reused.
#
# docs/protocol.md describes the conversation (which side sends what, and when).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("fedlora::proto");

enum DType {
  unspecified @0;
  f32 @1;
  bf16 @2;
  f16 @3;
  f64 @4;
  u32 @5;     # Unsigned 32-bit integers: secure aggregation's masked words.
}

enum ErrorCode {
  unspecified @0;
  malformedEnvelope @1;     # Frame 0 is not a readable Envelope (truncated, garbled, misaligned).
  versionMismatch @2;       # protocolVersion differs from the reader's.
  unknownMessageKind @3;    # The union holds a member this reader does not know.
  frameCountMismatch @4;    # Tensor refs and tensor frames do not pair up one to one.
  tensorFrameMismatch @5;   # A frame's byte length disagrees with its ref, dtype or shape.
  digestMismatch @6;        # SHA-256 of a tensor frame differs from its ref.
  tensorDtypeMismatch @7;   # A tensor's dtype differs from what the task asked for.
  tensorShapeMismatch @8;   # A tensor's shape or name differs from what the task asked for.
  baseModelMismatch @9;     # Hello's base-model digest or module layout differs.
  messageTooLarge @10;      # Frames together exceed the reader's max_message_bytes.
  unexpectedMessage @11;    # Valid, but not acceptable in the current state.
  sessionMismatch @12;      # Wrong sessionId for this connection.
  sequenceReplay @13;       # sequence not greater than the last one seen from this sender.
  staleRound @14;           # Update or result for a round that is not open.
  notSelected @15;          # Update from a client that was not selected for the round.
  nonFiniteTensor @16;      # NaN or infinity in an uploaded tensor.
  invalidField @17;         # A field is out of range (empty name, zero rank, ...).
  duplicateClient @18;      # Another live connection already uses this client name.
  shuttingDown @19;         # The coordinator is stopping; reconnect later.
  internal @20;             # The sender of this Error hit a bug.
  baseVersionMismatch @21;  # A BaseUpdate starts at a version the client's base is not at.
  taskDeclined @22;         # The client will not do this task: offline, or it cannot finish
                            # before the deadline. Counts as a failure for the round.
  notAuthorized @23;        # The connection's CURVE key is not enrolled for the client name it
                            # uses, or was revoked. Final: the client stops.
  taskMismatch @24;         # A result whose round, attempt or task nonce is not that of the task
                            # this client was sent (replayed, or forged with another's nonce).
  updateNormExceeded @25;   # The upload's change to its task's tensors has an L2 norm above the
                            # coordinator's robust.norm_bound (with norm_action: reject).
  chunkMismatch @26;        # A chunk out of order, missing, of the wrong length, or for no open
                            # transfer. The transfer is void: the sender sends the message again.
  secAggMismatch @27;       # A secure-aggregation message out of stage, of the wrong size, or
                            # naming a member not in the roster. The sender is excluded from the
                            # attempt; the others go on.
  privacyMismatch @28;      # A task without the differential privacy the client requires, or an
                            # upload whose change is above the task's privacy clip.
}

# Binds a result to the task it answers. The coordinator issues a fresh random nonce with every
# task it sends to a client (over that client's encrypted connection); the client echoes the
# ticket in its Update or EvalResult, and anything else is refused with TASK_MISMATCH.
struct TaskTicket {
  attempt @0 :UInt32;       # The round's selection attempt (1, 2, ...); 0 for evaluations.
  nonce @1 :Data;           # 16 random bytes.
}

struct TensorRef {
  name @0 :Text;            # "model.layers.0.self_attn.q_proj.lora_A.weight"
  dtype @1 :DType;
  shape @2 :List(Int64);    # Row-major; nn.Linear layout [out, in] for weights.
  frame @3 :UInt32;         # Index of the frame holding the bytes (>= 1).
  byteLength @4 :UInt64;    # Must equal the frame's size and elements * dtype width.
  sha256 @5 :Data;          # 32 bytes, SHA-256 of the frame.
}

struct Metric {
  name @0 :Text;
  value @1 :Float64;
}

struct ModuleInfo {
  name @0 :Text;            # Hugging Face module path: "model.layers.3.self_attn.q_proj".
  dOut @1 :Int64;
  dIn @2 :Int64;
}

struct Capabilities {
  device @0 :Text;          # "cpu", "cuda:0".
  memoryBytes @1 :UInt64;
  maxRank @2 :UInt32;       # 0 = no limit.
  numExamples @3 :UInt64;
  relativeSpeed @4 :Float64;
  canInitialize @5 :Bool;   # Holds data declared for strategy initialisation (Fed-SB).
}

struct LoraSpec {
  rank @0 :UInt32;
  alpha @1 :Float64;
  dropout @2 :Float64;
  rslora @3 :Bool;
  targets @4 :List(Text);   # Short module names: "q_proj", "v_proj", ...
}

struct TrainSpec {
  learningRate @0 :Float64;
  warmupSteps @1 :UInt32;
  localSteps @2 :UInt32;
  localEpochs @3 :UInt32;
  batchSize @4 :UInt32;
  seqLen @5 :UInt32;
  gradClip @6 :Float64;
  weightDecay @7 :Float64;
  beta1 @8 :Float64;
  beta2 @9 :Float64;
  eps @10 :Float64;
  seed @11 :UInt64;
  uploadDtype @12 :DType;
}

# How a client builds, trains and uploads its adapter (client adapter modes).
enum AdapterMode {
  standard @0;      # A (r x d_in), B (d_out x r) per module.
  sketched @1;      # FSLoRA: sub-blocks B[:, I], A[I, :] of the global adapter, scale s*r/k.
  loraSb @2;        # LoRA-SB: B and A frozen, only R (r x r) trains.
  loraSbInit @3;    # LoRA-SB initialisation from a first-gradient estimate.
}

enum AdapterInit {
  fromTask @0;      # The task's tensors.
  fresh @1;         # PEFT default init, seeded per client and round.
  localB @2;        # A from the task, B from the client's own store.
}

struct ModulePlan {
  module @0 :Text;
  rank @1 :UInt32;            # 0 = no LoRA on this module (LoRA depth).
  sketch @2 :List(UInt32);    # Sketched mode: indices into the global rank.
}

struct RankPruning {          # HetLoRA self-pruning; gamma = 0 disables it.
  gamma @0 :Float64;
  lambda @1 :Float64;
  minRank @2 :UInt32;
}

struct AdapterPlan {
  mode @0 :AdapterMode;
  init @1 :AdapterInit;
  trainA @2 :Bool;
  trainB @3 :Bool;
  uploadA @4 :Bool;
  uploadB @5 :Bool;
  globalRank @6 :UInt32;
  modules @7 :List(ModulePlan);   # Empty: every target module at lora.rank.
  pruning @8 :RankPruning;
  initSamples @9 :UInt32;
  initLearningRate @10 :Float64;
}

# One correction of a module's frozen weight: W += U*V (scale folded in), or W += dense. The
# named tensors travel in the same message.
struct CorrectionRef {
  version @0 :UInt64;
  module @1 :Text;
  u @2 :Text;
  v @3 :Text;
  dense @4 :Text;
}

# Brings the client's base weights from fromVersion to toVersion (after restoring the pristine
# weights when rebase is set), applying entries in order in fp32 with a fixed summation order.
struct BaseUpdate {
  rebase @0 :Bool;
  fromVersion @1 :UInt64;
  toVersion @2 :UInt64;
  entries @3 :List(CorrectionRef);
}

# Client -> coordinator, first message of every connection (sessionId = 0).
struct Hello {
  clientName @0 :Text;
  softwareVersion @1 :Text;
  baseModelSha256 @2 :Text;     # Hex SHA-256 of the base weights; must match the coordinator's.
  capabilities @3 :Capabilities;
  modules @4 :List(ModuleInfo); # Every LoRA-adaptable linear module of the client's model.
  baseVersion @5 :UInt64;       # Base-correction version the client's weights are at.
}

# Coordinator -> client, answer to Hello. Carries the session id both sides use from now on.
struct Welcome {
  clientId @0 :Text;
  heartbeatIntervalMs @1 :UInt32;
  heartbeatLiveness @2 :UInt32;
  currentRound @3 :UInt64;
  strategy @4 :Text;
  plan @5 :AdapterPlan;         # This client's LoRA depth and per-module ranks.
}

# Coordinator -> client: train this round. Tensors: the adapter to start from.
struct RoundTask {
  round @0 :UInt64;
  deadlineMs @1 :UInt64;
  lora @2 :LoraSpec;
  train @3 :TrainSpec;
  tensors @4 :List(TensorRef);
  plan @5 :AdapterPlan;
  base @6 :BaseUpdate;
  ticket @7 :TaskTicket;
  secAgg @8 :SecAggParams;      # Set: upload a masked vector (see "Secure aggregation").
  privacy @9 :PrivacyParams;    # Set: the round is differentially private (docs/privacy.md).
}

# The client clips its upload's change (all tensors, one L2 norm) to `clip`; the coordinator adds
# N(0, (noiseMultiplier clip)^2) to the sum of the changes. The rest is for the client's log.
struct PrivacyParams {
  clip @0 :Float64;
  noiseMultiplier @1 :Float64;
  sampleRate @2 :Float64;
  delta @3 :Float64;
  epsilonSpent @4 :Float64;
  targetEpsilon @5 :Float64;
  adaptiveClip @6 :Bool;        # Report metric dp_within_clip: 1 if the change was within clip.
  # Distributed DP (with secAgg): > 0 = the client adds N(0, (noiseMultiplier clip)^2 /
  # noiseShareClients) to every value of its clipped input before masking; the round is released
  # only if at least this many inputs survive. 0 = the coordinator adds the noise (plain uploads).
  noiseShareClients @7 :UInt32;
}

# Client -> coordinator: the trained adapter. Acknowledged only once persisted.
struct Update {
  round @0 :UInt64;
  numSamples @1 :UInt64;
  numExamples @2 :UInt64;
  metrics @3 :List(Metric);
  tensors @4 :List(TensorRef);
  baseVersion @5 :UInt64;
  ticket @6 :TaskTicket;    # The ticket of the RoundTask this answers.
}

struct Ack {
  round @0 :UInt64;
  ackedSequence @1 :UInt64;
}

struct Heartbeat {}

# Coordinator -> client: evaluate this adapter on the held-out split.
struct EvalTask {
  round @0 :UInt64;
  deadlineMs @1 :UInt64;
  maxBatches @2 :UInt32;
  lora @3 :LoraSpec;
  train @4 :TrainSpec;
  tensors @5 :List(TensorRef);
  plan @6 :AdapterPlan;
  base @7 :BaseUpdate;
  ticket @8 :TaskTicket;
}

struct EvalResult {
  round @0 :UInt64;
  loss @1 :Float64;
  numTokens @2 :UInt64;
  numExamples @3 :UInt64;
  metrics @4 :List(Metric);
  baseVersion @5 :UInt64;
  ticket @6 :TaskTicket;    # The ticket of the EvalTask this answers.
}

struct Error {
  code @0 :ErrorCode;
  message @1 :Text;
  refSequence @2 :UInt64;
}

struct Bye {
  reason @0 :Text;
}

# Set in the head of a chunked message (see "Chunked transfer" above).
struct ChunkedHead {
  totalBytes @0 :UInt64;    # Sum of the tensors' byteLength.
  chunkBytes @1 :UInt64;    # Bytes per chunk (the last may hold fewer).
  chunkCount @2 :UInt32;    # ceil(totalBytes / chunkBytes).
}

# One piece of a chunked message; its frames 1..n hold the bytes.
struct Chunk {
  transfer @0 :UInt64;      # The head's sequence number.
  index @1 :UInt32;         # 0, 1, ..., chunkCount - 1.
  offset @2 :UInt64;        # index * chunkBytes.
}

# ---- Secure aggregation (SecAgg+, Bell et al. CCS 2020; docs/protocol.md) -------------------
# A round task with secAgg set runs four stages inside the round, all under the task's ticket:
#   1 keys    client -> coordinator: two X25519 public keys and the SHA-256 of its self-mask seed;
#             coordinator -> client: the roster (its index, the threshold, its neighbours' keys).
#   2 shares  client -> coordinator: Shamir shares of its masking key and seed, sealed to each
#             neighbour (ChaCha20-Poly1305); coordinator -> client: those sealed to it.
#   3 input   client -> coordinator: an Update whose only tensor is "secagg.masked" (u32), the
#             quantised weighted upload plus the self mask and the pairwise masks, mod 2^m.
#   4 unmask  coordinator -> client: survivors and dropped; client -> coordinator: its shares of
#             the survivors' seeds and of the dropped members' masking keys.

enum SecAggWeighting {
  unspecified @0;
  examples @1;
  samples @2;
  uniform @3;
}

struct SecAggSlot {
  name @0 :Text;
  shape @1 :List(Int64);
}

struct SecAggParams {
  clip @0 :Float64;
  levelsBits @1 :UInt32;
  modulusBits @2 :UInt32;
  weighting @3 :SecAggWeighting;
  weightScale @4 :Float64;
  delta @5 :Bool;
  layout @6 :List(SecAggSlot);
}

struct SecAggMember {
  index @0 :UInt32;
  clientId @1 :Text;
  cPublic @2 :Data;
  sPublic @3 :Data;
}

struct SecAggSealed {
  from @0 :UInt32;
  to @1 :UInt32;
  sealed @2 :Data;
}

struct SecAggShare {
  owner @0 :UInt32;
  x @1 :UInt32;
  y @2 :Data;
}

struct SecAgg {
  round @0 :UInt64;
  ticket @1 :TaskTicket;
  union {
    keys :group {
      cPublic @2 :Data;
      sPublic @3 :Data;
      seedDigest @4 :Data;
    }
    roster :group {
      ownIndex @5 :UInt32;
      threshold @6 :UInt32;
      members @7 :List(SecAggMember);
    }
    shares @8 :List(SecAggSealed);
    unmask :group {
      survivors @9 :List(UInt32);
      dropped @10 :List(UInt32);
    }
    reveal @11 :List(SecAggShare);
  }
}

struct Envelope {
  protocolVersion @0 :UInt16;
  sessionId @1 :UInt64;
  sequence @2 :UInt64;
  union {
    hello @3 :Hello;
    welcome @4 :Welcome;
    roundTask @5 :RoundTask;
    update @6 :Update;
    ack @7 :Ack;
    heartbeat @8 :Heartbeat;
    evalTask @9 :EvalTask;
    evalResult @10 :EvalResult;
    error @11 :Error;
    bye @12 :Bye;
    chunk @14 :Chunk;
    secAgg @15 :SecAgg;
  }
  chunked @13 :ChunkedHead; # Set: this is the head of a chunked message.
}
