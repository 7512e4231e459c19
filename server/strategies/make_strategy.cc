#include "server/strategies/make_strategy.h"

#include "server/strategies/fedavg.h"
#include "server/strategies/fedex.h"
#include "server/strategies/fedsa.h"
#include "server/strategies/fedsb.h"
#include "server/strategies/fedsvd.h"
#include "server/strategies/ffa.h"
#include "server/strategies/flora.h"
#include "server/strategies/fslora.h"
#include "server/strategies/hetlora.h"
#include "server/strategies/lorafair.h"
#include "server/strategies/weighting.h"

namespace fedlora::server {

Result<std::unique_ptr<Strategy>> MakeStrategy(const StrategyConfig& config,
                                               const StrategyContext& context) {
  FEDLORA_ASSIGN_OR_RETURN(Weighting weighting, ParseWeighting(config.weighting));
  FedAvgConfig base{.lora = context.lora, .train = context.train, .weighting = weighting,
                    .max_weight_share = config.max_weight_share, .seed = context.seed,
                    .state_dtype = context.state_dtype};
  if (config.rule.name != "mean") {
    FEDLORA_RETURN_IF_ERROR(CheckRuleComposes(config.name, config.rule.name));
    FEDLORA_ASSIGN_OR_RETURN(base.rule, MakeAggregationRule(config.rule));
  }
  std::unique_ptr<Strategy> s;
  if (config.name == "fedavg") {
    s = std::make_unique<FedAvg>(base);
  } else if (config.name == "ffa") {
    s = std::make_unique<FfaLora>(base);
  } else if (config.name == "fedsvd") {
    s = std::make_unique<FedSvd>(base, config.fedsvd);
  } else if (config.name == "fedex") {
    s = std::make_unique<FedExLora>(base, config.corrections);
  } else if (config.name == "flora") {
    s = std::make_unique<Flora>(base, config.corrections);
  } else if (config.name == "fedsa") {
    s = std::make_unique<FedSaLora>(base);
  } else if (config.name == "fedsb") {
    s = std::make_unique<FedSb>(base, config.fedsb);
  } else if (config.name == "lorafair") {
    s = std::make_unique<LoraFair>(base, config.lorafair);
  } else if (config.name == "hetlora") {
    s = std::make_unique<HetLora>(base, config.hetlora);
  } else if (config.name == "fslora") {
    s = std::make_unique<FsLora>(base, config.fslora);
  } else {
    std::string known;
    for (const std::string& n : StrategyNames()) known += (known.empty() ? "" : ", ") + n;
    return InvalidArgument("unknown strategy '", config.name, "' (known: ", known, ")");
  }
  return s;
}

}  // namespace fedlora::server
