#include "server/coordinator.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/crypto/random.h"
#include "common/log.h"
#include "server/coordinator_impl.h"
#include "common/lora/adapter_layout.h"
#include "server/rank_policy.h"
#include "server/robust/update_norm.h"

namespace fedlora::server {
namespace {

using std::chrono::milliseconds;
using wire::ErrorCode;

constexpr std::size_t kMaxMessagesPerTick = 256;
constexpr milliseconds kMaxPollWait{1000};
constexpr int kByeLingerMs = 2000;

constexpr std::size_t kMaxModules = 65536;
constexpr std::int64_t kMaxDim = std::int64_t{1} << 24;
constexpr std::size_t kMaxMetrics = 64;

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

// Strings a peer sends end up in JSON and file names: accept a boring alphabet only.
bool ValidModuleName(std::string_view name) {
  return !name.empty() && name.size() <= 256 && std::all_of(name.begin(), name.end(), NameChar);
}
bool ValidMetricName(std::string_view name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), NameChar);
}
bool IsLowerHexDigest(std::string_view d) {
  return d.size() == 64 && std::all_of(d.begin(), d.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// `name` with anything outside printable ASCII escaped, for log lines and error messages.
std::string PrintableName(std::string_view name) {
  std::string out;
  for (unsigned char c : name.substr(0, 128)) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      out += StrCat("\\x", "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]);
    }
  }
  return out;
}

std::string PrintableRoute(std::string_view route) {
  std::string out = "peer#";
  for (unsigned char c : route) {
    static constexpr char kHex[] = "0123456789abcdef";
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

}  // namespace

Status ValidateUpload(const wire::Update& update, const ClientTask& task,
                      std::uint64_t max_examples) {
  const auto fail = [](ErrorCode code, auto&&... args) {
    return Status(StatusCode::kInvalidArgument, StrCat(args...), static_cast<std::uint32_t>(code));
  };
  for (const auto& [name, expected] : task.expected_upload) {
    const auto it = update.tensors.find(name);
    if (it == update.tensors.end()) {
      return fail(ErrorCode::kTensorShapeMismatch, "missing tensor '", name, "'");
    }
    const TensorSpec& spec = expected.spec;
    if (it->second.dtype != spec.dtype) {
      return fail(ErrorCode::kTensorDtypeMismatch, "tensor '", name, "' is ",
                  DTypeName(it->second.dtype), ", expected ", DTypeName(spec.dtype));
    }
    const std::vector<std::int64_t>& shape = it->second.shape;
    bool fits = shape.size() == spec.shape.size();
    for (std::size_t d = 0; fits && d < shape.size(); ++d) {
      fits = static_cast<int>(d) == expected.shrinkable_dim
                 ? shape[d] >= 1 && shape[d] <= spec.shape[d]
                 : shape[d] == spec.shape[d];
    }
    if (!fits) {
      return fail(ErrorCode::kTensorShapeMismatch, "tensor '", name, "' has shape ",
                  ShapeString(shape), ", expected ", ShapeString(spec.shape),
                  expected.shrinkable_dim >= 0 ? " (or smaller along the rank)" : "");
    }
    if (!AllFinite(it->second)) {
      return fail(ErrorCode::kNonFiniteTensor, "tensor '", name, "' contains NaN or infinity");
    }
  }
  for (const auto& [name, t] : update.tensors) {
    if (!task.expected_upload.contains(name)) {
      return fail(ErrorCode::kTensorShapeMismatch, "unexpected tensor '", name, "'");
    }
  }
  if (update.num_samples == 0 || update.num_examples == 0) {
    return fail(ErrorCode::kInvalidField, "num_samples and num_examples must be > 0");
  }
  // Examples processed this round (the `samples` weighting) cannot exceed what the task asked
  // for: its steps x batch, or its epochs over the examples held (in whole batches), or the
  // examples an initialisation task asked to read.
  const wire::TrainSpec& t = task.train;
  const std::uint64_t held = std::min(update.num_examples, max_examples);
  const std::uint64_t batch = std::max<std::uint64_t>(t.batch_size, 1);
  std::uint64_t limit = t.local_epochs > 0
                            ? std::uint64_t{t.local_epochs} * ((held + batch - 1) / batch) * batch
                            : std::uint64_t{t.local_steps} * batch;
  limit = std::max<std::uint64_t>(limit, task.plan.init_samples);
  if (update.num_samples > limit) {
    return fail(ErrorCode::kInvalidField, "num_samples ", update.num_samples,
                " exceeds what the task could process (", limit, ")");
  }
  if (update.metrics.size() > kMaxMetrics) {
    return fail(ErrorCode::kInvalidField, update.metrics.size(), " metrics (at most ",
                kMaxMetrics, ")");
  }
  for (const auto& [name, v] : update.metrics) {
    if (!ValidMetricName(name)) {
      return fail(ErrorCode::kInvalidField, "metric name '", PrintableName(name),
                  "' is not 1-64 characters of [A-Za-z0-9._-]");
    }
    if (!std::isfinite(v)) return fail(ErrorCode::kInvalidField, "metric '", name, "' is not finite");
  }
  return OkStatus();
}


// ---- start-up ------------------------------------------------------------------------------

Status Coordinator::Impl::Start() {
  // Security first: a configuration that would expose the federation fails before anything else.
  FEDLORA_ASSIGN_OR_RETURN(security_,
                           TransportSecurity::Create(config_.security, config_.transport.bind));
  FEDLORA_ASSIGN_OR_RETURN(CheckpointStore store, CheckpointStore::Open(config_.state_dir));
  store_.emplace(std::move(store));
  FEDLORA_ASSIGN_OR_RETURN(std::optional<Checkpoint> latest, store_->LoadLatest());
  if (latest) {
    const auto where = StrCat("state directory '", config_.state_dir, "' (round ", latest->round,
                              ")");
    if (latest->strategy != strategy_->name()) {
      return FailedPrecondition(where, " was written by strategy '", latest->strategy,
                                "', but this coordinator runs '", strategy_->name(),
                                "' (use another state_dir)");
    }
    if (!config_.base_model_sha256.empty() &&
        config_.base_model_sha256 != latest->layout.base_model_sha256) {
      return FailedPrecondition(where, " belongs to base model ", latest->layout.base_model_sha256,
                                ", but base_model_sha256 is ", config_.base_model_sha256);
    }
    const wire::LoraSpec& l = latest->lora;
    if (l.rank != config_.lora.rank || l.targets != config_.lora.targets ||
        l.alpha != config_.lora.alpha || l.rslora != config_.lora.rslora) {
      return FailedPrecondition(where, " holds a LoRA adapter of rank ", l.rank, ", alpha ",
                                l.alpha, " on ", l.targets.size(),
                                " target(s), which differs from the configured lora section");
    }
    FEDLORA_RETURN_IF_ERROR(store_->DropPendingThrough(latest->round));
    layout_ = latest->layout;
    Result<GlobalState> restored = strategy_->Initialize(*layout_, latest->state);
    if (!restored.ok()) return restored.status().WithContext(where);
    state_ = std::move(restored).value();
    committed_ = latest->round;
    Count([&](CoordinatorCounters& c) {
      c.committed_round = latest->round;
      c.has_committed = true;
    });
    // A crash between the checkpoint and the metrics append leaves the record only in the
    // checkpoint; restore it so metrics.jsonl has exactly one line per committed round.
    if (!latest->metrics_json.empty()) {
      FEDLORA_RETURN_IF_ERROR(store_->AppendMetrics(latest->round, latest->metrics_json));
    }
    LogInfo("resuming from checkpoint of round ", latest->round, " in ", config_.state_dir,
            "; next round is ", latest->round + 1);
  }

  net::SocketOptions options;
  options.max_frame_bytes = static_cast<std::int64_t>(config_.transport.max_message_bytes);
  // A well-behaved client has a handful of messages in flight; a small per-peer queue bounds
  // what a flooding peer can make ZeroMQ buffer for us.
  options.receive_hwm = 64;
  // CURVE: the ZAP handler must serve before the socket binds, or the first peers go unchecked.
  FEDLORA_RETURN_IF_ERROR(security_->Attach(context_, &options));
  // CURVE authenticates every byte of every frame (Poly1305): per-frame SHA-256 adds nothing.
  limits_.require_digests = !security_->curve();
  encode_.tensor_digests = !security_->curve();
  FEDLORA_ASSIGN_OR_RETURN(router_, net::Socket::Open(context_, net::SocketKind::kRouter, options));
  FEDLORA_RETURN_IF_ERROR(router_.Bind(config_.transport.bind));
  FEDLORA_ASSIGN_OR_RETURN(endpoint_, router_.LastEndpoint());
  security_->LogStartup();
  last_key_check_ = clock_.Now();
  caught_up_ = last_key_check_;
  LogInfo("coordinator listening on ", endpoint_, " (strategy ", strategy_->name(), ", ",
          config_.rounds, " rounds, state in ", config_.state_dir, ")");
  const RobustConfig& robust = config_.robust;
  const StrategyConfig& sc = config_.strategy;
  LogInfo("bounded influence: ",
          robust.norm_bound > 0
              ? StrCat("uploads moving the model by more than ", robust.norm_bound, " (L2) are ",
                       robust.norm_action == "reject" ? "refused" : "clipped")
              : std::string("NO norm bound (robust.norm_bound: 0)"),
          "; aggregation rule ", sc.rule.name, "; example counts capped at ",
          sc.max_examples_per_client,
          sc.max_weight_share < 1 ? StrCat("; weight share capped at ", sc.max_weight_share)
                                  : std::string());
  if (robust.norm_bound <= 0) {
    LogWarn("robust.norm_bound is 0: one client's upload can move the global model arbitrarily far");
  }
  return OkStatus();
}

// ---- the loop ------------------------------------------------------------------------------

Status Coordinator::Impl::Run() {
  FEDLORA_CHECK_MSG(router_.valid(), "Run() before a successful Start()");
  while (true) {
    if (stop_.load(std::memory_order_acquire)) {
      for (auto& [id, client] : clients_.all()) {
        Send(client, wire::Error{ErrorCode::kShuttingDown,
                                 "coordinator is shutting down; reconnect later", 0});
      }
      router_.SetLinger(kByeLingerMs);
      LogInfo("stopped on request; state is saved, a restart resumes at round ",
              committed_ ? *committed_ + 1 : 0);
      return Status(StatusCode::kCancelled, "stopped on request");
    }
    if (!fatal_.ok()) return fatal_;
    if (phase_ == Phase::kDone &&
        (clients_.size() == 0 || std::chrono::steady_clock::now() >= farewell_until_)) {
      router_.SetLinger(kByeLingerMs);
      return OkStatus();
    }

    net::PollItem items[2];
    items[0].socket = &router_;
    items[1].fd = wake_.read_fd();
    FEDLORA_RETURN_IF_ERROR(net::Poll(items, NextWait()));
    if (items[1].readable) wake_.Drain();
    for (std::size_t i = 0; i < kMaxMessagesPerTick; ++i) {
      Result<std::optional<net::Message>> message = router_.Receive(milliseconds(0));
      if (!message.ok()) return message.status();
      if (!message->has_value()) {
        caught_up_ = clock_.Now();  // Every queued message read (SilenceCutoff).
        break;
      }
      try {
        HandleMessage(**message);
      } catch (const std::exception& e) {
        // A backstop: every library call on peer data is wrapped at its door, so reaching this
        // is a bug; drop the one message rather than the whole federation.
        Count([](CoordinatorCounters& c) { ++c.protocol_errors; });
        LogError("internal error handling a message (dropped): ", e.what());
      }
    }
    try {
      OnTick();
      // One step can enable the next (a commit allows the next round to start): step until the
      // state settles rather than waiting for the next wake-up.
      for (int i = 0; i < 8; ++i) {
        const auto before =
            std::make_tuple(phase_, run_.round, committed_, run_.attempt, run_.awaiting_retry);
        Advance();
        if (before ==
            std::make_tuple(phase_, run_.round, committed_, run_.attempt, run_.awaiting_retry)) {
          break;
        }
      }
    } catch (const std::exception& e) {
      Fatal(Internal("round engine: ", e.what()));
    }
  }
}

milliseconds Coordinator::Impl::NextWait() const {
  const Clock::TimePoint now = clock_.Now();
  Clock::TimePoint next = now + kMaxPollWait;
  const milliseconds interval(config_.transport.heartbeat_interval_ms);
  for (const auto& [id, c] : clients_.all()) {
    next = std::min(next, c.last_sent + interval);
    next = std::min(next, c.last_heard + interval * config_.transport.heartbeat_liveness);
  }
  if (phase_ == Phase::kFit) {
    // A retry that is due but waits for clients is woken by their messages, not by a timer.
    if (!run_.awaiting_retry) next = std::min(next, run_.deadline);
    if (run_.awaiting_retry && run_.retry_not_before > now) next = std::min(next, run_.retry_not_before);
  }
  if (phase_ == Phase::kInit) next = std::min(next, run_.deadline);
  if (phase_ == Phase::kEval) next = std::min(next, run_.eval_deadline);
  milliseconds wait(MillisUntil(now, next));
  if (phase_ == Phase::kDone) {  // The farewell is timed in wall time (see Finish).
    wait = std::min(wait, std::chrono::duration_cast<milliseconds>(
                              farewell_until_ - std::chrono::steady_clock::now()) +
                              milliseconds(1));
  }
  return std::max(wait, milliseconds(0));
}

void Coordinator::Impl::OnTick() {
  ReloadKeys();
  const Clock::TimePoint now = clock_.Now();
  const milliseconds interval(config_.transport.heartbeat_interval_ms);
  const std::vector<std::string> expired = clients_.ExpireSilentSince(
      SilenceCutoff(now, caught_up_, interval * config_.transport.heartbeat_liveness));
  for (const std::string& id : expired) {
    Count([](CoordinatorCounters& c) { ++c.clients_expired; });
    OnClientGone(id, "silent for longer than heartbeat_interval_ms x heartbeat_liveness");
  }
  for (auto& [id, client] : clients_.all()) {
    if (now - client.last_sent >= interval) Send(client, wire::Heartbeat{});
  }
}

void Coordinator::Impl::OnClientGone(const std::string& id, std::string_view why) {
  LogWarn("client ", id, " is gone: ", why);
  if (run_.outstanding.erase(id) > 0) run_.failed.insert(id);
  run_.eval_outstanding.erase(id);
  // Until round 0 is committed the model layout is only what the first client claimed: when
  // every client has left, forget it, so one bogus (but well-formed) Hello cannot lock the
  // federation out.
  if (!committed_ && clients_.size() == 0 && layout_ && config_.base_model_sha256.empty()) {
    LogInfo("no clients left before round 0: unpinning the base model");
    layout_.reset();
    state_.reset();
    run_ = RoundRun{};
    phase_ = Phase::kWaiting;
  }
}

// ---- messaging -----------------------------------------------------------------------------

std::size_t Coordinator::Impl::Send(ClientConnection& client, wire::Body body) {
  wire::Envelope envelope{wire::kProtocolVersion, client.session_id, client.next_sequence_out++,
                          std::move(body)};
  const wire::EncodedMessage encoded = wire::Encode(envelope, encode_);
  const std::vector<std::span<const std::byte>> frames = encoded.frames();
  const Status s = router_.Send(frames, std::as_bytes(std::span<const char>(client.route)));
  client.last_sent = clock_.Now();
  if (!s.ok()) {
    LogDebug("send ", wire::BodyName(envelope.body), " to ", client.id, " failed: ", s.message());
    return 0;
  }
  return encoded.total_bytes();
}

void Coordinator::Impl::SendError(const std::string& route, std::uint64_t ref_sequence,
                                  ErrorCode code, const std::string& message) {
  if (ClientConnection* client = clients_.FindByRoute(route)) {
    Send(*client, wire::Error{code, message, ref_sequence});
    return;
  }
  SendAnonymous(route, wire::Error{code, message, ref_sequence});
}

void Coordinator::Impl::SendAnonymous(const std::string& route, wire::Body body) {
  const wire::Envelope envelope{wire::kProtocolVersion, 0, ++anonymous_sequence_, std::move(body)};
  const wire::EncodedMessage encoded = wire::Encode(envelope, encode_);
  // A peer that already vanished cannot be told; nothing else to do.
  (void)router_.Send(encoded.frames(), std::as_bytes(std::span<const char>(route)));
}

void Coordinator::Impl::ProtocolError(const std::string& who, const std::string& route,
                                      std::uint64_t ref_sequence, ErrorCode code,
                                      const std::string& message) {
  Count([&](CoordinatorCounters& c) {
    ++c.protocol_errors;
    if (code == ErrorCode::kNotAuthorized) ++c.not_authorized;
    if (code == ErrorCode::kTaskMismatch) ++c.task_mismatches;
  });
  ++refusals_[std::string(wire::ErrorCodeName(code))];
  LogWarn(who, ": ", wire::ErrorCodeName(code), ": ", message);
  SendError(route, ref_sequence, code, message);
}

void Coordinator::Impl::HandleMessage(const net::Message& message) {
  Count([](CoordinatorCounters& c) { ++c.messages_in; });
  if (message.size() < 2) return;  // A ROUTER always prepends the route; nothing to answer.
  const std::span<const std::byte> route_bytes = message.frame(0);
  const std::string route(reinterpret_cast<const char*>(route_bytes.data()), route_bytes.size());
  const std::vector<std::span<const std::byte>> frames = message.frames(1);
  const std::size_t bytes = message.total_bytes() - route_bytes.size();
  ClientConnection* client = clients_.FindByRoute(route);
  const std::string who = client != nullptr ? StrCat("client ", client->id) : PrintableRoute(route);
  // CURVE: the ZAP handler stamped the connection with its key; check it before decoding.
  const std::string user_id = security_->curve() ? message.UserId() : std::string();
  if (security_->curve()) {
    const std::optional<wire::EnvelopeHeader> header = wire::PeekHeader(frames[0], limits_);
    if (!CheckSender(route, user_id, client, header ? header->sequence : 0)) return;
  }

  if (phase_ == Phase::kDone) {  // The run is complete: whoever still talks gets Bye (again).
    const wire::Bye bye{StrCat("training complete after ", config_.rounds, " rounds")};
    const Result<wire::Envelope> decoded =
        client != nullptr ? wire::Decode(frames, limits_) : Result<wire::Envelope>(wire::Envelope{});
    if (client != nullptr && decoded.ok() && decoded->session_id == client->session_id &&
        std::holds_alternative<wire::Bye>(decoded->body)) {
      clients_.Remove(client->id);  // It got our Bye and said goodbye.
    } else if (client != nullptr) {
      Send(*client, bye);
    } else {
      SendAnonymous(route, bye);
    }
    return;
  }

  if (client == nullptr) {
    // Strangers may only say Hello: refuse anything else before hashing its tensor frames.
    const std::optional<wire::EnvelopeHeader> header = wire::PeekHeader(frames[0], limits_);
    if (header && header->protocol_version == wire::kProtocolVersion && !header->is_hello) {
      if (header->session_id != 0) {
        // A session this coordinator ended (dropped as silent, revoked, or lost in a restart):
        // SESSION_MISMATCH makes the client say Hello again at once instead of after
        // interval x liveness of silence.
        ProtocolError(who, route, header->sequence, ErrorCode::kSessionMismatch,
                      StrCat("session ", header->session_id,
                             " has ended on this coordinator: say Hello again"));
      } else {
        ProtocolError(who, route, header->sequence, ErrorCode::kUnexpectedMessage,
                      "a message before Hello (send Hello first)");
      }
      return;
    }
  }
  Result<wire::Envelope> decoded = wire::Decode(frames, limits_);
  if (!decoded.ok()) {
    const std::optional<wire::EnvelopeHeader> header = wire::PeekHeader(frames[0], limits_);
    ProtocolError(who, route, header ? header->sequence : 0,
                  wire::DecodeErrorCode(decoded.status()), decoded.status().message());
    return;
  }
  wire::Envelope& envelope = *decoded;
  if (std::holds_alternative<wire::Hello>(envelope.body)) {
    HandleHello(route, user_id, envelope);
    return;
  }
  if (client == nullptr) {
    ProtocolError(who, route, envelope.sequence, ErrorCode::kUnexpectedMessage,
                  StrCat(wire::BodyName(envelope.body), " before Hello (send Hello first)"));
    return;
  }
  if (envelope.session_id != client->session_id) {
    ProtocolError(who, route, envelope.sequence, ErrorCode::kSessionMismatch,
                  StrCat("session id ", envelope.session_id, " is not this connection's"));
    return;
  }
  if (envelope.sequence <= client->last_sequence_in) {
    ProtocolError(who, route, envelope.sequence, ErrorCode::kSequenceReplay,
                  StrCat("sequence ", envelope.sequence, " after ", client->last_sequence_in));
    return;
  }
  client->last_sequence_in = envelope.sequence;
  client->last_heard = clock_.Now();

  if (std::holds_alternative<wire::Heartbeat>(envelope.body)) return;
  if (auto* update = std::get_if<wire::Update>(&envelope.body)) {
    HandleUpdate(*client, envelope.sequence, std::move(*update), bytes);
  } else if (auto* result = std::get_if<wire::EvalResult>(&envelope.body)) {
    HandleEvalResult(*client, envelope.sequence, std::move(*result), bytes);
  } else if (const auto* error = std::get_if<wire::Error>(&envelope.body)) {
    if (error->code == ErrorCode::kTaskDeclined) {  // Routine in a fleet: offline or too slow.
      LogDebug(who, " declines its task: ", error->message);
    } else {
      LogWarn(who, " reports ", wire::ErrorCodeName(error->code), ": ", error->message);
    }
    // The client's base is not what we believed: the next task rebuilds it from scratch.
    if (error->code == ErrorCode::kBaseVersionMismatch) client->base_version = kUnknownVersion;
    // The error names the task it refuses by that message's sequence number.
    const std::uint64_t ref = error->ref_sequence;
    if (ref != 0 && run_.task_sequence.contains(client->id) &&
        run_.task_sequence.at(client->id) == ref && run_.outstanding.erase(client->id) > 0) {
      run_.failed.insert(client->id);
      if (phase_ == Phase::kInit) init_failed_.insert(client->id);
    }
    if (ref != 0 && run_.eval_sequence.contains(client->id) &&
        run_.eval_sequence.at(client->id) == ref) {
      run_.eval_outstanding.erase(client->id);
    }
  } else if (const auto* bye = std::get_if<wire::Bye>(&envelope.body)) {
    const std::string id = client->id;
    clients_.Remove(id);
    OnClientGone(id, StrCat("said bye (", bye->reason, ")"));
  } else {
    ProtocolError(who, route, envelope.sequence, ErrorCode::kUnexpectedMessage,
                  StrCat("a client may not send ", wire::BodyName(envelope.body)));
  }
}

void Coordinator::Impl::HandleHello(const std::string& route, const std::string& user_id,
                                    const wire::Envelope& envelope) {
  const wire::Hello& hello = std::get<wire::Hello>(envelope.body);
  const std::string who = StrCat("hello from '", PrintableName(hello.client_name), "'");
  const auto reject = [&](ErrorCode code, const std::string& message) {
    ProtocolError(who, route, envelope.sequence, code, message);
  };
  if (!wire::ValidClientName(hello.client_name)) {
    reject(ErrorCode::kInvalidField,
           "client name must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'");
    return;
  }
  if (security_->curve() && !security_->Allows(user_id, hello.client_name)) {
    // The key is enrolled (CheckSender), but not under this name: nobody takes another's name.
    const std::vector<std::string> names = security_->NamesFor(user_id);
    std::string enrolled_as;
    for (std::size_t i = 0; i < names.size() && i < 3; ++i) {
      enrolled_as += StrCat(i > 0 ? ", " : "", "'", names[i], "'");
    }
    if (names.size() > 3) enrolled_as += StrCat(" and ", names.size() - 3, " more");
    reject(ErrorCode::kNotAuthorized,
           StrCat(TransportSecurity::Describe(user_id), " is enrolled as ", enrolled_as, ", not as '",
                  hello.client_name, "'"));
    return;
  }
  const std::string& expected_digest =
      !config_.base_model_sha256.empty() ? config_.base_model_sha256
      : layout_                          ? layout_->base_model_sha256
                                         : hello.base_model_sha256;
  if (hello.base_model_sha256 != expected_digest || expected_digest.empty()) {
    reject(ErrorCode::kBaseModelMismatch,
           StrCat("base model digest ", hello.base_model_sha256, " differs from the federation's ",
                  expected_digest, " (every client must load the same base weights)"));
    return;
  }
  if (!IsLowerHexDigest(hello.base_model_sha256)) {
    reject(ErrorCode::kInvalidField, "base model digest must be 64 lowercase hex digits");
    return;
  }
  if (hello.modules.empty() || hello.modules.size() > kMaxModules) {
    reject(ErrorCode::kInvalidField,
           StrCat("hello lists ", hello.modules.size(), " modules (1..", kMaxModules, " allowed)"));
    return;
  }
  std::set<std::string, std::less<>> names;
  for (const wire::ModuleInfo& m : hello.modules) {
    if (!ValidModuleName(m.name) || m.d_out <= 0 || m.d_in <= 0 || m.d_out > kMaxDim ||
        m.d_in > kMaxDim || !names.insert(m.name).second) {
      reject(ErrorCode::kInvalidField,
             StrCat("invalid or duplicate module '", PrintableName(m.name), "' [", m.d_out, " x ",
                    m.d_in, "] (names of [A-Za-z0-9._-], dimensions 1..", kMaxDim, ")"));
      return;
    }
  }
  // The federation's LoRA must fit this model before the model may define the federation.
  Result<std::vector<wire::ModuleInfo>> targets = lora::SelectTargets(hello.modules, config_.lora);
  if (!targets.ok()) {
    reject(ErrorCode::kBaseModelMismatch, targets.status().message());
    return;
  }
  std::uint64_t adapter_bytes = 0;
  for (const wire::ModuleInfo& m : *targets) {
    adapter_bytes += 4ull * config_.lora.rank * static_cast<std::uint64_t>(m.d_in + m.d_out);
  }
  if (adapter_bytes >= config_.transport.max_message_bytes) {
    reject(ErrorCode::kInvalidField,
           StrCat("a rank-", config_.lora.rank, " adapter of this model takes ", adapter_bytes,
                  " bytes, more than transport.max_message_bytes"));
    return;
  }
  if (layout_ && layout_->modules != hello.modules) {
    reject(ErrorCode::kBaseModelMismatch,
           "module layout differs from the federation's although the digest matches");
    return;
  }
  const Clock::TimePoint now = clock_.Now();
  const milliseconds interval(config_.transport.heartbeat_interval_ms);
  if (ClientConnection* existing = clients_.FindById(hello.client_name);
      existing != nullptr && existing->route != route) {
    if (security_->curve()) {
      // Only the holder of the name's key gets here: a reconnect, which replaces the old session.
      LogInfo("client ", hello.client_name, " reconnected with its enrolled key; its previous "
              "connection is closed");
    } else if (now - existing->last_heard < interval * config_.transport.heartbeat_liveness) {
      // Without keys a name proves nothing: the live session keeps it until it is dropped by the
      // liveness rule (the client it belongs to reconnects then, with backoff).
      reject(ErrorCode::kDuplicateClient,
             StrCat("client '", hello.client_name, "' has a live session; a new connection may "
                    "take the name once that session has been silent for ",
                    interval.count() * config_.transport.heartbeat_liveness, " ms"));
      return;
    }
  }
  Result<wire::AdapterPlan> plan = PlanForClient(config_.strategy.rank_policy, config_.lora,
                                                 hello.modules, hello.capabilities);
  if (!plan.ok()) {
    reject(ErrorCode::kInvalidField, plan.status().message());
    return;
  }
  if (!layout_) {
    const ModelLayout layout{hello.base_model_sha256, hello.modules};
    Result<GlobalState> initial = strategy_->Initialize(layout, std::nullopt);
    if (!initial.ok()) {
      reject(ErrorCode::kBaseModelMismatch, initial.status().message());
      return;
    }
    layout_ = layout;
    state_ = std::move(initial).value();
    state_->round = 0;
    LogInfo("initialised global state: ", state_->adapter.size(), " adapter tensors, ",
            PayloadBytes(state_->adapter), " bytes");
    LogInfo("federation base model pinned to ", hello.base_model_sha256, " (",
            hello.modules.size(), " adaptable modules) by client ", hello.client_name);
  }
  if (ClientConnection* other = clients_.FindByRoute(route);
      other != nullptr && other->id != hello.client_name) {
    const std::string old_id = other->id;  // Same socket, new name: the old identity is gone.
    clients_.Remove(old_id);
    OnClientGone(old_id, StrCat("reconnected as '", hello.client_name, "'"));
  }
  ClientConnection connection;
  connection.id = hello.client_name;
  connection.route = route;
  connection.key = user_id;
  connection.session_id = crypto::RandomU64();
  connection.last_sequence_in = envelope.sequence;
  connection.last_heard = now;
  connection.last_sent = now;
  connection.hello = hello;
  connection.plan = std::move(plan).value();
  connection.base_version = hello.base_version;
  ClientConnection& client = clients_.Admit(std::move(connection));
  Count([](CoordinatorCounters& c) { ++c.clients_admitted; });
  Send(client, wire::Welcome{client.id, config_.transport.heartbeat_interval_ms,
                             config_.transport.heartbeat_liveness,
                             committed_ ? *committed_ + 1 : 0, std::string(strategy_->name()),
                             client.plan});
  LogInfo("client ", client.id, " connected (", hello.capabilities.device, ", ",
          hello.capabilities.num_examples, " examples, rank ",
          TopRank(client.plan, config_.lora), ", depth ", Depth(client.plan, layout_->modules),
          "); ", clients_.size(), " live");

  // A client that reconnects while it owes us work gets its task again; a client that kept
  // training across the reconnect ignores the duplicate, one that restarted starts over.
  // A selected client that was dropped (e.g. restarted, slow to load its model) and came back
  // before the round gave up on it gets its task again rather than idling to the deadline.
  if (phase_ == Phase::kFit && !run_.awaiting_retry && run_.tasks.contains(client.id) &&
      !run_.accepted.contains(client.id) && run_.failed.erase(client.id) > 0) {
    run_.outstanding.insert(client.id);
  }
  if ((phase_ == Phase::kFit || phase_ == Phase::kInit) && run_.outstanding.contains(client.id)) {
    SendTask(client.id);
  }
  if (phase_ == Phase::kEval && run_.eval_outstanding.contains(client.id)) {
    SendEvalTask(client.id);
  }
}

void Coordinator::Impl::HandleUpdate(ClientConnection& client, std::uint64_t sequence,
                                     wire::Update update, std::size_t bytes) {
  const std::string who = StrCat("update from ", client.id);
  const bool open = (phase_ == Phase::kFit || phase_ == Phase::kInit) && update.round == run_.round;
  if (!open) {
    ProtocolError(who, client.route, sequence, ErrorCode::kStaleRound,
                  StrCat("round ", update.round, " is not open for uploads"));
    return;
  }
  const auto task = run_.tasks.find(client.id);
  if (task == run_.tasks.end()) {
    ProtocolError(who, client.route, sequence, ErrorCode::kNotSelected,
                  StrCat("client was not selected for round ", run_.round));
    return;
  }
  const auto ticket = run_.tickets.find(client.id);
  const bool ticket_ok = ticket != run_.tickets.end() && ticket->second == update.ticket;
  if (run_.accepted.contains(client.id) && (ticket_ok || ticket == run_.tickets.end())) {
    // A resend after a lost Ack (or, after a restart, of an upload restored from disk, whose
    // ticket died with the old process): acknowledge again.
    Send(client, wire::Ack{update.round, sequence});
    return;
  }
  if (!ticket_ok) {
    // Not the task this client holds: a replay from an earlier attempt, or a forgery with a
    // ticket that is not this client's. Nothing is accepted; the client's real task stands.
    ProtocolError(who, client.route, sequence, ErrorCode::kTaskMismatch,
                  StrCat("round ", update.round, " update carries the ticket of attempt ",
                         update.ticket.attempt, ", which is not the ticket of this client's task",
                         ticket != run_.tickets.end()
                             ? StrCat(" (attempt ", ticket->second.attempt, ")")
                             : std::string()));
    return;
  }
  const auto reject = [&](const Status& why) {
    Count([](CoordinatorCounters& c) { ++c.updates_rejected; });
    ProtocolError(who, client.route, sequence, wire::DecodeErrorCode(why), why.message());
    if (run_.outstanding.erase(client.id) > 0) run_.failed.insert(client.id);
  };
  const std::uint64_t max_examples = config_.strategy.max_examples_per_client;
  if (Status valid = ValidateUpload(update, task->second, max_examples); !valid.ok()) {
    reject(valid);
    return;
  }
  if (const auto sent = run_.sent_base.find(client.id);
      sent != run_.sent_base.end() && sent->second != update.base_version) {
    reject(Status(StatusCode::kInvalidArgument,
                  StrCat("trained on base version ", update.base_version, ", the task set ",
                         sent->second),
                  static_cast<std::uint32_t>(ErrorCode::kBaseVersionMismatch)));
    return;
  }
  // One client's declared example count cannot buy it the whole weighted average.
  if (update.num_examples > max_examples) {
    LogWarn("round ", run_.round, ": client ", client.id, " declares ", update.num_examples,
            " training examples; weighting counts ", max_examples,
            " (strategy.max_examples_per_client)");
    run_.examples_capped[client.id] = update.num_examples;
  }
  ClientUpdate accepted{client.id, update.num_samples, std::min(update.num_examples, max_examples),
                        std::move(update.metrics), std::move(update.tensors)};
  if (Status valid = strategy_->ValidateUpdate(task->second, accepted); !valid.ok()) {
    reject(valid);
    return;
  }
  if (phase_ == Phase::kInit) {
    if (Status s = strategy_->client_initialization()->AcceptInit(*state_, accepted); !s.ok()) {
      init_failed_.insert(client.id);
      reject(s.code() == StatusCode::kInvalidArgument && s.detail() != 0
                 ? s
                 : Status(StatusCode::kInvalidArgument, s.message(),
                          static_cast<std::uint32_t>(ErrorCode::kInvalidField)));
      return;
    }
    run_.outstanding.erase(client.id);
    client.cached.insert(task->second.caches.begin(), task->second.caches.end());
    Send(client, wire::Ack{run_.round, sequence});
    LogInfo(strategy_->name(), " initialised from client ", client.id, "'s data");
    run_ = RoundRun{};
    phase_ = Phase::kWaiting;
    return;
  }
  Result<ClientTask> full_task = DeriveTask(client.id);  // With the tensors it was sent.
  if (!full_task.ok()) {
    SendError(client.route, sequence, ErrorCode::kInternal, "coordinator could not check it");
    Fatal(full_task.status().WithContext(StrCat("deriving the task of client ", client.id)));
    return;
  }
  // Norm bounding: how far this upload moves the model is capped, whatever it claims.
  const double norm = UpdateNorm(accepted, *full_task);
  if (const double bound = config_.robust.norm_bound; bound > 0 && norm > bound) {
    if (config_.robust.norm_action == "reject") {
      LogWarn("round ", run_.round, ": refusing the upload of client ", client.id,
              ": its change has L2 norm ", norm, ", above robust.norm_bound ", bound);
      run_.norm_rejected[client.id] = norm;
      reject(Status(StatusCode::kInvalidArgument,
                    StrCat("the upload's change has L2 norm ", norm,
                           ", above the coordinator's bound ", bound),
                    static_cast<std::uint32_t>(ErrorCode::kUpdateNormExceeded)));
      return;
    }
    LogWarn("round ", run_.round, ": clipping the upload of client ", client.id,
            ": its change has L2 norm ", norm, ", scaled down to robust.norm_bound ", bound);
    ScaleChange(accepted, *full_task, bound / norm);
    run_.norm_clipped[client.id] = norm;
  }
  // Folded before it is persisted and acknowledged: an upload the accumulator cannot take (a
  // value beyond its range, tensors unlike the round's others) is refused, and nothing of it
  // stays. A crash after the fold loses only memory; the restart folds the persisted files.
  if (Status s = run_.accumulator->Fold(accepted, *full_task); !s.ok()) {
    LogWarn("round ", run_.round, ": refusing the upload of client ", client.id, ": ",
            s.message());
    reject(s.code() == StatusCode::kInvalidArgument && s.detail() != 0
               ? s
               : Status(StatusCode::kInvalidArgument, s.message(),
                        static_cast<std::uint32_t>(ErrorCode::kInvalidField)));
    return;
  }
  run_.update_norms[client.id] = norm;
  if (Status s = store_->PersistUpdate(
          run_.round, PendingUpload{accepted, client.hello.capabilities, client.plan});
      !s.ok()) {
    SendError(client.route, sequence, ErrorCode::kInternal, "coordinator could not persist");
    Fatal(s.WithContext("persisting an accepted upload"));
    return;
  }
  client.cached.insert(task->second.caches.begin(), task->second.caches.end());
  for (const auto& [name, t] : accepted.tensors) run_.params_up += static_cast<std::uint64_t>(t.numel());
  accepted.tensors.clear();  // Folded and persisted: the round keeps only the counts.
  run_.accepted.emplace(client.id, std::move(accepted));
  run_.outstanding.erase(client.id);
  run_.failed.erase(client.id);
  run_.bytes_up += bytes;
  Count([](CoordinatorCounters& c) { ++c.updates_accepted; });
  Send(client, wire::Ack{run_.round, sequence});
  LogDebug("round ", run_.round, ": update from ", client.id, " accepted (", run_.accepted.size(),
           "/", run_.want, ")");
}

void Coordinator::Impl::HandleEvalResult(ClientConnection& client, std::uint64_t sequence,
                                         wire::EvalResult result, std::size_t bytes) {
  const std::string who = StrCat("eval result from ", client.id);
  if (phase_ != Phase::kEval || result.round != run_.round) {
    ProtocolError(who, client.route, sequence, ErrorCode::kStaleRound,
                  StrCat("no evaluation of round ", result.round, " is open"));
    return;
  }
  if (!run_.eval_outstanding.contains(client.id)) {
    ProtocolError(who, client.route, sequence, ErrorCode::kUnexpectedMessage,
                  "this client was not asked to evaluate (or already answered)");
    return;
  }
  if (const auto ticket = run_.eval_tickets.find(client.id);
      ticket == run_.eval_tickets.end() || ticket->second != result.ticket) {
    ProtocolError(who, client.route, sequence, ErrorCode::kTaskMismatch,
                  "the result does not carry the ticket of this client's evaluation task");
    return;
  }
  if (!std::isfinite(result.loss) || result.loss < 0 || result.num_tokens == 0) {
    ProtocolError(who, client.route, sequence, ErrorCode::kInvalidField,
                  "loss must be finite and >= 0, num_tokens > 0");
    run_.eval_outstanding.erase(client.id);
    return;
  }
  for (const auto& [name, value] : result.metrics) {  // Summed into metrics.jsonl.
    if (name.starts_with("class_") && name.ends_with("_examples") &&
        !(value >= 0.0 && value <= static_cast<double>(result.num_examples))) {
      ProtocolError(who, client.route, sequence, ErrorCode::kInvalidField,
                    StrCat("metric '", name, "' must be in [0, num_examples]"));
      run_.eval_outstanding.erase(client.id);
      return;
    }
  }
  for (const char* share : {"accuracy", "exact_match"}) {  // Averaged into metrics.jsonl.
    const auto it = result.metrics.find(share);
    if (it != result.metrics.end() && !(it->second >= 0.0 && it->second <= 1.0)) {
      ProtocolError(who, client.route, sequence, ErrorCode::kInvalidField,
                    StrCat("metric '", share, "' must be in [0, 1]"));
      run_.eval_outstanding.erase(client.id);
      return;
    }
  }
  run_.eval_outstanding.erase(client.id);
  if (const auto sent = run_.eval_sent_base.find(client.id);
      sent != run_.eval_sent_base.end() && sent->second != result.base_version) {
    ProtocolError(who, client.route, sequence, ErrorCode::kBaseVersionMismatch,
                  StrCat("evaluated on base version ", result.base_version, ", the task set ",
                         sent->second));
    return;
  }
  if (const auto caches = run_.eval_caches.find(client.id); caches != run_.eval_caches.end()) {
    client.cached.insert(caches->second.begin(), caches->second.end());
  }
  run_.eval_bytes_up += bytes;
  run_.eval_results.emplace(client.id, std::move(result));
}

ClientInfo Coordinator::Impl::InfoOf(const ClientConnection& client) const {
  return ClientInfo{client.id, client.hello.capabilities, client.plan, client.cached};
}

// ---- Coordinator ---------------------------------------------------------------------------

Coordinator::Coordinator(CoordinatorConfig config, std::unique_ptr<Strategy> strategy,
                         net::Context& context, const Clock& clock)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(strategy), context, clock)) {}
Coordinator::~Coordinator() = default;
Status Coordinator::Start() { return impl_->Start(); }
Status Coordinator::Run() { return impl_->Run(); }
void Coordinator::SetRoundAnnotator(RoundAnnotator annotator) {
  impl_->SetRoundAnnotator(std::move(annotator));
}
void Coordinator::Stop() { impl_->Stop(); }
void Coordinator::Wake() { impl_->Wake(); }
void Coordinator::Reload() { impl_->Reload(); }
std::string Coordinator::endpoint() const { return impl_->endpoint(); }
std::optional<crypto::CurvePublicKey> Coordinator::public_key() const {
  return impl_->public_key();
}
CoordinatorCounters Coordinator::counters() const { return impl_->counters(); }

}  // namespace fedlora::server
