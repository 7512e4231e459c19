// The RDP accountant against Google's dp-accounting (scripts/dp_vectors.py wrote
// rdp_vectors.txt): within 1% and never below it; and its monotonicity.
#include "common/privacy/rdp_accountant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

namespace fedlora::privacy {
namespace {

TEST(RdpAccountantTest, AgreesWithDpAccountingWithinOnePercentAndIsNeverLessConservative) {
  std::ifstream in(FEDLORA_SOURCE_DIR "/tests/common/privacy/rdp_vectors.txt");
  ASSERT_TRUE(in.good());
  int checked = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream row(line);
    double q, sigma, delta, want;
    std::uint64_t steps;
    ASSERT_TRUE(row >> q >> sigma >> steps >> delta >> want) << line;
    RdpAccountant accountant;
    ASSERT_TRUE(accountant.Compose(q, sigma, steps).ok());
    const Result<EpsilonAtOrder> got = accountant.Epsilon(delta);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_GE(got->epsilon, want * (1 - 1e-9)) << line;  // Never less conservative.
    EXPECT_LE(got->epsilon, want * 1.01) << line;
    ++checked;
  }
  EXPECT_EQ(checked, 240);
}

TEST(RdpAccountantTest, EpsilonGrowsWithStepsAndSamplingRateAndFallsWithNoise) {
  const auto eps = [](double q, double sigma, std::uint64_t steps) {
    RdpAccountant a;
    EXPECT_TRUE(a.Compose(q, sigma, steps).ok());
    return a.Epsilon(1e-5).value().epsilon;
  };
  double previous = 0;
  for (std::uint64_t steps : {1, 2, 5, 10, 100, 1000}) {
    const double e = eps(0.01, 1.0, steps);
    EXPECT_GT(e, previous) << steps;
    previous = e;
  }
  previous = 0;
  for (double q : {0.001, 0.01, 0.1, 0.5, 1.0}) {
    const double e = eps(q, 1.0, 100);
    EXPECT_GT(e, previous) << q;
    previous = e;
  }
  EXPECT_GT(eps(0.1, 0.8, 100), eps(0.1, 1.6, 100));
}

TEST(RdpAccountantTest, ComposingInPiecesEqualsComposingAtOnceAndRestores) {
  RdpAccountant once, pieces;
  ASSERT_TRUE(once.Compose(0.05, 1.1, 30).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(pieces.Compose(0.05, 1.1, 10).ok());
  EXPECT_NEAR(once.Epsilon(1e-6)->epsilon, pieces.Epsilon(1e-6)->epsilon, 1e-9);
  RdpAccountant resumed;
  ASSERT_TRUE(resumed.Restore(pieces.rdp()).ok());
  EXPECT_EQ(resumed.Epsilon(1e-6)->epsilon, pieces.Epsilon(1e-6)->epsilon);
  EXPECT_FALSE(resumed.Restore({1.0, 2.0}).ok());
}

TEST(RdpAccountantTest, TheSolvedNoiseMeetsTheBudgetAndLittleLessWouldNot) {
  const Result<double> sigma = NoiseForBudget(0.05, 500, 4.0, 1e-5);
  ASSERT_TRUE(sigma.ok()) << sigma.status().ToString();
  const auto eps = [](double s) {
    RdpAccountant a;
    EXPECT_TRUE(a.Compose(0.05, s, 500).ok());
    return a.Epsilon(1e-5).value().epsilon;
  };
  EXPECT_LE(eps(*sigma), 4.0);
  EXPECT_GT(eps(*sigma * 0.999), 4.0);
  EXPECT_EQ(NoiseForBudget(1.0, 1000000, 1e-3, 1e-5).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_FALSE(NoiseForBudget(0.0, 10, 4.0, 1e-5).ok());
}

TEST(RdpAccountantTest, NoNoiseIsUnboundedAndBadArgumentsAreRefused) {
  RdpAccountant a;
  ASSERT_TRUE(a.Compose(0.1, 0.0, 1).ok());
  EXPECT_TRUE(std::isinf(a.Epsilon(1e-5)->epsilon));
  EXPECT_FALSE(a.Compose(1.5, 1.0).ok());
  EXPECT_FALSE(a.Compose(0.1, -1.0).ok());
  EXPECT_FALSE(a.Epsilon(0).ok());
  EXPECT_FALSE(a.Epsilon(1).ok());
}

}  // namespace
}  // namespace fedlora::privacy
