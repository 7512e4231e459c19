#include "server/strategies/fedavg.h"

#include <algorithm>

#include "common/lora/adapter_layout.h"

namespace fedlora::server {

Result<TensorMap> WeightedMean(std::span<const ClientUpdate> updates,
                               std::span<const double> weights, DType dtype) {
  FEDLORA_CHECK(!updates.empty() && updates.size() == weights.size());
  FEDLORA_RETURN_IF_ERROR(CheckUpdatesAlign(updates));
  // Accumulate in client-id order, so the floating-point result does not depend on the order
  // the updates arrived in.
  std::vector<std::size_t> order(updates.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return updates[a].client_id < updates[b].client_id;
  });
  TensorMap out;
  for (const auto& [name, reference] : updates.front().tensors) {
    std::vector<double> acc(static_cast<std::size_t>(reference.numel()), 0.0);
    for (std::size_t k : order) {
      const std::vector<double> values = ToDoubles(updates[k].tensors.at(name));
      const double p = weights[k];
      for (std::size_t i = 0; i < acc.size(); ++i) acc[i] += p * values[i];
    }
    out.emplace(name, FromDoubles(dtype, reference.shape, acc));
  }
  return out;
}

Result<std::vector<double>> ClientWeights(std::span<const ClientUpdate> updates,
                                          const FedAvgConfig& config) {
  return ComputeWeights(updates, config.weighting, config.max_weight_share);
}

Result<TensorMap> CombineUpdates(std::span<const ClientUpdate> updates, const FedAvgConfig& config,
                                 AggregateReport* report) {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(updates, config));
  RuleOutcome outcome;
  if (config.rule == nullptr) {
    FEDLORA_ASSIGN_OR_RETURN(outcome.combined, WeightedMean(updates, weights, config.state_dtype));
    outcome.shares = std::move(weights);
  } else {
    FEDLORA_ASSIGN_OR_RETURN(outcome, config.rule->Combine(updates, weights, config.state_dtype));
  }
  for (std::size_t k = 0; k < updates.size(); ++k) {
    report->weights[updates[k].client_id] = outcome.shares[k];
  }
  for (auto& [key, value] : outcome.metrics) report->metrics[key] = value;
  return std::move(outcome.combined);
}

Result<GlobalState> FedAvg::Initialize(const ModelLayout& layout) {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<wire::ModuleInfo> targets,
                           lora::SelectTargets(layout.modules, config_.lora));
  GlobalState state;
  state.adapter = lora::InitAdapter(targets, config_.lora.rank, config_.seed);
  return state;
}

ClientTask StandardTask(const ClientInfo& client, const wire::LoraSpec& lora,
                        const wire::TrainSpec& train, TensorMap tensors, const TensorMap& shapes) {
  ClientTask task;
  task.client_id = client.id;
  task.lora = lora;
  task.train = train;
  task.tensors = std::move(tensors);
  for (const auto& [name, t] : shapes) {
    task.expected_upload[name] = ExpectedTensor{TensorSpec{train.upload_dtype, t.shape}};
  }
  return task;
}

Result<std::vector<ClientTask>> FedAvg::Configure(const GlobalState& state, std::uint64_t round,
                                                  std::span<const ClientInfo> selected) {
  std::vector<ClientTask> tasks;
  tasks.reserve(selected.size());
  for (const ClientInfo& client : selected) {
    tasks.push_back(StandardTask(client, config_.lora, config_.train, state.adapter, state.adapter));
  }
  return tasks;
}

Result<AggregateReport> FedAvg::Aggregate(GlobalState& state, std::uint64_t round,
                                          std::span<const ClientUpdate> updates,
                                          std::span<const ClientTask> tasks) {
  AggregateReport report;
  FEDLORA_ASSIGN_OR_RETURN(state.adapter, CombineUpdates(updates, config_, &report));
  return report;
}

EvalSpec FedAvg::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
