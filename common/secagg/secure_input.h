// secure_input.h — what a client sums under secure aggregation, and what the sum means (issue 13).
//
// A round task with secure aggregation (wire::SecAggParams) names the summed tensors, in order, at
// their full shapes (the layout). The client's vector is, for each slot, its upload placed into
// the full shape — as it is, zero-padded at the top-left (a rank pruned below the global rank:
// HetLoRA), or scattered to its sketch indices (FSLoRA) — multiplied by its weight w, then one
// word for w itself. w = min(count / weight_scale, 1) with the count the strategy weighs by
// (examples held, samples processed, or 1), and 0 on the slots the client did not upload, so the
// coordinator learns per slot Σ w·x and Σ w, and with them the weighted mean, without any x.
//
// Values are clipped to [-clip, clip] and quantised (quantize.h); weights, in [0, 1], are
// quantised as 2w - 1 with clip 1, so 0 and 1 are exact and a slot nobody uploaded sums to
// exactly zero weight. Every clipped value (a weighted value outside the range, a count above
// weight_scale) is counted and reported; nothing is clipped silently.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "common/crypto/key_agreement.h"
#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::secagg {

// Words in the summed vector of `params`: Σ (elements of the slot + 1). kInvalidArgument for an
// empty layout or a slot without a valid shape.
Result<std::uint64_t> SecureVectorLength(const wire::SecAggParams& params);

// The name of the one tensor a masked Update carries (u32, shape [SecureVectorLength]).
inline constexpr std::string_view kMaskedTensorName = "secagg.masked";

// `x` (an upload of `shape`, row-major) placed into `slot`'s full shape as MakeSecureInput places
// it: as it is, zero-padded at the top-left (a pruned rank), or scattered to the plan's sketch
// indices. kInvalidArgument naming the tensor when it does not fit.
Result<std::vector<double>> PlaceInSlot(const wire::SecAggSlot& slot, const wire::AdapterPlan& plan,
                                        const std::vector<std::int64_t>& shape,
                                        std::span<const double> x);

struct SecureInput {
  std::vector<std::uint32_t> words;
  std::uint64_t clipped = 0;  // Values (and the weight) that hit the clipping range.
  double weight = 0;          // The weight w before quantisation.
};

// Distributed differential privacy: the client's share of the round's Gaussian noise
// (wire::PrivacyParams::noise_share_clients), added to every value word of its vector, uploaded
// slots or not, before clipping and quantisation (the weight words get none).
struct InputNoise {
  double stddev = 0;  // (sigma C) / sqrt(noise_share_clients).
  crypto::Seed seed{};
};

// The client's quantised vector for `update`, answering a task with `params`, `plan` and the
// tensors it was sent (`sent`: the deltas' reference when params.delta). Stochastic rounding
// from `rounding_seed`; `noise`, when given, is added first. kInvalidArgument naming the tensor
// for an upload that does not fit its slot, or a tensor the layout does not have.
Result<SecureInput> MakeSecureInput(const wire::SecAggParams& params, const wire::AdapterPlan& plan,
                                    const TensorMap& sent, const wire::Update& update,
                                    std::uint64_t rounding_seed, const InputNoise* noise = nullptr);

// The unmasked sum of `survivors` clients' vectors, per slot: Σ w·x (f64, full shape) and Σ w.
struct SecureSum {
  TensorMap weighted;                                  // Slot name -> Σ w·x.
  std::map<std::string, double, std::less<>> weights;  // Slot name -> Σ w.
  std::uint64_t survivors = 0;
  // The largest error of one element of `weighted` due to quantisation: survivors x step.
  double error_bound = 0;
  // The largest error of one element of Means() due to quantisation (of the values and of the
  // weights), over the slots with Σ w > 0: (error_bound + clip x survivors / L) / Σ w.
  double mean_error_bound = 0;
  // Each slot's Σ w·x / Σ w (f64), for the slots with Σ w > 0.
  TensorMap Means() const;
};

// The dequantised sum of the integer `sum` (mod 2^m) of `survivors` vectors of `params`.
// kInvalidArgument when the length is not the layout's.
Result<SecureSum> DecodeSecureSum(const wire::SecAggParams& params,
                                  std::span<const std::uint32_t> sum, std::uint64_t survivors);

}  // namespace fedlora::secagg
