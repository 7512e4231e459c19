// AddProductDeterministic: the canonical fp32 base-weight update of ALGORITHMS.md §2(j), §10.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/lora/deterministic_apply.h"

namespace fedlora::lora {
namespace {

struct ApplyCase {
  std::int64_t d_out = 37, d_in = 23, k = 11;  // d_out != d_in; odd sizes defeat neat blocking.
  std::vector<float> w, u, v;
};

ApplyCase MakeApplyCase(std::uint64_t seed) {
  ApplyCase c;
  std::mt19937_64 rng(seed);
  // Values with full 24-bit significands and mixed magnitudes, so the sums really round.
  auto draw = [&rng](double scale) {
    const double x = double(rng() >> 11) * 0x1.0p-53 * 2.0 - 1.0;
    return static_cast<float>(x * scale);
  };
  for (std::int64_t i = 0; i < c.d_out * c.d_in; ++i) c.w.push_back(draw(1.0));
  for (std::int64_t i = 0; i < c.d_out * c.k; ++i) c.u.push_back(draw(i % 3 == 0 ? 1e-3 : 1.0));
  for (std::int64_t i = 0; i < c.k * c.d_in; ++i) c.v.push_back(draw(i % 5 == 0 ? 1e2 : 1e-2));
  return c;
}

// The contract spelled out element by element: double products summed κ-ascending from +0.0,
// added to double(w), rounded to float once.
std::vector<float> ScalarReference(const ApplyCase& c) {
  std::vector<float> out = c.w;
  for (std::int64_t i = 0; i < c.d_out; ++i) {
    for (std::int64_t j = 0; j < c.d_in; ++j) {
      double sum = 0.0;
      for (std::int64_t kappa = 0; kappa < c.k; ++kappa) {
        sum += double(c.u[i * c.k + kappa]) * double(c.v[kappa * c.d_in + j]);
      }
      out[i * c.d_in + j] = static_cast<float>(double(c.w[i * c.d_in + j]) + sum);
    }
  }
  return out;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(DeterministicApplyTest, EqualsADoubleReferenceRoundedOnce) {
  const ApplyCase c = MakeApplyCase(1);
  std::vector<float> w = c.w;
  ASSERT_TRUE(AddProductDeterministic(std::span<float>(w), c.u, c.v, c.d_out, c.d_in, c.k).ok());
  EXPECT_TRUE(BitEqual(w, ScalarReference(c)));
  // And it is (essentially) the correctly rounded exact result: within one float ulp of a
  // long-double reference, and equal to it for the vast majority of entries.
  int exact = 0;
  for (std::int64_t i = 0; i < c.d_out; ++i) {
    for (std::int64_t j = 0; j < c.d_in; ++j) {
      long double sum = c.w[i * c.d_in + j];
      for (std::int64_t kappa = 0; kappa < c.k; ++kappa) {
        sum += (long double)c.u[i * c.k + kappa] * (long double)c.v[kappa * c.d_in + j];
      }
      const float want = static_cast<float>(sum);
      const float got = w[i * c.d_in + j];
      EXPECT_LE(std::abs(double(got) - double(want)),
                double(std::nextafter(std::abs(want), INFINITY) - std::abs(want)));
      exact += got == want ? 1 : 0;
    }
  }
  EXPECT_GE(exact, static_cast<int>(0.99 * double(c.d_out * c.d_in)));
}

TEST(DeterministicApplyTest, IsBitIdenticalRunToRunAndAcrossReplicas) {
  const ApplyCase c = MakeApplyCase(2);
  std::vector<float> replica1 = c.w, replica2 = c.w;
  // Two rounds of corrections, applied in the same order on two replicas.
  const ApplyCase round2 = MakeApplyCase(3);
  for (std::vector<float>* w : {&replica1, &replica2}) {
    ASSERT_TRUE(AddProductDeterministic(std::span<float>(*w), c.u, c.v, c.d_out, c.d_in, c.k).ok());
    ASSERT_TRUE(AddProductDeterministic(std::span<float>(*w), round2.u, round2.v, c.d_out, c.d_in,
                                        c.k).ok());
  }
  EXPECT_TRUE(BitEqual(replica1, replica2));
  std::vector<float> again = c.w;
  ASSERT_TRUE(AddProductDeterministic(std::span<float>(again), c.u, c.v, c.d_out, c.d_in, c.k).ok());
  ASSERT_TRUE(AddProductDeterministic(std::span<float>(again), round2.u, round2.v, c.d_out, c.d_in,
                                      c.k).ok());
  EXPECT_TRUE(BitEqual(again, replica1));
  EXPECT_FALSE(BitEqual(again, c.w));
}

TEST(DeterministicApplyTest, DoubleBufferOverloadAddsTheSameSum) {
  const ApplyCase c = MakeApplyCase(4);
  std::vector<double> w(c.w.begin(), c.w.end());
  ASSERT_TRUE(AddProductDeterministic(std::span<double>(w), c.u, c.v, c.d_out, c.d_in, c.k).ok());
  const std::vector<float> ref = ScalarReference(c);
  for (std::size_t i = 0; i < w.size(); ++i) {
    ASSERT_EQ(static_cast<float>(w[i]), ref[i]) << i;  // Same double, rounded afterwards.
  }
}

TEST(DeterministicApplyTest, RankZeroLeavesTheWeightUntouched) {
  const ApplyCase c = MakeApplyCase(5);
  std::vector<float> w = c.w;
  ASSERT_TRUE(AddProductDeterministic(std::span<float>(w), {}, {}, c.d_out, c.d_in, 0).ok());
  EXPECT_TRUE(BitEqual(w, c.w));
}

TEST(DeterministicApplyTest, RejectsSizesThatDisagreeWithTheDimensions) {
  const ApplyCase c = MakeApplyCase(6);
  std::vector<float> w = c.w;
  EXPECT_EQ(AddProductDeterministic(std::span<float>(w), c.u, c.v, c.d_in, c.d_out, c.k).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(AddProductDeterministic(std::span<float>(w), c.u, c.v, c.d_out, c.d_in, c.k - 1).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(AddProductDeterministic(std::span<float>(w), c.u, std::span<const float>(c.v).first(3),
                                    c.d_out, c.d_in, c.k)
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(AddProductDeterministic(std::span<float>(w), c.u, c.v, -1, c.d_in, c.k).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(BitEqual(w, c.w));  // Untouched on error.
}

}  // namespace
}  // namespace fedlora::lora
