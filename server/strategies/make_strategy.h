// make_strategy.h — the whole catalogue of aggregation strategies, in one place you can read.
//
// No static registration, no global map: adding a strategy means adding a line in
// make_strategy.cc. Each strategy's settings struct lives in its own header (LoraFairConfig in
// lorafair.h, ...); StrategyConfig gathers them under the strategy's name, with the same keys in
// the coordinator's YAML (strategy.<name>.<key>) and in fedlora-agg --set.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/wire/messages.h"
#include "server/rank_policy.h"
#include "server/robust/aggregation_rule.h"
#include "server/strategies/corrections.h"
#include "server/strategies/fedsb.h"
#include "server/strategies/fedsvd.h"
#include "server/strategies/fslora.h"
#include "server/strategies/hetlora.h"
#include "server/strategies/lorafair.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

struct StrategyConfig {
  std::string name = "fedavg";
  std::string weighting = "examples";  // examples | samples | uniform
  // Training examples one client may claim (Update.numExamples, the `examples` weighting):
  // larger declarations are counted as this many, logged and recorded in metrics.
  std::uint64_t max_examples_per_client = 1'000'000;
  // No client's aggregation weight above this share of the round (excess handed to the others in
  // proportion; 1 / N each when fewer than 1 / share clients report); 1 = no cap. Applies to the
  // examples, samples and uniform weightings of every strategy (not to hetlora's sparsity).
  double max_weight_share = 1.0;
  // The `robust` section's aggregation rule (read there by the coordinator's config): composes
  // with fedavg, ffa, fedsa and fedsb only.
  AggregationRuleConfig rule;
  LoraFairConfig lorafair;
  HetLoraConfig hetlora;
  FsLoraConfig fslora;
  FedSbConfig fedsb;
  FedSvdConfig fedsvd;
  CorrectionConfig corrections;
  RankPolicyConfig rank_policy;
};

// Settings every strategy shares, taken from the coordinator's config.
struct StrategyContext {
  wire::LoraSpec lora;
  wire::TrainSpec train;
  std::uint64_t seed = 0;
  DType state_dtype = DType::kF32;  // Dtype of the global factors it keeps (f64: fedlora-agg --fp64).
};

inline std::vector<std::string> StrategyNames() {
  return {"fedavg", "ffa",    "fedex",    "flora",   "fedsa",
          "fedsb",  "fedsvd", "lorafair", "hetlora", "fslora"};
}

// OK when `strategy` can aggregate with `rule`: any strategy with the mean; the robust rules
// only with the strategies whose aggregate is a weighted average of uploads.
inline Status CheckRuleComposes(std::string_view strategy, std::string_view rule) {
  if (rule == "mean" || strategy == "fedavg" || strategy == "ffa" || strategy == "fedsa" ||
      strategy == "fedsb" || strategy == "fedsvd") {
    return OkStatus();
  }
  return InvalidArgument(
      "robust.rule = ", rule, ": strategy '", strategy,
      "' does not aggregate a weighted average of uploads, so no robust rule "
      "applies (robust rules compose with fedavg, ffa, fedsa, fedsb and fedsvd; norm "
      "bounding, robust.norm_bound, works with every strategy)");
}

// kInvalidArgument for an unknown name (listing the known ones) or bad settings, or a robust
// rule other than the mean for a strategy that cannot take one.
Result<std::unique_ptr<Strategy>> MakeStrategy(const StrategyConfig& config,
                                               const StrategyContext& context);

}  // namespace fedlora::server
