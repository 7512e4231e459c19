#include "server/strategies/ffa.h"

#include "common/lora/adapter_layout.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {
namespace {

bool IsB(const std::string& name) { return std::string_view(name).ends_with(".lora_B.weight"); }

}  // namespace

Result<GlobalState> FfaLora::Initialize(const ModelLayout& layout,
                                        std::optional<GlobalState> restored) {
  return FedAvg(config_).Initialize(layout, std::move(restored));
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

Result<std::unique_ptr<RoundAccumulator>> FfaLora::Begin(const GlobalState& state,
                                                         std::uint64_t round) {
  return MakeMeanAccumulator(config_, /*merge=*/true);  // Only B is uploaded; A stays.
}

EvalSpec FfaLora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
