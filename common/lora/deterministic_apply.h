// deterministic_apply.h — adds a low-rank correction U·V to a dense weight, bit-identically on
// every replica.
//
// FedEx-LoRA and FLoRA change the frozen base weight every round (ALGORITHMS.md §2d, §3d, §10):
// each client applies W <- W + s·U_t·V_t to its own fp32 copy of W. A GEMM library is free to
// block, reorder and fuse the inner sum (and does, differently per thread count and CPU), so two
// replicas applying the same factors through BLAS can disagree in the last bit, and the replicas
// then drift apart round after round. This file defines the one canonical arithmetic instead:
//
//   w[i,j] = round_to_float( double(w[i,j]) + S[i,j] ),
//   S[i,j] = ((0 + u[i,0]·v[0,j]) + u[i,1]·v[1,j]) + ... + u[i,k-1]·v[k-1,j]   (κ ascending)
//
// with every factor widened to double first. A product of two floats is exact in double
// (24+24 < 53 significand bits); each addition is one IEEE-754 double rounding in a fixed order,
// and the final conversion is the only rounding to float. IEEE-754 fixes the result of each of
// these operations, so every x86-64 (and any IEEE) machine produces the same bits, whatever its
// thread count, provided the compiler neither reassociates (no -ffast-math: the .cc refuses to
// compile with __FAST_MATH__) nor contracts a*b+c into an FMA (fedlora_lora is compiled with
// -std=c++20 -ffp-contract=off; see common/CMakeLists.txt). Vectorising across j is allowed: it
// does not change the order of any single element's sum. Rows are independent.
//
// Torch-free. Thread-compatible: the functions touch only their arguments.
#pragma once

#include <cstdint>
#include <span>

#include "common/status.h"

namespace fedlora::lora {

// w (d_out x d_in, row-major) += u (d_out x k, row-major) · v (k x d_in, row-major), with the
// arithmetic fixed above. The scale s must already be folded into u (or v), as every FactorPair
// of factor_math.h has it. k = 0 leaves w unchanged. kInvalidArgument when a span's size disagrees
// with the dimensions or a dimension is negative; w is then untouched.
Status AddProductDeterministic(std::span<float> w, std::span<const float> u,
                               std::span<const float> v, std::int64_t d_out, std::int64_t d_in,
                               std::int64_t k);

// The same with an f64 weight buffer (e.g. a server-side snapshot kept in double):
// w[i,j] = double(w[i,j]) + S[i,j], S as above. Deterministic for the same reasons.
Status AddProductDeterministic(std::span<double> w, std::span<const float> u,
                               std::span<const float> v, std::int64_t d_out, std::int64_t d_in,
                               std::int64_t k);

}  // namespace fedlora::lora
