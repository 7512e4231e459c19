#include "server/privacy_ledger.h"

#include <gtest/gtest.h>

namespace fedlora::server {
namespace {

PrivacyConfig Dp(double sigma, double target, double q = 1.0) {
  return PrivacyConfig{.enabled = true,
                       .clip = 1,
                       .noise_multiplier = sigma,
                       .target_epsilon = target,
                       .delta = 1e-5,
                       .sample_rate = q};
}

// dp-accounting 0.6.0, RdpAccountant, PoissonSampledDpEvent(1.0, GaussianDpEvent(2.0)), delta
// 1e-5: 1 step 2.165715659029443, 2 steps 3.1889915626335874, 3 steps 4.011321708510026.
TEST(PrivacyLedgerTest, ARoundThatWouldPassTheBudgetDoesNotFit) {
  PrivacyLedger ledger = PrivacyLedger::Create(Dp(2.0, 4.0), 10).value();
  EXPECT_EQ(ledger.EpsilonSpent(), 0.0);
  EXPECT_NEAR(ledger.EpsilonAfterNextRound(), 2.165715659029443, 1e-5);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(ledger.NextRoundFits());
    ledger.RecordRound();
  }
  EXPECT_NEAR(ledger.EpsilonSpent(), 3.1889915626335874, 1e-5);
  EXPECT_GE(ledger.EpsilonSpent(), 3.1889915626335874);  // Never below the reference.
  EXPECT_FALSE(ledger.NextRoundFits());
  EXPECT_NEAR(ledger.EpsilonAfterNextRound(), 4.011321708510026, 1e-5);
  // Without a budget every round fits; epsilon is still counted.
  PrivacyLedger unbounded = PrivacyLedger::Create(Dp(2.0, 0.0), 10).value();
  for (int r = 0; r < 5; ++r) unbounded.RecordRound();
  EXPECT_TRUE(unbounded.NextRoundFits());
  EXPECT_GT(unbounded.EpsilonSpent(), 4.0);
}

TEST(PrivacyLedgerTest, TheSolvedNoiseSpendsTheBudgetInThePlannedRoundsAndNoFewer) {
  PrivacyLedger ledger = PrivacyLedger::Create(Dp(0.0, 4.0, 0.25), 12).value();
  EXPECT_TRUE(ledger.sigma_solved());
  for (int r = 0; r < 12; ++r) {
    ASSERT_TRUE(ledger.NextRoundFits()) << "round " << r + 1;
    ledger.RecordRound();
  }
  EXPECT_LE(ledger.EpsilonSpent(), 4.0);
  EXPECT_GT(ledger.EpsilonSpent(), 3.9);  // The smallest sigma that fits: little is left.
  EXPECT_FALSE(ledger.NextRoundFits());
  const Result<PrivacyLedger> impossible = PrivacyLedger::Create(Dp(0.0, 1e-6), 10);
  ASSERT_FALSE(impossible.ok());
  EXPECT_NE(impossible.status().message().find("privacy.target_epsilon"), std::string::npos);
}

// A restart with other settings goes on from what was released under the old ones.
TEST(PrivacyLedgerTest, ARestoredLedgerKeepsEachReleasedRoundsOwnParameters) {
  PrivacyLedger before = PrivacyLedger::Create(Dp(2.0, 0.0), 10).value();
  before.RecordRound();
  before.RecordRound();
  PrivacyLedger after = PrivacyLedger::Create(Dp(4.0, 0.0, 0.5), 10).value();
  ASSERT_TRUE(after.Restore(before.ToJson(), "state.json").ok());
  EXPECT_EQ(after.rounds_released(), 2u);
  EXPECT_EQ(after.EpsilonSpent(), before.EpsilonSpent());
  after.RecordRound();
  privacy::RdpAccountant reference;
  ASSERT_TRUE(reference.Compose(1.0, 2.0, 2).ok());
  ASSERT_TRUE(reference.Compose(0.5, 4.0, 1).ok());
  EXPECT_EQ(after.EpsilonSpent(), reference.Epsilon(1e-5)->epsilon);
  const Status damaged = after.Restore("{\"released\": [{\"rounds\": 2}]}", "x/state.json");
  EXPECT_EQ(damaged.code(), StatusCode::kDataLoss);
  EXPECT_NE(damaged.message().find("x/state.json"), std::string::npos);
  EXPECT_EQ(after.rounds_released(), 3u);  // Nothing of a damaged ledger is taken.
}

}  // namespace
}  // namespace fedlora::server
