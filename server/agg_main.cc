// fedlora-agg — offline aggregation of LoRA adapter files with the coordinator's strategies.
//
//   fedlora-agg --strategy NAME --client FILE|PEFT_DIR[:WEIGHT] ... --out DIR [--fp64]
//               [--global FILE|PEFT_DIR] [--peft-out DIR] [--set key=value ...]
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "common/log.h"
#include "server/offline_aggregator.h"
#include "server/strategies/make_strategy.h"

namespace {

int Main(int argc, char** argv) {
  using namespace fedlora;
  std::string strategies;
  for (const std::string& n : server::StrategyNames()) strategies += (strategies.empty() ? "" : ", ") + n;
  CLI::App app{"fedlora-agg: aggregates LoRA adapter files offline with the same strategy code as\n"
               "the coordinator (computed in fp64). Strategies: " + strategies};
  app.footer(server::OfflineAggregatorHelp());
  server::OfflineOptions options;
  std::vector<std::string> clients;
  app.add_option("--strategy", options.strategy, "Aggregation strategy")->required();
  app.add_option("--client", clients,
                 "Client adapter FILE[:WEIGHT] (safetensors file or PEFT adapter directory; "
                 "WEIGHT = sample count)")
      ->required()
      ->take_all();
  app.add_option("--out", options.out_dir, "Output directory")->required();
  app.add_option("--global", options.global_path,
                 "Current global adapter, FILE or PEFT directory (fslora needs it)");
  app.add_option("--peft-out", options.peft_out,
                 "Also write the result as a PEFT LoRA adapter directory (corrections folded in)");
  app.add_flag("--fp64", options.fp64, "Write outputs in f64 (computation is always fp64)");
  app.add_option("--set", options.settings, "Setting key=value (see below; repeatable)")
      ->take_all();
  CLI11_PARSE(app, argc, argv);
  for (const std::string& c : clients) {
    Result<server::OfflineInput> in = server::ParseClientArgument(c);
    if (!in.ok()) {
      std::cerr << "fedlora-agg: " << in.status().ToString() << "\n";
      return 1;
    }
    options.clients.push_back(*in);
  }
  const Status s = server::RunOfflineAggregation(options);
  if (!s.ok()) {
    std::cerr << "fedlora-agg: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "fedlora-agg: unexpected exception: " << e.what() << "\n";
    return 3;
  }
}
