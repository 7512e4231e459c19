// codec.cc — encoding: Envelope -> frames, chunked heads and chunks (decoding: codec_decode.cc).
#include "common/wire/codec.h"

#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "common/crypto/sha256.h"
#include "common/wire/codec_proto.h"

namespace fedlora::wire {
namespace {

using namespace codec_internal;

// ---- encoding ------------------------------------------------------------------------------

// Appends one TensorRef per tensor; frame indices continue from `*next_frame`.
void EncodeTensors(const TensorMap& tensors, capnp::List<proto::TensorRef>::Builder refs,
                   std::uint32_t* next_frame, std::vector<std::span<const std::byte>>* frames,
                   bool digests) {
  std::uint32_t i = 0;
  for (const auto& [name, t] : tensors) {
    FEDLORA_CHECK_MSG(Validate(t, name).ok(), Validate(t, name).ToString());
    proto::TensorRef::Builder ref = refs[i++];
    ref.setName(Text(name));
    ref.setDtype(ToProto(t.dtype));
    auto shape = ref.initShape(static_cast<unsigned>(t.shape.size()));
    for (unsigned d = 0; d < t.shape.size(); ++d) shape.set(d, t.shape[d]);
    ref.setFrame((*next_frame)++);
    ref.setByteLength(t.data.size());
    if (digests) {
      const crypto::Digest digest = crypto::Sha256(std::span<const std::byte>(t.data));
      ref.setSha256(
          kj::arrayPtr(reinterpret_cast<const capnp::byte*>(digest.data()), digest.size()));
    }
    frames->push_back(std::span<const std::byte>(t.data));
  }
}

// A decoded head's refs, as they were (re-encoding a head whose bytes this process never held).
void EncodeRefs(const std::vector<TensorRef>& refs, capnp::List<proto::TensorRef>::Builder out) {
  for (unsigned i = 0; i < refs.size(); ++i) {
    proto::TensorRef::Builder ref = out[i];
    ref.setName(Text(refs[i].name));
    ref.setDtype(ToProto(refs[i].dtype));
    auto shape = ref.initShape(static_cast<unsigned>(refs[i].shape.size()));
    for (unsigned d = 0; d < refs[i].shape.size(); ++d) shape.set(d, refs[i].shape[d]);
    ref.setFrame(i + 1);
    ref.setByteLength(refs[i].byte_length);
    if (!refs[i].sha256.empty()) {
      ref.setSha256(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(refs[i].sha256.data()),
                                 refs[i].sha256.size()));
    }
  }
}

void EncodeMetrics(const Metrics& metrics, capnp::List<proto::Metric>::Builder out) {
  unsigned i = 0;
  for (const auto& [name, value] : metrics) {
    out[i].setName(Text(name));
    out[i].setValue(value);
    ++i;
  }
}

void EncodeLora(const LoraSpec& s, proto::LoraSpec::Builder b) {
  b.setRank(s.rank);
  b.setAlpha(s.alpha);
  b.setDropout(s.dropout);
  b.setRslora(s.rslora);
  auto targets = b.initTargets(static_cast<unsigned>(s.targets.size()));
  for (unsigned i = 0; i < s.targets.size(); ++i) targets.set(i, Text(s.targets[i]));
}

void EncodeTrain(const TrainSpec& s, proto::TrainSpec::Builder b) {
  b.setLearningRate(s.learning_rate);
  b.setWarmupSteps(s.warmup_steps);
  b.setLocalSteps(s.local_steps);
  b.setLocalEpochs(s.local_epochs);
  b.setBatchSize(s.batch_size);
  b.setSeqLen(s.seq_len);
  b.setGradClip(s.grad_clip);
  b.setWeightDecay(s.weight_decay);
  b.setBeta1(s.beta1);
  b.setBeta2(s.beta2);
  b.setEps(s.eps);
  b.setSeed(s.seed);
  b.setUploadDtype(ToProto(s.upload_dtype));
}

void EncodePlan(const AdapterPlan& p, proto::AdapterPlan::Builder b) {
  b.setMode(static_cast<proto::AdapterMode>(static_cast<std::uint16_t>(p.mode)));
  b.setInit(static_cast<proto::AdapterInit>(static_cast<std::uint16_t>(p.init)));
  b.setTrainA(p.train_a);
  b.setTrainB(p.train_b);
  b.setUploadA(p.upload_a);
  b.setUploadB(p.upload_b);
  b.setGlobalRank(p.global_rank);
  auto modules = b.initModules(static_cast<unsigned>(p.modules.size()));
  for (unsigned i = 0; i < p.modules.size(); ++i) {
    modules[i].setModule(Text(p.modules[i].module));
    modules[i].setRank(p.modules[i].rank);
    auto sketch = modules[i].initSketch(static_cast<unsigned>(p.modules[i].sketch.size()));
    for (unsigned j = 0; j < p.modules[i].sketch.size(); ++j) sketch.set(j, p.modules[i].sketch[j]);
  }
  auto pruning = b.initPruning();
  pruning.setGamma(p.pruning.gamma);
  pruning.setLambda(p.pruning.lambda);
  pruning.setMinRank(p.pruning.min_rank);
  b.setInitSamples(p.init_samples);
  b.setInitLearningRate(p.init_learning_rate);
}

void EncodeTicket(const TaskTicket& t, proto::TaskTicket::Builder b) {
  b.setAttempt(t.attempt);
  b.setNonce(capnp::Data::Reader(t.nonce.data(), t.nonce.size()));
}

void EncodeBase(const BaseUpdate& u, proto::BaseUpdate::Builder b) {
  b.setRebase(u.rebase);
  b.setFromVersion(u.from_version);
  b.setToVersion(u.to_version);
  auto entries = b.initEntries(static_cast<unsigned>(u.entries.size()));
  for (unsigned i = 0; i < u.entries.size(); ++i) {
    entries[i].setVersion(u.entries[i].version);
    entries[i].setModule(Text(u.entries[i].module));
    entries[i].setU(Text(u.entries[i].u));
    entries[i].setV(Text(u.entries[i].v));
    entries[i].setDense(Text(u.entries[i].dense));
  }
}

capnp::Data::Reader Bytes(std::span<const std::uint8_t> bytes) {
  return capnp::Data::Reader(bytes.data(), bytes.size());
}

void EncodeSecAggParams(const SecAggParams& p, proto::SecAggParams::Builder b) {
  b.setClip(p.clip);
  b.setLevelsBits(p.levels_bits);
  b.setModulusBits(p.modulus_bits);
  b.setWeighting(static_cast<proto::SecAggWeighting>(static_cast<std::uint16_t>(p.weighting)));
  b.setWeightScale(p.weight_scale);
  b.setDelta(p.delta);
  auto layout = b.initLayout(static_cast<unsigned>(p.layout.size()));
  for (unsigned i = 0; i < p.layout.size(); ++i) {
    layout[i].setName(Text(p.layout[i].name));
    auto shape = layout[i].initShape(static_cast<unsigned>(p.layout[i].shape.size()));
    for (unsigned j = 0; j < p.layout[i].shape.size(); ++j) shape.set(j, p.layout[i].shape[j]);
  }
}

void EncodeSecAgg(const SecAgg& m, proto::SecAgg::Builder b) {
  b.setRound(m.round);
  EncodeTicket(m.ticket, b.initTicket());
  if (const auto* keys = std::get_if<SecAggKeys>(&m.stage)) {
    auto g = b.initKeys();
    g.setCPublic(Bytes(keys->c_public));
    g.setSPublic(Bytes(keys->s_public));
    g.setSeedDigest(Bytes(keys->seed_digest));
  } else if (const auto* roster = std::get_if<SecAggRoster>(&m.stage)) {
    auto g = b.initRoster();
    g.setOwnIndex(roster->own_index);
    g.setThreshold(roster->threshold);
    auto members = g.initMembers(static_cast<unsigned>(roster->members.size()));
    for (unsigned i = 0; i < roster->members.size(); ++i) {
      const SecAggMember& member = roster->members[i];
      members[i].setIndex(member.index);
      members[i].setClientId(Text(member.client_id));
      members[i].setCPublic(Bytes(member.c_public));
      members[i].setSPublic(Bytes(member.s_public));
    }
  } else if (const auto* shares = std::get_if<SecAggShares>(&m.stage)) {
    auto list = b.initShares(static_cast<unsigned>(shares->shares.size()));
    for (unsigned i = 0; i < shares->shares.size(); ++i) {
      list[i].setFrom(shares->shares[i].from);
      list[i].setTo(shares->shares[i].to);
      list[i].setSealed(Bytes(shares->shares[i].sealed));
    }
  } else if (const auto* unmask = std::get_if<SecAggUnmask>(&m.stage)) {
    auto g = b.initUnmask();
    auto survivors = g.initSurvivors(static_cast<unsigned>(unmask->survivors.size()));
    for (unsigned i = 0; i < unmask->survivors.size(); ++i) survivors.set(i, unmask->survivors[i]);
    auto dropped = g.initDropped(static_cast<unsigned>(unmask->dropped.size()));
    for (unsigned i = 0; i < unmask->dropped.size(); ++i) dropped.set(i, unmask->dropped[i]);
  } else if (const auto* reveal = std::get_if<SecAggReveal>(&m.stage)) {
    auto list = b.initReveal(static_cast<unsigned>(reveal->shares.size()));
    for (unsigned i = 0; i < reveal->shares.size(); ++i) {
      list[i].setOwner(reveal->shares[i].owner);
      list[i].setX(reveal->shares[i].x);
      list[i].setY(Bytes(reveal->shares[i].y));
    }
  }
}

struct BodyEncoder {
  proto::Envelope::Builder env;
  std::vector<std::span<const std::byte>>* frames;
  bool digests = true;
  const std::vector<TensorRef>* head_refs = nullptr;  // A decoded head being encoded again.
  std::uint32_t next_frame = 1;

  void Tensors(const TensorMap& tensors, capnp::List<proto::TensorRef>::Builder refs) {
    if (head_refs != nullptr && tensors.empty()) {
      EncodeRefs(*head_refs, refs);
    } else {
      EncodeTensors(tensors, refs, &next_frame, frames, digests);
    }
  }
  unsigned Count(const TensorMap& tensors) const {
    return static_cast<unsigned>(head_refs != nullptr && tensors.empty() ? head_refs->size()
                                                                         : tensors.size());
  }

  void operator()(const Hello& m) {
    auto b = env.initHello();
    b.setClientName(Text(m.client_name));
    b.setSoftwareVersion(Text(m.software_version));
    b.setBaseModelSha256(Text(m.base_model_sha256));
    auto caps = b.initCapabilities();
    caps.setDevice(Text(m.capabilities.device));
    caps.setMemoryBytes(m.capabilities.memory_bytes);
    caps.setMaxRank(m.capabilities.max_rank);
    caps.setNumExamples(m.capabilities.num_examples);
    caps.setRelativeSpeed(m.capabilities.relative_speed);
    caps.setCanInitialize(m.capabilities.can_initialize);
    b.setBaseVersion(m.base_version);
    auto modules = b.initModules(static_cast<unsigned>(m.modules.size()));
    for (unsigned i = 0; i < m.modules.size(); ++i) {
      modules[i].setName(Text(m.modules[i].name));
      modules[i].setDOut(m.modules[i].d_out);
      modules[i].setDIn(m.modules[i].d_in);
    }
  }
  void operator()(const Welcome& m) {
    auto b = env.initWelcome();
    b.setClientId(Text(m.client_id));
    b.setHeartbeatIntervalMs(m.heartbeat_interval_ms);
    b.setHeartbeatLiveness(m.heartbeat_liveness);
    b.setCurrentRound(m.current_round);
    b.setStrategy(Text(m.strategy));
    EncodePlan(m.plan, b.initPlan());
  }
  void operator()(const RoundTask& m) {
    auto b = env.initRoundTask();
    b.setRound(m.round);
    b.setDeadlineMs(m.deadline_ms);
    EncodeLora(m.lora, b.initLora());
    EncodeTrain(m.train, b.initTrain());
    EncodePlan(m.plan, b.initPlan());
    EncodeBase(m.base, b.initBase());
    EncodeTicket(m.ticket, b.initTicket());
    Tensors(m.tensors, b.initTensors(Count(m.tensors)));
    if (m.secagg) EncodeSecAggParams(*m.secagg, b.initSecAgg());
    if (m.privacy) {
      auto p = b.initPrivacy();
      p.setClip(m.privacy->clip);
      p.setNoiseMultiplier(m.privacy->noise_multiplier);
      p.setSampleRate(m.privacy->sample_rate);
      p.setDelta(m.privacy->delta);
      p.setEpsilonSpent(m.privacy->epsilon_spent);
      p.setTargetEpsilon(m.privacy->target_epsilon);
      p.setAdaptiveClip(m.privacy->adaptive_clip);
      p.setNoiseShareClients(m.privacy->noise_share_clients);
    }
  }
  void operator()(const Update& m) {
    auto b = env.initUpdate();
    b.setRound(m.round);
    b.setNumSamples(m.num_samples);
    b.setNumExamples(m.num_examples);
    b.setBaseVersion(m.base_version);
    EncodeTicket(m.ticket, b.initTicket());
    EncodeMetrics(m.metrics, b.initMetrics(static_cast<unsigned>(m.metrics.size())));
    Tensors(m.tensors, b.initTensors(Count(m.tensors)));
  }
  void operator()(const Ack& m) {
    auto b = env.initAck();
    b.setRound(m.round);
    b.setAckedSequence(m.acked_sequence);
  }
  void operator()(const Heartbeat&) { env.initHeartbeat(); }
  void operator()(const EvalTask& m) {
    auto b = env.initEvalTask();
    b.setRound(m.round);
    b.setDeadlineMs(m.deadline_ms);
    b.setMaxBatches(m.max_batches);
    EncodeLora(m.lora, b.initLora());
    EncodeTrain(m.train, b.initTrain());
    EncodePlan(m.plan, b.initPlan());
    EncodeBase(m.base, b.initBase());
    EncodeTicket(m.ticket, b.initTicket());
    Tensors(m.tensors, b.initTensors(Count(m.tensors)));
  }
  void operator()(const EvalResult& m) {
    auto b = env.initEvalResult();
    b.setRound(m.round);
    b.setLoss(m.loss);
    b.setNumTokens(m.num_tokens);
    b.setNumExamples(m.num_examples);
    b.setBaseVersion(m.base_version);
    EncodeTicket(m.ticket, b.initTicket());
    EncodeMetrics(m.metrics, b.initMetrics(static_cast<unsigned>(m.metrics.size())));
  }
  void operator()(const Error& m) {
    auto b = env.initError();
    b.setCode(static_cast<proto::ErrorCode>(static_cast<std::uint16_t>(m.code)));
    b.setMessage(Text(m.message));
    b.setRefSequence(m.ref_sequence);
  }
  void operator()(const Bye& m) { env.initBye().setReason(Text(m.reason)); }
  void operator()(const Chunk& m) {
    auto b = env.initChunk();
    b.setTransfer(m.transfer);
    b.setIndex(m.index);
    b.setOffset(m.offset);
    frames->push_back(std::span<const std::byte>(m.data));
  }
  void operator()(const SecAgg& m) { EncodeSecAgg(m, env.initSecAgg()); }
};

std::vector<std::byte> Flatten(capnp::MessageBuilder& builder) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  kj::ArrayPtr<const kj::byte> bytes = words.asBytes();
  std::vector<std::byte> out(bytes.size());
  std::memcpy(out.data(), bytes.begin(), bytes.size());
  return out;
}

}  // namespace

std::size_t EncodedMessage::total_bytes() const {
  std::size_t total = envelope.size();
  if (chunked) return total;  // The tensors travel in chunks, counted as they are sent.
  for (const auto& f : tensor_frames) total += f.size();
  return total;
}

std::vector<std::span<const std::byte>> EncodedMessage::frames() const {
  std::vector<std::span<const std::byte>> out;
  out.reserve(1 + tensor_frames.size());
  out.emplace_back(envelope);
  if (!chunked) out.insert(out.end(), tensor_frames.begin(), tensor_frames.end());
  return out;
}

std::vector<std::span<const std::byte>> ChunkPieces(const EncodedMessage& head,
                                                    std::uint32_t index) {
  FEDLORA_CHECK_MSG(head.chunked.has_value() && index < head.chunked->chunk_count,
                    "ChunkPieces: not a chunked head, or no such chunk");
  const std::uint64_t begin = std::uint64_t{index} * head.chunked->chunk_bytes;
  const std::uint64_t end = std::min(begin + head.chunked->chunk_bytes, head.chunked->total_bytes);
  std::vector<std::span<const std::byte>> pieces;
  std::uint64_t at = 0;  // Offset of the current frame's first byte.
  for (const std::span<const std::byte> frame : head.tensor_frames) {
    const std::uint64_t lo = std::max(begin, at);
    const std::uint64_t hi = std::min(end, at + frame.size());
    if (lo < hi) pieces.push_back(frame.subspan(lo - at, hi - lo));
    at += frame.size();
    if (at >= end) break;
  }
  return pieces;
}

Status CheckChunkBytes(std::uint64_t chunk_bytes, std::uint64_t max_message_bytes) {
  if (chunk_bytes < kChunkEnvelopeBytes || chunk_bytes > max_message_bytes - kChunkEnvelopeBytes ||
      max_message_bytes < kChunkEnvelopeBytes) {
    return InvalidArgument("transport.chunk_bytes (", chunk_bytes, ") must be at least ",
                           kChunkEnvelopeBytes, " and leave ", kChunkEnvelopeBytes,
                           " bytes for the chunk's envelope below transport.max_message_bytes (",
                           max_message_bytes, ")");
  }
  return OkStatus();
}

EncodedMessage EncodeChunk(std::uint64_t session_id, std::uint64_t sequence, const Chunk& header,
                           std::span<const std::span<const std::byte>> pieces) {
  FEDLORA_CHECK_MSG(header.data.empty(), "EncodeChunk: the data travels as `pieces`");
  EncodedMessage out = Encode(Envelope{kProtocolVersion, session_id, sequence, header, {}});
  out.tensor_frames.assign(pieces.begin(), pieces.end());
  return out;
}

EncodedMessage Encode(const Envelope& envelope, const EncodeOptions& options) {
  EncodedMessage out;
  capnp::MallocMessageBuilder builder;
  proto::Envelope::Builder env = builder.initRoot<proto::Envelope>();
  env.setProtocolVersion(envelope.protocol_version);
  env.setSessionId(envelope.session_id);
  env.setSequence(envelope.sequence);
  const std::vector<TensorRef>* head_refs =
      envelope.chunked && !envelope.chunked->tensors.empty() ? &envelope.chunked->tensors : nullptr;
  std::visit(BodyEncoder{env, &out.tensor_frames, options.tensor_digests, head_refs},
             envelope.body);
  if (envelope.chunked) {
    const TensorMap* tensors = TensorsOf(envelope.body);
    const bool refs_only = tensors != nullptr && tensors->empty() && head_refs != nullptr;
    FEDLORA_CHECK_MSG(
        tensors != nullptr && (!tensors->empty() || refs_only) && envelope.chunked->chunk_bytes > 0,
        "Encode: only a message with tensors can be chunked, in chunks of >= 1 byte");
    std::uint64_t total = 0;
    if (refs_only) {
      for (const TensorRef& ref : *head_refs) total += ref.byte_length;
    } else {
      total = PayloadBytes(*tensors);
    }
    ChunkedHead head{total, envelope.chunked->chunk_bytes, 0, {}};
    const std::uint64_t count = (head.total_bytes + head.chunk_bytes - 1) / head.chunk_bytes;
    FEDLORA_CHECK_MSG(count <= std::numeric_limits<std::uint32_t>::max(),
                      "Encode: more than 2^32 chunks");
    head.chunk_count = static_cast<std::uint32_t>(count);
    auto b = env.initChunked();
    b.setTotalBytes(head.total_bytes);
    b.setChunkBytes(head.chunk_bytes);
    b.setChunkCount(head.chunk_count);
    out.chunked = std::move(head);
  }
  out.envelope = Flatten(builder);
  return out;
}

EncodedMessage EncodeWithUnknownKindForTesting(const Envelope& envelope, std::uint16_t raw_kind) {
  EncodedMessage out = Encode(envelope);
  // Single-segment flat array: 8-byte segment table, then the root pointer (word 0 of segment 0).
  // A struct pointer's bits 2..31 hold the signed offset, in words, from the end of the pointer to
  // the struct's data section; the union discriminant sits discriminantOffset 16-bit units in.
  std::uint32_t segment_count_minus_one;
  std::memcpy(&segment_count_minus_one, out.envelope.data(), 4);
  FEDLORA_CHECK(segment_count_minus_one == 0);
  std::uint32_t pointer_lo;
  std::memcpy(&pointer_lo, out.envelope.data() + 8, 4);
  const std::int32_t offset_words = static_cast<std::int32_t>(pointer_lo) >> 2;
  const std::size_t data_start = 8 + 8 * static_cast<std::size_t>(1 + offset_words);
  const std::uint32_t disc_offset =
      capnp::Schema::from<proto::Envelope>().getProto().getStruct().getDiscriminantOffset();
  std::memcpy(out.envelope.data() + data_start + 2 * disc_offset, &raw_kind, 2);
  return out;
}

}  // namespace fedlora::wire
