#include "server/strategies/fedavg.h"

#include <algorithm>

#include "common/lora/adapter_layout.h"

namespace fedlora::server {

Result<TensorMap> WeightedMean(std::span<const ClientUpdate> updates,
                               std::span<const double> weights, DType dtype) {
  FEDLORA_CHECK(!updates.empty() && updates.size() == weights.size());
  const ClientUpdate& first = updates.front();
  for (const ClientUpdate& u : updates) {
    if (u.tensors.size() != first.tensors.size()) {
      return InvalidArgument("client ", u.client_id, " uploaded ", u.tensors.size(),
                             " tensors but client ", first.client_id, " uploaded ",
                             first.tensors.size(),
                             " (hint: clients trained different LoRA targets)");
    }
  }
  // Accumulate in client-id order, so the floating-point result does not depend on the order
  // the updates arrived in.
  std::vector<std::size_t> order(updates.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return updates[a].client_id < updates[b].client_id;
  });
  TensorMap out;
  for (const auto& [name, reference] : first.tensors) {
    std::vector<double> acc(static_cast<std::size_t>(reference.numel()), 0.0);
    for (std::size_t k : order) {
      const auto it = updates[k].tensors.find(name);
      if (it == updates[k].tensors.end()) {
        return InvalidArgument("client ", updates[k].client_id, " did not upload tensor '", name,
                               "'");
      }
      if (it->second.shape != reference.shape) {
        return InvalidArgument("client ", updates[k].client_id, " disagrees on the shape of '",
                               name, "': ", ShapeString(it->second.shape), " vs ",
                               ShapeString(reference.shape),
                               " (hint: clients trained different LoRA ranks)");
      }
      const std::vector<double> values = ToDoubles(it->second);
      const double p = weights[k];
      for (std::size_t i = 0; i < acc.size(); ++i) acc[i] += p * values[i];
    }
    out.emplace(name, FromDoubles(dtype, reference.shape, acc));
  }
  return out;
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
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights,
                           ComputeWeights(updates, config_.weighting));
  FEDLORA_ASSIGN_OR_RETURN(TensorMap mean, WeightedMean(updates, weights, config_.state_dtype));
  state.adapter = std::move(mean);
  AggregateReport report;
  for (std::size_t k = 0; k < updates.size(); ++k) {
    report.weights[updates[k].client_id] = weights[k];
  }
  return report;
}

EvalSpec FedAvg::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
