// peft_export.cc — the global model as a PEFT adapter (peft_export.h).
#include "server/peft_export.h"

#include <algorithm>
#include <map>
#include <vector>

#include "common/log.h"

namespace fedlora::server {
namespace {

// Every correction of every module in log order (snapshot first), stacked into one pair.
Result<lora::PeftCorrections> CumulativeCorrections(const CorrectionLog& log) {
  std::map<std::string, std::vector<lora::PeftCorrection>, std::less<>> parts;
  const auto add = [&](const CorrectionEntry& e) -> Status {
    for (const auto& [module, c] : e.modules) {
      if (c.is_dense()) {
        FEDLORA_ASSIGN_OR_RETURN(lora::PeftCorrection pair, lora::DenseAsFactors(c.dense));
        parts[module].push_back(std::move(pair));
      } else {
        parts[module].push_back({c.u, c.v});
      }
    }
    return OkStatus();
  };
  if (log.snapshot()) FEDLORA_RETURN_IF_ERROR(add(*log.snapshot()));
  for (const CorrectionEntry& e : log.entries()) FEDLORA_RETURN_IF_ERROR(add(e));
  lora::PeftCorrections out;
  for (auto& [module, list] : parts) {
    if (list.size() == 1) {
      out.emplace(module, std::move(list.front()));
    } else {
      FEDLORA_ASSIGN_OR_RETURN(out[module], lora::StackCorrections(list, module));
    }
  }
  return out;
}

}  // namespace

Result<GlobalPeft> GlobalPeftOf(const Strategy& strategy, const GlobalState& state,
                                const std::string& base_model_name_or_path) {
  GlobalPeft out;
  // What a client that holds nothing yet would evaluate: the whole global model.
  const EvalSpec spec = strategy.Evaluation(state, ClientInfo{});
  if (spec.plan.init == wire::AdapterInit::kLocalB) {
    out.skip_reason = StrCat(strategy.name(), " has no global model (each client keeps its own B)");
    return out;
  }
  if (spec.plan.mode != wire::AdapterMode::kStandard &&
      spec.plan.mode != wire::AdapterMode::kLoraSb) {
    out.skip_reason = StrCat(strategy.name(), " evaluates in mode ",
                             wire::AdapterModeName(spec.plan.mode), ", which has no PEFT form");
    return out;
  }
  FEDLORA_ASSIGN_OR_RETURN(out.corrections, CumulativeCorrections(state.corrections));
  if (spec.tensors.empty()) {
    if (out.corrections.empty()) out.skip_reason = "nothing trained yet";
    out.adapter.r = spec.lora.rank;
    out.adapter.lora_alpha = spec.lora.alpha;
    out.adapter.use_rslora = spec.lora.rslora;
    out.adapter.lora_dropout = spec.lora.dropout;
    out.adapter.target_modules = spec.lora.targets;
    std::sort(out.adapter.target_modules.begin(), out.adapter.target_modules.end());
    out.adapter.base_model_name_or_path = base_model_name_or_path;
    return out;
  }
  FEDLORA_ASSIGN_OR_RETURN(
      out.adapter,
      lora::PeftFromAdapter(spec.tensors, spec.lora, base_model_name_or_path, DType::kF64));
  return out;
}

void ExportPeftAfterCommit(const ExportConfig& config, std::uint64_t rounds,
                           const std::string& state_dir, const Strategy& strategy,
                           const GlobalState& state, std::uint64_t round) {
  if (!config.peft_every_round && round < rounds) return;
  const std::string dir = config.peft_dir.empty() ? state_dir + "/peft" : config.peft_dir;
  Result<GlobalPeft> global = GlobalPeftOf(strategy, state, config.base_model_name_or_path);
  Status s = global.status();
  if (s.ok() && !global->skip_reason.empty()) {
    LogInfo("round ", round, ": no PEFT adapter written: ", global->skip_reason);
    return;
  }
  if (s.ok()) {
    lora::PeftExportOptions options;
    options.dtype = config.dtype;
    options.corrections = std::move(global->corrections);
    options.metadata = {{"fedlora.round", std::to_string(round)},
                        {"fedlora.strategy", std::string(strategy.name())}};
    s = lora::ExportPeft(dir, global->adapter, options);
  }
  if (!s.ok()) {
    LogWarn("round ", round,
            ": writing the PEFT adapter failed (training goes on; the next "
            "round tries again): ",
            s.ToString());
    return;
  }
  LogInfo("round ", round, ": PEFT adapter (", DTypeName(config.dtype), ") written to ", dir);
}

}  // namespace fedlora::server
