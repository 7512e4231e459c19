// quantize.h — real-valued inputs to the integers secure aggregation sums (issue 13, part 2).
//
// Each value is clipped to [-clip, clip] (every clipped value counted, never silent), mapped to
// [0, L] with L = 2^q - 1 levels, and rounded stochastically — up with probability equal to the
// fraction — so the rounding is unbiased: E[Q(x)] = x. The sum of n quantised inputs (mod 2^m)
// is exact as long as n * L < 2^m, which CheckQuantization demands before a round starts; the
// coordinator then maps the integer sum back to the sum of the inputs, off by at most n * step
// (step = 2 * clip / L) per element, plus whatever was clipped.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"

namespace fedlora::secagg {

struct QuantizeConfig {
  double clip = 1.0;                // Inputs are clipped to [-clip, clip].
  std::uint32_t levels_bits = 16;   // q: L = 2^q - 1.
  std::uint32_t modulus_bits = 32;  // m: sums are taken mod 2^m.
};

// OK when clip is finite and > 0, 1 <= q < m <= 32, and `max_clients` inputs cannot wrap the
// modulus (max_clients * (2^q - 1) < 2^m). kInvalidArgument saying which, with the largest
// number of clients the setting allows.
Status CheckQuantization(const QuantizeConfig& config, std::uint64_t max_clients);

// The distance between two levels: 2 * clip / (2^q - 1).
double QuantizationStep(const QuantizeConfig& config);

struct Quantized {
  std::vector<std::uint32_t> values;  // In [0, 2^q - 1].
  std::uint64_t clipped = 0;          // Inputs beyond [-clip, clip] (NaN counts as clipped, to 0).
};

// Stochastic rounding driven by `seed` (the same seed gives the same rounding).
Quantized Quantize(std::span<const double> x, const QuantizeConfig& config, std::uint64_t seed);

// The sum of the `n` inputs whose quantised values summed to `sum`.
std::vector<double> DequantizeSum(std::span<const std::uint32_t> sum, std::uint64_t n,
                                  const QuantizeConfig& config);

}  // namespace fedlora::secagg
