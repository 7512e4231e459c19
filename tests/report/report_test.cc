#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "report/html_report.h"
#include "report/run_metrics.h"
#include "report/svg_plot.h"

namespace fedlora::report {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ReportTest : public ::testing::Test {
 protected:
  std::string WriteRun(const std::string& name, const std::string& lines) {
    const std::string dir = ::testing::TempDir() + "/fedlora_report_" + name;
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/metrics.jsonl") << lines;
    dirs_.push_back(dir);
    return dir;
  }
  void TearDown() override {
    for (const std::string& d : dirs_) std::filesystem::remove_all(d);
  }
  std::vector<std::string> dirs_;
};

constexpr const char* kTwoRounds =
    R"({"round":0,"strategy":"fedavg","clients_selected":0,"clients_reported":0,"eval_loss":5.0,"train_loss":null,"bytes_up":0,"seconds":0.5})"
    "\n"
    R"({"round":1,"strategy":"fedavg","clients_selected":8,"clients_reported":7,"clients_failed":1,"eval_loss":3.5,"train_loss":3.9,"bytes_up":1500000,"bytes_down":1600000,"seconds":7.5,"simulation":{"virtual_round_s":10,"peak_rss_mb":480}})"
    "\n"
    R"({"round":2,"strategy":"fedavg","clients_selected":8,"clients_reported":8,"clients_failed":0,"eval_loss":3.1,"train_loss":3.4,"bytes_up":1500000,"bytes_down":1600000,"seconds":6.5,"simulation":{"virtual_round_s":9,"peak_rss_mb":482}})"
    "\n";

TEST_F(ReportTest, ARunsMetricsBecomePerRoundSeriesWithNestedFieldsFlattened) {
  const Result<RunMetrics> run = LoadRun(WriteRun("two", kTwoRounds));
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  EXPECT_EQ(run->label, "fedlora_report_two");
  EXPECT_EQ(run->strategy, "fedavg");
  EXPECT_EQ(run->rounds, (std::vector<std::uint64_t>{0, 1, 2}));
  EXPECT_EQ(run->Points("eval_loss"),
            (std::vector<std::pair<double, double>>{{0, 5.0}, {1, 3.5}, {2, 3.1}}));
  EXPECT_EQ(run->Points("train_loss").size(), 2u);  // null in round 0.
  EXPECT_EQ(run->Points("simulation.virtual_round_s"),
            (std::vector<std::pair<double, double>>{{1, 10}, {2, 9}}));
  EXPECT_DOUBLE_EQ(run->Total("seconds"), 14.0);  // Rounds >= 1.
  EXPECT_FALSE(run->Has("eval_accuracy"));
}

TEST_F(ReportTest, ABadLineIsAnErrorNamingTheFileAndLine) {
  const std::string dir = WriteRun("bad", std::string(kTwoRounds) + "{\"round\": \"three\"}\n");
  const Result<RunMetrics> run = LoadRun(dir);
  ASSERT_FALSE(run.ok());
  EXPECT_THAT(run.status().message(), HasSubstr(dir + "/metrics.jsonl:4"));
  EXPECT_FALSE(LoadRun(WriteRun("empty", "\n")).ok());
  EXPECT_EQ(LoadRun("/nonexistent/run").status().code(), StatusCode::kNotFound);
}

// Only charts that have data; each run one colour; a run named like markup stays text.
TEST_F(ReportTest, ThePageHasAChartPerFieldWithDataAndEscapesRunNames) {
  Result<RunMetrics> a = LoadRun(WriteRun("a", kTwoRounds));
  Result<RunMetrics> b = LoadRun(WriteRun("b", kTwoRounds));
  ASSERT_TRUE(a.ok() && b.ok());
  b->label = "<script>alert(1)</script>";
  const std::string html = RenderReport({*a, *b}, "2026-12-04T00:00:00Z");
  EXPECT_THAT(html, HasSubstr("data-field=\"eval_loss\""));
  EXPECT_THAT(html, HasSubstr("data-field=\"simulation.virtual_round_s\""));
  EXPECT_THAT(html, Not(HasSubstr("data-field=\"eval_accuracy\"")));  // No run has it.
  EXPECT_THAT(html, Not(HasSubstr("<script>alert")));
  EXPECT_THAT(html, HasSubstr("&lt;script&gt;alert(1)&lt;/script&gt;"));
  // Both runs in the eval-loss chart, in their colours, 3 points each.
  const std::size_t chart = html.find("data-field=\"eval_loss\"");
  const std::string eval = html.substr(chart, html.find("</figure>", chart) - chart);
  EXPECT_THAT(eval, HasSubstr("stroke=\"" + SeriesColour(0) + "\""));
  EXPECT_THAT(eval, HasSubstr("stroke=\"" + SeriesColour(1) + "\""));
  const std::regex circle("<circle ");
  EXPECT_EQ(
      std::distance(std::sregex_iterator(eval.begin(), eval.end(), circle), std::sregex_iterator()),
      6);
  EXPECT_THAT(html, HasSubstr("<td>2</td>"));  // Rounds trained.
  EXPECT_THAT(html, HasSubstr("15 / 16"));     // Reported / selected.
}

TEST(SvgPlotTest, TicksAreRoundNumbersAndAnEmptyChartSaysSo) {
  EXPECT_EQ(NiceTicks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(NiceTicks(2.87, 5.02, 5), (std::vector<double>{3, 3.5, 4, 4.5, 5}));
  const std::string empty = LinePlotSvg({"Loss", "round", "loss"}, {{"run", {}}});
  EXPECT_THAT(empty, HasSubstr("no data"));
  EXPECT_THAT(empty, Not(HasSubstr("<polyline")));
  const std::string one = LinePlotSvg({"Loss", "round", "loss"}, {{"run", {{1, 2.0}, {2, 1.5}}}});
  EXPECT_THAT(one, HasSubstr("<polyline class=\"line\" points=\""));
  EXPECT_THAT(one, HasSubstr("<title>run, round 2: 1.5</title>"));
}

}  // namespace
}  // namespace fedlora::report
