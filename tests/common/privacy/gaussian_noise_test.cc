#include "common/privacy/gaussian_noise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace fedlora::privacy {
namespace {

crypto::Seed FixedSeed(std::uint8_t b) {
  crypto::Seed s;
  s.fill(b);
  return s;
}

// 200 000 draws: the sample mean's standard error is 0.0022 sigma and the sample standard
// deviation's 0.0016 sigma, so the tolerances below are more than 10 standard errors wide.
TEST(GaussianNoiseTest, DrawsHaveTheConfiguredStandardDeviationAndNoBias) {
  const double sigma = 0.37;
  std::vector<double> v(200001, 1.0);  // Odd: the last pair's second draw is unused.
  AddGaussianNoise(v, sigma, FixedSeed(7));
  double mean = 0, squares = 0;
  std::size_t beyond_3 = 0;
  for (double x : v) mean += x - 1.0;
  mean /= static_cast<double>(v.size());
  for (double x : v) {
    squares += (x - 1.0 - mean) * (x - 1.0 - mean);
    beyond_3 += std::abs(x - 1.0) > 3 * sigma ? 1 : 0;
  }
  const double sd = std::sqrt(squares / static_cast<double>(v.size() - 1));
  EXPECT_NEAR(mean, 0.0, 0.03 * sigma);
  EXPECT_NEAR(sd / sigma, 1.0, 0.02);
  // A normal tail: 0.27% beyond 3 sigma (540 expected; Poisson sd 23).
  EXPECT_GT(beyond_3, 400u);
  EXPECT_LT(beyond_3, 700u);
}

TEST(GaussianNoiseTest, TheSameSeedGivesTheSameNoiseAndLabelsGiveIndependentStreams) {
  std::vector<double> a(1000, 0.0), b(1000, 0.0), c(1000, 0.0);
  AddGaussianNoise(a, 1.0, FixedSeed(1));
  AddGaussianNoise(b, 1.0, FixedSeed(1));
  EXPECT_EQ(a, b);
  AddGaussianNoise(c, 1.0, DeriveNoiseSeed(FixedSeed(1), "other"));
  double dot = 0;
  for (std::size_t i = 0; i < a.size(); ++i) dot += a[i] * c[i];
  EXPECT_LT(std::abs(dot / 1000.0), 0.2);  // Correlation of independent streams: ~N(0, 0.03).
  EXPECT_NE(DeriveNoiseSeed(FixedSeed(1), "a"), DeriveNoiseSeed(FixedSeed(1), "b"));
}

TEST(GaussianNoiseTest, ZeroDeviationAddsNothingAndFreshSeedsDiffer) {
  std::vector<double> v(10, 2.5);
  AddGaussianNoise(v, 0.0, FixedSeed(3));
  EXPECT_EQ(v, std::vector<double>(10, 2.5));
  EXPECT_NE(FreshNoiseSeed(), FreshNoiseSeed());
}

}  // namespace
}  // namespace fedlora::privacy
