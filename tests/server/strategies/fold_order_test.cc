// Every strategy folds uploads as they arrive; its aggregate must be bit-identical whatever the
// order of the folds (a restarted coordinator folds the persisted uploads in another order).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "tests/server/strategies/strategy_test_util.h"

namespace fedlora::server::testing {
namespace {

// Uploads whose values span many decades, so running floating-point sums are order-sensitive.
// HetLoRA weights each upload by its own norm, so its values stay within fewer decades to keep
// weight x value inside the exact accumulator's range.
ClientUpdate WideUpdate(const ClientTask& task, std::uint64_t examples, double decades,
                        std::mt19937_64& rng) {
  ClientUpdate u = RandomUpdate(task, examples, rng);
  std::uniform_real_distribution<double> decade(-decades, decades);
  for (auto& [name, t] : u.tensors) {
    std::vector<double> v = ToDoubles(t);
    for (double& x : v) x *= std::pow(10.0, decade(rng));
    t = FromDoubles(DType::kF32, t.shape, v);
  }
  return u;
}

class FoldOrderTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FoldOrderTest, TheAggregateIsBitIdenticalWhateverOrderUploadsAreFoldedIn) {
  StrategyContext context = Context();
  context.train.upload_dtype = DType::kF32;
  StrategyConfig config;
  std::string name = GetParam();
  if (name == "fedavg-capped") {
    name = "fedavg";
    config.max_weight_share = 0.3;
  } else if (name == "fedavg-median") {
    name = "fedavg";
    config.rule.name = "median";
  }
  config.name = name;
  std::unique_ptr<Strategy> strategy = MakeStrategy(config, context).value();
  GlobalState state = strategy->Initialize(kLayout, std::nullopt).value();
  std::mt19937_64 rng(17);
  if (ClientInitialization* init = strategy->client_initialization()) {
    const ClientTask task = init->ConfigureInit(state, Clients({"a"})[0]).value();
    ASSERT_TRUE(init->AcceptInit(state, RandomUpdate(task, 1, rng)).ok());
  }
  const std::vector<ClientInfo> clients = Clients({"a", "b", "c", "d", "e"});
  const std::vector<ClientTask> tasks = strategy->Configure(state, 1, clients).value();
  std::vector<ClientUpdate> updates;
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    updates.push_back(WideUpdate(tasks[k], 3 + 10 * k, name == "hetlora" ? 2 : 5, rng));
  }
  std::vector<std::size_t> order(updates.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::optional<GlobalState> first;
  for (int trial = 0; trial < 4; ++trial) {
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<ClientUpdate> u;
    std::vector<ClientTask> t;
    for (std::size_t k : order) {
      u.push_back(updates[k]);
      t.push_back(tasks[k]);
    }
    GlobalState next = state;
    const Result<AggregateReport> report = AggregateAll(*strategy, next, 1, u, t);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    if (!first) {
      first = next;
      EXPECT_NE(next, state);
    } else {
      EXPECT_TRUE(next == *first) << "trial " << trial;
      EXPECT_EQ(next.adapter, first->adapter);
      EXPECT_EQ(next.extra, first->extra);
      EXPECT_EQ(next.strategy_json, first->strategy_json);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EveryStrategy, FoldOrderTest,
                         ::testing::Values("fedavg", "fedavg-capped", "fedavg-median", "ffa",
                                           "fedex", "flora", "fedsa", "fedsb", "lorafair",
                                           "hetlora", "fslora"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace fedlora::server::testing
