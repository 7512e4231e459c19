#include "server/strategies/lorafair.h"

#include <ATen/ATen.h>

#include "common/lora/adapter_layout.h"
#include "common/lora/factor_math.h"
#include "common/lora/tensor_bridge.h"
#include "server/strategies/product_sums.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {

Result<GlobalState> LoraFair::Initialize(const ModelLayout& layout,
                                         std::optional<GlobalState> restored) {
  return FedAvg(config_).Initialize(layout, std::move(restored));
}

Result<std::vector<ClientTask>> LoraFair::Configure(const GlobalState& state, std::uint64_t round,
                                                    std::span<const ClientInfo> selected) {
  return FedAvg(config_).Configure(state, round, selected);
}

namespace {

// The ideal update ΔW = Σ_k p_k B_k A_k of one module: the client factors, or dense.
struct IdealUpdate {
  std::span<const at::Tensor> as, bs;
  std::span<const double> weights;
  at::Tensor dense;  // Defined: ΔW itself (as/bs unused).
};

// The round's new adapter and the correction statistics, module by module.
struct Corrected {
  TensorMap adapter;
  double cos_before = 0, cos_after = 0, delta_norm = 0;
  int modules = 0;
};

// Ā and B̄ + ΔB of `module` into out.adapter (ΔB by the configured solver).
Status CorrectModule(const LoraFairConfig& fair_, DType state_dtype, const std::string& module,
                     const IdealUpdate& ideal, const at::Tensor& a_bar, const at::Tensor& b_bar,
                     Corrected& out) try {
  const bool dense = ideal.dense.defined();
  at::Tensor delta;
  if (fair_.solver == "ridge") {
    FEDLORA_ASSIGN_OR_RETURN(
        delta, dense ? lora::FairRidgeDeltaBDense(ideal.dense, b_bar, a_bar, fair_.lambda)
                     : lora::FairRidgeDeltaB(ideal.as, ideal.bs, ideal.weights, b_bar, a_bar,
                                             fair_.lambda));
  } else {
    const int iterations = static_cast<int>(fair_.iterations);
    Result<lora::FairCosineResult> r =
        dense ? lora::FairCosineDeltaBDense(ideal.dense, b_bar, a_bar, fair_.lambda, iterations,
                                            fair_.learning_rate)
              : lora::FairCosineDeltaB(ideal.as, ideal.bs, ideal.weights, b_bar, a_bar,
                                       fair_.lambda, iterations, fair_.learning_rate);
    if (!r.ok()) {
      // The cosine is undefined when the ideal update or the product is zero (e.g. every
      // client left B at zero): no correction is the only sensible answer then.
      delta = at::zeros_like(b_bar);
    } else {
      out.cos_before += r->initial_cosine;
      out.cos_after += r->final_cosine;
      delta = r->delta_b;
    }
  }
  out.delta_norm += delta.norm().item<double>();
  ++out.modules;
  FEDLORA_ASSIGN_OR_RETURN(out.adapter[lora::LoraAName(module)], Store(a_bar, state_dtype));
  FEDLORA_ASSIGN_OR_RETURN(out.adapter[lora::LoraBName(module)], Store(b_bar + delta, state_dtype));
  return OkStatus();
} catch (const c10::Error& e) {
  return Internal("lorafair correction of ", module, ": ", e.what_without_backtrace());
}

// Moves out.adapter into state and reports the statistics (weights are the caller's).
AggregateReport Report(const LoraFairConfig& fair_, GlobalState& state, Corrected out) {
  state.adapter = std::move(out.adapter);
  AggregateReport report;
  if (out.modules > 0) {
    report.metrics["delta_b_norm_mean"] = out.delta_norm / out.modules;
    if (fair_.solver == "cosine") {
      report.metrics["cosine_before_mean"] = out.cos_before / out.modules;
      report.metrics["cosine_after_mean"] = out.cos_after / out.modules;
    }
  }
  return report;
}

}  // namespace

// Folds each upload's B_k·A_k (ProductSums) and factors (for Ā, B̄) as it arrives. Finish: a
// module whose blocks stayed small corrects from its blocks in client-id order (the all-at-once
// algebra, bit for bit); a module that went dense corrects from the exact dense ΔW.
class LoraFair::Accumulator final : public RoundAccumulator {
 public:
  Accumulator(const LoraFair& owner, ProductSums products)
      : owner_(owner), products_(std::move(products)) {}
  Status Fold(const ClientUpdate& update, const ClientTask& task) override {
    return products_.Fold(update.client_id, update.tensors,
                          RawWeight(update, owner_.config_.weighting));
  }

  Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) override try {
    FEDLORA_ASSIGN_OR_RETURN(const double total,
                             WeightTotal(products_.weights(), owner_.config_.weighting));
    std::vector<double> p;
    for (const auto& [id, w] : products_.weights()) p.push_back(w / total);
    Corrected out;
    for (const std::string& module : AdapterModules(state.adapter)) {
      const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
      IdealUpdate ideal;
      at::Tensor a_bar, b_bar;
      std::vector<at::Tensor> as, bs;
      if (products_.dense(module)) {
        ideal.dense = products_.Dense(module, 1.0 / total);
        FEDLORA_ASSIGN_OR_RETURN(Tensor a, products_.Mean(a_name, DType::kF64));
        FEDLORA_ASSIGN_OR_RETURN(Tensor b, products_.Mean(b_name, DType::kF64));
        FEDLORA_ASSIGN_OR_RETURN(a_bar, lora::FromWireAs(a, at::kDouble));
        FEDLORA_ASSIGN_OR_RETURN(b_bar, lora::FromWireAs(b, at::kDouble));
      } else {
        FEDLORA_RETURN_IF_ERROR(products_.BlockFactors(module, &as, &bs));
        FEDLORA_ASSIGN_OR_RETURN(a_bar, lora::WeightedSum(as, p));
        FEDLORA_ASSIGN_OR_RETURN(b_bar, lora::WeightedSum(bs, p));
        ideal = IdealUpdate{as, bs, p, {}};
      }
      FEDLORA_RETURN_IF_ERROR(CorrectModule(owner_.fair_, owner_.config_.state_dtype, module,
                                            ideal, a_bar, b_bar, out));
    }
    AggregateReport report = Report(owner_.fair_, state, std::move(out));
    for (const auto& [id, w] : products_.weights()) report.weights[id] = w / total;
    report.metrics["dense_modules"] = static_cast<double>(products_.dense_modules());
    return report;
  } catch (const c10::Error& e) {
    return Internal("lorafair aggregation: ", e.what_without_backtrace());
  }

 private:
  const LoraFair& owner_;
  ProductSums products_;
};

Result<std::unique_ptr<RoundAccumulator>> LoraFair::Begin(const GlobalState& state,
                                                          std::uint64_t round) {
  if (MeanIsLinear(config_)) {
    return std::unique_ptr<RoundAccumulator>(std::make_unique<Accumulator>(
        *this, ProductSums(ProductSums::DimsOf(state.adapter), /*factor_means=*/true)));
  }
  return MakeGatheringAccumulator(
      [this, round](GlobalState& s, std::span<const ClientUpdate> updates,
                    std::span<const ClientTask> tasks) { return Combine(s, round, updates, tasks); });
}

Result<AggregateReport> LoraFair::Combine(GlobalState& state, std::uint64_t round,
                                          std::span<const ClientUpdate> updates,
                                          std::span<const ClientTask> tasks) try {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(updates, config_));
  Corrected out;
  for (const std::string& module : AdapterModules(state.adapter)) {
    FEDLORA_ASSIGN_OR_RETURN(std::vector<at::Tensor> as,
                             FactorOfAll(updates, lora::LoraAName(module)));
    FEDLORA_ASSIGN_OR_RETURN(std::vector<at::Tensor> bs,
                             FactorOfAll(updates, lora::LoraBName(module)));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_bar, lora::WeightedSum(as, weights));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_bar, lora::WeightedSum(bs, weights));
    FEDLORA_RETURN_IF_ERROR(CorrectModule(fair_, config_.state_dtype, module,
                                          IdealUpdate{as, bs, weights, {}}, a_bar, b_bar, out));
  }
  AggregateReport report = Report(fair_, state, std::move(out));
  for (std::size_t k = 0; k < updates.size(); ++k) report.weights[updates[k].client_id] = weights[k];
  return report;
} catch (const c10::Error& e) {
  return Internal("lorafair aggregation: ", e.what_without_backtrace());
}

EvalSpec LoraFair::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
