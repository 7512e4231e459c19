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
#include <functional>
#include <optional>
#include <span>
#include <stop_token>
#include <vector>

#include "client/data/text_dataset.h"
#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/model/tokenizer.h"
#include "client/train/progress.h"
#include "client/train/sequences.h"
#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::client {

// kInvalidArgument naming the field when a TrainSpec value is out of range for `model`
// (seq_len, batch_size, steps, learning rate, betas, eps, weight decay, clipping).
Status ValidateTrainSpec(const wire::TrainSpec& spec, const LlamaModel& model);

// The learning rate at step `step` (0-based): learning_rate * min(1, (step + 1) / warmup_steps).
double LearningRateAt(const wire::TrainSpec& spec, std::uint64_t step);

// Puts `adapter` in training mode for its lifetime and back in evaluation mode on any exit.
class TrainingModeScope {
 public:
  explicit TrainingModeScope(LoraAdapter& adapter) : adapter_(adapter) {
    adapter_.SetTraining(true);
  }
  ~TrainingModeScope() { adapter_.SetTraining(false); }
  TrainingModeScope(const TrainingModeScope&) = delete;
  TrainingModeScope& operator=(const TrainingModeScope&) = delete;

 private:
  LoraAdapter& adapter_;
};

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
// The loss minimised is the mean token loss plus adapter.Penalty() when it has one (HetLoRA);
// the reported loss is the token loss alone. Only adapter.Parameters() are optimised.
// `base_weights` replaces frozen module weights in every forward pass (LlamaModel::Forward), e.g.
// a corrected base (base_overlay.h).
// kCancelled: `stop` was requested; checked before every step. The adapter is left in
// evaluation mode (no dropout) on return. kInvalidArgument also when the adapter has no
// trainable tensor.
Result<TrainStats> TrainLora(const LlamaModel& model, LoraAdapter& adapter,
                             std::span<const TokenId> stream, const wire::TrainSpec& spec,
                             std::uint64_t seed, std::stop_token stop = {},
                             std::span<const at::Tensor> base_weights = {});

// The same on any source (sequences.h): windows of a stream (the overload above is
// WindowSource(stream, spec.seq_len, Tokenizer::kBos)) or tokenized examples whose prompt tokens
// are masked out of the loss. An epoch is ceil(source.size() / batch_size) steps; the loss is
// the mean over the batch's unmasked targets. Batches are built on the CPU and moved to the
// model's device.
// `progress` (may be empty) is called after every step (progress.h).
Result<TrainStats> TrainLora(const LlamaModel& model, LoraAdapter& adapter,
                             const SequenceSource& source, const wire::TrainSpec& spec,
                             std::uint64_t seed, std::stop_token stop = {},
                             std::span<const at::Tensor> base_weights = {},
                             const ProgressFn& progress = {});

struct EvalOptions {
  std::uint32_t seq_len = 128;
  std::uint32_t batch_size = 8;
  std::uint32_t max_batches = 0;   // 0 = no cap.
  std::uint64_t max_windows = 0;   // 0 = no cap; applied before batching (first windows/rows).
  // Classification (Evaluate on an ExampleSource only): the first token of each class's label
  // and each row's class. Accuracy = share of rows whose highest-scoring label token, at the
  // position where the response begins, is their own class's. Views: must outlive the call.
  std::span<const TokenId> label_tokens;
  std::span<const std::int32_t> labels;
};

struct EvalStats {
  double loss = 0.0;           // Mean NLL per predicted token (nats).
  std::uint64_t tokens = 0;    // Predicted tokens the mean is over.
  std::uint64_t windows = 0;   // Windows (or examples) evaluated.
  std::optional<double> accuracy;  // Label-token accuracy when label_tokens were given.
  std::vector<std::uint64_t> class_counts;  // Evaluated rows per class (classification only).
  double seconds = 0.0;
};

// Evaluates the model (with `adapter` if not null, used as is: put a LoraAdapter in evaluation
// mode first) on the first windows of `stream`, in order, under NoGradGuard.
// kInvalidArgument: bad options. kFailedPrecondition: `stream` is empty. kCancelled: `stop`
// was requested (checked before every batch).
// `base_weights` as for TrainLora.
Result<EvalStats> EvaluateLoss(const LlamaModel& model, ModuleAdapter* adapter,
                               std::span<const TokenId> stream, const EvalOptions& options,
                               std::stop_token stop = {},
                               std::span<const at::Tensor> base_weights = {});

// The same on the first rows of any source, in order (options.seq_len is unused: the source
// fixes lengths); with options.label_tokens also the accuracy. kInvalidArgument: batch_size 0,
// or fewer labels than rows.
Result<EvalStats> Evaluate(const LlamaModel& model, ModuleAdapter* adapter,
                           const SequenceSource& source, const EvalOptions& options,
                           std::stop_token stop = {},
                           std::span<const at::Tensor> base_weights = {});

// ---- Gradients with respect to base weights (LoRA-SB initialisation, ALGORITHMS.md §5) ------

struct BaseGradients {
  std::vector<at::Tensor> grads;  // G per requested module, float32 [d_out, d_in].
  double loss = 0.0;              // Mean token loss over the batches.
  std::uint64_t batches = 0;
  std::uint64_t samples = 0;      // Windows used.
  std::uint64_t tokens = 0;
  double seconds = 0.0;
};

// G = Σ_batches ∇_W (L_b / n_b) for the weight W of every module in `module_indices`
// (AdaptableModules() indices), where L_b is batch b's mean token loss and n_b its number of
// windows. Batches of `batch_size` consecutive entries of `windows` (all of one length), inputs
// and targets as for TrainLora, no adapter, no dropout. W is `base_weights[i]` when defined,
// else the frozen weight; gradients flow through detached aliases that require grad, so neither
// the model nor `base_weights` is modified (the model may be shared with other threads).
// kInvalidArgument: a bad module index, batch_size 0 or no windows. kCancelled: `stop` was
// requested (checked before every batch).
Result<BaseGradients> AccumulateBaseGradients(const LlamaModel& model,
                                              std::span<const std::size_t> module_indices,
                                              std::span<const TokenId> stream,
                                              std::span<const TokenWindow> windows,
                                              std::uint32_t batch_size, std::stop_token stop = {},
                                              std::span<const at::Tensor> base_weights = {});
// The same over every row of `source`, in order.
Result<BaseGradients> AccumulateBaseGradients(const LlamaModel& model,
                                              std::span<const std::size_t> module_indices,
                                              const SequenceSource& source,
                                              std::uint32_t batch_size, std::stop_token stop = {},
                                              std::span<const at::Tensor> base_weights = {});

// Greedy decoding (argmax at every step, no KV cache) of up to `max_new_tokens` after `prompt`;
// returns prompt + generated tokens, stopping early at the model's seq_len.
// kInvalidArgument: empty prompt or an id outside the vocabulary.
Result<std::vector<TokenId>> GenerateGreedy(const LlamaModel& model, ModuleAdapter* adapter,
                                            std::vector<TokenId> prompt,
                                            std::size_t max_new_tokens);

struct GenerateOptions {
  std::size_t max_new_tokens = 64;
  // Called with each token as it is chosen (e.g. to print a streamed answer); may be empty.
  std::function<void(TokenId)> on_token;
  double temperature = 0.0;  // 0 = greedy (argmax); else softmax(logits / temperature).
  double top_p = 1.0;        // Nucleus sampling: the smallest set of tokens with mass >= top_p.
  std::uint64_t seed = 0;    // Sampling is deterministic in the seed.
  std::vector<TokenId> stop_tokens;  // Generation ends after emitting one of these (e.g. EOS).
};

// Decodes after `prompt` (no KV cache: each step reruns the sequence, fine for the short
// generations evaluation needs) and returns only the new tokens, ending early at a stop token
// or the model's seq_len. kInvalidArgument: empty prompt, an id outside the vocabulary, or
// temperature < 0 / top_p outside (0, 1].
Result<std::vector<TokenId>> Generate(const LlamaModel& model, ModuleAdapter* adapter,
                                      std::span<const TokenId> prompt,
                                      const GenerateOptions& options,
                                      std::span<const at::Tensor> base_weights = {});

}  // namespace fedlora::client
