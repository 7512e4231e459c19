#include "common/wire/codec.h"

#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <string>

#include "common/crypto/sha256.h"
#include "proto/fedlora.capnp.h"

namespace fedlora::wire {
namespace {

// ---- helpers -------------------------------------------------------------------------------

Status DecodeError(ErrorCode code, StatusCode status_code, std::string message) {
  return Status(status_code, std::move(message), static_cast<std::uint32_t>(code));
}

kj::StringPtr Text(const std::string& s) { return kj::StringPtr(s.c_str(), s.size()); }
std::string Str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

proto::DType ToProto(DType d) {
  switch (d) {
    case DType::kF32: return proto::DType::F32;
    case DType::kBF16: return proto::DType::BF16;
    case DType::kF16: return proto::DType::F16;
    case DType::kF64: return proto::DType::F64;
  }
  return proto::DType::UNSPECIFIED;
}

std::optional<DType> FromProto(proto::DType d) {
  switch (d) {
    case proto::DType::F32: return DType::kF32;
    case proto::DType::BF16: return DType::kBF16;
    case proto::DType::F16: return DType::kF16;
    case proto::DType::F64: return DType::kF64;
    default: return std::nullopt;  // unspecified, or a value from a newer schema.
  }
}

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
      ref.setSha256(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(digest.data()), digest.size()));
    }
    frames->push_back(std::span<const std::byte>(t.data));
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

struct BodyEncoder {
  proto::Envelope::Builder env;
  std::vector<std::span<const std::byte>>* frames;
  bool digests = true;
  std::uint32_t next_frame = 1;

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
    EncodeTensors(m.tensors, b.initTensors(static_cast<unsigned>(m.tensors.size())), &next_frame,
                  frames, digests);
  }
  void operator()(const Update& m) {
    auto b = env.initUpdate();
    b.setRound(m.round);
    b.setNumSamples(m.num_samples);
    b.setNumExamples(m.num_examples);
    b.setBaseVersion(m.base_version);
    EncodeTicket(m.ticket, b.initTicket());
    EncodeMetrics(m.metrics, b.initMetrics(static_cast<unsigned>(m.metrics.size())));
    EncodeTensors(m.tensors, b.initTensors(static_cast<unsigned>(m.tensors.size())), &next_frame,
                  frames, digests);
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
    EncodeTensors(m.tensors, b.initTensors(static_cast<unsigned>(m.tensors.size())), &next_frame,
                  frames, digests);
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
};

std::vector<std::byte> Flatten(capnp::MessageBuilder& builder) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  kj::ArrayPtr<const kj::byte> bytes = words.asBytes();
  std::vector<std::byte> out(bytes.size());
  std::memcpy(out.data(), bytes.begin(), bytes.size());
  return out;
}

// ---- decoding ------------------------------------------------------------------------------

// Decodes tensor refs against the frames; `claimed` collects frame indices already used.
Status DecodeTensors(capnp::List<proto::TensorRef>::Reader refs,
                     std::span<const std::span<const std::byte>> frames,
                     std::set<std::uint32_t>* claimed, TensorMap* out,
                     const DecodeLimits& limits) {
  for (proto::TensorRef::Reader ref : refs) {
    std::string name = Str(ref.getName());
    if (name.empty()) {
      return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                         "tensor ref with an empty name");
    }
    if (out->contains(name)) {
      return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                         StrCat("tensor '", name, "' appears twice"));
    }
    const std::optional<DType> dtype = FromProto(ref.getDtype());
    if (!dtype) {
      return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                         StrCat("tensor '", name, "': unknown dtype value ",
                                static_cast<unsigned>(ref.getDtype())));
    }
    std::vector<std::int64_t> shape;
    for (std::int64_t d : ref.getShape()) shape.push_back(d);
    Result<std::int64_t> numel = NumElements(shape);
    if (!numel.ok()) {
      return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                         StrCat("tensor '", name, "': ", numel.status().message()));
    }
    const std::uint32_t index = ref.getFrame();
    if (index == 0 || index >= frames.size()) {
      return DecodeError(ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
                         StrCat("tensor '", name, "' refers to frame ", index, " but the message has ",
                                frames.size(), " frames"));
    }
    if (!claimed->insert(index).second) {
      return DecodeError(ErrorCode::kFrameCountMismatch, StatusCode::kDataLoss,
                         StrCat("tensor '", name, "' refers to frame ", index,
                                ", which another tensor already uses"));
    }
    const std::span<const std::byte> frame = frames[index];
    const std::uint64_t expected =
        static_cast<std::uint64_t>(*numel) * static_cast<std::uint64_t>(ByteWidth(*dtype));
    if (ref.getByteLength() != frame.size() || expected != frame.size()) {
      return DecodeError(ErrorCode::kTensorFrameMismatch, StatusCode::kDataLoss,
                         StrCat("tensor '", name, "': frame ", index, " holds ", frame.size(),
                                " bytes, ref says ", ref.getByteLength(), ", ", DTypeName(*dtype),
                                " ", ShapeString(shape), " needs ", expected));
    }
    capnp::Data::Reader digest = ref.getSha256();
    if (digest.size() == 0 && !limits.require_digests) {
      // The transport authenticated every byte (CURVE's Poly1305): a digest would add nothing.
    } else if (const crypto::Digest actual = crypto::Sha256(frame);
               digest.size() != actual.size() ||
               std::memcmp(digest.begin(), actual.data(), actual.size()) != 0) {
      return DecodeError(ErrorCode::kDigestMismatch, StatusCode::kDataLoss,
                         StrCat("tensor '", name, "': SHA-256 of frame ", index,
                                " does not match its ref (corrupted in transit?)"));
    }
    Tensor t{*dtype, std::move(shape), std::vector<std::byte>(frame.begin(), frame.end())};
    out->emplace(std::move(name), std::move(t));
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
    return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                       StrCat("ticket nonce has ", nonce.size(), " bytes (expected ",
                              t.nonce.size(), ")"));
  }
  std::copy(nonce.begin(), nonce.end(), t.nonce.begin());
  return t;
}

Result<BaseUpdate> DecodeBase(proto::BaseUpdate::Reader r, const TensorMap& tensors) {
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
      if (!name->empty() && !tensors.contains(*name)) {
        return DecodeError(ErrorCode::kInvalidField, StatusCode::kInvalidArgument,
                           StrCat("correction for '", c.module, "' names tensor '", *name,
                                  "', which the message does not carry"));
      }
    }
    u.entries.push_back(std::move(c));
  }
  return u;
}

Result<Body> DecodeBody(proto::Envelope::Reader env,
                        std::span<const std::span<const std::byte>> frames,
                        std::set<std::uint32_t>* claimed, const DecodeLimits& limits) {
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
      FEDLORA_RETURN_IF_ERROR(DecodeTensors(r.getTensors(), frames, claimed, &m.tensors, limits));
      FEDLORA_ASSIGN_OR_RETURN(m.base, DecodeBase(r.getBase(), m.tensors));
      FEDLORA_ASSIGN_OR_RETURN(m.ticket, DecodeTicket(r.getTicket()));
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
      FEDLORA_RETURN_IF_ERROR(DecodeTensors(r.getTensors(), frames, claimed, &m.tensors, limits));
      return Body(std::move(m));
    }
    case proto::Envelope::ACK: {
      auto r = env.getAck();
      return Body(Ack{r.getRound(), r.getAckedSequence()});
    }
    case proto::Envelope::HEARTBEAT: return Body(Heartbeat{});
    case proto::Envelope::EVAL_TASK: {
      auto r = env.getEvalTask();
      EvalTask m;
      m.round = r.getRound();
      m.deadline_ms = r.getDeadlineMs();
      m.max_batches = r.getMaxBatches();
      m.lora = DecodeLora(r.getLora());
      FEDLORA_ASSIGN_OR_RETURN(m.train, DecodeTrain(r.getTrain()));
      FEDLORA_ASSIGN_OR_RETURN(m.plan, DecodePlan(r.getPlan()));
      FEDLORA_RETURN_IF_ERROR(DecodeTensors(r.getTensors(), frames, claimed, &m.tensors, limits));
      FEDLORA_ASSIGN_OR_RETURN(m.base, DecodeBase(r.getBase(), m.tensors));
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
    case proto::Envelope::BYE: return Body(Bye{Str(env.getBye().getReason())});
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

}  // namespace

std::size_t EncodedMessage::total_bytes() const {
  std::size_t total = envelope.size();
  for (const auto& f : tensor_frames) total += f.size();
  return total;
}

std::vector<std::span<const std::byte>> EncodedMessage::frames() const {
  std::vector<std::span<const std::byte>> out;
  out.reserve(1 + tensor_frames.size());
  out.emplace_back(envelope);
  out.insert(out.end(), tensor_frames.begin(), tensor_frames.end());
  return out;
}

EncodedMessage Encode(const Envelope& envelope, const EncodeOptions& options) {
  EncodedMessage out;
  capnp::MallocMessageBuilder builder;
  proto::Envelope::Builder env = builder.initRoot<proto::Envelope>();
  env.setProtocolVersion(envelope.protocol_version);
  env.setSessionId(envelope.session_id);
  env.setSequence(envelope.sequence);
  std::visit(BodyEncoder{env, &out.tensor_frames, options.tensor_digests}, envelope.body);
  out.envelope = Flatten(builder);
  return out;
}

Result<Envelope> Decode(std::span<const std::span<const std::byte>> frames,
                        const DecodeLimits& limits) {
  if (frames.empty()) {
    return DecodeError(ErrorCode::kMalformedEnvelope, StatusCode::kDataLoss, "empty message");
  }
  if (frames.size() > limits.max_frames) {
    return DecodeError(ErrorCode::kMessageTooLarge, StatusCode::kResourceExhausted,
                       StrCat("message has ", frames.size(), " frames; the limit is ",
                              limits.max_frames));
  }
  std::size_t total = 0;
  for (const auto& f : frames) total += f.size();
  if (total > limits.max_message_bytes) {
    return DecodeError(ErrorCode::kMessageTooLarge, StatusCode::kResourceExhausted,
                       StrCat("message of ", total, " bytes exceeds max_message_bytes = ",
                              limits.max_message_bytes));
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
    FEDLORA_ASSIGN_OR_RETURN(out.body, DecodeBody(env, frames, &claimed, limits));
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
