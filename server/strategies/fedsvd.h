// fedsvd.h — FedSVD (Lee et al., NeurIPS 2025, arXiv 2505.12805): FFA-LoRA's rounds, with A
// re-chosen by the server.
//
// Clients train and upload only B with A frozen, as in FFA-LoRA, and B_g <- sum_k p_k B_k. Then,
// every `period` rounds, the server re-factors each module's product by its SVD:
//   B_g A = U_r S_r V_r^T  ->  A <- V_r^T (orthonormal rows),  B_g <- U_r S_r.
// B_g A has rank <= r, so the product — the model — is unchanged (metric fedsvd_product_error:
// the largest relative change, ~1e-15); what changes is the basis the next round trains B in: A
// follows the principal directions of the aggregate updates instead of staying at its random
// init, and orthonormal rows keep B's gradients bounded, which is what FFA's noise behaviour under
// differential privacy needs without FFA's fixed subspace. The refactoring reads only the
// aggregate, so secure aggregation and DP apply as to FFA (it is post-processing).
//
// Unlike the reference code, a module whose product has rank below r (B_g = 0 before any
// training) keeps its factors: an SVD of a rank-deficient product would fill A's missing rows
// with whatever basis LAPACK returns. Counted as fedsvd_kept.
#pragma once

#include <cstdint>

#include "server/strategies/ffa.h"

namespace fedlora::server {

struct FedSvdConfig {
  std::uint32_t period = 1;  // Re-factor after every `period`-th round (0: never, plain FFA).
};

class FedSvd final : public Strategy {
 public:
  FedSvd(FedAvgConfig config, FedSvdConfig svd)
      : config_(config), svd_(svd), ffa_(std::move(config)) {}
  std::string_view name() const override { return "fedsvd"; }
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override {
    return ffa_.Initialize(layout, std::move(restored));
  }
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override {
    return ffa_.Configure(state, round, selected);
  }
  bool linear() const override { return ffa_.linear(); }
  std::optional<SecureSpec> secure_spec() const override { return ffa_.secure_spec(); }
  Result<AggregateReport> FinishSecure(GlobalState& state, std::uint64_t round,
                                       const secagg::SecureSum& sum) override;
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override {
    return ffa_.Evaluation(state, client);
  }

  // Re-factors every module of `state` when `round` is due (see above), adding its numbers to
  // `report`. On error `state` is unchanged.
  Status Refactor(GlobalState& state, std::uint64_t round, AggregateReport& report) const;

 private:
  FedAvgConfig config_;
  FedSvdConfig svd_;
  FfaLora ffa_;
};

}  // namespace fedlora::server
