// coordinator_privacy.cc — differential privacy in the round (issue 14; docs/privacy.md): the
// checks at start, the ledger of what the run spent (privacy_ledger.h), each round's Poisson
// sample and private accumulator (private_sum.h), the clip check on every upload, the release
// record before the aggregate leaves the coordinator, and the stop when the budget is spent.
// Runs on the coordinator's loop thread.
#include <algorithm>
#include <cmath>

#include "common/crypto/random.h"
#include "common/log.h"
#include "common/privacy/gaussian_noise.h"
#include "server/admission.h"
#include "server/coordinator_impl.h"
#include "server/robust/update_norm.h"

namespace fedlora::server {

Status Coordinator::Impl::StartPrivacy(const std::optional<Checkpoint>& latest) {
  const PrivacyConfig& dp = config_.privacy;
  // What the state directory says was released: the ledger file (written at each release)
  // unless the checkpoint records more.
  std::string recorded = latest ? latest->privacy_json : std::string();
  FEDLORA_ASSIGN_OR_RETURN(std::optional<std::string> file, store_->LoadPrivacyLedger());
  if (!dp.enabled) {
    if (!recorded.empty() || file) {
      return FailedPrecondition(
          "state directory '", config_.state_dir, "' holds rounds released under differential ",
          "privacy; running on without privacy.enabled would void their guarantee. Enable ",
          "privacy (its ledger goes on from what was spent) or use another state_dir");
    }
    return OkStatus();
  }
  if (!strategy_->secure_spec()) {
    return FailedPrecondition(
        "privacy needs a strategy whose aggregate is a mean of the uploads' changes, and '",
        strategy_->name(), "' with this configuration is not one: fedex, flora and lorafair ",
        "need per-client products, hetlora's sparsity weighting per-client norms, and a ",
        "robust.rule or strategy.max_weight_share every upload at once. These work: fedavg, ffa, "
        "fedsvd, ",
        "fedsa, fslora, and hetlora with weighting examples, samples or uniform (robust.rule ",
        "mean, no max_weight_share)");
  }
  if (strategy_->client_initialization() != nullptr) {
    return FailedPrecondition("privacy with strategy '", strategy_->name(), "': its initial ",
                              "state is computed from one client's data without noise, which ",
                              "no epsilon would cover");
  }
  if (SecureOn() && strategy_->name() == "hetlora") {
    return FailedPrecondition(
        "privacy with secure_aggregation and strategy 'hetlora': a pruned client's input is not a ",
        "change of the global adapter in the secure sum, so its change cannot be taken out of it; ",
        "use privacy without secure_aggregation (central noise) for hetlora");
  }
  FEDLORA_ASSIGN_OR_RETURN(PrivacyLedger ledger, PrivacyLedger::Create(dp, config_.rounds));
  PrivacyLedger from_checkpoint = ledger;
  if (!recorded.empty()) {
    FEDLORA_RETURN_IF_ERROR(from_checkpoint.Restore(
        recorded, StrCat(store_->CheckpointDir(latest->round), "/state.json")));
  }
  ledger = from_checkpoint;
  if (file) {
    PrivacyLedger from_file = ledger;
    FEDLORA_RETURN_IF_ERROR(
        from_file.Restore(*file, StrCat(config_.state_dir, "/privacy_ledger.json")));
    if (from_file.rounds_released() >= from_checkpoint.rounds_released()) ledger = from_file;
  }
  ledger_ = std::move(ledger);
  const std::uint64_t remaining =
      committed_ ? config_.rounds - std::min<std::uint64_t>(config_.rounds, *committed_)
                 : config_.rounds;
  PrivacyLedger planned = *ledger_;
  for (std::uint64_t r = 0; r < remaining; ++r) planned.RecordRound();
  LogInfo("differential privacy on (",
          SecureOn() ? StrCat("distributed Gaussian under secure aggregation: each client adds 1/",
                              dp.min_clients, " of the noise variance, a round needs ",
                              dp.min_clients, "+ inputs")
                     : std::string("central Gaussian, DP-FedAvg"),
          "): changes clipped to L2 ", ledger_->clip(), ", noise multiplier ",
          ledger_->noise_multiplier(), ledger_->sigma_solved() ? " (solved from the budget)" : "",
          ", clients sampled with ", "probability ", dp.sample_rate, ", delta ", dp.delta,
          "; epsilon spent so far ", ledger_->EpsilonSpent(), " over ", ledger_->rounds_released(),
          " released round(s); after all ", config_.rounds, " rounds it would be ",
          planned.EpsilonSpent(),
          dp.target_epsilon > 0 ? StrCat(" (budget ", dp.target_epsilon, ")") : std::string());
  if (ledger_->adaptive()) {
    LogInfo("privacy: adaptive clipping toward the ", dp.target_quantile, " quantile of the ",
            "change norms (learning rate ", dp.clip_learning_rate, "), next clip ", ledger_->clip(),
            "; the count of clients within it gets noise multiplier ", dp.count_noise_multiplier,
            ", the update ", ledger_->update_noise_multiplier());
  }
  if (ledger_->rounds_released() == 0 && !ledger_->NextRoundFits()) {
    return FailedPrecondition(
        "privacy.target_epsilon ", dp.target_epsilon, " is below what one round spends (epsilon ",
        ledger_->EpsilonAfterNextRound(), " at noise multiplier ", ledger_->noise_multiplier(),
        ", sample rate ", dp.sample_rate, ", delta ", dp.delta,
        "): raise privacy.noise_multiplier or the budget, or lower privacy.sample_rate");
  }
  if (config_.eval.enabled) {
    LogWarn("privacy: evaluation losses and accuracies and the train losses in metrics.jsonl ",
            "come from client data without noise; epsilon covers the released adapters only ",
            "(eval.enabled: false releases nothing else)");
  }
  if (config_.robust.norm_bound > 0 && config_.robust.norm_bound < dp.clip) {
    LogWarn("robust.norm_bound ", config_.robust.norm_bound, " is below privacy.clip ", dp.clip,
            ": uploads are bounded by the smaller");
  }
  return OkStatus();
}

bool Coordinator::Impl::PrivacyAllowsRound(std::uint64_t round) {
  if (ledger_->NextRoundFits()) return true;
  const std::string why =
      StrCat("privacy budget spent: releasing round ", round, " would take epsilon from ",
             ledger_->EpsilonSpent(), " to ", ledger_->EpsilonAfterNextRound(),
             ", above privacy.target_epsilon ", ledger_->target_epsilon(), " (delta ",
             ledger_->delta(), "); the run ends after round ", round - 1);
  LogWarn(why);
  Finish(why);
  return false;
}

Result<std::unique_ptr<RoundAccumulator>> Coordinator::Impl::BeginPrivateRound(
    std::uint64_t round) {
  PrivateRound sample;
  sample.round = round;
  sample.clip = ledger_->clip();
  sample.clip_next = sample.clip;
  const double q = ledger_->sample_rate();
  for (const std::string& id : clients_.Ids()) {
    if (!Eligible(*clients_.FindById(id))) continue;
    ++sample.population;
    // Uniform in [0, 1) from 53 bits of the operating system's generator: the sample is
    // nobody's to predict, the coordinator's configuration seed included.
    const double u = static_cast<double>(crypto::RandomU64() >> 11) * 0x1.0p-53;
    if (u < q) sample.sampled.push_back(id);
  }
  sample.denominator = std::max(1.0, q * sample.population);
  private_round_ = std::move(sample);
  return MakePrivateRoundAccumulator(round);
}

Result<std::unique_ptr<RoundAccumulator>> Coordinator::Impl::MakePrivateRoundAccumulator(
    std::uint64_t round) {
  // What the round releases: every tensor a client with the full plan uploads, at the global
  // adapter's shape (the same for every round; not a function of who was sampled).
  const ClientInfo full{"(privacy layout)", {}, {}, {}};
  FEDLORA_ASSIGN_OR_RETURN(std::vector<ClientTask> tasks,
                           strategy_->Configure(*state_, round, std::span(&full, 1)));
  if (tasks.size() != 1) return Internal(strategy_->name(), ": Configure gave no task");
  PrivateRoundParams params;
  for (const auto& [name, expected] : tasks.front().expected_upload) {
    const auto global = state_->adapter.find(name);
    params.slots.push_back(
        {name, global != state_->adapter.end() ? global->second.shape : expected.spec.shape});
  }
  params.delta = strategy_->secure_spec()->delta;
  params.clip = private_round_->clip;
  params.noise_multiplier = ledger_->update_noise_multiplier();
  params.denominator = private_round_->denominator;
  params.count_noise_stddev = ledger_->adaptive() ? ledger_->count_noise_multiplier() : 0.0;
  params.noise_seed = privacy::FreshNoiseSeed();
  private_tally_ = {};
  return MakePrivateAccumulator(*strategy_, round, std::move(params), &private_tally_);
}

Status Coordinator::Impl::CheckPrivateUpload(const ClientUpdate& update,
                                             const ClientTask& task) const {
  const double clip = private_round_->clip;
  const double norm = UpdateNorm(update, task);
  // The client clips in its tensors' dtype so that this very norm is within the clip; the slack
  // only absorbs summation order.
  if (norm > clip * (1 + 1e-9)) {
    return Refusal(wire::ErrorCode::kPrivacyMismatch, "the upload's change has L2 norm ", norm,
                   ", above the round's privacy clip ", clip,
                   ": a client must clip its change before it uploads");
  }
  if (ledger_->adaptive()) {
    const auto bit = update.metrics.find(wire::kWithinClipMetric);
    if (bit == update.metrics.end() || (bit->second != 0.0 && bit->second != 1.0)) {
      return Refusal(wire::ErrorCode::kPrivacyMismatch, "adaptive clipping needs metric ",
                     wire::kWithinClipMetric, " (1 or 0) with the upload");
    }
  }
  return OkStatus();
}

bool Coordinator::Impl::RecordPrivateRelease() {
  ledger_->RecordRound();
  private_round_->epsilon = ledger_->EpsilonSpent();
  if (ledger_->adaptive()) {
    private_round_->within_clip = private_tally_.noised_within / private_round_->denominator;
    ledger_->AdaptClip(*private_round_->within_clip);
    private_round_->clip_next = ledger_->clip();
  }
  if (Status s = store_->PersistPrivacyLedger(ledger_->ToJson()); !s.ok()) {
    Fatal(s.WithContext("recording a released private round"));
    return false;
  }
  const double noise = ledger_->update_noise_multiplier() * private_round_->clip;
  const std::uint32_t shares = private_round_->secure_inputs;
  LogInfo("round ", private_round_->round, ": private aggregate of ", private_tally_.folded,
          " upload(s) from ", private_round_->sampled.size(), " sampled of ",
          private_round_->population, " (",
          shares > 0 ? StrCat("each clipped to ", private_round_->clip, " by its client, noise ",
                              noise * std::sqrt(double{shares} / NoiseShareClients()),
                              " on the sum from ", shares, " client shares")
                     : StrCat(private_tally_.clipped, " clipped to ", private_round_->clip,
                              ", noise ", noise, " on the sum"),
          ", mean over ", private_round_->denominator, "); epsilon spent ", private_round_->epsilon,
          " at delta ", ledger_->delta(),
          ledger_->target_epsilon() > 0 ? StrCat(" of ", ledger_->target_epsilon()) : std::string(),
          private_round_->within_clip
              ? StrCat("; noised share within the clip ", *private_round_->within_clip,
                       ", next clip ", private_round_->clip_next)
              : std::string());
  return true;
}

wire::PrivacyParams Coordinator::Impl::PrivacyParamsForTask() const {
  return wire::PrivacyParams{private_round_->clip,    ledger_->noise_multiplier(),
                             ledger_->sample_rate(),  ledger_->delta(),
                             ledger_->EpsilonSpent(), ledger_->target_epsilon(),
                             ledger_->adaptive(),     NoiseShareClients()};
}

std::optional<RoundPrivacy> Coordinator::Impl::PrivacyMetrics() const {
  if (!PrivacyOn() || !private_round_ || private_round_->round != round_.run().round) {
    return std::nullopt;
  }
  RoundPrivacy p;
  p.epsilon = private_round_->epsilon;
  p.delta = ledger_->delta();
  p.target_epsilon = ledger_->target_epsilon();
  p.noise_multiplier = ledger_->noise_multiplier();
  p.update_noise_multiplier = ledger_->update_noise_multiplier();
  p.clip = private_round_->clip;
  p.clip_next = private_round_->clip_next;
  p.within_clip = private_round_->within_clip;
  p.sample_rate = ledger_->sample_rate();
  p.sampled = static_cast<std::uint32_t>(private_round_->sampled.size());
  p.population = private_round_->population;
  p.denominator = private_round_->denominator;
  p.clipped = static_cast<std::uint32_t>(private_tally_.clipped);
  p.uploads = static_cast<std::uint32_t>(private_tally_.folded);
  p.noise_share_clients = private_round_->secure_inputs > 0 ? NoiseShareClients() : 0;
  return p;
}

}  // namespace fedlora::server
