#include "client/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "client/data/text_dataset.h"
#include "client/train/device.h"
#include "client/train/sequences.h"

namespace fedlora::client {
namespace {

using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// Where the model's weights live; batches are built on the CPU and moved there.
at::Device ModelDevice(const LlamaModel& model) { return model.device(); }

Status CancelledStatus(std::string what) { return Status(StatusCode::kCancelled, std::move(what)); }

Status ValidateSeqLen(std::uint32_t seq_len, const LlamaModel& model, std::string_view field) {
  if (seq_len == 0 || seq_len > model.config().seq_len) {
    return InvalidArgument(field, " ", seq_len, " must be in [1, ", model.config().seq_len,
                           "] (the model's context length)");
  }
  return OkStatus();
}

at::Tensor TokenLoss(const at::Tensor& logits, const at::Tensor& targets, at::Reduction::Reduction r) {
  const std::int64_t vocab = logits.size(-1);
  return at::cross_entropy_loss(logits.reshape({-1, vocab}), targets.reshape({-1}), {}, r,
                               kIgnoreIndex);
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

}  // namespace

double LearningRateAt(const wire::TrainSpec& spec, std::uint64_t step) {
  return spec.warmup_steps > 0 && step < spec.warmup_steps
             ? spec.learning_rate * static_cast<double>(step + 1) / spec.warmup_steps
             : spec.learning_rate;
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

Result<TrainStats> TrainLora(const LlamaModel& model, LoraAdapter& adapter,
                             std::span<const TokenId> stream, const wire::TrainSpec& spec,
                             std::uint64_t seed, std::stop_token stop,
                             std::span<const at::Tensor> base_weights) {
  FEDLORA_RETURN_IF_ERROR(ValidateSeqLen(spec.seq_len, model, "train.seq_len"));
  const WindowSource source(stream, spec.seq_len, Tokenizer::kBos);
  return TrainLora(model, adapter, source, spec, seed, std::move(stop), base_weights);
}

Result<TrainStats> TrainLora(const LlamaModel& model, LoraAdapter& adapter,
                             const SequenceSource& source, const wire::TrainSpec& spec,
                             std::uint64_t seed, std::stop_token stop,
                             std::span<const at::Tensor> base_weights,
                             const ProgressFn& progress) try {
  FEDLORA_RETURN_IF_ERROR(ValidateTrainSpec(spec, model));
  if (source.size() == 0) return FailedPrecondition("no training data (empty token stream)");
  const std::size_t batch_size = spec.batch_size;
  const std::uint64_t steps_per_epoch = (source.size() + batch_size - 1) / batch_size;
  const std::uint64_t total_steps =
      spec.local_epochs > 0 ? spec.local_epochs * steps_per_epoch : spec.local_steps;
  const at::Device device = ModelDevice(model);

  const std::vector<at::Tensor> params = adapter.Parameters();
  if (params.empty()) return InvalidArgument("the adapter has no trainable tensor");
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(spec.learning_rate)
                                            .betas({spec.beta1, spec.beta2})
                                            .eps(spec.eps)
                                            .weight_decay(spec.weight_decay));
  TrainingModeScope training(adapter);
  std::mt19937_64 rng(seed);
  std::vector<std::size_t> order(source.size());
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
    const std::span<const std::size_t> picks = std::span<const std::size_t>(order).subspan(cursor, take);
    const Batch batch = source.MakeBatch(picks);
    cursor += take;

    const double lr = LearningRateAt(spec, step);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    optimizer.zero_grad();
    const std::uint64_t tokens = source.CountTargets(picks);
    if (tokens == 0) continue;  // Only masked targets (cannot happen with validated examples).
    at::Tensor loss;
    {
      // bf16 on CUDA (nothing on the CPU), one region per step: leaving it drops autocast's
      // cached bf16 copies of the adapter's factors, which would otherwise keep serving the
      // first step's values to every later forward (found on the first GPU run: the loss rose).
      const AutocastScope autocast(device, /*enabled=*/true);
      FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                               model.Forward(batch.inputs.to(device), &adapter, base_weights));
      loss = TokenLoss(logits, batch.targets.to(device), at::Reduction::Mean);
    }
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

    loss_sum += loss_value * static_cast<double>(tokens);
    stats.tokens += tokens;
    stats.samples += take;
    stats.steps = step + 1;
    if (progress) progress({step + 1, total_steps, loss_value, stats.tokens, SecondsSince(start)});
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
                               std::span<const at::Tensor> base_weights) {
  FEDLORA_RETURN_IF_ERROR(ValidateSeqLen(options.seq_len, model, "eval seq_len"));
  WindowSource source(stream, options.seq_len, Tokenizer::kBos);
  if (options.max_windows > 0) source.Truncate(options.max_windows);
  return Evaluate(model, adapter, source, options, std::move(stop), base_weights);
}

Result<EvalStats> Evaluate(const LlamaModel& model, ModuleAdapter* adapter,
                           const SequenceSource& source, const EvalOptions& options,
                           std::stop_token stop, std::span<const at::Tensor> base_weights) try {
  if (options.batch_size == 0) return InvalidArgument("eval batch_size must be >= 1");
  if (source.size() == 0) return FailedPrecondition("no evaluation data (empty token stream)");
  const bool classify = !options.label_tokens.empty();
  if (classify && options.labels.size() < source.size()) {
    return InvalidArgument("evaluation: ", options.labels.size(), " labels for ", source.size(),
                           " examples");
  }
  std::size_t rows = source.size();
  if (options.max_windows > 0) rows = std::min<std::size_t>(rows, options.max_windows);
  std::uint64_t num_batches = (rows + options.batch_size - 1) / options.batch_size;
  if (options.max_batches > 0) num_batches = std::min<std::uint64_t>(num_batches, options.max_batches);

  at::NoGradGuard no_grad;
  const at::Device device = ModelDevice(model);
  const AutocastScope autocast(device, /*enabled=*/true);
  at::Tensor label_ids;
  if (classify) {
    label_ids = at::empty({static_cast<std::int64_t>(options.label_tokens.size())}, at::kLong);
    for (std::size_t c = 0; c < options.label_tokens.size(); ++c) {
      label_ids.data_ptr<std::int64_t>()[c] = options.label_tokens[c];
    }
    label_ids = label_ids.to(device);
  }
  const SteadyClock::time_point start = SteadyClock::now();
  std::vector<std::size_t> picks;
  double nll_sum = 0.0;
  EvalStats stats;
  std::uint64_t correct = 0;
  for (std::uint64_t b = 0; b < num_batches; ++b) {
    if (stop.stop_requested()) {
      return CancelledStatus(StrCat("evaluation cancelled after ", b, " of ", num_batches, " batches"));
    }
    const std::size_t first = b * options.batch_size;
    const std::size_t take = std::min<std::size_t>(options.batch_size, rows - first);
    picks.resize(take);
    std::iota(picks.begin(), picks.end(), first);
    const Batch batch = source.MakeBatch(picks);
    FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                             model.Forward(batch.inputs.to(device), adapter, base_weights));
    nll_sum += TokenLoss(logits, batch.targets.to(device), at::Reduction::Sum).item<double>();
    stats.tokens += source.CountTargets(picks);
    stats.windows += take;
    if (classify) {
      // Class scores: the logits of each label's first token where the response begins.
      const std::int64_t t = logits.size(1);
      at::Tensor flat = at::empty({static_cast<std::int64_t>(take)}, at::kLong);
      for (std::size_t r = 0; r < take; ++r) {
        if (batch.answer_positions[r] < 0) {
          return InvalidArgument("evaluation: accuracy needs examples, not text windows");
        }
        flat.data_ptr<std::int64_t>()[r] = static_cast<std::int64_t>(r) * t + batch.answer_positions[r];
      }
      const at::Tensor at_answer =  // [take, vocab]
          logits.reshape({-1, logits.size(2)}).index_select(0, flat.to(device));
      const at::Tensor predicted = at_answer.index_select(1, label_ids).argmax(1).cpu();
      stats.class_counts.resize(options.label_tokens.size());
      for (std::size_t r = 0; r < take; ++r) {
        const std::int32_t label = options.labels[picks[r]];
        if (predicted.data_ptr<std::int64_t>()[r] == label) ++correct;
        if (label >= 0 && static_cast<std::size_t>(label) < stats.class_counts.size()) {
          ++stats.class_counts[static_cast<std::size_t>(label)];
        }
      }
    }
  }
  stats.loss = stats.tokens > 0 ? nll_sum / static_cast<double>(stats.tokens) : 0.0;
  if (classify && stats.windows > 0) {
    stats.accuracy = static_cast<double>(correct) / static_cast<double>(stats.windows);
  }
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
                                              std::span<const at::Tensor> base_weights) {
  if (windows.empty()) return InvalidArgument("no windows to estimate gradients on");
  for (const TokenWindow& w : windows) {
    if (w.length == 0 || w.length != windows[0].length || w.begin + w.length > stream.size()) {
      return InvalidArgument("windows must be non-empty, of one length and inside the stream");
    }
  }
  const WindowSource source(stream, std::vector<TokenWindow>(windows.begin(), windows.end()),
                            Tokenizer::kBos);
  return AccumulateBaseGradients(model, module_indices, source, batch_size, std::move(stop),
                                 base_weights);
}

Result<BaseGradients> AccumulateBaseGradients(const LlamaModel& model,
                                              std::span<const std::size_t> module_indices,
                                              const SequenceSource& source,
                                              std::uint32_t batch_size, std::stop_token stop,
                                              std::span<const at::Tensor> base_weights) try {
  const std::size_t num_modules = model.AdaptableModules().size();
  if (batch_size == 0) return InvalidArgument("batch_size must be >= 1");
  if (source.size() == 0) return InvalidArgument("no windows to estimate gradients on");
  if (!base_weights.empty() && base_weights.size() != num_modules) {
    return InvalidArgument(base_weights.size(), " base weights for ", num_modules, " modules");
  }
  const at::Device device = ModelDevice(model);
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
  for (std::size_t first = 0; first < source.size(); first += batch_size) {
    if (stop.stop_requested()) {
      return CancelledStatus(StrCat("gradient estimate cancelled after ", out.batches, " batches"));
    }
    const std::size_t take = std::min<std::size_t>(batch_size, source.size() - first);
    picks.resize(take);
    std::iota(picks.begin(), picks.end(), first);
    const Batch batch = source.MakeBatch(picks);
    FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                             model.Forward(batch.inputs.to(device), nullptr, weights));
    const at::Tensor loss = TokenLoss(logits, batch.targets.to(device), at::Reduction::Mean);
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) {
      return InvalidArgument("non-finite loss in batch ", out.batches, " of the gradient estimate");
    }
    // Autograd accumulates into each leaf's grad across batches: G = Σ_b ∇(L_b / n_b).
    (loss / static_cast<double>(take)).backward();
    const std::uint64_t tokens = source.CountTargets(picks);
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
    FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                             model.Forward(tokens.to(ModelDevice(model)), adapter));
    prompt.push_back(static_cast<TokenId>(logits[0][-1].argmax().item<std::int64_t>()));
  }
  return prompt;
} catch (const c10::Error& e) {
  return Internal("generation: ", e.what_without_backtrace());
}

Result<std::vector<TokenId>> Generate(const LlamaModel& model, ModuleAdapter* adapter,
                                      std::span<const TokenId> prompt,
                                      const GenerateOptions& options,
                                      std::span<const at::Tensor> base_weights) try {
  if (prompt.empty()) return InvalidArgument("generate: empty prompt");
  if (!(options.temperature >= 0.0) || !std::isfinite(options.temperature)) {
    return InvalidArgument("generate: temperature ", options.temperature, " must be >= 0");
  }
  if (!(options.top_p > 0.0 && options.top_p <= 1.0)) {
    return InvalidArgument("generate: top_p ", options.top_p, " must be in (0, 1]");
  }
  at::NoGradGuard no_grad;
  const at::Device device = ModelDevice(model);
  const AutocastScope autocast(device, /*enabled=*/true);
  const auto limit = static_cast<std::size_t>(model.config().seq_len);
  std::vector<TokenId> sequence(prompt.begin(), prompt.end());
  std::vector<TokenId> generated;
  std::mt19937_64 rng(options.seed);
  for (std::size_t n = 0; n < options.max_new_tokens && sequence.size() < limit; ++n) {
    at::Tensor tokens = at::empty({1, static_cast<std::int64_t>(sequence.size())}, at::kLong);
    std::copy(sequence.begin(), sequence.end(), tokens.data_ptr<std::int64_t>());
    FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                             model.Forward(tokens.to(device), adapter, base_weights));
    const at::Tensor last = logits[0][-1].to(at::kDouble).cpu();
    TokenId next = 0;
    if (options.temperature == 0.0) {
      next = static_cast<TokenId>(last.argmax().item<std::int64_t>());
    } else {
      // Probabilities sorted high to low; keep the smallest prefix with mass >= top_p (at least
      // one token), renormalise, and draw with our own uniform (std distributions differ
      // between standard libraries).
      const at::Tensor probs = at::softmax(last / options.temperature, 0);
      const std::tuple<at::Tensor, at::Tensor> sorted = at::sort(probs, 0, /*descending=*/true);
      const at::Tensor p = std::get<0>(sorted).contiguous();
      const at::Tensor ids = std::get<1>(sorted).contiguous();
      const double* pp = p.data_ptr<double>();
      const std::int64_t* ip = ids.data_ptr<std::int64_t>();
      std::int64_t keep = 0;
      double mass = 0.0;
      while (keep < p.numel() && (keep == 0 || mass < options.top_p)) mass += pp[keep++];
      const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * mass;
      double acc = 0.0;
      next = static_cast<TokenId>(ip[keep - 1]);
      for (std::int64_t k = 0; k < keep; ++k) {
        acc += pp[k];
        if (u < acc) {
          next = static_cast<TokenId>(ip[k]);
          break;
        }
      }
    }
    sequence.push_back(next);
    generated.push_back(next);
    if (options.on_token) options.on_token(next);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), next) !=
        options.stop_tokens.end()) {
      break;
    }
  }
  return generated;
} catch (const c10::Error& e) {
  return Internal("generation: ", e.what_without_backtrace());
}

}  // namespace fedlora::client
