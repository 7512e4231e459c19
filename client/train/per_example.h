// per_example.h — per-example gradients of a LoRA adapter, clipped and summed in one pass: the
// core of DP-SGD (Abadi et al. 2016) on the client (dp_sgd.h).
//
// DP-SGD bounds what one example can contribute to a step: each example's gradient g_e (jointly
// over every trainable tensor of the adapter, one L2 norm) is scaled by
// c_e = min(1, C / (‖g_e‖ + 1e-6)) (Opacus's rule) before the sum. Computing g_e one example at a
// time would take one backward per example. Here every example of a pass gets its own copy of
// each trainable factor (a leaf of shape [n, ...] made from the adapter's current values): the
// adapter path of example e multiplies by copy e (batched matmuls), the objective is the sum of
// the examples' own mean token losses, and one backward leaves g_e in row e of each leaf. The
// base model's forward and backward are shared as usual, so the cost over plain training is the
// n copies of the (small) trainable factors. Frozen factors (FFA's A, LoRA-SB's B and A) are not
// copied; LoRA-SB's R is, so Fed-SB trains only r² numbers per module under DP.
//
// Equal to computing each example's gradient alone (tests/client_ml/per_example_test.cc).
// Knows nothing about noise, sampling or accounting (dp_sgd.h). Thread-compatible; calls with
// different adapters may share one model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/train/sequences.h"
#include "common/status.h"

namespace fedlora::client {

struct ClippedGradients {
  // Σ_e c_e g_e, one tensor per adapter.Parameters() entry (same order, shape, device; float32).
  std::vector<at::Tensor> sums;
  std::vector<double> norms;  // ‖g_e‖ per example, in `picks` order.
  std::uint64_t clipped = 0;  // Examples with ‖g_e‖ > clip.
  double loss_sum = 0;        // Σ over the examples' predicted tokens of the token loss.
  std::uint64_t tokens = 0;   // Predicted tokens of the examples.
};

// The clipped sum of the per-example gradients of `adapter.Parameters()` over the rows `picks`
// of `source`, each example's loss being the mean token loss over its own unmasked targets (an
// example without any contributes nothing). Rows go through the model in passes of at most
// `max_rows` (>= 1), so memory grows with max_rows, not with picks.size(). Dropout applies when
// the adapter is in training mode (its own generator). An empty `picks` gives zero sums.
// kInvalidArgument: clip not finite and > 0, max_rows 0, an adapter with no trainable tensor,
// or a non-finite loss (names the example). kInternal: LibTorch threw.
Result<ClippedGradients> ClippedGradientSum(const LlamaModel& model, LoraAdapter& adapter,
                                            const SequenceSource& source,
                                            std::span<const std::size_t> picks, double clip,
                                            std::size_t max_rows,
                                            std::span<const at::Tensor> base_weights = {});

}  // namespace fedlora::client
