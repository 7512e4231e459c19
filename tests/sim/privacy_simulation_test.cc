// Differential privacy in the simulator: the real coordinator and real in-process clients. The
// shipped DP run stops itself when its budget is spent; and with noise too small to matter and a
// clip too large to bind, every linear strategy's private aggregate (changes placed, summed and
// divided by the fixed denominator) equals its plain run under uniform weighting.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/safetensors.h"
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

// ---- Distributed DP: privacy with secure aggregation ------------------------------------------
// The clients add the noise, each 1/min_clients of its variance, to their clipped inputs before
// masking; the coordinator only ever unmasks the noised sum.

std::vector<std::string> Distributed(const std::string& strategy, double clip, double sigma) {
  std::vector<std::string> o = {"coordinator.rounds=1",
                                "coordinator.round.quorum=3",
                                "coordinator.strategy.weighting=uniform",
                                "coordinator.secure_aggregation.enabled=true",
                                "coordinator.privacy.enabled=true",
                                "coordinator.privacy.min_clients=2",
                                StrCat("coordinator.privacy.clip=", clip),
                                StrCat("coordinator.privacy.noise_multiplier=", sigma)};
  if (strategy == "fslora" || strategy == "hetlora") o.push_back("client_max_ranks=[8, 8, 8]");
  return o;
}

class DistributedPrivacySimulationTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DistributedPrivacySimulationTest, EqualsThePlainUniformMeanWhenNoiseAndClipDoNotBind) {
  const std::string strategy = GetParam();
  const std::string out = ::testing::TempDir() + "/fedlora_sim_ddp_" + strategy;
  std::vector<std::string> plain_overrides = {"coordinator.rounds=1", "coordinator.round.quorum=3",
                                              "coordinator.strategy.weighting=uniform"};
  if (strategy == "fslora") plain_overrides.push_back("client_max_ranks=[8, 8, 8]");
  const std::vector<nlohmann::json> plain = RunShipped(strategy, plain_overrides, out + "/plain");
  const std::vector<nlohmann::json> secret =
      RunShipped(strategy, Distributed(strategy, 1000, 1e-12), out + "/dp");
  ASSERT_EQ(plain.size(), 2u);
  ASSERT_EQ(secret.size(), 2u);
  EXPECT_EQ(secret[1]["privacy"]["uploads"], 3);
  EXPECT_EQ(secret[1]["privacy"]["noise_share_clients"], 2);
  EXPECT_EQ(secret[1]["strategy_metrics"]["secagg_survivors"], 3);
  EXPECT_GT(secret[1]["privacy"]["epsilon"].get<double>(), 0.0);
  // Quantisation (2^20 levels) is the only difference.
  EXPECT_NEAR(secret[1]["eval_loss"].get<double>(), plain[1]["eval_loss"].get<double>(), 1e-4);
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(MeanAndDeltaStrategies, DistributedPrivacySimulationTest,
                         ::testing::Values("fedavg", "fslora"));

TEST(DistributedPrivacyNoiseTest, TheClientsSharesGiveTheReleasedMeanItsWholeNoise) {
  // The same federation twice, with noise too small to matter and with sigma = 2: training and
  // clipping are identical (same seeds, every client sampled), so the released adapters differ
  // by the clients' noise over m = 3. Three shares of variance (sigma C)^2 / 2 make
  // 1.5 (sigma C)^2: deviation sigma C sqrt(3/2) / 3 on each of the ~36 000 elements (the
  // sample deviation's standard error is 0.4%; tolerance 5%). Without the clients' shares the
  // two runs would agree to the quantisation step.
  const std::string out = ::testing::TempDir() + "/fedlora_sim_ddp_noise";
  constexpr double kClip = 0.05, kSigma = 2.0;
  RunShipped("fedavg", Distributed("fedavg", kClip, 1e-12), out + "/quiet");
  RunShipped("fedavg", Distributed("fedavg", kClip, kSigma), out + "/noised");
  const auto adapter = [&](const std::string& run) {
    Result<safetensors::File> f =
        safetensors::Read(out + "/" + run + "/checkpoints/000001/global.safetensors");
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    return f.ok() ? f->tensors : TensorMap{};
  };
  const TensorMap quiet = adapter("quiet");
  const TensorMap noised = adapter("noised");
  ASSERT_FALSE(quiet.empty());
  ASSERT_EQ(quiet.size(), noised.size());
  double n = 0, sum = 0, squares = 0;
  for (const auto& [name, t] : quiet) {
    const std::vector<double> a = ToDoubles(t);
    const std::vector<double> b = ToDoubles(noised.at(name));
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double d = b[i] - a[i];
      n += 1;
      sum += d;
      squares += d * d;
    }
  }
  ASSERT_GT(n, 20000);
  const double mean = sum / n;
  const double deviation = std::sqrt(squares / n - mean * mean);
  const double expected = kSigma * kClip * std::sqrt(3.0 / 2.0) / 3.0;
  EXPECT_NEAR(deviation, expected, 0.05 * expected);
  EXPECT_NEAR(mean, 0.0, 5 * expected / std::sqrt(n));
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(out);
}

TEST(DistributedPrivacyNoiseTest, ARoundWithFewerClientsThanNoiseSharesReleasesOnlyCentralNoise) {
  // min_clients 4 of 3 clients: no round can gather enough shares, so nobody is tasked and each
  // round releases the global adapter with the whole noise added by the coordinator: spent, and
  // reported, but no client's data is in it.
  const std::string out = ::testing::TempDir() + "/fedlora_sim_ddp_short";
  std::vector<std::string> o = Distributed("fedavg", 0.05, 2.0);
  o.push_back("coordinator.privacy.min_clients=4");
  const std::vector<nlohmann::json> lines = RunShipped("fedavg", o, out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1]["clients_selected"], 0);
  EXPECT_EQ(lines[1]["privacy"]["sampled"], 3);
  EXPECT_EQ(lines[1]["privacy"]["uploads"], 0);
  EXPECT_EQ(lines[1]["privacy"]["noise_share_clients"], 0);
  EXPECT_GT(lines[1]["privacy"]["epsilon"].get<double>(), 0.0);
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(out);
}

TEST(DistributedPrivacyNoiseTest, HetloraIsRefusedAtStartSayingWhy) {
  std::vector<std::string> o = Distributed("hetlora", 0.05, 2.0);
  o.push_back("coordinator.strategy.hetlora.weighting=uniform");
  o.insert(o.begin(), kShrunk.begin(), kShrunk.end());
  const Result<SimConfig> c =
      LoadSimConfig(std::string(FEDLORA_SOURCE_DIR) + "/configs/sim/shakespeare-hetlora.yaml", o,
                    ::testing::TempDir() + "/fedlora_sim_ddp_hetlora");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const Status ran = RunSimulation(*c);
  EXPECT_EQ(ran.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(ran.message().find("secure_aggregation and strategy 'hetlora'"), std::string::npos)
      << ran.message();
  std::filesystem::remove_all(::testing::TempDir() + "/fedlora_sim_ddp_hetlora");
}

}  // namespace
}  // namespace fedlora::sim
