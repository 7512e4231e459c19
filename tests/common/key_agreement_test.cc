// X25519 (RFC 7748 section 6.1) and HKDF-SHA256 (RFC 5869 test case 1) against their RFCs'
// vectors, and the seed two parties derive.
#include "common/crypto/key_agreement.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/testing/hex.h"

namespace fedlora::crypto {
namespace {

std::vector<std::uint8_t> Hex(const std::string& hex) { return testing::HexBytes(hex); }
X25519Key Key(const std::string& hex) {
  X25519Key k{};
  const std::vector<std::uint8_t> b = Hex(hex);
  std::copy(b.begin(), b.end(), k.begin());
  return k;
}

const X25519Key kAliceSecret =
    Key("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
const X25519Key kAlicePublic =
    Key("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
const X25519Key kBobSecret =
    Key("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
const X25519Key kBobPublic =
    Key("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");

TEST(KeyAgreementTest, X25519MatchesRfc7748) {
  EXPECT_EQ(X25519(kAliceSecret, kBobPublic).value(),
            Key("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"));
  EXPECT_EQ(X25519(kBobSecret, kAlicePublic).value(),
            Key("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"));
}

TEST(KeyAgreementTest, HkdfSha256MatchesRfc5869TestCase1) {
  const std::vector<std::uint8_t> okm =
      HkdfSha256(Hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
                 Hex("000102030405060708090a0b0c"), Hex("f0f1f2f3f4f5f6f7f8f9"), 42);
  EXPECT_EQ(okm, Hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b8"
                     "87185865"));
}

TEST(KeyAgreementTest, BothEndsDeriveTheSameSeedAndTheContextSeparatesSeeds) {
  const AgreementKeyPair a = GenerateAgreementKeyPair(), b = GenerateAgreementKeyPair();
  const Seed ab = AgreeSeed(a.secret_key, b.public_key, "round 3 pair 1-2").value();
  EXPECT_EQ(AgreeSeed(b.secret_key, a.public_key, "round 3 pair 1-2").value(), ab);
  EXPECT_NE(AgreeSeed(a.secret_key, b.public_key, "round 4 pair 1-2").value(), ab);
  const AgreementKeyPair c = GenerateAgreementKeyPair();
  EXPECT_NE(AgreeSeed(a.secret_key, c.public_key, "round 3 pair 1-2").value(), ab);
}

TEST(KeyAgreementTest, ALowOrderPeerKeyIsRefused) {
  const X25519Key zero{};  // The identity: every shared secret with it is all zeros.
  EXPECT_EQ(AgreeSeed(kAliceSecret, zero, "x").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::crypto
