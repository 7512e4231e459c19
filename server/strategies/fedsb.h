// fedsb.h — Fed-SB: LoRA-SB adapters W0 + s*B*R*A with B and A frozen and shared, only the
// r x r matrix R trained and averaged (Singhal et al. 2025; ALGORITHMS.md §5).
//
// Initialisation (LoRA-SB): one client — `strategy.fedsb.init_client`, or the first that
// declares data for it (capabilities.can_initialize) — estimates the first full fine-tuning
// step dW0 = -eta*sign(G) from gradients on init_samples of its data and uploads its rank-r SVD:
// B = U_r, R0 = S_r / s, A = V_r^T. The coordinator keeps B and A, ships them once per client
// session, and averages R: R_g <- sum_k p_k R_k. Exact: B R_g A = sum_k p_k B R_k A.
// Up: r^2 per module. Down: r^2 (+ r*(d_in + d_out) once per session).
#pragma once

#include <cstdint>
#include <string>

#include "server/strategies/fedavg.h"

namespace fedlora::server {

// Fed-SB / LoRA-SB (ALGORITHMS.md §5).
struct FedSbConfig {
  std::string init_client;        // Client that computes the initialisation; empty = the first
                                  // connected client declaring capabilities.can_initialize.
  std::uint32_t init_samples = 64;
  double init_learning_rate = 0;  // eta of -eta*sign(G); 0 = train.learning_rate / warmup.
};

class FedSb final : public Strategy, public ClientInitialization {
 public:
  FedSb(FedAvgConfig config, FedSbConfig sb) : config_(std::move(config)), sb_(std::move(sb)) {}
  std::string_view name() const override { return "fedsb"; }
  Result<GlobalState> Initialize(const ModelLayout& layout,
                                 std::optional<GlobalState> restored) override;
  ClientInitialization* client_initialization() override { return this; }
  bool linear() const override { return MeanIsLinear(config_); }
  std::optional<SecureSpec> secure_spec() const override {
    auto spec = MeanSecureSpec(config_);
    if (spec) spec->clip = 16.0;  // R's entries carry singular values: a wider range than factors.
    return spec;
  }
  Result<AggregateReport> FinishSecure(GlobalState& state, std::uint64_t round,
                                       const secagg::SecureSum& sum) override {
    return FinishMeanSecure(config_, /*merge=*/false, state, sum);
  }
  bool NeedsClientInit(const GlobalState& state) const override { return state.adapter.empty(); }
  Result<ClientTask> ConfigureInit(const GlobalState& state, const ClientInfo& client) override;
  Status AcceptInit(GlobalState& state, const ClientUpdate& update) override;
  Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                            std::span<const ClientInfo> selected) override;
  Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                  std::uint64_t round) override;
  EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const override;

  static constexpr std::string_view kFrozenCacheKey = "fedsb.frozen_factors";

 private:
  // R_g, plus the frozen B and A if the client does not hold them yet.
  TensorMap TaskTensors(const GlobalState& state, const ClientInfo& client) const;
  wire::AdapterPlan Plan() const;

  FedAvgConfig config_;
  FedSbConfig sb_;
  std::vector<wire::ModuleInfo> targets_;
};

}  // namespace fedlora::server
