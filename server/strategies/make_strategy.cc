#include "server/strategies/make_strategy.h"

#include "server/strategies/fedavg.h"
#include "server/strategies/weighting.h"

namespace fedlora::server {

std::vector<std::string> StrategyNames() { return {"fedavg"}; }

Result<std::unique_ptr<Strategy>> MakeStrategy(const StrategyConfig& config,
                                               const StrategyContext& context) {
  FEDLORA_ASSIGN_OR_RETURN(Weighting weighting, ParseWeighting(config.weighting));
  if (config.name == "fedavg") {
    return std::unique_ptr<Strategy>(std::make_unique<FedAvg>(FedAvgConfig{
        .lora = context.lora, .train = context.train, .weighting = weighting,
        .seed = context.seed}));
  }
  std::string known;
  for (const std::string& n : StrategyNames()) known += (known.empty() ? "" : ", ") + n;
  return InvalidArgument("unknown strategy '", config.name, "' (known: ", known, ")");
}

}  // namespace fedlora::server
