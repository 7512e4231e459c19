// FedEx-LoRA residual factors: ALGORITHMS.md §2(f) (fedex, fedex_weighted, fedex_two_rounds) and
// the arbitrary-globals and late-joiner notes of §2(j) and §10.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "common/lora/factor_math.h"
#include "tests/lora/lora_test_util.h"

namespace fedlora::lora {
namespace {

using namespace lora_test;  // NOLINT: test helpers.

constexpr double kFedExScale = 2.5;  // s = α/r, deliberately not 1.

struct FedExRound {
  at::Tensor a_bar, b_bar;
  FactorPair residual;
};

FedExRound RunFedExRound(const Clients& c, std::span<const double> p) {
  FedExRound round;
  round.a_bar = Mean(c.As, p);
  round.b_bar = Mean(c.Bs, p);
  Result<FactorPair> residual =
      FedExResidual(c.As, c.Bs, p, kFedExScale, round.a_bar, round.b_bar);
  FEDLORA_CHECK_MSG(residual.ok(), residual.status().ToString());
  round.residual = std::move(residual).value();
  return round;
}

TEST(FedExResidualTest, ResidualMakesTheGlobalUpdateExact) {
  const Clients c = MakeClients(3, 2, 31);
  const std::vector<at::Tensor> a_before = Clones(c.As), b_before = Clones(c.Bs);
  const std::vector<double> p = Uniform(3);
  const FedExRound round = RunFedExRound(c, p);
  const at::Tensor w0 = RandN(kDOut, kDIn, 32);
  const at::Tensor w1 = w0 + Product(round.residual);
  // W1 + s·B̄Ā = W0 + s·Σ p_k B_k A_k.
  EXPECT_LE(MaxAbsDiff(w1 + kFedExScale * at::matmul(round.b_bar, round.a_bar),
                       w0 + kFedExScale * DenseWeightedProduct(c, p)),
            kTol);
  // U V = s·R with R = Σ p_k B_k A_k − B̄Ā.
  const at::Tensor r = DenseWeightedProduct(c, p) - at::matmul(round.b_bar, round.a_bar);
  EXPECT_LE(MaxAbsDiff(Product(round.residual), kFedExScale * r), kTol);
  EXPECT_GT(FrobeniusNorm(r), 0.1);
  EXPECT_TRUE(AllEqual(c.As, a_before));
  EXPECT_TRUE(AllEqual(c.Bs, b_before));
}

TEST(FedExResidualTest, ResidualHasTheTightRankNMinusOneTimesR) {
  const std::int64_t n = 3, r = 2;
  const Clients c = MakeClients(n, r, 33);
  const FedExRound round = RunFedExRound(c, Uniform(3));
  EXPECT_EQ(round.residual.B.sizes(), (std::vector<std::int64_t>{kDOut, (n - 1) * r}));
  EXPECT_EQ(round.residual.A.sizes(), (std::vector<std::int64_t>{(n - 1) * r, kDIn}));
  // The bound is attained for generic factors: rank(R) = (N−1)r = 4 < min(d_out, d_in) = 7.
  EXPECT_EQ(NumericalRank(Product(round.residual)), (n - 1) * r);
  // The tight factors are exactly U = [B_k − B_N], V = [p_k (A_k − Ā)] (in that order).
  EXPECT_LE(MaxAbsDiff(round.residual.B.narrow(1, 0, r), kFedExScale * (c.Bs[0] - c.Bs[2])),
            1e-14);
  EXPECT_LE(MaxAbsDiff(round.residual.A.narrow(0, 2, r), (c.As[1] - round.a_bar) / 3.0), 1e-14);
}

TEST(FedExResidualTest, SampleWeightsAreExactWhenTheSameWeightsMakeTheMeans) {
  const Clients c = MakeClients(4, 3, 34);
  const std::vector<double> n = {500, 20, 180, 300};
  std::vector<double> p;
  for (double n_k : n) p.push_back(n_k / 1000.0);
  const FedExRound round = RunFedExRound(c, p);
  EXPECT_EQ(round.residual.B.size(1), 3 * 3);
  const at::Tensor w0 = RandN(kDOut, kDIn, 35);
  EXPECT_LE(MaxAbsDiff(w0 + Product(round.residual) +
                           kFedExScale * at::matmul(round.b_bar, round.a_bar),
                       w0 + kFedExScale * DenseWeightedProduct(c, p)),
            kTol);
}

TEST(FedExResidualTest, WeightsThatSumToOneOnlyUpToRoundingKeepTheTightRank) {
  const Clients c = MakeClients(3, 2, 52);
  const std::vector<double> p = {1.0 / 6.0, 4.0 / 6.0, 1.0 / 6.0};  // Σ = 1 − 2^-53 in double.
  ASSERT_NE(p[0] + p[1] + p[2], 1.0);
  const FedExRound round = RunFedExRound(c, p);
  EXPECT_EQ(round.residual.B.size(1), (3 - 1) * 2);
  EXPECT_LE(MaxAbsDiff(Product(round.residual),
                       kFedExScale * (DenseWeightedProduct(c, p) -
                                      at::matmul(round.b_bar, round.a_bar))),
            kTol);
}

TEST(FedExResidualTest, UnnormalisedWeightsStayExact) {
  const Clients c = MakeClients(3, 2, 36);
  const std::vector<double> w = {3.0, 1.0, 0.5};  // Σ = 4.5: e.g. raw example counts.
  const FedExRound round = RunFedExRound(c, w);
  EXPECT_LE(MaxAbsDiff(Product(round.residual),
                       kFedExScale * (DenseWeightedProduct(c, w) -
                                      at::matmul(round.b_bar, round.a_bar))),
            kTol);
  EXPECT_LE(round.residual.B.size(1), 3 * 2);  // (N−1)r + r for the folded c·B_N·Ā term.
}

TEST(FedExResidualTest, AbsorbsF32RoundedGlobalsExactly) {
  const Clients c = MakeClients(3, 2, 37);
  const std::vector<double> p = Uniform(3);
  // The coordinator sends f32 globals; the residual must make exactly what it sends exact.
  const at::Tensor a_g = Mean(c.As, p).to(at::kFloat);
  const at::Tensor b_g = Mean(c.Bs, p).to(at::kFloat);
  ASSERT_OK_AND_ASSIGN(const FactorPair residual,
                       FedExResidual(c.As, c.Bs, p, kFedExScale, a_g, b_g));
  EXPECT_EQ(residual.B.scalar_type(), at::kDouble);  // Promoted: one f64 input makes it f64.
  const at::Tensor a64 = a_g.to(at::kDouble), b64 = b_g.to(at::kDouble);
  const at::Tensor w0 = RandN(kDOut, kDIn, 38);
  EXPECT_LE(MaxAbsDiff(w0 + Product(residual) + kFedExScale * at::matmul(b64, a64),
                       w0 + kFedExScale * DenseWeightedProduct(c, p)),
            kTol);
  EXPECT_EQ(residual.B.size(1), (3 - 1) * 2 + 2 * 2);  // (N+1)r: both globals differ.
  // Only B rounded: one extra block of r columns.
  ASSERT_OK_AND_ASSIGN(const FactorPair only_b,
                       FedExResidual(c.As, c.Bs, p, kFedExScale, Mean(c.As, p), b_g));
  EXPECT_EQ(only_b.B.size(1), (3 - 1) * 2 + 2);
  EXPECT_LE(MaxAbsDiff(Product(only_b), kFedExScale * (DenseWeightedProduct(c, p) -
                                                       at::matmul(b64, Mean(c.As, p)))),
            kTol);
}

TEST(FedExResidualTest, AbsorbsArbitraryGlobalsOfAnotherRank) {
  const Clients c = MakeClients(3, 2, 39);
  const std::vector<double> p = {0.5, 0.25, 0.25};
  const at::Tensor a_g = RandN(4, kDIn, 40), b_g = RandN(kDOut, 4, 41);
  ASSERT_OK_AND_ASSIGN(const FactorPair residual,
                       FedExResidual(c.As, c.Bs, p, kFedExScale, a_g, b_g));
  EXPECT_LE(MaxAbsDiff(Product(residual),
                       kFedExScale * (DenseWeightedProduct(c, p) - at::matmul(b_g, a_g))),
            kTol);
  EXPECT_EQ(residual.B.size(1), (3 - 1) * 2 + 2 + 4);
}

TEST(FedExResidualTest, ASingleClientAtItsOwnFactorsNeedsNoResidual) {
  const Clients c = MakeClients(1, 3, 42);
  ASSERT_OK_AND_ASSIGN(const FactorPair residual,
                       FedExResidual(c.As, c.Bs, std::vector<double>{1.0}, kFedExScale, c.As[0],
                                     c.Bs[0]));
  EXPECT_EQ(residual.B.sizes(), (std::vector<std::int64_t>{kDOut, 0}));
  EXPECT_EQ(residual.A.sizes(), (std::vector<std::int64_t>{0, kDIn}));
}

TEST(FedExResidualTest, TwoRoundsReplayFromTheFactorLogEqualsTheDenseBase) {
  const at::Tensor w0 = RandN(kDOut, kDIn, 43);
  // Round 1: three clients. Round 2: two different clients (partial participation).
  const Clients c1 = MakeClients(3, 2, 44);
  const Clients c2 = MakeClients(2, 2, 45);
  const FedExRound r1 = RunFedExRound(c1, Uniform(3));
  const FedExRound r2 = RunFedExRound(c2, std::vector<double>{0.7, 0.3});
  const at::Tensor w1 = w0 + Product(r1.residual);  // What a client holds after round 1.
  const at::Tensor w2 = w1 + Product(r2.residual);
  // Replay: W0 + [U1|U2][V1;V2] = W2.
  const at::Tensor u = at::cat({r1.residual.B, r2.residual.B}, 1);
  const at::Tensor v = at::cat({r1.residual.A, r2.residual.A}, 0);
  EXPECT_LE(MaxAbsDiff(w0 + at::matmul(u, v), w2), kTol);
  // Each round is exact on its own: W2 + s·B̄2Ā2 = W1 + s·Σ p B A (round 2 clients).
  EXPECT_LE(MaxAbsDiff(w2 + kFedExScale * at::matmul(r2.b_bar, r2.a_bar),
                       w1 + kFedExScale * DenseWeightedProduct(c2, std::vector<double>{0.7, 0.3})),
            kTol);
  // A late joiner can download the compacted log instead: rank <= min(d_out, d_in, Σ(N_τ−1)r).
  const std::vector<FactorPair> log = {r1.residual, r2.residual};
  ASSERT_OK_AND_ASSIGN(const FactorPair compact, Compact(log));
  EXPECT_LE(compact.B.size(1), std::min<std::int64_t>({kDOut, kDIn, (3 - 1) * 2 + (2 - 1) * 2}));
  EXPECT_LE(MaxAbsDiff(w0 + Product(compact), w2), kTol);
}

TEST(FedExResidualTest, SinglePrecisionInputsStayInSinglePrecisionAndAreExactToRounding) {
  const Clients c = MakeClients(3, 2, 50);
  const std::vector<double> p = Uniform(3);
  std::vector<at::Tensor> as, bs;
  for (const at::Tensor& a : c.As) as.push_back(a.to(at::kFloat));
  for (const at::Tensor& b : c.Bs) bs.push_back(b.to(at::kFloat));
  const at::Tensor a_bar = Mean(as, p), b_bar = Mean(bs, p);
  ASSERT_OK_AND_ASSIGN(const FactorPair residual,
                       FedExResidual(as, bs, p, kFedExScale, a_bar, b_bar));
  EXPECT_EQ(residual.B.scalar_type(), at::kFloat);
  EXPECT_EQ(residual.B.size(1), (3 - 1) * 2);  // f32 means are recognised as the means.
  const at::Tensor want =
      kFedExScale * (DenseWeightedProduct(c, p) -
                     at::matmul(b_bar.to(at::kDouble), a_bar.to(at::kDouble)));
  // About 1e-5 relative in fp32 (ALGORITHMS.md §2f); we see ~2e-7.
  EXPECT_LE(FrobeniusNorm(Product(residual).to(at::kDouble) - want), 1e-5 * FrobeniusNorm(want));
}

TEST(FedExResidualTest, RejectsMismatchedShapesNamingTheIndex) {
  Clients c = MakeClients(3, 2, 46);
  const std::vector<double> p = Uniform(3);
  const at::Tensor a_bar = Mean(c.As, p), b_bar = Mean(c.Bs, p);
  c.Bs[1] = RandN(kDIn, 2, 47);  // Transposed d_out/d_in.
  Result<FactorPair> bad = FedExResidual(c.As, c.Bs, p, 1.0, a_bar, b_bar);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("Bs[1]"), std::string::npos) << bad.status().message();
  const Clients het = MakeClients(std::vector<std::int64_t>{2, 3, 2}, 48);
  bad = FedExResidual(het.As, het.Bs, p, 1.0, a_bar, b_bar);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("As[1]"), std::string::npos) << bad.status().message();
  const Clients ok = MakeClients(3, 2, 49);
  bad = FedExResidual(ok.As, ok.Bs, p, 1.0, a_bar.t(), b_bar);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(FedExResidual(ok.As, ok.Bs, Uniform(2), 1.0, a_bar, b_bar).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(FedExResidual(ok.As, ok.Bs, p, std::nan(""), a_bar, b_bar).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::lora
