// One hostile client among eight, in a real federation: stories260K on tinyshakespeare, the real
// coordinator and real clients, client-03 corrupting every upload (sim/adversary.h). Plain FedAvg
// is wrecked by it; norm bounding, the coordinate-wise median and multi-Krum each keep the final
// eval loss within 10% of the same federation without the attacker.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sim/simulator.h"
#include "tests/testing/json_lines.h"

namespace fedlora::sim {
namespace {

const std::string kConfig = std::string(FEDLORA_SOURCE_DIR) + "/configs/sim/shakespeare-fedavg.yaml";

// Three short rounds of all eight clients, unbounded unless a test says otherwise.
std::vector<std::string> Base() {
  return {"log_level=warn",
          "coordinator.rounds=3",
          "coordinator.round.quorum=8",
          "coordinator.train.local_steps=8",
          "coordinator.train.batch_size=4",
          "coordinator.train.seq_len=64",
          "coordinator.eval.max_batches=4",
          "coordinator.robust.norm_bound=0"};
}

struct RunResult {
  std::vector<nlohmann::json> metrics;
  double final_eval_loss() const { return metrics.back()["eval_loss"].get<double>(); }
};

RunResult RunFederation(const std::string& name, std::vector<std::string> overrides) {
  const std::string out = ::testing::TempDir() + "/fedlora_sim_robust_" + name;
  std::filesystem::remove_all(out);
  std::vector<std::string> all = Base();
  all.insert(all.end(), overrides.begin(), overrides.end());
  Result<SimConfig> c = LoadSimConfig(kConfig, all, out);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (!c.ok()) return {};
  const Status ran = RunSimulation(*c);
  EXPECT_TRUE(ran.ok()) << name << ": " << ran.ToString();
  RunResult r{testing::ReadJsonLines(out + "/metrics.jsonl")};
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(out);
  return r;
}

std::vector<std::string> Attack(const std::string& kind) {
  if (kind == "scaled") {
    return {"adversary.clients=[3]", "adversary.kind=scale", "adversary.factor=30"};
  }
  return {"adversary.clients=[3]", "adversary.kind=random", "adversary.stddev=1"};
}

// One test per attack, each with its own clean reference (ctest runs tests as separate,
// possibly concurrent processes): the undefended run and the three defences against it.
class RobustFederationTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RobustFederationTest, DefencesKeepTheEvalLossWithinTenPercentOfTheCleanRunWhereFedAvgFails) {
  const std::string attack = GetParam();
  const RunResult clean_run = RunFederation(attack + "_clean", {});
  ASSERT_EQ(clean_run.metrics.size(), 4u);
  const double clean = clean_run.final_eval_loss();
  // The bound an operator would set after watching honest rounds: 1.5 x the largest honest
  // change seen (metrics.jsonl: update_norm_max).
  double honest_max = 0;
  for (const nlohmann::json& m : clean_run.metrics) {
    if (m["update_norm_max"].is_number()) {
      honest_max = std::max(honest_max, m["update_norm_max"].get<double>());
    }
  }
  ASSERT_GT(honest_max, 0);

  // No defence: the same attack wrecks the model, or the defences would prove nothing.
  const RunResult undefended = RunFederation(attack + "_fedavg", Attack(attack));
  ASSERT_EQ(undefended.metrics.size(), 4u);
  std::printf("%s attack, fedavg: final eval loss %.4f (clean %.4f)\n", attack.c_str(),
              undefended.final_eval_loss(), clean);
  EXPECT_GT(undefended.final_eval_loss(), 1.5 * clean)
      << "clean " << clean << ", attacked " << undefended.final_eval_loss();

  for (const std::string defence : {"norm_bound", "median", "multi_krum"}) {
    SCOPED_TRACE(defence);
    std::vector<std::string> overrides = Attack(attack);
    if (defence == "norm_bound") {
      overrides.push_back("coordinator.robust.norm_bound=" + std::to_string(1.5 * honest_max));
    } else {
      overrides.push_back("coordinator.robust.rule=" + defence);
    }
    const RunResult defended = RunFederation(attack + "_" + defence, overrides);
    ASSERT_EQ(defended.metrics.size(), 4u);
    std::printf("%s attack, %s: final eval loss %.4f (clean %.4f)\n", attack.c_str(),
                defence.c_str(), defended.final_eval_loss(), clean);
    EXPECT_LT(defended.final_eval_loss(), 1.1 * clean)
        << "clean " << clean << ", defended " << defended.final_eval_loss();
    const nlohmann::json& last = defended.metrics.back();
    if (defence == "norm_bound") {
      EXPECT_TRUE(last["norm_clipped"].contains("client-03")) << last.dump();
      EXPECT_EQ(last["norm_clipped"].size(), 1u) << "an honest client was clipped: " << last.dump();
    } else if (defence == "multi_krum") {
      EXPECT_EQ(last["weights"]["client-03"].get<double>(), 0.0) << last.dump();
    } else {
      // The median used the hostile client's values in few coordinates.
      EXPECT_LT(last["weights"]["client-03"].get<double>(), 1.0 / 8) << last.dump();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(OneOfEight, RobustFederationTest, ::testing::Values("scaled", "random"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace fedlora::sim
