#include "common/crypto/shamir.h"

#include <openssl/bn.h>

#include <memory>
#include <set>

namespace fedlora::crypto {
namespace {

struct BnFree {
  void operator()(BIGNUM* b) const { BN_clear_free(b); }
};
struct CtxFree {
  void operator()(BN_CTX* c) const { BN_CTX_free(c); }
};
using Bn = std::unique_ptr<BIGNUM, BnFree>;
using Ctx = std::unique_ptr<BN_CTX, CtxFree>;

// Allocation failure inside OpenSSL is the only way these fail: a bug-level condition here.
Bn NewBn() {
  Bn b(BN_new());
  FEDLORA_CHECK_MSG(b != nullptr, "BN_new failed");
  return b;
}

Bn FromBytes(std::span<const std::uint8_t> bytes) {
  Bn b(BN_bin2bn(bytes.data(), static_cast<int>(bytes.size()), nullptr));
  FEDLORA_CHECK_MSG(b != nullptr, "BN_bin2bn failed");
  return b;
}

Bn FromWord(std::uint32_t w) {
  Bn b = NewBn();
  FEDLORA_CHECK(BN_set_word(b.get(), w) == 1);
  return b;
}

// p = 2^256 + 297.
const BIGNUM* Prime() {
  static const BIGNUM* const p = [] {
    BIGNUM* b = BN_new();
    FEDLORA_CHECK(b != nullptr && BN_set_bit(b, 256) == 1 && BN_add_word(b, 297) == 1);
    return b;
  }();
  return p;
}

template <std::size_t N>
void ToBytes(const BIGNUM* b, std::array<std::uint8_t, N>& out) {
  FEDLORA_CHECK(BN_bn2binpad(b, out.data(), static_cast<int>(N)) == static_cast<int>(N));
}

void Check(int ok) { FEDLORA_CHECK_MSG(ok == 1, "OpenSSL BIGNUM arithmetic failed"); }

// Shares of the polynomial secret + sum_k coefficients[k] x^(k+1) at x = 1..n (Horner).
std::vector<ShamirShare> Evaluate(const BIGNUM* secret, const std::vector<Bn>& coefficients,
                                  std::uint32_t n) {
  Ctx ctx(BN_CTX_new());
  FEDLORA_CHECK(ctx != nullptr);
  std::vector<ShamirShare> shares(n);
  Bn acc = NewBn();
  for (std::uint32_t i = 0; i < n; ++i) {
    const Bn x = FromWord(i + 1);
    BN_zero(acc.get());
    for (auto c = coefficients.rbegin(); c != coefficients.rend(); ++c) {
      Check(BN_mod_add(acc.get(), acc.get(), c->get(), Prime(), ctx.get()));
      Check(BN_mod_mul(acc.get(), acc.get(), x.get(), Prime(), ctx.get()));
    }
    Check(BN_mod_add(acc.get(), acc.get(), secret, Prime(), ctx.get()));
    shares[i].x = i + 1;
    ToBytes(acc.get(), shares[i].y);
  }
  return shares;
}

Status CheckCounts(std::uint32_t threshold, std::uint32_t n) {
  if (threshold == 0 || threshold > n || n > kShamirMaxShares) {
    return InvalidArgument("Shamir sharing: threshold ", threshold, " of ", n,
                           " shares (need 1 <= threshold <= shares <= ", kShamirMaxShares, ")");
  }
  return OkStatus();
}

}  // namespace

Result<std::vector<ShamirShare>> ShamirSplit(const ShamirSecret& secret, std::uint32_t threshold,
                                             std::uint32_t n) {
  FEDLORA_RETURN_IF_ERROR(CheckCounts(threshold, n));
  std::vector<Bn> coefficients;
  for (std::uint32_t k = 1; k < threshold; ++k) {
    Bn c = NewBn();
    Check(BN_priv_rand_range(c.get(), Prime()));  // Uniform in [0, p).
    coefficients.push_back(std::move(c));
  }
  const Bn s = FromBytes(secret);
  return Evaluate(s.get(), coefficients, n);
}

Result<std::vector<ShamirShare>> ShamirSplitWithCoefficients(
    const ShamirSecret& secret,
    std::span<const std::array<std::uint8_t, kShamirShareBytes>> coefficients, std::uint32_t n) {
  FEDLORA_RETURN_IF_ERROR(CheckCounts(static_cast<std::uint32_t>(coefficients.size() + 1), n));
  std::vector<Bn> cs;
  for (std::size_t k = 0; k < coefficients.size(); ++k) {
    Bn c = FromBytes(coefficients[k]);
    if (BN_cmp(c.get(), Prime()) >= 0) {
      return InvalidArgument("Shamir coefficient a_", k + 1, " is not below p = 2^256 + 297");
    }
    cs.push_back(std::move(c));
  }
  const Bn s = FromBytes(secret);
  return Evaluate(s.get(), cs, n);
}

Result<ShamirSecret> ShamirReconstruct(std::span<const ShamirShare> shares) {
  if (shares.empty()) return InvalidArgument("Shamir reconstruction from no shares");
  std::set<std::uint32_t> seen;
  std::vector<Bn> xs, ys;
  for (std::size_t i = 0; i < shares.size(); ++i) {
    const ShamirShare& s = shares[i];
    if (s.x == 0 || s.x > kShamirMaxShares || !seen.insert(s.x).second) {
      return InvalidArgument("Shamir share ", i, " has x = ", s.x,
                             ": zero, above the limit or given twice");
    }
    Bn y = FromBytes(s.y);
    if (BN_cmp(y.get(), Prime()) >= 0) {
      return InvalidArgument("Shamir share ", i, " (x = ", s.x, ") has y not below p");
    }
    xs.push_back(FromWord(s.x));
    ys.push_back(std::move(y));
  }
  Ctx ctx(BN_CTX_new());
  FEDLORA_CHECK(ctx != nullptr);
  // secret = sum_i y_i * X / (x_i * D_i)  (mod p), with X = prod_j x_j and
  // D_i = prod_{j != i} (x_j - x_i). The x are small integers: X and each |D_i| are built with
  // word multiplications, and the n denominators are inverted together with one modular
  // inverse (prefix products), instead of n inverses and 3n^2 modular products.
  const std::size_t n = xs.size();
  Bn big_x = NewBn();
  Check(BN_one(big_x.get()));
  for (const ShamirShare& s : shares) Check(BN_mul_word(big_x.get(), s.x));
  Check(BN_nnmod(big_x.get(), big_x.get(), Prime(), ctx.get()));
  std::vector<Bn> dens;  // x_i * D_i mod p.
  for (std::size_t i = 0; i < n; ++i) {
    Bn d = FromWord(shares[i].x);
    bool negative = false;
    for (std::size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      const std::int64_t diff =
          static_cast<std::int64_t>(shares[j].x) - static_cast<std::int64_t>(shares[i].x);
      if (diff < 0) negative = !negative;
      Check(BN_mul_word(d.get(), static_cast<BN_ULONG>(diff < 0 ? -diff : diff)));
      if (BN_num_bits(d.get()) > 1024) Check(BN_nnmod(d.get(), d.get(), Prime(), ctx.get()));
    }
    Check(BN_nnmod(d.get(), d.get(), Prime(), ctx.get()));
    if (negative && !BN_is_zero(d.get())) Check(BN_sub(d.get(), Prime(), d.get()));
    dens.push_back(std::move(d));
  }
  // prefix[i] = dens[0] * ... * dens[i-1]; one inverse of the whole product, then walk back.
  std::vector<Bn> prefix;
  prefix.push_back(NewBn());
  Check(BN_one(prefix[0].get()));
  for (std::size_t i = 0; i < n; ++i) {
    Bn next = NewBn();
    Check(BN_mod_mul(next.get(), prefix[i].get(), dens[i].get(), Prime(), ctx.get()));
    prefix.push_back(std::move(next));
  }
  Bn inv = NewBn();
  FEDLORA_CHECK_MSG(BN_mod_inverse(inv.get(), prefix[n].get(), Prime(), ctx.get()) != nullptr,
                    "distinct non-zero x values have an invertible product modulo a prime");
  Bn sum = NewBn(), inv_i = NewBn(), term = NewBn();
  BN_zero(sum.get());
  for (std::size_t i = n; i-- > 0;) {
    // inv = 1 / (dens[0] ... dens[i]): 1/dens[i] = inv * prefix[i]; then drop dens[i].
    Check(BN_mod_mul(inv_i.get(), inv.get(), prefix[i].get(), Prime(), ctx.get()));
    Check(BN_mod_mul(inv.get(), inv.get(), dens[i].get(), Prime(), ctx.get()));
    Check(BN_mod_mul(term.get(), ys[i].get(), big_x.get(), Prime(), ctx.get()));
    Check(BN_mod_mul(term.get(), term.get(), inv_i.get(), Prime(), ctx.get()));
    Check(BN_mod_add(sum.get(), sum.get(), term.get(), Prime(), ctx.get()));
  }
  if (BN_num_bits(sum.get()) > 256) {
    return DataLoss("Shamir reconstruction from ", shares.size(),
                    " shares gives a value of 257 bits: they are not shares of one 32-byte secret");
  }
  ShamirSecret out;
  ToBytes(sum.get(), out);
  return out;
}

}  // namespace fedlora::crypto
