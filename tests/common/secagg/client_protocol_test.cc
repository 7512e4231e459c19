// What an honest client refuses to do for a curious coordinator (client_protocol.h).
#include "common/secagg/client_protocol.h"

#include <gtest/gtest.h>

namespace fedlora::secagg {
namespace {

const Modulus kModulus = Modulus::Bits(32).value();

// A roster for `self` and `others` (indices 1..n in order), threshold `t`.
wire::SecAggRoster RosterFor(const ClientProtocol& self, std::uint32_t own,
                             std::vector<const ClientProtocol*> all, std::uint32_t t) {
  wire::SecAggRoster r;
  r.own_index = own;
  r.threshold = t;
  for (std::uint32_t i = 0; i < all.size(); ++i) {
    const wire::SecAggKeys k = all[i]->Keys();
    r.members.push_back({i + 1, "c" + std::to_string(i + 1), k.c_public, k.s_public});
  }
  return r;
}

TEST(ClientProtocolTest, ARosterWithoutItsOwnKeysOrWithAThresholdBelowTwoIsRefused) {
  ClientProtocol a(1, 1, kModulus), b(1, 1, kModulus), c(1, 1, kModulus);
  wire::SecAggRoster forged = RosterFor(a, 1, {&b, &b, &c}, 2);  // Another's keys at index 1.
  forged.members[1].c_public[0] ^= 1;
  EXPECT_FALSE(a.OnRoster(forged).ok());
  const Result<wire::SecAggShares> low = a.OnRoster(RosterFor(a, 1, {&a, &b, &c}, 1));
  ASSERT_FALSE(low.ok());
  EXPECT_NE(low.status().message().find("threshold 1"), std::string::npos);
}

TEST(ClientProtocolTest, SharesAreSealedToEachNeighbourOnly) {
  ClientProtocol a(1, 1, kModulus), b(1, 1, kModulus), c(1, 1, kModulus);
  const Result<wire::SecAggShares> shares = a.OnRoster(RosterFor(a, 1, {&a, &b, &c}, 2));
  ASSERT_TRUE(shares.ok()) << shares.status().ToString();
  ASSERT_EQ(shares->shares.size(), 2u);
  ASSERT_TRUE(b.OnRoster(RosterFor(b, 2, {&a, &b, &c}, 2)).ok());
  ASSERT_TRUE(c.OnRoster(RosterFor(c, 3, {&a, &b, &c}, 2)).ok());
  // b opens what a sealed to b; c cannot (another key): it keeps a as a sharer but not its share.
  wire::SecAggShares to_b{{shares->shares[0]}};
  ASSERT_EQ(to_b.shares[0].to, 2u);
  EXPECT_TRUE(b.OnShares(to_b).ok());
  wire::SecAggShares misrouted = to_b;
  misrouted.shares[0].to = 3;
  EXPECT_TRUE(c.OnShares(misrouted).ok());  // Logged and skipped: it does not open.
  // A second delivery is refused.
  EXPECT_FALSE(b.OnShares(to_b).ok());
}

class UnmaskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (std::uint32_t i = 1; i <= 4; ++i) {
      ASSERT_TRUE(
          all_[i - 1]
              .OnRoster(RosterFor(all_[i - 1], i, {&all_[0], &all_[1], &all_[2], &all_[3]}, 3))
              .ok());
    }
    ASSERT_TRUE(all_[0].OnShares({}).ok());  // No pairs needed for these checks.
  }
  ClientProtocol all_[4] = {ClientProtocol(1, 1, kModulus), ClientProtocol(1, 1, kModulus),
                            ClientProtocol(1, 1, kModulus), ClientProtocol(1, 1, kModulus)};
};

TEST_F(UnmaskTest, AnUnmaskLeavingFewerThanTheThresholdOfItsHoldersIsRefused) {
  const Result<wire::SecAggReveal> r = all_[0].OnUnmask({{1, 2}, {3, 4}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("below the threshold 3"), std::string::npos)
      << r.status().message();
}

TEST_F(UnmaskTest, AMemberNamedBothSurvivorAndDroppedIsRefused) {
  EXPECT_FALSE(all_[0].OnUnmask({{1, 2, 3}, {3}}).ok());
}

TEST_F(UnmaskTest, AnUnmaskThatDropsTheClientItselfIsRefused) {
  EXPECT_FALSE(all_[0].OnUnmask({{2, 3, 4}, {1}}).ok());
}

TEST_F(UnmaskTest, OnlyOneUnmaskIsAnswered) {
  ASSERT_TRUE(all_[0].OnUnmask({{1, 2, 3, 4}, {}}).ok());
  EXPECT_FALSE(all_[0].OnUnmask({{1, 2, 3}, {4}}).ok());  // Would reveal 4's key too.
}

}  // namespace
}  // namespace fedlora::secagg
