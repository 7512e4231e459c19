// coordinator_impl.h — private to server/: the coordinator's parts, shared by coordinator.cc
// (start-up, the event loop, routing each message to its handler, sessions and Hello),
// coordinator_uploads.cc (Update and EvalResult: checked, folded, persisted, acknowledged),
// coordinator_chunks.cc (chunked transfer: uploads arriving in chunks, tasks sent in chunks),
// coordinator_rounds.cc (driving the round state machine: selection, tasks, aggregation,
// evaluation, commit) and coordinator_security.cc (keys, revocation, tickets).
//
// The pure parts live elsewhere: admission.h (checks of Hello, Update, EvalResult), round_state.h
// (the round's phases and record), round_report.h (its metrics and summary), peft_export.h.
//
// Threading: everything here is owned by the thread running Coordinator::Run(), except the
// atomics and the mutex-guarded counters that Stop(), Wake() and counters() touch.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/net/zmq_transport.h"
#include "common/ops/ops_server.h"
#include "common/wire/chunk_assembler.h"
#include "common/wire/codec.h"
#include "server/checkpoint_store.h"
#include "server/client_registry.h"
#include "server/coordinator.h"
#include "server/privacy_ledger.h"
#include "server/private_sum.h"
#include "server/round_metrics.h"
#include "server/round_state.h"
#include "server/secagg_attempt.h"
#include "server/transport_security.h"

namespace fedlora::server {

class Coordinator::Impl {
 public:
  Impl(CoordinatorConfig config, std::unique_ptr<Strategy> strategy, net::Context& context,
       const Clock& clock)
      : config_(std::move(config)),
        strategy_(std::move(strategy)),
        context_(context),
        clock_(clock),
        round_(RoundRulesOf(config_), std::chrono::milliseconds(config_.eval.timeout_ms)) {
    limits_.max_message_bytes = config_.transport.max_message_bytes;
  }
  // Frees the endpoint before the socket closes: a coordinator restarted in the same process (an
  // inproc name) binds it again at once instead of racing ZeroMQ's reaper thread.
  ~Impl() {
    if (router_.valid() && !endpoint_.empty()) (void)router_.Unbind(endpoint_);
  }

  Status Start();
  Status Run();
  void Stop() {
    stop_.store(true, std::memory_order_release);
    wake_.Notify();
  }
  void Wake() { wake_.Notify(); }
  void Reload() {
    reload_requested_.store(true, std::memory_order_release);
    wake_.Notify();
  }
  void SetRoundAnnotator(RoundAnnotator annotator) { annotator_ = std::move(annotator); }
  void SetRoundGate(Coordinator::RoundGate gate) { round_gate_ = std::move(gate); }
  void SetInboundObserver(InboundObserver observer) { observer_ = std::move(observer); }
  std::string endpoint() const { return endpoint_; }
  std::optional<crypto::CurvePublicKey> public_key() const {
    if (!security_ || !security_->curve()) return std::nullopt;
    return security_->public_key();
  }
  CoordinatorCounters counters() const {
    std::lock_guard<std::mutex> lock(counters_mu_);
    CoordinatorCounters c = counters_;
    if (security_) c.handshakes_denied = security_->handshakes_denied();  // Set before Run().
    return c;
  }
  // Where the round is now: asks the loop to publish it (waiting up to a couple of seconds),
  // or, while the loop is not running, what it published last. Any thread.
  CoordinatorStatus status();
  std::string ops_url() const { return ops_ ? ops_->url() : std::string(); }

 private:
  // ---- messaging (coordinator.cc; HandleUpdate, HandleEvalResult: coordinator_uploads.cc) ----
  void HandleMessage(const net::Message& message);
  void HandleHello(const std::string& route, const std::string& user_id,
                   const wire::Envelope& envelope);
  void HandleUpdate(ClientConnection& client, std::uint64_t sequence, wire::Update update,
                    std::size_t bytes);
  void HandleEvalResult(ClientConnection& client, std::uint64_t sequence, wire::EvalResult result,
                        std::size_t bytes);
  std::size_t Send(ClientConnection& client, wire::Body body);

  // ---- chunked transfer (coordinator_chunks.cc) ----
  // The head or a chunk of a client's chunked upload: the head is checked (the round's gate, the
  // tensors against the task) before a byte is stored, chunks are spooled to the state
  // directory, and the whole upload goes to HandleUpdate once its last chunk arrived. Any chunk
  // out of place voids the transfer (CHUNK_MISMATCH naming the tensor and offset; the client
  // sends the upload again) and leaves nothing behind.
  void HandleChunked(ClientConnection& client, wire::Envelope envelope, std::size_t bytes);
  // Discards the partial uploads whose round or task is no longer open (the round moved on
  // while they were arriving), telling their clients why: no spool outlives its round.
  void DropStaleInbound();
  // Discards `id`'s partial upload, if any (its connection ended, or a newer one replaced it).
  void DropInbound(const std::string& id, std::string_view why);
  // The client could not assemble the task (or evaluation task) it was sent as message
  // `ref_sequence`: sends it again, at most kMaxTaskResends times per client and round. False
  // when that is not the open task, or the resends are spent (it then counts as refused).
  bool ResendTask(ClientConnection& client, std::uint64_t ref_sequence);
  // Sends a message whose tensors exceed transport.chunk_bytes as a head and its chunks.
  std::size_t SendChunked(ClientConnection& client, wire::Envelope envelope);
  void SendError(const std::string& route, std::uint64_t ref_sequence, wire::ErrorCode code,
                 const std::string& message);
  // To a peer without a session (session id 0).
  void SendAnonymous(const std::string& route, wire::Body body);
  void ProtocolError(const std::string& who, const std::string& route, std::uint64_t ref_sequence,
                     wire::ErrorCode code, const std::string& message);

  // ---- secure aggregation (coordinator_secagg.cc) ----
  // FailedPrecondition at start when secure aggregation is on and the strategy is not linear.
  Status CheckSecureStrategy() const;
  bool SecureOn() const { return config_.secure_aggregation.enabled; }
  // A secure attempt: configures every chosen client's task, derives the summed layout from
  // them, opens the SecAgg attempt and sends the tasks (each asking for a masked vector).
  void StartSecureAttempt(const std::vector<std::string>& chosen, std::uint32_t attempt);
  // A client's keys, shares or reveal; refusals exclude it from the attempt.
  void HandleSecAgg(ClientConnection& client, std::uint64_t sequence, const wire::SecAgg& message,
                    std::size_t bytes);
  // An Update that passed the round's gate and the upload checks, in a secure round.
  void HandleMaskedInput(ClientConnection& client, std::uint64_t sequence, wire::Update update,
                         std::size_t bytes);
  // Sends what the attempt's stages owe; a finished attempt's survivors count as accepted (the
  // others fail), a failed attempt fails every client still owed.
  void StepSecAgg();
  // The strategy's aggregate of the secure sum, with the protocol's numbers in its metrics.
  Result<AggregateReport> FinishSecureRound(GlobalState& candidate);
  // A revoked client's input is in the secure sum: the sum is discarded and the round retried.
  void DiscardSecureSum(const std::string& revoked);

  // ---- differential privacy (coordinator_privacy.cc) ----
  bool PrivacyOn() const { return ledger_.has_value(); }
  // A private round has no quorum: it aggregates what its Poisson sample sent by the deadline
  // (re-selecting would change the sampling the accountant assumes).
  static RoundConfig RoundRulesOf(const CoordinatorConfig& config) {
    RoundConfig rules = config.round;
    if (config.privacy.enabled) {
      rules.quorum = 0;
      rules.quorum_fraction = 0;
    }
    return rules;
  }
  // At start, once the checkpoint is loaded: checks that the strategy and the rest of the
  // configuration allow DP, builds the ledger from what the state directory recorded, and
  // refuses a run whose first round alone would exceed the budget.
  Status StartPrivacy(const std::optional<Checkpoint>& latest);
  // Whether round `round` may be released within the budget; if not, ends the run saying why.
  bool PrivacyAllowsRound(std::uint64_t round);
  // Samples round `round` (each live eligible client with probability q) and begins its
  // private accumulator.
  Result<std::unique_ptr<RoundAccumulator>> BeginPrivateRound(std::uint64_t round);
  // A fresh private accumulator for the sampled round (also when it is rebuilt).
  Result<std::unique_ptr<RoundAccumulator>> MakePrivateRoundAccumulator(std::uint64_t round);
  // PRIVACY_MISMATCH when the upload's change is above the clip (its client did not clip).
  Status CheckPrivateUpload(const ClientUpdate& update, const ClientTask& task) const;
  // The round's aggregate exists and is about to leave the coordinator (evaluation tasks, the
  // commit): it is spent. Persists the ledger first; false after a fatal error.
  bool RecordPrivateRelease();
  wire::PrivacyParams PrivacyParamsForTask() const;
  std::optional<RoundPrivacy> PrivacyMetrics() const;
  // Distributed DP (privacy with secure aggregation): t, the clients whose noise shares make up
  // a round's noise and the fewest inputs a secure sum is released with; 0 without.
  std::uint32_t NoiseShareClients() const {
    return PrivacyOn() && SecureOn() ? config_.privacy.min_clients : 0;
  }

  // ---- timers and membership ----
  void OnTick();
  std::chrono::milliseconds NextWait() const;
  // Forgets client `id`, with a warning saying `why` (an info line when `between_rounds`: a
  // client that said bye while the coordinator waits between rounds leaves nothing undone).
  void OnClientGone(const std::string& id, std::string_view why, bool between_rounds = false);

  // ---- transport security (coordinator_security.cc) ----
  // CURVE: OK when the connection's key (`user_id`) may speak: a stranger's key is enrolled
  // under some name (Hello checks which), a client's is its session's key (sessions of keys the
  // enrolment list no longer binds to their name are revoked on reload). Otherwise refuses the
  // message (NOT_AUTHORIZED), closes a client's session, and returns false.
  bool CheckSender(const std::string& route, const std::string& user_id, ClientConnection* client,
                   std::uint64_t sequence);
  // Reloads the enrolment list when asked (SIGHUP) or when the file changed, and revokes the
  // sessions whose key it no longer binds to their name.
  void ReloadKeys();
  // Closes `id`'s session and takes its accepted upload of the open round out of aggregation.
  void Revoke(const std::string& id, const std::string& why);
  // Makes a fresh ticket (random nonce) for a task of `attempt`.
  static wire::TaskTicket NewTicket(std::uint32_t attempt);

  // ---- rounds (coordinator_rounds.cc) ----
  // Steps the round state machine: starts what is due in kWaiting, checks the timers of the
  // other phases and acts on what the round needs next.
  void Advance();
  std::vector<std::string> Select(std::vector<std::string> candidates, std::size_t want,
                                  std::uint64_t round, std::uint32_t attempt) const;
  std::uint32_t WantedClients(std::size_t live) const;
  bool Eligible(const ClientConnection& client) const;
  // Live eligible clients without an accepted upload this round.
  std::size_t RetryCandidates() const;
  // Updates needed to aggregate, from the clients that can still answer (RoundState::Quorum).
  std::uint32_t Quorum() const;
  void StartInit();
  void StartFit(std::uint64_t round);
  void StartAttempt();
  void CheckFit();
  void Aggregate();
  // The full task of `id` this round (with its tensors), derived again from the state and the
  // ClientInfo it was configured from: Configure is a pure function of them.
  Result<ClientTask> DeriveTask(const std::string& id) const;
  // The round's accumulator: the strategy's, or the private one.
  Result<std::unique_ptr<RoundAccumulator>> BeginAccumulator(std::uint64_t round);
  void StartEval(const std::vector<std::string>& clients);
  // The round's metrics line, checkpoint, metrics.jsonl append and PEFT export; -> kWaiting.
  void Commit();
  // Ends the run: every client gets Bye with `why` (default: all rounds done).
  void Finish(std::string why = {});
  void SendTask(const std::string& id);
  void SendEvalTask(const std::string& id);
  ClientInfo InfoOf(const ClientConnection& client) const;

  // ---- uploads and evaluation results (coordinator_uploads.cc) ----
  // Folds again the uploads of the round just begun that were accepted before a restart (the
  // pending files). False after a fatal error.
  bool RestorePendingUploads();
  // A fresh accumulator with every accepted upload of the round folded again from the pending
  // files (once an upload was taken out, or after the aggregate was discarded). Fatal on error.
  bool RebuildAccumulator();
  void Fatal(Status status) {
    if (fatal_.ok()) fatal_ = std::move(status);
  }
  template <typename F>
  void Count(F&& f) {
    std::lock_guard<std::mutex> lock(counters_mu_);
    f(counters_);
  }

  CoordinatorConfig config_;
  std::unique_ptr<Strategy> strategy_;
  net::Context& context_;
  const Clock& clock_;
  RoundAnnotator annotator_;  // Optional (SetRoundAnnotator).
  Coordinator::RoundGate round_gate_;  // Optional (SetRoundGate).
  InboundObserver observer_;  // Optional (SetInboundObserver).
  bool gathered_ = false;     // round.wait_for_clients was met once.
  wire::DecodeLimits limits_;
  wire::EncodeOptions encode_;  // CURVE: no per-frame SHA-256 (the MAC covers every byte).

  std::unique_ptr<TransportSecurity> security_;
  net::Socket router_;
  net::WakePipe wake_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> reload_requested_{false};
  Clock::TimePoint last_key_check_{};
  Clock::TimePoint caught_up_{};  // When the loop last read every queued message.
  // Counted since the previous commit, for its metrics line (RoundMetrics::refusals & co.).
  std::map<std::string, std::uint32_t, std::less<>> refusals_;
  std::map<std::string, std::uint32_t, std::less<>> task_refusals_;  // Errors clients sent.
  std::uint32_t revoked_since_commit_ = 0;
  std::uint32_t dropped_since_commit_ = 0;
  std::uint64_t denied_at_commit_ = 0;
  std::string endpoint_;
  Status fatal_;

  std::optional<CheckpointStore> store_;
  ClientRegistry clients_;
  std::optional<ModelLayout> layout_;
  std::optional<GlobalState> state_;
  std::optional<std::uint64_t> committed_;
  RoundState round_;  // The round in progress: phase, record, accumulator.
  // Chunked uploads arriving, by client id (at most one each), and the last transfer of each
  // client that was refused or voided, whose chunks still in flight are dropped without reply.
  struct InboundUpload {
    wire::ChunkAssembler assembler;
    std::size_t bytes = 0;  // Received so far, head included.
  };
  std::map<std::string, InboundUpload, std::less<>> inbound_;
  std::map<std::string, std::uint64_t, std::less<>> void_transfers_;
  // Tasks sent again after CHUNK_MISMATCH: client id -> (round, count).
  std::map<std::string, std::pair<std::uint64_t, std::uint32_t>, std::less<>> task_resends_;
  // The bytes of the last chunked task's tensors, by name, shared by every client's chunks that
  // carry the same bytes (SendChunked); ZeroMQ holds references while chunks are queued.
  std::map<std::string, std::shared_ptr<const std::vector<std::byte>>, std::less<>> task_tensors_;
  // Secure aggregation: the attempt in progress (or just ended), its unmasked sum once done,
  // and the counts and metrics (never the vectors) of the masked inputs received.
  std::optional<SecAggAttempt> secagg_;
  std::optional<secagg::SecureSum> secure_sum_;
  bool secagg_settled_ = false;  // The ended attempt's outcome was applied to the round.
  std::map<std::string, std::pair<ClientUpdate, std::uint64_t>, std::less<>> secagg_inputs_;
  // Differential privacy: the run's ledger (set when privacy.enabled), and the open round's
  // Poisson sample and fold counts.
  std::optional<PrivacyLedger> ledger_;
  struct PrivateRound {
    std::uint64_t round = 0;
    std::vector<std::string> sampled;
    std::uint32_t population = 0;
    double denominator = 1;
    double clip = 0;                    // This round's C (the tasks carry it).
    double epsilon = 0;                 // Spent once this round is released...
    double clip_next = 0;               // ...and the next round's C.
    std::optional<double> within_clip;  // Adaptive clipping: the noised share within C.
    // Distributed DP: the inputs in the released secure sum (0: none; the round's noise was
    // then added here, on no change at all).
    std::uint32_t secure_inputs = 0;
  };
  std::optional<PrivateRound> private_round_;
  PrivateRoundTally private_tally_;
  std::uint64_t anonymous_sequence_ = 0;
  Clock::TimePoint last_wait_log_{};
  Clock::TimePoint last_progress_log_{};  // Of the fit phase (LogRoundProgress).
  // Every 10 s of a fit phase: updates in, clients training and failed, time to the deadline.
  void LogRoundProgress(Clock::TimePoint now);
  // After the last round: until then (wall time), a client still heard from is sent Bye again, in
  // case the first one was lost with the connection; Run returns earlier once every client has
  // answered with its own Bye. Not a round timer, so not on the injected clock.
  std::chrono::steady_clock::time_point farewell_until_{};

  Status Loop();  // Run()'s loop.

  // ---- ops (coordinator_ops.cc): /metrics, /status, /healthz, /readyz ----
  // Starts the endpoint when ops.listen is set (from Start()).
  Status StartOps();
  // Copies where the round is into status_ and wakes whoever waits for it (loop thread).
  void PublishStatus();
  std::string MetricsText();
  std::string StatusJson();
  Status Healthy() const;
  Status Ready();

  std::atomic<bool> status_wanted_{false};  // An ops thread waits for a fresh status_.
  // The loop's last turn (steady clock, ns since epoch), for /healthz; 0 before Run().
  std::atomic<std::int64_t> loop_turned_ns_{0};
  std::atomic<bool> running_{false};

  mutable std::mutex counters_mu_;
  CoordinatorCounters counters_;  // Guarded by counters_mu_.
  CoordinatorStatus status_;      // Guarded by counters_mu_...
  std::uint64_t status_generation_ = 0;  // ...bumped at each publish.
  std::condition_variable status_published_;
  // Null without ops.listen. Declared last: destroyed (its threads stopped) first.
  std::unique_ptr<ops::OpsServer> ops_;
};

}  // namespace fedlora::server
