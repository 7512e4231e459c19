#include "client/lora/task_adapter.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "client/model/base_overlay.h"
#include "client/torch_bridge.h"

namespace fedlora::client {
namespace {

using wire::AdapterInit;
using wire::AdapterMode;

std::string_view InitName(AdapterInit init) {
  switch (init) {
    case AdapterInit::kFromTask: return "fromTask";
    case AdapterInit::kFresh: return "fresh";
    case AdapterInit::kLocalB: return "localB";
  }
  return "?";
}

Status ValidateSpec(const wire::LoraSpec& lora) {
  if (lora.rank == 0) return InvalidArgument("LoRA rank must be >= 1");
  if (!std::isfinite(lora.alpha) || lora.alpha <= 0.0) {
    return InvalidArgument("LoRA alpha ", lora.alpha, " must be finite and > 0");
  }
  if (!(lora.dropout >= 0.0 && lora.dropout < 1.0)) {
    return InvalidArgument("LoRA dropout ", lora.dropout, " must be in [0, 1)");
  }
  const std::vector<std::string>& valid = LoraTargetNames();
  std::string list;
  for (const std::string& name : valid) list += (list.empty() ? "" : ", ") + name;
  if (lora.targets.empty()) return InvalidArgument("LoRA targets are empty (valid: ", list, ")");
  for (const std::string& target : lora.targets) {
    if (std::find(valid.begin(), valid.end(), target) == valid.end()) {
      return InvalidArgument("unknown LoRA target '", target, "' (valid: ", list, ")");
    }
  }
  return OkStatus();
}

// A task tensor converted to float32, checked for shape and finiteness.
Result<at::Tensor> ReadTensor(const TensorMap& tensors, const std::string& name,
                              std::vector<std::int64_t> shape) {
  const auto it = tensors.find(name);
  if (it == tensors.end()) return InvalidArgument("missing adapter tensor '", name, "'");
  Result<at::Tensor> t = FromWireAsFloat(it->second);
  if (!t.ok()) return t.status().WithContext(StrCat("adapter tensor '", name, "'"));
  if (it->second.shape != shape) {
    return InvalidArgument("adapter tensor '", name, "' has shape ", ShapeString(it->second.shape),
                           ", expected ", ShapeString(shape));
  }
  if (!AllFinite(it->second)) {
    return InvalidArgument("adapter tensor '", name, "' holds NaN or infinity");
  }
  return t;
}

}  // namespace

Result<ResolvedPlan> ResolvePlan(const LlamaModel& model, const wire::LoraSpec& lora,
                                 const wire::AdapterPlan& plan, TaskPurpose purpose) {
  FEDLORA_RETURN_IF_ERROR(ValidateSpec(lora));
  const bool train = purpose == TaskPurpose::kTrain;
  ResolvedPlan out;
  out.plan = plan;
  const double r = static_cast<double>(lora.rank);
  out.scale = lora.rslora ? lora.alpha / std::sqrt(r) : lora.alpha / r;
  const AdapterMode mode = plan.mode;
  if (!train && plan.init == AdapterInit::kFresh) out.plan.init = AdapterInit::kFromTask;

  if (plan.init != AdapterInit::kFromTask && plan.init != AdapterInit::kFresh &&
      plan.init != AdapterInit::kLocalB) {
    return InvalidArgument("unknown plan init ", static_cast<int>(plan.init));
  }
  switch (mode) {
    case AdapterMode::kStandard: break;
    case AdapterMode::kSketched:
    case AdapterMode::kLoraSb:
    case AdapterMode::kLoraSbInit:
      if (plan.init != AdapterInit::kFromTask) {
        return InvalidArgument("plan mode ", wire::AdapterModeName(mode), " does not take init ",
                               InitName(plan.init), " (only fromTask)");
      }
      break;
    default:
      return InvalidArgument("unknown plan mode ", static_cast<int>(mode));
  }
  if (mode == AdapterMode::kLoraSbInit) {
    if (!train) return InvalidArgument("a LoRA-SB initialisation plan cannot be evaluated");
    if (plan.init_samples == 0) return InvalidArgument("plan.init_samples must be >= 1");
    if (!std::isfinite(plan.init_learning_rate) || plan.init_learning_rate <= 0.0) {
      return InvalidArgument("plan.init_learning_rate ", plan.init_learning_rate,
                             " must be finite and > 0");
    }
  }
  if (mode == AdapterMode::kSketched && plan.global_rank == 0) {
    return InvalidArgument("sketched plan needs global_rank >= 1");
  }
  if (mode == AdapterMode::kSketched && plan.modules.empty()) {
    return InvalidArgument("sketched plan lists no modules (every module needs its sketch)");
  }
  if (mode == AdapterMode::kStandard && train && !plan.train_a && !plan.train_b) {
    return InvalidArgument("plan trains neither A nor B");
  }
  const wire::RankPruning& pruning = plan.pruning;
  if (train && pruning.gamma != 0.0) {
    if (!(pruning.gamma > 0.0 && pruning.gamma <= 1.0)) {
      return InvalidArgument("plan.pruning.gamma ", pruning.gamma, " must be in [0, 1]");
    }
    if (!std::isfinite(pruning.lambda) || pruning.lambda < 0.0) {
      return InvalidArgument("plan.pruning.lambda ", pruning.lambda, " must be finite and >= 0");
    }
    if (mode != AdapterMode::kStandard || plan.init == AdapterInit::kLocalB) {
      return InvalidArgument("rank pruning applies only to standard adapters without a local B");
    }
  }
  if (!train) out.plan.pruning = {};

  // Planned ranks by module index.
  const std::vector<wire::ModuleInfo>& modules = model.AdaptableModules();
  const std::set<std::string, std::less<>> targets(lora.targets.begin(), lora.targets.end());
  const auto is_target = [&](std::size_t index) {
    return targets.contains(ModuleShortName(ModuleKind(index % kModulesPerLayer)));
  };
  std::vector<const wire::ModulePlan*> listed(modules.size(), nullptr);
  for (const wire::ModulePlan& mp : plan.modules) {
    const std::ptrdiff_t index = model.ModuleIndex(mp.module);
    if (index < 0) return InvalidArgument("plan names unknown module '", mp.module, "'");
    const auto i = static_cast<std::size_t>(index);
    if (listed[i] != nullptr) return InvalidArgument("plan lists module '", mp.module, "' twice");
    if (mp.rank > 0 && !is_target(i)) {
      return InvalidArgument("plan gives rank ", mp.rank, " to module '", mp.module,
                             "', which is not among the LoRA targets");
    }
    if (!mp.sketch.empty() && mode != AdapterMode::kSketched) {
      return InvalidArgument("plan gives module '", mp.module, "' a sketch, but the plan mode is ",
                             wire::AdapterModeName(mode));
    }
    listed[i] = &mp;
  }
  for (std::size_t i = 0; i < modules.size(); ++i) {
    if (!is_target(i)) continue;
    const wire::ModuleInfo& m = modules[i];
    const std::uint32_t planned =
        plan.modules.empty() ? lora.rank : listed[i] != nullptr ? listed[i]->rank : 0;
    if (planned == 0) continue;
    PlannedModule pm;
    pm.index = i;
    pm.name = m.name;
    pm.d_out = m.d_out;
    pm.d_in = m.d_in;
    pm.rank = planned;
    pm.scale = out.scale;
    const std::int64_t limit = std::min(m.d_out, m.d_in);
    if (mode == AdapterMode::kLoraSb || mode == AdapterMode::kLoraSbInit) {
      pm.rank = std::min<std::int64_t>(pm.rank, limit);
    } else if (pm.rank > limit) {
      return InvalidArgument("module '", m.name, "': rank ", pm.rank, " exceeds min(d_out, d_in) = ",
                             limit);
    }
    if (mode == AdapterMode::kSketched) {
      const std::vector<std::uint32_t>& sketch =
          listed[i] != nullptr ? listed[i]->sketch : std::vector<std::uint32_t>{};
      if (static_cast<std::int64_t>(sketch.size()) != pm.rank) {
        return InvalidArgument("module '", m.name, "': sketch has ", sketch.size(),
                               " indices but the planned rank is ", pm.rank);
      }
      for (std::size_t j = 0; j < sketch.size(); ++j) {
        if (sketch[j] >= plan.global_rank || (j > 0 && sketch[j] <= sketch[j - 1])) {
          return InvalidArgument("module '", m.name, "': sketch indices must be strictly ",
                                 "ascending and below global_rank ", plan.global_rank,
                                 " (index ", j, " is ", sketch[j], ")");
        }
        pm.sketch.push_back(sketch[j]);
      }
      pm.scale = out.scale * static_cast<double>(plan.global_rank) / static_cast<double>(pm.rank);
    }
    out.max_rank = std::max(out.max_rank, pm.rank);
    out.modules.push_back(std::move(pm));
  }
  if (train && out.modules.empty()) {
    return InvalidArgument("the plan gives rank 0 to every target module (nothing to train)");
  }
  return out;
}

TensorMap AdapterTensors(const TensorMap& tensors, const wire::BaseUpdate& base) {
  const std::set<std::string, std::less<>> names = CorrectionTensorNames(base);
  TensorMap out;
  for (const auto& [name, t] : tensors) {
    if (!names.contains(name)) out.emplace(name, t);
  }
  return out;
}

Result<std::unique_ptr<LoraAdapter>> BuildTaskAdapter(const LlamaModel& model,
                                                      const wire::LoraSpec& lora,
                                                      const ResolvedPlan& plan,
                                                      const AdapterSources& sources) try {
  static const TensorMap kNoTensors;
  const TensorMap& tensors = sources.tensors != nullptr ? *sources.tensors : kNoTensors;
  const AdapterMode mode = plan.plan.mode;
  const AdapterInit init = plan.plan.init;
  const bool latent = mode == AdapterMode::kLoraSb;
  if (mode == AdapterMode::kLoraSbInit) {
    return InvalidArgument("a LoRA-SB initialisation task has no adapter to build");
  }

  // Which tensors the task must (or may) carry.
  std::set<std::string, std::less<>> allowed;
  for (const PlannedModule& m : plan.modules) {
    if (latent) {
      for (LoraFactor f : {LoraFactor::kA, LoraFactor::kB, LoraFactor::kR}) {
        allowed.insert(LoraTensorName(m.name, f));
      }
    } else if (init == AdapterInit::kLocalB) {
      allowed.insert(LoraTensorName(m.name, LoraFactor::kA));
    } else if (init == AdapterInit::kFromTask) {
      allowed.insert(LoraTensorName(m.name, LoraFactor::kA));
      allowed.insert(LoraTensorName(m.name, LoraFactor::kB));
    }
  }
  for (const auto& [name, t] : tensors) {
    if (!allowed.contains(name)) {
      return InvalidArgument("unknown adapter tensor '", name, "' (not part of this task's ",
                             wire::AdapterModeName(mode), "/", InitName(init), " adapter on ",
                             plan.modules.size(), " modules)");
    }
  }

  std::vector<LoraModuleSpec> specs;
  for (const PlannedModule& m : plan.modules) specs.push_back({m.name, m.rank, m.scale});
  const LoraOptions options{.dropout = lora.dropout,
                            .latent = latent,
                            .train_a = plan.plan.train_a,
                            .train_b = plan.plan.train_b};
  FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> adapter,
                           LoraAdapter::Create(model, specs, options, sources.init_seed));

  // Read and check every factor first; assign (and cache) only when all are good.
  struct Assignment {
    std::string module;
    LoraFactor factor;
    at::Tensor value;
  };
  std::vector<Assignment> assignments;
  LoraSbCache new_cache_entries;
  const bool init_only = init == AdapterInit::kFresh ||
                         (init == AdapterInit::kFromTask && !latent && tensors.empty());
  if (!init_only) {
    for (const PlannedModule& m : plan.modules) {
      const std::string a_name = LoraTensorName(m.name, LoraFactor::kA);
      const std::string b_name = LoraTensorName(m.name, LoraFactor::kB);
      const std::vector<std::int64_t> a_shape = {m.rank, m.d_in}, b_shape = {m.d_out, m.rank};
      if (latent) {
        FEDLORA_ASSIGN_OR_RETURN(at::Tensor r, ReadTensor(tensors, LoraTensorName(m.name, LoraFactor::kR),
                                                          {m.rank, m.rank}));
        assignments.push_back({m.name, LoraFactor::kR, std::move(r)});
        const bool has_a = tensors.contains(a_name), has_b = tensors.contains(b_name);
        if (has_a != has_b) {
          return InvalidArgument("missing adapter tensor '", has_a ? b_name : a_name,
                                 "' (LoRA-SB's frozen B and A travel together)");
        }
        LoraSbFrozen frozen;
        if (has_a) {
          FEDLORA_ASSIGN_OR_RETURN(frozen.a, ReadTensor(tensors, a_name, a_shape));
          FEDLORA_ASSIGN_OR_RETURN(frozen.b, ReadTensor(tensors, b_name, b_shape));
          new_cache_entries[m.name] = frozen;
        } else {
          const auto it = sources.sb_cache != nullptr ? sources.sb_cache->find(m.name)
                                                      : LoraSbCache::iterator();
          if (sources.sb_cache == nullptr || it == sources.sb_cache->end()) {
            return FailedPrecondition("LoRA-SB module '", m.name, "': the task carries no frozen ",
                                      "B and A and none were received earlier in this session");
          }
          frozen = it->second;
          if (!frozen.a.sizes().equals(a_shape) || !frozen.b.sizes().equals(b_shape)) {
            return FailedPrecondition("LoRA-SB module '", m.name, "': the cached frozen B ",
                                      ShapeString(frozen.b.sizes().vec()), " and A ",
                                      ShapeString(frozen.a.sizes().vec()),
                                      " do not fit rank ", m.rank);
          }
        }
        assignments.push_back({m.name, LoraFactor::kA, frozen.a});
        assignments.push_back({m.name, LoraFactor::kB, frozen.b});
        continue;
      }
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, ReadTensor(tensors, a_name, a_shape));
      assignments.push_back({m.name, LoraFactor::kA, std::move(a)});
      if (init == AdapterInit::kLocalB) {
        const auto it = sources.local_b != nullptr ? sources.local_b->find(m.name)
                                                   : ModuleTensors::const_iterator();
        if (sources.local_b == nullptr || it == sources.local_b->end()) {
          return Internal("no local B for module '", m.name, "'");  // The worker supplies them.
        }
        assignments.push_back({m.name, LoraFactor::kB, it->second});
      } else {
        FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, ReadTensor(tensors, b_name, b_shape));
        assignments.push_back({m.name, LoraFactor::kB, std::move(b)});
      }
    }
  }
  for (const Assignment& a : assignments) {
    FEDLORA_RETURN_IF_ERROR(adapter->SetFactor(a.module, a.factor, a.value));
  }
  if (sources.sb_cache != nullptr) {
    for (auto& [module, frozen] : new_cache_entries) (*sources.sb_cache)[module] = frozen;
  }
  return adapter;
} catch (const c10::Error& e) {
  return Internal("building the task's adapter: ", e.what_without_backtrace());
}

Result<TensorMap> ExportUpload(const LoraAdapter& adapter, const ResolvedPlan& plan, DType dtype,
                               const std::map<std::string, std::int64_t, std::less<>>&
                                   pruned_ranks) {
  LoraExportOptions options;
  if (plan.plan.mode == wire::AdapterMode::kLoraSb) {
    options.a = options.b = false;
    options.r = true;
  } else {
    options.a = plan.plan.upload_a;
    options.b = plan.plan.upload_b;
    options.r = false;
    options.ranks = pruned_ranks;
  }
  return adapter.Export(dtype, options);
}

std::map<std::string, std::int64_t, std::less<>> PrunedRanks(
    const ResolvedPlan& plan, const std::map<std::string, double, std::less<>>& start_scores,
    const std::map<std::string, double, std::less<>>& end_scores) {
  std::map<std::string, std::int64_t, std::less<>> out;
  if (!plan.pruning()) return out;
  const double gamma = plan.plan.pruning.gamma;
  for (const PlannedModule& m : plan.modules) {
    const auto start = start_scores.find(m.name);
    const auto end = end_scores.find(m.name);
    if (start == start_scores.end() || end == end_scores.end()) continue;  // No tail.
    if (!(end->second < start->second)) continue;
    const auto t = static_cast<std::int64_t>(std::floor(gamma * static_cast<double>(m.rank)));
    const std::int64_t rank = std::clamp<std::int64_t>(
        std::max<std::int64_t>(plan.plan.pruning.min_rank, t), 1, m.rank);
    if (rank < m.rank) out[m.name] = rank;
  }
  return out;
}

}  // namespace fedlora::client
