#include "server/strategies/fedsa.h"

namespace fedlora::server {

Result<GlobalState> FedSaLora::Initialize(const ModelLayout& layout,
                                          std::optional<GlobalState> restored) {
  const bool fresh = !restored;
  FEDLORA_ASSIGN_OR_RETURN(GlobalState state, FedAvg(config_).Initialize(layout, std::move(restored)));
  if (!fresh) return state;
  std::erase_if(state.adapter, [](const auto& kv) {  // B is never global: each client has its own.
    return std::string_view(kv.first).ends_with(".lora_B.weight");
  });
  return state;
}

Result<std::vector<ClientTask>> FedSaLora::Configure(const GlobalState& state, std::uint64_t round,
                                                     std::span<const ClientInfo> selected) {
  std::vector<ClientTask> tasks;
  for (const ClientInfo& client : selected) {
    ClientTask task = StandardTask(client, config_.lora, config_.train, state.adapter, state.adapter);
    task.plan.init = wire::AdapterInit::kLocalB;
    task.plan.upload_b = false;
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Result<std::unique_ptr<RoundAccumulator>> FedSaLora::Begin(const GlobalState& state,
                                                           std::uint64_t round) {
  return MakeMeanAccumulator(config_, /*merge=*/false);
}

EvalSpec FedSaLora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  wire::AdapterPlan plan;
  plan.init = wire::AdapterInit::kLocalB;  // Each client evaluates its personal model.
  return EvalSpec{config_.lora, plan, state.adapter, {}};
}

}  // namespace fedlora::server
