// FLoRA stacking (ALGORITHMS.md §3(f): flora_homogeneous, flora_heterogeneous,
// flora_heter_unequal_scaling) and HetLoRA padding, truncation and weights (§7(f): hetlora).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "common/lora/factor_math.h"
#include "tests/lora/lora_test_util.h"

namespace fedlora::lora {
namespace {

using namespace lora_test;  // NOLINT: test helpers.

// s_g·B_stack·A_stack = Σ p_k s_k B_k A_k, and the stacked rank is Σ r_k.
void ExpectStackIsExact(const Clients& c, std::span<const double> p, std::span<const double> s_k,
                        double s_g) {
  const std::vector<at::Tensor> a_before = Clones(c.As), b_before = Clones(c.Bs);
  ASSERT_OK_AND_ASSIGN(const FactorPair stack, Stack(c.As, c.Bs, p, s_k, s_g));
  std::vector<double> ps(p.size());
  for (std::size_t k = 0; k < p.size(); ++k) ps[k] = p[k] * s_k[k];
  const at::Tensor target = DenseWeightedProduct(c, ps);
  EXPECT_LE(MaxAbsDiff(s_g * Product(stack), target), kTol);
  std::int64_t rank_sum = 0;
  for (const at::Tensor& a : c.As) rank_sum += a.size(0);
  EXPECT_EQ(stack.B.sizes(), (std::vector<std::int64_t>{kDOut, rank_sum}));
  EXPECT_EQ(stack.A.sizes(), (std::vector<std::int64_t>{rank_sum, kDIn}));
  // W^{t+1} = W^t + that.
  const at::Tensor w = RandN(kDOut, kDIn, 70);
  EXPECT_LE(MaxAbsDiff(w + s_g * Product(stack), w + target), kTol);
  // Blocks in the given order: B unscaled, A scaled by p_k s_k / s_g.
  std::int64_t offset = 0;
  for (std::size_t k = 0; k < c.As.size(); ++k) {
    const std::int64_t r_k = c.As[k].size(0);
    EXPECT_TRUE(at::equal(stack.B.narrow(1, offset, r_k), c.Bs[k]));
    EXPECT_LE(MaxAbsDiff(stack.A.narrow(0, offset, r_k), c.As[k] * (p[k] * s_k[k] / s_g)), 1e-15);
    offset += r_k;
  }
  EXPECT_TRUE(AllEqual(c.As, a_before));
  EXPECT_TRUE(AllEqual(c.Bs, b_before));
}

TEST(StackTest, HomogeneousStackIsExactWithRankSumOfClientRanks) {
  const Clients c = MakeClients(3, 2, 71);
  const std::vector<double> s(3, 2.0);
  ExpectStackIsExact(c, std::vector<double>{0.5, 0.3, 0.2}, s, 2.0);
}

TEST(StackTest, HeterogeneousRanksStackExactly) {
  const Clients c = MakeClients(std::vector<std::int64_t>{4, 2, 1, 1}, 72);
  const std::vector<double> s(4, 2.0);  // α_k = 2 r_k: s = 2 everywhere, as in the reference.
  ExpectStackIsExact(c, Uniform(4), s, 2.0);
}

TEST(StackTest, UnequalClientScalesAreFoldedIntoA) {
  const Clients c = MakeClients(std::vector<std::int64_t>{3, 1, 2}, 73);
  ExpectStackIsExact(c, std::vector<double>{0.2, 0.5, 0.3}, std::vector<double>{2.0, 0.5, 1.0 / 1.4142135623730951},
                     0.75);
}

TEST(StackTest, PartialParticipationIsJustFewerBlocks) {
  const Clients all = MakeClients(std::vector<std::int64_t>{2, 3, 1}, 74);
  Clients two;
  two.As = {all.As[0], all.As[2]};
  two.Bs = {all.Bs[0], all.Bs[2]};
  ExpectStackIsExact(two, std::vector<double>{0.6, 0.4}, std::vector<double>{1.0, 1.0}, 1.0);
}

TEST(StackTest, RejectsBadScalesAndShapes) {
  Clients c = MakeClients(2, 2, 75);
  const std::vector<double> p = {0.5, 0.5}, s = {1.0, 1.0};
  EXPECT_EQ(Stack(c.As, c.Bs, p, s, 0.0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Stack(c.As, c.Bs, p, std::vector<double>{1.0}, 1.0).status().code(),
            StatusCode::kInvalidArgument);
  c.Bs[1] = RandN(kDOut, 3, 76);  // Rank disagrees with As[1].
  const Result<FactorPair> bad = Stack(c.As, c.Bs, p, s, 1.0);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("Bs[1]"), std::string::npos) << bad.status().message();
  EXPECT_EQ(Stack({}, {}, {}, {}, 1.0).status().code(), StatusCode::kInvalidArgument);
}

// HetLoRA server step (§7c) written with the library's pieces.
struct HetLoraGlobal {
  std::vector<double> p;
  at::Tensor a_g, b_g;
};
HetLoraGlobal HetLoraAggregate(const Clients& c, std::int64_t r_max) {
  HetLoraGlobal g;
  std::vector<double> sigma;
  for (std::size_t k = 0; k < c.As.size(); ++k) {
    Result<double> norm = ProductFrobeniusNorm(c.Bs[k], c.As[k]);
    FEDLORA_CHECK(norm.ok());
    sigma.push_back(*norm);
  }
  const double total = std::accumulate(sigma.begin(), sigma.end(), 0.0);
  std::vector<at::Tensor> padded_a, padded_b;
  for (std::size_t k = 0; k < c.As.size(); ++k) {
    g.p.push_back(sigma[k] / total);
    padded_a.push_back(PadRows(c.As[k], r_max).value());
    padded_b.push_back(PadCols(c.Bs[k], r_max).value());
  }
  g.a_g = Mean(padded_a, g.p);
  g.b_g = Mean(padded_b, g.p);
  return g;
}

TEST(HetLoraTest, NormWeightsSumToOneAndFavourLargerUpdates) {
  Clients c = MakeClients(std::vector<std::int64_t>{4, 2, 3}, 81);
  c.Bs[1] = c.Bs[1] * 10.0;
  const HetLoraGlobal g = HetLoraAggregate(c, 4);
  EXPECT_NEAR(std::accumulate(g.p.begin(), g.p.end(), 0.0), 1.0, 1e-15);
  EXPECT_GT(g.p[1], g.p[0]);
  EXPECT_GT(g.p[1], g.p[2]);
}

TEST(HetLoraTest, ZeroPaddingLetsOnlyTheHighRankClientFillTheTail) {
  const Clients c = MakeClients(std::vector<std::int64_t>{4, 2, 3}, 82);
  const HetLoraGlobal g = HetLoraAggregate(c, 4);
  // Row 3 of A_g (and column 3 of B_g) only has client 0's contribution, still divided by Σp = 1.
  EXPECT_LE(MaxAbsDiff(g.a_g[3], g.p[0] * c.As[0][3]), 1e-15);
  EXPECT_LE(MaxAbsDiff(g.b_g.select(1, 3), g.p[0] * c.Bs[0].select(1, 3)), 1e-15);
  // Row 2 has clients 0 and 2.
  EXPECT_LE(MaxAbsDiff(g.a_g[2], g.p[0] * c.As[0][2] + g.p[2] * c.As[2][2]), 1e-15);
  ASSERT_OK_AND_ASSIGN(const at::Tensor padded, PadRows(c.As[1], 4));
  EXPECT_TRUE(at::equal(padded.narrow(0, 0, 2), c.As[1]));
  EXPECT_EQ(padded.narrow(0, 2, 2).abs().max().item<double>(), 0.0);
}

TEST(HetLoraTest, TruncationsArePrefixesAndPadTruncateRoundTrips) {
  const Clients c = MakeClients(std::vector<std::int64_t>{4, 2}, 83);
  const HetLoraGlobal g = HetLoraAggregate(c, 4);
  for (std::int64_t r_k : {1, 2, 4}) {
    ASSERT_OK_AND_ASSIGN(const at::Tensor a_k, TruncateRows(g.a_g, r_k));
    ASSERT_OK_AND_ASSIGN(const at::Tensor b_k, TruncateCols(g.b_g, r_k));
    EXPECT_TRUE(at::equal(a_k, g.a_g.narrow(0, 0, r_k)));
    EXPECT_TRUE(at::equal(b_k, g.b_g.narrow(1, 0, r_k)));
    EXPECT_TRUE(a_k.is_contiguous());
    EXPECT_TRUE(b_k.is_contiguous());
  }
  ASSERT_OK_AND_ASSIGN(const at::Tensor padded, PadCols(c.Bs[1], 4));
  ASSERT_OK_AND_ASSIGN(const at::Tensor back, TruncateCols(padded, 2));
  EXPECT_TRUE(at::equal(back, c.Bs[1]));
  // Truncation copies: writing the result leaves the global intact.
  ASSERT_OK_AND_ASSIGN(at::Tensor copy, TruncateRows(g.a_g, 2));
  const at::Tensor before = g.a_g.clone();
  copy.fill_(7.0);
  EXPECT_TRUE(at::equal(g.a_g, before));
}

TEST(HetLoraTest, ThePaddedWeightedAverageIsNotExact) {
  const Clients c = MakeClients(std::vector<std::int64_t>{4, 2, 3}, 84);
  const HetLoraGlobal g = HetLoraAggregate(c, 4);
  EXPECT_GT(FrobeniusNorm(at::matmul(g.b_g, g.a_g) - DenseWeightedProduct(c, g.p)), 1e-3);
}

TEST(HetLoraTest, PadAndTruncateRejectTheWrongDirection) {
  const at::Tensor a = RandN(3, kDIn, 85);
  EXPECT_EQ(PadRows(a, 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(TruncateRows(a, 4).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(TruncateRows(a, -1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PadCols(a.t(), 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(TruncateCols(a.t(), 5).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PadRows(at::ones({3}, at::kDouble), 4).status().code(), StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(const at::Tensor same, PadRows(a, 3));
  EXPECT_TRUE(at::equal(same, a));
  ASSERT_OK_AND_ASSIGN(const at::Tensor bf16, PadRows(a.to(at::kBFloat16), 5));
  EXPECT_EQ(bf16.scalar_type(), at::kBFloat16);  // Data movers keep the dtype.
}

}  // namespace
}  // namespace fedlora::lora
