#include "server/strategies/flora.h"

#include <ATen/ATen.h>

#include "common/lora/adapter_layout.h"
#include "common/lora/factor_math.h"
#include "server/rank_policy.h"
#include "server/strategies/corrections.h"
#include "server/strategies/product_sums.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {

Result<GlobalState> Flora::Initialize(const ModelLayout& layout,
                                      std::optional<GlobalState> restored) {
  FEDLORA_ASSIGN_OR_RETURN(targets_, lora::SelectTargets(layout.modules, config_.lora));
  if (restored) return std::move(*restored);
  return GlobalState{};  // No global adapter: everything lives in the base corrections.
}

Result<std::vector<ClientTask>> Flora::Configure(const GlobalState& state, std::uint64_t round,
                                                 std::span<const ClientInfo> selected) {
  std::vector<ClientTask> tasks;
  for (const ClientInfo& client : selected) {
    ClientTask task;
    task.client_id = client.id;
    task.lora = config_.lora;
    task.train = config_.train;
    task.plan.init = wire::AdapterInit::kFresh;
    for (const wire::ModuleInfo& m : targets_) {
      const std::uint32_t rank = PlannedRank(client.plan, config_.lora, m.name);
      task.plan.modules.push_back({m.name, rank, {}});
      if (rank == 0) continue;
      const auto r = static_cast<std::int64_t>(rank);
      task.expected_upload[lora::LoraAName(m.name)] = {
          TensorSpec{config_.train.upload_dtype, {r, m.d_in}}};
      task.expected_upload[lora::LoraBName(m.name)] = {
          TensorSpec{config_.train.upload_dtype, {m.d_out, r}}};
    }
    if (task.expected_upload.empty()) {
      return InvalidArgument("client ", client.id, " has rank 0 on every target module");
    }
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Status Flora::ValidateUpdate(const ClientTask& task, const ClientUpdate& update) const {
  return OkStatus();  // Shapes are fixed per client and checked by the coordinator.
}

// Folds s·B_k·A_k of each upload as it arrives (ProductSums); Finish stacks a module's blocks
// in client-id order or, once they outgrew it, takes its exact dense sum.
class Flora::Accumulator final : public RoundAccumulator {
 public:
  Accumulator(const Flora& owner, ProductSums sums, std::uint64_t round)
      : owner_(owner), sums_(std::move(sums)), round_(round) {}
  Status Fold(const ClientUpdate& update, const ClientTask& task) override {
    return sums_.Fold(update.client_id, update.tensors, RawWeight(update, owner_.config_.weighting));
  }
  Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) override try {
    FEDLORA_ASSIGN_OR_RETURN(const double total,
                             WeightTotal(sums_.weights(), owner_.config_.weighting));
    const double scale = lora::Scale(owner_.config_.lora);
    const DType dtype = owner_.config_.state_dtype;
    GlobalState next = state;
    CorrectionEntry entry;
    entry.version = round_;
    double stacked_rank = 0;
    for (const wire::ModuleInfo& m : owner_.targets_) {
      ModuleCorrection c;
      if (sums_.dense(m.name)) {
        FEDLORA_ASSIGN_OR_RETURN(c.dense, Store(sums_.Dense(m.name, scale / total), dtype));
        stacked_rank += static_cast<double>(std::min(m.d_out, m.d_in));
      } else {
        const auto& blocks = sums_.blocks(m.name);
        if (blocks.empty()) continue;
        std::vector<at::Tensor> as, bs;
        std::vector<double> w;
        FEDLORA_RETURN_IF_ERROR(sums_.BlockFactors(m.name, &as, &bs));
        for (const auto& [id, block] : blocks) w.push_back(block.weight / total);
        const std::vector<double> scales(as.size(), scale);
        // global_scale 1: the pair is exactly sum_k p_k s B_k A_k, scale folded into A's blocks.
        FEDLORA_ASSIGN_OR_RETURN(lora::FactorPair stacked, lora::Stack(as, bs, w, scales, 1.0));
        stacked_rank += static_cast<double>(stacked.B.size(1));
        FEDLORA_ASSIGN_OR_RETURN(c.u, Store(stacked.B, dtype));
        FEDLORA_ASSIGN_OR_RETURN(c.v, Store(stacked.A, dtype));
      }
      entry.modules.emplace(m.name, std::move(c));
    }
    return owner_.Commit(state, std::move(next), std::move(entry), stacked_rank,
                         sums_.dense_modules(), sums_.weights(), total);
  } catch (const c10::Error& e) {
    return Internal("flora aggregation: ", e.what_without_backtrace());
  }

 private:
  const Flora& owner_;
  ProductSums sums_;
  std::uint64_t round_;
};

Result<AggregateReport> Flora::Commit(GlobalState& state, GlobalState next, CorrectionEntry entry,
                                      double stacked_rank, std::size_t dense_modules,
                                      const std::map<std::string, double, std::less<>>& weights,
                                      double total) const {
  const std::size_t entry_bytes = entry.bytes();
  FEDLORA_RETURN_IF_ERROR(
      AppendCorrection(next.corrections, std::move(entry), corrections_, config_.state_dtype));
  state = std::move(next);
  AggregateReport report;
  for (const auto& [id, w] : weights) report.weights[id] = w / total;
  report.metrics["stacked_rank_mean"] = targets_.empty() ? 0 : stacked_rank / targets_.size();
  report.metrics["correction_bytes"] = static_cast<double>(entry_bytes);
  report.metrics["dense_modules"] = static_cast<double>(dense_modules);
  return report;
}

Result<std::unique_ptr<RoundAccumulator>> Flora::Begin(const GlobalState& state,
                                                       std::uint64_t round) {
  if (MeanIsLinear(config_)) {
    std::map<std::string, ProductSums::Dims, std::less<>> dims;
    for (const wire::ModuleInfo& m : targets_) dims[m.name] = {m.d_out, m.d_in};
    return std::unique_ptr<RoundAccumulator>(std::make_unique<Accumulator>(
        *this, ProductSums(std::move(dims), /*factor_means=*/false), round));
  }
  return MakeGatheringAccumulator(
      [this, round](GlobalState& s, std::span<const ClientUpdate> updates,
                    std::span<const ClientTask> tasks) { return Combine(s, round, updates, tasks); });
}

Result<AggregateReport> Flora::Combine(GlobalState& state, std::uint64_t round,
                                         std::span<const ClientUpdate> updates,
                                         std::span<const ClientTask> tasks) try {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(updates, config_));
  const double scale = lora::Scale(config_.lora);
  GlobalState next = state;
  CorrectionEntry entry;
  entry.version = round;
  double stacked_rank = 0;
  for (const wire::ModuleInfo& m : targets_) {
    const std::string a_name = lora::LoraAName(m.name), b_name = lora::LoraBName(m.name);
    std::vector<at::Tensor> as, bs;
    std::vector<double> w;
    for (std::size_t k = 0; k < updates.size(); ++k) {
      if (!updates[k].tensors.contains(a_name)) continue;  // No LoRA here on this client.
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, Load64(updates[k].tensors, a_name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, Load64(updates[k].tensors, b_name));
      as.push_back(std::move(a));
      bs.push_back(std::move(b));
      w.push_back(weights[k]);
    }
    if (as.empty()) continue;
    const std::vector<double> scales(as.size(), scale);
    // global_scale 1: the pair is exactly sum_k p_k s B_k A_k, scale folded into A's blocks.
    FEDLORA_ASSIGN_OR_RETURN(lora::FactorPair stacked, lora::Stack(as, bs, w, scales, 1.0));
    stacked_rank += static_cast<double>(stacked.B.size(1));
    ModuleCorrection c;
    FEDLORA_ASSIGN_OR_RETURN(c.u, Store(stacked.B, config_.state_dtype));
    FEDLORA_ASSIGN_OR_RETURN(c.v, Store(stacked.A, config_.state_dtype));
    entry.modules.emplace(m.name, std::move(c));
  }
  const std::size_t entry_bytes = entry.bytes();
  FEDLORA_RETURN_IF_ERROR(
      AppendCorrection(next.corrections, std::move(entry), corrections_, config_.state_dtype));
  state = std::move(next);
  AggregateReport report;
  for (std::size_t k = 0; k < updates.size(); ++k) report.weights[updates[k].client_id] = weights[k];
  report.metrics["stacked_rank_mean"] = targets_.empty() ? 0 : stacked_rank / targets_.size();
  report.metrics["correction_bytes"] = static_cast<double>(entry_bytes);
  return report;
} catch (const c10::Error& e) {
  return Internal("flora aggregation: ", e.what_without_backtrace());
}

EvalSpec Flora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, {}, {}};  // The merged base is the model.
}

}  // namespace fedlora::server
