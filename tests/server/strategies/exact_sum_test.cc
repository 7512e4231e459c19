#include "server/strategies/exact_sum.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "server/strategies/weighted_sums.h"

namespace fedlora::server {
namespace {

std::vector<float> RandomValues(std::size_t n, std::mt19937_64& rng) {
  // Magnitudes spread over 12 decades, so floating-point sums are order-sensitive.
  std::uniform_real_distribution<double> exponent(-6, 6), sign(-1, 1);
  std::vector<float> v(n);
  for (float& x : v)
    x = static_cast<float>(std::copysign(std::pow(10.0, exponent(rng)), sign(rng)));
  return v;
}

std::vector<std::uint64_t> Bits(const std::vector<double>& v) {
  std::vector<std::uint64_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(double));
  return out;
}

TEST(ExactSumTest, TheSumIsBitIdenticalWhateverTheOrderOfTheTerms) {
  std::mt19937_64 rng(1);
  const std::size_t n = 257;
  std::vector<Tensor> xs;
  std::vector<double> weights;
  for (int k = 0; k < 9; ++k) {
    xs.push_back(MakeF32({n}, RandomValues(n, rng)));
    weights.push_back(1 + k * 37);
  }
  std::vector<std::size_t> order(xs.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::vector<std::uint64_t> first;
  bool naive_differs = false;
  std::vector<double> naive_first;
  for (int trial = 0; trial < 6; ++trial) {
    std::shuffle(order.begin(), order.end(), rng);
    ExactSum sum({static_cast<std::int64_t>(n)});
    std::vector<double> naive(n, 0.0);
    for (std::size_t k : order) {
      ASSERT_TRUE(sum.Add(xs[k], weights[k], "x").ok());
      const std::vector<double> v = ToDoubles(xs[k]);
      for (std::size_t i = 0; i < n; ++i) naive[i] += weights[k] * v[i];
    }
    const std::vector<std::uint64_t> bits = Bits(sum.Scaled(1.0 / 3));
    if (trial == 0) {
      first = bits;
      naive_first = naive;
    } else {
      EXPECT_EQ(bits, first) << "trial " << trial;
      naive_differs = naive_differs || naive != naive_first;
    }
  }
  EXPECT_TRUE(naive_differs) << "the data should make a running double sum order-dependent";
}

TEST(ExactSumTest, TheSumMatchesAnExtendedPrecisionReference) {
  std::mt19937_64 rng(2);
  const std::size_t n = 1000;
  ExactSum sum({static_cast<std::int64_t>(n)});
  std::vector<long double> reference(n, 0.0L);
  for (int k = 0; k < 20; ++k) {
    const std::vector<float> v = RandomValues(n, rng);
    const double w = 1 + k;
    ASSERT_TRUE(sum.Add(MakeF32({static_cast<std::int64_t>(n)}, v), w, "x").ok());
    for (std::size_t i = 0; i < n; ++i) reference[i] += static_cast<long double>(w) * v[i];
  }
  const std::vector<double> got = sum.Scaled(1.0);
  for (std::size_t i = 0; i < n; ++i) {
    const double ref = static_cast<double>(reference[i]);
    // Each term is truncated at 2^-64; the conversion rounds once.
    EXPECT_NEAR(got[i], ref, std::abs(ref) * 4e-16 + 20 * 0x1p-64) << i;
  }
}

TEST(ExactSumTest, AddingWithTheNegatedWeightTakesATermOutExactly) {
  std::mt19937_64 rng(3);
  const std::size_t n = 64;
  const Tensor a = MakeF32({8, 8}, RandomValues(n, rng));
  const Tensor b = MakeF32({8, 8}, RandomValues(n, rng));
  ExactSum only_a({8, 8}), both({8, 8});
  ASSERT_TRUE(only_a.Add(a, 0.3, "a").ok());
  ASSERT_TRUE(both.Add(a, 0.3, "a").ok());
  ASSERT_TRUE(both.Add(b, 0.7, "b").ok());
  ASSERT_TRUE(both.Add(b, -0.7, "b").ok());
  EXPECT_EQ(Bits(both.Scaled(1.0)), Bits(only_a.Scaled(1.0)));
  EXPECT_EQ(both.terms(), 1);
}

TEST(ExactSumTest, AValueBeyondTheRangeIsRefusedByNameAndNothingIsAdded) {
  ExactSum sum({4});
  ASSERT_TRUE(sum.Add(MakeF32({4}, std::vector<float>{1, 2, 3, 4}), 1.0, "q.lora_A").ok());
  const std::vector<double> before = sum.Scaled(1.0);
  const Status s = sum.Add(MakeF32({4}, std::vector<float>{5, 6, 1e13f, 8}), 1.0, "q.lora_B");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("q.lora_B"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("element 2"), std::string::npos) << s.message();
  EXPECT_EQ(sum.Scaled(1.0), before);
  EXPECT_EQ(sum.terms(), 1);
  // A huge weight on a modest value is just as far out of range.
  EXPECT_FALSE(sum.Add(MakeF32({4}, std::vector<float>{1, 1, 1, 1}), 1e13, "q.lora_B").ok());
  EXPECT_EQ(sum.Scaled(1.0), before);
}

TEST(ExactSumTest, AddEachIsAllOrNothingAcrossTensorsAndThreads) {
  std::mt19937_64 rng(4);
  const std::int64_t n = 1 << 18;  // Large enough to split across threads.
  std::vector<float> good = RandomValues(static_cast<std::size_t>(n), rng);
  std::vector<float> bad = good;
  bad[static_cast<std::size_t>(n - 3)] = std::numeric_limits<float>::infinity();
  const Tensor x = MakeF32({n}, good), y = MakeF32({n}, bad);
  ExactSum s1({n}), s2({n});
  ASSERT_TRUE(s1.Add(x, 2.0, "x").ok());
  const std::vector<double> before1 = s1.Scaled(1.0), before2 = s2.Scaled(1.0);
  const std::vector<ExactSum::Job> jobs = {{&s1, &x, "x"}, {&s2, &y, "y"}};
  const Status s = ExactSum::AddEach(jobs, 1.5, 4);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'y'"), std::string::npos) << s.message();
  EXPECT_EQ(s1.Scaled(1.0), before1);
  EXPECT_EQ(s2.Scaled(1.0), before2);
}

TEST(ExactSumTest, ThreadedAndSingleThreadedFoldsAgreeBitForBit) {
  std::mt19937_64 rng(5);
  const std::int64_t n = (1 << 18) + 11;
  const Tensor x = MakeF32({n}, RandomValues(static_cast<std::size_t>(n), rng));
  const Tensor y = MakeF32({n}, RandomValues(static_cast<std::size_t>(n), rng));
  ExactSum a1({n}), b1({n}), a4({n}), b4({n});
  ASSERT_TRUE(
      ExactSum::AddEach(std::vector<ExactSum::Job>{{&a1, &x, "x"}, {&b1, &y, "y"}}, 0.25, 1).ok());
  ASSERT_TRUE(
      ExactSum::AddEach(std::vector<ExactSum::Job>{{&a4, &x, "x"}, {&b4, &y, "y"}}, 0.25, 4).ok());
  EXPECT_EQ(Bits(a1.Scaled(1.0)), Bits(a4.Scaled(1.0)));
  EXPECT_EQ(Bits(b1.Scaled(1.0)), Bits(b4.Scaled(1.0)));
}

TEST(WeightedSumsTest, MeansDivideEachTensorByTheWeightThatReachedIt) {
  WeightedSums sums;
  const Tensor one = MakeF32({2}, std::vector<float>{1, 2});
  const Tensor three = MakeF32({2}, std::vector<float>{3, 6});
  ASSERT_TRUE(
      sums.Fold(std::vector<WeightedSums::Term>{{"p", &one, 1.0}, {"q", &one, 1.0}}, "a").ok());
  ASSERT_TRUE(sums.Fold(std::vector<WeightedSums::Term>{{"p", &three, 3.0}}, "b").ok());
  const TensorMap means = sums.Means(DType::kF64).value();
  EXPECT_EQ(ToDoubles(means.at("p")),
            (std::vector<double>{2.5, 5.0}));  // (1 + 9) / 4, (2 + 18) / 4
  EXPECT_EQ(ToDoubles(means.at("q")), (std::vector<double>{1.0, 2.0}));
  EXPECT_EQ(sums.WeightOf("p"), 4.0);
}

TEST(WeightedSumsTest, AFailedFoldLeavesNoTraceOfTheUpload) {
  WeightedSums sums;
  const Tensor ok = MakeF32({2}, std::vector<float>{1, 2});
  const Tensor bad = MakeF32({2}, std::vector<float>{1, std::nanf("")});
  ASSERT_TRUE(sums.Fold(std::vector<WeightedSums::Term>{{"p", &ok, 1.0}}, "a").ok());
  const Status s =
      sums.Fold(std::vector<WeightedSums::Term>{{"p", &ok, 2.0}, {"q", &bad, 2.0}}, "b");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("client b"), std::string::npos) << s.message();
  EXPECT_EQ(sums.WeightOf("p"), 1.0);
  EXPECT_EQ(sums.WeightOf("q"), 0.0);
  EXPECT_EQ(ToDoubles(sums.Means(DType::kF64).value().at("p")), (std::vector<double>{1.0, 2.0}));
}

}  // namespace
}  // namespace fedlora::server
