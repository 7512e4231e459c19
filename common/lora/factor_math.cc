// factor_math.cc — the strategies' fp64 LoRA algebra (stacking, padding, FedEx residuals,
// lossless compaction, LoRA-FAIR, sketches, Fed-SB init) behind one LibTorch exception boundary.
// Longer than ~600 lines because every operation shares the same argument checks (shapes,
// finiteness, weights) and dtype rules, which are private to this file; ALGORITHMS.md is its
// specification, tests/lora/ its tests.
#include "common/lora/factor_math.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "common/tensor.h"

// Unity-built with the other fedlora_lora sources: helpers live in a uniquely named namespace.
namespace fedlora::lora {
namespace factor_math_internal {

std::string Shape(const at::Tensor& t) {
  if (!t.defined()) return "<undefined>";
  const at::IntArrayRef sizes = t.sizes();
  return ShapeString(std::span<const std::int64_t>(sizes.data(), sizes.size()));
}

// "As[2]" for index 2 of argument "As".
std::string Name(std::string_view what, std::size_t index) {
  return StrCat(what, "[", index, "]");
}

Status CheckFloatMatrix(std::string_view fn, const at::Tensor& t, std::string_view name) {
  if (!t.defined()) return InvalidArgument(fn, ": ", name, " is undefined");
  if (t.dim() != 2) {
    return InvalidArgument(fn, ": ", name, " must be a matrix, got shape ", Shape(t));
  }
  if (!at::isFloatingType(t.scalar_type())) {
    return InvalidArgument(fn, ": ", name, " has dtype ", c10::toString(t.scalar_type()),
                           " (expected f32, f64, bf16 or f16)");
  }
  return OkStatus();
}

Status CheckFinite(std::string_view fn, const at::Tensor& t, std::string_view name) {
  if (t.numel() > 0 && !at::isfinite(t).all().item<bool>()) {
    return InvalidArgument(fn, ": ", name, " (shape ", Shape(t), ") has NaN or infinite entries");
  }
  return OkStatus();
}

Status CheckWeights(std::string_view fn, std::span<const double> weights, std::size_t n,
                    std::string_view name = "weights") {
  if (weights.size() != n) {
    return InvalidArgument(fn, ": ", name, " has ", weights.size(), " entries for ", n,
                           " tensors");
  }
  for (std::size_t k = 0; k < weights.size(); ++k) {
    if (!std::isfinite(weights[k])) {
      return InvalidArgument(fn, ": ", Name(name, k), " = ", weights[k], " is not finite");
    }
  }
  return OkStatus();
}

// The dtype the math runs in: the promotion of every input, with half types widened to f32
// because LAPACK (and some CPU BLAS paths) have no half-precision kernels.
at::ScalarType ComputeType(std::initializer_list<std::span<const at::Tensor>> groups) {
  bool any = false;
  at::ScalarType type = at::kFloat;
  for (std::span<const at::Tensor> group : groups) {
    for (const at::Tensor& t : group) {
      type = any ? at::promote_types(type, t.scalar_type()) : t.scalar_type();
      any = true;
    }
  }
  if (type == at::kHalf || type == at::kBFloat16) type = at::kFloat;
  return type;
}

std::span<const at::Tensor> One(const at::Tensor& t) { return std::span<const at::Tensor>(&t, 1); }

at::TensorOptions OptionsLike(const at::Tensor& t, at::ScalarType type) {
  return at::TensorOptions().dtype(type).device(t.device());
}

at::Tensor To(const at::Tensor& t, at::ScalarType type, const at::Tensor& device_of) {
  return t.to(device_of.device(), type);
}

// Σ_{ij} X_ij·Y_ij as a double.
double SumOfProduct(const at::Tensor& x, const at::Tensor& y) {
  return (x * y).sum().item<double>();
}

// Checks that As[k] is r x d_in and Bs[k] is d_out x r for one shared (r, d_in, d_out), taken from
// element 0 unless `expect_*` is given (>= 0).
struct FactorDims {
  std::int64_t d_out = 0;
  std::int64_t d_in = 0;
  std::int64_t r = 0;
};
Result<FactorDims> CheckClientFactors(std::string_view fn, std::span<const at::Tensor> As,
                                      std::span<const at::Tensor> Bs, bool same_rank) {
  if (As.empty()) return InvalidArgument(fn, ": no client factors (As is empty)");
  if (As.size() != Bs.size()) {
    return InvalidArgument(fn, ": ", As.size(), " A factors but ", Bs.size(), " B factors");
  }
  for (std::size_t k = 0; k < As.size(); ++k) {
    FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, As[k], Name("As", k)));
    FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, Bs[k], Name("Bs", k)));
  }
  FactorDims dims{Bs[0].size(0), As[0].size(1), As[0].size(0)};
  for (std::size_t k = 0; k < As.size(); ++k) {
    const std::int64_t r_k = As[k].size(0);
    if (As[k].size(1) != dims.d_in || (same_rank && r_k != dims.r)) {
      return InvalidArgument(fn, ": As[", k, "] has shape ", Shape(As[k]), ", expected [",
                             same_rank ? std::to_string(dims.r) : std::string("r_k"), ", ",
                             dims.d_in, "] like As[0]",
                             same_rank ? " (hint: this strategy needs equal client ranks)" : "");
    }
    if (Bs[k].size(0) != dims.d_out || Bs[k].size(1) != r_k) {
      return InvalidArgument(fn, ": Bs[", k, "] has shape ", Shape(Bs[k]), ", expected [",
                             dims.d_out, ", ", r_k, "] (d_out of Bs[0], rank of As[", k, "])");
    }
  }
  return dims;
}

Status CheckGlobalPair(std::string_view fn, const FactorDims& dims, const at::Tensor& B,
                       std::string_view b_name, const at::Tensor& A, std::string_view a_name,
                       bool same_rank) {
  FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, A, a_name));
  FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, B, b_name));
  if (A.size(1) != dims.d_in || (same_rank && A.size(0) != dims.r)) {
    return InvalidArgument(fn, ": ", a_name, " has shape ", Shape(A), ", expected [",
                           same_rank ? std::to_string(dims.r) : std::string("r_g"), ", ",
                           dims.d_in, "]");
  }
  if (B.size(0) != dims.d_out || B.size(1) != A.size(0)) {
    return InvalidArgument(fn, ": ", b_name, " has shape ", Shape(B), ", expected [", dims.d_out,
                           ", ", A.size(0), "]");
  }
  return OkStatus();
}

// Σ_k w_k x_k in `type`, k ascending. Callers have validated shapes and weights.
at::Tensor WeightedSumUnchecked(std::span<const at::Tensor> xs, std::span<const double> weights,
                                at::ScalarType type) {
  const at::Tensor& device_of = xs[0];
  at::Tensor acc = To(xs[0], type, device_of) * weights[0];  // A new tensor: never aliases xs[0].
  for (std::size_t k = 1; k < xs.size(); ++k) {
    acc.add_(To(xs[k], type, device_of), weights[k]);
  }
  return acc;
}

// Validates a list of pairs as summands of one d_out x d_in matrix; returns (d_out, d_in).
Result<std::pair<std::int64_t, std::int64_t>> CheckPairs(std::string_view fn,
                                                         std::span<const FactorPair> pairs) {
  if (pairs.empty()) {
    return InvalidArgument(fn, ": no pairs (hint: pass at least one pair, of rank 0 if need be, so "
                               "that d_out and d_in are known)");
  }
  for (std::size_t t = 0; t < pairs.size(); ++t) {
    FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, pairs[t].B, StrCat("pairs[", t, "].B")));
    FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, pairs[t].A, StrCat("pairs[", t, "].A")));
  }
  const std::int64_t d_out = pairs[0].B.size(0);
  const std::int64_t d_in = pairs[0].A.size(1);
  for (std::size_t t = 0; t < pairs.size(); ++t) {
    const FactorPair& p = pairs[t];
    if (p.B.size(0) != d_out || p.A.size(1) != d_in || p.B.size(1) != p.A.size(0)) {
      return InvalidArgument(fn, ": pairs[", t, "] has B ", Shape(p.B), " and A ", Shape(p.A),
                             ", expected B [", d_out, ", K] and A [K, ", d_in, "]");
    }
    FEDLORA_RETURN_IF_ERROR(CheckFinite(fn, p.B, StrCat("pairs[", t, "].B")));
    FEDLORA_RETURN_IF_ERROR(CheckFinite(fn, p.A, StrCat("pairs[", t, "].A")));
  }
  return std::make_pair(d_out, d_in);
}

// The §10 core: Σ_τ B_τ A_τ = (Q_u X) diag(S) (Yh Q_vᵀ), with S descending. Empty S when K = 0.
struct Core {
  at::Tensor Qu, X, S, Yh, Qv;
};
Core FactorCore(std::span<const FactorPair> pairs, at::ScalarType type) {
  std::vector<at::Tensor> us, vs;
  us.reserve(pairs.size());
  vs.reserve(pairs.size());
  for (const FactorPair& p : pairs) {
    us.push_back(To(p.B, type, pairs[0].B));
    vs.push_back(To(p.A, type, pairs[0].B));
  }
  const at::Tensor u_cat = at::cat(us, 1);  // d_out x K
  const at::Tensor v_cat = at::cat(vs, 0);  // K x d_in
  Core core;
  auto [qu, ru] = at::linalg_qr(u_cat, "reduced");   // d_out x m_u, m_u x K
  auto [qv, rv] = at::linalg_qr(v_cat.t(), "reduced");  // d_in x m_v, m_v x K
  const at::Tensor c = at::matmul(ru, rv.t());          // m_u x m_v
  auto [x, s, yh] = at::linalg_svd(c, /*full_matrices=*/false);
  core.Qu = std::move(qu);
  core.Qv = std::move(qv);
  core.X = std::move(x);
  core.S = std::move(s);
  core.Yh = std::move(yh);
  return core;
}

FactorPair RankZero(std::int64_t d_out, std::int64_t d_in, const at::TensorOptions& options) {
  return FactorPair{at::zeros({d_out, 0}, options), at::zeros({0, d_in}, options)};
}

FactorPair FromCore(const Core& core, std::int64_t keep) {
  const at::Tensor x = core.X.narrow(1, 0, keep);
  const at::Tensor s = core.S.narrow(0, 0, keep);
  const at::Tensor yh = core.Yh.narrow(0, 0, keep);
  return FactorPair{at::matmul(core.Qu, x * s.unsqueeze(0)).contiguous(),
                    at::matmul(yh, core.Qv.t()).contiguous()};
}

Result<FactorPair> CompactCore(std::string_view fn, std::span<const FactorPair> pairs,
                                double rel_eps, std::int64_t max_rank) {
  FEDLORA_ASSIGN_OR_RETURN(auto dims, CheckPairs(fn, pairs));
  std::vector<at::Tensor> all;
  for (const FactorPair& p : pairs) {
    all.push_back(p.B);
    all.push_back(p.A);
  }
  const at::ScalarType type = ComputeType({std::span<const at::Tensor>(all)});
  const at::TensorOptions options = OptionsLike(pairs[0].B, type);
  std::int64_t k_total = 0;
  for (const FactorPair& p : pairs) k_total += p.B.size(1);
  if (k_total == 0 || dims.first == 0 || dims.second == 0 || max_rank == 0) {
    return RankZero(dims.first, dims.second, options);
  }
  const Core core = FactorCore(pairs, type);
  const at::Tensor s = core.S.to(at::kCPU, at::kDouble).contiguous();
  const double* sv = s.data_ptr<double>();
  const std::int64_t n = s.numel();
  if (n == 0 || !(sv[0] > 0.0)) return RankZero(dims.first, dims.second, options);
  const double threshold = rel_eps * sv[0];
  std::int64_t keep = 0;
  while (keep < n && keep < max_rank && sv[keep] > threshold && sv[keep] > 0.0) ++keep;
  return FromCore(core, keep);
}

// 2^64 mod n, then rejection: the accepted range [threshold, 2^64) holds a multiple of n values,
// so x % n is exactly uniform on [0, n).
std::uint64_t UniformBelow(std::uint64_t n, std::mt19937_64& rng) {
  static_assert(std::mt19937_64::min() == 0 &&
                std::mt19937_64::max() == std::numeric_limits<std::uint64_t>::max());
  const std::uint64_t threshold = (std::uint64_t{0} - n) % n;
  for (;;) {
    const std::uint64_t x = rng();
    if (x >= threshold) return x % n;
  }
}

Result<at::Tensor> IndexTensor(std::string_view fn, std::span<const std::int64_t> idx,
                               std::int64_t r, bool distinct, const at::Tensor& device_of) {
  std::vector<bool> seen(distinct ? static_cast<std::size_t>(r) : 0, false);
  for (std::size_t j = 0; j < idx.size(); ++j) {
    if (idx[j] < 0 || idx[j] >= r) {
      return InvalidArgument(fn, ": idx[", j, "] = ", idx[j], " is outside [0, ", r, ")");
    }
    if (distinct) {
      if (seen[static_cast<std::size_t>(idx[j])]) {
        return InvalidArgument(fn, ": idx[", j, "] = ", idx[j], " repeats an earlier index");
      }
      seen[static_cast<std::size_t>(idx[j])] = true;
    }
  }
  at::Tensor out = at::empty({static_cast<std::int64_t>(idx.size())}, at::kLong);
  std::copy(idx.begin(), idx.end(), out.data_ptr<std::int64_t>());
  return out.to(device_of.device());
}

}  // namespace factor_math_internal

namespace fmi = factor_math_internal;

Result<at::Tensor> WeightedSum(std::span<const at::Tensor> xs,
                               std::span<const double> weights) try {
  constexpr std::string_view kFn = "WeightedSum";
  if (xs.empty()) return InvalidArgument(kFn, ": no tensors");
  FEDLORA_RETURN_IF_ERROR(fmi::CheckWeights(kFn, weights, xs.size()));
  for (std::size_t k = 0; k < xs.size(); ++k) {
    if (!xs[k].defined()) return InvalidArgument(kFn, ": xs[", k, "] is undefined");
    if (!at::isFloatingType(xs[k].scalar_type())) {
      return InvalidArgument(kFn, ": xs[", k, "] has dtype ", c10::toString(xs[k].scalar_type()),
                             " (expected a floating dtype)");
    }
    if (!xs[k].sizes().equals(xs[0].sizes())) {
      return InvalidArgument(kFn, ": xs[", k, "] has shape ", fmi::Shape(xs[k]),
                             ", xs[0] has shape ", fmi::Shape(xs[0]));
    }
  }
  return fmi::WeightedSumUnchecked(xs, weights, fmi::ComputeType({xs}));
} catch (const c10::Error& e) {
  return Internal("WeightedSum: ", e.what_without_backtrace());
}

Result<FactorPair> Stack(std::span<const at::Tensor> As, std::span<const at::Tensor> Bs,
                         std::span<const double> weights, std::span<const double> client_scales,
                         double global_scale) try {
  constexpr std::string_view kFn = "Stack";
  FEDLORA_ASSIGN_OR_RETURN(const fmi::FactorDims dims,
                           fmi::CheckClientFactors(kFn, As, Bs, /*same_rank=*/false));
  (void)dims;
  FEDLORA_RETURN_IF_ERROR(fmi::CheckWeights(kFn, weights, As.size()));
  FEDLORA_RETURN_IF_ERROR(fmi::CheckWeights(kFn, client_scales, As.size(), "client_scales"));
  if (!std::isfinite(global_scale) || global_scale == 0.0) {
    return InvalidArgument(kFn, ": global_scale = ", global_scale, " must be finite and nonzero");
  }
  const at::ScalarType type = fmi::ComputeType({As, Bs});
  std::vector<at::Tensor> a_blocks, b_blocks;
  for (std::size_t k = 0; k < As.size(); ++k) {
    const double c_k = weights[k] * client_scales[k] / global_scale;
    a_blocks.push_back(fmi::To(As[k], type, Bs[0]) * c_k);
    b_blocks.push_back(fmi::To(Bs[k], type, Bs[0]));
  }
  return FactorPair{at::cat(b_blocks, 1), at::cat(a_blocks, 0)};
} catch (const c10::Error& e) {
  return Internal("Stack: ", e.what_without_backtrace());
}

namespace factor_math_internal {

Result<at::Tensor> PadOrTruncate(std::string_view fn, const at::Tensor& t, int dim,
                                 std::int64_t size, bool pad) {
  FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, t, dim == 0 ? "A" : "B"));
  const std::int64_t have = t.size(dim);
  const char* what = dim == 0 ? "rows" : "cols";
  if (size < 0) return InvalidArgument(fn, ": ", what, " = ", size, " is negative");
  if (pad && size < have) {
    return InvalidArgument(fn, ": cannot pad ", Shape(t), " to ", size, " ", what,
                           " (hint: truncate instead)");
  }
  if (!pad && size > have) {
    return InvalidArgument(fn, ": cannot truncate ", Shape(t), " to ", size, " ", what,
                           " (hint: pad instead)");
  }
  if (!pad) return t.narrow(dim, 0, size).clone(at::MemoryFormat::Contiguous);
  std::vector<std::int64_t> shape = {t.size(0), t.size(1)};
  shape[static_cast<std::size_t>(dim)] = size;
  at::Tensor out = at::zeros(shape, t.options());
  out.narrow(dim, 0, have).copy_(t);
  return out;
}

}  // namespace factor_math_internal

Result<at::Tensor> PadRows(const at::Tensor& A, std::int64_t rows) try {
  return fmi::PadOrTruncate("PadRows", A, 0, rows, /*pad=*/true);
} catch (const c10::Error& e) {
  return Internal("PadRows: ", e.what_without_backtrace());
}

Result<at::Tensor> PadCols(const at::Tensor& B, std::int64_t cols) try {
  return fmi::PadOrTruncate("PadCols", B, 1, cols, /*pad=*/true);
} catch (const c10::Error& e) {
  return Internal("PadCols: ", e.what_without_backtrace());
}

Result<at::Tensor> TruncateRows(const at::Tensor& A, std::int64_t rows) try {
  return fmi::PadOrTruncate("TruncateRows", A, 0, rows, /*pad=*/false);
} catch (const c10::Error& e) {
  return Internal("TruncateRows: ", e.what_without_backtrace());
}

Result<at::Tensor> TruncateCols(const at::Tensor& B, std::int64_t cols) try {
  return fmi::PadOrTruncate("TruncateCols", B, 1, cols, /*pad=*/false);
} catch (const c10::Error& e) {
  return Internal("TruncateCols: ", e.what_without_backtrace());
}

Result<FactorPair> FedExResidual(std::span<const at::Tensor> As, std::span<const at::Tensor> Bs,
                                 std::span<const double> weights, double scale,
                                 const at::Tensor& A_global, const at::Tensor& B_global) try {
  constexpr std::string_view kFn = "FedExResidual";
  FEDLORA_ASSIGN_OR_RETURN(const fmi::FactorDims dims,
                           fmi::CheckClientFactors(kFn, As, Bs, /*same_rank=*/true));
  FEDLORA_RETURN_IF_ERROR(fmi::CheckGlobalPair(kFn, dims, B_global, "B_global", A_global,
                                               "A_global", /*same_rank=*/false));
  FEDLORA_RETURN_IF_ERROR(fmi::CheckWeights(kFn, weights, As.size()));
  if (!std::isfinite(scale)) return InvalidArgument(kFn, ": scale = ", scale, " is not finite");

  const at::ScalarType type = fmi::ComputeType({As, Bs, fmi::One(A_global), fmi::One(B_global)});
  const at::Tensor& dev = Bs[0];
  const std::size_t n = As.size();
  const at::Tensor a_bar = fmi::WeightedSumUnchecked(As, weights, type);
  const at::Tensor b_bar = fmi::WeightedSumUnchecked(Bs, weights, type);
  const at::Tensor b_last = fmi::To(Bs[n - 1], type, dev);

  std::vector<at::Tensor> u_blocks, v_blocks;
  // Tight part: Σ_{k<N} p_k (B_k − B_N)(A_k − Ā). It equals Σ p_k B_k A_k − B̄Ā − c·B_N·Ā with
  // c = 1 − Σp, because Σ_k p_k (A_k − Ā) = c·Ā.
  for (std::size_t k = 0; k + 1 < n; ++k) {
    u_blocks.push_back(fmi::To(Bs[k], type, dev) - b_last);
    v_blocks.push_back((fmi::To(As[k], type, dev) - a_bar) * weights[k]);
  }
  // Weights that sum to 1 up to rounding leave c·B_N·Ā at the level of the rounding error already
  // in Ā, so it is dropped (keeping B̃ = B̄ bit-equal to a WeightedSum mean); genuinely
  // unnormalised weights fold it into B̃ exactly.
  double weight_sum = 0;
  for (double p : weights) weight_sum += p;
  const double c = 1.0 - weight_sum;
  const double c_tolerance = 4.0 * static_cast<double>(n) * std::numeric_limits<double>::epsilon() *
                             std::max(1.0, std::abs(weight_sum));
  const at::Tensor b_tilde = std::abs(c) > c_tolerance ? b_bar + b_last * c : b_bar;

  const at::Tensor a_g = fmi::To(A_global, type, dev);
  const at::Tensor b_g = fmi::To(B_global, type, dev);
  if (a_g.size(0) == dims.r) {
    // B̃Ā − B_g A_g = (B̃ − B_g)Ā + B_g(Ā − A_g): small factors when the globals are rounded means.
    if (!at::equal(b_g, b_tilde)) {
      u_blocks.push_back(b_tilde - b_g);
      v_blocks.push_back(a_bar);
    }
    if (!at::equal(a_g, a_bar)) {
      u_blocks.push_back(b_g);
      v_blocks.push_back(a_bar - a_g);
    }
  } else {
    u_blocks.push_back(b_tilde);
    v_blocks.push_back(a_bar);
    u_blocks.push_back(-b_g);
    v_blocks.push_back(a_g);
  }
  const at::TensorOptions options = fmi::OptionsLike(dev, type);
  if (u_blocks.empty()) return fmi::RankZero(dims.d_out, dims.d_in, options);
  return FactorPair{at::cat(u_blocks, 1) * scale, at::cat(v_blocks, 0)};
} catch (const c10::Error& e) {
  return Internal("FedExResidual: ", e.what_without_backtrace());
}

Result<FactorPair> Compact(std::span<const FactorPair> pairs, double rel_eps) try {
  constexpr std::string_view kFn = "Compact";
  if (!(rel_eps >= 0.0 && rel_eps < 1.0)) {
    return InvalidArgument(kFn, ": rel_eps = ", rel_eps, " must be in [0, 1)");
  }
  return fmi::CompactCore(kFn, pairs, rel_eps, std::numeric_limits<std::int64_t>::max());
} catch (const c10::Error& e) {
  return Internal("Compact: ", e.what_without_backtrace());
}

Result<FactorPair> TruncatedSvd(std::span<const FactorPair> pairs, std::int64_t rank) try {
  constexpr std::string_view kFn = "TruncatedSvd";
  if (rank < 0) return InvalidArgument(kFn, ": rank = ", rank, " is negative");
  return fmi::CompactCore(kFn, pairs, /*rel_eps=*/0.0, rank);
} catch (const c10::Error& e) {
  return Internal("TruncatedSvd: ", e.what_without_backtrace());
}

namespace factor_math_internal {

// Shared validation and the products LoRA-FAIR needs: G = ĀĀᵀ (r x r), H = ΔW·Āᵀ (d_out x r).
struct FairSetup {
  at::ScalarType type;
  at::Tensor a_bar, b_bar, G, H;
};
Result<FairSetup> PrepareFair(std::string_view fn, std::span<const at::Tensor> As,
                              std::span<const at::Tensor> Bs, std::span<const double> weights,
                              const at::Tensor& B_bar, const at::Tensor& A_bar, double lambda) {
  FEDLORA_ASSIGN_OR_RETURN(const FactorDims dims,
                           CheckClientFactors(fn, As, Bs, /*same_rank=*/true));
  FEDLORA_RETURN_IF_ERROR(
      CheckGlobalPair(fn, dims, B_bar, "B_bar", A_bar, "A_bar", /*same_rank=*/true));
  FEDLORA_RETURN_IF_ERROR(CheckWeights(fn, weights, As.size()));
  if (!std::isfinite(lambda) || lambda < 0) {
    return InvalidArgument(fn, ": lambda = ", lambda, " must be finite and >= 0");
  }
  FairSetup s;
  s.type = ComputeType({As, Bs, One(B_bar), One(A_bar)});
  s.a_bar = To(A_bar, s.type, Bs[0]);
  s.b_bar = To(B_bar, s.type, Bs[0]);
  s.G = at::matmul(s.a_bar, s.a_bar.t());
  const at::Tensor a_bar_t = s.a_bar.t();
  for (std::size_t k = 0; k < As.size(); ++k) {
    const at::Tensor term =
        at::matmul(To(Bs[k], s.type, Bs[0]), at::matmul(To(As[k], s.type, Bs[0]), a_bar_t)) *
        weights[k];
    s.H = k == 0 ? term : s.H + term;
  }
  return s;
}

// ‖Σ_k p_k B_k A_k‖_F² from the Gram matrices of the concatenated factors.
double WeightedProductNormSquared(std::span<const at::Tensor> As, std::span<const at::Tensor> Bs,
                                  std::span<const double> weights, at::ScalarType type) {
  std::vector<at::Tensor> b_blocks, a_blocks;
  for (std::size_t k = 0; k < As.size(); ++k) {
    b_blocks.push_back(To(Bs[k], type, Bs[0]) * weights[k]);
    a_blocks.push_back(To(As[k], type, Bs[0]));
  }
  const at::Tensor b = at::cat(b_blocks, 1);
  const at::Tensor a = at::cat(a_blocks, 0);
  return SumOfProduct(at::matmul(b.t(), b), at::matmul(a, a.t()));
}

// The same setup from a dense ΔW (d_out x d_in): H = ΔW·Āᵀ.
Result<FairSetup> PrepareFairDense(std::string_view fn, const at::Tensor& delta_w,
                                   const at::Tensor& B_bar, const at::Tensor& A_bar,
                                   double lambda) {
  FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, delta_w, "delta_w"));
  const FactorDims dims{delta_w.size(0), delta_w.size(1), A_bar.dim() == 2 ? A_bar.size(0) : 0};
  FEDLORA_RETURN_IF_ERROR(
      CheckGlobalPair(fn, dims, B_bar, "B_bar", A_bar, "A_bar", /*same_rank=*/true));
  if (!std::isfinite(lambda) || lambda < 0) {
    return InvalidArgument(fn, ": lambda = ", lambda, " must be finite and >= 0");
  }
  FairSetup s;
  s.type = ComputeType({One(delta_w), One(B_bar), One(A_bar)});
  s.a_bar = To(A_bar, s.type, delta_w);
  s.b_bar = To(B_bar, s.type, delta_w);
  s.G = at::matmul(s.a_bar, s.a_bar.t());
  s.H = at::matmul(To(delta_w, s.type, delta_w), s.a_bar.t());
  return s;
}

// ΔB (ĀĀᵀ + λI) = (ΔW − B̄Ā)Āᵀ = H − B̄G.
Result<at::Tensor> RidgeFromSetup(std::string_view fn, const FairSetup& s, double lambda) {
  const at::Tensor rhs = s.H - at::matmul(s.b_bar, s.G);
  const at::Tensor lhs = s.G + at::eye(s.G.size(0), s.G.options()) * lambda;
  auto [delta_b, info] = at::linalg_solve_ex(lhs, rhs, /*left=*/false, /*check_errors=*/false);
  if (info.item<std::int64_t>() != 0 || !at::isfinite(delta_b).all().item<bool>()) {
    return InvalidArgument(fn, ": ĀĀᵀ + λI (", Shape(lhs), ", λ = ", lambda,
                           ") is singular (hint: use λ > 0, or Ā has dependent rows)");
  }
  return delta_b;
}

Result<FairCosineResult> CosineFromSetup(std::string_view fn, const FairSetup& s, double norm_w,
                                         double lambda, int iterations, double lr);

}  // namespace factor_math_internal

Result<at::Tensor> FairRidgeDeltaB(std::span<const at::Tensor> As, std::span<const at::Tensor> Bs,
                                   std::span<const double> weights, const at::Tensor& B_bar,
                                   const at::Tensor& A_bar, double lambda) try {
  constexpr std::string_view kFn = "FairRidgeDeltaB";
  FEDLORA_ASSIGN_OR_RETURN(fmi::FairSetup s,
                           fmi::PrepareFair(kFn, As, Bs, weights, B_bar, A_bar, lambda));
  return fmi::RidgeFromSetup(kFn, s, lambda);
} catch (const c10::Error& e) {
  return Internal("FairRidgeDeltaB: ", e.what_without_backtrace());
}

Result<FairCosineResult> FairCosineDeltaB(std::span<const at::Tensor> As,
                                          std::span<const at::Tensor> Bs,
                                          std::span<const double> weights, const at::Tensor& B_bar,
                                          const at::Tensor& A_bar, double lambda, int iterations,
                                          double lr) try {
  constexpr std::string_view kFn = "FairCosineDeltaB";
  if (iterations < 0) return InvalidArgument(kFn, ": iterations = ", iterations, " is negative");
  if (!std::isfinite(lr)) return InvalidArgument(kFn, ": lr = ", lr, " is not finite");
  FEDLORA_ASSIGN_OR_RETURN(fmi::FairSetup s,
                           fmi::PrepareFair(kFn, As, Bs, weights, B_bar, A_bar, lambda));
  const double norm_w = std::sqrt(std::max(0.0, fmi::WeightedProductNormSquared(As, Bs, weights,
                                                                               s.type)));
  return fmi::CosineFromSetup(kFn, s, norm_w, lambda, iterations, lr);
} catch (const c10::Error& e) {
  return Internal("FairCosineDeltaB: ", e.what_without_backtrace());
}

Result<at::Tensor> FairRidgeDeltaBDense(const at::Tensor& delta_w, const at::Tensor& B_bar,
                                        const at::Tensor& A_bar, double lambda) try {
  constexpr std::string_view kFn = "FairRidgeDeltaBDense";
  FEDLORA_ASSIGN_OR_RETURN(fmi::FairSetup s,
                           fmi::PrepareFairDense(kFn, delta_w, B_bar, A_bar, lambda));
  return fmi::RidgeFromSetup(kFn, s, lambda);
} catch (const c10::Error& e) {
  return Internal("FairRidgeDeltaBDense: ", e.what_without_backtrace());
}

Result<FairCosineResult> FairCosineDeltaBDense(const at::Tensor& delta_w, const at::Tensor& B_bar,
                                               const at::Tensor& A_bar, double lambda,
                                               int iterations, double lr) try {
  constexpr std::string_view kFn = "FairCosineDeltaBDense";
  if (iterations < 0) return InvalidArgument(kFn, ": iterations = ", iterations, " is negative");
  if (!std::isfinite(lr)) return InvalidArgument(kFn, ": lr = ", lr, " is not finite");
  FEDLORA_ASSIGN_OR_RETURN(fmi::FairSetup s,
                           fmi::PrepareFairDense(kFn, delta_w, B_bar, A_bar, lambda));
  const double norm_w = at::linalg_norm(fmi::To(delta_w, s.type, delta_w)).item<double>();
  return fmi::CosineFromSetup(kFn, s, norm_w, lambda, iterations, lr);
} catch (const c10::Error& e) {
  return Internal("FairCosineDeltaBDense: ", e.what_without_backtrace());
}

Result<FairCosineResult> fmi::CosineFromSetup(std::string_view kFn, const FairSetup& s,
                                              double norm_w, double lambda, int iterations,
                                              double lr) try {
  if (!(norm_w > 0.0)) {
    return InvalidArgument(kFn, ": ‖ΔW‖_F = 0, so the cosine is undefined (hint: every client "
                                "update B_k·A_k is zero; skip the correction)");
  }
  // Cosine and objective at ΔB, plus the quantities the gradient reuses.
  struct Eval {
    double cosine, objective, norm_p, inner;
    at::Tensor b_prime;
  };
  auto evaluate = [&](const at::Tensor& delta_b, int step) -> Result<Eval> {
    Eval e;
    e.b_prime = s.b_bar + delta_b;
    e.inner = fmi::SumOfProduct(e.b_prime, s.H);                                   // ⟨P, ΔW⟩
    const double p2 = fmi::SumOfProduct(at::matmul(e.b_prime.t(), e.b_prime), s.G);  // ‖P‖²
    e.norm_p = std::sqrt(std::max(0.0, p2));
    if (!(e.norm_p > 0.0) || !std::isfinite(e.norm_p)) {
      return InvalidArgument(kFn, ": ‖(B̄+ΔB)Ā‖_F = ", e.norm_p, " at step ", step,
                             ", so the cosine is undefined (hint: B̄Ā is zero or lr diverged; "
                             "use FairRidgeDeltaB)");
    }
    e.cosine = e.inner / (e.norm_p * norm_w);
    e.objective = 1.0 - e.cosine + lambda * fmi::SumOfProduct(delta_b, delta_b);
    return e;
  };
  at::Tensor delta_b = at::zeros_like(s.b_bar);
  FEDLORA_ASSIGN_OR_RETURN(Eval current, evaluate(delta_b, 0));
  FairCosineResult result;
  result.initial_cosine = current.cosine;
  result.initial_objective = current.objective;
  for (int step = 1; step <= iterations; ++step) {
    // ∂L/∂ΔB = −[H/(‖P‖‖ΔW‖) − ⟨P,ΔW⟩·B′G/(‖P‖³‖ΔW‖)] + 2λΔB, since P·Āᵀ = B′(ĀĀᵀ).
    const double np = current.norm_p;
    const at::Tensor grad = s.H * (-1.0 / (np * norm_w)) +
                            at::matmul(current.b_prime, s.G) * (current.inner / (np * np * np * norm_w)) +
                            delta_b * (2.0 * lambda);
    delta_b = delta_b - grad * lr;
    FEDLORA_ASSIGN_OR_RETURN(current, evaluate(delta_b, step));
  }
  result.delta_b = delta_b;
  result.final_cosine = current.cosine;
  result.final_objective = current.objective;
  return result;
} catch (const c10::Error& e) {
  return Internal("FairCosineDeltaB: ", e.what_without_backtrace());
}

Result<double> ProductFrobeniusNorm(const at::Tensor& B, const at::Tensor& A) try {
  constexpr std::string_view kFn = "ProductFrobeniusNorm";
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix(kFn, B, "B"));
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix(kFn, A, "A"));
  if (B.size(1) != A.size(0)) {
    return InvalidArgument(kFn, ": B ", fmi::Shape(B), " and A ", fmi::Shape(A),
                           " do not chain (B's columns must equal A's rows)");
  }
  const at::ScalarType type = fmi::ComputeType({fmi::One(B), fmi::One(A)});
  const at::Tensor b = fmi::To(B, type, B);
  const at::Tensor a = fmi::To(A, type, B);
  const double sq = fmi::SumOfProduct(at::matmul(b.t(), b), at::matmul(a, a.t()));
  return std::sqrt(std::max(0.0, sq));
} catch (const c10::Error& e) {
  return Internal("ProductFrobeniusNorm: ", e.what_without_backtrace());
}

Result<double> ProductInner(const at::Tensor& B1, const at::Tensor& A1, const at::Tensor& B2,
                            const at::Tensor& A2) try {
  constexpr std::string_view kFn = "ProductInner";
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix(kFn, B1, "B1"));
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix(kFn, A1, "A1"));
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix(kFn, B2, "B2"));
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix(kFn, A2, "A2"));
  if (B1.size(1) != A1.size(0) || B2.size(1) != A2.size(0) || B1.size(0) != B2.size(0) ||
      A1.size(1) != A2.size(1)) {
    return InvalidArgument(kFn, ": shapes B1 ", fmi::Shape(B1), ", A1 ", fmi::Shape(A1), ", B2 ",
                           fmi::Shape(B2), ", A2 ", fmi::Shape(A2),
                           " do not describe two d_out x d_in products");
  }
  const at::ScalarType type =
      fmi::ComputeType({fmi::One(B1), fmi::One(A1), fmi::One(B2), fmi::One(A2)});
  const at::Tensor b1 = fmi::To(B1, type, B1), a1 = fmi::To(A1, type, B1);
  const at::Tensor b2 = fmi::To(B2, type, B1), a2 = fmi::To(A2, type, B1);
  return fmi::SumOfProduct(at::matmul(b1.t(), b2), at::matmul(a1, a2.t()));
} catch (const c10::Error& e) {
  return Internal("ProductInner: ", e.what_without_backtrace());
}

Result<std::vector<std::int64_t>> SampleSketch(std::int64_t r, std::int64_t k,
                                               std::mt19937_64& rng) {
  constexpr std::int64_t kMaxRank = std::int64_t{1} << 24;
  if (r < 0 || r > kMaxRank) {
    return InvalidArgument("SampleSketch: r = ", r, " must be in [0, ", kMaxRank, "]");
  }
  if (k < 0 || k > r) return InvalidArgument("SampleSketch: k = ", k, " must be in [0, r = ", r, "]");
  std::vector<std::int64_t> pool(static_cast<std::size_t>(r));
  std::iota(pool.begin(), pool.end(), std::int64_t{0});
  // Partial Fisher–Yates: position i receives a uniform draw from the r − i values not yet taken.
  for (std::int64_t i = 0; i < k; ++i) {
    const std::uint64_t offset = fmi::UniformBelow(static_cast<std::uint64_t>(r - i), rng);
    std::swap(pool[static_cast<std::size_t>(i)],
              pool[static_cast<std::size_t>(i + static_cast<std::int64_t>(offset))]);
  }
  pool.resize(static_cast<std::size_t>(k));
  std::sort(pool.begin(), pool.end());
  return pool;
}

Result<at::Tensor> GatherCols(const at::Tensor& B, std::span<const std::int64_t> idx) try {
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix("GatherCols", B, "B"));
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor index,
                           fmi::IndexTensor("GatherCols", idx, B.size(1), /*distinct=*/false, B));
  return at::index_select(B, 1, index);
} catch (const c10::Error& e) {
  return Internal("GatherCols: ", e.what_without_backtrace());
}

Result<at::Tensor> GatherRows(const at::Tensor& A, std::span<const std::int64_t> idx) try {
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix("GatherRows", A, "A"));
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor index,
                           fmi::IndexTensor("GatherRows", idx, A.size(0), /*distinct=*/false, A));
  return at::index_select(A, 0, index);
} catch (const c10::Error& e) {
  return Internal("GatherRows: ", e.what_without_backtrace());
}

namespace factor_math_internal {

Result<at::Tensor> Scatter(std::string_view fn, std::span<const std::int64_t> idx,
                           const at::Tensor& sub, std::int64_t r, int dim) {
  FEDLORA_RETURN_IF_ERROR(CheckFloatMatrix(fn, sub, dim == 1 ? "B_sub" : "A_sub"));
  if (r < 0) return InvalidArgument(fn, ": r = ", r, " is negative");
  if (sub.size(dim) != static_cast<std::int64_t>(idx.size())) {
    return InvalidArgument(fn, ": ", dim == 1 ? "B_sub" : "A_sub", " has shape ", Shape(sub),
                           " but idx has ", idx.size(), " entries");
  }
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor index, IndexTensor(fn, idx, r, /*distinct=*/true, sub));
  std::vector<std::int64_t> shape = {sub.size(0), sub.size(1)};
  shape[static_cast<std::size_t>(dim)] = r;
  at::Tensor out = at::zeros(shape, sub.options());
  out.index_copy_(dim, index, sub);
  return out;
}

}  // namespace factor_math_internal

Result<at::Tensor> ScatterCols(std::span<const std::int64_t> idx, const at::Tensor& B_sub,
                               std::int64_t r) try {
  return fmi::Scatter("ScatterCols", idx, B_sub, r, 1);
} catch (const c10::Error& e) {
  return Internal("ScatterCols: ", e.what_without_backtrace());
}

Result<at::Tensor> ScatterRows(std::span<const std::int64_t> idx, const at::Tensor& A_sub,
                               std::int64_t r) try {
  return fmi::Scatter("ScatterRows", idx, A_sub, r, 0);
} catch (const c10::Error& e) {
  return Internal("ScatterRows: ", e.what_without_backtrace());
}

Result<SbInit> SbInitFromUpdate(const at::Tensor& delta_w, std::int64_t rank, double scale) try {
  constexpr std::string_view kFn = "SbInitFromUpdate";
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFloatMatrix(kFn, delta_w, "delta_w"));
  if (delta_w.size(0) == 0 || delta_w.size(1) == 0) {
    return InvalidArgument(kFn, ": delta_w has empty shape ", fmi::Shape(delta_w));
  }
  if (rank < 1) return InvalidArgument(kFn, ": rank = ", rank, " must be >= 1");
  if (!std::isfinite(scale) || scale == 0.0) {
    return InvalidArgument(kFn, ": scale = ", scale, " must be finite and nonzero");
  }
  FEDLORA_RETURN_IF_ERROR(fmi::CheckFinite(kFn, delta_w, "delta_w"));
  const at::ScalarType type = fmi::ComputeType({fmi::One(delta_w)});
  const std::int64_t r = std::min({rank, delta_w.size(0), delta_w.size(1)});
  auto [u, s, vh] = at::linalg_svd(fmi::To(delta_w, type, delta_w), /*full_matrices=*/false);
  return SbInit{u.narrow(1, 0, r).contiguous(), at::diag(s.narrow(0, 0, r)) / scale,
                vh.narrow(0, 0, r).contiguous()};
} catch (const c10::Error& e) {
  return Internal("SbInitFromUpdate: ", e.what_without_backtrace());
}

}  // namespace fedlora::lora
