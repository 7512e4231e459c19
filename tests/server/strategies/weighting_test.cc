#include "server/strategies/weighting.h"

#include <gtest/gtest.h>

#include <numeric>

namespace fedlora::server {
namespace {

double Sum(const std::vector<double>& w) { return std::accumulate(w.begin(), w.end(), 0.0); }

TEST(CapSharesTest, ExcessAboveTheCapGoesToTheOthersInProportion) {
  std::vector<double> w = {0.9, 0.075, 0.025};
  EXPECT_EQ(CapShares(w, 0.5), 1u);
  EXPECT_DOUBLE_EQ(w[0], 0.5);
  EXPECT_DOUBLE_EQ(w[1], 0.375);
  EXPECT_DOUBLE_EQ(w[2], 0.125);
  EXPECT_NEAR(Sum(w), 1.0, 1e-15);
}

TEST(CapSharesTest, RedistributionThatPushesAnotherOverTheCapCapsItToo) {
  // After capping 0.6 at 0.4, the 0.3 would become 0.45: it is capped as well.
  std::vector<double> w = {0.6, 0.3, 0.05, 0.05};
  EXPECT_EQ(CapShares(w, 0.4), 2u);
  EXPECT_DOUBLE_EQ(w[0], 0.4);
  EXPECT_DOUBLE_EQ(w[1], 0.4);
  EXPECT_DOUBLE_EQ(w[2], 0.1);
  EXPECT_DOUBLE_EQ(w[3], 0.1);
}

TEST(CapSharesTest, TooFewClientsForTheCapShareEqually) {
  std::vector<double> w = {0.9, 0.1};
  EXPECT_EQ(CapShares(w, 0.3), 1u);
  EXPECT_DOUBLE_EQ(w[0], 0.5);
  EXPECT_DOUBLE_EQ(w[1], 0.5);
}

TEST(CapSharesTest, ACapOfOneChangesNothing) {
  std::vector<double> w = {0.99, 0.01};
  EXPECT_EQ(CapShares(w, 1.0), 0u);
  EXPECT_EQ(w, (std::vector<double>{0.99, 0.01}));
}

TEST(CapSharesTest, ZeroWeightsShareWhatTheCapFrees) {
  std::vector<double> w = {1.0, 0.0, 0.0};
  CapShares(w, 0.5);
  EXPECT_DOUBLE_EQ(w[0], 0.5);
  EXPECT_DOUBLE_EQ(w[1], 0.25);
  EXPECT_DOUBLE_EQ(w[2], 0.25);
}

TEST(ComputeWeightsTest, ADeclaredExampleCountCannotBuyMoreThanTheShareCap) {
  std::vector<ClientUpdate> ups(4);
  for (std::size_t k = 0; k < ups.size(); ++k) {
    ups[k].client_id = "c" + std::to_string(k);
    ups[k].num_examples = k == 0 ? 1'000'000 : 100;
    ups[k].num_samples = 8;
  }
  const Result<std::vector<double>> w = ComputeWeights(ups, Weighting::kExamples, 0.25);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  for (double x : *w) EXPECT_DOUBLE_EQ(x, 0.25);
}

}  // namespace
}  // namespace fedlora::server
