#include "client/train/batched_trainer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>

#include "client/data/text_dataset.h"
#include "client/train/device.h"

namespace fedlora::client {
// Helpers live in a named namespace: fedlora_client_ml is unity-built, and trainer.cc's
// anonymous helpers (SecondsSince, ClipGradNorm, ...) may share this translation unit.
namespace batched_trainer_impl {
namespace {

using SteadyClock = std::chrono::steady_clock;

Status Cancelled(std::string what) { return Status(StatusCode::kCancelled, std::move(what)); }

// TrainLora's checks, with the client named.
Status ValidateSpec(const wire::TrainSpec& s, const LlamaModel& model, std::size_t k) {
  return ValidateTrainSpec(s, model).WithContext(StrCat("client ", k));
}

// Same overlay: both empty, or the same length and entry by entry the same tensor.
bool SameOverlay(std::span<const at::Tensor> a, std::span<const at::Tensor> b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].defined() != b[i].defined()) return false;
    if (a[i].defined() && !a[i].is_same(b[i])) return false;
  }
  return true;
}

// One client's optimiser: torch::optim::AdamW's update (trainer.cc's optimiser, term for term)
// and TrainLora's gradient clipping, over the client's trainable tensors gathered into one flat
// buffer, so that zeroing, clipping and a step are a handful of tensor ops per client instead of
// a handful per tensor (~70 tensors per client on stories260K). While it lives, each trainable
// tensor of the adapter (Parameters() returns aliases) is re-pointed with set_data at a view of
// the flat values and its gradient is a view of the flat gradient, into which autograd
// accumulates in place (as PyTorch DDP's gradient_as_bucket_view does); the destructor gives
// every tensor storage of its own again and drops the gradient views.
class FlatAdamW {
 public:
  explicit FlatAdamW(std::vector<at::Tensor> params) : params_(std::move(params)) {
    at::NoGradGuard no_grad;
    std::int64_t total = 0;
    for (const at::Tensor& p : params_) total += p.numel();
    const at::TensorOptions options = params_.front().options();
    values_ = at::empty({total}, options);
    grads_ = at::zeros({total}, options);
    exp_avg_ = at::zeros({total}, options);
    exp_avg_sq_ = at::zeros({total}, options);
    std::int64_t offset = 0;
    for (at::Tensor& p : params_) {
      const std::int64_t n = p.numel();
      at::Tensor value = values_.narrow(0, offset, n);
      value.copy_(p.detach().reshape({-1}));
      p.set_data(value.view(p.sizes()));
      grad_views_.push_back(grads_.narrow(0, offset, n).view(p.sizes()));
      p.mutable_grad() = grad_views_.back();
      offset += n;
    }
  }
  ~FlatAdamW() {
    at::NoGradGuard no_grad;
    for (at::Tensor& p : params_) {
      p.set_data(p.detach().clone(at::MemoryFormat::Contiguous));
      p.mutable_grad().reset();
    }
  }
  FlatAdamW(const FlatAdamW&) = delete;
  FlatAdamW& operator=(const FlatAdamW&) = delete;

  void ZeroGrad() { grads_.zero_(); }

  // After backward: makes sure every gradient is in the flat buffer. Autograd adds into a
  // defined gradient in place, so this only checks; should a LibTorch ever replace the tensor
  // instead, its values are copied in (and a tensor that got no gradient counts as zero, where
  // torch::optim::AdamW would skip it — a LoRA factor always gets one).
  void CollectGrads() {
    at::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      at::Tensor& grad = params_[i].mutable_grad();
      if (grad.defined() && grad.is_same(grad_views_[i])) continue;
      if (grad.defined()) {
        grad_views_[i].copy_(grad);
      } else {
        grad_views_[i].zero_();
      }
      grad = grad_views_[i];
    }
  }

  // PyTorch's clip_grad_norm_ over the client's gradients (coefficient max_norm / (norm + 1e-6),
  // applied only when below 1), computed exactly as TrainLora computes it: the norm of the
  // per-tensor norms. (One norm over the flat gradient would be cheaper, but it rounds
  // differently, and Adam turns a last-bit change of the coefficient into relative differences
  // of ~1e-5 in the factors within a few steps.)
  void ClipGradNorm(double max_norm) {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> norms;
    norms.reserve(params_.size());
    for (const at::Tensor& p : params_) norms.push_back(p.grad().norm());
    const double total = at::stack(norms).norm().item<double>();
    const double coef = max_norm / (total + 1e-6);
    if (coef < 1.0) grads_.mul_(coef);
  }

  // torch::optim::AdamW::step (no amsgrad) with learning rate `lr` and `spec`'s betas, eps and
  // weight decay.
  void Step(double lr, const wire::TrainSpec& spec) {
    at::NoGradGuard no_grad;
    ++step_;
    if (spec.weight_decay != 0.0) values_.mul_(1.0 - lr * spec.weight_decay);
    const double bias_correction1 = 1.0 - std::pow(spec.beta1, static_cast<double>(step_));
    const double bias_correction2 = 1.0 - std::pow(spec.beta2, static_cast<double>(step_));
    exp_avg_.mul_(spec.beta1).add_(grads_, 1.0 - spec.beta1);
    exp_avg_sq_.mul_(spec.beta2).addcmul_(grads_, grads_, 1.0 - spec.beta2);
    const at::Tensor denom = (exp_avg_sq_.sqrt() / std::sqrt(bias_correction2)).add_(spec.eps);
    values_.addcdiv_(exp_avg_, denom, -lr / bias_correction1);
  }

 private:
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> grad_views_;  // params_[i]'s gradient: a view of grads_.
  at::Tensor values_, grads_, exp_avg_, exp_avg_sq_;
  std::int64_t step_ = 0;
};

// Routes each module's adaptation to the clients' row slices of the concatenated batch. The base
// product `base` covers every row; each client's adapter sees only its rows and, when its rows are
// shorter than the batch, only its own positions (so its dropout draws have TrainLora's shapes;
// padded positions keep the base output, which no real position or loss ever reads).
class MultiplexAdapter final : public ModuleAdapter {
 public:
  struct Slice {
    LoraAdapter* adapter = nullptr;
    std::int64_t offset = 0;  // First row.
    std::int64_t rows = 0;
    std::int64_t time = 0;    // The client's own row length (<= the batch's).
  };

  MultiplexAdapter(std::vector<Slice> slices, std::int64_t time)
      : slices_(std::move(slices)), time_(time) {
    for (const Slice& s : slices_) {
      rows_.push_back(s.rows);
      max_rows_ = std::max(max_rows_, s.rows);
      equal_rows_ = equal_rows_ && s.rows == slices_[0].rows;
    }
  }

  at::Tensor Adapt(std::size_t module_index, const at::Tensor& x, at::Tensor base) override {
    if (slices_.size() == 1 && slices_[0].time == time_) {
      return slices_[0].adapter->Adapt(module_index, x, std::move(base));
    }
    if (slices_.size() > 1) {
      if (at::Tensor out = Stacked(module_index, x, base); out.defined()) return out;
    }
    // split_with_sizes, not one narrow per client: its backward writes every slice's gradient
    // into one buffer, where K narrows would each allocate and add a batch-sized zero tensor.
    const std::vector<at::Tensor> xs = x.split_with_sizes(rows_, 0);
    const std::vector<at::Tensor> bases = base.split_with_sizes(rows_, 0);
    std::vector<at::Tensor> parts;
    parts.reserve(slices_.size());
    for (std::size_t k = 0; k < slices_.size(); ++k) {
      const Slice& s = slices_[k];
      if (s.time == time_) {
        parts.push_back(s.adapter->Adapt(module_index, xs[k], bases[k]));
      } else {
        const at::Tensor own = s.adapter->Adapt(module_index, xs[k].narrow(1, 0, s.time),
                                                bases[k].narrow(1, 0, s.time));
        parts.push_back(at::cat({own, bases[k].narrow(1, s.time, time_ - s.time)}, 1));
      }
    }
    return at::cat(parts, 0);
  }

 private:
  // The Punica / S-LoRA form: when every client brings plain factors of one rank and scale
  // (LoraAdapter::Plain), all K LoRA products are two batched matmuls over the stacked factors,
  // [K, n, d_in]·[K, d_in, r]·[K, r, d_out], instead of 2K small ones. Clients with fewer rows
  // than the most are padded with zero rows (one gather in, one gather out: a fixed number of
  // kernels whatever K is). Padded positions of short rows get LoRA too: under causal attention
  // no real position reads them and their targets are ignored, so neither outputs nor gradients
  // change, and without dropout (Plain's condition) no random draw depends on shapes.
  // Undefined when the clients do not qualify for this module.
  at::Tensor Stacked(std::size_t module_index, const at::Tensor& x, const at::Tensor& base) {
    std::vector<at::Tensor> as, bs;
    as.reserve(slices_.size());
    bs.reserve(slices_.size());
    double scale = 0;
    for (const Slice& s : slices_) {
      const std::optional<LoraAdapter::PlainFactors> f = s.adapter->Plain(module_index);
      if (!f || (!as.empty() && (f->a.size(0) != as[0].size(0) || f->scale != scale))) return {};
      scale = f->scale;
      as.push_back(f->a);
      bs.push_back(f->b);
    }
    const auto k = static_cast<std::int64_t>(slices_.size());
    at::Tensor xs = x;
    if (!equal_rows_) {
      BuildPadding(x.device());
      xs = at::cat({x, at::zeros({1, x.size(1), x.size(2)}, x.options())}, 0)
               .index_select(0, pad_gather_);
    }
    const at::Tensor h = at::bmm(xs.reshape({k, -1, x.size(-1)}), at::stack(as).transpose(1, 2));
    at::Tensor y = at::bmm(h, at::stack(bs).transpose(1, 2));
    if (!equal_rows_) {
      y = y.reshape({k * max_rows_, x.size(1), y.size(-1)}).index_select(0, pad_scatter_);
    }
    return base + y.view(base.sizes()) * scale;
  }

  // The gathers between the batch's rows and the padded [K, max_rows] layout, made once per pass.
  void BuildPadding(const at::Device& device) {
    if (pad_gather_.defined()) return;
    const auto k = static_cast<std::int64_t>(slices_.size());
    std::int64_t total = 0;
    for (const Slice& s : slices_) total += s.rows;
    // Row r of client c in the padded layout reads batch row offset + r, or the appended zero
    // row (index `total`) past the client's rows; batch row j comes back from its padded place.
    at::Tensor gather = at::empty({k * max_rows_}, at::kLong);
    at::Tensor scatter = at::empty({total}, at::kLong);
    std::int64_t* g = gather.data_ptr<std::int64_t>();
    std::int64_t* back = scatter.data_ptr<std::int64_t>();
    for (std::int64_t c = 0; c < k; ++c) {
      const Slice& s = slices_[static_cast<std::size_t>(c)];
      for (std::int64_t r = 0; r < max_rows_; ++r) {
        g[c * max_rows_ + r] = r < s.rows ? s.offset + r : total;
        if (r < s.rows) back[s.offset + r] = c * max_rows_ + r;
      }
    }
    pad_gather_ = gather.to(device);
    pad_scatter_ = scatter.to(device);
  }

  std::vector<Slice> slices_;
  std::vector<std::int64_t> rows_;
  std::int64_t time_;
  std::int64_t max_rows_ = 0;
  bool equal_rows_ = true;
  at::Tensor pad_gather_, pad_scatter_;  // BuildPadding's, on the batch's device.
};

// One client's training state across the steps of a call: TrainLora's loop variables.
struct ClientRun {
  LoraAdapter* adapter = nullptr;
  const SequenceSource* source = nullptr;
  const wire::TrainSpec* spec = nullptr;
  std::unique_ptr<FlatAdamW> optimizer;
  std::mt19937_64 rng;
  std::vector<std::size_t> order;
  std::size_t cursor = 0;
  std::uint64_t total_steps = 0;
  double lr = 0.0;  // This step's.
  TrainStats stats;
  double loss_sum = 0.0;
};

// Restores evaluation mode on every adapter when training ends on any path.
class TrainingModeGuard {
 public:
  explicit TrainingModeGuard(std::vector<ClientRun>& runs) : runs_(runs) {
    for (ClientRun& r : runs_) r.adapter->SetTraining(true);
  }
  ~TrainingModeGuard() {
    for (ClientRun& r : runs_) r.adapter->SetTraining(false);
  }
  TrainingModeGuard(const TrainingModeGuard&) = delete;
  TrainingModeGuard& operator=(const TrainingModeGuard&) = delete;

 private:
  std::vector<ClientRun>& runs_;
};

// A client's part of one step.
struct StepRow {
  std::size_t client = 0;
  Batch batch;
  std::size_t take = 0;
  std::uint64_t tokens = 0;
};

// One forward and one backward over `rows` (clients of one step), then each of their clients'
// clipping and optimiser step.
Status RunPass(const LlamaModel& model, std::vector<ClientRun>& runs, std::span<StepRow> rows,
               std::span<const at::Tensor> base_weights, std::uint64_t step) {
  const at::Device device = model.device();
  // One batch: every client's rows, right-padded to the longest.
  std::int64_t time = 0;
  for (const StepRow& row : rows) time = std::max(time, row.batch.inputs.size(1));
  std::vector<at::Tensor> inputs, targets;
  std::vector<MultiplexAdapter::Slice> slices;
  std::int64_t offset = 0;
  for (const StepRow& row : rows) {
    const std::int64_t t = row.batch.inputs.size(1), b = row.batch.inputs.size(0);
    inputs.push_back(t == time ? row.batch.inputs
                               : at::constant_pad_nd(row.batch.inputs, {0, time - t}, 0));
    targets.push_back(t == time
                          ? row.batch.targets
                          : at::constant_pad_nd(row.batch.targets, {0, time - t}, kIgnoreIndex));
    slices.push_back({runs[row.client].adapter, offset, b, t});
    offset += b;
  }
  const at::Tensor all_inputs = inputs.size() == 1 ? inputs[0] : at::cat(inputs, 0);
  const at::Tensor all_targets = targets.size() == 1 ? targets[0] : at::cat(targets, 0);
  MultiplexAdapter multiplex(std::move(slices), time);
  // bf16 on CUDA (nothing on the CPU), one region per pass, as in TrainLora: leaving it drops
  // autocast's cached bf16 copies of the factors, which the optimiser step makes stale.
  std::optional<AutocastScope> autocast(std::in_place, device, /*enabled=*/true);
  FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                           model.Forward(all_inputs.to(device), &multiplex, base_weights));

  // Per-token losses (0 at ignored targets), summed per row; client k's mean token loss is the
  // sum over its rows divided by its target count, exactly TrainLora's mean reduction.
  const std::int64_t vocab = logits.size(-1);
  const at::Tensor token_loss =
      at::cross_entropy_loss(logits.reshape({-1, vocab}), all_targets.to(device).reshape({-1}),
                             {}, at::Reduction::None, kIgnoreIndex);
  autocast.reset();  // The backward runs outside, as in TrainLora.
  const at::Tensor row_loss = token_loss.view({offset, time}).sum(1);  // [rows]
  at::Tensor row_weight = at::empty({offset}, at::kFloat);
  {
    float* w = row_weight.data_ptr<float>();
    std::int64_t i = 0;
    for (const StepRow& row : rows) {
      const float inv = static_cast<float>(1.0 / static_cast<double>(row.tokens));
      for (std::int64_t j = 0; j < row.batch.inputs.size(0); ++j) w[i++] = inv;
    }
  }
  at::Tensor objective = (row_loss * row_weight.to(device)).sum();
  const at::Tensor row_loss_cpu = row_loss.detach().to(at::kCPU, at::kDouble).contiguous();
  const double* row_values = row_loss_cpu.data_ptr<double>();
  std::vector<double> loss_values(rows.size());
  {
    std::int64_t i = 0;
    for (std::size_t n = 0; n < rows.size(); ++n) {
      double sum = 0.0;
      for (std::int64_t j = 0; j < rows[n].batch.inputs.size(0); ++j) sum += row_values[i++];
      loss_values[n] = sum / static_cast<double>(rows[n].tokens);
    }
  }
  for (std::size_t n = 0; n < rows.size(); ++n) {
    const at::Tensor penalty = runs[rows[n].client].adapter->Penalty();
    if (!std::isfinite(loss_values[n]) ||
        (penalty.defined() && !std::isfinite(penalty.item<double>()))) {
      return InvalidArgument("batched training: client ", rows[n].client,
                             " diverged: non-finite loss at step ", step,
                             " (hint: lower train.learning_rate or set train.grad_clip)");
    }
    if (penalty.defined()) objective = objective + penalty;
  }
  objective.backward();

  for (std::size_t n = 0; n < rows.size(); ++n) {
    ClientRun& r = runs[rows[n].client];
    r.optimizer->CollectGrads();
    if (r.spec->grad_clip > 0.0) r.optimizer->ClipGradNorm(r.spec->grad_clip);
    r.optimizer->Step(r.lr, *r.spec);
    r.loss_sum += loss_values[n] * static_cast<double>(rows[n].tokens);
    r.stats.tokens += rows[n].tokens;
    r.stats.samples += rows[n].take;
    r.stats.steps = step + 1;
  }
  return OkStatus();
}

Result<std::vector<TrainStats>> Run(const LlamaModel& model,
                                    std::span<const BatchedClient> clients,
                                    const BatchedTrainOptions& options,
                                    std::stop_token stop) try {
  if (clients.empty()) return InvalidArgument("batched training: no clients");
  for (std::size_t k = 0; k < clients.size(); ++k) {
    const BatchedClient& c = clients[k];
    if (c.adapter == nullptr || c.source == nullptr) {
      return InvalidArgument("batched training: client ", k, " has no adapter or no source");
    }
    for (std::size_t j = 0; j < k; ++j) {
      if (clients[j].adapter == c.adapter) {
        return InvalidArgument("batched training: clients ", j, " and ", k,
                               " share one adapter");
      }
    }
    FEDLORA_RETURN_IF_ERROR(ValidateSpec(c.spec, model, k));
    if (c.source->size() == 0) {
      return FailedPrecondition("batched training: client ", k,
                                " has no training data (empty token stream)");
    }
    if (!SameOverlay(c.base_weights, clients[0].base_weights)) {
      return InvalidArgument("batched training: client ", k,
                             " has other base weights than client 0; one call trains clients "
                             "with one base-weight overlay (group them by overlay)");
    }
    if (c.adapter->Parameters().empty()) {
      return InvalidArgument("batched training: client ", k,
                             ": the adapter has no trainable tensor");
    }
  }
  const std::span<const at::Tensor> base_weights = clients[0].base_weights;

  std::vector<ClientRun> runs(clients.size());
  std::uint64_t max_steps = 0;
  for (std::size_t k = 0; k < clients.size(); ++k) {
    const BatchedClient& c = clients[k];
    ClientRun& r = runs[k];
    r.adapter = c.adapter;
    r.source = c.source;
    r.spec = &c.spec;
    const std::size_t batch_size = c.spec.batch_size;
    const std::uint64_t steps_per_epoch = (c.source->size() + batch_size - 1) / batch_size;
    r.total_steps =
        c.spec.local_epochs > 0 ? c.spec.local_epochs * steps_per_epoch : c.spec.local_steps;
    max_steps = std::max(max_steps, r.total_steps);
    r.optimizer = std::make_unique<FlatAdamW>(c.adapter->Parameters());
    r.rng.seed(c.seed);
    r.order.resize(c.source->size());
    r.cursor = r.order.size();  // Exhausted: the first step shuffles.
  }
  TrainingModeGuard training(runs);

  const SteadyClock::time_point start = SteadyClock::now();
  std::vector<StepRow> rows;
  for (std::uint64_t step = 0; step < max_steps; ++step) {
    if (stop.stop_requested()) {
      return Cancelled(StrCat("batched training cancelled after ", step, " of ", max_steps,
                              " steps"));
    }
    // Each active client's batch, learning rate and zeroed gradients, as in TrainLora.
    rows.clear();
    for (std::size_t k = 0; k < runs.size(); ++k) {
      ClientRun& r = runs[k];
      if (step >= r.total_steps) continue;
      if (r.cursor == r.order.size()) {
        std::iota(r.order.begin(), r.order.end(), std::size_t{0});
        DeterministicShuffle(r.order, r.rng);
        r.cursor = 0;
      }
      const std::size_t take = std::min<std::size_t>(r.spec->batch_size, r.order.size() - r.cursor);
      const std::span<const std::size_t> picks =
          std::span<const std::size_t>(r.order).subspan(r.cursor, take);
      Batch batch = r.source->MakeBatch(picks);
      r.cursor += take;
      const wire::TrainSpec& spec = *r.spec;
      r.lr = LearningRateAt(spec, step);
      r.optimizer->ZeroGrad();
      const std::uint64_t tokens = r.source->CountTargets(picks);
      if (tokens == 0) continue;  // Only masked targets: TrainLora skips the step too.
      rows.push_back({k, std::move(batch), take, tokens});
    }
    if (rows.empty()) continue;

    // Consecutive runs of clients, at most options.max_rows_per_pass rows each (a client's rows
    // are never split), each one forward and one backward.
    for (std::size_t first = 0; first < rows.size();) {
      std::size_t last = first + 1;
      std::int64_t pass_rows = rows[first].batch.inputs.size(0);
      while (last < rows.size() &&
             (options.max_rows_per_pass == 0 ||
              pass_rows + rows[last].batch.inputs.size(0) <= options.max_rows_per_pass)) {
        pass_rows += rows[last].batch.inputs.size(0);
        ++last;
      }
      const std::span<StepRow> pass = std::span<StepRow>(rows).subspan(first, last - first);
      FEDLORA_RETURN_IF_ERROR(RunPass(model, runs, pass, base_weights, step));
      first = last;
    }
  }
  const double seconds =
      std::chrono::duration<double>(SteadyClock::now() - start).count();
  std::vector<TrainStats> out;
  out.reserve(runs.size());
  for (ClientRun& r : runs) {
    r.stats.loss = r.stats.tokens > 0 ? r.loss_sum / static_cast<double>(r.stats.tokens) : 0.0;
    r.stats.seconds = seconds;
    out.push_back(r.stats);
  }
  return out;
} catch (const c10::Error& e) {
  return Internal("batched training: ", e.what_without_backtrace());
}

}  // namespace
}  // namespace batched_trainer_impl

Result<std::vector<TrainStats>> TrainLoraBatched(const LlamaModel& model,
                                                 std::span<const BatchedClient> clients,
                                                 const BatchedTrainOptions& options,
                                                 std::stop_token stop) {
  return batched_trainer_impl::Run(model, clients, options, std::move(stop));
}

}  // namespace fedlora::client
