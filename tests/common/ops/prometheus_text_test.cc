#include "common/ops/prometheus_text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "tests/testing/prometheus_parse.h"

namespace fedlora::ops {
namespace {

using ::testing::HasSubstr;

TEST(PrometheusTextTest, FamiliesAreDeclaredOnceAndLabelValuesEscaped) {
  PrometheusText t;
  t.Counter("fedlora_refused_total", "Refused, by code.", 3, {{"code", "TASK_MISMATCH"}});
  t.Counter("fedlora_refused_total", "Refused, by code.", 1, {{"code", "a\"b\\c\nd"}});
  t.Gauge("fedlora_loss", "Loss\\with a backslash.", 2.5);
  EXPECT_EQ(t.str(),
            "# HELP fedlora_refused_total Refused, by code.\n"
            "# TYPE fedlora_refused_total counter\n"
            "fedlora_refused_total{code=\"TASK_MISMATCH\"} 3\n"
            "fedlora_refused_total{code=\"a\\\"b\\\\c\\nd\"} 1\n"
            "# HELP fedlora_loss Loss\\\\with a backslash.\n"
            "# TYPE fedlora_loss gauge\n"
            "fedlora_loss 2.5\n");
}

TEST(PrometheusTextTest, ValuesUseTheShortestFormThatReadsBack) {
  EXPECT_EQ(FormatValue(42), "42");
  EXPECT_EQ(FormatValue(-3), "-3");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
  EXPECT_EQ(FormatValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatValue(-INFINITY), "-Inf");
  EXPECT_EQ(FormatValue(1e300), "1e+300");
}

TEST(PrometheusTextTest, HistogramBucketsAreCumulativeWithSumAndCount) {
  Histogram h({0.5, 2});
  for (double v : {0.1, 0.5, 1.0, 3.0, 10.0}) h.Observe(v);
  PrometheusText t;
  t.AddHistogram("fedlora_round_duration_seconds", "Round time.", h);
  EXPECT_THAT(t.str(), HasSubstr("fedlora_round_duration_seconds_bucket{le=\"0.5\"} 2\n"
                                 "fedlora_round_duration_seconds_bucket{le=\"2\"} 3\n"
                                 "fedlora_round_duration_seconds_bucket{le=\"+Inf\"} 5\n"
                                 "fedlora_round_duration_seconds_sum 14.6\n"
                                 "fedlora_round_duration_seconds_count 5\n"));
}

// The exposition an independent parser reads: python3-prometheus-client gives back every sample.
TEST(PrometheusTextTest, PrometheusClientsParserReadsEverySample) {
  Histogram h(DurationBuckets());
  h.Observe(0.02);
  h.Observe(7);
  PrometheusText t;
  t.Counter("fedlora_uploads_accepted_total", "Accepted.", 12);
  t.Counter("fedlora_messages_refused_total", "By code.", 2, {{"code", "STALE_ROUND"}});
  t.Gauge("fedlora_round_phase", "Phase.", 1, {{"phase", "fit"}});
  t.Gauge("fedlora_round_phase", "Phase.", 0, {{"phase", "eval"}});
  t.Gauge("fedlora_eval_loss", "Loss.", std::nan(""));
  t.AddHistogram("fedlora_aggregation_duration_seconds", "Aggregation.", h);
  const Result<std::map<std::string, double>> parsed = testing::ParsePrometheusText(t.str());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->at("fedlora_uploads_accepted_total{}"), 12);
  EXPECT_EQ(parsed->at("fedlora_messages_refused_total{code=\"STALE_ROUND\"}"), 2);
  EXPECT_EQ(parsed->at("fedlora_round_phase{phase=\"fit\"}"), 1);
  EXPECT_TRUE(std::isnan(parsed->at("fedlora_eval_loss{}")));
  EXPECT_EQ(parsed->at("fedlora_aggregation_duration_seconds_bucket{le=\"0.04\"}"), 1);
  EXPECT_EQ(parsed->at("fedlora_aggregation_duration_seconds_bucket{le=\"+Inf\"}"), 2);
  EXPECT_EQ(parsed->at("fedlora_aggregation_duration_seconds_count{}"), 2);
  // And it refuses what is not the format, so the check above can fail.
  EXPECT_FALSE(testing::ParsePrometheusText("fedlora_x{code=\"unterminated} 1\n").ok());
}

TEST(PrometheusTextDeathTest, AnInvalidMetricNameIsABug) {
  PrometheusText t;
  EXPECT_DEATH(t.Gauge("2bad", "x", 1), "metric name");
}

}  // namespace
}  // namespace fedlora::ops
