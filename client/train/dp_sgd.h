// dp_sgd.h — sample-level differential privacy on the client: DP-SGD (Abadi et al. 2016) over a
// LoRA adapter, for data owners who want a guarantee per example (docs/privacy.md).
//
// Every step: Poisson sampling (each example joins the step's batch independently with
// probability q, drawn from a ChaCha20 stream, so the batch size varies and may be 0), each
// example's gradient clipped to L2 norm C jointly over all trainable tensors (per_example.h), the
// sum noised with N(0, σ²C²) per coordinate, divided by the expected batch size q·N (Opacus's
// rule, ALGORITHMS.md "fedsb_dp_step"), and AdamW steps on it (post-processing). The HetLoRA
// tail penalty depends on no data: its gradient is added after the noise. train.grad_clip is not
// applied (the per-example clip bounds the step). This is the Poisson-subsampled Gaussian
// mechanism the RDP accountant (common/privacy/rdp_accountant.h) composes, one step per step.
//
// Randomness: sampling and noise come from `seed` (derived per step and per tensor), fresh from
// the operating system unless a test fixes it; dropout from the adapter's generator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stop_token>

#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/train/progress.h"
#include "client/train/sequences.h"
#include "client/train/trainer.h"
#include "common/crypto/key_agreement.h"
#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::client {

struct DpSgdOptions {
  double clip = 0;              // C: each example's gradient is clipped to this L2 norm (> 0).
  double noise_multiplier = 0;  // σ (>= 0): N(0, σ²C²) on every coordinate of each step's sum.
  double sample_rate = 0;       // q in (0, 1]: each example's chance to join a step's batch.
  // Sampling and noise; nullopt: fresh from the operating system (what a deployment does).
  std::optional<crypto::Seed> seed;
  ProgressFn progress;  // Called after every step (progress.h); may be empty.
};

struct DpSgdStats {
  TrainStats train;               // As TrainLora's; samples counts the examples sampled.
  std::uint64_t clipped = 0;      // Sampled examples whose gradient norm exceeded C.
  std::uint64_t empty_steps = 0;  // Steps whose Poisson batch was empty (noise only).
};

// The steps TrainLoraDpSgd takes on a source of `examples` rows: local_epochs > 0 ?
// local_epochs * ceil(examples / batch_size) : local_steps, as TrainLora.
std::uint64_t DpSgdSteps(const wire::TrainSpec& spec, std::size_t examples);

// Trains `adapter` in place with DP-SGD. Learning rate, warmup, AdamW settings and the step
// count come from `spec` as for TrainLora; spec.batch_size bounds the rows of one
// forward/backward pass (a larger sampled batch takes several). kInvalidArgument: a spec value
// or option out of range (names it), no trainable tensor, or a non-finite loss.
// kFailedPrecondition: an empty source. kCancelled: `stop`, checked before every step.
Result<DpSgdStats> TrainLoraDpSgd(const LlamaModel& model, LoraAdapter& adapter,
                                  const SequenceSource& source, const wire::TrainSpec& spec,
                                  const DpSgdOptions& options, std::stop_token stop = {},
                                  std::span<const at::Tensor> base_weights = {});

}  // namespace fedlora::client
