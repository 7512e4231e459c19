// coordinator_uploads.cc — what the coordinator does with what selected clients send back: an
// Update passes the round's gate (round_state.h), the pure checks (admission.h), the strategy's
// check, norm bounding (robust/update_norm.h), is folded into the round's accumulator, persisted
// and only then acknowledged; an EvalResult is checked and recorded for the metrics. Also the
// re-folding of persisted uploads (after a restart, or once one was taken out). Runs on the
// coordinator's loop thread (see coordinator_impl.h).
#include <algorithm>

#include "common/log.h"
#include "server/admission.h"
#include "server/coordinator_impl.h"
#include "server/robust/update_norm.h"

namespace fedlora::server {
namespace {

using wire::ErrorCode;

// A strategy's or accumulator's refusal as the refusal the client gets: INVALID_FIELD unless it
// names its own error code.
Status AsRefusal(const Status& s) {
  return s.code() == StatusCode::kInvalidArgument && s.detail() != 0
             ? s
             : Status(StatusCode::kInvalidArgument, s.message(),
                      static_cast<std::uint32_t>(ErrorCode::kInvalidField));
}

}  // namespace

void Coordinator::Impl::HandleUpdate(ClientConnection& client, std::uint64_t sequence,
                                     wire::Update update, std::size_t bytes) {
  const std::string who = StrCat("update from ", client.id);
  // Refused at the round's gate (stale round, not selected, another task's ticket): the
  // client's real task, if any, stands.
  Result<UploadGate> gate = round_.AdmitUpload(client.id, update.round, update.ticket);
  if (!gate.ok()) {
    ProtocolError(who, client.route, sequence, wire::DecodeErrorCode(gate.status()),
                  gate.status().message());
    return;
  }
  if (*gate == UploadGate::kResend) {
    Send(client, wire::Ack{update.round, sequence});
    return;
  }
  const std::uint64_t round = round_.run().round;
  const ClientTask& task = round_.run().tasks.at(client.id);
  // Refused for what it holds: its task fails.
  const auto reject = [&](const Status& why) {
    Count([](CoordinatorCounters& c) { ++c.updates_rejected; });
    ProtocolError(who, client.route, sequence, wire::DecodeErrorCode(why), why.message());
    round_.OnUploadRefused(client.id);
    // A masked vector refused for its shape: its sender counts as dropped at once.
    if (secagg_ && secagg_->active()) secagg_->Exclude(client.id, why.message());
  };
  const std::uint64_t max_examples = config_.strategy.max_examples_per_client;
  if (Status valid = ValidateUpload(update, task, max_examples); !valid.ok()) {
    reject(valid);
    return;
  }
  if (const auto sent = round_.run().sent_base.find(client.id);
      sent != round_.run().sent_base.end() && sent->second != update.base_version) {
    reject(Refusal(ErrorCode::kBaseVersionMismatch, "trained on base version ", update.base_version,
                   ", the task set ", sent->second));
    return;
  }
  if (SecureOn() && round_.phase() == RoundPhase::kFit) {  // A masked vector, checked above.
    HandleMaskedInput(client, sequence, std::move(update), bytes);
    return;
  }
  // One client's declared example count cannot buy it the whole weighted average.
  if (update.num_examples > max_examples) {
    LogWarn("round ", round, ": client ", client.id, " declares ", update.num_examples,
            " training examples; weighting counts ", max_examples,
            " (strategy.max_examples_per_client)");
    round_.OnExamplesCapped(client.id, update.num_examples);
  }
  ClientUpdate accepted{client.id, update.num_samples, std::min(update.num_examples, max_examples),
                        std::move(update.metrics), std::move(update.tensors)};
  if (Status valid = strategy_->ValidateUpdate(task, accepted); !valid.ok()) {
    reject(valid);
    return;
  }
  if (round_.phase() == RoundPhase::kInit) {
    if (Status s = strategy_->client_initialization()->AcceptInit(*state_, accepted); !s.ok()) {
      round_.OnInitFailed(client.id);
      reject(AsRefusal(s));
      return;
    }
    client.cached.insert(task.caches.begin(), task.caches.end());
    Send(client, wire::Ack{round, sequence});
    LogInfo(strategy_->name(), " initialised from client ", client.id, "'s data");
    round_.Reset();  // Back to kWaiting: the first round starts from the initialised state.
    return;
  }
  Result<ClientTask> full_task = DeriveTask(client.id);  // With the tensors it was sent.
  if (!full_task.ok()) {
    SendError(client.route, sequence, ErrorCode::kInternal, "coordinator could not check it");
    Fatal(full_task.status().WithContext(StrCat("deriving the task of client ", client.id)));
    return;
  }
  // Differential privacy: the client clipped its change, or the upload is refused (never
  // clipped here, which would hide a client that ignores the clip).
  if (PrivacyOn()) {
    if (Status s = CheckPrivateUpload(accepted, *full_task); !s.ok()) {
      LogWarn("round ", round, ": refusing the upload of client ", client.id, ": ", s.message());
      reject(s);
      return;
    }
  }
  // Norm bounding: how far this upload moves the model is capped, whatever it claims.
  const double norm = UpdateNorm(accepted, *full_task);
  if (const double bound = config_.robust.norm_bound; bound > 0 && norm > bound) {
    if (config_.robust.norm_action == "reject") {
      LogWarn("round ", round, ": refusing the upload of client ", client.id,
              ": its change has L2 norm ", norm, ", above robust.norm_bound ", bound);
      round_.OnNormRejected(client.id, norm);
      reject(Refusal(ErrorCode::kUpdateNormExceeded, "the upload's change has L2 norm ", norm,
                     ", above the coordinator's bound ", bound));
      return;
    }
    LogWarn("round ", round, ": clipping the upload of client ", client.id,
            ": its change has L2 norm ", norm, ", scaled down to robust.norm_bound ", bound);
    ScaleChange(accepted, *full_task, bound / norm);
    round_.OnNormClipped(client.id, norm);
  }
  // Folded before it is persisted and acknowledged: an upload the accumulator cannot take (a
  // value beyond its range, tensors unlike the round's others) is refused, and nothing of it
  // stays. A crash after the fold loses only memory; the restart folds the persisted files.
  if (Status s = round_.Fold(accepted, *full_task); !s.ok()) {
    LogWarn("round ", round, ": refusing the upload of client ", client.id, ": ", s.message());
    reject(AsRefusal(s));
    return;
  }
  if (Status s = store_->PersistUpdate(
          round, PendingUpload{accepted, client.hello.capabilities, client.plan});
      !s.ok()) {
    SendError(client.route, sequence, ErrorCode::kInternal, "coordinator could not persist");
    Fatal(s.WithContext("persisting an accepted upload"));
    return;
  }
  client.cached.insert(task.caches.begin(), task.caches.end());
  round_.OnUploadAccepted(std::move(accepted), norm, bytes);  // Keeps the counts, not tensors.
  Count([](CoordinatorCounters& c) { ++c.updates_accepted; });
  Send(client, wire::Ack{round, sequence});
  LogDebug("round ", round, ": update from ", client.id, " accepted (",
           round_.run().accepted.size(), "/", round_.run().want, ")");
}

void Coordinator::Impl::HandleEvalResult(ClientConnection& client, std::uint64_t sequence,
                                         wire::EvalResult result, std::size_t bytes) {
  const std::string who = StrCat("eval result from ", client.id);
  const auto refuse = [&](const Status& why) {
    ProtocolError(who, client.route, sequence, wire::DecodeErrorCode(why), why.message());
  };
  if (Status s = round_.AdmitEvalResult(client.id, result.round, result.ticket); !s.ok()) {
    refuse(s);
    return;
  }
  if (Status s = CheckEvalResult(result); !s.ok()) {
    refuse(s);
    round_.OnEvalAnswered(client.id);  // Not asked again: the round goes on without it.
    return;
  }
  round_.OnEvalAnswered(client.id);
  const RoundRun& run = round_.run();
  if (const auto sent = run.eval_sent_base.find(client.id);
      sent != run.eval_sent_base.end() && sent->second != result.base_version) {
    refuse(Refusal(ErrorCode::kBaseVersionMismatch, "evaluated on base version ",
                   result.base_version, ", the task set ", sent->second));
    return;
  }
  if (const auto caches = run.eval_caches.find(client.id); caches != run.eval_caches.end()) {
    client.cached.insert(caches->second.begin(), caches->second.end());
  }
  round_.OnEvalResult(client.id, std::move(result), bytes);
}

bool Coordinator::Impl::RestorePendingUploads() {
  // Uploads accepted before a restart count: their clients are not asked again. Their tasks are
  // re-derived (Configure is a pure function of the state, the round and the client) and they
  // are folded again, one file at a time; the exact accumulator makes the order irrelevant.
  const std::uint64_t round = round_.run().round;
  Result<std::vector<std::string>> pending = store_->PendingClients(round);
  if (!pending.ok()) {
    Fatal(pending.status());
    return false;
  }
  if (PrivacyOn() && !pending->empty()) {
    // The round was sampled again: an upload of the earlier sample would give its client a
    // second chance to be in the round, more than the accountant's rate q. Nothing of it was
    // released.
    LogInfo("round ", round, ": discarding ", pending->size(), " upload(s) persisted before the ",
            "restart: a private round aggregates only its own Poisson sample");
    for (const std::string& id : *pending) {
      if (Status s = store_->DropPendingUpload(round, id); !s.ok()) {
        Fatal(s);
        return false;
      }
    }
    return true;
  }
  for (const std::string& id : *pending) {
    Result<PendingUpload> p = store_->LoadPendingUpload(round, id);
    if (!p.ok()) {
      LogWarn("round ", round,
              ": ignoring a restored upload (its client is asked again): ", p.status().message());
      continue;
    }
    ClientUpdate& u = p->update;
    const ClientInfo info{u.client_id, p->capabilities, p->plan, {}};
    Result<std::vector<ClientTask>> tasks =
        strategy_->Configure(*state_, round, std::span<const ClientInfo>(&info, 1));
    if (!tasks.ok()) {
      Fatal(tasks.status());
      return false;
    }
    wire::Update as_wire;
    as_wire.round = round;
    as_wire.num_samples = u.num_samples;
    as_wire.num_examples = u.num_examples;
    as_wire.metrics = u.metrics;
    as_wire.tensors = u.tensors;
    Status valid =
        ValidateUpload(as_wire, tasks->front(), config_.strategy.max_examples_per_client);
    if (valid.ok()) valid = strategy_->ValidateUpdate(tasks->front(), u);
    if (valid.ok()) valid = round_.Fold(u, tasks->front());
    if (!valid.ok()) {
      LogWarn("round ", round, ": dropping restored upload of ", u.client_id, ": ",
              valid.message());
      continue;
    }
    // Clipped (if at all) before it was persisted; its norm is recorded for the metrics.
    const double norm = UpdateNorm(u, tasks->front());
    round_.RestoreUpload(std::move(tasks->front()), info, std::move(u), norm);
  }
  if (!round_.run().accepted.empty()) {
    LogInfo("round ", round, ": restored ", round_.run().accepted.size(),
            " accepted upload(s) persisted before the restart");
  }
  return true;
}

bool Coordinator::Impl::RebuildAccumulator() {
  const RoundRun& run = round_.run();
  Result<std::unique_ptr<RoundAccumulator>> fresh = BeginAccumulator(run.round);
  Status s = fresh.status();
  for (const auto& [id, counts] : run.accepted) {
    if (!s.ok()) break;
    Result<PendingUpload> p = store_->LoadPendingUpload(run.round, id);
    Result<ClientTask> task = DeriveTask(id);
    s = !p.ok() ? p.status() : !task.ok() ? task.status() : (*fresh)->Fold(p->update, *task);
  }
  if (!s.ok()) {
    Fatal(s.WithContext(StrCat("folding the accepted uploads of round ", run.round, " again")));
    return false;
  }
  round_.ReplaceAccumulator(std::move(fresh).value());
  return true;
}

}  // namespace fedlora::server
