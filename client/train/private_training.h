// private_training.h — one round of a DP-SGD client (client config privacy.dp_sgd): the client's
// own accountant decides whether the round may train at all, DP-SGD trains it (dp_sgd.h), and the
// steps are recorded in the client's budget file before the update may leave (dp_sgd_budget.h).
//
// Fails closed: a round whose steps would take the client's ε past privacy.dp_sgd.target_epsilon
// is refused before any training with PRIVACY_MISMATCH (the session sends it to the coordinator,
// which counts it in the round's task_refusals); a budget that cannot be written refuses the
// upload. Thread-compatible (one per worker).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <span>
#include <stop_token>
#include <string>

#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/privacy_policy.h"
#include "client/train/dp_sgd_budget.h"
#include "client/train/sequences.h"
#include "client/train/trainer.h"
#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::client {

class PrivateTrainer {
 public:
  // The trainer of client `client`, its budget kept at `budget_path`. Errors as
  // DpSgdBudget::Open (naming the file).
  static Result<PrivateTrainer> Open(const DpSgdConfig& config, std::string client,
                                     std::string budget_path);

  // Trains `adapter` for round `round` with DP-SGD and records the steps. The returned samples
  // is the expected count, steps x qN (at most steps x batch_size, what the coordinator accepts),
  // not the realised Poisson count, which is about the data. Adds to `metrics`:
  // dp_sgd_epsilon (the client's total after this round), dp_sgd_delta, dp_sgd_steps,
  // dp_sgd_sample_rate, dp_sgd_noise_multiplier, dp_sgd_clip and dp_sgd_clipped_fraction.
  // kFailedPrecondition with detail PRIVACY_MISMATCH when the budget cannot take the round;
  // the errors of TrainLoraDpSgd; the budget file's write error.
  Result<TrainStats> Train(const LlamaModel& model, LoraAdapter& adapter,
                           const SequenceSource& source, const wire::TrainSpec& spec,
                           std::uint64_t round, std::stop_token stop,
                           std::span<const at::Tensor> base_weights, wire::Metrics& metrics,
                           const ProgressFn& progress = {});

  const DpSgdBudget& budget() const { return budget_; }

 private:
  PrivateTrainer(DpSgdConfig config, std::string client, DpSgdBudget budget)
      : config_(config), client_(std::move(client)), budget_(std::move(budget)) {}

  DpSgdConfig config_;
  std::string client_;
  DpSgdBudget budget_;
};

}  // namespace fedlora::client
