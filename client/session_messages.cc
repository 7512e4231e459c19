// session_messages.cc — the client session's side of the conversation: each message from the
// coordinator (Welcome, tasks, Acks, Errors, Bye; chunked tasks put together first) and sending,
// whole or, for uploads larger than transport.chunk_bytes, as a head and paced chunks.
#include <algorithm>

#include "client/session_impl.h"

namespace fedlora::client {
namespace {

using std::chrono::milliseconds;
using wire::ErrorCode;
using namespace session_internal;

}  // namespace

std::optional<Outcome> ClientSession::Impl::HandleEnvelope(wire::Envelope envelope) {
  if (welcomed_ && envelope.session_id != session_id_) {
    // The coordinator no longer knows our session (it dropped it, or restarted) and answers
    // outside any session: say Hello again now rather than after interval x liveness.
    const auto* error = std::get_if<wire::Error>(&envelope.body);
    if (envelope.session_id == 0 && error != nullptr &&
        error->code == ErrorCode::kSessionMismatch) {
      LogWarn("coordinator: ", error->message, "; reconnecting");
      return Outcome::kReconnect;
    }
    LogWarn("ignoring ", wire::BodyName(envelope.body), " for another session");
    return std::nullopt;
  }
  if (envelope.sequence <= last_sequence_in_) {
    LogWarn("ignoring replayed ", wire::BodyName(envelope.body), " (sequence ", envelope.sequence,
            ")");
    return std::nullopt;
  }
  last_sequence_in_ = envelope.sequence;
  last_heard_ = clock_.Now();
  if (envelope.chunked || std::holds_alternative<wire::Chunk>(envelope.body)) {
    return HandleChunked(std::move(envelope));
  }
  return Dispatch(std::move(envelope));
}

std::optional<Outcome> ClientSession::Impl::HandleChunked(wire::Envelope envelope) {
  if (!welcomed_) {
    LogWarn("ignoring a chunked ", wire::BodyName(envelope.body), " before Welcome");
    return std::nullopt;
  }
  const auto refuse = [&](std::uint64_t transfer, const Status& why) {
    LogWarn("chunked message ", transfer, " from the coordinator: ", why.message());
    Send(wire::Error{wire::DecodeErrorCode(why), why.message(), transfer});
  };
  if (envelope.chunked) {  // A new head voids any transfer still open (its chunks were lost).
    if (inbound_) {
      LogWarn("chunked message ", inbound_->transfer(), " from the coordinator never completed (",
              inbound_->received_bytes(), " of ", inbound_->total_bytes(),
              " bytes); a newer one replaces it");
    }
    inbound_.reset();
    const std::uint64_t transfer = envelope.sequence;
    Result<wire::ChunkAssembler> opened = wire::ChunkAssembler::InMemory(std::move(envelope));
    if (!opened.ok()) {
      refuse(transfer, opened.status());
      return std::nullopt;
    }
    inbound_.emplace(std::move(opened).value());
    return std::nullopt;
  }
  const wire::Chunk& chunk = std::get<wire::Chunk>(envelope.body);
  if (!inbound_) {
    refuse(chunk.transfer, Status(StatusCode::kDataLoss,
                                  StrCat("chunk ", chunk.index, " of transfer ", chunk.transfer,
                                         ", which is not open here"),
                                  static_cast<std::uint32_t>(ErrorCode::kChunkMismatch)));
    return std::nullopt;
  }
  if (Status s = inbound_->Accept(chunk); !s.ok()) {
    refuse(inbound_->transfer(), s);
    inbound_.reset();
    return std::nullopt;
  }
  if (!inbound_->complete()) return std::nullopt;
  Result<wire::Envelope> whole = inbound_->Finish();
  inbound_.reset();
  if (!whole.ok()) {
    LogWarn("chunked message from the coordinator: ", whole.status().message());
    return std::nullopt;
  }
  return Dispatch(std::move(whole).value());
}

std::optional<Outcome> ClientSession::Impl::Dispatch(wire::Envelope envelope) {
  if (auto* welcome = std::get_if<wire::Welcome>(&envelope.body)) {
    welcomed_ = true;
    Count([](ClientSessionCounters& c) {
      c.connected = true;
      ++c.welcomes;
    });
    session_id_ = envelope.session_id;
    interval_ = milliseconds(std::max<std::uint32_t>(1, welcome->heartbeat_interval_ms));
    liveness_ = std::max<std::uint32_t>(1, welcome->heartbeat_liveness);
    Progress("connected to ", config_.coordinator, " as ", welcome->client_id, " (strategy ",
             welcome->strategy, ", round ", welcome->current_round, ")");
    if (pending_update_) {
      if (pending_update_->round < welcome->current_round) {
        pending_update_.reset();  // Its round is over.
      } else {
        ResendPendingUpload();
      }
    }
    return std::nullopt;
  }
  if (!welcomed_ && !std::holds_alternative<wire::Error>(envelope.body)) {
    LogWarn("ignoring ", wire::BodyName(envelope.body), " before Welcome");
    return std::nullopt;
  }
  if (std::holds_alternative<wire::Heartbeat>(envelope.body)) return std::nullopt;
  if (auto* task = std::get_if<wire::RoundTask>(&envelope.body)) {
    Count([&](ClientSessionCounters& c) {
      ++c.tasks_received;
      c.last_round = task->round;
    });
    if (pending_update_ && pending_update_->round == task->round &&
        pending_update_->ticket == task->ticket) {
      ResendPendingUpload();  // Trained already; the coordinator lost it.
      return std::nullopt;
    }
    // A new task for this round (a retry with a new ticket) makes an unacknowledged upload moot.
    if (pending_update_ && pending_update_->round == task->round) pending_update_.reset();
    // Fails closed: a task short of the privacy this data owner requires is never trained for.
    if (Status allowed = CheckTaskPrivacy(config_.privacy, task->privacy); !allowed.ok()) {
      LogWarn("round ", task->round, ": refusing the task: ", allowed.message());
      Count([](ClientSessionCounters& c) { ++c.tasks_refused; });
      Send(wire::Error{ErrorCode::kPrivacyMismatch, std::string(allowed.message()),
                       envelope.sequence});
      return std::nullopt;
    }
    if (task->privacy) {
      const wire::PrivacyParams& p = *task->privacy;
      Progress("round ", task->round, ": differential privacy: the change is clipped to L2 ",
               p.clip, ", the coordinator adds noise multiplier ", p.noise_multiplier,
               "; epsilon spent so far ", p.epsilon_spent,
               p.target_epsilon > 0 ? StrCat(" of ", p.target_epsilon) : std::string(),
               " at delta ", p.delta);
    }
    if (task->secagg && !BeginSecureRound(*task, envelope.sequence)) return std::nullopt;
    const std::uint64_t round = task->round;
    if (!Enqueue(std::move(*task), envelope.sequence)) {
      LogDebug("round ", round, ": task already in hand");
    }
    return std::nullopt;
  }
  if (const auto* secure = std::get_if<wire::SecAgg>(&envelope.body)) {
    HandleSecAgg(*secure, envelope.sequence);
    return std::nullopt;
  }
  if (auto* task = std::get_if<wire::EvalTask>(&envelope.body)) {
    Enqueue(std::move(*task), envelope.sequence);
    return std::nullopt;
  }
  if (const auto* ack = std::get_if<wire::Ack>(&envelope.body)) {
    if (pending_update_ && ack->round == pending_update_->round) {
      Progress("round ", ack->round, ": update acknowledged");
      Count([](ClientSessionCounters& c) { ++c.updates_acknowledged; });
      pending_update_.reset();
    }
    return std::nullopt;
  }
  if (const auto* error = std::get_if<wire::Error>(&envelope.body)) {
    LogWarn("coordinator: ", wire::ErrorCodeName(error->code), ": ", error->message);
    Count([](ClientSessionCounters& c) { ++c.errors_from_coordinator; });
    switch (error->code) {
      case ErrorCode::kBaseModelMismatch:
      case ErrorCode::kVersionMismatch:
        fatal_ = FailedPrecondition("coordinator refused this client: ",
                                    wire::ErrorCodeName(error->code), ": ", error->message);
        return Outcome::kFatal;
      case ErrorCode::kNotAuthorized:
        // Our key is not enrolled under our name, or was revoked: retrying cannot help.
        fatal_ = PermissionDenied("coordinator refused this client's key: ", error->message);
        return Outcome::kFatal;
      case ErrorCode::kInvalidField:
        if (!welcomed_) {  // Our Hello itself is unacceptable (e.g. the name): retrying won't help.
          fatal_ = FailedPrecondition("coordinator refused our hello: ", error->message);
          return Outcome::kFatal;
        }
        break;
      case ErrorCode::kDuplicateClient:
        // Our previous connection still looks alive to the coordinator: it is reachable, so
        // this does not count as a failed connection attempt.
        reachable_ = true;
        return Outcome::kReconnect;
      case ErrorCode::kShuttingDown:
      case ErrorCode::kSessionMismatch:
        return Outcome::kReconnect;
      default:
        break;
    }
    if (pending_update_ && error->ref_sequence == pending_sequence_) {
      // Chunks lost, reordered or corrupted on the way: the upload itself is fine, send it again
      // (a few times). Any other refusal of it is final.
      const bool transit =
          error->code == ErrorCode::kChunkMismatch || error->code == ErrorCode::kDigestMismatch;
      if (transit && pending_resends_ < kMaxUploadResends) {
        ++pending_resends_;
        LogWarn("round ", pending_update_->round, ": sending the update again (", pending_resends_,
                " of ", kMaxUploadResends, ")");
        ResendPendingUpload();
      } else {
        pending_update_.reset();
      }
    }
    return std::nullopt;
  }
  if (const auto* bye = std::get_if<wire::Bye>(&envelope.body)) {
    Progress("coordinator says bye: ", bye->reason);
    // Answer, so the coordinator need not wait to see whether its Bye arrived.
    Send(wire::Bye{"run complete"});
    socket_.SetLinger(500);
    return Outcome::kBye;
  }
  LogWarn("ignoring unexpected ", wire::BodyName(envelope.body), " from the coordinator");
  return std::nullopt;
}

void ClientSession::Impl::ResendPendingUpload() {
  wire::Update resend = *pending_update_;
  pending_sequence_ = sequence_out_ + 1;
  Send(std::move(resend));
}

void ClientSession::Impl::SendChunked(wire::Body body) {
  Outbound out;
  out.envelope = std::make_unique<wire::Envelope>(
      wire::Envelope{wire::kProtocolVersion, session_id_, ++sequence_out_, std::move(body),
                     wire::ChunkedHead{.chunk_bytes = config_.transport.chunk_bytes}});
  out.head = wire::Encode(*out.envelope, {.tensor_digests = !security_.curve()});
  if (chunk_swaps_left_ > 0 && out.head.chunked->chunk_count >= 2) {
    --chunk_swaps_left_;
    out.swap_first_two = true;
    LogWarn("fault injection: sending chunks 0 and 1 of ", wire::BodyName(out.envelope->body), " ",
            out.envelope->sequence, " swapped");
  }
  last_sent_ = clock_.Now();
  if (Status s = socket_.Send(out.head.frames()); !s.ok()) {
    LogWarn("send ", wire::BodyName(out.envelope->body), " failed: ", s.message());
    return;
  }
  Count([&](ClientSessionCounters& c) { c.bytes_out += out.head.total_bytes(); });
  Progress("sending ", wire::BodyName(out.envelope->body), " in ", out.head.chunked->chunk_count,
           " chunks (", out.head.chunked->total_bytes, " bytes)");
  outbound_ = std::move(out);  // Replaces (voids) a transfer still going out.
  PumpOutbound();
}

void ClientSession::Impl::PumpOutbound() {
  while (outbound_ && outbound_->next < outbound_->head.chunked->chunk_count) {
    std::uint32_t index = outbound_->next;
    if (outbound_->swap_first_two && index < 2) index = 1 - index;
    const wire::Chunk header{outbound_->envelope->sequence,
                             index,
                             std::uint64_t{index} * outbound_->head.chunked->chunk_bytes,
                             {}};
    const std::vector<std::span<const std::byte>> pieces =
        wire::ChunkPieces(outbound_->head, index);
    const wire::EncodedMessage chunk =
        wire::EncodeChunk(session_id_, sequence_out_ + 1, header, pieces);
    if (!socket_.Send(chunk.frames()).ok()) return;  // Queue full: Serve waits until writable.
    Count([&](ClientSessionCounters& c) { c.bytes_out += chunk.total_bytes(); });
    ++sequence_out_;
    last_sent_ = clock_.Now();
    ++outbound_->next;
  }
  outbound_.reset();
}

void ClientSession::Impl::Send(wire::Body body) {
  if (const TensorMap* tensors = wire::TensorsOf(body);
      tensors != nullptr && PayloadBytes(*tensors) > config_.transport.chunk_bytes) {
    SendChunked(std::move(body));
    return;
  }
  const wire::Envelope envelope{wire::kProtocolVersion, session_id_, ++sequence_out_,
                                std::move(body)};
  const wire::EncodedMessage encoded =
      wire::Encode(envelope, {.tensor_digests = !security_.curve()});
  last_sent_ = clock_.Now();
  if (Status s = socket_.Send(encoded.frames()); !s.ok()) {
    // DEALER queues until connected; failure means the queue is full. Liveness handles the rest.
    LogWarn("send ", wire::BodyName(envelope.body), " failed: ", s.message());
    return;
  }
  Count([&](ClientSessionCounters& c) { c.bytes_out += encoded.total_bytes(); });
}

}  // namespace fedlora::client
