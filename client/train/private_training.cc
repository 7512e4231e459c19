#include "client/train/private_training.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "client/train/dp_sgd.h"
#include "common/log.h"

namespace fedlora::client {

Result<PrivateTrainer> PrivateTrainer::Open(const DpSgdConfig& config, std::string client,
                                            std::string budget_path) {
  FEDLORA_ASSIGN_OR_RETURN(
      DpSgdBudget budget,
      DpSgdBudget::Open(std::move(budget_path), config.target_epsilon, config.delta));
  if (budget.steps() > 0) {
    LogInfo("client '", client, "': DP-SGD budget ", budget.path(), ": ", budget.steps(),
            " steps taken so far, epsilon ", budget.EpsilonSpent(), " of ", config.target_epsilon,
            " at delta ", config.delta);
  }
  return PrivateTrainer(config, std::move(client), std::move(budget));
}

Result<TrainStats> PrivateTrainer::Train(const LlamaModel& model, LoraAdapter& adapter,
                                         const SequenceSource& source, const wire::TrainSpec& spec,
                                         std::uint64_t round, std::stop_token stop,
                                         std::span<const at::Tensor> base_weights,
                                         wire::Metrics& metrics, const ProgressFn& progress) {
  const std::size_t examples = source.size();
  if (examples == 0) return FailedPrecondition("no training data (empty token stream)");
  const double q =
      config_.sample_rate > 0
          ? config_.sample_rate
          : std::min(1.0, static_cast<double>(std::max<std::uint32_t>(spec.batch_size, 1)) /
                              static_cast<double>(examples));
  const std::uint64_t steps = DpSgdSteps(spec, examples);
  const double spent = budget_.EpsilonSpent();
  const double after = budget_.EpsilonAfter(q, config_.noise_multiplier, steps);
  if (!(after <= config_.target_epsilon)) {
    const Status refused =
        FailedPrecondition("client '", client_, "': DP-SGD budget: round ", round, "'s ", steps,
                           " steps (sample rate ", q, ", noise multiplier ",
                           config_.noise_multiplier, ") would take epsilon from ", spent, " to ",
                           after, ", past privacy.dp_sgd.target_epsilon ", config_.target_epsilon,
                           " (", budget_.path(), ")")
            .WithDetail(static_cast<std::uint32_t>(wire::ErrorCode::kPrivacyMismatch));
    LogWarn(refused.message());
    return refused;
  }
  const DpSgdOptions options{.clip = config_.clip,
                             .noise_multiplier = config_.noise_multiplier,
                             .sample_rate = q,
                             .progress = progress};
  FEDLORA_ASSIGN_OR_RETURN(
      const DpSgdStats stats,
      TrainLoraDpSgd(model, adapter, source, spec, options, std::move(stop), base_weights));
  // Spent once trained, whether or not the update arrives: written before it may leave.
  if (Status recorded = budget_.Record(q, config_.noise_multiplier, stats.train.steps);
      !recorded.ok()) {
    return Unavailable("client '", client_, "': the DP-SGD budget could not be written, so the ",
                       "update is withheld: ", recorded.message());
  }
  const double total = budget_.EpsilonSpent();
  const double clipped_fraction =
      stats.train.samples > 0
          ? static_cast<double>(stats.clipped) / static_cast<double>(stats.train.samples)
          : 0.0;
  LogInfo("client '", client_, "': round ", round, ": DP-SGD ", stats.train.steps,
          " steps, sample rate ", q, " (", stats.train.samples, " examples sampled, ",
          stats.empty_steps, " empty batches), clip ", config_.clip, " (", stats.clipped,
          " examples clipped), noise multiplier ", config_.noise_multiplier, "; epsilon ", total,
          " of ", config_.target_epsilon, " at delta ", config_.delta, " spent");
  metrics[std::string(wire::kDpSgdEpsilonMetric)] = total;
  metrics["dp_sgd_delta"] = config_.delta;
  metrics["dp_sgd_steps"] = static_cast<double>(stats.train.steps);
  metrics["dp_sgd_sample_rate"] = q;
  metrics["dp_sgd_noise_multiplier"] = config_.noise_multiplier;
  metrics["dp_sgd_clip"] = config_.clip;
  metrics["dp_sgd_clipped_fraction"] = clipped_fraction;
  // The realised Poisson batch sizes are about the data: report the expected count instead
  // (at most what the task allows, steps x batch_size), which is also what the weights use.
  TrainStats reported = stats.train;
  reported.samples = std::min<std::uint64_t>(
      stats.train.steps * spec.batch_size,
      static_cast<std::uint64_t>(std::llround(q * static_cast<double>(examples) *
                                              static_cast<double>(stats.train.steps))));
  return reported;
}

}  // namespace fedlora::client
