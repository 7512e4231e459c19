// Secure aggregation in the simulator: the real coordinator and real in-process clients run the
// whole SecAgg+ protocol, and every linear strategy reaches the eval loss of its plain run within
// quantisation error, with nothing clipped; a strategy that is not a weighted sum is refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sim/simulator.h"
#include "tests/testing/json_lines.h"

namespace fedlora::sim {
namespace {

class SecureSimulationTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    out_ = ::testing::TempDir() + "/fedlora_sim_secagg_" + GetParam();
    std::filesystem::remove_all(out_);
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(out_);
  }
  // Two rounds of the shipped experiment of `strategy`, shrunk; metrics.jsonl's lines.
  std::vector<nlohmann::json> Run(const std::string& strategy, bool secure) {
    const std::string config =
        std::string(FEDLORA_SOURCE_DIR) + "/configs/sim/shakespeare-" + strategy + ".yaml";
    const std::string out = out_ + (secure ? "/secure" : "/plain");
    std::vector<std::string> overrides = {
        "num_clients=3",
        "log_level=warn",
        "coordinator.rounds=2",
        "coordinator.round.min_clients=3",
        "coordinator.round.quorum=3",
        "coordinator.train.local_steps=6",
        "coordinator.train.batch_size=4",
        "coordinator.train.seq_len=64",
        "coordinator.eval.max_batches=4",
        StrCat("coordinator.secure_aggregation.enabled=", secure ? "true" : "false")};
    const Result<SimConfig> probe = LoadSimConfig(config, {"num_clients=8"}, out);
    EXPECT_TRUE(probe.ok()) << probe.status().ToString();
    if (probe.ok() && !probe->client_max_ranks.empty()) {
      overrides.push_back("client_max_ranks=[16, 4, 2]");
    }
    // The shipped hetlora weighs by sparsity (per-client norms): not a sum. Its linear weighting:
    if (strategy == "hetlora")
      overrides.push_back("coordinator.strategy.hetlora.weighting=examples");
    const Result<SimConfig> c = LoadSimConfig(config, overrides, out);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (!c.ok()) return {};
    const Status ran = RunSimulation(*c);
    EXPECT_TRUE(ran.ok()) << ran.ToString();
    return testing::ReadJsonLines(out + "/metrics.jsonl");
  }
  std::string out_;
};

TEST_P(SecureSimulationTest, ReachesThePlainRunsEvalLossWithinQuantisationErrorClippingNothing) {
  const std::vector<nlohmann::json> plain = Run(GetParam(), false);
  const std::vector<nlohmann::json> secure = Run(GetParam(), true);
  ASSERT_EQ(plain.size(), 3u);
  ASSERT_EQ(secure.size(), 3u);
  for (int r = 1; r <= 2; ++r) {
    const nlohmann::json& m = secure[r]["strategy_metrics"];
    EXPECT_EQ(m["secagg_survivors"], 3) << "round " << r;
    EXPECT_EQ(m["secagg_clipped"], 0) << "round " << r;
    const double p = plain[r]["eval_loss"].get<double>(), s = secure[r]["eval_loss"].get<double>();
    // Quantisation moves each aggregated value by at most secagg_error_bound (~1e-5 here); the
    // eval loss moves by far less than the 0.1+ a round of training changes it.
    EXPECT_NEAR(s, p, 2e-3) << "round " << r;
  }
  EXPECT_LT(secure[2]["eval_loss"].get<double>(), secure[0]["eval_loss"].get<double>());
}

INSTANTIATE_TEST_SUITE_P(EveryLinearStrategy, SecureSimulationTest,
                         ::testing::Values("fedavg", "ffa", "fedsa", "fedsb", "fslora", "hetlora"));

TEST(SecureSimulationRefusalTest, FedExIsRefusedAtStartSayingWhyAndWhichStrategiesWork) {
  const std::string out = ::testing::TempDir() + "/fedlora_sim_secagg_fedex";
  std::filesystem::remove_all(out);
  const Result<SimConfig> c =
      LoadSimConfig(std::string(FEDLORA_SOURCE_DIR) + "/configs/sim/shakespeare-fedex.yaml",
                    {"num_clients=3", "log_level=warn", "coordinator.round.min_clients=3",
                     "coordinator.round.quorum=2", "coordinator.secure_aggregation.enabled=true"},
                    out);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const Status s = RunSimulation(*c);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("fedex, flora and lorafair need per-client products"),
            std::string::npos)
      << s.message();
  std::filesystem::remove_all(out);
}

TEST(SecureSimulationConfigTest, TheShippedSecureExperimentLoadsAsDocumented) {
  const Result<SimConfig> c =
      LoadSimConfig(std::string(FEDLORA_SOURCE_DIR) + "/configs/sim/shakespeare-secagg.yaml", {},
                    ::testing::TempDir() + "/fedlora_sim_secagg_load");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->coordinator.secure_aggregation.enabled);
  EXPECT_EQ(c->coordinator.strategy.name, "fedavg");
  EXPECT_EQ(c->num_clients, 8u);
}

}  // namespace
}  // namespace fedlora::sim
