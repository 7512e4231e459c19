// weighting.h — how much each client's upload counts.
//
// The references disagree (ALGORITHMS.md §12.9): dataset size (FLoRA, LoRA-FAIR), samples
// processed this round (FederatedScope / FedSA-LoRA), or uniform (FedEx-LoRA, Fed-SB). Every
// strategy takes the policy as a setting and metrics record which one was used.
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

enum class Weighting {
  kExamples,  // p_k = n_k / sum n, n_k = training examples the client holds.
  kSamples,   // p_k = examples processed this round (steps x batch).
  kUniform,   // p_k = 1 / N.
};

Result<Weighting> ParseWeighting(std::string_view name);  // "examples", "samples", "uniform"
std::string_view WeightingName(Weighting w);

// Normalised weights in the order of `updates`, none above `max_share` (CapShares). 
// kInvalidArgument when a count-based policy meets an all-zero total (naming the policy), so a
// round never silently divides by zero.
Result<std::vector<double>> ComputeWeights(std::span<const ClientUpdate> updates, Weighting w,
                                           double max_share = 1.0);

// The sum of the raw (unnormalised) per-client weights of a round; kInvalidArgument naming the
// policy when it is not positive, so a round never silently divides by zero.
using RawWeights = std::map<std::string, double, std::less<>>;
Result<double> WeightTotal(const RawWeights& weights, Weighting w);

// Caps each of `weights` (non-negative, summing to 1) at `max_share` and hands the excess to the
// others in proportion to their weights, repeating until none is above the cap (water-filling),
// so one client's declared count cannot buy it more than `max_share` of the average. When the
// cap cannot hold (fewer than 1 / max_share clients) every client gets 1 / N, the closest
// feasible split. Returns how many weights were capped.
std::size_t CapShares(std::vector<double>& weights, double max_share);

}  // namespace fedlora::server
