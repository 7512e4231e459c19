// Masks of secure aggregation: the keystream is ChaCha20's (RFC 8439 appendix A.1), and masked
// inputs sum to the exact sum of the survivors' inputs once the coordinator removes the self
// masks and the dropped clients' pairwise masks, with the secrets it needs rebuilt from Shamir
// shares — for every dropout pattern up to the threshold.
#include "common/secagg/masking.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "common/crypto/key_agreement.h"
#include "common/crypto/shamir.h"

namespace fedlora::secagg {
namespace {

using crypto::Seed;

TEST(MaskingTest, TheMaskIsTheChaCha20KeystreamOfTheSeed) {
  // RFC 8439 A.1, test vector 1: key and nonce all zero, block counter 0.
  std::vector<std::uint32_t> words(16);
  ExpandMask(Seed{}, Modulus::Bits(32).value(), words);
  EXPECT_EQ(words[0], 0xade0b876u);   // Bytes 76 b8 e0 ad, little-endian.
  EXPECT_EQ(words[15], 0x8665eeb2u);  // Bytes b2 ee 65 86.
  // Words past the first generated block continue the same stream (computed with the Python
  // `cryptography` package's ChaCha20 for the key 00 01 02 ... 1f).
  Seed counting{};
  for (std::size_t i = 0; i < counting.size(); ++i) counting[i] = static_cast<std::uint8_t>(i);
  std::vector<std::uint32_t> long_mask(20000);
  ExpandMask(counting, Modulus::Bits(32).value(), long_mask);
  EXPECT_EQ(long_mask[0], 2100034873u);
  EXPECT_EQ(long_mask[16383], 252494441u);
  EXPECT_EQ(long_mask[16384], 159791598u);
  EXPECT_EQ(long_mask[19999], 2990191997u);
  // Fewer bits: the same words, reduced.
  std::vector<std::uint32_t> reduced(20000);
  ExpandMask(counting, Modulus::Bits(20).value(), reduced);
  EXPECT_EQ(reduced[19999], 2990191997u & 0xFFFFFu);
}

TEST(MaskingTest, AddingThenSubtractingAMaskRestoresTheInput) {
  const Modulus m = Modulus::Bits(24).value();
  std::vector<std::uint32_t> x(40000);
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = static_cast<std::uint32_t>(i * 2654435761u) & m.mask();
  std::vector<std::uint32_t> y = x;
  Seed seed{};
  seed[5] = 9;
  ApplyMask(y, seed, m, true);
  EXPECT_NE(y, x);
  ApplyMask(y, seed, m, false);
  EXPECT_EQ(y, x);
}

TEST(MaskingTest, ModulusBitsOutsideOneToThirtyTwoAreRefused) {
  EXPECT_FALSE(Modulus::Bits(0).ok());
  EXPECT_FALSE(Modulus::Bits(33).ok());
  EXPECT_EQ(Modulus::Bits(32)->mask(), 0xFFFFFFFFu);
  EXPECT_EQ(Modulus::Bits(1)->mask(), 1u);
}

// One round of the masking arithmetic among `n` clients, `dropped` of which never send their
// masked input; threshold `t`. Every client Shamir-shares its key-agreement secret key and its
// self-mask seed with all others (the complete graph), as SecAgg does.
void RunRound(std::uint32_t n, std::uint32_t t, const std::vector<std::uint32_t>& dropped,
              std::uint32_t bits, std::size_t length) {
  const Modulus m = Modulus::Bits(bits).value();
  std::mt19937_64 rng(n * 1000 + dropped.size());
  std::vector<crypto::AgreementKeyPair> keys(n);
  std::vector<Seed> self(n);
  std::vector<std::vector<std::uint32_t>> inputs(n, std::vector<std::uint32_t>(length));
  for (std::uint32_t u = 0; u < n; ++u) {
    keys[u] = crypto::GenerateAgreementKeyPair();
    for (auto& b : self[u]) b = static_cast<std::uint8_t>(rng());
    for (auto& v : inputs[u]) v = static_cast<std::uint32_t>(rng()) & m.mask();
  }
  const auto context = [](std::uint32_t u, std::uint32_t v) {
    return "round 1 pair " + std::to_string(std::min(u, v)) + "-" + std::to_string(std::max(u, v));
  };
  // Shares of every client's secret key and self seed, share j held by client j.
  std::vector<std::vector<crypto::ShamirShare>> key_shares(n), seed_shares(n);
  for (std::uint32_t u = 0; u < n; ++u) {
    key_shares[u] = crypto::ShamirSplit(keys[u].secret_key, t, n).value();
    seed_shares[u] = crypto::ShamirSplit(self[u], t, n).value();
  }
  // Clients mask their inputs.
  std::vector<bool> alive(n, true);
  for (std::uint32_t d : dropped) alive[d] = false;
  std::vector<std::uint32_t> sum(length, 0), expected(length, 0);
  for (std::uint32_t u = 0; u < n; ++u) {
    if (!alive[u]) continue;  // Dropped after sharing its keys, before sending its input.
    std::vector<std::uint32_t> y = inputs[u];
    ApplyMask(y, self[u], m, true);
    for (std::uint32_t v = 0; v < n; ++v) {
      if (v == u) continue;
      const Seed s =
          crypto::AgreeSeed(keys[u].secret_key, keys[v].public_key, context(u, v)).value();
      ApplyMask(y, s, m, u < v);
    }
    ASSERT_TRUE(AddInto(sum, y, m).ok());
    ASSERT_TRUE(AddInto(expected, inputs[u], m).ok());
  }
  // The coordinator unmasks with t shares from survivors: survivors' self seeds, dropped keys.
  std::vector<std::uint32_t> holders;
  for (std::uint32_t j = 0; j < n && holders.size() < t; ++j) {
    if (alive[j]) holders.push_back(j);
  }
  ASSERT_EQ(holders.size(), t) << "fewer survivors than the threshold";
  const auto rebuild = [&](const std::vector<crypto::ShamirShare>& shares) {
    std::vector<crypto::ShamirShare> picked;
    for (std::uint32_t j : holders) picked.push_back(shares[j]);
    return crypto::ShamirReconstruct(picked).value();
  };
  for (std::uint32_t u = 0; u < n; ++u) {
    if (alive[u]) {
      ApplyMask(sum, rebuild(seed_shares[u]), m, false);
      continue;
    }
    crypto::X25519Key secret = rebuild(key_shares[u]);
    for (std::uint32_t v = 0; v < n; ++v) {
      if (!alive[v]) continue;
      // Survivor v added +PRG(s_vu) if v < u, else -PRG(s_vu): take that out.
      const Seed s = crypto::AgreeSeed(secret, keys[v].public_key, context(u, v)).value();
      ApplyMask(sum, s, m, v > u);
    }
  }
  EXPECT_EQ(sum, expected) << n << " clients, " << dropped.size() << " dropped";
}

TEST(MaskingTest, TheUnmaskedSumIsTheExactSumOfTheSurvivorsInputs) {
  RunRound(3, 2, {}, 32, 1000);
  RunRound(3, 2, {1}, 32, 1000);
  RunRound(10, 6, {}, 20, 5000);
  RunRound(10, 6, {0, 4, 9}, 20, 5000);
  RunRound(10, 6, {1, 2, 3, 7}, 16, 5000);  // The most that can drop with threshold 6.
  RunRound(50, 26, {3, 11, 20, 21, 49}, 24, 100);
}

}  // namespace
}  // namespace fedlora::secagg
