// weighting.h — how much each client's upload counts.
//
// The references disagree (ALGORITHMS.md §12.9): dataset size (FLoRA, LoRA-FAIR), samples
// processed this round (FederatedScope / FedSA-LoRA), or uniform (FedEx-LoRA, Fed-SB). Every
// strategy takes the policy as a setting and metrics record which one was used.
#pragma once

#include <map>
#include <span>
#include <string>
#include <string_view>

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

// Normalised weights in the order of `updates`. kInvalidArgument when a count-based policy meets
// an all-zero total (naming the policy), so a round never silently divides by zero.
Result<std::vector<double>> ComputeWeights(std::span<const ClientUpdate> updates, Weighting w);

}  // namespace fedlora::server
