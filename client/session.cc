// session.cc — the client session's job thread, its connection loop (connect, Hello, poll,
// heartbeats, liveness, reconnect with backoff) and what it does with finished jobs. Messages
// from the coordinator and sending are session_messages.cc's.
#include <algorithm>

#include "client/session_impl.h"
#include "common/privacy/update_change.h"

namespace fedlora::client {
namespace {

using std::chrono::milliseconds;
using wire::ErrorCode;
using namespace session_internal;

}  // namespace

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
      if (update.ok() && task->privacy) ClipForPrivacy(*task, *update);
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

void ClientSession::Impl::ClipForPrivacy(const wire::RoundTask& task, wire::Update& update) {
  const privacy::ClipOutcome clip =
      privacy::ClipChange(update.tensors, task.tensors, task.privacy->clip);
  // Adaptive clipping: one bit per client, which the coordinator sums under noise.
  if (task.privacy->adaptive_clip) {
    update.metrics[std::string(wire::kWithinClipMetric)] = clip.clipped ? 0.0 : 1.0;
  }
  // The norm itself stays here: it is a fact about this client's data.
  LogDebug("round ", task.round, ": the update's change has L2 norm ", clip.norm,
           clip.clipped ? StrCat("; clipped to ", task.privacy->clip) : std::string());
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
    Count([](ClientSessionCounters& c) { c.connected = false; });
    if (outcome == Outcome::kStop) {
      // Tell the coordinator we are leaving, then give the message a moment to go out.
      if (welcomed_) Send(wire::Bye{"client stopping"});
      socket_.SetLinger(500);
    }
    socket_ = net::Socket();  // Stops and closes its monitor too.
    switch (outcome) {
      case Outcome::kBye:
        CancelJobs();
        return OkStatus();
      case Outcome::kStop:
        CancelJobs();
        return Status(StatusCode::kCancelled, "stopped on request");
      case Outcome::kFatal:
        CancelJobs();
        return fatal_;
      case Outcome::kReconnect:
        break;
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
    if (!net::Poll(std::span<net::PollItem>(&item, 1), milliseconds(MillisUntil(now, until)))
             .ok()) {
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
      Count([&](ClientSessionCounters& c) {
        ++c.messages_in;
        c.bytes_in += (*message)->total_bytes();
      });
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
    Count([&](ClientSessionCounters& c) {
      ++(code == ErrorCode::kTaskDeclined ? c.tasks_declined : c.tasks_failed);
    });
    if (code == ErrorCode::kTaskDeclined) {  // A decision, not a failure.
      LogDebug("declining round ", done.key.round, ": ", status.message());
    } else {
      LogError(done.key.fit ? "training" : "evaluation", " for round ", done.key.round,
               " failed: ", status.ToString());
    }
    Send(wire::Error{code, status.message(), done.task_sequence});
    if (secure_ && done.key.fit && secure_->round == done.key.round &&
        secure_->ticket == done.key.ticket) {
      secure_.reset();  // Out of the attempt: nothing more to share or reveal.
    }
    return;
  }
  wire::Body body = std::move(done.result).value();
  if (auto* update = std::get_if<wire::Update>(&body)) {
    if (config_.faults.hold_update) {
      LogWarn("fault injection: holding update for round ", update->round, " (never sent)");
      return;
    }
    if (secure_ && secure_->round == update->round && secure_->ticket == update->ticket) {
      UploadSecure(std::move(*update));
      return;
    }
    if (std::find(secure_nonces_.begin(), secure_nonces_.end(), update->ticket.nonce) !=
        secure_nonces_.end()) {  // Its attempt is over: the update is dropped, never sent plain.
      LogWarn("round ", update->round, ": dropping an update trained for a secure-aggregation ",
              "attempt that is over (it is never sent unmasked)");
      return;
    }
    Progress("round ", update->round, ": uploading update");
    Count([&](ClientSessionCounters& c) {
      ++c.updates_sent;
      if (const auto it = update->metrics.find("train_loss"); it != update->metrics.end()) {
        c.last_train_loss = it->second;
      }
    });
    SendPendingUpdate(std::move(*update));
    return;
  }
  if (std::holds_alternative<wire::EvalResult>(body)) {
    Count([](ClientSessionCounters& c) { ++c.evaluations; });
  }
  Send(std::move(body));
}

void ClientSession::Impl::SendPendingUpdate(wire::Update update) {
  pending_update_ = update;
  pending_sequence_ = sequence_out_ + 1;
  pending_resends_ = 0;
  Send(std::move(update));
}

// ---- ClientSession -------------------------------------------------------------------------

ClientSession::ClientSession(ClientConfig config, Worker& worker, net::Context& context,
                             const Clock& clock)
    : impl_(std::make_unique<Impl>(std::move(config), worker, context, clock)) {}
ClientSession::~ClientSession() = default;
Status ClientSession::Run() { return impl_->Run(); }
void ClientSession::Stop() { impl_->Stop(); }
ClientSessionCounters ClientSession::counters() const { return impl_->counters(); }

}  // namespace fedlora::client
