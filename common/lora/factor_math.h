// factor_math.h — the pure LoRA factor algebra every aggregation strategy uses.
//
// Stateless functions over at::Tensor, following ALGORITHMS.md: FLoRA stacking (§3), HetLoRA
// padding and truncation (§7), FedEx-LoRA residual factors (§2), lossless compaction and
// truncated SVD in factor space (§10), LoRA-FAIR's ridge and cosine corrections (§6), FSLoRA
// sketches (§8) and Fed-SB's initialisation (§5). Nothing here knows about clients, rounds, the
// wire or configuration; the strategies own those.
//
// Conventions (ALGORITHMS.md §0). nn.Linear layout: A is r x d_in, B is d_out x r, the update
// is B·A (d_out x d_in). A FactorPair always has its scales folded in: it stands for exactly B·A.
// No function materialises a d_out x d_in matrix unless its contract says so (only
// SbInitFromUpdate and the *Dense LoRA-FAIR variants take one as input).
//
// Dtypes. Inputs may be any floating dtype and are never mutated; results are new tensors (they
// never alias an input). Work is done in the promoted dtype of all tensor inputs (so one f64
// input makes the whole computation f64; the tests use f64 throughout), except that bf16/f16 are
// promoted to f32 because LAPACK has no half-precision kernels. Results come back in that dtype,
// on the first input's device. Exception: the pure data movers (Pad*, Truncate*, Gather*,
// Scatter*) keep their input's dtype and device.
//
// Errors. Every function validates shapes first and returns kInvalidArgument with a message that
// names the offending argument index and shape; LibTorch exceptions are caught here and become
// kInternal (a bug) unless stated otherwise. Thread-safe: functions only read their arguments
// (the SampleSketch rng is the caller's).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "common/status.h"

namespace fedlora::lora {

// Σ_k weights[k]·xs[k], accumulated in k order. All xs share one shape (any rank); weights are
// finite; sizes match and are non-empty.
Result<at::Tensor> WeightedSum(std::span<const at::Tensor> xs, std::span<const double> weights);

// A low-rank matrix B·A: B is d_out x K, A is K x d_in. K may be 0 (the zero matrix).
struct FactorPair {
  at::Tensor B;
  at::Tensor A;
};

// FLoRA stacking (§3c), scales folded into A:
//   A_stack = [c_1·A_1; …; c_N·A_N],  c_k = weights[k]·client_scales[k] / global_scale,
//   B_stack = [B_1 | … | B_N]  (given order, unscaled),
// so global_scale·B_stack·A_stack = Σ_k weights[k]·client_scales[k]·B_k·A_k. Ranks r_k may differ
// (stacked rank Σ r_k); fewer clients is just fewer blocks. Needs N >= 1 and global_scale != 0.
Result<FactorPair> Stack(std::span<const at::Tensor> As, std::span<const at::Tensor> Bs,
                         std::span<const double> weights, std::span<const double> client_scales,
                         double global_scale);

// HetLoRA zero-padding (§7c): [A; 0] with `rows` rows, [B | 0] with `cols` columns. The result
// never aliases the input. kInvalidArgument when rows/cols is smaller than the current size.
Result<at::Tensor> PadRows(const at::Tensor& A, std::int64_t rows);
Result<at::Tensor> PadCols(const at::Tensor& B, std::int64_t cols);
// HetLoRA truncation (§7b): the first `rows` rows of A / first `cols` columns of B (a prefix), as a
// new contiguous tensor. kInvalidArgument when rows/cols is negative or exceeds the current size.
Result<at::Tensor> TruncateRows(const at::Tensor& A, std::int64_t rows);
Result<at::Tensor> TruncateCols(const at::Tensor& B, std::int64_t cols);

// FedEx-LoRA residual (§2b–c) in factor form: a pair (U = .B, V = .A) with
//   U·V = scale·(Σ_k p_k·B_k·A_k − B_global·A_global)
// for ANY global pair (e.g. the f32-rounded means the coordinator actually sends). All clients
// share one rank r; B_global may have another rank r_g. With Ā = Σ p_k A_k, B̄ = Σ p_k B_k
// (computed as WeightedSum does) and c = 1 − Σ p_k:
//   Σ p_k B_k A_k − B_g A_g = Σ_{k<N} p_k (B_k − B_N)(A_k − Ā)         (tight part, (N−1)·r cols)
//                           + (B̃ − B_g)·Ā   with B̃ = B̄ + c·B_N          (only if B_g ≠ B̃)
//                           + B_g·(Ā − A_g)                            (only if A_g ≠ Ā)
// (if r_g ≠ r the last two become [B̃ | −B_g]·[Ā; A_g]). Weights whose sum is within 4·N·ε_f64 of
// 1 count as normalised (c := 0): the neglected c·B_N·Ā is then below the rounding already in Ā,
// and B̃ stays bit-equal to WeightedSum(Bs, weights). Rank bound achieved:
//   (N−1)·r                when the globals are bit-equal to (B̃, Ā) = (B̄, Ā) for Σp = 1,
//   (N−1)·r + r            when exactly one of the two differs,
//   (N−1)·r + 2·r = (N+1)r otherwise, or (N−1)·r + r + r_g for a different global rank.
// (N+1)·r is also the generic rank of the right-hand side, so it cannot be improved in general.
// The difference form keeps the extra factors small when the globals are rounded means, so the
// product carries no cancellation error. Column order is canonical: tight blocks k = 0..N−2, then
// the B-correction, then the A-correction. The scale multiplies U.
Result<FactorPair> FedExResidual(std::span<const at::Tensor> As, std::span<const at::Tensor> Bs,
                                 std::span<const double> weights, double scale,
                                 const at::Tensor& A_global, const at::Tensor& B_global);

// Lossless compaction (§10): a pair (U*, V*) with U*·V* = Σ_τ pairs[τ].B·pairs[τ].A, via
//   U_cat = [B_1|B_2|…], V_cat = [A_1; A_2; …], QR of U_cat and V_catᵀ, core C = R_u R_vᵀ,
//   SVD C = X Σ Yᵀ, dropping σ_i <= rel_eps·σ_1, U* = Q_u X Σ, V* = Yᵀ Q_vᵀ.
// Rank K* <= min(K, d_out, d_in), K = Σ_τ K_τ; U*'s columns are orthogonal with norms σ_i
// (descending) and V*'s rows orthonormal. All-zero input (including pairs of rank 0) gives a
// rank-0 pair of the right d_out/d_in. kInvalidArgument for an empty span (no shapes to go by),
// inconsistent d_out/d_in, or rel_eps outside [0, 1).
Result<FactorPair> Compact(std::span<const FactorPair> pairs, double rel_eps = 1e-12);

// Best rank-`rank` approximation (Eckart–Young, Frobenius and spectral) of Σ_τ B_τ·A_τ, through the
// same core trick: never forms the d_out x d_in sum. Returns min(rank, #nonzero σ) components,
// laid out like Compact's. kInvalidArgument for rank < 0 or the same shape errors as Compact.
Result<FactorPair> TruncatedSvd(std::span<const FactorPair> pairs, std::int64_t rank);

// LoRA-FAIR ridge correction (§6c): with ΔW = Σ_k p_k B_k A_k,
//   ΔB = (ΔW − B̄Ā)·Āᵀ·(ĀĀᵀ + λI)⁻¹        (d_out x r),
// the minimiser of ‖ΔW − (B̄+ΔB)Ā‖_F² + λ‖ΔB‖_F². Uses ΔW·Āᵀ = Σ_k p_k B_k (A_k Āᵀ) and a linear
// solve (no explicit inverse). All client and global factors share one rank r. kInvalidArgument
// for λ < 0 or when ĀĀᵀ + λI is numerically singular (hint: λ > 0).
Result<at::Tensor> FairRidgeDeltaB(std::span<const at::Tensor> As, std::span<const at::Tensor> Bs,
                                   std::span<const double> weights, const at::Tensor& B_bar,
                                   const at::Tensor& A_bar, double lambda);

// LoRA-FAIR cosine correction (§6c, our reference semantics): `iterations` steps of plain gradient
// descent with step `lr`, from ΔB = 0, on
//   L(ΔB) = 1 − cos(vec((B̄+ΔB)Ā), vec(ΔW)) + λ‖ΔB‖_F²,
//   ∂L/∂ΔB = −[ΔW·Āᵀ/(‖P‖‖ΔW‖) − ⟨P,ΔW⟩·P·Āᵀ/(‖P‖³‖ΔW‖)] + 2λΔB,   P = (B̄+ΔB)Ā,
// where every inner product and ·Āᵀ comes from d_out x r and r x r products. The objective and
// cosine are reported at ΔB = 0 and at the returned ΔB. kInvalidArgument for iterations < 0,
// λ < 0, a non-finite lr, or when ‖ΔW‖ = 0 or ‖P‖ = 0 at some step (the cosine is undefined).
struct FairCosineResult {
  at::Tensor delta_b;
  double initial_objective = 0;
  double final_objective = 0;
  double initial_cosine = 0;
  double final_cosine = 0;
};
Result<FairCosineResult> FairCosineDeltaB(std::span<const at::Tensor> As,
                                          std::span<const at::Tensor> Bs,
                                          std::span<const double> weights, const at::Tensor& B_bar,
                                          const at::Tensor& A_bar, double lambda, int iterations,
                                          double lr);

// The same two corrections for a dense ΔW (d_out x d_in) given directly, e.g. an exact sum of
// many clients' products (server/strategies/product_sums.h): equal, up to rounding, to the
// factor forms for ΔW = Σ_k p_k B_k A_k. Cost O(d_out·d_in·r).
Result<at::Tensor> FairRidgeDeltaBDense(const at::Tensor& delta_w, const at::Tensor& B_bar,
                                        const at::Tensor& A_bar, double lambda);
Result<FairCosineResult> FairCosineDeltaBDense(const at::Tensor& delta_w, const at::Tensor& B_bar,
                                               const at::Tensor& A_bar, double lambda,
                                               int iterations, double lr);

// ‖B·A‖_F from sqrt(Σ (BᵀB) ⊙ (AAᵀ)) = sqrt(tr(Aᵀ(BᵀB)A)), r x r products only.
Result<double> ProductFrobeniusNorm(const at::Tensor& B, const at::Tensor& A);
// ⟨B1·A1, B2·A2⟩_F = Σ (B1ᵀB2) ⊙ (A1A2ᵀ), r1 x r2 products only. Ranks may differ.
Result<double> ProductInner(const at::Tensor& B1, const at::Tensor& A1, const at::Tensor& B2,
                            const at::Tensor& A2);

// FSLoRA sketch (§8b): a uniformly random k-subset of {0..r−1}, sorted ascending. The draw is a
// partial Fisher–Yates shuffle whose bounded integers come from rejection sampling on raw
// mt19937_64 outputs, so the result depends only on the rng state (not on the standard library,
// unlike std::uniform_int_distribution). Consumes exactly one output per step when no rejection
// happens. kInvalidArgument unless 0 <= k <= r.
Result<std::vector<std::int64_t>> SampleSketch(std::int64_t r, std::int64_t k,
                                               std::mt19937_64& rng);

// B[:, idx] and A[idx, :] as new tensors. Indices must be in [0, r) (repeats allowed).
Result<at::Tensor> GatherCols(const at::Tensor& B, std::span<const std::int64_t> idx);
Result<at::Tensor> GatherRows(const at::Tensor& A, std::span<const std::int64_t> idx);
// The inverse: a d_out x r (resp. r x d_in) zero tensor whose columns (rows) idx[j] hold
// B_sub[:, j] (A_sub[j, :]). Indices must be distinct and in [0, r); idx.size() must match.
Result<at::Tensor> ScatterCols(std::span<const std::int64_t> idx, const at::Tensor& B_sub,
                               std::int64_t r);
Result<at::Tensor> ScatterRows(std::span<const std::int64_t> idx, const at::Tensor& A_sub,
                               std::int64_t r);

// Fed-SB initialisation (§5): from the exact SVD ΔW = U Σ Vᵀ (torch::linalg::svd), B = U[:, :r]
// (orthonormal columns), R = diag(σ_1..σ_r)/scale, A = Vᵀ[:r, :] (orthonormal rows), so
// scale·B·R·A is the best rank-r approximation of ΔW. r = min(rank, d_out, d_in).
// kInvalidArgument for a non-matrix ΔW, rank < 1, or scale zero or non-finite.
struct SbInit {
  at::Tensor B;
  at::Tensor R;
  at::Tensor A;
};
Result<SbInit> SbInitFromUpdate(const at::Tensor& delta_w, std::int64_t rank, double scale);

}  // namespace fedlora::lora
