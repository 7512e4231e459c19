#include "sim/fleet_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/config/yaml_config.h"

namespace fedlora::sim {
namespace {

using ::testing::HasSubstr;

Result<FleetConfig> Parse(const std::string& yaml) {
  FEDLORA_ASSIGN_OR_RETURN(config::ConfigDocument doc,
                           config::ConfigDocument::Parse(yaml, "fleet.yaml"));
  FleetConfig c;
  FEDLORA_RETURN_IF_ERROR(ParseFleetConfig(doc.Root().Section("fleet"), &c));
  return c;
}

FleetConfig ParseOrDie(const std::string& yaml) {
  Result<FleetConfig> c = Parse(yaml);
  FEDLORA_CHECK_MSG(c.ok(), c.status().ToString());
  return *c;
}

// 1000 tokens/s, 8 Mbit/s down (1 MB/s), 0.8 Mbit/s up (100 kB/s), 50 ms latency.
const char* const kConstantFleet = R"(
fleet:
  seed: 7
  tokens_per_second: {distribution: constant, value: 1000}
  downlink_mbps: {distribution: constant, value: 8}
  uplink_mbps: {distribution: constant, value: 0.8}
  latency_ms: {distribution: constant, value: 50}
  deadline_s: 10
)";

std::unique_ptr<FleetModel> Make(const FleetConfig& c, std::uint32_t n) {
  Result<std::unique_ptr<FleetModel>> m = FleetModel::Make(c, n);
  FEDLORA_CHECK_MSG(m.ok(), m.status().ToString());
  return std::move(m).value();
}

TEST(FleetModelTest, FinishTimeAddsLatencyDownloadTrainingAndUpload) {
  const auto fleet = Make(ParseOrDie(kConstantFleet), 4);
  const TaskPlan plan = fleet->Plan(2, 1, 0, /*down=*/500'000, /*tokens=*/4000, /*up=*/200'000);
  EXPECT_EQ(plan.outcome, TaskOutcome::kReported);
  EXPECT_DOUBLE_EQ(plan.download_s, 0.05 + 0.5);
  EXPECT_DOUBLE_EQ(plan.compute_s, 4.0);
  EXPECT_DOUBLE_EQ(plan.upload_s, 2.0);
  EXPECT_DOUBLE_EQ(plan.finish_s, 6.55);
}

TEST(FleetModelTest, AClientThatWouldFinishAfterTheDeadlineIsAStraggler) {
  const auto fleet = Make(ParseOrDie(kConstantFleet), 4);
  const TaskPlan plan = fleet->Plan(0, 3, 0, 0, /*tokens=*/20'000, 0);
  EXPECT_EQ(plan.outcome, TaskOutcome::kStraggler);
  EXPECT_THAT(plan.reason, HasSubstr("after the 10.0 s deadline"));
  EXPECT_THAT(plan.reason, HasSubstr("round 3"));
}

TEST(FleetModelTest, AvailabilityAndDropoutDecideTasksDeterministically) {
  FleetConfig c = ParseOrDie(kConstantFleet);
  c.availability = 0.5;
  c.dropout = 0.2;
  const auto a = Make(c, 50);
  const auto b = Make(c, 50);
  std::size_t offline = 0, dropped = 0, total = 0;
  for (std::uint32_t client = 0; client < 50; ++client) {
    for (std::uint64_t round = 1; round <= 20; ++round) {
      const TaskPlan pa = a->Plan(client, round, round - 1, 0, 100, 0);
      const TaskPlan pb = b->Plan(client, round, round - 1, 0, 100, 0);
      EXPECT_EQ(pa.outcome, pb.outcome);
      offline += pa.outcome == TaskOutcome::kOffline;
      dropped += pa.outcome == TaskOutcome::kDropped;
      ++total;
    }
  }
  // 1000 draws: offline ~ 500, dropped ~ 0.5 * 0.2 * 1000 = 100.
  EXPECT_NEAR(static_cast<double>(offline) / total, 0.5, 0.06);
  EXPECT_NEAR(static_cast<double>(dropped) / total, 0.1, 0.03);
  c.availability = 0.0;
  EXPECT_EQ(Make(c, 1)->Plan(0, 1, 0, 0, 1, 0).outcome, TaskOutcome::kOffline);
  c.availability = 1.0;
  c.dropout = 1.0;
  EXPECT_EQ(Make(c, 1)->Plan(0, 1, 0, 0, 1, 0).outcome, TaskOutcome::kDropped);
}

TEST(FleetModelTest, LogNormalProfilesHaveTheConfiguredMedianAndDifferByClient) {
  const FleetConfig c = ParseOrDie(R"(
fleet:
  seed: 3
  tokens_per_second: {distribution: lognormal, median: 5000, sigma: 0.8}
  uplink_mbps: {distribution: uniform, min: 1, max: 3}
)");
  const auto fleet = Make(c, 2001);
  std::vector<double> speeds;
  for (std::uint32_t i = 0; i < 2001; ++i) {
    speeds.push_back(fleet->profile(i).tokens_per_second);
    EXPECT_GE(fleet->profile(i).uplink_mbps, 1.0);
    EXPECT_LE(fleet->profile(i).uplink_mbps, 3.0);
  }
  EXPECT_NEAR(fleet->median_tokens_per_second(), 5000, 400);
  const auto [lo, hi] = std::minmax_element(speeds.begin(), speeds.end());
  EXPECT_GT(*hi / *lo, 20);  // sigma 0.8 spreads 2001 draws over > e^(2 * 0.8 * 3).
  EXPECT_EQ(Make(c, 2001)->profile(17).tokens_per_second, fleet->profile(17).tokens_per_second);
}

TEST(FleetModelTest, RoundTimeIsTheSlowestReporterOrTheDeadlineWhenSomeoneKeptItWaiting) {
  const auto fleet = Make(ParseOrDie(kConstantFleet), 4);
  fleet->Record(1, fleet->Plan(0, 1, 0, 0, 2000, 0));  // 2.05 s
  fleet->Record(1, fleet->Plan(1, 1, 0, 0, 6000, 0));  // 6.05 s
  RoundTiming t = fleet->CloseRound(1, 1);
  EXPECT_DOUBLE_EQ(t.virtual_seconds, 6.05);
  EXPECT_EQ(t.reported, 2u);
  EXPECT_DOUBLE_EQ(t.max_finish_s, 6.05);

  fleet->Record(2, fleet->Plan(0, 2, 1, 0, 2000, 0));
  fleet->Record(2, fleet->Plan(1, 2, 1, 0, 50'000, 0));  // Straggler: the coordinator waits 10 s.
  t = fleet->CloseRound(2, 1);
  EXPECT_DOUBLE_EQ(t.virtual_seconds, 10.0);
  EXPECT_EQ(t.stragglers, 1u);

  fleet->Record(3, fleet->Plan(0, 3, 2, 0, 2000, 0));
  t = fleet->CloseRound(3, 2);  // A retried round: one full deadline before the last attempt.
  EXPECT_DOUBLE_EQ(t.virtual_seconds, 12.05);
  EXPECT_EQ(fleet->CloseRound(3, 1).reported, 0u);  // Records are consumed.
}

class FleetTraceTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& text) {
    const std::string path = ::testing::TempDir() + "/fleet_trace_" +
                             ::testing::UnitTest::GetInstance()->current_test_info()->name() +
                             ".csv";
    std::ofstream(path) << text;
    return path;
  }
  Result<std::unique_ptr<FleetModel>> WithTrace(const std::string& text, std::uint32_t n = 3) {
    FleetConfig c = ParseOrDie(kConstantFleet);
    c.trace = Write(text);
    return FleetModel::Make(c, n);
  }
};

TEST_F(FleetTraceTest, ListedClientsTakeTheTraceValuesAndTheOthersKeepTheirDraws) {
  const auto fleet = WithTrace(
      "client,tokens_per_second,availability\n"
      "# a phone on a bad day\n"
      "1, 50, 0.25\n");
  ASSERT_TRUE(fleet.ok()) << fleet.status().ToString();
  EXPECT_EQ((*fleet)->profile(1).tokens_per_second, 50);
  EXPECT_EQ((*fleet)->profile(1).availability, 0.25);
  EXPECT_EQ((*fleet)->profile(1).uplink_mbps, 0.8);
  EXPECT_EQ((*fleet)->profile(0).tokens_per_second, 1000);
}

TEST_F(FleetTraceTest, AHundredThousandRowTraceAppliesEveryRow) {
  // Cross-device scale (issue 15); its load time is bench/fleet_trace's (0.08 s here).
  std::string text = "client,tokens_per_second,dropout\n";
  for (int i = 0; i < 100000; ++i) text += StrCat(i, ",", 100 + i, ",0.", i % 10, "\n");
  const auto fleet = WithTrace(text, 100000);
  ASSERT_TRUE(fleet.ok()) << fleet.status().ToString();
  EXPECT_EQ((*fleet)->profile(0).tokens_per_second, 100);
  EXPECT_EQ((*fleet)->profile(99999).tokens_per_second, 100099);
  EXPECT_EQ((*fleet)->profile(99999).dropout, 0.9);
  EXPECT_EQ((*fleet)->profile(12345).uplink_mbps, 0.8);  // Not in the trace: the draw stays.
}

TEST_F(FleetTraceTest, ErrorsNameTheFileLineAndColumn) {
  Status s = WithTrace("client,tokens_per_second\n0,fast\n").status();
  EXPECT_THAT(s.message(), HasSubstr(".csv:2: column tokens_per_second: 'fast' is not a finite"));
  s = WithTrace("client,speed\n").status();
  EXPECT_THAT(s.message(), HasSubstr(":1: unknown column 'speed'"));
  s = WithTrace("client,tokens_per_second\n7,10\n").status();
  EXPECT_THAT(s.message(), HasSubstr("client 7 is not in [0, 3)"));
  s = WithTrace("client,dropout\n0,0.1\n0,0.2\n").status();
  EXPECT_THAT(s.message(), HasSubstr(":3: column client: client 0 is listed twice"));
  s = WithTrace("client,availability\n0,1.5\n").status();
  EXPECT_THAT(s.message(), HasSubstr("column availability: 1.5 is not in [0, 1]"));
  s = WithTrace("client,uplink_mbps\n0,1,2\n").status();
  EXPECT_THAT(s.message(), HasSubstr(":2: 3 cells, the header has 2"));
  FleetConfig c = ParseOrDie(kConstantFleet);
  c.trace = ::testing::TempDir() + "/no-such-trace.csv";
  EXPECT_THAT(FleetModel::Make(c, 1).status().message(), HasSubstr("no-such-trace.csv"));
}

TEST(FleetConfigTest, BadValuesNameTheirKey) {
  EXPECT_THAT(Parse("fleet: {tokens_per_second: {distribution: gamma, value: 1}}").status().message(),
              HasSubstr("fleet.tokens_per_second.distribution: unknown distribution 'gamma'"));
  EXPECT_THAT(Parse("fleet: {uplink_mbps: {distribution: lognormal, median: 0}}").status().message(),
              HasSubstr("fleet.uplink_mbps.median must be finite and > 0"));
  EXPECT_THAT(Parse("fleet: {downlink_mbps: {distribution: uniform, min: 0, max: 3}}")
                  .status().message(),
              HasSubstr("fleet.downlink_mbps must be > 0 for every client"));
  EXPECT_THAT(Parse("fleet: {availability: 1.5}").status().message(),
              HasSubstr("fleet.availability must be in [0, 1]"));
  EXPECT_THAT(Parse("fleet: {deadline: 3}").status().message(), HasSubstr("deadline"));
}

}  // namespace
}  // namespace fedlora::sim
