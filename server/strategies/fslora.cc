#include "server/strategies/fslora.h"

#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "common/lora/adapter_layout.h"
#include "common/lora/factor_math.h"
#include "server/rank_policy.h"
#include "server/strategies/strategy_util.h"
#include "server/strategies/weighted_sums.h"

namespace fedlora::server {
namespace {

std::string MomentName(const std::string& param, const char* which) {
  return StrCat(param, ".", which);
}

}  // namespace

Result<GlobalState> FsLora::Initialize(const ModelLayout& layout,
                                       std::optional<GlobalState> restored) {
  return FedAvg(config_).Initialize(layout, std::move(restored));
}

Result<std::vector<ClientTask>> FsLora::Configure(const GlobalState& state, std::uint64_t round,
                                                  std::span<const ClientInfo> selected) try {
  const auto r = static_cast<std::int64_t>(config_.lora.rank);
  std::vector<ClientTask> tasks;
  for (const ClientInfo& client : selected) {
    // Sketch size: the client's planned rank if the rank policy gave one, else the ratio.
    std::int64_t k = client.plan.modules.empty()
                         ? static_cast<std::int64_t>(std::ceil(fs_.sketch_ratio * r - 1e-9))
                         : static_cast<std::int64_t>(TopRank(client.plan, config_.lora));
    k = std::clamp<std::int64_t>(k, 1, r);
    ClientTask task;
    task.client_id = client.id;
    task.lora = config_.lora;
    task.train = config_.train;
    task.plan.mode = wire::AdapterMode::kSketched;
    task.plan.global_rank = static_cast<std::uint32_t>(r);
    for (const std::string& module : AdapterModules(state.adapter)) {
      std::mt19937_64 rng(StreamSeed(config_.seed, round, client.id, module));
      FEDLORA_ASSIGN_OR_RETURN(std::vector<std::int64_t> sketch, lora::SampleSketch(r, k, rng));
      const std::string a_name = lora::LoraAName(module), b_name = lora::LoraBName(module);
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, Load64(state.adapter, a_name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, Load64(state.adapter, b_name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a_sub, lora::GatherRows(a, sketch));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor b_sub, lora::GatherCols(b, sketch));
      FEDLORA_ASSIGN_OR_RETURN(task.tensors[a_name], Store(a_sub, DType::kF32));
      FEDLORA_ASSIGN_OR_RETURN(task.tensors[b_name], Store(b_sub, DType::kF32));
      const DType dtype = config_.train.upload_dtype;
      task.expected_upload[a_name] = {TensorSpec{dtype, {k, a.size(1)}}};
      task.expected_upload[b_name] = {TensorSpec{dtype, {b.size(0), k}}};
      task.plan.modules.push_back(
          {module, static_cast<std::uint32_t>(k),
           std::vector<std::uint32_t>(sketch.begin(), sketch.end())});
    }
    tasks.push_back(std::move(task));
  }
  return tasks;
} catch (const c10::Error& e) {
  return Internal("fslora configure: ", e.what_without_backtrace());
}

namespace {

// Client i's delta (sent − trained) scattered back to full rank, per tensor name, in f64: a
// pseudo-gradient, the direction its training moved the global factors.
Result<TensorMap> ScatteredDeltas(const ClientUpdate& update, const ClientTask& task,
                                  const std::vector<std::string>& modules, std::int64_t r) try {
  TensorMap out;
  for (const std::string& module : modules) {
    const wire::ModulePlan* plan = nullptr;
    for (const auto& mp : task.plan.modules) {
      if (mp.module == module) plan = &mp;
    }
    if (plan == nullptr) return Internal("fslora: no sketch of '", module, "' in the task");
    const std::vector<std::int64_t> idx(plan->sketch.begin(), plan->sketch.end());
    for (const bool is_a : {true, false}) {
      const std::string name = is_a ? lora::LoraAName(module) : lora::LoraBName(module);
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor sent, Load64(task.tensors, name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor trained, Load64(update.tensors, name));
      const at::Tensor delta = sent - trained;
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor full, is_a ? lora::ScatterRows(idx, delta, r)
                                                     : lora::ScatterCols(idx, delta, r));
      FEDLORA_ASSIGN_OR_RETURN(out[name], Store(full, DType::kF64));
    }
  }
  return out;
} catch (const c10::Error& e) {
  return Internal("fslora: ", e.what_without_backtrace());
}

std::vector<WeightedSums::Term> Terms(const TensorMap& tensors, double weight) {
  std::vector<WeightedSums::Term> terms;
  for (const auto& [name, t] : tensors) terms.push_back({name, &t, weight});
  return terms;
}

}  // namespace

// Without a share cap every client's weight is its own count: deltas fold as they arrive.
class FsLora::Accumulator final : public RoundAccumulator {
 public:
  Accumulator(const FsLora& owner, const GlobalState& state)
      : owner_(owner), modules_(AdapterModules(state.adapter)) {}
  Status Fold(const ClientUpdate& update, const ClientTask& task) override {
    FEDLORA_ASSIGN_OR_RETURN(TensorMap deltas,
                             ScatteredDeltas(update, task, modules_,
                                             static_cast<std::int64_t>(owner_.config_.lora.rank)));
    const double w = RawWeight(update, owner_.config_.weighting);
    FEDLORA_RETURN_IF_ERROR(sums_.Fold(Terms(deltas, w), update.client_id));
    weights_[update.client_id] = w;
    return OkStatus();
  }
  Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) override {
    FEDLORA_ASSIGN_OR_RETURN(const double total,
                             WeightTotal(weights_, owner_.config_.weighting));
    FEDLORA_ASSIGN_OR_RETURN(TensorMap grads, sums_.Means(DType::kF64));
    FEDLORA_ASSIGN_OR_RETURN(AggregateReport report, owner_.Step(state, grads));
    for (const auto& [id, w] : weights_) report.weights[id] = w / total;
    return report;
  }

 private:
  const FsLora& owner_;
  std::vector<std::string> modules_;
  WeightedSums sums_;
  RawWeights weights_;
};

Result<std::unique_ptr<RoundAccumulator>> FsLora::Begin(const GlobalState& state,
                                                        std::uint64_t round) {
  if (MeanIsLinear(config_)) return std::unique_ptr<RoundAccumulator>(std::make_unique<Accumulator>(*this, state));
  return MakeGatheringAccumulator(
      [this, round](GlobalState& s, std::span<const ClientUpdate> updates,
                    std::span<const ClientTask> tasks) { return Combine(s, round, updates, tasks); });
}

std::optional<SecureSpec> FsLora::secure_spec() const {
  std::optional<SecureSpec> spec = MeanSecureSpec(config_);
  if (spec) spec->delta = true;
  return spec;
}

Result<AggregateReport> FsLora::FinishSecure(GlobalState& state, std::uint64_t round,
                                             const secagg::SecureSum& sum) {
  TensorMap grads = sum.Means();  // The weighted mean of the scattered deltas, per tensor.
  for (const auto& [name, t] : state.adapter) {
    if (!grads.contains(name)) {
      return InvalidArgument("fslora secure sum: no survivor weighed tensor '", name, "'");
    }
  }
  return Step(state, grads);
}

Result<AggregateReport> FsLora::Combine(GlobalState& state, std::uint64_t round,
                                        std::span<const ClientUpdate> updates,
                                        std::span<const ClientTask> tasks) {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(updates, config_));
  const std::vector<std::string> modules = AdapterModules(state.adapter);
  WeightedSums sums;
  for (std::size_t i = 0; i < updates.size(); ++i) {
    FEDLORA_ASSIGN_OR_RETURN(TensorMap deltas,
                             ScatteredDeltas(updates[i], tasks[i], modules,
                                             static_cast<std::int64_t>(config_.lora.rank)));
    FEDLORA_RETURN_IF_ERROR(sums.Fold(Terms(deltas, weights[i]), updates[i].client_id));
  }
  FEDLORA_ASSIGN_OR_RETURN(AggregateReport report, Step(state, sums.Scaled(DType::kF64, 1.0)));
  for (std::size_t k = 0; k < updates.size(); ++k) report.weights[updates[k].client_id] = weights[k];
  return report;
}

Result<AggregateReport> FsLora::Step(GlobalState& state, const TensorMap& grads) const try {
  nlohmann::json s = state.strategy_json.empty()
                         ? nlohmann::json::object()
                         : nlohmann::json::parse(state.strategy_json, nullptr, false);
  if (!s.is_object()) s = nlohmann::json::object();
  const std::int64_t step = s.value("server_step", std::int64_t{0}) + 1;
  GlobalState next = state;
  double grad_sq = 0;
  for (const std::string& module : AdapterModules(state.adapter)) {
    for (const bool is_a : {true, false}) {
      const std::string name = is_a ? lora::LoraAName(module) : lora::LoraBName(module);
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor theta, Load64(state.adapter, name));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor grad, Load64(grads, name));
      grad_sq += grad.pow(2).sum().item<double>();
      at::Tensor updated;
      if (fs_.server_optimizer == "sgd") {
        updated = theta - fs_.server_learning_rate * grad;
      } else {  // AdamW with decoupled weight decay, moments kept in the state.
        const std::string m_name = MomentName(name, "exp_avg");
        const std::string v_name = MomentName(name, "exp_avg_sq");
        at::Tensor m = state.extra.contains(m_name) ? *Load64(state.extra, m_name)
                                                    : at::zeros_like(theta);
        at::Tensor v = state.extra.contains(v_name) ? *Load64(state.extra, v_name)
                                                    : at::zeros_like(theta);
        m = fs_.beta1 * m + (1 - fs_.beta1) * grad;
        v = fs_.beta2 * v + (1 - fs_.beta2) * grad * grad;
        const double bc1 = 1 - std::pow(fs_.beta1, static_cast<double>(step));
        const double bc2 = 1 - std::pow(fs_.beta2, static_cast<double>(step));
        updated = theta * (1 - fs_.server_learning_rate * fs_.weight_decay) -
                  fs_.server_learning_rate * (m / bc1) / ((v / bc2).sqrt() + fs_.eps);
        FEDLORA_ASSIGN_OR_RETURN(next.extra[m_name], Store(m, DType::kF64));
        FEDLORA_ASSIGN_OR_RETURN(next.extra[v_name], Store(v, DType::kF64));
      }
      FEDLORA_ASSIGN_OR_RETURN(next.adapter[name], Store(updated, config_.state_dtype));
    }
  }
  s["server_step"] = step;
  next.strategy_json = s.dump();
  state = std::move(next);
  AggregateReport report;
  report.metrics["server_grad_norm"] = std::sqrt(grad_sq);
  report.metrics["server_step"] = static_cast<double>(step);
  return report;
} catch (const c10::Error& e) {
  return Internal("fslora aggregation: ", e.what_without_backtrace());
}

EvalSpec FsLora::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
