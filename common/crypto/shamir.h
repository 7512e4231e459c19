// shamir.h — Shamir secret sharing of 32-byte secrets, for secure aggregation (issue 13): each
// client shares its masking key and its self-mask seed among its neighbours, and any `threshold`
// of them can rebuild a dropped client's key (or a survivor's seed) so the coordinator can unmask
// the sum, while fewer learn nothing about it.
//
// Field: GF(p) with p = 2^256 + 297, the smallest prime above 2^256, so every 32-byte string is a
// field element as it is (no reduction, no bias). A share is (x, y) with x in 1..65535 the
// holder's index and y < p as 33 big-endian bytes. Polynomial coefficients come from OpenSSL's
// CSPRNG (uniform below p); arithmetic is OpenSSL's BIGNUM. Known-answer vectors:
// scripts/shamir_vectors.py (plain Python integers) -> tests/common/shamir_test.cc.
//
// Side channels: BIGNUM's modular multiply is not constant-time. Splitting runs once per round on
// the client's own machine; reconstruction runs on the coordinator over shares of clients that
// dropped out (whose keys it is entitled to). Neither exposes a secret to a remote timing
// observer beyond what the protocol reveals.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"

namespace fedlora::crypto {

inline constexpr std::size_t kShamirSecretBytes = 32;
inline constexpr std::size_t kShamirShareBytes = 33;
inline constexpr std::uint32_t kShamirMaxShares = 65535;

using ShamirSecret = std::array<std::uint8_t, kShamirSecretBytes>;

struct ShamirShare {
  std::uint32_t x = 0;                              // 1..kShamirMaxShares; never 0.
  std::array<std::uint8_t, kShamirShareBytes> y{};  // Big-endian, < p.
  friend bool operator==(const ShamirShare&, const ShamirShare&) = default;
};

// `n` shares of `secret` at x = 1..n, any `threshold` of which rebuild it. kInvalidArgument
// when threshold is 0 or above n, or n above kShamirMaxShares.
Result<std::vector<ShamirShare>> ShamirSplit(const ShamirSecret& secret, std::uint32_t threshold,
                                             std::uint32_t n);

// The same with the polynomial's coefficients a_1 .. a_{t-1} given (big-endian, each < p; the
// threshold is their count + 1), for known-answer tests. kInvalidArgument naming the coefficient
// that is not below p.
Result<std::vector<ShamirShare>> ShamirSplitWithCoefficients(
    const ShamirSecret& secret,
    std::span<const std::array<std::uint8_t, kShamirShareBytes>> coefficients, std::uint32_t n);

// The secret from `shares` by Lagrange interpolation at 0 (every share given is used; give at
// least the threshold). kInvalidArgument: no shares, an x of 0 or above kShamirMaxShares, the
// same x twice, or a y not below p — naming the share. kDataLoss: the interpolated value is not
// a 32-byte secret (>= 2^256), so the shares are not of one secret. With fewer shares than the
// threshold the result is some other value, which no arithmetic can tell (that is the point).
Result<ShamirSecret> ShamirReconstruct(std::span<const ShamirShare> shares);

}  // namespace fedlora::crypto
