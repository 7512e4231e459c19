#include "server/strategies/fedex.h"

#include <ATen/ATen.h>

#include "common/lora/adapter_layout.h"
#include "common/lora/factor_math.h"
#include "common/lora/tensor_bridge.h"
#include "server/strategies/corrections.h"
#include "server/strategies/product_sums.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {

Result<GlobalState> FedExLora::Initialize(const ModelLayout& layout,
                                          std::optional<GlobalState> restored) {
  return FedAvg(config_).Initialize(layout, std::move(restored));
}

Result<std::vector<ClientTask>> FedExLora::Configure(const GlobalState& state, std::uint64_t round,
                                                     std::span<const ClientInfo> selected) {
  return FedAvg(config_).Configure(state, round, selected);
}

// Folds each upload's B_k·A_k (ProductSums) and its factors (for the means) as it arrives.
// Finish: a module whose blocks stayed small takes the tight factor residual over its blocks in
// client-id order (the all-at-once algebra, bit for bit); a module that went dense takes the
// residual as a dense correction from the exact sums.
class FedExLora::Accumulator final : public RoundAccumulator {
 public:
  Accumulator(const FedExLora& owner, ProductSums products, std::uint64_t round)
      : owner_(owner), products_(std::move(products)), round_(round) {}
  Status Fold(const ClientUpdate& update, const ClientTask& task) override {
    return products_.Fold(update.client_id, update.tensors,
                          RawWeight(update, owner_.config_.weighting));
  }

  Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) override try {
    const FedAvgConfig& config = owner_.config_;
    FEDLORA_ASSIGN_OR_RETURN(const double total, WeightTotal(products_.weights(), config.weighting));
    const double scale = lora::Scale(config.lora);
    std::vector<double> p;
    for (const auto& [id, w] : products_.weights()) p.push_back(w / total);
    Residuals out;
    out.next = state;
    out.entry.version = round_;
    for (const std::string& module : AdapterModules(state.adapter)) {
      const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
      if (!products_.dense(module)) {
        std::vector<at::Tensor> as, bs;
        FEDLORA_RETURN_IF_ERROR(products_.BlockFactors(module, &as, &bs));
        FEDLORA_RETURN_IF_ERROR(owner_.AddResidual(module, as, bs, p, out));
        continue;
      }
      FEDLORA_ASSIGN_OR_RETURN(Tensor a_global, products_.Mean(a_name, config.state_dtype));
      FEDLORA_ASSIGN_OR_RETURN(Tensor b_global, products_.Mean(b_name, config.state_dtype));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_sent, lora::FromWireAs(a_global, at::kDouble));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_sent, lora::FromWireAs(b_global, at::kDouble));
      // The residual s·(Σ p_k B_k A_k − B_g A_g) against the globals exactly as sent.
      const at::Tensor residual =
          (products_.Dense(module, 1.0 / total) - at::matmul(b_sent, a_sent)) * scale;
      out.next.adapter[a_name] = std::move(a_global);
      out.next.adapter[b_name] = std::move(b_global);
      ModuleCorrection c;
      FEDLORA_ASSIGN_OR_RETURN(c.dense, Store(residual, config.state_dtype));
      out.residual_rank = std::max<std::int64_t>(out.residual_rank, std::min(residual.size(0),
                                                                            residual.size(1)));
      out.entry.modules.emplace(module, std::move(c));
    }
    FEDLORA_ASSIGN_OR_RETURN(AggregateReport report, owner_.Commit(state, std::move(out)));
    for (const auto& [id, w] : products_.weights()) report.weights[id] = w / total;
    report.metrics["dense_modules"] = static_cast<double>(products_.dense_modules());
    return report;
  } catch (const c10::Error& e) {
    return Internal("fedex aggregation: ", e.what_without_backtrace());
  }

 private:
  const FedExLora& owner_;
  ProductSums products_;
  std::uint64_t round_;
};

Result<std::unique_ptr<RoundAccumulator>> FedExLora::Begin(const GlobalState& state,
                                                           std::uint64_t round) {
  if (MeanIsLinear(config_)) {
    return std::unique_ptr<RoundAccumulator>(std::make_unique<Accumulator>(
        *this, ProductSums(ProductSums::DimsOf(state.adapter), /*factor_means=*/true), round));
  }
  return MakeGatheringAccumulator(
      [this, round](GlobalState& s, std::span<const ClientUpdate> updates,
                    std::span<const ClientTask> tasks) { return Combine(s, round, updates, tasks); });
}

Status FedExLora::AddResidual(const std::string& module, std::span<const at::Tensor> as,
                              std::span<const at::Tensor> bs, std::span<const double> weights,
                              Residuals& out) const try {
  const double scale = lora::Scale(config_.lora);
  const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_mean, lora::WeightedSum(as, weights));
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_mean, lora::WeightedSum(bs, weights));
  // The globals exactly as clients will receive them; the residual absorbs the rounding.
  FEDLORA_ASSIGN_OR_RETURN(Tensor a_global, Store(a_mean, config_.state_dtype));
  FEDLORA_ASSIGN_OR_RETURN(Tensor b_global, Store(b_mean, config_.state_dtype));
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_sent, lora::FromWireAs(a_global, at::kDouble));
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_sent, lora::FromWireAs(b_global, at::kDouble));
  FEDLORA_ASSIGN_OR_RETURN(lora::FactorPair residual,
                           lora::FedExResidual(as, bs, weights, scale, a_sent, b_sent));
  out.next.adapter[a_name] = std::move(a_global);
  out.next.adapter[b_name] = std::move(b_global);
  if (residual.B.size(1) == 0) return OkStatus();
  out.residual_rank = std::max<std::int64_t>(out.residual_rank, residual.B.size(1));
  ModuleCorrection c;
  FEDLORA_ASSIGN_OR_RETURN(c.u, Store(residual.B, config_.state_dtype));
  FEDLORA_ASSIGN_OR_RETURN(c.v, Store(residual.A, config_.state_dtype));
  out.entry.modules.emplace(module, std::move(c));
  return OkStatus();
} catch (const c10::Error& e) {
  return Internal("fedex residual of ", module, ": ", e.what_without_backtrace());
}

Result<AggregateReport> FedExLora::Commit(GlobalState& state, Residuals out) const {
  const std::size_t entry_bytes = out.entry.bytes();
  if (!out.entry.modules.empty()) {
    FEDLORA_RETURN_IF_ERROR(AppendCorrection(out.next.corrections, std::move(out.entry),
                                             corrections_, config_.state_dtype));
  }
  state = std::move(out.next);
  AggregateReport report;
  report.metrics["residual_rank"] = static_cast<double>(out.residual_rank);
  report.metrics["correction_bytes"] = static_cast<double>(entry_bytes);
  report.metrics["correction_log_bytes"] =
      static_cast<double>(state.corrections.ReplayBytes() +
                          (state.corrections.snapshot() ? state.corrections.snapshot()->bytes() : 0));
  return report;
}

Result<AggregateReport> FedExLora::Combine(GlobalState& state, std::uint64_t round,
                                           std::span<const ClientUpdate> updates,
                                           std::span<const ClientTask> tasks) {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(updates, config_));
  Residuals out;
  out.next = state;
  out.entry.version = round;
  for (const std::string& module : AdapterModules(state.adapter)) {
    FEDLORA_ASSIGN_OR_RETURN(std::vector<at::Tensor> as,
                             FactorOfAll(updates, lora::LoraAName(module)));
    FEDLORA_ASSIGN_OR_RETURN(std::vector<at::Tensor> bs,
                             FactorOfAll(updates, lora::LoraBName(module)));
    FEDLORA_RETURN_IF_ERROR(AddResidual(module, as, bs, weights, out));
  }
  FEDLORA_ASSIGN_OR_RETURN(AggregateReport report, Commit(state, std::move(out)));
  for (std::size_t k = 0; k < updates.size(); ++k) report.weights[updates[k].client_id] = weights[k];
  return report;
}

EvalSpec FedExLora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
