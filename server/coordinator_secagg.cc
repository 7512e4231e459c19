// coordinator_secagg.cc — secure aggregation in the round (issue 13; secagg_attempt.h holds the
// protocol): a secure attempt's tasks and their summed layout, the clients' SecAgg messages and
// masked inputs, the stages' outgoing messages, and what a finished or failed attempt means for
// the round. The strategy only ever receives the sum (Strategy::FinishSecure); no individual
// upload is decoded, kept or persisted. A coordinator restarted mid-protocol starts the round's
// protocol again (nothing of an attempt is persisted). Runs on the coordinator's loop thread.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/log.h"
#include "server/admission.h"
#include "server/coordinator_impl.h"

namespace fedlora::server {
namespace {

using wire::ErrorCode;

constexpr std::string_view kClippedMetric = "secagg_clipped";

// Hello's example count is measured at the client's own window length, the upload's at the
// task's: an upload may count several times more. Weights are measured against this many times
// the largest declared count (at most max_examples_per_client); a count above it is clipped, and
// counted, by its client.
constexpr double kExampleHeadroom = 16;

// The count a weight is measured against: the largest any selected client can report (samples:
// exactly, from the task; examples: with kExampleHeadroom), so every weight lies in [0, 1].
double WeightScale(wire::SecAggWeighting weighting, const std::vector<ClientTask>& tasks,
                   const std::vector<ClientInfo>& infos, std::uint64_t max_examples) {
  double scale = 1.0;
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    const std::uint64_t examples =
        std::min<std::uint64_t>(infos[k].capabilities.num_examples, max_examples);
    switch (weighting) {
      case wire::SecAggWeighting::kExamples:
        scale = std::max(scale, std::min(static_cast<double>(examples) * kExampleHeadroom,
                                         static_cast<double>(max_examples)));
        break;
      case wire::SecAggWeighting::kSamples:  // The upload check's own limit (admission.h).
        scale = std::max(scale, static_cast<double>(SamplesLimit(tasks[k].train, examples)));
        break;
      case wire::SecAggWeighting::kUniform:
        break;
    }
  }
  return scale;
}

}  // namespace

Status Coordinator::Impl::CheckSecureStrategy() const {
  if (!config_.secure_aggregation.enabled) return OkStatus();
  if (!strategy_->secure_spec()) {
    return FailedPrecondition(
        "secure_aggregation needs a strategy whose aggregate is a weighted sum of the uploads, ",
        "and '", strategy_->name(), "' with this configuration is not one: fedex, flora and ",
        "lorafair need per-client products, hetlora's sparsity weighting per-client norms, and ",
        "a robust.rule or strategy.max_weight_share every upload at once. These work: fedavg, ",
        "ffa, fedsvd, fedsa, fedsb, fslora, and hetlora with weighting examples, samples or "
        "uniform ",
        "(robust.rule mean, no max_weight_share)");
  }
  return OkStatus();
}

void Coordinator::Impl::StartSecureAttempt(const std::vector<std::string>& chosen,
                                           std::uint32_t attempt) {
  const RoundRun& run = round_.run();
  secagg_.reset();
  secure_sum_.reset();
  secagg_inputs_.clear();
  secagg_settled_ = false;
  // Every task first (without tensors): the summed layout is the union of what they ask for.
  std::vector<ClientTask> tasks;
  std::vector<ClientInfo> infos;
  for (const std::string& id : chosen) {
    ClientInfo info = InfoOf(*clients_.FindById(id));
    Result<std::vector<ClientTask>> configured =
        strategy_->Configure(*state_, run.round, std::span<const ClientInfo>(&info, 1));
    if (!configured.ok() || configured->size() != 1) {
      Fatal(configured.ok() ? Internal(strategy_->name(), ": Configure gave no task for ", id)
                            : configured.status().WithContext("configuring round tasks"));
      return;
    }
    configured->front().tensors.clear();
    tasks.push_back(std::move(configured->front()));
    infos.push_back(std::move(info));
  }
  const SecureSpec spec = *strategy_->secure_spec();
  wire::SecAggParams params;
  const SecureAggregationConfig& sa = config_.secure_aggregation;
  params.clip = sa.clip > 0 ? sa.clip : spec.clip;
  params.levels_bits = sa.levels_bits;
  params.modulus_bits = sa.modulus_bits;
  params.weighting = spec.weighting;
  params.delta = spec.delta;
  params.weight_scale =
      WeightScale(spec.weighting, tasks, infos, config_.strategy.max_examples_per_client);
  if (PrivacyOn()) {  // Distributed DP: every input counts 1; the mean is over a fixed m.
    params.weighting = wire::SecAggWeighting::kUniform;
    params.weight_scale = 1.0;
  }
  std::map<std::string, std::vector<std::int64_t>, std::less<>> slots;
  for (const ClientTask& task : tasks) {
    for (const auto& [name, expected] : task.expected_upload) {
      const auto global = state_->adapter.find(name);
      slots[name] = global != state_->adapter.end() ? global->second.shape : expected.spec.shape;
    }
  }
  for (auto& [name, shape] : slots) params.layout.push_back({name, std::move(shape)});
  Result<std::uint64_t> length = secagg::SecureVectorLength(params);
  if (!length.ok()) {
    Fatal(length.status().WithContext(StrCat("round ", run.round, " secure aggregation")));
    return;
  }
  std::set<std::string, std::less<>> members(chosen.begin(), chosen.end());
  const SecAggSettings settings{sa.threshold, sa.degree,
                                std::chrono::milliseconds(sa.stage_timeout_ms)};
  // Distributed DP: a sum of fewer than t inputs would carry less than the round's noise.
  const std::uint32_t least = PrivacyOn() ? NoiseShareClients() : Quorum();
  secagg_.emplace(run.round, attempt, params, settings, members, least, clock_.Now(), run.deadline);
  const UploadSpec masked{{std::string(secagg::kMaskedTensorName),
                           ExpectedTensor{{DType::kU32, {static_cast<std::int64_t>(*length)}}}}};
  for (std::size_t k = 0; k < chosen.size(); ++k) {
    tasks[k].expected_upload = masked;
    round_.AddTask(chosen[k], std::move(tasks[k]), std::move(infos[k]), NewTicket(attempt));
    SendTask(chosen[k]);
  }
  LogInfo("round ", run.round, "/", config_.rounds, (attempt > 1 ? " (retry)" : ""),
          ": secure aggregation of ", params.layout.size(), " tensor(s), ", *length,
          " words mod 2^", params.modulus_bits, " (clip ", params.clip, ", 2^", params.levels_bits,
          " levels); tasks sent to ", chosen.size(), " client(s), ", least,
          "+ inputs needed, deadline in ", config_.round.timeout_ms, " ms",
          PrivacyOn() ? StrCat("; distributed DP: each client adds 1/", least, " of the noise")
                      : std::string());
}

void Coordinator::Impl::HandleSecAgg(ClientConnection& client, std::uint64_t sequence,
                                     const wire::SecAgg& message, std::size_t bytes) {
  const std::string who =
      StrCat("secure-aggregation ", wire::SecAggStageName(message), " from ", client.id);
  const RoundRun& run = round_.run();
  if (!secagg_ || !secagg_->active() || round_.phase() != RoundPhase::kFit ||
      message.round != run.round) {
    ProtocolError(who, client.route, sequence, ErrorCode::kStaleRound,
                  StrCat("no secure aggregation of round ", message.round, " is open"));
    return;
  }
  if (const auto held = run.tickets.find(client.id);
      held == run.tickets.end() || held->second != message.ticket) {
    Count([](CoordinatorCounters& c) { ++c.task_mismatches; });
    ProtocolError(who, client.route, sequence, ErrorCode::kTaskMismatch,
                  "the message does not carry the ticket of this client's round task");
    return;
  }
  round_.OnSecAggBytes(bytes);
  Status s;
  if (const auto* keys = std::get_if<wire::SecAggKeys>(&message.stage)) {
    s = secagg_->OnKeys(client.id, *keys);
  } else if (const auto* shares = std::get_if<wire::SecAggShares>(&message.stage)) {
    s = secagg_->OnShares(client.id, *shares);
  } else if (const auto* reveal = std::get_if<wire::SecAggReveal>(&message.stage)) {
    s = secagg_->OnReveal(client.id, *reveal);
  } else {
    s = Refusal(ErrorCode::kUnexpectedMessage, "a client may not send a secure-aggregation ",
                wire::SecAggStageName(message));
  }
  if (!s.ok()) {
    Count([](CoordinatorCounters& c) { ++c.updates_rejected; });
    ProtocolError(who, client.route, sequence, wire::DecodeErrorCode(s), s.message());
    secagg_->Exclude(client.id, s.message());
    if (!secagg_->HasInput(client.id)) round_.OnUploadRefused(client.id);
  }
  StepSecAgg();
}

void Coordinator::Impl::HandleMaskedInput(ClientConnection& client, std::uint64_t sequence,
                                          wire::Update update, std::size_t bytes) {
  const std::string who = StrCat("masked input from ", client.id);
  const std::uint64_t round = round_.run().round;
  if (secagg_ && secagg_->HasInput(client.id)) {  // A resend after a lost Ack.
    Send(client, wire::Ack{round, sequence});
    return;
  }
  const auto refuse = [&](const Status& why) {
    Count([](CoordinatorCounters& c) { ++c.updates_rejected; });
    ProtocolError(who, client.route, sequence, wire::DecodeErrorCode(why), why.message());
    if (secagg_) secagg_->Exclude(client.id, why.message());
    round_.OnUploadRefused(client.id);
  };
  if (!secagg_ || !secagg_->active()) {
    refuse(Refusal(ErrorCode::kStaleRound, "no secure aggregation of round ", round,
                   " takes inputs now"));
    return;
  }
  std::uint64_t clipped = 0;
  if (const auto it = update.metrics.find(kClippedMetric); it != update.metrics.end()) {
    const double v = it->second;
    if (!(v >= 0 && v <= 1e18 && v == std::floor(v))) {
      refuse(Refusal(ErrorCode::kInvalidField, "metric '", kClippedMetric,
                     "' must be a count, not ", v));
      return;
    }
    clipped = static_cast<std::uint64_t>(v);
    update.metrics.erase(it);
  }
  const Tensor& masked = update.tensors.at(std::string(secagg::kMaskedTensorName));
  std::vector<std::uint32_t> words(masked.data.size() / sizeof(std::uint32_t));
  std::memcpy(words.data(), masked.data.data(), words.size() * sizeof(std::uint32_t));
  if (Status s = secagg_->OnMaskedInput(client.id, words, clipped); !s.ok()) {
    refuse(s);
    StepSecAgg();
    return;
  }
  // Counts and metrics only: the vector is in the running sum and goes no further.
  secagg_inputs_[client.id] = {
      ClientUpdate{
          client.id, update.num_samples, update.num_examples, std::move(update.metrics), {}},
      bytes};
  Send(client, wire::Ack{round, sequence});
  StepSecAgg();
}

void Coordinator::Impl::StepSecAgg() {
  if (!secagg_ || secagg_settled_) return;
  const RoundRun& run = round_.run();
  for (SecAggAttempt::Outgoing& out : secagg_->Step(clock_.Now())) {
    ClientConnection* client = clients_.FindById(out.to);
    if (client == nullptr) continue;
    const std::size_t sent =
        Send(*client, wire::SecAgg{run.round, run.tickets.at(out.to), std::move(out.stage)});
    round_.OnSecAggBytes(sent);
  }
  if (secagg_->active()) return;
  secagg_settled_ = true;
  const std::set<std::string, std::less<>> survivors = secagg_->stage() == SecAggStage::kDone
                                                           ? secagg_->survivors()
                                                           : std::set<std::string, std::less<>>{};
  const std::set<std::string, std::less<>> outstanding = run.outstanding;
  for (const std::string& id : outstanding) {
    if (survivors.contains(id)) continue;
    LogWarn("round ", run.round, ": client ", id, " is not in the secure sum");
    round_.OnUploadRefused(id);
  }
  if (secagg_->stage() != SecAggStage::kDone) return;  // Failed: the round retries (StepFit).
  for (const std::string& id : survivors) {
    auto& [counts, bytes] = secagg_inputs_.at(id);
    round_.OnUploadAccepted(std::move(counts), 0.0, bytes);
  }
  Count([&](CoordinatorCounters& c) { c.updates_accepted += survivors.size(); });
  secure_sum_ = secagg_->sum();
  secagg_inputs_.clear();
  const SecAggReport& r = secagg_->report();
  LogInfo("round ", run.round, ": secure aggregation unmasked the sum of ", r.masked, " input(s) (",
          r.shared - r.masked, " dropped after sharing keys; threshold ", r.threshold, ", ",
          r.degree, " neighbours; stages ", r.stage_ms[0], "/", r.stage_ms[1], "/", r.stage_ms[2],
          "/", r.stage_ms[3], " ms)");
  if (r.clipped > 0) {
    std::string by;
    for (const auto& [id, n] : r.clipped_by) by += StrCat(by.empty() ? "" : ", ", id, " ", n);
    LogWarn("round ", run.round, ": ", r.clipped, " value(s) clipped to +-", secagg_->params().clip,
            " before secure aggregation (", by, "; secure_aggregation.clip)");
  }
}

Result<AggregateReport> Coordinator::Impl::FinishSecureRound(GlobalState& candidate) {
  const SecAggReport& r = secagg_->report();
  secagg::SecureSum sum = *secure_sum_;  // Kept as decoded: a re-aggregation starts from it.
  if (PrivacyOn()) {  // Distributed DP: the clients' noise is in the sum; the mean is over m.
    FEDLORA_ASSIGN_OR_RETURN(
        sum, PrivateReleaseOf(*secure_sum_, candidate.adapter, strategy_->secure_spec()->delta,
                              private_round_->denominator));
    private_round_->secure_inputs = static_cast<std::uint32_t>(r.masked);
    private_tally_.folded = r.masked;
  }
  FEDLORA_ASSIGN_OR_RETURN(AggregateReport report,
                           strategy_->FinishSecure(candidate, round_.run().round, sum));
  wire::Metrics& m = report.metrics;
  m["secagg_tasked"] = r.tasked;
  m["secagg_keyed"] = r.keyed;
  m["secagg_shared"] = r.shared;
  m["secagg_survivors"] = r.masked;
  m["secagg_dropped"] = r.shared - r.masked;
  m["secagg_revealed"] = r.revealed;
  m["secagg_threshold"] = r.threshold;
  m["secagg_degree"] = r.degree;
  m["secagg_clipped"] = static_cast<double>(r.clipped);
  m["secagg_error_bound"] = secure_sum_->mean_error_bound;  // Of each aggregated value.
  m["secagg_keys_ms"] = r.stage_ms[0];
  m["secagg_shares_ms"] = r.stage_ms[1];
  m["secagg_input_ms"] = r.stage_ms[2];
  m["secagg_unmask_ms"] = r.stage_ms[3];
  m["secagg_unmask_compute_ms"] = r.unmask_compute_ms;
  m["secagg_bytes"] = static_cast<double>(round_.run().secagg_bytes);
  return report;
}

void Coordinator::Impl::DiscardSecureSum(const std::string& revoked) {
  const RoundRun& run = round_.run();
  std::vector<std::string> accepted;
  for (const auto& [id, u] : run.accepted) accepted.push_back(id);
  for (const std::string& id : accepted) round_.DropUpload(id);
  secure_sum_.reset();
  LogWarn("round ", run.round, ": the secure sum included the upload of revoked client ", revoked,
          " and cannot be taken apart; discarding it (", accepted.size(),
          " upload(s)) and running the round's protocol again");
  if (round_.phase() == RoundPhase::kEval) round_.ReopenFit(clock_.Now());
}

}  // namespace fedlora::server
