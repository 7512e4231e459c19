#include "client/session.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <variant>

#include "client/transport_security.h"
#include "common/log.h"
#include "common/wire/chunk_assembler.h"
#include "common/wire/codec.h"

namespace fedlora::client {
namespace {

using std::chrono::milliseconds;
using wire::ErrorCode;

// A unit of work for the job thread and what became of it.
using Job = std::variant<wire::RoundTask, wire::EvalTask>;
struct JobKey {
  bool fit = true;
  std::uint64_t round = 0;
  wire::TaskTicket ticket;  // A retry of the round (a new attempt) is another task.
  friend bool operator==(const JobKey&, const JobKey&) = default;
};
JobKey KeyOf(const Job& job) {
  if (const auto* t = std::get_if<wire::RoundTask>(&job)) return {true, t->round, t->ticket};
  const auto& e = std::get<wire::EvalTask>(job);
  return {false, e.round, e.ticket};
}
struct JobDone {
  JobKey key;
  std::uint64_t task_sequence = 0;  // The coordinator's sequence number of the task message.
  Result<wire::Body> result;        // Update or EvalResult.
};

// A queued task with the sequence number of the message that carried it.
struct QueuedJob {
  Job job;
  std::uint64_t sequence = 0;
};

// Why one connection ended.
enum class Outcome { kBye, kReconnect, kStop, kFatal };

// How often one upload is sent again after the coordinator found its chunks out of order or
// corrupted, before it is given up (the round then goes on without it).
constexpr std::uint32_t kMaxUploadResends = 3;

// A chunked message on its way out: the envelope owns the tensors its chunks borrow.
struct Outbound {
  std::unique_ptr<wire::Envelope> envelope;
  wire::EncodedMessage head;
  std::uint32_t next = 0;       // Chunks sent so far.
  bool swap_first_two = false;  // faults.swap_upload_chunks.
};

}  // namespace

class ClientSession::Impl {
 public:
  Impl(ClientConfig config, Worker& worker, net::Context& context, const Clock& clock)
      : config_(std::move(config)), worker_(worker), context_(context), clock_(clock) {}

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      shutting_down_ = true;
      jobs_.clear();
      if (current_stop_) current_stop_->request_stop();
    }
    cv_.notify_all();
    // Started by the first Enqueue, on the session thread, which has returned by now.
    if (job_thread_.joinable()) job_thread_.join();
  }

  Status Run();
  Status Connect();  // Opens socket_ (monitored, except over inproc) and connects.
  void Stop() {
    stop_.store(true, std::memory_order_release);
    wake_.Notify();
  }

 private:
  // Progress messages: info for a standalone client, debug inside the simulator.
  template <typename... Args>
  void Progress(const Args&... args) const {
    if (config_.log_progress) {
      LogInfo(args...);
    } else {
      LogDebug(args...);
    }
  }

  // ---- job thread ----
  void JobLoop();
  // False if the same job is already queued or running.
  bool Enqueue(Job job, std::uint64_t sequence);
  void CancelJobs();

  // ---- session thread ----
  Outcome Serve();
  // Handles one message; returns how the connection ends, if this message ends it.
  std::optional<Outcome> HandleEnvelope(wire::Envelope envelope);
  // A chunked task's head or chunk; the whole task is dispatched once its last chunk arrived.
  std::optional<Outcome> HandleChunked(wire::Envelope envelope);
  // Acts on one complete message of this session.
  std::optional<Outcome> Dispatch(wire::Envelope envelope);
  // Reads the socket monitor's pending events; kFatal when a handshake failure is final.
  std::optional<Outcome> ReadMonitor();
  void HandleDone(JobDone done);
  void Send(wire::Body body);
  void SendChunked(wire::Body body);
  void PumpOutbound();  // Sends the outbound transfer's chunks while the socket takes them.
  void ResendPendingUpload();
  bool WaitBackoff(milliseconds delay);  // False if stopped meanwhile.

  ClientConfig config_;
  Worker& worker_;
  net::Context& context_;
  const Clock& clock_;
  net::WakePipe wake_;  // Stop() and job completions wake the session thread.
  std::atomic<bool> stop_{false};

  // Connection state, session thread only.
  ClientTransportSecurity security_;
  std::optional<HandshakeWatch> handshakes_;
  net::Socket socket_;  // With a monitor of its handshakes (except over inproc).
  bool welcomed_ = false;
  std::uint64_t session_id_ = 0;
  std::uint64_t sequence_out_ = 0;
  std::uint64_t last_sequence_in_ = 0;
  Clock::TimePoint last_heard_{}, last_sent_{}, hello_deadline_{};
  milliseconds interval_{1000};
  std::uint32_t liveness_ = 5;
  Status fatal_;
  bool reachable_ = false;  // The coordinator answered this connection (if only to refuse it).
  // The last Update, kept until the coordinator acknowledges or refuses it.
  std::optional<wire::Update> pending_update_;
  std::uint64_t pending_sequence_ = 0;
  std::uint32_t pending_resends_ = 0;       // Times the pending upload was sent again.
  std::optional<Outbound> outbound_;        // A chunked upload still being sent.
  std::optional<wire::ChunkAssembler> inbound_;  // A chunked task still arriving.
  std::uint32_t chunk_swaps_left_ = 0;      // faults.swap_upload_chunks still to inject.
  std::deque<JobDone> unsent_;  // Completions waiting for a Welcome.

  // Shared with the job thread.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<QueuedJob> jobs_;                    // Guarded by mu_.
  std::optional<JobKey> running_;                 // Guarded by mu_.
  std::optional<std::stop_source> current_stop_;  // Guarded by mu_.
  std::deque<JobDone> done_;                      // Guarded by mu_.
  bool shutting_down_ = false;                    // Guarded by mu_.
  std::thread job_thread_;                        // Started by Enqueue (under mu_).
};

// ---- job thread ----------------------------------------------------------------------------

void ClientSession::Impl::JobLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return shutting_down_ || !jobs_.empty(); });
    if (shutting_down_) return;
    QueuedJob queued = std::move(jobs_.front());
    jobs_.pop_front();
    Job& job = queued.job;
    const JobKey key = KeyOf(job);
    running_ = key;
    current_stop_.emplace();
    const std::stop_token token = current_stop_->get_token();
    lock.unlock();

    Result<wire::Body> result = Status(StatusCode::kInternal, "unset");
    if (auto* task = std::get_if<wire::RoundTask>(&job)) {
      Progress("round ", task->round, ": training (", task->train.local_steps, " steps, lr ",
              task->train.learning_rate, ")");
      Result<wire::Update> update = worker_.Train(*task, token);
      if (update.ok()) update->ticket = task->ticket;  // Binds the upload to this very task.
      result = update.ok() ? Result<wire::Body>(wire::Body(std::move(update).value()))
                           : Result<wire::Body>(update.status());
    } else {
      const wire::EvalTask& eval_task = std::get<wire::EvalTask>(job);
      Result<wire::EvalResult> eval = worker_.Evaluate(eval_task, token);
      if (eval.ok()) eval->ticket = eval_task.ticket;
      result = eval.ok() ? Result<wire::Body>(wire::Body(std::move(eval).value()))
                         : Result<wire::Body>(eval.status());
    }

    lock.lock();
    running_.reset();
    current_stop_.reset();
    done_.push_back(JobDone{key, queued.sequence, std::move(result)});
    wake_.Notify();
  }
}

bool ClientSession::Impl::Enqueue(Job job, std::uint64_t sequence) {
  const JobKey key = KeyOf(job);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_ == key) return false;
    for (const QueuedJob& j : jobs_) {
      if (KeyOf(j.job) == key) return false;
    }
    for (const JobDone& d : done_) {
      if (d.key == key) return false;
    }
    // A newer training task supersedes older work still running or queued (training or
    // evaluation of an earlier round, or training for an earlier attempt of this round): the
    // coordinator has moved on, and would refuse the old result's ticket.
    if (key.fit && running_ && current_stop_ &&
        (running_->round < key.round || (running_->fit && running_->round == key.round))) {
      current_stop_->request_stop();
    }
    if (key.fit) {
      std::erase_if(jobs_, [&](const QueuedJob& j) {
        const JobKey k = KeyOf(j.job);
        return k.fit || k.round < key.round;
      });
    }
    jobs_.push_back(QueuedJob{std::move(job), sequence});
    // The job thread starts with the first job: a session that is never tasked (most virtual
    // clients of a large simulation) costs no second thread, whose stack holds LibTorch's static
    // thread-local storage (~120 KB resident in a binary linked to it).
    if (!job_thread_.joinable()) job_thread_ = std::thread([this] { JobLoop(); });
  }
  cv_.notify_one();
  return true;
}

void ClientSession::Impl::CancelJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  jobs_.clear();
  if (current_stop_) current_stop_->request_stop();
}

// ---- session thread ------------------------------------------------------------------------

Status ClientSession::Impl::Connect() {
  net::SocketOptions options;
  options.max_frame_bytes = static_cast<std::int64_t>(config_.transport.max_message_bytes);
  options.curve = security_.SocketOptions();
  FEDLORA_ASSIGN_OR_RETURN(socket_, net::Socket::Open(context_, net::SocketKind::kDealer, options));
  if (!config_.coordinator.starts_with("inproc://")) {
    // Handshake outcomes (a refused key, a coordinator that speaks another mechanism) arrive
    // only as socket events; without them a misconfiguration would be a silent retry loop.
    FEDLORA_RETURN_IF_ERROR(socket_.EnableMonitor(context_));
  }
  if (Status s = socket_.Connect(config_.coordinator); !s.ok()) {
    return Status(StatusCode::kInvalidArgument,
                  StrCat("coordinator endpoint '", config_.coordinator, "': ", s.message()));
  }
  return OkStatus();
}

Status ClientSession::Impl::Run() {
  FEDLORA_ASSIGN_OR_RETURN(security_, ResolveClientSecurity(config_));
  chunk_swaps_left_ = config_.faults.swap_upload_chunks;
  handshakes_.emplace(security_, config_.coordinator);
  milliseconds backoff(config_.transport.reconnect_min_ms);
  std::uint32_t failures = 0;
  while (true) {
    if (stop_.load(std::memory_order_acquire)) {
      CancelJobs();
      return Status(StatusCode::kCancelled, "stopped on request");
    }
    FEDLORA_RETURN_IF_ERROR(Connect());
    welcomed_ = false;
    outbound_.reset();  // Transfers die with their connection; the pending upload is resent.
    inbound_.reset();
    session_id_ = 0;
    sequence_out_ = 0;
    last_sequence_in_ = 0;
    interval_ = milliseconds(config_.transport.heartbeat_interval_ms);
    liveness_ = config_.transport.heartbeat_liveness;
    const Clock::TimePoint now = clock_.Now();
    last_heard_ = now;
    hello_deadline_ = now + milliseconds(config_.transport.hello_timeout_ms);
    Send(worker_.Describe());

    const Outcome outcome = Serve();
    if (outcome == Outcome::kStop) {
      // Tell the coordinator we are leaving, then give the message a moment to go out.
      if (welcomed_) Send(wire::Bye{"client stopping"});
      socket_.SetLinger(500);
    }
    socket_ = net::Socket();  // Stops and closes its monitor too.
    switch (outcome) {
      case Outcome::kBye: CancelJobs(); return OkStatus();
      case Outcome::kStop: CancelJobs(); return Status(StatusCode::kCancelled, "stopped on request");
      case Outcome::kFatal: CancelJobs(); return fatal_;
      case Outcome::kReconnect: break;
    }
    if (welcomed_) {  // The connection worked for a while: start the backoff over.
      backoff = milliseconds(config_.transport.reconnect_min_ms);
      failures = 0;
    }
    if (!reachable_) ++failures;
    reachable_ = false;
    if (config_.transport.max_connect_attempts > 0 &&
        failures >= config_.transport.max_connect_attempts) {
      CancelJobs();
      return Unavailable("no usable connection to ", config_.coordinator, " after ", failures,
                         " attempt(s)");
    }
    LogInfo("reconnecting to ", config_.coordinator, " in ", backoff.count(), " ms");
    if (!WaitBackoff(backoff)) continue;  // Stopped: handled at the top of the loop.
    backoff = std::min(backoff * 2, milliseconds(config_.transport.reconnect_max_ms));
  }
}

bool ClientSession::Impl::WaitBackoff(milliseconds delay) {
  const Clock::TimePoint until = clock_.Now() + delay;
  while (!stop_.load(std::memory_order_acquire)) {
    const Clock::TimePoint now = clock_.Now();
    if (now >= until) return true;
    net::PollItem item;
    item.fd = wake_.read_fd();
    if (!net::Poll(std::span<net::PollItem>(&item, 1), milliseconds(MillisUntil(now, until))).ok()) {
      return true;
    }
    // Job completions also wake us; they wait in done_ until the next connection's Welcome.
    if (item.readable) wake_.Drain();
  }
  return false;
}

Outcome ClientSession::Impl::Serve() {
  wire::DecodeLimits limits;
  limits.max_message_bytes = config_.transport.max_message_bytes;
  limits.require_digests = !security_.curve();  // CURVE's MAC covers every frame.
  while (true) {
    const Clock::TimePoint now = clock_.Now();
    Clock::TimePoint next = std::min(last_sent_ + interval_, last_heard_ + interval_ * liveness_);
    if (!welcomed_) next = std::min(next, hello_deadline_);
    net::PollItem items[3];
    items[0].socket = &socket_;
    items[0].want_writable = outbound_.has_value();
    items[1].fd = wake_.read_fd();
    items[2].socket = socket_.monitor();
    const std::size_t polled = items[2].socket != nullptr ? 3 : 2;
    if (Status s = net::Poll(std::span(items, polled), milliseconds(MillisUntil(now, next)));
        !s.ok()) {
      fatal_ = s;
      return Outcome::kFatal;
    }
    if (items[1].readable) wake_.Drain();
    if (stop_.load(std::memory_order_acquire)) return Outcome::kStop;
    if (items[0].writable) PumpOutbound();
    if (polled == 3 && items[2].readable) {
      if (std::optional<Outcome> end = ReadMonitor()) return *end;
    }

    while (true) {
      Result<std::optional<net::Message>> message = socket_.Receive(milliseconds(0));
      if (!message.ok()) {
        fatal_ = message.status();
        return Outcome::kFatal;
      }
      if (!message->has_value()) break;
      Result<wire::Envelope> envelope = wire::Decode((*message)->frames(), limits);
      if (!envelope.ok()) {
        LogWarn("undecodable message from the coordinator: ", envelope.status().ToString());
        continue;
      }
      if (std::optional<Outcome> end = HandleEnvelope(std::move(envelope).value())) return *end;
    }

    if (welcomed_) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        while (!done_.empty()) {
          unsent_.push_back(std::move(done_.front()));
          done_.pop_front();
        }
      }
      while (!unsent_.empty()) {
        JobDone done = std::move(unsent_.front());
        unsent_.pop_front();
        HandleDone(std::move(done));
      }
    }

    const Clock::TimePoint after = clock_.Now();
    if (!welcomed_ && after >= hello_deadline_) {
      LogWarn("no Welcome from ", config_.coordinator, " within ",
              config_.transport.hello_timeout_ms, " ms");
      return Outcome::kReconnect;
    }
    if (after - last_heard_ >= interval_ * liveness_) {
      LogWarn("coordinator silent for ", interval_.count() * liveness_, " ms");
      return Outcome::kReconnect;
    }
    // Before the Welcome there is no session to heartbeat in (session id 0 is for Hello only).
    if (welcomed_ && after - last_sent_ >= interval_) Send(wire::Heartbeat{});
  }
}

std::optional<Outcome> ClientSession::Impl::ReadMonitor() {
  for (const net::MonitorEvent& event : socket_.TakeMonitorEvents()) {
    if (event.kind == net::MonitorEventKind::kHandshakeSucceeded) reachable_ = true;
    if (event.kind == net::MonitorEventKind::kHandshakeFailedNoDetail ||
        event.kind == net::MonitorEventKind::kHandshakeFailedProtocol) {
      LogDebug("connection to ", config_.coordinator, ": ", net::MonitorEventName(event.kind));
    }
    if (std::optional<Status> final = handshakes_->OnEvent(event)) {
      fatal_ = *final;
      return Outcome::kFatal;
    }
  }
  return std::nullopt;
}

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
    if (pending_update_ && pending_update_->round == task->round &&
        pending_update_->ticket == task->ticket) {
      ResendPendingUpload();  // Trained already; the coordinator lost it.
      return std::nullopt;
    }
    // A new task for this round (a retry with a new ticket) makes an unacknowledged upload moot.
    if (pending_update_ && pending_update_->round == task->round) pending_update_.reset();
    const std::uint64_t round = task->round;
    if (!Enqueue(std::move(*task), envelope.sequence)) {
      LogDebug("round ", round, ": task already in hand");
    }
    return std::nullopt;
  }
  if (auto* task = std::get_if<wire::EvalTask>(&envelope.body)) {
    Enqueue(std::move(*task), envelope.sequence);
    return std::nullopt;
  }
  if (const auto* ack = std::get_if<wire::Ack>(&envelope.body)) {
    if (pending_update_ && ack->round == pending_update_->round) {
      Progress("round ", ack->round, ": update acknowledged");
      pending_update_.reset();
    }
    return std::nullopt;
  }
  if (const auto* error = std::get_if<wire::Error>(&envelope.body)) {
    LogWarn("coordinator: ", wire::ErrorCodeName(error->code), ": ", error->message);
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
      default: break;
    }
    if (pending_update_ && error->ref_sequence == pending_sequence_) {
      // Chunks lost, reordered or corrupted on the way: the upload itself is fine, send it again
      // (a few times). Any other refusal of it is final.
      const bool transit = error->code == ErrorCode::kChunkMismatch ||
                           error->code == ErrorCode::kDigestMismatch;
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

void ClientSession::Impl::HandleDone(JobDone done) {
  if (!done.result.ok()) {
    if (done.result.status().code() == StatusCode::kCancelled) return;
    const Status& status = done.result.status();
    // A worker may name the precise protocol error (e.g. BASE_VERSION_MISMATCH) as detail().
    const ErrorCode code =
        status.detail() != 0 && status.detail() <= static_cast<std::uint32_t>(wire::kLastErrorCode)
            ? static_cast<ErrorCode>(status.detail())
        : status.code() == StatusCode::kInvalidArgument ? ErrorCode::kInvalidField
                                                        : ErrorCode::kInternal;
    if (code == ErrorCode::kTaskDeclined) {  // A decision, not a failure.
      LogDebug("declining round ", done.key.round, ": ", status.message());
    } else {
      LogError(done.key.fit ? "training" : "evaluation", " for round ", done.key.round,
               " failed: ", status.ToString());
    }
    Send(wire::Error{code, status.message(), done.task_sequence});
    return;
  }
  wire::Body body = std::move(done.result).value();
  if (auto* update = std::get_if<wire::Update>(&body)) {
    if (config_.faults.hold_update) {
      LogWarn("fault injection: holding update for round ", update->round, " (never sent)");
      return;
    }
    pending_update_ = *update;
    pending_sequence_ = sequence_out_ + 1;
    pending_resends_ = 0;
    Progress("round ", update->round, ": uploading update");
  }
  Send(std::move(body));
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
    LogWarn("fault injection: sending chunks 0 and 1 of ", wire::BodyName(out.envelope->body),
            " ", out.envelope->sequence, " swapped");
  }
  last_sent_ = clock_.Now();
  if (Status s = socket_.Send(out.head.frames()); !s.ok()) {
    LogWarn("send ", wire::BodyName(out.envelope->body), " failed: ", s.message());
    return;
  }
  Progress("sending ", wire::BodyName(out.envelope->body), " in ", out.head.chunked->chunk_count,
           " chunks (", out.head.chunked->total_bytes, " bytes)");
  outbound_ = std::move(out);  // Replaces (voids) a transfer still going out.
  PumpOutbound();
}

void ClientSession::Impl::PumpOutbound() {
  while (outbound_ && outbound_->next < outbound_->head.chunked->chunk_count) {
    std::uint32_t index = outbound_->next;
    if (outbound_->swap_first_two && index < 2) index = 1 - index;
    const wire::Chunk header{outbound_->envelope->sequence, index,
                             std::uint64_t{index} * outbound_->head.chunked->chunk_bytes, {}};
    const std::vector<std::span<const std::byte>> pieces = wire::ChunkPieces(outbound_->head, index);
    const wire::EncodedMessage chunk = wire::EncodeChunk(session_id_, sequence_out_ + 1, header, pieces);
    if (!socket_.Send(chunk.frames()).ok()) return;  // Queue full: Serve waits until writable.
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
  }
}

// ---- ClientSession -------------------------------------------------------------------------

ClientSession::ClientSession(ClientConfig config, Worker& worker, net::Context& context,
                             const Clock& clock)
    : impl_(std::make_unique<Impl>(std::move(config), worker, context, clock)) {}
ClientSession::~ClientSession() = default;
Status ClientSession::Run() { return impl_->Run(); }
void ClientSession::Stop() { impl_->Stop(); }

}  // namespace fedlora::client
