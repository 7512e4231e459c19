// WeightedSum, the product norms, and the FedAvg/FFA/FedSA averaging properties of
// ALGORITHMS.md §1(f) and §4(f).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "common/lora/factor_math.h"
#include "tests/lora/lora_test_util.h"

namespace fedlora::lora {
namespace {

using namespace lora_test;  // NOLINT: test helpers.

TEST(WeightedSumTest, SumsTheWeightedTensorsWithoutTouchingThem) {
  const std::vector<at::Tensor> xs = {RandN(3, 4, 1), RandN(3, 4, 2), RandN(3, 4, 3)};
  const std::vector<at::Tensor> before = Clones(xs);
  const std::vector<double> w = {0.5, -1.25, 2.0};
  ASSERT_OK_AND_ASSIGN(const at::Tensor sum, WeightedSum(xs, w));
  EXPECT_LE(MaxAbsDiff(sum, 0.5 * xs[0] - 1.25 * xs[1] + 2.0 * xs[2]), 1e-14);
  EXPECT_EQ(sum.scalar_type(), at::kDouble);
  EXPECT_TRUE(AllEqual(xs, before));
  // A single input still yields a new tensor, never an alias.
  ASSERT_OK_AND_ASSIGN(at::Tensor one, WeightedSum(std::span<const at::Tensor>(xs.data(), 1),
                                                   std::vector<double>{1.0}));
  one.fill_(0.0);
  EXPECT_TRUE(at::equal(xs[0], before[0]));
}

TEST(WeightedSumTest, PromotesMixedDtypesAndWidensHalfPrecision) {
  const std::vector<at::Tensor> mixed = {RandN(2, 2, 4).to(at::kFloat), RandN(2, 2, 5)};
  ASSERT_OK_AND_ASSIGN(const at::Tensor sum, WeightedSum(mixed, std::vector<double>{1, 1}));
  EXPECT_EQ(sum.scalar_type(), at::kDouble);
  const std::vector<at::Tensor> halves = {RandN(2, 2, 6).to(at::kBFloat16),
                                          RandN(2, 2, 7).to(at::kHalf)};
  ASSERT_OK_AND_ASSIGN(const at::Tensor wide, WeightedSum(halves, std::vector<double>{1, 1}));
  EXPECT_EQ(wide.scalar_type(), at::kFloat);
}

TEST(WeightedSumTest, RejectsMismatchedShapesCountsAndWeightsNamingTheCulprit) {
  const std::vector<at::Tensor> xs = {RandN(3, 4, 1), RandN(4, 3, 2)};
  const Result<at::Tensor> bad_shape = WeightedSum(xs, std::vector<double>{0.5, 0.5});
  EXPECT_EQ(bad_shape.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_shape.status().message().find("xs[1]"), std::string::npos)
      << bad_shape.status().message();
  EXPECT_EQ(WeightedSum(xs, std::vector<double>{1.0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(WeightedSum({}, {}).status().code(), StatusCode::kInvalidArgument);
  const std::vector<at::Tensor> ok = {RandN(3, 4, 1), RandN(3, 4, 2)};
  EXPECT_EQ(WeightedSum(ok, std::vector<double>{0.5, std::nan("")}).status().code(),
            StatusCode::kInvalidArgument);
  const std::vector<at::Tensor> ints = {at::ones({2}, at::kLong)};
  EXPECT_EQ(WeightedSum(ints, std::vector<double>{1.0}).status().code(),
            StatusCode::kInvalidArgument);
}

// §1(f): E = Σ p_k B_k A_k − B̄Ā = Σ p_k (B_k − B̄)(A_k − Ā) when Σ p_k = 1.
void ExpectFedAvgErrorIsTheCovariance(std::span<const double> p) {
  const Clients c = MakeClients(static_cast<std::int64_t>(p.size()), 3, 11);
  const at::Tensor a_bar = Mean(c.As, p);
  const at::Tensor b_bar = Mean(c.Bs, p);
  const at::Tensor e = DenseWeightedProduct(c, p) - at::matmul(b_bar, a_bar);
  at::Tensor covariance = at::zeros_like(e);
  for (std::size_t k = 0; k < p.size(); ++k) {
    covariance += p[k] * at::matmul(c.Bs[k] - b_bar, c.As[k] - a_bar);
  }
  EXPECT_LE(MaxAbsDiff(e, covariance), 1e-12);
  EXPECT_GT(FrobeniusNorm(e), 0.1);  // FedAvg of factors is inexact in general.
}

TEST(FedAvgErrorTest, UniformErrorEqualsTheWeightedFactorCovarianceAndIsNonzero) {
  ExpectFedAvgErrorIsTheCovariance(Uniform(4));
}

TEST(FedAvgErrorTest, SampleWeightedErrorEqualsTheWeightedFactorCovarianceAndIsNonzero) {
  const std::vector<double> n = {120, 40, 300, 7};
  std::vector<double> p;
  for (double n_k : n) p.push_back(n_k / 467.0);
  ExpectFedAvgErrorIsTheCovariance(p);
}

TEST(FedAvgErrorTest, ASharedAMakesTheAverageExactAsInFfaLora) {
  Clients c = MakeClients(3, 2, 12);
  for (at::Tensor& a : c.As) a = c.As[0].clone();
  const std::vector<double> p = {0.2, 0.3, 0.5};
  const at::Tensor b_bar = Mean(c.Bs, p);
  EXPECT_LE(MaxAbsDiff(DenseWeightedProduct(c, p), at::matmul(b_bar, c.As[0])), 1e-13);
}

TEST(FedSaTest, AverageOfAIsTheWeightedMeanAndLeavesEveryBUntouched) {
  const Clients c = MakeClients(3, 2, 13);
  const std::vector<at::Tensor> b_before = Clones(c.Bs);
  const std::vector<double> p = {0.25, 0.25, 0.5};
  const at::Tensor a_bar = Mean(c.As, p);
  EXPECT_LE(MaxAbsDiff(a_bar, 0.25 * c.As[0] + 0.25 * c.As[1] + 0.5 * c.As[2]), 1e-15);
  EXPECT_TRUE(AllEqual(c.Bs, b_before));  // B_k stays personal and byte-identical.
  // Client k's personalised update is s·B_k·Ā.
  const double s = 2.0;
  const at::Tensor w0 = RandN(kDOut, kDIn, 14);
  const at::Tensor w1 = w0 + s * at::matmul(c.Bs[1], a_bar);
  EXPECT_LE(MaxAbsDiff(w1 - w0, s * at::matmul(c.Bs[1], a_bar)), 1e-14);
}

TEST(ProductNormTest, FrobeniusNormAndInnerProductMatchTheDenseProducts) {
  const at::Tensor b1 = RandN(kDOut, 3, 21), a1 = RandN(3, kDIn, 22);
  const at::Tensor b2 = RandN(kDOut, 5, 23), a2 = RandN(5, kDIn, 24);
  ASSERT_OK_AND_ASSIGN(const double norm, ProductFrobeniusNorm(b1, a1));
  EXPECT_NEAR(norm, FrobeniusNorm(at::matmul(b1, a1)), 1e-12 * norm);
  ASSERT_OK_AND_ASSIGN(const double inner, ProductInner(b1, a1, b2, a2));
  const double dense = (at::matmul(b1, a1) * at::matmul(b2, a2)).sum().item<double>();
  EXPECT_NEAR(inner, dense, 1e-12 * norm * norm);
  ASSERT_OK_AND_ASSIGN(const double zero, ProductFrobeniusNorm(at::zeros({kDOut, 2}, at::kDouble),
                                                               RandN(2, kDIn, 25)));
  EXPECT_EQ(zero, 0.0);
  EXPECT_EQ(ProductFrobeniusNorm(b1, a2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ProductInner(b1, a1, b2, a1).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::lora
