// exact_sum.h — an order-independent running sum of weighted tensors, for folding uploads.
//
// Floating-point addition is not associative, so a running fp64 sum of uploads depends on the
// order they arrived in. ExactSum instead rounds each term w·x_i once, on its own, to a fixed
// point of 2^-64 and adds it into a 128-bit two's-complement integer per element. Integer
// addition is associative: the sum is bit-identical whatever order the terms came in, a term
// can be taken out again exactly (Add with −w), and a coordinator restarted mid-round rebuilds
// exactly the same sum from the persisted uploads. The same fixed-point domain is what secure
// aggregation sums in.
//
// Range and precision: a term must satisfy |w·x_i| < 2^42 (≈ 4.4e12; LoRA values are O(1) and
// weights at most a client's example count); a sum of up to 2^20 such terms cannot overflow.
// Each term is truncated toward −∞ at 2^-64 ≈ 5.4e-20, i.e. relative error below 1e-15 for any
// term above 1e-4. Terms w·x_i are computed in double: exact when x is f32/bf16/f16 and w an
// integer below 2^29 (example counts, uniform weights).
//
// The fold is one streaming pass over the tensor's bytes. AddEach folds the many tensors of one
// upload across idle cores. Thread-compatible (one folder at a time).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace fedlora::server {

class ExactSum {
 public:
  static constexpr int kFractionBits = 64;
  static constexpr double kMaxTerm = 0x1p42;  // |w·x_i| must stay below this.
  static constexpr std::uint64_t kMaxTerms =
      1u << 20;  // Terms per element before overflow is possible.

  ExactSum() = default;
  explicit ExactSum(std::vector<std::int64_t> shape);

  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::int64_t numel() const { return static_cast<std::int64_t>(lo_.size()); }
  // Terms added so far (an Add with a negative weight counts −1: it takes one out).
  std::int64_t terms() const { return terms_; }

  // Adds weight·x. kInvalidArgument naming `name` when x's shape differs, a weight or value is
  // not finite, or some |weight·x_i| >= kMaxTerm (then nothing was added); kResourceExhausted
  // after kMaxTerms terms.
  Status Add(const Tensor& x, double weight, std::string_view name);

  // Adds weight·xs[i] to sums[i] for every i, on up to `threads` threads; all or nothing (on an
  // error every sum is as before, and the error names the first bad tensor).
  struct Job {
    ExactSum* sum;
    const Tensor* x;
    std::string_view name;
  };
  static Status AddEach(std::span<const Job> jobs, double weight, int threads);

  // The sum times `scale` (e.g. 1 / Σw), each element rounded to double once from the exact
  // integer and once more by the scaling.
  std::vector<double> Scaled(double scale) const;
  Tensor ToTensor(DType dtype, double scale) const;

 private:
  std::vector<std::int64_t> shape_;
  std::vector<std::uint64_t> lo_;  // Low 64 bits (the fraction) of each element.
  std::vector<std::int64_t> hi_;   // High 64 bits (the integer part), two's complement.
  std::int64_t terms_ = 0;
};

// Threads worth using to fold `elements` values on this machine: 1 below 2^18, else up to the
// hardware's concurrency.
int FoldThreads(std::int64_t elements);

}  // namespace fedlora::server
