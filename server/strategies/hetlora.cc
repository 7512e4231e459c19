#include "server/strategies/hetlora.h"

#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/lora/adapter_layout.h"
#include "common/lora/factor_math.h"
#include "server/rank_policy.h"
#include "server/strategies/strategy_util.h"
#include "server/strategies/weighted_sums.h"

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

Result<GlobalState> HetLora::Initialize(const ModelLayout& layout,
                                        std::optional<GlobalState> restored) {
  return FedAvg(config_).Initialize(layout, std::move(restored));
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

// Folds each upload, zero-padded to the global rank, into per-module running sums with its
// weight: its update norm (sparsity: over the model, or per module) or its count. With a share
// cap the counts need every upload first: Combine gives the capped shares as `fixed`.
class HetLora::Accumulator final : public RoundAccumulator {
 public:
  Accumulator(const HetLora& owner, const GlobalState& state,
              std::map<std::string, double, std::less<>> fixed = {})
      : owner_(owner), modules_(AdapterModules(state.adapter)), fixed_(std::move(fixed)) {
    for (const std::string& module : modules_) {
      ranks_[module] = state.adapter.at(lora::LoraAName(module)).shape.at(0);
    }
  }

  Status Fold(const ClientUpdate& update, const ClientTask& task) override try {
    const HetLoraConfig& het = owner_.het_;
    const bool sparsity = het.weighting == "sparsity";
    std::map<std::string, double> norms;  // ||B_k A_k||_F of each module it trained.
    for (const std::string& module : modules_) {
      if (!update.tensors.contains(lora::LoraAName(module))) continue;
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, Load64(update.tensors, lora::LoraAName(module)));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, Load64(update.tensors, lora::LoraBName(module)));
      FEDLORA_ASSIGN_OR_RETURN(norms[module], lora::ProductFrobeniusNorm(b, a));
    }
    double base = 1.0;
    if (sparsity && het.sparsity_scope == "model") {
      double sq = 0;
      for (const auto& [m, v] : norms) sq += v * v;
      base = std::sqrt(sq);
    } else if (!sparsity) {
      FEDLORA_ASSIGN_OR_RETURN(Weighting w, ParseWeighting(het.weighting));
      const auto it = fixed_.find(update.client_id);
      base = it != fixed_.end() ? it->second : RawWeight(update, w);
    }
    TensorMap padded;
    std::vector<WeightedSums::Term> terms;
    Contribution c;
    for (const auto& [module, norm] : norms) {
      const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, Load64(update.tensors, a_name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, Load64(update.tensors, b_name));
      const std::int64_t rank = a.size(0);
      c.ranks[module] = rank;
      std::uint32_t assigned = owner_.config_.lora.rank;
      for (const auto& mp : task.plan.modules) {
        if (mp.module == module) assigned = mp.rank;
      }
      if (rank < static_cast<std::int64_t>(assigned)) ++c.pruned;
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_pad, lora::PadRows(a, ranks_.at(module)));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_pad, lora::PadCols(b, ranks_.at(module)));
      FEDLORA_ASSIGN_OR_RETURN(padded[a_name], Store(a_pad, DType::kF64));
      FEDLORA_ASSIGN_OR_RETURN(padded[b_name], Store(b_pad, DType::kF64));
    }
    for (const auto& [name, t] : padded) {
      const std::string module(std::string_view(name).substr(0, name.rfind(".lora_")));
      const double w = sparsity && het.sparsity_scope == "module" ? norms.at(module) : base;
      terms.push_back({name, &t, w});
    }
    FEDLORA_RETURN_IF_ERROR(sums_.Fold(terms, update.client_id));
    c.base_weight = base;
    contributions_.insert_or_assign(update.client_id, std::move(c));
    return OkStatus();
  } catch (const c10::Error& e) {
    return Internal("hetlora fold: ", e.what_without_backtrace());
  }

  Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) override {
    TensorMap next;
    json s = ParseState(state.strategy_json);
    if (!s.contains("ranks")) s["ranks"] = json::object();
    for (const std::string& module : modules_) {
      for (const std::string& name : {lora::LoraAName(module), lora::LoraBName(module)}) {
        // Nobody trained it (or every update was zero): keep it.
        if (!(sums_.WeightOf(name) > 0)) {
          next[name] = FromDoubles(owner_.config_.state_dtype, state.adapter.at(name).shape,
                                   ToDoubles(state.adapter.at(name)));
          continue;
        }
        FEDLORA_ASSIGN_OR_RETURN(next[name], sums_.Mean(name, owner_.config_.state_dtype));
      }
    }
    AggregateReport report;
    double total = 0, rank_sum = 0;
    int rank_count = 0, pruned = 0;
    for (const auto& [id, c] : contributions_) total += c.base_weight;
    for (const auto& [id, c] : contributions_) {
      report.weights[id] = total > 0 ? c.base_weight / total
                                     : 1.0 / static_cast<double>(contributions_.size());
      for (const auto& [module, rank] : c.ranks) {
        s["ranks"][id][module] = rank;
        rank_sum += static_cast<double>(rank);
        ++rank_count;
      }
      pruned += c.pruned;
    }
    state.adapter = std::move(next);
    state.strategy_json = s.dump();
    report.metrics["uploaded_rank_mean"] = rank_count > 0 ? rank_sum / rank_count : 0;
    report.metrics["pruned_modules"] = pruned;
    return report;
  }

 private:
  struct Contribution {
    std::map<std::string, std::int64_t> ranks;  // Uploaded rank of each module it trained.
    int pruned = 0;                             // Modules uploaded below the assigned rank.
    double base_weight = 0;
  };
  const HetLora& owner_;
  std::vector<std::string> modules_;
  std::map<std::string, std::int64_t> ranks_;  // Global rank of each module.
  std::map<std::string, double, std::less<>> fixed_;
  WeightedSums sums_;
  std::map<std::string, Contribution, std::less<>> contributions_;
};

bool HetLora::linear() const {
  return het_.weighting != "sparsity" && !(config_.max_weight_share < 1.0);
}

std::optional<SecureSpec> HetLora::secure_spec() const {
  if (!linear()) return std::nullopt;
  const Result<Weighting> w = ParseWeighting(het_.weighting);
  if (!w.ok()) return std::nullopt;
  FedAvgConfig as_mean = config_;
  as_mean.weighting = *w;
  return MeanSecureSpec(as_mean);
}

Result<AggregateReport> HetLora::FinishSecure(GlobalState& state, std::uint64_t round,
                                              const secagg::SecureSum& sum) {
  const TensorMap means = sum.Means();
  TensorMap next;
  int kept = 0;
  for (const auto& [name, t] : state.adapter) {
    const auto mean = means.find(name);
    if (mean == means.end()) {  // Nobody trained it: keep it.
      next[name] = t;
      ++kept;
      continue;
    }
    next[name] = FromDoubles(config_.state_dtype, t.shape, ToDoubles(mean->second));
  }
  state.adapter = std::move(next);
  AggregateReport report;
  report.metrics["modules_kept"] = kept;
  return report;
}

Result<std::unique_ptr<RoundAccumulator>> HetLora::Begin(const GlobalState& state,
                                                         std::uint64_t round) {
  if (het_.weighting == "sparsity" || !(config_.max_weight_share < 1.0)) {
    return std::unique_ptr<RoundAccumulator>(std::make_unique<Accumulator>(*this, state));
  }
  return MakeGatheringAccumulator(
      [this, round](GlobalState& s, std::span<const ClientUpdate> updates,
                    std::span<const ClientTask> tasks) { return Combine(s, round, updates, tasks); });
}

Result<AggregateReport> HetLora::Combine(GlobalState& state, std::uint64_t round,
                                         std::span<const ClientUpdate> updates,
                                         std::span<const ClientTask> tasks) {
  FEDLORA_ASSIGN_OR_RETURN(Weighting w, ParseWeighting(het_.weighting));
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> shares,
                           ComputeWeights(updates, w, config_.max_weight_share));
  std::map<std::string, double, std::less<>> fixed;
  for (std::size_t k = 0; k < updates.size(); ++k) fixed[updates[k].client_id] = shares[k];
  Accumulator acc(*this, state, std::move(fixed));
  for (std::size_t k = 0; k < updates.size(); ++k) {
    FEDLORA_RETURN_IF_ERROR(acc.Fold(updates[k], tasks[k]));
  }
  return acc.Finish(state, MemoryUploads(updates, tasks));
}

EvalSpec HetLora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
