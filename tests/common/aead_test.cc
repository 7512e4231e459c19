// ChaCha20-Poly1305 against RFC 8439 section 2.8.2, and the refusals that keep the coordinator
// from altering what it routes.
#include "common/crypto/aead.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/testing/hex.h"

namespace fedlora::crypto {
namespace {

std::vector<std::uint8_t> Hex(const std::string& hex) { return testing::HexBytes(hex); }
std::vector<std::uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

AeadKey RfcKey() {
  AeadKey key;
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(0x80 + i);
  return key;
}
const AeadNonce kRfcNonce = {0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47};
const std::string kRfcText =
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    "sunscreen would be it.";

TEST(AeadTest, SealMatchesRfc8439Section282) {
  const std::vector<std::uint8_t> sealed =
      AeadSeal(RfcKey(), kRfcNonce, Bytes(kRfcText), Hex("50515253c0c1c2c3c4c5c6c7"));
  EXPECT_EQ(sealed,
            Hex("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca96712"
                "82fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58"
                "fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b61161ae10b594f09"
                "e26a7e902ecbd0600691"));
  EXPECT_EQ(AeadOpen(RfcKey(), kRfcNonce, sealed, Hex("50515253c0c1c2c3c4c5c6c7")).value(),
            Bytes(kRfcText));
}

TEST(AeadTest, ATamperedMessageOrAnotherContextDoesNotOpen) {
  const std::vector<std::uint8_t> ad = Bytes("round 3 from 1 to 2");
  std::vector<std::uint8_t> sealed = AeadSealWithRandomNonce(RfcKey(), Bytes("share"), ad);
  EXPECT_EQ(AeadOpenWithNonce(RfcKey(), sealed, ad).value(), Bytes("share"));
  EXPECT_EQ(AeadOpenWithNonce(RfcKey(), sealed, Bytes("round 3 from 1 to 4")).status().code(),
            StatusCode::kDataLoss);
  AeadKey other = RfcKey();
  other[0] ^= 1;
  EXPECT_EQ(AeadOpenWithNonce(other, sealed, ad).status().code(), StatusCode::kDataLoss);
  sealed[14] ^= 0x20;
  EXPECT_EQ(AeadOpenWithNonce(RfcKey(), sealed, ad).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(AeadOpenWithNonce(RfcKey(), std::vector<std::uint8_t>(20), ad).status().code(),
            StatusCode::kDataLoss);
  // Two seals of the same text differ (fresh nonces).
  EXPECT_NE(AeadSealWithRandomNonce(RfcKey(), Bytes("share"), ad),
            AeadSealWithRandomNonce(RfcKey(), Bytes("share"), ad));
}

}  // namespace
}  // namespace fedlora::crypto
