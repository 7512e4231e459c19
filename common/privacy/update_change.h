// update_change.h — how far an upload moves the adapter it started from, and bounding it.
//
// The change of an upload is, tensor by tensor, what the client uploads minus what its task gave
// it to start from: the task's tensor of the same name (its leading block when the client pruned
// the rank, HetLoRA), or zero when the task sent none (FLoRA's fresh factors). Its norm is the L2
// norm of all those differences as one vector. Used by the coordinator's norm bound
// (server/robust/update_norm.h), by the client to clip its update before it leaves (differential
// privacy, docs/privacy.md) and by the coordinator to check that it did.
#pragma once

#include <string_view>
#include <vector>

#include "common/tensor.h"

namespace fedlora::privacy {

// What `name` started from, as doubles in `uploaded`'s row-major layout (see above).
std::vector<double> ChangeReference(const TensorMap& reference, std::string_view name,
                                    const Tensor& uploaded);

// The L2 norm of the change of `uploaded` against `reference`.
double ChangeNorm(const TensorMap& uploaded, const TensorMap& reference);

// Replaces each uploaded tensor by reference + factor * (uploaded - reference), in the tensor's
// own dtype.
void ScaleChange(TensorMap& uploaded, const TensorMap& reference, double factor);

struct ClipOutcome {
  double norm = 0;       // Before clipping.
  bool clipped = false;  // The change was scaled down.
};

// Scales the change down to L2 norm `clip` when it is above: afterwards ChangeNorm(uploaded,
// reference) <= clip exactly as computed here, also after the rounding of the tensors' dtype
// (the scale is shrunk until it is). clip > 0.
ClipOutcome ClipChange(TensorMap& uploaded, const TensorMap& reference, double clip);

}  // namespace fedlora::privacy
