#include "common/lora/deterministic_apply.h"

#include <cstddef>
#include <vector>

#if defined(__FAST_MATH__)
#error "deterministic_apply.cc must not be compiled with -ffast-math: it relies on IEEE-754 order"
#endif

namespace fedlora::lora {
namespace {

Status CheckApplySizes(std::size_t w_size, std::size_t u_size, std::size_t v_size,
                       std::int64_t d_out, std::int64_t d_in, std::int64_t k) {
  if (d_out < 0 || d_in < 0 || k < 0) {
    return InvalidArgument("AddProductDeterministic: negative dimension (d_out=", d_out,
                           ", d_in=", d_in, ", k=", k, ")");
  }
  // Products of int64 dims that fit in memory cannot overflow; guard anyway against garbage.
  constexpr std::int64_t kMaxDim = std::int64_t{1} << 31;
  if (d_out > kMaxDim || d_in > kMaxDim || k > kMaxDim) {
    return InvalidArgument("AddProductDeterministic: dimension too large (d_out=", d_out,
                           ", d_in=", d_in, ", k=", k, ")");
  }
  if (static_cast<std::int64_t>(w_size) != d_out * d_in) {
    return InvalidArgument("AddProductDeterministic: w has ", w_size, " elements, expected d_out*d_in = ",
                           d_out, "*", d_in);
  }
  if (static_cast<std::int64_t>(u_size) != d_out * k) {
    return InvalidArgument("AddProductDeterministic: u has ", u_size, " elements, expected d_out*k = ",
                           d_out, "*", k);
  }
  if (static_cast<std::int64_t>(v_size) != k * d_in) {
    return InvalidArgument("AddProductDeterministic: v has ", v_size, " elements, expected k*d_in = ",
                           k, "*", d_in);
  }
  return OkStatus();
}

// Computes row i of S = u·v into `acc` (d_in doubles), κ ascending, starting from +0.0.
// The loop order (κ outer, j inner) keeps each element's sum in κ order while letting the
// compiler vectorise across j.
void RowProduct(std::span<const float> u, std::span<const float> v, std::int64_t i,
                std::int64_t d_in, std::int64_t k, std::vector<double>& acc) {
  acc.assign(static_cast<std::size_t>(d_in), 0.0);
  double* a = acc.data();
  const float* u_row = u.data() + i * k;
  for (std::int64_t kappa = 0; kappa < k; ++kappa) {
    const double u_ik = static_cast<double>(u_row[kappa]);
    const float* v_row = v.data() + kappa * d_in;
    for (std::int64_t j = 0; j < d_in; ++j) {
      const double product = u_ik * static_cast<double>(v_row[j]);  // Exact: 24+24 bits.
      a[j] = a[j] + product;
    }
  }
}

template <typename W>
Status AddProductImpl(std::span<W> w, std::span<const float> u, std::span<const float> v,
                      std::int64_t d_out, std::int64_t d_in, std::int64_t k) {
  FEDLORA_RETURN_IF_ERROR(CheckApplySizes(w.size(), u.size(), v.size(), d_out, d_in, k));
  if (k == 0) return OkStatus();
  std::vector<double> acc;
  for (std::int64_t i = 0; i < d_out; ++i) {
    RowProduct(u, v, i, d_in, k, acc);
    W* w_row = w.data() + i * d_in;
    for (std::int64_t j = 0; j < d_in; ++j) {
      w_row[j] = static_cast<W>(static_cast<double>(w_row[j]) + acc[static_cast<std::size_t>(j)]);
    }
  }
  return OkStatus();
}

}  // namespace

Status AddProductDeterministic(std::span<float> w, std::span<const float> u,
                               std::span<const float> v, std::int64_t d_out, std::int64_t d_in,
                               std::int64_t k) {
  return AddProductImpl(w, u, v, d_out, d_in, k);
}

Status AddProductDeterministic(std::span<double> w, std::span<const float> u,
                               std::span<const float> v, std::int64_t d_out, std::int64_t d_in,
                               std::int64_t k) {
  return AddProductImpl(w, u, v, d_out, d_in, k);
}

}  // namespace fedlora::lora
