// coordinator.cc — the coordinator's start-up and event loop: resume from the state directory,
// bind, then poll; route each message to its handler (after the session, sequence and key checks
// every message needs); admit clients (Hello -> Welcome); heartbeats and liveness; sending.
// The round itself is coordinator_rounds.cc's and round_state.h's, uploads and evaluation
// results coordinator_uploads.cc's, the pure checks of what peers send admission.h's.
#include "server/coordinator.h"

#include <algorithm>
#include <tuple>

#include "common/crypto/random.h"
#include "common/log.h"
#include "server/admission.h"
#include "server/coordinator_impl.h"
#include "server/rank_policy.h"

namespace fedlora::server {
namespace {

using std::chrono::milliseconds;
using wire::ErrorCode;

constexpr std::size_t kMaxMessagesPerTick = 256;
constexpr milliseconds kMaxPollWait{1000};
constexpr int kByeLingerMs = 2000;

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

// ---- start-up ------------------------------------------------------------------------------

Status Coordinator::Impl::Start() {
  // Security first: a configuration that would expose the federation fails before anything else.
  FEDLORA_ASSIGN_OR_RETURN(security_,
                           TransportSecurity::Create(config_.security, config_.transport.bind));
  FEDLORA_RETURN_IF_ERROR(
      wire::CheckChunkBytes(config_.transport.chunk_bytes, config_.transport.max_message_bytes));
  FEDLORA_RETURN_IF_ERROR(CheckSecureStrategy());
  if (SecureOn()) {
    const SecureAggregationConfig& sa = config_.secure_aggregation;
    LogInfo("secure aggregation on: the coordinator sees only each round's sum; at most ",
            sa.MaxClients(config_.round.max_clients), " clients per round (2^", sa.levels_bits,
            " levels, modulus 2^", sa.modulus_bits, ")");
    if (config_.robust.norm_bound > 0) {
      LogWarn("robust.norm_bound (", config_.robust.norm_bound, ") is not applied under secure ",
              "aggregation: the coordinator never sees an upload; clients clip each value to ",
              "secure_aggregation.clip instead");
    }
  }
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
  FEDLORA_RETURN_IF_ERROR(StartPrivacy(latest));

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
          SecureOn() ? StrCat("each value clipped by its client to secure_aggregation.clip (",
                              "no norm bound: the coordinator sees only the sum)")
          : robust.norm_bound > 0
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
  return StartOps();
}

// ---- the loop ------------------------------------------------------------------------------

Status Coordinator::Impl::Run() {
  FEDLORA_CHECK_MSG(router_.valid(), "Run() before a successful Start()");
  running_.store(true);
  const Status result = Loop();
  running_.store(false);
  PublishStatus();  // Stopped, failed or done; and wakes any ops thread still waiting.
  return result;
}

Status Coordinator::Impl::Loop() {
  while (true) {
    loop_turned_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count());
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
    if (round_.phase() == RoundPhase::kDone &&
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
      const auto milestone = [this] {
        const RoundRun& run = round_.run();
        return std::make_tuple(round_.phase(), run.round, committed_, run.attempt,
                               run.awaiting_retry);
      };
      for (int i = 0; i < 8; ++i) {
        const auto before = milestone();
        Advance();
        if (before == milestone()) break;
      }
      if (status_wanted_.exchange(false)) PublishStatus();
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
  next = round_.NextTimer(now, next);
  if (secagg_ && secagg_->active()) next = std::min(next, secagg_->deadline());
  milliseconds wait(MillisUntil(now, next));
  if (round_.phase() == RoundPhase::kDone) {  // The farewell is timed in wall time (see Finish).
    wait = std::min(wait, std::chrono::duration_cast<milliseconds>(
                              farewell_until_ - std::chrono::steady_clock::now()) +
                              milliseconds(1));
  }
  return std::max(wait, milliseconds(0));
}

void Coordinator::Impl::OnTick() {
  ReloadKeys();
  DropStaleInbound();
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

void Coordinator::Impl::OnClientGone(const std::string& id, std::string_view why,
                                     bool between_rounds) {
  if (between_rounds) {
    LogInfo("client ", id, " left between rounds: ", why);
  } else {
    LogWarn("client ", id, " is gone: ", why);
  }
  DropInbound(id, "its connection ended");  // A partial upload leaves nothing in the round.
  void_transfers_.erase(id);
  round_.OnClientGone(id);
  if (secagg_ && secagg_->active()) secagg_->Exclude(id, why);
  // Until round 0 is committed the model layout is only what the first client claimed: when
  // every client has left, forget it, so one bogus (but well-formed) Hello cannot lock the
  // federation out.
  if (!committed_ && clients_.size() == 0 && layout_ && config_.base_model_sha256.empty()) {
    LogInfo("no clients left before round 0: unpinning the base model");
    layout_.reset();
    state_.reset();
    round_.Reset();
  }
}

// ---- messaging -----------------------------------------------------------------------------

std::size_t Coordinator::Impl::Send(ClientConnection& client, wire::Body body) {
  wire::Envelope envelope{wire::kProtocolVersion, client.session_id, client.next_sequence_out++,
                          std::move(body)};
  if (const TensorMap* tensors = wire::TensorsOf(envelope.body);
      tensors != nullptr && PayloadBytes(*tensors) > config_.transport.chunk_bytes) {
    return SendChunked(client, std::move(envelope));
  }
  const wire::EncodedMessage encoded = wire::Encode(envelope, encode_);
  const std::vector<std::span<const std::byte>> frames = encoded.frames();
  const Status s = router_.Send(frames, std::as_bytes(std::span<const char>(client.route)));
  client.last_sent = clock_.Now();
  if (!s.ok()) {
    LogDebug("send ", wire::BodyName(envelope.body), " to ", client.id, " failed: ", s.message());
    return 0;
  }
  Count([&](CoordinatorCounters& c) { c.bytes_out += encoded.total_bytes(); });
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
  Count([&](CoordinatorCounters& c) { ++c.refused[std::string(wire::ErrorCodeName(code))]; });
  LogWarn(who, ": ", wire::ErrorCodeName(code), ": ", message);
  SendError(route, ref_sequence, code, message);
}

void Coordinator::Impl::HandleMessage(const net::Message& message) {
  Count([&](CoordinatorCounters& c) {
    ++c.messages_in;
    c.bytes_in += message.total_bytes();
  });
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

  // The run is complete: whoever still talks gets Bye (again).
  if (round_.phase() == RoundPhase::kDone) {
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
  if (observer_) observer_(route, envelope);
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
  if (envelope.chunked || std::holds_alternative<wire::Chunk>(envelope.body)) {
    HandleChunked(*client, std::move(envelope), bytes);
    return;
  }
  if (auto* update = std::get_if<wire::Update>(&envelope.body)) {
    HandleUpdate(*client, envelope.sequence, std::move(*update), bytes);
  } else if (auto* result = std::get_if<wire::EvalResult>(&envelope.body)) {
    HandleEvalResult(*client, envelope.sequence, std::move(*result), bytes);
  } else if (const auto* secure = std::get_if<wire::SecAgg>(&envelope.body)) {
    HandleSecAgg(*client, envelope.sequence, *secure, bytes);
  } else if (const auto* error = std::get_if<wire::Error>(&envelope.body)) {
    if (error->code == ErrorCode::kTaskDeclined) {  // Routine in a fleet: offline or too slow.
      LogDebug(who, " declines its task: ", error->message);
    } else {
      LogWarn(who, " reports ", wire::ErrorCodeName(error->code), ": ", error->message);
    }
    ++task_refusals_[std::string(wire::ErrorCodeName(error->code))];
    Count([&](CoordinatorCounters& c) {
      ++c.tasks_refused[std::string(wire::ErrorCodeName(error->code))];
    });
    // The client's base is not what we believed: the next task rebuilds it from scratch.
    // So is a task whose chunks did not arrive whole (its base update was never applied).
    if (error->code == ErrorCode::kBaseVersionMismatch ||
        error->code == ErrorCode::kChunkMismatch) {
      client->base_version = kUnknownVersion;
    }
    // A task whose chunks did not arrive whole is sent again (a few times), base and all.
    if (error->code == ErrorCode::kChunkMismatch && ResendTask(*client, error->ref_sequence)) {
      return;
    }
    // The client refused a secure-aggregation stage (a roster or unmask it must not answer).
    if (error->code == ErrorCode::kSecAggMismatch && secagg_ && secagg_->active()) {
      secagg_->Exclude(client->id, StrCat("it refused: ", error->message));
      if (!secagg_->HasInput(client->id)) round_.OnUploadRefused(client->id);
      return;
    }
    // The error names the task it refuses by that message's sequence number.
    round_.OnTaskRefused(client->id, error->ref_sequence);
    // A member that refused its task (declined, failed to train) sends nothing more this attempt.
    if (secagg_ && secagg_->active() && secagg_->IsMember(client->id) &&
        !secagg_->HasInput(client->id) && !round_.run().outstanding.contains(client->id)) {
      secagg_->Exclude(client->id,
                       StrCat("it refused its task (", wire::ErrorCodeName(error->code), ")"));
    }
  } else if (const auto* bye = std::get_if<wire::Bye>(&envelope.body)) {
    const std::string id = client->id;
    clients_.Remove(id);
    OnClientGone(id, StrCat("said bye (", bye->reason, ")"),
                 round_.phase() == RoundPhase::kWaiting || round_.phase() == RoundPhase::kDone);
  } else {
    ProtocolError(who, route, envelope.sequence, ErrorCode::kUnexpectedMessage,
                  StrCat("a client may not send ", wire::BodyName(envelope.body)));
  }
}

void Coordinator::Impl::HandleHello(const std::string& route, const std::string& user_id,
                                    const wire::Envelope& envelope) {
  const wire::Hello& hello = std::get<wire::Hello>(envelope.body);
  const std::string who = StrCat("hello from '", PrintableName(hello.client_name), "'");
  const auto reject = [&](const Status& why) {
    ProtocolError(who, route, envelope.sequence, wire::DecodeErrorCode(why), why.message());
  };
  if (Status s = CheckHelloName(hello); !s.ok()) {
    reject(s);
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
    reject(Refusal(ErrorCode::kNotAuthorized, TransportSecurity::Describe(user_id),
                   " is enrolled as ", enrolled_as, ", not as '", hello.client_name, "'"));
    return;
  }
  if (Status s = CheckHelloModel(hello, config_, layout_); !s.ok()) {
    reject(s);
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
      reject(Refusal(ErrorCode::kDuplicateClient, "client '", hello.client_name,
                     "' has a live session; a new connection may take the name once that "
                     "session has been silent for ",
                     interval.count() * config_.transport.heartbeat_liveness, " ms"));
      return;
    }
  }
  Result<wire::AdapterPlan> plan = PlanForHello(hello, config_);
  if (!plan.ok()) {
    reject(plan.status());
    return;
  }
  if (!layout_) {
    const ModelLayout layout{hello.base_model_sha256, hello.modules};
    Result<GlobalState> initial = strategy_->Initialize(layout, std::nullopt);
    if (!initial.ok()) {
      reject(Refusal(ErrorCode::kBaseModelMismatch, initial.status().message()));
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
  // A reconnect: whatever its previous connection was uploading is void.
  DropInbound(hello.client_name, "the client connected again");
  void_transfers_.erase(hello.client_name);
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

  switch (round_.OnAdmitted(client.id)) {  // What it owes from before the reconnect, if any.
    case Owed::kTask:
      // A secure attempt cannot take a member back: its keys died with its connection.
      if (secagg_ && secagg_->active()) {
        round_.OnUploadRefused(client.id);
        break;
      }
      SendTask(client.id);
      break;
    case Owed::kEvalTask: SendEvalTask(client.id); break;
    case Owed::kNothing: break;
  }
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
void Coordinator::SetInboundObserver(InboundObserver observer) {
  impl_->SetInboundObserver(std::move(observer));
}

void Coordinator::SetRoundAnnotator(RoundAnnotator annotator) {
  impl_->SetRoundAnnotator(std::move(annotator));
}
void Coordinator::SetRoundGate(RoundGate gate) { impl_->SetRoundGate(std::move(gate)); }
void Coordinator::Stop() { impl_->Stop(); }
void Coordinator::Wake() { impl_->Wake(); }
void Coordinator::Reload() { impl_->Reload(); }
std::string Coordinator::endpoint() const { return impl_->endpoint(); }
std::optional<crypto::CurvePublicKey> Coordinator::public_key() const {
  return impl_->public_key();
}
CoordinatorCounters Coordinator::counters() const { return impl_->counters(); }
CoordinatorStatus Coordinator::status() const { return impl_->status(); }
std::string Coordinator::ops_url() const { return impl_->ops_url(); }

}  // namespace fedlora::server
