// Quantisation for secure aggregation: the dequantised sum is within its analytic bound of the
// real sum, rounding is unbiased, every clipped value is counted, and settings whose sums could
// wrap the modulus are refused.
#include "common/secagg/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/secagg/masking.h"

namespace fedlora::secagg {
namespace {

TEST(QuantizeTest, TheDequantizedSumIsWithinNStepsOfTheRealSum) {
  const QuantizeConfig config{.clip = 0.5, .levels_bits = 12, .modulus_bits = 24};
  const std::uint64_t n = 40;
  ASSERT_TRUE(CheckQuantization(config, n).ok());
  const Modulus m = Modulus::Bits(config.modulus_bits).value();
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> value(-0.5, 0.5);
  const std::size_t length = 3000;
  std::vector<double> real(length, 0.0);
  std::vector<std::uint32_t> sum(length, 0);
  for (std::uint64_t k = 0; k < n; ++k) {
    std::vector<double> x(length);
    for (double& v : x) v = value(rng);
    for (std::size_t i = 0; i < length; ++i) real[i] += x[i];
    const Quantized q = Quantize(x, config, 1000 + k);
    EXPECT_EQ(q.clipped, 0u);
    ASSERT_TRUE(AddInto(sum, q.values, m).ok());
  }
  const std::vector<double> back = DequantizeSum(sum, n, config);
  const double bound = static_cast<double>(n) * QuantizationStep(config);
  double worst = 0, mean_error = 0;
  for (std::size_t i = 0; i < length; ++i) {
    worst = std::max(worst, std::abs(back[i] - real[i]));
    mean_error += (back[i] - real[i]) / static_cast<double>(length);
  }
  EXPECT_LE(worst, bound);
  // Unbiased: the mean error over 3000 sums of 40 is far inside one step (its standard deviation
  // is about step * sqrt(40 / 4) / sqrt(3000) = 0.06 step).
  EXPECT_LT(std::abs(mean_error), 0.3 * QuantizationStep(config)) << mean_error;
}

TEST(QuantizeTest, ValuesBeyondTheClipAndNaNAreCountedAndClipped) {
  const QuantizeConfig config{.clip = 1.0, .levels_bits = 8, .modulus_bits = 16};
  const std::vector<double> x = {0.25, 3.0, -7.5, std::nan(""), 1.0, -1.0};
  const Quantized q = Quantize(x, config, 1);
  EXPECT_EQ(q.clipped, 3u);
  EXPECT_EQ(q.values[1], 255u);  // Clipped to +clip: the top level.
  EXPECT_EQ(q.values[2], 0u);    // To -clip: the bottom one.
  EXPECT_EQ(q.values[4], 255u);  // Exactly at the clip: not counted.
  EXPECT_EQ(q.values[5], 0u);
  // NaN becomes 0, which lies halfway: level 127 or 128.
  EXPECT_TRUE(q.values[3] == 127u || q.values[3] == 128u) << q.values[3];
}

TEST(QuantizeTest, TheSameSeedRoundsTheSameWay) {
  const QuantizeConfig config{.clip = 1.0, .levels_bits = 4, .modulus_bits = 16};
  std::vector<double> x(500);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<double>(i));
  EXPECT_EQ(Quantize(x, config, 42).values, Quantize(x, config, 42).values);
  EXPECT_NE(Quantize(x, config, 42).values, Quantize(x, config, 43).values);
}

TEST(QuantizeTest, SettingsWhoseSumCouldWrapTheModulusAreRefused) {
  // 2^8 - 1 = 255 levels: 2^16 - 1 = 65535 = 257 * 255, so 257 clients fit and 258 do not.
  const QuantizeConfig config{.clip = 1.0, .levels_bits = 8, .modulus_bits = 16};
  EXPECT_TRUE(CheckQuantization(config, 257).ok());
  const Status s = CheckQuantization(config, 258);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("at most 257 clients"), std::string::npos) << s.message();
  EXPECT_FALSE(CheckQuantization({.clip = 0.0}, 2).ok());
  EXPECT_FALSE(CheckQuantization({.clip = 1.0, .levels_bits = 16, .modulus_bits = 16}, 1).ok());
  EXPECT_FALSE(CheckQuantization({.clip = 1.0, .levels_bits = 8, .modulus_bits = 33}, 1).ok());
}

}  // namespace
}  // namespace fedlora::secagg
