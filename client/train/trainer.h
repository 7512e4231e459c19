// trainer.h — local LoRA training and evaluation on one client's token streams.
//
// Training: AdamW over the adapter's factors only (a fresh optimiser per call, i.e. per round),
// linear learning-rate warmup then constant, batches of token windows (text_dataset.h) drawn
// from a per-epoch shuffle, global L2 gradient clipping, cancellation between steps.
// Evaluation: mean negative log-likelihood per predicted token over windows, without autograd.
//
// Deterministic: with the same model, adapter state, stream, spec, seed and thread count, the
// trained adapter is bit-identical. All randomness comes from `seed` (batch order) and the
// adapter's own generator (dropout).
//
// Every function catches LibTorch's exceptions and returns them as kInternal. Thread-safety:
// calls with different adapters may run concurrently on one shared model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stop_token>
#include <vector>

#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/model/tokenizer.h"
#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::client {

struct TrainStats {
  double loss = 0.0;           // Mean training loss per predicted token (nats), over all steps.
  std::uint64_t steps = 0;
  std::uint64_t samples = 0;   // Windows processed, counting repeats across epochs.
  std::uint64_t tokens = 0;    // Predicted tokens processed.
  double seconds = 0.0;        // Wall time of the training loop.
};

// Trains `adapter` in place on windows of `spec.seq_len` tokens of `stream`
// (MakeWindows; input [BOS, w0..w_{T-2}], targets [w0..w_{T-1}]).
// Steps: local_epochs > 0 ? local_epochs * ceil(windows / batch_size) : local_steps. Each epoch
// visits the windows in a fresh shuffle (std::mt19937_64 seeded with `seed`, drawn once per
// epoch) in consecutive batches; the last batch of an epoch may be smaller.
// Learning rate at step s (0-based): learning_rate * min(1, (s + 1) / warmup_steps).
// kInvalidArgument: a spec value out of range (names the field), or the loss became non-finite
// (hint: lower the learning rate). kFailedPrecondition: `stream` is empty.
// kCancelled: `stop` was requested; checked before every step. The adapter is left in
// evaluation mode (no dropout) on return.
Result<TrainStats> TrainLora(const LlamaModel& model, LoraAdapter& adapter,
                             std::span<const TokenId> stream, const wire::TrainSpec& spec,
                             std::uint64_t seed, std::stop_token stop = {});

struct EvalOptions {
  std::uint32_t seq_len = 128;
  std::uint32_t batch_size = 8;
  std::uint32_t max_batches = 0;   // 0 = no cap.
  std::uint64_t max_windows = 0;   // 0 = no cap; applied before batching (first windows).
};

struct EvalStats {
  double loss = 0.0;           // Mean NLL per predicted token (nats).
  std::uint64_t tokens = 0;    // Predicted tokens the mean is over.
  std::uint64_t windows = 0;   // Windows evaluated.
  double seconds = 0.0;
};

// Evaluates the model (with `adapter` if not null, used as is: put a LoraAdapter in evaluation
// mode first) on the first windows of `stream`, in order, under NoGradGuard.
// kInvalidArgument: bad options. kFailedPrecondition: `stream` is empty. kCancelled: `stop`
// was requested (checked before every batch).
Result<EvalStats> EvaluateLoss(const LlamaModel& model, ModuleAdapter* adapter,
                               std::span<const TokenId> stream, const EvalOptions& options,
                               std::stop_token stop = {});

// Greedy decoding (argmax at every step, no KV cache) of up to `max_new_tokens` after `prompt`;
// returns prompt + generated tokens, stopping early at the model's seq_len.
// kInvalidArgument: empty prompt or an id outside the vocabulary.
Result<std::vector<TokenId>> GenerateGreedy(const LlamaModel& model, ModuleAdapter* adapter,
                                            std::vector<TokenId> prompt,
                                            std::size_t max_new_tokens);

}  // namespace fedlora::client
