// A committed round's metrics record and summary line (server/round_report.h), from a round
// record built by hand.
#include "server/round_report.h"

#include <gtest/gtest.h>

#include <string>

namespace fedlora::server {
namespace {

const std::vector<wire::ModuleInfo> kModules = {{"model.layers.0.self_attn.q_proj", 6, 4}};

RoundRun ThreeClientRound() {
  RoundRun run;
  run.round = 3;
  run.attempt = 1;
  run.started = Clock::TimePoint(std::chrono::seconds(10));
  run.candidate = GlobalState{};
  run.accepted["a"] = ClientUpdate{"a", 10, 10, {{"train_loss", 1.0}}, {}};
  run.accepted["b"] = ClientUpdate{"b", 30, 30, {{"train_loss", 2.0}}, {}};
  run.tasks["a"].lora = {.rank = 2};
  run.tasks["b"].lora = {.rank = 2};
  run.tasks["c"].lora = {.rank = 2};
  run.failed.insert("c");
  run.bytes_up = 2'000'000;
  run.bytes_down = 500'000;
  return run;
}

TEST(RoundReportTest, TrainLossIsWeightedBySamplesAndEvalLossByTokens) {
  RoundRun run = ThreeClientRound();
  run.eval_results["a"] = wire::EvalResult{3, 1.0, 100, 4, {{"accuracy", 0.5}}, 0, {}};
  run.eval_results["b"] = wire::EvalResult{3, 2.0, 300, 12, {{"accuracy", 1.0}}, 0, {}};
  const RoundMetrics m = SummariseRound(run, "fedavg", "samples", kModules,
                                        run.started + std::chrono::milliseconds(1500));
  EXPECT_EQ(m.round, 3u);
  EXPECT_EQ(m.clients_selected, 3u);
  EXPECT_EQ(m.clients_reported, 2u);
  EXPECT_EQ(m.clients_failed, 1u);
  EXPECT_DOUBLE_EQ(*m.train_loss, (10 * 1.0 + 30 * 2.0) / 40);
  EXPECT_DOUBLE_EQ(*m.eval_loss, (100 * 1.0 + 300 * 2.0) / 400);
  EXPECT_DOUBLE_EQ(*m.eval_accuracy, (4 * 0.5 + 12 * 1.0) / 16);
  EXPECT_EQ(m.eval_clients, 2u);
  EXPECT_DOUBLE_EQ(m.seconds, 1.5);
  EXPECT_EQ(m.ranks.at("c"), 2u);
}

TEST(RoundReportTest, NormsOfUploadsTakenOutOfTheRoundAreNotReported) {
  RoundRun run = ThreeClientRound();
  run.update_norms = {{"a", 1.0}, {"b", 3.0}, {"revoked", 100.0}};
  const RoundMetrics m = SummariseRound(run, "fedavg", "samples", kModules, run.started);
  EXPECT_DOUBLE_EQ(*m.update_norm_median, 2.0);
  EXPECT_DOUBLE_EQ(*m.update_norm_max, 3.0);
}

TEST(RoundReportTest, TheNormBoundWarnsOnlyWhenMostUploadsHitIt) {
  RoundRun run = ThreeClientRound();
  run.norm_clipped = {{"a", 5.0}};
  RoundMetrics m = SummariseRound(run, "fedavg", "samples", kModules, run.started);
  EXPECT_EQ(NormBoundWarning(m, 4.0), "");  // One upload is an outlier, not a pattern.
  run.norm_clipped["b"] = 6.0;
  m = SummariseRound(run, "fedavg", "samples", kModules, run.started);
  const std::string warning = NormBoundWarning(m, 4.0);
  EXPECT_NE(warning.find("round 3: 2 of 2 uploads exceeded robust.norm_bound 4"), std::string::npos)
      << warning;
}

TEST(RoundReportTest, TheSummaryNamesTheRoundItsReportersAndItsTraffic) {
  RoundRun run = ThreeClientRound();
  RoundMetrics m = SummariseRound(run, "fedavg", "samples", kModules,
                                  run.started + std::chrono::milliseconds(2500));
  EXPECT_EQ(RoundSummary(m, 10),
            "round 3/10: 2/3 clients reported, train_loss 1.7500, 2.5 s, up 2.00 MB, down "
            "0.50 MB");
  m.round = 0;
  EXPECT_EQ(RoundSummary(m, 10).rfind("round 0 (initial adapter), train_loss", 0), 0u);
}

}  // namespace
}  // namespace fedlora::server
