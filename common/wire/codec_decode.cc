// codec_decode.cc — decoding: frames -> Envelope, never trusting the peer (codec.h). Encoding is
// codec.cc's.
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include "common/crypto/sha256.h"
#include "common/wire/codec.h"
#include "common/wire/codec_proto.h"

namespace fedlora::wire {
namespace {

using namespace codec_internal;

// ---- decoding ------------------------------------------------------------------------------

// Reads one TensorRef: name, dtype and shape valid, byteLength = elements x width.
Result<TensorRef> DecodeRef(proto::TensorRef::Reader ref, std::uint32_t* frame) {
  TensorRef out;
  out.name = Str(ref.getName());
  if (out.name.empty()) {
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       "tensor ref with an empty name");
  }
  const std::optional<DType> dtype = FromProto(ref.getDtype());
  if (!dtype) {
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       StrCat("tensor '", out.name, "': unknown dtype value ",
                              static_cast<unsigned>(ref.getDtype())));
  }
  out.dtype = *dtype;
  for (std::int64_t d : ref.getShape()) out.shape.push_back(d);
  Result<std::int64_t> numel = NumElements(out.shape);
  if (!numel.ok()) {
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       StrCat("tensor '", out.name, "': ", numel.status().message()));
  }
  const std::uint64_t expected =
      static_cast<std::uint64_t>(*numel) * static_cast<std::uint64_t>(ByteWidth(*dtype));
  if (ref.getByteLength() != expected) {
    return DecodeError(ErrorCode::kTensorFrameMismatch, StatusCode::kDataLoss,
                       StrCat("tensor '", out.name, "': ref says ", ref.getByteLength(), " bytes, ",
                              DTypeName(*dtype), " ", ShapeString(out.shape), " needs ", expected));
  }
  out.byte_length = expected;
  const capnp::Data::Reader digest = ref.getSha256();
  out.sha256.assign(reinterpret_cast<const std::byte*>(digest.begin()),
                    reinterpret_cast<const std::byte*>(digest.end()));
  *frame = ref.getFrame();
  return out;
}

// Where a message's tensors go while decoding. A whole message binds each ref to its frame
// (`frames`, `claimed` collecting the indices used) and fills `tensors`; the head of a chunked
// message has no tensor frames and collects the refs in `head`, ordered by frame index.
struct TensorSink {
  std::span<const std::span<const std::byte>> frames;
  std::set<std::uint32_t>* claimed = nullptr;
  std::map<std::uint32_t, TensorRef>* head_refs = nullptr;  // Frame index -> ref (head only).
  const DecodeLimits* limits = nullptr;

  // True when the message carries a tensor called `name` (for corrections that name one).
  bool Has(const TensorMap& tensors, const std::string& name) const {
    if (head_refs == nullptr) return tensors.contains(name);
    return std::any_of(head_refs->begin(), head_refs->end(),
                       [&](const auto& entry) { return entry.second.name == name; });
  }
};

Status DecodeTensors(capnp::List<proto::TensorRef>::Reader refs, const TensorSink& sink,
                     TensorMap* out) {
  std::set<std::string, std::less<>> names;
  for (proto::TensorRef::Reader reader : refs) {
    std::uint32_t index = 0;
    FEDLORA_ASSIGN_OR_RETURN(TensorRef ref, DecodeRef(reader, &index));
    const std::string& name = ref.name;
    if (!names.insert(name).second) {
      return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                         StrCat("tensor '", name, "' appears twice"));
    }
    if (ref.sha256.empty() && sink.limits->require_digests) {
      return DecodeError(ErrorCode::kDigestMismatch, StatusCode::kDataLoss,
                         StrCat("tensor '", name, "' has no SHA-256 in its ref"));
    }
    if (ref.sha256.size() != 0 && ref.sha256.size() != crypto::Digest().size()) {
      return DecodeError(
          ErrorCode::kDigestMismatch, StatusCode::kDataLoss,
          StrCat("tensor '", name, "': its SHA-256 has ", ref.sha256.size(), " bytes"));
    }
    if (sink.head_refs != nullptr) {  // A chunked head: the bytes come later.
      if (index == 0 || !sink.head_refs->emplace(index, std::move(ref)).second) {
        return DecodeError(
            ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
            StrCat("tensor '", name, "' has position ", index, ", which is 0 or another tensor's"));
      }
      continue;
    }
    if (index == 0 || index >= sink.frames.size()) {
      return DecodeError(ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
                         StrCat("tensor '", name, "' refers to frame ", index,
                                " but the message has ", sink.frames.size(), " frames"));
    }
    if (!sink.claimed->insert(index).second) {
      return DecodeError(ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
                         StrCat("tensor '", name, "' refers to frame ", index,
                                ", which another tensor already uses"));
    }
    const std::span<const std::byte> frame = sink.frames[index];
    if (ref.byte_length != frame.size()) {
      return DecodeError(
          ErrorCode::kTensorFrameMismatch, StatusCode::kDataLoss,
          StrCat("tensor '", name, "': frame ", index, " holds ", frame.size(), " bytes, ",
                 DTypeName(ref.dtype), " ", ShapeString(ref.shape), " needs ", ref.byte_length));
    }
    if (!ref.sha256.empty()) {  // Absent only where the transport authenticates every byte.
      const crypto::Digest actual = crypto::Sha256(frame);
      if (std::memcmp(ref.sha256.data(), actual.data(), actual.size()) != 0) {
        return DecodeError(ErrorCode::kDigestMismatch, StatusCode::kDataLoss,
                           StrCat("tensor '", name, "': SHA-256 of frame ", index,
                                  " does not match its ref (corrupted in transit?)"));
      }
    }
    Tensor t{ref.dtype, std::move(ref.shape), std::vector<std::byte>(frame.begin(), frame.end())};
    out->emplace(name, std::move(t));
  }
  return OkStatus();
}

Metrics DecodeMetrics(capnp::List<proto::Metric>::Reader list) {
  Metrics out;
  for (proto::Metric::Reader m : list) out[Str(m.getName())] = m.getValue();
  return out;
}

LoraSpec DecodeLora(proto::LoraSpec::Reader r) {
  LoraSpec s;
  s.rank = r.getRank();
  s.alpha = r.getAlpha();
  s.dropout = r.getDropout();
  s.rslora = r.getRslora();
  for (capnp::Text::Reader t : r.getTargets()) s.targets.push_back(Str(t));
  return s;
}

Result<TrainSpec> DecodeTrain(proto::TrainSpec::Reader r) {
  TrainSpec s;
  s.learning_rate = r.getLearningRate();
  s.warmup_steps = r.getWarmupSteps();
  s.local_steps = r.getLocalSteps();
  s.local_epochs = r.getLocalEpochs();
  s.batch_size = r.getBatchSize();
  s.seq_len = r.getSeqLen();
  s.grad_clip = r.getGradClip();
  s.weight_decay = r.getWeightDecay();
  s.beta1 = r.getBeta1();
  s.beta2 = r.getBeta2();
  s.eps = r.getEps();
  s.seed = r.getSeed();
  const std::optional<DType> upload = FromProto(r.getUploadDtype());
  if (!upload) {
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       "train.uploadDtype is unspecified or unknown");
  }
  s.upload_dtype = *upload;
  return s;
}

Result<AdapterPlan> DecodePlan(proto::AdapterPlan::Reader r) {
  AdapterPlan p;
  const auto mode = static_cast<std::uint16_t>(r.getMode());
  const auto init = static_cast<std::uint16_t>(r.getInit());
  if (mode > static_cast<std::uint16_t>(AdapterMode::kLoraSbInit) ||
      init > static_cast<std::uint16_t>(AdapterInit::kLocalB)) {
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       StrCat("adapter plan: unknown mode ", mode, " or init ", init));
  }
  p.mode = static_cast<AdapterMode>(mode);
  p.init = static_cast<AdapterInit>(init);
  p.train_a = r.getTrainA();
  p.train_b = r.getTrainB();
  p.upload_a = r.getUploadA();
  p.upload_b = r.getUploadB();
  p.global_rank = r.getGlobalRank();
  for (proto::ModulePlan::Reader m : r.getModules()) {
    ModulePlan mp{Str(m.getModule()), m.getRank(), {}};
    for (std::uint32_t i : m.getSketch()) mp.sketch.push_back(i);
    p.modules.push_back(std::move(mp));
  }
  p.pruning = RankPruning{r.getPruning().getGamma(), r.getPruning().getLambda(),
                          r.getPruning().getMinRank()};
  p.init_samples = r.getInitSamples();
  p.init_learning_rate = r.getInitLearningRate();
  return p;
}

// Every tensor a correction names must travel in the same message.
// An absent ticket (an empty nonce) decodes as all zeros, which the coordinator never issues.
Result<TaskTicket> DecodeTicket(proto::TaskTicket::Reader r) {
  TaskTicket t;
  t.attempt = r.getAttempt();
  const capnp::Data::Reader nonce = r.getNonce();
  if (nonce.size() != 0 && nonce.size() != t.nonce.size()) {
    return DecodeError(
        ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
        StrCat("ticket nonce has ", nonce.size(), " bytes (expected ", t.nonce.size(), ")"));
  }
  std::copy(nonce.begin(), nonce.end(), t.nonce.begin());
  return t;
}

Result<BaseUpdate> DecodeBase(proto::BaseUpdate::Reader r, const TensorMap& tensors,
                              const TensorSink& sink) {
  BaseUpdate u;
  u.rebase = r.getRebase();
  u.from_version = r.getFromVersion();
  u.to_version = r.getToVersion();
  for (proto::CorrectionRef::Reader e : r.getEntries()) {
    CorrectionRef c{e.getVersion(), Str(e.getModule()), Str(e.getU()), Str(e.getV()),
                    Str(e.getDense())};
    const bool low_rank = !c.u.empty() && !c.v.empty() && c.dense.empty();
    const bool dense = c.u.empty() && c.v.empty() && !c.dense.empty();
    if (c.module.empty() || !(low_rank || dense)) {
      return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                         StrCat("correction for '", c.module,
                                "' must name either tensors u and v or a dense tensor"));
    }
    for (const std::string* name : {&c.u, &c.v, &c.dense}) {
      if (!name->empty() && !sink.Has(tensors, *name)) {
        return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                           StrCat("correction for '", c.module, "' names tensor '", *name,
                                  "', which the message does not carry"));
      }
    }
    u.entries.push_back(std::move(c));
  }
  return u;
}

Status SecAggError(std::string message) {
  return DecodeError(ErrorCode::kSecAggMismatch, StatusCode::kInvalidArgument, std::move(message));
}

// Exactly N bytes into `out`, or SECAGG_MISMATCH naming `what`.
template <std::size_t N>
Status FixedBytes(capnp::Data::Reader data, std::array<std::uint8_t, N>& out,
                  std::string_view what) {
  if (data.size() != N) {
    return SecAggError(StrCat(what, " has ", data.size(), " bytes (expected ", N, ")"));
  }
  std::copy(data.begin(), data.end(), out.begin());
  return OkStatus();
}

Result<SecAggParams> DecodeSecAggParams(proto::SecAggParams::Reader r) {
  SecAggParams p;
  p.clip = r.getClip();
  p.levels_bits = r.getLevelsBits();
  p.modulus_bits = r.getModulusBits();
  const auto weighting = static_cast<std::uint16_t>(r.getWeighting());
  if (weighting < 1 || weighting > 3) {
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       StrCat("secAgg.weighting: unknown value ", weighting));
  }
  p.weighting = static_cast<SecAggWeighting>(weighting);
  p.weight_scale = r.getWeightScale();
  p.delta = r.getDelta();
  for (proto::SecAggSlot::Reader slot : r.getLayout()) {
    SecAggSlot s{Str(slot.getName()), {}};
    for (std::int64_t d : slot.getShape()) s.shape.push_back(d);
    if (s.name.empty() || !NumElements(s.shape).ok()) {
      return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                         StrCat("secAgg.layout: slot '", s.name, "' with shape ",
                                ShapeString(s.shape), " is not a tensor"));
    }
    p.layout.push_back(std::move(s));
  }
  return p;
}

// A clip and noise a client can act on: finite, clip > 0, sigma >= 0, q in (0, 1].
Result<PrivacyParams> DecodePrivacyParams(proto::PrivacyParams::Reader r) {
  PrivacyParams p{r.getClip(),         r.getNoiseMultiplier(),  r.getSampleRate(),
                  r.getDelta(),        r.getEpsilonSpent(),     r.getTargetEpsilon(),
                  r.getAdaptiveClip(), r.getNoiseShareClients()};
  const auto bad = [](std::string_view what, double v) {
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       StrCat("privacy.", what, ": ", v, " is out of range"));
  };
  if (!(p.clip > 0) || !std::isfinite(p.clip)) return bad("clip", p.clip);
  if (!(p.noise_multiplier >= 0) || !std::isfinite(p.noise_multiplier)) {
    return bad("noiseMultiplier", p.noise_multiplier);
  }
  if (!(p.sample_rate > 0 && p.sample_rate <= 1)) return bad("sampleRate", p.sample_rate);
  if (!(p.delta >= 0 && p.delta < 1)) return bad("delta", p.delta);
  if (!(p.epsilon_spent >= 0)) return bad("epsilonSpent", p.epsilon_spent);
  if (!(p.target_epsilon >= 0)) return bad("targetEpsilon", p.target_epsilon);
  return p;
}

Result<SecAgg> DecodeSecAgg(proto::SecAgg::Reader r) {
  SecAgg m;
  m.round = r.getRound();
  FEDLORA_ASSIGN_OR_RETURN(m.ticket, DecodeTicket(r.getTicket()));
  switch (r.which()) {
    case proto::SecAgg::KEYS: {
      SecAggKeys keys;
      FEDLORA_RETURN_IF_ERROR(FixedBytes(r.getKeys().getCPublic(), keys.c_public, "keys.cPublic"));
      FEDLORA_RETURN_IF_ERROR(FixedBytes(r.getKeys().getSPublic(), keys.s_public, "keys.sPublic"));
      FEDLORA_RETURN_IF_ERROR(
          FixedBytes(r.getKeys().getSeedDigest(), keys.seed_digest, "keys.seedDigest"));
      m.stage = keys;
      return m;
    }
    case proto::SecAgg::ROSTER: {
      SecAggRoster roster;
      roster.own_index = r.getRoster().getOwnIndex();
      roster.threshold = r.getRoster().getThreshold();
      for (proto::SecAggMember::Reader member : r.getRoster().getMembers()) {
        SecAggMember out;
        out.index = member.getIndex();
        out.client_id = Str(member.getClientId());
        FEDLORA_RETURN_IF_ERROR(FixedBytes(member.getCPublic(), out.c_public,
                                           StrCat("roster member ", out.index, "'s cPublic")));
        FEDLORA_RETURN_IF_ERROR(FixedBytes(member.getSPublic(), out.s_public,
                                           StrCat("roster member ", out.index, "'s sPublic")));
        roster.members.push_back(std::move(out));
      }
      m.stage = std::move(roster);
      return m;
    }
    case proto::SecAgg::SHARES: {
      SecAggShares shares;
      for (proto::SecAggSealed::Reader s : r.getShares()) {
        shares.shares.push_back(
            {s.getFrom(), s.getTo(),
             std::vector<std::uint8_t>(s.getSealed().begin(), s.getSealed().end())});
      }
      m.stage = std::move(shares);
      return m;
    }
    case proto::SecAgg::UNMASK: {
      SecAggUnmask unmask;
      for (std::uint32_t i : r.getUnmask().getSurvivors()) unmask.survivors.push_back(i);
      for (std::uint32_t i : r.getUnmask().getDropped()) unmask.dropped.push_back(i);
      m.stage = std::move(unmask);
      return m;
    }
    case proto::SecAgg::REVEAL: {
      SecAggReveal reveal;
      for (proto::SecAggShare::Reader s : r.getReveal()) {
        SecAggShare share{s.getOwner(), s.getX(), {}};
        FEDLORA_RETURN_IF_ERROR(
            FixedBytes(s.getY(), share.y, StrCat("revealed share of member ", share.owner)));
        reveal.shares.push_back(share);
      }
      m.stage = std::move(reveal);
      return m;
    }
  }
  return DecodeError(ErrorCode::kUnknownMessageKind, StatusCode::kInvalidArgument,
                     StrCat("unknown secure-aggregation stage ", static_cast<unsigned>(r.which())));
}

Result<Body> DecodeBody(proto::Envelope::Reader env, const TensorSink& sink) {
  switch (env.which()) {
    case proto::Envelope::HELLO: {
      auto r = env.getHello();
      Hello m;
      m.client_name = Str(r.getClientName());
      m.software_version = Str(r.getSoftwareVersion());
      m.base_model_sha256 = Str(r.getBaseModelSha256());
      auto caps = r.getCapabilities();
      m.capabilities.device = Str(caps.getDevice());
      m.capabilities.memory_bytes = caps.getMemoryBytes();
      m.capabilities.max_rank = caps.getMaxRank();
      m.capabilities.num_examples = caps.getNumExamples();
      m.capabilities.relative_speed = caps.getRelativeSpeed();
      m.capabilities.can_initialize = caps.getCanInitialize();
      m.base_version = r.getBaseVersion();
      for (proto::ModuleInfo::Reader mod : r.getModules()) {
        m.modules.push_back({Str(mod.getName()), mod.getDOut(), mod.getDIn()});
      }
      return Body(std::move(m));
    }
    case proto::Envelope::WELCOME: {
      auto r = env.getWelcome();
      FEDLORA_ASSIGN_OR_RETURN(AdapterPlan plan, DecodePlan(r.getPlan()));
      return Body(Welcome{Str(r.getClientId()), r.getHeartbeatIntervalMs(),
                          r.getHeartbeatLiveness(), r.getCurrentRound(), Str(r.getStrategy()),
                          std::move(plan)});
    }
    case proto::Envelope::ROUND_TASK: {
      auto r = env.getRoundTask();
      RoundTask m;
      m.round = r.getRound();
      m.deadline_ms = r.getDeadlineMs();
      m.lora = DecodeLora(r.getLora());
      FEDLORA_ASSIGN_OR_RETURN(m.train, DecodeTrain(r.getTrain()));
      FEDLORA_ASSIGN_OR_RETURN(m.plan, DecodePlan(r.getPlan()));
      FEDLORA_RETURN_IF_ERROR(DecodeTensors(r.getTensors(), sink, &m.tensors));
      FEDLORA_ASSIGN_OR_RETURN(m.base, DecodeBase(r.getBase(), m.tensors, sink));
      FEDLORA_ASSIGN_OR_RETURN(m.ticket, DecodeTicket(r.getTicket()));
      if (r.hasSecAgg()) {
        FEDLORA_ASSIGN_OR_RETURN(m.secagg, DecodeSecAggParams(r.getSecAgg()));
      }
      if (r.hasPrivacy()) {
        FEDLORA_ASSIGN_OR_RETURN(m.privacy, DecodePrivacyParams(r.getPrivacy()));
      }
      return Body(std::move(m));
    }
    case proto::Envelope::UPDATE: {
      auto r = env.getUpdate();
      Update m;
      m.round = r.getRound();
      m.num_samples = r.getNumSamples();
      m.num_examples = r.getNumExamples();
      m.metrics = DecodeMetrics(r.getMetrics());
      m.base_version = r.getBaseVersion();
      FEDLORA_ASSIGN_OR_RETURN(m.ticket, DecodeTicket(r.getTicket()));
      FEDLORA_RETURN_IF_ERROR(DecodeTensors(r.getTensors(), sink, &m.tensors));
      return Body(std::move(m));
    }
    case proto::Envelope::ACK: {
      auto r = env.getAck();
      return Body(Ack{r.getRound(), r.getAckedSequence()});
    }
    case proto::Envelope::HEARTBEAT:
      return Body(Heartbeat{});
    case proto::Envelope::EVAL_TASK: {
      auto r = env.getEvalTask();
      EvalTask m;
      m.round = r.getRound();
      m.deadline_ms = r.getDeadlineMs();
      m.max_batches = r.getMaxBatches();
      m.lora = DecodeLora(r.getLora());
      FEDLORA_ASSIGN_OR_RETURN(m.train, DecodeTrain(r.getTrain()));
      FEDLORA_ASSIGN_OR_RETURN(m.plan, DecodePlan(r.getPlan()));
      FEDLORA_RETURN_IF_ERROR(DecodeTensors(r.getTensors(), sink, &m.tensors));
      FEDLORA_ASSIGN_OR_RETURN(m.base, DecodeBase(r.getBase(), m.tensors, sink));
      FEDLORA_ASSIGN_OR_RETURN(m.ticket, DecodeTicket(r.getTicket()));
      return Body(std::move(m));
    }
    case proto::Envelope::EVAL_RESULT: {
      auto r = env.getEvalResult();
      EvalResult m;
      m.round = r.getRound();
      m.loss = r.getLoss();
      m.num_tokens = r.getNumTokens();
      m.num_examples = r.getNumExamples();
      m.metrics = DecodeMetrics(r.getMetrics());
      m.base_version = r.getBaseVersion();
      FEDLORA_ASSIGN_OR_RETURN(m.ticket, DecodeTicket(r.getTicket()));
      return Body(std::move(m));
    }
    case proto::Envelope::ERROR: {
      auto r = env.getError();
      const auto raw = static_cast<std::uint16_t>(r.getCode());
      // Codes from a newer peer are kept as "unspecified" with the message intact.
      const ErrorCode code = raw <= static_cast<std::uint16_t>(kLastErrorCode)
                                 ? static_cast<ErrorCode>(raw)
                                 : ErrorCode::kUnspecified;
      return Body(Error{code, Str(r.getMessage()), r.getRefSequence()});
    }
    case proto::Envelope::BYE:
      return Body(Bye{Str(env.getBye().getReason())});
    case proto::Envelope::CHUNK: {
      auto r = env.getChunk();
      Chunk m{r.getTransfer(), r.getIndex(), r.getOffset(), {}};
      if (sink.frames.size() < 2 || sink.head_refs != nullptr) {
        return DecodeError(ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
                           "a chunk message without data frames");
      }
      std::size_t bytes = 0;
      for (std::size_t i = 1; i < sink.frames.size(); ++i) bytes += sink.frames[i].size();
      m.data.reserve(bytes);
      for (std::size_t i = 1; i < sink.frames.size(); ++i) {
        m.data.insert(m.data.end(), sink.frames[i].begin(), sink.frames[i].end());
        sink.claimed->insert(static_cast<std::uint32_t>(i));
      }
      return Body(std::move(m));
    }
    case proto::Envelope::SEC_AGG: {
      FEDLORA_ASSIGN_OR_RETURN(SecAgg m, DecodeSecAgg(env.getSecAgg()));
      return Body(std::move(m));
    }
  }
  return DecodeError(ErrorCode::kUnknownMessageKind, StatusCode::kInvalidArgument,
                     StrCat("unknown message kind ", static_cast<unsigned>(env.which()),
                            " (peer built from a newer protocol schema?)"));
}

// Copies frame 0 into 8-byte aligned words (ZeroMQ does not promise alignment; Cap'n Proto 0.9
// requires it).
Result<std::vector<capnp::word>> AlignedWords(std::span<const std::byte> frame) {
  if (frame.empty() || frame.size() % sizeof(capnp::word) != 0) {
    return DecodeError(ErrorCode::kMalformedEnvelope, StatusCode::kDataLoss,
                       StrCat("envelope frame of ", frame.size(),
                              " bytes is not a whole, non-zero number of 8-byte words"));
  }
  std::vector<capnp::word> words(frame.size() / sizeof(capnp::word));
  std::memcpy(words.data(), frame.data(), frame.size());
  return words;
}

// Cap'n Proto's traversal limit bounds the work, and so the memory, that reading frame 0 can
// cause: it counts every word read (re-reads of a field included) and one word per element of a
// list of zero-sized structs, which costs the sender nothing. Bounded by max_message_bytes alone,
// a 461-byte envelope could declare 32 million empty module plans and make Decode allocate
// gigabytes (found by fuzzing; tests/fuzz/corpus/wire_decode/crash-plan-list-amplification), so
// it is also bounded by the frame's own size, with room for the few re-reads decoding makes.
constexpr std::uint64_t kTraversalWordsPerFrameWord = 4;

capnp::ReaderOptions Options(const DecodeLimits& limits, std::size_t frame_words) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords =
      std::max<std::uint64_t>(std::min<std::uint64_t>(limits.max_message_bytes / 8,
                                                      kTraversalWordsPerFrameWord * frame_words),
                              64);
  options.nestingLimit = 16;
  return options;
}

// The head of a chunked message: the body with its tensor refs, no tensor frames.
Result<Envelope> DecodeHead(proto::Envelope::Reader env,
                            std::span<const std::span<const std::byte>> frames, Envelope out,
                            TensorSink* sink) {
  const proto::ChunkedHead::Reader r = env.getChunked();
  ChunkedHead head{r.getTotalBytes(), r.getChunkBytes(), r.getChunkCount(), {}};
  if (frames.size() != 1) {
    return DecodeError(ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
                       StrCat("the head of a chunked message has ", frames.size() - 1,
                              " tensor frame(s); its tensors travel in chunks"));
  }
  const proto::Envelope::Which kind = env.which();
  if (kind != proto::Envelope::ROUND_TASK && kind != proto::Envelope::UPDATE &&
      kind != proto::Envelope::EVAL_TASK) {
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       "only a round task, an update or an evaluation task may be chunked");
  }
  std::map<std::uint32_t, TensorRef> refs;
  sink->head_refs = &refs;
  FEDLORA_ASSIGN_OR_RETURN(out.body, DecodeBody(env, *sink));
  if (refs.size() >= sink->limits->max_frames) {  // As many tensors as a whole message may hold.
    return DecodeError(ErrorCode::kMessageTooLarge, StatusCode::kResourceExhausted,
                       StrCat("chunked head lists ", refs.size(), " tensors; the limit is ",
                              sink->limits->max_frames - 1));
  }
  std::uint64_t total = 0;
  std::uint32_t expected_index = 1;
  for (auto& [index, ref] : refs) {
    if (index != expected_index++) {
      return DecodeError(ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
                         StrCat("chunked head: tensor '", ref.name, "' has position ", index,
                                "; positions must be 1..", refs.size()));
    }
    total += ref.byte_length;
    if (total < ref.byte_length) {
      return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                         "chunked head: the tensors' sizes overflow");
    }
    head.tensors.push_back(std::move(ref));
  }
  if (head.total_bytes != total || total == 0 || head.chunk_bytes == 0 ||
      head.chunk_count != (total + head.chunk_bytes - 1) / head.chunk_bytes) {
    return DecodeError(
        ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
        StrCat("chunked head: ", head.total_bytes, " bytes in ", head.chunk_count, " chunk(s) of ",
               head.chunk_bytes, " bytes, but its tensors hold ", total, " bytes"));
  }
  out.chunked = std::move(head);
  return out;
}

}  // namespace

Result<Envelope> Decode(std::span<const std::span<const std::byte>> frames,
                        const DecodeLimits& limits) {
  if (frames.empty()) {
    return DecodeError(ErrorCode::kMalformedEnvelope, StatusCode::kDataLoss, "empty message");
  }
  if (frames.size() > limits.max_frames) {
    return DecodeError(
        ErrorCode::kMessageTooLarge, StatusCode::kResourceExhausted,
        StrCat("message has ", frames.size(), " frames; the limit is ", limits.max_frames));
  }
  std::size_t total = 0;
  for (const auto& f : frames) total += f.size();
  if (total > limits.max_message_bytes) {
    return DecodeError(ErrorCode::kMessageTooLarge, StatusCode::kResourceExhausted,
                       StrCat("message of ", total,
                              " bytes exceeds max_message_bytes = ", limits.max_message_bytes));
  }
  FEDLORA_ASSIGN_OR_RETURN(std::vector<capnp::word> words, AlignedWords(frames[0]));
  try {
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(words.data(), words.size()),
                                         Options(limits, words.size()));
    if (reader.getEnd() != words.data() + words.size()) {
      return DecodeError(ErrorCode::kMalformedEnvelope, StatusCode::kDataLoss,
                         "envelope frame has trailing bytes after the message");
    }
    proto::Envelope::Reader env = reader.getRoot<proto::Envelope>();
    Envelope out;
    out.protocol_version = env.getProtocolVersion();
    out.session_id = env.getSessionId();
    out.sequence = env.getSequence();
    if (out.protocol_version != kProtocolVersion) {
      return DecodeError(ErrorCode::kVersionMismatch, StatusCode::kFailedPrecondition,
                         StrCat("protocol version ", out.protocol_version, "; this build speaks ",
                                kProtocolVersion));
    }
    std::set<std::uint32_t> claimed;
    TensorSink sink{frames, &claimed, nullptr, &limits};
    if (env.hasChunked()) return DecodeHead(env, frames, std::move(out), &sink);
    FEDLORA_ASSIGN_OR_RETURN(out.body, DecodeBody(env, sink));
    if (claimed.size() != frames.size() - 1) {
      return DecodeError(ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
                         StrCat(BodyName(out.body), " message has ", frames.size() - 1,
                                " tensor frame(s) but ", claimed.size(), " tensor ref(s)"));
    }
    return out;
  } catch (const kj::Exception& e) {
    // Malformed bytes from a peer are bad input, not a bug in this process.
    return DecodeError(ErrorCode::kMalformedEnvelope, StatusCode::kDataLoss,
                       StrCat("undecodable envelope: ", e.getDescription().cStr()));
  }
}

ErrorCode DecodeErrorCode(const Status& status) {
  const std::uint32_t d = status.detail();
  if (d == 0 || d > static_cast<std::uint32_t>(kLastErrorCode)) return ErrorCode::kInternal;
  return static_cast<ErrorCode>(d);
}

std::optional<EnvelopeHeader> PeekHeader(std::span<const std::byte> frame0,
                                         const DecodeLimits& limits) {
  Result<std::vector<capnp::word>> words = AlignedWords(frame0);
  if (!words.ok()) return std::nullopt;
  try {
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(words->data(), words->size()),
                                         Options(limits, words->size()));
    proto::Envelope::Reader env = reader.getRoot<proto::Envelope>();
    return EnvelopeHeader{env.getProtocolVersion(), env.getSessionId(), env.getSequence(),
                          env.which() == proto::Envelope::HELLO};
  } catch (const kj::Exception&) {
    return std::nullopt;
  }
}

}  // namespace fedlora::wire
