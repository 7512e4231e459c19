// weighted_sums.h — the running state of a weighted average over uploads: per tensor name an
// ExactSum of w_k·x_k and the exact total of the weights that touched that name.
//
// Every weighted-average strategy (fedavg, ffa, fedsa, fedsb, fslora, hetlora) folds into one,
// so its result is bit-identical whatever the order uploads arrive in and across a restart, and
// memory is one accumulator per global tensor whatever the number of clients.
#pragma once

#include <map>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"
#include "common/tensor.h"
#include "server/strategies/exact_sum.h"

namespace fedlora::server {

class WeightedSums {
 public:
  struct Term {
    std::string_view name;  // The sum it goes into (created on first use with x's shape).
    const Tensor* x;
    double weight;
  };
  // Adds every term, or none of them (the error names the tensor and client).
  Status Fold(std::span<const Term> terms, std::string_view client);
  // Takes every term out again (exactly): undoes a Fold of the same terms.
  Status Unfold(std::span<const Term> terms, std::string_view client);

  bool empty() const { return sums_.empty(); }
  // Each name's sum divided by the total weight folded into it, as `dtype`. kInvalidArgument
  // naming the tensor when that total is zero.
  Result<TensorMap> Means(DType dtype) const;
  // One name's mean (as Means); kNotFound when nothing was folded into it.
  Result<Tensor> Mean(std::string_view name, DType dtype) const;
  // Each name's sum times `scale` (no division).
  TensorMap Scaled(DType dtype, double scale) const;
  // The exact total weight folded into `name` (0 if none).
  double WeightOf(std::string_view name) const;

 private:
  Status Apply(std::span<const Term> terms, std::string_view client, double sign);
  struct Entry {
    ExactSum sum;
    ExactSum weight;  // Shape {1}: Σ w over the terms of this name.
  };
  std::map<std::string, Entry, std::less<>> sums_;
};

}  // namespace fedlora::server
