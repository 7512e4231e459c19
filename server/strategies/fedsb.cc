#include "server/strategies/fedsb.h"

#include "common/lora/adapter_layout.h"

namespace fedlora::server {
namespace {

std::string RName(std::string_view module) { return StrCat(module, ".lora_R.weight"); }

}  // namespace

Result<GlobalState> FedSb::Initialize(const ModelLayout& layout,
                                      std::optional<GlobalState> restored) {
  FEDLORA_ASSIGN_OR_RETURN(targets_, lora::SelectTargets(layout.modules, config_.lora));
  if (restored) return std::move(*restored);
  return GlobalState{};  // Empty until a client computed the initialisation.
}

wire::AdapterPlan FedSb::Plan() const {
  wire::AdapterPlan plan;
  plan.mode = wire::AdapterMode::kLoraSb;
  plan.train_a = plan.train_b = plan.upload_a = plan.upload_b = false;
  return plan;
}

Result<ClientTask> FedSb::ConfigureInit(const GlobalState& state, const ClientInfo& client) {
  ClientTask task;
  task.client_id = client.id;
  task.lora = config_.lora;
  task.train = config_.train;
  task.plan = Plan();
  task.plan.mode = wire::AdapterMode::kLoraSbInit;
  task.plan.init_samples = sb_.init_samples;
  // The first step of a linear warmup: lr / warmup_steps (ALGORITHMS.md §5, init step 3).
  task.plan.init_learning_rate =
      sb_.init_learning_rate > 0
          ? sb_.init_learning_rate
          : config_.train.learning_rate / std::max<std::uint32_t>(1, config_.train.warmup_steps);
  const auto r = static_cast<std::int64_t>(config_.lora.rank);
  const DType dtype = config_.train.upload_dtype;
  for (const wire::ModuleInfo& m : targets_) {
    const std::int64_t k = std::min({r, m.d_out, m.d_in});
    task.expected_upload[lora::LoraBName(m.name)] = {TensorSpec{dtype, {m.d_out, k}}};
    task.expected_upload[lora::LoraAName(m.name)] = {TensorSpec{dtype, {k, m.d_in}}};
    task.expected_upload[RName(m.name)] = {TensorSpec{dtype, {k, k}}};
  }
  return task;
}

Status FedSb::AcceptInit(GlobalState& state, const ClientUpdate& update) {
  GlobalState next = state;
  for (const wire::ModuleInfo& m : targets_) {
    for (const std::string& name : {lora::LoraAName(m.name), lora::LoraBName(m.name)}) {
      next.extra[name] = FromDoubles(config_.state_dtype, update.tensors.at(name).shape,
                                     ToDoubles(update.tensors.at(name)));
    }
    const Tensor& r = update.tensors.at(RName(m.name));
    next.adapter[RName(m.name)] = FromDoubles(config_.state_dtype, r.shape, ToDoubles(r));
  }
  state = std::move(next);
  return OkStatus();
}

TensorMap FedSb::TaskTensors(const GlobalState& state, const ClientInfo& client) const {
  TensorMap tensors = state.adapter;
  if (!client.cached.contains(kFrozenCacheKey)) {
    for (const auto& [name, t] : state.extra) tensors.emplace(name, t);
  }
  return tensors;
}

Result<std::vector<ClientTask>> FedSb::Configure(const GlobalState& state, std::uint64_t round,
                                                 std::span<const ClientInfo> selected) {
  std::vector<ClientTask> tasks;
  for (const ClientInfo& client : selected) {
    ClientTask task = StandardTask(client, config_.lora, config_.train, TaskTensors(state, client),
                                   state.adapter);
    task.plan = Plan();
    task.caches.emplace_back(kFrozenCacheKey);
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Result<std::unique_ptr<RoundAccumulator>> FedSb::Begin(const GlobalState& state,
                                                       std::uint64_t round) {
  return MakeMeanAccumulator(config_, /*merge=*/false);
}

EvalSpec FedSb::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, Plan(), TaskTensors(state, client),
                  {std::string(kFrozenCacheKey)}};
}

}  // namespace fedlora::server
