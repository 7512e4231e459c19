// peft_export.h — the global model as a PEFT LoRA adapter (common/lora/peft.h), without the base
// weights, so that PEFT / transformers / vLLM can serve what the federation trained.
//
// Used by the coordinator after each commit (ExportPeftAfterCommit) and by fedlora-agg
// (--peft-out, GlobalPeftOf). Knows nothing of rounds in progress, sockets or clients.
#pragma once

#include <cstdint>
#include <string>

#include "common/lora/peft.h"
#include "common/status.h"
#include "server/config.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

// The global model of `state` as a PEFT adapter, without the base weights: what a fresh client
// evaluates (Strategy::Evaluation: the global factors; Fed-SB's B, R and A, exported as B R and
// A), kept in f64, plus the cumulative base corrections of fedex / flora (snapshot and entries of
// the correction log stacked per module, dense deltas as exact factors), which ExportPeft folds
// in. Shared by the coordinator (after each commit) and fedlora-agg (--peft-out).
struct GlobalPeft {
  lora::PeftAdapter adapter;  // May hold no modules (FLoRA: the corrections are all).
  lora::PeftCorrections corrections;
  std::string skip_reason;  // Not empty: there is no single global model to write.
};
// kInvalidArgument when the state's tensors or corrections are inconsistent.
Result<GlobalPeft> GlobalPeftOf(const Strategy& strategy, const GlobalState& state,
                                const std::string& base_model_name_or_path);

// After the commit of `round` (of `rounds`): writes `state` as a PEFT adapter to
// config.peft_dir (empty: <state_dir>/peft) when the round is due (every round, or only the last
// one without peft_every_round). Logs what it wrote, or why not; a failure is logged and left to
// the next commit, never stops training.
void ExportPeftAfterCommit(const ExportConfig& config, std::uint64_t rounds,
                           const std::string& state_dir, const Strategy& strategy,
                           const GlobalState& state, std::uint64_t round);

}  // namespace fedlora::server
