// product_sums.h — Σ_k w_k·B_k·A_k per module, folded as uploads arrive, for the strategies
// that aggregate products of factors (FedEx-LoRA's residual, FLoRA's stack, LoRA-FAIR's ideal
// update).
//
// While the clients' factor blocks take less memory than the dense d_out x d_in sum, a module
// keeps the blocks (keyed by client id, so Finish stacks them in one canonical order and the
// result matches the all-at-once algebra bit for bit). Once they would take more, the module
// switches for good to an exact dense sum (ExactSum: each client's product B_k·A_k computed in
// f64, weighted, and added exactly), so memory per module is bounded by the dense size whatever
// the number of clients, and the sum is still independent of the order of arrival. The switch
// depends only on the set of ranks folded, never on their order.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "server/strategies/exact_sum.h"
#include "server/strategies/weighted_sums.h"
#include "server/strategies/weighting.h"

namespace fedlora::server {

class ProductSums {
 public:
  struct Dims {
    std::int64_t d_out = 0, d_in = 0;
  };
  // The modules folded, with their shapes. A module a client did not train is skipped. With
  // `factor_means`, the factors themselves are also folded into exact sums (Mean), for the
  // strategies whose new globals are the means of A and B (FedEx-LoRA, LoRA-FAIR).
  ProductSums(std::map<std::string, Dims, std::less<>> modules, bool factor_means);
  // The modules of `adapter` ("<module>.lora_{A,B}.weight"), with their shapes.
  static std::map<std::string, Dims, std::less<>> DimsOf(const TensorMap& adapter);

  // Adds weight·B·A of every module `tensors` carries ("<module>.lora_{A,B}.weight"), and
  // records the client's weight. All or nothing; the error names the client and tensor.
  Status Fold(const std::string& client, const TensorMap& tensors, double weight);

  // Each folded client's weight (client-id order).
  const RawWeights& weights() const { return weights_; }
  // The weighted mean of a folded factor tensor (needs factor_means).
  Result<Tensor> Mean(std::string_view name, DType dtype) const {
    return factors_.Mean(name, dtype);
  }
  // A stacked module's factors in client-id order, as f64 tensors.
  Status BlockFactors(std::string_view module, std::vector<at::Tensor>* as,
                      std::vector<at::Tensor>* bs) const;

  struct Block {
    Tensor B, A;  // As uploaded.
    double weight = 0;
  };
  bool dense(std::string_view module) const;
  // Stacked modules: the blocks by client id (empty when nobody trained the module).
  const std::map<std::string, Block, std::less<>>& blocks(std::string_view module) const;
  // Dense modules: the sum times `scale`, f64, d_out x d_in.
  at::Tensor Dense(std::string_view module, double scale) const;
  std::size_t dense_modules() const;

 private:
  struct Module {
    Dims dims;
    std::int64_t stacked_rank = 0;
    std::map<std::string, Block, std::less<>> blocks;
    std::optional<ExactSum> dense;
  };
  Status AddDense(Module& m, const Block& block, std::string_view what) const;
  Status FoldProducts(const std::string& client, const TensorMap& tensors, double weight);
  std::map<std::string, Module, std::less<>> modules_;
  bool factor_means_;
  WeightedSums factors_;
  RawWeights weights_;
};

}  // namespace fedlora::server
