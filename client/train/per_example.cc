#include "client/train/per_example.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "client/train/device.h"

namespace fedlora::client {
namespace {

// One row's copy of a trainable factor, or the shared frozen factor.
struct PerRowFactor {
  at::Tensor shared;  // [rows, cols]: frozen, applied to every row alike.
  at::Tensor leaf;    // [n, rows, cols]: row e's own copy; its grad is example e's gradient.

  // x [n, T, cols] -> [n, T, rows].
  at::Tensor Apply(const at::Tensor& x) const {
    return leaf.defined() ? at::matmul(x, leaf.transpose(1, 2)) : at::linear(x, shared);
  }
};

// Applies `adapter` with one copy of every trainable factor per row of the batch.
class PerRowAdapter final : public ModuleAdapter {
 public:
  // Copies the adapter's trainable factors `rows` times, on their device; `leaves` receives the
  // leaves in adapter.Parameters() order.
  PerRowAdapter(LoraAdapter& adapter, std::int64_t rows, std::vector<at::Tensor>& leaves)
      : adapter_(adapter) {
    slots_.resize(adapter.num_slots());
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const std::optional<LoraAdapter::SlotFactors> f = adapter.Slot(i);
      if (!f) continue;
      Slot& slot = slots_[i].emplace();
      slot.scale = f->scale;
      // Parameters() lists a, b, r per slot; so do the leaves.
      for (auto [from, to] : {std::pair{&f->a, &slot.a}, {&f->b, &slot.b}, {&f->r, &slot.r}}) {
        if (!from->defined()) continue;
        if (!from->requires_grad()) {
          to->shared = *from;
          continue;
        }
        std::vector<std::int64_t> shape{rows};
        for (const std::int64_t d : from->sizes()) shape.push_back(d);
        to->leaf = from->detach().unsqueeze(0).expand(shape).contiguous().requires_grad_(true);
        leaves.push_back(to->leaf);
      }
    }
  }

  at::Tensor Adapt(std::size_t module_index, const at::Tensor& x, at::Tensor base) override {
    TORCH_CHECK(module_index < slots_.size(), "per-example adapter made for ", slots_.size(),
                " modules was asked for module ", module_index);
    const std::optional<Slot>& slot = slots_[module_index];
    if (!slot) return base;
    at::Tensor h = slot->a.Apply(adapter_.AdapterInput(x));
    if (slot->r.shared.defined() || slot->r.leaf.defined()) h = slot->r.Apply(h);
    return base + slot->b.Apply(h) * slot->scale;
  }

 private:
  struct Slot {
    PerRowFactor a, b, r;
    double scale = 0;
  };
  LoraAdapter& adapter_;
  std::vector<std::optional<Slot>> slots_;
};

}  // namespace

Result<ClippedGradients> ClippedGradientSum(const LlamaModel& model, LoraAdapter& adapter,
                                            const SequenceSource& source,
                                            std::span<const std::size_t> picks, double clip,
                                            std::size_t max_rows,
                                            std::span<const at::Tensor> base_weights) try {
  if (!std::isfinite(clip) || clip <= 0) {
    return InvalidArgument("per-example clip ", clip, " must be finite and > 0");
  }
  if (max_rows == 0) return InvalidArgument("per-example gradients: max_rows must be >= 1");
  const std::vector<at::Tensor> params = adapter.Parameters();
  if (params.empty()) return InvalidArgument("the adapter has no trainable tensor");

  ClippedGradients out;
  for (const at::Tensor& p : params) out.sums.push_back(at::zeros_like(p.detach()));
  out.norms.reserve(picks.size());
  const at::Device device = model.device();
  for (std::size_t first = 0; first < picks.size(); first += max_rows) {
    const std::span<const std::size_t> pass =
        picks.subspan(first, std::min(max_rows, picks.size() - first));
    const auto n = static_cast<std::int64_t>(pass.size());
    std::vector<at::Tensor> leaves;
    PerRowAdapter per_row(adapter, n, leaves);
    if (leaves.size() != params.size()) {
      return Internal("per-example gradients: ", leaves.size(), " per-example leaves for ",
                      params.size(), " trainable tensors");
    }
    const Batch batch = source.MakeBatch(pass);
    const at::Tensor targets = batch.targets.to(device);
    at::Tensor row_losses;  // [n]: each row's mean token loss (0 for a row without targets).
    at::Tensor row_sums;
    {
      const AutocastScope autocast(device, /*enabled=*/true);
      FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                               model.Forward(batch.inputs.to(device), &per_row, base_weights));
      const std::int64_t vocab = logits.size(-1);
      const at::Tensor token_loss =
          at::cross_entropy_loss(logits.reshape({-1, vocab}).to(at::kFloat), targets.reshape({-1}),
                                 {}, at::Reduction::None, kIgnoreIndex)
              .reshape(targets.sizes());
      const at::Tensor counts = targets.ne(kIgnoreIndex).sum(1).to(at::kFloat);
      row_sums = token_loss.sum(1);
      row_losses = row_sums / counts.clamp_min(1.0);
    }
    const at::Tensor row_sums_cpu = row_sums.detach().to(at::kCPU, at::kDouble);
    for (std::int64_t e = 0; e < n; ++e) {
      const double value = row_sums_cpu.data_ptr<double>()[e];
      if (!std::isfinite(value)) {
        return InvalidArgument("training diverged: non-finite loss of example ", pass[e],
                               " (hint: lower train.learning_rate)");
      }
      out.loss_sum += value;
    }
    out.tokens += source.CountTargets(pass);
    row_losses.sum().backward();

    // ‖g_e‖ over every trainable tensor, then c_e = min(1, C / (‖g_e‖ + 1e-6)).
    at::Tensor squared = at::zeros({n}, at::TensorOptions().dtype(at::kDouble).device(device));
    for (const at::Tensor& leaf : leaves) {
      squared += leaf.grad().reshape({n, -1}).to(at::kDouble).pow(2).sum(1);
    }
    const at::Tensor norms = squared.sqrt();
    const at::Tensor coef = (clip / (norms + 1e-6)).clamp_max(1.0).to(at::kFloat);
    const at::Tensor norms_cpu = norms.to(at::kCPU);
    for (std::int64_t e = 0; e < n; ++e) {
      const double norm = norms_cpu.data_ptr<double>()[e];
      out.norms.push_back(norm);
      if (norm > clip) ++out.clipped;
    }
    for (std::size_t k = 0; k < leaves.size(); ++k) {
      std::vector<std::int64_t> shape(static_cast<std::size_t>(leaves[k].dim()), 1);
      shape[0] = n;
      out.sums[k] += (leaves[k].grad() * coef.reshape(shape)).sum(0);
    }
  }
  return out;
} catch (const c10::Error& e) {
  return Internal("per-example gradients: ", e.what_without_backtrace());
}

}  // namespace fedlora::client
