// lora_test_util.h — helpers shared by the factor-math tests: seeded fp64 matrices, dense
// references and comparisons. The binary is unity-built, so shared helpers live here once.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "common/lora/factor_math.h"
#include "common/status.h"

namespace fedlora::lora::lora_test {

// d_out != d_in everywhere, so a transposed layout cannot pass by accident (ALGORITHMS.md §2i).
inline constexpr std::int64_t kDOut = 10;
inline constexpr std::int64_t kDIn = 7;
inline constexpr double kTol = 1e-10;

// A seeded standard-normal f64 matrix.
inline at::Tensor RandN(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn({rows, cols}, gen, at::TensorOptions().dtype(at::kDouble));
}

// N client pairs (A_k r_k x d_in, B_k d_out x r_k) with nonzero B (as after local training).
struct Clients {
  std::vector<at::Tensor> As, Bs;
};
inline Clients MakeClients(std::span<const std::int64_t> ranks, std::uint64_t seed,
                           std::int64_t d_out = kDOut, std::int64_t d_in = kDIn) {
  Clients c;
  for (std::size_t k = 0; k < ranks.size(); ++k) {
    c.As.push_back(RandN(ranks[k], d_in, seed * 1000 + 2 * k));
    c.Bs.push_back(RandN(d_out, ranks[k], seed * 1000 + 2 * k + 1));
  }
  return c;
}
inline Clients MakeClients(std::int64_t n, std::int64_t r, std::uint64_t seed) {
  const std::vector<std::int64_t> ranks(static_cast<std::size_t>(n), r);
  return MakeClients(ranks, seed);
}

// Dense Σ_k w_k B_k A_k: the reference the factor-space code must reproduce.
inline at::Tensor DenseWeightedProduct(const Clients& c, std::span<const double> w) {
  at::Tensor m = at::zeros({c.Bs[0].size(0), c.As[0].size(1)}, at::kDouble);
  for (std::size_t k = 0; k < c.As.size(); ++k) m += w[k] * at::matmul(c.Bs[k], c.As[k]);
  return m;
}

inline at::Tensor Product(const FactorPair& p) { return at::matmul(p.B, p.A); }

inline at::Tensor Mean(std::span<const at::Tensor> xs, std::span<const double> w) {
  Result<at::Tensor> m = WeightedSum(xs, w);
  FEDLORA_CHECK_MSG(m.ok(), m.status().ToString());
  return std::move(m).value();
}

inline double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  FEDLORA_CHECK_MSG(a.sizes().equals(b.sizes()), "shape mismatch in MaxAbsDiff");
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

inline double FrobeniusNorm(const at::Tensor& a) { return a.norm().item<double>(); }

// Singular values (descending) of a dense matrix, as doubles.
inline std::vector<double> SingularValues(const at::Tensor& m) {
  const at::Tensor s = at::linalg_svdvals(m.to(at::kDouble)).contiguous();
  return std::vector<double>(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
}

// Numerical rank: singular values above 1e-10 times the largest.
inline std::int64_t NumericalRank(const at::Tensor& m) {
  const std::vector<double> s = SingularValues(m);
  if (s.empty() || s[0] == 0.0) return 0;
  std::int64_t rank = 0;
  for (double v : s) rank += v > 1e-10 * s[0] ? 1 : 0;
  return rank;
}

inline std::vector<double> Uniform(std::size_t n) { return std::vector<double>(n, 1.0 / double(n)); }

// Deep copies, to check afterwards that a function left its inputs untouched.
inline std::vector<at::Tensor> Clones(std::span<const at::Tensor> xs) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& x : xs) out.push_back(x.clone());
  return out;
}
inline bool AllEqual(std::span<const at::Tensor> a, std::span<const at::Tensor> b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!at::equal(a[i], b[i])) return false;
  }
  return true;
}

}  // namespace fedlora::lora::lora_test

#define ASSERT_OK_AND_ASSIGN(lhs, expr)                                       \
  ASSERT_OK_AND_ASSIGN_IMPL(FEDLORA_STATUS_CONCAT(lora_test_r_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr)                             \
  auto tmp = (expr);                                                          \
  ASSERT_TRUE(tmp.ok()) << tmp.status().ToString();                           \
  lhs = std::move(tmp).value()
