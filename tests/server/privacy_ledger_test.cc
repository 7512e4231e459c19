#include "server/privacy_ledger.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/privacy/rdp_accountant.h"

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

// Andrew et al. 2021: C <- C exp(-eta (b - gamma)), and the update's noise multiplier
// (sigma^-2 - (2 sigma_b)^-2)^-1/2 so that update and count together spend what sigma would.
TEST(PrivacyLedgerTest, AdaptiveClippingMovesTheClipTowardTheQuantileAndSplitsTheNoise) {
  PrivacyConfig dp = Dp(1.0, 0.0);
  dp.clip = 2.0;
  dp.target_quantile = 0.5;
  dp.clip_learning_rate = 0.2;
  dp.count_noise_multiplier = 5.0;
  PrivacyLedger ledger = PrivacyLedger::Create(dp, 10).value();
  EXPECT_TRUE(ledger.adaptive());
  EXPECT_NEAR(ledger.update_noise_multiplier(), 1.0 / std::sqrt(1.0 - 1.0 / 100.0), 1e-12);
  EXPECT_EQ(ledger.noise_multiplier(), 1.0);  // What the accountant composes.
  ledger.AdaptClip(1.0);                      // Everyone within: the clip shrinks...
  EXPECT_NEAR(ledger.clip(), 2.0 * std::exp(-0.1), 1e-12);
  ledger.AdaptClip(0.0);  // ...nobody within: it grows back.
  EXPECT_NEAR(ledger.clip(), 2.0, 1e-12);
  ledger.AdaptClip(0.25);
  PrivacyLedger restored = PrivacyLedger::Create(dp, 10).value();
  ASSERT_TRUE(restored.Restore(ledger.ToJson(), "state.json").ok());
  EXPECT_EQ(restored.clip(), ledger.clip());  // Adaptation goes on where it was.
  // A fixed-clip run takes its clip from the configuration.
  PrivacyLedger fixed = PrivacyLedger::Create(Dp(1.0, 0.0), 10).value();
  ASSERT_TRUE(fixed.Restore(ledger.ToJson(), "state.json").ok());
  EXPECT_EQ(fixed.clip(), 1.0);
  EXPECT_EQ(fixed.update_noise_multiplier(), 1.0);
  dp.count_noise_multiplier = 0.5;  // 2 sigma_b = sigma: nothing left for the update.
  const Result<PrivacyLedger> starved = PrivacyLedger::Create(dp, 10);
  ASSERT_FALSE(starved.ok());
  EXPECT_NE(starved.status().message().find("privacy.count_noise_multiplier"), std::string::npos);
}

}  // namespace
}  // namespace fedlora::server
