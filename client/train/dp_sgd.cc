#include "client/train/dp_sgd.h"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "client/train/per_example.h"
#include "common/privacy/gaussian_noise.h"
#include "common/secagg/masking.h"

namespace fedlora::client {
namespace {

// The rows of one step's Poisson batch: row i joins when its 32-bit word from the step's stream
// is below floor(q 2^32), so the real rate never exceeds q.
std::vector<std::size_t> PoissonBatch(const crypto::Seed& seed, std::uint64_t step,
                                      std::size_t rows, double q) {
  std::vector<std::uint32_t> words(rows);
  secagg::ExpandMask(privacy::DeriveNoiseSeed(seed, StrCat("dp-sgd/sample/", step)),
                     secagg::Modulus::Bits(32).value(), words);
  const auto threshold = static_cast<std::uint64_t>(std::floor(q * 0x1.0p32));
  std::vector<std::size_t> picks;
  for (std::size_t i = 0; i < rows; ++i) {
    if (words[i] < threshold) picks.push_back(i);
  }
  return picks;
}

Status ValidateOptions(const DpSgdOptions& o) {
  if (!std::isfinite(o.clip) || o.clip <= 0) {
    return InvalidArgument("privacy.dp_sgd.clip ", o.clip, " must be finite and > 0");
  }
  if (!std::isfinite(o.noise_multiplier) || o.noise_multiplier < 0) {
    return InvalidArgument("privacy.dp_sgd.noise_multiplier ", o.noise_multiplier,
                           " must be finite and >= 0");
  }
  if (!(o.sample_rate > 0 && o.sample_rate <= 1)) {
    return InvalidArgument("privacy.dp_sgd.sample_rate ", o.sample_rate, " must be in (0, 1]");
  }
  return OkStatus();
}

}  // namespace

std::uint64_t DpSgdSteps(const wire::TrainSpec& spec, std::size_t examples) {
  if (spec.local_epochs == 0) return spec.local_steps;
  const std::uint64_t batch = std::max<std::uint32_t>(spec.batch_size, 1);
  return spec.local_epochs * ((examples + batch - 1) / batch);
}

Result<DpSgdStats> TrainLoraDpSgd(const LlamaModel& model, LoraAdapter& adapter,
                                  const SequenceSource& source, const wire::TrainSpec& spec,
                                  const DpSgdOptions& options, std::stop_token stop,
                                  std::span<const at::Tensor> base_weights) try {
  FEDLORA_RETURN_IF_ERROR(ValidateTrainSpec(spec, model));
  FEDLORA_RETURN_IF_ERROR(ValidateOptions(options));
  if (source.size() == 0) return FailedPrecondition("no training data (empty token stream)");
  const std::vector<at::Tensor> params = adapter.Parameters();
  if (params.empty()) return InvalidArgument("the adapter has no trainable tensor");
  const std::uint64_t total_steps = DpSgdSteps(spec, source.size());
  const double expected_batch = options.sample_rate * static_cast<double>(source.size());
  const double stddev = options.noise_multiplier * options.clip;
  const crypto::Seed seed = options.seed ? *options.seed : privacy::FreshNoiseSeed();

  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(spec.learning_rate)
                                            .betas({spec.beta1, spec.beta2})
                                            .eps(spec.eps)
                                            .weight_decay(spec.weight_decay));
  const TrainingModeScope training(adapter);
  const auto start = std::chrono::steady_clock::now();
  DpSgdStats stats;
  double loss_sum = 0;
  for (std::uint64_t step = 0; step < total_steps; ++step) {
    if (stop.stop_requested()) {
      return Status(StatusCode::kCancelled, StrCat("DP-SGD training cancelled after ", step, " of ",
                                                   total_steps, " steps"));
    }
    const std::vector<std::size_t> picks =
        PoissonBatch(seed, step, source.size(), options.sample_rate);
    FEDLORA_ASSIGN_OR_RETURN(ClippedGradients grads,
                             ClippedGradientSum(model, adapter, source, picks, options.clip,
                                                spec.batch_size, base_weights));
    // Noise on every coordinate (even when the batch is empty), then the mean over q N.
    for (std::size_t k = 0; k < params.size(); ++k) {
      std::vector<double> noise(static_cast<std::size_t>(params[k].numel()), 0.0);
      privacy::AddGaussianNoise(
          noise, stddev, privacy::DeriveNoiseSeed(seed, StrCat("dp-sgd/noise/", step, "/", k)));
      const at::Tensor noise_tensor =
          at::from_blob(noise.data(), params[k].sizes(), at::kDouble).to(grads.sums[k].options());
      params[k].mutable_grad() = (grads.sums[k] + noise_tensor) / expected_batch;
    }
    if (const at::Tensor penalty = adapter.Penalty(); penalty.defined()) {
      if (!std::isfinite(penalty.item<double>())) {
        return InvalidArgument("training diverged: non-finite penalty at step ", step);
      }
      penalty.backward();  // Data-independent: added after the noise.
    }
    const double lr = LearningRateAt(spec, step);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    optimizer.step();
    for (const at::Tensor& p : params) p.mutable_grad() = at::Tensor();

    loss_sum += grads.loss_sum;
    stats.train.tokens += grads.tokens;
    stats.train.samples += picks.size();
    stats.train.steps = step + 1;
    stats.clipped += grads.clipped;
    if (picks.empty()) ++stats.empty_steps;
    if (options.progress) {
      const double step_loss =
          grads.tokens > 0 ? grads.loss_sum / static_cast<double>(grads.tokens) : 0;
      options.progress(
          {step + 1, total_steps, step_loss, stats.train.tokens,
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
    }
  }
  stats.train.loss =
      stats.train.tokens > 0 ? loss_sum / static_cast<double>(stats.train.tokens) : 0;
  stats.train.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
} catch (const c10::Error& e) {
  return Internal("DP-SGD training: ", e.what_without_backtrace());
}

}  // namespace fedlora::client
