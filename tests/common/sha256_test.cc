#include "common/crypto/sha256.h"

#include <gtest/gtest.h>

namespace fedlora::crypto {
namespace {

TEST(Sha256Test, MatchesFipsTestVectors) {
  EXPECT_EQ(ToHex(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(ToHex(Sha256("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256Test, IncrementalHashingEqualsOneShot) {
  Sha256Hasher h;
  h.Update("abcdbcdecdefdefgefghfghighijhijk");
  h.Update("ijkljklmklmnlmnomnopnopq");
  EXPECT_EQ(ToHex(h.Finish()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, HexParsingRoundTripsAndRejectsJunk) {
  const Digest d = Sha256("abc");
  Digest parsed;
  ASSERT_TRUE(FromHex(ToHex(d), &parsed));
  EXPECT_EQ(parsed, d);
  EXPECT_FALSE(FromHex("abc", &parsed));
  EXPECT_FALSE(FromHex(std::string(64, 'g'), &parsed));
}

}  // namespace
}  // namespace fedlora::crypto
