// bench/secagg — secure aggregation's costs against a baseline measured in the same run.
//
// So far (issue 13 is in progress) the per-client primitives, for adapter sizes of stories260K
// (46k parameters) and a Llama-8B rank-16 shape (42M): mask generation (ChaCha20 keystream added
// mod 2^32, masking.h) against memcpy of the same words, stochastic quantisation against a plain
// float-to-int conversion, and the X25519 + HKDF seed agreements and Shamir splits one client of
// a k-regular graph makes. Prints one line per measurement:
//   what=<name> params=<n> seconds=<s> gbps=<GB/s of 32-bit words> baseline_gbps=<..> ratio=<..>
// The protocol stages (per-stage client and coordinator time, bytes per client, N = 10..1000)
// come with the protocol.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/crypto/key_agreement.h"
#include "common/crypto/shamir.h"
#include "common/secagg/masking.h"
#include "common/secagg/neighbours.h"
#include "common/secagg/quantize.h"

namespace {

using namespace fedlora;
using Clock = std::chrono::steady_clock;

template <typename F>
double Best(int repeats, F&& f) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

void Line(const char* what, std::size_t params, double seconds, double baseline) {
  const double bytes = 4.0 * static_cast<double>(params);
  std::printf("what=%s params=%zu seconds=%.6f gbps=%.2f baseline_gbps=%.2f ratio=%.2f\n", what,
              params, seconds, bytes / seconds / 1e9, bytes / baseline / 1e9, baseline / seconds);
  std::fflush(stdout);
}

}  // namespace

int main() {
  const secagg::Modulus m = secagg::Modulus::Bits(32).value();
  for (const std::size_t params : {std::size_t{46'000}, std::size_t{42'000'000}}) {
    const int repeats = params < 1'000'000 ? 200 : 5;
    std::vector<std::uint32_t> values(params, 1), copy(params);
    crypto::Seed seed{};
    seed[0] = 7;
    const double memcpy_s = Best(repeats, [&] {
      std::memcpy(copy.data(), values.data(), params * 4);
      values[0] = copy[params - 1];
    });
    const double mask_s = Best(repeats, [&] { secagg::ApplyMask(values, seed, m, true); });
    Line("mask_add_vs_memcpy", params, mask_s, memcpy_s);

    std::vector<double> x(params);
    for (std::size_t i = 0; i < params; ++i) x[i] = std::sin(static_cast<double>(i)) * 0.01;
    const secagg::QuantizeConfig config{.clip = 0.05, .levels_bits = 16, .modulus_bits = 32};
    std::vector<std::uint32_t> plain(params);
    const double convert_s = Best(repeats, [&] {
      for (std::size_t i = 0; i < params; ++i) {
        plain[i] = static_cast<std::uint32_t>((x[i] + 0.05) * 655350.0);
      }
    });
    const double quantize_s = Best(repeats, [&] { (void)secagg::Quantize(x, config, 1); });
    Line("quantize_vs_float_to_int", params, quantize_s, convert_s);
  }
  // One client of 1000 with the default degree: its seed agreements and its two Shamir splits.
  const std::uint32_t n = 1000, k = secagg::DefaultDegree(n);
  std::vector<crypto::AgreementKeyPair> peers(k);
  for (auto& p : peers) p = crypto::GenerateAgreementKeyPair();
  const crypto::AgreementKeyPair own = crypto::GenerateAgreementKeyPair();
  const double agree_s = Best(5, [&] {
    for (const auto& p : peers) (void)crypto::AgreeSeed(own.secret_key, p.public_key, "bench");
  });
  const double shamir_s = Best(5, [&] {
    (void)crypto::ShamirSplit(own.secret_key, k / 2 + 1, k);
    (void)crypto::ShamirSplit(own.secret_key, k / 2 + 1, k);
  });
  std::printf("what=client_keys n=%u degree=%u agree_seconds=%.6f shamir_split_seconds=%.6f\n", n,
              k, agree_s, shamir_s);
  return 0;
}
