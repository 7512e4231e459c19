// Differential privacy in the simulator: the real coordinator and real in-process clients. The
// shipped DP run stops itself when its budget is spent; and with noise too small to matter and a
// clip too large to bind, every linear strategy's private aggregate (changes placed, summed and
// divided by the fixed denominator) equals its plain run under uniform weighting.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "sim/simulator.h"
#include "tests/testing/json_lines.h"

namespace fedlora::sim {
namespace {

const std::vector<std::string> kShrunk = {"num_clients=3",
                                          "log_level=warn",
                                          "coordinator.round.min_clients=3",
                                          "coordinator.train.local_steps=4",
                                          "coordinator.train.batch_size=4",
                                          "coordinator.train.seq_len=64",
                                          "coordinator.eval.max_batches=2"};

std::vector<nlohmann::json> RunShipped(const std::string& name, std::vector<std::string> overrides,
                                       const std::string& out) {
  std::filesystem::remove_all(out);
  overrides.insert(overrides.begin(), kShrunk.begin(), kShrunk.end());
  const Result<SimConfig> c =
      LoadSimConfig(std::string(FEDLORA_SOURCE_DIR) + "/configs/sim/shakespeare-" + name + ".yaml",
                    overrides, out);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (!c.ok()) return {};
  const Status ran = RunSimulation(*c);
  EXPECT_TRUE(ran.ok()) << ran.ToString();
  return testing::ReadJsonLines(out + "/metrics.jsonl");
}

// configs/sim/shakespeare-dp.yaml: sigma 2, q 1, target epsilon 4: rounds 1 and 2 spend 2.17 and
// 3.19 (dp-accounting: 3.1889915626335874); round 3 would spend 4.01, so the run ends after 2.
TEST(PrivacySimulationTest, TheShippedDpRunStopsItselfWhenItsBudgetIsSpent) {
  const std::string out = ::testing::TempDir() + "/fedlora_sim_dp_budget";
  const std::vector<nlohmann::json> lines = RunShipped("dp", {}, out);
  ASSERT_EQ(lines.size(), 3u);  // Rounds 0, 1, 2 of the 10 configured.
  EXPECT_NEAR(lines[2]["privacy"]["epsilon"].get<double>(), 3.1889915626335874, 1e-5);
  EXPECT_EQ(lines[2]["privacy"]["uploads"], 3);
  EXPECT_EQ(lines[2]["privacy"]["target_epsilon"], 4.0);
  EXPECT_TRUE(std::filesystem::exists(out + "/privacy_ledger.json"));
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(out);
}

class PrivateAggregateSimulationTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PrivateAggregateSimulationTest, EqualsThePlainUniformMeanWhenNoiseAndClipDoNotBind) {
  const std::string strategy = GetParam();
  std::vector<std::string> common = {"coordinator.rounds=2", "coordinator.round.quorum=3",
                                     "coordinator.strategy.weighting=uniform"};
  if (strategy == "hetlora") common.push_back("coordinator.strategy.hetlora.weighting=uniform");
  // Equal ranks where the shipped run has a fleet of them: padding plays no part.
  if (strategy == "hetlora" || strategy == "fslora") common.push_back("client_max_ranks=[8, 8, 8]");
  const std::string out = ::testing::TempDir() + "/fedlora_sim_dp_" + strategy;
  const std::vector<nlohmann::json> plain = RunShipped(strategy, common, out + "/plain");
  std::vector<std::string> dp = common;
  for (const char* o : {"coordinator.privacy.enabled=true", "coordinator.privacy.clip=1000",
                        "coordinator.privacy.noise_multiplier=1e-12"}) {
    dp.push_back(o);
  }
  const std::vector<nlohmann::json> secret = RunShipped(strategy, dp, out + "/dp");
  ASSERT_EQ(plain.size(), 3u);
  ASSERT_EQ(secret.size(), 3u);
  for (int r = 1; r <= 2; ++r) {
    EXPECT_EQ(secret[r]["privacy"]["uploads"], 3) << "round " << r;
    EXPECT_EQ(secret[r]["privacy"]["clipped"], 0) << "round " << r;
    EXPECT_NEAR(secret[r]["eval_loss"].get<double>(), plain[r]["eval_loss"].get<double>(), 1e-4)
        << "round " << r;
  }
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(EveryLinearStrategy, PrivateAggregateSimulationTest,
                         ::testing::Values("fedavg", "ffa", "fedsa", "fedsvd", "fslora",
                                           "hetlora"));

}  // namespace
}  // namespace fedlora::sim
