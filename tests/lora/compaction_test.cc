// Lossless compaction and truncated SVD in factor space: ALGORITHMS.md §10 (recompress) and
// §2(e) (fedex_svd_truncation, Eckart–Young).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/lora/factor_math.h"
#include "tests/lora/lora_test_util.h"

namespace fedlora::lora {
namespace {

using namespace lora_test;  // NOLINT: test helpers.

std::vector<FactorPair> RandomPairs(std::span<const std::int64_t> ranks, std::uint64_t seed) {
  std::vector<FactorPair> pairs;
  for (std::size_t t = 0; t < ranks.size(); ++t) {
    pairs.push_back(FactorPair{RandN(kDOut, ranks[t], seed + 2 * t),
                               RandN(ranks[t], kDIn, seed + 2 * t + 1)});
  }
  return pairs;
}

at::Tensor DenseSum(std::span<const FactorPair> pairs) {
  at::Tensor m = at::zeros({pairs[0].B.size(0), pairs[0].A.size(1)}, at::kDouble);
  for (const FactorPair& p : pairs) m += at::matmul(p.B, p.A);
  return m;
}

void ExpectOrthonormalLayout(const FactorPair& p, std::span<const double> sigma) {
  const std::int64_t k = p.B.size(1);
  // V* has orthonormal rows; U* has orthogonal columns whose norms are the singular values.
  EXPECT_LE(MaxAbsDiff(at::matmul(p.A, p.A.t()), at::eye(k, at::kDouble)), 1e-12);
  const at::Tensor gram = at::matmul(p.B.t(), p.B);
  for (std::int64_t i = 0; i < k; ++i) {
    EXPECT_NEAR(std::sqrt(gram[i][i].item<double>()), sigma[static_cast<std::size_t>(i)],
                1e-10 * sigma[0]);
  }
}

TEST(CompactTest, CompactionIsLosslessWithTheDenseSingularValues) {
  const std::vector<std::int64_t> ranks = {1, 2, 1};  // K = 4 < min(d_out, d_in) = 7.
  const std::vector<FactorPair> pairs = RandomPairs(ranks, 51);
  ASSERT_OK_AND_ASSIGN(const FactorPair compact, Compact(pairs));
  const at::Tensor dense = DenseSum(pairs);
  EXPECT_LE(MaxAbsDiff(Product(compact), dense), kTol);
  EXPECT_EQ(compact.B.size(1), 4);
  EXPECT_EQ(compact.A.sizes(), (std::vector<std::int64_t>{4, kDIn}));
  const std::vector<double> sigma = SingularValues(dense);
  const std::vector<double> compact_sigma = SingularValues(Product(compact));
  for (std::size_t i = 0; i < 4; ++i) EXPECT_NEAR(compact_sigma[i], sigma[i], 1e-10 * sigma[0]);
  ExpectOrthonormalLayout(compact, sigma);
}

TEST(CompactTest, RankIsCappedAtTheSmallerDimension) {
  const std::vector<std::int64_t> ranks = {4, 4, 4};  // K = 12 > d_in = 7.
  const std::vector<FactorPair> pairs = RandomPairs(ranks, 52);
  ASSERT_OK_AND_ASSIGN(const FactorPair compact, Compact(pairs));
  EXPECT_EQ(compact.B.size(1), kDIn);
  EXPECT_LE(MaxAbsDiff(Product(compact), DenseSum(pairs)), kTol);
}

TEST(CompactTest, DropsDirectionsThatCancel) {
  std::vector<FactorPair> pairs = RandomPairs(std::vector<std::int64_t>{3, 2}, 53);
  // Add the negation of the first pair and a copy of the second: the sum is 2·B_2·A_2, rank 2.
  pairs.push_back(FactorPair{-pairs[0].B, pairs[0].A});
  pairs.push_back(FactorPair{pairs[1].B.clone(), pairs[1].A.clone()});
  ASSERT_OK_AND_ASSIGN(const FactorPair compact, Compact(pairs));
  EXPECT_EQ(compact.B.size(1), 2);
  EXPECT_LE(MaxAbsDiff(Product(compact), 2 * at::matmul(pairs[1].B, pairs[1].A)), kTol);
}

TEST(CompactTest, TwoRoundsOfCompactionStayLossless) {
  const std::vector<FactorPair> round1 = RandomPairs(std::vector<std::int64_t>{2, 1}, 54);
  const std::vector<FactorPair> round2 = RandomPairs(std::vector<std::int64_t>{1, 2}, 55);
  ASSERT_OK_AND_ASSIGN(const FactorPair c1, Compact(round1));
  std::vector<FactorPair> next = {c1};
  next.insert(next.end(), round2.begin(), round2.end());
  ASSERT_OK_AND_ASSIGN(const FactorPair c2, Compact(next));
  EXPECT_EQ(c2.B.size(1), std::min<std::int64_t>(kDIn, 6));
  EXPECT_LE(MaxAbsDiff(Product(c2), DenseSum(round1) + DenseSum(round2)), kTol);
}

TEST(CompactTest, ZeroAndRankZeroInputGiveARankZeroPairOfTheRightShape) {
  const std::vector<FactorPair> empty_ranks = {
      FactorPair{at::zeros({kDOut, 0}, at::kDouble), at::zeros({0, kDIn}, at::kDouble)}};
  ASSERT_OK_AND_ASSIGN(const FactorPair rank0, Compact(empty_ranks));
  EXPECT_EQ(rank0.B.sizes(), (std::vector<std::int64_t>{kDOut, 0}));
  EXPECT_EQ(rank0.A.sizes(), (std::vector<std::int64_t>{0, kDIn}));
  const std::vector<FactorPair> zeros = {
      FactorPair{at::zeros({kDOut, 3}, at::kDouble), RandN(3, kDIn, 56)}};
  ASSERT_OK_AND_ASSIGN(const FactorPair zero, Compact(zeros));
  EXPECT_EQ(zero.B.sizes(), (std::vector<std::int64_t>{kDOut, 0}));
  EXPECT_EQ(zero.A.sizes(), (std::vector<std::int64_t>{0, kDIn}));
  EXPECT_EQ(Compact({}).status().code(), StatusCode::kInvalidArgument);
}

TEST(CompactTest, RejectsInconsistentPairsNamingTheIndex) {
  std::vector<FactorPair> pairs = RandomPairs(std::vector<std::int64_t>{2, 2}, 57);
  pairs[1].A = RandN(2, kDOut, 58);
  const Result<FactorPair> bad = Compact(pairs);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("pairs[1]"), std::string::npos) << bad.status().message();
  EXPECT_EQ(Compact(RandomPairs(std::vector<std::int64_t>{2}, 59), 1.5).status().code(),
            StatusCode::kInvalidArgument);
  std::vector<FactorPair> nan_pairs = RandomPairs(std::vector<std::int64_t>{2}, 60);
  nan_pairs[0].B[0][0] = std::nan("");
  EXPECT_EQ(Compact(nan_pairs).status().code(), StatusCode::kInvalidArgument);
}

TEST(CompactTest, SinglePrecisionCompactionIsAccurateToFloatRounding) {
  const std::vector<FactorPair> pairs = RandomPairs(std::vector<std::int64_t>{2, 2, 2}, 63);
  std::vector<FactorPair> floats;
  for (const FactorPair& p : pairs) floats.push_back({p.B.to(at::kFloat), p.A.to(at::kFloat)});
  ASSERT_OK_AND_ASSIGN(const FactorPair compact, Compact(floats, 1e-6));
  EXPECT_EQ(compact.B.scalar_type(), at::kFloat);
  EXPECT_EQ(compact.B.size(1), 6);
  const at::Tensor dense = DenseSum(pairs);
  EXPECT_LE(FrobeniusNorm(Product(compact).to(at::kDouble) - dense), 1e-5 * FrobeniusNorm(dense));
}

TEST(TruncatedSvdTest, FactorSpaceTruncationEqualsTheDenseTruncatedSvd) {
  const std::vector<FactorPair> pairs = RandomPairs(std::vector<std::int64_t>{2, 2, 2}, 61);
  const at::Tensor m = DenseSum(pairs);  // Rank 6.
  auto [u, s, vh] = at::linalg_svd(m, /*full_matrices=*/false);
  const std::vector<double> sigma = SingularValues(m);
  for (std::int64_t k : {1, 3, 5}) {
    SCOPED_TRACE(k);
    ASSERT_OK_AND_ASSIGN(const FactorPair trunc, TruncatedSvd(pairs, k));
    EXPECT_EQ(trunc.B.size(1), k);
    const at::Tensor dense_k =
        at::matmul(u.narrow(1, 0, k) * s.narrow(0, 0, k).unsqueeze(0), vh.narrow(0, 0, k));
    EXPECT_LE(MaxAbsDiff(Product(trunc), dense_k), kTol);
    // Eckart–Young: ‖M − M_k‖_F² = Σ_{i>k} σ_i².
    double tail = 0;
    for (std::size_t i = static_cast<std::size_t>(k); i < sigma.size(); ++i) tail += sigma[i] * sigma[i];
    const double err = FrobeniusNorm(m - Product(trunc));
    EXPECT_NEAR(err * err, tail, 1e-10 * sigma[0] * sigma[0]);
    ExpectOrthonormalLayout(trunc, sigma);
  }
}

TEST(TruncatedSvdTest, RankZeroIsEmptyAndOversizedRanksAreLossless) {
  const std::vector<FactorPair> pairs = RandomPairs(std::vector<std::int64_t>{2, 1}, 62);
  ASSERT_OK_AND_ASSIGN(const FactorPair none, TruncatedSvd(pairs, 0));
  EXPECT_EQ(none.B.sizes(), (std::vector<std::int64_t>{kDOut, 0}));
  ASSERT_OK_AND_ASSIGN(const FactorPair all, TruncatedSvd(pairs, 50));
  EXPECT_EQ(all.B.size(1), 3);
  EXPECT_LE(MaxAbsDiff(Product(all), DenseSum(pairs)), kTol);
  EXPECT_EQ(TruncatedSvd(pairs, -1).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::lora
