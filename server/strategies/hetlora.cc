#include "server/strategies/hetlora.h"

#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/lora/adapter_layout.h"
#include "common/lora/factor_math.h"
#include "server/rank_policy.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {
namespace {

using nlohmann::json;

// strategy_json: {"ranks": {"<client>": {"<module>": rank}}}, ranks after pruning.
json ParseState(const std::string& text) {
  if (text.empty()) return json::object();
  json j = json::parse(text, nullptr, false);
  return j.is_object() ? j : json::object();
}

}  // namespace

Result<GlobalState> HetLora::Initialize(const ModelLayout& layout) {
  return FedAvg(config_).Initialize(layout);
}

std::uint32_t HetLora::RankOf(const GlobalState& state, const ClientInfo& client,
                              const std::string& module) const {
  const json s = ParseState(state.strategy_json);
  if (s.contains("ranks") && s["ranks"].contains(client.id) &&
      s["ranks"][client.id].contains(module)) {
    return s["ranks"][client.id][module].get<std::uint32_t>();
  }
  return std::min(PlannedRank(client.plan, config_.lora, module), config_.lora.rank);
}

Result<std::vector<ClientTask>> HetLora::Configure(const GlobalState& state, std::uint64_t round,
                                                   std::span<const ClientInfo> selected) try {
  std::vector<ClientTask> tasks;
  for (const ClientInfo& client : selected) {
    ClientTask task;
    task.client_id = client.id;
    task.lora = config_.lora;
    task.train = config_.train;
    task.plan.pruning = {het_.gamma, het_.lambda, het_.min_rank};
    for (const std::string& module : AdapterModules(state.adapter)) {
      const std::uint32_t rank = RankOf(state, client, module);
      task.plan.modules.push_back({module, rank, {}});
      if (rank == 0) continue;
      const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, Load64(state.adapter, a_name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, Load64(state.adapter, b_name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_k, lora::TruncateRows(a, rank));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_k, lora::TruncateCols(b, rank));
      FEDLORA_ASSIGN_OR_RETURN(task.tensors[a_name], Store(a_k, state.adapter.at(a_name).dtype));
      FEDLORA_ASSIGN_OR_RETURN(task.tensors[b_name], Store(b_k, state.adapter.at(b_name).dtype));
      const auto r = static_cast<std::int64_t>(rank);
      const DType dtype = config_.train.upload_dtype;
      task.expected_upload[a_name] = {TensorSpec{dtype, {r, a.size(1)}}, 0};
      task.expected_upload[b_name] = {TensorSpec{dtype, {b.size(0), r}}, 1};
    }
    tasks.push_back(std::move(task));
  }
  return tasks;
} catch (const c10::Error& e) {
  return Internal("hetlora configure: ", e.what_without_backtrace());
}

Status HetLora::ValidateUpdate(const ClientTask& task, const ClientUpdate& update) const {
  for (const auto& [name, t] : update.tensors) {
    if (!std::string_view(name).ends_with(".lora_A.weight")) continue;
    const std::string module = name.substr(0, name.size() - std::string(".lora_A.weight").size());
    const Tensor& b = update.tensors.at(lora::LoraBName(module));
    if (t.shape[0] != b.shape[1]) {
      return Status(StatusCode::kInvalidArgument,
                    StrCat("module '", module, "': A has rank ", t.shape[0], " but B has rank ",
                           b.shape[1], " (a pruned module must shrink both)"),
                    static_cast<std::uint32_t>(wire::ErrorCode::kTensorShapeMismatch));
    }
  }
  return OkStatus();
}

Result<AggregateReport> HetLora::Aggregate(GlobalState& state, std::uint64_t round,
                                           std::span<const ClientUpdate> updates,
                                           std::span<const ClientTask> tasks) try {
  const std::vector<std::string> modules = AdapterModules(state.adapter);
  const std::size_t n = updates.size();
  // Per-client, per-module ||B_k A_k||_F (zero where the client has no LoRA).
  std::vector<std::map<std::string, double>> norms(n);
  for (std::size_t k = 0; k < n; ++k) {
    for (const std::string& module : modules) {
      if (!updates[k].tensors.contains(lora::LoraAName(module))) continue;
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, Load64(updates[k].tensors, lora::LoraAName(module)));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, Load64(updates[k].tensors, lora::LoraBName(module)));
      FEDLORA_ASSIGN_OR_RETURN(norms[k][module], lora::ProductFrobeniusNorm(b, a));
    }
  }
  std::vector<double> base_weights(n, 1.0);
  if (het_.weighting == "sparsity") {
    if (het_.sparsity_scope == "model") {
      for (std::size_t k = 0; k < n; ++k) {
        double sq = 0;
        for (const auto& [m, v] : norms[k]) sq += v * v;
        base_weights[k] = std::sqrt(sq);
      }
    }
  } else {
    FEDLORA_ASSIGN_OR_RETURN(Weighting w, ParseWeighting(het_.weighting));
    FEDLORA_ASSIGN_OR_RETURN(base_weights, ComputeWeights(updates, w, config_.max_weight_share));
  }

  TensorMap next;
  json s = ParseState(state.strategy_json);
  if (!s.contains("ranks")) s["ranks"] = json::object();
  double rank_sum = 0;
  int rank_count = 0, pruned = 0;
  for (const std::string& module : modules) {
    const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_old, Load64(state.adapter, a_name));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_old, Load64(state.adapter, b_name));
    const std::int64_t r = a_old.size(0);
    std::vector<at::Tensor> as, bs;
    std::vector<double> w;
    for (std::size_t k = 0; k < n; ++k) {
      if (!updates[k].tensors.contains(a_name)) continue;
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, Load64(updates[k].tensors, a_name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, Load64(updates[k].tensors, b_name));
      const std::int64_t rank = a.size(0);
      rank_sum += static_cast<double>(rank);
      ++rank_count;
      const std::uint32_t assigned = [&] {
        for (const auto& mp : tasks[k].plan.modules) {
          if (mp.module == module) return mp.rank;
        }
        return config_.lora.rank;
      }();
      if (rank < assigned) ++pruned;
      s["ranks"][updates[k].client_id][module] = rank;
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_pad, lora::PadRows(a, r));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_pad, lora::PadCols(b, r));
      as.push_back(std::move(a_pad));
      bs.push_back(std::move(b_pad));
      w.push_back(het_.weighting == "sparsity" && het_.sparsity_scope == "module"
                      ? norms[k][module]
                      : base_weights[k]);
    }
    double total = 0;
    for (double x : w) total += x;
    if (as.empty() || !(total > 0)) {  // Nobody trained it (or every update was zero): keep it.
      FEDLORA_ASSIGN_OR_RETURN(next[a_name], Store(a_old, config_.state_dtype));
      FEDLORA_ASSIGN_OR_RETURN(next[b_name], Store(b_old, config_.state_dtype));
      continue;
    }
    for (double& x : w) x /= total;
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_new, lora::WeightedSum(as, w));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_new, lora::WeightedSum(bs, w));
    FEDLORA_ASSIGN_OR_RETURN(next[a_name], Store(a_new, config_.state_dtype));
    FEDLORA_ASSIGN_OR_RETURN(next[b_name], Store(b_new, config_.state_dtype));
  }
  state.adapter = std::move(next);
  state.strategy_json = s.dump();
  AggregateReport report;
  double total = 0;
  for (double x : base_weights) total += x;
  for (std::size_t k = 0; k < n; ++k) {
    report.weights[updates[k].client_id] = total > 0 ? base_weights[k] / total : 1.0 / n;
  }
  report.metrics["uploaded_rank_mean"] = rank_count > 0 ? rank_sum / rank_count : 0;
  report.metrics["pruned_modules"] = pruned;
  return report;
} catch (const c10::Error& e) {
  return Internal("hetlora aggregation: ", e.what_without_backtrace());
}

EvalSpec HetLora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
