// LoRA-FAIR server corrections: ALGORITHMS.md §6(f) (lora_fair): the ridge normal equations and
// cosine gradient descent, checked against a dense autograd reference.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "common/lora/factor_math.h"
#include "tests/lora/lora_test_util.h"

namespace fedlora::lora {
namespace {

using namespace lora_test;  // NOLINT: test helpers.

struct FairSetupForTest {
  Clients c;
  std::vector<double> p;
  at::Tensor a_bar, b_bar, delta_w;
};
FairSetupForTest MakeFairSetup(std::uint64_t seed) {
  FairSetupForTest s;
  s.c = MakeClients(3, 2, seed);
  s.p = {0.5, 0.3, 0.2};
  s.a_bar = Mean(s.c.As, s.p);
  s.b_bar = Mean(s.c.Bs, s.p);
  s.delta_w = DenseWeightedProduct(s.c, s.p);
  return s;
}

TEST(FairRidgeTest, DeltaBSatisfiesTheRidgeNormalEquations) {
  const FairSetupForTest s = MakeFairSetup(91);
  for (double lambda : {0.01, 1.0, 0.0}) {
    SCOPED_TRACE(lambda);
    ASSERT_OK_AND_ASSIGN(const at::Tensor delta_b,
                         FairRidgeDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, s.a_bar, lambda));
    EXPECT_EQ(delta_b.sizes(), s.b_bar.sizes());
    // (ΔW − (B̄+ΔB)Ā)Āᵀ = λΔB.
    const at::Tensor lhs = at::matmul(s.delta_w - at::matmul(s.b_bar + delta_b, s.a_bar), s.a_bar.t());
    EXPECT_LE(MaxAbsDiff(lhs, lambda * delta_b), kTol);
    EXPECT_GT(FrobeniusNorm(delta_b), 1e-3);
    // The correction can only bring the product closer to ΔW than plain FedAvg does.
    EXPECT_LE(FrobeniusNorm(s.delta_w - at::matmul(s.b_bar + delta_b, s.a_bar)),
              FrobeniusNorm(s.delta_w - at::matmul(s.b_bar, s.a_bar)));
  }
}

TEST(FairRidgeTest, RejectsNegativeLambdaAndASingularSystem) {
  const FairSetupForTest s = MakeFairSetup(92);
  EXPECT_EQ(FairRidgeDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, s.a_bar, -1.0).status().code(),
            StatusCode::kInvalidArgument);
  const at::Tensor zero_a = at::zeros_like(s.a_bar);
  EXPECT_EQ(FairRidgeDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, zero_a, 0.0).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(FairRidgeDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar.t(), s.a_bar, 0.1).status().code(),
            StatusCode::kInvalidArgument);
}

// Dense reference: the same plain gradient descent, with the gradient from autograd on the dense
// d_out x d_in objective, so neither the factor-space identities nor the hand-written gradient
// are assumed.
struct DenseFairResult {
  at::Tensor delta_b;
  double initial_objective, final_objective, initial_cosine, final_cosine;
};
DenseFairResult DenseCosineReference(const FairSetupForTest& s, double lambda, int iterations,
                                     double lr) {
  auto objective = [&](const at::Tensor& x, double* cosine) {
    const at::Tensor p = at::matmul(s.b_bar + x, s.a_bar);
    const at::Tensor cos = (p * s.delta_w).sum() / (p.norm() * s.delta_w.norm());
    *cosine = cos.item<double>();
    return 1.0 - cos + lambda * (x * x).sum();
  };
  DenseFairResult r;
  at::Tensor delta_b = at::zeros_like(s.b_bar);
  r.initial_objective = objective(delta_b, &r.initial_cosine).item<double>();
  for (int step = 0; step < iterations; ++step) {
    at::Tensor x = delta_b.detach().clone().requires_grad_(true);
    double unused;
    objective(x, &unused).backward();
    delta_b = (x - lr * x.grad()).detach();
  }
  r.final_objective = objective(delta_b, &r.final_cosine).item<double>();
  r.delta_b = delta_b;
  return r;
}

TEST(FairCosineTest, MatchesTheDenseAutogradReference) {
  const FairSetupForTest s = MakeFairSetup(93);
  const double lambda = 0.01, lr = 0.05;
  const int iterations = 200;
  ASSERT_OK_AND_ASSIGN(const FairCosineResult fair,
                       FairCosineDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, s.a_bar, lambda,
                                        iterations, lr));
  const DenseFairResult dense = DenseCosineReference(s, lambda, iterations, lr);
  EXPECT_LE(MaxAbsDiff(fair.delta_b, dense.delta_b), kTol);
  EXPECT_NEAR(fair.initial_objective, dense.initial_objective, kTol);
  EXPECT_NEAR(fair.final_objective, dense.final_objective, kTol);
  EXPECT_NEAR(fair.initial_cosine, dense.initial_cosine, kTol);
  EXPECT_NEAR(fair.final_cosine, dense.final_cosine, kTol);
}

TEST(FairCosineTest, ObjectiveDecreasesAndCosineRisesWithTheDefaultSettings) {
  const FairSetupForTest s = MakeFairSetup(94);
  // Our reference semantics: 1000 steps, lr 0.01, λ 0.01 (§6c).
  ASSERT_OK_AND_ASSIGN(const FairCosineResult fair,
                       FairCosineDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, s.a_bar, 0.01, 1000, 0.01));
  EXPECT_LT(fair.final_objective, fair.initial_objective - 1e-3);
  EXPECT_GT(fair.final_cosine, fair.initial_cosine + 1e-3);
  EXPECT_LE(fair.final_cosine, 1.0);
  // Initial cosine is that of plain FedAvg's product against the ideal update.
  const at::Tensor p0 = at::matmul(s.b_bar, s.a_bar);
  EXPECT_NEAR(fair.initial_cosine,
              (p0 * s.delta_w).sum().item<double>() / (p0.norm() * s.delta_w.norm()).item<double>(),
              1e-12);
  EXPECT_NEAR(fair.initial_objective, 1.0 - fair.initial_cosine, 1e-15);
}

TEST(FairCosineTest, ZeroIterationsReturnAZeroCorrection) {
  const FairSetupForTest s = MakeFairSetup(95);
  ASSERT_OK_AND_ASSIGN(const FairCosineResult fair,
                       FairCosineDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, s.a_bar, 0.01, 0, 0.01));
  EXPECT_EQ(fair.delta_b.abs().max().item<double>(), 0.0);
  EXPECT_EQ(fair.initial_objective, fair.final_objective);
  EXPECT_EQ(fair.initial_cosine, fair.final_cosine);
}

TEST(FairCosineTest, RejectsAnUndefinedCosineAndBadSettings) {
  FairSetupForTest s = MakeFairSetup(96);
  EXPECT_EQ(FairCosineDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, s.a_bar, 0.01, -1, 0.01).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(FairCosineDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, s.a_bar, -0.01, 5, 0.01).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(FairCosineDeltaB(s.c.As, s.c.Bs, s.p, at::zeros_like(s.b_bar), s.a_bar, 0.01, 5, 0.01)
                .status()
                .code(),
            StatusCode::kInvalidArgument);  // ‖B̄Ā‖ = 0.
  for (at::Tensor& b : s.c.Bs) b = at::zeros_like(b);
  EXPECT_EQ(FairCosineDeltaB(s.c.As, s.c.Bs, s.p, s.b_bar, s.a_bar, 0.01, 5, 0.01).status().code(),
            StatusCode::kInvalidArgument);  // ‖ΔW‖ = 0.
}

}  // namespace
}  // namespace fedlora::lora
