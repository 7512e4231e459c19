#include "server/strategies/ffa.h"

#include "common/lora/adapter_layout.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {
namespace {

bool IsB(const std::string& name) { return std::string_view(name).ends_with(".lora_B.weight"); }

}  // namespace

Result<GlobalState> FfaLora::Initialize(const ModelLayout& layout) {
  FedAvg fedavg(config_);
  return fedavg.Initialize(layout);
}

Result<std::vector<ClientTask>> FfaLora::Configure(const GlobalState& state, std::uint64_t round,
                                                   std::span<const ClientInfo> selected) {
  TensorMap upload_shapes;
  for (const auto& [name, t] : state.adapter) {
    if (IsB(name)) upload_shapes.emplace(name, t);
  }
  std::vector<ClientTask> tasks;
  for (const ClientInfo& client : selected) {
    ClientTask task = StandardTask(client, config_.lora, config_.train, state.adapter, upload_shapes);
    task.plan.train_a = false;
    task.plan.upload_a = false;
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Result<AggregateReport> FfaLora::Aggregate(GlobalState& state, std::uint64_t round,
                                           std::span<const ClientUpdate> updates,
                                           std::span<const ClientTask> tasks) {
  AggregateReport report;
  FEDLORA_ASSIGN_OR_RETURN(TensorMap b_mean, CombineUpdates(updates, config_, &report));
  for (auto& [name, t] : b_mean) state.adapter[name] = std::move(t);
  return report;
}

EvalSpec FfaLora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
