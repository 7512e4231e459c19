#include "client/train/trainer.h"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "client/data/text_dataset.h"

namespace fedlora::client {
namespace {

using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

Status CancelledStatus(std::string what) { return Status(StatusCode::kCancelled, std::move(what)); }

Status ValidateSeqLen(std::uint32_t seq_len, const LlamaModel& model, std::string_view field) {
  if (seq_len == 0 || seq_len > model.config().seq_len) {
    return InvalidArgument(field, " ", seq_len, " must be in [1, ", model.config().seq_len,
                           "] (the model's context length)");
  }
  return OkStatus();
}

Status ValidateTrainSpec(const wire::TrainSpec& s, const LlamaModel& model) {
  FEDLORA_RETURN_IF_ERROR(ValidateSeqLen(s.seq_len, model, "train.seq_len"));
  if (s.batch_size == 0) return InvalidArgument("train.batch_size must be >= 1");
  if (s.local_epochs == 0 && s.local_steps == 0) {
    return InvalidArgument("train.local_steps and train.local_epochs are both 0");
  }
  if (!std::isfinite(s.learning_rate) || s.learning_rate < 0.0) {
    return InvalidArgument("train.learning_rate ", s.learning_rate, " must be finite and >= 0");
  }
  if (!(s.beta1 >= 0.0 && s.beta1 < 1.0) || !(s.beta2 >= 0.0 && s.beta2 < 1.0)) {
    return InvalidArgument("train.beta1 ", s.beta1, " and train.beta2 ", s.beta2,
                           " must be in [0, 1)");
  }
  if (!std::isfinite(s.eps) || s.eps <= 0.0) {
    return InvalidArgument("train.eps ", s.eps, " must be finite and > 0");
  }
  if (!std::isfinite(s.weight_decay) || s.weight_decay < 0.0) {
    return InvalidArgument("train.weight_decay ", s.weight_decay, " must be finite and >= 0");
  }
  if (!std::isfinite(s.grad_clip) || s.grad_clip < 0.0) {
    return InvalidArgument("train.grad_clip ", s.grad_clip, " must be finite and >= 0");
  }
  return OkStatus();
}

// Inputs [B, T] = [BOS, w0..w_{T-2}] and targets [B, T] = [w0..w_{T-1}] for windows of equal
// length (MakeWindows gives all windows one length, except a lone short one).
struct Batch {
  at::Tensor inputs;
  at::Tensor targets;
};

Batch MakeBatch(std::span<const TokenId> stream, std::span<const TokenWindow> windows,
                std::span<const std::size_t> picks) {
  const auto b = static_cast<std::int64_t>(picks.size());
  const auto t = static_cast<std::int64_t>(windows[picks[0]].length);
  Batch batch{at::empty({b, t}, at::kLong), at::empty({b, t}, at::kLong)};
  std::int64_t* in = batch.inputs.data_ptr<std::int64_t>();
  std::int64_t* out = batch.targets.data_ptr<std::int64_t>();
  for (std::int64_t row = 0; row < b; ++row) {
    const TokenWindow& w = windows[picks[row]];
    FEDLORA_CHECK(static_cast<std::int64_t>(w.length) == t);
    in[row * t] = Tokenizer::kBos;
    for (std::int64_t k = 0; k < t; ++k) {
      if (k + 1 < t) in[row * t + k + 1] = stream[w.begin + k];
      out[row * t + k] = stream[w.begin + k];
    }
  }
  return batch;
}

at::Tensor TokenLoss(const at::Tensor& logits, const at::Tensor& targets, at::Reduction::Reduction r) {
  const std::int64_t vocab = logits.size(-1);
  return at::cross_entropy_loss(logits.reshape({-1, vocab}), targets.reshape({-1}), {}, r);
}

// Scales the gradients so their global L2 norm is at most `max_norm`, like PyTorch's
// clip_grad_norm_ (coefficient max_norm / (norm + 1e-6), applied only when below 1).
void ClipGradNorm(const std::vector<at::Tensor>& params, double max_norm) {
  std::vector<at::Tensor> norms;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) norms.push_back(p.grad().norm());
  }
  if (norms.empty()) return;
  const double total = at::stack(norms).norm().item<double>();
  const double coef = max_norm / (total + 1e-6);
  if (coef >= 1.0) return;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) p.grad().mul_(coef);
  }
}

// Restores evaluation mode when training ends on any path.
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

}  // namespace

Result<TrainStats> TrainLora(const LlamaModel& model, LoraAdapter& adapter,
                             std::span<const TokenId> stream, const wire::TrainSpec& spec,
                             std::uint64_t seed, std::stop_token stop,
                             std::span<const at::Tensor> base_weights) try {
  FEDLORA_RETURN_IF_ERROR(ValidateTrainSpec(spec, model));
  const std::vector<TokenWindow> windows = MakeWindows(stream.size(), spec.seq_len);
  if (windows.empty()) return FailedPrecondition("no training data (empty token stream)");
  const std::size_t batch_size = spec.batch_size;
  const std::uint64_t steps_per_epoch = (windows.size() + batch_size - 1) / batch_size;
  const std::uint64_t total_steps =
      spec.local_epochs > 0 ? spec.local_epochs * steps_per_epoch : spec.local_steps;

  const std::vector<at::Tensor> params = adapter.Parameters();
  if (params.empty()) return InvalidArgument("the adapter has no trainable tensor");
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(spec.learning_rate)
                                            .betas({spec.beta1, spec.beta2})
                                            .eps(spec.eps)
                                            .weight_decay(spec.weight_decay));
  TrainingModeScope training(adapter);
  std::mt19937_64 rng(seed);
  std::vector<std::size_t> order(windows.size());
  std::size_t cursor = order.size();  // Exhausted: the first step shuffles.

  const SteadyClock::time_point start = SteadyClock::now();
  TrainStats stats;
  double loss_sum = 0.0;  // Sum over steps of mean loss x predicted tokens.
  for (std::uint64_t step = 0; step < total_steps; ++step) {
    if (stop.stop_requested()) {
      return CancelledStatus(StrCat("training cancelled after ", step, " of ", total_steps, " steps"));
    }
    if (cursor == order.size()) {
      std::iota(order.begin(), order.end(), std::size_t{0});
      DeterministicShuffle(order, rng);
      cursor = 0;
    }
    const std::size_t take = std::min(batch_size, order.size() - cursor);
    const Batch batch =
        MakeBatch(stream, windows, std::span<const std::size_t>(order).subspan(cursor, take));
    cursor += take;

    const double lr = spec.warmup_steps > 0 && step < spec.warmup_steps
                          ? spec.learning_rate * static_cast<double>(step + 1) / spec.warmup_steps
                          : spec.learning_rate;
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    optimizer.zero_grad();
    FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                             model.Forward(batch.inputs, &adapter, base_weights));
    const at::Tensor loss = TokenLoss(logits, batch.targets, at::Reduction::Mean);
    const double loss_value = loss.item<double>();
    const at::Tensor penalty = adapter.Penalty();
    const at::Tensor objective = penalty.defined() ? loss + penalty : loss;
    if (!std::isfinite(loss_value) ||
        (penalty.defined() && !std::isfinite(penalty.item<double>()))) {
      return InvalidArgument("training diverged: non-finite loss at step ", step,
                             " (hint: lower train.learning_rate or set train.grad_clip)");
    }
    objective.backward();
    if (spec.grad_clip > 0.0) ClipGradNorm(params, spec.grad_clip);
    optimizer.step();

    const auto tokens = static_cast<std::uint64_t>(batch.targets.numel());
    loss_sum += loss_value * static_cast<double>(tokens);
    stats.tokens += tokens;
    stats.samples += take;
    stats.steps = step + 1;
  }
  stats.loss = stats.tokens > 0 ? loss_sum / static_cast<double>(stats.tokens) : 0.0;
  stats.seconds = SecondsSince(start);
  return stats;
} catch (const c10::Error& e) {
  return Internal("training: ", e.what_without_backtrace());
}

Result<EvalStats> EvaluateLoss(const LlamaModel& model, ModuleAdapter* adapter,
                               std::span<const TokenId> stream, const EvalOptions& options,
                               std::stop_token stop,
                               std::span<const at::Tensor> base_weights) try {
  FEDLORA_RETURN_IF_ERROR(ValidateSeqLen(options.seq_len, model, "eval seq_len"));
  if (options.batch_size == 0) return InvalidArgument("eval batch_size must be >= 1");
  std::vector<TokenWindow> windows = MakeWindows(stream.size(), options.seq_len);
  if (windows.empty()) return FailedPrecondition("no evaluation data (empty token stream)");
  if (options.max_windows > 0 && windows.size() > options.max_windows) {
    windows.resize(options.max_windows);
  }
  std::uint64_t num_batches = (windows.size() + options.batch_size - 1) / options.batch_size;
  if (options.max_batches > 0) num_batches = std::min<std::uint64_t>(num_batches, options.max_batches);

  at::NoGradGuard no_grad;
  const SteadyClock::time_point start = SteadyClock::now();
  std::vector<std::size_t> picks;
  double nll_sum = 0.0;
  EvalStats stats;
  for (std::uint64_t b = 0; b < num_batches; ++b) {
    if (stop.stop_requested()) {
      return CancelledStatus(StrCat("evaluation cancelled after ", b, " of ", num_batches, " batches"));
    }
    const std::size_t first = b * options.batch_size;
    const std::size_t take = std::min<std::size_t>(options.batch_size, windows.size() - first);
    picks.resize(take);
    std::iota(picks.begin(), picks.end(), first);
    const Batch batch = MakeBatch(stream, windows, picks);
    FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                             model.Forward(batch.inputs, adapter, base_weights));
    nll_sum += TokenLoss(logits, batch.targets, at::Reduction::Sum).item<double>();
    stats.tokens += static_cast<std::uint64_t>(batch.targets.numel());
    stats.windows += take;
  }
  stats.loss = nll_sum / static_cast<double>(stats.tokens);
  stats.seconds = SecondsSince(start);
  return stats;
} catch (const c10::Error& e) {
  return Internal("evaluation: ", e.what_without_backtrace());
}

Result<BaseGradients> AccumulateBaseGradients(const LlamaModel& model,
                                              std::span<const std::size_t> module_indices,
                                              std::span<const TokenId> stream,
                                              std::span<const TokenWindow> windows,
                                              std::uint32_t batch_size, std::stop_token stop,
                                              std::span<const at::Tensor> base_weights) try {
  const std::size_t num_modules = model.AdaptableModules().size();
  if (batch_size == 0) return InvalidArgument("batch_size must be >= 1");
  if (windows.empty()) return InvalidArgument("no windows to estimate gradients on");
  if (!base_weights.empty() && base_weights.size() != num_modules) {
    return InvalidArgument(base_weights.size(), " base weights for ", num_modules, " modules");
  }
  for (const TokenWindow& w : windows) {
    if (w.length == 0 || w.length != windows[0].length || w.begin + w.length > stream.size()) {
      return InvalidArgument("windows must be non-empty, of one length and inside the stream");
    }
  }
  // Every module's weight for the forward pass: the given base weight or the frozen one, and
  // for the requested modules a detached alias (same storage, no copy) that requires grad.
  std::vector<at::Tensor> weights(num_modules);
  std::vector<at::Tensor> leaves;
  for (std::size_t index : module_indices) {
    if (index >= num_modules) return InvalidArgument("module index ", index, " out of range");
    if (weights[index].defined()) return InvalidArgument("module index ", index, " repeated");
    const at::Tensor& w = index < base_weights.size() && base_weights[index].defined()
                              ? base_weights[index]
                              : model.ModuleWeight(index);
    weights[index] = w.detach();
    weights[index].set_requires_grad(true);
    leaves.push_back(weights[index]);
  }
  for (std::size_t i = 0; i < base_weights.size(); ++i) {
    if (!weights[i].defined()) weights[i] = base_weights[i];
  }

  const SteadyClock::time_point start = SteadyClock::now();
  BaseGradients out;
  std::vector<std::size_t> picks;
  double loss_sum = 0.0;
  for (std::size_t first = 0; first < windows.size(); first += batch_size) {
    if (stop.stop_requested()) {
      return CancelledStatus(StrCat("gradient estimate cancelled after ", out.batches, " batches"));
    }
    const std::size_t take = std::min<std::size_t>(batch_size, windows.size() - first);
    picks.resize(take);
    std::iota(picks.begin(), picks.end(), first);
    const Batch batch = MakeBatch(stream, windows, picks);
    FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                             model.Forward(batch.inputs, nullptr, weights));
    const at::Tensor loss = TokenLoss(logits, batch.targets, at::Reduction::Mean);
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) {
      return InvalidArgument("non-finite loss in batch ", out.batches, " of the gradient estimate");
    }
    // Autograd accumulates into each leaf's grad across batches: G = Σ_b ∇(L_b / n_b).
    (loss / static_cast<double>(take)).backward();
    const auto tokens = static_cast<std::uint64_t>(batch.targets.numel());
    loss_sum += loss_value * static_cast<double>(tokens);
    out.tokens += tokens;
    out.samples += take;
    ++out.batches;
  }
  for (const at::Tensor& leaf : leaves) {
    out.grads.push_back(leaf.grad().defined() ? leaf.grad().detach() : at::zeros_like(leaf));
  }
  out.loss = out.tokens > 0 ? loss_sum / static_cast<double>(out.tokens) : 0.0;
  out.seconds = SecondsSince(start);
  return out;
} catch (const c10::Error& e) {
  return Internal("gradient estimate: ", e.what_without_backtrace());
}

Result<std::vector<TokenId>> GenerateGreedy(const LlamaModel& model, ModuleAdapter* adapter,
                                            std::vector<TokenId> prompt,
                                            std::size_t max_new_tokens) try {
  if (prompt.empty()) return InvalidArgument("GenerateGreedy: empty prompt");
  at::NoGradGuard no_grad;
  const auto limit = static_cast<std::size_t>(model.config().seq_len);
  for (std::size_t n = 0; n < max_new_tokens && prompt.size() < limit; ++n) {
    at::Tensor tokens = at::empty({1, static_cast<std::int64_t>(prompt.size())}, at::kLong);
    std::copy(prompt.begin(), prompt.end(), tokens.data_ptr<std::int64_t>());
    FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits, model.Forward(tokens, adapter));
    prompt.push_back(static_cast<TokenId>(logits[0][-1].argmax().item<std::int64_t>()));
  }
  return prompt;
} catch (const c10::Error& e) {
  return Internal("generation: ", e.what_without_backtrace());
}

}  // namespace fedlora::client
