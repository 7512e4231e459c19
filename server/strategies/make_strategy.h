// make_strategy.h — the whole catalogue of aggregation strategies, in one place you can read.
//
// No static registration, no global map: adding a strategy means adding a line in
// make_strategy.cc.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/wire/messages.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

struct StrategyConfig {
  std::string name = "fedavg";
  std::string weighting = "examples";  // examples | samples | uniform
};

// Settings every strategy shares, taken from the coordinator's config.
struct StrategyContext {
  wire::LoraSpec lora;
  wire::TrainSpec train;
  std::uint64_t seed = 0;
};

std::vector<std::string> StrategyNames();

// kInvalidArgument for an unknown name (listing the known ones) or bad settings.
Result<std::unique_ptr<Strategy>> MakeStrategy(const StrategyConfig& config,
                                               const StrategyContext& context);

}  // namespace fedlora::server
